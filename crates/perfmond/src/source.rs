//! [`PerfmondSource`]: the [`Sampler`] as an [`EventSource`] of the
//! collector-core runtime, sampling every [`PerfmondConfig::interval`].
//!
//! The loop is collector-core's [`Polled`]: each sample runs on Tokio's
//! blocking pool (it reads files), events go out with the runtime's
//! backpressure, shutdown ends it between and during sends, and a failed
//! sample is counted and reported by health until one succeeds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use collector_core::lock;
use collector_core::metrics::Registry;
use collector_core::poll::{Poll, PollCounters, Polled};
use collector_core::source::{start_from_flag, EventSender, ShutdownFlag};
use collector_core::{
    CollectionEvent, EventSource, PerformanceEvent, PerformanceMetric, PerformanceSubject,
    SourceCaps, SourceContext,
};
use serde::{Deserialize, Serialize};

use crate::anomaly::AnomalyConfig;
use crate::metric::event;
use crate::sampler::{Sampler, SamplerConfig, SamplerCounters};

/// Everything perfmond's source needs (the `[perfmond]` section of
/// `perfmond run --config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerfmondConfig {
    /// Time between samples.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// What is sampled.
    pub sampler: SamplerConfig,
    /// The anomalies' thresholds.
    pub anomalies: AnomalyConfig,
}

impl Default for PerfmondConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            sampler: SamplerConfig::default(),
            anomalies: AnomalyConfig::default(),
        }
    }
}

impl PerfmondConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`collector_core::ConfigError::Invalid`] naming the bad field.
    pub fn validate(&self) -> Result<(), collector_core::ConfigError> {
        collector_core::poll::validate_interval(self.interval)?;
        self.sampler.validate()?;
        self.anomalies.validate()
    }
}

/// The source's counters: the sampler's, and what left for the runtime.
#[derive(Debug, Clone, Default)]
pub struct PerfmondCounters {
    /// The loop's: samples taken, samples that failed as a whole
    /// (`polls_failed`: the process directory unlistable), events sent
    /// (`emitted`).
    pub poll: PollCounters,
    /// The sampler's.
    pub sampler: SamplerCounters,
}

impl PerfmondCounters {
    /// Registers every counter under `daemoneye_*{source="perfmond"}`.
    pub fn register_metrics(&self, registry: &Registry) {
        let s = &self.sampler;
        registry.register_counters(
            &[("source", "perfmond")],
            &[
                (
                    "daemoneye_collection_cycles_total",
                    "Full collections (samples) completed.",
                    &s.samples,
                ),
                (
                    "daemoneye_collections_failed_total",
                    "Full collections (samples) that failed.",
                    &self.poll.polls_failed,
                ),
                (
                    "daemoneye_events_emitted_total",
                    "Events a source sent to the runtime.",
                    &self.poll.emitted,
                ),
                (
                    "daemoneye_anomalies_reported_total",
                    "Performance anomalies reported.",
                    &s.anomalies,
                ),
                (
                    "daemoneye_process_reads_unchanged_total",
                    "Process reads answered from the last one: the process had not run since.",
                    &s.unchanged,
                ),
                (
                    "daemoneye_processes_exited_total",
                    "Processes gone from the sampled table since the previous sample.",
                    &s.exited,
                ),
                (
                    "daemoneye_items_skipped_total",
                    "Processes, cgroups and devices over their configured limit, not read.",
                    &s.skipped,
                ),
            ],
        );
        registry.register_by_reason(
            "daemoneye_reads_failed_total",
            "Kernel files a sampler could not read or parse, by reason.",
            &[("source", "perfmond")],
            [
                ("host_file", &s.read_errors),
                ("process_vanished", &s.vanished),
                ("process_unreadable", &s.unreadable),
            ],
        );
        registry.register_gauge(
            "daemoneye_pressure_files_absent",
            "Pressure stall files (cpu, memory, io) the kernel does not have: not sampled.",
            &[("source", "perfmond")],
            &s.psi_absent,
        );
    }
}

