//! `netmond`'s command line: `snapshot` (one look) and `run` (the
//! collector, through collector-core's [`Serve`], the run scaffold every
//! collector binary shares: the IPC socket with live events and health as
//! the component `netmond`, JSON lines, `--metrics-listen`, graceful
//! shutdown).

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use collector_core::serve::{self, PollingRunArgs, RunError, Serve};
use collector_core::{CollectionEvent, CollectorConfig};
use serde::Deserialize;

use crate::ebpf::NetTier;
use crate::snapshot::{Connection, Snapshot};
use crate::source::{self, NetmondConfig, NetmondCounters, TierChoice, NAME};

/// The DaemonEye network collector.
#[derive(Debug, Parser)]
#[command(name = "netmond", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// netmond's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every socket once, with the processes that hold it.
    Snapshot(SnapshotArgs),
    /// Collect until SIGTERM or SIGINT.
    Run(RunArgs),
}

/// The flags of `netmond run`.
pub type RunArgs = PollingRunArgs;

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    collector: CollectorConfig,
    netmond: NetmondConfig,
}

/// What [`prepare`] did before privileges were dropped: the config read
/// and, when the eBPF tier is wanted, its program loaded and attached.
#[derive(Debug)]
pub struct Prepared {
    file: FileConfig,
    ebpf: Option<NetTier>,
}

/// Reads the config and, unless it wants snapshots only, loads and attaches
/// the eBPF program while the capabilities that takes (`CAP_BPF`,
/// `CAP_PERFMON`: [`source::LOAD_EBPF`]) are held. Call it before dropping
/// to [`source::CAPABILITIES`]. A program that does not load is not an
/// error here: the source tries again as it starts, and falls back (or
/// fails, when `ebpf` was forced) then.
///
/// # Errors
/// [`RunError::Bad`] for a config file that cannot be read.
pub fn prepare(args: &RunArgs) -> Result<Prepared, RunError> {
    let file: FileConfig = serve::read_config(args.config.as_deref())?;
    let ebpf = if file.netmond.tier == TierChoice::Polling {
        None
    } else {
        match NetTier::load_with(&file.netmond.ebpf, file.netmond.accept_hook) {
            Ok(tier) => Some(tier),
            Err(e) => {
                tracing::debug!(error = %e, "eBPF tier not preloaded");
                None
            }
        }
    };
    Ok(Prepared { file, ebpf })
}

/// Runs the collector until SIGTERM or SIGINT.
///
/// # Errors
/// [`RunError::Bad`] for a bad config, [`RunError::Failed`] when something
/// fails while starting or running.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let file: FileConfig = serve::read_config(args.config.as_deref())?;
    run_prepared(args, Prepared { file, ebpf: None }).await
}

/// [`run`] after [`prepare`]: with the eBPF program it loaded, if any.
///
/// # Errors
/// As [`run`].
pub async fn run_prepared(args: RunArgs, prepared: Prepared) -> Result<(), RunError> {
    let Prepared { file, ebpf } = prepared;
    let mut config = file.netmond;
    if let Some(interval) = args.interval() {
        config.interval = interval;
    }
    let collector_config = serve::collector_config(file.collector, args.config.is_some())?;
    let counters = NetmondCounters::default();
    let mut source =
        source::source(&config, counters.clone()).map_err(|e| RunError::Bad(e.into()))?;
    if let Some(tier) = ebpf {
        source = source.with_ebpf_tier(tier);
    }
    let mut serve = Serve::new(NAME, collector_config, args.serve);
    counters.register_metrics(serve.metrics());
    source.counters().register_metrics(serve.metrics(), NAME);
    source.stats().register_metrics(serve.metrics());
    serve.register(source)?;
    serve.with_jsonl(jsonl_line).run().await
}

/// `--events-jsonl`: every network event as one JSON line.
fn jsonl_line(event: &CollectionEvent) -> serde_json::Result<Option<String>> {
    match event {
        CollectionEvent::Network(n) => serde_json::to_string(n).map(Some),
        _ => Ok(None),
    }
}

/// Flags of `netmond snapshot`.
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Where procfs is mounted.
    #[arg(long, default_value = "/proc")]
    pub proc_root: PathBuf,
}

/// How `snapshot` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line, one line per socket.
    Json,
    /// Columns, like `ss -tuanp`.
    Table,
}

/// Runs `snapshot`, writing to `out`.
///
/// # Errors
/// When the snapshot cannot be taken or `out` cannot be written.
pub fn snapshot(args: &SnapshotArgs, out: &mut impl Write) -> anyhow::Result<()> {
    let snapshot = Snapshot::take(&args.proc_root)?;
    match args.format {
        Format::Json => {
            for c in &snapshot.connections {
                serde_json::to_writer(&mut *out, c)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Table => {
            writeln!(
                out,
                "{:<5} {:<10} {:<8} {:<45} {:<45} {:>6} OWNERS",
                "PROTO", "STATE", "DIR", "LOCAL", "REMOTE", "UID"
            )?;
            for c in &snapshot.connections {
                writeln!(out, "{}", row(c))?;
            }
        }
    }
    if snapshot.unreadable_processes > 0 {
        writeln!(
            std::io::stderr(),
            "netmond: the descriptors of {} processes could not be read (run as root to see every owner)",
            snapshot.unreadable_processes
        )?;
    }
    out.flush()?;
    Ok(())
}

fn row(c: &Connection) -> String {
    let s = &c.socket;
    let owners: Vec<String> = c
        .owners
        .iter()
        .map(|o| format!("pid={},fd={}", o.pid, o.fd))
        .collect();
    format!(
        "{:<5} {:<10} {:<8} {:<45} {:<45} {:>6} {}",
        s.protocol.as_str(),
        crate::diag::state_label(s.state, s.protocol),
        c.direction.as_str(),
        s.local.to_string(),
        s.remote.to_string(),
        s.uid,
        owners.join(" ")
    )
}
