//! Analysis chains: multi-stage workflows whose stages are analyses by
//! other collectors.
//!
//! An [`AnalysisWorkflowDefinition`] lists stages ([`StageDefinition`]) and
//! their dependencies; it is checked (unknown or duplicate stages, cycles)
//! when registered or executed. [`AnalysisChainCoordinator::execute_workflow`]
//! dispatches every stage whose dependencies have completed as a
//! [`TriggerRequest`] to its target collector through a [`StageDispatcher`]
//! (stages that are ready together run concurrently), with a per-stage
//! timeout and retries with exponential backoff; a stage whose dependency
//! failed is skipped. Workflows can be cancelled; status and statistics are
//! kept.
//!
//! [`BusDispatcher`] is the dispatcher over a [`LocalEventBus`]: it publishes
//! the request and waits for the analysis collector's answer, a bus event
//! whose parent correlation id is the request's correlation id and which is
//! tagged [`RESULT_TAG`] (and [`FAILED_TAG`] with an `error=<reason>` tag on
//! failure). The binary hasher (`daemoneye_hasher::BinaryHasherCollector`)
//! answers that way.
//!
//! ```
//! use std::sync::Arc;
//!
//! use async_trait::async_trait;
//! use collector_core::chain::{StageDispatcher, StageFailure, StageOutput};
//! use collector_core::{
//!     AnalysisChainConfig, AnalysisChainCoordinator, AnalysisStage, AnalysisWorkflowDefinition,
//!     TriggerRequest,
//! };
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl StageDispatcher for Echo {
//!     async fn dispatch(&self, request: TriggerRequest) -> Result<StageOutput, StageFailure> {
//!         Ok(StageOutput::default().with("collector", request.target_collector))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let coordinator = AnalysisChainCoordinator::new(AnalysisChainConfig::default())?
//!     .with_dispatcher(Arc::new(Echo));
//! let workflow = AnalysisWorkflowDefinition::new()
//!     .with_target_pid(4242)
//!     .with_stage(AnalysisStage::Collection)
//!     .with_stage(AnalysisStage::Enrichment)
//!     .with_stage(AnalysisStage::Detection)
//!     .with_stage(AnalysisStage::Alerting);
//! let result = coordinator.execute_workflow(workflow).await?;
//! assert!(result.succeeded());
//! assert_eq!(result.stages.len(), 4);
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::{
    new_correlation_id, BusEvent, CorrelationFilter, CorrelationMetadata, EventBus, EventFilter,
    LocalEventBus,
};
use crate::common::{lock, read, write};
use crate::event::{
    AnalysisType, CollectionEvent, TriggerPriority, TriggerRequest, MAX_METADATA_ENTRIES,
    MAX_METADATA_VALUE_LEN,
};
use crate::metrics::Counter;

/// Tag of every analysis result on the bus.
pub const RESULT_TAG: &str = "analysis_result";
/// Tag of a failed analysis result on the bus (with an `error=<reason>` tag).
pub const FAILED_TAG: &str = "analysis_failed";
/// The source name the coordinator publishes under.
pub const CHAIN_SOURCE: &str = "analysis-chain";

/// A step of an analysis workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AnalysisStage {
    /// Gather the artefacts (default collector `collection`, `BinaryHash`).
    Collection,
    /// Add context (default collector `enrichment`, `FilesystemAnalysis`).
    Enrichment,
    /// Judge (default collector `detection`, `BehavioralAnalysis`).
    Detection,
    /// Tell someone (default collector `alerting`, `BehavioralAnalysis`).
    Alerting,
}

impl AnalysisStage {
    /// The lowercase name, also the default stage id and collector id.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Collection => "collection",
            Self::Enrichment => "enrichment",
            Self::Detection => "detection",
            Self::Alerting => "alerting",
        }
    }

    const fn default_analysis(self) -> AnalysisType {
        match self {
            Self::Collection => AnalysisType::BinaryHash,
            Self::Enrichment => AnalysisType::FilesystemAnalysis,
            Self::Detection | Self::Alerting => AnalysisType::BehavioralAnalysis,
        }
    }
}