/// The events of the latest sample, for answering
/// `COLLECT_PERFORMANCE_METRICS` tasks between samples. Cheap to clone
/// (clones share it).
#[derive(Debug, Clone, Default)]
pub struct LatestSample(Arc<Mutex<Arc<[PerformanceEvent]>>>);

impl LatestSample {
    /// The latest sample's events (empty before the first).
    pub fn get(&self) -> Arc<[PerformanceEvent]> {
        lock(&self.0).clone()
    }

    fn set(&self, events: &[PerformanceEvent]) {
        *lock(&self.0) = events.into();
    }
}

/// The sampler as a [`Poll`]: one sample, the time it took, and the
/// latest sample kept for the IPC task handler.
struct SamplerPoll {
    sampler: Sampler,
    latest: LatestSample,
    buf: Vec<PerformanceEvent>,
}

impl Poll for SamplerPoll {
    fn poll(&mut self, out: &mut Vec<CollectionEvent>) -> anyhow::Result<()> {
        let started = tokio::time::Instant::now();
        self.buf.clear();
        let report = self.sampler.sample(&mut self.buf);
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.buf.extend(event(
            PerformanceMetric::SampleMs,
            ms,
            PerformanceSubject::Collector,
            std::time::SystemTime::now(),
        ));
        self.latest.set(&self.buf);
        out.extend(self.buf.drain(..).map(CollectionEvent::Performance));
        let r = report.context("the sample failed")?;
        tracing::debug!(processes = r.scan.processes, events = r.events, "sampled");
        Ok(())
    }
}

/// The performance collector. See the [module docs](self).
pub struct PerfmondSource {
    config: PerfmondConfig,
    counters: PerfmondCounters,
    latest: LatestSample,
    polled: Polled<SamplerPoll>,
}

collector_core::debug_fields!(PerfmondSource { config });

/// The source's name, in logs, metrics and health.
pub const NAME: &str = "perfmond";

impl PerfmondSource {
    /// A source with `config`, validated.
    ///
    /// # Errors
    /// [`collector_core::ConfigError::Invalid`] naming a bad field.
    pub fn new(config: PerfmondConfig) -> Result<Self, collector_core::ConfigError> {
        config.validate()?;
        let counters = PerfmondCounters::default();
        let latest = LatestSample::default();
        let poll = SamplerPoll {
            sampler: Sampler::new(
                config.sampler.clone(),
                config.anomalies.clone(),
                counters.sampler.clone(),
            ),
            latest: latest.clone(),
            buf: Vec::new(),
        };
        let polled = Polled::new(
            NAME,
            SourceCaps::PERFORMANCE | SourceCaps::SYSTEM_WIDE,
            config.interval,
            poll,
        )
        .with_counters(counters.poll.clone());
        Ok(Self {
            config,
            counters,
            latest,
            polled,
        })
    }

    /// The counters (shared: clones see the same values).
    pub fn counters(&self) -> PerfmondCounters {
        self.counters.clone()
    }

    /// The latest sample (shared: it follows the running source).
    pub fn latest(&self) -> LatestSample {
        self.latest.clone()
    }

    /// Registers the counters for `/metrics`.
    pub fn register_metrics(&self, registry: &Registry) {
        self.counters.register_metrics(registry);
    }
}

/// [`Polled`] does the looking; this names it perfmond.
#[async_trait]
impl EventSource for PerfmondSource {
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        self.polled.start_with(ctx).await
    }

    async fn start(&self, tx: EventSender, flag: ShutdownFlag) -> anyhow::Result<()> {
        start_from_flag(self, tx, flag).await
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> SourceCaps {
        self.polled.capabilities()
    }

    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn health_check(&self) -> anyhow::Result<()> {
        self.polled.health_check().await
    }
}
