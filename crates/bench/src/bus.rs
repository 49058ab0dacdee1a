//! `bus`: events/s through a `LocalEventBus` to 1, 4 and 16 filtered
//! subscribers, against a `tokio::sync::broadcast` channel carrying the
//! same events in the same run.
//!
//! The bus publisher hands over batches (`publish_batch`, 256 events, each
//! wrapped with fresh correlation metadata and its topic); every subscriber
//! has a filter (process events from the publisher, which all pass) and reads
//! whole batches. The broadcast baseline sends each event as an
//! `Arc<CollectionEvent>` (receivers clone the `Arc`); it has no
//! backpressure of its own, so the sender yields while the slowest receiver
//! is a full buffer behind; events receivers still miss (`Lagged`) are
//! reported (0 expected).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::bail;
use collector_core::{
    BusEvent, CollectionEvent, EventBus, EventBusConfig, EventFilter, EventKind, LocalEventBus,
    WhenFull,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::runtime::sample_event;
use crate::{median, report};

const BUFFER: usize = 8192;
const BATCH: usize = 256;
const SUBSCRIBERS: [usize; 3] = [1, 4, 16];

/// Flags of this bench.
#[derive(clap::Parser)]
pub(crate) struct Options {
    /// Events published per repetition (at least one batch).
    #[arg(long, default_value_t = 500_000, value_parser = clap::value_parser!(u64).range(BATCH as u64..))]
    pub(crate) events: u64,
    /// Repetitions.
    #[arg(long, default_value_t = 3, value_parser = crate::positive::<usize>)]
    pub(crate) reps: usize,
}

/// Events/s delivered to each of `subscribers` filtered bus subscribers.
pub(crate) async fn through_bus(events: u64, subscribers: usize) -> anyhow::Result<f64> {
    let bus = LocalEventBus::new(
        EventBusConfig::default()
            .with_buffer_size(BUFFER)
            .with_max_batch_size(BATCH)
            .with_when_full(WhenFull::Block),
    )
    .await?;
    bus.start().await?;
    let readers: Vec<_> = (0..subscribers)
        .map(|_| {
            let filter = EventFilter::new()
                .with_event_type(EventKind::Process)
                .with_source("bench");
            let mut sub = bus.subscribe_now(filter)?;
            Ok(tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(batch) = sub.recv_batch().await {
                    n += batch.len() as u64;
                }
                n
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let template = sample_event();
    let batches = events / BATCH as u64;
    let start = Instant::now();
    for _ in 0..batches {
        let batch = (0..BATCH)
            .map(|_| BusEvent::new("bench", template.clone()))
            .collect();
        bus.publish_batch("bench", batch).await?;
    }
    bus.shutdown().await?;
    let sent = batches * BATCH as u64;
    for r in readers {
        let n = r.await?;
        if n != sent {
            bail!("a bus subscriber received {n} of {sent} events");
        }
    }
    Ok(sent as f64 / start.elapsed().as_secs_f64())
}

/// Events/s delivered to each of `subscribers` broadcast receivers, and
/// the events they missed in all.
async fn through_broadcast(events: u64, subscribers: usize) -> anyhow::Result<(f64, u64)> {
    let (tx, _) = broadcast::channel::<Arc<CollectionEvent>>(BUFFER);
    let lagged = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..subscribers)
        .map(|_| {
            let mut rx = tx.subscribe();
            let lagged = lagged.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    match rx.recv().await {
                        Ok(e) => {
                            n += u64::from(e.kind() == EventKind::Process);
                        }
                        Err(broadcast::error::RecvError::Lagged(k)) => {
                            lagged.fetch_add(k, Ordering::Relaxed);
                        }
                        Err(broadcast::error::RecvError::Closed) => return n,
                    }
                }
            })
        })
        .collect();
    let template = sample_event();
    let start = Instant::now();
    for _ in 0..events {
        // broadcast has no backpressure: wait (yielding) while the slowest
        // receiver is a full buffer behind, so that nothing is overwritten
        // and both sides carry every event.
        while tx.len() >= BUFFER - 1 {
            tokio::task::yield_now().await;
        }
        // Same work as the bus publisher: one clone of the event each.
        let _ = tx.send(Arc::new(template.clone()));
    }
    drop(tx);
    let mut delivered = 0;
    for r in readers {
        delivered += r.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok((
        delivered as f64 / subscribers as f64 / secs,
        lagged.load(Ordering::Relaxed),
    ))
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let rate = |m: &str, v: f64| report(m, format!("{v:.0}"), "events/s");
        let mut bus16 = 0.0;
        let mut bc16 = 0.0;
        for subs in SUBSCRIBERS {
            let mut bus = Vec::new();
            let mut bc = Vec::new();
            let mut lost = 0;
            for _ in 0..o.reps {
                bus.push(through_bus(o.events, subs).await?);
                let (r, l) = through_broadcast(o.events, subs).await?;
                bc.push(r);
                lost += l;
            }
            let (bus, bc) = (median(bus), median(bc));
            rate(&format!("bus.events_per_sec_{subs}_subscribers"), bus);
            rate(
                &format!("bus.baseline_broadcast_events_per_sec_{subs}_subscribers"),
                bc,
            );
            report(
                &format!("bus.baseline_broadcast_lagged_events_{subs}_subscribers"),
                lost,
                "events",
            );
            if subs == 16 {
                (bus16, bc16) = (bus, bc);
            }
        }
        report(
            "bus.ratio_vs_broadcast",
            format!("{:.3}", bus16 / bc16),
            "ratio",
        );
        Ok(())
    })
}
