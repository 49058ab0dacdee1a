//! `procmond run` as a library call, so that other programs (the agent's
//! collector child) run exactly what the `procmond` binary runs.
//!
//! [`RunArgs`] are the flags of `procmond run`; [`run`] loads the config,
//! opens the audit database, starts the collector, serves IPC (tasks,
//! live events and health, as the component `procmond`), and returns after
//! SIGTERM or SIGINT once everything is committed.

use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use collector_core::metrics::MetricsServer;
use collector_core::{Collector, CollectorConfig, CollectorIpcServer, IpcServerConfig};
use daemoneye_hasher::{HashEngine, HasherConfig};
use serde::Deserialize;

use crate::source::ProcmondStatsHandle;
use crate::{DatabaseManager, ProcmondMonitorCollector, ProcmondMonitorConfig};

/// The flags of `procmond run`.
#[derive(Debug, Clone, Default, clap::Args)]
#[allow(clippy::struct_excessive_bools)] // flags
pub struct RunArgs {
    /// TOML config file (sections `[collector]` and `[monitor]`, key `database`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The audit database (default: /var/lib/daemoneye/procmond.db as root,
    /// the user's state directory otherwise).
    #[arg(long, conflicts_with = "no_database")]
    pub database: Option<PathBuf>,
    /// Store nothing.
    #[arg(long)]
    pub no_database: bool,
    /// Seconds between reconciliation snapshots.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: Option<u64>,
    /// Write every event as one JSON object a line to PATH (`-`: stdout).
    #[arg(long, value_name = "PATH|-")]
    pub events_jsonl: Option<String>,
    /// Snapshots only, no kernel events (as `--tier polling`).
    #[arg(long)]
    pub no_realtime: bool,
    /// The tier of kernel events: `auto` (default: eBPF, else the process
    /// connector, else polling), or one forced (starting fails without it).
    #[arg(long, value_enum)]
    pub tier: Option<crate::source::TierChoice>,
    /// Serve detection tasks and the live event stream on this Unix socket
    /// (default: /run/daemoneye/procmond.sock as root, daemoneye/procmond.sock
    /// in the user's runtime directory otherwise).
    #[arg(long, conflicts_with = "no_socket")]
    pub socket: Option<PathBuf>,
    /// Serve no IPC socket.
    #[arg(long)]
    pub no_socket: bool,
    /// Start collecting only once a client has subscribed to the socket's
    /// events (waiting at most 30 s), so that it sees everything from the
    /// first snapshot on.
    #[arg(long, requires = "socket")]
    pub await_subscriber: bool,
    /// Serve Prometheus metrics (text format) over HTTP at /metrics on
    /// ADDR, for example 127.0.0.1:9464. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    collector: CollectorConfig,
    monitor: ProcmondMonitorConfig,
    database: Option<PathBuf>,
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
    // Lifecycle events without ledger entries, as procmond's audit database
    // always stored them (twice the write rate); the agent ledgers each.
    Ok(DatabaseManager::new(path)?.with_ledger(daemoneye_store::LedgerMode::AlertsOnly))
}

/// The multi-threaded Tokio runtime `procmond run` (and the agent) run on.
/// A failure is printed as `<program>: cannot start the runtime: <error>`
/// and becomes the exit code the program returns.
///
/// # Errors
/// `ExitCode::FAILURE` when the runtime cannot be built.
pub fn runtime_in_main(program: &str) -> Result<tokio::runtime::Runtime, std::process::ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("{program}: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        })
}

/// What `procmond run` readies before its runtime starts: the config, and
/// the eBPF programs loaded and attached while the process still holds the
/// capabilities that takes, so that
/// [`drop_privileges`](crate::privileges::drop_privileges) can give those up
/// right after ([`prepare`]).
#[derive(Debug)]
pub struct Prepared {
    file: FileConfig,
    ebpf: Option<crate::ebpf::EbpfTier>,
}

