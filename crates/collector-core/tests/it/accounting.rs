//! The accounting invariant under overload: for every stage, events received
//! = events delivered + events dropped (by reason), and queues stay bounded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use collector_core::{CollectorHandle, CollectorStats, SubscriberStats, Subscription, WhenFull};

use collector_core::testing::Replay;
use collector_core::SourceCaps;

use crate::sources::{blocking, collector_of, flood, metric_value, perf, queues, seq_of};

const EVENTS: u64 = 200_000;

/// Reads to the end of the stream, optionally slowly, checking that the
/// source's order is kept.
async fn drain(mut sub: Subscription, slow: bool) -> (u64, SubscriberStats) {
    let mut n = 0;
    let mut last = None;
    while let Some(batch) = sub.recv_batch().await {
        for e in batch.iter() {
            let seq = seq_of(e);
            assert!(
                last.is_none_or(|l| seq > l),
                "order broken: {seq} after {last:?}"
            );
            last = Some(seq);
        }
        n += batch.len() as u64;
        if slow {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    (n, sub.stats())
}

/// `all_stayed`: every subscriber stayed to the end, so each was offered
/// every accepted event.
fn check_invariants(stats: &CollectorStats, sent: u64, all_stayed: bool) {
    let src = &stats.sources[0];
    assert_eq!(src.events_received, sent, "every sent event was received");
    assert_eq!(
        src.events_received,
        src.events_accepted + src.events_rejected_invalid + src.events_dropped_shutdown
    );
    for sub in &stats.subscribers {
        assert_eq!(sub.events_queued, 0);
        if all_stayed {
            assert_eq!(
                sub.events_offered, src.events_accepted,
                "subscriber {}",
                sub.id
            );
        } else {
            assert!(sub.events_offered <= src.events_accepted);
        }
        assert_eq!(
            sub.events_offered,
            sub.events_delivered + sub.events_dropped(),
            "subscriber {}: {sub:?}",
            sub.id
        );
    }
}

/// The collector's registry reads the same counters as its stats: the
/// invariant holds in the exposition too.
fn check_metrics_agree(handle: &CollectorHandle, stats: &CollectorStats) {
    let m = handle.metrics();
    let src = &stats.sources[0];
    let intake = |name: &str, reason: Option<&str>| {
        metric_value(
            m,
            name,
            &[("stage", "intake"), ("source", src.name)],
            reason,
        )
    };
    assert_eq!(
        intake("daemoneye_events_received_total", None),
        src.events_received
    );
    assert_eq!(
        intake("daemoneye_events_accepted_total", None),
        src.events_accepted
    );
    assert_eq!(
        intake("daemoneye_events_dropped_total", Some("invalid")),
        src.events_rejected_invalid
    );
    for sub in &stats.subscribers {
        let id = sub.id.to_string();
        let labels = [("stage", "subscriber"), ("subscriber", id.as_str())];
        let of = |name: &str, reason: Option<&str>| metric_value(m, name, &labels, reason);
        let dropped: u64 = ["full", "closed", "shutdown"]
            .into_iter()
            .map(|r| of("daemoneye_events_dropped_total", Some(r)))
            .sum();
        assert_eq!(
            of("daemoneye_events_offered_total", None),
            sub.events_offered
        );
        assert_eq!(
            of("daemoneye_events_delivered_total", None),
            sub.events_delivered
        );
        assert_eq!(
            of("daemoneye_events_dropped_total", Some("full")),
            sub.events_dropped_full
        );
        assert_eq!(sub.events_offered, sub.events_delivered + dropped);
    }
    let text = m.encode();
    let line = format!(
        "daemoneye_events_received_total{{source=\"{}\",stage=\"intake\"}} {}\n",
        src.name, src.events_received
    );
    assert!(text.contains(&line), "{line} missing from\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_counts_every_drop_of_a_slow_subscriber() {
    let source = flood("flood", EVENTS);
    let sent = source.sent();
    let (c, handle) = collector_of(queues(1024, 128, WhenFull::DropNewest), source);
    let slow = tokio::spawn(drain(handle.subscribe(), true));
    let fast = tokio::spawn(drain(handle.subscribe(), false));

    // Sample queue depths while the flood runs: they never exceed the bound.
    let sampler = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut worst = 0;
            while !handle.is_shutdown_requested() {
                for s in handle.stats().subscribers {
                    worst = worst.max(s.events_queued);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            worst
        })
    };
    c.run_until(std::future::pending()).await.unwrap();
    let (slow_read, slow_stats) = slow.await.unwrap();
    let (fast_read, fast_stats) = fast.await.unwrap();
    let worst = sampler.await.unwrap();

    let sent = sent.load(Ordering::SeqCst);
    assert_eq!(sent, EVENTS);
    let stats = handle.stats();
    check_invariants(&stats, sent, true);
    check_metrics_agree(&handle, &stats);
    assert_eq!(slow_read, slow_stats.events_delivered);
    assert_eq!(fast_read, fast_stats.events_delivered);
    assert!(
        slow_stats.events_dropped_full > 0,
        "the slow subscriber was never overloaded: {slow_stats:?}"
    );
    assert!(
        worst <= 1024 + 128,
        "a queue held {worst} events, above its bound"
    );
    assert!(stats.events_dropped_total() >= slow_stats.events_dropped_full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_loses_nothing_and_backpressure_is_reported() {
    let config = queues(512, 64, WhenFull::Block);
    let (c, handle) = collector_of(config, flood("flood", 20_000));
    let slow = tokio::spawn(drain(handle.subscribe(), true));
    c.run_until(std::future::pending()).await.unwrap();
    let (read, sub) = slow.await.unwrap();
    let stats = handle.stats();
    check_invariants(&stats, 20_000, true);
    assert_eq!(read, 20_000);
    assert_eq!(sub.events_dropped(), 0);
    assert!(
        stats.sources[0].backpressure_total > 0,
        "a slow subscriber under Block must show as backpressure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_flood_drains_what_was_buffered() {
    let config = blocking(4096);
    let source = Replay::new("flood", SourceCaps::PERFORMANCE, u64::MAX, perf);
    let sent = source.sent();
    let (c, handle) = collector_of(config, source);
    let mut sub = handle.subscribe();
    let run = tokio::spawn(c.run_until(std::future::pending()));
    // Shut down once a good amount is flowing.
    let mut read = 0u64;
    while read < 50_000 {
        read += sub.recv_batch().await.unwrap().len() as u64;
    }
    handle.shutdown();
    while let Some(b) = sub.recv_batch().await {
        read += b.len() as u64;
    }
    run.await.unwrap().unwrap();
    let stats = handle.stats();
    let sent = sent.load(Ordering::SeqCst);
    check_invariants(&stats, sent, true);
    assert_eq!(
        read, sent,
        "every event the source sent reached the subscriber"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_goes_away_has_its_queue_counted_as_dropped() {
    let config = blocking(1024);
    let (c, handle) = collector_of(config, flood("flood", 30_000));
    let keeper = tokio::spawn(drain(handle.subscribe(), false));
    let mut quitter = handle.subscribe();
    let run = tokio::spawn(c.run_until(std::future::pending()));
    for _ in 0..100 {
        quitter.recv().await.unwrap();
    }
    drop(quitter);
    run.await.unwrap().unwrap();
    let (read, _) = keeper.await.unwrap();
    assert_eq!(read, 30_000);
    let stats = handle.stats();
    check_invariants(&stats, 30_000, false);
    let gone = stats
        .subscribers
        .iter()
        .find(|s| s.events_delivered == 100)
        .unwrap();
    assert!(gone.events_dropped_closed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_is_named_once_without_gaps_across_sources() {
    use collector_core::{CollectionEvent, Collector, EventId};
    use std::collections::HashSet;
    use std::num::NonZeroU64;

    const EACH: u64 = 5_000;
    let preset = EventId::new(7, NonZeroU64::new(99).unwrap());
    let named = move |i: u64| {
        let mut e = perf(i);
        if i == 0 {
            // A source may name an event itself: the runtime keeps that id.
            assert!(e.name_once(preset));
        }
        e
    };
    let mut c = Collector::new(blocking(1024));
    c.register(Box::new(flood("a", EACH))).unwrap();
    c.register(Box::new(
        Replay::new("b", SourceCaps::PERFORMANCE, EACH, named).then_end(),
    ))
    .unwrap();
    let handle = c.handle();
    let mut sub = handle.subscribe();
    let run = tokio::spawn(c.run());
    let mut ids = Vec::new();
    while let Some(batch) = sub.recv_batch().await {
        ids.extend(batch.iter().map(CollectionEvent::id));
    }
    run.await.unwrap().unwrap();
    assert_eq!(ids.len() as u64, 2 * EACH);
    let ids: Vec<EventId> = ids.into_iter().map(|id| id.expect("named")).collect();
    assert!(ids.contains(&preset), "the source's own id was replaced");
    let ours: Vec<_> = ids.iter().filter(|id| **id != preset).collect();
    let run_id = ours[0].run;
    assert!(
        ours.iter().all(|id| id.run == run_id),
        "one run, one number"
    );
    let seqs: HashSet<u64> = ours.iter().map(|id| id.seq.get()).collect();
    assert_eq!(seqs.len(), ours.len(), "an id was given twice");
    assert_eq!(
        seqs,
        (1..=ours.len() as u64).collect::<HashSet<_>>(),
        "the places run from 1 without gaps"
    );
}