/// One stage of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageDefinition {
    /// Unique within the workflow.
    pub id: String,
    /// What kind of step it is.
    pub stage: AnalysisStage,
    /// The collector that performs it.
    pub target_collector: String,
    /// The analysis requested.
    pub analysis_type: AnalysisType,
    /// The priority of its trigger requests.
    pub priority: TriggerPriority,
    /// Stage ids it waits for; `None`: the stage added just before it.
    pub depends_on: Option<Vec<String>>,
    /// Per-attempt timeout; `None`: the coordinator's default.
    pub timeout: Option<Duration>,
    /// Retries after a failed or timed-out attempt; `None`: the default.
    pub max_retries: Option<u32>,
}

impl StageDefinition {
    /// A stage with explicit collector and analysis.
    pub fn new(
        id: impl Into<String>,
        stage: AnalysisStage,
        target_collector: impl Into<String>,
        analysis_type: AnalysisType,
    ) -> Self {
        Self {
            id: id.into(),
            stage,
            target_collector: target_collector.into(),
            analysis_type,
            priority: TriggerPriority::Normal,
            depends_on: None,
            timeout: None,
            max_retries: None,
        }
    }

    /// Sets the dependencies (an empty list: none, the stage starts at once).
    #[must_use]
    pub fn depends_on<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.depends_on = Some(ids.into_iter().map(Into::into).collect());
        self
    }

    with_setters! {
        /// Sets the per-attempt timeout.
        with_timeout(timeout: Duration) { timeout = Some(timeout) }
        /// Sets the number of retries.
        with_max_retries(retries: u32) { max_retries = Some(retries) }
        /// Sets the priority.
        with_priority(priority: TriggerPriority) { priority = priority }
    }
}

impl From<AnalysisStage> for StageDefinition {
    fn from(stage: AnalysisStage) -> Self {
        Self::new(
            stage.as_str(),
            stage,
            stage.as_str(),
            stage.default_analysis(),
        )
    }
}

/// A workflow: stages, their dependencies and the process or file analysed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalysisWorkflowDefinition {
    /// The workflow's id (generated unless set).
    pub id: String,
    /// Its stages in the order added.
    pub stages: Vec<StageDefinition>,
    /// The process analysed.
    pub target_pid: Option<u32>,
    /// The file analysed.
    pub target_path: Option<String>,
}

/// An empty workflow with a generated id.
impl Default for AnalysisWorkflowDefinition {
    fn default() -> Self {
        Self {
            id: format!("wf-{}", new_correlation_id()),
            stages: Vec::new(),
            target_pid: None,
            target_path: None,
        }
    }
}

impl AnalysisWorkflowDefinition {
    /// An empty workflow with a generated id (the [`Default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Adds a stage; without explicit dependencies it follows the previous one.
    #[must_use]
    pub fn with_stage(mut self, stage: impl Into<StageDefinition>) -> Self {
        let mut stage = stage.into();
        if stage.depends_on.is_none() {
            stage.depends_on = Some(
                self.stages
                    .last()
                    .map(|s| s.id.clone())
                    .into_iter()
                    .collect(),
            );
        }
        self.stages.push(stage);
        self
    }

    with_setters! {
        /// Sets the process analysed.
        with_target_pid(pid: u32) { target_pid = Some(pid) }
        /// Sets the file analysed.
        with_target_path(path: impl Into<String>) { target_path = Some(path.into()) }
    }

