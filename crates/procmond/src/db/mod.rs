//! The audit database: process snapshots and lifecycle events in SQLite.
//!
//! [`DatabaseManager`] owns one SQLite connection in WAL mode and writes in
//! batched transactions: [`write_snapshot`](DatabaseManager::write_snapshot)
//! stores one full process table, [`write_events`](DatabaseManager::write_events)
//! appends lifecycle events. Both also keep `processes`, the last known state
//! of each process key, up to date. [`DbWriter`] puts a manager on its own
//! blocking thread behind a bounded queue, for the async runtime: the runtime
//! sends events through a [`DbWriterHandle`] and never waits on SQLite, and
//! [`close`](DbWriterHandle::close) commits everything queued before it
//! returns, so nothing accepted is lost on SIGTERM.
//!
//! ```
//! use collector_core::ProcessEvent;
//! use procmond::db::DatabaseManager;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("audit.db");
//! // In production: DatabaseManager::new("/var/lib/daemoneye/audit.db")?
//! let mut db = DatabaseManager::new(&path)?;
//! db.write_events(&[ProcessEvent::new(4242, "sshd")])?;
//! assert_eq!(db.count_events()?, 1);
//! assert_eq!(db.recent_events(10)?[0].event.name, "sshd");
//! # Ok(())
//! # }
//! ```
//!
//! # Schema
//! Versioned with `PRAGMA user_version` and migrated on open (see
//! [`SCHEMA_VERSION`]); a database written by a newer build is refused with
//! [`DbError::NewerSchema`] rather than misread. Tables:
//!
//! | table | one row per | key columns |
//! |---|---|---|
//! | `snapshots` | snapshot | `id`, `taken_at`, `process_count` |
//! | `process_snapshots` | process in a snapshot | `snapshot_id`, `process_key`, `pid`, `observed_at` |
//! | `lifecycle_events` | lifecycle event | `id` (autoincrement), `event_type`, `process_key`, `pid`, `exit_code`, `observed_at` |
//! | `processes` | process key (last known state) | `process_key`, `first_seen`, `last_seen`, `last_event_type`, `exit_code`, `exited_at` |
//!
//! Every process table also has `ppid`, `name`, `exe`, `argv` (JSON array),
//! `uid`, `start_time`, `cpu_percent`, `rss_bytes`, `exe_hash`,
//! `hash_algorithm`, `accessible`, `file_exists` and `metadata` (JSON object).
//! Times are integer unix nanoseconds; `process_key` is `boot_id:pid:start_ticks`.
//!
//! # Durability
//! WAL with `synchronous=NORMAL`: a committed transaction survives the
//! process being killed; after a power loss the last transactions before it
//! may be rolled back, never corrupted. The file is created owner-only (0600);
//! SQLite gives the `-wal` and `-shm` files the same mode.

mod schema;
mod writer;

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use collector_core::{HashAlgorithm, ProcessEvent, ProcessEventType, ProcessKey};
use rusqlite::{params, Connection, OpenFlags, Row, TransactionBehavior};

pub use schema::SCHEMA_VERSION;
pub use writer::{
    DbWriter, DbWriterConfig, DbWriterHandle, DbWriterStats, DEFAULT_BATCH_DELAY_MS,
    DEFAULT_BATCH_EVENTS, DEFAULT_QUEUE_EVENTS,
};

