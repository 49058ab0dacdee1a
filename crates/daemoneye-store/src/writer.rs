//! The store's writer: a thread of its own owning the [`Store`], so that
//! neither detection nor collection ever waits on the disk.
//!
//! Writes (event batches, alerts, clearing `processes`) arrive on a bounded
//! queue, in order. Under [`WhenFull::Block`] (the default) a full queue makes
//! the sender wait, so backpressure reaches the collector, which counts what
//! it drops, and nothing is lost silently; under [`WhenFull::DropNewest`]
//! event batches that do not fit are dropped and counted (alerts always
//! wait). The thread takes what is queued, up to
//! [`batch_events`](WriterConfig::batch_events) events or
//! [`batch_delay_ms`](WriterConfig::batch_delay_ms) after the first write,
//! and commits it in one transaction, in queue order.
//!
//! A failed transaction is logged, counted and retried at once; if that
//! fails too (a full disk, a broken file), its writes and every later one
//! are held in memory, in order, and tried again with a capped backoff
//! (100 ms to 5 s), so that detection never waits on a failing disk and
//! nothing is lost while it fails briefly. `failing` is 1 meanwhile and
//! `held` says how much is waiting. Past
//! [`max_held_events`](WriterConfig::max_held_events) the oldest held writes
//! (alerts last) are dropped, counted (events in
//! `events_dropped_write_failed`) and recorded in the ledger as a `gap`
//! entry once writing resumes. [`StoreWriter::close`] commits everything
//! queued before it returns, so nothing accepted is lost on SIGTERM; if the
//! store still fails then, it tries three more times and counts what is
//! left as dropped.
//!
//! A bounded writer ([`retention`](WriterConfig::retention),
//! [`max_store_bytes`](WriterConfig::max_store_bytes)) takes checkpoints
//! of its own to cut at and prunes the store below one after the
//! transaction that went over a bound, and at most every 10 s for age (see
//! [`retention`](crate::retention)); what it pruned is counted
//! (`prunes`, `events_pruned`) and recorded in the ledger.
//!
//! Accounting: `events_accepted` equals `events_written` plus
//! `events_dropped_write_failed` plus [`events_queued`](WriterStats::events_queued).
//! Events refused because the writer had closed are counted in
//! `events_refused` and were never accepted; events dropped because the
//! queue was full (`DropNewest` only) in `events_dropped_queue_full`.
//!
//! ```
//! use collector_core::{ProcessEvent, ProcessEventType};
//! use daemoneye_store::{Store, StoreWriter, WriterConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let writer = StoreWriter::spawn(Store::open(dir.path())?, WriterConfig::default())?;
//! let mut exec = ProcessEvent::new(4242, "sh");
//! exec.event_type = ProcessEventType::Exec;
//! writer.events(vec![exec]).await;
//! let stats = writer.close().await;
//! assert_eq!(stats.lifecycle_events.get(), 1);
//! assert_eq!(Store::open_read_only(dir.path())?.count_events()?, 1);
//! # Ok(())
//! # }
//! ```

use collector_core::metrics::{Counter, Gauge, Registry};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collector_core::{
    lock, FilesystemEvent, NetworkEvent, PerformanceEvent, ProcessEvent, WhenFull,
};
use daemoneye_lib::Backoff;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, error, warn};

use crate::alert::Alert;
use crate::ledger::{Checkpoint, CheckpointEntry, Head, Lost, StartEntry, StopEntry};
use crate::outbox::{OutboxItem, OutboxState};
use crate::retention::Retention;
use crate::store::{Gap, Op, Recorded, Store, StoreError};
use crate::timed::{Retentions, TimedBatch};

/// Configuration of a [`StoreWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriterConfig {
    /// Writes (event batches, alerts) the queue holds before a sender waits
    /// (or, for event batches under [`WhenFull::DropNewest`], drops).
    pub queue_writes: usize,
    /// The most events committed in one transaction (a larger batch is
    /// split).
    pub batch_events: usize,
    /// The longest the first write of a partial batch waits for more before
    /// the batch is committed, in milliseconds.
    pub batch_delay_ms: u64,
    /// What sending an event batch does when the queue is full.
    pub when_full: WhenFull,
    /// While the store fails (a full disk), the most events (and snapshot
    /// rows) the writer holds in memory to write once it can; past it the
    /// oldest are dropped, counted and recorded in the ledger as a gap.
    pub max_held_events: usize,
    /// How long performance samples are kept: each batch written prunes
    /// the rows older than this before its newest sample.
    #[serde(with = "humantime_serde")]
    pub performance_retention: Duration,
    /// How long connections are kept: each batch written prunes the rows
    /// older than this before its newest observation.
    #[serde(with = "humantime_serde")]
    pub connections_retention: Duration,
    /// How long file events are kept: each batch written prunes the rows
    /// older than this before its newest event.
    #[serde(with = "humantime_serde")]
    pub file_events_retention: Duration,
    /// How long lifecycle events, alerts, snapshots and exited processes
    /// are kept (`None`, the default: for ever).
    #[serde(with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// The most bytes of database pages the store may use (`None`, the
    /// default: unbounded); past it the oldest data is pruned. At least
    /// [`MIN_MAX_BYTES`](crate::retention::MIN_MAX_BYTES).
    pub max_store_bytes: Option<u64>,
}

/// Default of [`WriterConfig::queue_writes`].
pub const DEFAULT_QUEUE_WRITES: usize = 256;
/// Default of [`WriterConfig::batch_events`].
pub const DEFAULT_BATCH_EVENTS: usize = 1_000;
/// Default of [`WriterConfig::batch_delay_ms`].
pub const DEFAULT_BATCH_DELAY_MS: u64 = 50;
/// Default of [`WriterConfig::max_held_events`]: about a minute of a busy
/// host's lifecycle events, tens of megabytes at most.
pub const DEFAULT_MAX_HELD_EVENTS: usize = 50_000;
/// Default of [`WriterConfig::performance_retention`]: a day.
pub const DEFAULT_PERFORMANCE_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// Default of [`WriterConfig::connections_retention`]: a day.
pub const DEFAULT_CONNECTIONS_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// Default of [`WriterConfig::file_events_retention`]: a week (file events
/// are few, and a persistence write is worth finding days later).
pub const DEFAULT_FILE_EVENTS_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_writes: DEFAULT_QUEUE_WRITES,
            batch_events: DEFAULT_BATCH_EVENTS,
            batch_delay_ms: DEFAULT_BATCH_DELAY_MS,
            when_full: WhenFull::Block,
            max_held_events: DEFAULT_MAX_HELD_EVENTS,
            performance_retention: DEFAULT_PERFORMANCE_RETENTION,
            connections_retention: DEFAULT_CONNECTIONS_RETENTION,
            file_events_retention: DEFAULT_FILE_EVENTS_RETENTION,
            retention: None,
            max_store_bytes: None,
        }
    }
}

impl WriterConfig {
    /// Checks the sizes.
    ///
    /// # Errors
    /// [`StoreError::InvalidWriterConfig`] naming the first field that is
    /// zero.
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |field, reason| Err(StoreError::InvalidWriterConfig { field, reason });
        if self.queue_writes == 0 {
            return invalid("queue_writes", "must be at least 1");
        }
        if self.batch_events == 0 {
            return invalid("batch_events", "must be at least 1");
        }
        if self.max_held_events == 0 {
            return invalid("max_held_events", "must be at least 1");
        }
        if self.performance_retention.is_zero() {
            return invalid("performance_retention", "must be longer than zero");
        }
        if self.connections_retention.is_zero() {
            return invalid("connections_retention", "must be longer than zero");
        }
        if self.file_events_retention.is_zero() {
            return invalid("file_events_retention", "must be longer than zero");
        }
        if self.retention.is_some_and(|r| r.is_zero()) {
            return invalid("retention", "must be longer than zero");
        }
        if self
            .max_store_bytes
            .is_some_and(|b| b < crate::retention::MIN_MAX_BYTES)
        {
            return invalid("max_store_bytes", "must be at least 1 MiB (1048576)");
        }
        Ok(())
    }

    /// The bounds on the store this config sets.
    pub fn bounds(&self) -> Retention {
        Retention {
            max_age: self.retention,
            max_bytes: self.max_store_bytes,
        }
    }
}

