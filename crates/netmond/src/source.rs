//! netmond as an event source: TCP state changes in real time from eBPF,
//! and a `sock_diag` snapshot every interval, diffed against the last one.
//!
//! # Tiers
//! The best this machine allows ([`TierChoice::Auto`]):
//!
//! - **eBPF** ([`CaptureTier::Ebpf`], [`crate::ebpf`]): every TCP connect,
//!   accept, listen and close as the kernel makes it, with the process that
//!   did it ([`crate::realtime`]), however short the connection; losses
//!   counted exactly (the kernel's ring buffer drops, exported as
//!   `daemoneye_events_dropped_total{stage="kernel"}`; health is degraded
//!   at a check after any). The snapshot keeps running beside it: UDP has
//!   no state tracepoint and stays on the snapshot tier, and the snapshot
//!   says which processes *hold* each socket and by which descriptor (the
//!   eBPF tier says which process acted on it).
//! - **Snapshots only** ([`CaptureTier::Polling`]), the fallback when the
//!   program cannot be loaded (no `CAP_BPF`/`CAP_PERFMON`, no kernel BTF):
//!   it says once, in the log, that it misses connections shorter than its
//!   interval.
//!
//! The tier in use is [`NetmondStats::tier`] and the gauge
//! `daemoneye_capture_tier{source="netmond",tier=...}`; every event names
//! its own tier.
//!
//! # Snapshots
//! The first look reports every live socket as
//! [`Present`](ConnectionChange::Present); each later look reports the
//! sockets that appeared ([`Opened`](ConnectionChange::Opened)) and those
//! that went ([`Closed`](ConnectionChange::Closed)), a socket named by its
//! kernel cookie (the eBPF tier's `connection_id` too). A TCP socket in
//! `TIME_WAIT` or `CLOSE` counts as gone.
//!
//! A socket held by several processes (after a fork, or a shell given it
//! as stdin) is one event per holder, each with its pid, process key and
//! the lowest descriptor that process holds it by, all with the same
//! `connection_id` and `holders` the number of them; a socket no readable
//! process holds is one event without a pid.
//!
//! A connection that opens and closes between two looks (shorter than the
//! interval, 5 s by default) is never seen by the snapshots.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use collector_core::metrics::{Counter, Registry, TierGauges};
use collector_core::poll::{Poll, PollCounters, Polled};
use collector_core::procfs;
use collector_core::source::{start_from_flag, EventSender, ShutdownFlag};
use collector_core::{
    BootId, CaptureTier, CollectionEvent, ConnectionChange, ConnectionState, EventSource,
    NetworkEvent, NetworkProtocol, ProcessKey, SourceCaps, SourceContext,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ebpf::{
    AcceptHook, Delivery, EbpfConfig, EbpfCounters, EbpfError, KernelAccounting, NetReader,
    NetTier, StateRecord,
};
use crate::owners::Owner;
use crate::realtime::{monotonic_now, Holder, SeenSockets, Tracker, TrackerCounters};
use crate::snapshot::{Connection, Snapshot, Snapshotter};

/// The source's name, in logs, metrics and health.
pub const NAME: &str = "netmond";

/// The capabilities netmond keeps as root, measured (Linux 6.18): none to
/// dump every socket with `sock_diag` (TCP and UDP dumps are open to any
/// user; `CAP_NET_ADMIN` adds nothing), `CAP_DAC_READ_SEARCH` to list
/// another user's `/proc/<pid>/fd` and `CAP_SYS_PTRACE` to read its links
/// (either alone finds no holder). Sockets of other network namespaces
/// need `CAP_SYS_ADMIN` to enter them ([`crate::namespaces`]), which this
/// set leaves out: with it, they are counted unreadable, not seen.
pub const CAPABILITIES: rustix::thread::CapabilitySet =
    rustix::thread::CapabilitySet::SYS_PTRACE.union(rustix::thread::CapabilitySet::DAC_READ_SEARCH);

/// What loading the eBPF tier takes beyond [`CAPABILITIES`]: `CAP_BPF` and
/// `CAP_PERFMON` (as procmond's). netmond loads and attaches its program
/// first ([`crate::cli::prepare`]), then keeps only [`CAPABILITIES`]; the
/// attached program and its maps go on working through their descriptors.
pub const LOAD_EBPF: rustix::thread::CapabilitySet =
    rustix::thread::CapabilitySet::BPF.union(rustix::thread::CapabilitySet::PERFMON);

/// What a netmond started by a supervisor takes from it: [`CAPABILITIES`]
/// and [`LOAD_EBPF`] (it loads the eBPF tier, then drops to
/// [`CAPABILITIES`]).
pub const TAKES: rustix::thread::CapabilitySet = CAPABILITIES.union(LOAD_EBPF);

/// Which tier to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierChoice {
    /// eBPF when it loads, else snapshots only (said once, in the log).
    #[default]
    Auto,
    /// eBPF only: starting fails when the program cannot be loaded.
    Ebpf,
    /// Snapshots only.
    Polling,
}

