//! The quick-start collector: a real source reading host metrics from /proc
//! (load averages, memory, running processes) every second, and a
//! subscriber printing each event as one JSON line on stdout. Stops on
//! Ctrl-C or SIGTERM, or after `--for-secs N`.
//!
//! ```text
//! cargo run --release -p collector-core --example host_metrics
//! ```
#![allow(missing_docs, clippy::print_stdout)]

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use async_trait::async_trait;
use collector_core::source::{start_from_flag, EventSender, ShutdownFlag};
use collector_core::{
    CollectionEvent, Collector, CollectorConfig, EventSource, PerformanceEvent, PerformanceMetric,
    PerformanceSubject, SourceCaps, SourceContext,
};

/// Host load and memory, read from /proc.
struct HostMetrics {
    interval: Duration,
    read_errors: AtomicU64,
}

fn metric(metric: PerformanceMetric, value: f64) -> CollectionEvent {
    CollectionEvent::Performance(PerformanceEvent::new(
        metric,
        value,
        PerformanceSubject::Host,
        SystemTime::now(),
    ))
}

/// `/proc/loadavg`: "0.12 0.30 0.25 2/345 6789".
fn parse_loadavg(text: &str) -> Option<Vec<CollectionEvent>> {
    let mut f = text.split_ascii_whitespace();
    let (one, five, fifteen) = (
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
    );
    let (running, _total) = f.next()?.split_once('/')?;
    Some(vec![
        metric(PerformanceMetric::LoadAvg1, one),
        metric(PerformanceMetric::LoadAvg5, five),
        metric(PerformanceMetric::LoadAvg15, fifteen),
        metric(PerformanceMetric::ProcsRunning, running.parse().ok()?),
    ])
}

/// `/proc/meminfo`: `MemTotal` and `MemAvailable`, in bytes.
fn parse_meminfo(text: &str) -> Option<Vec<CollectionEvent>> {
    let field = |key: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kib: f64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024.0)
    };
    Some(vec![
        metric(PerformanceMetric::MemoryTotal, field("MemTotal:")?),
        metric(PerformanceMetric::MemoryAvailable, field("MemAvailable:")?),
    ])
}

impl HostMetrics {
    async fn sample(&self) -> Vec<CollectionEvent> {
        let mut out = Vec::new();
        for (path, parse) in [
            (
                "/proc/loadavg",
                parse_loadavg as fn(&str) -> Option<Vec<CollectionEvent>>,
            ),
            ("/proc/meminfo", parse_meminfo),
        ] {
            match tokio::fs::read_to_string(path)
                .await
                .ok()
                .as_deref()
                .and_then(parse)
            {
                Some(events) => out.extend(events),
                // A failed read is counted and reported by health_check; the source goes on.
                None => {
                    self.read_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        out
    }
}

#[async_trait]
impl EventSource for HostMetrics {
    // The method that does the work comes first. It awaits shutdown instead
    // of polling a flag: the loop ends the moment the token is cancelled,
    // even in the middle of an interval.
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                biased;
                () = ctx.shutdown().cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            for event in self.sample().await {
                if ctx.out().send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    // The reference API's entry point, bridged to the one above.
    async fn start(&self, tx: EventSender, shutdown: ShutdownFlag) -> anyhow::Result<()> {
        start_from_flag(self, tx, shutdown).await
    }

    fn name(&self) -> &'static str {
        "host-metrics"
    }

    fn capabilities(&self) -> SourceCaps {
        SourceCaps::PERFORMANCE | SourceCaps::SYSTEM_WIDE
    }

    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn health_check(&self) -> anyhow::Result<()> {
        match self.read_errors.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => anyhow::bail!("{n} reads of /proc failed"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut for_secs = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--for-secs" => {
                for_secs = Some(
                    args.next()
                        .context("--for-secs needs a value")?
                        .parse::<u64>()?,
                );
            }
            other => {
                anyhow::bail!("unknown argument {other:?} (usage: host_metrics [--for-secs N])")
            }
        }
    }
    // A second is far longer than one sample takes.
    let config = CollectorConfig::new().with_shutdown_timeout(Duration::from_secs(2));
    let mut collector = Collector::new(config);
    collector.register(Box::new(HostMetrics {
        interval: Duration::from_secs(1),
        read_errors: AtomicU64::new(0),
    }))?;
    let handle = collector.handle();
    let mut events = handle.subscribe();
    let printer = tokio::spawn(async move {
        let stdout = std::io::stdout();
        while let Some(event) = events.recv().await {
            let mut out = stdout.lock();
            serde_json::to_writer(&mut out, &event)?;
            writeln!(out)?;
        }
        anyhow::Ok(())
    });
    if let Some(secs) = for_secs {
        let handle = handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            handle.shutdown();
        });
    }
    collector.run().await?;
    printer.await??;
    let stats = handle.stats();
    eprintln!(
        "received {} events, dropped {}, cpu {:?}",
        stats.events_received_total(),
        stats.events_dropped_total(),
        stats.process.map(|p| p.cpu_time).unwrap_or_default()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]

    use super::*;

    #[test]
    fn parses_proc_loadavg_and_meminfo() {
        let load = parse_loadavg("0.12 0.30 0.25 2/345 6789\n").unwrap();
        assert_eq!(load.len(), 4);
        assert!(parse_loadavg("garbage").is_none());
        let mem =
            parse_meminfo("MemTotal:       16000 kB\nMemFree: 1 kB\nMemAvailable:    8000 kB\n")
                .unwrap();
        match &mem[1] {
            CollectionEvent::Performance(p) => assert_eq!(p.value, 8000.0 * 1024.0),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn host_metrics_passes_the_conformance_check() {
        let source = HostMetrics {
            interval: Duration::from_millis(50),
            read_errors: AtomicU64::new(0),
        };
        let config = collector_core::testing::ConformanceConfig {
            min_events: 7,
            ..Default::default()
        };
        let report = collector_core::testing::check_source(std::sync::Arc::new(source), &config)
            .await
            .unwrap();
        assert!(report.events() >= 7);
    }
}
