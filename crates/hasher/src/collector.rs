//! The binary-hasher analysis collector: answers `BinaryHash` trigger
//! requests on an event bus with the [`HashEngine`].
//!
//! # How results flow back
//! The collector subscribes to trigger requests addressed to it
//! (`EventFilter::with_target_collector`). For each, it hashes the request's
//! `target_path` (or the resolved `/proc/<pid>/exe` when only a pid is
//! given) and publishes one answer on the same bus: a
//! [`FilesystemEvent`] (`operation: access`, the path, size, first digest
//! and its algorithm) whose correlation metadata is a *child* of the
//! request's (parent id = the request's correlation id, same root and
//! workflow stage), tagged `analysis_result` and `binary_hash`; further
//! digests ride along as `<algorithm>=<hex>` tags, and a file that changed
//! while it was read is tagged `changed_during_hash`. A failure is answered
//! too, tagged `analysis_failed` and `error=<reason>` (`not_found`,
//! `too_large`, ...). So [`BusDispatcher`](collector_core::chain::BusDispatcher)
//! (analysis chains) and [`TriggerManager::complete_by_correlation`](collector_core::TriggerManager::complete_by_correlation)
//! (trigger completion) find the answer by its parent correlation id.
//!
//! ```
//! use collector_core::chain::BusDispatcher;
//! use collector_core::{
//!     AnalysisChainConfig, AnalysisChainCoordinator, AnalysisWorkflowDefinition, EventBusConfig,
//!     LocalEventBus, StageDefinition, AnalysisStage, AnalysisType,
//! };
//! use daemoneye_hasher::{BinaryHasherCollector, HashEngine, HasherConfig, BINARY_HASHER_ID};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let tool = dir.path().join("tool");
//! std::fs::write(&tool, b"abc")?;
//!
//! let bus = LocalEventBus::new(EventBusConfig::default()).await?;
//! bus.start().await?;
//! let hasher = BinaryHasherCollector::new(HashEngine::new(HasherConfig::default())?, bus.clone());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let task = tokio::spawn({
//!     let (hasher, shutdown) = (hasher.clone(), shutdown.clone());
//!     async move { hasher.run(shutdown).await }
//! });
//! hasher.ready().await;
//!
//! let chain = AnalysisChainCoordinator::new(AnalysisChainConfig::default())?
//!     .with_dispatcher(Arc::new(BusDispatcher::new(bus.clone())));
//! let result = chain
//!     .execute_workflow(
//!         AnalysisWorkflowDefinition::new()
//!             .with_target_path(tool.to_string_lossy())
//!             .with_stage(StageDefinition::new(
//!                 "hash", AnalysisStage::Collection, BINARY_HASHER_ID, AnalysisType::BinaryHash,
//!             )),
//!     )
//!     .await?;
//! let answer = result.stages[0].output.as_ref().and_then(|o| o.event.clone());
//! match answer {
//!     Some(collector_core::CollectionEvent::Filesystem(f)) => assert_eq!(
//!         f.file_hash.as_deref(),
//!         Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
//!     ),
//!     other => panic!("{other:?}"),
//! }
//! shutdown.cancel();
//! task.await??;
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use collector_core::chain::{FAILED_TAG, RESULT_TAG};
use collector_core::metrics::{Counter, Registry};
use collector_core::source::{start_from_flag, ShutdownFlag};
use collector_core::{
    AnalysisType, BusError, BusEvent, CollectionEvent, ConditionType, EventBus, EventFilter,
    EventKind, EventSource, FileOperation, FilesystemEvent, LocalEventBus, SourceCaps,
    SourceContext, TriggerCapabilities, TriggerPriority, TriggerRequest, TriggerResourceLimits,
};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{HashEngine, HashError};

/// The collector id the binary hasher answers to.
pub const BINARY_HASHER_ID: &str = "binary-hasher";

/// What the collector has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BinaryHasherStats {
    /// Requests received.
    pub requests_received: u64,
    /// Requests answered with digests.
    pub requests_hashed: u64,
    /// Requests answered with a failure.
    pub requests_failed: u64,
    /// Requests ignored (another analysis type).
    pub requests_ignored: u64,
    /// Answers that could not be published.
    pub publish_errors: u64,
}

#[derive(Default)]
struct Counters {
    received: Counter,
    hashed: Counter,
    failed: Counter,
    ignored: Counter,
    publish_errors: Counter,
}

/// Answers `BinaryHash` trigger requests on a bus (see the [module docs](self)).
/// Cheap to clone.
#[derive(Clone)]
pub struct BinaryHasherCollector {
    engine: HashEngine,
    bus: LocalEventBus,
    counters: Arc<Counters>,
    subscribed: Arc<(AtomicBool, Notify)>,
    stop: CancellationToken,
}

