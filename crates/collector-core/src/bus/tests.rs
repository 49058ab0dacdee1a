#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::event::{EventKind, ProcessEvent};

fn process(pid: u32) -> CollectionEvent {
    CollectionEvent::Process(ProcessEvent::new(pid, "p"))
}

async fn started(config: EventBusConfig) -> LocalEventBus {
    let bus = LocalEventBus::new(config).await.unwrap();
    bus.start().await.unwrap();
    bus
}

fn check_invariant(s: &SubscriberStats) {
    assert_eq!(
        s.events_offered,
        s.events_delivered + s.events_dropped() + s.events_queued,
        "{s:?}"
    );
}

#[tokio::test]
async fn publish_before_start_and_after_shutdown_is_refused() {
    let bus = LocalEventBus::new(EventBusConfig::default()).await.unwrap();
    let e = BusEvent::new("t", process(1));
    assert_eq!(bus.publish(e.clone()).await, Err(BusError::NotStarted));
    bus.start().await.unwrap();
    assert_eq!(bus.publish(e.clone()).await, Ok(1));
    bus.shutdown().await.unwrap();
    assert_eq!(bus.publish(e).await, Err(BusError::ShutDown));
    assert!(bus.start().await.is_err());
    assert!(matches!(
        bus.subscribe(EventFilter::new()).await,
        Err(BusError::ShutDown)
    ));
}

#[tokio::test]
async fn invalid_config_event_correlation_and_topic_are_typed_errors() {
    assert!(matches!(
        LocalEventBus::new(EventBusConfig::default().with_buffer_size(0)).await,
        Err(BusError::Config {
            field: "buffer_size",
            ..
        })
    ));
    let bus = started(EventBusConfig::default()).await;
    let _sub = bus.subscribe(EventFilter::new()).await.unwrap();
    assert!(matches!(
        bus.publish(BusEvent::new("t", process(0))).await,
        Err(BusError::InvalidEvent(_))
    ));
    let mut corr = CorrelationMetadata::new();
    for i in 0..=MAX_CORRELATION_TAGS {
        corr.tags.insert(i.to_string());
    }
    assert!(matches!(
        bus.publish(BusEvent::new("t", process(1)).with_correlation(corr))
            .await,
        Err(BusError::InvalidCorrelation { field: "tags", .. })
    ));
    for topic in ["events.*.x", "", "a..b"] {
        assert!(matches!(
            bus.publish(BusEvent::new("t", process(1)).with_topic(topic))
                .await,
            Err(BusError::InvalidTopic { .. })
        ));
    }
    let stats = bus.statistics().await;
    assert_eq!((stats.events_published, stats.events_rejected), (0, 5));
}

#[tokio::test]
async fn filters_route_and_rejected_events_are_not_offered() {
    let bus = started(EventBusConfig::default()).await;
    let mut all = bus.subscribe(EventFilter::new()).await.unwrap();
    let mut pid7 = bus
        .subscribe(
            EventFilter::new()
                .with_event_type(EventKind::Process)
                .with_correlation_filter(CorrelationFilter::by_pid(7)),
        )
        .await
        .unwrap();
    let mut tagged = bus
        .subscribe(EventFilter::new().with_correlation_filter(CorrelationFilter::by_tag("x")))
        .await
        .unwrap();
    for pid in 1..=10 {
        let mut e = BusEvent::new("t", process(pid));
        if pid % 2 == 0 {
            e.correlation = e.correlation.with_tag("x");
        }
        bus.publish(e).await.unwrap();
    }
    bus.shutdown().await.unwrap();
    let mut n = 0;
    let mut last_seq = 0;
    while let Some(e) = all.recv().await {
        assert!(e.correlation.sequence > last_seq, "sequence increases");
        last_seq = e.correlation.sequence;
        n += 1;
    }
    assert_eq!(n, 10);
    assert_eq!(pid7.recv().await.unwrap().event.pid(), Some(7));
    assert!(pid7.recv().await.is_none());
    let mut evens = Vec::new();
    while let Some(e) = tagged.recv().await {
        evens.push(e.event.pid().unwrap());
    }
    assert_eq!(evens, vec![2, 4, 6, 8, 10]);
    assert_eq!(pid7.stats().events_offered, 1);
    assert_eq!(tagged.stats().events_offered, 5);
    for s in bus.statistics().await.subscribers {
        check_invariant(&s);
    }
}

