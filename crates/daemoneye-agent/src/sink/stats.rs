//! The counters every sink keeps, alike.

use std::sync::Mutex;

use collector_core::lock;
use collector_core::metrics::{Counter, Gauge, Registry};

/// What became of the alerts offered to one sink, counted as it goes and
/// readable at any time ([`snapshot`](Self::snapshot)); shared by the
/// sink's [`SinkWorker`](super::SinkWorker), its sender, health and
/// (once [`register`](Self::register)ed) `/metrics`.
#[derive(Debug, Default)]
pub struct SinkStats {
    queued: Counter,
    delivered: Counter,
    retries: Counter,
    failed: Counter,
    rejected: Counter,
    dropped: Counter,
    dropped_at_shutdown: Counter,
    /// 1 while the last alert done with was lost.
    failing: Gauge,
    /// Set once the closer has counted what was left as dropped at
    /// shutdown: a worker that comes back later (from a write that blocked
    /// past the deadline) counts nothing more. The lock makes "count one
    /// outcome" and "count the rest" exclusive, so nothing is counted twice.
    abandoned: Mutex<bool>,
}

/// The final outcome of one queued alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    Failed,
    Rejected,
}

/// The counts of a [`SinkStats`] at one moment.
///
/// Every alert offered is counted once in `queued` or `dropped`; every
/// queued alert, once in `delivered`, `failed`, `rejected` or
/// `dropped_at_shutdown` when it is done with
/// ([`in_flight`](Self::in_flight) until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SinkStatsSnapshot {
    /// Alerts accepted into the queue.
    pub queued: u64,
    /// Alerts the receiver has.
    pub delivered: u64,
    /// Attempts after the first, over all alerts.
    pub retries: u64,
    /// Alerts given up on: a failure not worth retrying, or the last
    /// attempt failed.
    pub failed: u64,
    /// Alerts the receiver refused; not retried.
    pub rejected: u64,
    /// Alerts not queued: the queue was full (or the worker gone).
    pub dropped: u64,
    /// Queued alerts still undelivered when the sink was closed at its
    /// deadline.
    pub dropped_at_shutdown: u64,
    /// Whether the last alert done with was lost (failed, rejected or
    /// dropped); a delivery clears it.
    pub failing: bool,
}

impl SinkStatsSnapshot {
    /// Queued alerts not yet done with. Counters are read one by one, so
    /// while the sink runs this can be off by the alerts that changed state
    /// meanwhile; after close it is exact.
    pub fn in_flight(&self) -> u64 {
        self.queued
            .saturating_sub(self.delivered + self.failed + self.rejected + self.dropped_at_shutdown)
    }

    /// Alerts lost so far: failed, rejected, dropped, dropped at shutdown.
    pub fn lost(&self) -> u64 {
        self.failed + self.rejected + self.dropped + self.dropped_at_shutdown
    }
}

/// Adds `n` to `c`; returns the count after it (for the logs).
fn add(c: &Counter, n: u64) -> u64 {
    c.add(n);
    c.get()
}

impl SinkStats {
    /// Registers these counters in `registry` as the sink `name`
    /// (`daemoneye_alerts_delivered_total{sink="webhook"}`, ...).
    pub fn register(&self, registry: &Registry, name: &str) {
        let sink = [("sink", name)];
        registry.register_counters(
            &sink,
            &[
                (
                    "daemoneye_alerts_queued_total",
                    "Alerts accepted into a sink's queue.",
                    &self.queued,
                ),
                (
                    "daemoneye_alerts_delivered_total",
                    "Alerts a sink delivered.",
                    &self.delivered,
                ),
                (
                    "daemoneye_alert_deliveries_retried_total",
                    "Delivery attempts after an alert's first.",
                    &self.retries,
                ),
                (
                    "daemoneye_alerts_failed_total",
                    "Alerts a sink gave up on after failing.",
                    &self.failed,
                ),
                (
                    "daemoneye_alerts_rejected_total",
                    "Alerts the receiver refused (not retried).",
                    &self.rejected,
                ),
            ],
        );
        let dropped = [
            ("full", &self.dropped),
            ("shutdown", &self.dropped_at_shutdown),
        ];
        registry.register_by_reason(
            "daemoneye_alerts_dropped_total",
            "Alerts a sink dropped: its queue was full, or still held at shutdown.",
            &sink,
            dropped,
        );
        registry.register_gauge(
            "daemoneye_sink_failing",
            "1 while a sink's last alert was lost (failed, rejected or dropped).",
            &sink,
            &self.failing,
        );
    }