    /// Checks ids, dependencies (known, no cycle), size and target.
    ///
    /// # Errors
    /// [`ChainError::InvalidWorkflow`] or [`ChainError::Cycle`].
    pub fn validate(&self, max_stages: usize) -> Result<(), ChainError> {
        let invalid = |reason: String| {
            Err(ChainError::InvalidWorkflow {
                workflow: self.id.clone(),
                reason,
            })
        };
        if self.id.is_empty() || self.id.len() > 256 {
            return invalid("the id is empty or longer than 256 bytes".into());
        }
        if self.stages.is_empty() {
            return invalid("it has no stage".into());
        }
        if self.stages.len() > max_stages {
            return invalid(format!("it has more than {max_stages} stages"));
        }
        if self.target_pid.is_none() && self.target_path.is_none() {
            return invalid("it has no target pid or path".into());
        }
        let mut ids = HashSet::new();
        for s in &self.stages {
            if s.id.is_empty() || s.target_collector.is_empty() {
                return invalid("a stage has an empty id or collector".into());
            }
            if !ids.insert(s.id.as_str()) {
                return invalid(format!("stage {:?} appears twice", s.id));
            }
        }
        for s in &self.stages {
            for d in s.depends_on.iter().flatten() {
                if !ids.contains(d.as_str()) {
                    return invalid(format!("stage {:?} depends on unknown {d:?}", s.id));
                }
            }
        }
        // Kahn's algorithm: what cannot be ordered is on a cycle.
        let mut indegree: HashMap<&str, usize> = self
            .stages
            .iter()
            .map(|s| (s.id.as_str(), s.depends_on.as_ref().map_or(0, Vec::len)))
            .collect();
        let mut ready: Vec<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(id, _)| *id)
            .collect();
        let mut ordered = 0;
        while let Some(id) = ready.pop() {
            ordered += 1;
            for s in &self.stages {
                if s.depends_on.iter().flatten().any(|d| d == id) {
                    if let Some(d) = indegree.get_mut(s.id.as_str()) {
                        *d -= 1;
                        if *d == 0 {
                            ready.push(&s.id);
                        }
                    }
                }
            }
        }
        if ordered != self.stages.len() {
            let mut on_cycle: Vec<String> = indegree
                .into_iter()
                .filter(|(_, d)| *d > 0)
                .map(|(id, _)| id.to_owned())
                .collect();
            on_cycle.sort();
            return Err(ChainError::Cycle {
                workflow: self.id.clone(),
                stages: on_cycle,
            });
        }
        Ok(())
    }
}

/// What a stage produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StageOutput {
    /// Key/value results, passed to dependent stages as request metadata
    /// (`input.<stage>.<key>`).
    pub data: BTreeMap<String, String>,
    /// The result event, when the analysis answered with one.
    pub event: Option<CollectionEvent>,
}

impl StageOutput {
    /// Adds a key/value result.
    #[must_use]
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.data.insert(key.into(), value.into());
        self
    }
}

/// Why a stage attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StageFailure {
    /// What went wrong.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl StageFailure {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure not worth retrying.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Hands a stage's trigger request to its collector and returns its result.
#[async_trait]
pub trait StageDispatcher: Send + Sync {
    /// Performs (or has performed) the analysis `request` asks for.
    ///
    /// # Cancel safety
    /// Must be cancel safe: the coordinator drops it at the stage timeout
    /// and on cancellation.
    async fn dispatch(&self, request: TriggerRequest) -> Result<StageOutput, StageFailure>;
}

/// Dispatches stages over an event bus (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct BusDispatcher {
    bus: LocalEventBus,
}

impl BusDispatcher {
    /// Dispatches over `bus`.
    pub fn new(bus: LocalEventBus) -> Self {
        Self { bus }
    }
}

#[async_trait]
impl StageDispatcher for BusDispatcher {
    async fn dispatch(&self, request: TriggerRequest) -> Result<StageOutput, StageFailure> {
        // Subscribe before publishing so the answer cannot be missed.
        let mut answers = self
            .bus
            .subscribe(
                EventFilter::new().with_correlation_filter(
                    CorrelationFilter::by_parent_id(request.correlation_id.clone())
                        .with_tag(RESULT_TAG),
                ),
            )
            .await
            .map_err(|e| StageFailure::permanent(e.to_string()))?;
        let correlation = CorrelationMetadata::with_id(request.correlation_id.clone())
            .with_tag("trigger")
            .with_tag(request.target_collector.clone());
        let correlation = match request.metadata.get("stage") {
            Some(stage) => correlation.with_workflow_stage(stage.clone()),
            None => correlation,
        };
        let event = BusEvent::new(CHAIN_SOURCE, CollectionEvent::TriggerRequest(request))
            .with_correlation(correlation);
        let published = self.bus.publish(event).await;
        if let Err(e) = published {
            let _ = self.bus.unsubscribe(answers.id()).await;
            return Err(StageFailure::permanent(e.to_string()));
        }
        let answer = answers.recv().await;
        // Answered or not, this subscription is done.
        let _ = self.bus.unsubscribe(answers.id()).await;
        let Some(answer) = answer else {
            return Err(StageFailure::permanent("the event bus shut down"));
        };
        if answer.correlation.tags.contains(FAILED_TAG) {
            let reason = answer
                .correlation
                .tags
                .iter()
                .find_map(|t| t.strip_prefix("error="))
                .unwrap_or("analysis failed")
                .to_owned();
            let retryable = answer.correlation.tags.contains("retryable");
            return Err(StageFailure {
                message: reason,
                retryable,
            });
        }
        Ok(StageOutput {
            data: BTreeMap::from([
                ("source".to_owned(), answer.source.to_owned()),
                ("topic".to_owned(), answer.topic.clone()),
            ]),
            event: Some(answer.event),
        })
    }
}

