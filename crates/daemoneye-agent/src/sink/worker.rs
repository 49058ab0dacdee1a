//! The one bounded worker every sink runs behind, for alerts and
//! checkpoints alike.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use collector_core::source::unless_cancelled;
use collector_core::WhenFull;
use daemoneye_lib::Backoff;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::stats::Outcome;
use super::{AlertSink, Checkpoint, Delivery, Item, SinkStats, SinkStatsSnapshot};
use crate::alert::Alert;

/// How a [`SinkWorker`] queues and retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WorkerConfig {
    /// Alerts the queue holds (at least 1) besides the one being
    /// delivered.
    pub capacity: usize,
    /// What [`SinkWorker::send`] does when the queue is full: wait for room
    /// (`Block`) or drop the alert and count it (`DropNewest`).
    pub when_full: WhenFull,
    /// Attempts per alert, the first one included (at least 1), for
    /// deliveries that end in [`Delivery::Retry`].
    pub max_attempts: u32,
    /// The waits between attempts (restarted for each alert); a receiver's
    /// `after` is honoured up to its `max`.
    pub backoff: Backoff,
}

impl Default for WorkerConfig {
    /// 4,096 alerts, dropping when full, one attempt.
    fn default() -> Self {
        Self {
            capacity: super::DEFAULT_LINE_QUEUE,
            when_full: WhenFull::DropNewest,
            max_attempts: 1,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
                .with_jitter(0.5),
        }
    }
}

/// Why [`SinkWorker::send`] did not queue an alert. Either way the alert is
/// dropped and counted in [`SinkStatsSnapshot::dropped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkSendError {
    /// The queue is full: the receiver is slower than the alerts.
    #[error("sink queue is full; alert dropped")]
    Full,
    /// The worker is gone (closed, or its sink panicked).
    #[error("sink worker has stopped; alert dropped")]
    Closed,
}

/// A sink on a thread of its own behind a bounded queue; see the
/// [module docs](super).
///
/// Call [`close`](Self::close) to stop it by a deadline and get the final
/// counts. A worker merely dropped delivers what is queued and ends.
pub struct SinkWorker {
    name: &'static str,
    tx: Option<mpsc::Sender<Item>>,
    when_full: WhenFull,
    stats: Arc<SinkStats>,
    checkpoints: Arc<SinkStats>,
    outbox: Arc<SinkStats>,
    abort: CancellationToken,
    /// Completes (with an error: the sender is dropped) when the worker's
    /// thread ends.
    done: oneshot::Receiver<()>,
}

