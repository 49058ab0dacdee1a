//! Counters and snapshots: what every stage received, delivered and dropped.
//!
//! # Accounting invariant
//!
//! For each source (intake stage):
//! `events_received = events_accepted + events_rejected_invalid + events_dropped_shutdown`.
//!
//! For each subscriber (delivery stage):
//! `events_offered = events_delivered + events_dropped_full +
//! events_dropped_closed + events_dropped_shutdown + events_queued`.
//!
//! Nothing is lost without a counter saying why. The counters are
//! [`Counter`]s, registered by name in the collector's
//! [`crate::metrics::Registry`] when a source or subscriber is added.

use std::time::Duration;

use serde::Serialize;

use crate::health::SourceHealth;
use crate::metrics::{Counter, Gauge, Registry};
use crate::source::SourceCaps;

/// Label of the runtime's intake stage (per source).
pub(crate) const STAGE_INTAKE: &str = "intake";

#[derive(Debug, Default)]
pub(crate) struct SourceCounters {
    pub(crate) received: Counter,
    pub(crate) accepted: Counter,
    pub(crate) rejected_invalid: Counter,
    pub(crate) dropped_shutdown: Counter,
    pub(crate) errors: Counter,
    pub(crate) health_checks_failed: Counter,
    pub(crate) backpressure_episodes: Counter,
    /// 1 while the intake queue is above the backpressure threshold.
    pub(crate) backpressured: Gauge,
}

impl SourceCounters {
    /// Counters for the source `name`, registered in `registry`.
    pub(crate) fn registered(registry: &Registry, name: &str) -> Self {
        let c = Self::default();
        let stage = ("stage", STAGE_INTAKE);
        let source = ("source", name);
        registry.register_counters(
            &[stage, source],
            &[
                (
                    "daemoneye_events_received_total",
                    "Events taken from a stage's input.",
                    &c.received,
                ),
                (
                    "daemoneye_events_accepted_total",
                    "Events that passed validation and were published.",
                    &c.accepted,
                ),
            ],
        );
        registry.register_events_dropped(
            &[stage, source],
            [
                ("invalid", &c.rejected_invalid),
                ("shutdown", &c.dropped_shutdown),
            ],
        );
        registry.register_counters(
            &[source],
            &[
                (
                    "daemoneye_source_errors_total",
                    "A source's start or stop failing, or a panic.",
                    &c.errors,
                ),
                (
                    "daemoneye_health_checks_failed_total",
                    "Failed or timed-out health checks.",
                    &c.health_checks_failed,
                ),
                (
                    "daemoneye_backpressure_episodes_total",
                    "Times an intake queue crossed the backpressure threshold.",
                    &c.backpressure_episodes,
                ),
            ],
        );
        registry.register_gauge(
            "daemoneye_source_backpressured",
            "1 while a source's intake queue is above the backpressure threshold.",
            &[source],
            &c.backpressured,
        );
        c
    }
}

#[derive(Debug, Default)]
pub(crate) struct SubscriberCounters {
    pub(crate) id: u64,
    pub(crate) offered: Counter,
    pub(crate) delivered: Counter,
    pub(crate) dropped_full: Counter,
    pub(crate) dropped_closed: Counter,
    pub(crate) dropped_shutdown: Counter,
}

impl SubscriberCounters {
    pub(crate) fn new(id: u64) -> Self {
        Self {
            id,
            ..Self::default()
        }
    }

    /// Registers these counters as subscriber `id` of `stage`.
    pub(crate) fn register(&self, registry: &Registry, stage: &'static str) {
        let id = self.id.to_string();
        let labels = [("stage", stage), ("subscriber", id.as_str())];
        registry.register_counters(
            &labels,
            &[
                (
                    "daemoneye_events_offered_total",
                    "Events offered to a subscriber's queue.",
                    &self.offered,
                ),
                (
                    "daemoneye_events_delivered_total",
                    "Events a subscriber took from its queue.",
                    &self.delivered,
                ),
            ],
        );
        registry.register_events_dropped(
            &labels,
            [
                ("full", &self.dropped_full),
                ("closed", &self.dropped_closed),
                ("shutdown", &self.dropped_shutdown),
            ],
        );
    }

