//! `ipc`: process records streamed over the collector's Unix socket against
//! the same records through an in-process `Subscription`, and the round
//! trip of a small task.

use std::time::Duration;

use anyhow::bail;
use collector_core::{
    Collector, CollectorConfig, CollectorIpcClient, CollectorIpcServer, IpcClientConfig, IpcError,
    IpcServerConfig, IpcServerHandle, SourceCaps,
};
use daemoneye_lib::proto::{DetectionResult, DetectionTask, ProtoTaskType, SubscribeRequest};
use tokio::time::Instant;

use crate::runtime::blaster;
use crate::{report, report_f, report_ratio};

options! {
    /// Records streamed per repetition.
    records: u64 = 500_000,
    /// Repetitions.
    reps: usize = 3,
    /// Task round trips timed.
    tasks: usize = 20_000,
}

fn collector(records: u64) -> anyhow::Result<Collector> {
    let config = CollectorConfig::default()
        .with_event_buffer_size(8192)
        .with_max_batch_size(512);
    let mut c = Collector::try_new(config)?;
    c.register(Box::new(blaster("ipc-blaster", records)))?;
    Ok(c)
}

fn socket_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir()
        .join(format!("daemoneye-bench-{}", std::process::id()))
        .join(format!("{tag}.sock"))
}

/// Runs `server` in a task that answers every task with an empty success;
/// its handle and socket path.
fn serve(
    mut server: CollectorIpcServer,
) -> (
    IpcServerHandle,
    std::path::PathBuf,
    tokio::task::JoinHandle<Result<(), IpcError>>,
) {
    let handle = server.handle();
    let path = server.socket_path().to_owned();
    let serving = tokio::spawn(async move {
        server
            .start(|t| Box::pin(async move { DetectionResult::success(&t.task_id, Vec::new()) }))
            .await
    });
    (handle, path, serving)
}

/// Records/s through an in-process subscription.
async fn in_process(records: u64) -> anyhow::Result<f64> {
    let c = collector(records)?;
    let mut sub = c.handle().subscribe();
    let start = Instant::now();
    let run = tokio::spawn(c.run_until(std::future::pending()));
    let mut got = 0u64;
    while let Some(batch) = sub.recv_batch().await {
        got += batch.len() as u64;
    }
    run.await??;
    if got != records {
        bail!("in-process subscription got {got} of {records}");
    }
    Ok(got as f64 / start.elapsed().as_secs_f64())
}

/// Records/s through the socket; also the records the server dropped.
async fn over_ipc(records: u64) -> anyhow::Result<(f64, u64)> {
    let c = collector(records)?;
    let config = IpcServerConfig {
        event_queue_batches: 256,
        max_batch_size: 512,
        ..IpcServerConfig::new(socket_path("stream"))
    };
    let server = CollectorIpcServer::new(config, c.capabilities())
        .await?
        .with_events(c.handle());
    let (server_handle, path, serving) = serve(server);
    let client = CollectorIpcClient::connect(IpcClientConfig {
        event_buffer_batches: 256,
        ..IpcClientConfig::new(&path)
    })
    .await?;
    let mut stream = client.subscribe(SubscribeRequest::default()).await?;
    let start = Instant::now();
    let run = tokio::spawn(c.run_until(std::future::pending()));
    let mut got = 0u64;
    let mut end = start;
    loop {
        match tokio::time::timeout(Duration::from_millis(200), stream.recv()).await {
            Ok(Some(b)) => {
                got += b.events.len() as u64;
                end = Instant::now();
                if got == records {
                    break;
                }
            }
            Ok(None) => break,
            Err(_) => {
                let s = server_handle.stats();
                if s.events_streamed + s.events_dropped >= records && got >= s.events_streamed {
                    break;
                }
            }
        }
    }
    run.await??;
    let dropped = server_handle.stats().events_dropped;
    drop(client);
    server_handle.shutdown();
    serving.await??;
    Ok((
        got as f64 / end.duration_since(start).as_secs_f64(),
        dropped,
    ))
}

async fn roundtrips(tasks: usize) -> anyhow::Result<Vec<Duration>> {
    let config = IpcServerConfig::new(socket_path("rtt"));
    let server = CollectorIpcServer::new(config, SourceCaps::PROCESS).await?;
    let (server_handle, path, serving) = serve(server);
    let client = CollectorIpcClient::connect(IpcClientConfig::new(&path)).await?;
    let mut times = Vec::with_capacity(tasks);
    for i in 0..tasks + tasks / 10 {
        let task = DetectionTask::new(format!("t-{i}"), ProtoTaskType::EnumerateProcesses);
        let t0 = Instant::now();
        let r = client.send_task(task).await?;
        let dt = t0.elapsed();
        if !r.success {
            bail!("task failed: {:?}", r.error_message);
        }
        // The first tenth warms up.
        if i >= tasks / 10 {
            times.push(dt);
        }
    }
    drop(client);
    server_handle.shutdown();
    serving.await??;
    times.sort_unstable();
    Ok(times)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an index into a short vector"
    )]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1_000_000.0)
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        in_process(o.records / 10).await?;
        over_ipc(o.records / 10).await?;
        let mut base = Vec::new();
        let mut ipc = Vec::new();
        let mut dropped = 0;
        for _ in 0..o.reps {
            base.push(in_process(o.records).await?);
            let (rate, d) = over_ipc(o.records).await?;
            ipc.push(rate);
            dropped += d;
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let spread = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, 0.0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
            if hi > 0.0 {
                (hi - lo) / hi
            } else {
                0.0
            }
        };
        let (b, i) = (median(&mut base), median(&mut ipc));
        report_f("ipc.in_process_records_per_sec", b, 0, "records/s");
        report_f("ipc.records_per_sec", i, 0, "records/s");
        report_ratio("ipc.ratio_vs_in_process", i / b);
        report_ratio("ipc.records_per_sec_spread", spread(&ipc));
        report("ipc.records_dropped", dropped, "records");

        let times = roundtrips(o.tasks).await?;
        report_f("ipc.roundtrip_p50_us", percentile(&times, 0.50), 1, "us");
        report_f("ipc.roundtrip_p99_us", percentile(&times, 0.99), 1, "us");
        let _ = std::fs::remove_dir_all(
            socket_path("x")
                .parent()
                .unwrap_or(std::path::Path::new("/nonexistent")),
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn options_refuse_bad_flags() {
        assert!(crate::parse_options::<Options>(&["--records".into(), "0".into()]).is_err());
        assert!(crate::parse_options::<Options>(&["--nope".into(), "1".into()]).is_err());
        assert_eq!(crate::parse_options::<Options>(&[]).unwrap().tasks, 20_000);
    }

    #[test]
    fn percentiles_pick_the_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert!(
            (percentile(&v, 0.5) - 51.0).abs() < 1e-6 || (percentile(&v, 0.5) - 50.0).abs() < 1e-6
        );
        assert!((percentile(&v, 0.99) - 99.0).abs() < 1.1);
    }
}
