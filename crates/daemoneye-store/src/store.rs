//! [`Store`]: one SQLite database in WAL mode holding processes, their
//! lifecycle events, snapshots, alerts and the audit ledger.
//!
//! The same store serves procmond standalone (`procmond run --database`,
//! where it is the reference's `Store`) and the agent
//! (`<data-dir>/agent.db`). Writes are batched transactions:
//! [`write_snapshot`](Store::write_snapshot) stores one full process table,
//! [`write_events`](Store::write_events) appends lifecycle events and
//! [`record_events`](Store::record_events) takes a collector's stream (its
//! periodic snapshots only refresh `processes`); every alert
//! ([`record_alert`](Store::record_alert)) and every write's lifecycle events
//! (one entry for the batch) are appended to the [audit ledger](crate::ledger)
//! in the same transaction. [`prune`](Store::prune) holds the store to a
//! [`Retention`](crate::Retention). Readers open it with
//! [`open_read_only`](Store::open_read_only) and may run one read-only
//! `SELECT` ([`query`](Store::query)).
//!
//! ```
//! use collector_core::{ProcessEvent, ProcessEventType};
//! use daemoneye_store::Store;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("audit.db");
//! // In production: Store::new("/var/lib/daemoneye/audit.db")?
//! let mut db = Store::new(&path)?;
//! db.write_events(&[ProcessEvent::new(4242, "sshd")])?;
//! assert_eq!(db.count_events()?, 1);
//! assert_eq!(db.recent_events(10)?[0].event.name, "sshd");
//! assert_eq!(db.verify_ledger()?.entries, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # Schema
//! Versioned with `PRAGMA user_version` and migrated on open (see
//! [`SCHEMA_VERSION`](crate::SCHEMA_VERSION)); a database written by a newer build is refused with
//! [`StoreError::NewerSchema`] rather than misread. Tables:
//!
//! | table | one row per | key columns |
//! |---|---|---|
//! | `processes` | running process (last known state; an exit removes it) | `process_key`, `first_seen`, `last_seen`, `last_event_type` |
//! | `process_events` (a view of `process_event_rows` with the texts of `strings` put back) | lifecycle event; an exec also holds its process's fork and exit when they came in its batch (see `events`) | `id` (autoincrement), `event_type`, `process_key`, `pid`, `exit_code`, `observed_at`, `ledger_seq` (its batch's entry), `forked_at`, `fork_event_id`, `exited_at`, `exit_event_id` |
//! | `strings` | text lifecycle rows share (name, executable, hash, hash algorithm, container id, cgroup) | `id`, `value` |
//! | `snapshots` | snapshot | `id`, `taken_at`, `process_count` |
//! | `process_snapshots` | process in a snapshot | `snapshot_id`, `process_key`, `pid`, `observed_at` |
//! | `alerts` | alert | `id`, `rule_id`, `rule_name`, `severity`, `pid`, `process_key`, `dedup_key`, `observed_at`, `raised_at`, `body` (JSON), `ledger_seq` |
//! | `performance` | performance sample or anomaly (not on the ledger; pruned to the writer's `performance_retention`) | the columns of `collector_core::vocabulary::PERFORMANCE`: `observed_at`, `metric`, `unit`, `value`, `subject_kind`, `subject_name`, `pid`, `process_key`, `anomaly`, `anomaly_threshold`, `anomaly_duration_ms`, `event_id` |
//! | `connections` | socket as one process holding it sees it (not on the ledger; pruned to the writer's `connections_retention` and the store's retention) | the columns of `collector_core::vocabulary::NETWORK`: `observed_at`, `connection_id`, `protocol`, `family`, `state`, `direction`, `change`, `local_address`, `local_port`, `remote_address`, `remote_port`, `pid`, `process_key`, `fd`, `holders`, `uid`, `inode`, `netns`, `tier`, `event_id` |
//! | `file_events` | file operation (not on the ledger; pruned to the writer's `file_events_retention` and the store's retention) | the stored columns of `collector_core::vocabulary::FILE`: `observed_at`, `operation`, `path`, `old_path`, `root`, `file_type`, `size`, `mode`, `previous_mode`, `owner_uid`, `owner_gid`, `hash`, `previous_hash`, `hash_algorithm`, `pid`, `process_key`, `event_id` |
//! | `outbox` | item waiting for a broker's acknowledgement (see [`outbox`](crate::outbox); `outbox_state` holds the counts dropped when full: `dropped` alerts and checkpoints, `dropped_events`) | `id`, `kind` (`alert`, `checkpoint`, `event.<domain>`), `msg_id` (`alert-<alert id>`, `checkpoint-<seq>`, `event-<domain>-<event id>`), `body`, `queued_at`, `priority` (0 events, 1 alerts, 2 checkpoints: dropped lowest first) |
//! | `ledger` | ledger entry | `seq`, `kind` (`process_events` for a batch of lifecycle events, `alert`, `gap`, `start`, `stop`, `checkpoint`, `prune`; `process_event` before schema 6), `content`, `prev_hash`, `entry_hash` |
//!
//! Every process table also has `ppid`, `name`, `exe`, `argv` (JSON array),
//! `uid`, `start_time`, `cpu_percent`, `rss_bytes`, `exe_hash`,
//! `hash_algorithm`, `accessible`, `file_exists` and `metadata` (JSON object).
//! Times are integer unix nanoseconds; `process_key` is `boot_id:pid:start_ticks`.
//! A pid alone does not name a process: events without a process key are
//! stored as events but do not enter `processes`.
//!
//! # Durability
//! WAL with `synchronous=NORMAL`: a committed transaction survives the
//! process being killed; after a power loss the last transactions before it
//! may be rolled back, never corrupted. The file is created owner-only (0600);
//! SQLite gives the `-wal` and `-shm` files the same mode.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use collector_core::{
    EventId, EventKind, HashAlgorithm, LifecycleDetail, ProcessContext, ProcessEvent,
    ProcessEventType, ProcessKey, ReadDepth,
};
use rusqlite::types::ToSql;
use rusqlite::{params, Connection, OpenFlags, Row, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::ledger::{self, Chain, LedgerError, Verified};
use crate::schema;
use crate::timed::TimedBatch;

/// The agent's database file inside its data directory.
pub const FILE: &str = "agent.db";

/// The longest an ad-hoc [`Store::query`] may run.
pub const QUERY_TIME_LIMIT: Duration = Duration::from_secs(5);

/// The size the WAL file is cut back to after a checkpoint, in bytes: more
/// than the log the writer starts again (`wal::RESTART_PAGES`, about 8 MiB),
/// so that a sustained load reuses the file rather than cutting it back and
/// growing it again at every restart.
pub const WAL_SIZE_LIMIT: i64 = 16 << 20;

/// How long a statement waits for another connection's lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
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
    /// A reader found a database an older build wrote and not yet migrated
    /// (readers cannot migrate: open it once read-write, as the agent does).
    #[error("database schema version {found} is older than this build reads ({supported}); open it read-write once to migrate it")]
    OlderSchema {
        /// The `user_version` found in the file.
        found: i64,
        /// The version this build reads.
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
    /// The ledger failed (or does not verify).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// An ad-hoc query was refused or failed.
    #[error("query refused: {reason}")]
    Query {
        /// Why.
        reason: String,
    },
    /// The writer thread could not be started.
    #[error("cannot start the store writer thread")]
    Spawn(#[source] io::Error),
    /// A [`WriterConfig`](crate::WriterConfig) field is out of range.
    #[error("invalid database writer config: {field} {reason}")]
    InvalidWriterConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The [`StoreWriter`](crate::StoreWriter) has closed: the write was not
    /// accepted.
    #[error("database writer is closed")]
    WriterClosed,
    /// The store is failing and the writer holds writes for it: an entry of
    /// the ledger's own would come before them, so it is not written.
    #[error("the store is failing: {held} writes are held, the entry would come before them")]
    Failing {
        /// The weight of the held writes.
        held: usize,
    },
}

/// The id of a stored snapshot (`snapshots.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SnapshotId(pub i64);

/// One row of `process_events`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// `process_events.id`: increases with every row written.
    pub id: i64,
    /// The event as written (an exec that took in its process's exit has
    /// the exit's code).
    pub event: ProcessEvent,
    /// For an exec: when its process was forked, if the fork is in this row.
    pub forked_at: Option<SystemTime>,
    /// For an exec: when its process exited, if the exit is in this row.
    pub exited_at: Option<SystemTime>,
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

/// A row of `processes` as [`Store::processes`] lists it (the processes
/// running as last reported).
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

/// What [`Store::record_events`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Lifecycle events stored (each with a ledger entry).
    pub lifecycle: u64,
    /// Rows of `processes` inserted or updated.
    pub upserted: u64,
    /// Rows of `processes` marked exited.
    pub removed: u64,
    /// Snapshots stored.
    pub snapshots: u64,
    /// Performance samples stored.
    pub performance: u64,
    /// Performance rows pruned past their retention.
    pub pruned: u64,
    /// Connection rows stored.
    pub connections: u64,
    /// Connection rows pruned past their retention.
    pub connections_pruned: u64,
    /// File-event rows stored.
    pub file_events: u64,
    /// File-event rows pruned past their retention.
    pub file_events_pruned: u64,
}

/// The result of [`Store::query`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows, each value as JSON (integers, reals, text, null; blobs as hex).
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// What the store appends to the ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum LedgerMode {
    /// Every alert, and every write's lifecycle events under one entry
    /// (the agent's store).
    #[default]
    EveryWrite,
    /// Alerts only: lifecycle events are stored without a ledger entry
    /// (`ledger_seq` NULL), about a tenth faster (`daemoneye-bench db`, one
    /// run: 53,519 against 48,052 events/s). procmond
    /// standalone stores this way, as its audit database always did.
    AlertsOnly,
}

