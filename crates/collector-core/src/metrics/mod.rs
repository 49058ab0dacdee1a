//! One counter type, one registry, and the Prometheus text exposition.
//!
//! Every counter in the workspace is a [`Counter`]: a cheap, cloneable
//! handle on one `AtomicU64`. Incrementing it is one relaxed atomic add, so
//! it sits on the hot path (the runtime counts millions of events a second).
//! The component that counts keeps its handles in a plain struct; its stats
//! snapshot reads them with [`Counter::get`], and a [`Registry`] holds clones
//! of the same handles under Prometheus names and labels, so stats, health
//! and `/metrics` always agree.
//!
//! Names follow Prometheus' conventions: `daemoneye_` + noun + past verb +
//! `_total` for counters (`daemoneye_events_dropped_total{stage="subscriber",
//! reason="full"}`), no `_total` for gauges. Registration happens when a
//! component is built (or a subscriber arrives), never per event.
//!
//! A [`Collector`](crate::Collector) owns a registry
//! ([`CollectorHandle::metrics`](crate::CollectorHandle::metrics)) holding
//! its runtime, sources, subscribers and bus; other components register
//! themselves into the one they are given. Counters from outside
//! collector-core are handed over the same way:
//!
//! ```
//! use collector_core::metrics::{Counter, Registry};
//!
//! // Your component keeps its counters in a plain struct...
//! #[derive(Default)]
//! struct AlertCounters {
//!     delivered: Counter,
//!     failed: Counter,
//! }
//! let counters = AlertCounters::default();
//!
//! // ...and hands clones to a registry once, when it is built.
//! let registry = Registry::new();
//! registry.register_counter(
//!     "daemoneye_alerts_delivered_total",
//!     "Alerts a sink delivered.",
//!     &[("sink", "stdout")],
//!     &counters.delivered,
//! );
//! // Or lets the registry make the counter:
//! let failed = registry.counter(
//!     "daemoneye_alerts_failed_total",
//!     "Alerts a sink could not deliver.",
//!     &[("sink", "stdout")],
//! );
//!
//! counters.delivered.inc();
//! failed.add(2);
//! let text = registry.encode();
//! assert!(text.contains("daemoneye_alerts_delivered_total{sink=\"stdout\"} 1\n"));
//! assert!(text.contains("daemoneye_alerts_failed_total{sink=\"stdout\"} 2\n"));
//! assert_eq!(registry.value("daemoneye_alerts_failed_total", &[("sink", "stdout")]), Some(2));
//! ```
//!
//! With the `metrics-server` cargo feature, `serve` (and `MetricsServer`,
//! to bind first and serve later) answers `GET /metrics`
//! over HTTP/1 with [`Registry::encode`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::lock;

#[cfg(feature = "metrics-server")]
mod server;
#[cfg(feature = "metrics-server")]
pub use server::{serve, MetricsServer, ServeError};

