//! The agent's link to one collector, over the IPC protocol.
//!
//! [`run`] starts the collector as a child process (or asks the privileged
//! [spawner](crate::spawner) to, when the agent dropped its privileges, or
//! uses one already running at a socket), connects to its socket, checks in the handshake
//! that it serves its configured domain (processes by default), subscribes
//! to that domain's live events, and hands each received batch of process
//! events on as [`ProcessEvent`]s (the only events the agent judges yet;
//! other records are counted and ignored). The agent runs one link per
//! configured collector, all sending into one channel. When the collector
//! exits, crashes or its connection drops, the link says so, waits (1 s
//! doubling to 30 s, back to 1 s after a minute of good service), and starts
//! over; every restart is logged and counted in [`LinkStatus`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use collector_core::ipc::record_to_event;
use collector_core::lock;
use collector_core::metrics::{Counter, Gauge, Registry};
use collector_core::{
    CollectionEvent, CollectorIpcClient, FilesystemEvent, IpcClientConfig, NetworkEvent,
    PerformanceEvent, ProcessEvent, SourceCaps,
};
use daemoneye_lib::proto::SubscribeRequest;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::CollectorDomain;
use crate::spawner::{RemoteChild, SpawnerClient};

/// How the collector is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectorMode {
    /// Start `program` with `args` (which must make it serve `socket`) and
    /// supervise it.
    Spawn {
        /// The executable.
        program: PathBuf,
        /// Its arguments.
        args: Vec<OsString>,
    },
    /// Ask the privileged spawner to start it (the agent dropped its
    /// privileges, see [`crate::spawner`]) and supervise it through it.
    Spawner(SpawnerSlot),
    /// Connect to a collector someone else runs; reconnect when it goes.
    Connect,
}

/// A collector of the spawner's list: its place, and the spawner.
#[derive(Debug, Clone)]
pub struct SpawnerSlot {
    /// The spawner.
    pub client: SpawnerClient,
    /// The collector's place in its list.
    pub index: u16,
}

impl PartialEq for SpawnerSlot {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
    }
}

impl Eq for SpawnerSlot {}

/// A collector the link started: its own child, or the spawner's.
enum Started {
    Child(tokio::process::Child),
    Remote(RemoteChild),
}

impl Started {
    fn pid(&self) -> u32 {
        match self {
            Self::Child(c) => c.id().unwrap_or(0),
            Self::Remote(r) => r.pid(),
        }
    }

    /// Waits for it to exit: why it is lost.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn exited(&mut self) -> String {
        match self {
            Self::Child(c) => match c.wait().await {
                Ok(status) => format!("collector exited: {status}"),
                Err(e) => format!("cannot wait for the collector: {e}"),
            },
            Self::Remote(r) => match r.wait().await {
                Ok(status) => format!("collector exited: {status} (reported by the spawner)"),
                Err(e) => format!("cannot wait for the collector: {e}"),
            },
        }
    }

    /// Stops it: SIGTERM, then SIGKILL if it has not exited within 5 s.
    async fn stop(&mut self) {
        match self {
            Self::Child(child) => {
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
            Self::Remote(r) => r.stop().await,
        }
    }
}

/// Settings of the link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The collector's name, in logs.
    pub name: String,
    /// The domain its handshake must report and whose events are
    /// subscribed to.
    pub domain: CollectorDomain,
    /// Spawn or connect.
    pub mode: CollectorMode,
    /// The collector's socket.
    pub socket: PathBuf,
    /// The first wait before a restart; doubled each time.
    pub initial_backoff: Duration,
    /// The longest wait before a restart.
    pub max_backoff: Duration,
    /// How long a collector must have served for the wait to start over
    /// from `initial_backoff`.
    pub stable_after: Duration,
    /// How long a started collector has to open its socket.
    pub startup_timeout: Duration,
}

impl LinkConfig {
    /// The defaults for `mode` and `socket`: a process collector named
    /// `procmond`.
    pub fn new(mode: CollectorMode, socket: impl Into<PathBuf>) -> Self {
        Self {
            name: crate::config::DEFAULT_COLLECTOR.to_owned(),
            domain: CollectorDomain::Process,
            mode,
            socket: socket.into(),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(20),
        }
    }
}

