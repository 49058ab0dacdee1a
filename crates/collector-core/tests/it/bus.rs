//! The runtime's bus and filtered subscriptions: every accepted event is
//! published into the collector's bus; filters select; the accounting
//! invariant holds for filtered subscribers (a rejected event is not offered).

use std::time::Duration;

use collector_core::testing::Replay;
use collector_core::{
    BusSubscription, CollectionEvent, CollectorConfig, CorrelationFilter, EventBus, EventFilter,
    EventKind, ProcessEvent, SourceCaps, SubscriberStats, Subscription, WhenFull,
};

use crate::sources::{collector_of, queues};

const EVENTS: u64 = 50_000;

/// Process events numbered by `memory_usage`, pids cycling 1..=10; the
/// source then returns.
fn procs() -> Replay {
    Replay::new("procs", SourceCaps::PROCESS, EVENTS, |i| {
        let mut p = ProcessEvent::new(u32::try_from(i % 10).unwrap() + 1, "p");
        p.memory_usage = Some(i);
        CollectionEvent::Process(p)
    })
    .then_end()
}

fn seq(e: &CollectionEvent) -> u64 {
    match e {
        CollectionEvent::Process(p) => p.memory_usage.unwrap(),
        other => panic!("unexpected {other:?}"),
    }
}

async fn drain(mut sub: Subscription, slow: bool) -> (Vec<u32>, SubscriberStats) {
    let mut pids = Vec::new();
    let mut last = None;
    while let Some(batch) = sub.recv_batch().await {
        for e in batch.iter() {
            let s = seq(e);
            assert!(last.is_none_or(|l| s > l), "order broken");
            last = Some(s);
            pids.push(e.pid().unwrap());
        }
        if slow {
            tokio::time::sleep(Duration::from_micros(300)).await;
        }
    }
    (pids, sub.stats())
}

async fn drain_bus(mut sub: BusSubscription) -> (u64, SubscriberStats) {
    let mut n = 0;
    let mut last = 0;
    while let Some(e) = sub.recv().await {
        assert_eq!(e.source, "procs");
        assert!(e.correlation.sequence > last, "bus sequence increases");
        last = e.correlation.sequence;
        assert_eq!(e.topic, "events.process.snapshot");
        n += 1;
    }
    (n, sub.stats())
}

fn invariant(s: &SubscriberStats) {
    assert_eq!(s.events_queued, 0);
    assert_eq!(
        s.events_offered,
        s.events_delivered + s.events_dropped(),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_subscribers_keep_the_accounting_invariant_under_overload() {
    let (c, h) = collector_of(queues(256, 64, WhenFull::DropNewest), procs());
    let fast_pid3 = tokio::spawn(drain(
        h.subscribe_filtered(EventFilter::new().with_pid(3)),
        false,
    ));
    let slow_pid3 = tokio::spawn(drain(
        h.subscribe_filtered(
            EventFilter::new()
                .with_event_type(EventKind::Process)
                .with_correlation_filter(CorrelationFilter::by_pid(3).with_pid(4)),
        ),
        true,
    ));
    let none = tokio::spawn(drain(
        h.subscribe_filtered(EventFilter::new().with_event_type(EventKind::Network)),
        false,
    ));
    let all = tokio::spawn(drain(h.subscribe(), false));
    let bus_sub = h
        .bus()
        .subscribe(EventFilter::new().with_source("procs").with_pid(5))
        .await
        .unwrap();
    let on_bus = tokio::spawn(drain_bus(bus_sub));
    c.run_until(std::future::pending()).await.unwrap();

    let (pids, s) = fast_pid3.await.unwrap();
    assert!(pids.iter().all(|p| *p == 3));
    assert_eq!(
        s.events_offered,
        EVENTS / 10,
        "only matching events are offered"
    );
    invariant(&s);
    let (pids, s) = slow_pid3.await.unwrap();
    assert!(pids.iter().all(|p| *p == 3 || *p == 4));
    assert_eq!(s.events_offered, EVENTS / 5);
    invariant(&s);
    let (pids, s) = none.await.unwrap();
    assert!(pids.is_empty());
    assert_eq!(s.events_offered, 0);
    let (pids, s) = all.await.unwrap();
    assert_eq!(s.events_offered, EVENTS);
    assert_eq!(pids.len() as u64, s.events_delivered);
    invariant(&s);
    let (n, s) = on_bus.await.unwrap();
    assert_eq!(s.events_offered, EVENTS / 10);
    assert_eq!(n, s.events_delivered);
    invariant(&s);
    let stats = h.stats();
    assert_eq!(stats.events_unrouted_total, 0);
    let bus = h.bus().statistics().await;
    assert_eq!(
        bus.events_published, EVENTS,
        "every accepted event reached the bus"
    );
}

#[tokio::test]
async fn the_collector_bus_carries_events_from_other_components() {
    let (c, h) = collector_of(CollectorConfig::default(), procs());
    let mut triggers = h
        .bus()
        .subscribe(EventFilter::new().with_event_type(EventKind::TriggerRequest))
        .await
        .unwrap();
    let req = collector_core::TriggerRequest {
        trigger_id: "t".into(),
        target_collector: "binary-hasher".into(),
        analysis_type: collector_core::AnalysisType::BinaryHash,
        priority: collector_core::TriggerPriority::High,
        target_pid: Some(1),
        target_path: None,
        correlation_id: "c".into(),
        metadata: std::collections::BTreeMap::new(),
        timestamp: std::time::SystemTime::now(),
    };
    h.bus()
        .publish(collector_core::BusEvent::new(
            "triggers",
            CollectionEvent::TriggerRequest(req),
        ))
        .await
        .unwrap();
    c.run_until(std::future::pending()).await.unwrap();
    let got = triggers.recv().await.unwrap();
    assert_eq!(got.correlation.correlation_id, "c");
    assert!(triggers.recv().await.is_none(), "stream ends at shutdown");
}