/// What the writer has done: live counters, shared with whoever reports
/// them.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct WriterStats {
    /// Event batches committed whole.
    pub batches: Counter,
    /// Lifecycle events committed (each with a ledger entry).
    pub lifecycle_events: Counter,
    /// Alerts committed (each with a ledger entry).
    pub alerts: Counter,
    /// Snapshots of the process table committed.
    pub snapshots: Counter,
    /// Performance samples committed (they count as events too).
    pub performance_samples: Counter,
    /// Performance rows pruned past their retention.
    pub performance_pruned: Counter,
    /// Connection rows committed (they count as events too).
    pub connections_written: Counter,
    /// Connection rows pruned past their retention.
    pub connections_pruned: Counter,
    /// File-event rows committed (they count as events too).
    pub file_events_written: Counter,
    /// File-event rows pruned past their retention.
    pub file_events_pruned: Counter,
    /// Writes lost: dropped while held over their bound or at close with
    /// the store failing, or refused because the writer had closed (each
    /// logged).
    pub failures: Counter,
    /// Events taken into the queue.
    pub events_accepted: Counter,
    /// Events committed (lifecycle events and snapshot rows alike).
    pub events_written: Counter,
    /// Transactions committed.
    pub transactions_committed: Counter,
    /// Failed transaction attempts.
    pub write_errors: Counter,
    /// Events dropped because the store failed: held over their bound, or
    /// still held at close.
    pub events_dropped_write_failed: Counter,
    /// Events dropped because the queue was full (never under
    /// [`WhenFull::Block`]).
    pub events_dropped_queue_full: Counter,
    /// Events refused because the writer had closed (never accepted).
    pub events_refused: Counter,
    /// Ledger entries recording what failed transactions lost.
    pub gaps_recorded: Counter,
    /// Prunes of the store to its bounds (each a `prune` ledger entry).
    pub prunes: Counter,
    /// Checkpoints of the write-ahead log, taken off the writer's thread.
    pub wal_checkpoints: Counter,
    /// Failed checkpoints of the write-ahead log (each logged; the writer's
    /// own backstop checkpoint bounds the log meanwhile).
    pub wal_checkpoint_errors: Counter,
    /// Lifecycle events pruned (written, then deleted as the oldest).
    pub events_pruned: Counter,
    /// Failed prune attempts.
    pub prune_errors: Counter,
    /// 1 while the store's last attempt failed (writes are held or lost),
    /// 0 once one commits again: health reads it.
    pub failing: Gauge,
    /// Events (and snapshot rows, one per other write) held in memory
    /// because the store is failing, to write once it can.
    pub held: Gauge,
}

impl WriterStats {
    /// Names these counters in `registry` (`stage="store"`), once, when the
    /// writer is built.
    #[allow(clippy::too_many_lines)] // one table of names
    pub fn register_metrics(&self, registry: &Registry) {
        registry.register_counters(
            &[("stage", "store")],
            &[
                (
                    "daemoneye_event_batches_written_total",
                    "Event batches committed whole.",
                    &self.batches,
                ),
                (
                    "daemoneye_store_wal_checkpoints_total",
                    "Checkpoints of the store's write-ahead log, off the writer's thread.",
                    &self.wal_checkpoints,
                ),
                (
                    "daemoneye_store_wal_checkpoint_errors_total",
                    "Failed checkpoints of the store's write-ahead log.",
                    &self.wal_checkpoint_errors,
                ),
                (
                    "daemoneye_lifecycle_events_written_total",
                    "Lifecycle events committed.",
                    &self.lifecycle_events,
                ),
                (
                    "daemoneye_alerts_written_total",
                    "Alerts committed with their ledger entry.",
                    &self.alerts,
                ),
                (
                    "daemoneye_snapshots_written_total",
                    "Snapshots of the process table committed.",
                    &self.snapshots,
                ),
                (
                    "daemoneye_performance_samples_written_total",
                    "Performance samples committed.",
                    &self.performance_samples,
                ),
                (
                    "daemoneye_performance_samples_pruned_total",
                    "Performance samples pruned past their retention.",
                    &self.performance_pruned,
                ),
                (
                    "daemoneye_connections_written_total",
                    "Connection rows committed.",
                    &self.connections_written,
                ),
                (
                    "daemoneye_connections_pruned_total",
                    "Connection rows pruned past their retention.",
                    &self.connections_pruned,
                ),
                (
                    "daemoneye_file_events_written_total",
                    "File-event rows committed.",
                    &self.file_events_written,
                ),
                (
                    "daemoneye_file_events_pruned_total",
                    "File-event rows pruned past their retention.",
                    &self.file_events_pruned,
                ),
                (
                    "daemoneye_store_writes_lost_total",
                    "Writes lost: dropped while the store failed, or refused after close.",
                    &self.failures,
                ),
                (
                    "daemoneye_events_accepted_total",
                    "Events taken into the queue.",
                    &self.events_accepted,
                ),
                (
                    "daemoneye_events_written_total",
                    "Events committed to the store.",
                    &self.events_written,
                ),
                (
                    "daemoneye_transactions_committed_total",
                    "Store transactions committed.",
                    &self.transactions_committed,
                ),
                (
                    "daemoneye_store_write_errors_total",
                    "Failed store transaction attempts.",
                    &self.write_errors,
                ),
                (
                    "daemoneye_store_gaps_recorded_total",
                    "Ledger entries recording what failed transactions lost.",
                    &self.gaps_recorded,
                ),
                (
                    "daemoneye_events_refused_total",
                    "Events refused because the writer had closed.",
                    &self.events_refused,
                ),
            ],
        );
        self.register_prune_metrics(registry);
        registry.register_gauge(
            "daemoneye_store_failing",
            "1 while the store's last attempt failed, 0 once one commits again.",
            &[("stage", "store")],
            &self.failing,
        );
        registry.register_gauge(
            "daemoneye_store_held_writes",
            "Events and other writes held in memory while the store fails.",
            &[("stage", "store")],
            &self.held,
        );
        registry.register_counter(
            "daemoneye_events_dropped_total",
            "Events dropped, by stage and reason.",
            &[("stage", "store"), ("reason", "write_failed")],
            &self.events_dropped_write_failed,
        );
        registry.register_counter(
            "daemoneye_events_dropped_total",
            "Events dropped, by stage and reason.",
            &[("stage", "store"), ("reason", "full")],
            &self.events_dropped_queue_full,
        );
    }

    /// The prune counters, beside the others.
    fn register_prune_metrics(&self, registry: &Registry) {
        registry.register_counters(
            &[("stage", "store")],
            &[
                (
                    "daemoneye_store_prunes_total",
                    "Prunes of the store to its retention and size bounds.",
                    &self.prunes,
                ),
                (
                    "daemoneye_events_pruned_total",
                    "Lifecycle events pruned from the store as the oldest.",
                    &self.events_pruned,
                ),
                (
                    "daemoneye_store_prune_errors_total",
                    "Failed prunes of the store.",
                    &self.prune_errors,
                ),
            ],
        );
    }

    /// Every event lost after it was accepted or offered, whatever the
    /// reason (write failures and a full queue).
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped_write_failed.get() + self.events_dropped_queue_full.get()
    }

    /// Accepted events neither written nor dropped yet.
    pub fn events_queued(&self) -> u64 {
        self.events_accepted
            .get()
            .saturating_sub(self.events_written.get())
            .saturating_sub(self.events_dropped_write_failed.get())
    }
}

/// One queued write.
#[derive(Debug)]
enum Write {
    Events(Vec<ProcessEvent>),
    Timed(TimedBatch),
    Snapshot(Vec<ProcessEvent>),
    Alert(Box<Alert>),
    ClearProcesses,
    /// A ledger entry of its own, appended once everything queued before it
    /// is committed.
    Entry(Own, oneshot::Sender<Result<Appended, StoreError>>),
    /// A read or an ack of the outbox, once everything queued before it is
    /// committed.
    Outbox(OutboxOp, oneshot::Sender<Result<OutboxReply, StoreError>>),
    Flush(oneshot::Sender<()>),
    Close,
}

/// What the writer does to the outbox for its shipper.
#[derive(Debug)]
enum OutboxOp {
    Read {
        after: i64,
        limit: usize,
    },
    /// Removes the items; awaited by the caller: the round is cut so the
    /// reply comes at once.
    Ack(Vec<i64>),
    /// Removes the items; not awaited (a shipper goes on publishing): the
    /// round goes on collecting, and every removal of a round is applied
    /// in one transaction after its writes.
    Remove(Vec<i64>),
}

/// What an [`OutboxOp`] gives its caller.
type OutboxResult = Result<OutboxReply, StoreError>;

/// What an [`OutboxOp`] gave.
#[derive(Debug)]
pub(crate) enum OutboxReply {
    Items(Vec<OutboxItem>),
    State(OutboxState),
}

/// The ledger entries of their own the writer appends.
#[derive(Debug)]
enum Own {
    Start {
        version: String,
        pid: u32,
    },
    Stop {
        pid: u32,
    },
    Checkpoint,
    /// A checkpoint the writer takes to cut at when it prunes (not sent
    /// off the host: its `lost` counts from the last [`Own::Checkpoint`],
    /// as the next one will).
    Cut,
}

/// What appending an [`Own`] entry gave: the head after it, and a
/// checkpoint's content.
#[derive(Debug)]
struct Appended {
    head: Head,
    checkpoint: Option<CheckpointEntry>,
}

/// The handle to the writer thread. Cheap to clone; the writer closes when
/// [`close`](Self::close) is called or every clone is dropped (both commit
/// everything queued first).
#[derive(Debug, Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<Write>,
    stats: Arc<WriterStats>,
    done: watch::Receiver<bool>,
    when_full: WhenFull,
    /// The database file the writer writes.
    path: Arc<Path>,
    /// Bumped after each commit that changed the outbox.
    outbox_changes: watch::Receiver<u64>,
}

