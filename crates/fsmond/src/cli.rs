//! `fsmond`'s command line: `scan` (the baseline of some paths, printed)
//! and `run` (the collector, through collector-core's [`Serve`]: the IPC
//! socket with live events and health as the component `fsmond`, JSON
//! lines, `--metrics-listen`, graceful shutdown).

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use collector_core::serve::{self, RunError, Serve, ServeArgs};
use collector_core::{CollectionEvent, CollectorConfig};
use daemoneye_hasher::HashEngine;
use serde::Deserialize;

use crate::baseline;
use crate::source::{FsmondConfig, FsmondCounters, FsmondSource, NAME};

/// The DaemonEye file-integrity collector.
#[derive(Debug, Parser)]
#[command(name = "fsmond", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// fsmond's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Collect until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Print the baseline of some paths (one line a file) and exit.
    Scan(ScanArgs),
}

/// The flags of `fsmond run`: those of collector-core's `PollingRunArgs`
/// that mean something here (no interval: fsmond is not polled), and the
/// watched paths.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// TOML config file (sections `[collector]` and `[fsmond]`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Watch PATH (repeated; replaces the configured list; a component `*`
    /// matches any one name).
    #[arg(long, value_name = "PATH")]
    pub watch: Vec<PathBuf>,
    /// The watched system's root: watch the paths under DIR, and name them
    /// in events as that system sees them (a container's root filesystem,
    /// a chroot).
    #[arg(long, value_name = "DIR")]
    pub watch_root: Option<PathBuf>,
    /// Hash regular files (the default unless the config says otherwise).
    #[arg(long, conflicts_with = "no_hash")]
    pub hash: bool,
    /// Hash nothing.
    #[arg(long)]
    pub no_hash: bool,
    /// Accepted and ignored (the agent passes it to every collector it
    /// starts with default arguments): fsmond is not polled.
    #[arg(long, hide = true)]
    pub interval: Option<u64>,
    /// The socket, `--events-jsonl`, `--metrics-listen`.
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Accepted and ignored: the collector stores nothing.
    #[arg(long, hide = true)]
    pub no_database: bool,
}

/// The flags of `fsmond scan`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    /// The paths to scan (each with everything under it).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Hash nothing.
    #[arg(long)]
    pub no_hash: bool,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    collector: CollectorConfig,
    fsmond: FsmondConfig,
}

/// Runs the collector until SIGTERM or SIGINT.
///
/// # Errors
/// [`RunError::Bad`] for a bad config, [`RunError::Failed`] when something
/// fails while starting or running.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let file: FileConfig = serve::read_config(args.config.as_deref())?;
    let mut config = file.fsmond;
    if !args.watch.is_empty() {
        config.watch.clone_from(&args.watch);
    }
    if let Some(root) = &args.watch_root {
        config.watch_root.clone_from(root);
    }
    if args.hash {
        config.hash = true;
    }
    if args.no_hash {
        config.hash = false;
    }
    let collector_config = serve::collector_config(file.collector, args.config.is_some())?;
    let counters = FsmondCounters::default();
    let source =
        FsmondSource::new(config, counters.clone()).map_err(|e| RunError::Bad(e.into()))?;
    let mut serve = Serve::new(NAME, collector_config, args.serve);
    counters.register_metrics(serve.metrics());
    if let Some(engine) = source.engine() {
        engine.register_metrics(serve.metrics());
    }
    serve.register(source)?;
    serve.with_jsonl(jsonl_line).run().await
}

/// `--events-jsonl`: every file event as one JSON line.
fn jsonl_line(event: &CollectionEvent) -> serde_json::Result<Option<String>> {
    match event {
        CollectionEvent::Filesystem(f) => serde_json::to_string(f).map(Some),
        _ => Ok(None),
    }
}

/// Runs `scan`, writing one line a file to `out` (type, mode, owner,
/// group, size, digest or `-`, path) and the unreadable paths to stderr.
///
/// # Errors
/// [`RunError::Failed`] when `out` cannot be written.
pub async fn scan(args: &ScanArgs, out: &mut impl Write) -> Result<(), RunError> {
    let engine = if args.no_hash {
        None
    } else {
        Some(
            HashEngine::new(daemoneye_hasher::HasherConfig {
                bytes_per_sec: 0,
                ..daemoneye_hasher::HasherConfig::default()
            })
            .map_err(|e| RunError::Bad(e.into()))?,
        )
    };
    let b = baseline::scan(&args.paths, engine.as_ref()).await;
    let write = |out: &mut dyn Write| -> std::io::Result<()> {
        for (path, s) in &b.files {
            writeln!(
                out,
                "{:<9} {:04o} {:>5} {:>5} {:>10} {} {}",
                s.file_type.as_str(),
                s.permissions,
                s.uid,
                s.gid,
                s.size,
                s.hash.as_deref().unwrap_or("-"),
                path.display()
            )?;
        }
        out.flush()?;
        let mut err = std::io::stderr().lock();
        for (path, why) in &b.unreadable {
            writeln!(err, "fsmond: could not read {}: {why}", path.display())?;
        }
        for path in &b.missing {
            writeln!(err, "fsmond: {}: no such file or directory", path.display())?;
        }
        writeln!(
            err,
            "{} files, {} unreadable",
            b.files.len(),
            b.unreadable.len() + b.missing.len()
        )
    };
    write(out).map_err(|e| RunError::Failed(e.into()))
}