/// netmond's settings (`[netmond]` in its config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetmondConfig {
    /// Time between snapshots.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Where procfs is mounted.
    pub proc_root: PathBuf,
    /// Which tier: `auto` (eBPF when it loads), `ebpf` or `polling`.
    pub tier: TierChoice,
    /// The eBPF tier's settings.
    pub ebpf: EbpfConfig,
    /// How the eBPF tier names the process accepting a connection:
    /// `auto`, `tracepoints`, `raw_syscalls` or `off` ([`AcceptHook`]).
    pub accept_hook: AcceptHook,
}

impl Default for NetmondConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            proc_root: PathBuf::from("/proc"),
            tier: TierChoice::Auto,
            ebpf: EbpfConfig::default(),
            accept_hook: AcceptHook::default(),
        }
    }
}

impl NetmondConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`collector_core::ConfigError::Invalid`] naming the bad field.
    pub fn validate(&self) -> Result<(), collector_core::ConfigError> {
        collector_core::poll::validate_interval(self.interval)?;
        collector_core::ebpf::check_ring_bytes(self.ebpf.ring_buffer_bytes).map_err(|e| {
            collector_core::ConfigError::Invalid {
                field: "ebpf.ring_buffer_bytes",
                reason: e.to_string(),
            }
        })
    }
}

/// What the differ counts beyond the looks (shared: clones see the same).
#[derive(Debug, Clone, Default)]
pub struct NetmondCounters {
    /// Sockets reported opened.
    pub opened: Counter,
    /// Sockets reported closed.
    pub closed: Counter,
    /// Walks of `/proc/*/fd` (the snapshotter's map rebuilt).
    pub proc_walks: Counter,
}

impl NetmondCounters {
    /// Registers the counters for `/metrics`.
    pub fn register_metrics(&self, registry: &Registry) {
        registry.register_by_reason(
            "daemoneye_connections_changed_total",
            "Sockets a network collector saw open or close, by change.",
            &[("source", NAME)],
            [("opened", &self.opened), ("closed", &self.closed)],
        );
        registry.register_counter(
            "daemoneye_proc_walks_total",
            "Walks of every /proc/<pid>/fd to find which process holds which socket.",
            &[("source", NAME)],
            &self.proc_walks,
        );
    }
}

/// The real-time tier's state, shared with [`NetmondStats`].
#[derive(Debug, Default)]
struct Status {
    /// One per [`CaptureTier::ALL`] (same order), 1 for the tier in use.
    tiers: TierGauges,
    ebpf: EbpfCounters,
    tracker: TrackerCounters,
    /// Events the eBPF tier sent to the runtime.
    emitted: Counter,
    /// Kernel drops already reported by a health check.
    drops_reported: AtomicU64,
    /// Why the eBPF reader stopped, when it failed.
    failed: Mutex<Option<String>>,
    /// What the last snapshot saw of TCP, for the tracker to prune by.
    seen: SeenSlot,
}