/// Which events of a batch are lifecycle events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    /// Every event given.
    All,
    /// All but periodic snapshots (a collector's stream).
    NotSnapshots,
}

/// The store: one SQLite connection, WAL mode, migrated schema (see the
/// [module docs](self)).
///
/// Not `Sync`: give it to a [`StoreWriter`](crate::StoreWriter) and talk to
/// it through the handle (or share it as `Arc<Mutex<Store>>`).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    ledger: LedgerMode,
    /// The outbox's bound; `None`: alerts are not queued for shipping.
    pub(crate) outbox: Option<usize>,
    /// The outbox's depth as this store last committed it (counted at its
    /// first write), so that a write need not count the table: a count
    /// walks every row, milliseconds at 20,000 items.
    pub(crate) outbox_depth: Option<u64>,
    /// The event domains queued in the outbox too (none: alerts and
    /// checkpoints only).
    pub(crate) shipped: Vec<EventKind>,
    /// The ids of the texts lifecycle rows share (`strings`).
    pub(crate) strings: crate::events::Strings,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it to
    /// [`SCHEMA_VERSION`](crate::SCHEMA_VERSION).
    ///
    /// The parent directory must exist ([`StoreError::DirectoryMissing`]
    /// otherwise). A new file is created with mode 0600. The connection uses
    /// WAL, `synchronous=NORMAL`, foreign keys and a [`BUSY_TIMEOUT`].
    ///
    /// # Errors
    /// [`StoreError::DirectoryMissing`], [`StoreError::Create`], [`StoreError::Open`]
    /// (not a database, unreadable), [`StoreError::JournalMode`],
    /// [`StoreError::NewerSchema`], [`StoreError::InvalidSchemaVersion`],
    /// [`StoreError::Migration`].
    pub fn new(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(StoreError::DirectoryMissing {
                dir: dir.to_path_buf(),
            });
        }
        create_owner_only(&path)?;
        let open_err = |source| StoreError::Open {
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
            return Err(StoreError::JournalMode { path, found: mode });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        // The WAL file is cut back to this after a checkpoint, so a burst
        // does not leave it large.
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(open_err)?;
        schema::migrate(&mut conn)?;
        Ok(Self::over(conn, path))
    }

    /// A store over an open, current `conn`, with the defaults.
    fn over(conn: Connection, path: PathBuf) -> Self {
        Self {
            conn,
            path,
            ledger: LedgerMode::default(),
            outbox: None,
            outbox_depth: None,
            shipped: Vec::new(),
            strings: crate::events::Strings::default(),
        }
    }

    /// Opens (creating if needed) the agent's database, `<dir>/agent.db`
    /// ([`FILE`]), as [`Store::new`] does.
    ///
    /// # Errors
    /// As [`Store::new`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::new(dir.join(FILE))
    }

    /// Opens `<dir>/agent.db` read-only (for the CLI).
    ///
    /// # Errors
    /// As [`Store::open_file_read_only`].
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        Self::open_file_read_only(dir.join(FILE))
    }

    /// Opens the database at `path` read-only. It is not created or
    /// migrated: its schema must be the one this build writes.
    ///
    /// # Errors
    /// [`StoreError::Open`] when it does not exist or cannot be read,
    /// [`StoreError::NewerSchema`] or [`StoreError::OlderSchema`] when its
    /// schema is not this build's.
    pub fn open_file_read_only(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| c.busy_timeout(BUSY_TIMEOUT).map(|()| c))
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        schema::check_current(&conn)?;
        Ok(Self::over(conn, path))
    }

    /// What this store appends to the ledger from now on (default
    /// [`LedgerMode::EveryWrite`]).
    #[must_use]
    pub fn with_ledger(mut self, mode: LedgerMode) -> Self {
        self.ledger = mode;
        self
    }

    /// The connection, for this crate's measurements and tests.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// The path the database was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        schema::user_version(&self.conn)
    }

    /// Stores one snapshot of the process table, in one transaction, and
    /// updates `processes` for every row that has a process key.
    ///
    /// `taken_at` is the latest `timestamp` among `processes` (now, when the
    /// slice is empty).
    pub fn write_snapshot(&mut self, processes: &[ProcessEvent]) -> Result<SnapshotId, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let id = write_snapshot_in(&tx, processes)?;
        tx.commit()?;
        Ok(id)
    }

    /// Appends lifecycle events in one transaction, each with its ledger
    /// entry (unless [`LedgerMode::AlertsOnly`]), and updates `processes` for every event that has a process
    /// key. Every event given is stored as a lifecycle event (whatever its
    /// type). Returns the number written.
    pub fn write_events(&mut self, events: &[ProcessEvent]) -> Result<usize, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        self.strings.begin();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut chain = Chain::load(&tx)?;
        write_events_in(
            &tx,
            &mut chain,
            &mut self.strings,
            self.ledger,
            &[events],
            Lifecycle::All,
        )?;
        tx.commit()?;
        self.strings.committed();
        Ok(events.len())
    }

    /// Records a batch of a collector's events in one transaction:
    /// lifecycle events (everything but periodic snapshots) into
    /// `process_events`, each with its ledger entry, and `processes` brought
    /// up to date (an exit marks the process exited).
    ///
    /// # Errors
    /// SQLite or encoding errors; nothing of the batch is written then.
    pub fn record_events(&mut self, events: &[ProcessEvent]) -> Result<Recorded, StoreError> {
        self.apply(&[Op::Events(events)])
    }

    /// Stores an alert and its ledger entry, atomically. Returns the alert's
    /// row id.
    ///
    /// # Errors
    /// SQLite or encoding errors; nothing is half-written.
    pub fn record_alert(&mut self, alert: &Alert) -> Result<i64, StoreError> {
        let mut depth = self.outbox_depth_now()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut chain = Chain::load(&tx)?;
        let id = write_alert_in(&tx, &mut chain, alert, self.outbox.zip(depth.as_mut()))?;
        tx.commit()?;
        self.outbox_depth = depth.or(self.outbox_depth);
        Ok(id)
    }

    /// Appends one ledger entry of its own (`start`, `stop`, `checkpoint`:
    /// entries with no row), in one transaction; returns the head after it
    /// (its sequence number and hash). `content` is built from the head
    /// before it, read in the same transaction.
    ///
    /// # Errors
    /// SQLite or encoding errors; nothing is appended then.
    pub fn append_entry<T: Serialize>(
        &mut self,
        kind: &str,
        content: impl FnOnce(&ledger::Head) -> T,
    ) -> Result<ledger::Head, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut chain = Chain::load(&tx)?;
        let text = serde_json::to_string(&content(&chain.head())).map_err(|source| {
            StoreError::Encode {
                field: "ledger entry",
                source,
            }
        })?;
        chain.append(&tx, kind, &text)?;
        tx.commit()?;
        Ok(chain.head())
    }

    /// Appends a `checkpoint` entry with `entry`'s content, in one
    /// transaction; when the store ships (an [outbox](crate::outbox) is
    /// set), queues the checkpoint as it leaves the host in that same
    /// transaction (message id `checkpoint-<seq>`), so what the broker has
    /// not acknowledged survives as alerts do. Returns it.
    ///
    /// # Errors
    /// SQLite or encoding errors; nothing is appended or queued then.
    pub fn append_checkpoint(
        &mut self,
        entry: &ledger::CheckpointEntry,
    ) -> Result<ledger::Checkpoint, StoreError> {
        let encode = |source| StoreError::Encode {
            field: "checkpoint",
            source,
        };
        let mut depth = self.outbox_depth_now()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut chain = Chain::load(&tx)?;
        let text = serde_json::to_string(entry).map_err(encode)?;
        chain.append(&tx, "checkpoint", &text)?;
        let head = chain.head();
        let checkpoint = ledger::Checkpoint {
            seq: head.seq,
            head: head.hash,
            time: entry.time,
            lost: entry.lost,
        };
        if let Some((bound, depth)) = self.outbox.zip(depth.as_mut()) {
            let body = serde_json::to_string(&checkpoint).map_err(encode)?;
            crate::outbox::append_in(
                &tx,
                bound,
                depth,
                crate::outbox::OutboxKind::Checkpoint,
                &format!("checkpoint-{}", checkpoint.seq),
                &body,
                unix_nanos_now(),
            )?;
        }
        tx.commit()?;
        self.outbox_depth = depth.or(self.outbox_depth);
        Ok(checkpoint)
    }

    /// Applies `writes` in order, in one transaction (the writer's batch).
    pub(crate) fn apply(&mut self, writes: &[Op<'_>]) -> Result<Recorded, StoreError> {
        let mut depth = self.outbox_depth_now()?;
        self.strings.begin();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut chain = Chain::load(&tx)?;
        let mut done = Recorded::default();
        let mut queued = false;
        let shipped: &[EventKind] = if self.outbox.is_some() {
            &self.shipped
        } else {
            &[]
        };
        let mut rest = writes;
        while let Some((w, after)) = rest.split_first() {
            rest = after;
            match w {
                Op::Events(first) => {
                    // The event batches in a row are written as one: a
                    // process forked, exec'd and gone across the agent's
                    // batches is one row, and the run one ledger entry.
                    let mut run = vec![*first];
                    while let Some((Op::Events(next), after)) = rest.split_first() {
                        run.push(next);
                        rest = after;
                    }
                    let r = write_events_in(
                        &tx,
                        &mut chain,
                        &mut self.strings,
                        self.ledger,
                        &run,
                        Lifecycle::NotSnapshots,
                    )?;
                    done.lifecycle += r.lifecycle;
                    done.upserted += r.upserted;
                    done.removed += r.removed;
                    if let Some(depth) = depth
                        .as_mut()
                        .filter(|_| shipped.contains(&EventKind::Process))
                    {
                        // Shipped as they came: an outbox row a write.
                        for events in &run {
                            let lifecycle = events
                                .iter()
                                .filter(|e| e.event_type != ProcessEventType::Snapshot);
                            queued |= queue_events_in(&tx, depth, EventKind::Process, lifecycle)?;
                        }
                    }
                }
                Op::Alert(alert) => {
                    write_alert_in(&tx, &mut chain, alert, self.outbox.zip(depth.as_mut()))?;
                }
                Op::Timed(batch, retention) => {
                    batch.write_in(&tx, *retention, &mut done)?;
                    if let Some(depth) = depth.as_mut().filter(|_| shipped.contains(&batch.kind()))
                    {
                        queued |= batch.queue_in(&tx, depth)?;
                    }
                }
                Op::Gap(gap) => {
                    let content =
                        serde_json::to_string(gap).map_err(|source| StoreError::Encode {
                            field: "gap",
                            source,
                        })?;
                    chain.append(&tx, "gap", &content)?;
                }
                Op::Snapshot(processes) => {
                    write_snapshot_in(&tx, processes)?;
                    done.snapshots += 1;
                }
                Op::ClearProcesses => {
                    tx.execute("DELETE FROM processes", [])?;
                }
            }
        }
        if let (true, Some(bound), Some(depth)) = (queued, self.outbox, depth.as_mut()) {
            crate::outbox::trim_in(&tx, bound, depth)?;
        }
        tx.commit()?;
        self.strings.committed();
        self.outbox_depth = depth.or(self.outbox_depth);
        Ok(done)
    }

    /// Prunes the store to `retention` in one transaction, `now` (unix
    /// nanoseconds) being the time ages are counted from: cuts the ledger
    /// below a checkpoint, deletes what lies below it, appends a `prune`
    /// entry (see [`retention`](crate::retention)). Returns that entry, or
    /// `None` when nothing was due (or no checkpoint allows a cut).
    ///
    /// # Errors
    /// SQLite or encoding errors; nothing is pruned then.
    pub fn prune(
        &mut self,
        retention: &crate::Retention,
        now: i64,
    ) -> Result<Option<ledger::PruneEntry>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let pruned = crate::retention::prune_in(&tx, retention, now)?;
        tx.commit()?;
        if pruned.is_some() {
            self.strings.forget();
        }
        Ok(pruned)
    }

    /// The bytes of database pages in use (what
    /// [`Retention::max_bytes`](crate::Retention::max_bytes) bounds).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        crate::retention::used_bytes(&self.conn)
    }

    /// Stores events kept for a time in a table of their own (performance
    /// samples, connections or file events; not on the ledger) and prunes
    /// that table to `retention` before the newest of them.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn write_timed(
        &mut self,
        events: impl Into<TimedBatch>,
        retention: Duration,
    ) -> Result<Recorded, StoreError> {
        self.apply(&[Op::Timed(&events.into(), retention)])
    }

    /// Forgets every known process (the collector restarted: its first
    /// snapshot fills the table again, without the processes that exited
    /// while it was down).
    ///
    /// # Errors
    /// SQLite errors.
    pub fn clear_processes(&mut self) -> Result<(), StoreError> {
        self.apply(&[Op::ClearProcesses]).map(drop)
    }

    /// The processes running as last reported (no exit recorded), by pid.
    ///
    /// # Errors
    /// SQLite or decoding errors.
    pub fn processes(&self) -> Result<Vec<StoredProcess>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT pid, ppid, process_key, name, exe, argv, uid, last_event_type, last_seen \
             FROM processes WHERE exited_at IS NULL ORDER BY pid, process_key",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let argv: String = r.get(5)?;
            out.push(StoredProcess {
                pid: r.get(0)?,
                ppid: r.get(1)?,
                process_key: r.get(2)?,
                name: r.get(3)?,
                exe: r.get(4)?,
                argv: serde_json::from_str(&argv).map_err(|e| StoreError::Decode {
                    table: "processes",
                    column: "argv",
                    reason: e.to_string(),
                })?,
                uid: r.get(6)?,
                last_event: r.get(7)?,
                last_seen: r.get(8)?,
            });
        }
        Ok(out)
    }

    /// The most recent alerts, newest first.
    ///
    /// # Errors
    /// SQLite or decoding errors.
    pub fn recent_alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT body FROM alerts ORDER BY id DESC LIMIT ?1")?;
        let mut rows = stmt.query([i64::try_from(limit).unwrap_or(i64::MAX)])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let body: String = r.get(0)?;
            out.push(serde_json::from_str(&body).map_err(|e| StoreError::Decode {
                table: "alerts",
                column: "body",
                reason: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Runs one read-only `SELECT` (over any table of the schema), bounded as
    /// the rules are (see [`query_each`](Self::query_each)), and collects
    /// its rows.
    ///
    /// # Errors
    /// As [`query_each`](Self::query_each).
    pub fn query(&self, sql: &str) -> Result<QueryResult, StoreError> {
        let mut result = QueryResult {
            columns: Vec::new(),
            rows: Vec::new(),
        };
        let mut rows = Vec::new();
        self.query_each(
            sql,
            |columns| {
                result.columns = columns.to_vec();
                Ok(())
            },
            |row| {
                rows.push(row);
                Ok(())
            },
        )?;
        result.rows = rows;
        Ok(result)
    }

    /// Runs one read-only `SELECT` (over any table of the schema) under the
    /// rules' authorizer, function allow-list and limits
    /// ([`readonly`](crate::readonly)), interrupted at [`QUERY_TIME_LIMIT`],
    /// and hands over each row as it comes: `columns` first gets the column
    /// names, then `row` each row's values as JSON (integers, reals, text,
    /// null; blobs as hex), so nothing is held but the current row. The
    /// time limit counts the callbacks too.
    ///
    /// SQLite's heap is not capped here (the cap is process-wide):
    /// `daemoneye-cli query` caps its own process with
    /// [`cap_heap`](crate::readonly::cap_heap).
    ///
    /// # Errors
    /// [`StoreError::Query`] when the statement is not a single read, or
    /// fails or overruns, or a callback fails.
    pub fn query_each(
        &self,
        sql: &str,
        columns: impl FnOnce(&[String]) -> std::io::Result<()>,
        row: impl FnMut(Vec<serde_json::Value>) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        use crate::readonly;
        let refuse = |reason: String| StoreError::Query { reason };
        let denied = readonly::Denied::default();
        // The store's own statements keep their limits and no authorizer.
        let previous =
            readonly::guard(&self.conn, denied.clone()).map_err(|e| refuse(e.to_string()))?;
        let result = readonly::Watchdog::new(&[&self.conn])
            .map_err(|e| refuse(e.to_string()))
            .and_then(|watchdog| {
                watchdog.arm(0, QUERY_TIME_LIMIT);
                let result = run_query(&self.conn, sql, &denied, columns, row);
                watchdog.disarm(0);
                result
            });
        self.conn.authorizer(
            None::<fn(rusqlite::hooks::AuthContext<'_>) -> rusqlite::hooks::Authorization>,
        );
        readonly::restore(&self.conn, &previous).map_err(|e| refuse(e.to_string()))?;
        result
    }

    /// Verifies the ledger: its chain, then the rows it vouches for
    /// ([`ledger::verify_rows`]: an edited or deleted `alerts` or
    /// `process_events` row is caught too).
    ///
    /// # Errors
    /// [`StoreError::Ledger`] with [`LedgerError::Broken`] naming the first
    /// bad entry.
    pub fn verify_ledger(&self) -> Result<Verified, StoreError> {
        let verified = ledger::verify(&self.conn)?;
        ledger::verify_rows(&self.conn)?;
        Ok(verified)
    }

    /// [`verify_ledger`](Self::verify_ledger) against heads kept off the
    /// host: the chain, then every anchor ([`ledger::verify_anchors`]:
    /// a cut tail, a deleted or rebuilt ledger fail), then the rows.
    ///
    /// # Errors
    /// [`StoreError::Ledger`] with the first failure.
    pub fn verify_ledger_anchored(
        &self,
        anchors: &[ledger::Anchor],
    ) -> Result<Verified, StoreError> {
        // A ledger table that is gone is an empty chain, for the anchors.
        let verified = match ledger::verify(&self.conn) {
            Err(LedgerError::Sqlite(e)) if !anchors.is_empty() && !self.has_ledger()? => {
                ledger::verify_anchors(&self.conn, anchors)?;
                return Err(LedgerError::Sqlite(e).into());
            }
            other => other?,
        };
        ledger::verify_anchors(&self.conn, anchors)?;
        ledger::verify_rows(&self.conn)?;
        Ok(verified)
    }

    /// Whether the chain still holds `anchor` (only that: run
    /// [`verify_ledger_anchored`](Self::verify_ledger_anchored) for the
    /// verdict), to say which anchors held.
    ///
    /// # Errors
    /// As [`ledger::verify_anchors`].
    pub fn check_anchor(&self, anchor: &ledger::Anchor) -> Result<(), StoreError> {
        Ok(ledger::verify_anchors(
            &self.conn,
            std::slice::from_ref(anchor),
        )?)
    }

    fn has_ledger(&self) -> Result<bool, StoreError> {
        Ok(self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'ledger'",
            [],
            |r| r.get(0),
        )?)
    }

    /// The agent's runs, checkpoints and gaps as the ledger records them.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn ledger_runs(&self) -> Result<ledger::Runs, StoreError> {
        Ok(ledger::runs(&self.conn)?)
    }

    /// The `limit` most recent lifecycle events, newest first.
    pub fn recent_events(&self, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        const T: &str = "process_events";
        let mut stmt = self.conn.prepare_cached(SELECT_RECENT_EVENTS)?;
        let mut rows = stmt.query([i64::try_from(limit).unwrap_or(i64::MAX)])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut event = decode_process(row, 6, T)?;
            event.event_type = decode_event_type(&row.get::<_, String>(1)?, T)?;
            event.exit_code = row.get(2)?;
            event.id = decode_event_id(row, 3, T)?;
            let time = |i: usize, column: &'static str| {
                row.get::<_, Option<i64>>(i)?
                    .map(|n| from_nanos(n, T, column))
                    .transpose()
            };
            out.push(StoredEvent {
                id: row.get(0)?,
                event,
                forked_at: time(4, "forked_at")?,
                exited_at: time(5, "exited_at")?,
            });
        }
        Ok(out)
    }

    /// The number of stored lifecycle events.
    pub fn count_events(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) + count(forked_at) + count(exited_at) FROM process_event_rows",
            )?
            .query_row([], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The newest snapshot's header, if any snapshot was written.
    pub fn latest_snapshot_info(&self) -> Result<Option<SnapshotInfo>, StoreError> {
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
    pub fn latest_snapshot(&self) -> Result<Vec<SnapshotRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(SELECT_LATEST_SNAPSHOT)?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(SnapshotRow {
                snapshot_id: SnapshotId(row.get(0)?),
                process: ProcessEvent {
                    id: decode_event_id(row, 1, "process_snapshots")?,
                    ..decode_process(row, 2, "process_snapshots")?
                },
            });
        }
        Ok(out)
    }

    /// The last known state of the process `key`: its row of `processes`
    /// while it runs, else its newest row of `process_events`.
    pub fn process_by_key(&self, key: &ProcessKey) -> Result<Option<ProcessRecord>, StoreError> {
        const T: &str = "processes";
        let mut stmt = self.conn.prepare_cached(SELECT_PROCESS)?;
        let mut rows = stmt.query(params![key.to_string(), key.pid])?;
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

/// Queues `events` of domain `kind` in the outbox inside `tx`, as one row
/// (untrimmed: the caller trims once per transaction), each under its
/// stable message id `event-<domain>-<event id>` (for an event without
/// one, a digest of its body: a resend is the same event, the same bytes).
/// Returns whether any was queued.
pub(crate) fn queue_events_in<'e, E: Serialize + crate::timed::Identified + 'e>(
    tx: &Transaction<'_>,
    depth: &mut u64,
    kind: EventKind,
    events: impl IntoIterator<Item = &'e E>,
) -> Result<bool, StoreError> {
    use std::fmt::Write as _;
    let mut batch = crate::outbox::Batch::default();
    for e in events {
        batch
            .push_json(e, |msg_id, body| {
                // Writing to a `String` does not fail.
                let _ = match e.event_id() {
                    Some(id) => write!(msg_id, "event-{kind}-{id}"),
                    None => write!(
                        msg_id,
                        "event-{kind}-b3{}",
                        &blake3::hash(body).to_hex()[..32]
                    ),
                };
            })
            .map_err(|source| StoreError::Encode {
                field: "shipped event",
                source,
            })?;
    }
    batch.queue_in(
        tx,
        depth,
        crate::outbox::OutboxKind::Event(kind),
        unix_nanos_now(),
    )
}

/// One write of a [`StoreWriter`](crate::StoreWriter) batch.
#[derive(Debug)]
pub(crate) enum Op<'a> {
    Events(&'a [ProcessEvent]),
    /// Events kept for a time in a table of their own (samples,
    /// connections, file events), and the retention to prune it to.
    Timed(&'a TimedBatch, Duration),
    /// A ledger entry saying what earlier failed transactions lost.
    Gap(&'a Gap),
    Snapshot(&'a [ProcessEvent]),
    Alert(&'a Alert),
    ClearProcesses,
}

/// What failed transactions lost, recorded in the ledger (kind `gap`) by
/// the first transaction that commits after them: a hole in what the store
/// holds is itself on the chain.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// Events lost.
    pub events_lost: u64,
    /// Writes lost (event batches, alerts, snapshots, other writes).
    pub writes_lost: u64,
    /// When the first of them was lost, unix nanoseconds.
    pub first_lost_at: i64,
    /// When the last of them was lost, unix nanoseconds.
    pub last_lost_at: i64,
}

/// Writes one snapshot of the process table inside `tx` (its rows, and
/// `processes` for every row with a process key).
fn write_snapshot_in(
    tx: &Transaction<'_>,
    processes: &[ProcessEvent],
) -> Result<SnapshotId, StoreError> {
    let taken_at = processes
        .iter()
        .map(|p| p.timestamp)
        .max()
        .unwrap_or_else(SystemTime::now);
    tx.prepare_cached(INSERT_SNAPSHOT)?.execute(params![
        to_nanos(taken_at),
        i64::try_from(processes.len()).unwrap_or(i64::MAX)
    ])?;
    let id = tx.last_insert_rowid();
    let mut insert = tx.prepare_cached(INSERT_SNAPSHOT_ROW)?;
    let mut upsert = tx.prepare_cached(UPSERT_PROCESS)?;
    for p in processes {
        let e = Encoded::new(p)?;
        let head: [&dyn ToSql; 2] = [&id, &e.key];
        let event_id = p.id.map(|id| id.to_string());
        let tail: [&dyn ToSql; 3] = [&e.metadata, &e.observed_at, &event_id];
        insert.execute(e.columns(head, tail))?;
        e.upsert(&mut upsert, ProcessEventType::Snapshot, None)?;
    }
    Ok(SnapshotId(id))
}

/// Writes the events of `batches` (in order, as one batch) inside `tx`:
/// lifecycle events (with one ledger entry for all of them, as `ledger`
/// says), as the compact rows of
/// [`events::rows`](crate::events::rows), and the state of each keyed
/// process that still runs (an exit removes it).
fn write_events_in(
    tx: &Transaction<'_>,
    chain: &mut Chain,
    strings: &mut crate::events::Strings,
    ledger: LedgerMode,
    batches: &[&[ProcessEvent]],
    lifecycle: Lifecycle,
) -> Result<Recorded, StoreError> {
    let mut done = Recorded::default();
    // Every row names the batch's entry, appended after them.
    let seq = match ledger {
        LedgerMode::EveryWrite => Some(chain.next_seq()),
        LedgerMode::AlertsOnly => None,
    };
    let events = batches
        .iter()
        .flat_map(|events| events.iter())
        .map(|ev| completed_exit(tx, ev))
        .collect::<Result<Vec<_>, _>>()?;
    // Each event encoded once, when a row or `processes` needs it.
    let mut encoded: Vec<Option<Encoded<'_>>> = events.iter().map(|_| None).collect();
    let stored = |ev: &ProcessEvent| {
        lifecycle == Lifecycle::All || ev.event_type != ProcessEventType::Snapshot
    };
    let mut ids: Option<(i64, i64)> = None;
    let mut digest = ledger::RowsHasher::default();
    let mut strings = strings.in_tx(tx)?;
    let mut insert = tx.prepare_cached(INSERT_EVENT)?;
    for row in crate::events::rows(&events, stored) {
        let e = encoded_at(&mut encoded, &events, row.event)?;
        let event_id = events[row.event].id.map(|id| id.to_string());
        let event_id = event_id.as_deref();
        let id = insert_event_row(&mut insert, &mut strings, e, &events, row, seq, event_id)?;
        if seq.is_some() {
            hash_event_row(&mut digest, id, e, &events, row, seq, event_id)?;
        }
        ids = Some(ids.map_or((id, id), |(first, _)| (first, id)));
        done.lifecycle += 1 + u64::from(row.fork.is_some()) + u64::from(row.exit.is_some());
    }
    keep_processes_current(tx, &events, &mut encoded, &mut done)?;
    if let (Some(_), Some((first, last))) = (seq, ids) {
        let columns = ledger::EVENT_COLUMN_COUNT;
        let (_, digest) = digest.finish();
        let entry = ledger::EventsEntry {
            first,
            last,
            digest,
            columns,
        };
        let content = serde_json::to_string(&entry).map_err(|source| StoreError::Encode {
            field: "events entry",
            source,
        })?;
        chain.append(tx, ledger::EVENTS_KIND, &content)?;
    }
    Ok(done)
}

/// `ev`, and for an exit that lacks the process's facts (its name, argv or
/// executable), those its row of `processes` holds: the exit's row is the
/// process's last, and `processes` forgets it.
fn completed_exit<'e>(
    tx: &Transaction<'_>,
    ev: &'e ProcessEvent,
) -> Result<std::borrow::Cow<'e, ProcessEvent>, StoreError> {
    use std::borrow::Cow;
    let lacking = ev.name.is_empty() || ev.command_line.is_empty() || ev.executable_path.is_none();
    let Some(key) = ev
        .process_key
        .filter(|_| ev.event_type == ProcessEventType::Exit && lacking)
    else {
        return Ok(Cow::Borrowed(ev));
    };
    let mut stmt = tx.prepare_cached(SELECT_LAST_STATE)?;
    let mut rows = stmt.query([key.to_string()])?;
    let Some(row) = rows.next()? else {
        return Ok(Cow::Borrowed(ev));
    };
    let last = decode_process(row, 0, "processes")?;
    let mut exit = ev.clone();
    if exit.name.is_empty() {
        exit.name = last.name;
    }
    if exit.command_line.is_empty() {
        exit.command_line = last.command_line;
    }
    if exit.executable_hash.is_none() {
        exit.executable_hash = last.executable_hash;
        exit.hash_algorithm = last.hash_algorithm;
    }
    if exit.platform_metadata.is_empty() {
        exit.platform_metadata = last.platform_metadata;
    }
    if exit.context.is_none() {
        exit.context = last.context;
    }
    exit.executable_path = exit.executable_path.or(last.executable_path);
    exit.ppid = exit.ppid.or(last.ppid);
    exit.start_time = exit.start_time.or(last.start_time);
    exit.user_id = exit.user_id.or(last.user_id);
    exit.euid = exit.euid.or(last.euid);
    exit.gid = exit.gid.or(last.gid);
    Ok(Cow::Owned(exit))
}

/// The encoding of `events[i]`, made the first time it is asked for.
fn encoded_at<'c, 'e>(
    cache: &'c mut [Option<Encoded<'e>>],
    events: &'e [std::borrow::Cow<'e, ProcessEvent>],
    i: usize,
) -> Result<&'c Encoded<'e>, StoreError> {
    let slot = &mut cache[i];
    let encoded = match slot.take() {
        Some(e) => e,
        None => Encoded::new(&events[i])?,
    };
    Ok(slot.insert(encoded))
}

