#![allow(clippy::unwrap_used, clippy::many_single_char_names)]

use std::sync::Mutex;

use tokio::time::Instant;

use super::*;
use crate::bus::EventBusConfig;
use crate::event::{EventKind, PerformanceEvent, PerformanceMetric, PerformanceSubject};

#[derive(Clone, Copy)]
enum Step {
    Ok,
    Retryable,
    Permanent,
    Hang,
    Panic,
}

/// Answers per stage id from a script (the last step repeats) and records
/// what it was asked.
#[derive(Default)]
struct Scripted {
    script: HashMap<String, Vec<Step>>,
    calls: Mutex<Vec<(String, Instant, TriggerRequest)>>,
}

impl Scripted {
    fn with(mut self, stage: &str, steps: &[Step]) -> Self {
        self.script.insert(stage.to_owned(), steps.to_vec());
        self
    }

    fn calls_of(&self, stage: &str) -> Vec<(Instant, TriggerRequest)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _, _)| s == stage)
            .map(|(_, t, r)| (*t, r.clone()))
            .collect()
    }

    fn order(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.0.clone())
            .collect()
    }
}

#[async_trait]
impl StageDispatcher for Scripted {
    async fn dispatch(&self, request: TriggerRequest) -> Result<StageOutput, StageFailure> {
        let stage = request.metadata["stage"].clone();
        let n = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((stage.clone(), Instant::now(), request.clone()));
            calls.iter().filter(|c| c.0 == stage).count()
        };
        let steps = self.script.get(&stage).cloned().unwrap_or(vec![Step::Ok]);
        let step = steps.get(n - 1).or(steps.last()).copied().unwrap();
        match step {
            Step::Ok => Ok(StageOutput::default().with("by", stage)),
            Step::Retryable => Err(StageFailure::retryable("busy")),
            Step::Permanent => Err(StageFailure::permanent("not found")),
            Step::Hang => std::future::pending().await,
            Step::Panic => panic!("dispatcher bug"),
        }
    }
}

fn coordinator(d: &Arc<Scripted>) -> AnalysisChainCoordinator {
    AnalysisChainCoordinator::new(AnalysisChainConfig {
        default_stage_timeout: Duration::from_secs(5),
        default_max_retries: 2,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(150),
        ..AnalysisChainConfig::default()
    })
    .unwrap()
    .with_dispatcher(d.clone())
}

/// One collection stage for process `pid`.
fn collection_of(pid: u32) -> AnalysisWorkflowDefinition {
    AnalysisWorkflowDefinition::new()
        .with_target_pid(pid)
        .with_stage(AnalysisStage::Collection)
}

fn reference_workflow() -> AnalysisWorkflowDefinition {
    AnalysisWorkflowDefinition::new()
        .with_target_pid(42)
        .with_stage(AnalysisStage::Collection)
        .with_stage(AnalysisStage::Enrichment)
        .with_stage(AnalysisStage::Detection)
        .with_stage(AnalysisStage::Alerting)
}

#[tokio::test(start_paused = true)]
async fn reference_workflow_runs_stages_in_order_and_passes_outputs_on() {
    let d = Arc::new(Scripted::default());
    let c = coordinator(&d);
    let r = c.execute_workflow(reference_workflow()).await.unwrap();
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(
        d.order(),
        ["collection", "enrichment", "detection", "alerting"]
    );
    let (_, req) = d.calls_of("enrichment").remove(0);
    assert_eq!(req.target_collector, "enrichment");
    assert_eq!(req.analysis_type, AnalysisType::FilesystemAnalysis);
    assert_eq!(req.target_pid, Some(42));
    assert_eq!(req.metadata["input.collection.by"], "collection");
    assert_eq!(
        c.workflow_status(&r.execution_id).unwrap().state,
        WorkflowState::Completed
    );
    let s = c.statistics();
    assert_eq!(
        (s.workflows_started, s.workflows_completed, s.stage_attempts),
        (1, 1, 4)
    );
}