impl StoreWriter {
    /// Starts the writer thread over `store`. A `config` that fails
    /// [`WriterConfig::validate`] is clamped to the nearest valid sizes.
    /// Needs no tokio runtime: the thread keeps its own timer.
    ///
    /// # Errors
    /// [`StoreError::Spawn`] when the thread cannot be started.
    pub fn spawn(store: Store, config: WriterConfig) -> Result<Self, StoreError> {
        Self::spawn_slot(Slot::Owned(Box::new(store)), config)
    }

    /// [`spawn`](Self::spawn) over a store shared with others (procmond's
    /// `DatabaseManager`, as the reference API hands it): the writer locks
    /// it for each transaction only.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn).
    pub fn spawn_shared(
        store: Arc<Mutex<Store>>,
        config: WriterConfig,
    ) -> Result<Self, StoreError> {
        Self::spawn_slot(Slot::Shared(store), config)
    }

    fn spawn_slot(mut store: Slot, config: WriterConfig) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel(config.queue_writes.max(1));
        let (done_tx, done_rx) = watch::channel(false);
        let (changes_tx, changes_rx) = watch::channel(0);
        let path: Arc<Path> = store.with(|s| Arc::from(s.path()));
        let stats = Arc::new(WriterStats::default());
        let timer = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(StoreError::Spawn)?;
        let wal = match crate::wal::Checkpointer::start(&path, Arc::clone(&stats)) {
            Ok(wal) => {
                store.with(|s| s.conn().wal_hook(Some(crate::wal::on_commit)));
                Some(wal)
            }
            Err(e) => {
                warn!(error = %daemoneye_lib::error_chain(&e), "no checkpointing thread: the store's writer checkpoints its log itself");
                None
            }
        };
        let worker = Worker {
            wal,
            store,
            retentions: Retentions {
                performance: or_default(
                    config.performance_retention,
                    DEFAULT_PERFORMANCE_RETENTION,
                ),
                connections: or_default(
                    config.connections_retention,
                    DEFAULT_CONNECTIONS_RETENTION,
                ),
                files: or_default(config.file_events_retention, DEFAULT_FILE_EVENTS_RETENTION),
            },
            gap: Gap::default(),
            checkpointed: Lost::default(),
            rx,
            stats: Arc::clone(&stats),
            batch_events: config.batch_events.max(1),
            batch_delay: Duration::from_millis(config.batch_delay_ms),
            done: done_tx,
            outbox_changes: changes_tx,
            outbox_mark: None,
            held: VecDeque::new(),
            held_weight: 0,
            max_held: config.max_held_events.max(1),
            retry: Backoff::new(RETRY_FIRST, RETRY_MAX).with_jitter(0.2),
            retry_at: None,
            bounds: Retention {
                max_age: config.retention.filter(|r| !r.is_zero()),
                max_bytes: config
                    .max_store_bytes
                    .map(|b| b.max(crate::retention::MIN_MAX_BYTES)),
            },
            cut_bytes: None,
            cut_at: Instant::now(),
            pruned_at: None,
        };
        std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || timer.block_on(worker.run()))
            .map_err(StoreError::Spawn)?;
        Ok(Self {
            tx,
            stats,
            done: done_rx,
            when_full: config.when_full,
            path,
            outbox_changes: changes_rx,
        })
    }

    /// [`spawn`](Self::spawn) with the default batching and room for
    /// `capacity` queued writes.
    ///
    /// # Errors
    /// As [`spawn`](Self::spawn).
    pub fn start(store: Store, capacity: usize) -> Result<Self, StoreError> {
        Self::spawn(
            store,
            WriterConfig {
                queue_writes: capacity,
                ..WriterConfig::default()
            },
        )
    }

    /// The writer's counters.
    pub fn stats(&self) -> Arc<WriterStats> {
        Arc::clone(&self.stats)
    }

    /// The database file the writer writes (for a reader of its own:
    /// [`Store::open_file_read_only`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A signal that changes after each committed transaction that queued
    /// items in the outbox or removed some (of a store
    /// [`with_outbox`](Store::with_outbox)): a shipper reading the outbox
    /// on a connection of its own reads again when it changes, and so
    /// finds every item once it is committed, never before.
    pub fn outbox_changes(&self) -> watch::Receiver<u64> {
        self.outbox_changes.clone()
    }

    /// Queues a batch of events (waits while the queue is full, or drops and
    /// counts the batch under [`WhenFull::DropNewest`]). Refused batches (the
    /// writer had closed) are counted in `events_refused` and `failures`.
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped while it waits for room, the
    /// events were not accepted and nothing is counted.
    pub async fn events(&self, events: Vec<ProcessEvent>) {
        if !events.is_empty() {
            self.send_events(events.len(), Write::Events(events)).await;
        }
    }

    /// Queues a batch of performance samples, as [`events`](Self::events)
    /// does (they count as events in the same counters). They are stored
    /// without ledger entries and pruned to
    /// [`performance_retention`](WriterConfig::performance_retention).
    ///
    /// # Cancel safety
    /// As [`events`](Self::events).
    pub async fn performance(&self, events: Vec<PerformanceEvent>) {
        self.timed(TimedBatch::Performance(events)).await;
    }

    /// Queues a batch of connections, as [`events`](Self::events) does
    /// (they count as events in the same counters). They are stored without
    /// ledger entries and pruned to
    /// [`connections_retention`](WriterConfig::connections_retention).
    ///
    /// # Cancel safety
    /// As [`events`](Self::events).
    pub async fn connections(&self, events: Vec<NetworkEvent>) {
        self.timed(TimedBatch::Connections(events)).await;
    }

    /// Queues a batch of file events, as [`events`](Self::events) does
    /// (they count as events in the same counters). They are stored without
    /// ledger entries and pruned to
    /// [`file_events_retention`](WriterConfig::file_events_retention).
    ///
    /// # Cancel safety
    /// As [`events`](Self::events).
    pub async fn file_events(&self, events: Vec<FilesystemEvent>) {
        self.timed(TimedBatch::Files(events)).await;
    }

    /// Queues a batch kept for a time in a table of its own.
    async fn timed(&self, batch: TimedBatch) {
        if batch.len() > 0 {
            self.send_events(batch.len(), Write::Timed(batch)).await;
        }
    }

    /// Sends a write of `n` events under the `when_full` policy.
    async fn send_events(&self, n: usize, write: Write) {
        let s = &self.stats;
        let sent = match self.when_full {
            WhenFull::Block => match self.tx.reserve().await {
                Ok(permit) => {
                    // Counted before the writer can count them written.
                    s.events_accepted.add_usize(n);
                    permit.send(write);
                    true
                }
                Err(_) => false,
            },
            WhenFull::DropNewest => match self.tx.try_reserve() {
                Ok(permit) => {
                    s.events_accepted.add_usize(n);
                    permit.send(write);
                    true
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    s.events_dropped_queue_full.add_usize(n);
                    tracing::debug!(
                        events = n,
                        reason = "queue_full",
                        "store writer queue full, events dropped"
                    );
                    true
                }
                Err(mpsc::error::TrySendError::Closed(())) => false,
            },
        };
        if !sent {
            s.events_refused.add_usize(n);
            self.refused("events");
        }
    }

    /// Queues one snapshot of the process table, stored in one transaction
    /// (always waits for room: snapshots are periodic, not a flood).
    pub async fn snapshot(&self, processes: Vec<ProcessEvent>) {
        if self.tx.send(Write::Snapshot(processes)).await.is_err() {
            self.refused("snapshot");
        }
    }

    /// Queues an alert (always waits for room: alerts are never dropped).
    pub async fn alert(&self, alert: Alert) {
        if self.tx.send(Write::Alert(Box::new(alert))).await.is_err() {
            self.refused("alert");
        }
    }

    /// Queues forgetting every known process (a new collector session).
    pub async fn clear_processes(&self) {
        if self.tx.send(Write::ClearProcesses).await.is_err() {
            self.refused("clear_processes");
        }
    }

    fn refused(&self, what: &'static str) {
        self.stats.failures.inc();
        let n = self.stats.failures.get();
        error!(
            write = what,
            failures = n,
            "the store writer has closed, write refused"
        );
    }

    /// Appends a `start` entry (the agent's `version` and `pid`, the head it
    /// found) once everything queued before it is committed; returns the
    /// head after it.
    ///
    /// # Errors
    /// [`StoreError::WriterClosed`], or why the entry could not be written.
    pub async fn record_start(&self, version: &str, pid: u32) -> Result<Head, StoreError> {
        self.own(Own::Start {
            version: version.to_owned(),
            pid,
        })
        .await
        .map(|a| a.head)
    }

    /// Appends a `stop` entry (a clean shutdown) once everything queued
    /// before it is committed; returns the head after it.
    ///
    /// # Errors
    /// As [`record_start`](Self::record_start).
    pub async fn record_stop(&self, pid: u32) -> Result<Head, StoreError> {
        self.own(Own::Stop { pid }).await.map(|a| a.head)
    }

    /// Appends a `checkpoint` entry once everything queued before it is
    /// committed, with what the store lost since the previous checkpoint;
    /// returns it as it leaves the host (the entry's own sequence number and
    /// hash).
    ///
    /// # Errors
    /// As [`record_start`](Self::record_start).
    pub async fn checkpoint(&self) -> Result<Checkpoint, StoreError> {
        let Appended { head, checkpoint } = self.own(Own::Checkpoint).await?;
        let entry = checkpoint.unwrap_or(CheckpointEntry {
            time: 0,
            lost: Lost::default(),
        });
        Ok(Checkpoint {
            seq: head.seq,
            head: head.hash,
            time: entry.time,
            lost: entry.lost,
        })
    }

    /// Up to `limit` outbox items after the item `after` (0: from the
    /// start), in order, read once everything queued before this call is
    /// committed (so an alert queued before it is among them). See
    /// [`outbox`](crate::outbox).
    ///
    /// # Errors
    /// [`StoreError::WriterClosed`], or why the outbox could not be read.
    ///
    /// # Cancel safety
    /// Cancel safe: a read has no effect.
    pub async fn outbox_read(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        match self.outbox(OutboxOp::Read { after, limit }).await? {
            OutboxReply::Items(items) => Ok(items),
            OutboxReply::State(_) => Ok(Vec::new()),
        }
    }

    /// Removes the outbox items `ids` (the broker acknowledged them);
    /// returns the outbox's state after.
    ///
    /// # Errors
    /// As [`outbox_read`](Self::outbox_read).
    ///
    /// # Cancel safety
    /// Once queued, the ack is applied even if the future is dropped; an
    /// ack not applied only means a resend, which the broker drops.
    pub async fn outbox_ack(&self, ids: Vec<i64>) -> Result<OutboxState, StoreError> {
        match self.outbox(OutboxOp::Ack(ids)).await? {
            OutboxReply::State(state) => Ok(state),
            OutboxReply::Items(_) => Ok(OutboxState::default()),
        }
    }

    /// Queues removing the outbox items `ids`, as
    /// [`outbox_ack`](Self::outbox_ack) does, without waiting for it: the
    /// returned [`OutboxAck`] gives the state after, when awaited. A shipper
    /// goes on publishing meanwhile.
    ///
    /// # Errors
    /// [`StoreError::WriterClosed`].
    pub async fn outbox_ack_queued(&self, ids: Vec<i64>) -> Result<OutboxAck, StoreError> {
        let (ack, acked) = oneshot::channel();
        self.tx
            .send(Write::Outbox(OutboxOp::Remove(ids), ack))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        Ok(OutboxAck(acked))
    }

    /// The outbox's state, as [`outbox_ack`](Self::outbox_ack) of nothing.
    ///
    /// # Errors
    /// As [`outbox_read`](Self::outbox_read).
    pub async fn outbox_state(&self) -> Result<OutboxState, StoreError> {
        self.outbox_ack(Vec::new()).await
    }

    async fn outbox(&self, op: OutboxOp) -> Result<OutboxReply, StoreError> {
        let (ack, acked) = oneshot::channel();
        self.tx
            .send(Write::Outbox(op, ack))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        acked.await.map_err(|_| StoreError::WriterClosed)?
    }

    async fn own(&self, entry: Own) -> Result<Appended, StoreError> {
        let (ack, acked) = oneshot::channel();
        self.tx
            .send(Write::Entry(entry, ack))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        acked.await.map_err(|_| StoreError::WriterClosed)?
    }

    /// Waits until everything queued before this call is committed, or held
    /// because the store is failing (then `failing` is 1 and `held` says
    /// how much waits), or counted as dropped.
    ///
    /// # Errors
    /// [`StoreError::WriterClosed`] when the writer has closed.
    ///
    /// # Cancel safety
    /// Cancel safe: the writer commits the queued writes either way.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (ack, acked) = oneshot::channel();
        self.tx
            .send(Write::Flush(ack))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        acked.await.map_err(|_| StoreError::WriterClosed)
    }

    /// Closes the writer: later writes are refused, everything queued is
    /// committed, then this returns the counters. Calling it again, or from
    /// another clone, waits for the same end.
    ///
    /// # Cancel safety
    /// Cancel safe: once the close is queued, the writer commits and stops
    /// even if the future is dropped.
    pub async fn close(&self) -> Arc<WriterStats> {
        // Fails only when the writer is already closing; then wait all the same.
        let _ = self.tx.send(Write::Close).await;
        let mut done = self.done.clone();
        if done.wait_for(|finished| *finished).await.is_err() {
            error!("the store's writer thread failed");
        }
        self.stats()
    }
}

