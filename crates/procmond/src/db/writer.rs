//! The writer task: a [`DatabaseManager`] on its own blocking thread behind a
//! bounded queue.
//!
//! The async side only queues ([`DbWriterHandle::send`]); SQLite runs on a
//! `spawn_blocking` thread that takes what is queued, up to
//! [`batch_events`](DbWriterConfig::batch_events) events or
//! [`batch_delay_ms`](DbWriterConfig::batch_delay_ms) after the first one, and
//! commits it in one transaction. A failed transaction is logged, counted and
//! retried once; if the retry fails too its events are counted as dropped
//! (`write_failed`) and the writer goes on with the next batch.
//!
//! Accounting: `events_accepted` equals `events_written` plus
//! `events_dropped_write_failed` plus [`events_queued`](DbWriterStats::events_queued).
//! Events refused by `send` (the writer had closed) are counted in
//! `events_refused` and were never accepted; events dropped because the queue
//! was full (`WhenFull::DropNewest` only) in `events_dropped_queue_full`.

use std::error::Error as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use collector_core::{ProcessEvent, WhenFull};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Semaphore, TryAcquireError};
use tokio::task::JoinHandle;

use super::{DatabaseManager, DbError};

/// Configuration of a [`DbWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbWriterConfig {
    /// Events the queue holds before [`DbWriterHandle::send`] waits (or
    /// drops, under [`WhenFull::DropNewest`]).
    pub queue_events: usize,
    /// The most events committed in one transaction.
    pub batch_events: usize,
    /// The longest the first event of a partial batch waits for more before
    /// the batch is committed, in milliseconds.
    pub batch_delay_ms: u64,
    /// What `send` does when the queue is full.
    pub when_full: WhenFull,
}

/// Default of [`DbWriterConfig::queue_events`].
pub const DEFAULT_QUEUE_EVENTS: usize = 10_000;
/// Default of [`DbWriterConfig::batch_events`].
pub const DEFAULT_BATCH_EVENTS: usize = 1_000;
/// Default of [`DbWriterConfig::batch_delay_ms`].
pub const DEFAULT_BATCH_DELAY_MS: u64 = 50;

impl Default for DbWriterConfig {
    fn default() -> Self {
        Self {
            queue_events: DEFAULT_QUEUE_EVENTS,
            batch_events: DEFAULT_BATCH_EVENTS,
            batch_delay_ms: DEFAULT_BATCH_DELAY_MS,
            when_full: WhenFull::Block,
        }
    }
}

impl DbWriterConfig {
    /// Checks the sizes.
    ///
    /// # Errors
    /// [`DbError::InvalidWriterConfig`] naming the first field that is zero
    /// or too large.
    pub fn validate(&self) -> Result<(), DbError> {
        let invalid = |field, reason| Err(DbError::InvalidWriterConfig { field, reason });
        if self.queue_events == 0 {
            return invalid("queue_events", "must be at least 1");
        }
        if u32::try_from(self.queue_events).is_err() {
            return invalid("queue_events", "must fit in 32 bits");
        }
        if self.batch_events == 0 {
            return invalid("batch_events", "must be at least 1");
        }
        Ok(())
    }
}

/// A snapshot of a writer's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DbWriterStats {
    /// Events taken into the queue.
    pub events_accepted: u64,
    /// Events committed to the database.
    pub events_written: u64,
    /// Transactions committed.
    pub transactions_committed: u64,
    /// Failed transaction attempts (each batch is tried at most twice).
    pub write_errors: u64,
    /// Events dropped because their batch failed twice.
    pub events_dropped_write_failed: u64,
    /// Events dropped because the queue was full (never under
    /// [`WhenFull::Block`]).
    pub events_dropped_queue_full: u64,
    /// Events `send` refused because the writer had closed (returned to the
    /// caller as [`DbError::WriterClosed`], never accepted).
    pub events_refused: u64,
}

