//! The agent's main job as a library: [`Agent::build`] checks and opens
//! everything that can fail early (data directory, the metrics address,
//! rules, store, sinks, the agent's socket); [`Agent::run`] starts one
//! [`link`] per configured collector, merges their events into one
//! detection loop, and stops, draining its sinks and store, when its
//! shutdown token is cancelled.
//!
//! The agent's counters (its own, each link's, each sink's) are
//! [`Counter`](collector_core::metrics::Counter)s in one [`Registry`]
//! ([`Agent::metrics`]), served at `/metrics` when
//! [`Settings::metrics_listen`] is set.
//!
//! The audit ledger records the agent's runs: a `start` entry when it
//! starts, a `stop` entry when it stops cleanly; and its head leaves the
//! host: a checkpoint (a `checkpoint` entry whose sequence number and hash,
//! with what the store lost since the previous one, go to every sink) at
//! start, every [`Settings::checkpoint_interval`] and at shutdown, after
//! the `stop` entry.
//!
//! Each batch of events is judged as it arrives (what is already waiting is
//! judged with it, up to [`MAX_JUDGED`] events), the whole process table at
//! every sweep; alerts go to the sinks first (they never wait), then the
//! store records the events and the alerts they raised, in that order.
//!
//! ```no_run
//! use daemoneye_agent::agent::Agent;
//! use daemoneye_agent::config::{RunArgs, Settings};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::load(&RunArgs::default())?;
//! let agent = Agent::build(settings).await?;
//! let shutdown = CancellationToken::new();
//! // ... shutdown.cancel() on SIGTERM ...
//! agent.run(shutdown).await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use collector_core::metrics::{MetricsServer, Registry, ServeError};
use collector_core::{CollectorIpcServer, IpcServerConfig, ProcessEvent, SourceCaps};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::alert::Alert;
use crate::config::{CollectorSpec, ConfigError, Launch, Settings};
use crate::detect::Detector;
use crate::engine::{EngineError, RuleEngine};
use crate::health::{AgentCounters, AgentHealth, LinkedCollector};
use crate::link::{self, CollectorMode, LinkConfig, LinkEvent, LinkStatus, SpawnerSlot};
use crate::rules::{self, Rule, RuleError};
use crate::sink::{FleetStatus, SinkSet};
use crate::spawner::{Separated, SpawnerClient};
use crate::store::{AgentStore, StoreError};
use crate::writer::StoreWriter;

/// The most events judged in one rule evaluation when batches pile up.
pub const MAX_JUDGED: usize = 4096;

