//! The [`Collector`] runtime: runs sources, validates and batches their
//! events, fans them out to subscribers, checks health, shuts down on time.

use std::future::Future;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::bus::EventFilter;
#[cfg(feature = "triggers")]
use crate::bus::{EventBusConfig, LocalEventBus};
use crate::common::lock;
use crate::config::{CollectorConfig, ConfigError};
use crate::event::{CollectionEvent, EventId};
use crate::health::{HealthReport, SourceHealth};
use crate::metrics::Registry;
use crate::source::{unless_cancelled, EventSource, SourceCaps, SourceContext};
use crate::subscription::{EventBatch, Mode, Subscribers, Subscription};
use crate::telemetry::{
    CollectorStats, ProcessResources, RuntimeCounters, SourceCounters, SourceStats,
};

/// Errors from registering sources and running the collector.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectorError {
    /// Two sources share a name.
    #[error("a source named {name:?} is already registered")]
    DuplicateSource {
        /// The repeated name.
        name: &'static str,
    },
    /// More sources than `max_event_sources`.
    #[error("cannot register {name:?}: the limit of {max} sources is reached")]
    TooManySources {
        /// The refused source.
        name: &'static str,
        /// The configured limit.
        max: usize,
    },
    /// The configuration is invalid; nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// SIGINT/SIGTERM handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signal(#[source] std::io::Error),
    /// Every source ended before shutdown was requested, some with an error.
    #[error("every source has ended; {failed} of {total} failed")]
    SourcesFailed {
        /// Sources that returned an error or panicked.
        failed: usize,
        /// Registered sources.
        total: usize,
    },
}

/// Per-source state shared by its tasks, the health checker and the stats.
struct SourceState {
    name: &'static str,
    caps: SourceCaps,
    counters: SourceCounters,
    health: Mutex<SourceHealth>,
}

impl SourceState {
    fn health(&self) -> SourceHealth {
        lock(&self.health).clone()
    }

    /// Sets the health unless the source already ended (terminal states stay).
    fn set_running_health(&self, h: SourceHealth) {
        let mut cur = lock(&self.health);
        if cur.is_running() {
            *cur = h;
        }
    }

    fn set_health(&self, h: SourceHealth) {
        *lock(&self.health) = h;
    }

    fn stats(&self) -> SourceStats {
        let c = &self.counters;
        SourceStats {
            name: self.name,
            capabilities: self.caps,
            health: self.health(),
            events_received: c.received.get(),
            events_accepted: c.accepted.get(),
            events_rejected_invalid: c.rejected_invalid.get(),
            events_dropped_shutdown: c.dropped_shutdown.get(),
            errors_total: c.errors.get(),
            health_checks_failed_total: c.health_checks_failed.get(),
            backpressure_total: c.backpressure_episodes.get(),
            backpressured: c.backpressured.get_bool(),
        }
    }
}

struct Shared {
    shutdown: CancellationToken,
    started: Mutex<Option<Instant>>,
    sources: Mutex<Vec<Arc<SourceState>>>,
    subscribers: Subscribers,
    #[cfg(feature = "triggers")]
    bus: LocalEventBus,
    counters: RuntimeCounters,
    metrics: Registry,
    names: EventNamer,
}

/// Gives every accepted event its [`EventId`]: this run's number and the
/// next place in its sequence, without gaps across the sources.
struct EventNamer {
    run: u64,
    next: AtomicU64,
}

impl EventNamer {
    fn new() -> Self {
        // The run is the runtime's start time in nanoseconds: distinct per
        // restart, and it orders runs by when they began.
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            run,
            next: AtomicU64::new(1),
        }
    }

    /// Names the events that have no id yet, in order.
    fn name(&self, events: &mut [CollectionEvent]) {
        let n = events.iter().filter(|e| e.id().is_none()).count() as u64;
        if n == 0 {
            return;
        }
        let mut seq = self.next.fetch_add(n, Ordering::Relaxed);
        for event in events {
            // `seq` starts at 1 and only grows: never zero short of 2^64 events.
            let Some(place) = NonZeroU64::new(seq) else {
                break;
            };
            if event.name_once(EventId::new(self.run, place)) {
                seq += 1;
            }
        }
    }
}

