//! `detect`: exec-to-alert latency of the whole chain (kernel connector,
//! collector child, IPC socket, rules, alert on stdout). Runs the release
//! `daemoneye-agent` next to this binary, then starts programs from
//! /dev/shm (which the built-in pack alerts on) and times each from spawn to
//! its alert line. Then floods it with `/bin/true` spawned flat out and
//! counts how many of those execs reached the agent's store (the spawned
//! count is the baseline). As root.

use std::process::Command;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use crate::overhead::{stop, temp_dir_alert, Agent};
use crate::report;

options! {
    /// Execs timed.
    execs: usize = 200,
    /// Seconds of `/bin/true` flood after the latency run.
    flood_secs: u64 = 10,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // in 0..len
    sorted[i as usize]
}

/// Spawns `/bin/true` flat out for `length`; the pids spawned.
fn flood(length: Duration) -> anyhow::Result<std::collections::HashSet<u32>> {
    let mut spawned = std::collections::HashSet::new();
    let until = Instant::now() + length;
    while Instant::now() < until {
        let mut c = Command::new("/bin/true").spawn()?;
        spawned.insert(c.id());
        c.wait()?;
    }
    Ok(spawned)
}

/// The agent's `events_dropped_by_collector` and its collector's
/// `kernel_overruns`, asked over the agent's socket.
fn losses(data: &std::path::Path) -> anyhow::Result<(u64, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let client = collector_core::CollectorIpcClient::connect(
            collector_core::IpcClientConfig::new(data.join("agent.sock")),
        )
        .await?;
        client.health().await
    })?;
    let dropped = report
        .counters
        .get("events_dropped_by_collector")
        .copied()
        .unwrap_or_default();
    let overruns = report
        .components
        .iter()
        .flat_map(|c| c.components.iter())
        .filter_map(|s| s.counters.get("kernel_overruns"))
        .sum();
    Ok((dropped, overruns))
}

/// How many of `spawned` have an exec event in the agent's store.
fn stored_execs(
    data: &std::path::Path,
    spawned: &std::collections::HashSet<u32>,
) -> anyhow::Result<usize> {
    let store = daemoneye_store::Store::open_read_only(data)?;
    let stored =
        store.query("SELECT DISTINCT pid FROM process_events WHERE event_type = 'exec'")?;
    Ok(stored
        .rows
        .iter()
        .filter_map(|r| r[0].as_u64())
        .filter_map(|p| u32::try_from(p).ok())
        .filter(|p| spawned.contains(p))
        .count())
}

fn report_all(execs: usize, missed: usize, lat: &mut [f64], spawned: usize, seen: usize) {
    lat.sort_by(f64::total_cmp);
    report("detect.execs", execs, "execs");
    report("detect.missed", missed, "execs");
    report(
        "detect.exec_to_alert_p50_ms",
        format!("{:.2}", percentile(lat, 0.5)),
        "ms",
    );
    report(
        "detect.exec_to_alert_p99_ms",
        format!("{:.2}", percentile(lat, 0.99)),
        "ms",
    );
    report("detect.flood_spawned", spawned, "execs");
    report("detect.flood_execs_stored", seen, "execs");
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let ratio = seen as f64 / spawned.max(1) as f64;
    report("detect.flood_ratio", format!("{ratio:.4}"), "");
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let agent = crate::overhead::sibling("daemoneye-agent")?;
    let data = std::env::temp_dir().join(format!("daemoneye-detect-{}", std::process::id()));
    let agent = Agent::spawn(
        &agent,
        &[
            "--interval",
            "3600",
            "--sweep-secs",
            "3600",
            "--dedup-window-secs",
            "1",
        ],
        data.clone(),
    )?;
    let shm = std::path::Path::new("/dev/shm");
    let exe = shm.join(format!("dt{}", std::process::id()));
    std::fs::copy("/bin/sleep", &exe)?;
    let name = exe
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .chars()
        .take(15)
        .collect::<String>();
    // Wait until the agent alerts at all (collector subscribed).
    agent.await_alert_on(&exe, &["0.05"])?;
    let mut lat = Vec::with_capacity(o.execs);
    let mut missed = 0;
    for _ in 0..o.execs {
        let start = Instant::now();
        let mut c = Command::new(&exe).arg("0.05").spawn()?;
        let got = loop {
            match agent.lines.recv_timeout(Duration::from_secs(2)) {
                Ok((line, at)) if at >= start && temp_dir_alert(&line).as_ref() == Some(&name) => {
                    break Some(at)
                }
                Ok(_) => {}
                Err(_) => break None,
            }
        };
        c.wait()?;
        match got {
            Some(at) => lat.push(at.duration_since(start).as_secs_f64() * 1e3),
            None => missed += 1,
        }
    }
    let _ = std::fs::remove_file(&exe);

    let spawned = flood(Duration::from_secs(o.flood_secs))?;
    // What the flood gave it is judged and stored before it is asked and
    // stopped: the ratio counts what it captured, not what a stop cut short.
    agent.settle()?;
    // Where any loss happened, from the agent's health: events its
    // collector dropped for it, and the kernel's overruns.
    let (dropped, overruns) = losses(&data)?;
    report("detect.flood_dropped_for_agent", dropped, "events");
    report("detect.flood_kernel_overruns", overruns, "overruns");
    let mut agent = agent;
    stop(&mut agent.child.0)?;
    let seen = stored_execs(&data, &spawned)?;
    drop(agent);
    let _ = std::fs::remove_dir_all(&data);
    if lat.is_empty() {
        bail!("no alert measured");
    }
    report_all(o.execs, missed, &mut lat, spawned.len(), seen);
    Ok(())
}