/// An ack of outbox items queued to the writer
/// ([`StoreWriter::outbox_ack_queued`]); awaiting it gives the outbox's
/// state after. Dropped, the ack is applied all the same.
#[derive(Debug)]
pub struct OutboxAck(oneshot::Receiver<Result<OutboxReply, StoreError>>);

impl OutboxAck {
    /// The outbox's state if the ack was applied already; `None` while it
    /// waits.
    pub fn try_applied(&mut self) -> Option<Result<OutboxState, StoreError>> {
        match self.0.try_recv() {
            Ok(reply) => Some(reply.map(|reply| match reply {
                OutboxReply::State(state) => state,
                OutboxReply::Items(_) => OutboxState::default(),
            })),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(StoreError::WriterClosed)),
        }
    }

    /// The outbox's state once the ack is applied.
    ///
    /// # Errors
    /// [`StoreError::WriterClosed`], or why the items could not be removed.
    pub async fn applied(self) -> Result<OutboxState, StoreError> {
        match self.0.await.map_err(|_| StoreError::WriterClosed)?? {
            OutboxReply::State(state) => Ok(state),
            OutboxReply::Items(_) => Ok(OutboxState::default()),
        }
    }
}

/// The store the writer writes: its own, or one shared with its owner
/// (locked for each transaction).
enum Slot {
    Owned(Box<Store>),
    Shared(Arc<Mutex<Store>>),
}

impl Slot {
    fn apply(&mut self, ops: &[Op<'_>]) -> Result<Recorded, StoreError> {
        self.with(|store| store.apply(ops))
    }

    fn with<R>(&mut self, f: impl FnOnce(&mut Store) -> R) -> R {
        match self {
            Self::Owned(store) => f(store),
            Self::Shared(store) => f(&mut lock(store)),
        }
    }
}

/// `d`, or `default` when `d` is zero.
fn or_default(d: Duration, default: Duration) -> Duration {
    if d.is_zero() {
        default
    } else {
        d
    }
}

struct Worker {
    /// The log's checkpoints (first: stopped before the store closes, whose
    /// last connection then checkpoints what is left).
    wal: Option<crate::wal::Checkpointer>,
    store: Slot,
    /// How long the tables pruned batch by batch keep their rows.
    retentions: Retentions,
    /// What was lost since the last commit, to record in the ledger.
    gap: Gap,
    /// The losses counted at the last checkpoint.
    checkpointed: Lost,
    rx: mpsc::Receiver<Write>,
    stats: Arc<WriterStats>,
    batch_events: usize,
    batch_delay: Duration,
    done: watch::Sender<bool>,
    /// Bumped when a commit changed the outbox ([`StoreWriter::outbox_changes`]).
    outbox_changes: watch::Sender<u64>,
    /// The outbox's last id queued and its depth, as last signalled.
    outbox_mark: Option<(i64, Option<u64>)>,
    /// Writes not committed yet, in queue order: the round's, and those held
    /// since the store began failing.
    held: VecDeque<Pending>,
    /// The weight of `held` (events and snapshot rows, one per other write).
    held_weight: usize,
    /// The most weight held while the store fails; past it the oldest
    /// writes are dropped, counted and recorded as a gap.
    max_held: usize,
    /// Waits between attempts while the store fails.
    retry: Backoff,
    /// When the held writes are tried again; `None` when the last attempt
    /// succeeded.
    retry_at: Option<Instant>,
    /// What the store is bounded to.
    bounds: Retention,
    /// The pages in use at the last checkpoint (`None`: none seen yet).
    cut_bytes: Option<u64>,
    /// When the last checkpoint was taken (or the writer started).
    cut_at: Instant,
    /// When the store was last pruned for age.
    pruned_at: Option<Instant>,
}

/// The longest between prunes for age.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

/// The first wait before held writes are tried again, and the longest.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// At close, how many more attempts the held writes get (waits from
/// [`RETRY_FIRST`], doubling: 0.7 s in all) before what is left is dropped.
const CLOSE_ATTEMPTS: u32 = 3;

/// What one round of collecting produced besides the writes.
#[derive(Default)]
struct Round {
    acks: Vec<oneshot::Sender<()>>,
    entries: Vec<(Own, oneshot::Sender<Result<Appended, StoreError>>)>,
    outbox: Vec<(OutboxOp, oneshot::Sender<OutboxResult>)>,
    finish: bool,
}

/// A queued write, as the writer holds it. Event batches larger than a
/// transaction are held in parts.
enum Pending {
    /// `completes`: the last part of the batch as it was sent.
    Events {
        events: Vec<ProcessEvent>,
        completes: bool,
    },
    Snapshot(Vec<ProcessEvent>),
    Timed(TimedBatch),
    Alert(Box<Alert>),
    ClearProcesses,
}

impl Pending {
    /// Events and snapshot rows count as themselves, anything else as one.
    fn weight(&self) -> usize {
        match self {
            Self::Events { events: e, .. } | Self::Snapshot(e) => e.len().max(1),
            Self::Timed(b) => b.len().max(1),
            _ => 1,
        }
    }

