//! The agent's health, as answered on its IPC socket (`daemoneye-cli
//! health`): its own state and counters, its sinks, and each collector's
//! own report, asked on a fresh connection each time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use collector_core::metrics::{Counter, Gauge, Registry};
use collector_core::{CollectorIpcClient, IpcClientConfig};
use daemoneye_lib::proto::{ComponentHealth, HealthState};
use tokio::time::Instant;

use crate::engine::EngineStats;
use crate::link::{LinkState, LinkStatus};
use crate::sink::{FleetStatus, SinkStats, SinkStatsSnapshot};
use crate::writer::WriterStats;

pub use collector_core::health::state_name;

/// The agent's own counters.
#[derive(Debug, Default)]
pub struct AgentCounters {
    /// Alerts raised (after deduplication).
    pub alerts: Counter,
    /// Repeats suppressed by deduplication.
    pub suppressed: Counter,
    /// Rule sweeps over the whole table.
    pub sweeps: Counter,
    /// Rule evaluations that failed.
    pub engine_errors: Counter,
    /// Processes the agent knows alive.
    pub live_processes: Gauge,
    /// Events its links had handed on that were still unjudged when the
    /// shutdown deadline passed.
    pub dropped_at_shutdown: Counter,
}

impl AgentCounters {
    /// Registers these counters in `registry`
    /// (`daemoneye_alerts_raised_total`, ...).
    pub fn register(&self, registry: &Registry) {
        registry.register_counters(
            &[],
            &[
                (
                    "daemoneye_alerts_raised_total",
                    "Alerts raised by the rules (after deduplication).",
                    &self.alerts,
                ),
                (
                    "daemoneye_alerts_suppressed_total",
                    "Repeated alerts suppressed by deduplication.",
                    &self.suppressed,
                ),
                (
                    "daemoneye_rule_sweeps_run_total",
                    "Rule sweeps over the whole process table.",
                    &self.sweeps,
                ),
                (
                    "daemoneye_rule_evaluations_failed_total",
                    "Rule evaluations that failed.",
                    &self.engine_errors,
                ),
            ],
        );
        registry.register_counter(
            "daemoneye_events_dropped_total",
            "Events dropped, by stage and reason.",
            &[("stage", "agent"), ("reason", "shutdown")],
            &self.dropped_at_shutdown,
        );
        registry.register_gauge(
            "daemoneye_processes_live",
            "Processes the agent knows alive.",
            &[],
            &self.live_processes,
        );
    }
}

/// One supervised collector, as health sees it.
#[derive(Debug, Clone)]
pub struct LinkedCollector {
    /// Its configured name.
    pub name: String,
    /// Its socket (asked for its own health).
    pub socket: PathBuf,
    /// Its link.
    pub link: Arc<LinkStatus>,
}

/// Everything the health answer is made of.
#[derive(Debug, Clone)]
pub struct AgentHealth {
    /// When the agent started.
    pub started: Instant,
    /// The collectors, in configured order.
    pub collectors: Vec<LinkedCollector>,
    /// The store writer.
    pub writer: Arc<WriterStats>,
    /// The agent's counters.
    pub counters: Arc<AgentCounters>,
    /// Sinks by name ([`SinkSet::stats`](crate::sink::SinkSet::stats)).
    pub sinks: Vec<(&'static str, Arc<SinkStats>)>,
    /// The fleet sink's state, when it ships.
    pub fleet: Option<Arc<FleetStatus>>,
    /// The rule engine's counters.
    pub engine: Arc<EngineStats>,
    /// Rules running.
    pub rules_loaded: u64,
    /// Rules refused at load.
    pub rules_refused: u64,
}

/// A gauge that counts something, as a count (never below zero).
fn level(g: &Gauge) -> u64 {
    u64::try_from(g.get()).unwrap_or(0)
}

/// A collector that cannot answer for itself, and why.
fn unreachable(name: &str, message: String) -> ComponentHealth {
    ComponentHealth {
        name: name.to_owned(),
        state: HealthState::Unreachable.into(),
        message,
        ..ComponentHealth::default()
    }
}

impl LinkedCollector {
    /// The collector's own report, or an `unreachable` one (named as
    /// configured) saying why.
    async fn report(&self) -> ComponentHealth {
        let unreachable = |message: String| unreachable(&self.name, message);
        if self.link.state() != LinkState::Connected {
            let why = self.link.last_error();
            return unreachable(if why.is_empty() {
                "not connected yet".to_owned()
            } else {
                why
            });
        }
        let config = IpcClientConfig {
            client_name: "daemoneye-agent-health".to_owned(),
            max_connect_attempts: 1,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            ..IpcClientConfig::new(&self.socket)
        };
        let asked = async {
            let client = CollectorIpcClient::connect(config).await?;
            client.health().await
        };
        match tokio::time::timeout(Duration::from_secs(3), asked).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => unreachable(format!("cannot ask it: {e}")),
            Err(_) => unreachable("it did not answer within 3 s".to_owned()),
        }
    }