    pub(crate) fn snapshot(&self) -> SubscriberStats {
        // Read `offered` last: concurrent delivery moves events from queued to
        // delivered, never out of offered.
        let delivered = self.delivered.get();
        let dropped_full = self.dropped_full.get();
        let dropped_closed = self.dropped_closed.get();
        let dropped_shutdown = self.dropped_shutdown.get();
        let offered = self.offered.get();
        SubscriberStats {
            id: self.id,
            events_offered: offered,
            events_delivered: delivered,
            events_dropped_full: dropped_full,
            events_dropped_closed: dropped_closed,
            events_dropped_shutdown: dropped_shutdown,
            events_queued: offered
                .saturating_sub(delivered + dropped_full + dropped_closed + dropped_shutdown),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct RuntimeCounters {
    pub(crate) unrouted: Counter,
    pub(crate) sources_failed: Counter,
    pub(crate) sources_aborted: Counter,
    pub(crate) stop_errors: Counter,
}

impl RuntimeCounters {
    /// The runtime's counters, registered in `registry`.
    pub(crate) fn registered(registry: &Registry) -> Self {
        let c = Self::default();
        registry.register_counter(
            "daemoneye_events_unrouted_total",
            "Events accepted while nobody was subscribed.",
            &[("stage", "runtime")],
            &c.unrouted,
        );
        registry.register_counter(
            "daemoneye_sources_failed_total",
            "Sources whose start returned an error or panicked.",
            &[],
            &c.sources_failed,
        );
        registry.register_counter(
            "daemoneye_sources_aborted_total",
            "Sources still running at the shutdown deadline, aborted.",
            &[],
            &c.sources_aborted,
        );
        registry.register_counter(
            "daemoneye_source_stops_failed_total",
            "Source stop() calls that failed or overran the deadline.",
            &[],
            &c.stop_errors,
        );
        c
    }
}

/// One source's counters and health.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct SourceStats {
    /// The source's name.
    pub name: &'static str,
    /// What it declared.
    pub capabilities: SourceCaps,
    /// Its current health.
    pub health: SourceHealth,
    /// Events taken from its intake queue.
    pub events_received: u64,
    /// Events that passed validation and were published.
    pub events_accepted: u64,
    /// Events refused by [`CollectionEvent::validate`](crate::CollectionEvent::validate).
    pub events_rejected_invalid: u64,
    /// Events still queued when the shutdown deadline passed.
    pub events_dropped_shutdown: u64,
    /// Errors: `start` or `stop` failing, or a panic.
    pub errors_total: u64,
    /// Failed or timed-out health checks.
    pub health_checks_failed_total: u64,
    /// Times the intake queue crossed the backpressure threshold.
    pub backpressure_total: u64,
    /// Whether the intake queue is above the threshold now.
    pub backpressured: bool,
}

/// One subscriber's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// The subscription's id.
    pub id: u64,
    /// Events offered to this subscriber's queue.
    pub events_offered: u64,
    /// Events the subscriber took.
    pub events_delivered: u64,
    /// Events dropped because its queue was full (`WhenFull::DropNewest`).
    pub events_dropped_full: u64,
    /// Events dropped because it went away with events still queued.
    pub events_dropped_closed: u64,
    /// Events that could not be queued before the shutdown deadline.
    pub events_dropped_shutdown: u64,
    /// Events waiting in its queue.
    pub events_queued: u64,
}

impl SubscriberStats {
    /// Sum of drops over every reason.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped_full + self.events_dropped_closed + self.events_dropped_shutdown
    }
}

/// What the collector process itself costs, read from `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct ProcessResources {
    /// User plus system CPU time of the whole process.
    pub cpu_time: Duration,
    /// Resident set size now, in bytes.
    pub rss_bytes: u64,
    /// Peak resident set size, in bytes.
    pub peak_rss_bytes: u64,
    /// Number of threads.
    pub threads: u64,
}

