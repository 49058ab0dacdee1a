//! `procmond`: the process collector.
//!
//! ```text
//! procmond snapshot [--format json|table]
//! procmond run [--config FILE] [--database PATH | --no-database] [--interval SECS]
//!              [--events-jsonl PATH|-] [--no-realtime] [--socket PATH | --no-socket]
//!              [--metrics-listen ADDR]
//! ```
//!
//! Parses flags, loads config, builds, runs, maps errors to exit codes
//! (2 for bad flags or config, 1 for a failure while running).

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use procmond::cli::{RunArgs, RunError};
use procmond::snapshot::{ProcReader, ReadOptions};

#[derive(Parser)]
#[command(name = "procmond", version, about = "DaemonEye process collector")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every process once and exit.
    Snapshot {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Collect until SIGTERM or SIGINT.
    Run(RunArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Table,
}

fn snapshot(format: Format) -> anyhow::Result<()> {
    let reader = ProcReader::new(ReadOptions::default())?;
    let snap = reader.snapshot(usize::MAX)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &snap.processes)?;
            writeln!(out)?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:>7} {:>7} {:>6} {:>9}  {:<15} COMMAND",
                "PID", "PPID", "UID", "RSS_KB", "NAME"
            )?;
            for p in &snap.processes {
                let uid = p.user_id.map_or_else(|| "?".to_owned(), |u| u.to_string());
                let rss = p.memory_usage.map_or(0, |b| b / 1024);
                let cmd = if p.command_line.is_empty() {
                    format!("[{}]", p.name)
                } else {
                    p.command_line.join(" ")
                };
                writeln!(
                    out,
                    "{:>7} {:>7} {:>6} {:>9}  {:<15} {cmd}",
                    p.pid,
                    p.ppid.unwrap_or(0),
                    uid,
                    rss,
                    p.name
                )?;
            }
        }
    }
    out.flush()?;
    let s = snap.stats;
    eprintln!(
        "{} processes ({} vanished while read, {} partly unreadable)",
        s.processes, s.vanished, s.access_denied
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits with 2 on bad flags
    let result = match cli.command {
        Command::Snapshot { format } => snapshot(format).map_err(RunError::Failed),
        Command::Run(args) => {
            collector_core::logging::init_logging(false);
            // The eBPF programs load and attach first, while the capabilities
            // that takes are held; the drop below gives them up.
            match procmond::cli::prepare(&args) {
                Err(e) => Err(e),
                Ok(prepared) => {
                    // Before any thread exists, so that every thread inherits it.
                    if let Err(code) = procmond::privileges::drop_privileges_in_main("procmond") {
                        return code;
                    }
                    match procmond::cli::runtime_in_main("procmond") {
                        Ok(rt) => rt.block_on(procmond::cli::run_prepared(args, prepared)),
                        Err(code) => return code,
                    }
                }
            }
        }
    };
    collector_core::serve::exit("procmond", result)
}
