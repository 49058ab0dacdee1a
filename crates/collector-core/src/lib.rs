//! A reusable framework for host-monitoring collectors.
//!
//! - [`EventSource`]: the one trait a collector implements (`start`, `stop`,
//!   `health_check`), declaring its [`SourceCaps`].
//! - [`Collector`]: the runtime. It runs each source in its own task, takes
//!   its events through a bounded intake queue, validates and batches them,
//!   and fans them out to [`Subscription`]s with a [`WhenFull`] policy; it
//!   checks health every interval and shuts down within a deadline.
//! - [`CollectionEvent`]: the event model (process, network, filesystem,
//!   performance, trigger requests).
//! - [`CollectorConfig`]: builders and TOML, validated before anything starts.
//! - [`CollectorStats`] and [`HealthReport`]: what every stage received,
//!   delivered and dropped (by reason), and the process's real CPU and RSS.
//! - [`metrics`]: the one counter type ([`metrics::Counter`], and
//!   [`metrics::Gauge`]) behind every stats snapshot, and the [`Registry`]
//!   naming them for Prometheus ([`CollectorHandle::metrics`]); with the
//!   `metrics-server` feature, `metrics::serve` answers `GET /metrics`.
//! - `serve` (feature `serve`): a collector run as a binary, the same for
//!   every collector: its shared flags, the IPC socket, JSON lines,
//!   `--metrics-listen`, signals and graceful shutdown, exit codes.
//! - [`SourceContext`]: what a source is started with
//!   ([`EventSource::start_with`]): its name, its sender and an awaitable
//!   shutdown token beside the reference API's flag.
//! - [`procfs`]: the pure parsers of `/proc` every collector shares
//!   (`/proc/<pid>/stat` and `status`, the boot time, clock ticks).
//! - `ebpf` (feature `ebpf`): the eBPF loader procmond and netmond share:
//!   a CO-RE object loaded and attached, its ring buffer read and its
//!   per-CPU drop counters kept, failures told apart for tier fallback.
//! - [`testing`]: a conformance check for any `EventSource`.
//! - [`bus`]: [`EventFilter`] (kind, pid, source, topic patterns), used by
//!   filtered subscriptions and the IPC event stream.
//!
//! With the `triggers` feature (off by default; no binary of the workspace
//! uses it yet):
//! - [`bus`] adds `EventBus` and `LocalEventBus`, publish/subscribe of
//!   `BusEvent`s with correlation metadata and `CorrelationFilter`; every
//!   `Collector` publishes into its own bus.
//! - `trigger`: `TriggerManager` turns process events that match
//!   `TriggerCondition`s into trigger requests for analysis collectors.
//! - `chain`: `AnalysisChainCoordinator` runs multi-stage analysis
//!   workflows through those collectors.
//!
//! ```
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//!
//! use async_trait::async_trait;
//! use collector_core::{
//!     CollectionEvent, Collector, CollectorConfig, EventSource, PerformanceEvent,
//!     PerformanceMetric, PerformanceSubject, SourceCaps,
//! };
//! use tokio::sync::mpsc;
//!
//! struct Counter;
//!
//! #[async_trait]
//! impl EventSource for Counter {
//!     fn name(&self) -> &'static str {
//!         "counter"
//!     }
//!     fn capabilities(&self) -> SourceCaps {
//!         SourceCaps::PERFORMANCE
//!     }
//!     async fn start(
//!         &self,
//!         tx: mpsc::Sender<CollectionEvent>,
//!         shutdown: Arc<AtomicBool>,
//!     ) -> anyhow::Result<()> {
//!         for i in 0..3 {
//!             if shutdown.load(Ordering::Relaxed) {
//!                 break;
//!             }
//!             let event = PerformanceEvent::new(
//!                 PerformanceMetric::ProcsRunning,
//!                 f64::from(i),
//!                 PerformanceSubject::Host,
//!                 std::time::SystemTime::now(),
//!             ); // the runtime names it
//!             tx.send(CollectionEvent::Performance(event)).await?;
//!         }
//!         Ok(()) // the runtime shuts down once every source has ended
//!     }
//!     async fn stop(&self) -> anyhow::Result<()> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let mut collector = Collector::new(CollectorConfig::default());
//! collector.register(Box::new(Counter))?;
//! let mut events = collector.handle().subscribe();
//! collector.run_until(std::future::pending()).await?;
//! let mut seen = 0;
//! while let Some(event) = events.recv().await {
//!     assert_eq!(event.kind(), collector_core::EventKind::Performance);
//!     seen += 1;
//! }
//! assert_eq!(seen, 3);
//! # Ok(())
//! # }
//! ```