/// Inserts one row of `process_event_rows` (`e` is its event encoded,
/// `event_id` its id's text); returns its id.
fn insert_event_row(
    insert: &mut rusqlite::Statement<'_>,
    strings: &mut crate::events::Interner<'_>,
    e: &Encoded<'_>,
    events: &[std::borrow::Cow<'_, ProcessEvent>],
    row: crate::events::Row,
    seq: Option<i64>,
    event_id: Option<&str>,
) -> Result<i64, StoreError> {
    let ev: &ProcessEvent = &events[row.event];
    let fork = row.fork.map(|i| &*events[i]);
    let exit = row.exit.map(|i| &*events[i]);
    let name = strings.id(e.name)?;
    let exe = strings.id_of(e.exe)?;
    let hash = strings.id_of(e.hash)?;
    let algorithm = strings.id_of(e.algorithm)?;
    let container_id = strings.id_of(e.container_id)?;
    let cgroup = strings.id_of(e.cgroup)?;
    let exit_code = exit.map_or(ev.exit_code, |x| x.exit_code);
    let params: [&dyn ToSql; 30] = [
        &ev.event_type.as_str(),
        &e.key,
        &e.pid,
        &e.ppid,
        &name,
        &exe,
        &e.argv,
        &e.uid,
        &e.start_time,
        &e.cpu,
        &e.rss,
        &hash,
        &algorithm,
        &e.accessible,
        &e.file_exists,
        &e.euid,
        &e.gid,
        &e.exe_replaced,
        &container_id,
        &cgroup,
        &e.detail,
        &exit_code,
        &e.metadata,
        &e.observed_at,
        &seq,
        &event_id,
        &at(fork),
        &seq_of(fork),
        &at(exit),
        &seq_of(exit),
    ];
    Ok(insert.insert(params)?)
}

/// When `e` happened, as a row keeps it (unix nanoseconds).
fn at(e: Option<&ProcessEvent>) -> Option<i64> {
    e.map(|e| to_nanos(e.timestamp))
}

/// The seq of `e`'s event id, as a row keeps it.
fn seq_of(e: Option<&ProcessEvent>) -> Option<i64> {
    e.and_then(|e| e.id)
        .map(|id| i64::try_from(id.seq.get()).unwrap_or(i64::MAX))
}

/// Feeds `digest` the row [`insert_event_row`] wrote as `id`, as
/// `process_events` shows it (in [`ledger::EVENT_COLUMNS`]' order, texts
/// for the `strings` ids), from the values it bound: what
/// [`ledger::rows_digest`] would read back.
///
/// # Errors
/// A value SQLite cannot take (as the insert's).
fn hash_event_row(
    digest: &mut ledger::RowsHasher,
    id: i64,
    e: &Encoded<'_>,
    events: &[std::borrow::Cow<'_, ProcessEvent>],
    row: crate::events::Row,
    seq: Option<i64>,
    event_id: Option<&str>,
) -> Result<(), StoreError> {
    let ev: &ProcessEvent = &events[row.event];
    let fork = row.fork.map(|i| &*events[i]);
    let exit = row.exit.map(|i| &*events[i]);
    let exit_code = exit.map_or(ev.exit_code, |x| x.exit_code);
    // `substr(event_id, 1, 17) || seq`: the run's part of the id, the
    // other event's seq.
    let other = |e: Option<&ProcessEvent>| {
        let id = event_id?;
        let run = id.char_indices().nth(17).map_or(id, |(end, _)| &id[..end]);
        seq_of(e).map(|seq| format!("{run}{seq}"))
    };
    let values: [&dyn ToSql; ledger::EVENT_COLUMN_COUNT] = [
        &id,
        &ev.event_type.as_str(),
        &e.key,
        &e.pid,
        &e.ppid,
        &e.name,
        &e.exe,
        &e.argv,
        &e.uid,
        &e.start_time,
        &e.cpu,
        &e.rss,
        &e.hash,
        &e.algorithm,
        &e.accessible,
        &e.file_exists,
        &exit_code,
        &e.metadata,
        &e.observed_at,
        &seq,
        &e.euid,
        &e.gid,
        &e.exe_replaced,
        &e.container_id,
        &e.cgroup,
        &e.detail,
        &event_id,
        &at(fork),
        &other(fork),
        &at(exit),
        &other(exit),
    ];
    for v in values {
        match v.to_sql()? {
            rusqlite::types::ToSqlOutput::Borrowed(v) => digest.value(v),
            rusqlite::types::ToSqlOutput::Owned(v) => digest.value((&v).into()),
            // No column binds anything else.
            _ => digest.value(rusqlite::types::ValueRef::Null),
        }
    }
    digest.row_done();
    Ok(())
}

/// Brings `processes` up to date with `events`: each keyed process's state,
/// and an exit removes its row. A process whose last event here is its exit
/// is only removed (it may never have had a row).
fn keep_processes_current<'e>(
    tx: &Transaction<'_>,
    events: &'e [std::borrow::Cow<'e, ProcessEvent>],
    encoded: &mut [Option<Encoded<'e>>],
    done: &mut Recorded,
) -> Result<(), StoreError> {
    let mut last: std::collections::HashMap<ProcessKey, ProcessEventType> =
        std::collections::HashMap::new();
    for ev in events {
        if let Some(key) = ev.process_key {
            last.insert(key, ev.event_type);
        }
    }
    let mut upsert = tx.prepare_cached(UPSERT_PROCESS)?;
    let mut remove = tx.prepare_cached("DELETE FROM processes WHERE process_key = ?1")?;
    for (i, ev) in events.iter().enumerate() {
        let Some(key) = ev.process_key else {
            continue;
        };
        if ev.event_type == ProcessEventType::Exit {
            remove.execute([key.to_string()])?;
            done.removed += 1;
        } else if last.get(&key) != Some(&ProcessEventType::Exit)
            && encoded_at(encoded, events, i)?.upsert(&mut upsert, ev.event_type, ev.exit_code)?
        {
            done.upserted += 1;
        }
    }
    Ok(())
}

/// Writes `alert` and its ledger entry inside `tx`, and queues it in the
/// outbox when there is one (bounded to `outbox`); returns its row id.
fn write_alert_in(
    tx: &Transaction<'_>,
    chain: &mut Chain,
    alert: &Alert,
    outbox: Option<(usize, &mut u64)>,
) -> Result<i64, StoreError> {
    let body = serde_json::to_string(alert).map_err(|source| StoreError::Encode {
        field: "alert",
        source,
    })?;
    let seq = chain.append(tx, "alert", &body)?;
    tx.prepare_cached(
        "INSERT INTO alerts (rule_id, rule_name, severity, pid, process_key, dedup_key, \
         observed_at, raised_at, body, ledger_seq, file) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        alert.rule_id,
        alert.rule_name,
        alert.severity.to_string(),
        alert.process.pid,
        alert.process.process_key,
        alert.dedup_key,
        alert.observed_at,
        alert.raised_at,
        body,
        seq,
        alert.file
    ])?;
    let id = tx.last_insert_rowid();
    if let Some((bound, depth)) = outbox {
        crate::outbox::append_in(
            tx,
            bound,
            depth,
            crate::outbox::OutboxKind::Alert,
            &format!("alert-{id}"),
            &body,
            unix_nanos_now(),
        )?;
    }
    Ok(id)
}

