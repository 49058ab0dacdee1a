//! The conformance kit catches each broken rule and passes good sources.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use collector_core::testing::{check_source, ConformanceConfig, ConformanceError, Replay};
use collector_core::{EventKind, EventSource, SourceCaps, SourceContext};
use tokio::sync::mpsc;

use crate::sources::{
    process_ok, process_with_hash_but_no_algorithm, Heeds, OnStart, Reference, Ticker,
};

/// What the kit finds wrong with `source`, run with the default config.
async fn broken_rule(source: impl EventSource + 'static) -> ConformanceError {
    check_source(Arc::new(source), &ConformanceConfig::default())
        .await
        .unwrap_err()
}

/// A ticker that heeds only `heeds`, checked: it must fail for not stopping.
async fn assert_does_not_stop(name: &'static str, heeds: Heeds) {
    let mut ticker = Ticker::new(name, Duration::from_millis(10));
    ticker.heeds = heeds;
    let err = broken_rule(ticker).await;
    assert!(
        matches!(err, ConformanceError::DidNotStop { source_name, .. } if source_name == name),
        "{err}"
    );
}

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
    assert_eq!(report.kinds(), [EventKind::Performance]);
    assert!(report.stop_latency <= config.stop_deadline);
}

/// The ticker awaits its token, so with the clock paused it stops without
/// any time passing; a source that polled a flag every N ms would take up to
/// N ms here.
#[tokio::test(start_paused = true)]
async fn a_source_awaiting_its_token_stops_at_once() {
    let report = check_source(
        Arc::new(Ticker::new("t", Duration::from_secs(3600))),
        &ConformanceConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.stop_latency, Duration::ZERO);
}

/// The reference README's pattern: only `start`, polling the flag. The kit
/// cancels only the token; the default `start_with` sets the flag from it.
#[tokio::test(start_paused = true)]
async fn a_source_on_the_reference_flag_stops_when_the_token_is_cancelled() {
    let poller = Reference::new("reference-poller", OnStart::PollFlag);
    let report = check_source(Arc::new(poller), &ConformanceConfig::default())
        .await
        .unwrap();
    assert!(report.stop_latency <= Duration::from_millis(100));
}

/// The default `start_with` sets the flag for `start` when the token is
/// cancelled.
#[tokio::test(start_paused = true)]
async fn the_default_start_with_sets_the_flag_when_the_token_is_cancelled() {
    let poller = Reference::new("flagged", OnStart::PollFlag);
    let (tx, _rx) = mpsc::channel(1);
    let ctx = SourceContext::new("flagged", tx);
    let (token, flag) = (ctx.shutdown().clone(), ctx.shutdown_flag().clone());
    let run = tokio::spawn(async move { poller.start_with(ctx).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!flag.load(Ordering::SeqCst));
    assert!(!run.is_finished());
    token.cancel();
    run.await.unwrap().unwrap();
    assert!(flag.load(Ordering::SeqCst));
}

/// A source implementing `start_with` that watches only the flag: the kit
/// cancels only the token, so it does not stop.
#[tokio::test(start_paused = true)]
async fn a_start_with_source_ignoring_its_token_fails() {
    assert_does_not_stop("flag-watcher", Heeds::FlagOnly).await;
}

/// A caller of the reference `start` that can only set the flag still stops
/// a source that awaits its token: `SourceContext::from_flag` bridges them.
#[tokio::test(start_paused = true)]
async fn setting_the_flag_stops_a_token_source_started_through_start() {
    let source = Ticker::new("t", Duration::from_secs(3600));
    let (tx, _rx) = mpsc::channel(8);
    let flag = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn({
        let flag = flag.clone();
        async move { source.start(tx, flag).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!run.is_finished());
    flag.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_millis(100), run)
        .await
        .expect("stopped within the bridge's period")
        .unwrap()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_source_ignoring_the_signal_fails() {
    assert_does_not_stop("deaf", Heeds::Nothing).await;
}

#[tokio::test(start_paused = true)]
async fn panics_and_errors_are_reported() {
    for (on_start, name) in [(OnStart::Panic, "p"), (OnStart::Fail, "e")] {
        let src = Reference::new(name, on_start);
        let err = broken_rule(src).await;
        if matches!(on_start, OnStart::Panic) {
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
    let bad = Replay::events(
        "bad",
        SourceCaps::PROCESS,
        vec![process_ok(1), process_with_hash_but_no_algorithm(2)],
    );
    let err = broken_rule(bad).await;
    assert!(
        matches!(err, ConformanceError::InvalidEvent { index: 1, .. }),
        "{err}"
    );

    let liar = Replay::events("liar", SourceCaps::NETWORK, vec![process_ok(1)]);
    let err = broken_rule(liar).await;
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

#[tokio::test(start_paused = true)]
async fn a_panicking_stop_is_reported() {
    let src = Reference::new("panics-on-stop", OnStart::PanicInStop);
    let err = broken_rule(src).await;
    assert!(
        matches!(err, ConformanceError::Panicked { method: "stop", .. }),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn too_few_events_fail_when_events_are_required() {
    let quiet = Replay::events("quiet", SourceCaps::PROCESS, vec![]);
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