/// The `Content-Type` of [`Registry::encode`]'s output (Prometheus text
/// format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing count. Clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// A counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds a length or count held in a `usize`.
    #[inline]
    pub fn add_usize(&self, n: usize) {
        self.add(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (a level, or a 0/1 state). Clones share
/// the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// A gauge at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the value.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Sets 1 for `true`, 0 for `false`.
    #[inline]
    pub fn set_bool(&self, on: bool) {
        self.set(i64::from(on));
    }

    /// Sets the value and returns the previous one.
    #[inline]
    pub fn swap(&self, v: i64) -> i64 {
        self.0.swap(v, Ordering::Relaxed)
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether the value is not zero.
    #[inline]
    pub fn get_bool(&self) -> bool {
        self.get() != 0
    }
}

/// One gauge per [`CaptureTier`](crate::CaptureTier), 1 for the tier in
/// use: what every collector with tiers of kernel events (procmond,
/// netmond) keeps and exports as `daemoneye_capture_tier{source, tier}`.
#[derive(Debug, Default)]
pub struct TierGauges([Gauge; 3]);

const _: () = assert!(crate::CaptureTier::ALL.len() == 3);

impl TierGauges {
    /// Marks `tier` the one in use.
    pub fn set(&self, tier: crate::CaptureTier) {
        for (t, gauge) in crate::CaptureTier::ALL.iter().zip(&self.0) {
            gauge.set_bool(*t == tier);
        }
    }

    /// The tier in use; `None` before one is set.
    pub fn get(&self) -> Option<crate::CaptureTier> {
        crate::CaptureTier::ALL
            .iter()
            .zip(&self.0)
            .find_map(|(t, g)| g.get_bool().then_some(*t))
    }

    /// Registers the gauges as `daemoneye_capture_tier{source, tier}`.
    pub fn register(&self, registry: &Registry, source: &'static str) {
        for (tier, gauge) in crate::CaptureTier::ALL.iter().zip(&self.0) {
            registry.register_gauge(
                "daemoneye_capture_tier",
                "1 for the tier of kernel events in use (ebpf, connector, polling).",
                &[("source", source), ("tier", tier.as_str())],
                gauge,
            );
        }
    }
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
}

impl Metric {
    const fn kind(&self) -> &'static str {
        match self {
            Self::Counter(_) => "counter",
            Self::Gauge(_) => "gauge",
        }
    }

    fn value(&self) -> i128 {
        match self {
            Self::Counter(c) => i128::from(c.get()),
            Self::Gauge(g) => i128::from(g.get()),
        }
    }
}

#[derive(Debug)]
struct Series {
    labels: Vec<(&'static str, String)>,
    metric: Metric,
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    series: Vec<Series>,
}

/// Named counters and gauges, encoded in the Prometheus text format.
///
/// Cheap to clone (clones share the registry). A name has one kind (counter
/// or gauge) and one help text; registering it again with other labels adds
/// a series. Series registered twice with the same labels are summed in the
/// exposition (two components counting the same thing). A registration that
/// would give a name a second kind, or an invalid name, is refused with a
/// warning in the log.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<Vec<Family>>>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// The two methods of [`Registry`] for one kind of instrument: `$make`
/// makes one, registers it and returns it; `$register` registers a clone
/// of an existing one.
macro_rules! instruments {
    ($kind:ident, $make:ident, $register:ident, $what:literal) => {
        #[doc = concat!("Makes a ", $what, ", registers it and returns it.")]
        pub fn $make(
            &self,
            name: &'static str,
            help: &'static str,
            labels: &[(&'static str, &str)],
        ) -> $kind {
            let made = $kind::new();
            self.$register(name, help, labels, &made);
            made
        }

        #[doc = concat!("Registers (a clone of) an existing ", $what, ".")]
        pub fn $register(
            &self,
            name: &'static str,
            help: &'static str,
            labels: &[(&'static str, &str)],
            instrument: &$kind,
        ) {
            self.register(name, help, labels, Metric::$kind(instrument.clone()));
        }
    };
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn register(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        metric: Metric,
    ) {
        if !valid_name(name) || !labels.iter().all(|(l, _)| valid_label(l)) {
            tracing::warn!(
                metric = name,
                "invalid metric or label name: not registered"
            );
            return;
        }
        let series = Series {
            labels: labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            metric,
        };
        let mut families = lock(&self.families);
        match families.iter_mut().find(|f| f.name == name) {
            Some(family) => {
                let same_kind = family
                    .series
                    .first()
                    .is_none_or(|s| s.metric.kind() == series.metric.kind());
                if same_kind {
                    family.series.push(series);
                } else {
                    tracing::warn!(
                        metric = name,
                        "metric registered as counter and as gauge: not registered"
                    );
                }
            }
            None => families.push(Family {
                name,
                help,
                series: vec![series],
            }),
        }
    }

    instruments!(Counter, counter, register_counter, "counter");
    instruments!(Gauge, gauge, register_gauge, "gauge");

    /// Registers (clones of) several counters sharing `labels`, each as
    /// `(name, help, counter)`.
    pub fn register_counters(
        &self,
        labels: &[(&'static str, &str)],
        counters: &[(&'static str, &'static str, &Counter)],
    ) {
        for (name, help, counter) in counters {
            self.register_counter(name, help, labels, counter);
        }
    }

    /// Registers (clones of) the counters that split `name` by the label
    /// `key`: each `(value, counter)` as the series `labels` plus
    /// `key="<value>"`.
    pub fn register_by<'a>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'a str)],
        key: &'static str,
        parts: impl IntoIterator<Item = (&'a str, &'a Counter)>,
    ) {
        let mut with_key = labels.to_vec();
        with_key.push((key, ""));
        for (value, counter) in parts {
            if let Some(last) = with_key.last_mut() {
                last.1 = value;
            }
            self.register_counter(name, help, &with_key, counter);
        }
    }

    /// [`register_by`](Self::register_by) the label `reason`.
    pub fn register_by_reason<'a>(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'a str)],
        reasons: impl IntoIterator<Item = (&'a str, &'a Counter)>,
    ) {
        self.register_by(name, help, labels, "reason", reasons);
    }

    /// Registers the counters of the events a stage dropped, by reason, in
    /// the one family every stage shares:
    /// `daemoneye_events_dropped_total{<labels>, reason="<reason>"}`.
    pub fn register_events_dropped<'a>(
        &self,
        labels: &[(&'static str, &'a str)],
        reasons: impl IntoIterator<Item = (&'a str, &'a Counter)>,
    ) {
        self.register_by_reason(
            "daemoneye_events_dropped_total",
            "Events dropped, by stage and reason.",
            labels,
            reasons,
        );
    }

    /// The value of the series `name` with exactly `labels` (in any order),
    /// summed over duplicate registrations; `None` when nothing is
    /// registered under them. Gauges below zero read as zero.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let families = lock(&self.families);
        let family = families.iter().find(|f| f.name == name)?;
        let matching = |s: &&Series| {
            s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        };
        let mut found = false;
        let mut sum: i128 = 0;
        for s in family.series.iter().filter(matching) {
            found = true;
            sum += s.metric.value();
        }
        found.then(|| u64::try_from(sum.max(0)).unwrap_or(u64::MAX))
    }

    /// Every registered series in the Prometheus text exposition format
    /// (version 0.0.4, [`CONTENT_TYPE`]): per name a `# HELP` and a `# TYPE`
    /// line, then one line per distinct label set, in registration order.
    pub fn encode(&self) -> String {
        let families = lock(&self.families);
        let mut out = String::with_capacity(families.len() * 160);
        for family in families.iter() {
            let Some(first) = family.series.first() else {
                continue;
            };
            let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
            let _ = writeln!(out, "# TYPE {} {}", family.name, first.metric.kind());
            // Sum the series that share a label set, keeping the first's place.
            let mut lines: Vec<(String, i128)> = Vec::with_capacity(family.series.len());
            let mut seen: HashMap<String, usize> = HashMap::with_capacity(family.series.len());
            for s in &family.series {
                let labels = encode_labels(&s.labels);
                if let Some(line) = seen.get(&labels).and_then(|&i| lines.get_mut(i)) {
                    line.1 += s.metric.value();
                } else {
                    seen.insert(labels.clone(), lines.len());
                    lines.push((labels, s.metric.value()));
                }
            }
            for (labels, value) in lines {
                let _ = writeln!(out, "{}{labels} {value}", family.name);
            }
        }
        out
    }
}

