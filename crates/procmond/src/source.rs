//! [`ProcmondMonitorCollector`]: the process collector as an
//! [`EventSource`].
//!
//! It combines three inputs:
//!
//! - a full snapshot of `/proc` at start and every `collection_interval`,
//!   reconciled by the [`LifecycleTracker`] into start/exit/modified events;
//! - the kernel's process connector (fork, exec, exit, uid and name changes)
//!   read by a dedicated thread, each exec enriched from `/proc` at once;
//! - a reconciliation snapshot whenever the kernel reports lost events
//!   (`ENOBUFS`), so missed starts and exits are still found.
//!
//! Kernel events come from the best tier this machine allows
//! ([`TierChoice::Auto`]): the [eBPF programs](crate::ebpf) (every exec with
//! its argv and filename as the kernel saw them, losses counted exactly),
//! else the process connector, else snapshots alone (polling). Each fallback
//! is said once, in the log; [`ProcmondStatsHandle::tier`] and the gauge
//! `daemoneye_capture_tier{tier=...}` name the tier in use. Events are sent to the runtime and stored in the audit
//! database through the store's one batched writer
//! ([`StoreWriter`], on its own thread).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use async_trait::async_trait;
use collector_core::metrics::{Counter, Gauge, Registry, TierGauges};
use collector_core::{
    CaptureTier, CollectionEvent, EventSource, HashAlgorithm, MonitorCollector,
    MonitorCollectorConfig, MonitorCollectorStats, ProcessEvent, ProcessEventType, ReadDepth,
    SourceCaps, SourceContext,
};
use daemoneye_hasher::{HashEngine, HashError, HashOutcome, HasherConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connector::{
    ConnectorConfig, ConnectorError, ConnectorMessage, ProcConnector, ProcEvent, ReaderCounters,
    ReaderHandle,
};
use crate::ebpf::{
    EbpfConfig, EbpfCounters, EbpfError, EbpfMessage, EbpfReaderHandle, EbpfTier, ExecRecord,
    KernelAccounting, Record, TaskRecord,
};
use crate::lifecycle::{LifecycleCounters, LifecycleTracker, LifecycleTrackingConfig};
use crate::reader_thread::{wall_time, ReaderError as _};
use crate::snapshot::{
    ProcReader, ReadError, ReadOptions, SetupError, SnapshotCache, SnapshotCounters,
};
use daemoneye_store::{StoreWriter, WriterConfig};

use crate::DatabaseManager;

/// What is collected per process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessCollectionConfig {
    /// cgroup, container id and namespaces (read once per process).
    pub collect_enhanced_metadata: bool,
    /// Compare each running executable with the file now at its path, to
    /// notice a replaced binary.
    pub check_executable_identity: bool,
    /// Hash executables through the shared cached hasher: each unique file
    /// once, within the hasher's byte budget, off the event path (an event
    /// carries the hash when it is known by then; later events of the same
    /// file always do).
    pub compute_executable_hashes: bool,
    /// The hasher's settings (algorithms, budget, size limit, roots, cache).
    pub hasher: HasherConfig,
    /// The kernel process connector's socket settings.
    pub connector: ConnectorConfig,
    /// Which kernel tier to use: `auto` (the best available), or one forced.
    pub tier: TierChoice,
    /// The eBPF tier's settings.
    pub ebpf: EbpfConfig,
    /// Most processes one snapshot reads; the rest are counted as truncated.
    pub max_processes: usize,
}

impl Default for ProcessCollectionConfig {
    fn default() -> Self {
        Self {
            collect_enhanced_metadata: true,
            check_executable_identity: true,
            compute_executable_hashes: true,
            hasher: HasherConfig::default(),
            connector: ConnectorConfig::default(),
            tier: TierChoice::Auto,
            ebpf: EbpfConfig::default(),
            max_processes: 100_000,
        }
    }
}

/// Which tier of kernel events to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(clap::ValueEnum)]
pub enum TierChoice {
    /// The best this machine allows: eBPF, else the process connector, else
    /// polling (each fallback said once, in the log).
    #[default]
    Auto,
    /// The eBPF programs only: starting fails when they cannot be loaded.
    Ebpf,
    /// The process connector only: starting fails when it cannot be opened.
    Connector,
    /// Snapshots only (as `enable_event_driven = false`).
    Polling,
}

impl TierChoice {
    /// Its name, as the config, `--tier` and the logs spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Ebpf => "ebpf",
            Self::Connector => "connector",
            Self::Polling => "polling",
        }
    }
}

/// Everything procmond's collector needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProcmondMonitorConfig {
    /// Interval, in-flight bound, real-time on/off.
    pub base_config: MonitorCollectorConfig,
    /// What is read per process.
    pub process_config: ProcessCollectionConfig,
    /// What the tracker reports.
    pub lifecycle_config: LifecycleTrackingConfig,
}

