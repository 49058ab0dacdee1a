//! What one sample costs on this host: `N` process-table scans (or, with
//! `--full`, `N` full samples: host files, cgroups, processes, events),
//! timed. Run it under `valgrind --tool=dhat` with two values of `N` to
//! count the allocations of one steady-state scan (the difference over the
//! difference).
//!
//! ```text
//! cargo run --release -p perfmond --example scan_cost -- 100 [--full]
//! ```
#![allow(missing_docs, clippy::print_stdout, clippy::disallowed_types)]

use perfmond::anomaly::AnomalyConfig;
use perfmond::sampler::{boot_time_now, KernelUnits, ProcessTable, SamplerCounters};
use perfmond::{Sampler, SamplerConfig};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().map_or(Ok(10), |a| a.parse())?;
    let full = args.next().as_deref() == Some("--full");
    let first = boot_time_now()?;
    let clock = || boot_time_now().unwrap_or(first);
    let config = AnomalyConfig::default();
    let started = std::time::Instant::now();
    let processes = if full {
        let mut s = Sampler::new(SamplerConfig::default(), config, SamplerCounters::default());
        let mut out = Vec::new();
        let mut processes = 0;
        for _ in 0..n {
            out.clear();
            processes = s.sample(&mut out)?.scan.processes;
        }
        processes
    } else {
        let mut t = ProcessTable::new("/proc", KernelUnits::current(), 1_000_000);
        let mut processes = 0;
        for _ in 0..n {
            processes = t.scan(clock, &config)?.processes;
        }
        processes
    };
    let per = started.elapsed().as_secs_f64() * 1000.0 / f64::from(n.max(1));
    println!(
        "{} x {}: {processes} processes, {per:.3} ms each",
        n,
        if full { "sample" } else { "scan" }
    );
    Ok(())
}