/// Configuration of an [`AnalysisChainCoordinator`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisChainConfig {
    /// Per-attempt timeout of a stage that sets none.
    #[serde(with = "humantime_serde")]
    pub default_stage_timeout: Duration,
    /// Retries of a stage that sets none.
    pub default_max_retries: u32,
    /// Wait before the first retry; doubled for each further one.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Upper bound of the wait between retries.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Most stages in one workflow.
    pub max_stages: usize,
    /// Most workflows running at once.
    pub max_concurrent_workflows: usize,
}

impl Default for AnalysisChainConfig {
    fn default() -> Self {
        Self {
            default_stage_timeout: Duration::from_secs(30),
            default_max_retries: 2,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            max_stages: 64,
            max_concurrent_workflows: 64,
        }
    }
}

/// Errors of the analysis chain coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The configuration is invalid.
    #[error("invalid analysis chain config: field `{field}` {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The workflow is malformed.
    #[error("invalid workflow {workflow:?}: {reason}")]
    InvalidWorkflow {
        /// The workflow.
        workflow: String,
        /// What is wrong.
        reason: String,
    },
    /// Stage dependencies form a cycle.
    #[error("workflow {workflow:?} has a dependency cycle through {stages:?}")]
    Cycle {
        /// The workflow.
        workflow: String,
        /// Stages on or behind the cycle.
        stages: Vec<String>,
    },
    /// A workflow with this id is registered.
    #[error("workflow {workflow:?} is already registered")]
    DuplicateWorkflow {
        /// The workflow.
        workflow: String,
    },
    /// No workflow with this id is registered.
    #[error("no workflow {workflow:?}")]
    UnknownWorkflow {
        /// The workflow.
        workflow: String,
    },
    /// No dispatcher is set.
    #[error("no stage dispatcher is set")]
    NoDispatcher,
    /// Too many workflows are running.
    #[error("the limit of {max} running workflows is reached")]
    TooManyWorkflows {
        /// The limit.
        max: usize,
    },
}

/// Where a stage is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
#[non_exhaustive]
pub enum StageStatus {
    /// Waiting for its dependencies.
    Pending,
    /// Dispatched; `attempt` counts from 1.
    Running {
        /// The current attempt.
        attempt: u32,
    },
    /// Done.
    Completed,
    /// Failed after its retries.
    Failed {
        /// The last failure.
        reason: String,
    },
    /// Not run because a dependency failed or the workflow was cancelled.
    Skipped,
}

/// Where a workflow execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkflowState {
    /// Stages are running.
    Running,
    /// Every stage completed.
    Completed,
    /// A stage failed.
    Failed,
    /// Cancelled.
    Cancelled,
}

/// The status of one execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowStatus {
    /// The execution's id (also the root correlation id of its requests).
    pub execution_id: String,
    /// The workflow's id.
    pub workflow_id: String,
    /// Its state.
    pub state: WorkflowState,
    /// Each stage's status, by stage id.
    pub stages: BTreeMap<String, StageStatus>,
}

/// The outcome of one stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageResult {
    /// The stage's id.
    pub stage_id: String,
    /// Its final status.
    pub status: StageStatus,
    /// Attempts made.
    pub attempts: u32,
    /// What it produced, when completed.
    pub output: Option<StageOutput>,
}

/// The outcome of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowResult {
    /// The execution's id.
    pub execution_id: String,
    /// The workflow's id.
    pub workflow_id: String,
    /// The final state.
    pub state: WorkflowState,
    /// Every stage's outcome, in definition order.
    pub stages: Vec<StageResult>,
}

impl WorkflowResult {
    /// Whether every stage completed.
    pub fn succeeded(&self) -> bool {
        self.state == WorkflowState::Completed
    }

    /// The outcome of stage `id`.
    pub fn stage(&self, id: &str) -> Option<&StageResult> {
        self.stages.iter().find(|s| s.stage_id == id)
    }
}

