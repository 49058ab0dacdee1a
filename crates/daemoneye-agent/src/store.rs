//! The agent's own store (`<data-dir>/agent.db`): the processes the
//! collector reports alive (`processes`), every lifecycle event
//! (`process_events`: start, fork, exec, exit, modified, and the suspicious
//! kinds; not periodic snapshots) and every alert (`alerts`), each event and
//! alert recorded together with its ledger entry in one transaction.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags};

use collector_core::{ProcessEvent, ProcessEventType};

use crate::alert::Alert;
use crate::ledger::{self, LedgerError, Verified};

/// The database file inside the data directory.
pub const FILE: &str = "agent.db";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    rule_id TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    severity TEXT NOT NULL,
    pid INTEGER NOT NULL,
    process_key TEXT,
    dedup_key TEXT NOT NULL,
    observed_at INTEGER NOT NULL,
    raised_at INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_raised ON alerts (raised_at);
CREATE TABLE IF NOT EXISTS processes (
    pid INTEGER PRIMARY KEY,
    process_key TEXT,
    ppid INTEGER,
    name TEXT NOT NULL,
    exe TEXT,
    argv TEXT NOT NULL,
    uid INTEGER,
    accessible INTEGER NOT NULL,
    file_exists INTEGER NOT NULL,
    exe_hash TEXT,
    start_time INTEGER,
    last_event TEXT NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS process_events (
    id INTEGER PRIMARY KEY,
    event_type TEXT NOT NULL,
    pid INTEGER NOT NULL,
    ppid INTEGER,
    process_key TEXT,
    name TEXT NOT NULL,
    exe TEXT,
    argv TEXT NOT NULL,
    uid INTEGER,
    exit_code INTEGER,
    observed_at INTEGER NOT NULL,
    ledger_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS process_events_observed ON process_events (observed_at);
CREATE INDEX IF NOT EXISTS process_events_pid ON process_events (pid);";

/// Nanoseconds since the Unix epoch (0 before it).
fn nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// A row of `processes`, as [`AgentStore::processes`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StoredProcess {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: Option<u32>,
    /// Stable process key.
    pub process_key: Option<String>,
    /// Name (comm).
    pub name: String,
    /// Executable path.
    pub exe: Option<String>,
    /// Command line.
    pub argv: Vec<String>,
    /// Real user id.
    pub uid: Option<u32>,
    /// The kind of the last event about it.
    pub last_event: String,
    /// When that event was observed, in nanoseconds since the Unix epoch.
    pub last_seen: i64,
}

/// What [`AgentStore::record_events`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Lifecycle events stored (each with a ledger entry).
    pub lifecycle: u64,
    /// Rows of `processes` inserted or updated.
    pub upserted: u64,
    /// Rows of `processes` removed (exits).
    pub removed: u64,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The data directory is missing or unusable.
    #[error("cannot open the agent store in {path}")]
    Open {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// SQLite failed.
    #[error("agent store error")]
    Sqlite(#[from] rusqlite::Error),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// An alert could not be encoded.
    #[error("cannot encode an alert")]
    Encode(#[from] serde_json::Error),
    /// A query was refused or failed.
    #[error("query refused: {reason}")]
    Query {
        /// Why.
        reason: String,
    },
}

/// The longest an ad-hoc query may run.
pub const QUERY_TIME_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The result of [`AgentStore::query`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each value as JSON (integers, reals, text, null; blobs as hex).
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// The agent's store.
#[derive(Debug)]
pub struct AgentStore {
    conn: Connection,
}

impl AgentStore {
    /// Opens (creating) `<dir>/agent.db` in WAL mode.
    ///
    /// # Errors
    /// When the directory or database is unusable.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE);
        let open_err = |source| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        ledger::create(&conn)?;
        Ok(Self { conn })
    }

    /// Opens `<dir>/agent.db` read-only (for the CLI).
    ///
    /// # Errors
    /// When it does not exist or cannot be read.
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(dir.join(FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| StoreError::Open {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self { conn })
    }

    /// Stores an alert and its ledger entry, atomically. Returns the alert's
    /// row id.
    ///
    /// # Errors
    /// SQLite or encoding errors; nothing is half-written.
    pub fn record_alert(&mut self, alert: &Alert) -> Result<i64, StoreError> {
        let body = serde_json::to_string(alert)?;
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO alerts (rule_id, rule_name, severity, pid, process_key, dedup_key, observed_at, raised_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                alert.rule_id,
                alert.rule_name,
                alert.severity.to_string(),
                alert.process.pid,
                alert.process.process_key,
                alert.dedup_key,
                alert.observed_at,
                alert.raised_at,
                body
            ],
        )?;
        let id = tx.last_insert_rowid();
        ledger::append(&tx, "alert", &body)?;
        tx.commit()?;
        Ok(id)
    }

    /// Records a batch of collector events in one transaction: lifecycle
    /// events (everything but snapshots) into `process_events`, each with
    /// its ledger entry; the `processes` table brought up to date (an exit
    /// removes the process, anything else inserts or updates it).
    ///
    /// # Errors
    /// SQLite or encoding errors; nothing of the batch is written then.
    pub fn record_events(&mut self, events: &[ProcessEvent]) -> Result<Recorded, StoreError> {
        let mut done = Recorded::default();
        let tx = self.conn.transaction()?;
        for e in events {
            let key = e.process_key.map(|k| k.to_string());
            let argv = serde_json::to_string(&e.command_line)?;
            let at = nanos(e.timestamp);
            if e.event_type != ProcessEventType::Snapshot {
                let content = serde_json::to_string(e)?;
                let seq = ledger::append(&tx, "process_event", &content)?;
                tx.prepare_cached(
                    "INSERT INTO process_events (event_type, pid, ppid, process_key, name, exe, argv, uid, exit_code, observed_at, ledger_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    e.event_type.as_str(),
                    e.pid,
                    e.ppid,
                    key,
                    e.name,
                    e.executable_path,
                    argv,
                    e.user_id,
                    e.exit_code,
                    at,
                    seq
                ])?;
                done.lifecycle += 1;
            }
            if e.event_type == ProcessEventType::Exit {
                done.removed += tx
                    .prepare_cached("DELETE FROM processes WHERE pid = ?1")?
                    .execute([e.pid])? as u64;
            } else if e.accessible || e.event_type == ProcessEventType::Fork {
                // An unreadable event (the process was gone before /proc
                // could be read) does not overwrite what is known.
                done.upserted += tx
                    .prepare_cached(
                        "INSERT INTO processes (pid, process_key, ppid, name, exe, argv, uid, accessible, file_exists, exe_hash, start_time, last_event, last_seen)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
                         ON CONFLICT (pid) DO UPDATE SET process_key = excluded.process_key, ppid = excluded.ppid,
                           name = excluded.name, exe = excluded.exe, argv = excluded.argv, uid = excluded.uid,
                           accessible = excluded.accessible, file_exists = excluded.file_exists,
                           exe_hash = coalesce(excluded.exe_hash, processes.exe_hash),
                           start_time = excluded.start_time, last_event = excluded.last_event,
                           last_seen = excluded.last_seen",
                    )?
                    .execute(params![
                        e.pid,
                        key,
                        e.ppid,
                        e.name,
                        e.executable_path,
                        argv,
                        e.user_id,
                        e.accessible,
                        e.file_exists,
                        e.executable_hash,
                        e.start_time.map(nanos),
                        e.event_type.as_str(),
                        at
                    ])? as u64;
            }
        }
        tx.commit()?;
        Ok(done)
    }

    /// Forgets every known process (the collector restarted: its first
    /// snapshot fills the table again, without the processes that exited
    /// while it was down).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn clear_processes(&mut self) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM processes", [])?;
        Ok(())
    }

    /// The processes the collector last reported alive, by pid.
    ///
    /// # Errors
    /// SQLite or decoding errors.
    pub fn processes(&self) -> Result<Vec<StoredProcess>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT pid, ppid, process_key, name, exe, argv, uid, last_event, last_seen FROM processes ORDER BY pid",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    StoredProcess {
                        pid: r.get(0)?,
                        ppid: r.get(1)?,
                        process_key: r.get(2)?,
                        name: r.get(3)?,
                        exe: r.get(4)?,
                        argv: Vec::new(),
                        uid: r.get(6)?,
                        last_event: r.get(7)?,
                        last_seen: r.get(8)?,
                    },
                    r.get::<_, String>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(mut p, argv)| {
                p.argv = serde_json::from_str(&argv)?;
                Ok(p)
            })
            .collect()
    }

    /// The most recent alerts, newest first.
    ///
    /// # Errors
    /// SQLite or decoding errors.
    pub fn recent_alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT body FROM alerts ORDER BY id DESC LIMIT ?1")?;
        let bodies = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                r.get::<_, String>(0)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        bodies
            .iter()
            .map(|b| serde_json::from_str(b).map_err(StoreError::from))
            .collect()
    }

    /// Runs one read-only `SELECT` (the tables: `alerts`, `processes`,
    /// `process_events`, `ledger`), under the
    /// same authorizer as the rules and a [`QUERY_TIME_LIMIT`].
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement is not a single read, or
    /// fails or overruns.
    pub fn query(&self, sql: &str) -> Result<QueryResult, StoreError> {
        use rusqlite::types::ValueRef;
        let refuse = |reason: String| StoreError::Query { reason };
        let denied = crate::engine::Denied::default();
        self.conn
            .authorizer(Some(crate::engine::read_only_authorizer(denied.clone())));
        let deadline = tokio::time::Instant::now() + QUERY_TIME_LIMIT;
        self.conn
            .progress_handler(1000, Some(move || tokio::time::Instant::now() >= deadline));
        let result = (|| {
            let mut stmt = self.conn.prepare(sql).map_err(|e| match e {
                rusqlite::Error::MultipleStatement => refuse("more than one statement".to_owned()),
                e => match denied
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                {
                    Some(what) => refuse(format!("only reading is allowed; refused: {what}")),
                    None => refuse(format!("invalid SQL: {e}")),
                },
            })?;
            if !stmt.readonly() {
                return Err(refuse("only reading is allowed".to_owned()));
            }
            let columns: Vec<String> = stmt
                .column_names()
                .iter()
                .map(|c| (*c).to_owned())
                .collect();
            let n = columns.len();
            let mut rows = Vec::new();
            let mut it = stmt.query([]).map_err(|e| refuse(e.to_string()))?;
            while let Some(row) = it.next().map_err(|e| refuse(e.to_string()))? {
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let v = match row.get_ref(i).map_err(|e| refuse(e.to_string()))? {
                        ValueRef::Null => serde_json::Value::Null,
                        ValueRef::Integer(x) => x.into(),
                        ValueRef::Real(x) => x.into(),
                        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                        ValueRef::Blob(b) => crate::ledger::to_hex(b).into(),
                    };
                    out.push(v);
                }
                rows.push(out);
            }
            Ok(QueryResult { columns, rows })
        })();
        self.conn.authorizer(
            None::<fn(rusqlite::hooks::AuthContext<'_>) -> rusqlite::hooks::Authorization>,
        );
        self.conn.progress_handler(0, None::<fn() -> bool>);
        result
    }

    /// Verifies the ledger.
    ///
    /// # Errors
    /// [`LedgerError::Broken`] naming the first bad entry.
    pub fn verify_ledger(&self) -> Result<Verified, StoreError> {
        Ok(ledger::verify(&self.conn)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::SystemTime;

    use collector_core::ProcessEvent;

    use super::*;
    use crate::alert::AlertProcess;
    use crate::rules;

    #[test]
    fn alerts_are_stored_with_their_ledger_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AgentStore::open(dir.path()).unwrap();
        let rule = &rules::builtin().unwrap()[1];
        for pid in 1..=3 {
            let a = Alert::new(
                rule,
                AlertProcess::from_event(&ProcessEvent::new(pid, "x"), None),
                SystemTime::now(),
            );
            store.record_alert(&a).unwrap();
        }
        let ro = AgentStore::open_read_only(dir.path()).unwrap();
        let alerts = ro.recent_alerts(10).unwrap();
        assert_eq!(
            alerts.iter().map(|a| a.process.pid).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        assert_eq!(ro.verify_ledger().unwrap().entries, 3);
        // An edited alert body in the ledger is found.
        store
            .conn
            .execute("UPDATE ledger SET content = replace(content, '\"pid\":2', '\"pid\":9') WHERE seq = 2", [])
            .unwrap();
        match ro.verify_ledger() {
            Err(StoreError::Ledger(LedgerError::Broken { seq: 2, .. })) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn queries_read_and_only_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AgentStore::open(dir.path()).unwrap();
        let rule = &rules::builtin().unwrap()[0];
        let a = Alert::new(
            rule,
            AlertProcess::from_event(&ProcessEvent::new(5, "x"), None),
            SystemTime::now(),
        );
        store.record_alert(&a).unwrap();
        let ro = AgentStore::open_read_only(dir.path()).unwrap();
        let r = ro.query("SELECT rule_id, pid FROM alerts").unwrap();
        assert_eq!(r.columns, vec!["rule_id", "pid"]);
        assert_eq!(
            r.rows,
            vec![vec![serde_json::Value::from(rule.id.clone()), 5.into()]]
        );
        for bad in [
            "DELETE FROM alerts",
            "SELECT 1; SELECT 2",
            "PRAGMA journal_mode",
            "ATTACH 'x' AS y",
            "SELEC 1",
        ] {
            assert!(
                matches!(ro.query(bad), Err(StoreError::Query { .. })),
                "{bad}"
            );
        }
        // Refusals leave the store usable.
        assert_eq!(
            ro.query("SELECT count(*) AS n FROM alerts").unwrap().rows[0][0],
            1
        );
    }

    #[test]
    fn lifecycle_events_are_ledgered_and_processes_kept_current() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AgentStore::open(dir.path()).unwrap();
        let ev = |pid: u32, ty: ProcessEventType, name: &str| {
            let mut e = ProcessEvent::new(pid, name);
            e.event_type = ty;
            e.accessible = true;
            e.command_line = vec![name.to_owned(), "-x".to_owned()];
            if ty == ProcessEventType::Exit {
                e.exit_code = Some(256);
            }
            e
        };
        let done = store
            .record_events(&[
                ev(10, ProcessEventType::Snapshot, "init"),
                ev(11, ProcessEventType::Fork, "sh"),
                ev(11, ProcessEventType::Exec, "ls"),
                ev(12, ProcessEventType::Exec, "sleep"),
                ev(11, ProcessEventType::Exit, "ls"),
            ])
            .unwrap();
        assert_eq!(
            done,
            Recorded {
                lifecycle: 4,
                upserted: 4,
                removed: 1
            }
        );
        let ro = AgentStore::open_read_only(dir.path()).unwrap();
        let live = ro
            .query("SELECT pid, name, argv FROM processes ORDER BY pid")
            .unwrap();
        let listed: Vec<(u32, String)> = ro
            .processes()
            .unwrap()
            .into_iter()
            .map(|p| (p.pid, p.argv.join(" ")))
            .collect();
        assert_eq!(
            listed,
            vec![(10, "init -x".to_owned()), (12, "sleep -x".to_owned())]
        );
        let want: Vec<Vec<serde_json::Value>> = vec![
            vec![10.into(), "init".into(), "[\"init\",\"-x\"]".into()],
            vec![12.into(), "sleep".into(), "[\"sleep\",\"-x\"]".into()],
        ];
        assert_eq!(live.rows, want);
        let events = ro
            .query("SELECT event_type, pid, exit_code FROM process_events ORDER BY id")
            .unwrap();
        assert_eq!(
            events.rows,
            vec![
                vec!["fork".into(), 11.into(), serde_json::Value::Null],
                vec!["exec".into(), 11.into(), serde_json::Value::Null],
                vec!["exec".into(), 12.into(), serde_json::Value::Null],
                vec!["exit".into(), 11.into(), 256.into()],
            ]
        );
        // Snapshots are not lifecycle events: four ledger entries, which
        // verify; the ledgered content is the event.
        let v = ro.verify_ledger().unwrap();
        assert_eq!(v.entries, 4);
        let content = ro
            .query("SELECT content FROM ledger WHERE seq = 4")
            .unwrap()
            .rows[0][0]
            .clone();
        let back: ProcessEvent = serde_json::from_str(content.as_str().unwrap()).unwrap();
        assert_eq!(back.event_type, ProcessEventType::Exit);
        assert_eq!(back.exit_code, Some(256));
        // A deleted lifecycle entry is found.
        store
            .conn
            .execute("DELETE FROM ledger WHERE seq = 2", [])
            .unwrap();
        assert!(matches!(
            ro.verify_ledger(),
            Err(StoreError::Ledger(LedgerError::Broken { seq: 2, .. }))
        ));
    }
}