/// Why the collector could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcmondError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] collector_core::ConfigError),
    /// `/proc` is unusable.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The audit database's writer cannot start.
    #[error("cannot start the audit database writer")]
    Store(#[source] daemoneye_store::StoreError),
    /// The hasher's settings are invalid.
    #[error(transparent)]
    Hasher(#[from] daemoneye_hasher::ConfigError),
}

#[derive(Debug, Default)]
struct Counters {
    cycles: Counter,
    cycle_errors: Counter,
    emitted: Counter,
    overruns: Counter,
    realtime: Gauge,
    enrich_failed: Counter,
    hashes_skipped: Counter,
    /// Unix seconds of the latest skipped hash (0: none yet).
    hashes_skipped_at: Gauge,
    reader: ReaderCounters,
    ebpf: EbpfCounters,
    /// One per [`CaptureTier::ALL`] (same order), 1 for the tier in use.
    tiers: TierGauges,
    lifecycle: LifecycleCounters,
    snapshots: SnapshotCounters,
    /// Snapshot rows not sent: the process had not changed since it was.
    snapshot_unchanged: Counter,
}

/// The process collector. See the [module docs](self).
pub struct ProcmondMonitorCollector {
    config: ProcmondMonitorConfig,
    reader: ProcReader,
    /// Reads execs as they happen: no cgroup/namespace/identity work on the
    /// hot path (the next snapshot adds those).
    quick: ProcReader,
    database: Option<StoreWriter>,
    hasher: Option<HashEngine>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    /// eBPF programs loaded and attached before privileges were dropped
    /// ([`with_ebpf_tier`](Self::with_ebpf_tier)); taken by the first start.
    preloaded: Mutex<Option<EbpfTier>>,
}

impl std::fmt::Debug for ProcmondMonitorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcmondMonitorCollector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn validate(config: &ProcmondMonitorConfig) -> Result<(), collector_core::ConfigError> {
    config.base_config.validate()?;
    let invalid = |field, reason: &str| collector_core::ConfigError::Invalid {
        field,
        reason: reason.to_owned(),
    };
    if config.process_config.max_processes == 0 {
        return Err(invalid("max_processes", "must be greater than zero"));
    }
    Ok(())
}

impl ProcmondMonitorCollector {
    /// A collector storing into `database`.
    ///
    /// # Errors
    /// An invalid config (naming the field) or an unusable `/proc`.
    #[allow(clippy::unused_async)] // the reference API awaits it
    pub async fn new(
        database: Arc<Mutex<DatabaseManager>>,
        config: ProcmondMonitorConfig,
    ) -> Result<Self, ProcmondError> {
        Self::build(Some(database), config)
    }

    /// A collector that stores nothing (events go to subscribers only).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn without_database(config: ProcmondMonitorConfig) -> Result<Self, ProcmondError> {
        Self::build(None, config)
    }

    fn build(
        database: Option<Arc<Mutex<DatabaseManager>>>,
        config: ProcmondMonitorConfig,
    ) -> Result<Self, ProcmondError> {
        validate(&config)?;
        let database = database
            .map(|db| StoreWriter::spawn_shared(db, WriterConfig::default()))
            .transpose()
            .map_err(ProcmondError::Store)?;
        let p = &config.process_config;
        let reader = ProcReader::new(ReadOptions {
            enhanced_metadata: p.collect_enhanced_metadata,
            executable_identity: p.check_executable_identity,
        })?;
        let quick = ProcReader::new(ReadOptions {
            enhanced_metadata: false,
            executable_identity: false,
        })?;
        let hasher = if p.compute_executable_hashes {
            Some(HashEngine::new(p.hasher.clone())?)
        } else {
            None
        };
        Ok(Self {
            config,
            reader,
            quick,
            database,
            hasher,
            counters: Arc::default(),
            stop: CancellationToken::new(),
            preloaded: Mutex::new(None),
        })
    }
}

/// How long an event waits for its executable's hash: enough for a cache
/// hit, far less than a first hash of a large binary.
const HASH_WAIT: Duration = Duration::from_millis(2);

/// The most executables hashed at once: each open file, task and map entry
/// is bounded by it.
pub const MAX_HASHES_IN_FLIGHT: usize = 64;

/// How long health stays degraded after an exec event went without its
/// executable's hash because hashing was saturated.
pub const HASH_SKIPS_DEGRADE_FOR: Duration = Duration::from_secs(300);

impl Counters {
    /// An event goes on without its hash because hashing is saturated.
    fn hash_skipped(&self) {
        self.hashes_skipped.inc();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.hashes_skipped_at.set(now);
    }
}

/// Whether `tasks` has room for one more, after forgetting the finished
/// ones when it is full (their digests are in the hasher's cache).
fn make_room<T>(tasks: &mut HashMap<String, JoinHandle<T>>, cap: usize) -> bool {
    if tasks.len() >= cap {
        tasks.retain(|_, t| !t.is_finished());
    }
    tasks.len() < cap
}

/// Fills the hash of each of `events` whose executable the hasher's cache
/// already holds, on the calling thread: one `lstat` per distinct path, no
/// task, no hand-off. For the threads that read `/proc` (blocking already),
/// before the events reach the tracker, so that its copy (an exit's source)
/// carries the hash too. What the cache does not know is left to
/// [`Run::annotate_hash`].
fn hashes_from_cache<'a>(
    engine: &HashEngine,
    events: impl IntoIterator<Item = &'a mut ProcessEvent>,
) {
    let mut known: HashMap<String, Option<(HashAlgorithm, String)>> = HashMap::new();
    for e in events {
        if e.executable_hash.is_some() || !e.file_exists {
            continue;
        }
        let Some(path) = &e.executable_path else {
            continue;
        };
        let hash = match known.get(path) {
            Some(hash) => hash.clone(),
            None => {
                let hash = engine
                    .cached(Path::new(path))
                    .and_then(|o| event_hash(engine, &o));
                known.insert(path.clone(), hash.clone());
                hash
            }
        };
        set_hash(e, hash);
    }
}

/// The digest an event carries from `outcome`: the first configured
/// algorithm's, unless the file changed while it was read.
fn event_hash(engine: &HashEngine, outcome: &HashOutcome) -> Option<(HashAlgorithm, String)> {
    let algorithm = engine.algorithms().first().copied()?;
    if outcome.changed_during_hash {
        return None;
    }
    outcome
        .digest(algorithm)
        .map(|hex| (algorithm, hex.to_owned()))
}

/// Gives `e` the digest `hash`, if any.
fn set_hash(e: &mut ProcessEvent, hash: Option<(HashAlgorithm, String)>) {
    if let Some((algorithm, hex)) = hash {
        e.executable_hash = Some(hex);
        e.hash_algorithm = Some(algorithm);
    }
}

/// State of one `start` run.
struct Run<'a> {
    collector: &'a ProcmondMonitorCollector,
    tx: mpsc::Sender<CollectionEvent>,
    tracker: LifecycleTracker,
    cache: Option<SnapshotCache>,
    /// Hashes being computed, by executable path.
    hashing: HashMap<String, JoinHandle<Result<HashOutcome, HashError>>>,
}

/// Every how many snapshot passes the processes that did not change are
/// sent again (the first pass sends all): a consumer that joined late, or
/// lost a batch, is whole again within this many intervals (5 minutes at
/// the default 30 s). In between, a pass sends only what changed: on a
/// host of 3,000 sleeping processes that was 3,000 events every 30 s,
/// decoded, judged and stored by the agent for nothing.
pub const FULL_PASS_EVERY: u64 = 10;