    /// What is wrong with it, if anything, and whether it is only starting.
    fn problem(&self, report: &ComponentHealth) -> Option<(String, bool)> {
        let link = &self.link;
        let name = &self.name;
        match (link.state(), report.state()) {
            (LinkState::Starting, _) if link.restarts.get() == 0 => {
                Some((format!("starting collector {name}"), true))
            }
            (LinkState::Connected, HealthState::Healthy) => None,
            // With its own words (fsmond: the paths it cannot watch).
            (LinkState::Connected, s) if !report.message.is_empty() => Some((
                format!("collector {name} {}: {}", state_name(s), report.message),
                false,
            )),
            (LinkState::Connected, s) => {
                Some((format!("collector {name} {}", state_name(s)), false))
            }
            _ => Some((
                format!("collector {name} down: {}", link.last_error()),
                false,
            )),
        }
    }
}

impl AgentHealth {
    /// Registers everything health reads in `registry`, under Prometheus
    /// names: the agent's counters, each collector's link
    /// ([`LinkStatus::register`]), each sink's ([`SinkStats::register`]),
    /// and the rules loaded and refused (gauges). The writer's counters are
    /// not among them yet.
    pub fn register_metrics(&self, registry: &Registry) {
        self.counters.register(registry);
        self.writer.register_metrics(registry);
        for c in &self.collectors {
            c.link.register(registry, &c.name);
        }
        for (name, stats) in &self.sinks {
            stats.register(registry, name);
        }
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        registry
            .gauge("daemoneye_rules_loaded", "Rules running.", &[])
            .set(count(self.rules_loaded));
        registry
            .gauge("daemoneye_rules_refused", "Rules refused at load.", &[])
            .set(count(self.rules_refused));
    }

    /// One component per sink, all read alike; their losses into
    /// `counters` and `problems`.
    fn sinks(
        &self,
        counters: &mut BTreeMap<String, u64>,
        problems: &mut Vec<String>,
    ) -> Vec<ComponentHealth> {
        self.sinks
            .iter()
            .map(|(name, s)| sink_component(name, &s.snapshot(), counters, problems))
            .collect()
    }

