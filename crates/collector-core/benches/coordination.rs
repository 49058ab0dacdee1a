//! Criterion benches of the coordination layer, for regression tracking:
//! fan-out through a `LocalEventBus` to 16 filtered subscribers against a
//! `tokio::sync::broadcast` channel, and trigger evaluation of one process
//! event against the 10 conditions of `testing::ten_trigger_conditions`
//! (the same as `daemoneye-bench triggers`). The project's own figures come
//! from `daemoneye-bench bus` and `daemoneye-bench triggers`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;

use collector_core::testing::{ten_trigger_conditions, trigger_manager};
use collector_core::{
    BusEvent, CollectionEvent, EventBusConfig, EventFilter, EventKind, LocalEventBus, ProcessEvent,
    TriggerConfig, WhenFull,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::sync::broadcast;

const EVENTS: u64 = 16_384;
const BATCH: usize = 256;
const SUBSCRIBERS: usize = 16;

fn event() -> CollectionEvent {
    let mut p = ProcessEvent::new(4242, "nginx");
    p.executable_path = Some("/usr/sbin/nginx".into());
    p.command_line = vec!["nginx".into(), "-g".into(), "daemon off;".into()];
    CollectionEvent::Process(p)
}

async fn bus_fan_out() {
    let bus = LocalEventBus::new(
        EventBusConfig::default()
            .with_buffer_size(8192)
            .with_max_batch_size(BATCH)
            .with_when_full(WhenFull::Block),
    )
    .await
    .unwrap();
    bus.start().await.unwrap();
    let readers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut sub = bus
                .subscribe_now(EventFilter::new().with_event_type(EventKind::Process))
                .unwrap();
            tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(b) = sub.recv_batch().await {
                    n += b.len() as u64;
                }
                n
            })
        })
        .collect();
    let e = event();
    for _ in 0..EVENTS / BATCH as u64 {
        let batch = (0..BATCH)
            .map(|_| BusEvent::new("bench", e.clone()))
            .collect();
        bus.publish_batch("bench", batch).await.unwrap();
    }
    collector_core::EventBus::shutdown(&bus).await.unwrap();
    for r in readers {
        assert_eq!(r.await.unwrap(), EVENTS);
    }
}

async fn broadcast_fan_out() {
    let (tx, _) = broadcast::channel::<Arc<CollectionEvent>>(8192);
    let readers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    match rx.recv().await {
                        Ok(_) => n += 1,
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return n,
                    }
                }
            })
        })
        .collect();
    let e = event();
    for _ in 0..EVENTS {
        while tx.len() >= 8191 {
            tokio::task::yield_now().await;
        }
        let _ = tx.send(Arc::new(e.clone()));
    }
    drop(tx);
    for r in readers {
        r.await.unwrap();
    }
}

fn fan_out(c: &mut Criterion) {
    // Multi-threaded, I/O and time enabled.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("fan_out_16_subscribers");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(10);
    g.bench_function("local_event_bus", |b| b.iter(|| rt.block_on(bus_fan_out())));
    g.bench_function("broadcast_baseline", |b| {
        b.iter(|| rt.block_on(broadcast_fan_out()));
    });
    g.finish();
}

fn triggers(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let m = trigger_manager(TriggerConfig::default(), &ten_trigger_conditions()).unwrap();
    let CollectionEvent::Process(p) = event() else {
        unreachable!()
    };
    c.bench_function("trigger_evaluate_10_conditions", |b| {
        b.iter(|| m.evaluate(std::hint::black_box(&p)));
    });
}

criterion_group!(benches, fan_out, triggers);
criterion_main!(benches);
