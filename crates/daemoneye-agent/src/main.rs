//! `daemoneye-agent`: the main job.
//!
//! `run` starts the process collector as a child process, supervises it
//! (a crashed collector is restarted with backoff; restarts are logged and
//! counted), judges every batch of its events with the rules and, at an
//! interval, the whole process table; raises deduplicated alerts as JSON
//! lines on stdout (and to `--alerts-jsonl PATH`), each stored with its
//! audit-ledger entry under the data directory.
//!
//! The collector child is this same binary (`daemoneye-agent collect`,
//! procmond's collector streaming JSON lines), or `--procmond PATH` (a
//! `procmond` binary run with `run --events-jsonl - --no-database`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use collector_core::{Collector, CollectorConfig, ProcessEvent};
use daemoneye_agent::detect::Detector;
use daemoneye_agent::engine::RuleEngine;
use daemoneye_agent::rules;
use daemoneye_agent::store::AgentStore;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::Instant;
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
    /// (internal) The collector child: procmond's collector, events as JSON lines on stdout.
    #[command(hide = true)]
    Collect {
        /// Seconds between reconciliation snapshots.
        #[arg(long, default_value_t = 30)]
        interval: u64,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Data directory (default: /var/lib/daemoneye as root, the user's state
    /// directory otherwise).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A directory of rule files (`*.toml`) besides the built-in pack
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
    /// Run this procmond binary as the collector instead of the built-in one.
    #[arg(long)]
    procmond: Option<PathBuf>,
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

/// The collector child: events as JSON lines (`ProcessEvent` plus `kind`).
async fn collect(interval: u64) -> anyhow::Result<()> {
    let mut config = procmond::ProcmondMonitorConfig::default();
    config.base_config.collection_interval = Duration::from_secs(interval);
    let source = procmond::ProcmondMonitorCollector::without_database(config)?;
    let mut collector =
        Collector::new(CollectorConfig::new().with_shutdown_timeout(Duration::from_secs(5)));
    collector.register(Box::new(source))?;
    let handle = collector.handle();
    let mut sub = handle.subscribe();
    let writer = tokio::spawn(async move {
        let written = async {
            let mut out = std::io::BufWriter::new(std::io::stdout());
            while let Some(batch) = sub.recv_batch().await {
                for e in batch.iter() {
                    if let Some(line) = procmond::jsonl_line(e)? {
                        out.write_all(line.as_bytes())?;
                        out.write_all(b"\n")?;
                    }
                }
                out.flush()?;
            }
            anyhow::Ok(())
        }
        .await;
        if written.is_err() {
            // The agent stopped reading (it is gone): nobody to collect for.
            handle.shutdown();
        }
        written
    });
    collector.run().await?;
    writer.await?.context("the agent stopped reading events")?;
    Ok(())
}

struct Outputs {
    store: AgentStore,
    file: Option<std::fs::File>,
    syslog: Option<daemoneye_agent::sink::SyslogSink>,
    alerts: u64,
    /// Failed deliveries per sink: one failing sink never blocks the others.
    failures: [u64; 4],
}

impl Outputs {
    fn deliver(&mut self, alerts: Vec<daemoneye_agent::alert::Alert>) {
        for a in alerts {
            self.alerts += 1;
            if let Err(e) = self.store.record_alert(&a) {
                self.failures[0] += 1;
                error!(error = %e, rule = %a.rule_id, "storing an alert failed");
            }
            if let Some(s) = &mut self.syslog {
                if let Err(e) = s.send(&a) {
                    self.failures[3] += 1;
                    warn!(error = %e, failures = self.failures[3], "syslog sink failed");
                }
            }
            match serde_json::to_string(&a) {
                Ok(line) => {
                    let mut stdout = std::io::stdout().lock();
                    if writeln!(stdout, "{line}")
                        .and_then(|()| stdout.flush())
                        .is_err()
                    {
                        warn!("stdout sink failed");
                    }
                    if let Some(f) = &mut self.file {
                        if writeln!(f, "{line}").is_err() {
                            warn!("alert file sink failed");
                        }
                    }
                }
                Err(e) => error!(error = %e, "encoding an alert failed"),
            }
        }
    }
}

fn collector_command(args: &RunArgs) -> anyhow::Result<tokio::process::Command> {
    let mut cmd = match &args.procmond {
        Some(path) => {
            let mut c = tokio::process::Command::new(path);
            c.args(["run", "--no-database", "--events-jsonl", "-", "--interval"])
                .arg(args.interval.to_string());
            c
        }
        None => {
            let me = std::env::current_exe().context("cannot find this executable")?;
            let mut c = tokio::process::Command::new(me);
            c.args(["collect", "--interval"])
                .arg(args.interval.to_string());
            c
        }
    };
    cmd.stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    Ok(cmd)
}

/// Asks the child to stop, and kills it if it has not within a few seconds.
async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

#[allow(clippy::too_many_lines)] // one supervision loop reads best whole
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(daemoneye_lib::models::default_state_dir);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
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
    info!(rules = engine.rules().len(), refused = refused.len(), data_dir = %data_dir.display(), "rules loaded");
    let mut detector = Detector::new(engine, Duration::from_secs(args.dedup_window_secs));
    let mut out = Outputs {
        store: AgentStore::open(&data_dir)?,
        file: match &args.alerts_jsonl {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open {}", p.display()))?,
            ),
            None => None,
        },
        syslog: match args.syslog.clone() {
            Some(t) => Some(
                daemoneye_agent::sink::SyslogSink::open(t.clone())
                    .with_context(|| format!("cannot open syslog {t:?}"))?,
            ),
            None => None,
        },
        alerts: 0,
        failures: [0; 4],
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut restarts = 0u64;
    let mut backoff = Duration::from_secs(1);
    let mut sweep = tokio::time::interval(Duration::from_secs(args.sweep_secs));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'supervise: loop {
        let mut child = collector_command(&args)?
            .spawn()
            .context("cannot start the collector")?;
        let started = Instant::now();
        info!(pid = child.id(), restarts, "collector started");
        let Some(stdout) = child.stdout.take() else {
            anyhow::bail!("collector has no stdout");
        };
        let mut lines = BufReader::new(stdout).lines();
        let mut batch: Vec<ProcessEvent> = Vec::new();
        let mut bad_lines = 0u64;
        loop {
            // Judge what has arrived as soon as the pipe is momentarily empty.
            let next = if batch.is_empty() {
                tokio::select! {
                    biased;
                    _ = term.recv() => None,
                    _ = int.recv() => None,
                    _ = sweep.tick() => {
                        let alerts = detector.sweep()?;
                        out.deliver(alerts);
                        continue;
                    }
                    line = lines.next_line() => Some(line),
                }
            } else {
                match tokio::time::timeout(Duration::from_millis(2), lines.next_line()).await {
                    Ok(line) => Some(line),
                    Err(_) => {
                        let alerts = detector.on_events(&std::mem::take(&mut batch))?;
                        out.deliver(alerts);
                        continue;
                    }
                }
            };
            match next {
                None => {
                    info!("shutting down");
                    stop_child(&mut child).await;
                    break 'supervise;
                }
                Some(Ok(Some(line))) => match serde_json::from_str::<ProcessEvent>(&line) {
                    Ok(e) => {
                        batch.push(e);
                        if batch.len() >= 1024 {
                            let alerts = detector.on_events(&std::mem::take(&mut batch))?;
                            out.deliver(alerts);
                        }
                    }
                    Err(e) => {
                        bad_lines += 1;
                        warn!(error = %e, bad_lines, "unreadable line from the collector");
                    }
                },
                Some(Ok(None) | Err(_)) => break,
            }
        }
        // The collector's stream ended: it exited or crashed.
        if !batch.is_empty() {
            let alerts = detector.on_events(&batch)?;
            out.deliver(alerts);
        }
        let status = child.wait().await;
        restarts += 1;
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        error!(?status, restarts, backoff = ?backoff, "collector exited; restarting");
        tokio::select! {
            _ = term.recv() => break 'supervise,
            _ = int.recv() => break 'supervise,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    info!(
        alerts = out.alerts,
        restarts,
        suppressed = detector.suppressed(),
        "agent stopped"
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    collector_core::logging::init_logging(false);
    if let Command::Collect { .. } = &cli.command {
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
        Command::Collect { interval } => rt.block_on(collect(interval)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daemoneye-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