impl DbWriterStats {
    /// Every event lost after `send` returned `Ok`, whatever the reason.
    pub const fn events_dropped(&self) -> u64 {
        self.events_dropped_write_failed + self.events_dropped_queue_full
    }

    /// Accepted events neither written nor dropped yet.
    pub const fn events_queued(&self) -> u64 {
        self.events_accepted
            .saturating_sub(self.events_written)
            .saturating_sub(self.events_dropped_write_failed)
    }
}

#[derive(Debug, Default)]
struct Counters {
    events_accepted: AtomicU64,
    events_written: AtomicU64,
    transactions_committed: AtomicU64,
    write_errors: AtomicU64,
    events_dropped_write_failed: AtomicU64,
    events_dropped_queue_full: AtomicU64,
    events_refused: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DbWriterStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DbWriterStats {
            events_accepted: get(&self.events_accepted),
            events_written: get(&self.events_written),
            transactions_committed: get(&self.transactions_committed),
            write_errors: get(&self.write_errors),
            events_dropped_write_failed: get(&self.events_dropped_write_failed),
            events_dropped_queue_full: get(&self.events_dropped_queue_full),
            events_refused: get(&self.events_refused),
        }
    }
}

#[derive(Debug)]
struct Shared {
    counters: Counters,
    /// One permit per event of room in the queue.
    room: Semaphore,
}

#[derive(Debug)]
enum Command {
    Events {
        events: Vec<ProcessEvent>,
        permits: u32,
    },
    Flush(oneshot::Sender<()>),
    Close,
}

/// Runs a [`DatabaseManager`] on a blocking thread (see the
/// [`db`](crate::db) module docs).
#[derive(Debug)]
pub struct DbWriter {
    _private: (),
}

impl DbWriter {
    /// Gives `db` to a new writer thread and returns the handle to feed it
    /// and the thread's join handle, which yields the database back once the
    /// writer has closed (after [`DbWriterHandle::close`], or when every
    /// handle is dropped: both commit everything queued first).
    ///
    /// A `config` that fails [`DbWriterConfig::validate`] is clamped to the
    /// nearest valid sizes.
    ///
    /// # Panics
    /// When called outside a tokio runtime (as `tokio::task::spawn_blocking`).
    pub fn spawn(
        db: DatabaseManager,
        config: DbWriterConfig,
    ) -> (DbWriterHandle, JoinHandle<DatabaseManager>) {
        let DbWriterConfig {
            queue_events,
            batch_events,
            batch_delay_ms,
            when_full,
        } = config;
        let queue_events = u32::try_from(queue_events.max(1)).unwrap_or(u32::MAX);
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            room: Semaphore::new(queue_events as usize),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = watch::channel(false);
        let worker = Worker {
            db,
            rx,
            shared: Arc::clone(&shared),
            batch_events: batch_events.max(1),
            batch_delay: Duration::from_millis(batch_delay_ms),
            runtime: tokio::runtime::Handle::current(),
            done: done_tx,
        };
        let join = tokio::task::spawn_blocking(move || worker.run());
        let handle = DbWriterHandle {
            tx,
            shared,
            done: done_rx,
            queue_events,
            when_full,
        };
        (handle, join)
    }
}

/// Feeds a [`DbWriter`]. Cheap to clone; the writer closes when
/// [`close`](Self::close) is called or every clone is dropped.
#[derive(Debug, Clone)]
pub struct DbWriterHandle {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    done: watch::Receiver<bool>,
    queue_events: u32,
    when_full: WhenFull,
}