/// How long a statement waits for another connection's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors from the audit database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The directory that should hold the database does not exist; it is not
    /// created for the caller, so a typo in a path fails loudly.
    #[error("database directory {dir} does not exist")]
    DirectoryMissing {
        /// The missing directory.
        dir: PathBuf,
    },
    /// The database file could not be created.
    #[error("cannot create database file {path}")]
    Create {
        /// The database file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// SQLite could not open or configure the file (not a database, locked,
    /// unreadable, ...).
    #[error("cannot open database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The file system refused WAL mode (for example a network file system).
    #[error("database {path} cannot use wal journal mode (it stays in {found})")]
    JournalMode {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite reported instead.
        found: String,
    },
    /// A schema migration failed; its transaction was rolled back.
    #[error("migration to schema version {version} failed")]
    Migration {
        /// The version the migration would have produced.
        version: u32,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer build whose schema this one does
    /// not know.
    #[error("database schema version {found} is newer than this build supports ({supported})")]
    NewerSchema {
        /// The `user_version` found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: u32,
    },
    /// The `user_version` is negative: the file is not one of ours.
    #[error("database schema version {found} is not a valid version")]
    InvalidSchemaVersion {
        /// The `user_version` found in the file.
        found: i64,
    },
    /// A value could not be encoded for storage.
    #[error("cannot encode field {field}")]
    Encode {
        /// The field of the event.
        field: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored value could not be decoded (the row was edited by hand, or a
    /// bug wrote it).
    #[error("cannot decode column {column} of {table}: {reason}")]
    Decode {
        /// The table read.
        table: &'static str,
        /// The column read.
        column: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// A statement failed.
    #[error("sqlite statement failed")]
    Sqlite(#[from] rusqlite::Error),
    /// A [`DbWriterConfig`] field is out of range.
    #[error("invalid database writer config: {field} {reason}")]
    InvalidWriterConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The [`DbWriter`] has closed: the events were not accepted.
    #[error("database writer is closed")]
    WriterClosed,
}

/// The id of a stored snapshot (`snapshots.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(pub i64);

/// One row of `lifecycle_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// `lifecycle_events.id`: increases with every event written.
    pub id: i64,
    /// The event as written.
    pub event: ProcessEvent,
}

/// One row of `snapshots`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's id.
    pub id: SnapshotId,
    /// The latest observation time among its processes (or the time it was
    /// written, when it was empty).
    pub taken_at: SystemTime,
    /// The number of processes in it.
    pub process_count: u64,
}

/// One row of `process_snapshots`: one process as seen by one snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRow {
    /// The snapshot the row belongs to.
    pub snapshot_id: SnapshotId,
    /// The process as written (`event_type` reads back as
    /// [`ProcessEventType::Snapshot`], `exit_code` as `None`).
    pub process: ProcessEvent,
}

/// One row of `processes`: the last known state of one process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRecord {
    /// The process.
    pub key: ProcessKey,
    /// Its latest state: each field is the latest known value (a later event
    /// that lacks a field, such as an exit event without argv, keeps the
    /// earlier value); `event_type` is the latest event's, `timestamp` is
    /// `last_seen`.
    pub latest: ProcessEvent,
    /// When it was first recorded.
    pub first_seen: SystemTime,
    /// When it exited, if an exit was recorded.
    pub exited_at: Option<SystemTime>,
}

/// The audit database: one SQLite connection, WAL mode, migrated schema.
///
/// Not `Sync`: share it as `Arc<Mutex<DatabaseManager>>`, or better give it
/// to a [`DbWriter`] and talk to it through the handle.
#[derive(Debug)]
pub struct DatabaseManager {
    conn: Connection,
    path: PathBuf,
}

impl DatabaseManager {
    /// Opens (creating if needed) the database at `path` and migrates it to
    /// [`SCHEMA_VERSION`].
    ///
    /// The parent directory must exist ([`DbError::DirectoryMissing`]
    /// otherwise). A new file is created with mode 0600. The connection uses
    /// WAL, `synchronous=NORMAL`, foreign keys and a [`BUSY_TIMEOUT`].
    ///
    /// # Errors
    /// [`DbError::DirectoryMissing`], [`DbError::Create`], [`DbError::Open`]
    /// (not a database, unreadable), [`DbError::JournalMode`],
    /// [`DbError::NewerSchema`], [`DbError::InvalidSchemaVersion`],
    /// [`DbError::Migration`].
    pub fn new(path: impl AsRef<Path>) -> Result<Self, DbError> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(DbError::DirectoryMissing {
                dir: dir.to_path_buf(),
            });
        }
        create_owner_only(&path)?;
        let open_err = |source| DbError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DbError::JournalMode { path, found: mode });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        schema::migrate(&mut conn)?;
        Ok(Self { conn, path })
    }

    /// The path the database was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, DbError> {
        schema::user_version(&self.conn)
    }

    /// Stores one snapshot of the process table, in one transaction, and
    /// updates `processes` for every row that has a process key.
    ///
    /// `taken_at` is the latest `timestamp` among `processes` (now, when the
    /// slice is empty).
    pub fn write_snapshot(&mut self, processes: &[ProcessEvent]) -> Result<SnapshotId, DbError> {
        let taken_at = processes
            .iter()
            .map(|p| p.timestamp)
            .max()
            .unwrap_or_else(SystemTime::now);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = {
            tx.prepare_cached(INSERT_SNAPSHOT)?.execute(params![
                to_nanos(taken_at),
                i64::try_from(processes.len()).unwrap_or(i64::MAX)
            ])?;
            let id = tx.last_insert_rowid();
            let mut insert = tx.prepare_cached(INSERT_SNAPSHOT_ROW)?;
            let mut upsert = tx.prepare_cached(UPSERT_PROCESS)?;
            for p in processes {
                let e = Encoded::new(p)?;
                insert.execute(params![
                    id,
                    e.key,
                    e.pid,
                    e.ppid,
                    e.name,
                    e.exe,
                    e.argv,
                    e.uid,
                    e.start_time,
                    e.cpu,
                    e.rss,
                    e.hash,
                    e.algorithm,
                    e.accessible,
                    e.file_exists,
                    e.metadata,
                    e.observed_at,
                ])?;
                e.upsert(&mut upsert, ProcessEventType::Snapshot, None)?;
            }
            id
        };
        tx.commit()?;
        Ok(SnapshotId(id))
    }

    /// Appends lifecycle events in one transaction and updates `processes`
    /// for every event that has a process key. Returns the number written.
    pub fn write_events(&mut self, events: &[ProcessEvent]) -> Result<usize, DbError> {
        if events.is_empty() {
            return Ok(0);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(INSERT_EVENT)?;
            let mut upsert = tx.prepare_cached(UPSERT_PROCESS)?;
            for ev in events {
                let e = Encoded::new(ev)?;
                insert.execute(params![
                    ev.event_type.as_str(),
                    e.key,
                    e.pid,
                    e.ppid,
                    e.name,
                    e.exe,
                    e.argv,
                    e.uid,
                    e.start_time,
                    e.cpu,
                    e.rss,
                    e.hash,
                    e.algorithm,
                    e.accessible,
                    e.file_exists,
                    ev.exit_code,
                    e.metadata,
                    e.observed_at,
                ])?;
                e.upsert(&mut upsert, ev.event_type, ev.exit_code)?;
            }
        }
        tx.commit()?;
        Ok(events.len())
    }

    /// The `limit` most recent lifecycle events, newest first.
    pub fn recent_events(&self, limit: usize) -> Result<Vec<StoredEvent>, DbError> {
        const T: &str = "lifecycle_events";
        let mut stmt = self.conn.prepare_cached(SELECT_RECENT_EVENTS)?;
        let mut rows = stmt.query([i64::try_from(limit).unwrap_or(i64::MAX)])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut event = decode_process(row, 3, T)?;
            event.event_type = decode_event_type(&row.get::<_, String>(1)?, T)?;
            event.exit_code = row.get(2)?;
            out.push(StoredEvent {
                id: row.get(0)?,
                event,
            });
        }
        Ok(out)
    }

    /// The number of stored lifecycle events.
    pub fn count_events(&self) -> Result<u64, DbError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM lifecycle_events")?
            .query_row([], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The newest snapshot's header, if any snapshot was written.
    pub fn latest_snapshot_info(&self) -> Result<Option<SnapshotInfo>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, taken_at, process_count FROM snapshots ORDER BY id DESC LIMIT 1",
        )?;
        let mut rows = stmt.query([])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        Ok(Some(SnapshotInfo {
            id: SnapshotId(row.get(0)?),
            taken_at: from_nanos(row.get(1)?, "snapshots", "taken_at")?,
            process_count: row.get(2)?,
        }))
    }

    /// The rows of the newest snapshot, ordered by pid (empty when no
    /// snapshot was written).
    pub fn latest_snapshot(&self) -> Result<Vec<SnapshotRow>, DbError> {
        let mut stmt = self.conn.prepare_cached(SELECT_LATEST_SNAPSHOT)?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(SnapshotRow {
                snapshot_id: SnapshotId(row.get(0)?),
                process: decode_process(row, 1, "process_snapshots")?,
            });
        }
        Ok(out)
    }

    /// The last known state of the process `key`.
    pub fn process_by_key(&self, key: &ProcessKey) -> Result<Option<ProcessRecord>, DbError> {
        const T: &str = "processes";
        let mut stmt = self.conn.prepare_cached(SELECT_PROCESS)?;
        let mut rows = stmt.query([key.to_string()])?;
        let Some(row) = rows.next()? else {
            return Ok(None);
        };
        let mut latest = decode_process(row, 4, T)?;
        latest.event_type = decode_event_type(&row.get::<_, String>(0)?, T)?;
        latest.exit_code = row.get(1)?;
        let exited_at = row
            .get::<_, Option<i64>>(3)?
            .map(|n| from_nanos(n, T, "exited_at"))
            .transpose()?;
        Ok(Some(ProcessRecord {
            key: *key,
            latest,
            first_seen: from_nanos(row.get(2)?, T, "first_seen")?,
            exited_at,
        }))
    }
}