impl Run<'_> {
    /// Fills `executable_hash` when the hasher knows (or quickly learns)
    /// the file; starts hashing it in the background otherwise.
    async fn annotate_hash(&mut self, e: &mut ProcessEvent) {
        let Some(engine) = &self.collector.hasher else {
            return;
        };
        if e.executable_hash.is_some() {
            // From the cache, on the thread that read the process (or the
            // tracker's copy of that read, for an exit): nothing to do here.
            return;
        }
        let Some(path) = e.executable_path.as_ref().filter(|_| e.file_exists) else {
            return;
        };
        if !self.hashing.contains_key(path) && !make_room(&mut self.hashing, MAX_HASHES_IN_FLIGHT) {
            // Many new executables at once (a hostile user's hardlinks):
            // the event goes on without its hash, counted, rather than
            // the collector opening files without bound.
            self.collector.counters.hash_skipped();
            return;
        }
        let handle = match self.hashing.entry(path.clone()) {
            // Being hashed: events never wait behind a long first hash.
            Entry::Occupied(o) if !o.get().is_finished() => return,
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let (engine, path) = (engine.clone(), PathBuf::from(path));
                v.insert(tokio::spawn(async move { engine.hash_file(&path).await }))
            }
        };
        // A cache hit answers within microseconds; a first hash runs on.
        let Ok(joined) = tokio::time::timeout(HASH_WAIT, &mut *handle).await else {
            return;
        };
        self.hashing.remove(path);
        if let Ok(Err(HashError::Busy { .. })) = joined {
            // The hasher's readers and queue were full (its own bound).
            self.collector.counters.hash_skipped();
        }
        if let Ok(Ok(outcome)) = joined {
            set_hash(e, event_hash(engine, &outcome));
        }
    }

    /// Sends events to the runtime; false once the runtime is gone.
    async fn emit(&mut self, mut events: Vec<ProcessEvent>) -> bool {
        let n = events.len();
        for e in &mut events {
            self.annotate_hash(e).await;
        }
        // Without a database there is nothing to store: no copy per event.
        let to_store: Vec<ProcessEvent> = match &self.collector.database {
            Some(_) => events
                .iter()
                .filter(|e| e.event_type != ProcessEventType::Snapshot)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        for e in events {
            if self.tx.send(CollectionEvent::Process(e)).await.is_err() {
                return false;
            }
        }
        self.collector.counters.emitted.add_usize(n);
        if let Some(writer) = &self.collector.database {
            writer.events(to_store).await;
        }
        true
    }

    /// A full pass over `/proc`, reconciled.
    async fn snapshot(&mut self) -> anyhow::Result<bool> {
        let reader = self.collector.reader.clone();
        let max = self.collector.config.process_config.max_processes;
        let mut cache = self.cache.take().unwrap_or_default();
        let hasher = self.collector.hasher.clone();
        let (result, cache) = tokio::task::spawn_blocking(move || {
            let mut r = reader.snapshot_cached(max, &mut cache);
            if let (Ok(snap), Some(engine)) = (&mut r, &hasher) {
                hashes_from_cache(engine, &mut snap.processes);
            }
            (r, cache)
        })
        .await
        .context("snapshot task")?;
        self.cache = Some(cache);
        let snap = match result {
            Ok(s) => {
                self.collector.counters.snapshots.record(&s.stats);
                s
            }
            Err(e) => {
                self.collector.counters.cycle_errors.inc();
                warn!(error = %e, "snapshot failed");
                return Ok(true);
            }
        };
        self.collector.counters.cycles.inc();
        debug!(
            processes = snap.stats.processes,
            vanished = snap.stats.vanished,
            "snapshot"
        );
        let pass = self.tracker.snapshot_pass(snap.processes, snap.taken_at);
        if let Some(writer) = &self.collector.database {
            // The database keeps whole snapshots.
            writer.snapshot(pass.processes.clone()).await;
        }
        // The consumer has seen an unchanged process already: it is sent
        // again only on every `FULL_PASS_EVERY`th pass (the first included).
        let full = self.tracker.passes().saturating_sub(1) % FULL_PASS_EVERY == 0;
        let mut events = Vec::with_capacity(pass.processes.len() + pass.lifecycle.len());
        let mut skipped = 0;
        for (p, unchanged) in pass.processes.into_iter().zip(pass.unchanged) {
            if unchanged && !full {
                skipped += 1;
            } else {
                events.push(p);
            }
        }
        self.collector.counters.snapshot_unchanged.add(skipped);
        // Lifecycle events a snapshot found were seen by polling (the
        // snapshot rows themselves are polling by definition, and stay
        // without a detail).
        events.extend(pass.lifecycle.into_iter().map(|mut e| {
            e.lifecycle_mut().tier = Some(CaptureTier::Polling);
            e
        }));
        let sent = self.emit(events).await;
        // A pass allocates a copy of every process and frees it; glibc keeps
        // the freed pages (6 of procmond's 15 MB anonymous memory with 3,000
        // processes) unless handed back.
        collector_core::sys::release_free_memory();
        Ok(sent)
    }

    /// One kernel event, enriched from `/proc` where needed.
    fn on_kernel_event(
        &mut self,
        event: &ProcEvent,
        read: Option<ProcessEvent>,
    ) -> Vec<ProcessEvent> {
        match event {
            ProcEvent::Fork {
                meta,
                parent,
                child,
            } if child.is_main_thread() => {
                let mut e = read.unwrap_or_else(|| {
                    read_or_mark(
                        &self.collector.quick,
                        &self.collector.counters,
                        child.tgid,
                        meta.timestamp_ns,
                    )
                });
                if e.ppid.is_none() {
                    e.ppid = Some(parent.tgid);
                }
                self.tracker.on_fork(e)
            }
            ProcEvent::Exec { meta, process } => {
                let e = read.unwrap_or_else(|| {
                    read_or_mark(
                        &self.collector.quick,
                        &self.collector.counters,
                        process.tgid,
                        meta.timestamp_ns,
                    )
                });
                self.tracker.on_exec(e)
            }
            ProcEvent::Exit {
                meta,
                process,
                exit_code,
                ..
            } if process.is_main_thread() => {
                let code = i32::try_from(*exit_code).unwrap_or(i32::MAX);
                self.tracker
                    .on_exit(process.tgid, code, wall_time(meta.timestamp_ns))
            }
            ProcEvent::Uid {
                meta,
                process,
                ruid,
                ..
            } if process.is_main_thread() => self.tracker.on_change(
                process.tgid,
                Some(*ruid),
                None,
                wall_time(meta.timestamp_ns),
            ),
            ProcEvent::Comm {
                meta,
                process,
                comm,
            } if process.is_main_thread() => self.tracker.on_change(
                process.tgid,
                None,
                Some(comm.clone()),
                wall_time(meta.timestamp_ns),
            ),
            _ => Vec::new(),
        }
    }
}

/// Reads a process now; when it is already gone (common for short-lived
/// processes) the event says so and carries only the pid.
fn read_or_mark(
    reader: &ProcReader,
    counters: &Counters,
    pid: u32,
    timestamp_ns: u64,
) -> ProcessEvent {
    read_with(reader, counters, pid, timestamp_ns, false)
}