/// Counters of a coordinator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ChainStatistics {
    /// Workflows started.
    pub workflows_started: u64,
    /// Workflows whose every stage completed.
    pub workflows_completed: u64,
    /// Workflows with a failed stage.
    pub workflows_failed: u64,
    /// Workflows cancelled.
    pub workflows_cancelled: u64,
    /// Workflows running now.
    pub workflows_running: u64,
    /// Stage attempts dispatched.
    pub stage_attempts: u64,
    /// Attempts that timed out.
    pub stage_timeouts: u64,
    /// Retries (attempts after the first).
    pub stage_retries: u64,
    /// Stages failed after their retries.
    pub stages_failed: u64,
    /// Stages skipped.
    pub stages_skipped: u64,
}

#[derive(Default)]
struct Counters {
    started: Counter,
    completed: Counter,
    failed: Counter,
    cancelled: Counter,
    attempts: Counter,
    timeouts: Counter,
    retries: Counter,
    stages_failed: Counter,
    stages_skipped: Counter,
}

struct Running {
    status: WorkflowStatus,
    cancel: CancellationToken,
}

/// Runs analysis workflows.
pub struct AnalysisChainCoordinator {
    config: AnalysisChainConfig,
    dispatcher: RwLock<Option<Arc<dyn StageDispatcher>>>,
    registered: Mutex<HashMap<String, AnalysisWorkflowDefinition>>,
    executions: Mutex<HashMap<String, Running>>,
    counters: Arc<Counters>,
}

debug_fields!(AnalysisChainCoordinator { config });

impl AnalysisChainCoordinator {
    /// Validates `config`; set a dispatcher before executing.
    ///
    /// # Errors
    /// [`ChainError::Config`].
    pub fn new(config: AnalysisChainConfig) -> Result<Self, ChainError> {
        let bad = |field, reason| Err(ChainError::Config { field, reason });
        if config.default_stage_timeout.is_zero() {
            return bad("default_stage_timeout", "must be positive");
        }
        if config.max_backoff < config.initial_backoff {
            return bad("max_backoff", "must be at least initial_backoff");
        }
        if config.max_stages == 0 || config.max_concurrent_workflows == 0 {
            return bad(
                "max_stages",
                "and max_concurrent_workflows must be positive",
            );
        }
        Ok(Self {
            config,
            dispatcher: RwLock::new(None),
            registered: Mutex::new(HashMap::new()),
            executions: Mutex::new(HashMap::new()),
            counters: Arc::default(),
        })
    }

    /// Sets the dispatcher (builder form).
    #[must_use]
    pub fn with_dispatcher(self, dispatcher: Arc<dyn StageDispatcher>) -> Self {
        self.set_dispatcher(dispatcher);
        self
    }

    /// Sets the dispatcher.
    pub fn set_dispatcher(&self, dispatcher: Arc<dyn StageDispatcher>) {
        *write(&self.dispatcher) = Some(dispatcher);
    }

    /// Checks and stores a workflow for [`execute_registered`](Self::execute_registered).
    ///
    /// # Errors
    /// [`ChainError::InvalidWorkflow`], [`ChainError::Cycle`],
    /// [`ChainError::DuplicateWorkflow`]; nothing is stored on error.
    pub fn register_workflow(
        &self,
        workflow: AnalysisWorkflowDefinition,
    ) -> Result<(), ChainError> {
        workflow.validate(self.config.max_stages)?;
        let mut reg = lock(&self.registered);
        if reg.contains_key(&workflow.id) {
            return Err(ChainError::DuplicateWorkflow {
                workflow: workflow.id,
            });
        }
        reg.insert(workflow.id.clone(), workflow);
        Ok(())
    }

    /// Executes a registered workflow.
    ///
    /// # Errors
    /// [`ChainError::UnknownWorkflow`], and as [`execute_workflow`](Self::execute_workflow).
    pub async fn execute_registered(&self, id: &str) -> Result<WorkflowResult, ChainError> {
        let workflow =
            lock(&self.registered)
                .get(id)
                .cloned()
                .ok_or_else(|| ChainError::UnknownWorkflow {
                    workflow: id.to_owned(),
                })?;
        self.execute_workflow(workflow).await
    }

