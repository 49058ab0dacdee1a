//! Criterion benches of the runtime's hot paths, for regression tracking:
//! events through the `Collector` (1 source → 1 subscriber) against a bare
//! bounded mpsc channel carrying the same events, and event validation.
//! The project's own figures come from `daemoneye-bench runtime`.
#![allow(missing_docs, clippy::unwrap_used)]

use collector_core::testing::{sample_process_event as event, Replay};
use collector_core::{Collector, CollectorConfig, SourceCaps};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::sync::mpsc;

const EVENTS: u64 = 100_000;
const BUFFER: usize = 8192;

async fn collector(n: u64) -> u64 {
    let mut c = Collector::new(
        CollectorConfig::new()
            .with_event_buffer_size(BUFFER)
            .with_max_batch_size(512),
    );
    let e = event();
    c.register(Box::new(
        Replay::new("blaster", SourceCaps::PROCESS, n, move |_| e.clone()).then_end(),
    ))
    .unwrap();
    let mut sub = c.handle().subscribe();
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while let Some(b) = sub.recv_batch().await {
            got += b.len() as u64;
        }
        got
    });
    c.run_until(std::future::pending()).await.unwrap();
    reader.await.unwrap()
}

async fn bare_mpsc(n: u64) -> u64 {
    let (tx, mut rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let e = event();
        for _ in 0..n {
            if tx.send(e.clone()).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut got = 0;
        let mut buf = Vec::with_capacity(512);
        while rx.recv_many(&mut buf, 512).await > 0 {
            got += buf.len() as u64;
            buf.clear();
        }
        got
    })
    .await
    .unwrap()
}

fn throughput(c: &mut Criterion) {
    // Multi-threaded, I/O and time enabled.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("runtime");
    g.throughput(Throughput::Elements(EVENTS));
    g.sample_size(20);
    g.bench_function(
        BenchmarkId::new("collector_1_source_1_subscriber", EVENTS),
        |b| {
            b.iter(|| assert_eq!(rt.block_on(collector(EVENTS)), EVENTS));
        },
    );
    g.bench_function(BenchmarkId::new("baseline_bare_mpsc", EVENTS), |b| {
        b.iter(|| assert_eq!(rt.block_on(bare_mpsc(EVENTS)), EVENTS));
    });
    g.finish();
}

fn validation(c: &mut Criterion) {
    let e = event();
    c.bench_function("event/validate_process", |b| {
        b.iter(|| std::hint::black_box(&e).validate());
    });
}

criterion_group!(benches, throughput, validation);
criterion_main!(benches);
