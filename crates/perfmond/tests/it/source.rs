//! The source in the collector-core runtime and its conformance kit.

use std::sync::Arc;
use std::time::Duration;

use collector_core::testing::{check_source, ConformanceConfig, Running};
use collector_core::{
    CollectionEvent, EventKind, PerformanceAnomalyKind, PerformanceMetric, PerformanceUnit,
};
use perfmond::{AnomalyConfig, PerfmondConfig, PerfmondSource};

use crate::Spawned;

fn fast() -> PerfmondConfig {
    PerfmondConfig {
        interval: Duration::from_millis(200),
        ..PerfmondConfig::default()
    }
}

#[tokio::test]
async fn the_source_passes_the_conformance_kit() {
    let source = PerfmondSource::new(fast()).unwrap();
    let counters = source.counters();
    // Two samples at least: the second has rates.
    let config = ConformanceConfig::wanting(60, Duration::from_secs(10));
    let report = check_source(Arc::new(source), &config).await.unwrap();
    assert_eq!(report.kinds(), [EventKind::Performance]);
    let names: Vec<&str> = report
        .sample
        .iter()
        .filter_map(|e| match e {
            CollectionEvent::Performance(p) => Some(p.metric.as_str()),
            _ => None,
        })
        .collect();
    for want in [
        "memory.available",
        "load.avg1",
        "processes.running",
        "collector.sample_ms",
    ] {
        assert!(names.contains(&want), "no {want} in {names:?}");
    }
    for e in &report.sample {
        assert_eq!(e.validate(), Ok(()), "{e:?}");
    }
    assert!(counters.sampler.samples.get() >= 1);
    assert_eq!(counters.poll.polls_failed.get(), 0);
    // The same counters, as /metrics names them.
    let registry = collector_core::Registry::new();
    counters.register_metrics(&registry);
    let source = [("source", "perfmond")];
    assert_eq!(
        registry.value("daemoneye_collection_cycles_total", &source),
        Some(counters.sampler.samples.get())
    );
    assert_eq!(
        registry.value("daemoneye_events_emitted_total", &source),
        Some(u64::try_from(report.events()).unwrap())
    );
}

/// Through the runtime: the busy child's anomaly is an event a subscriber
/// (the agent's rules, later) sees, with the child's process key.
#[tokio::test]
async fn a_subscriber_sees_the_busy_childs_anomaly_and_top_sample() {
    let child = Spawned::busy();
    let pid = child.pid();
    let config = PerfmondConfig {
        interval: Duration::from_millis(500),
        anomalies: AnomalyConfig {
            sustained_cpu_percent: 25.0,
            sustained_cpu_for: Duration::from_secs(2),
            ..AnomalyConfig::default()
        },
        ..PerfmondConfig::default()
    };
    let mut running = Running::start(Box::new(PerfmondSource::new(config).unwrap())).unwrap();
    // The child's CPU share: an observation, or (once it held long
    // enough) the anomaly.
    let is = |e: &CollectionEvent, judged: bool| {
        matches!(e, CollectionEvent::Performance(p)
            if p.metric == PerformanceMetric::ProcessCpu
                && p.pid() == Some(pid)
                && p.anomaly.is_some() == judged)
    };
    let limit = Duration::from_secs(30);
    let top = running
        .wait_for(limit, |e| is(e, false))
        .await
        .expect("the child never in the top 10");
    let anomaly = running
        .wait_for(limit, |e| is(e, true))
        .await
        .expect("no anomaly for the child");
    for e in [&top, &anomaly] {
        let CollectionEvent::Performance(p) = e else {
            unreachable!()
        };
        let key = p.process_key().expect("a process key");
        assert_eq!((key.pid, key.start_ticks), (pid, child.start_ticks()));
        assert_eq!(p.unit(), PerformanceUnit::Percent);
    }
    let CollectionEvent::Performance(p) = anomaly else {
        unreachable!()
    };
    let a = p.anomaly.as_deref().expect("judged");
    assert_eq!(
        (a.kind, a.threshold),
        (PerformanceAnomalyKind::SustainedCpu, 25.0)
    );
    assert!(a.duration >= Duration::from_secs(2), "{a:?}");
    assert!(p.value >= 25.0, "{p:?}");
    running.stop().await.unwrap();
}

#[test]
fn bad_settings_are_refused_before_anything_runs() {
    let e = PerfmondSource::new(PerfmondConfig {
        interval: Duration::from_millis(1),
        ..PerfmondConfig::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("interval"), "{e}");
    let text = "interval = \"5s\"\n[anomalies]\nsustained_cpu_percent = 80.0\nsustained_cpu_for = \"2m\"\n";
    let c: PerfmondConfig = toml::from_str(text).unwrap();
    assert_eq!(c.anomalies.sustained_cpu_for, Duration::from_secs(120));
    assert!(toml::from_str::<PerfmondConfig>("intervall = \"5s\"").is_err());
}

/// A fork storm the test starts raises the fork-rate anomaly (from
/// `/proc/stat`'s `processes`), well above this host's background rate.
#[tokio::test]
async fn a_fork_storm_raises_the_fork_rate_anomaly() {
    let _storm = Spawned::forking();
    let config = PerfmondConfig {
        interval: Duration::from_millis(500),
        anomalies: AnomalyConfig {
            fork_rate_per_second: 100.0,
            ..AnomalyConfig::default()
        },
        ..PerfmondConfig::default()
    };
    let mut running = Running::start(Box::new(PerfmondSource::new(config).unwrap())).unwrap();
    let anomaly = running
        .wait_for(Duration::from_secs(20), |e| {
            matches!(e, CollectionEvent::Performance(p)
                if p.anomaly.as_ref().is_some_and(|a| a.kind == PerformanceAnomalyKind::ForkRate))
        })
        .await
        .expect("no fork-rate anomaly within 20 s");
    let CollectionEvent::Performance(p) = anomaly else {
        unreachable!()
    };
    assert!(p.value > 100.0, "{p:?}");
    assert_eq!(
        (p.metric, p.pid(), p.unit()),
        (
            PerformanceMetric::ForkRate,
            None,
            PerformanceUnit::PerSecond
        )
    );
    running.stop().await.unwrap();
}