    /// The status of every execution still known (running or finished).
    pub fn executions(&self) -> Vec<WorkflowStatus> {
        lock(&self.executions)
            .values()
            .map(|r| r.status.clone())
            .collect()
    }

    /// The status of one execution.
    pub fn workflow_status(&self, execution_id: &str) -> Option<WorkflowStatus> {
        lock(&self.executions)
            .get(execution_id)
            .map(|r| r.status.clone())
    }

    /// Cancels a running execution: running stages are abandoned, pending
    /// ones skipped. Returns whether it was running.
    pub fn cancel_workflow(&self, execution_id: &str) -> bool {
        let execs = lock(&self.executions);
        match execs.get(execution_id) {
            Some(r) if r.status.state == WorkflowState::Running => {
                r.cancel.cancel();
                true
            }
            _ => false,
        }
    }

    /// Forgets finished executions.
    pub fn cleanup(&self) {
        lock(&self.executions).retain(|_, r| r.status.state == WorkflowState::Running);
    }

    /// A snapshot of the counters.
    pub fn statistics(&self) -> ChainStatistics {
        let c = &self.counters;
        let running = lock(&self.executions)
            .values()
            .filter(|r| r.status.state == WorkflowState::Running)
            .count();
        ChainStatistics {
            workflows_started: c.started.get(),
            workflows_completed: c.completed.get(),
            workflows_failed: c.failed.get(),
            workflows_cancelled: c.cancelled.get(),
            workflows_running: running as u64,
            stage_attempts: c.attempts.get(),
            stage_timeouts: c.timeouts.get(),
            stage_retries: c.retries.get(),
            stages_failed: c.stages_failed.get(),
            stages_skipped: c.stages_skipped.get(),
        }
    }

    fn set_stage(&self, execution: &str, stage: &str, status: StageStatus) {
        if let Some(r) = lock(&self.executions).get_mut(execution) {
            r.status.stages.insert(stage.to_owned(), status);
        }
    }

    /// Starts an execution and returns its id at once; the workflow runs in
    /// a task. Poll [`workflow_status`](Self::workflow_status) or cancel it.
    ///
    /// # Errors
    /// As [`execute_workflow`](Self::execute_workflow).
    pub fn spawn_workflow(
        self: &Arc<Self>,
        workflow: AnalysisWorkflowDefinition,
    ) -> Result<(String, tokio::task::JoinHandle<WorkflowResult>), ChainError> {
        let (execution_id, cancel, dispatcher) = self.begin(&workflow)?;
        let this = self.clone();
        let id = execution_id.clone();
        let task = tokio::spawn(async move { this.run(workflow, id, cancel, dispatcher).await });
        Ok((execution_id, task))
    }

    /// Checks `workflow` and runs it to the end (see the [module docs](self)).
    ///
    /// # Errors
    /// [`ChainError::InvalidWorkflow`], [`ChainError::Cycle`],
    /// [`ChainError::NoDispatcher`], [`ChainError::TooManyWorkflows`]. A
    /// workflow whose stages fail is not an error: see
    /// [`WorkflowResult::state`].
    pub async fn execute_workflow(
        &self,
        workflow: AnalysisWorkflowDefinition,
    ) -> Result<WorkflowResult, ChainError> {
        let (execution_id, cancel, dispatcher) = self.begin(&workflow)?;
        Ok(self.run(workflow, execution_id, cancel, dispatcher).await)
    }

    fn begin(
        &self,
        workflow: &AnalysisWorkflowDefinition,
    ) -> Result<(String, CancellationToken, Arc<dyn StageDispatcher>), ChainError> {
        workflow.validate(self.config.max_stages)?;
        let dispatcher = read(&self.dispatcher)
            .clone()
            .ok_or(ChainError::NoDispatcher)?;
        let mut execs = lock(&self.executions);
        let running = execs
            .values()
            .filter(|r| r.status.state == WorkflowState::Running)
            .count();
        if running >= self.config.max_concurrent_workflows {
            return Err(ChainError::TooManyWorkflows {
                max: self.config.max_concurrent_workflows,
            });
        }
        let execution_id = format!("exec-{}", new_correlation_id());
        let cancel = CancellationToken::new();
        execs.insert(
            execution_id.clone(),
            Running {
                status: WorkflowStatus {
                    execution_id: execution_id.clone(),
                    workflow_id: workflow.id.clone(),
                    state: WorkflowState::Running,
                    stages: workflow
                        .stages
                        .iter()
                        .map(|s| (s.id.clone(), StageStatus::Pending))
                        .collect(),
                },
                cancel: cancel.clone(),
            },
        );
        self.counters.started.inc();
        Ok((execution_id, cancel, dispatcher))
    }