impl DbWriterHandle {
    /// Queues `events` to be written as lifecycle events.
    ///
    /// When the queue is full this waits for room ([`WhenFull::Block`]) or
    /// drops `events`, counts them in `events_dropped_queue_full` and returns
    /// `Ok` ([`WhenFull::DropNewest`]). A batch larger than the whole queue
    /// waits until the queue is empty.
    ///
    /// # Errors
    /// [`DbError::WriterClosed`] when the writer has closed; `events` were
    /// not accepted (they are counted in `events_refused`).
    ///
    /// # Cancel safety
    /// Cancel safe: if the future is dropped while it waits for room, the
    /// events were not accepted and nothing is counted.
    pub async fn send(&self, events: Vec<ProcessEvent>) -> Result<(), DbError> {
        if events.is_empty() {
            return Ok(());
        }
        let n = events.len();
        let c = &self.shared.counters;
        let permits = u32::try_from(n).unwrap_or(u32::MAX).min(self.queue_events);
        let acquired = match self.when_full {
            WhenFull::Block => self.shared.room.acquire_many(permits).await.ok(),
            WhenFull::DropNewest => match self.shared.room.try_acquire_many(permits) {
                Ok(p) => Some(p),
                Err(TryAcquireError::NoPermits) => {
                    Counters::add(&c.events_dropped_queue_full, n);
                    tracing::debug!(
                        events = n,
                        reason = "queue_full",
                        "database writer queue full, events dropped"
                    );
                    return Ok(());
                }
                Err(TryAcquireError::Closed) => None,
            },
        };
        let Some(permit) = acquired else {
            Counters::add(&c.events_refused, n);
            return Err(DbError::WriterClosed);
        };
        // The writer gives the room back when it takes the events.
        permit.forget();
        // Counted before the writer can count them written.
        Counters::add(&c.events_accepted, n);
        if self.tx.send(Command::Events { events, permits }).is_err() {
            c.events_accepted.fetch_sub(n as u64, Ordering::Relaxed);
            Counters::add(&c.events_refused, n);
            self.shared.room.add_permits(permits as usize);
            return Err(DbError::WriterClosed);
        }
        Ok(())
    }

    /// Waits until everything queued before this call is committed (or, if
    /// its transaction failed twice, counted as dropped).
    ///
    /// # Errors
    /// [`DbError::WriterClosed`] when the writer has closed.
    ///
    /// # Cancel safety
    /// Cancel safe: the writer commits the queued events either way.
    pub async fn flush(&self) -> Result<(), DbError> {
        let (ack, acked) = oneshot::channel();
        self.tx
            .send(Command::Flush(ack))
            .map_err(|_| DbError::WriterClosed)?;
        acked.await.map_err(|_| DbError::WriterClosed)
    }

    /// Closes the writer: later sends are refused, everything queued is
    /// committed, then this returns the final counters. Calling it again, or
    /// from another clone, waits for the same end.
    ///
    /// # Errors
    /// [`DbError::WriterClosed`] only if the writer thread ended without
    /// finishing (it panicked).
    ///
    /// # Cancel safety
    /// Cancel safe: once called, the writer closes and commits even if the
    /// future is dropped.
    pub async fn close(&self) -> Result<DbWriterStats, DbError> {
        // Fails only when the writer is already closing; then wait all the same.
        let _ = self.tx.send(Command::Close);
        let mut done = self.done.clone();
        let finished = done.wait_for(|finished| *finished).await.is_ok();
        if finished {
            Ok(self.stats())
        } else {
            Err(DbError::WriterClosed)
        }
    }

    /// The writer's counters now.
    pub fn stats(&self) -> DbWriterStats {
        self.shared.counters.snapshot()
    }
}

struct Worker {
    db: DatabaseManager,
    rx: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    batch_events: usize,
    batch_delay: Duration,
    runtime: tokio::runtime::Handle,
    done: watch::Sender<bool>,
}

/// What one round of collecting produced besides the events.
#[derive(Default)]
struct Round {
    acks: Vec<oneshot::Sender<()>>,
    finish: bool,
}

impl Worker {
    fn run(mut self) -> DatabaseManager {
        let mut pending = Vec::with_capacity(self.batch_events);
        loop {
            let runtime = self.runtime.clone();
            let round = runtime.block_on(self.collect(&mut pending));
            self.commit(&mut pending);
            for ack in round.acks {
                let _ = ack.send(());
            }
            if round.finish {
                break;
            }
        }
        tracing::debug!(stats = ?self.shared.counters.snapshot(), "database writer closed");
        self.done.send_replace(true);
        self.db
    }