/// Prepares and runs one read-only statement (the authorizer is already
/// installed), every value as JSON, one row at a time.
fn run_query(
    conn: &Connection,
    sql: &str,
    denied: &crate::readonly::Denied,
    columns: impl FnOnce(&[String]) -> std::io::Result<()>,
    mut each: impl FnMut(Vec<serde_json::Value>) -> std::io::Result<()>,
) -> Result<(), StoreError> {
    use rusqlite::types::ValueRef;
    let refuse = |reason: String| StoreError::Query { reason };
    let failed = |e: rusqlite::Error| match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == rusqlite::ErrorCode::OperationInterrupted =>
        {
            refuse(format!(
                "stopped after the time limit of {} s",
                QUERY_TIME_LIMIT.as_secs()
            ))
        }
        _ => refuse(e.to_string()),
    };
    let output = |e: std::io::Error| refuse(format!("cannot write the rows: {e}"));
    let mut stmt = crate::readonly::prepare(conn, sql, denied).map_err(refuse)?;
    let names: Vec<String> = stmt
        .column_names()
        .iter()
        .map(|c| (*c).to_owned())
        .collect();
    columns(&names).map_err(output)?;
    let n = names.len();
    let mut it = stmt.query([]).map_err(failed)?;
    while let Some(row) = it.next().map_err(failed)? {
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let v = match row.get_ref(i).map_err(failed)? {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(x) => x.into(),
                ValueRef::Real(x) => x.into(),
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                ValueRef::Blob(b) => ledger::to_hex(b).into(),
            };
            out.push(v);
        }
        each(out).map_err(output)?;
    }
    Ok(())
}