impl fmt::Debug for SinkWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkWorker")
            .field("name", &self.name)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl SinkWorker {
    /// Starts `sink` on a thread of its own (`sink-<name>`, with a
    /// single-threaded tokio runtime), behind a queue as `config` says.
    ///
    /// # Errors
    /// When the runtime or the thread cannot be started.
    pub fn start<S: AlertSink>(sink: S, config: WorkerConfig) -> std::io::Result<Self> {
        let name = sink.name();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let stats = Arc::new(SinkStats::default());
        let checkpoints = Arc::new(SinkStats::default());
        let outbox = Arc::new(SinkStats::default());
        let abort = CancellationToken::new();
        let (done_tx, done) = oneshot::channel::<()>();
        let drive = Drive {
            sink,
            config,
            stats: Arc::clone(&stats),
            checkpoints: Arc::clone(&checkpoints),
            outbox: Arc::clone(&outbox),
        };
        let stop = abort.clone();
        std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || {
                let _done = done_tx; // dropped, and so signalled, at the end
                runtime.block_on(drive.run(rx, stop));
            })?;
        Ok(Self {
            name,
            tx: Some(tx),
            when_full: config.when_full,
            stats,
            checkpoints,
            outbox,
            abort,
            done,
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The alerts' counters, shared with the worker: they stay readable
    /// after the worker is closed.
    pub fn stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.stats)
    }

    /// The checkpoints' counters, kept as the alerts' are.
    pub fn checkpoint_stats(&self) -> Arc<SinkStats> {
        Arc::clone(&self.checkpoints)
    }

    /// Items queued or being delivered, of every kind.
    pub fn in_flight(&self) -> u64 {
        [&self.stats, &self.checkpoints, &self.outbox]
            .iter()
            .map(|s| s.snapshot().in_flight())
            .sum()
    }

    fn stats_of(&self, item: &Item) -> &SinkStats {
        match item {
            Item::Alert(_) => &self.stats,
            Item::Checkpoint(_) => &self.checkpoints,
            Item::Outbox => &self.outbox,
        }
    }

    /// Queues `alert` as the [`WhenFull`] policy says: with `Block`, waits
    /// for room; with `DropNewest`, never waits and drops it when the queue
    /// is full. The outcome is counted either way.
    ///
    /// # Errors
    /// [`SinkSendError`] when the alert was dropped.
    ///
    /// # Cancel safety
    /// Cancelling a `Block` send that is waiting for room queues nothing and
    /// counts nothing.
    pub async fn send(&self, alert: impl Into<Arc<Alert>>) -> Result<(), SinkSendError> {
        self.send_item(Item::Alert(alert.into())).await
    }

    /// Queues `checkpoint` as [`send`](Self::send) queues an alert (the
    /// same queue, in order with the alerts), counted in
    /// [`checkpoint_stats`](Self::checkpoint_stats).
    ///
    /// # Errors
    /// [`SinkSendError`] when the checkpoint was dropped.
    ///
    /// # Cancel safety
    /// As [`send`](Self::send).
    pub async fn send_checkpoint(
        &self,
        checkpoint: impl Into<Arc<Checkpoint>>,
    ) -> Result<(), SinkSendError> {
        self.send_item(Item::Checkpoint(checkpoint.into())).await
    }

    async fn send_item(&self, item: Item) -> Result<(), SinkSendError> {
        match self.when_full {
            WhenFull::DropNewest => self.try_send_item(item),
            WhenFull::Block => {
                let stats = self.stats_of(&item);
                let Some(tx) = &self.tx else {
                    return Err(self.drop_one(stats, SinkSendError::Closed));
                };
                match tx.reserve().await {
                    Ok(permit) => {
                        stats.queued();
                        permit.send(item);
                        Ok(())
                    }
                    Err(_) => Err(self.drop_one(stats, SinkSendError::Closed)),
                }
            }
        }
    }

    /// Queues `alert`, or drops it (counted) when the queue is full, never
    /// waiting, whatever the policy.
    ///
    /// # Errors
    /// [`SinkSendError`] when the alert was dropped.
    pub fn try_send(&self, alert: impl Into<Arc<Alert>>) -> Result<(), SinkSendError> {
        self.try_send_item(Item::Alert(alert.into()))
    }

    /// Queues `item` (an alert or a checkpoint), or drops it (counted in its
    /// kind's counters) when the queue is full, never waiting.
    ///
    /// # Errors
    /// [`SinkSendError`] when it was dropped.
    pub fn try_send_item(&self, item: Item) -> Result<(), SinkSendError> {
        let stats = self.stats_of(&item);
        let Some(tx) = &self.tx else {
            return Err(self.drop_one(stats, SinkSendError::Closed));
        };
        match tx.try_reserve() {
            Ok(permit) => {
                stats.queued();
                permit.send(item);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                Err(self.drop_one(stats, SinkSendError::Full))
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                Err(self.drop_one(stats, SinkSendError::Closed))
            }
        }
    }

    fn drop_one(&self, stats: &SinkStats, why: SinkSendError) -> SinkSendError {
        let dropped = stats.dropped();
        if std::ptr::eq(stats, Arc::as_ptr(&self.outbox)) {
            // A drain not queued loses nothing: the items wait in the outbox.
        } else if std::ptr::eq(stats, Arc::as_ptr(&self.checkpoints)) {
            warn!(sink = self.name, dropped, error = %why, "checkpoint dropped: the ledger's head did not leave the host this time");
        } else if dropped.is_power_of_two() {
            warn!(sink = self.name, dropped, error = %why, "alert sink is not keeping up; alerts dropped");
        }
        why
    }

    /// Stops accepting alerts; the worker delivers what is queued and ends.
    pub(crate) fn stop_accepting(&mut self) {
        drop(self.tx.take());
    }

    /// Stops accepting alerts, delivers those queued (retries included)
    /// until `deadline`, then abandons the rest, counting them in
    /// `dropped_at_shutdown`, and returns the final counts. Returns by
    /// `deadline` even when the sink is stuck in a write that never
    /// returns (its thread is then left behind, detached: it holds up
    /// neither this call nor the runtime's shutdown, and counts nothing
    /// more).
    ///
    /// # Cancel safety
    /// Dropping the future before it completes abandons the queue at once,
    /// as if the deadline had passed.
    pub async fn close(mut self, deadline: Instant) -> SinkStatsSnapshot {
        self.stop_accepting();
        let abandon = AbandonGuard {
            abort: self.abort.clone(),
            stats: [
                Arc::clone(&self.stats),
                Arc::clone(&self.checkpoints),
                Arc::clone(&self.outbox),
            ],
        };
        let finished = tokio::time::timeout_at(deadline, &mut self.done).await;
        if finished.is_err() {
            warn!(
                sink = self.name,
                "alert sink still busy at its close deadline"
            );
        }
        // Counts what is left (nothing when the worker finished), and tells
        // the worker to stop.
        drop(abandon);
        let snapshot = self.stats.snapshot();
        let checkpoints = self.checkpoints.snapshot();
        for (kind, stats) in [("alerts", &snapshot), ("checkpoints", &checkpoints)] {
            if stats.dropped_at_shutdown > 0 {
                warn!(
                    sink = self.name,
                    kind,
                    dropped_at_shutdown = stats.dropped_at_shutdown,
                    "abandoned at shutdown"
                );
            }
        }
        info!(sink = self.name, stats = ?snapshot, checkpoints = ?checkpoints, "alert sink closed");
        snapshot
    }
}