    /// The events it holds that were accepted as events.
    fn events(&self) -> usize {
        match self {
            Self::Events { events, .. } => events.len(),
            Self::Timed(b) => b.len(),
            _ => 0,
        }
    }
}

impl Worker {
    async fn run(mut self) {
        loop {
            let round = self.collect().await;
            self.commit();
            for (entry, ack) in round.entries {
                let _ = ack.send(self.append_own(&entry));
            }
            self.outbox_ops(round.outbox);
            self.bound_store();
            // After whatever the round committed (events, entries, outbox
            // removals, prunes): the log may be due a checkpoint.
            if let Some(wal) = &self.wal {
                self.store.with(|s| wal.committed(s.conn()));
            }
            self.signal_outbox();
            for ack in round.acks {
                let _ = ack.send(());
            }
            if round.finish {
                break;
            }
        }
        self.close_held().await;
        // Stopped and joined before the writer says it is done: a
        // checkpoint asked for is taken first, and counted.
        drop(self.wal.take());
        tracing::debug!(stats = ?self.stats, "store writer closed");
        self.done.send_replace(true);
    }

    /// Waits for writes and gathers a batch: up to `batch_events`, or what
    /// came within `batch_delay` of the first, or everything before a flush.
    /// While writes are held it waits no longer than their next attempt.
    async fn collect(&mut self) -> Round {
        let mut round = Round::default();
        let first = match self.retry_at {
            None => self.rx.recv().await,
            Some(at) => match tokio::time::timeout_at(at, self.rx.recv()).await {
                Ok(w) => w,
                // Time to try the held writes again.
                Err(_elapsed) => return round,
            },
        };
        let Some(first) = first else {
            round.finish = true;
            return round;
        };
        let mut weight = 0;
        if self.take(first, &mut weight, &mut round) {
            return self.close_if_finishing(round).await;
        }
        let deadline = tokio::time::Instant::now() + self.batch_delay;
        while weight < self.batch_events {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(w)) => {
                    if self.take(w, &mut weight, &mut round) {
                        break;
                    }
                }
                Ok(None) => {
                    round.finish = true;
                    break;
                }
                Err(_elapsed) => break,
            }
        }
        self.close_if_finishing(round).await
    }

    /// Files one write; true when the batch must be committed now.
    fn take(&mut self, w: Write, weight: &mut usize, round: &mut Round) -> bool {
        let p = match w {
            Write::Events(mut events) => {
                // In parts of at most a transaction each.
                while events.len() > self.batch_events {
                    let rest = events.split_off(self.batch_events);
                    self.hold(Pending::Events {
                        events,
                        completes: false,
                    });
                    *weight += self.batch_events;
                    events = rest;
                }
                Pending::Events {
                    events,
                    completes: true,
                }
            }
            Write::Snapshot(e) => Pending::Snapshot(e),
            // Not split: a sample batch is one interval's (a batch of
            // connections or file events one collector batch), far below a
            // transaction's worth.
            Write::Timed(b) => Pending::Timed(b),
            Write::Alert(a) => Pending::Alert(a),
            Write::ClearProcesses => Pending::ClearProcesses,
            Write::Flush(ack) => {
                round.acks.push(ack);
                return true;
            }
            Write::Entry(entry, ack) => {
                round.entries.push((entry, ack));
                return true;
            }
            Write::Outbox(op, ack) => {
                // A removal nobody waits for lets the round go on.
                let cut = !matches!(op, OutboxOp::Remove(_));
                round.outbox.push((op, ack));
                return cut;
            }
            Write::Close => {
                round.finish = true;
                return true;
            }
        };
        *weight += p.weight();
        self.hold(p);
        false
    }

    fn hold(&mut self, p: Pending) {
        self.held_weight += p.weight();
        self.held.push_back(p);
    }

    /// On close: refuse new writes and take everything already queued (a
    /// `recv` after `close` still yields every message sent before it).
    async fn close_if_finishing(&mut self, mut round: Round) -> Round {
        if round.finish {
            self.rx.close();
            let mut weight = 0;
            while let Some(w) = self.rx.recv().await {
                self.take(w, &mut weight, &mut round);
            }
        }
        round
    }

    /// Applies a round's outbox reads and acks, in order; the removals not
    /// awaited ([`OutboxOp::Remove`]) in a row in one transaction, replied
    /// with the state after it.
    fn outbox_ops(&mut self, ops: Vec<(OutboxOp, oneshot::Sender<OutboxResult>)>) {
        let mut removals = Vec::new();
        for (op, ack) in ops {
            let reply = match op {
                OutboxOp::Remove(ids) => {
                    removals.push((ids, ack));
                    continue;
                }
                // After the removals queued before it.
                OutboxOp::Read { after, limit } => {
                    self.remove(std::mem::take(&mut removals));
                    self.store
                        .with(|store| store.outbox_read(after, limit).map(OutboxReply::Items))
                }
                OutboxOp::Ack(ids) => {
                    self.remove(std::mem::take(&mut removals));
                    self.store
                        .with(|store| store.outbox_ack(&ids).map(OutboxReply::State))
                }
            };
            let _ = ack.send(reply);
        }
        self.remove(removals);
    }

    /// Applies `removals` in one transaction (each on its own when that
    /// fails, each then with its own outcome).
    fn remove(&mut self, removals: Vec<(Vec<i64>, oneshot::Sender<OutboxResult>)>) {
        if removals.is_empty() {
            return;
        }
        let all: Vec<i64> = removals.iter().flat_map(|(ids, _)| ids).copied().collect();
        match self.store.with(|store| store.outbox_ack(&all)) {
            Ok(state) => {
                for (_, ack) in removals {
                    let _ = ack.send(Ok(OutboxReply::State(state)));
                }
            }
            Err(_) => {
                for (ids, ack) in removals {
                    let _ = ack.send(
                        self.store
                            .with(|store| store.outbox_ack(&ids).map(OutboxReply::State)),
                    );
                }
            }
        }
    }

    /// Signals [`StoreWriter::outbox_changes`] when the outbox's last
    /// queued id or its depth moved since the last signal (only for a store
    /// that queues in an outbox).
    fn signal_outbox(&mut self) {
        let mark = self.store.with(|store| {
            store
                .outbox
                .is_some()
                .then(|| store.outbox_last_id().map(|id| (id, store.outbox_depth)))
        });
        match mark {
            Some(Ok(mark)) if self.outbox_mark != Some(mark) => {
                self.outbox_mark = Some(mark);
                self.outbox_changes.send_modify(|n| *n = n.wrapping_add(1));
            }
            None | Some(Ok(_)) => {}
            Some(Err(e)) => {
                // A shipper is woken anyway: it reads what is there.
                debug!(error = %daemoneye_lib::error_chain(&e), "cannot read the outbox's last id");
                self.outbox_changes.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Appends a ledger entry of its own (after recording a pending gap),
    /// in a transaction of its own.
    fn append_own(&mut self, entry: &Own) -> Result<Appended, StoreError> {
        // After everything queued before it: not ahead of held writes.
        if !self.held.is_empty() {
            self.stats.write_errors.inc();
            return Err(StoreError::Failing {
                held: self.held_weight,
            });
        }
        let s = &self.stats;
        record_gap(&mut self.store, s, &mut self.gap);
        let now = crate::store::unix_nanos_now();
        let counted = Lost {
            writes: s.failures.get(),
            events: s.events_dropped(),
            gaps: s.gaps_recorded.get(),
        };
        let checkpoint = CheckpointEntry {
            time: now,
            lost: Lost {
                writes: counted.writes.saturating_sub(self.checkpointed.writes),
                events: counted.events.saturating_sub(self.checkpointed.events),
                gaps: counted.gaps.saturating_sub(self.checkpointed.gaps),
            },
        };
        let appended = self.store.with(|store| match entry {
            Own::Start { version, pid } => store.append_entry("start", |head| StartEntry {
                version: version.clone(),
                pid: *pid,
                time: now,
                previous: (head.seq > 0).then(|| head.clone()),
            }),
            Own::Stop { pid } => store.append_entry("stop", |_| StopEntry {
                pid: *pid,
                time: now,
            }),
            // Queued for shipping with its entry (a cut's is the writer's
            // own and goes to no sink).
            Own::Checkpoint => store.append_checkpoint(&checkpoint).map(|c| Head {
                seq: c.seq,
                hash: c.head,
            }),
            Own::Cut => store.append_entry("checkpoint", |_| checkpoint),
        });
        match appended {
            Ok(head) => {
                s.transactions_committed.inc();
                if matches!(entry, Own::Checkpoint | Own::Cut) {
                    self.cut_at = Instant::now();
                    self.cut_bytes = None;
                }
                let checkpoint = matches!(entry, Own::Checkpoint).then(|| {
                    self.checkpointed = counted;
                    checkpoint
                });
                Ok(Appended { head, checkpoint })
            }
            Err(e) => {
                s.write_errors.inc();
                error!(error = %daemoneye_lib::error_chain(&e), entry = ?entry, "cannot append a ledger entry");
                Err(e)
            }
        }
    }

    /// Keeps the store within its bounds, when it has any and nothing is
    /// held: a checkpoint of its own every sixteenth of `max_store_bytes`
    /// written or of `retention` passed (places to cut at), then a prune
    /// when the pages in use are over `max_store_bytes`, or for age at most
    /// every [`PRUNE_EVERY`]. A failure is logged and counted, and tried
    /// again after the next transaction.
    fn bound_store(&mut self) {
        let bounds = self.bounds;
        if !bounds.is_bounded() || !self.held.is_empty() {
            return;
        }
        let used = match self.store.with(|s| s.used_bytes()) {
            Ok(used) => used,
            Err(e) => {
                self.stats.prune_errors.inc();
                warn!(error = %daemoneye_lib::error_chain(&e), "cannot read the store's size");
                return;
            }
        };
        // Counted from the last checkpoint, or from where a prune left it.
        let since = self.cut_bytes.map_or(used, |at| at.min(used));
        self.cut_bytes = Some(since);
        let grown = bounds
            .max_bytes
            .is_some_and(|max| used.saturating_sub(since) >= max / 16);
        let aged = bounds
            .max_age
            .is_some_and(|age| self.cut_at.elapsed() >= age / 16);
        if (grown || aged) && self.append_own(&Own::Cut).is_ok() {
            self.cut_bytes = Some(used);
        }
        let over = bounds.max_bytes.is_some_and(|max| used > max);
        let due =
            bounds.max_age.is_some() && self.pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY);
        if !(over || due) {
            return;
        }
        if bounds.max_age.is_some() {
            self.pruned_at = Some(Instant::now());
        }
        let now = crate::store::unix_nanos_now();
        match self.store.with(|s| s.prune(&bounds, now)) {
            Ok(Some(p)) => {
                self.stats.prunes.inc();
                self.stats.events_pruned.add(p.events);
                self.stats.transactions_committed.inc();
                tracing::info!(
                    below = p.below,
                    entries = p.entries,
                    events = p.events,
                    alerts = p.alerts,
                    used_bytes = used,
                    "store pruned to its bounds"
                );
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.prune_errors.inc();
                warn!(error = %daemoneye_lib::error_chain(&e), "cannot prune the store");
            }
        }
    }

    /// Commits the held writes in transactions of at most `batch_events`
    /// events, in order, unless a failed attempt's wait has not passed. On
    /// a failure the rest stays held for the next attempt; then the held
    /// writes are kept within their bound.
    fn commit(&mut self) {
        let waiting = self.retry_at.is_some_and(|at| Instant::now() < at);
        while !waiting && !self.held.is_empty() {
            // The longest prefix within a transaction (at least one write).
            let (mut n, mut weight) = (0, 0);
            for p in &self.held {
                if n > 0 && weight + p.weight() > self.batch_events {
                    break;
                }
                weight += p.weight();
                n += 1;
            }
            let (ops, tally) = transaction(self.held.range(..n), self.retentions);
            let first = self.retry_at.is_none();
            match attempt(&mut self.store, &self.stats, &ops, &tally, first) {
                Ok(done) => {
                    drop(ops);
                    committed(&mut self.store, &self.stats, &tally, &done, &mut self.gap);
                    self.held.drain(..n);
                    self.held_weight -= weight;
                    self.retry.reset();
                    self.retry_at = None;
                }
                Err(()) => {
                    self.retry_at = Some(Instant::now() + self.retry.next());
                    break;
                }
            }
        }
        self.bound();
        self.stats
            .held
            .set(i64::try_from(self.held_weight).unwrap_or(i64::MAX));
    }

    /// Drops the oldest held writes (alerts last) while their weight is
    /// over the bound: counted, and recorded as a gap once writing resumes.
    fn bound(&mut self) {
        while self.held_weight > self.max_held {
            let oldest = self
                .held
                .iter()
                .position(|p| !matches!(p, Pending::Alert(_)))
                .unwrap_or(0);
            let Some(p) = self.held.remove(oldest) else {
                break;
            };
            self.held_weight -= p.weight();
            self.lose(&p, "held writes over their bound (the store is failing)");
        }
    }

    /// Counts `p` as lost, for the ledger's next gap entry.
    fn lose(&mut self, p: &Pending, why: &'static str) {
        let s = &self.stats;
        let events = p.events();
        s.events_dropped_write_failed.add_usize(events);
        s.failures.inc();
        let now = crate::store::unix_nanos_now();
        if self.gap.writes_lost == 0 {
            self.gap.first_lost_at = now;
        }
        self.gap.last_lost_at = now;
        self.gap.events_lost += events as u64;
        self.gap.writes_lost += 1;
        error!(
            events,
            alert = matches!(p, Pending::Alert(_)),
            failures = s.failures.get(),
            reason = "write_failed",
            "store write dropped: {why}"
        );
    }

    /// At close: a few more attempts for what is held, then what is left
    /// is dropped and counted (the store could not take it).
    async fn close_held(&mut self) {
        let mut wait = RETRY_FIRST;
        for _ in 0..CLOSE_ATTEMPTS {
            if self.held.is_empty() {
                return;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
            self.retry_at = None;
            self.commit();
        }
        while let Some(p) = self.held.pop_front() {
            self.held_weight -= p.weight();
            self.lose(&p, "the writer closed while the store was failing");
        }
        self.stats.held.set(0);
    }
}

/// The operations and counts of one transaction over `writes`.
fn transaction<'a>(
    writes: impl Iterator<Item = &'a Pending>,
    retention: Retentions,
) -> (Vec<Op<'a>>, Tally) {
    let mut ops = Vec::new();
    let mut tally = Tally::default();
    for p in writes {
        match p {
            Pending::Events { events, completes } => {
                ops.push(Op::Events(events));
                tally.events += events.len();
                tally.batches += usize::from(*completes);
            }
            Pending::Snapshot(rows) => ops.push(Op::Snapshot(rows)),
            Pending::Timed(batch) => {
                ops.push(Op::Timed(batch, batch.retention(retention)));
                tally.events += batch.len();
            }
            Pending::Alert(a) => {
                ops.push(Op::Alert(a));
                tally.alerts += 1;
            }
            Pending::ClearProcesses => ops.push(Op::ClearProcesses),
        }
    }
    (ops, tally)
}

/// What one transaction holds, for the counters.
#[derive(Debug, Default)]
struct Tally {
    events: usize,
    batches: usize,
    alerts: usize,
}

/// One attempt at a transaction; a first attempt that fails is retried at
/// once (a passing lock, a reader's checkpoint). Each failure is counted and
/// sets `failing`.
fn attempt(
    store: &mut Slot,
    s: &WriterStats,
    ops: &[Op<'_>],
    tally: &Tally,
    first: bool,
) -> Result<Recorded, ()> {
    let tries = if first { 2 } else { 1 };
    for i in 0..tries {
        match store.apply(ops) {
            Ok(r) => return Ok(r),
            Err(err) => {
                s.write_errors.inc();
                s.failing.set(1);
                let retrying = i + 1 < tries;
                warn!(
                    error = %daemoneye_lib::error_chain(&err),
                    events = tally.events,
                    alerts = tally.alerts,
                    "store write failed; {}",
                    if retrying { "retrying at once" } else { "held, to be tried again" }
                );
            }
        }
    }
    Err(())
}

/// Counts a committed transaction; then records what was lost before it,
/// if anything, in the ledger (kept for the next commit if that fails).
fn committed(store: &mut Slot, s: &WriterStats, tally: &Tally, done: &Recorded, gap: &mut Gap) {
    record_gap(store, s, gap);
    s.events_written.add_usize(tally.events);
    s.batches.add_usize(tally.batches);
    s.alerts.add_usize(tally.alerts);
    s.lifecycle_events.add(done.lifecycle);
    s.snapshots.add(done.snapshots);
    s.performance_samples.add(done.performance);
    s.performance_pruned.add(done.pruned);
    s.connections_written.add(done.connections);
    s.connections_pruned.add(done.connections_pruned);
    s.file_events_written.add(done.file_events);
    s.file_events_pruned.add(done.file_events_pruned);
    s.transactions_committed.inc();
    s.failing.set(0);
}

/// Records what was lost, if anything, in the ledger (kept for the next
/// commit if that fails).
fn record_gap(store: &mut Slot, s: &WriterStats, gap: &mut Gap) {
    if gap.writes_lost > 0 && store.apply(&[Op::Gap(gap)]).is_ok() {
        warn!(
            events_lost = gap.events_lost,
            writes_lost = gap.writes_lost,
            "store writing again; the loss is recorded in the ledger"
        );
        s.gaps_recorded.inc();
        *gap = Gap::default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::unnecessary_literal_bound)]

    use collector_core::{EventId, EventKind, ProcessEventType};

    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let db = Store::open(dir.path()).unwrap();
        (dir, db)
    }

    /// A writer config whose batch waits a minute: only a flush or an
    /// awaited operation commits within a test.
    fn slow_batches() -> WriterConfig {
        WriterConfig {
            batch_delay_ms: 60_000,
            ..WriterConfig::default()
        }
    }

    /// `n` exec events of pids `1..=n`.
    fn events(n: usize) -> Vec<ProcessEvent> {
        (1..=n)
            .map(|i| {
                let mut e = ProcessEvent::new(u32::try_from(i).unwrap(), "e");
                e.event_type = ProcessEventType::Exec;
                e
            })
            .collect()
    }

    fn count(dir: &tempfile::TempDir) -> u64 {
        Store::open_read_only(dir.path())
            .unwrap()
            .count_events()
            .unwrap()
    }

    #[tokio::test]
    async fn a_process_across_batches_of_one_transaction_is_one_row_and_one_entry() {
        let (dir, db) = open();
        let config = slow_batches();
        let writer = StoreWriter::spawn(db, config).unwrap();
        let key =
            collector_core::ProcessKey::new(collector_core::BootId::from_bytes([5; 16]), 40, 9);
        let lifecycle = |kind, seq| {
            let mut e = ProcessEvent::new(40, "true");
            e.event_type = kind;
            e.process_key = Some(key);
            e.executable_path = Some("/bin/true".into());
            e.id = std::num::NonZeroU64::new(seq).map(|seq| EventId::new(3, seq));
            e
        };
        // The agent's batches as they came: the fork, the exec, the exit.
        writer
            .events(vec![lifecycle(ProcessEventType::Fork, 1)])
            .await;
        writer
            .events(vec![lifecycle(ProcessEventType::Exec, 2)])
            .await;
        let mut exit = lifecycle(ProcessEventType::Exit, 3);
        exit.exit_code = Some(4);
        writer.events(vec![exit]).await;
        writer.flush().await.unwrap();
        let stats = writer.close().await;
        assert_eq!(stats.transactions_committed.get(), 1);
        assert_eq!(stats.lifecycle_events.get(), 3);
        let ro = Store::open_read_only(dir.path()).unwrap();
        let rows = ro
            .query("SELECT count(*), max(exit_code), max(forked_at IS NOT NULL) FROM process_event_rows")
            .unwrap()
            .rows;
        assert_eq!(
            rows[0],
            [
                serde_json::json!(1),
                serde_json::json!(4),
                serde_json::json!(1)
            ]
        );
        assert_eq!(
            ro.verify_ledger().unwrap().entries,
            1,
            "one entry for the run"
        );
        assert_eq!(
            ro.query("SELECT count(*) FROM processes").unwrap().rows[0][0],
            0,
            "gone: no row left"
        );
    }

    #[test]
    fn public_types_are_send_and_sync_where_they_must_be() {
        fn send<T: Send>() {}
        collector_core::assert_send_sync!(StoreWriter, WriterStats, StoreError);
        // Moved to the writer thread, shared as `Arc<Mutex<_>>`.
        send::<Store>();
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(WriterConfig::default().validate().is_ok());
        let zero = WriterConfig {
            batch_events: 0,
            ..WriterConfig::default()
        };
        assert!(matches!(
            zero.validate(),
            Err(StoreError::InvalidWriterConfig {
                field: "batch_events",
                ..
            })
        ));
        for (bad, field) in [
            (
                WriterConfig {
                    retention: Some(Duration::ZERO),
                    ..WriterConfig::default()
                },
                "retention",
            ),
            (
                WriterConfig {
                    max_store_bytes: Some(1_000),
                    ..WriterConfig::default()
                },
                "max_store_bytes",
            ),
        ] {
            assert!(
                matches!(bad.validate(), Err(StoreError::InvalidWriterConfig { field: f, .. }) if f == field),
                "{bad:?}"
            );
        }
        let bounded: WriterConfig =
            serde_json::from_str(r#"{"retention": "30days", "max_store_bytes": 1073741824}"#)
                .unwrap();
        assert_eq!(
            bounded.bounds(),
            Retention {
                max_age: Some(Duration::from_secs(30 * 86_400)),
                max_bytes: Some(1 << 30),
            }
        );
        let parsed: WriterConfig =
            serde_json::from_str(r#"{"queue_writes": 5, "when_full": "drop_newest"}"#).unwrap();
        assert_eq!(parsed.queue_writes, 5);
        assert_eq!(parsed.when_full, WhenFull::DropNewest);
        assert_eq!(parsed.batch_events, DEFAULT_BATCH_EVENTS);
        assert!(serde_json::from_str::<WriterConfig>(r#"{"queue": 5}"#).is_err());
    }

    #[tokio::test]
    async fn everything_queued_is_committed_at_close() {
        let (dir, store) = open();
        let writer = StoreWriter::start(store, 2).unwrap();
        let stats = writer.stats();
        for i in 0..100u32 {
            let mut e = ProcessEvent::new(i + 1, "x");
            e.event_type = ProcessEventType::Exec;
            e.accessible = true;
            e.process_key = Some(collector_core::ProcessKey::new(
                collector_core::BootId::from_bytes([2; 16]),
                i + 1,
                7,
            ));
            writer.events(vec![e]).await;
        }
        writer.close().await;
        assert_eq!(stats.batches.get(), 100);
        assert_eq!(stats.failures.get(), 0);
        let ro = Store::open_read_only(dir.path()).unwrap();
        // One entry for each transaction's run of batches.
        let entries = ro.verify_ledger().unwrap().entries;
        assert_eq!(
            u64::try_from(entries).unwrap(),
            stats.transactions_committed.get()
        );
        assert!(
            entries < 100,
            "{entries} entries: batches not written as one"
        );
        assert_eq!(
            ro.query("SELECT count(*) FROM processes").unwrap().rows[0][0],
            100
        );
    }

    #[tokio::test]
    async fn flush_commits_what_was_sent_before_it() {
        let (dir, db) = open();
        let config = slow_batches();
        let writer = StoreWriter::spawn(db, config).unwrap();
        writer.events(events(10)).await;
        writer.flush().await.unwrap();
        let stats = writer.stats();
        assert_eq!(stats.events_written.get(), 10);
        assert_eq!(stats.events_queued(), 0);
        assert_eq!(count(&dir), 10);
        writer.close().await;
    }

    #[tokio::test]
    async fn the_outbox_is_read_after_what_was_queued_before_and_acked_through_the_writer() {
        let (dir, db) = open();
        let config = slow_batches();
        let writer = StoreWriter::spawn(db.with_outbox(Some(10)), config).unwrap();
        let alert = crate::Alert {
            rule_id: "r".into(),
            rule_name: "rule".into(),
            severity: crate::Severity::High,
            mitre: vec![],
            process: crate::AlertProcess::host(),
            observed_at: 1,
            raised_at: 2,
            dedup_key: "r:0".into(),
            file: None,
        };
        writer.alert(alert.clone()).await;
        writer.alert(alert).await;
        let items = writer.outbox_read(0, 10).await.unwrap();
        assert_eq!(items.len(), 2);
        let later = writer.outbox_read(items[0].id, 10).await.unwrap();
        assert_eq!(later, items[1..]);
        let state = writer.outbox_ack(vec![items[0].id]).await.unwrap();
        assert_eq!((state.depth, state.dropped), (1, 0));
        writer.close().await;
        let left = Store::open(dir.path()).unwrap().outbox_read(0, 10).unwrap();
        assert_eq!(left, items[1..]);
    }

    #[tokio::test]
    async fn commits_to_the_outbox_are_signalled_and_removals_come_before_what_follows() {
        let (dir, db) = open();
        let config = slow_batches();
        let writer = StoreWriter::spawn(
            db.with_outbox(Some(100))
                .with_shipped_events(&[EventKind::Process]),
            config,
        )
        .unwrap();
        let mut changes = writer.outbox_changes();
        let reader = Store::open_file_read_only(writer.path()).unwrap();
        // Three writes, three rows (the events of one write share a row).
        let mut batch = events(3);
        for (n, e) in batch.iter_mut().enumerate() {
            e.id = std::num::NonZeroU64::new(n as u64 + 1).map(|seq| EventId::new(7, seq));
        }
        for e in batch {
            writer.events(vec![e]).await;
        }
        // Queued, not committed: not signalled, not readable.
        assert!(!changes.has_changed().unwrap());
        assert!(reader.outbox_read(0, 10).unwrap().is_empty());
        writer.flush().await.unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let items = reader.outbox_read(0, 10).unwrap();
        assert_eq!(items.len(), 3);
        // Two removals nobody awaits, then a look: the look comes after them.
        let first = writer.outbox_ack_queued(vec![items[0].id]).await.unwrap();
        let second = writer.outbox_ack_queued(vec![items[1].id]).await.unwrap();
        let state = writer.outbox_state().await.unwrap();
        assert_eq!(state.depth, 1);
        assert_eq!(first.applied().await.unwrap().depth, 1, "one transaction");
        assert_eq!(second.applied().await.unwrap().depth, 1);
        // A removal changed the outbox: signalled too (after its reply).
        // (A timeout here means the removal was not signalled.)
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .unwrap()
            .unwrap();
        changes.mark_unchanged();
        // A commit that leaves the outbox as it was is not signalled.
        writer.flush().await.unwrap();
        assert!(!changes.has_changed().unwrap());
        assert_eq!(reader.outbox_read(0, 10).unwrap(), items[2..]);
        writer.close().await;
        drop(dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_larger_than_a_transaction_is_split_not_stuck() {
        let (dir, db) = open();
        let config = WriterConfig {
            queue_writes: 4,
            batch_events: 3,
            ..WriterConfig::default()
        };
        let writer = StoreWriter::spawn(db, config).unwrap();
        writer.events(events(10)).await;
        writer.events(events(2)).await;
        let stats = writer.close().await;
        assert_eq!(stats.events_written.get(), 12);
        assert_eq!(stats.batches.get(), 2);
        assert_eq!(stats.events_dropped(), 0);
        assert!(stats.transactions_committed.get() >= 4, "{stats:?}");
        assert_eq!(count(&dir), 12);
    }

    #[tokio::test]
    async fn writes_after_close_are_refused_and_counted() {
        let (_dir, db) = open();
        let writer = StoreWriter::spawn(db, WriterConfig::default()).unwrap();
        writer.events(events(3)).await;
        let closed = writer.close().await;
        assert_eq!(closed.events_written.get(), 3);
        writer.events(events(2)).await;
        assert!(matches!(
            writer.flush().await,
            Err(StoreError::WriterClosed)
        ));
        // A second close waits for the same end.
        let again = writer.close().await;
        assert_eq!(again.events_refused.get(), 2);
        assert_eq!(again.failures.get(), 1);
        assert_eq!(again.events_accepted.get(), 3);
    }

    #[tokio::test]
    async fn dropping_every_handle_commits_and_ends_the_writer() {
        let (dir, db) = open();
        let writer = StoreWriter::spawn(db, WriterConfig::default()).unwrap();
        let mut done = writer.done.clone();
        writer.events(events(7)).await;
        drop(writer);
        done.wait_for(|d| *d).await.unwrap();
        assert_eq!(count(&dir), 7);
    }

    #[tokio::test]
    async fn drop_newest_counts_what_does_not_fit() {
        let (_dir, db) = open();
        let config = WriterConfig {
            queue_writes: 5,
            when_full: WhenFull::DropNewest,
            batch_delay_ms: 60_000,
            batch_events: 1_000,
            ..WriterConfig::default()
        };
        let writer = StoreWriter::spawn(db, config).unwrap();
        // The writer may already have taken the first batches (and given
        // their room back), so fill the queue until a drop is seen.
        let mut sent = 0u64;
        while writer.stats().events_dropped_queue_full.get() == 0 {
            writer.events(events(5)).await;
            sent += 5;
            assert!(sent < 1_000_000, "no drop ever counted");
        }
        let stats = writer.close().await;
        assert_eq!(
            stats.events_accepted.get() + stats.events_dropped_queue_full.get(),
            sent
        );
        assert_eq!(stats.events_written.get(), stats.events_accepted.get());
    }

    /// A log past SQLite's threshold is checkpointed by the checkpointing
    /// thread, not by the writer's commit (nor its backstop, ten times
    /// further).
    #[tokio::test]
    async fn the_log_is_checkpointed_off_the_writer() {
        let (_dir, db) = open();
        let file = db.path().to_path_buf();
        let writer = StoreWriter::start(db, 64).unwrap();
        let stats = writer.stats();
        let big = |n: usize| {
            let mut batch = events(n);
            for e in &mut batch {
                e.command_line = vec!["x".repeat(4096)];
            }
            batch
        };
        writer.events(big(10)).await;
        writer.flush().await.unwrap();
        let before = std::fs::metadata(&file).unwrap().len();
        // About 2,500 pages of log: past the threshold, short of the backstop.
        for _ in 0..25 {
            writer.events(big(100)).await;
        }
        // Closing joins the thread, after the checkpoint it was asked for.
        writer.close().await;
        assert!(stats.wal_checkpoints.get() > 0, "nothing checkpointed");
        assert_eq!(stats.wal_checkpoint_errors.get(), 0);
        assert!(std::fs::metadata(&file).unwrap().len() > before + (4 << 20));
    }

    #[tokio::test]
    async fn start_checkpoint_and_stop_are_chained_after_what_came_before() {
        let (dir, db) = open();
        let config = WriterConfig {
            queue_writes: 2,
            when_full: WhenFull::DropNewest,
            batch_delay_ms: 60_000,
            batch_events: 1_000,
            ..WriterConfig::default()
        };
        let writer = StoreWriter::spawn(db, config).unwrap();
        let start = writer.record_start("9.9.9", 42).await.unwrap();
        assert_eq!(start.seq, 1);
        let mut sent = 0u64;
        while writer.stats().events_dropped_queue_full.get() == 0 {
            writer.events(events(1)).await;
            sent += 1;
            assert!(sent < 1_000_000, "no drop ever counted");
        }
        let dropped = writer.stats().events_dropped_queue_full.get();
        let cp = writer.checkpoint().await.unwrap();
        // After every event queued before it: the head is the checkpoint.
        let written = writer.stats().events_written.get();
        assert_eq!(written + dropped, sent);
        // The start, one entry per transaction of events, the checkpoint.
        let transactions = writer.stats().transactions_committed.get();
        assert_eq!(cp.seq, i64::try_from(transactions).unwrap());
        assert_eq!(cp.lost.events, dropped);
        assert!(cp.time > 0);
        let again = writer.checkpoint().await.unwrap();
        assert_eq!((again.seq, again.lost), (cp.seq + 1, Lost::default()));
        let stop = writer.record_stop(42).await.unwrap();
        assert_eq!(stop.seq, again.seq + 1);
        writer.close().await;
        // A second run: its start names the head it found.
        let writer = StoreWriter::start(Store::open(dir.path()).unwrap(), 4).unwrap();
        writer.record_start("9.9.9", 43).await.unwrap();
        writer.close().await;
        let ro = Store::open_read_only(dir.path()).unwrap();
        let v = ro.verify_ledger().unwrap();
        assert_eq!(v.entries, stop.seq + 1);
        let kinds = ro
            .query("SELECT kind, content FROM ledger WHERE kind <> 'process_events' ORDER BY seq")
            .unwrap()
            .rows;
        let kinds: Vec<&str> = kinds.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["start", "checkpoint", "checkpoint", "stop", "start"]
        );
        let last = ro
            .query("SELECT content FROM ledger ORDER BY seq DESC LIMIT 1")
            .unwrap();
        let last: StartEntry = serde_json::from_str(last.rows[0][0].as_str().unwrap()).unwrap();
        assert_eq!((last.pid, last.previous), (43, Some(stop)));
        let anchors = [cp.anchor(), again.anchor()];
        assert_eq!(ro.verify_ledger_anchored(&anchors).unwrap(), v);
        assert_eq!(ro.ledger_runs().unwrap().unclean, Vec::<i64>::new());
    }

    #[tokio::test]
    async fn alerts_and_events_commit_in_queue_order() {
        use crate::alert::tests::TestRule;
        use crate::alert::{AlertProcess, Severity};
        let (dir, db) = open();
        let writer = StoreWriter::spawn(db, WriterConfig::default()).unwrap();
        let e = events(1);
        writer.events(e.clone()).await;
        writer
            .alert(Alert::new(
                &TestRule("r", Severity::Low),
                AlertProcess::from_event(&e[0], None),
                std::time::SystemTime::now(),
            ))
            .await;
        writer.events(events(1)).await;
        let stats = writer.close().await;
        assert_eq!(stats.alerts.get(), 1);
        let ro = Store::open_read_only(dir.path()).unwrap();
        let kinds = ro.query("SELECT kind FROM ledger ORDER BY seq").unwrap();
        let want: Vec<Vec<serde_json::Value>> = vec![
            vec!["process_events".into()],
            vec!["alert".into()],
            vec!["process_events".into()],
        ];
        assert_eq!(kinds.rows, want);
        let seq = ro.query("SELECT ledger_seq FROM alerts").unwrap();
        assert_eq!(seq.rows[0][0], 2);
    }

    #[tokio::test]
    async fn snapshots_and_events_go_through_a_shared_store() {
        let (dir, db) = open();
        let shared = Arc::new(Mutex::new(db));
        let writer =
            StoreWriter::spawn_shared(Arc::clone(&shared), WriterConfig::default()).unwrap();
        let rows: Vec<ProcessEvent> = (1..=3)
            .map(|pid| {
                let mut e = ProcessEvent::new(pid, "snap");
                e.process_key = Some(collector_core::ProcessKey::new(
                    collector_core::BootId::from_bytes([2; 16]),
                    pid,
                    7,
                ));
                e
            })
            .collect();
        writer.snapshot(rows).await;
        writer.events(events(2)).await;
        writer.flush().await.unwrap();
        // The owner sees the writes through its own handle at once.
        {
            let store = shared.lock().unwrap();
            assert_eq!(store.latest_snapshot().unwrap().len(), 3);
            assert_eq!(store.count_events().unwrap(), 2);
        }
        let stats = writer.close().await;
        assert_eq!(
            (stats.snapshots.get(), stats.lifecycle_events.get()),
            (1, 2)
        );
        assert_eq!(count(&dir), 2);
    }
}
