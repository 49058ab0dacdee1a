//! `fsmond`: the file-integrity collector.
//!
//! ```text
//! fsmond run [--config FILE] [--watch PATH]... [--hash | --no-hash] [--socket PATH | --no-socket]
//!            [--await-subscriber] [--metrics-listen ADDR] [--events-jsonl PATH|-]
//! fsmond scan PATH... [--no-hash]
//! ```
//!
//! Parses flags, loads config, builds, runs, maps errors to exit codes
//! (2 for bad flags or config, 1 for a failure while running).

use std::process::ExitCode;

use clap::Parser;
use collector_core::serve;
use fsmond::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits with 2 on bad flags
    let rt = match serve::runtime_in_main("fsmond") {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = match cli.command {
        Command::Run(args) => {
            collector_core::logging::init_logging(false);
            rt.block_on(fsmond::cli::run(args))
        }
        Command::Scan(args) => rt.block_on(fsmond::cli::scan(&args, &mut std::io::stdout().lock())),
    };
    serve::exit("fsmond", result)
}