fn read_with(
    reader: &ProcReader,
    counters: &Counters,
    pid: u32,
    timestamp_ns: u64,
    stat_only: bool,
) -> ProcessEvent {
    let at = wall_time(timestamp_ns);
    let read = if stat_only {
        reader.read_stat_only(pid)
    } else {
        reader.read_process(pid)
    };
    match read {
        Ok(mut e) => {
            e.timestamp = at;
            e
        }
        Err(err) => {
            counters.enrich_failed.inc();
            let mut e = ProcessEvent::new(pid, "");
            e.accessible = false;
            e.timestamp = at;
            e.read = match err {
                ReadError::Vanished { .. } => ReadDepth::Vanished,
                ReadError::PermissionDenied { .. } => ReadDepth::PermissionDenied,
                _ => ReadDepth::Failed,
            };
            e
        }
    }
}

/// The process a kernel event asks us to read from `/proc`, if any, and
/// whether its `stat` is enough (a fork: the child usually execs at once).
fn pid_to_read(event: &ProcEvent) -> Option<(u32, u64, bool)> {
    match event {
        ProcEvent::Fork { meta, child, .. } if child.is_main_thread() => {
            Some((child.tgid, meta.timestamp_ns, true))
        }
        ProcEvent::Exec { meta, process } => Some((process.tgid, meta.timestamp_ns, false)),
        _ => None,
    }
}

/// What a kernel tier's reader hands the enrichment thread: the connector's
/// messages or the eBPF reader's, as one stream of events (an exec from eBPF
/// with its record) and overruns.
enum KernelRx {
    Connector(mpsc::Receiver<ConnectorMessage>),
    Ebpf(mpsc::Receiver<EbpfMessage>),
}

/// One message of either tier.
enum KernelItem {
    Events(Vec<(ProcEvent, Option<Known>)>),
    Overrun,
}

/// What the eBPF tier's record already says of an event's process, so that
/// `/proc` is not read for it.
enum Known {
    /// An exec: argv and executable as the kernel had them.
    Exec(Box<ExecRecord>),
    /// A fork's child: what its `stat` line would say.
    Fork(TaskRecord),
}

impl From<ConnectorMessage> for KernelItem {
    fn from(m: ConnectorMessage) -> Self {
        match m {
            ConnectorMessage::Events(e) => Self::Events(e.into_iter().map(|e| (e, None)).collect()),
            _ => Self::Overrun,
        }
    }
}

impl From<EbpfMessage> for KernelItem {
    fn from(m: EbpfMessage) -> Self {
        match m {
            EbpfMessage::Events(records) => Self::Events(
                records
                    .into_iter()
                    .map(|r| {
                        let event = r.to_proc_event();
                        match r {
                            Record::Exec(exec) => (event, Some(Known::Exec(exec))),
                            Record::Fork(child) => (event, Some(Known::Fork(child))),
                            Record::Exit(_) => (event, None),
                        }
                    })
                    .collect(),
            ),
            _ => Self::Overrun,
        }
    }
}

impl KernelRx {
    fn blocking_recv(&mut self) -> Option<KernelItem> {
        match self {
            Self::Connector(rx) => rx.blocking_recv().map(KernelItem::from),
            Self::Ebpf(rx) => rx.blocking_recv().map(KernelItem::from),
        }
    }

    fn try_recv(&mut self) -> Option<KernelItem> {
        match self {
            Self::Connector(rx) => rx.try_recv().ok().map(KernelItem::from),
            Self::Ebpf(rx) => rx.try_recv().ok().map(KernelItem::from),
        }
    }
}

impl Known {
    /// The process event the record makes.
    fn to_process_event(&self, reader: &ProcReader) -> ProcessEvent {
        match self {
            Self::Exec(r) => r.to_process_event(reader),
            Self::Fork(child) => child.to_fork_event(reader),
        }
    }
}

/// Kernel events with what `/proc` said of their process at once.
enum Enriched {
    Events(Vec<(ProcEvent, Option<ProcessEvent>)>),
    Overrun,
}

/// The enrichment thread: reads `/proc` for each fork and exec the moment
/// the kernel reports it (a short-lived process is gone within a
/// millisecond), so the connector's reader stays a pure reader and the async
/// side never waits on `/proc`. Ends when the reader ends or the collector
/// stops listening.
struct Enricher {
    from_kernel: KernelRx,
    to_collector: mpsc::Sender<Enriched>,
    reader: ProcReader,
    counters: Arc<Counters>,
    /// For the hashes its cache already holds.
    hasher: Option<HashEngine>,
}

impl Enricher {
    fn run(mut self) {
        let Self {
            from_kernel,
            to_collector,
            reader,
            counters,
            hasher,
        } = &mut self;
        while let Some(first) = from_kernel.blocking_recv() {
            // Everything already queued, in order: execs are read first, since
            // their process may be gone within a millisecond.
            let mut items = Vec::new();
            let mut overrun = false;
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    KernelItem::Events(e) => items.extend(e),
                    KernelItem::Overrun => overrun = true,
                }
                next = from_kernel.try_recv();
            }
            // A fork or exec the eBPF tier saw is what the kernel said: from
            // its record, not from /proc.
            let mut reads: Vec<Option<ProcessEvent>> = Vec::with_capacity(items.len());
            let mut events = Vec::with_capacity(items.len());
            for (event, known) in items {
                reads.push(known.map(|k| k.to_process_event(reader)));
                events.push(event);
            }
            for pass_stat_only in [false, true] {
                for (i, e) in events.iter().enumerate() {
                    if reads[i].is_some() {
                        continue;
                    }
                    if let Some((pid, ts, stat_only)) = pid_to_read(e) {
                        if stat_only == pass_stat_only {
                            reads[i] = Some(read_with(reader, counters, pid, ts, stat_only));
                        }
                    }
                }
            }
            // After every read: a process may be gone within a millisecond,
            // its executable's file is not.
            if let Some(engine) = hasher {
                hashes_from_cache(engine, reads.iter_mut().flatten());
            }
            let batch = Enriched::Events(events.into_iter().zip(reads).collect());
            if to_collector.blocking_send(batch).is_err() {
                return;
            }
            if overrun && to_collector.blocking_send(Enriched::Overrun).is_err() {
                return;
            }
        }
    }
}