/// The last snapshot's TCP sockets, from the differ to the eBPF tier.
type SeenSlot = Arc<Mutex<Option<SeenSockets>>>;

/// How often the eBPF tier releases the inbound connections no accept came
/// for and prunes by the last snapshot.
const TICK: Duration = Duration::from_secs(1);

/// Reads the source's tier and counters from anywhere (clones share them).
#[derive(Debug, Clone)]
pub struct NetmondStats(Arc<Status>);

impl NetmondStats {
    /// The tier in use; `None` before the source starts.
    pub fn tier(&self) -> Option<CaptureTier> {
        self.0.tiers.get()
    }

    /// The eBPF tier's accounting: what the kernel produced, what reached
    /// the reader, what the ring buffer dropped (zero on the polling tier).
    pub fn kernel_accounting(&self) -> KernelAccounting {
        self.0.ebpf.accounting()
    }

    /// Events the eBPF tier sent to the runtime.
    pub fn realtime_events(&self) -> u64 {
        self.0.emitted.get()
    }

    /// Registers the tier gauges (`daemoneye_capture_tier{source="netmond"}`),
    /// the kernel's counters (`stage="kernel"`) and the tracker's.
    pub fn register_metrics(&self, registry: &Registry) {
        let c = &self.0;
        c.tiers.register(registry, NAME);
        c.ebpf.register(registry);
        registry.register_counter(
            "daemoneye_connections_untracked_total",
            "TCP sockets the eBPF tier could not follow (its table full): their events carry only what the kernel's record says.",
            &[("source", NAME)],
            &c.tracker.untracked,
        );
        registry.register_counter(
            "daemoneye_connections_unaccepted_total",
            "Inbound TCP connections the eBPF tier named for their listener's holder: no accept record came (closed first, not accepted in time, or no accept hook).",
            &[("source", NAME)],
            &c.tracker.unaccepted,
        );
        registry.register_counter(
            "daemoneye_connections_pruned_total",
            "TCP sockets the eBPF tier stopped following because a later snapshot no longer saw them (their close record was lost).",
            &[("source", NAME)],
            &c.tracker.pruned,
        );
        registry.register_counter(
            "daemoneye_realtime_events_total",
            "Events the eBPF tier sent to the runtime.",
            &[("source", NAME)],
            &c.emitted,
        );
    }
}

/// The netmond source: see the [module docs](self).
pub struct NetmondSource {
    polled: Polled<Differ>,
    config: NetmondConfig,
    /// The program loaded and attached before privileges were dropped
    /// ([`with_ebpf_tier`](Self::with_ebpf_tier)); taken by the first start.
    preloaded: Mutex<Option<NetTier>>,
    status: Arc<Status>,
}

impl std::fmt::Debug for NetmondSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetmondSource")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Builds the source.
///
/// # Errors
/// [`collector_core::ConfigError::Invalid`] for a bad setting.
pub fn source(
    config: &NetmondConfig,
    counters: NetmondCounters,
) -> Result<NetmondSource, collector_core::ConfigError> {
    config.validate()?;
    let status = Arc::<Status>::default();
    let mut differ = Differ::new(&config.proc_root, counters);
    differ.seen = Some(status.seen.clone());
    let polled = Polled::new(
        NAME,
        SourceCaps::NETWORK | SourceCaps::SYSTEM_WIDE,
        config.interval,
        differ,
    );
    Ok(NetmondSource {
        polled,
        config: config.clone(),
        preloaded: Mutex::new(None),
        status,
    })
}

impl NetmondSource {
    /// The snapshots' counters (looks, failures, events).
    pub fn counters(&self) -> PollCounters {
        self.polled.counters()
    }

    /// The tier and the eBPF tier's counters, readable after the source is
    /// handed to the runtime.
    pub fn stats(&self) -> NetmondStats {
        NetmondStats(self.status.clone())
    }