    #[allow(clippy::too_many_lines)] // the scheduling loop reads best in one piece
    async fn run(
        &self,
        workflow: AnalysisWorkflowDefinition,
        execution_id: String,
        cancel: CancellationToken,
        dispatcher: Arc<dyn StageDispatcher>,
    ) -> WorkflowResult {
        let mut results: HashMap<String, StageResult> = HashMap::new();
        let mut tasks: JoinSet<StageResult> = JoinSet::new();
        let mut started: HashSet<String> = HashSet::new();
        let mut task_stage: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut cancelled = false;
        loop {
            // Skip stages behind a failure; start every stage that is ready.
            let mut progress = true;
            while progress {
                progress = false;
                for s in &workflow.stages {
                    if started.contains(&s.id) {
                        continue;
                    }
                    let deps = s.depends_on.clone().unwrap_or_default();
                    let blocked = cancelled
                        || deps.iter().any(|d| {
                            results
                                .get(d)
                                .is_some_and(|r| r.status != StageStatus::Completed)
                        });
                    if blocked {
                        started.insert(s.id.clone());
                        self.counters.stages_skipped.inc();
                        self.set_stage(&execution_id, &s.id, StageStatus::Skipped);
                        results.insert(
                            s.id.clone(),
                            StageResult {
                                stage_id: s.id.clone(),
                                status: StageStatus::Skipped,
                                attempts: 0,
                                output: None,
                            },
                        );
                        progress = true;
                    } else if deps.iter().all(|d| results.contains_key(d)) {
                        started.insert(s.id.clone());
                        let request = Self::request(&workflow, s, &execution_id, &results);
                        let handle = tasks.spawn(attempt_stage(StageRun {
                            stage: s.clone(),
                            request,
                            dispatcher: dispatcher.clone(),
                            timeout: s.timeout.unwrap_or(self.config.default_stage_timeout),
                            retries: s.max_retries.unwrap_or(self.config.default_max_retries),
                            initial_backoff: self.config.initial_backoff,
                            max_backoff: self.config.max_backoff,
                            counters: self.counters.clone(),
                            cancel: cancel.clone(),
                        }));
                        task_stage.insert(handle.id(), s.id.clone());
                        self.set_stage(&execution_id, &s.id, StageStatus::Running { attempt: 1 });
                        progress = true;
                    }
                }
            }
            let next = tokio::select! {
                biased;
                () = cancel.cancelled(), if !cancelled => None,
                r = tasks.join_next() => Some(r),
            };
            let result = match next {
                // Running stages see the token and end at once; the next
                // pass skips the pending ones.
                None => {
                    cancelled = true;
                    continue;
                }
                Some(None) => break,
                Some(Some(Ok(mut result))) => {
                    if cancelled && result.status != StageStatus::Completed {
                        result.status = StageStatus::Skipped;
                    }
                    result
                }
                Some(Some(Err(join))) => {
                    let stage_id = task_stage.get(&join.id()).cloned().unwrap_or_default();
                    let reason = if join.is_panic() {
                        format!(
                            "the dispatcher panicked: {}",
                            crate::runtime::panic_message(&*join.into_panic())
                        )
                    } else {
                        "the stage task was cancelled".to_owned()
                    };
                    StageResult {
                        stage_id,
                        status: StageStatus::Failed { reason },
                        attempts: 1,
                        output: None,
                    }
                }
            };
            match result.status {
                StageStatus::Failed { .. } => self.counters.stages_failed.inc(),
                StageStatus::Skipped => self.counters.stages_skipped.inc(),
                _ => {}
            }
            self.set_stage(&execution_id, &result.stage_id, result.status.clone());
            results.insert(result.stage_id.clone(), result);
        }
        let state = if cancelled {
            self.counters.cancelled.inc();
            WorkflowState::Cancelled
        } else if results.values().all(|r| r.status == StageStatus::Completed) {
            self.counters.completed.inc();
            WorkflowState::Completed
        } else {
            self.counters.failed.inc();
            WorkflowState::Failed
        };
        if let Some(r) = lock(&self.executions).get_mut(&execution_id) {
            r.status.state = state;
        }
        let stages = workflow
            .stages
            .iter()
            .map(|s| {
                results.remove(&s.id).unwrap_or(StageResult {
                    stage_id: s.id.clone(),
                    status: StageStatus::Skipped,
                    attempts: 0,
                    output: None,
                })
            })
            .collect();
        WorkflowResult {
            execution_id,
            workflow_id: workflow.id,
            state,
            stages,
        }
    }