#[macro_use]
mod common;

pub mod anomaly;

pub mod bus;
#[cfg(feature = "triggers")]
pub mod chain;
pub mod config;
#[cfg(feature = "ebpf")]
pub mod ebpf;
pub mod event;
pub mod health;
pub mod ipc;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod poll;
pub mod procfs;
pub mod runtime;
#[cfg(feature = "serve")]
pub mod serve;
pub mod source;
pub mod subscription;
pub mod sys;
pub mod telemetry;
pub mod testing;
#[cfg(feature = "triggers")]
pub mod trigger;
pub mod vocabulary;

#[cfg(feature = "triggers")]
pub use bus::{
    BusError, BusEvent, BusStatistics, BusSubscription, CorrelationFilter, CorrelationMetadata,
    EventBus, EventBusConfig, LocalEventBus,
};
pub use bus::{EventFilter, FilterError, TopicPattern};
#[cfg(feature = "triggers")]
pub use chain::{
    AnalysisChainConfig, AnalysisChainCoordinator, AnalysisStage, AnalysisWorkflowDefinition,
    ChainError, ChainStatistics, StageDefinition, WorkflowResult, WorkflowState, WorkflowStatus,
};
/// Locks a mutex (or read- or write-locks an `RwLock`), also after a holder
/// panicked (the one way every crate takes such a lock: what a collector
/// keeps behind one is consistent between statements).
pub use common::{lock, read, write};
pub use config::{CollectorConfig, ConfigError, WhenFull};
pub use event::{
    AddressFamily, AnalysisType, BootId, CaptureTier, CollectionEvent, ConnectionChange,
    ConnectionDirection, ConnectionState, EventHeader, EventId, EventKind, EventValidationError,
    FileOperation, FileType, FilesystemEvent, HashAlgorithm, LifecycleDetail, NetworkEvent,
    NetworkProtocol, ObservedBy, PerformanceAnomaly, PerformanceAnomalyKind, PerformanceEvent,
    PerformanceMetric, PerformanceSubject, PerformanceSubjectKind, PerformanceUnit, ProcessContext,
    ProcessEvent, ProcessEventType, ProcessField, ProcessKey, PsiResource, ReadDepth,
    StartTimeAnomaly, TriggerPriority, TriggerRequest,
};
pub use health::{HealthReport, HealthStatus, SourceHealth};
pub use ipc::{
    CollectorIpcClient, CollectorIpcServer, IpcClientConfig, IpcError, IpcServerConfig,
    IpcServerHandle, IpcServerStats,
};
pub use metrics::{Counter, Gauge, Registry};
pub use monitor::{MonitorCollector, MonitorCollectorConfig, MonitorCollectorStats};
pub use runtime::{Collector, CollectorError, CollectorHandle};
pub use source::{EventSource, SourceCaps, SourceContext};
pub use subscription::{EventBatch, Subscription};
pub use telemetry::{CollectorStats, ProcessResources, SourceStats, SubscriberStats};
#[cfg(feature = "triggers")]
pub use trigger::{
    ConditionType, KnownGoodHash, ParentChildRule, SqlCondition, SqlError, TriggerCapabilities,
    TriggerCondition, TriggerConfig, TriggerError, TriggerManager, TriggerResourceLimits,
    TriggerStatistics,
};

/// The crate README's examples (the reference README's "Configuration",
/// "Event Types" and "Capabilities"), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