    /// Uses `tier`, loaded and attached already (while the capabilities
    /// loading takes were held), instead of loading the program at start.
    #[must_use]
    pub fn with_ebpf_tier(self, tier: NetTier) -> Self {
        *collector_core::lock(&self.preloaded) = Some(tier);
        self
    }

    fn set_tier(&self, tier: CaptureTier) {
        self.status.tiers.set(tier);
    }

    /// The eBPF tier's reader, when it is wanted and loads; `None` (the
    /// fallback said once, in the log) otherwise.
    fn open_realtime(&self) -> anyhow::Result<Option<Realtime>> {
        if self.config.tier == TierChoice::Polling {
            tracing::info!(
                interval = ?self.config.interval,
                "capture tier: sock_diag snapshots (as configured): connections shorter than the interval are missed"
            );
            return Ok(None);
        }
        let preloaded = collector_core::lock(&self.preloaded).take();
        let opened = preloaded
            .map_or_else(
                || NetTier::load_with(&self.config.ebpf, self.config.accept_hook),
                Ok,
            )
            .and_then(|tier| {
                let hook = tier.accept_hook();
                let (tx, rx) = mpsc::channel(64);
                tier.spawn_reader(tx, self.status.ebpf.clone())
                    .map(|reader| (reader, rx, hook))
            });
        match opened {
            Ok((reader, rx, hook)) => {
                tracing::info!(
                    interval = ?self.config.interval,
                    accept_hook = ?hook,
                    "capture tier: eBPF (TCP connect, accept, listen and close as they happen); \
                     UDP and the sockets' holders by sock_diag snapshot every interval"
                );
                if hook == AcceptHook::Off {
                    tracing::info!(
                        asked = ?self.config.accept_hook,
                        "no accept hook (tracefs not mounted, or off): accepted connections \
                         are named for their listener's holder, not the process that accepted them"
                    );
                }
                Ok(Some(Realtime {
                    reader,
                    rx,
                    accepts_reported: hook != AcceptHook::Off,
                }))
            }
            Err(err) if self.config.tier == TierChoice::Ebpf => {
                Err(anyhow::Error::new(err).context("the eBPF tier was asked for"))
            }
            Err(err) => {
                warn_fallback(&err, self.config.interval);
                Ok(None)
            }
        }
    }

    /// The eBPF tier's records as events, until shutdown or the reader
    /// ends; every [`TICK`], the inbound connections no accept came for go
    /// out, and sockets the last snapshot no longer saw are forgotten.
    async fn run_realtime(&self, ctx: SourceContext, realtime: Realtime) -> anyhow::Result<()> {
        let Realtime {
            reader,
            mut rx,
            accepts_reported,
        } = realtime;
        let mut tracker = Tracker::new(self.status.tracker.clone(), accepts_reported);
        // Listeners older than us: their accepted connections go to their
        // holders.
        let root = self.config.proc_root.clone();
        if let Ok(Ok(snapshot)) = tokio::task::spawn_blocking(move || Snapshot::take(&root)).await {
            note_listeners(&mut tracker, &snapshot, &self.config.proc_root);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut events = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = ctx.shutdown().cancelled() => break,
                // Before the records: a flood of them must not starve it.
                _ = tick.tick() => self.on_tick(&mut tracker, &mut events),
                delivery = rx.recv() => {
                    let Some(delivery) = delivery else {
                        break; // the reader ended: its error, if any, below
                    };
                    // Drops are counted; health reports them.
                    if let Delivery::Records(batch) = delivery {
                        for record in &batch {
                            tracker.on_record(record, &mut events);
                        }
                    }
                }
            }
            if !self.send_all(&ctx, &mut events).await {
                break;
            }
        }
        drop(rx);
        let stopped = tokio::task::spawn_blocking(move || reader.stop()).await;
        match stopped {
            Ok(Ok(books)) => tracing::debug!(?books, "eBPF tier stopped"),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "the eBPF tier failed: snapshots only from now on");
                *collector_core::lock(&self.status.failed) = Some(err.to_string());
                self.set_tier(CaptureTier::Polling);
            }
            Err(err) => tracing::warn!(error = %err, "the eBPF tier's stop panicked"),
        }
        Ok(())
    }
}

