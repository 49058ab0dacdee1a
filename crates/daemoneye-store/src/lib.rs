//! daemoneye-store: the one home of DaemonEye's stored data.
//!
//! - [`Store`] ([`store`]): one SQLite database (WAL, owner-only) with the
//!   schema and its versioned migrations ([`SCHEMA_VERSION`]; a newer schema
//!   is refused, a legacy agent store adopted): processes keyed by their
//!   process key, lifecycle events, snapshots, alerts, each alert and each
//!   batch of lifecycle events with its ledger entry in the same
//!   transaction; pruning to a [`Retention`] below a checkpoint; read-only
//!   opening and read-only ad-hoc queries for readers such as the CLI.
//! - [`StoreWriter`] ([`writer`]): the store on a thread of its own behind a
//!   bounded queue that waits rather than drops; batched transactions;
//!   [`close`](StoreWriter::close) commits everything; [`WriterStats`].
//! - [`ledger`]: the append-only audit ledger chained by BLAKE3 hashes.
//! - [`retention`]: bounds by age and size ([`Retention`]), held by
//!   pruning below a kept checkpoint of the ledger.
//! - [`outbox`]: what waits for a broker's acknowledgement (the fleet
//!   sink's at-least-once delivery), queued with the alert it ships.
//! - [`alert`]: the alert record ([`Alert`], [`Severity`]) and deduplication.
//! - [`readonly`]: the authorizer that lets a statement read and nothing
//!   else (queries here, rules in `daemoneye-rules`).
//! - [`bench`](mod@bench): synthetic events and the write-rate measurement.
//!
//! procmond standalone (`procmond run --database`, where [`Store`] is the
//! reference's `DatabaseManager`) and the agent (`<data-dir>/agent.db`) both
//! use it.
//!
//! ```
//! use collector_core::{ProcessEvent, ProcessEventType};
//! use daemoneye_store::Store;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let mut store = Store::open(dir.path())?; // <dir>/agent.db
//! let mut exec = ProcessEvent::new(4242, "sh");
//! exec.event_type = ProcessEventType::Exec;
//! let done = store.record_events(&[exec])?;
//! assert_eq!(done.lifecycle, 1);
//! let reader = Store::open_read_only(dir.path())?;
//! assert_eq!(reader.verify_ledger()?.entries, 1);
//! let rows = reader.query("SELECT event_type FROM process_events")?.rows;
//! assert_eq!(rows, vec![vec![serde_json::Value::from("exec")]]);
//! # Ok(())
//! # }
//! ```

pub mod alert;
pub mod bench;
mod events;
pub mod files;
pub mod ledger;
pub mod network;
pub mod outbox;
pub mod performance;
pub mod readonly;
pub mod retention;
mod schema;
pub mod store;
mod timed;
mod wal;
pub mod writer;

pub use alert::{Alert, AlertProcess, AlertRule, Severity};
pub use files::FileEventRow;
pub use network::ConnectionRow;
pub use outbox::{OutboxItem, OutboxKind, OutboxState, DEFAULT_OUTBOX_ITEMS};
pub use performance::PerformanceRow;
pub use retention::Retention;
pub use schema::{table_columns, SCHEMA_VERSION};
pub use store::{
    Gap, LedgerMode, ProcessRecord, QueryResult, Recorded, SnapshotId, SnapshotInfo, SnapshotRow,
    Store, StoreError, StoredEvent, StoredProcess, BUSY_TIMEOUT, FILE, QUERY_TIME_LIMIT,
};
pub use timed::TimedBatch;
pub use writer::{
    OutboxAck, StoreWriter, WriterConfig, WriterStats, DEFAULT_BATCH_DELAY_MS,
    DEFAULT_BATCH_EVENTS, DEFAULT_CONNECTIONS_RETENTION, DEFAULT_FILE_EVENTS_RETENTION,
    DEFAULT_PERFORMANCE_RETENTION, DEFAULT_QUEUE_WRITES,
};