/// Event batches the links may queue for the detection loop.
const LINK_QUEUE: usize = 64;
/// After a shutdown signal, how long the agent still judges and stores the
/// batches its links had already handed on; what is left then is counted
/// dropped (`events_dropped_at_shutdown`).
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the agent could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory cannot be created.
    #[error("cannot create {}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The built-in rule pack does not load (a bug of the build).
    #[error("cannot load the built-in rules")]
    Rules(#[source] RuleError),
    /// The rule engine cannot start.
    #[error("cannot start the rule engine")]
    Engine(#[source] EngineError),
    /// The store cannot be opened.
    #[error("cannot open the store in {}", path.display())]
    Store {
        /// The data directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The store's writer thread cannot start.
    #[error("cannot start the store writer")]
    Writer(#[source] daemoneye_store::StoreError),
    /// A sink cannot be opened (a file, a headers file, a syslog target).
    #[error("cannot open the alert sinks")]
    Sinks(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The agent's own executable, which runs the built-in collectors, is
    /// not found.
    #[error("cannot find this executable")]
    CurrentExe(#[source] std::io::Error),
    /// The agent's health socket cannot be served.
    #[error("cannot serve the agent's socket {}", path.display())]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: collector_core::IpcError,
    },
    /// The metrics address cannot be served (in use, not local).
    #[error(transparent)]
    Metrics(#[from] ServeError),
    /// The spawner's socket cannot be served.
    #[error("cannot talk to the spawner")]
    Spawner(#[source] std::io::Error),
}

impl AgentError {
    /// Whether the user's input is at fault (the binary exits with 2): the
    /// configuration, the data directory, a sink's file or address, the
    /// metrics address.
    pub fn is_bad_input(&self) -> bool {
        match self {
            Self::Config(_) | Self::DataDir { .. } | Self::Sinks(_) | Self::Metrics(_) => true,
            // A store file the user cannot open, one that is not a
            // database, or one from a newer build: theirs to fix.
            Self::Store { source, .. } => matches!(
                source,
                StoreError::DirectoryMissing { .. }
                    | StoreError::Create { .. }
                    | StoreError::Open { .. }
                    | StoreError::JournalMode { .. }
                    | StoreError::NewerSchema { .. }
            ),
            _ => false,
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AgentError::DataDir {
            path: dir.to_owned(),
            source,
        })
}

/// The link settings of one configured collector, the `index`th; one the
/// agent starts is asked of `spawner` when there is one.
fn link_config(
    spec: &CollectorSpec,
    index: usize,
    spawner: Option<&SpawnerClient>,
) -> Result<LinkConfig, AgentError> {
    let mode = match (&spec.launch, spawner) {
        (Launch::Connect, _) => CollectorMode::Connect,
        (_, Some(client)) => CollectorMode::Spawner(SpawnerSlot {
            client: client.clone(),
            index: u16::try_from(index).unwrap_or(u16::MAX),
        }),
        (Launch::Builtin { args }, None) => CollectorMode::Spawn {
            program: std::env::current_exe().map_err(AgentError::CurrentExe)?,
            args: args.clone(),
        },
        (Launch::Program { program, args }, None) => CollectorMode::Spawn {
            program: program.clone(),
            args: args.clone(),
        },
    };
    Ok(LinkConfig {
        name: spec.name.clone(),
        domain: spec.domain,
        ..LinkConfig::new(mode, &spec.socket)
    })
}

/// The built-in rules and those of the rules directory (the settings', or
/// `<data-dir>/rules` when it exists), with the files and rules refused.
///
/// # Errors
/// When the built-in pack does not load (a bug of the build).
pub(crate) fn load_rules(settings: &Settings) -> Result<(Vec<Rule>, Vec<RuleError>), RuleError> {
    let mut all = rules::builtin()?;
    let rules_dir = settings
        .rules_dir
        .clone()
        .or_else(|| Some(settings.data_dir.join("rules")).filter(|d| d.is_dir()));
    let mut refused = Vec::new();
    if let Some(dir) = &rules_dir {
        let (ok, bad) = rules::load_dir(dir);
        all.extend(ok);
        refused.extend(bad);
    }
    Ok((all, refused))
}

/// Opens the store (queueing alerts in its outbox when the fleet ships),
/// its writer and the sinks (the fleet sink over the writer's outbox).
fn open_store_and_sinks(
    settings: &Settings,
) -> Result<(StoreWriter, SinkSet, Option<Arc<FleetStatus>>), AgentError> {
    let fleet_config = settings.sinks.fleet.clone();
    let store = AgentStore::open(&settings.data_dir)
        .map_err(|source| AgentError::Store {
            path: settings.data_dir.clone(),
            source,
        })?
        .with_outbox(fleet_config.as_ref().map(|f| f.outbox_items))
        .with_shipped_events(fleet_config.as_ref().map_or(&[][..], |f| &f.events));
    let writer = StoreWriter::spawn(store, settings.writer_config()).map_err(AgentError::Writer)?;
    // Unopenable files, a bad headers file: the user's to fix.
    let mut sinks =
        SinkSet::start(settings.sinks.clone()).map_err(|e| AgentError::Sinks(e.into()))?;
    let fleet = match fleet_config {
        Some(config) => Some(
            sinks
                .start_fleet(config, writer.clone())
                .map_err(|e| AgentError::Sinks(e.into()))?,
        ),
        None => None,
    };
    Ok((writer, sinks, fleet))
}

/// What judges and records: the detector, the sinks and the store.
struct Pipeline {
    detector: Detector,
    sinks: SinkSet,
    writer: StoreWriter,
    counters: Arc<AgentCounters>,
}

impl Pipeline {
    /// Delivers and records what one turn of the loop judged.
    async fn settle(
        &mut self,
        judged: Result<Vec<Alert>, EngineError>,
        batch: Option<LinkEvent>,
        reconnected: bool,
    ) {
        let counters = &self.counters;
        let alerts = judged.unwrap_or_else(|e| {
            counters.engine_errors.inc();
            error!(error = %e, "rule evaluation failed");
            Vec::new()
        });
        counters
            .live_processes
            .set(i64::try_from(self.detector.live()).unwrap_or(i64::MAX));
        // The detector keeps the total; the counter (only written here)
        // catches up with it.
        let suppressed = &counters.suppressed;
        suppressed.add(self.detector.suppressed().saturating_sub(suppressed.get()));
        // Sinks first (they never wait); then the store, in order: the
        // events, then the alerts they raised.
        for a in &alerts {
            counters.alerts.inc();
            self.sinks.deliver(a).await;
        }
        // The fleet sink ships what the writer commits to the outbox (the
        // writer wakes it).
        match batch {
            Some(LinkEvent::Events(batch)) => self.writer.events(batch).await,
            Some(LinkEvent::Performance(samples)) => self.writer.performance(samples).await,
            Some(LinkEvent::Network(connections)) => self.writer.connections(connections).await,
            Some(LinkEvent::Files(files)) => {
                self.writer.file_events(files).await;
                // What they said of running processes (an executable
                // deleted or replaced), as those processes' events.
                self.writer.events(self.detector.take_implied()).await;
            }
            Some(LinkEvent::Connected) | None => {}
        }
        for a in alerts {
            // The fleet sink ships from the store's outbox: offered the
            // alert once the writer has it queued (and so ahead of the
            // sink's read).
            let stored = self.sinks.ships_stored().then(|| a.clone());
            self.writer.alert(a).await;
            if let Some(a) = stored {
                self.sinks.deliver_stored(&a).await;
            }
        }
        if reconnected {
            self.detector.forget_processes();
            self.writer.clear_processes().await;
        }
    }

    /// After the links were told to stop: judges and stores the batches they
    /// had handed on, until they are all gone or `deadline` passes; what is
    /// left then is counted dropped.
    async fn drain(&mut self, rx: &mut mpsc::Receiver<LinkEvent>, deadline: tokio::time::Instant) {
        loop {
            let event = tokio::select! {
                event = rx.recv() => event,
                () = tokio::time::sleep_until(deadline) => {
                    let mut left = 0;
                    while let Ok(event) = rx.try_recv() {
                        left += event.len();
                    }
                    self.counters.dropped_at_shutdown.add_usize(left);
                    warn!(events = left, "shutdown deadline passed; events left unjudged");
                    return;
                }
            };
            match event {
                Some(
                    event @ (LinkEvent::Events(_)
                    | LinkEvent::Performance(_)
                    | LinkEvent::Network(_)
                    | LinkEvent::Files(_)),
                ) => {
                    let judged = self.judge(&event);
                    self.settle(judged, Some(event), false).await;
                }
                Some(LinkEvent::Connected) => {}
                None => return,
            }
        }
    }

    /// Judges and records what a link handed on, with the process events
    /// already waiting behind a batch of them (see [`take_waiting`]).
    async fn on_link_event(&mut self, event: LinkEvent, rx: &mut mpsc::Receiver<LinkEvent>) {
        match event {
            LinkEvent::Events(mut batch) => {
                let waiting = take_waiting(rx, &mut batch);
                let batch = LinkEvent::Events(batch);
                let judged = self.judge(&batch);
                self.settle(judged, Some(batch), waiting.reconnected).await;
                if let Some(other) = waiting.other {
                    let judged = self.judge(&other);
                    self.settle(judged, Some(other), false).await;
                }
            }
            LinkEvent::Connected => self.settle(Ok(Vec::new()), None, true).await,
            other @ (LinkEvent::Performance(_) | LinkEvent::Network(_) | LinkEvent::Files(_)) => {
                let judged = self.judge(&other);
                self.settle(judged, Some(other), false).await;
            }
        }
    }

    /// Judges the whole table (a sweep). After it, the loop hands what the
    /// batches and the sweep freed back to the kernel rather than glibc
    /// keeping it (7 of the agent's 23 MB anonymous memory with 3,000
    /// processes).
    fn sweep(&mut self) -> Result<Vec<Alert>, EngineError> {
        self.counters.sweeps.inc();
        let detector = &mut self.detector;
        tokio::task::block_in_place(|| detector.sweep())
    }

    /// Judges one batch of the links' events: process events with the
    /// process rules, performance samples with the performance rules,
    /// connections with the network rules, file events with the file rules.
    fn judge(&mut self, event: &LinkEvent) -> Result<Vec<Alert>, EngineError> {
        let detector = &mut self.detector;
        // Rules run on this thread (and a second connection's): let the
        // runtime move its other tasks elsewhere meanwhile.
        tokio::task::block_in_place(|| match event {
            LinkEvent::Events(batch) => detector.on_events(batch),
            LinkEvent::Performance(samples) => detector.on_performance(samples),
            LinkEvent::Network(connections) => detector.on_network(connections),
            LinkEvent::Files(files) => detector.on_files(files),
            LinkEvent::Connected => Ok(Vec::new()),
        })
    }

    /// Appends a `checkpoint` entry after everything given to the store so
    /// far and sends it to every sink.
    async fn checkpoint(&mut self) {
        checkpoint(&self.writer, &self.sinks).await;
    }

    /// Records the start in the ledger (with the head found), then the
    /// first checkpoint.
    async fn start(&mut self) {
        match self
            .writer
            .record_start(env!("CARGO_PKG_VERSION"), std::process::id())
            .await
        {
            Ok(head) => info!(seq = head.seq, "agent start recorded in the ledger"),
            Err(e) => {
                error!(error = %daemoneye_lib::error_chain(&e), "cannot record the start in the ledger");
            }
        }
        self.checkpoint().await;
    }

    /// Records the clean stop in the ledger and the last checkpoint after
    /// it, within `deadline`; delivers what the sinks hold (within a few
    /// seconds), then commits what the store was given; logs the totals
    /// (with the collectors' `restarts`).
    async fn close(self, restarts: u64, deadline: tokio::time::Instant) {
        let Self {
            detector,
            sinks,
            writer,
            counters,
        } = self;
        let stopped = tokio::time::timeout_at(deadline, async {
            if let Err(e) = writer.record_stop(std::process::id()).await {
                error!(error = %daemoneye_lib::error_chain(&e), "cannot record the stop in the ledger");
            }
            checkpoint(&writer, &sinks).await;
        });
        if stopped.await.is_err() {
            warn!("the store did not record the stop and the last checkpoint by the shutdown deadline");
        }
        sinks
            .close(tokio::time::Instant::now() + std::time::Duration::from_secs(5))
            .await;
        writer.close().await;
        info!(
            alerts = counters.alerts.get(),
            restarts,
            suppressed = detector.suppressed(),
            "agent stopped"
        );
    }
}

/// What [`take_waiting`] found besides process events.
#[derive(Default)]
struct Waiting {
    /// A link reconnected meanwhile.
    reconnected: bool,
    /// A batch of performance samples, connections or file events, to
    /// judge after the process events that came before it.
    other: Option<LinkEvent>,
}

/// Adds to `batch` what is already waiting, up to [`MAX_JUDGED`] events, to
/// judge it in one go: under a burst the rules run once per many events,
/// not once per small batch; when quiet, nothing waits. Stops at a
/// reconnection or a batch of performance samples, connections or file
/// events (judged after the process events before them, so a connection's
/// holder, or the process that wrote a file, is known by then).
fn take_waiting(rx: &mut mpsc::Receiver<LinkEvent>, batch: &mut Vec<ProcessEvent>) -> Waiting {
    while batch.len() < MAX_JUDGED {
        match rx.try_recv() {
            Ok(LinkEvent::Events(more)) => batch.extend(more),
            Ok(LinkEvent::Connected) => {
                return Waiting {
                    reconnected: true,
                    other: None,
                }
            }
            Ok(
                other @ (LinkEvent::Performance(_) | LinkEvent::Network(_) | LinkEvent::Files(_)),
            ) => {
                return Waiting {
                    reconnected: false,
                    other: Some(other),
                }
            }
            Err(_) => break,
        }
    }
    Waiting::default()
}

/// Appends a `checkpoint` entry after everything given to `writer` so far
/// and sends it to every sink.
async fn checkpoint(writer: &StoreWriter, sinks: &SinkSet) {
    match writer.checkpoint().await {
        Ok(cp) => {
            if cp.lost.is_none() {
                info!(seq = cp.seq, head = %cp.head, "ledger checkpoint");
            } else {
                warn!(
                    seq = cp.seq,
                    head = %cp.head,
                    writes_lost = cp.lost.writes,
                    events_lost = cp.lost.events,
                    gaps = cp.lost.gaps,
                    "ledger checkpoint; the store lost writes since the last one"
                );
            }
            sinks.deliver_checkpoint(&cp).await;
        }
        Err(e) => {
            error!(error = %daemoneye_lib::error_chain(&e), "cannot take a ledger checkpoint");
        }
    }
}

/// `/metrics` being served, until [`stop`](Self::stop).
struct MetricsServing {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServing {
    fn start(server: MetricsServer) -> Self {
        if let Ok(addr) = server.local_addr() {
            info!(addr = %addr, "serving metrics at /metrics");
        }
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        Self { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            warn!(error = %e, "the metrics server task failed");
        }
    }
}

/// The agent, built and ready to run.
pub struct Agent {
    pipeline: Pipeline,
    server: CollectorIpcServer,
    links: Vec<(LinkConfig, Arc<LinkStatus>)>,
    health: AgentHealth,
    sweep_interval: std::time::Duration,
    checkpoint_interval: std::time::Duration,
    metrics: Registry,
    /// Bound in `build`, served by `run`.
    metrics_server: Option<MetricsServer>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("links", &self.links)
            .field("sweep_interval", &self.sweep_interval)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("metrics_addr", &self.metrics_addr())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Creates the data directory, binds the metrics address (when
    /// [`Settings::metrics_listen`] is set), loads the rules (a refused
    /// rule file is logged, not fatal), opens the store and the sinks, and
    /// binds the agent's socket `<data-dir>/agent.sock`. Nothing runs yet.
    ///
    /// # Errors
    /// An [`AgentError`]; [`AgentError::is_bad_input`] tells the user's
    /// mistakes from failures.
    pub async fn build(settings: Settings) -> Result<Self, AgentError> {
        let rules = load_rules(&settings).map_err(AgentError::Rules)?;
        Self::build_with(settings, rules, None).await
    }

    /// [`build`](Self::build) for an agent [`separate`](crate::spawner::separate)d
    /// from its privileges: with the rules read as root, its collectors
    /// started by the spawner.
    ///
    /// # Errors
    /// As [`build`](Self::build); [`AgentError::Spawner`] when the
    /// spawner's socket cannot be served.
    pub async fn build_separated(
        settings: Settings,
        separated: Separated,
    ) -> Result<(Self, std::process::Child), AgentError> {
        let Separated {
            rules,
            stream,
            child,
            ..
        } = separated;
        let client = SpawnerClient::start(stream).map_err(AgentError::Spawner)?;
        let agent = Self::build_with(settings, (rules.rules, rules.refused), Some(client)).await?;
        Ok((agent, child))
    }

    async fn build_with(
        settings: Settings,
        (all, mut refused): (Vec<Rule>, Vec<RuleError>),
        spawner: Option<SpawnerClient>,
    ) -> Result<Self, AgentError> {
        let data_dir = &settings.data_dir;
        create_private_dir(data_dir)?;
        // Bound before anything is opened: an address in use is bad input.
        let metrics = Registry::new();
        let metrics_server = match settings.metrics_listen {
            Some(addr) => Some(MetricsServer::bind(addr, metrics.clone()).await?),
            None => None,
        };
        if spawner.is_none() && !nix::unistd::geteuid().is_root() {
            warn!(
                "not running as root: other users' processes are seen only in part (their \
                 executables and hashes are unreadable), and where the kernel refuses its process \
                 connector a collector sees processes only in its snapshots, missing \
                 short-lived ones (it says so if that happens)"
            );
        }
        let engine = RuleEngine::new(all).map_err(AgentError::Engine)?;
        refused.extend(engine.refused().iter().cloned());
        for e in &refused {
            warn!(file = %e.origin, rule = %e.rule, reason = %e.reason, "rule refused");
        }
        let rules_loaded = engine.rules().len() as u64;
        info!(rules = rules_loaded, refused = refused.len(), data_dir = %data_dir.display(), "rules loaded");
        let detector = Detector::new(engine, settings.dedup_window);
        let (writer, sinks, fleet) = open_store_and_sinks(&settings)?;

        let links = settings
            .collectors
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let config = link_config(spec, i, spawner.as_ref())?;
                Ok((config, Arc::new(LinkStatus::default())))
            })
            .collect::<Result<Vec<_>, AgentError>>()?;
        let counters = Arc::new(AgentCounters::default());
        let health = AgentHealth {
            started: tokio::time::Instant::now(),
            collectors: links
                .iter()
                .map(|(config, status)| LinkedCollector {
                    name: config.name.clone(),
                    socket: config.socket.clone(),
                    link: status.clone(),
                })
                .collect(),
            writer: writer.stats(),
            engine: detector.engine().stats(),
            counters: counters.clone(),
            sinks: sinks.stats(),
            fleet: fleet.clone(),
            rules_loaded,
            rules_refused: refused.len() as u64,
        };
        health.register_metrics(&metrics);
        if let Some(fleet) = &fleet {
            fleet.register_metrics(&metrics);
        }
        (sinks.checkpoint_stats().iter()).for_each(|(n, s)| s.register_checkpoints(&metrics, n));
        detector.engine().stats().register(&metrics);
        detector.register_metrics(&metrics);
        let socket = data_dir.join("agent.sock");
        let answer = health.clone();
        let server = CollectorIpcServer::new(IpcServerConfig::new(&socket), SourceCaps::empty())
            .await
            .map_err(|source| AgentError::Socket {
                path: socket,
                source,
            })?
            .with_name("daemoneye-agent")
            .with_health(move || {
                let h = answer.clone();
                Box::pin(async move { h.report().await })
            });
        Ok(Self {
            pipeline: Pipeline {
                detector,
                sinks,
                writer,
                counters,
            },
            server,
            links,
            health,
            sweep_interval: settings.sweep_interval,
            checkpoint_interval: settings.checkpoint_interval,
            metrics,
            metrics_server,
        })
    }

    /// What the health report is made of (the same the socket answers).
    pub fn health(&self) -> AgentHealth {
        self.health.clone()
    }

    /// The agent's metrics: the same counters health reads, under their
    /// Prometheus names (what `/metrics` answers).
    pub fn metrics(&self) -> Registry {
        self.metrics.clone()
    }

    /// The address `/metrics` is served on (port 0 resolved), when asked
    /// for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server
            .as_ref()
            .and_then(|s| s.local_addr().ok())
    }

    /// Serves the agent's socket (and `/metrics`, when bound), runs one link
    /// per collector, and judges what they send until `shutdown` is
    /// cancelled; then stops the links (and the collectors they started),
    /// the socket, the sinks (delivering what they hold, within a few
    /// seconds), the store (committing everything) and, last, `/metrics`.
    ///
    /// # Cancel safety
    /// Not cancel safe: cancel `shutdown` instead of dropping the future,
    /// or started collectors are left to their parent-death signal.
    pub async fn run(self, shutdown: CancellationToken) {
        let Self {
            mut pipeline,
            mut server,
            links,
            health: _,
            sweep_interval,
            checkpoint_interval,
            metrics: _,
            metrics_server,
        } = self;
        let metrics_serving = metrics_server.map(MetricsServing::start);
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

        // The links stop with the agent, or when the loop ends on its own.
        let stop_links = shutdown.child_token();
        let (tx, mut rx) = mpsc::channel::<LinkEvent>(LINK_QUEUE);
        let statuses: Vec<_> = links.iter().map(|(_, s)| s.clone()).collect();
        let linking: Vec<_> = links
            .into_iter()
            .map(|(config, status)| {
                tokio::spawn(link::run(config, status, tx.clone(), stop_links.clone()))
            })
            .collect();
        drop(tx);

        let mut sweep = tokio::time::interval(sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await; // the first tick is immediate: nothing to sweep yet
        pipeline.start().await;
        let mut checkpoints = tokio::time::interval_at(
            tokio::time::Instant::now() + checkpoint_interval,
            checkpoint_interval,
        );
        checkpoints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut checkpoint_due = false;
            let mut swept = false;
            // What to judge: a batch of events (stored after its alerts are
            // out), or the whole table.
            let (judged, batch, reconnected) = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                event = rx.recv() => match event {
                    Some(event) => {
                        pipeline.on_link_event(event, &mut rx).await;
                        continue;
                    }
                    None => break,
                },
                _ = sweep.tick() => {
                    swept = true;
                    (pipeline.sweep(), None, false)
                }
                _ = checkpoints.tick() => {
                    checkpoint_due = true;
                    (Ok(Vec::new()), None, false)
                }
            };
            pipeline.settle(judged, batch, reconnected).await;
            if swept {
                tokio::task::block_in_place(collector_core::sys::release_free_memory);
            }
            if checkpoint_due {
                pipeline.checkpoint().await;
            }
        }
        info!("shutting down");
        stop_links.cancel();
        // The links stop at once (a batch a link could not hand on is
        // counted there); what they had handed on is judged and stored,
        // within the deadline.
        pipeline
            .drain(&mut rx, tokio::time::Instant::now() + DRAIN_DEADLINE)
            .await;
        for handle in linking {
            if let Err(e) = handle.await {
                error!(error = %e, "a collector link failed");
            }
        }
        server_handle.shutdown();
        match serving.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "the agent's socket ended with an error"),
            Err(e) => warn!(error = %e, "the agent's socket task failed"),
        }
        pipeline
            .close(
                statuses.iter().map(|s| s.restarts.get()).sum(),
                tokio::time::Instant::now() + DRAIN_DEADLINE,
            )
            .await;
        if let Some(serving) = metrics_serving {
            serving.stop().await;
        }
    }
}