shared_handle! {
    /// A cheap, cloneable handle to a [`Collector`]: shut it down, subscribe to
    /// its events, read its stats and health, from outside the runtime.
    pub struct CollectorHandle(Shared);
    /// Requests a graceful shutdown, as SIGTERM would.
}

impl CollectorHandle {
    /// Whether shutdown was requested.
    pub fn is_shutdown_requested(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Subscribes to every event published from now on.
    ///
    /// The subscriber's queue holds about `event_buffer_size` events; when it
    /// is full the runtime waits (`WhenFull::Block`) or drops and counts
    /// (`WhenFull::DropNewest`). After shutdown the stream ends.
    pub fn subscribe(&self) -> Subscription {
        self.shared.subscribers.subscribe()
    }

    /// Subscribes to the events `filter` accepts, from now on.
    ///
    /// As [`subscribe`](Self::subscribe); an event the filter rejects is
    /// neither offered nor counted for this subscriber.
    pub fn subscribe_filtered(&self, filter: EventFilter) -> Subscription {
        self.shared.subscribers.subscribe_filtered(Some(filter))
    }

    /// The collector's event bus. Every accepted event is published into it
    /// (with fresh correlation metadata) while it has subscribers; other
    /// components (the trigger manager, analysis collectors) publish into
    /// it too. Its streams end when the runtime has shut down.
    #[cfg(feature = "triggers")]
    pub fn bus(&self) -> &LocalEventBus {
        &self.shared.bus
    }

    /// The registry holding every counter of this collector (runtime,
    /// sources, subscribers, bus), under Prometheus names; register your own
    /// counters in it to serve them together (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Registry {
        &self.shared.metrics
    }

    /// A snapshot of every counter, and the process's own CPU time and RSS.
    pub fn stats(&self) -> CollectorStats {
        let sources = self.sources().iter().map(|s| s.stats()).collect();
        let c = &self.shared.counters;
        CollectorStats {
            uptime: (*lock(&self.shared.started))
                .map(|t| t.elapsed())
                .unwrap_or_default(),
            sources,
            subscribers: self.shared.subscribers.stats(),
            events_unrouted_total: c.unrouted.get(),
            sources_failed_total: c.sources_failed.get(),
            sources_aborted_total: c.sources_aborted.get(),
            stop_errors_total: c.stop_errors.get(),
            process: ProcessResources::current().ok(),
        }
    }

    /// The health of every source and the overall verdict.
    pub fn health(&self) -> HealthReport {
        HealthReport::from_sources(
            self.sources()
                .iter()
                .map(|s| (s.name, s.health()))
                .collect(),
        )
    }

    fn sources(&self) -> Vec<Arc<SourceState>> {
        lock(&self.shared.sources).clone()
    }
}

