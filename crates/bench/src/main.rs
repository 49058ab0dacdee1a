//! `daemoneye-bench`: the project's own benchmarks.
//!
//! Each figure is printed as one line, `<metric> <value> <unit>`, and every
//! throughput is paired with a baseline measured in the same run, because
//! the machines are noisy: read the ratios.
//!
//! ```text
//! cargo run --release -p daemoneye-bench -- runtime [--events N] [--reps R] [--flood-secs S]
//! cargo run --release -p daemoneye-bench -- bus [--events N] [--reps R]
//! cargo run --release -p daemoneye-bench -- triggers [--events N] [--reps R]
//! cargo run --release -p daemoneye-bench -- fleet [--events N] [--batch B] [--reps R] [--outage-secs S] [--rate R]
//! ```

/// Prints one figure: `<metric> <value> <unit>`.
#[allow(clippy::print_stdout)] // stdout is this binary's output
fn report(metric: &str, value: impl std::fmt::Display, unit: &str) {
    println!("{metric} {value} {unit}");
}

/// Prints a figure rounded to `decimals` places.
fn report_f(metric: &str, value: f64, decimals: usize, unit: &str) {
    report(metric, format!("{value:.decimals$}"), unit);
}

/// Runs `work` on a current-thread runtime in a fresh temporary directory
/// named after `tag`, removed afterwards whatever the outcome.
fn in_temp_dir<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    tag: &str,
    work: impl FnOnce(std::path::PathBuf) -> F,
) -> anyhow::Result<T> {
    let dir = std::env::temp_dir().join(format!("daemoneye-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let result = rt.block_on(work(dir.clone()));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The median of `v` (the upper one of an even count; 0 for none).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Prints a ratio, to three places.
fn report_ratio(metric: &str, value: f64) {
    report_f(metric, value, 3, "ratio");
}

use std::process::ExitCode;

/// Non-zero numbers for counts and repetitions.
fn positive<T: std::str::FromStr + Default + PartialOrd>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(v) if v > T::default() => Ok(v),
        Ok(_) => Err("must be positive".to_owned()),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

/// A bench's flags as the command line would give them (tests).
#[cfg(test)]
fn parse_options<T: clap::Parser>(args: &[String]) -> Result<T, clap::Error> {
    T::try_parse_from(std::iter::once("bench").chain(args.iter().map(String::as_str)))
}

/// A bench's `Options`: each `name: type = default` a `--name` flag that
/// must be positive, documented by the doc comment above it.
macro_rules! options {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $default:expr),+ $(,)?) => {
        /// Flags of this bench.
        #[derive(clap::Parser)]
        pub(crate) struct Options {
            $(
                $(#[$doc])*
                #[arg(long, default_value_t = $default, value_parser = crate::positive::<$ty>)]
                pub(crate) $name: $ty,
            )+
        }
    };
}

mod bus;
mod capture;
mod db;
mod detect;
mod enumerate;
mod fleet;
mod fs;
mod hash;
mod idle;
mod ipc;
mod net;
mod overhead;
mod perf;
mod rules;
mod runtime;
mod store;
mod triggers;

/// The `Bench` command line, one subcommand per module (each has `Options`
/// and `run(&Options)`), and its dispatch, from one list.
macro_rules! benches {
    ($($(#[doc = $doc:literal])* $variant:ident: $module:ident,)*) => {
        #[derive(clap::Parser)]
        #[command(
            name = "daemoneye-bench",
            about = "DaemonEye's benchmarks: `<metric> <value> <unit>` lines"
        )]
        enum Bench {
            $($(#[doc = $doc])* $variant($module::Options),)*
        }

        impl Bench {
            fn run(&self) -> anyhow::Result<()> {
                match self {
                    $(Self::$variant(o) => $module::run(o),)*
                }
            }
        }
    };
}

benches! {
    /// Events/s through the Collector vs a bare mpsc channel; RSS under a flood.
    Runtime: runtime,
    /// A /proc snapshot vs `ps`, with extra sleeping processes.
    Enumerate: enumerate,
    /// SHA-256/BLAKE3 vs plain reading; cache hit cost.
    Hash: hash,
    /// As root: short-lived processes spawned flat out, all seen?
    Capture: capture,
    /// procmond on a quiet host (needs target/release/procmond).
    Idle: idle,
    /// Audit database writes/s.
    Db: db,
    /// Store bytes per short-lived exec (fork, exec, exit).
    Store: store,
    /// 100 rules over a process table.
    Rules: rules,
    /// As root: exec-to-alert latency (needs target/release/daemoneye-agent).
    Detect: detect,
    /// Records/s over the IPC socket; task round trip.
    Ipc: ipc,
    /// Bus fan-out vs tokio broadcast.
    Bus: bus,
    /// Trigger evaluation cost per process event.
    Triggers: triggers,
    /// A `sock_diag` snapshot with owners vs `ss -tanp`, over many sockets.
    Net: net,
    /// As root: what the main job costs a spawn storm and an idle host
    /// (needs target/release/daemoneye-agent).
    Overhead: overhead,
    /// A perfmond sample vs `top -b -n 1`, with extra sleeping processes;
    /// perfmond idle (needs target/release/perfmond).
    Perf: perf,
    /// Alerts acknowledged by NATS JetStream through the agent's outbox vs
    /// a bare client; the outbox drained after an outage (needs nats-server).
    Fleet: fleet,
    /// As root: fsmond's capture of a write storm, an untar's slowdown under
    /// it, and fsmond idle (needs target/release/fsmond).
    Fs: fs,
}

fn main() -> ExitCode {
    let bench = <Bench as clap::Parser>::parse(); // 2 on bad flags
    let result = bench.run();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("daemoneye-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