impl NetmondSource {
    fn on_tick(&self, tracker: &mut Tracker, events: &mut Vec<NetworkEvent>) {
        let now = u64::try_from(monotonic_now().as_nanos()).unwrap_or(u64::MAX);
        tracker.flush_unaccepted(now, events);
        let seen = collector_core::lock(&self.status.seen).take();
        if let Some(seen) = seen {
            tracker.prune(&seen, events);
        }
    }

    /// Sends `events` (emptied); false once shutdown came or the output
    /// closed.
    async fn send_all(&self, ctx: &SourceContext, events: &mut Vec<NetworkEvent>) -> bool {
        for event in events.drain(..) {
            let sent = tokio::select! {
                biased;
                () = ctx.shutdown().cancelled() => return false,
                sent = ctx.out().send(CollectionEvent::Network(event)) => sent,
            };
            if sent.is_err() {
                return false;
            }
            self.status.emitted.inc();
        }
        true
    }
}

/// The eBPF tier, started.
struct Realtime {
    reader: NetReader,
    rx: mpsc::Receiver<Delivery<StateRecord>>,
    /// Whether accept records come (an accept hook is attached).
    accepts_reported: bool,
}

/// Says, once, that the snapshots alone miss short connections.
fn warn_fallback(err: &EbpfError, interval: Duration) {
    tracing::warn!(
        error = %err,
        interval = ?interval,
        "eBPF tier unavailable: falling back to sock_diag snapshots every interval; \
         connections shorter than the interval will be missed"
    );
}

/// The holders of `snapshot`'s TCP listeners, told to `tracker`.
fn note_listeners(tracker: &mut Tracker, snapshot: &Snapshot, proc_root: &Path) {
    let boot = BootId::current().ok();
    for c in &snapshot.connections {
        let s = &c.socket;
        if s.protocol != NetworkProtocol::Tcp || !s.is_listener() {
            continue;
        }
        if let Some(o) = c.owners.first() {
            let key = boot.and_then(|b| procfs::process_key(proc_root, b, o.pid));
            let holder = Holder { pid: o.pid, key };
            tracker.note_listener(s.netns.unwrap_or(0), s.local.port(), holder);
        }
    }
}

#[async_trait]
impl EventSource for NetmondSource {
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        let Some(realtime) = self.open_realtime()? else {
            self.set_tier(CaptureTier::Polling);
            return self.polled.start_with(ctx).await;
        };
        self.set_tier(CaptureTier::Ebpf);
        let (polled, realtime) = tokio::join!(
            self.polled.start_with(ctx.clone()),
            self.run_realtime(ctx, realtime)
        );
        polled.and(realtime)
    }

    async fn start(&self, tx: EventSender, flag: ShutdownFlag) -> anyhow::Result<()> {
        start_from_flag(self, tx, flag).await
    }

    fn name(&self) -> &'static str {
        NAME
    }

    /// Real time (`REALTIME | KERNEL_LEVEL`) only when the eBPF tier is, or
    /// will be, in use: after start, the tier in use (so not after `auto`
    /// fell back to snapshots, nor once the eBPF reader failed); before,
    /// what is certain: `ebpf` (start fails without it), or `auto` with the
    /// program preloaded ([`with_ebpf_tier`](Self::with_ebpf_tier), as
    /// `netmond run` does). `auto` without it claims none until started.
    fn capabilities(&self) -> SourceCaps {
        let caps = SourceCaps::NETWORK | SourceCaps::SYSTEM_WIDE;
        let realtime = match self.status.tiers.get() {
            Some(tier) => tier == CaptureTier::Ebpf,
            None => match self.config.tier {
                TierChoice::Polling => false,
                TierChoice::Ebpf => true,
                TierChoice::Auto => collector_core::lock(&self.preloaded).is_some(),
            },
        };
        if realtime {
            caps | SourceCaps::REALTIME | SourceCaps::KERNEL_LEVEL
        } else {
            caps
        }
    }

    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn health_check(&self) -> anyhow::Result<()> {
        self.polled.health_check().await?;
        let failed = collector_core::lock(&self.status.failed).clone();
        if let Some(failed) = failed {
            anyhow::bail!("the eBPF tier failed ({failed}): snapshots only");
        }
        let dropped = self.status.ebpf.accounting().dropped;
        let before = self.status.drops_reported.swap(dropped, Ordering::Relaxed);
        if dropped > before {
            anyhow::bail!(
                "the kernel dropped {} TCP state records since the last check (eBPF ring buffer full)",
                dropped - before
            );
        }
        Ok(())
    }
}