collector_core::debug_fields!(BinaryHasherCollector {});

impl BinaryHasherCollector {
    /// A collector hashing with `engine`, answering on `bus`.
    pub fn new(engine: HashEngine, bus: LocalEventBus) -> Self {
        Self {
            engine,
            bus,
            counters: Arc::default(),
            subscribed: Arc::default(),
            stop: CancellationToken::new(),
        }
    }

    /// What to register with a `TriggerManager`.
    pub fn capabilities(&self) -> TriggerCapabilities {
        use TriggerPriority::{Critical, High, Low, Normal};
        TriggerCapabilities {
            collector_id: BINARY_HASHER_ID.to_owned(),
            supported_conditions: ConditionType::every_kind(),
            supported_analysis: vec![AnalysisType::BinaryHash],
            max_trigger_rate: 100,
            max_concurrent_analysis: 4,
            supported_priorities: vec![Low, Normal, High, Critical],
            resource_limits: TriggerResourceLimits::default(),
        }
    }

    /// Resolves once [`run`](Self::run) has subscribed (requests published
    /// after that are seen).
    pub async fn ready(&self) {
        let (flag, notify) = &*self.subscribed;
        loop {
            let notified = notify.notified();
            if flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The counters.
    pub fn stats(&self) -> BinaryHasherStats {
        let c = &self.counters;
        BinaryHasherStats {
            requests_received: c.received.get(),
            requests_hashed: c.hashed.get(),
            requests_failed: c.failed.get(),
            requests_ignored: c.ignored.get(),
            publish_errors: c.publish_errors.get(),
        }
    }

    /// Registers the collector's counters in `registry` (label
    /// `collector="binary-hasher"`); the engine's are registered apart
    /// ([`HashEngine::register_metrics`]). Call it once per registry.
    pub fn register_metrics(&self, registry: &Registry) {
        let c = &self.counters;
        let label = [("collector", BINARY_HASHER_ID)];
        registry.register_counters(
            &label,
            &[
                (
                    "daemoneye_analysis_requests_received_total",
                    "Analysis requests received.",
                    &c.received,
                ),
                (
                    "daemoneye_analysis_requests_answered_total",
                    "Analysis requests answered with a result.",
                    &c.hashed,
                ),
                (
                    "daemoneye_analysis_requests_failed_total",
                    "Analysis requests answered with a failure.",
                    &c.failed,
                ),
                (
                    "daemoneye_analysis_requests_ignored_total",
                    "Analysis requests ignored (another analysis type).",
                    &c.ignored,
                ),
                (
                    "daemoneye_analysis_publishes_failed_total",
                    "Analysis answers that could not be published.",
                    &c.publish_errors,
                ),
            ],
        );
    }

    /// Answers requests until `shutdown` (or [`EventSource::stop`]) or the
    /// bus shuts down. Requests are answered one at a time: the engine's
    /// byte budget bounds the CPU either way.
    ///
    /// # Errors
    /// [`BusError`] when the subscription cannot be made.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), BusError> {
        let mut requests = self
            .bus
            .subscribe(
                EventFilter::new()
                    .with_event_type(EventKind::TriggerRequest)
                    .with_target_collector(BINARY_HASHER_ID),
            )
            .await?;
        let (flag, notify) = &*self.subscribed;
        flag.store(true, Ordering::Release);
        notify.notify_waiters();
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.stop.cancelled() => break,
                next = requests.recv() => next,
            };
            let Some(request) = next else { break };
            self.answer(&request).await;
        }
        let _ = self.bus.unsubscribe(requests.id()).await;
        Ok(())
    }

    /// Hashes what `request` names and publishes the answer.
    pub async fn answer(&self, request: &BusEvent) {
        let CollectionEvent::TriggerRequest(req) = &request.event else {
            return;
        };
        self.counters.received.inc();
        if req.analysis_type != AnalysisType::BinaryHash {
            self.counters.ignored.inc();
            debug!(trigger_id = %req.trigger_id, "not a binary hash request; ignored");
            return;
        }
        let mut correlation = request
            .correlation
            .child()
            .with_tag(RESULT_TAG)
            .with_tag("binary_hash");
        let (path, outcome) = match target_path(req) {
            Ok(path) => {
                let outcome = self.engine.hash_file(&path).await;
                (path, outcome)
            }
            Err(err) => (err.path().to_path_buf(), Err(err)),
        };
        let mut file = FilesystemEvent {
            pid: req.target_pid,
            ..FilesystemEvent::new(
                path.to_string_lossy(),
                FileOperation::Access,
                SystemTime::now(),
            )
        };
        if file.path.is_empty() {
            "?".clone_into(&mut file.path);
        }
        match outcome {
            Ok(outcome) => {
                self.counters.hashed.inc();
                file.size = Some(outcome.size);
                if let Some((first, rest)) = outcome.digests.split_first() {
                    file.file_hash = Some(first.hex.clone());
                    file.hash_algorithm = Some(first.algorithm);
                    for d in rest {
                        correlation =
                            correlation.with_tag(format!("{}={}", d.algorithm.as_str(), d.hex));
                    }
                }
                if outcome.changed_during_hash {
                    correlation = correlation.with_tag("changed_during_hash");
                }
            }
            Err(err) => {
                self.counters.failed.inc();
                debug!(trigger_id = %req.trigger_id, error = %err, "binary hash failed");
                correlation = correlation
                    .with_tag(FAILED_TAG)
                    .with_tag(format!("error={}", err.reason()));
            }
        }
        let answer = BusEvent::new(BINARY_HASHER_ID, CollectionEvent::Filesystem(file))
            .with_correlation(correlation);
        if let Err(err) = self.bus.publish(answer).await {
            self.counters.publish_errors.inc();
            warn!(trigger_id = %req.trigger_id, error = %err, "cannot publish a binary hash result");
        }
    }
}