const INSERT_SNAPSHOT: &str = "INSERT INTO snapshots (taken_at, process_count) VALUES (?1, ?2)";

/// The columns every process table stores alike, in the order
/// [`Encoded::columns`] binds them.
macro_rules! shared_columns {
    () => {
        "pid, ppid, name, exe, argv, uid, start_time, cpu_percent, rss_bytes, exe_hash, \
         hash_algorithm, accessible, file_exists, euid, gid, exe_replaced, container_id, cgroup, \
         detail"
    };
}

const INSERT_SNAPSHOT_ROW: &str = concat!(
    "INSERT INTO process_snapshots (snapshot_id, process_key, ",
    shared_columns!(),
    ", metadata, observed_at, event_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
     ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)"
);

/// A row of `process_event_rows`, bound as [`insert_event_row`] does (the
/// texts as their ids in `strings`).
const INSERT_EVENT: &str = concat!(
    "INSERT INTO process_event_rows (event_type, process_key, ",
    shared_columns!(),
    ", exit_code, metadata, observed_at, ledger_seq, event_id, forked_at, fork_seq, exited_at, \
     exit_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
     ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)"
);

/// Last known state: a newer observation replaces each field it carries and
/// keeps the ones it lacks (an exit event has no argv); an older one, arriving
/// late, changes nothing. A process whose exit is stored is not added again
/// (a snapshot taken before the exit and written after it).
const UPSERT_PROCESS: &str = concat!(
    "INSERT INTO processes (process_key, ",
    shared_columns!(),
    ", metadata, first_seen, last_seen, last_event_type, exit_code, exited_at) \
     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20, ?21, ?22, ?22, ?23, ?24, ?25 \
     WHERE NOT EXISTS (SELECT 1 FROM process_event_rows e WHERE e.pid = ?2 \
       AND e.process_key = ?1 AND (e.event_type = 'exit' OR e.exited_at IS NOT NULL)) \
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
       euid = coalesce(excluded.euid, euid), \
       gid = coalesce(excluded.gid, gid), \
       exe_replaced = excluded.exe_replaced, \
       container_id = coalesce(excluded.container_id, container_id), \
       cgroup = coalesce(excluded.cgroup, cgroup), \
       detail = CASE WHEN excluded.detail <> '{}' THEN excluded.detail ELSE detail END, \
       metadata = CASE WHEN excluded.metadata <> '{}' THEN excluded.metadata ELSE metadata END, \
       last_seen = excluded.last_seen, \
       last_event_type = excluded.last_event_type, \
       exit_code = coalesce(excluded.exit_code, exit_code), \
       exited_at = coalesce(excluded.exited_at, exited_at) \
     WHERE excluded.last_seen >= processes.last_seen"
);

