//! The agent's health, as answered on its IPC socket (`daemoneye-cli
//! health`): its own state and counters, its sinks, and the collector's
//! own report, asked on a fresh connection each time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use collector_core::{CollectorIpcClient, IpcClientConfig};
use daemoneye_lib::proto::{ComponentHealth, HealthState};
use tokio::time::Instant;

use crate::link::{LinkState, LinkStatus};
use crate::writer::WriterStats;

pub use collector_core::health::state_name;

/// One alert sink's counters.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Alerts delivered.
    pub delivered: AtomicU64,
    /// Deliveries that failed.
    pub failures: AtomicU64,
    /// Alerts dropped before delivery (the sink's queue was full).
    pub dropped: AtomicU64,
    /// Whether the last delivery failed.
    pub failing: AtomicBool,
}

impl SinkCounters {
    /// Records one delivery's outcome.
    pub fn record(&self, ok: bool) {
        if ok {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.failing.store(!ok, Ordering::Relaxed);
    }
}

/// The agent's own counters.
#[derive(Debug, Default)]
pub struct AgentCounters {
    /// Alerts raised (after deduplication).
    pub alerts: AtomicU64,
    /// Repeats suppressed by deduplication.
    pub suppressed: AtomicU64,
    /// Rule sweeps over the whole table.
    pub sweeps: AtomicU64,
    /// Rule evaluations that failed.
    pub engine_errors: AtomicU64,
    /// Processes the agent knows alive.
    pub live_processes: AtomicU64,
}

/// Everything the health answer is made of.
#[derive(Debug, Clone)]
pub struct AgentHealth {
    /// When the agent started.
    pub started: Instant,
    /// The collector link.
    pub link: Arc<LinkStatus>,
    /// The collector's socket (asked for its own health).
    pub collector_socket: PathBuf,
    /// The store writer.
    pub writer: Arc<WriterStats>,
    /// The agent's counters.
    pub counters: Arc<AgentCounters>,
    /// Sinks by name.
    pub sinks: Vec<(&'static str, Arc<SinkCounters>)>,
    /// The webhook sink's counters, when there is one.
    pub webhook: Option<Arc<crate::webhook::WebhookStats>>,
    /// Rules running.
    pub rules_loaded: u64,
    /// Rules refused at load.
    pub rules_refused: u64,
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl AgentHealth {
    /// The collector's own report, or an `unreachable` one saying why.
    async fn collector(&self) -> ComponentHealth {
        let unreachable = |message: String| ComponentHealth {
            name: "collector".to_owned(),
            state: HealthState::Unreachable.into(),
            message,
            ..ComponentHealth::default()
        };
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
            ..IpcClientConfig::new(&self.collector_socket)
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

    /// One component per sink; their failures into `counters` and
    /// `problems`.
    fn sinks(
        &self,
        counters: &mut BTreeMap<String, u64>,
        problems: &mut Vec<String>,
    ) -> Vec<ComponentHealth> {
        let mut components = Vec::new();
        for (name, s) in &self.sinks {
            let failing = s.failing.load(Ordering::Relaxed);
            components.push(sink_component(
                name,
                load(&s.failures) + load(&s.dropped),
                failing.then(|| "its last delivery failed or was dropped".to_owned()),
                failing.then(|| format!("sink {name} failing")),
                [
                    ("delivered", load(&s.delivered)),
                    ("failures", load(&s.failures)),
                    ("dropped", load(&s.dropped)),
                ],
                counters,
                problems,
            ));
        }
        if let Some(w) = &self.webhook {
            let w = w.snapshot();
            let lost = w.failed + w.rejected + w.dropped;
            components.push(sink_component(
                "webhook",
                lost,
                (lost > 0).then(|| {
                    format!(
                        "since start: {} failed, {} rejected, {} dropped",
                        w.failed, w.rejected, w.dropped
                    )
                }),
                (lost > 0).then(|| format!("sink webhook lost {lost} alerts")),
                [
                    ("queued", w.queued),
                    ("delivered", w.delivered),
                    ("retries", w.retries),
                    ("failed", w.failed),
                    ("rejected", w.rejected),
                    ("dropped", w.dropped),
                    ("in_flight", w.in_flight()),
                ],
                counters,
                problems,
            ));
        }
        components
    }

    /// The whole report.
    pub async fn report(&self) -> ComponentHealth {
        let collector = self.collector().await;
        let link = &self.link;
        let c = &self.counters;
        let w = &self.writer;
        let mut counters = BTreeMap::from([
            ("collector_restarts".to_owned(), load(&link.restarts)),
            ("events_received".to_owned(), load(&link.events)),
            ("batches_received".to_owned(), load(&link.batches)),
            (
                "events_dropped_by_collector".to_owned(),
                load(&link.dropped_upstream),
            ),
            ("bad_records".to_owned(), load(&link.bad_records)),
            ("alerts".to_owned(), load(&c.alerts)),
            ("alerts_suppressed".to_owned(), load(&c.suppressed)),
            ("sweeps".to_owned(), load(&c.sweeps)),
            ("engine_errors".to_owned(), load(&c.engine_errors)),
            ("live_processes".to_owned(), load(&c.live_processes)),
            ("rules_loaded".to_owned(), self.rules_loaded),
            ("rules_refused".to_owned(), self.rules_refused),
            ("store_batches".to_owned(), load(&w.batches)),
            (
                "store_lifecycle_events".to_owned(),
                load(&w.lifecycle_events),
            ),
            ("store_alerts".to_owned(), load(&w.alerts)),
            ("store_failures".to_owned(), load(&w.failures)),
        ]);
        let mut problems = Vec::new();
        let mut components = vec![collector.clone()];
        components.extend(self.sinks(&mut counters, &mut problems));
        let state = match (link.state(), collector.state()) {
            (LinkState::Starting, _) if load(&link.restarts) == 0 => {
                problems.insert(0, "starting the collector".to_owned());
                HealthState::Starting
            }
            (LinkState::Connected, HealthState::Healthy) if problems.is_empty() => {
                HealthState::Healthy
            }
            (LinkState::Connected, s) => {
                if s != HealthState::Healthy {
                    problems.insert(0, format!("collector {}", state_name(s)));
                }
                HealthState::Degraded
            }
            _ => {
                problems.insert(0, format!("collector down: {}", link.last_error()));
                HealthState::Degraded
            }
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

/// One sink's component: degraded with `message` when it has one; its
/// failures (`lost`) also go into the agent's `counters`, its `problem`
/// into the agent's message.
fn sink_component<const N: usize>(
    name: &str,
    lost: u64,
    message: Option<String>,
    problem: Option<String>,
    own: [(&str, u64); N],
    counters: &mut BTreeMap<String, u64>,
    problems: &mut Vec<String>,
) -> ComponentHealth {
    counters.insert(format!("sink.{name}.failures"), lost);
    problems.extend(problem);
    ComponentHealth {
        name: format!("sink:{name}"),
        state: if message.is_some() {
            HealthState::Degraded
        } else {
            HealthState::Healthy
        }
        .into(),
        message: message.unwrap_or_default(),
        counters: own.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ..ComponentHealth::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn health(link: Arc<LinkStatus>, sink: Arc<SinkCounters>) -> AgentHealth {
        AgentHealth {
            started: Instant::now(),
            link,
            collector_socket: "/nonexistent/collector.sock".into(),
            writer: Arc::default(),
            counters: Arc::default(),
            sinks: vec![("stdout", sink)],
            webhook: None,
            rules_loaded: 10,
            rules_refused: 1,
        }
    }

    #[tokio::test]
    async fn the_verdict_follows_the_collector_and_the_sinks() {
        let link = Arc::new(LinkStatus::default());
        let sink = Arc::new(SinkCounters::default());
        let h = health(link.clone(), sink.clone());

        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Starting);
        assert_eq!(r.counters["rules_refused"], 1);
        assert_eq!(r.components[0].state(), HealthState::Unreachable);

        // Lost, restarting: degraded, and why.
        link.restarts.fetch_add(1, Ordering::Relaxed);
        link.set_error("collector exited: signal 9".to_owned());
        link.set_state(LinkState::Restarting);
        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Degraded);
        assert!(r.message.contains("signal 9"), "{}", r.message);
        assert_eq!(r.counters["collector_restarts"], 1);

        // Connected, but its socket does not answer: degraded, collector
        // unreachable, and a failing sink is named.
        link.set_state(LinkState::Connected);
        sink.record(false);
        let r = h.report().await;
        assert_eq!(r.state(), HealthState::Degraded);
        assert_eq!(r.components[0].state(), HealthState::Unreachable);
        assert!(r.message.contains("sink stdout failing"), "{}", r.message);
        let stdout = r
            .components
            .iter()
            .find(|c| c.name == "sink:stdout")
            .unwrap();
        assert_eq!(stdout.counters["failures"], 1);
        // A success clears the sink's failing state, not its count.
        sink.record(true);
        let r = h.report().await;
        assert!(!r.message.contains("sink stdout"), "{}", r.message);
        assert_eq!(r.counters["sink.stdout.failures"], 1);
    }
}