/// Abandons the worker when dropped: at the close deadline, or when the
/// close future is dropped.
struct AbandonGuard {
    abort: CancellationToken,
    /// Alerts', checkpoints', outbox drains'.
    stats: [Arc<SinkStats>; 3],
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        self.abort.cancel();
        for s in &self.stats {
            s.abandon();
        }
    }
}

/// What woke the worker: an item from its queue (`None`: closed and
/// empty), or the store's outbox changing (`false`: its writer is gone).
enum Woken {
    Item(Option<Item>),
    Changed(bool),
}

/// The worker's side: the sink, its settings, the shared counters.
struct Drive<S> {
    sink: S,
    config: WorkerConfig,
    stats: Arc<SinkStats>,
    checkpoints: Arc<SinkStats>,
    outbox: Arc<SinkStats>,
}

impl<S: AlertSink> Drive<S> {
    /// Delivers alerts in order until the queue is closed and empty, or
    /// `abort` (what is left is then counted by whoever aborted).
    async fn run(mut self, mut rx: mpsc::Receiver<Item>, abort: CancellationToken) {
        let mut changes = self.sink.outbox_changes();
        loop {
            let next = async {
                match changes.as_mut() {
                    // The queue first: a close is seen at once.
                    Some(c) => tokio::select! {
                        biased;
                        item = rx.recv() => Woken::Item(item),
                        changed = c.changed() => Woken::Changed(changed.is_ok()),
                    },
                    None => Woken::Item(rx.recv().await),
                }
            };
            let item = match unless_cancelled(&abort, next).await {
                None | Some(Woken::Item(None)) => break,
                Some(Woken::Item(Some(item))) => item,
                Some(Woken::Changed(true)) => {
                    self.outbox.queued();
                    Item::Outbox
                }
                // The store's writer is gone: no more commits to wait for.
                Some(Woken::Changed(false)) => {
                    changes = None;
                    continue;
                }
            };
            let Some(outcome) = unless_cancelled(&abort, self.deliver(&item)).await else {
                break;
            };
            let (outcome, cause) = match outcome {
                Ok(()) => (Outcome::Delivered, None),
                Err((outcome, cause)) => (outcome, Some(cause)),
            };
            let stats = match &item {
                Item::Alert(_) => &self.stats,
                Item::Checkpoint(_) => &self.checkpoints,
                Item::Outbox => &self.outbox,
            };
            let was_failing = stats.snapshot().failing;
            let n = stats.finish(outcome);
            let Some(cause) = cause else { continue };
            match &item {
                // Once when a sink starts failing, then sparingly.
                Item::Alert(alert) if !was_failing || n.is_power_of_two() => {
                    warn!(sink = self.sink.name(), outcome = ?outcome, times = n, rule = %alert.rule_id, error = %cause, "alert not delivered");
                }
                Item::Checkpoint(cp) => {
                    warn!(sink = self.sink.name(), outcome = ?outcome, times = n, seq = cp.seq, error = %cause, "checkpoint not delivered");
                }
                Item::Outbox if !was_failing || n.is_power_of_two() => {
                    warn!(sink = self.sink.name(), outcome = ?outcome, times = n, error = %cause, "outbox not drained; its items wait");
                }
                Item::Alert(_) | Item::Outbox => {}
            }
        }
    }