/// Measures the lifecycle-event write rate: writes `events` synthetic
/// events ([`bench_events`]) in batches of 1,000 through
/// [`DatabaseManager::write_events`] into a fresh database in `dir`, and
/// returns events per second of wall time (opening and migrating the database
/// is not timed). The file `bench-write-rate.db` is left in `dir`.
#[allow(clippy::disallowed_types)] // a wall-clock measurement, outside any runtime
pub fn bench_write_rate(dir: &Path, events: usize) -> Result<f64, DbError> {
    let path = dir.join("bench-write-rate.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.clone().into_os_string();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DbError::Create {
                    path: PathBuf::from(p),
                    source,
                })
            }
        }
    }
    let mut db = DatabaseManager::new(&path)?;
    let batch = bench_events(events);
    let start = std::time::Instant::now();
    for chunk in batch.chunks(1_000) {
        db.write_events(chunk)?;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(events as f64 / secs)
}

/// `count` synthetic lifecycle events shaped like a busy host's: fork, exec
/// and exit of one process in turn (so `processes` sees inserts and updates),
/// with argv, executable path, hash, metadata and process keys. The same as
/// [`bench_events_from`]`(0, count)`.
pub fn bench_events(count: usize) -> Vec<ProcessEvent> {
    bench_events_from(0, count)
}

