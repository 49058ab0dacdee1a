//! `daemoneye-agent`: the main job.
//!
//! `run` starts the process collector as a child process serving the IPC
//! protocol on `<data-dir>/collector.sock` (or connects to one already
//! running, `--collector-socket`), subscribes to its live events and
//! supervises it (a crashed collector is restarted with backoff; restarts
//! are logged, counted and visible in health); judges every batch of events
//! with the rules and, at an interval, the whole process table; raises
//! deduplicated alerts to its sinks (JSON lines on stdout, `--alerts-jsonl`,
//! `--syslog`), and keeps its store (`<data-dir>/agent.db`: processes,
//! lifecycle events and alerts, the last two in the audit ledger). It
//! answers health requests on `<data-dir>/agent.sock`.
//!
//! Exit codes: 0 after a clean stop, 2 for bad flags or input (an
//! unreadable headers file, an alerts file or data directory that cannot
//! be opened), 1 for a failure while running.
//!
//! The collector child is this same binary (`daemoneye-agent collect`,
//! procmond's collector, dropping every privilege but three), or
//! `--procmond PATH` (a `procmond` binary run with `run --socket ...`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use collector_core::{CollectorIpcServer, IpcServerConfig, SourceCaps};
use daemoneye_agent::detect::Detector;
use daemoneye_agent::engine::RuleEngine;
use daemoneye_agent::health::{AgentCounters, AgentHealth};
use daemoneye_agent::link::{self, CollectorMode, LinkConfig, LinkEvent, LinkStatus};
use daemoneye_agent::rules;
use daemoneye_agent::sink::{SinkSet, SinksConfig, WebhookConfig, WebhookHeader};
use daemoneye_agent::store::AgentStore;
use daemoneye_agent::writer::StoreWriter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "daemoneye-agent",
    version,
    about = "DaemonEye agent: detection and alerts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Collect, detect and alert until SIGTERM or SIGINT.
    Run(RunArgs),
    /// (internal) The collector child: `procmond run`, in this binary.
    #[command(hide = true)]
    Collect(procmond::cli::RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Data directory (default: /var/lib/daemoneye as root, the user's state
    /// directory otherwise).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A directory of rule files (`*.toml`, `*.yaml`, `*.yml`) besides the built-in pack
    /// (default: `<data-dir>/rules` when it exists).
    #[arg(long)]
    rules_dir: Option<PathBuf>,
    /// Also append alerts as JSON lines to this file.
    #[arg(long)]
    alerts_jsonl: Option<PathBuf>,
    /// Also send alerts to syslog (RFC 5424, facility authpriv): a datagram
    /// socket path such as /dev/log, or udp://IP:PORT.
    #[arg(long, value_name = "PATH|udp://IP:PORT")]
    syslog: Option<daemoneye_agent::sink::SyslogTarget>,
    /// Also POST alerts as JSON to this http(s) URL (queued, retried with
    /// backoff; what cannot be delivered is counted).
    #[arg(long, value_name = "URL")]
    webhook: Option<daemoneye_agent::sink::WebhookUrl>,
    /// A header sent with every webhook request, `Name: value` (repeatable).
    #[arg(
        long = "webhook-header",
        value_name = "NAME: VALUE",
        requires = "webhook"
    )]
    webhook_headers: Vec<daemoneye_agent::sink::WebhookHeader>,
    /// Headers for webhook requests from a file only its owner can read,
    /// one `Name: value` a line (secrets such as `Authorization` belong
    /// here: local users can read the command line).
    #[arg(long, value_name = "PATH", requires = "webhook")]
    webhook_headers_file: Option<PathBuf>,
    /// Run this procmond binary as the collector instead of the built-in one.
    #[arg(long, conflicts_with = "collector_socket")]
    procmond: Option<PathBuf>,
    /// Start no collector: connect to the one serving this socket (for
    /// example `procmond run --socket PATH`), reconnecting when it goes.
    #[arg(long)]
    collector_socket: Option<PathBuf>,
    /// Seconds between the collector's reconciliation snapshots.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    interval: u64,
    /// Seconds between rule sweeps over the whole process table.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    sweep_secs: u64,
    /// Seconds within which a repeated alert (same rule, same process) is suppressed.
    #[arg(long, default_value_t = 3600)]
    dedup_window_secs: u64,
}

/// The most events judged in one rule evaluation when batches pile up.
const MAX_JUDGED: usize = 4096;

