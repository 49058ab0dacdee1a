//! `perf`: perfmond's cost. `perf.sample_ms` is one sample (host files,
//! cgroups, and every process's `stat`) by a running sampler, alternated
//! with the same sampler opening and closing every `stat` each sample
//! (`perf.reopening_sample_ms`) and with `top -b -n 1` in the same run, with `--extra` sleeping processes
//! spawned so the table is not trivially small. `perf.idle_*` is the
//! release `perfmond run` (next to this binary) at its default interval,
//! on the same host with those processes still alive, for `--idle-secs`.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};
use perfmond::sampler::SamplerCounters;
use perfmond::{AnomalyConfig, Sampler, SamplerConfig};
use tokio::time::Instant;

use crate::enumerate::{Crowded, Sleepers};
use crate::idle::Idle;
use crate::{median, report, report_f, report_ratio};

/// Flags of this bench.
#[derive(clap::Parser)]
pub(crate) struct Options {
    #[command(flatten)]
    pub(crate) host: Crowded,
    /// Seconds perfmond is measured idle (0: not measured).
    #[arg(long, default_value_t = 60)]
    pub(crate) idle_secs: u64,
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let sleepers = Sleepers::spawn(o.host.extra)?;
    // As `perfmond run` does: every process's `stat` kept open.
    collector_core::procfs::raise_open_file_limit()?;
    let mut sampler = Sampler::new(
        SamplerConfig::default(),
        AnomalyConfig::default(),
        SamplerCounters::default(),
    );
    // The same sampler opening and closing each `stat` every sample, as
    // perfmond did before it kept them open.
    let mut reopening = Sampler::new(
        SamplerConfig::default(),
        AnomalyConfig::default(),
        SamplerCounters::default(),
    );
    reopening.processes().limit_files(0);
    let (mut events, mut discarded) = (Vec::new(), Vec::new());
    // A running perfmond's sample: its table already holds every process.
    sampler.sample(&mut events)?;
    reopening.sample(&mut discarded)?;
    let (mut ours, mut reopened, mut top) = (Vec::new(), Vec::new(), Vec::new());
    let mut processes = 0;
    for _ in 0..o.host.reps {
        events.clear();
        let start = Instant::now();
        let sample = sampler.sample(&mut events)?;
        ours.push(start.elapsed().as_secs_f64() * 1e3);
        processes = sample.scan.processes;

        discarded.clear();
        let start = Instant::now();
        reopening.sample(&mut discarded)?;
        reopened.push(start.elapsed().as_secs_f64() * 1e3);

        let start = Instant::now();
        let out = Command::new("top")
            .args(["-b", "-n", "1"])
            .stderr(Stdio::null())
            .output()
            .context("running top (procps)")?;
        top.push(start.elapsed().as_secs_f64() * 1e3);
        if !out.status.success() {
            bail!("top -b -n 1 failed: {}", out.status);
        }
    }
    if processes < o.host.extra {
        bail!(
            "a sample read {processes} processes, fewer than the {} spawned",
            o.host.extra
        );
    }
    let (ours, reopened, top) = (median(ours), median(reopened), median(top));
    report("perf.processes", processes, "count");
    report("perf.events_per_sample", events.len(), "count");
    report("perf.kept_files", sampler.processes().kept_files(), "count");
    report_f("perf.sample_ms", ours, 2, "ms");
    report_f("perf.reopening_sample_ms", reopened, 2, "ms");
    report_f("perf.top_ms", top, 2, "ms");
    report_ratio("perf.sample_ratio_vs_top", ours / top);
    report_ratio("perf.sample_ratio_vs_reopening", ours / reopened);

    if o.idle_secs > 0 {
        // The first sample (every process read for the first time) is not idle.
        Idle::collector("perfmond", Duration::from_secs(3), o.idle_secs)?.report("perf.idle");
    }
    drop(sleepers);
    Ok(())
}