#[async_trait]
impl EventSource for ProcmondMonitorCollector {
    fn name(&self) -> &'static str {
        "procmond"
    }

    fn capabilities(&self) -> SourceCaps {
        let caps = SourceCaps::PROCESS | SourceCaps::SYSTEM_WIDE;
        if self.config.base_config.enable_event_driven {
            caps | SourceCaps::REALTIME | SourceCaps::KERNEL_LEVEL
        } else {
            caps
        }
    }

    async fn start(
        &self,
        tx: mpsc::Sender<CollectionEvent>,
        shutdown: Arc<AtomicBool>,
    ) -> anyhow::Result<()> {
        self.start_with(SourceContext::from_flag(self.name(), tx, shutdown))
            .await
    }

    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        let base = &self.config.base_config;
        let (mut reader, mut erx) = match self.open_realtime()? {
            Some((handle, rx)) => (Some(handle), rx),
            None => (None, mpsc::channel(1).1),
        };
        // The tier every kernel event of this run is tagged with.
        let kernel_tier = self.stats_handle().tier().unwrap_or(CaptureTier::Polling);

        let mut run = Run {
            collector: self,
            tx: ctx.out().clone(),
            tracker: LifecycleTracker::new(
                self.config.lifecycle_config.clone(),
                self.reader.ticks_per_sec(),
            )
            .with_counters(self.counters.lifecycle.clone()),
            cache: None,
            hashing: HashMap::new(),
        };
        let mut every = tokio::time::interval(base.collection_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Shutdown is awaited: the runtime's token, or `stop()`.
        let shutdown = ctx.shutdown();
        loop {
            let alive = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.stop.cancelled() => break,
                msg = erx.recv(), if reader.is_some() => match msg {
                    Some(first) => {
                        // Take what else is queued before yielding to the runtime.
                        let mut out = Vec::new();
                        let mut overrun = false;
                        let mut next = Some(first);
                        while let Some(msg) = next {
                            match msg {
                                Enriched::Events(events) => {
                                    for (e, read) in events {
                                        for mut event in run.on_kernel_event(&e, read) {
                                            event.lifecycle_mut().tier = Some(kernel_tier);
                                            out.push(event);
                                        }
                                    }
                                }
                                Enriched::Overrun => overrun = true,
                            }
                            next = erx.try_recv().ok();
                        }
                        let alive = run.emit(out).await;
                        if alive && overrun {
                            self.counters.overruns.inc();
                            warn!("the kernel dropped process events (socket buffer overrun); reconciling now");
                            run.snapshot().await?
                        } else {
                            alive
                        }
                    }
                    None => {
                        warn!("kernel event reader ended; falling back to snapshots");
                        self.counters.realtime.set_bool(false);
                        self.set_tier(CaptureTier::Polling);
                        if let Some(h) = reader.take() {
                            if let Err(err) = tokio::task::spawn_blocking(move || h.join()).await? {
                                warn!(error = %err, "kernel event reader failed");
                            }
                        }
                        true
                    }
                },
                _ = every.tick() => run.snapshot().await?,
            };
            if !alive {
                break;
            }
        }
        if let Some(h) = reader.take() {
            if let Err(err) = tokio::task::spawn_blocking(move || h.stop()).await? {
                warn!(error = %err, "kernel event reader ended with an error");
            }
        }
        self.counters.realtime.set_bool(false);
        // What this run produced is committed before it returns.
        if let Some(writer) = &self.database {
            if writer.flush().await.is_err() {
                warn!("the audit database writer had closed");
            }
        }
        Ok(())
    }

    async fn stop(&self) -> anyhow::Result<()> {
        self.stop.cancel();
        Ok(())
    }

    async fn health_check(&self) -> anyhow::Result<()> {
        if let Some(writer) = &self.database {
            let s = writer.stats();
            let (lost, dropped) = (s.failures.get(), s.events_dropped());
            anyhow::ensure!(
                lost == 0 && dropped == 0,
                "audit database: {lost} writes lost, {dropped} events dropped"
            );
            anyhow::ensure!(
                s.failing.get() == 0,
                "audit database failing: {} events and writes held until it takes them",
                s.held.get()
            );
        }
        let (skipped, last) = self.stats_handle().hashes_skipped();
        if let Some(ago) = last.and_then(|t| t.elapsed().ok()) {
            anyhow::ensure!(
                ago >= HASH_SKIPS_DEGRADE_FOR,
                "executable hashing saturated: {skipped} exec events went without a hash, \
                 the latest {}s ago",
                ago.as_secs()
            );
        }
        Ok(())
    }
}

impl MonitorCollector for ProcmondMonitorCollector {
    fn monitor_stats(&self) -> MonitorCollectorStats {
        self.stats_handle().monitor_stats()
    }
}

impl ProcmondMonitorCollector {
    /// Execs and forks whose process was gone before `/proc` could be read.
    pub fn enrich_failures(&self) -> u64 {
        self.counters.enrich_failed.get()
    }

    /// Uses `tier`, loaded and attached already (while the capabilities
    /// loading needs were held; see [`crate::privileges`]), instead of
    /// loading the programs when the collector starts on the eBPF tier.
    #[must_use]
    pub fn with_ebpf_tier(self, tier: EbpfTier) -> Self {
        if let Ok(mut slot) = self.preloaded.lock() {
            *slot = Some(tier);
        }
        self
    }

    fn set_tier(&self, tier: CaptureTier) {
        self.counters.tiers.set(tier);
    }

    /// Opens the best kernel tier allowed ([`ProcessCollectionConfig::tier`])
    /// and starts its reader and the enrichment thread; `None` (said once, in
    /// the log) when none is wanted or available. A forced tier that cannot
    /// be opened is an error.
    fn open_realtime(&self) -> anyhow::Result<Option<(RealtimeReader, mpsc::Receiver<Enriched>)>> {
        let base = &self.config.base_config;
        let choice = self.config.process_config.tier;
        if !base.enable_event_driven || choice == TierChoice::Polling {
            self.set_tier(CaptureTier::Polling);
            return Ok(None);
        }
        if matches!(choice, TierChoice::Auto | TierChoice::Ebpf) {
            match self.open_ebpf() {
                Ok(opened) => return Ok(Some(opened)),
                Err(err) if choice == TierChoice::Ebpf => {
                    return Err(anyhow::Error::new(err).context("the eBPF tier was asked for"));
                }
                Err(err) => warn!(
                    error = %err,
                    "eBPF tier unavailable: falling back to the process connector \
                     (exec argv and executable read from /proc, losses not counted exactly)"
                ),
            }
        }
        let (ktx, krx) = mpsc::channel(base.max_events_in_flight);
        let opened = ProcConnector::open(&self.config.process_config.connector).and_then(|c| {
            let granted = c.recv_buffer();
            c.spawn_reader_counted(ktx, self.counters.reader.clone())
                .map(|h| (h, granted))
        });
        match opened {
            Ok((handle, granted)) => {
                info!(
                    granted_bytes = granted.granted_bytes,
                    forced = granted.forced,
                    "capture tier: process connector"
                );
                let erx = self.start_enricher(KernelRx::Connector(krx), CaptureTier::Connector)?;
                Ok(Some((RealtimeReader::Connector(handle), erx)))
            }
            Err(err) if choice == TierChoice::Connector => {
                Err(anyhow::Error::new(err).context("the connector tier was asked for"))
            }
            Err(ConnectorError::PermissionDenied { .. }) => {
                warn!(
                    interval = ?base.collection_interval,
                    "no privilege for the kernel process connector (needs root or CAP_NET_ADMIN): \
                     falling back to snapshots; processes shorter than the interval will be missed"
                );
                self.set_tier(CaptureTier::Polling);
                Ok(None)
            }
            Err(err) => {
                warn!(error = %err, "process connector unavailable: falling back to snapshots");
                self.set_tier(CaptureTier::Polling);
                Ok(None)
            }
        }
    }