    /// Waits for events and gathers a batch: up to `batch_events`, or what
    /// came within `batch_delay` of the first, or everything before a flush.
    async fn collect(&mut self, pending: &mut Vec<ProcessEvent>) -> Round {
        let mut round = Round::default();
        let Some(first) = self.rx.recv().await else {
            round.finish = true;
            return round;
        };
        if self.take(first, pending, &mut round) {
            return self.close_if_finishing(pending, round).await;
        }
        let deadline = tokio::time::Instant::now() + self.batch_delay;
        while pending.len() < self.batch_events {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(cmd)) => {
                    if self.take(cmd, pending, &mut round) {
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
        self.close_if_finishing(pending, round).await
    }

    /// Files one command; true when the batch must be committed now.
    fn take(&self, cmd: Command, pending: &mut Vec<ProcessEvent>, round: &mut Round) -> bool {
        match cmd {
            Command::Events { events, permits } => {
                self.shared.room.add_permits(permits as usize);
                pending.extend(events);
                false
            }
            Command::Flush(ack) => {
                round.acks.push(ack);
                true
            }
            Command::Close => {
                round.finish = true;
                true
            }
        }
    }

    /// On close: refuse new sends and take everything already queued (a
    /// `recv` after `close` still yields every message sent before it).
    async fn close_if_finishing(
        &mut self,
        pending: &mut Vec<ProcessEvent>,
        mut round: Round,
    ) -> Round {
        if round.finish {
            self.rx.close();
            self.shared.room.close();
            while let Some(cmd) = self.rx.recv().await {
                self.take(cmd, pending, &mut round);
            }
        }
        round
    }

    fn commit(&mut self, pending: &mut Vec<ProcessEvent>) {
        for chunk in pending.chunks(self.batch_events) {
            self.write_with_retry(chunk);
        }
        pending.clear();
    }

    fn write_with_retry(&mut self, chunk: &[ProcessEvent]) {
        let c = &self.shared.counters;
        let first = match self.db.write_events(chunk) {
            Ok(n) => return self.committed(n),
            Err(err) => err,
        };
        Counters::add(&c.write_errors, 1);
        tracing::warn!(
            error = %chain(&first),
            events = chunk.len(),
            "database write failed, retrying once"
        );
        match self.db.write_events(chunk) {
            Ok(n) => self.committed(n),
            Err(err) => {
                Counters::add(&c.write_errors, 1);
                Counters::add(&c.events_dropped_write_failed, chunk.len());
                tracing::error!(
                    error = %chain(&err),
                    events = chunk.len(),
                    reason = "write_failed",
                    "database write failed twice, events dropped"
                );
            }
        }
    }

    fn committed(&self, n: usize) {
        let c = &self.shared.counters;
        Counters::add(&c.events_written, n);
        Counters::add(&c.transactions_committed, 1);
    }
}

/// The error and its sources, `: `-separated, for one log field.
fn chain(err: &DbError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn open() -> (tempfile::TempDir, DatabaseManager) {
        let dir = tempfile::tempdir().unwrap();
        let db = DatabaseManager::new(dir.path().join("audit.db")).unwrap();
        (dir, db)
    }

    fn events(n: usize) -> Vec<ProcessEvent> {
        (1..=n)
            .map(|i| ProcessEvent::new(u32::try_from(i).unwrap(), "e"))
            .collect()
    }

    #[test]
    fn public_types_are_send_and_sync_where_they_must_be() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<DbWriterHandle>();
        send_sync::<DbWriterStats>();
        send_sync::<DbError>();
        // Moved to the writer thread, shared as `Arc<Mutex<_>>`.
        send::<DatabaseManager>();
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(DbWriterConfig::default().validate().is_ok());
        let zero = DbWriterConfig {
            batch_events: 0,
            ..DbWriterConfig::default()
        };
        assert!(matches!(
            zero.validate(),
            Err(DbError::InvalidWriterConfig {
                field: "batch_events",
                ..
            })
        ));
        let parsed: DbWriterConfig =
            serde_json::from_str(r#"{"queue_events": 5, "when_full": "drop_newest"}"#).unwrap();
        assert_eq!(parsed.queue_events, 5);
        assert_eq!(parsed.when_full, WhenFull::DropNewest);
        assert_eq!(parsed.batch_events, DEFAULT_BATCH_EVENTS);
        assert!(serde_json::from_str::<DbWriterConfig>(r#"{"queue": 5}"#).is_err());
    }

    #[tokio::test]
    async fn flush_commits_what_was_sent_before_it() {
        let (_dir, db) = open();
        let config = DbWriterConfig {
            // Long enough that only the flush can explain the commit.
            batch_delay_ms: 60_000,
            ..DbWriterConfig::default()
        };
        let (handle, join) = DbWriter::spawn(db, config);
        handle.send(events(10)).await.unwrap();
        handle.flush().await.unwrap();
        let stats = handle.stats();
        assert_eq!(stats.events_written, 10);
        assert_eq!(stats.events_queued(), 0);
        handle.close().await.unwrap();
        let db = join.await.unwrap();
        assert_eq!(db.count_events().unwrap(), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_larger_than_the_queue_is_split_not_stuck() {
        let (_dir, db) = open();
        let config = DbWriterConfig {
            queue_events: 4,
            batch_events: 3,
            ..DbWriterConfig::default()
        };
        let (handle, join) = DbWriter::spawn(db, config);
        handle.send(events(10)).await.unwrap();
        handle.send(events(2)).await.unwrap();
        let stats = handle.close().await.unwrap();
        assert_eq!(stats.events_written, 12);
        assert_eq!(stats.events_dropped(), 0);
        assert!(stats.transactions_committed >= 4, "{stats:?}");
        assert_eq!(join.await.unwrap().count_events().unwrap(), 12);
    }

    #[tokio::test]
    async fn sends_after_close_are_refused_and_counted() {
        let (_dir, db) = open();
        let (handle, join) = DbWriter::spawn(db, DbWriterConfig::default());
        handle.send(events(3)).await.unwrap();
        let closed = handle.close().await.unwrap();
        assert_eq!(closed.events_written, 3);
        assert!(matches!(
            handle.send(events(2)).await,
            Err(DbError::WriterClosed)
        ));
        assert!(matches!(handle.flush().await, Err(DbError::WriterClosed)));
        // A second close waits for the same end and succeeds.
        let again = handle.close().await.unwrap();
        assert_eq!(again.events_refused, 2);
        assert_eq!(again.events_accepted, 3);
        join.await.unwrap();
    }

    #[tokio::test]
    async fn dropping_every_handle_commits_and_ends_the_writer() {
        let (_dir, db) = open();
        let (handle, join) = DbWriter::spawn(db, DbWriterConfig::default());
        handle.send(events(7)).await.unwrap();
        drop(handle);
        assert_eq!(join.await.unwrap().count_events().unwrap(), 7);
    }

    #[tokio::test]
    async fn drop_newest_counts_what_does_not_fit() {
        let (_dir, db) = open();
        let config = DbWriterConfig {
            queue_events: 5,
            when_full: WhenFull::DropNewest,
            batch_delay_ms: 60_000,
            batch_events: 1_000,
        };
        let (handle, join) = DbWriter::spawn(db, config);
        // The writer may already have taken the first batch (and given its
        // room back), so fill the queue until a drop is seen.
        let mut sent = 0u64;
        while handle.stats().events_dropped_queue_full == 0 {
            handle.send(events(5)).await.unwrap();
            sent += 5;
            assert!(sent < 1_000_000, "no drop ever counted");
        }
        let stats = handle.close().await.unwrap();
        assert_eq!(
            stats.events_accepted + stats.events_dropped_queue_full,
            sent
        );
        assert_eq!(stats.events_written, stats.events_accepted);
        join.await.unwrap();
    }
}