/// The runtime that owns event sources.
///
/// ```no_run
/// use collector_core::{Collector, CollectorConfig};
///
/// # async fn demo(source: Box<dyn collector_core::EventSource>) -> anyhow::Result<()> {
/// let mut collector = Collector::new(CollectorConfig::default());
/// collector.register(source)?;
/// let handle = collector.handle();
/// let mut events = handle.subscribe();
/// tokio::spawn(async move {
///     while let Some(event) = events.recv().await {
///         println!("{:?} from pid {:?}", event.kind(), event.pid());
///     }
/// });
/// collector.run().await // until SIGINT, SIGTERM or handle.shutdown()
/// # }
/// ```
pub struct Collector {
    config: CollectorConfig,
    sources: Vec<(Arc<dyn EventSource>, Arc<SourceState>)>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("config", &self.config)
            .field(
                "sources",
                &self.sources.iter().map(|(_, s)| s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// A collector with no sources. The config is validated by
    /// [`run`](Self::run) (or at once by [`try_new`](Self::try_new)).
    pub fn new(config: CollectorConfig) -> Self {
        let subscribers = Subscribers::new(
            config.event_buffer_size,
            config.max_batch_size,
            config.when_full,
        );
        #[cfg(feature = "triggers")]
        let bus = LocalEventBus::build(EventBusConfig {
            buffer_size: config.event_buffer_size.max(1),
            max_batch_size: config.max_batch_size.max(1),
            when_full: config.when_full,
            ..EventBusConfig::default()
        });
        // A bus that was never shut down accepts `start`.
        #[cfg(feature = "triggers")]
        let _ = bus.start_now();
        let metrics = Registry::new();
        subscribers.register_metrics(&metrics, "subscriber");
        #[cfg(feature = "triggers")]
        bus.register_metrics(&metrics);
        Self {
            config,
            sources: Vec::new(),
            shared: Arc::new(Shared {
                shutdown: CancellationToken::new(),
                started: Mutex::new(None),
                sources: Mutex::new(Vec::new()),
                subscribers,
                #[cfg(feature = "triggers")]
                bus,
                counters: RuntimeCounters::registered(&metrics),
                metrics,
                names: EventNamer::new(),
            }),
        }
    }

    /// Validates `config`, then builds the collector.
    ///
    /// # Errors
    /// [`CollectorError::Config`] naming the bad field.
    pub fn try_new(config: CollectorConfig) -> Result<Self, CollectorError> {
        config.validate()?;
        Ok(Self::new(config))
    }

    /// Adds a source. Names must be unique.
    ///
    /// # Errors
    /// [`CollectorError::DuplicateSource`], [`CollectorError::TooManySources`].
    pub fn register(&mut self, source: Box<dyn EventSource>) -> Result<(), CollectorError> {
        let name = source.name();
        if self.sources.iter().any(|(_, s)| s.name == name) {
            return Err(CollectorError::DuplicateSource { name });
        }
        if self.sources.len() >= self.config.max_event_sources {
            return Err(CollectorError::TooManySources {
                name,
                max: self.config.max_event_sources,
            });
        }
        let state = Arc::new(SourceState {
            name,
            caps: source.capabilities(),
            counters: SourceCounters::registered(&self.shared.metrics, name),
            health: Mutex::new(SourceHealth::Starting),
        });
        lock(&self.shared.sources).push(state.clone());
        self.sources.push((Arc::from(source), state));
        Ok(())
    }

    /// The union of every registered source's capabilities.
    pub fn capabilities(&self) -> SourceCaps {
        self.sources
            .iter()
            .fold(SourceCaps::empty(), |acc, (_, s)| acc | s.caps)
    }

    /// A handle for shutdown, subscriptions, stats and health.
    pub fn handle(&self) -> CollectorHandle {
        CollectorHandle {
            shared: self.shared.clone(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CollectorConfig {
        &self.config
    }

    /// Runs until SIGINT, SIGTERM or [`CollectorHandle::shutdown`], then shuts
    /// down within `shutdown_timeout`. Installs a `tracing` subscriber if the
    /// application has none.
    ///
    /// # Errors
    /// An invalid config or unavailable signal handlers (nothing started), or
    /// [`CollectorError::SourcesFailed`] when every source ended on its own and
    /// some failed.
    pub async fn run(self) -> anyhow::Result<()> {
        crate::logging::init_logging(self.config.enable_debug_logging);
        self.config.validate().map_err(CollectorError::from)?;
        // Validated again by `run_until`; checked here so that nothing, not
        // even a signal handler, is set up for an invalid config.
        let signals = shutdown_signals().map_err(CollectorError::Signal)?;
        Ok(self.run_until(signals).await?)
    }

    /// Runs until `signal` completes or [`CollectorHandle::shutdown`] is
    /// called; no signal handlers are installed.
    ///
    /// # Errors
    /// As [`run`](Self::run).
    pub async fn run_until(
        self,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), CollectorError> {
        self.config.validate()?;
        let Self {
            config,
            sources,
            shared,
        } = self;
        *lock(&shared.started) = Some(Instant::now());
        let total = sources.len();
        info!(
            sources = total,
            buffer = config.event_buffer_size,
            "collector starting"
        );

        let (ended_tx, mut ended_rx) = mpsc::channel::<bool>(total.max(1));
        let (trackers, running) = Trackers::start(&config, &sources, &shared, &ended_tx);
        drop(ended_tx);

        // Wait for a shutdown request, or for every source to end by itself.
        let mut ended = 0usize;
        let mut failed = 0usize;
        tokio::pin!(signal);
        loop {
            tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => break,
                () = &mut signal => {
                    info!("shutdown signal received");
                    break;
                }
                Some(ok) = ended_rx.recv(), if total > 0 => {
                    ended += 1;
                    failed += usize::from(!ok);
                    if ended == total {
                        warn!(failed, total, "every source has ended; shutting down");
                        break;
                    }
                }
            }
        }
        shared.shutdown.cancel();
        shutdown(&config, &sources, &shared, &running, trackers).await;

        let stats = CollectorHandle {
            shared: shared.clone(),
        }
        .stats();
        info!(
            received = stats.events_received_total(),
            accepted = stats.events_accepted_total(),
            dropped = stats.events_dropped_total(),
            aborted = stats.sources_aborted_total,
            "collector stopped"
        );
        if ended == total && total > 0 && failed > 0 {
            return Err(CollectorError::SourcesFailed { failed, total });
        }
        Ok(())
    }
}

/// What the runtime keeps of a running source: the two halves of its
/// shutdown signal and the handle that aborts it at the deadline.
struct Running {
    flag: Arc<AtomicBool>,
    token: CancellationToken,
    task: AbortHandle,
}

struct Trackers {
    source_tasks: TaskTracker,
    pumps: TaskTracker,
    health_tasks: TaskTracker,
    stop_health: CancellationToken,
    hard_deadline: CancellationToken,
}

impl Trackers {
    /// Spawns, for each source, its `start_with` task, its pump and its
    /// health loop. Returns the trackers and each source's shutdown signal
    /// and abort handle.
    fn start(
        config: &CollectorConfig,
        sources: &[(Arc<dyn EventSource>, Arc<SourceState>)],
        shared: &Arc<Shared>,
        ended: &mpsc::Sender<bool>,
    ) -> (Self, Vec<Running>) {
        let t = Self {
            source_tasks: TaskTracker::new(),
            pumps: TaskTracker::new(),
            health_tasks: TaskTracker::new(),
            stop_health: CancellationToken::new(),
            hard_deadline: CancellationToken::new(),
        };
        let mut running = Vec::with_capacity(sources.len());
        for (source, state) in sources {
            let (tx, rx) = mpsc::channel(config.event_buffer_size);
            let ctx = SourceContext::new(state.name, tx);
            let (flag, token) = (ctx.shutdown_flag().clone(), ctx.shutdown().clone());
            let health_changed = ctx.health_signal();
            let task = spawn_source(
                &t.source_tasks,
                source.clone(),
                state.clone(),
                ctx,
                shared.clone(),
                ended.clone(),
            );
            running.push(Running { flag, token, task });
            t.pumps.spawn(pump(
                rx,
                state.clone(),
                shared.clone(),
                PumpSettings::from(config),
                t.hard_deadline.clone(),
            ));
            t.health_tasks.spawn(health_loop(
                source.clone(),
                state.clone(),
                config.startup_timeout,
                config.health_check_interval,
                health_changed,
                t.stop_health.clone(),
            ));
        }
        t.source_tasks.close();
        t.pumps.close();
        t.health_tasks.close();
        (t, running)
    }
}

/// Signals and stops every source, waits for them and for the drain until
/// the deadline, aborts stragglers, then ends every subscriber's stream.
async fn shutdown(
    config: &CollectorConfig,
    sources: &[(Arc<dyn EventSource>, Arc<SourceState>)],
    shared: &Arc<Shared>,
    running: &[Running],
    t: Trackers,
) {
    // Shutdown: signal, stop, wait until the deadline, abort stragglers.
    let deadline = Instant::now() + config.shutdown_timeout;
    info!(timeout = ?config.shutdown_timeout, "collector shutting down");
    t.stop_health.cancel();
    // Both halves, so that sources on the reference API (the flag) and
    // those awaiting the token stop alike.
    for r in running {
        r.flag.store(true, Ordering::SeqCst);
        r.token.cancel();
    }
    let stops = sources.iter().map(|(source, state)| {
        let (source, state, shared) = (source.clone(), state.clone(), shared.clone());
        tokio::spawn(async move {
            match tokio::time::timeout_at(deadline, source.stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    state.counters.errors.inc();
                    shared.counters.stop_errors.inc();
                    warn!(source = state.name, error = %err, "source stop failed");
                }
                Err(_) => {
                    shared.counters.stop_errors.inc();
                    warn!(
                        source = state.name,
                        "source stop overran the shutdown deadline"
                    );
                }
            }
        })
    });
    let stops: Vec<_> = stops.collect();
    if tokio::time::timeout_at(deadline, t.source_tasks.wait())
        .await
        .is_err()
    {
        for (Running { task, .. }, (_, state)) in running.iter().zip(sources) {
            if !task.is_finished() {
                task.abort();
                state.set_health(SourceHealth::Aborted);
                shared.counters.sources_aborted.inc();
                warn!(
                    source = state.name,
                    "source ignored shutdown; aborted at the deadline"
                );
            }
        }
    }
    for stop in stops {
        stop.abort();
    }
    if tokio::time::timeout_at(deadline, t.pumps.wait())
        .await
        .is_err()
    {
        warn!("buffers not drained by the deadline; flushing what fits and counting the rest");
        t.hard_deadline.cancel();
        t.pumps.wait().await;
    }
    // Aborted sources end at their next poll; a source blocking a thread
    // cannot be interrupted, so it is not waited for.
    t.health_tasks.wait().await;
    shared.subscribers.close();
    #[cfg(feature = "triggers")]
    shared.bus.close_streams();
}

/// Resolves on SIGINT or SIGTERM.
fn shutdown_signals() -> std::io::Result<impl Future<Output = ()> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// Runs `start_with` in its own task (so a panic is contained) and reports
/// how it ended. Returns the handle used to abort it at the deadline.
fn spawn_source(
    tracker: &TaskTracker,
    source: Arc<dyn EventSource>,
    state: Arc<SourceState>,
    ctx: SourceContext,
    shared: Arc<Shared>,
    ended: mpsc::Sender<bool>,
) -> AbortHandle {
    let inner = tokio::spawn(async move { source.start_with(ctx).await });
    let abort = inner.abort_handle();
    tracker.spawn(async move {
        let outcome = inner.await;
        let shutting_down = shared.shutdown.is_cancelled();
        let ok = match outcome {
            Ok(Ok(())) => {
                if shutting_down {
                    state.set_health(SourceHealth::Stopped);
                } else {
                    state.set_health(SourceHealth::Completed);
                    info!(source = state.name, "source completed");
                }
                true
            }
            Ok(Err(err)) => {
                state.counters.errors.inc();
                shared.counters.sources_failed.inc();
                error!(source = state.name, error = %format!("{err:#}"), "source failed");
                state.set_health(SourceHealth::Failed(format!("{err:#}")));
                false
            }
            Err(join) if join.is_panic() => {
                let msg = panic_message(&*join.into_panic());
                state.counters.errors.inc();
                shared.counters.sources_failed.inc();
                error!(source = state.name, panic = %msg, "source panicked");
                state.set_health(SourceHealth::Failed(format!("panicked: {msg}")));
                false
            }
            // Cancelled: aborted at the deadline; already recorded.
            Err(_) => true,
        };
        // The receiver is gone once the runtime stops listening; nothing to do.
        let _ = ended.send(ok).await;
    });
    abort
}

/// The text of a panic payload (`&str` or `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[derive(Clone, Copy)]
struct PumpSettings {
    batch: usize,
    linger: std::time::Duration,
    threshold: usize,
}

impl From<&CollectorConfig> for PumpSettings {
    fn from(c: &CollectorConfig) -> Self {
        Self {
            batch: c.max_batch_size,
            linger: c.batch_timeout,
            threshold: c.backpressure_threshold,
        }
    }
}

/// Moves one source's events from its intake queue to the subscribers:
/// batch, validate, count, dispatch. Ends when the source's senders are all
/// gone and the queue is empty, or at the hard deadline.
async fn pump(
    mut rx: mpsc::Receiver<CollectionEvent>,
    state: Arc<SourceState>,
    shared: Arc<Shared>,
    settings: PumpSettings,
    hard_deadline: CancellationToken,
) {
    let c = &state.counters;
    let mut warned_invalid = false;
    loop {
        let mut buf = Vec::with_capacity(settings.batch);
        let Some(n) =
            unless_cancelled(&hard_deadline, rx.recv_many(&mut buf, settings.batch)).await
        else {
            break;
        };
        if n == 0 {
            // Closed and empty: the source and every clone of its sender are gone.
            return;
        }
        if !settings.linger.is_zero() && buf.len() < settings.batch {
            let until = Instant::now() + settings.linger;
            while buf.len() < settings.batch {
                let want = settings.batch - buf.len();
                match tokio::time::timeout_at(until, rx.recv_many(&mut buf, want)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        c.received.add_usize(buf.len());

        let queued = rx.len();
        if queued >= settings.threshold {
            if c.backpressured.swap(1) == 0 {
                c.backpressure_episodes.inc();
                debug!(
                    source = state.name,
                    queued, "intake above backpressure threshold"
                );
            }
        } else if queued < settings.threshold / 2 {
            c.backpressured.set(0);
        }

        let before = buf.len();
        buf.retain(|event| match event.validate() {
            Ok(()) => true,
            Err(err) => {
                if warned_invalid {
                    debug!(source = state.name, error = %err, "invalid event rejected");
                } else {
                    warned_invalid = true;
                    warn!(source = state.name, error = %err, "invalid event rejected (further ones logged at debug)");
                }
                false
            }
        });
        c.rejected_invalid.add_usize(before - buf.len());
        c.accepted.add_usize(buf.len());
        shared.names.name(&mut buf);
        let accepted = buf.len();
        if accepted == 0 {
            continue;
        }
        if !route(&shared, buf, state.name, Mode::Normal, &hard_deadline).await {
            shared.counters.unrouted.add_usize(accepted);
        }
    }
    // Past the hard deadline: hand over what fits without waiting, count the rest.
    rx.close();
    let mut rest = Vec::new();
    while let Ok(event) = rx.try_recv() {
        rest.push(event);
    }
    c.received.add_usize(rest.len());
    let before = rest.len();
    rest.retain(|e| e.validate().is_ok());
    c.rejected_invalid.add_usize(before - rest.len());
    c.accepted.add_usize(rest.len());
    shared.names.name(&mut rest);
    if !rest.is_empty() {
        let n = rest.len();
        if !route(&shared, rest, state.name, Mode::Final, &hard_deadline).await {
            shared.counters.unrouted.add_usize(n);
        }
    }
}

/// Offers validated events to the bus (with the `triggers` feature, only
/// while it has subscribers) and to the subscribers. Returns whether any
/// subscriber existed.
async fn route(
    shared: &Shared,
    events: Vec<CollectionEvent>,
    source: &'static str,
    mode: Mode,
    deadline: &CancellationToken,
) -> bool {
    #[cfg(feature = "triggers")]
    let bus_routed = shared.bus.has_subscribers()
        && shared
            .bus
            .dispatch_from_runtime(&events, source, mode, deadline)
            .await;
    #[cfg(not(feature = "triggers"))]
    let bus_routed = false;
    let routed = shared
        .subscribers
        .dispatch(EventBatch::new(events, source), mode, deadline)
        .await;
    routed.is_some() || bus_routed
}

/// Calls `health_check` at start (bounded by the startup timeout), then
/// every interval (each bounded by the interval) and whenever the source
/// says its health changed ([`SourceContext::health_changed`]), until
/// shutdown.
async fn health_loop(
    source: Arc<dyn EventSource>,
    state: Arc<SourceState>,
    startup_timeout: std::time::Duration,
    interval: std::time::Duration,
    changed: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        let due = async {
            tokio::select! {
                _ = ticker.tick() => {}
                () = changed.notified() => {}
            }
        };
        if unless_cancelled(&stop, due).await.is_none() {
            return;
        }
        let limit = if first { startup_timeout } else { interval };
        let check = tokio::time::timeout(limit, source.health_check());
        let Some(verdict) = unless_cancelled(&stop, check).await else {
            return;
        };
        match verdict {
            Ok(Ok(())) => state.set_running_health(SourceHealth::Healthy),
            Ok(Err(err)) => {
                state.counters.health_checks_failed.inc();
                let why = format!("{err:#}");
                // Said once while it stays the same.
                if !matches!(state.health(), SourceHealth::Degraded(ref was) if *was == why) {
                    warn!(source = state.name, error = %why, "health check failed");
                }
                state.set_running_health(SourceHealth::Degraded(why));
            }
            Err(_) => {
                state.counters.health_checks_failed.inc();
                let what = if first {
                    "not ready within the startup timeout"
                } else {
                    "health check timed out"
                };
                warn!(source = state.name, "{what}");
                state.set_running_health(SourceHealth::Degraded(what.to_owned()));
            }
        }
        first = false;
    }
}