/// Events `first..first + count` of the endless sequence [`bench_events`]
/// starts: later events are later in time and name newer processes, so a
/// bench that keeps writing sees the database grow as a host's would.
pub fn bench_events_from(first: usize, count: usize) -> Vec<ProcessEvent> {
    let boot = collector_core::BootId::from_bytes([0x5a; 16]);
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    (first..first.saturating_add(count))
        .map(|i| {
            let n = i / 3;
            let pid = 10_000 + u32::try_from(n % 4_000_000).unwrap_or(0);
            let start_ticks = 1_000_000 + n as u64;
            let event_type = match i % 3 {
                0 => ProcessEventType::Fork,
                1 => ProcessEventType::Exec,
                _ => ProcessEventType::Exit,
            };
            let mut metadata = BTreeMap::new();
            metadata.insert("cgroup".to_owned(), "/system.slice/cron.service".to_owned());
            metadata.insert("state".to_owned(), "R".to_owned());
            ProcessEvent {
                event_type,
                pid,
                ppid: Some(1),
                name: "python3".to_owned(),
                executable_path: Some("/usr/bin/python3.12".to_owned()),
                command_line: vec![
                    "/usr/bin/python3".to_owned(),
                    "-m".to_owned(),
                    "worker".to_owned(),
                    format!("--job={n}"),
                ],
                start_time: Some(base + Duration::from_millis(n as u64)),
                cpu_usage: Some(1.5),
                memory_usage: Some(12_345_678),
                executable_hash: Some("ab".repeat(32)),
                hash_algorithm: Some(HashAlgorithm::Blake3),
                user_id: Some(1000),
                accessible: true,
                file_exists: true,
                timestamp: base + Duration::from_micros(i as u64),
                platform_metadata: metadata,
                process_key: Some(ProcessKey::new(boot, pid, start_ticks)),
                exit_code: (event_type == ProcessEventType::Exit).then_some(0),
            }
        })
        .collect()
}

const INSERT_SNAPSHOT: &str = "INSERT INTO snapshots (taken_at, process_count) VALUES (?1, ?2)";

const INSERT_SNAPSHOT_ROW: &str = "INSERT INTO process_snapshots (snapshot_id, process_key, \
     pid, ppid, name, exe, argv, uid, start_time, cpu_percent, rss_bytes, exe_hash, \
     hash_algorithm, accessible, file_exists, metadata, observed_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";

const INSERT_EVENT: &str = "INSERT INTO lifecycle_events (event_type, process_key, pid, \
     ppid, name, exe, argv, uid, start_time, cpu_percent, rss_bytes, exe_hash, \
     hash_algorithm, accessible, file_exists, exit_code, metadata, observed_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)";