/// The sinks the flags name (stdout always): one failing or stalled sink
/// never blocks the others.
fn sinks_config(args: &RunArgs) -> anyhow::Result<SinksConfig> {
    let mut config = SinksConfig::default();
    config.alerts_jsonl.clone_from(&args.alerts_jsonl);
    config.syslog.clone_from(&args.syslog);
    if let Some(url) = args.webhook.clone() {
        let mut webhook = WebhookConfig::new(url);
        webhook.headers.clone_from(&args.webhook_headers);
        if let Some(path) = &args.webhook_headers_file {
            webhook.headers.extend(WebhookHeader::from_file(path)?);
        }
        config.webhook = Some(webhook);
    }
    Ok(config)
}

/// The collector: how it is reached, and its socket.
fn collector_mode(
    args: &RunArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<(CollectorMode, PathBuf)> {
    if let Some(socket) = &args.collector_socket {
        return Ok((CollectorMode::Connect, socket.clone()));
    }
    let socket = data_dir.join("collector.sock");
    let mut flags: Vec<OsString> = vec![
        "--socket".into(),
        socket.clone().into_os_string(),
        "--no-database".into(),
        "--await-subscriber".into(),
        "--interval".into(),
        args.interval.to_string().into(),
    ];
    let mode = match &args.procmond {
        Some(path) => {
            flags.insert(0, "run".into());
            CollectorMode::Spawn {
                program: path.clone(),
                args: flags,
            }
        }
        None => {
            flags.insert(0, "collect".into());
            CollectorMode::Spawn {
                program: std::env::current_exe().context("cannot find this executable")?,
                args: flags,
            }
        }
    };
    Ok((mode, socket))
}

/// An error in what the user gave (paths, files): exit code 2.
#[derive(Debug)]
struct BadInput(anyhow::Error);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for BadInput {}

fn bad_input(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(BadInput(e))
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

#[allow(clippy::too_many_lines)] // setup, then one loop: reads best whole
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(daemoneye_lib::models::default_state_dir);
    create_private_dir(&data_dir).map_err(bad_input)?;
    if !nix::unistd::geteuid().is_root() {
        warn!(
            "not running as root: other users' processes are seen only in part (their \
             executables and hashes are unreadable), and where the kernel refuses its process \
             connector the collector sees processes only in snapshots every {} s, missing \
             short-lived ones (it says so if that happens)",
            args.interval
        );
    }
    let mut all = rules::builtin()?;
    let rules_dir = args
        .rules_dir
        .clone()
        .or_else(|| Some(data_dir.join("rules")).filter(|d| d.is_dir()));
    let mut refused = Vec::new();
    if let Some(dir) = &rules_dir {
        let (ok, bad) = rules::load_dir(dir);
        all.extend(ok);
        refused.extend(bad);
    }
    let engine = RuleEngine::new(all)?;
    refused.extend(engine.refused().iter().cloned());
    for e in &refused {
        warn!(file = %e.origin, rule = %e.rule, reason = %e.reason, "rule refused");
    }
    let rules_loaded = engine.rules().len() as u64;
    info!(rules = rules_loaded, refused = refused.len(), data_dir = %data_dir.display(), "rules loaded");
    let mut detector = Detector::new(engine, Duration::from_secs(args.dedup_window_secs));
    let writer = StoreWriter::start(AgentStore::open(&data_dir)?, 256)
        .context("cannot start the store writer")?;
    // Unopenable files, a bad headers file: the user's to fix.
    let sinks = sinks_config(&args)
        .and_then(|c| Ok(SinkSet::start(c)?))
        .map_err(bad_input)?;

    let (mode, collector_socket) = collector_mode(&args, &data_dir)?;
    let status = Arc::new(LinkStatus::default());
    let counters = Arc::new(AgentCounters::default());
    let health = AgentHealth {
        started: tokio::time::Instant::now(),
        link: status.clone(),
        collector_socket: collector_socket.clone(),
        writer: writer.stats(),
        counters: counters.clone(),
        sinks: sinks.stats(),
        rules_loaded,
        rules_refused: refused.len() as u64,
    };
    let mut server = CollectorIpcServer::new(
        IpcServerConfig::new(data_dir.join("agent.sock")),
        SourceCaps::empty(),
    )
    .await
    .context("cannot serve the agent's socket")?
    .with_name("daemoneye-agent")
    .with_health(move || {
        let h = health.clone();
        Box::pin(async move { h.report().await })
    });
    let server_handle = server.handle();
    let serving = tokio::spawn(async move {
        server
            .start(|task| {
                Box::pin(async move {
                    daemoneye_lib::proto::DetectionResult::failure(
                        &task.task_id,
                        "the agent runs no tasks; ask its collectors",
                    )
                })
            })
            .await
    });

    let shutdown = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel::<LinkEvent>(64);
    let linking = tokio::spawn(link::run(
        LinkConfig::new(mode, collector_socket),
        status.clone(),
        tx,
        shutdown.clone(),
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sweep = tokio::time::interval(Duration::from_secs(args.sweep_secs));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.tick().await; // the first tick is immediate: nothing to sweep yet
    loop {
        // What to judge: a batch of events (stored after its alerts are
        // out), or the whole table.
        let (judged, batch, reconnected) = tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = int.recv() => break,
            event = rx.recv() => match event {
                Some(LinkEvent::Events(mut batch)) => {
                    // Judge everything already waiting in one go: under a
                    // burst the rules run once per many events, not once per
                    // small batch; when quiet, nothing waits.
                    let mut reconnected = false;
                    while batch.len() < MAX_JUDGED {
                        match rx.try_recv() {
                            Ok(LinkEvent::Events(more)) => batch.extend(more),
                            Ok(LinkEvent::Connected) => {
                                reconnected = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    // Rules run on this thread (and a second connection's):
                    // let the runtime move its other tasks elsewhere meanwhile.
                    let judged = tokio::task::block_in_place(|| detector.on_events(&batch));
                    (judged, Some(batch), reconnected)
                }
                Some(LinkEvent::Connected) => (Ok(Vec::new()), None, true),
                None => break,
            },
            _ = sweep.tick() => {
                counters.sweeps.fetch_add(1, Ordering::Relaxed);
                (tokio::task::block_in_place(|| detector.sweep()), None, false)
            }
        };
        let alerts = judged.unwrap_or_else(|e| {
            counters.engine_errors.fetch_add(1, Ordering::Relaxed);
            error!(error = %e, "rule evaluation failed");
            Vec::new()
        });
        counters
            .live_processes
            .store(detector.live() as u64, Ordering::Relaxed);
        counters
            .suppressed
            .store(detector.suppressed(), Ordering::Relaxed);
        // Sinks first (they never wait); then the store, in order: the
        // events, then the alerts they raised.
        for a in &alerts {
            counters.alerts.fetch_add(1, Ordering::Relaxed);
            sinks.deliver(a).await;
        }
        if let Some(batch) = batch {
            writer.events(batch).await;
        }
        for a in alerts {
            writer.alert(a).await;
        }
        if reconnected {
            detector.forget_processes();
            writer.clear_processes().await;
        }
    }
    info!("shutting down");
    shutdown.cancel();
    if let Err(e) = linking.await {
        error!(error = %e, "the collector link failed");
    }
    server_handle.shutdown();
    match serving.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "the agent's socket ended with an error"),
        Err(e) => warn!(error = %e, "the agent's socket task failed"),
    }
    // Delivers what is queued, within a few seconds.
    sinks
        .close(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    writer.close().await;
    info!(
        alerts = counters.alerts.load(Ordering::Relaxed),
        restarts = status.restarts.load(Ordering::Relaxed),
        suppressed = detector.suppressed(),
        "agent stopped"
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    collector_core::logging::init_logging(false);
    if let Command::Run(_) = &cli.command {
        // Whatever the agent writes (store, its journal files, sockets,
        // alert files) is its owner's alone.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        // The agent needs no more than its collector: keep those three
        // capabilities (its child inherits them, and no more, through
        // no_new_privs), before any thread starts.
        match procmond::privileges::drop_privileges() {
            Ok(procmond::privileges::Dropped::Reduced { kept }) => {
                tracing::info!(capabilities = ?kept, "running as root with only these capabilities");
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("daemoneye-agent: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Command::Collect(_) = &cli.command {
        // Die with the agent, even if it is killed outright.
        if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
            eprintln!("daemoneye-agent: cannot tie the collector to the agent: {e}");
        }
        if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
            eprintln!("daemoneye-agent: the agent is already gone");
            return ExitCode::FAILURE;
        }
        if let Err(e) = procmond::privileges::drop_privileges() {
            eprintln!("daemoneye-agent: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("daemoneye-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run(args) => rt.block_on(run(args)),
        Command::Collect(args) => match rt.block_on(procmond::cli::run(args)) {
            Ok(()) => Ok(()),
            Err(procmond::cli::RunError::Bad(e)) => Err(bad_input(e)),
            Err(procmond::cli::RunError::Failed(e)) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daemoneye-agent: {e:#}");
            if e.is::<BadInput>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