/// Snapshots diffed against the last: see the [module docs](self).
#[derive(Debug)]
pub struct Differ {
    snapshotter: Snapshotter,
    /// Where each look's TCP sockets go for the eBPF tier (the source's).
    seen: Option<SeenSlot>,
    live: HashMap<u64, Connection>,
    first: bool,
    keys: Keys,
    counters: NetmondCounters,
}

/// The process keys of the holders, read once per pid from its stat.
#[derive(Debug)]
struct Keys {
    proc_root: PathBuf,
    boot_id: Option<BootId>,
    by_pid: HashMap<u32, Option<ProcessKey>>,
    stat_buf: Vec<u8>,
}

impl Differ {
    /// A differ reading holders from `proc_root`.
    pub fn new(proc_root: &Path, counters: NetmondCounters) -> Self {
        Self {
            snapshotter: Snapshotter::new(proc_root),
            seen: None,
            live: HashMap::new(),
            first: true,
            keys: Keys {
                proc_root: proc_root.to_owned(),
                boot_id: BootId::current().ok(),
                by_pid: HashMap::new(),
                stat_buf: Vec::with_capacity(1024),
            },
            counters,
        }
    }
}

impl Keys {
    /// The key of `pid`, from its stat (`None` once it is gone).
    fn key(&mut self, pid: u32) -> Option<ProcessKey> {
        let boot = self.boot_id?;
        if let Some(key) = self.by_pid.get(&pid) {
            return *key;
        }
        let key = (|| {
            use std::io::Read as _;
            self.stat_buf.clear();
            std::fs::File::open(self.proc_root.join(format!("{pid}/stat")))
                .ok()?
                .read_to_end(&mut self.stat_buf)
                .ok()?;
            let stat = procfs::parse_pid_stat(&self.stat_buf).ok()?;
            Some(ProcessKey::new(boot, pid, stat.starttime))
        })();
        self.by_pid.insert(pid, key);
        key
    }

    /// The events of one socket: one per process that holds it, with the
    /// lowest descriptor it holds it by (a shell whose stdin is the socket
    /// says `fd` 0 whatever else it holds it by), or one without a process
    /// when none could be read.
    fn events(
        &mut self,
        c: &Connection,
        change: ConnectionChange,
        at: SystemTime,
        out: &mut Vec<CollectionEvent>,
    ) {
        // `owners` is sorted by (pid, fd): the first of each pid is its
        // lowest descriptor.
        let mut holders: Vec<Owner> = Vec::with_capacity(c.owners.len());
        for o in &c.owners {
            if holders.last().is_none_or(|h| h.pid != o.pid) {
                holders.push(*o);
            }
        }
        let count = u32::try_from(holders.len()).ok().filter(|n| *n > 0);
        if holders.is_empty() {
            out.push(CollectionEvent::Network(
                self.event(c, None, count, change, at),
            ));
        }
        for h in holders {
            let e = self.event(c, Some(h), count, change, at);
            out.push(CollectionEvent::Network(e));
        }
    }

