//! Lifecycle: registration, long-running sources, health, failures, shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use collector_core::{
    Collector, CollectorConfig, CollectorError, CollectorHandle, EventKind, HealthStatus,
    SourceCaps, SourceHealth,
};
use tokio::time::Instant;

use collector_core::testing::Replay;

use crate::sources::{
    collector_of, flood, process_ok, process_with_hash_but_no_algorithm, seq_of, Heeds, OnStart,
    Reference, Ticker, Turning,
};

fn health_of(handle: &CollectorHandle, name: &str) -> SourceHealth {
    handle
        .health()
        .sources
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| h)
        .expect("source is registered")
}

#[test]
fn public_types_are_send_and_sync() {
    fn send<T: Send>() {}
    collector_core::assert_send_sync!(
        CollectorHandle,
        CollectorConfig,
        collector_core::CollectionEvent,
        collector_core::CollectorStats,
        collector_core::EventBatch,
    );
    send::<Collector>();
    send::<collector_core::Subscription>();
}

#[test]
fn registration_refuses_duplicates_and_overflow() {
    let mut c = Collector::new(CollectorConfig::new().with_max_event_sources(2));
    c.register(Box::new(flood("a", 1))).unwrap();
    let err = c.register(Box::new(flood("a", 1))).unwrap_err();
    assert!(
        matches!(err, CollectorError::DuplicateSource { name: "a" }),
        "{err}"
    );
    c.register(Box::new(flood("b", 1))).unwrap();
    let err = c.register(Box::new(flood("c", 1))).unwrap_err();
    assert!(
        matches!(err, CollectorError::TooManySources { name: "c", max: 2 }),
        "{err}"
    );
    assert_eq!(c.capabilities(), SourceCaps::PERFORMANCE);
}

#[tokio::test(start_paused = true)]
async fn invalid_config_starts_nothing() {
    let config = CollectorConfig::new()
        .with_event_buffer_size(10)
        .with_backpressure_threshold(11);
    assert!(Collector::try_new(config.clone()).is_err());
    let mut c = Collector::new(config);
    let source = Reference::new("x", OnStart::Fail);
    let started = source.started.clone();
    c.register(Box::new(source)).unwrap();
    let err = c.run().await.unwrap_err();
    assert!(err.to_string().contains("backpressure_threshold"), "{err}");
    assert!(
        !started.load(Ordering::SeqCst),
        "a source was started with an invalid config"
    );
}

#[tokio::test(start_paused = true)]
async fn looping_source_outlives_the_startup_timeout_and_health_is_checked() {
    let mut ticker = Ticker::new("ticker", Duration::from_millis(100));
    ticker.fail_health_on = vec![2];
    let (health_calls, stop_calls) = (ticker.health_calls.clone(), ticker.stop_calls.clone());
    let config = CollectorConfig::new()
        .with_startup_timeout(Duration::from_millis(50))
        .with_health_check_interval(Duration::from_secs(1));
    let (c, handle) = collector_of(config, ticker);
    let mut events = handle.subscribe();
    let run = tokio::spawn(c.run_until(std::future::pending()));

    // Far past the startup timeout, the source still produces, in order.
    for expected in 0..25 {
        let e = events.recv().await.unwrap();
        assert_eq!(seq_of(&e), expected);
    }
    let t = Instant::now();
    // Checks ran at 0 s, 1 s and 2 s (the one at 1 s failed); 2.5 s have passed.
    assert_eq!(health_calls.load(Ordering::SeqCst), 3);
    assert_eq!(health_of(&handle, "ticker"), SourceHealth::Healthy);
    assert_eq!(handle.stats().sources[0].health_checks_failed_total, 1);
    tokio::time::sleep_until(t + Duration::from_millis(600)).await;
    assert_eq!(health_calls.load(Ordering::SeqCst), 4);

    handle.shutdown();
    run.await.unwrap().unwrap();
    assert_eq!(
        stop_calls.load(Ordering::SeqCst),
        1,
        "stop() must be called once on shutdown"
    );
    assert_eq!(health_of(&handle, "ticker"), SourceHealth::Stopped);
}

