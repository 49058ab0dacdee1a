//! `netmond`: the network collector.
//!
//! ```text
//! netmond snapshot [--format json|table] [--proc-root DIR]
//! netmond run [--config FILE] [--interval SECS] [--socket PATH | --no-socket]
//!             [--await-subscriber] [--metrics-listen ADDR] [--events-jsonl PATH|-]
//! ```
//!
//! Parses flags, runs, maps errors to exit codes (2 for bad flags or
//! config, 1 for a failure).

use std::process::ExitCode;

use clap::Parser;
use collector_core::serve::{self, RunError};
use netmond::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits with 2 on bad flags
    let result = match cli.command {
        Command::Snapshot(args) => {
            cli::snapshot(&args, &mut std::io::stdout().lock()).map_err(RunError::Failed)
        }
        Command::Run(args) => {
            collector_core::logging::init_logging(false);
            // The eBPF program loads and attaches before any thread starts.
            match cli::prepare(&args) {
                Err(e) => Err(e),
                Ok(prepared) => match serve::runtime_in_main("netmond") {
                    Ok(rt) => rt.block_on(cli::run_prepared(args, prepared)),
                    Err(code) => return code,
                },
            }
        }
    };
    serve::exit("netmond", result)
}
