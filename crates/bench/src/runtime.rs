//! `runtime`: events/s through the `Collector` against a bare bounded tokio
//! mpsc channel carrying the same events, and RSS under a sustained flood.

use std::time::Duration;

use anyhow::bail;
use collector_core::testing::Replay;
use collector_core::{
    CollectionEvent, Collector, CollectorConfig, ProcessResources, SourceCaps, WhenFull,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::report;

/// Intake and subscriber queue size, shared by the baseline channel.
const BUFFER: usize = 8192;
const BATCH: usize = 512;

options! {
    /// Events per measurement.
    events: u64 = 2_000_000,
    /// Repetitions.
    reps: usize = 3,
    /// Seconds of the RSS flood.
    flood_secs: u64 = 10,
}

/// A process event of realistic shape: the thing a process collector sends.
pub(crate) use collector_core::testing::sample_process_event as sample_event;

/// A source sending `count` clones of the sample event, then ending.
pub(crate) fn blaster(name: &'static str, count: u64) -> Replay {
    let template = sample_event();
    Replay::new(name, SourceCaps::PROCESS, count, move |_| template.clone()).then_end()
}

const NAMES: [&str; 4] = ["blaster-0", "blaster-1", "blaster-2", "blaster-3"];

/// The same volume through bare bounded channels: `sources` producers into
/// one channel (as the collector's sources feed its intake), one consumer.
async fn baseline(events: u64, sources: usize) -> anyhow::Result<f64> {
    let (tx, mut rx) = mpsc::channel::<CollectionEvent>(BUFFER);
    let template = sample_event();
    let per = events / sources as u64;
    let start = Instant::now();
    for _ in 0..sources {
        let (tx, template) = (tx.clone(), template.clone());
        tokio::spawn(async move {
            for _ in 0..per {
                if tx.send(template.clone()).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    // The consumer runs on a worker like the collector's subscribers, and
    // takes what is ready in one go, as the collector does: the strongest
    // fair use of a bare channel.
    let got = tokio::spawn(async move {
        let mut got = 0u64;
        let mut buf = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut buf, BATCH).await > 0 {
            got += buf.len() as u64;
            buf.clear();
        }
        got
    })
    .await?;
    let secs = start.elapsed().as_secs_f64();
    if got != per * sources as u64 {
        bail!("baseline lost events: {got}");
    }
    Ok(got as f64 / secs)
}

/// Events/s from `sources` sources to `subscribers` subscribers; counts
/// events as delivered to the first subscriber.
async fn through_collector(events: u64, sources: usize, subscribers: usize) -> anyhow::Result<f64> {
    let config = CollectorConfig::new()
        .with_event_buffer_size(BUFFER)
        .with_max_batch_size(BATCH)
        .with_when_full(WhenFull::Block);
    let mut collector = Collector::try_new(config)?;
    let per = events / sources as u64;
    for name in NAMES.iter().take(sources) {
        collector.register(Box::new(blaster(name, per)))?;
    }
    let handle = collector.handle();
    let readers: Vec<_> = (0..subscribers)
        .map(|_| {
            let mut sub = handle.subscribe();
            tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(batch) = sub.recv_batch().await {
                    n += batch.len() as u64;
                }
                n
            })
        })
        .collect();
    let start = Instant::now();
    collector.run_until(std::future::pending()).await?;
    let mut first = None;
    for r in readers {
        let n = r.await?;
        first.get_or_insert(n);
        if n != per * sources as u64 {
            bail!(
                "a subscriber received {n} of {} events",
                per * sources as u64
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(first.unwrap_or_default() as f64 / secs)
}

/// Median and relative spread ((max - min) / median) of `reps` runs.
async fn measure<F, Fut>(reps: usize, mut f: F) -> anyhow::Result<(f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        v.push(f().await?);
    }
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    let spread = (v[v.len() - 1] - v[0]) / median;
    Ok((median, spread))
}

/// One source flooding one subscriber for `dur`: RSS sampled every 250 ms.
async fn flood(dur: Duration) -> anyhow::Result<(u64, u64, f64)> {
    let config = CollectorConfig::new()
        .with_event_buffer_size(BUFFER)
        .with_max_batch_size(BATCH);
    let mut collector = Collector::try_new(config)?;
    collector.register(Box::new(blaster("flood", u64::MAX)))?;
    let handle = collector.handle();
    let mut sub = handle.subscribe();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(b) = sub.recv_batch().await {
            n += b.len() as u64;
        }
        n
    });
    let run = tokio::spawn(collector.run_until(std::future::pending()));
    let start = Instant::now();
    let mut samples = Vec::new();
    while start.elapsed() < dur {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.push(ProcessResources::current()?.rss_bytes);
    }
    handle.shutdown();
    run.await??;
    let n = reader.await?;
    let peak = samples.iter().copied().max().unwrap_or_default();
    // Growth after the first second (allocator warm-up) to the end.
    let warm = samples.get(4).copied().unwrap_or_default();
    let last = samples.last().copied().unwrap_or_default();
    Ok((
        peak,
        last.saturating_sub(warm),
        n as f64 / start.elapsed().as_secs_f64(),
    ))
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // Warm up allocator and threads once.
        through_collector(o.events / 10, 1, 1).await?;
        baseline(o.events / 10, 1).await?;

        let (base, base_spread) = measure(o.reps, || baseline(o.events, 1)).await?;
        let (c11, c11_spread) = measure(o.reps, || through_collector(o.events, 1, 1)).await?;
        let (base4, _) = measure(o.reps, || baseline(o.events, 4)).await?;
        let (c14, _) = measure(o.reps, || through_collector(o.events, 1, 4)).await?;
        let (c41, _) = measure(o.reps, || through_collector(o.events, 4, 1)).await?;
        let (c44, _) = measure(o.reps, || through_collector(o.events, 4, 4)).await?;
        let rate = |m: &str, v: f64| report(m, format!("{v:.0}"), "events/s");
        let ratio = |m: &str, v: f64| report(m, format!("{v:.3}"), "ratio");
        rate("runtime.baseline_mpsc_events_per_sec", base);
        rate("runtime.events_per_sec", c11);
        ratio("runtime.ratio_vs_mpsc", c11 / base);
        rate("runtime.events_per_sec_1_source_4_subscribers", c14);
        rate("runtime.baseline_mpsc_4_producers_events_per_sec", base4);
        rate("runtime.events_per_sec_4_sources_1_subscriber", c41);
        ratio("runtime.ratio_4_sources_vs_mpsc_4_producers", c41 / base4);
        rate("runtime.events_per_sec_4_sources_4_subscribers", c44);
        ratio("runtime.baseline_spread", base_spread);
        ratio("runtime.events_per_sec_spread", c11_spread);

        let (peak, growth, flood_rate) = flood(Duration::from_secs(o.flood_secs)).await?;
        rate("runtime.flood_events_per_sec", flood_rate);
        report("runtime.peak_rss_bytes", peak, "bytes");
        report("runtime.flood_rss_growth_bytes", growth, "bytes");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn blaster_passes_the_conformance_check() {
        let source = blaster("blaster", 10_000);
        // Ends as soon as the events are in; generous for loaded machines.
        let config = collector_core::testing::ConformanceConfig::wanting(
            10_000,
            std::time::Duration::from_secs(30),
        );
        let report = collector_core::testing::check_source(std::sync::Arc::new(source), &config)
            .await
            .unwrap();
        assert_eq!(report.events(), 10_000);
    }

    #[test]
    fn options_refuse_bad_flags() {
        let args = |v: &[&str]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert!(crate::parse_options::<Options>(&args(&["--events", "0"])).is_err());
        assert!(crate::parse_options::<Options>(&args(&["--events"])).is_err());
        assert!(crate::parse_options::<Options>(&args(&["--bogus", "1"])).is_err());
        assert_eq!(
            crate::parse_options::<Options>(&args(&["--events", "5"]))
                .unwrap()
                .events,
            5
        );
    }
}
