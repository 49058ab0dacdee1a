//! `netmond`: see [`netmond::cli`].

use std::process::ExitCode;

use clap::Parser;
use netmond::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Snapshot(args) => cli::snapshot(args, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)] // the binary's error report
            {
                eprintln!("netmond: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