#[test]
fn cycles_unknown_dependencies_and_bad_workflows_are_refused_at_registration() {
    let c = AnalysisChainCoordinator::new(AnalysisChainConfig::default()).unwrap();
    let s = |id: &str| {
        StageDefinition::new(id, AnalysisStage::Detection, "d", AnalysisType::BinaryHash)
    };
    let cyclic = AnalysisWorkflowDefinition::new()
        .with_id("cyclic")
        .with_target_pid(1)
        .with_stage(s("a").depends_on(["c"]))
        .with_stage(s("b").depends_on(["a"]))
        .with_stage(s("c").depends_on(["b"]))
        .with_stage(s("free").depends_on(Vec::<String>::new()));
    match c.register_workflow(cyclic) {
        Err(ChainError::Cycle { stages, .. }) => assert_eq!(stages, ["a", "b", "c"]),
        other => panic!("{other:?}"),
    }
    let self_loop = AnalysisWorkflowDefinition::new()
        .with_target_pid(1)
        .with_stage(s("a").depends_on(["a"]));
    assert!(matches!(
        c.register_workflow(self_loop),
        Err(ChainError::Cycle { .. })
    ));
    let bad = [
        AnalysisWorkflowDefinition::new().with_target_pid(1),
        AnalysisWorkflowDefinition::new().with_stage(s("a")),
        AnalysisWorkflowDefinition::new()
            .with_target_pid(1)
            .with_stage(s("a").depends_on(["nope"])),
        AnalysisWorkflowDefinition::new()
            .with_target_pid(1)
            .with_stage(s("a"))
            .with_stage(s("a")),
    ];
    for w in bad {
        assert!(matches!(
            c.register_workflow(w),
            Err(ChainError::InvalidWorkflow { .. })
        ));
    }
    c.register_workflow(reference_workflow().with_id("ok"))
        .unwrap();
    assert!(matches!(
        c.register_workflow(reference_workflow().with_id("ok")),
        Err(ChainError::DuplicateWorkflow { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_failing_stage_skips_its_dependents_but_not_other_branches() {
    let d = Arc::new(Scripted::default().with("enrichment", &[Step::Permanent]));
    let c = coordinator(&d);
    let w = reference_workflow().with_stage(
        StageDefinition::new(
            "side",
            AnalysisStage::Detection,
            "side",
            AnalysisType::BinaryHash,
        )
        .depends_on(["collection"]),
    );
    let r = c.execute_workflow(w).await.unwrap();
    assert_eq!(r.state, WorkflowState::Failed);
    assert_eq!(
        r.stage("enrichment").unwrap().status,
        StageStatus::Failed {
            reason: "not found".into()
        }
    );
    assert_eq!(
        r.stage("enrichment").unwrap().attempts,
        1,
        "permanent: no retry"
    );
    assert_eq!(r.stage("detection").unwrap().status, StageStatus::Skipped);
    assert_eq!(r.stage("alerting").unwrap().status, StageStatus::Skipped);
    assert_eq!(r.stage("side").unwrap().status, StageStatus::Completed);
    let s = c.statistics();
    assert_eq!(
        (s.workflows_failed, s.stages_failed, s.stages_skipped),
        (1, 1, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_stage_times_out_on_every_attempt() {
    let d = Arc::new(Scripted::default().with("detection", &[Step::Hang]));
    let c = coordinator(&d);
    let w = AnalysisWorkflowDefinition::new()
        .with_target_path("/bin/x")
        .with_stage(
            StageDefinition::from(AnalysisStage::Detection)
                .with_timeout(Duration::from_secs(2))
                .with_max_retries(1),
        );
    let t0 = Instant::now();
    let r = c.execute_workflow(w).await.unwrap();
    assert_eq!(r.state, WorkflowState::Failed);
    assert_eq!(r.stages[0].attempts, 2);
    assert!(
        matches!(&r.stages[0].status, StageStatus::Failed { reason } if reason.contains("timed out"))
    );
    // Two 2 s attempts and one 100 ms backoff between them.
    assert_eq!(t0.elapsed(), Duration::from_millis(4100));
    assert_eq!(c.statistics().stage_timeouts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_retried_stage_succeeds_with_exponential_backoff_capped() {
    let d = Arc::new(
        Scripted::default().with("collection", &[Step::Retryable, Step::Retryable, Step::Ok]),
    );
    let c = coordinator(&d);
    let w = collection_of(7);
    let r = c.execute_workflow(w).await.unwrap();
    assert!(r.succeeded());
    assert_eq!(r.stages[0].attempts, 3);
    let calls = d.calls_of("collection");
    assert_eq!(calls[1].0 - calls[0].0, Duration::from_millis(100));
    assert_eq!(
        calls[2].0 - calls[1].0,
        Duration::from_millis(150),
        "capped at max_backoff"
    );
    assert_ne!(
        calls[0].1.trigger_id, calls[1].1.trigger_id,
        "fresh id per attempt"
    );
    assert_eq!(calls[2].1.metadata["attempt"], "3");
    assert_eq!(c.statistics().stage_retries, 2);
    // Out of retries: fails.
    let d = Arc::new(Scripted::default().with("collection", &[Step::Retryable]));
    let c = coordinator(&d);
    let r = c.execute_workflow(collection_of(7)).await.unwrap();
    assert_eq!(r.stages[0].attempts, 3);
    assert_eq!(r.state, WorkflowState::Failed);
}

#[tokio::test(start_paused = true)]
async fn cancellation_abandons_running_stages_and_skips_the_rest() {
    let d = Arc::new(Scripted::default().with("enrichment", &[Step::Hang]));
    let c = Arc::new(coordinator(&d));
    let w = reference_workflow();
    let (id, task) = c.spawn_workflow(w).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = c.workflow_status(&id).unwrap();
    assert_eq!(status.state, WorkflowState::Running);
    assert_eq!(status.stages["collection"], StageStatus::Completed);
    assert_eq!(
        status.stages["enrichment"],
        StageStatus::Running { attempt: 1 }
    );
    assert!(c.cancel_workflow(&id));
    let r = task.await.unwrap();
    assert_eq!(r.state, WorkflowState::Cancelled);
    assert_eq!(r.stage("enrichment").unwrap().status, StageStatus::Skipped);
    assert_eq!(r.stage("alerting").unwrap().status, StageStatus::Skipped);
    assert!(!c.cancel_workflow(&id), "already finished");
    assert_eq!(c.statistics().workflows_cancelled, 1);
    c.cleanup();
    assert!(c.executions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_dispatcher_fails_the_stage_only() {
    let d = Arc::new(Scripted::default().with("detection", &[Step::Panic]));
    let c = coordinator(&d);
    let r = c.execute_workflow(reference_workflow()).await.unwrap();
    assert!(matches!(
        &r.stage("detection").unwrap().status,
        StageStatus::Failed { reason } if reason.contains("panicked")
    ));
    assert_eq!(r.stage("alerting").unwrap().status, StageStatus::Skipped);
}

#[tokio::test]
async fn no_dispatcher_is_a_typed_error() {
    let c = AnalysisChainCoordinator::new(AnalysisChainConfig::default()).unwrap();
    assert_eq!(
        c.execute_workflow(reference_workflow()).await.unwrap_err(),
        ChainError::NoDispatcher
    );
}

/// A stand-in analysis collector on the bus: answers each request with a
/// correlated result, failing for pid 13.
async fn responder(bus: LocalEventBus) {
    let mut sub = bus
        .subscribe(EventFilter::new().with_event_type(EventKind::TriggerRequest))
        .await
        .unwrap();
    while let Some(req) = sub.recv().await {
        let CollectionEvent::TriggerRequest(r) = &req.event else {
            continue;
        };
        let mut corr = req.correlation.child().with_tag(RESULT_TAG);
        let subject = r.target_pid.map_or(PerformanceSubject::Collector, |pid| {
            PerformanceSubject::Process {
                pid,
                process_key: None,
            }
        });
        let metric = match subject {
            PerformanceSubject::Collector => PerformanceMetric::ProcessesSampled,
            _ => PerformanceMetric::ProcessCpu,
        };
        let event = CollectionEvent::Performance(PerformanceEvent::new(
            metric,
            1.0,
            subject,
            SystemTime::now(),
        ));
        if r.target_pid == Some(13) {
            corr = corr.with_tag(FAILED_TAG).with_tag("error=unlucky");
        }
        bus.publish(BusEvent::new("responder", event).with_correlation(corr))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn bus_dispatcher_publishes_requests_and_gathers_correlated_results() {
    let bus = LocalEventBus::new(EventBusConfig::default()).await.unwrap();
    bus.start().await.unwrap();
    let r = tokio::spawn(responder(bus.clone()));
    tokio::task::yield_now().await;
    while !bus.has_subscribers() {
        tokio::task::yield_now().await;
    }
    let c = AnalysisChainCoordinator::new(AnalysisChainConfig::default())
        .unwrap()
        .with_dispatcher(Arc::new(BusDispatcher::new(bus.clone())));
    let ok = c.execute_workflow(reference_workflow()).await.unwrap();
    assert!(ok.succeeded(), "{ok:?}");
    let out = ok.stages[0].output.as_ref().unwrap();
    assert_eq!(out.data["source"], "responder");
    assert_eq!(out.event.as_ref().unwrap().pid(), Some(42));
    let failed = c.execute_workflow(collection_of(13)).await.unwrap();
    assert_eq!(
        failed.stages[0].status,
        StageStatus::Failed {
            reason: "unlucky".into()
        }
    );
    // Only the responder remains subscribed: the dispatcher cleans up.
    assert_eq!(bus.statistics().await.subscribers_live, 1);
    bus.shutdown().await.unwrap();
    r.await.unwrap();
}

#[test]
fn chain_types_are_send_and_sync() {
    crate::assert_send_sync!(
        AnalysisChainCoordinator,
        BusDispatcher,
        ChainError,
        WorkflowResult
    );
}