    /// Loads the eBPF programs and starts their reader.
    fn open_ebpf(&self) -> Result<(RealtimeReader, mpsc::Receiver<Enriched>), EbpfError> {
        let base = &self.config.base_config;
        let preloaded = self.preloaded.lock().ok().and_then(|mut slot| slot.take());
        let tier = match preloaded {
            Some(tier) => tier,
            None => EbpfTier::load(&self.config.process_config.ebpf)?,
        };
        let (ktx, krx) = mpsc::channel(base.max_events_in_flight);
        let handle = tier.spawn_reader(ktx, self.counters.ebpf.clone())?;
        info!(
            ring_buffer_bytes = self.config.process_config.ebpf.ring_buffer_bytes,
            "capture tier: eBPF"
        );
        let erx = self
            .start_enricher(KernelRx::Ebpf(krx), CaptureTier::Ebpf)
            .map_err(EbpfError::spawn)?;
        Ok((RealtimeReader::Ebpf(handle), erx))
    }

    /// Starts the enrichment thread between a tier's reader and the collector.
    fn start_enricher(
        &self,
        from_kernel: KernelRx,
        tier: CaptureTier,
    ) -> std::io::Result<mpsc::Receiver<Enriched>> {
        let (etx, erx) = mpsc::channel(self.config.base_config.max_events_in_flight);
        let enricher = Enricher {
            from_kernel,
            to_collector: etx,
            reader: self.quick.clone(),
            counters: self.counters.clone(),
            hasher: self.hasher.clone(),
        };
        std::thread::Builder::new()
            .name("procmond-enrich".into())
            .spawn(move || enricher.run())?;
        self.counters.realtime.set_bool(true);
        self.set_tier(tier);
        Ok(erx)
    }

    /// A handle that reads this collector's counters after it has been
    /// handed to the runtime.
    pub fn stats_handle(&self) -> ProcmondStatsHandle {
        ProcmondStatsHandle(self.counters.clone())
    }

    /// Registers every counter of this collector in `registry`: its own
    /// ([`ProcmondStatsHandle::register_metrics`]), its hasher's and its
    /// audit database writer's (`stage="store"`). Call it once per
    /// registry, before or after handing it to the runtime.
    pub fn register_metrics(&self, registry: &Registry) {
        self.stats_handle().register_metrics(registry);
        if let Some(hasher) = &self.hasher {
            hasher.register_metrics(registry);
        }
        if let Some(writer) = &self.database {
            writer.stats().register_metrics(registry);
        }
    }
}

/// The running reader of the kernel tier in use.
enum RealtimeReader {
    Connector(ReaderHandle),
    Ebpf(EbpfReaderHandle),
}

impl RealtimeReader {
    /// Waits for a reader that ended on its own.
    fn join(self) -> anyhow::Result<()> {
        match self {
            Self::Connector(h) => h.join().map(|_| ()).map_err(Into::into),
            Self::Ebpf(h) => h.join().map(|_| ()).map_err(Into::into),
        }
    }

    /// Stops the reader; the eBPF one detaches its programs and balances
    /// its accounting first.
    fn stop(self) -> anyhow::Result<()> {
        match self {
            Self::Connector(h) => {
                let stats = h.stop()?;
                debug!(?stats, "process connector stopped");
            }
            Self::Ebpf(h) => {
                let books = h.stop()?;
                debug!(?books, "eBPF tier stopped");
            }
        }
        Ok(())
    }
}

/// Reads a [`ProcmondMonitorCollector`]'s counters from anywhere.
#[derive(Debug, Clone)]
pub struct ProcmondStatsHandle(Arc<Counters>);

impl ProcmondStatsHandle {
    /// The monitor's counters.
    pub fn monitor_stats(&self) -> MonitorCollectorStats {
        let c = &self.0;
        MonitorCollectorStats::new(
            c.cycles.get(),
            c.cycle_errors.get(),
            c.emitted.get(),
            c.overruns.get(),
            c.realtime.get_bool(),
        )
    }

    /// Execs and forks whose process was gone before `/proc` could be read.
    pub fn enrich_failures(&self) -> u64 {
        self.0.enrich_failed.get()
    }

    /// Exec events that went without their executable's hash because
    /// hashing was saturated (`MAX_HASHES_IN_FLIGHT`, or the hasher's own
    /// queue), and when the latest did.
    pub fn hashes_skipped(&self) -> (u64, Option<SystemTime>) {
        let at = u64::try_from(self.0.hashes_skipped_at.get()).unwrap_or(0);
        let last = (at > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(at));
        (self.0.hashes_skipped.get(), last)
    }

    /// The tier of kernel events in use; `None` before the collector starts.
    pub fn tier(&self) -> Option<CaptureTier> {
        self.0.tiers.get()
    }

    /// The eBPF tier's accounting: what the kernel produced, what reached
    /// the reader, what the ring buffer dropped (all zero on other tiers).
    pub fn kernel_accounting(&self) -> KernelAccounting {
        self.0.ebpf.accounting()
    }

    /// What every snapshot so far met, added up.
    pub fn snapshot_totals(&self) -> crate::snapshot::SnapshotStats {
        self.0.snapshots.totals()
    }