/// The columns [`decode_process`] reads, in its order.
macro_rules! process_columns {
    () => {
        "process_key, pid, ppid, name, exe, argv, uid, start_time, cpu_percent, rss_bytes, \
         exe_hash, hash_algorithm, accessible, file_exists, metadata, observed_at, euid, gid, \
         exe_replaced, container_id, cgroup, detail"
    };
}

const SELECT_RECENT_EVENTS: &str = concat!(
    "SELECT id, event_type, exit_code, event_id, forked_at, exited_at, ",
    process_columns!(),
    " FROM process_events ORDER BY id DESC LIMIT ?1"
);

const SELECT_LATEST_SNAPSHOT: &str = concat!(
    "SELECT snapshot_id, event_id, ",
    process_columns!(),
    " FROM process_snapshots WHERE snapshot_id = (SELECT max(id) FROM snapshots) \
     ORDER BY pid, rowid"
);

/// A running process's facts, as [`decode_process`] reads them.
const SELECT_LAST_STATE: &str = concat!(
    "SELECT ",
    process_columns!(),
    " FROM (SELECT *, last_seen AS observed_at FROM processes WHERE process_key = ?1)"
);

/// A process's row of `processes`, else (it exited) its newest row of
/// `process_events`, as an exit when it holds one.
const SELECT_PROCESS: &str = "SELECT last_event_type, exit_code, first_seen, exited_at, \
     process_key, pid, ppid, name, exe, argv, uid, start_time, cpu_percent, rss_bytes, \
     exe_hash, hash_algorithm, accessible, file_exists, metadata, last_seen, euid, gid, \
     exe_replaced, container_id, cgroup, detail \
     FROM processes WHERE process_key = ?1 \
     UNION ALL SELECT * FROM (SELECT CASE WHEN exited_at IS NOT NULL THEN 'exit' \
       ELSE event_type END, exit_code, \
       (SELECT min(coalesce(forked_at, observed_at)) FROM process_event_rows \
         WHERE pid = ?2 AND process_key = ?1), \
       coalesce(exited_at, CASE WHEN event_type = 'exit' THEN observed_at END), \
       process_key, pid, ppid, name, exe, argv, uid, start_time, cpu_percent, rss_bytes, \
       exe_hash, hash_algorithm, accessible, file_exists, metadata, \
       coalesce(exited_at, observed_at), euid, gid, exe_replaced, container_id, cgroup, detail \
     FROM process_events WHERE pid = ?2 AND process_key = ?1 \
     ORDER BY coalesce(exited_at, observed_at) DESC, id DESC LIMIT 1) \
     LIMIT 1";

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
    euid: Option<u32>,
    gid: Option<u32>,
    exe_replaced: bool,
    container_id: Option<&'a str>,
    cgroup: Option<&'a str>,
    detail: String,
    metadata: String,
    observed_at: i64,
}