    /// Delivers one alert or checkpoint, retrying transient failures as
    /// configured.
    async fn deliver(&mut self, item: &Item) -> Result<(), (Outcome, String)> {
        let mut backoff = self.config.backoff;
        backoff.reset();
        let mut attempt = 1;
        loop {
            let delivery = match item {
                Item::Alert(alert) => self.sink.deliver(alert).await,
                Item::Checkpoint(cp) => self.sink.deliver_checkpoint(cp).await,
                Item::Outbox => self.sink.deliver_outbox().await,
            };
            let (cause, after) = match delivery {
                Delivery::Delivered => return Ok(()),
                Delivery::Failed(cause) => return Err((Outcome::Failed, cause)),
                Delivery::Rejected(cause) => return Err((Outcome::Rejected, cause)),
                Delivery::Retry { cause, after } => (cause, after),
            };
            if attempt >= self.config.max_attempts {
                return Err((
                    Outcome::Failed,
                    format!("{cause} (after {attempt} attempts)"),
                ));
            }
            // The step advances either way, so a receiver's `after` does not
            // reset the backoff.
            let step = backoff.next();
            let wait = after.map_or(step, |after| after.min(backoff.max()));
            debug!(sink = self.sink.name(), error = %cause, attempt, wait_ms = wait.as_millis(), "delivery failed; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
            match item {
                Item::Alert(_) => self.stats.retried(),
                Item::Checkpoint(_) => self.checkpoints.retried(),
                Item::Outbox => self.outbox.retried(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::sink::test_alert as alert;

    /// Answers each attempt from a script, then `Delivered`.
    struct Scripted {
        script: Vec<Delivery>,
        attempts: Arc<AtomicU32>,
    }

    impl AlertSink for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }

        async fn deliver(&mut self, _: &Alert) -> Delivery {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            if self.script.is_empty() {
                Delivery::Delivered
            } else {
                self.script.remove(0)
            }
        }

        async fn deliver_checkpoint(&mut self, _: &Checkpoint) -> Delivery {
            self.deliver(&alert(0)).await
        }
    }

    fn retry() -> Delivery {
        Delivery::Retry {
            cause: "busy".into(),
            after: None,
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn quick(max_attempts: u32) -> WorkerConfig {
        WorkerConfig {
            max_attempts,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(4)),
            ..WorkerConfig::default()
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_with_the_backoff_until_attempts_run_out() {
        let attempts = Arc::new(AtomicU32::new(0));
        let sink = Scripted {
            script: vec![retry(), retry(), retry(), Delivery::Rejected("no".into())],
            attempts: attempts.clone(),
        };
        let w = SinkWorker::start(sink, quick(3)).unwrap();
        w.try_send(alert(1)).unwrap(); // retry, retry, retry: failed after 3
        w.try_send(alert(2)).unwrap(); // rejected at once
        w.try_send(alert(3)).unwrap(); // delivered
        let s = w.close(far()).await;
        assert_eq!(
            (s.queued, s.failed, s.rejected, s.delivered, s.retries),
            (3, 1, 1, 1, 2)
        );
        assert_eq!(attempts.load(Ordering::Relaxed), 5);
        assert_eq!(s.in_flight(), 0);
        assert!(!s.failing, "the last one was delivered");
    }

    #[tokio::test]
    async fn checkpoints_share_the_queue_and_retries_and_are_counted_apart() {
        let attempts = Arc::new(AtomicU32::new(0));
        let sink = Scripted {
            // The alert is delivered; the checkpoint needs a second attempt.
            script: vec![Delivery::Delivered, retry()],
            attempts: attempts.clone(),
        };
        let w = SinkWorker::start(sink, quick(3)).unwrap();
        let checkpoints = w.checkpoint_stats();
        w.try_send(alert(1)).unwrap();
        w.send_checkpoint(crate::sink::test_checkpoint(7))
            .await
            .unwrap();
        let s = w.close(far()).await;
        let c = checkpoints.snapshot();
        assert_eq!((s.queued, s.delivered, s.retries), (1, 1, 0));
        assert_eq!((c.queued, c.delivered, c.retries), (1, 1, 1));
        assert_eq!(attempts.load(Ordering::Relaxed), 3);
        // A stuck sink: the checkpoint behind it is dropped (queue full)
        // or abandoned at shutdown, and counted as a checkpoint.
        let w = stuck_worker(1);
        let checkpoints = w.checkpoint_stats();
        let _ = w.try_send(alert(1));
        let _ = w.try_send(alert(2));
        let _ = w.send_checkpoint(crate::sink::test_checkpoint(8)).await;
        let s = w.close(Instant::now() + Duration::from_millis(50)).await;
        let c = checkpoints.snapshot();
        assert_eq!(c.dropped + c.dropped_at_shutdown, 1, "{c:?}");
        assert_eq!(c.delivered, 0);
        assert_eq!(s.queued + s.dropped, 2, "alerts counted apart: {s:?}");
    }

    #[tokio::test]
    async fn a_receivers_retry_after_is_honoured_up_to_the_cap() {
        let sink = Scripted {
            script: vec![Delivery::Retry {
                cause: "429".into(),
                after: Some(Duration::from_secs(3600)),
            }],
            attempts: Arc::default(),
        };
        let w = SinkWorker::start(sink, quick(2)).unwrap();
        w.try_send(alert(1)).unwrap();
        let started = Instant::now();
        let s = w.close(far()).await;
        assert_eq!((s.delivered, s.retries), (1, 1));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "capped at 4 ms"
        );
    }

    /// Never returns from its first attempt.
    struct Stuck;

    impl AlertSink for Stuck {
        fn name(&self) -> &'static str {
            "stuck"
        }

        async fn deliver(&mut self, _: &Alert) -> Delivery {
            // Blocks its thread, as a write to a full pipe does.
            loop {
                std::thread::park();
            }
        }

        async fn deliver_checkpoint(&mut self, _: &Checkpoint) -> Delivery {
            self.deliver(&alert(0)).await
        }
    }

    /// A worker of `capacity` in front of a sink that never returns.
    fn stuck_worker(capacity: usize) -> SinkWorker {
        SinkWorker::start(
            Stuck,
            WorkerConfig {
                capacity,
                ..WorkerConfig::default()
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn close_returns_by_its_deadline_from_a_blocked_sink_and_counts_the_rest() {
        let w = stuck_worker(2);
        let stats = w.stats();
        for pid in 1..=6 {
            let _ = w.try_send(alert(pid));
        }
        // One held by the stuck sink (or still queued), two queued, the rest
        // dropped.
        let dropped = stats.snapshot().dropped;
        assert!((3..=4).contains(&dropped), "{dropped}");
        let deadline = Instant::now() + Duration::from_millis(50);
        let s = tokio::time::timeout(Duration::from_secs(5), w.close(deadline))
            .await
            .unwrap();
        assert!(Instant::now() >= deadline);
        assert_eq!(s.queued + s.dropped, 6, "every alert counted once");
        assert_eq!(s.dropped_at_shutdown, s.queued);
        assert_eq!(s.in_flight(), 0);
        assert!(s.failing);
        assert_eq!(stats.snapshot(), s, "the shared counters agree");
    }

    #[tokio::test]
    async fn block_waits_for_room_and_loses_nothing() {
        let attempts = Arc::new(AtomicU32::new(0));
        let sink = Scripted {
            script: Vec::new(),
            attempts: attempts.clone(),
        };
        let w = SinkWorker::start(
            sink,
            WorkerConfig {
                capacity: 1,
                when_full: WhenFull::Block,
                ..WorkerConfig::default()
            },
        )
        .unwrap();
        for pid in 0..200 {
            w.send(alert(pid)).await.unwrap();
        }
        let s = w.close(far()).await;
        assert_eq!((s.queued, s.delivered, s.dropped), (200, 200, 0));
        assert_eq!(attempts.load(Ordering::Relaxed), 200);
    }

    #[tokio::test]
    async fn drop_newest_never_waits() {
        let w = stuck_worker(1);
        let started = Instant::now();
        for pid in 0..100 {
            let _ = w.send(alert(pid)).await;
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(w.stats().snapshot().dropped >= 98);
        w.close(Instant::now()).await;
    }

    #[test]
    fn public_types_are_send_and_sync() {
        collector_core::assert_send_sync!(SinkWorker, SinkStats, SinkSendError);
    }
}