    /// Registers these counters in `registry` as the checkpoint counters
    /// of the sink `name` (`daemoneye_checkpoints_delivered_total{sink="file"}`,
    /// ...): what became of the ledger's heads sent off the host.
    pub fn register_checkpoints(&self, registry: &Registry, name: &str) {
        let sink = [("sink", name)];
        registry.register_counters(
            &sink,
            &[
                (
                    "daemoneye_checkpoints_queued_total",
                    "Ledger checkpoints accepted into a sink's queue.",
                    &self.queued,
                ),
                (
                    "daemoneye_checkpoints_delivered_total",
                    "Ledger checkpoints a sink delivered.",
                    &self.delivered,
                ),
                (
                    "daemoneye_checkpoint_deliveries_retried_total",
                    "Delivery attempts after a checkpoint's first.",
                    &self.retries,
                ),
                (
                    "daemoneye_checkpoints_failed_total",
                    "Ledger checkpoints a sink gave up on after failing.",
                    &self.failed,
                ),
                (
                    "daemoneye_checkpoints_rejected_total",
                    "Ledger checkpoints the receiver refused (not retried).",
                    &self.rejected,
                ),
            ],
        );
        registry.register_by_reason(
            "daemoneye_checkpoints_dropped_total",
            "Ledger checkpoints a sink dropped: its queue was full, or still held at shutdown.",
            &sink,
            [
                ("full", &self.dropped),
                ("shutdown", &self.dropped_at_shutdown),
            ],
        );
    }

    /// The counts now.
    pub fn snapshot(&self) -> SinkStatsSnapshot {
        SinkStatsSnapshot {
            delivered: self.delivered.get(),
            retries: self.retries.get(),
            failed: self.failed.get(),
            rejected: self.rejected.get(),
            dropped: self.dropped.get(),
            dropped_at_shutdown: self.dropped_at_shutdown.get(),
            failing: self.failing.get_bool(),
            // Last, so that an alert counted done is also counted queued.
            queued: self.queued.get(),
        }
    }

    /// One alert accepted into the queue (before it is sent, so a finished
    /// alert is never seen unqueued).
    pub(crate) fn queued(&self) {
        add(&self.queued, 1);
    }

    /// One alert not queued; returns the drops so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.failing.set_bool(true);
        add(&self.dropped, 1)
    }

    /// One more attempt at an alert, unless the sink was abandoned.
    pub(crate) fn retried(&self) {
        let abandoned = lock(&self.abandoned);
        if !*abandoned {
            add(&self.retries, 1);
        }
    }

    /// Records one queued alert's outcome, unless the sink was abandoned
    /// (its alert is already counted dropped at shutdown). Returns how many
    /// alerts ended that way so far (0 when not counted).
    pub(crate) fn finish(&self, outcome: Outcome) -> u64 {
        let abandoned = lock(&self.abandoned);
        if *abandoned {
            return 0;
        }
        self.failing.set_bool(outcome != Outcome::Delivered);
        add(
            match outcome {
                Outcome::Delivered => &self.delivered,
                Outcome::Failed => &self.failed,
                Outcome::Rejected => &self.rejected,
            },
            1,
        )
    }

    /// Counts every alert still in flight as dropped at shutdown, and
    /// anything the worker reports afterwards as nothing. Returns how many
    /// were left.
    pub(crate) fn abandon(&self) -> u64 {
        let mut abandoned = lock(&self.abandoned);
        if *abandoned {
            return 0;
        }
        *abandoned = true;
        let left = self.snapshot().in_flight();
        if left > 0 {
            self.failing.set_bool(true);
            add(&self.dropped_at_shutdown, left);
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alert_ends_in_one_count_and_nothing_after_abandon() {
        let s = SinkStats::default();
        let registry = Registry::new();
        s.register(&registry, "webhook");
        for _ in 0..4 {
            s.queued();
        }
        s.dropped();
        assert_eq!(s.finish(Outcome::Delivered), 1);
        assert!(!s.snapshot().failing);
        s.retried();
        assert_eq!(s.finish(Outcome::Rejected), 1);
        assert!(s.snapshot().failing);
        assert_eq!(s.snapshot().in_flight(), 2);
        assert_eq!(s.abandon(), 2);
        // A worker coming back late: counted nowhere.
        assert_eq!(s.finish(Outcome::Delivered), 0);
        s.retried();
        assert_eq!(s.abandon(), 0);
        let n = s.snapshot();
        assert_eq!(
            (
                n.queued,
                n.delivered,
                n.rejected,
                n.dropped,
                n.dropped_at_shutdown,
                n.retries
            ),
            (4, 1, 1, 1, 2, 1)
        );
        assert_eq!((n.in_flight(), n.lost()), (0, 4));

        // `/metrics` reads the same counters.
        let metric = |name: &str, labels: &[(&str, &str)]| {
            let mut all = vec![("sink", "webhook")];
            all.extend_from_slice(labels);
            registry.value(name, &all)
        };
        assert_eq!(metric("daemoneye_alerts_queued_total", &[]), Some(4));
        assert_eq!(metric("daemoneye_alerts_delivered_total", &[]), Some(1));
        assert_eq!(metric("daemoneye_alerts_rejected_total", &[]), Some(1));
        assert_eq!(metric("daemoneye_alerts_failed_total", &[]), Some(0));
        assert_eq!(
            metric("daemoneye_alert_deliveries_retried_total", &[]),
            Some(1)
        );
        assert_eq!(
            metric("daemoneye_alerts_dropped_total", &[("reason", "full")]),
            Some(1)
        );
        assert_eq!(
            metric("daemoneye_alerts_dropped_total", &[("reason", "shutdown")]),
            Some(2)
        );
        assert_eq!(metric("daemoneye_sink_failing", &[]), Some(1));
    }
}
