//! `procmond`: the process collector.
//!
//! ```text
//! procmond snapshot [--format json|table]
//! procmond run [--config FILE] [--database PATH | --no-database] [--interval SECS]
//!              [--events-jsonl PATH|-] [--no-realtime] [--socket PATH | --no-socket]
//! ```
//!
//! Parses flags, loads config, builds, runs, maps errors to exit codes
//! (2 for bad flags or config, 1 for a failure while running).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use collector_core::{Collector, CollectorConfig, CollectorIpcServer, IpcServerConfig};
use daemoneye_hasher::{HashEngine, HasherConfig};
use procmond::snapshot::{ProcReader, ReadOptions};
use procmond::{DatabaseManager, ProcmondMonitorCollector, ProcmondMonitorConfig};
use serde::Deserialize;

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

#[derive(clap::Args)]
struct RunArgs {
    /// TOML config file (sections `[collector]` and `[monitor]`, key `database`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The audit database (default: /var/lib/daemoneye/procmond.db as root,
    /// the user's state directory otherwise).
    #[arg(long, conflicts_with = "no_database")]
    database: Option<PathBuf>,
    /// Store nothing.
    #[arg(long)]
    no_database: bool,
    /// Seconds between reconciliation snapshots.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    interval: Option<u64>,
    /// Write every event as one JSON object a line to PATH (`-`: stdout).
    #[arg(long, value_name = "PATH|-")]
    events_jsonl: Option<String>,
    /// Snapshots only, no kernel process connector.
    #[arg(long)]
    no_realtime: bool,
    /// Serve detection tasks and the live event stream on this Unix socket
    /// (default: /run/daemoneye/procmond.sock as root, daemoneye/procmond.sock
    /// in the user's runtime directory otherwise).
    #[arg(long, conflicts_with = "no_socket")]
    socket: Option<PathBuf>,
    /// Serve no IPC socket.
    #[arg(long)]
    no_socket: bool,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    collector: CollectorConfig,
    monitor: ProcmondMonitorConfig,
    database: Option<PathBuf>,
}

/// A usage or configuration problem: exit code 2.
#[derive(Debug)]
struct BadInput(anyhow::Error);

fn bad(e: impl Into<anyhow::Error>) -> BadInput {
    BadInput(e.into())
}

fn open_database(path: &Path) -> anyhow::Result<DatabaseManager> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(DatabaseManager::new(path)?)
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

async fn run(args: RunArgs) -> Result<(), RunError> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))
                .map_err(|e| RunError::Bad(bad(e)))?;
            toml::from_str(&text)
                .with_context(|| format!("invalid config {}", path.display()))
                .map_err(|e| RunError::Bad(bad(e)))?
        }
        None => FileConfig::default(),
    };
    let mut monitor = file.monitor;
    if let Some(secs) = args.interval {
        monitor.base_config.collection_interval = Duration::from_secs(secs);
    }
    if args.no_realtime {
        monitor.base_config.enable_event_driven = false;
    }
    let mut collector_config = file.collector;
    if args.config.is_none() {
        // Stop promptly: nothing procmond does takes long to finish.
        collector_config = collector_config.with_shutdown_timeout(Duration::from_secs(5));
    }
    collector_config
        .validate()
        .map_err(|e| RunError::Bad(bad(e)))?;

    let source = if args.no_database {
        ProcmondMonitorCollector::without_database(monitor)
    } else {
        let path = args
            .database
            .or(file.database)
            .unwrap_or_else(|| daemoneye_lib::models::default_state_dir().join("procmond.db"));
        let db = open_database(&path).map_err(RunError::Failed)?;
        tracing::info!(path = %path.display(), "audit database open");
        ProcmondMonitorCollector::new(Arc::new(Mutex::new(db)), monitor).await
    }
    .map_err(|e| RunError::Bad(bad(e)))?;

    let mut collector = Collector::new(collector_config);
    collector
        .register(Box::new(source))
        .map_err(|e| RunError::Failed(e.into()))?;
    let writer = match args.events_jsonl.as_deref() {
        None => None,
        Some(target) => {
            let out: Box<dyn Write + Send> = if target == "-" {
                Box::new(std::io::stdout())
            } else {
                Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(target)
                        .with_context(|| format!("cannot open {target}"))
                        .map_err(RunError::Failed)?,
                )
            };
            let mut sub = collector.handle().subscribe();
            Some(tokio::spawn(async move {
                let mut out = BufWriter::new(out);
                while let Some(batch) = sub.recv_batch().await {
                    for event in batch.iter() {
                        if let Some(line) = procmond::jsonl_line(event)? {
                            writeln!(out, "{line}")?;
                        }
                    }
                    out.flush()?;
                }
                anyhow::Ok(())
            }))
        }
    };
    let ipc = serve_ipc(args.socket.as_ref(), args.no_socket, &collector).await?;
    collector.run().await.map_err(RunError::Failed)?;
    if let Some((handle, task)) = ipc {
        handle.shutdown();
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "ipc server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "ipc server task failed"),
        }
    }
    if let Some(w) = writer {
        w.await
            .map_err(|e| RunError::Failed(e.into()))?
            .map_err(RunError::Failed)?;
    }
    Ok(())
}

