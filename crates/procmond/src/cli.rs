//! `procmond run` as a library call, so that other programs (the agent's
//! collector child) run exactly what the `procmond` binary runs.
//!
//! [`RunArgs`] are the flags of `procmond run`; [`run`] loads the config,
//! opens the audit database and runs the collector through collector-core's
//! [`Serve`], the run scaffold every collector binary shares (IPC with
//! procmond's tasks, live events and health, as the component `procmond`;
//! JSON lines; `--metrics-listen`), returning after SIGTERM or SIGINT once
//! everything is committed. [`RunError`] and [`runtime_in_main`] are
//! collector-core's, under their old paths.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use collector_core::serve::{self, Serve, ServeArgs};
use collector_core::CollectorConfig;
use daemoneye_hasher::{HashEngine, HasherConfig};
use serde::Deserialize;

pub use collector_core::serve::{runtime_in_main, RunError};

use crate::source::ProcmondStatsHandle;
use crate::{DatabaseManager, ProcmondMonitorCollector, ProcmondMonitorConfig};

/// The flags of `procmond run`.
#[derive(Debug, Clone, Default, clap::Args)]
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
    /// Snapshots only, no kernel events (as `--tier polling`).
    #[arg(long)]
    pub no_realtime: bool,
    /// The tier of kernel events: `auto` (default: eBPF, else the process
    /// connector, else polling), or one forced (starting fails without it).
    #[arg(long, value_enum)]
    pub tier: Option<crate::source::TierChoice>,
    /// The socket, `--events-jsonl`, `--await-subscriber`, `--metrics-listen`.
    #[command(flatten)]
    pub serve: ServeArgs,
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
    serve::read_config(args.config.as_deref())
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
    // Without a config file, stop promptly: nothing procmond does takes long.
    let collector_config = serve::collector_config(file.collector, args.config.is_some())?;
    // A snapshot pass keeps two or three files of each process open until
    // the next: room for them.
    match collector_core::procfs::raise_open_file_limit() {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "the open-file limit stays as it is"),
    }

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
    let realtime_wanted = !args.no_realtime;
    let mut serve = Serve::new("procmond", collector_config, args.serve);
    source.register_metrics(serve.metrics());
    serve.register(source)?;
    serve
        .with_jsonl(crate::jsonl_line)
        .with_health(move |handle| health(handle, &stats, realtime_wanted))
        .with_tasks(task_handlers)
        .run()
        .await
}

/// procmond's IPC tasks: enumeration, process trees and hashes (SHA-256 and
/// BLAKE3, the hasher's counters in the collector's registry).
fn task_handlers(handle: &collector_core::CollectorHandle) -> anyhow::Result<serve::TaskHandler> {
    let hasher = HashEngine::new(HasherConfig {
        algorithms: vec![
            collector_core::HashAlgorithm::Sha256,
            collector_core::HashAlgorithm::Blake3,
        ],
        ..HasherConfig::default()
    })?;
    hasher.register_metrics(handle.metrics());
    let handlers = crate::ipc::TaskHandlers::new(hasher)?;
    Ok(Box::new(handlers.into_handler()))
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
