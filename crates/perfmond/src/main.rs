//! `perfmond`: the performance collector.
//!
//! ```text
//! perfmond run [--config FILE] [--interval SECS] [--socket PATH | --no-socket]
//!              [--await-subscriber] [--metrics-listen ADDR] [--events-jsonl PATH|-]
//! perfmond top [-n N] [--interval-ms MS]
//! ```
//!
//! Parses flags, loads config, builds, runs, maps errors to exit codes
//! (2 for bad flags or config, 1 for a failure while running).

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use collector_core::serve;
use perfmond::cli::{RunArgs, RunError};

#[derive(Parser)]
#[command(name = "perfmond", version, about = "DaemonEye performance collector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Print the busiest processes once (two samples apart) and exit.
    Top {
        /// How many processes.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
        /// Milliseconds between the two samples.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
        interval_ms: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits with 2 on bad flags
    let rt = match serve::runtime_in_main("perfmond") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Run(args) => {
            collector_core::logging::init_logging(false);
            rt.block_on(perfmond::cli::run(args))
        }
        Command::Top { count, interval_ms } => rt
            .block_on(perfmond::cli::top(
                count,
                Duration::from_millis(interval_ms),
            ))
            .and_then(|report| {
                let mut out = std::io::stdout().lock();
                perfmond::cli::write_top(&mut out, &report.rows)?;
                out.flush()?;
                eprintln!(
                    "{} processes; scans took {:.2} ms (first) and {:.2} ms (second)",
                    report.processes,
                    report.first_scan.as_secs_f64() * 1000.0,
                    report.second_scan.as_secs_f64() * 1000.0
                );
                Ok(())
            })
            .map_err(RunError::Failed),
    };
    serve::exit("perfmond", result)
}