/// What the link hands on.
#[derive(Debug)]
pub enum LinkEvent {
    /// A (new) process collector is connected and subscribed; what was
    /// known of processes before may be stale. (Collectors of other
    /// domains do not say it.)
    Connected,
    /// A batch of process events, in the collector's order.
    Events(Vec<ProcessEvent>),
    /// A batch of performance samples (and anomalies), in the collector's
    /// order.
    Performance(Vec<PerformanceEvent>),
    /// A batch of connections (a socket per holder), in the collector's
    /// order.
    Network(Vec<NetworkEvent>),
    /// A batch of file events, in the collector's order.
    Files(Vec<FilesystemEvent>),
}

impl LinkEvent {
    /// The events it carries.
    pub fn len(&self) -> usize {
        match self {
            Self::Connected => 0,
            Self::Events(e) => e.len(),
            Self::Performance(e) => e.len(),
            Self::Network(e) => e.len(),
            Self::Files(e) => e.len(),
        }
    }

    /// Whether it carries no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one received batch holds, by domain.
#[derive(Debug, Default)]
struct Converted {
    processes: Vec<ProcessEvent>,
    performance: Vec<PerformanceEvent>,
    network: Vec<NetworkEvent>,
    files: Vec<FilesystemEvent>,
}

/// The link's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    /// Starting the collector or connecting.
    Starting = 0,
    /// Connected and receiving events.
    Connected = 1,
    /// The collector is gone; waiting before the next attempt.
    Restarting = 2,
    /// Stopped (shutdown).
    Stopped = 3,
}

/// Label of the agent's link stage in `/metrics` (`stage="link"`).
const STAGE_LINK: &str = "link";

/// Counters and state of the link, readable at any time (health, and
/// `/metrics` once [`register`](Self::register)ed).
#[derive(Debug, Default)]
pub struct LinkStatus {
    /// A [`LinkState`] as its number.
    state: Gauge,
    pid: AtomicU32,
    /// Times the collector had to be started again (or reconnected).
    pub restarts: Counter,
    /// Event batches received.
    pub batches: Counter,
    /// Events received and handed on.
    pub events: Counter,
    /// Events the collector dropped for this subscriber (it said so in
    /// `dropped_since_last`).
    pub dropped_upstream: Counter,
    /// Records that could not be read back as events (counted, skipped).
    pub bad_records: Counter,
    /// Events received but not handed on because the agent was shutting
    /// down (its loop had stopped taking batches).
    pub dropped_at_shutdown: Counter,
    /// Valid records of other kinds than processes (no consumer in the agent
    /// yet: counted and skipped).
    pub ignored_records: Counter,
    last_error: Mutex<String>,
    capabilities: AtomicU32,
    changed: tokio::sync::Notify,
}

impl LinkStatus {
    /// Registers the link's counters and state in `registry` as the
    /// collector `name` (`daemoneye_collector_restarts_total{collector="procmond"}`,
    /// `daemoneye_events_received_total{stage="link",collector="procmond"}`, ...).
    pub fn register(&self, registry: &Registry, name: &str) {
        let collector = ("collector", name);
        let stage = ("stage", STAGE_LINK);
        registry.register_counter(
            "daemoneye_collector_restarts_total",
            "Times a collector had to be started again (or reconnected).",
            &[collector],
            &self.restarts,
        );
        registry.register_counter(
            "daemoneye_event_batches_received_total",
            "Event batches the agent received from a collector.",
            &[stage, collector],
            &self.batches,
        );
        registry.register_counter(
            "daemoneye_events_received_total",
            "Events the agent received from a collector and judged.",
            &[stage, collector],
            &self.events,
        );
        // The collector's own count of what it dropped for the agent (it fell
        // behind); it gives no reason.
        registry.register_counter(
            "daemoneye_events_dropped_total",
            "Events dropped, by stage and reason.",
            &[("stage", "collector"), collector],
            &self.dropped_upstream,
        );
        registry.register_counter(
            "daemoneye_events_dropped_total",
            "Events dropped, by stage and reason.",
            &[stage, collector, ("reason", "unreadable")],
            &self.bad_records,
        );
        registry.register_counter(
            "daemoneye_events_dropped_total",
            "Events dropped, by stage and reason.",
            &[stage, collector, ("reason", "shutdown")],
            &self.dropped_at_shutdown,
        );
        registry.register_counter(
            "daemoneye_events_ignored_total",
            "Records of other kinds than processes, which the agent does not judge yet.",
            &[stage, collector],
            &self.ignored_records,
        );
        registry.register_gauge(
            "daemoneye_collector_state",
            "A collector link's state: 0 starting, 1 connected, 2 restarting, 3 stopped.",
            &[collector],
            &self.state,
        );
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        match self.state.get() {
            0 => LinkState::Starting,
            1 => LinkState::Connected,
            2 => LinkState::Restarting,
            _ => LinkState::Stopped,
        }
    }