type IpcTask = tokio::task::JoinHandle<Result<(), collector_core::IpcError>>;

/// Binds the IPC socket and serves procmond's task handlers and event
/// stream. An explicit `--socket` that cannot be served is an error; the
/// default one is only warned about, so collection goes on.
async fn serve_ipc(
    socket: Option<&PathBuf>,
    disabled: bool,
    collector: &Collector,
) -> Result<Option<(collector_core::IpcServerHandle, IpcTask)>, RunError> {
    if disabled {
        return Ok(None);
    }
    let explicit = socket.is_some();
    let path = socket
        .cloned()
        .unwrap_or_else(|| collector_core::ipc::default_socket_path("procmond"));
    let setup = async {
        let hasher = HashEngine::new(HasherConfig {
            algorithms: vec![
                collector_core::HashAlgorithm::Sha256,
                collector_core::HashAlgorithm::Blake3,
            ],
            ..HasherConfig::default()
        })?;
        let handlers = procmond::ipc::TaskHandlers::new(hasher)?;
        let server = CollectorIpcServer::new(IpcServerConfig::new(&path), collector.capabilities())
            .await?
            .with_events(collector.handle());
        anyhow::Ok((server, handlers))
    };
    match setup.await {
        Ok((mut server, handlers)) => {
            tracing::info!(path = %path.display(), "serving ipc");
            let handle = server.handle();
            let task = tokio::spawn(async move { server.start(handlers.into_handler()).await });
            Ok(Some((handle, task)))
        }
        Err(e) if explicit => Err(RunError::Failed(
            e.context(format!("cannot serve ipc on {}", path.display())),
        )),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "not serving ipc");
            Ok(None)
        }
    }
}

enum RunError {
    Bad(BadInput),
    Failed(anyhow::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse(); // exits with 2 on bad flags
    let result = match cli.command {
        Command::Snapshot { format } => snapshot(format).map_err(RunError::Failed),
        Command::Run(args) => {
            collector_core::logging::init_logging(false);
            // Before any thread exists, so that every thread inherits it.
            match procmond::privileges::drop_privileges() {
                Ok(procmond::privileges::Dropped::Reduced { kept }) => {
                    tracing::info!(capabilities = ?kept, "running as root with only these capabilities");
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("procmond: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("procmond: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(run(args))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Bad(BadInput(e))) => {
            eprintln!("procmond: {e:#}");
            ExitCode::from(2)
        }
        Err(RunError::Failed(e)) => {
            eprintln!("procmond: {e:#}");
            ExitCode::FAILURE
        }
    }
}