impl ProcessResources {
    /// Reads `/proc/self/stat` and `/proc/self/status`.
    ///
    /// # Errors
    /// When either file cannot be read or parsed (not Linux, `/proc` missing).
    pub fn current() -> std::io::Result<Self> {
        let stat = std::fs::read("/proc/self/stat")?;
        let status = std::fs::read("/proc/self/status")?;
        let ticks = crate::procfs::KernelUnits::current().ticks_per_second;
        parse_self(&stat, &status, ticks).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "unexpected /proc/self format",
            )
        })
    }
}

/// Parses utime+stime from `/proc/self/stat` and VmRSS/VmHWM/Threads from
/// `/proc/self/status` (with [`crate::procfs`]).
pub(crate) fn parse_self(
    stat: &[u8],
    status: &[u8],
    ticks_per_sec: u64,
) -> Option<ProcessResources> {
    let stat = crate::procfs::parse_pid_stat(stat).ok()?;
    let mut out = ProcessResources {
        cpu_time: crate::procfs::ticks_to_duration(
            stat.utime.saturating_add(stat.stime),
            ticks_per_sec,
        ),
        ..ProcessResources::default()
    };
    for (key, value) in crate::procfs::status_lines(status) {
        let number = || crate::procfs::status_number(value);
        match key {
            b"VmRSS" => out.rss_bytes = number()?.saturating_mul(1024),
            b"VmHWM" => out.peak_rss_bytes = number()?.saturating_mul(1024),
            b"Threads" => out.threads = number()?,
            _ => {}
        }
    }
    Some(out)
}

/// A snapshot of the whole runtime.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CollectorStats {
    /// Time since the runtime started (zero before `run`).
    pub uptime: Duration,
    /// Per source.
    pub sources: Vec<SourceStats>,
    /// Per subscriber, including those that went away.
    pub subscribers: Vec<SubscriberStats>,
    /// Events accepted while nobody was subscribed.
    pub events_unrouted_total: u64,
    /// Sources whose `start` returned an error or panicked.
    pub sources_failed_total: u64,
    /// Sources still running at the shutdown deadline, aborted.
    pub sources_aborted_total: u64,
    /// `stop()` calls that failed or overran the deadline.
    pub stop_errors_total: u64,
    /// The process's own CPU time and memory (`None` when `/proc` is unreadable).
    pub process: Option<ProcessResources>,
}

impl CollectorStats {
    /// Events received from every source.
    pub fn events_received_total(&self) -> u64 {
        self.sources.iter().map(|s| s.events_received).sum()
    }

    /// Events accepted from every source.
    pub fn events_accepted_total(&self) -> u64 {
        self.sources.iter().map(|s| s.events_accepted).sum()
    }

    /// Events dropped anywhere (intake and every subscriber), by any reason.
    pub fn events_dropped_total(&self) -> u64 {
        self.sources
            .iter()
            .map(|s| s.events_rejected_invalid + s.events_dropped_shutdown)
            .sum::<u64>()
            + self
                .subscribers
                .iter()
                .map(SubscriberStats::events_dropped)
                .sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const STAT: &[u8] = b"4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 30 0 0 20 0 7 0 12345 123456789 2000 18446744073709551615";
    const STATUS: &[u8] =
        b"Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    5120 kB\nVmRSS:\t    4096 kB\nThreads:\t7\n";

    #[test]
    fn parses_cpu_time_rss_and_threads() {
        let r = parse_self(STAT, STATUS, 100).unwrap();
        assert_eq!(r.cpu_time, Duration::from_millis(2800));
        assert_eq!(r.rss_bytes, 4096 * 1024);
        assert_eq!(r.peak_rss_bytes, 5120 * 1024);
        assert_eq!(r.threads, 7);
    }

    #[test]
    fn truncated_or_garbled_input_is_none_not_a_panic() {
        for cut in 0..STAT.len() {
            let _ = parse_self(&STAT[..cut], STATUS, 100);
        }
        assert!(parse_self(b"1 (x) S 1 2", STATUS, 100).is_none());
        assert!(parse_self(STAT, b"VmRSS:\tlots kB\n", 100).is_none());
    }

    #[test]
    fn reads_this_process() {
        let r = ProcessResources::current().unwrap();
        assert!(r.rss_bytes > 0);
        assert!(r.peak_rss_bytes >= r.rss_bytes);
        assert!(r.threads >= 1);
    }
}