fn encode_labels(labels: &[(&'static str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut sorted: Vec<&(&'static str, String)> = labels.iter().collect();
    sorted.sort_by_key(|(k, _)| *k);
    let mut out = String::from("{");
    for (i, (k, v)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn one_tier_gauge_is_set_and_exported_per_tier() {
        let tiers = TierGauges::default();
        assert_eq!(tiers.get(), None);
        tiers.set(crate::CaptureTier::Ebpf);
        tiers.set(crate::CaptureTier::Polling);
        assert_eq!(tiers.get(), Some(crate::CaptureTier::Polling));
        let registry = Registry::new();
        tiers.register(&registry, "src");
        let text = registry.encode();
        assert!(
            text.contains("daemoneye_capture_tier{source=\"src\",tier=\"polling\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("daemoneye_capture_tier{source=\"src\",tier=\"ebpf\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn every_stage_drops_into_one_family_by_reason() {
        let r = Registry::new();
        let (full, shutdown) = (Counter::new(), Counter::new());
        full.add(3);
        r.register_events_dropped(
            &[("stage", "x")],
            [("full", &full), ("shutdown", &shutdown)],
        );
        let dropped = |reason| {
            r.value(
                "daemoneye_events_dropped_total",
                &[("stage", "x"), ("reason", reason)],
            )
        };
        assert_eq!((dropped("full"), dropped("shutdown")), (Some(3), Some(0)));
        assert!(r.encode().contains(
            "# HELP daemoneye_events_dropped_total Events dropped, by stage and reason."
        ));
    }

    #[test]
    fn clones_share_one_value() {
        let c = Counter::new();
        let d = c.clone();
        c.inc();
        d.add(4);
        c.add_usize(5);
        assert_eq!(c.get(), 10);
        assert_eq!(d.get(), 10);
        let g = Gauge::new();
        g.clone().set(-3);
        assert_eq!(g.get(), -3);
        assert_eq!(g.swap(1), -3);
        assert!(g.get_bool());
    }

    #[test]
    fn encodes_help_type_and_escaped_sorted_labels() {
        let r = Registry::new();
        let c = r.counter(
            "daemoneye_events_dropped_total",
            "Events dropped.\nBy reason.",
            &[("stage", "subscriber"), ("reason", "full")],
        );
        c.add(7);
        r.counter(
            "daemoneye_events_dropped_total",
            "ignored: the first help wins",
            &[("stage", "intake"), ("reason", "a\"b\\c\nd")],
        );
        r.gauge("daemoneye_up", "Whether it runs.", &[]).set(1);
        assert_eq!(
            r.encode(),
            "# HELP daemoneye_events_dropped_total Events dropped.\\nBy reason.\n\
             # TYPE daemoneye_events_dropped_total counter\n\
             daemoneye_events_dropped_total{reason=\"full\",stage=\"subscriber\"} 7\n\
             daemoneye_events_dropped_total{reason=\"a\\\"b\\\\c\\nd\",stage=\"intake\"} 0\n\
             # HELP daemoneye_up Whether it runs.\n\
             # TYPE daemoneye_up gauge\n\
             daemoneye_up 1\n"
        );
    }

    #[test]
    fn same_series_twice_is_summed_and_read_back() {
        let r = Registry::new();
        let a = r.counter("daemoneye_x_total", "x", &[("stage", "bus")]);
        let b = Counter::new();
        r.register_counters(&[("stage", "bus")], &[("daemoneye_x_total", "x", &b)]);
        a.add(2);
        b.add(3);
        assert!(r.encode().contains("daemoneye_x_total{stage=\"bus\"} 5\n"));
        assert_eq!(r.encode().matches("daemoneye_x_total{").count(), 1);
        assert_eq!(r.value("daemoneye_x_total", &[("stage", "bus")]), Some(5));
        assert_eq!(r.value("daemoneye_x_total", &[]), None);
        assert_eq!(r.value("daemoneye_y_total", &[("stage", "bus")]), None);
    }

    #[test]
    fn bad_names_and_kind_clashes_are_refused() {
        let r = Registry::new();
        r.counter("0bad", "x", &[]);
        r.counter("daemoneye_ok_total", "x", &[("__reserved", "v")]);
        r.counter("daemoneye_kind", "x", &[]).inc();
        r.gauge("daemoneye_kind", "x", &[("a", "b")]).set(5);
        let text = r.encode();
        assert!(!text.contains("0bad"));
        assert!(!text.contains("daemoneye_ok_total"));
        assert!(text.contains("# TYPE daemoneye_kind counter\ndaemoneye_kind 1\n"));
        assert_eq!(r.value("daemoneye_kind", &[("a", "b")]), None);
    }
}