    pub(crate) fn set_state(&self, s: LinkState) {
        self.state.set(s as i64);
        self.changed.notify_waiters();
    }

    /// Waits until `cond` holds; it is checked now and after every change
    /// of state (connected, restarting, stopped), and restarts are counted
    /// before the state changes.
    pub async fn wait_for(&self, cond: impl Fn(&Self) -> bool) {
        loop {
            let changed = self.changed.notified();
            if cond(self) {
                return;
            }
            changed.await;
        }
    }

    /// The collector child's pid (0 when none or not spawned).
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Why the collector was last lost, empty when it never was.
    pub fn last_error(&self) -> String {
        lock(&self.last_error).clone()
    }

    pub(crate) fn set_error(&self, e: String) {
        *lock(&self.last_error) = e;
    }

    /// The capability bits the collector reported in its last handshake.
    pub fn capabilities(&self) -> SourceCaps {
        SourceCaps::from_bits_truncate(self.capabilities.load(Ordering::Relaxed))
    }
}

/// Why one session with a collector ended.
enum Ended {
    Shutdown,
    Lost(String),
}

/// Runs the link until `shutdown` is cancelled or the receiver of `tx` is
/// gone. Stops a spawned collector (SIGTERM, then SIGKILL after 5 s) before
/// returning.
pub async fn run(
    config: LinkConfig,
    status: std::sync::Arc<LinkStatus>,
    tx: mpsc::Sender<LinkEvent>,
    shutdown: CancellationToken,
) {
    let mut backoff = daemoneye_lib::Backoff::new(config.initial_backoff, config.max_backoff);
    loop {
        status.set_state(LinkState::Starting);
        let started = Instant::now();
        let ended = session(&config, &status, &tx, &shutdown).await;
        status.pid.store(0, Ordering::Relaxed);
        let reason = match ended {
            Ended::Shutdown => break,
            Ended::Lost(reason) => reason,
        };
        status.restarts.inc();
        let restarts = status.restarts.get();
        if started.elapsed() >= config.stable_after {
            backoff.reset();
        }
        let wait = backoff.next();
        error!(collector = %config.name, reason = %reason, restarts, backoff = ?wait, "collector exited; restarting");
        status.set_error(reason);
        status.set_state(LinkState::Restarting);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    status.set_state(LinkState::Stopped);
}

/// Waits for a started collector to exit; never returns when there is none.
async fn child_exit(child: Option<&mut Started>) -> String {
    match child {
        Some(c) => c.exited().await,
        None => std::future::pending().await,
    }
}

/// One collector's life: start it, connect, stream until it is gone.
async fn session(
    config: &LinkConfig,
    status: &LinkStatus,
    tx: &mpsc::Sender<LinkEvent>,
    shutdown: &CancellationToken,
) -> Ended {
    let mut child = match &config.mode {
        CollectorMode::Spawn { program, args } => {
            let spawned = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn();
            match spawned {
                Ok(c) => {
                    info!(collector = %config.name, pid = c.id(), program = %program.display(), "collector started");
                    Some(Started::Child(c))
                }
                Err(e) => return Ended::Lost(format!("cannot start {}: {e}", program.display())),
            }
        }
        CollectorMode::Spawner(slot) => {
            let spawned = tokio::select! {
                () = shutdown.cancelled() => return Ended::Shutdown,
                spawned = slot.client.spawn(slot.index) => spawned,
            };
            match spawned {
                Ok(c) => {
                    info!(collector = %config.name, pid = c.pid(), "collector started by the spawner");
                    Some(Started::Remote(c))
                }
                Err(e) => return Ended::Lost(format!("cannot start the collector: {e}")),
            }
        }
        CollectorMode::Connect => None,
    };
    if let Some(c) = &child {
        status.pid.store(c.pid(), Ordering::Relaxed);
    }
    let ended = stream(config, status, tx, shutdown, child.as_mut()).await;
    if let Some(c) = child.as_mut() {
        c.stop().await;
    }
    ended
}

/// A received batch as events: drops the collector reports are counted,
/// unreadable records counted and skipped.
fn convert(batch: daemoneye_lib::proto::EventBatch, status: &LinkStatus) -> Converted {
    status.batches.inc();
    if batch.dropped_since_last > 0 {
        status.dropped_upstream.add(batch.dropped_since_last);
        let total = status.dropped_upstream.get();
        warn!(
            dropped = batch.dropped_since_last,
            total, "the collector dropped events for the agent (it fell behind)"
        );
    }
    let mut out = Converted::default();
    for record in batch.events {
        match record_to_event(record) {
            Ok(CollectionEvent::Process(e)) => out.processes.push(e),
            Ok(CollectionEvent::Performance(e)) => out.performance.push(e),
            Ok(CollectionEvent::Network(e)) => out.network.push(e),
            Ok(CollectionEvent::Filesystem(e)) => out.files.push(e),
            // Read and valid, but nothing in the agent consumes this
            // domain yet.
            Ok(_) => status.ignored_records.inc(),
            Err(e) => {
                status.bad_records.inc();
                let n = status.bad_records.get();
                warn!(error = %e, bad_records = n, "unreadable record from the collector");
            }
        }
    }
    status.events.add_usize(
        out.processes.len() + out.performance.len() + out.network.len() + out.files.len(),
    );
    out
}

/// Hands a received batch on, by domain; false at shutdown (what could not
/// be handed on is counted).
async fn hand_on(
    out: Converted,
    tx: &mpsc::Sender<LinkEvent>,
    shutdown: &CancellationToken,
    status: &LinkStatus,
) -> bool {
    let batches = [
        LinkEvent::Events(out.processes),
        LinkEvent::Performance(out.performance),
        LinkEvent::Network(out.network),
        LinkEvent::Files(out.files),
    ];
    for event in batches.into_iter().filter(|e| !e.is_empty()) {
        let n = event.len();
        // The loop may be behind: wait for room, but not past shutdown (the
        // loop stops taking batches then, and a link waiting here would
        // hold the agent up forever).
        let sent = tokio::select! {
            biased;
            sent = tx.send(event) => sent.is_ok(),
            () = shutdown.cancelled() => false,
        };
        if !sent {
            status.dropped_at_shutdown.add_usize(n);
            return false;
        }
    }
    true
}

async fn stream(
    config: &LinkConfig,
    status: &LinkStatus,
    tx: &mpsc::Sender<LinkEvent>,
    shutdown: &CancellationToken,
    mut child: Option<&mut Started>,
) -> Ended {
    let client_config = IpcClientConfig {
        client_name: "daemoneye-agent".to_owned(),
        wanted_capabilities: config.domain.capability(),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(500),
        // Bounded by startup_timeout below, not by a count.
        max_connect_attempts: 0,
        request_timeout: Duration::from_secs(10),
        // Room for bursts: the server drops (and says so) beyond this.
        event_buffer_batches: 256,
        ..IpcClientConfig::new(&config.socket)
    };
    let connect = async {
        let client = CollectorIpcClient::connect(client_config)
            .await
            .map_err(|e| e.to_string())?;
        let caps = client.capabilities();
        if !caps
            .supported_domains()
            .any(|d| d == config.domain.domain())
        {
            return Err(format!(
                "it does not serve the {} domain",
                config.domain.name()
            ));
        }
        let stream = client
            .subscribe(SubscribeRequest {
                event_kinds: vec![config.domain.event_kind().into()],
                ..SubscribeRequest::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        Ok((client, caps, stream))
    };
    let connected = tokio::select! {
        () = shutdown.cancelled() => return Ended::Shutdown,
        reason = child_exit(child.as_deref_mut()) => return Ended::Lost(reason),
        r = tokio::time::timeout(config.startup_timeout, connect) => r,
    };
    let (client, caps, mut events) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Ended::Lost(format!(
                "cannot subscribe at {}: {e}",
                config.socket.display()
            ))
        }
        Err(_) => {
            return Ended::Lost(format!(
                "no collector at {} within {:?}",
                config.socket.display(),
                config.startup_timeout
            ))
        }
    };
    status
        .capabilities
        .store(caps.capability_bits, Ordering::Relaxed);
    let realtime =
        SourceCaps::from_bits_truncate(caps.capability_bits).contains(SourceCaps::REALTIME);
    info!(
        collector = %config.name,
        socket = %config.socket.display(),
        version = %caps.server_version,
        sources = caps.sources.len(),
        realtime,
        "collector connected"
    );
    status.set_state(LinkState::Connected);
    if config.domain == CollectorDomain::Process && tx.send(LinkEvent::Connected).await.is_err() {
        return Ended::Shutdown;
    }
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return Ended::Shutdown,
            reason = child_exit(child.as_deref_mut()) => return Ended::Lost(reason),
            b = events.recv() => b,
        };
        let Some(batch) = batch else {
            drop(client);
            return Ended::Lost("the collector closed the connection".to_owned());
        };
        if !hand_on(convert(batch, status), tx, shutdown, status).await {
            return Ended::Shutdown;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use collector_core::ipc::{event_to_record, process_to_record};
    use collector_core::NetworkEvent;
    use daemoneye_lib::proto::{EventBatch, EventRecord};

    use super::*;

    #[test]
    fn bad_records_and_upstream_drops_are_counted_and_the_rest_kept() {
        let status = LinkStatus::default();
        let registry = Registry::new();
        status.register(&registry, "procmond");
        let good = process_to_record(&ProcessEvent::new(5, "ok"));
        let mut bad = process_to_record(&ProcessEvent::new(6, "new"));
        bad.event_type = "from_the_future".into();
        let batch = EventBatch {
            events: vec![
                EventRecord::new("procmond", good),
                EventRecord::new("procmond", bad),
                event_to_record(
                    &CollectionEvent::Network(NetworkEvent {
                        connection_id: 7,
                        protocol: collector_core::NetworkProtocol::Tcp,
                        ..NetworkEvent::default()
                    }),
                    "netmond",
                ),
                event_to_record(
                    &CollectionEvent::Filesystem(collector_core::FilesystemEvent::new(
                        "/etc/passwd",
                        collector_core::FileOperation::Open,
                        std::time::SystemTime::UNIX_EPOCH,
                    )),
                    "fsmond",
                ),
                // Read and valid, but not the agent's to consume.
                event_to_record(
                    &CollectionEvent::TriggerRequest(collector_core::TriggerRequest {
                        trigger_id: "t1".into(),
                        target_collector: "hasher".into(),
                        analysis_type: collector_core::AnalysisType::BinaryHash,
                        priority: collector_core::TriggerPriority::Low,
                        target_pid: None,
                        target_path: Some("/usr/bin/x".into()),
                        correlation_id: "c1".into(),
                        metadata: std::collections::BTreeMap::new(),
                        timestamp: std::time::SystemTime::UNIX_EPOCH,
                    }),
                    "procmond",
                ),
                event_to_record(
                    &CollectionEvent::Performance(PerformanceEvent::new(
                        collector_core::PerformanceMetric::LoadAvg1,
                        0.5,
                        collector_core::PerformanceSubject::Host,
                        std::time::SystemTime::UNIX_EPOCH,
                    )),
                    "perfmond",
                ),
            ],
            dropped_since_last: 7,
            ..EventBatch::default()
        };
        let out = convert(batch, &status);
        assert_eq!(
            (
                out.processes.len(),
                out.performance.len(),
                out.network.len(),
                out.files.len()
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(out.network[0].connection_id, 7);
        assert_eq!(out.files[0].path, "/etc/passwd");
        assert_eq!(out.processes[0].pid, 5);
        assert_eq!(status.bad_records.get(), 1);
        assert_eq!(status.ignored_records.get(), 1);
        assert_eq!(status.dropped_upstream.get(), 7);
        assert_eq!(status.events.get(), 4);
        assert_eq!(status.batches.get(), 1);
        // `/metrics` reads the same counters.
        let c = ("collector", "procmond");
        let link = ("stage", "link");
        assert_eq!(
            registry.value("daemoneye_events_received_total", &[link, c]),
            Some(4)
        );
        assert_eq!(
            registry.value(
                "daemoneye_events_dropped_total",
                &[("stage", "collector"), c]
            ),
            Some(7)
        );
        assert_eq!(
            registry.value(
                "daemoneye_events_dropped_total",
                &[link, c, ("reason", "unreadable")]
            ),
            Some(1)
        );
        assert_eq!(
            registry.value("daemoneye_events_ignored_total", &[link, c]),
            Some(1)
        );
        status.set_state(LinkState::Restarting);
        assert_eq!(status.state(), LinkState::Restarting);
        assert_eq!(registry.value("daemoneye_collector_state", &[c]), Some(2));
    }
}
