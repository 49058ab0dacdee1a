//! `capture`: does procmond see every short-lived process? Spawns
//! `/bin/true` as fast as the machine allows while procmond runs in this
//! process, then counts the exec events it delivered for those pids.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use collector_core::lock;
use collector_core::testing::{recv_until, Running};
use collector_core::{CollectionEvent, CollectorConfig, ProcessEventType};
use procmond::{ProcmondMonitorCollector, ProcmondMonitorConfig};
use tokio::time::Instant;

use crate::report;

/// Flags of this bench.
#[derive(clap::Parser)]
pub(crate) struct Options {
    /// Seconds of spawning.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) secs: u64,
}

#[derive(Default)]
struct Seen {
    execs: HashSet<u32>,
    enriched: HashSet<u32>,
}

/// Spawns `/bin/true` one after another for `dur`; returns the pids.
async fn spawn_flat_out(dur: Duration) -> anyhow::Result<HashSet<u32>> {
    let stop = Arc::new(AtomicBool::new(false));
    let spawner = std::thread::spawn({
        let stop = stop.clone();
        move || -> std::io::Result<Vec<u32>> {
            let mut pids = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let mut child = Command::new("/bin/true")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                pids.push(child.id());
                child.wait()?;
            }
            Ok(pids)
        }
    });
    tokio::time::sleep(dur).await;
    stop.store(true, Ordering::Relaxed);
    let pids = tokio::task::spawn_blocking(move || spawner.join())
        .await?
        .map_err(|_| anyhow::anyhow!("spawner thread panicked"))??;
    Ok(pids.into_iter().collect())
}

/// `source` in a collector sized for a flood (64 Ki events buffered,
/// batches of 1,024), with a subscription: the capture benches' set-up.
pub(crate) fn flooded(
    source: Box<dyn collector_core::EventSource>,
) -> Result<Running, collector_core::CollectorError> {
    Running::start_with(
        source,
        CollectorConfig::new()
            .with_event_buffer_size(65_536)
            .with_max_batch_size(1024),
    )
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("note: not root; the kernel connector may be unavailable or get a small buffer");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut config = ProcmondMonitorConfig::default();
        config.base_config.collection_interval = Duration::from_secs(3600);
        let source = ProcmondMonitorCollector::without_database(config)?;
        let stats = source.stats_handle();
        let Running {
            handle,
            events: mut sub,
            run,
        } = flooded(Box::new(source))?;
        // Ready once the first snapshot arrives (the connector is subscribed by then).
        let first = recv_until(&mut sub, |e| {
            matches!(e, CollectionEvent::Process(p) if p.event_type == ProcessEventType::Snapshot)
        });
        if first.await.is_none() {
            bail!("procmond ended before its first snapshot");
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let counter = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(batch) = sub.recv_batch().await {
                    let mut s = lock(&seen);
                    for e in batch.iter() {
                        if let CollectionEvent::Process(p) = e {
                            if p.event_type == ProcessEventType::Exec {
                                s.execs.insert(p.pid);
                                if !p.command_line.is_empty() && p.executable_path.is_some() {
                                    s.enriched.insert(p.pid);
                                }
                            }
                        }
                    }
                }
            })
        };

        let secs = o.secs;
        let spawned = spawn_flat_out(Duration::from_secs(secs)).await?;
        // Let procmond catch up: wait until every spawn is seen, or no progress for 2 s.
        let mut last = (0, Instant::now());
        loop {
            let n = lock(&seen)
                .execs
                .intersection(&spawned)
                .count();
            if n == spawned.len() {
                break;
            }
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        handle.shutdown();
        run.await??;
        counter.await?;
        let s = lock(&seen);
        let exec_seen = s.execs.intersection(&spawned).count();
        let enriched = s.enriched.intersection(&spawned).count();
        let monitor = stats.monitor_stats();
        report("capture.spawned", spawned.len(), "processes");
        report(
            "capture.spawn_rate",
            format!("{:.0}", spawned.len() as f64 / secs as f64),
            "processes/s",
        );
        report("capture.exec_seen", exec_seen, "processes");
        report(
            "capture.ratio",
            format!("{:.4}", exec_seen as f64 / spawned.len().max(1) as f64),
            "ratio",
        );
        report(
            "capture.enriched_ratio",
            format!("{:.4}", enriched as f64 / exec_seen.max(1) as f64),
            "ratio",
        );
        report("capture.overruns", monitor.kernel_overruns, "count");
        report(
            "capture.realtime_active_at_start",
            u8::from(exec_seen > 0),
            "bool",
        );
        Ok(())
    })
}