/// Last known state: a newer observation replaces each field it carries and
/// keeps the ones it lacks (an exit event has no argv); an older one, arriving
/// late, changes nothing.
const UPSERT_PROCESS: &str = "INSERT INTO processes (process_key, pid, ppid, name, exe, \
     argv, uid, start_time, cpu_percent, rss_bytes, exe_hash, hash_algorithm, accessible, \
     file_exists, metadata, first_seen, last_seen, last_event_type, exit_code, exited_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?16, \
     ?17, ?18, ?19) \
     ON CONFLICT (process_key) DO UPDATE SET \
       pid = excluded.pid, \
       ppid = coalesce(excluded.ppid, ppid), \
       name = CASE WHEN excluded.name <> '' THEN excluded.name ELSE name END, \
       exe = coalesce(excluded.exe, exe), \
       argv = CASE WHEN excluded.argv <> '[]' THEN excluded.argv ELSE argv END, \
       uid = coalesce(excluded.uid, uid), \
       start_time = coalesce(excluded.start_time, start_time), \
       cpu_percent = coalesce(excluded.cpu_percent, cpu_percent), \
       rss_bytes = coalesce(excluded.rss_bytes, rss_bytes), \
       hash_algorithm = CASE WHEN excluded.exe_hash IS NOT NULL \
         THEN excluded.hash_algorithm ELSE hash_algorithm END, \
       exe_hash = coalesce(excluded.exe_hash, exe_hash), \
       accessible = excluded.accessible, \
       file_exists = excluded.file_exists, \
       metadata = CASE WHEN excluded.metadata <> '{}' THEN excluded.metadata ELSE metadata END, \
       last_seen = excluded.last_seen, \
       last_event_type = excluded.last_event_type, \
       exit_code = coalesce(excluded.exit_code, exit_code), \
       exited_at = coalesce(excluded.exited_at, exited_at) \
     WHERE excluded.last_seen >= processes.last_seen";

/// The columns [`decode_process`] reads, in its order.
macro_rules! process_columns {
    () => {
        "process_key, pid, ppid, name, exe, argv, uid, start_time, cpu_percent, rss_bytes, \
         exe_hash, hash_algorithm, accessible, file_exists, metadata, observed_at"
    };
}

const SELECT_RECENT_EVENTS: &str = concat!(
    "SELECT id, event_type, exit_code, ",
    process_columns!(),
    " FROM lifecycle_events ORDER BY id DESC LIMIT ?1"
);

const SELECT_LATEST_SNAPSHOT: &str = concat!(
    "SELECT snapshot_id, ",
    process_columns!(),
    " FROM process_snapshots WHERE snapshot_id = (SELECT max(id) FROM snapshots) \
     ORDER BY pid, rowid"
);

const SELECT_PROCESS: &str = "SELECT last_event_type, exit_code, first_seen, exited_at, \
     process_key, pid, ppid, name, exe, argv, uid, start_time, cpu_percent, rss_bytes, \
     exe_hash, hash_algorithm, accessible, file_exists, metadata, last_seen \
     FROM processes WHERE process_key = ?1";

/// A [`ProcessEvent`] in column form.
struct Encoded<'a> {
    key: Option<String>,
    pid: u32,
    ppid: Option<u32>,
    name: &'a str,
    exe: Option<&'a str>,
    argv: String,
    uid: Option<u32>,
    start_time: Option<i64>,
    cpu: Option<f64>,
    rss: Option<i64>,
    hash: Option<&'a str>,
    algorithm: Option<&'static str>,
    accessible: bool,
    file_exists: bool,
    metadata: String,
    observed_at: i64,
}

impl<'a> Encoded<'a> {
    fn new(p: &'a ProcessEvent) -> Result<Self, DbError> {
        Ok(Self {
            key: p.process_key.map(|k| k.to_string()),
            pid: p.pid,
            ppid: p.ppid,
            name: &p.name,
            exe: p.executable_path.as_deref(),
            argv: serde_json::to_string(&p.command_line).map_err(|source| DbError::Encode {
                field: "command_line",
                source,
            })?,
            uid: p.user_id,
            start_time: p.start_time.map(to_nanos),
            cpu: p.cpu_usage,
            // Saturates: no resident set reaches 2^63 bytes, and one absurd
            // value must not fail the batch it is in.
            rss: p.memory_usage.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            hash: p.executable_hash.as_deref(),
            algorithm: p.hash_algorithm.map(HashAlgorithm::as_str),
            accessible: p.accessible,
            file_exists: p.file_exists,
            metadata: serde_json::to_string(&p.platform_metadata).map_err(|source| {
                DbError::Encode {
                    field: "platform_metadata",
                    source,
                }
            })?,
            observed_at: to_nanos(p.timestamp),
        })
    }