    /// Registers the monitor's counters (label `source="procmond"`), the
    /// kernel connector reader's (stage `connector`), the lifecycle
    /// tracker's (stage `lifecycle`) and the snapshots' (stage `snapshot`)
    /// in `registry`. The hasher's are apart
    /// ([`ProcmondMonitorCollector::register_metrics`]).
    pub fn register_metrics(&self, registry: &Registry) {
        let c = &self.0;
        let source = [("source", "procmond")];
        registry.register_counters(
            &source,
            &[
                (
                    "daemoneye_collection_cycles_total",
                    "Full collections (snapshots) completed.",
                    &c.cycles,
                ),
                (
                    "daemoneye_collections_failed_total",
                    "Full collections (snapshots) that failed.",
                    &c.cycle_errors,
                ),
                (
                    "daemoneye_events_emitted_total",
                    "Events a source sent to the runtime.",
                    &c.emitted,
                ),
                (
                    "daemoneye_snapshot_rows_unchanged_total",
                    "Snapshot rows not sent again: the process had not changed since it was sent.",
                    &c.snapshot_unchanged,
                ),
                (
                    "daemoneye_kernel_overruns_handled_total",
                    "Kernel event losses answered with a reconciliation snapshot.",
                    &c.overruns,
                ),
                (
                    "daemoneye_enrichments_failed_total",
                    "Execs and forks whose process was gone before /proc could be read.",
                    &c.enrich_failed,
                ),
                (
                    "daemoneye_hashes_skipped_total",
                    "Events left without a hash because hashing was saturated (MAX_HASHES_IN_FLIGHT, or the hasher's queue).",
                    &c.hashes_skipped,
                ),
            ],
        );
        registry.register_gauge(
            "daemoneye_realtime_active",
            "1 while real-time kernel events are flowing.",
            &source,
            &c.realtime,
        );
        c.tiers.register(registry, "procmond");
        c.reader.register(registry);
        c.ebpf.register(registry);
        c.lifecycle.register(registry);
        c.snapshots.register(registry);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A run of `collector` as `start` begins one, sending to `tx`.
    fn fresh_run(
        collector: &ProcmondMonitorCollector,
        tx: mpsc::Sender<CollectionEvent>,
    ) -> Run<'_> {
        Run {
            collector,
            tx,
            tracker: LifecycleTracker::new(
                collector.config.lifecycle_config.clone(),
                collector.reader.ticks_per_sec(),
            ),
            cache: None,
            hashing: HashMap::new(),
        }
    }

    /// What the enrichment thread makes of the one event queued in
    /// `from_kernel`, whose sender is gone.
    async fn enriched(
        collector: &ProcmondMonitorCollector,
        from_kernel: KernelRx,
        hasher: Option<HashEngine>,
    ) -> (ProcEvent, Option<ProcessEvent>) {
        let (etx, mut erx) = mpsc::channel(1);
        let enricher = Enricher {
            from_kernel,
            to_collector: etx,
            reader: collector.quick.clone(),
            counters: collector.counters.clone(),
            hasher,
        };
        let thread = std::thread::spawn(move || enricher.run());
        let Some(Enriched::Events(mut events)) = erx.recv().await else {
            panic!("no events from the enrichment thread");
        };
        thread.join().unwrap();
        events.pop().unwrap()
    }

    #[tokio::test]
    async fn hashes_in_flight_are_bounded_and_finished_ones_make_room() {
        let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
        let (release, wait) = tokio::sync::watch::channel(false);
        for i in 0..3 {
            assert!(make_room(&mut tasks, 3));
            let mut wait = wait.clone();
            tasks.insert(
                format!("/bin/{i}"),
                tokio::spawn(async move {
                    let _ = wait.wait_for(|go| *go).await;
                }),
            );
        }
        // Full of running hashes: no room, nothing forgotten.
        assert!(!make_room(&mut tasks, 3));
        assert_eq!(tasks.len(), 3);
        // Once they finish, the next one finds room.
        release.send_replace(true);
        for t in tasks.values_mut() {
            t.await.unwrap();
        }
        assert!(make_room(&mut tasks, 3));
        assert!(tasks.is_empty());
    }

    /// Snapshot passes over the real `/proc` send a sleeping process on
    /// the first two passes (the second gives it a CPU usage), then not
    /// until the next full pass; a process that used CPU between two passes
    /// is sent each time. The skipped rows are counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_sends_again_only_what_changed_and_everything_every_full_pass() {
        /// Killed however the test ends.
        struct Sleeper(std::process::Child);
        impl Drop for Sleeper {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let sleeper = Sleeper(
            std::process::Command::new("sleep")
                .arg("1000")
                .spawn()
                .unwrap(),
        );
        let child = sleeper.0.id();
        let me = std::process::id();
        let mut config = ProcmondMonitorConfig::default();
        config.process_config.compute_executable_hashes = false;
        let collector = ProcmondMonitorCollector::without_database(config).unwrap();
        let (tx, mut rx) = mpsc::channel(1_000_000);
        let mut run = fresh_run(&collector, tx);
        // Until this process's CPU ticks move: it changed since the pass.
        let burn = || {
            let ticks = || {
                let stat = std::fs::read("/proc/self/stat").unwrap();
                let s = crate::procfs::parse_stat(&stat).unwrap();
                s.utime + s.stime
            };
            let before = ticks();
            while ticks() == before {
                std::hint::black_box((0..10_000u64).sum::<u64>());
            }
        };
        // The sleeper is in /proc once its exec is: wait for its argv.
        while std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default()
            != b"sleep\x001000\x00"
        {
            tokio::task::yield_now().await;
        }
        for n in 1..=FULL_PASS_EVERY + 1 {
            burn();
            assert!(run.snapshot().await.unwrap());
            let mut sent = std::collections::HashSet::new();
            while let Ok(CollectionEvent::Process(e)) = rx.try_recv() {
                if e.event_type == ProcessEventType::Snapshot {
                    sent.insert(e.pid);
                }
            }
            assert!(
                sent.contains(&me),
                "pass {n}: the busy test process not sent"
            );
            let full = n == 1 || n == FULL_PASS_EVERY + 1;
            assert_eq!(
                sent.contains(&child),
                full || n == 2,
                "pass {n}: the sleeper sent or not"
            );
        }
        assert!(collector.counters.snapshot_unchanged.get() >= FULL_PASS_EVERY - 2);
        drop(sleeper);
    }