    fn event(
        &mut self,
        c: &Connection,
        owner: Option<Owner>,
        holders: Option<u32>,
        change: ConnectionChange,
        at: SystemTime,
    ) -> NetworkEvent {
        let s = &c.socket;
        let connected = !s.is_listener();
        NetworkEvent {
            connection_id: s.cookie,
            source_addr: Some(s.local.ip()),
            source_port: Some(s.local.port()),
            dest_addr: connected.then(|| s.remote.ip()),
            dest_port: connected.then(|| s.remote.port()),
            protocol: s.protocol,
            family: Some(s.family),
            state: s.state,
            direction: Some(c.direction),
            change: Some(change),
            pid: owner.map(|o| o.pid),
            process_key: owner.and_then(|o| self.key(o.pid)),
            fd: owner.map(|o| o.fd),
            holders,
            uid: Some(s.uid),
            inode: (s.inode != 0).then_some(s.inode),
            netns: s.netns,
            bytes_sent: s.bytes_acked,
            bytes_received: s.bytes_received,
            tier: Some(CaptureTier::Polling),
            timestamp: at,
            id: None,
        }
    }
}

/// The TCP sockets of `snapshot`, begun at `taken_ns`.
fn seen_sockets(snapshot: &Snapshot, taken_ns: u64) -> SeenSockets {
    SeenSockets {
        taken_ns,
        netns: snapshot.namespaces_read.iter().copied().collect(),
        cookies: snapshot
            .connections
            .iter()
            .filter(|c| c.socket.protocol == NetworkProtocol::Tcp)
            .map(|c| c.socket.cookie)
            .collect(),
    }
}

/// A socket that still carries a connection or listens (a TCP socket in
/// `TIME_WAIT` or `CLOSE` is only the trace of one).
fn is_live(c: &Connection) -> bool {
    c.socket.protocol != NetworkProtocol::Tcp
        || !matches!(
            c.socket.state,
            Some(ConnectionState::TimeWait | ConnectionState::Close)
        )
}

impl Poll for Differ {
    fn poll(&mut self, out: &mut Vec<CollectionEvent>) -> anyhow::Result<()> {
        let walks = self.snapshotter.walks();
        let taken_ns = u64::try_from(monotonic_now().as_nanos()).unwrap_or(u64::MAX);
        let snapshot = self.snapshotter.take()?;
        if let Some(slot) = &self.seen {
            *collector_core::lock(slot) = Some(seen_sockets(&snapshot, taken_ns));
        }
        self.counters
            .proc_walks
            .add(self.snapshotter.walks().saturating_sub(walks));
        let at = SystemTime::now();
        // Keys of processes that are gone are dropped with the map of the
        // last look: a pid reused later gets its own.
        let holders: std::collections::HashSet<u32> = snapshot
            .connections
            .iter()
            .flat_map(|c| c.owners.iter().map(|o| o.pid))
            .collect();
        self.keys.by_pid.retain(|pid, _| holders.contains(pid));
        let live: HashMap<u64, Connection> = snapshot
            .connections
            .into_iter()
            .filter(is_live)
            .map(|c| (c.socket.cookie, c))
            .collect();
        let change = if self.first {
            ConnectionChange::Present
        } else {
            ConnectionChange::Opened
        };
        // The new map in place, the old one owned: nothing is cloned.
        let last = std::mem::replace(&mut self.live, live);
        let mut opened: Vec<&Connection> = self
            .live
            .iter()
            .filter(|(cookie, _)| !last.contains_key(cookie))
            .map(|(_, c)| c)
            .collect();
        opened.sort_unstable_by_key(|c| c.socket.cookie);
        let mut closed: Vec<&Connection> = last
            .iter()
            .filter(|(cookie, _)| !self.live.contains_key(cookie))
            .map(|(_, c)| c)
            .collect();
        closed.sort_unstable_by_key(|c| c.socket.cookie);
        for c in &opened {
            self.keys.events(c, change, at, out);
        }
        for c in &closed {
            self.keys.events(c, ConnectionChange::Closed, at, out);
        }
        if !self.first {
            self.counters.opened.add_usize(opened.len());
            self.counters.closed.add_usize(closed.len());
        }
        self.first = false;
        Ok(())
    }
}
