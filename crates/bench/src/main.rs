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
//! ```

mod bus;
mod capture;
mod db;
mod detect;
mod enumerate;
mod hash;
mod idle;
mod ipc;
mod rules;
mod runtime;
mod triggers;

/// Prints one figure: `<metric> <value> <unit>`.
#[allow(clippy::print_stdout)] // stdout is this binary's output
fn report(metric: &str, value: impl std::fmt::Display, unit: &str) {
    println!("{metric} {value} {unit}");
}

use std::process::ExitCode;

const USAGE: &str = "usage: daemoneye-bench <bench> [flags]\n  runtime [--events N] [--reps R] [--flood-secs S]\n  enumerate [--extra N] [--reps R]\n  hash [--size-mib N] [--reps R] [--hits N]\n  capture [--secs S]    (root)\n  idle [--secs S]       (needs target/release/procmond)\n  db [--events N] [--reps R]\n  rules [--processes N] [--reps R]\n  detect [--execs N]    (root; needs target/release/daemoneye-agent)\n  ipc [--records N] [--reps R] [--tasks N]\n  bus [--events N] [--reps R]\n  triggers [--events N] [--reps R]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "runtime" => runtime::Options::parse(rest).and_then(|o| runtime::run(&o)),
        "enumerate" => enumerate::Options::parse(rest).and_then(|o| enumerate::run(&o)),
        "hash" => hash::Options::parse(rest).and_then(|o| hash::run(&o)),
        "capture" => capture::Options::parse(rest).and_then(|o| capture::run(&o)),
        "idle" => idle::Options::parse(rest).and_then(|o| idle::run(&o)),
        "db" => db::Options::parse(rest).and_then(|o| db::run(&o)),
        "rules" => rules::Options::parse(rest).and_then(|o| rules::run(&o)),
        "detect" => detect::Options::parse(rest).and_then(|o| detect::run(&o)),
        "ipc" => ipc::Options::parse(rest).and_then(|o| ipc::run(&o)),
        "bus" => bus::Options::parse(rest).and_then(|o| bus::run(&o)),
        "triggers" => triggers::Options::parse(rest).and_then(|o| triggers::run(&o)),
        "-h" | "--help" => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(anyhow::anyhow!("unknown benchmark {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("daemoneye-bench: {err:#}");
            ExitCode::from(2)
        }
    }
}