    fn upsert(
        &self,
        stmt: &mut rusqlite::CachedStatement<'_>,
        event_type: ProcessEventType,
        exit_code: Option<i32>,
    ) -> Result<(), DbError> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let exited_at = (event_type == ProcessEventType::Exit).then_some(self.observed_at);
        stmt.execute(params![
            key,
            self.pid,
            self.ppid,
            self.name,
            self.exe,
            self.argv,
            self.uid,
            self.start_time,
            self.cpu,
            self.rss,
            self.hash,
            self.algorithm,
            self.accessible,
            self.file_exists,
            self.metadata,
            self.observed_at,
            event_type.as_str(),
            exit_code,
            exited_at,
        ])?;
        Ok(())
    }
}

/// Reads the [`process_columns!`] starting at column `base`.
fn decode_process(
    row: &Row<'_>,
    base: usize,
    table: &'static str,
) -> Result<ProcessEvent, DbError> {
    let decode = |column: &'static str, reason: String| DbError::Decode {
        table,
        column,
        reason,
    };
    let process_key = row
        .get::<_, Option<String>>(base)?
        .map(|k| k.parse::<ProcessKey>())
        .transpose()
        .map_err(|e| decode("process_key", e.to_string()))?;
    let argv: String = row.get(base + 5)?;
    let command_line = serde_json::from_str(&argv).map_err(|e| decode("argv", e.to_string()))?;
    let metadata: String = row.get(base + 14)?;
    let platform_metadata =
        serde_json::from_str(&metadata).map_err(|e| decode("metadata", e.to_string()))?;
    let hash_algorithm = row
        .get::<_, Option<String>>(base + 11)?
        .map(|a| {
            serde_json::from_value::<HashAlgorithm>(serde_json::Value::String(a))
                .map_err(|e| decode("hash_algorithm", e.to_string()))
        })
        .transpose()?;
    let start_time = row
        .get::<_, Option<i64>>(base + 7)?
        .map(|n| from_nanos(n, table, "start_time"))
        .transpose()?;
    Ok(ProcessEvent {
        event_type: ProcessEventType::Snapshot,
        pid: row.get(base + 1)?,
        ppid: row.get(base + 2)?,
        name: row.get(base + 3)?,
        executable_path: row.get(base + 4)?,
        command_line,
        start_time,
        cpu_usage: row.get(base + 8)?,
        memory_usage: row.get(base + 9)?,
        executable_hash: row.get(base + 10)?,
        hash_algorithm,
        user_id: row.get(base + 6)?,
        accessible: row.get(base + 12)?,
        file_exists: row.get(base + 13)?,
        timestamp: from_nanos(row.get(base + 15)?, table, "observed_at")?,
        platform_metadata,
        process_key,
        exit_code: None,
    })
}

fn decode_event_type(text: &str, table: &'static str) -> Result<ProcessEventType, DbError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|e| {
        DbError::Decode {
            table,
            column: "event_type",
            reason: e.to_string(),
        }
    })
}

/// Unix nanoseconds, saturating outside 1677..2262.
fn to_nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn from_nanos(n: i64, table: &'static str, column: &'static str) -> Result<SystemTime, DbError> {
    let abs = Duration::from_nanos(n.unsigned_abs());
    if n >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(abs)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(abs)
    }
    .ok_or_else(|| DbError::Decode {
        table,
        column,
        reason: format!("{n} ns is not a representable time"),
    })
}