    /// The hardlink storm through the exec path: 1,100 exec events, each
    /// of another hardlink of one binary. The map of hashes in flight stays
    /// within `MAX_HASHES_IN_FLIGHT`, the hasher reads the file once with at
    /// most its readers' files open, and a later exec gets its hash.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hardlink_storm_keeps_the_exec_path_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("tool");
        std::fs::write(&original, vec![7u8; 4 << 20]).unwrap();
        let links: Vec<String> = (0..1_100)
            .map(|i| {
                let link = dir.path().join(format!("link{i:04}"));
                std::fs::hard_link(&original, &link).unwrap();
                link.to_string_lossy().into_owned()
            })
            .collect();
        let collector =
            ProcmondMonitorCollector::without_database(ProcmondMonitorConfig::default()).unwrap();
        let (tx, _rx) = mpsc::channel(1);
        let mut run = fresh_run(&collector, tx);
        let exec = |path: &str| ProcessEvent {
            event_type: ProcessEventType::Start,
            executable_path: Some(path.to_owned()),
            ..ProcessEvent::new(1, "tool")
        };
        let mut most = 0;
        for link in &links {
            run.annotate_hash(&mut exec(link)).await;
            most = most.max(run.hashing.len());
        }
        assert!(most <= MAX_HASHES_IN_FLIGHT, "{most} hashes in flight");
        for (_, task) in run.hashing.drain() {
            let _ = task.await.unwrap();
        }
        let engine = collector.hasher.as_ref().unwrap();
        let s = engine.stats();
        assert_eq!(s.files_hashed, 1, "{s:?}");
        assert!(
            s.files_open_peak <= daemoneye_hasher::config::DEFAULT_MAX_CONCURRENT_HASHES as u64,
            "{s:?}"
        );
        assert_eq!(s.files_open, 0);
        let mut later = exec(&links[7]);
        run.annotate_hash(&mut later).await;
        if later.executable_hash.is_none() {
            // Slower than HASH_WAIT on a loaded machine: then it is a cache
            // hit still running, and the next event of it carries the hash.
            let out = run.hashing.remove(&links[7]).unwrap().await.unwrap();
            assert!(out.unwrap().from_cache);
        } else {
            assert_eq!(later.executable_hash.as_ref().map(String::len), Some(64));
        }
    }

    /// An exec of an executable the hasher's cache holds leaves the
    /// enrichment thread hashed, and the exit the tracker makes of it
    /// carries the hash too: `annotate_hash` then starts no task and asks
    /// the hasher nothing (a lookup would count a hit or a miss).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_known_executable_is_hashed_where_the_exec_is_read() {
        use crate::connector::{EventMeta, ProcId};
        let collector =
            ProcmondMonitorCollector::without_database(ProcmondMonitorConfig::default()).unwrap();
        let engine = collector.hasher.clone().unwrap();
        let algorithm = engine.algorithms()[0];
        let hashed = engine
            .hash_file(&std::env::current_exe().unwrap())
            .await
            .unwrap();
        let pid = std::process::id();
        let exec = ProcEvent::Exec {
            meta: EventMeta {
                cpu: 0,
                timestamp_ns: 0,
                seq: 0,
            },
            process: ProcId { pid, tgid: pid },
        };
        let (ktx, krx) = mpsc::channel(1);
        ktx.try_send(ConnectorMessage::Events(vec![exec])).unwrap();
        drop(ktx);
        let (exec, read) = enriched(
            &collector,
            KernelRx::Connector(krx),
            collector.hasher.clone(),
        )
        .await;
        let read = read.unwrap();
        assert_eq!(read.executable_hash.as_deref(), hashed.digest(algorithm));
        assert_eq!(read.hash_algorithm, Some(algorithm));

        let before = engine.stats();
        let (tx, _rx) = mpsc::channel(1);
        let mut run = fresh_run(&collector, tx);
        let mut out = run.on_kernel_event(&exec, Some(read));
        out.extend(run.tracker.on_exit(pid, 0, SystemTime::now()));
        let types: Vec<_> = out.iter().map(|e| e.event_type).collect();
        assert!(types.contains(&ProcessEventType::Exit), "{types:?}");
        for e in &mut out {
            run.annotate_hash(e).await;
            assert_eq!(e.executable_hash.as_deref(), hashed.digest(algorithm));
        }
        assert!(run.hashing.is_empty());
        let after = engine.stats();
        assert_eq!(
            (after.cache_hits, after.cache_misses),
            (before.cache_hits, before.cache_misses)
        );
    }

    /// A fork the eBPF tier saw is made from its record: `/proc` is not
    /// read (the child here never existed, so a read would say vanished).
    #[tokio::test]
    async fn an_ebpf_fork_is_not_read_from_proc() {
        let collector =
            ProcmondMonitorCollector::without_database(ProcmondMonitorConfig::default()).unwrap();
        // Above the kernel's pid_max (4,194,304 at most): no such process.
        let child = TaskRecord {
            pid: 5_000_000,
            tgid: 5_000_000,
            ppid: std::process::id(),
            uid: 1000,
            euid: 1000,
            gid: 100,
            egid: 100,
            exit_code: 0,
            timestamp_ns: 1,
            start_ns: 7_000_000_000,
            comm: "worker".to_owned(),
        };
        let (ktx, krx) = mpsc::channel(1);
        ktx.try_send(EbpfMessage::Events(vec![Record::Fork(child)]))
            .unwrap();
        drop(ktx);
        let (fork, read) = enriched(&collector, KernelRx::Ebpf(krx), None).await;
        assert!(matches!(fork, ProcEvent::Fork { .. }));
        let read = read.unwrap();
        assert_eq!(read.read, ReadDepth::StatOnly);
        assert_eq!((read.pid, read.name.as_str()), (5_000_000, "worker"));
        assert_eq!(read.ppid, Some(std::process::id()));
        assert_eq!(
            (read.user_id, read.euid, read.gid),
            (Some(1000), Some(1000), Some(100))
        );
        let ticks = collector.quick.ticks_per_sec() * 7;
        assert_eq!(
            read.process_key.map(|k| k.start_ticks),
            collector.quick.boot_id().map(|_| ticks)
        );
        assert_eq!(collector.counters.enrich_failed.get(), 0);
    }

    #[tokio::test]
    async fn skipped_hashes_degrade_health_saying_how_many_and_when() {
        let collector =
            ProcmondMonitorCollector::without_database(ProcmondMonitorConfig::default()).unwrap();
        collector.health_check().await.unwrap();
        assert_eq!(collector.stats_handle().hashes_skipped(), (0, None));
        collector.counters.hash_skipped();
        collector.counters.hash_skipped();
        let (n, last) = collector.stats_handle().hashes_skipped();
        assert_eq!(n, 2);
        assert!(last.unwrap().elapsed().unwrap() < Duration::from_secs(60));
        let why = collector.health_check().await.unwrap_err().to_string();
        assert!(why.contains("2 exec events went without a hash"), "{why}");
        // Long enough ago: healthy again, the count stays.
        let old = SystemTime::now() - HASH_SKIPS_DEGRADE_FOR - Duration::from_secs(1);
        let secs = old
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        collector
            .counters
            .hashes_skipped_at
            .set(i64::try_from(secs).unwrap());
        collector.health_check().await.unwrap();
        assert_eq!(collector.stats_handle().hashes_skipped().0, 2);
    }
}