#[tokio::test(start_paused = true)]
async fn slow_subscriber_does_not_stall_others_with_drop_newest() {
    let bus = started(
        EventBusConfig::default()
            .with_buffer_size(8)
            .with_when_full(WhenFull::DropNewest),
    )
    .await;
    let slow = bus.subscribe(EventFilter::new()).await.unwrap();
    let mut fast = bus.subscribe(EventFilter::new()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut pids = Vec::new();
        while let Some(e) = fast.recv().await {
            pids.push(e.event.pid().unwrap());
        }
        (pids, fast.stats())
    });
    for pid in 1..=100 {
        // The publisher never waits: the slow subscriber is full after 8.
        tokio::time::timeout(
            Duration::from_millis(1),
            bus.publish(BusEvent::new("t", process(pid))),
        )
        .await
        .unwrap()
        .unwrap();
        tokio::task::yield_now().await;
    }
    bus.shutdown().await.unwrap();
    let (pids, fast_stats) = reader.await.unwrap();
    assert_eq!(pids, (1..=100).collect::<Vec<_>>(), "fast: all, in order");
    assert_eq!(fast_stats.events_dropped(), 0);
    let s = slow.stats();
    assert_eq!(s.events_offered, 100);
    assert_eq!(s.events_dropped_full, 92);
    assert_eq!(s.events_queued, 8);
    check_invariant(&s);
    drop(slow);
    let s = bus
        .statistics()
        .await
        .subscribers
        .into_iter()
        .find(|x| x.id == s.id)
        .unwrap();
    assert_eq!(s.events_dropped_closed, 8);
    check_invariant(&s);
}

#[tokio::test(start_paused = true)]
async fn block_waits_for_room_and_shutdown_releases_a_blocked_publisher() {
    let bus = started(EventBusConfig::default().with_buffer_size(2)).await;
    let sub = bus.subscribe(EventFilter::new()).await.unwrap();
    bus.publish(BusEvent::new("t", process(1))).await.unwrap();
    bus.publish(BusEvent::new("t", process(2))).await.unwrap();
    let blocked = tokio::spawn({
        let bus = bus.clone();
        async move { bus.publish(BusEvent::new("t", process(3))).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!blocked.is_finished(), "publisher waits for room");
    bus.shutdown().await.unwrap();
    blocked.await.unwrap().unwrap();
    let s = sub.stats();
    assert_eq!((s.events_offered, s.events_dropped_shutdown), (3, 1));
    check_invariant(&s);
}

#[tokio::test]
async fn unsubscribe_ends_the_stream_after_what_is_queued() {
    let bus = started(EventBusConfig::default()).await;
    let mut sub = bus.subscribe(EventFilter::new()).await.unwrap();
    bus.publish(BusEvent::new("t", process(1))).await.unwrap();
    bus.unsubscribe(sub.id()).await.unwrap();
    bus.publish(BusEvent::new("t", process(2))).await.unwrap();
    assert_eq!(sub.recv().await.unwrap().event.pid(), Some(1));
    assert!(sub.recv().await.is_none());
    assert_eq!(
        bus.unsubscribe(999).await,
        Err(BusError::UnknownSubscription { id: 999 })
    );
    let stats = bus.statistics().await;
    assert_eq!((stats.subscribers_live, stats.events_unrouted), (0, 1));
}

#[tokio::test]
async fn trigger_requests_keep_their_correlation_id_and_topic_filters_apply() {
    let bus = started(EventBusConfig::default()).await;
    let mut sub = bus
        .subscribe(
            EventFilter::new()
                .try_with_topic("events.trigger_request.#")
                .unwrap(),
        )
        .await
        .unwrap();
    bus.publish(BusEvent::new("t", process(1))).await.unwrap();
    let req = crate::event::TriggerRequest {
        trigger_id: "t1".into(),
        target_collector: "binary-hasher".into(),
        analysis_type: crate::event::AnalysisType::BinaryHash,
        priority: crate::event::TriggerPriority::High,
        target_pid: Some(1),
        target_path: None,
        correlation_id: "c-1".into(),
        metadata: std::collections::BTreeMap::new(),
        timestamp: std::time::SystemTime::now(),
    };
    bus.publish(BusEvent::new("t", CollectionEvent::TriggerRequest(req)))
        .await
        .unwrap();
    let got = sub.recv().await.unwrap();
    assert_eq!(got.correlation.correlation_id, "c-1");
    assert_eq!(got.topic, "events.trigger_request.binary_hash");
}

crate::assert_send_sync!(
    LocalEventBus,
    BusEvent,
    BusSubscription,
    EventFilter,
    BusError
);