/// The file to hash: the request's path, or what `/proc/<pid>/exe` points to.
fn target_path(req: &TriggerRequest) -> Result<PathBuf, HashError> {
    if let Some(p) = &req.target_path {
        return Ok(PathBuf::from(p));
    }
    let link = PathBuf::from(format!("/proc/{}/exe", req.target_pid.unwrap_or(0)));
    // One readlink(2) on procfs: not worth a blocking-pool hop.
    match std::fs::read_link(&link) {
        Ok(target) => Ok(target),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(HashError::PermissionDenied { path: link })
        }
        Err(_) => Err(HashError::ProcessGone { path: link }),
    }
}

/// As an [`EventSource`] the collector answers requests on its bus while the
/// runtime runs; it emits nothing through the runtime's channel (its answers
/// go to the bus with their correlation).
#[async_trait]
impl EventSource for BinaryHasherCollector {
    fn name(&self) -> &'static str {
        BINARY_HASHER_ID
    }

    fn capabilities(&self) -> SourceCaps {
        SourceCaps::FILESYSTEM
    }

    async fn start(
        &self,
        tx: mpsc::Sender<CollectionEvent>,
        shutdown: ShutdownFlag,
    ) -> anyhow::Result<()> {
        start_from_flag(self, tx, shutdown).await
    }

    /// Runs until the context's token is cancelled (or `stop`).
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        Ok(self.run(ctx.shutdown().clone()).await?)
    }

    async fn stop(&self) -> anyhow::Result<()> {
        self.stop.cancel();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::time::Duration;

    use collector_core::{
        CorrelationFilter, CorrelationMetadata, EventBusConfig, HashAlgorithm, ProcessEvent,
        TriggerCondition, TriggerConfig, TriggerManager,
    };

    use super::*;
    use crate::HasherConfig;

    /// Registers the hasher's capabilities with `manager` and a condition
    /// `id` that asks it for a binary hash, attaches `bus`, and subscribes
    /// to the hasher's answers there.
    async fn hash_on(
        manager: &TriggerManager,
        hasher: &BinaryHasherCollector,
        bus: &LocalEventBus,
        id: &str,
        condition_type: ConditionType,
    ) -> collector_core::BusSubscription {
        manager
            .register_collector_capabilities(hasher.capabilities())
            .unwrap();
        manager
            .register_condition(TriggerCondition {
                id: id.into(),
                description: format!("binary hash on {id}"),
                analysis_type: AnalysisType::BinaryHash,
                priority: TriggerPriority::High,
                target_collector: BINARY_HASHER_ID.into(),
                condition_type,
            })
            .unwrap();
        manager.attach_bus(bus.clone());
        let answers = CorrelationFilter::by_tag(RESULT_TAG);
        bus.subscribe(EventFilter::new().with_correlation_filter(answers))
            .await
            .unwrap()
    }

    /// A file `name` holding "abc" in a fresh directory (kept while the
    /// directory is).
    fn abc_file(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, b"abc").unwrap();
        (dir, path)
    }

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    async fn setup() -> (LocalEventBus, BinaryHasherCollector, CancellationToken) {
        let bus = LocalEventBus::new(EventBusConfig::default()).await.unwrap();
        bus.start().await.unwrap();
        let engine = HashEngine::new(HasherConfig {
            algorithms: vec![HashAlgorithm::Sha256, HashAlgorithm::Blake3],
            bytes_per_sec: 0,
            ..HasherConfig::default()
        })
        .unwrap();
        let hasher = BinaryHasherCollector::new(engine, bus.clone());
        let stop = CancellationToken::new();
        tokio::spawn({
            let (h, s) = (hasher.clone(), stop.clone());
            async move { h.run(s).await }
        });
        hasher.ready().await;
        (bus, hasher, stop)
    }

    fn request(path: Option<&str>, pid: Option<u32>, analysis: AnalysisType) -> TriggerRequest {
        TriggerRequest {
            trigger_id: "t-1".into(),
            target_collector: BINARY_HASHER_ID.into(),
            analysis_type: analysis,
            priority: TriggerPriority::High,
            target_pid: pid,
            target_path: path.map(Into::into),
            correlation_id: collector_core::bus::new_correlation_id(),
            metadata: BTreeMap::new(),
            timestamp: SystemTime::now(),
        }
    }

    /// Publishes `req` and returns the answer (by parent correlation id).
    async fn ask(bus: &LocalEventBus, req: TriggerRequest) -> BusEvent {
        let mut answers = bus
            .subscribe(EventFilter::new().with_correlation_filter(
                CorrelationFilter::by_parent_id(req.correlation_id.clone()).with_tag(RESULT_TAG),
            ))
            .await
            .unwrap();
        let corr = CorrelationMetadata::with_id(req.correlation_id.clone())
            .with_workflow_stage("collection");
        bus.publish(
            BusEvent::new("test", CollectionEvent::TriggerRequest(req)).with_correlation(corr),
        )
        .await
        .unwrap();
        answers.recv().await.unwrap()
    }

    #[tokio::test]
    async fn answers_with_both_digests_correlated_to_the_request() {
        let (bus, hasher, stop) = setup().await;
        let (_dir, path) = abc_file("tool");
        let req = request(path.to_str(), Some(77), AnalysisType::BinaryHash);
        let corr_id = req.correlation_id.clone();
        let answer = ask(&bus, req).await;
        assert_eq!(answer.source, BINARY_HASHER_ID);
        assert_eq!(
            answer.correlation.parent_correlation_id.as_deref(),
            Some(corr_id.as_str())
        );
        assert_eq!(answer.correlation.root_correlation_id, corr_id);
        assert_eq!(
            answer.correlation.workflow_stage.as_deref(),
            Some("collection")
        );
        assert!(!answer.correlation.tags.contains(FAILED_TAG));
        assert!(answer
            .correlation
            .tags
            .iter()
            .any(|t| t.starts_with("blake3=")));
        let CollectionEvent::Filesystem(f) = answer.event else {
            panic!()
        };
        assert_eq!(f.file_hash.as_deref(), Some(ABC_SHA256));
        assert_eq!(f.hash_algorithm, Some(HashAlgorithm::Sha256));
        assert_eq!((f.size, f.pid), (Some(3), Some(77)));
        assert_eq!(hasher.stats().requests_hashed, 1);
        stop.cancel();
    }

    #[tokio::test]
    async fn a_missing_file_is_answered_with_a_failure_and_pid_only_requests_resolve_exe() {
        let (bus, hasher, stop) = setup().await;
        let answer = ask(
            &bus,
            request(Some("/nonexistent/x"), None, AnalysisType::BinaryHash),
        )
        .await;
        assert!(answer.correlation.tags.contains(FAILED_TAG));
        assert!(answer.correlation.tags.contains("error=not_found"));
        // Our own executable, through /proc/self/exe resolved first.
        let answer = ask(
            &bus,
            request(None, Some(std::process::id()), AnalysisType::BinaryHash),
        )
        .await;
        assert!(!answer.correlation.tags.contains(FAILED_TAG), "{answer:?}");
        let CollectionEvent::Filesystem(f) = answer.event else {
            panic!()
        };
        assert_eq!(f.path, std::env::current_exe().unwrap().to_string_lossy());
        assert!(f.file_hash.is_some());
        let answer = ask(
            &bus,
            request(None, Some(u32::MAX - 1), AnalysisType::BinaryHash),
        )
        .await;
        assert!(answer.correlation.tags.contains("error=process_gone"));
        let s = hasher.stats();
        assert_eq!(
            (s.requests_received, s.requests_hashed, s.requests_failed),
            (3, 1, 2)
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn trigger_manager_to_hasher_and_back() {
        let (bus, hasher, stop) = setup().await;
        let (_dir, path) = abc_file("miner");
        let manager = TriggerManager::new(TriggerConfig::default()).unwrap();
        // Cryptominer names.
        let condition = ConditionType::ProcessNamePattern("*miner*".into());
        let mut results = hash_on(&manager, &hasher, &bus, "miner", condition).await;
        let mut p = ProcessEvent::new(31, "xmrminer");
        p.executable_path = Some(path.to_string_lossy().into_owned());
        assert_eq!(manager.process_event(&p).await.unwrap(), 1);
        let answer = results.recv().await.unwrap();
        let parent = answer.correlation.parent_correlation_id.clone().unwrap();
        manager
            .complete_by_correlation(&parent, !answer.correlation.tags.contains(FAILED_TAG))
            .unwrap();
        let s = manager.statistics();
        assert_eq!(
            (
                s.triggers_emitted,
                s.triggers_completed,
                s.triggers_in_flight
            ),
            (1, 1, 0)
        );
        stop.cancel();
    }

    /// The whole path: a collector's source emits a process event, the
    /// runtime publishes it into its bus, the trigger manager (fed from the
    /// bus) emits a `BinaryHash` request, the hasher (registered as a
    /// source of the same collector) answers, and the manager completes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn collector_bus_trigger_manager_and_hasher_end_to_end() {
        use collector_core::testing::Replay;
        use collector_core::{Collector, CollectorConfig, EventKind};

        let (_dir, path) = abc_file("xmrig");
        let mut collector = Collector::new(CollectorConfig::default());
        let handle = collector.handle();
        let bus = handle.bus().clone();
        let engine = HashEngine::new(HasherConfig::default()).unwrap();
        let hasher = BinaryHasherCollector::new(engine, bus.clone());
        let manager = Arc::new(TriggerManager::new(TriggerConfig::default()).unwrap());
        // A binary run from a temporary directory.
        let condition = ConditionType::Custom("name LIKE 'xmr%'".into());
        let mut results = hash_on(&manager, &hasher, &bus, "tmp-binary", condition).await;
        // The manager sees process events and analysis results.
        let feed = bus
            .subscribe(
                EventFilter::new()
                    .with_event_type(EventKind::Process)
                    .with_event_type(EventKind::Filesystem),
            )
            .await
            .unwrap();
        let stop = CancellationToken::new();
        let mgr = tokio::spawn({
            let (m, s) = (manager.clone(), stop.clone());
            async move { m.run(feed, Duration::from_secs(60), s).await }
        });
        collector.register(Box::new(hasher.clone())).unwrap();
        let mut p = ProcessEvent::new(4242, "xmrig");
        p.executable_path = Some(path.to_string_lossy().into_owned());
        let procs = Replay::events(
            "procs",
            SourceCaps::PROCESS,
            vec![CollectionEvent::Process(p)],
        );
        collector.register(Box::new(procs)).unwrap();
        let run = tokio::spawn(collector.run_until(std::future::pending()));
        let answer = results.recv().await.unwrap();
        let CollectionEvent::Filesystem(f) = &answer.event else {
            panic!("{answer:?}")
        };
        assert_eq!(f.file_hash.as_deref(), Some(ABC_SHA256));
        // The manager completes the trigger from the same answer.
        tokio::time::timeout(Duration::from_secs(10), async {
            while manager.statistics().triggers_completed == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        handle.shutdown();
        run.await.unwrap().unwrap();
        stop.cancel();
        mgr.await.unwrap().unwrap();
        let s = manager.statistics();
        assert_eq!((s.triggers_emitted, s.triggers_completed), (1, 1));
    }

    #[tokio::test]
    async fn other_analyses_are_ignored_and_it_passes_the_conformance_check() {
        let (bus, hasher, stop) = setup().await;
        let req = request(Some("/bin/sh"), None, AnalysisType::MemoryAnalysis);
        bus.publish(BusEvent::new("test", CollectionEvent::TriggerRequest(req)))
            .await
            .unwrap();
        let (_dir, path) = abc_file("t");
        // Answered in order: the ignored request came first.
        ask(&bus, request(path.to_str(), None, AnalysisType::BinaryHash)).await;
        assert_eq!(hasher.stats().requests_ignored, 1);
        stop.cancel();
        let (_, fresh, stop) = setup().await;
        stop.cancel();
        let report = collector_core::testing::check_source(
            Arc::new(fresh),
            &collector_core::testing::ConformanceConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(report.events(), 0);
    }
}
