//! Health over IPC: a collector's runtime health and counters as a
//! [`ComponentHealth`], and the IPC server's own counters as one of its
//! components.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use daemoneye_lib::proto::{ComponentHealth, HealthState};

use crate::health::{HealthStatus, SourceHealth};
use crate::ipc::IpcServerStats;
use crate::runtime::CollectorHandle;

/// What a health provider given to
/// [`CollectorIpcServer::with_health`](crate::CollectorIpcServer::with_health)
/// returns.
pub type HealthFuture = Pin<Box<dyn Future<Output = ComponentHealth> + Send>>;

/// The protocol's state of a runtime verdict.
pub const fn status_state(status: HealthStatus) -> HealthState {
    match status {
        HealthStatus::Healthy => HealthState::Healthy,
        HealthStatus::Degraded => HealthState::Degraded,
        HealthStatus::Unhealthy => HealthState::Unhealthy,
    }
}

/// The protocol's state of one source, and why when it is not healthy.
pub fn source_state(health: &SourceHealth) -> (HealthState, String) {
    match health {
        SourceHealth::Starting => (HealthState::Starting, String::new()),
        SourceHealth::Healthy => (HealthState::Healthy, String::new()),
        SourceHealth::Completed => (HealthState::Healthy, "completed".to_owned()),
        SourceHealth::Degraded(why) => (HealthState::Degraded, why.clone()),
        SourceHealth::Failed(why) => (HealthState::Unhealthy, format!("failed: {why}")),
        SourceHealth::Stopped => (HealthState::Unhealthy, "stopped".to_owned()),
        SourceHealth::Aborted => (HealthState::Unhealthy, "aborted at shutdown".to_owned()),
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The health of the collector behind `handle`, named `name`: the runtime's
/// verdict and counters (events received, accepted, dropped; the process's
/// CPU time and memory), one component per source with its own counters.
pub fn collector_health(name: &str, handle: &CollectorHandle) -> ComponentHealth {
    let health = handle.health();
    let stats = handle.stats();
    let mut counters = BTreeMap::from([
        ("events_received".to_owned(), stats.events_received_total()),
        ("events_accepted".to_owned(), stats.events_accepted_total()),
        ("events_dropped".to_owned(), stats.events_dropped_total()),
        ("events_unrouted".to_owned(), stats.events_unrouted_total),
        ("sources_failed".to_owned(), stats.sources_failed_total),
        ("subscribers".to_owned(), stats.subscribers.len() as u64),
    ]);
    if let Some(p) = &stats.process {
        counters.insert("cpu_time_ms".to_owned(), millis(p.cpu_time));
        counters.insert("rss_bytes".to_owned(), p.rss_bytes);
        counters.insert("peak_rss_bytes".to_owned(), p.peak_rss_bytes);
        counters.insert("threads".to_owned(), p.threads);
    }
    let components = stats
        .sources
        .iter()
        .map(|s| {
            let (state, message) = source_state(&s.health);
            ComponentHealth {
                name: s.name.to_owned(),
                state: state.into(),
                message,
                counters: BTreeMap::from([
                    ("events_received".to_owned(), s.events_received),
                    ("events_accepted".to_owned(), s.events_accepted),
                    (
                        "events_rejected_invalid".to_owned(),
                        s.events_rejected_invalid,
                    ),
                    ("errors".to_owned(), s.errors_total),
                    (
                        "health_checks_failed".to_owned(),
                        s.health_checks_failed_total,
                    ),
                    ("backpressure".to_owned(), s.backpressure_total),
                ]),
                ..ComponentHealth::default()
            }
        })
        .collect();
    let message = if health.status == HealthStatus::Healthy {
        String::new()
    } else {
        let bad: Vec<String> = health
            .sources
            .iter()
            .filter(|(_, h)| !matches!(h, SourceHealth::Healthy | SourceHealth::Starting))
            .map(|(n, h)| format!("{n}: {}", source_state(h).1))
            .collect();
        bad.join("; ")
    };
    ComponentHealth {
        name: name.to_owned(),
        state: status_state(health.status).into(),
        message,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_ms: millis(stats.uptime),
        counters,
        components,
    }
}

/// The IPC server's counters as a component named `ipc`: every counter of
/// [`IpcServerStats`] under its field name, rejected frames as
/// `frames_rejected.<reason>`.
pub(crate) fn ipc_component(stats: &IpcServerStats) -> ComponentHealth {
    let mut counters = BTreeMap::new();
    // Through serde, so that a counter added to the stats is reported
    // without a second list to keep in step.
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(stats) {
        for (name, value) in fields {
            match value {
                serde_json::Value::Number(n) => {
                    if let Some(n) = n.as_u64() {
                        counters.insert(name, n);
                    }
                }
                serde_json::Value::Object(by_reason) => {
                    for (reason, n) in by_reason {
                        if let Some(n) = n.as_u64() {
                            counters.insert(format!("{name}.{reason}"), n);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    ComponentHealth {
        name: "ipc".to_owned(),
        state: HealthState::Healthy.into(),
        counters,
        ..ComponentHealth::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ipc_counter_is_reported() {
        let mut stats = IpcServerStats {
            connections_accepted: 3,
            events_dropped: 7,
            ..IpcServerStats::default()
        };
        stats.frames_rejected.insert("bad_checksum", 2);
        let c = ipc_component(&stats);
        assert_eq!(c.counters.get("connections_accepted"), Some(&3));
        assert_eq!(c.counters.get("events_dropped"), Some(&7));
        assert_eq!(c.counters.get("frames_rejected.bad_checksum"), Some(&2));
        assert_eq!(c.counters.get("tasks_received"), Some(&0));
        // One entry per numeric field (26 today) plus one per reason: a
        // field that stopped being reported would lower the count.
        assert!(c.counters.len() >= 27, "{}", c.counters.len());
    }

    #[test]
    fn source_states_say_why() {
        let (s, m) = source_state(&SourceHealth::Failed("netlink refused".into()));
        assert_eq!(s, HealthState::Unhealthy);
        assert!(m.contains("netlink refused"));
        assert_eq!(source_state(&SourceHealth::Healthy).0, HealthState::Healthy);
    }
}