/// Reads the config and, when the eBPF tier may be used (`--tier auto` or
/// `ebpf`, real-time on), loads and attaches its programs. Call it before
/// any thread exists and before dropping privileges. A tier that cannot load
/// is only logged here: the collector then retries and falls back (or fails,
/// when `ebpf` was forced) as it starts.
///
/// # Errors
/// [`RunError::Bad`] for an unreadable or invalid config file.
pub fn prepare(args: &RunArgs) -> Result<Prepared, RunError> {
    let file = read_config(args)?;
    let tier = args.tier.unwrap_or(file.monitor.process_config.tier);
    let wanted = !args.no_realtime
        && file.monitor.base_config.enable_event_driven
        && matches!(
            tier,
            crate::source::TierChoice::Auto | crate::source::TierChoice::Ebpf
        );
    let ebpf = if wanted {
        match crate::ebpf::EbpfTier::load(&file.monitor.process_config.ebpf) {
            Ok(tier) => Some(tier),
            Err(e) => {
                tracing::debug!(error = %e, "eBPF tier not preloaded");
                None
            }
        }
    } else {
        None
    };
    Ok(Prepared { file, ebpf })
}

fn read_config(args: &RunArgs) -> Result<FileConfig, RunError> {
    Ok(match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))
                .map_err(RunError::Bad)?;
            toml::from_str(&text)
                .with_context(|| format!("invalid config {}", path.display()))
                .map_err(RunError::Bad)?
        }
        None => FileConfig::default(),
    })
}

/// Runs the collector until SIGTERM or SIGINT.
///
/// # Errors
/// [`RunError::Bad`] for a bad config (exit code 2), [`RunError::Failed`]
/// when something fails while starting or running.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let file = read_config(&args)?;
    run_prepared(args, Prepared { file, ebpf: None }).await
}

/// [`run`], with what [`prepare`] readied.
///
/// # Errors
/// As [`run`].
pub async fn run_prepared(args: RunArgs, prepared: Prepared) -> Result<(), RunError> {
    let Prepared { file, ebpf } = prepared;
    let mut monitor = file.monitor;
    if let Some(secs) = args.interval {
        monitor.base_config.collection_interval = Duration::from_secs(secs);
    }
    if args.no_realtime {
        monitor.base_config.enable_event_driven = false;
    }
    if let Some(tier) = args.tier {
        monitor.process_config.tier = tier;
    }
    let mut collector_config = file.collector;
    if args.config.is_none() {
        // Stop promptly: nothing procmond does takes long to finish.
        collector_config = collector_config.with_shutdown_timeout(Duration::from_secs(5));
    }
    collector_config
        .validate()
        .map_err(|e| RunError::Bad(e.into()))?;

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
    .map_err(|e| RunError::Bad(e.into()))?;
    let source = match ebpf {
        Some(tier) => source.with_ebpf_tier(tier),
        None => source,
    };

    let stats = source.stats_handle();
    let mut collector = Collector::new(collector_config);
    source.register_metrics(collector.handle().metrics());
    collector
        .register(Box::new(source))
        .map_err(|e| RunError::Failed(e.into()))?;
    // Bound before anything runs: an address that cannot be served is bad input.
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let server = MetricsServer::bind(addr, collector.handle().metrics().clone())
                .await
                .map_err(|e| RunError::Bad(e.into()))?;
            if let Ok(bound) = server.local_addr() {
                tracing::info!(addr = %bound, "serving metrics at /metrics");
            }
            let stop = tokio_util::sync::CancellationToken::new();
            Some((stop.clone(), tokio::spawn(server.run(stop))))
        }
        None => None,
    };
    let writer = spawn_jsonl_writer(args.events_jsonl.as_deref(), &collector)?;
    let ipc = serve_ipc(
        args.socket.as_ref(),
        args.no_socket,
        &collector,
        stats,
        !args.no_realtime,
    )
    .await?;
    if let (true, Some((handle, _))) = (args.await_subscriber, &ipc) {
        const LIMIT: Duration = Duration::from_secs(30);
        if tokio::time::timeout(LIMIT, handle.subscribed())
            .await
            .is_err()
        {
            tracing::warn!(waited = ?LIMIT, "no subscriber yet; collecting anyway");
        }
    }
    collector.run().await.map_err(RunError::Failed)?;
    if let Some((handle, task)) = ipc {
        handle.shutdown();
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "ipc server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "ipc server task failed"),
        }
    }
    if let Some((stop, task)) = metrics {
        stop.cancel();
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "metrics server task failed");
        }
    }
    if let Some(w) = writer {
        w.await
            .map_err(|e| RunError::Failed(e.into()))?
            .map_err(RunError::Failed)?;
    }
    Ok(())
}