/// The typed facts of a [`ProcessEvent`] that have no column of their own,
/// as the JSON object of the `detail` column (empty parts left out).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Detail {
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<char>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threads: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_ticks: Option<u64>,
    #[serde(skip_serializing_if = "is_default")]
    read: ReadDepth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mnt_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    net_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_ns: Option<u64>,
    #[serde(skip_serializing_if = "is_default")]
    lifecycle: LifecycleDetail,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Detail {
    fn of(p: &ProcessEvent) -> Self {
        let c = p.context();
        Self {
            state: p.state,
            threads: p.threads,
            cpu_ticks: p.cpu_ticks,
            read: p.read,
            pid_ns: c.pid_ns,
            mnt_ns: c.mnt_ns,
            net_ns: c.net_ns,
            user_ns: c.user_ns,
            lifecycle: p.lifecycle().clone(),
        }
    }

    /// Fills `p` from this detail and the context columns (`container_id`,
    /// `cgroup`): the context is built once.
    fn apply(self, p: &mut ProcessEvent, container_id: Option<String>, cgroup: Option<String>) {
        p.state = self.state;
        p.threads = self.threads;
        p.cpu_ticks = self.cpu_ticks;
        p.read = self.read;
        p.context = ProcessContext {
            cgroup,
            container_id,
            pid_ns: self.pid_ns,
            mnt_ns: self.mnt_ns,
            net_ns: self.net_ns,
            user_ns: self.user_ns,
        }
        .shared();
        p.lifecycle = self.lifecycle.boxed();
    }
}