    fn request(
        workflow: &AnalysisWorkflowDefinition,
        stage: &StageDefinition,
        execution_id: &str,
        results: &HashMap<String, StageResult>,
    ) -> TriggerRequest {
        let mut metadata = BTreeMap::from([
            ("workflow_id".to_owned(), workflow.id.clone()),
            ("execution_id".to_owned(), execution_id.to_owned()),
            ("stage".to_owned(), stage.id.clone()),
            ("analysis_stage".to_owned(), stage.stage.as_str().to_owned()),
        ]);
        // Results of the dependencies, bounded like any event metadata.
        for dep in stage.depends_on.iter().flatten() {
            let Some(out) = results.get(dep).and_then(|r| r.output.as_ref()) else {
                continue;
            };
            for (k, v) in &out.data {
                if metadata.len() >= MAX_METADATA_ENTRIES {
                    break;
                }
                let key = format!("input.{dep}.{k}");
                if key.len() <= MAX_METADATA_VALUE_LEN && v.len() <= MAX_METADATA_VALUE_LEN {
                    metadata.insert(key, v.clone());
                }
            }
        }
        TriggerRequest {
            trigger_id: format!("trg-{}", new_correlation_id()),
            target_collector: stage.target_collector.clone(),
            analysis_type: stage.analysis_type,
            priority: stage.priority,
            target_pid: workflow.target_pid,
            target_path: workflow.target_path.clone(),
            correlation_id: new_correlation_id(),
            metadata,
            timestamp: SystemTime::now(),
        }
    }
}

struct StageRun {
    stage: StageDefinition,
    request: TriggerRequest,
    dispatcher: Arc<dyn StageDispatcher>,
    timeout: Duration,
    retries: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

/// Runs one stage: attempts with a timeout each, retries with backoff.
async fn attempt_stage(run: StageRun) -> StageResult {
    let mut backoff = daemoneye_lib::Backoff::new(run.initial_backoff, run.max_backoff);
    let mut attempt = 0;
    loop {
        attempt += 1;
        run.counters.attempts.inc();
        if attempt > 1 {
            run.counters.retries.inc();
        }
        let mut request = run.request.clone();
        if attempt > 1 {
            // A fresh id per attempt: a late answer to an abandoned attempt
            // is not taken for this one.
            request.trigger_id = format!("trg-{}", new_correlation_id());
            request.correlation_id = new_correlation_id();
            request
                .metadata
                .insert("attempt".to_owned(), attempt.to_string());
        }
        let outcome = tokio::select! {
            biased;
            () = run.cancel.cancelled() => Err(StageFailure::permanent("cancelled")),
            r = tokio::time::timeout(run.timeout, run.dispatcher.dispatch(request)) => match r {
                Ok(r) => r,
                Err(_) => {
                    run.counters.timeouts.inc();
                    Err(StageFailure::retryable(format!("timed out after {:?}", run.timeout)))
                }
            },
        };
        match outcome {
            Ok(output) => {
                return StageResult {
                    stage_id: run.stage.id,
                    status: StageStatus::Completed,
                    attempts: attempt,
                    output: Some(output),
                }
            }
            Err(failure) if failure.retryable && attempt <= run.retries => {
                tracing::debug!(stage = %run.stage.id, attempt, error = %failure, "stage failed; retrying");
                tokio::select! {
                    biased;
                    () = run.cancel.cancelled() => {}
                    () = tokio::time::sleep(backoff.next()) => {}
                }
            }
            Err(failure) => {
                return StageResult {
                    stage_id: run.stage.id,
                    status: StageStatus::Failed {
                        reason: failure.message,
                    },
                    attempts: attempt,
                    output: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