#[tokio::test(start_paused = true)]
async fn failing_health_check_degrades_then_recovers() {
    let mut ticker = Ticker::new("flaky", Duration::from_millis(100));
    ticker.fail_health_on = vec![2];
    let config = CollectorConfig::new().with_health_check_interval(Duration::from_secs(1));
    let (c, handle) = collector_of(config, ticker);
    let run = tokio::spawn(c.run_until(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        matches!(health_of(&handle, "flaky"), SourceHealth::Degraded(ref r) if r.contains("check 2 failed"))
    );
    assert_eq!(handle.health().status, HealthStatus::Degraded);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(health_of(&handle, "flaky"), SourceHealth::Healthy);
    handle.shutdown();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_source_saying_its_health_changed_is_checked_at_once_not_at_the_interval() {
    let turning = Turning::new();
    let (go, checked) = (turning.go.clone(), turning.checked.clone());
    let config = CollectorConfig::new().with_health_check_interval(Duration::from_secs(3600));
    let (c, handle) = collector_of(config, turning);
    let run = tokio::spawn(c.run_until(std::future::pending()));
    checked.notified().await; // the check at start
    assert_eq!(health_of(&handle, "turning"), SourceHealth::Healthy);
    let t = Instant::now();
    go.notify_one();
    checked.notified().await;
    // With the clock paused, a check at the interval would have moved it an
    // hour on.
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The check's verdict is stored just after it returns.
    let mut looks = 0;
    while health_of(&handle, "turning") == SourceHealth::Healthy && looks < 100 {
        tokio::task::yield_now().await;
        looks += 1;
    }
    assert!(
        matches!(health_of(&handle, "turning"), SourceHealth::Degraded(ref r) if r.contains("it turned")),
        "{:?}",
        health_of(&handle, "turning")
    );
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    handle.shutdown();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_source_ignoring_shutdown_is_aborted_at_the_deadline() {
    let mut stubborn = Ticker::new("stubborn", Duration::from_millis(50));
    stubborn.heeds = Heeds::Nothing;
    let config = CollectorConfig::new().with_shutdown_timeout(Duration::from_secs(5));
    let mut c = Collector::new(config);
    c.register(Box::new(stubborn)).unwrap();
    c.register(Box::new(Ticker::new("polite", Duration::from_millis(50))))
        .unwrap();
    let handle = c.handle();
    let mut events = handle.subscribe();
    let (ten_tx, ten_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        let mut ten_tx = Some(ten_tx);
        while events.recv().await.is_some() {
            n += 1;
            if n == 10 {
                ten_tx.take().unwrap().send(()).unwrap();
            }
        }
        (n, events.stats())
    });
    let run = tokio::spawn(c.run_until(std::future::pending()));
    ten_rx.await.unwrap();
    let asked = Instant::now();
    handle.shutdown();
    run.await.unwrap().unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(5),
        "returned before the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_millis(5100),
        "overran the deadline: {took:?}"
    );
    let stats = handle.stats();
    assert_eq!(stats.sources_aborted_total, 1);
    assert_eq!(health_of(&handle, "stubborn"), SourceHealth::Aborted);
    assert_eq!(health_of(&handle, "polite"), SourceHealth::Stopped);
    // Everything accepted, the straggler's events included, reached the reader.
    let (read, s) = reader.await.unwrap();
    assert!(
        stats.events_accepted_total() > 50,
        "the stubborn source kept sending until aborted"
    );
    assert_eq!(s.events_offered, stats.events_accepted_total());
    assert_eq!(s.events_delivered, read);
    assert_eq!(read, stats.events_accepted_total());
    assert_eq!(s.events_dropped(), 0);
}

#[tokio::test(start_paused = true)]
async fn failing_and_panicking_sources_leave_the_others_running() {
    let mut c = Collector::new(CollectorConfig::default());
    for (name, on_start) in [("fails", OnStart::Fail), ("panics", OnStart::Panic)] {
        c.register(Box::new(Reference::new(name, on_start)))
            .unwrap();
    }
    c.register(Box::new(Ticker::new("alive", Duration::from_millis(100))))
        .unwrap();
    let handle = c.handle();
    let mut events = handle.subscribe();
    let run = tokio::spawn(c.run_until(std::future::pending()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert!(
        matches!(health_of(&handle, "fails"), SourceHealth::Failed(ref r) if r.contains("kernel interface"))
    );
    assert!(
        matches!(health_of(&handle, "panics"), SourceHealth::Failed(ref r) if r.contains("boom from panics"))
    );
    assert_eq!(health_of(&handle, "alive"), SourceHealth::Healthy);
    assert_eq!(handle.health().status, HealthStatus::Degraded);
    let stats = handle.stats();
    assert_eq!(stats.sources_failed_total, 2);
    assert!(!run.is_finished());
    // The healthy source keeps delivering after the others died.
    let before = events.stats().events_delivered;
    events.recv().await.unwrap();
    assert_eq!(events.stats().events_delivered, before + 1);
    handle.shutdown();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn when_every_source_has_failed_run_ends_with_an_error() {
    let mut c = Collector::new(CollectorConfig::default());
    c.register(Box::new(Reference::new("only", OnStart::Fail)))
        .unwrap();
    let err = c.run_until(std::future::pending()).await.unwrap_err();
    assert!(
        matches!(
            err,
            CollectorError::SourcesFailed {
                failed: 1,
                total: 1
            }
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_events_are_counted_and_the_stream_goes_on() {
    let source = Replay::events(
        "mixed",
        SourceCaps::PROCESS,
        vec![
            process_ok(10),
            process_with_hash_but_no_algorithm(11),
            process_ok(12),
        ],
    );
    let mut c = Collector::new(CollectorConfig::default());
    c.register(Box::new(source)).unwrap();
    let handle = c.handle();
    let mut events = handle.subscribe();
    let run = tokio::spawn(c.run_until(std::future::pending()));
    let first = events.recv().await.unwrap();
    let second = events.recv().await.unwrap();
    assert_eq!((first.pid(), second.pid()), (Some(10), Some(12)));
    assert_eq!(second.kind(), EventKind::Process);
    handle.shutdown();
    run.await.unwrap().unwrap();
    let s = &handle.stats().sources[0];
    assert_eq!(
        (
            s.events_received,
            s.events_accepted,
            s.events_rejected_invalid
        ),
        (3, 2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn subscribing_after_shutdown_yields_an_ended_stream() {
    let mut c = Collector::new(CollectorConfig::default());
    c.register(Box::new(flood("f", 3))).unwrap();
    let handle = c.handle();
    c.run_until(std::future::pending()).await.unwrap();
    let mut late = handle.subscribe();
    assert!(late.recv().await.is_none());
    // Nobody was subscribed: the events were accepted but unrouted, and said so.
    let stats = handle.stats();
    assert_eq!(stats.events_accepted_total(), 3);
    assert_eq!(stats.events_unrouted_total, 3);
}

#[tokio::test]
async fn stats_report_the_process_own_cpu_and_memory() {
    let c = Collector::new(CollectorConfig::default());
    let p = c.handle().stats().process.expect("/proc/self is readable");
    assert!(
        p.rss_bytes > 1024 * 1024,
        "rss {} is implausible",
        p.rss_bytes
    );
    assert!(p.peak_rss_bytes >= p.rss_bytes);
}
