//! The conformance kit catches each broken rule and passes good sources.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use collector_core::testing::{check_source, ConformanceConfig, ConformanceError};
use collector_core::{CollectionEvent, EventKind, EventSource, SourceCaps};
use tokio::sync::mpsc;

use crate::sources::{process_ok, process_with_hash_but_no_algorithm, Broken, Scripted, Ticker};

#[tokio::test(start_paused = true)]
async fn a_well_behaved_source_passes() {
    let config = ConformanceConfig {
        min_events: 5,
        ..ConformanceConfig::default()
    };
    let report = check_source(
        Arc::new(Ticker::new("t", Duration::from_millis(10))),
        &config,
    )
    .await
    .unwrap();
    assert!(report.events() >= 5);
    assert_eq!(
        report.events_by_kind.keys().copied().collect::<Vec<_>>(),
        vec![EventKind::Performance]
    );
    assert!(report.stop_latency <= config.stop_deadline);
}

#[tokio::test(start_paused = true)]
async fn a_source_ignoring_the_signal_fails() {
    let mut t = Ticker::new("deaf", Duration::from_millis(10));
    t.ignore_shutdown = true;
    let err = check_source(Arc::new(t), &ConformanceConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConformanceError::DidNotStop {
                source_name: "deaf",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn panics_and_errors_are_reported() {
    for (panic, name) in [(true, "p"), (false, "e")] {
        let src = Broken {
            name,
            panic,
            started: Arc::default(),
        };
        let err = check_source(Arc::new(src), &ConformanceConfig::default())
            .await
            .unwrap_err();
        if panic {
            assert!(
                matches!(
                    err,
                    ConformanceError::Panicked {
                        method: "start",
                        ..
                    }
                ),
                "{err}"
            );
        } else {
            assert!(matches!(err, ConformanceError::Failed { .. }), "{err}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn invalid_and_undeclared_events_are_caught() {
    let bad = Scripted {
        name: "bad",
        caps: SourceCaps::PROCESS,
        events: vec![process_ok(1), process_with_hash_but_no_algorithm(2)],
    };
    let err = check_source(Arc::new(bad), &ConformanceConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConformanceError::InvalidEvent { index: 1, .. }),
        "{err}"
    );

    let liar = Scripted {
        name: "liar",
        caps: SourceCaps::NETWORK,
        events: vec![process_ok(1)],
    };
    let err = check_source(Arc::new(liar), &ConformanceConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConformanceError::Undeclared {
                kind: EventKind::Process,
                ..
            }
        ),
        "{err}"
    );
}

struct PanicsOnStop;

#[async_trait]
impl EventSource for PanicsOnStop {
    fn name(&self) -> &'static str {
        "panics-on-stop"
    }
    fn capabilities(&self) -> SourceCaps {
        SourceCaps::PROCESS
    }
    async fn start(
        &self,
        _tx: mpsc::Sender<CollectionEvent>,
        _stop: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        Ok(())
    }
    async fn stop(&self) -> anyhow::Result<()> {
        panic!("stop exploded")
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_stop_is_reported() {
    let err = check_source(Arc::new(PanicsOnStop), &ConformanceConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConformanceError::Panicked { method: "stop", .. }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn too_few_events_fail_when_events_are_required() {
    let quiet = Scripted {
        name: "quiet",
        caps: SourceCaps::PROCESS,
        events: vec![],
    };
    let config = ConformanceConfig {
        min_events: 1,
        ..ConformanceConfig::default()
    };
    let err = check_source(Arc::new(quiet), &config).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConformanceError::TooFewEvents {
                want: 1,
                got: 0,
                ..
            }
        ),
        "{err}"
    );
}
