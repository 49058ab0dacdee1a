//! The counters every sink keeps, alike.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// What became of the alerts offered to one sink, counted as it goes and
/// readable at any time ([`snapshot`](Self::snapshot)); shared by the
/// sink's [`SinkWorker`](super::SinkWorker), its sender and health.
#[derive(Debug, Default)]
pub struct SinkStats {
    queued: AtomicU64,
    delivered: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    dropped_at_shutdown: AtomicU64,
    failing: AtomicBool,
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

fn add(c: &AtomicU64, n: u64) -> u64 {
    c.fetch_add(n, Ordering::Relaxed) + n
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl SinkStats {
    /// The counts now.
    pub fn snapshot(&self) -> SinkStatsSnapshot {
        SinkStatsSnapshot {
            delivered: get(&self.delivered),
            retries: get(&self.retries),
            failed: get(&self.failed),
            rejected: get(&self.rejected),
            dropped: get(&self.dropped),
            dropped_at_shutdown: get(&self.dropped_at_shutdown),
            failing: self.failing.load(Ordering::Relaxed),
            // Last, so that an alert counted done is also counted queued.
            queued: get(&self.queued),
        }
    }

    /// One alert accepted into the queue (before it is sent, so a finished
    /// alert is never seen unqueued).
    pub(crate) fn queued(&self) {
        add(&self.queued, 1);
    }

    /// One alert not queued; returns the drops so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.failing.store(true, Ordering::Relaxed);
        add(&self.dropped, 1)
    }

    /// One more attempt at an alert, unless the sink was abandoned.
    pub(crate) fn retried(&self) {
        let abandoned = self
            .abandoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*abandoned {
            add(&self.retries, 1);
        }
    }

    /// Records one queued alert's outcome, unless the sink was abandoned
    /// (its alert is already counted dropped at shutdown). Returns how many
    /// alerts ended that way so far (0 when not counted).
    pub(crate) fn finish(&self, outcome: Outcome) -> u64 {
        let abandoned = self
            .abandoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *abandoned {
            return 0;
        }
        self.failing
            .store(outcome != Outcome::Delivered, Ordering::Relaxed);
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
        let mut abandoned = self
            .abandoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *abandoned {
            return 0;
        }
        *abandoned = true;
        let left = self.snapshot().in_flight();
        if left > 0 {
            self.failing.store(true, Ordering::Relaxed);
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
    }
}
