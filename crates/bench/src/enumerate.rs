//! `enumerate`: a full procmond snapshot against `ps -eo
//! pid,ppid,user,rss,lstart,args` in the same run, with extra sleeping
//! processes spawned by the bench so the table is not trivially small.

use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};
use procmond::snapshot::{ProcReader, ReadOptions, SnapshotCache};
use tokio::time::Instant;

use crate::{median, report, report_f, report_ratio};

/// Flags of this bench.
#[derive(clap::Parser)]
pub(crate) struct Options {
    #[command(flatten)]
    pub(crate) host: Crowded,
}

/// A host made crowded for a bench of `/proc` readers, and how often each
/// side is run (the flags `enumerate` and `perf` share).
#[derive(clap::Args)]
pub(crate) struct Crowded {
    /// Extra sleeping processes to spawn.
    #[arg(long, default_value_t = 3000)]
    pub(crate) extra: usize,
    /// Repetitions of each side.
    #[arg(long, default_value_t = 7, value_parser = crate::positive::<usize>)]
    pub(crate) reps: usize,
}

/// Sleeping children killed and reaped on drop, so a failed run leaves
/// nothing behind.
pub(crate) struct Sleepers(Vec<Child>);

impl Sleepers {
    /// `n` `sleep 600` children, so a host's process table is not trivially
    /// small.
    pub(crate) fn spawn(n: usize) -> anyhow::Result<Self> {
        let mut sleepers = Self(Vec::with_capacity(n));
        for _ in 0..n {
            let child = Command::new("sleep")
                .arg("600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawning sleepers")?;
            sleepers.0.push(child);
        }
        Ok(sleepers)
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let sleepers = Sleepers::spawn(o.host.extra)?;
    let reader = ProcReader::new(ReadOptions::default())?;
    let lean = ProcReader::new(ReadOptions {
        enhanced_metadata: false,
        executable_identity: false,
    })?;

    let (mut ours, mut cold, mut ours_lean, mut ps) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut processes = 0;
    // procmond's steady state: a pass after the first, with its cache.
    let mut cache = SnapshotCache::default();
    reader.snapshot_cached(usize::MAX, &mut cache)?;
    for _ in 0..o.host.reps {
        let t = Instant::now();
        let snap = reader.snapshot_cached(usize::MAX, &mut cache)?;
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        processes = snap.processes.len();

        let t = Instant::now();
        let _ = reader.snapshot(usize::MAX)?;
        cold.push(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let _ = lean.snapshot(usize::MAX)?;
        ours_lean.push(t.elapsed().as_secs_f64() * 1e3);

        let t = Instant::now();
        let out = Command::new("ps")
            .args(["-eo", "pid,ppid,user,rss,lstart,args"])
            .stderr(Stdio::null())
            .output()
            .context("running ps")?;
        ps.push(t.elapsed().as_secs_f64() * 1e3);
        if !out.status.success() || out.stdout.len() < processes {
            bail!("ps failed");
        }
    }
    let (ours, cold, ours_lean, ps) = (median(ours), median(cold), median(ours_lean), median(ps));
    report("enumerate.processes", processes, "processes");
    report_f("enumerate.ms", ours, 2, "ms");
    report_f("enumerate.cold_ms", cold, 2, "ms");
    report_f("enumerate.lean_ms", ours_lean, 2, "ms");
    report_f("enumerate.ps_ms", ps, 2, "ms");
    report_ratio("enumerate.ratio_vs_ps", ours / ps);
    report_ratio("enumerate.cold_ratio_vs_ps", cold / ps);
    report_ratio("enumerate.lean_ratio_vs_ps", ours_lean / ps);
    drop(sleepers);
    Ok(())
}