    /// The whole report: one component per collector (its own report),
    /// then one per sink. The link counters are summed over the collectors
    /// and also given per collector (`collector.<name>.restarts`, ...).
    pub async fn report(&self) -> ComponentHealth {
        let c = &self.counters;
        let w = &self.writer;
        let mut counters = BTreeMap::new();
        let mut problems = Vec::new();
        let mut starting = 0;
        let mut components = Vec::new();
        // Asked all at once: one that does not answer costs its timeout once.
        let mut asking = tokio::task::JoinSet::new();
        for (i, c) in self.collectors.iter().cloned().enumerate() {
            asking.spawn(async move { (i, c.report().await) });
        }
        let mut reports = vec![None; self.collectors.len()];
        while let Some(answer) = asking.join_next().await {
            if let Ok((i, report)) = answer {
                reports[i] = Some(report);
            }
        }
        for (collector, report) in self.collectors.iter().zip(reports) {
            let report = report
                .unwrap_or_else(|| unreachable(&collector.name, "asking it failed".to_owned()));
            let link = &collector.link;
            for (key, value) in [
                ("collector_restarts", link.restarts.get()),
                ("events_received", link.events.get()),
                ("batches_received", link.batches.get()),
                ("events_dropped_by_collector", link.dropped_upstream.get()),
                ("bad_records", link.bad_records.get()),
                ("events_dropped_at_shutdown", link.dropped_at_shutdown.get()),
            ] {
                *counters.entry(key.to_owned()).or_insert(0) += value;
                let own = key.strip_prefix("collector_").unwrap_or(key);
                counters.insert(format!("collector.{}.{own}", collector.name), value);
            }
            if let Some((problem, only_starting)) = collector.problem(&report) {
                problems.push(problem);
                starting += usize::from(only_starting);
            }
            components.push(report);
        }
        counters.extend([
            ("alerts".to_owned(), c.alerts.get()),
            ("alerts_suppressed".to_owned(), c.suppressed.get()),
            ("sweeps".to_owned(), c.sweeps.get()),
            ("engine_errors".to_owned(), c.engine_errors.get()),
            ("live_processes".to_owned(), level(&c.live_processes)),
            ("rules_loaded".to_owned(), self.rules_loaded),
            ("rules_refused".to_owned(), self.rules_refused),
            ("store_batches".to_owned(), w.batches.get()),
            (
                "store_lifecycle_events".to_owned(),
                w.lifecycle_events.get(),
            ),
            ("store_alerts".to_owned(), w.alerts.get()),
            ("store_failures".to_owned(), w.failures.get()),
            ("rule_failures".to_owned(), self.engine.rule_failures.get()),
            ("rule_timeouts".to_owned(), self.engine.rule_timeouts.get()),
        ]);
        let collector_problems = problems.len();
        // Losing writes, or rules that fail, is not healthy whatever else is.
        if w.failing.get() > 0 {
            problems.push(format!(
                "store failing: its last write failed; {} events and writes held until it takes \
                 them; since start {} writes and {} events lost",
                w.held.get(),
                w.failures.get(),
                w.events_dropped()
            ));
        }
        let e = &self.engine;
        if e.failing_rules.get() > 0 {
            problems.push(format!(
                "{} rules failed in the last batch (an error or the time limit); {} rule failures since start",
                e.failing_rules.get(),
                e.rule_failures.get()
            ));
        }
        components.extend(self.sinks(&mut counters, &mut problems));
        if let Some(fleet) = &self.fleet {
            components.push(fleet_component(fleet, &mut problems));
        }
        // A collector that is down or unwell degrades the agent; one still
        // starting (never lost yet) makes it `starting`, whatever the sinks
        // say; otherwise the sinks decide.
        let state = if collector_problems > starting {
            HealthState::Degraded
        } else if starting > 0 {
            HealthState::Starting
        } else if problems.is_empty() {
            HealthState::Healthy
        } else {
            HealthState::Degraded
        };
        ComponentHealth {
            name: "daemoneye-agent".to_owned(),
            state: state.into(),
            message: problems.join("; "),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            counters,
            components,
        }
    }
}

/// The fleet component now; see [`fleet_component_at`].
fn fleet_component(f: &FleetStatus, problems: &mut Vec<String>) -> ComponentHealth {
    fleet_component_at(f, std::time::SystemTime::now(), problems)
}