impl<'a> Encoded<'a> {
    fn new(p: &'a ProcessEvent) -> Result<Self, StoreError> {
        Ok(Self {
            key: p.process_key.map(|k| k.to_string()),
            pid: p.pid,
            ppid: p.ppid,
            name: &p.name,
            exe: p.executable_path.as_deref(),
            argv: serde_json::to_string(&p.command_line).map_err(|source| StoreError::Encode {
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
            euid: p.euid,
            gid: p.gid,
            exe_replaced: p.exe_replaced,
            container_id: p.context().container_id.as_deref(),
            cgroup: p.context().cgroup.as_deref(),
            detail: serde_json::to_string(&Detail::of(p)).map_err(|source| StoreError::Encode {
                field: "detail",
                source,
            })?,
            metadata: serde_json::to_string(&p.platform_metadata).map_err(|source| {
                StoreError::Encode {
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
    ) -> Result<bool, StoreError> {
        let Some(key) = &self.key else {
            return Ok(false);
        };
        let exited_at = (event_type == ProcessEventType::Exit).then_some(self.observed_at);
        let head: [&dyn ToSql; 1] = [key];
        let tail: [&dyn ToSql; 5] = [
            &self.metadata,
            &self.observed_at,
            &event_type.as_str(),
            &exit_code,
            &exited_at,
        ];
        let changed = stmt.execute(self.columns(head, tail))?;
        Ok(changed > 0)
    }

    /// The statement's parameters: `head`, then the columns every process
    /// table stores alike (`pid` to `file_exists`, in table order), then
    /// `tail`.
    fn columns<'p, const H: usize, const T: usize>(
        &'p self,
        head: [&'p dyn ToSql; H],
        tail: [&'p dyn ToSql; T],
    ) -> rusqlite::ParamsFromIter<impl Iterator<Item = &'p dyn ToSql>> {
        let shared: [&'p dyn ToSql; 19] = [
            &self.pid,
            &self.ppid,
            &self.name,
            &self.exe,
            &self.argv,
            &self.uid,
            &self.start_time,
            &self.cpu,
            &self.rss,
            &self.hash,
            &self.algorithm,
            &self.accessible,
            &self.file_exists,
            &self.euid,
            &self.gid,
            &self.exe_replaced,
            &self.container_id,
            &self.cgroup,
            &self.detail,
        ];
        rusqlite::params_from_iter(head.into_iter().chain(shared).chain(tail))
    }
}

/// Reads the [`process_columns!`] starting at column `base`.
fn decode_process(
    row: &Row<'_>,
    base: usize,
    table: &'static str,
) -> Result<ProcessEvent, StoreError> {
    let decode = |column: &'static str, reason: String| StoreError::Decode {
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
    let detail: String = row.get(base + 21)?;
    let detail: Detail =
        serde_json::from_str(&detail).map_err(|e| decode("detail", e.to_string()))?;
    let mut event = ProcessEvent {
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
        euid: row.get(base + 16)?,
        gid: row.get(base + 17)?,
        exe_replaced: row.get(base + 18)?,
        ..ProcessEvent::default()
    };
    detail.apply(&mut event, row.get(base + 19)?, row.get(base + 20)?);
    Ok(event)
}

/// The `event_id` column at `index`.
fn decode_event_id(
    row: &Row<'_>,
    index: usize,
    table: &'static str,
) -> Result<Option<EventId>, StoreError> {
    row.get::<_, Option<String>>(index)?
        .map(|id| id.parse())
        .transpose()
        .map_err(|e: daemoneye_lib::models::ModelError| StoreError::Decode {
            table,
            column: "event_id",
            reason: e.to_string(),
        })
}

fn decode_event_type(text: &str, table: &'static str) -> Result<ProcessEventType, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|e| {
        StoreError::Decode {
            table,
            column: "event_type",
            reason: e.to_string(),
        }
    })
}

/// Unix nanoseconds, saturating outside 1677..2262.
/// Now, in unix nanoseconds.
pub(crate) fn unix_nanos_now() -> i64 {
    to_nanos(SystemTime::now())
}

pub(crate) fn to_nanos(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn from_nanos(n: i64, table: &'static str, column: &'static str) -> Result<SystemTime, StoreError> {
    let abs = Duration::from_nanos(n.unsigned_abs());
    if n >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(abs)
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(abs)
    }
    .ok_or_else(|| StoreError::Decode {
        table,
        column,
        reason: format!("{n} ns is not a representable time"),
    })
}

/// Creates `path` owner-only unless it exists (an existing file keeps the
/// mode its owner gave it).
fn create_owner_only(path: &Path) -> Result<(), StoreError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Create {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::unnecessary_literal_bound)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::alert::tests::TestRule;
    use crate::alert::{AlertProcess, Severity};
    use crate::SCHEMA_VERSION;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::new(dir.path().join("audit.db")).unwrap();
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
        let err = Store::new(missing.join("audit.db")).unwrap_err();
        assert!(matches!(err, StoreError::DirectoryMissing { ref dir } if *dir == missing));
        assert!(!missing.exists());
    }

    #[test]
    fn a_file_that_is_not_a_database_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        std::fs::write(&path, vec![0xa5; 8192]).unwrap();
        assert!(matches!(Store::new(&path), Err(StoreError::Open { .. })));
    }

    #[test]
    fn alerts_only_stores_events_without_ledger_entries() {
        let (_dir, db) = open();
        let mut db = db.with_ledger(LedgerMode::AlertsOnly);
        db.write_events(&[ProcessEvent::new(3, "x"), ProcessEvent::new(4, "y")])
            .unwrap();
        assert_eq!(db.count_events().unwrap(), 2);
        assert_eq!(db.verify_ledger().unwrap().entries, 0);
        let seqs = db
            .query("SELECT count(*) FROM process_events WHERE ledger_seq IS NULL")
            .unwrap();
        assert_eq!(seqs.rows[0][0], 2);
        let alert = Alert::new(
            &TestRule("r", Severity::Low),
            AlertProcess::from_event(&ProcessEvent::new(3, "x"), None),
            SystemTime::now(),
        );
        db.record_alert(&alert).unwrap();
        assert_eq!(db.verify_ledger().unwrap().entries, 1);
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
        // The exit in a later batch than the exec: its row completed from
        // the process's last state.
        db.write_events(std::slice::from_ref(&exec)).unwrap();
        db.write_events(std::slice::from_ref(&exit)).unwrap();
        // A late, older observation changes nothing.
        let mut late = exec.clone();
        late.name = "stale".into();
        late.timestamp = t0 - Duration::from_secs(1);
        db.write_events(std::slice::from_ref(&late)).unwrap();

        let rec = db.process_by_key(&key).unwrap().unwrap();
        assert_eq!(rec.latest.name, "curl");
        assert_eq!(rec.latest.executable_path.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(rec.latest.command_line, exec.command_line);
        assert_eq!(rec.latest.event_type, ProcessEventType::Exit);
        assert_eq!(rec.latest.exit_code, Some(256));
        assert!(!rec.latest.accessible);
        // Its earliest observation: the late one.
        assert_eq!(rec.first_seen, late.timestamp);
        assert_eq!(rec.latest.timestamp, exit.timestamp);
        assert_eq!(rec.exited_at, Some(exit.timestamp));
        assert!(db
            .process_by_key(&ProcessKey::new(key.boot_id, 43, 99))
            .unwrap()
            .is_none());
        // The exited process is gone from `processes`, and the late exec
        // did not bring it back.
        assert!(db.processes().unwrap().is_empty());
        // Exec and exit in one batch: one row, read back as the exit.
        let key = ProcessKey::new(key.boot_id, 44, 99);
        let (exec, exit) = (
            ProcessEvent {
                process_key: Some(key),
                pid: 44,
                ..exec
            },
            ProcessEvent {
                process_key: Some(key),
                pid: 44,
                ..exit
            },
        );
        db.write_events(&[exec.clone(), exit.clone()]).unwrap();
        let rec = db.process_by_key(&key).unwrap().unwrap();
        assert_eq!(rec.latest.event_type, ProcessEventType::Exit);
        assert_eq!(rec.latest.command_line, exec.command_line);
        assert_eq!(rec.latest.exit_code, Some(256));
        assert_eq!((rec.first_seen, rec.exited_at), (t0, Some(exit.timestamp)));
        let newest = &db.recent_events(1).unwrap()[0];
        assert_eq!(newest.event.event_type, ProcessEventType::Exec);
        assert_eq!(newest.exited_at, Some(exit.timestamp));
    }

    #[test]
    fn corrupt_rows_are_decode_errors_not_panics() {
        let (_dir, mut db) = open();
        db.write_events(&[ProcessEvent::new(5, "x")]).unwrap();
        db.conn
            .execute(
                "UPDATE process_event_rows SET argv = 'not json', event_type = 'bogus'",
                [],
            )
            .unwrap();
        assert!(matches!(
            db.recent_events(10),
            Err(StoreError::Decode { .. })
        ));
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
    fn alerts_are_stored_with_their_ledger_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let rule = &TestRule("rule-one", Severity::High);
        for pid in 1..=3 {
            let a = Alert::new(
                rule,
                AlertProcess::from_event(&ProcessEvent::new(pid, "x"), None),
                SystemTime::now(),
            );
            store.record_alert(&a).unwrap();
        }
        let ro = Store::open_read_only(dir.path()).unwrap();
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
        let mut store = Store::open(dir.path()).unwrap();
        let rule = &TestRule("rule-zero", Severity::High);
        let a = Alert::new(
            rule,
            AlertProcess::from_event(&ProcessEvent::new(5, "x"), None),
            SystemTime::now(),
        );
        store.record_alert(&a).unwrap();
        let ro = Store::open_read_only(dir.path()).unwrap();
        let r = ro.query("SELECT rule_id, pid FROM alerts").unwrap();
        assert_eq!(r.columns, vec!["rule_id", "pid"]);
        assert_eq!(
            r.rows,
            vec![vec![serde_json::Value::from(rule.0), 5.into()]]
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

    /// A store of schema 11 whose batch entries hashed 27 columns migrates
    /// to the compact rows of schema 12 with every value as it was: its
    /// entries still verify, and an edit of a moved text is caught.
    #[test]
    fn batches_written_before_schema_12_still_verify_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for m in crate::schema::MIGRATIONS
                .iter()
                .take_while(|m| m.version <= 11)
            {
                tx.execute_batch(m.sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 11).unwrap();
            let key = ProcessKey::new(collector_core::BootId::from_bytes([1; 16]), 7, 1);
            tx.execute_batch(&format!(
                "INSERT INTO process_events (event_type, process_key, pid, ppid, name, exe, \
                 argv, uid, exe_hash, hash_algorithm, accessible, file_exists, exit_code, \
                 metadata, observed_at, ledger_seq, cgroup, event_id) VALUES \
                 ('exec', '{key}', 7, 1, 'curl', '/usr/bin/curl', '[\"curl\"]', 0, 'ab', \
                  'blake3', 1, 1, NULL, '{{}}', 10, 1, '/user.slice', '00000000000000aa-1'), \
                 ('exit', '{key}', 7, 1, 'curl', '/usr/bin/curl', '[\"curl\"]', 0, 'ab', \
                  'blake3', 1, 1, 0, '{{}}', 11, 1, '/user.slice', '00000000000000aa-2');",
            ))
            .unwrap();
            let (_, digest) = ledger::rows_digest(&tx, 1, 2, 27).unwrap();
            let content = format!(r#"{{"first":1,"last":2,"digest":"{digest}"}}"#);
            ledger::append(&tx, ledger::EVENTS_KIND, &content).unwrap();
            // Ids 3 to 5 were given and pruned since: never given again.
            tx.execute_batch("UPDATE sqlite_sequence SET seq = 5 WHERE name = 'process_events'")
                .unwrap();
            tx.commit().unwrap();
        }
        let mut db = Store::new(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), i64::from(SCHEMA_VERSION));
        assert_eq!(db.verify_ledger().unwrap().entries, 1);
        let back = db.recent_events(2).unwrap();
        assert_eq!(
            back[1].event.executable_path.as_deref(),
            Some("/usr/bin/curl")
        );
        assert_eq!(back[0].event.exit_code, Some(0));
        assert_eq!(db.count_events().unwrap(), 2);
        // New rows count on after the old ids (pruned ones too), and verify
        // beside them.
        db.write_events(&[ProcessEvent::new(8, "sh")]).unwrap();
        assert_eq!(db.recent_events(1).unwrap()[0].id, 6);
        assert_eq!(db.verify_ledger().unwrap().entries, 2);
        db.conn
            .execute_batch("UPDATE strings SET value = '/tmp/curl' WHERE value = '/usr/bin/curl'")
            .unwrap();
        assert!(matches!(
            db.verify_ledger(),
            Err(StoreError::Ledger(LedgerError::Broken { seq: 1, .. }))
        ));
    }

    #[test]
    fn lifecycle_events_are_ledgered_and_processes_kept_current() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let ev = |pid: u32, ty: ProcessEventType, name: &str| {
            let mut e = ProcessEvent::new(pid, name);
            e.process_key = Some(ProcessKey::new(
                collector_core::BootId::from_bytes([7; 16]),
                pid,
                u64::from(pid) * 10,
            ));
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
                upserted: 2,
                removed: 1,
                ..Recorded::default()
            }
        );
        let ro = Store::open_read_only(dir.path()).unwrap();
        let live = ro
            .query("SELECT pid, name, argv FROM processes WHERE exited_at IS NULL ORDER BY pid")
            .unwrap();
        // The exited process is not kept: its exit is in `process_events`.
        let all = ro.query("SELECT count(*) FROM processes").unwrap();
        assert_eq!(all.rows, vec![vec![serde_json::Value::from(2)]]);
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
        // The fork, exec and exit of 11 are one row.
        let events = ro
            .query(
                "SELECT event_type, pid, exit_code, forked_at IS NOT NULL, exited_at IS NOT NULL \
                 FROM process_events ORDER BY id",
            )
            .unwrap();
        assert_eq!(
            events.rows,
            vec![
                vec!["exec".into(), 11.into(), 256.into(), 1.into(), 1.into()],
                vec![
                    "exec".into(),
                    12.into(),
                    serde_json::Value::Null,
                    0.into(),
                    0.into()
                ],
            ]
        );
        // Snapshots are not lifecycle events: the four events share one
        // ledger entry, which verifies: their ids and the digest of them.
        let v = ro.verify_ledger().unwrap();
        assert_eq!(v.entries, 1);
        let content = ro
            .query("SELECT content FROM ledger WHERE seq = 1")
            .unwrap()
            .rows[0][0]
            .clone();
        let entry: ledger::EventsEntry = serde_json::from_str(content.as_str().unwrap()).unwrap();
        let (n, digest) =
            ledger::rows_digest(&ro.conn, entry.first, entry.last, entry.columns).unwrap();
        assert_eq!((n, digest), (2, entry.digest));
        // A deleted lifecycle entry is found: the rows name it.
        store
            .conn
            .execute("DELETE FROM ledger WHERE seq = 1", [])
            .unwrap();
        assert!(matches!(
            ro.verify_ledger(),
            Err(StoreError::Ledger(LedgerError::Broken { seq: 1, .. }))
        ));
    }
}