type JsonlTask = tokio::task::JoinHandle<anyhow::Result<()>>;

/// `--events-jsonl`: every event as one JSON line to a file or stdout.
fn spawn_jsonl_writer(
    target: Option<&str>,
    collector: &Collector,
) -> Result<Option<JsonlTask>, RunError> {
    Ok(match target {
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
                        if let Some(line) = crate::jsonl_line(event)? {
                            writeln!(out, "{line}")?;
                        }
                    }
                    out.flush()?;
                }
                anyhow::Ok(())
            }))
        }
    })
}

type IpcTask = tokio::task::JoinHandle<Result<(), collector_core::IpcError>>;

/// Binds the IPC socket and serves procmond's task handlers and event
/// stream. An explicit `--socket` that cannot be served is an error; the
/// default one is only warned about, so collection goes on.
async fn serve_ipc(
    socket: Option<&PathBuf>,
    disabled: bool,
    collector: &Collector,
    stats: ProcmondStatsHandle,
    realtime_wanted: bool,
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
        hasher.register_metrics(collector.handle().metrics());
        let handlers = crate::ipc::TaskHandlers::new(hasher)?;
        let server = CollectorIpcServer::new(IpcServerConfig::new(&path), collector.capabilities())
            .await?
            .with_events(collector.handle())
            .with_name("procmond")
            .with_health({
                let handle = collector.handle();
                move || {
                    let report = health(&handle, &stats, realtime_wanted);
                    Box::pin(async move { report })
                }
            });
        anyhow::Ok((server, handlers))
    };
    match setup.await {
        Ok((mut server, handlers)) => {
            tracing::info!(path = %path.display(), "serving ipc");
            let handle = server.handle();
            handle.register_metrics(collector.handle().metrics());
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

/// The collector's health (runtime, sources, resources) with procmond's
/// own counters on its source: snapshots taken and failed, kernel
/// overruns, execs whose process was gone before it could be read, and
/// whether the kernel process connector is in use; without it (when it was
/// wanted) the collector is degraded: short-lived processes are missed.
fn health(
    handle: &collector_core::CollectorHandle,
    stats: &ProcmondStatsHandle,
    realtime_wanted: bool,
) -> daemoneye_lib::proto::ComponentHealth {
    use daemoneye_lib::proto::HealthState;

    let mut report = collector_core::ipc::collector_health("procmond", handle);
    let m = stats.monitor_stats();
    let started = m.collection_cycles > 0;
    let mut degraded = None;
    if let Some(source) = report.components.iter_mut().find(|c| c.name == "procmond") {
        source.counters.extend([
            ("snapshots".to_owned(), m.collection_cycles),
            ("snapshot_errors".to_owned(), m.collection_errors),
            ("kernel_overruns".to_owned(), m.kernel_overruns),
            ("realtime_active".to_owned(), u64::from(m.realtime_active)),
            ("unreadable_before_exit".to_owned(), stats.enrich_failures()),
        ]);
        if let Some(tier) = stats.tier() {
            source.counters.insert(format!("tier_{tier}"), 1);
        }
        let books = stats.kernel_accounting();
        source.counters.extend([
            ("kernel_records_produced".to_owned(), books.produced),
            ("kernel_records_delivered".to_owned(), books.delivered),
            ("kernel_records_dropped".to_owned(), books.dropped),
        ]);
        if realtime_wanted && started && !m.realtime_active {
            source.state = HealthState::Degraded.into();
            "no kernel process connector: snapshots only, short-lived processes missed"
                .clone_into(&mut source.message);
            degraded = Some(source.message.clone());
        }
    }
    if let Some(why) = degraded {
        if report.state() == HealthState::Healthy {
            report.state = HealthState::Degraded.into();
            report.message = why;
        }
    }
    report
}

/// Why [`run`] failed.
#[derive(Debug)]
pub enum RunError {
    /// A usage or configuration problem (the binary exits with 2).
    Bad(anyhow::Error),
    /// A failure while starting or running (exit code 1).
    Failed(anyhow::Error),
}