/// Creates `path` owner-only unless it exists (an existing file keeps the
/// mode its owner gave it).
fn create_owner_only(path: &Path) -> Result<(), DbError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(DbError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn open() -> (tempfile::TempDir, DatabaseManager) {
        let dir = tempfile::tempdir().unwrap();
        let db = DatabaseManager::new(dir.path().join("audit.db")).unwrap();
        (dir, db)
    }

    #[test]
    fn nanos_round_trip_at_the_edges() {
        for n in [0, 1, -1, i64::MAX, i64::MIN + 1, 1_750_000_000_123_456_789] {
            assert_eq!(to_nanos(from_nanos(n, "t", "c").unwrap()), n);
        }
    }

    #[test]
    fn new_database_is_wal_owner_only_and_at_the_latest_version() {
        let (dir, db) = open();
        assert_eq!(db.schema_version().unwrap(), i64::from(SCHEMA_VERSION));
        let mode: String = db
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = db
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "synchronous=NORMAL");
        let fk: i64 = db
            .conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let meta = std::fs::metadata(dir.path().join("audit.db")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn missing_directory_is_a_typed_error_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = DatabaseManager::new(missing.join("audit.db")).unwrap_err();
        assert!(matches!(err, DbError::DirectoryMissing { ref dir } if *dir == missing));
        assert!(!missing.exists());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        std::fs::write(&path, vec![0xa5; 8192]).unwrap();
        assert!(matches!(
            DatabaseManager::new(&path),
            Err(DbError::Open { .. })
        ));
    }

    #[test]
    fn saturated_rss_is_stored_not_refused() {
        let (_dir, mut db) = open();
        let mut e = ProcessEvent::new(7, "big");
        e.memory_usage = Some(u64::MAX);
        db.write_events(&[e]).unwrap();
        let back = db.recent_events(1).unwrap();
        assert_eq!(back[0].event.memory_usage, Some(i64::MAX as u64));
    }

    #[test]
    fn processes_keeps_fields_a_later_exit_lacks() {
        let (_dir, mut db) = open();
        let key = ProcessKey::new(collector_core::BootId::from_bytes([1; 16]), 42, 99);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let exec = ProcessEvent {
            event_type: ProcessEventType::Exec,
            pid: 42,
            name: "curl".into(),
            executable_path: Some("/usr/bin/curl".into()),
            command_line: vec!["curl".into(), "-s".into()],
            timestamp: t0,
            process_key: Some(key),
            ..ProcessEvent::default()
        };
        let exit = ProcessEvent {
            event_type: ProcessEventType::Exit,
            pid: 42,
            timestamp: t0 + Duration::from_secs(2),
            process_key: Some(key),
            exit_code: Some(256),
            accessible: false,
            ..ProcessEvent::default()
        };
        db.write_events(&[exec.clone(), exit.clone()]).unwrap();
        // A late, older observation changes nothing.
        let mut late = exec.clone();
        late.name = "stale".into();
        late.timestamp = t0 - Duration::from_secs(1);
        db.write_events(&[late]).unwrap();

        let rec = db.process_by_key(&key).unwrap().unwrap();
        assert_eq!(rec.latest.name, "curl");
        assert_eq!(rec.latest.executable_path.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(rec.latest.command_line, exec.command_line);
        assert_eq!(rec.latest.event_type, ProcessEventType::Exit);
        assert_eq!(rec.latest.exit_code, Some(256));
        assert!(!rec.latest.accessible);
        assert_eq!(rec.first_seen, t0);
        assert_eq!(rec.latest.timestamp, exit.timestamp);
        assert_eq!(rec.exited_at, Some(exit.timestamp));
        assert!(db
            .process_by_key(&ProcessKey::new(key.boot_id, 43, 99))
            .unwrap()
            .is_none());
    }

    #[test]
    fn corrupt_rows_are_decode_errors_not_panics() {
        let (_dir, mut db) = open();
        db.write_events(&[ProcessEvent::new(5, "x")]).unwrap();
        db.conn
            .execute(
                "UPDATE lifecycle_events SET argv = 'not json', event_type = 'bogus'",
                [],
            )
            .unwrap();
        assert!(matches!(db.recent_events(10), Err(DbError::Decode { .. })));
    }

    #[test]
    fn empty_snapshot_and_empty_event_batch_are_fine() {
        let (_dir, mut db) = open();
        assert_eq!(db.write_events(&[]).unwrap(), 0);
        assert!(db.latest_snapshot().unwrap().is_empty());
        assert!(db.latest_snapshot_info().unwrap().is_none());
        let id = db.write_snapshot(&[]).unwrap();
        let info = db.latest_snapshot_info().unwrap().unwrap();
        assert_eq!((info.id, info.process_count), (id, 0));
        assert!(db.latest_snapshot().unwrap().is_empty());
    }

    #[test]
    fn bench_events_are_valid_events() {
        for e in bench_events(30) {
            collector_core::CollectionEvent::Process(e)
                .validate()
                .unwrap();
        }
    }
}