/// The fleet component: degraded while the broker cannot be reached (the
/// last drain failed, or the client is disconnected), the outbox
/// overflowed (from a look that found new drops until it is empty again)
/// or its oldest item has waited longer than `max_outbox_age` at `now`,
/// saying why.
fn fleet_component_at(
    f: &FleetStatus,
    now: std::time::SystemTime,
    problems: &mut Vec<String>,
) -> ComponentHealth {
    let mut why = Vec::new();
    let error = f.last_error();
    if !f.connected.get_bool() || !error.is_empty() {
        why.push(if error.is_empty() {
            "broker unreachable".to_owned()
        } else {
            format!("broker unreachable: {error}")
        });
    }
    if f.dropping.get_bool() {
        why.push(format!(
            "outbox full: the oldest items dropped since it was last empty \
             ({} alerts and checkpoints, {} events dropped in all)",
            level(&f.outbox_dropped),
            level(&f.outbox_dropped_events)
        ));
    }
    if let Some((age, max)) = f.outbox_stale(now) {
        why.push(format!(
            "outbox stale: its oldest item has waited {}s (max_outbox_age {}s)",
            age.as_secs(),
            max.as_secs()
        ));
    }
    let message = why.join("; ");
    if !message.is_empty() {
        problems.push(format!("fleet: {message}"));
    }
    ComponentHealth {
        name: "fleet".to_owned(),
        state: if why.is_empty() {
            HealthState::Healthy
        } else {
            HealthState::Degraded
        }
        .into(),
        message,
        counters: [
            ("connected", level(&f.connected)),
            ("outbox_depth", level(&f.outbox_depth)),
            (
                "outbox_oldest_age_secs",
                f.outbox_age(now).map_or(0, |a| a.as_secs()),
            ),
            ("outbox_dropped", level(&f.outbox_dropped)),
            ("outbox_dropped_events", level(&f.outbox_dropped_events)),
            ("published", f.published.get()),
            ("acknowledged", f.acknowledged.get()),
            ("duplicates", f.duplicates.get()),
            ("retried", f.retried.get()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        ..ComponentHealth::default()
    }
}

/// One sink's component: degraded while its last alert was lost (failed,
/// rejected or dropped), saying what it lost since start; its losses also
/// go into the agent's `counters` (`sink.<name>.failures`), a failing sink
/// into the agent's message.
fn sink_component(
    name: &str,
    s: &SinkStatsSnapshot,
    counters: &mut BTreeMap<String, u64>,
    problems: &mut Vec<String>,
) -> ComponentHealth {
    counters.insert(format!("sink.{name}.failures"), s.lost());
    if s.failing {
        problems.push(format!("sink {name} failing"));
    }
    ComponentHealth {
        name: format!("sink:{name}"),
        state: if s.failing {
            HealthState::Degraded
        } else {
            HealthState::Healthy
        }
        .into(),
        message: if s.failing {
            format!(
                "its last alert was lost; since start: {} failed, {} rejected, {} dropped, {} dropped at shutdown",
                s.failed, s.rejected, s.dropped, s.dropped_at_shutdown
            )
        } else {
            String::new()
        },
        counters: [
            ("queued", s.queued),
            ("delivered", s.delivered),
            ("retries", s.retries),
            ("failed", s.failed),
            ("rejected", s.rejected),
            ("dropped", s.dropped),
            ("dropped_at_shutdown", s.dropped_at_shutdown),
            ("in_flight", s.in_flight()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        ..ComponentHealth::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::sink::Outcome;

    fn health(links: &[(&str, &Arc<LinkStatus>)], sink: Arc<SinkStats>) -> AgentHealth {
        AgentHealth {
            started: Instant::now(),
            collectors: links
                .iter()
                .map(|(name, link)| LinkedCollector {
                    name: (*name).to_owned(),
                    socket: format!("/nonexistent/{name}.sock").into(),
                    link: Arc::clone(link),
                })
                .collect(),
            writer: Arc::default(),
            engine: Arc::default(),
            counters: Arc::default(),
            sinks: vec![("stdout", sink)],
            fleet: None,
            rules_loaded: 10,
            rules_refused: 1,
        }
    }

    #[tokio::test]
    async fn the_verdict_follows_the_collector_and_the_sinks() {
        let link = Arc::new(LinkStatus::default());
        let sink = Arc::new(SinkStats::default());
        let h = health(&[("procmond", &link)], sink.clone());

        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Starting);
        assert_eq!(r.counters["rules_refused"], 1);
        assert_eq!(r.components[0].state(), HealthState::Unreachable);

        // Lost, restarting: degraded, and why.
        link.restarts.inc();
        link.set_error("collector exited: signal 9".to_owned());
        link.set_state(LinkState::Restarting);
        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Degraded);
        assert!(r.message.contains("signal 9"), "{}", r.message);
        assert_eq!(r.counters["collector_restarts"], 1);

        // Connected, but its socket does not answer: degraded, collector
        // unreachable, and a failing sink is named.
        link.set_state(LinkState::Connected);
        sink.queued();
        sink.finish(Outcome::Failed);
        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Degraded);
        assert_eq!(r.components[0].state(), HealthState::Unreachable);
        assert!(r.message.contains("sink stdout failing"), "{}", r.message);
        let stdout = r
            .components
            .iter()
            .find(|c| c.name == "sink:stdout")
            .unwrap();
        assert_eq!(stdout.counters["failed"], 1);
        assert_eq!(stdout.state(), HealthState::Degraded);
        // A success clears the sink's failing state, not its count.
        sink.queued();
        sink.finish(Outcome::Delivered);
        let r = h.report().await;
        assert!(!r.message.contains("sink stdout"), "{}", r.message);
        assert_eq!(r.counters["sink.stdout.failures"], 1);
        // A drop is a loss too, and counted alike.
        sink.dropped();
        let r = h.report().await;
        assert!(r.message.contains("sink stdout failing"), "{}", r.message);
        assert_eq!(r.counters["sink.stdout.failures"], 2);
    }

    #[tokio::test]
    async fn a_failing_store_or_failing_rules_degrade_and_say_what() {
        // No collector configured: only the store and the rules decide.
        let mut h = health(&[], Arc::new(SinkStats::default()));
        let (writer, engine) = (
            Arc::new(WriterStats::default()),
            Arc::new(EngineStats::default()),
        );
        h.writer = Arc::clone(&writer);
        h.engine = Arc::clone(&engine);
        assert_eq!(h.report().await.state(), HealthState::Healthy);

        // The disk is full: a transaction lost, with its events.
        writer.failures.inc();
        writer.events_dropped_write_failed.add(40);
        writer.failing.set(1);
        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Degraded);
        assert!(
            r.message.contains("store failing") && r.message.contains("40 events lost"),
            "{}",
            r.message
        );
        // Writing again clears it; the counts stay.
        writer.failing.set(0);
        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Healthy, "{}", r.message);
        assert_eq!(r.counters["store_failures"], 1);

        // A rule at its time limit every batch.
        engine.rule_failures.add(3);
        engine.rule_timeouts.add(3);
        engine.failing_rules.set(1);
        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Degraded);
        assert!(
            r.message.contains("1 rules failed in the last batch"),
            "{}",
            r.message
        );
        assert_eq!(r.counters["rule_timeouts"], 3);
    }

    #[tokio::test]
    async fn each_collector_is_listed_and_counted_and_the_worst_decides() {
        let procmond = Arc::new(LinkStatus::default());
        let netmond = Arc::new(LinkStatus::default());
        let h = health(
            &[("procmond", &procmond), ("netmond", &netmond)],
            Arc::new(SinkStats::default()),
        );
        procmond.events.add(5);
        netmond.events.add(2);

        // Both starting: starting, both named.
        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Starting);
        let names: Vec<_> = r.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names[..2], ["procmond", "netmond"]);
        assert_eq!(r.counters["events_received"], 7);
        assert_eq!(r.counters["collector.procmond.events_received"], 5);
        assert_eq!(r.counters["collector.netmond.events_received"], 2);

        // One lost while the other still starts: degraded, naming the lost one.
        netmond.restarts.inc();
        netmond.set_error("collector exited: status 1".to_owned());
        netmond.set_state(LinkState::Restarting);
        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Degraded);
        assert!(
            r.message
                .contains("collector netmond down: collector exited: status 1"),
            "{}",
            r.message
        );
        assert!(
            r.message.contains("starting collector procmond"),
            "{}",
            r.message
        );
        assert_eq!(r.counters["collector_restarts"], 1);
        assert_eq!(r.counters["collector.netmond.restarts"], 1);
        assert_eq!(r.counters["collector.procmond.restarts"], 0);
    }

    #[test]
    fn the_fleet_is_degraded_while_its_oldest_outbox_item_waited_past_max_outbox_age() {
        use std::time::UNIX_EPOCH;
        let f = FleetStatus::new(Duration::from_secs(300));
        f.connected.set_bool(true);
        let queued_secs = 1_800_000_000;
        let queued = UNIX_EPOCH + Duration::from_secs(queued_secs);
        f.outbox(daemoneye_store::OutboxState::new(
            2,
            Some(i64::try_from(queued_secs).unwrap() * 1_000_000_000 + 5),
        ));
        let at = |secs: u64, problems: &mut Vec<String>| {
            fleet_component_at(&f, queued + Duration::from_secs(secs), problems)
        };
        let mut problems = Vec::new();
        let c = at(299, &mut problems);
        assert_eq!(c.state(), HealthState::Healthy, "{c:?}");
        assert_eq!(c.counters["outbox_oldest_age_secs"], 299);
        assert_eq!(c.counters["outbox_depth"], 2);
        assert!(problems.is_empty());
        let c = at(301, &mut problems);
        assert_eq!(c.state(), HealthState::Degraded, "{c:?}");
        assert!(
            c.message
                .contains("oldest item has waited 301s (max_outbox_age 300s)"),
            "{c:?}"
        );
        assert_eq!(problems.len(), 1);
        // Emptied: no age, healthy however late.
        f.outbox(daemoneye_store::OutboxState::default());
        let c = at(3600, &mut Vec::new());
        assert_eq!(c.state(), HealthState::Healthy, "{c:?}");
        assert_eq!(c.counters["outbox_oldest_age_secs"], 0);
    }
}
