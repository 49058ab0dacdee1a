//! The detection pipeline: keeps the process table the collector reports,
//! turns each batch of events into rows, runs the rules, and raises
//! deduplicated alerts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use collector_core::lock;
use collector_core::metrics::{Counter, Registry};
use collector_core::{
    FileOperation, FilesystemEvent, NetworkEvent, PerformanceEvent, ProcessEvent, ProcessEventType,
    ProcessKey,
};
use tokio::time::Instant;

use crate::engine::{Batch, EngineError, ProcessRow, RuleEngine};
use crate::history::History;
use daemoneye_store::alert::{Alert, AlertProcess, Deduper};
use daemoneye_store::{ConnectionRow, FileEventRow, PerformanceRow};

/// Whether a directory can be written by someone other than root: writable
/// by group or others, or owned by a non-root user. Blocking (a `stat`).
fn user_writable(dir: &str) -> Option<bool> {
    let m = std::fs::metadata(dir).ok()?;
    Some(m.mode() & 0o022 != 0 || m.uid() != 0)
}

/// How long a directory's answer is kept before it is looked up again.
pub const DIR_CACHE_TTL: Duration = Duration::from_secs(60);
/// How long detection waits for a directory's lookup; past it the answer
/// is unknown (`None`, counted) and the lookup goes on in the background.
pub const DIR_LOOKUP_DEADLINE: Duration = Duration::from_millis(25);
/// The most directories cached.
pub const DIR_CACHE_CAPACITY: usize = 4096;
/// The most lookups running at once (a hung filesystem holds one thread per
/// directory looked up on it, at most this many).
pub const DIR_LOOKUPS_IN_FLIGHT: usize = 8;

/// How long a connection whose holder is not in the process table yet
/// waits for procmond's report of that process (netmond may look before
/// procmond's event, or its first snapshot, is in); past it, it is dropped
/// unjudged and counted.
pub const HELD_CONNECTIONS_FOR: Duration = Duration::from_secs(30);
/// The most connections held so; past it the oldest go, counted.
pub const HELD_CONNECTIONS_CAPACITY: usize = 4096;

/// How long a file event whose process is not in the table yet waits for
/// procmond's report of it (fsmond may see a write before procmond's exec
/// event is in); past it, it is judged without its process, and counted.
pub const HELD_FILE_EVENTS_FOR: Duration = HELD_CONNECTIONS_FOR;

/// How long an exited process stays known to the file rules: a process
/// that wrote a file and exited (`cp`, `tee`, an `echo >` of a short
/// shell) before its file event was judged is still named.
pub const EXITED_KEPT_FOR: Duration = Duration::from_secs(30);
/// The most exited processes kept so (the oldest go first).
pub const EXITED_CAPACITY: usize = 4096;

/// Events waiting for their process's event, by pid: connections for
/// their holder, file events for the process that made them. Past its
/// wait or its capacity an event leaves, counted in `left`.
#[derive(Debug)]
struct Held<E> {
    by_pid: HashMap<u32, Vec<(Instant, E)>>,
    len: usize,
    wait: Duration,
    capacity: usize,
    /// Left without their process: expired, or past the capacity.
    left: Counter,
}

impl<E> Held<E> {
    fn new(wait: Duration, capacity: usize) -> Self {
        Self {
            by_pid: HashMap::new(),
            len: 0,
            wait,
            capacity,
            left: Counter::default(),
        }
    }

    /// Holds `e`; returns what left to make room.
    fn hold(&mut self, pid: u32, e: E, now: Instant) -> Vec<E> {
        let left = if self.len >= self.capacity {
            self.expire(now, true)
        } else {
            Vec::new()
        };
        self.by_pid.entry(pid).or_default().push((now, e));
        self.len += 1;
        left
    }

    /// Takes out what waited longer than its wait (and, when `full`, the
    /// oldest pid's too).
    fn expire(&mut self, now: Instant, full: bool) -> Vec<E> {
        let mut left = Vec::new();
        if self.len == 0 {
            return left;
        }
        let wait = self.wait;
        self.by_pid.retain(|_, held| {
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(held)
                .into_iter()
                .partition(|(at, _)| now.saturating_duration_since(*at) >= wait);
            left.extend(gone.into_iter().map(|(_, e)| e));
            *held = kept;
            !held.is_empty()
        });
        if full && self.by_pid.values().map(Vec::len).sum::<usize>() >= self.capacity {
            let oldest = self
                .by_pid
                .iter()
                .filter_map(|(pid, held)| held.first().map(|(at, _)| (*at, *pid)))
                .min();
            if let Some((_, pid)) = oldest {
                left.extend(self.take(pid));
            }
        }
        self.len = self.by_pid.values().map(Vec::len).sum();
        self.left.add_usize(left.len());
        left
    }

    fn take(&mut self, pid: u32) -> Vec<E> {
        let held = self.by_pid.remove(&pid).unwrap_or_default();
        self.len -= held.len();
        held.into_iter().map(|(_, e)| e).collect()
    }
}

/// Processes that exited lately, by pid, each as last known: what file
/// events of a process gone by the time they are judged are judged with.
#[derive(Debug, Default)]
struct Exited {
    by_pid: HashMap<u32, (Instant, ProcessEvent)>,
    /// (when, pid) in the order they were kept: the oldest go first.
    order: VecDeque<(Instant, u32)>,
}

impl Exited {
    fn keep(&mut self, e: ProcessEvent, now: Instant) {
        self.expire(now);
        while self.order.len() >= EXITED_CAPACITY {
            self.forget_oldest();
        }
        self.order.push_back((now, e.pid));
        self.by_pid.insert(e.pid, (now, e));
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) >= EXITED_KEPT_FOR)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((at, pid)) = self.order.pop_front() {
            // Unless that pid exited again since (a newer entry).
            if self.by_pid.get(&pid).is_some_and(|(kept, _)| *kept == at) {
                self.by_pid.remove(&pid);
            }
        }
    }

    fn get(&self, pid: u32) -> Option<&ProcessEvent> {
        self.by_pid.get(&pid).map(|(_, e)| e)
    }
}

type StatFn = Arc<dyn Fn(&str) -> Option<bool> + Send + Sync>;

/// Lookups handed to worker threads and their answers.
#[derive(Default)]
struct Lookups {
    pending: HashSet<String>,
    done: HashMap<String, Option<bool>>,
}

#[derive(Default)]
struct Handoff {
    state: Mutex<Lookups>,
    answered: Condvar,
}

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, Lookups> {
        // Nothing panics under the lock; recover from poisoning anyway.
        lock(&self.state)
    }
}

/// What the directory cache counts.
#[derive(Debug, Default, Clone)]
struct DirCounters {
    /// Answers that were not known in time (or no lookup thread was free).
    unknown: Counter,
    /// Lookups started (first sight of a directory, or its answer expired).
    lookups: Counter,
    /// Entries dropped to stay within the capacity.
    evicted: Counter,
}

/// Directory -> user-writable, each answer kept for a TTL, looked up on
/// short-lived worker threads so that a `stat` hung on a dead NFS server
/// never blocks detection: the call that starts a lookup waits for it at
/// most a short deadline, then the answer is `None` (counted), as it is
/// for every call while the lookup still runs; a later call picks up what
/// the worker found. At most [`DIR_LOOKUPS_IN_FLIGHT`] lookups run at once,
/// one per directory.
struct DirCache {
    ttl: Duration,
    deadline: Duration,
    capacity: usize,
    entries: HashMap<String, (Option<bool>, Instant)>,
    handoff: Arc<Handoff>,
    stat: StatFn,
    counters: DirCounters,
}

impl std::fmt::Debug for DirCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirCache")
            .field("ttl", &self.ttl)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl DirCache {
    fn new(ttl: Duration, deadline: Duration, stat: StatFn) -> Self {
        Self {
            ttl,
            deadline,
            capacity: DIR_CACHE_CAPACITY,
            entries: HashMap::new(),
            handoff: Arc::default(),
            stat,
            counters: DirCounters::default(),
        }
    }

    /// Whether `dir` is user-writable; `None` when unknown (it does not
    /// exist, or its lookup did not answer within the deadline).
    fn get(&mut self, dir: &str) -> Option<bool> {
        let now = Instant::now();
        if let Some(&(value, at)) = self.entries.get(dir) {
            if now.duration_since(at) < self.ttl {
                return value;
            }
        }
        let handoff = Arc::clone(&self.handoff);
        let mut state = handoff.lock();
        // Answers that came in after their deadline, maybe this one.
        let mut fresh = None;
        let done: Vec<(String, Option<bool>)> = state.done.drain().collect();
        for (d, value) in done {
            if d == dir {
                fresh = Some(value);
            }
            self.insert(d, value, now);
        }
        if let Some(value) = fresh {
            return value;
        }
        // Only the call that starts a lookup waits for it: one still
        // running from before (a hung filesystem) costs nothing more.
        if state.pending.contains(dir)
            || state.pending.len() >= DIR_LOOKUPS_IN_FLIGHT
            || !self.spawn(&mut state, dir)
        {
            drop(state);
            self.counters.unknown.inc();
            return None;
        }
        let (mut state, _) = handoff
            .answered
            .wait_timeout_while(state, self.deadline, |s| !s.done.contains_key(dir))
            .unwrap_or_else(PoisonError::into_inner);
        let Some(value) = state.done.remove(dir) else {
            drop(state);
            self.counters.unknown.inc();
            return None;
        };
        drop(state);
        self.insert(dir.to_owned(), value, now);
        value
    }

    /// Starts looking `dir` up on a thread of its own; false when no
    /// thread could be started.
    fn spawn(&self, state: &mut Lookups, dir: &str) -> bool {
        let (handoff, stat, owned) = (
            Arc::clone(&self.handoff),
            Arc::clone(&self.stat),
            dir.to_owned(),
        );
        let started = std::thread::Builder::new()
            .name("detector-dir-stat".into())
            .spawn(move || {
                let value = stat(&owned);
                let mut state = handoff.lock();
                state.pending.remove(&owned);
                state.done.insert(owned, value);
                drop(state);
                handoff.answered.notify_all();
            });
        if started.is_err() {
            return false;
        }
        self.counters.lookups.inc();
        state.pending.insert(dir.to_owned());
        true
    }

    fn insert(&mut self, dir: String, value: Option<bool>, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&dir) {
            let ttl = self.ttl;
            let before = self.entries.len();
            self.entries
                .retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if self.entries.len() >= self.capacity {
                self.entries.clear();
            }
            self.counters.evicted.add_usize(before - self.entries.len());
        }
        self.entries.insert(dir, (value, now));
    }
}

/// The detection state of the agent.
#[derive(Debug)]
pub struct Detector {
    engine: RuleEngine,
    dedup: Deduper,
    /// Live processes by pid, as last reported.
    table: HashMap<u32, ProcessEvent>,
    /// Directory -> user-writable, refreshed after a TTL, never blocking.
    dirs: DirCache,
    /// Connections whose holder the table does not know yet.
    held: Held<NetworkEvent>,
    /// File events whose process the table does not know yet.
    held_files: Held<FilesystemEvent>,
    /// Processes that exited lately (kept while file rules run).
    exited: Exited,
    /// The process events file events implied (a running executable
    /// deleted or replaced), for the store: see [`Detector::take_implied`].
    implied: Vec<ProcessEvent>,
}

impl Detector {
    /// A detector with these rules, suppressing repeats within `window`.
    pub fn new(engine: RuleEngine, window: Duration) -> Self {
        Self {
            engine,
            dedup: Deduper::new(window, 100_000),
            table: HashMap::new(),
            dirs: DirCache::new(DIR_CACHE_TTL, DIR_LOOKUP_DEADLINE, Arc::new(user_writable)),
            held: Held::new(HELD_CONNECTIONS_FOR, HELD_CONNECTIONS_CAPACITY),
            held_files: Held::new(HELD_FILE_EVENTS_FOR, HELD_CONNECTIONS_CAPACITY),
            exited: Exited::default(),
            implied: Vec::new(),
        }
    }

    /// The history rules see (ancestry, exec lineage, lifecycle events).
    pub fn history(&self) -> RwLockReadGuard<'_, History> {
        self.engine.history()
    }

    /// The same with the directory cache's TTL and lookup deadline given
    /// (tests; an operator who wants fresher answers).
    #[must_use]
    pub fn with_dir_cache(mut self, ttl: Duration, deadline: Duration) -> Self {
        self.dirs.ttl = ttl;
        self.dirs.deadline = deadline;
        self
    }

    /// Directory lookups whose answer was unknown in time (a hung or slow
    /// filesystem): their rows say `exe_dir_user_writable = NULL`.
    pub fn dir_lookups_unknown(&self) -> u64 {
        self.dirs.counters.unknown.get()
    }

    /// Registers the directory cache's counters in `registry` (stage
    /// `detector`): lookups started, answers unknown in time, entries
    /// evicted. Call it once per registry.
    pub fn register_metrics(&self, registry: &Registry) {
        let c = &self.dirs.counters;
        let history = self.engine.history().counters().clone();
        registry.register_counters(
            &[("stage", "detector")],
            &[
                (
                    "daemoneye_dir_lookups_total",
                    "Executable directories looked up (first sight, or the answer expired).",
                    &c.lookups,
                ),
                (
                    "daemoneye_dir_lookups_unknown_total",
                    "Directory lookups not answered within the deadline (rows get NULL).",
                    &c.unknown,
                ),
                (
                    "daemoneye_dir_cache_evictions_total",
                    "Directory answers dropped to stay within the cache capacity.",
                    &c.evicted,
                ),
                (
                    "daemoneye_connections_unjudged_total",
                    "Connections dropped unjudged: their holder was not reported within 30 s (or past 4096 held).",
                    &self.held.left,
                ),
                (
                    "daemoneye_file_events_without_process_total",
                    "File events judged without their process: it was not reported within 30 s (or past 4096 held).",
                    &self.held_files.left,
                ),
                (
                    "daemoneye_history_processes_evicted_total",
                    "Processes the rules' history forgot to stay within its capacity (32768).",
                    &history.evicted,
                ),
                (
                    "daemoneye_history_images_dropped_total",
                    "Images of one process past the 16 the rules' exec_lineage keeps.",
                    &history.images_dropped,
                ),
                (
                    "daemoneye_history_lifecycle_dropped_total",
                    "Lifecycle events dropped before their window ended (past the 8192 kept).",
                    &history.lifecycle_dropped,
                ),
            ],
        );
    }

    /// The engine (rules, refusals, counters).
    pub fn engine(&self) -> &RuleEngine {
        &self.engine
    }

    /// Processes known alive.
    pub fn live(&self) -> usize {
        self.table.len()
    }

    /// Forgets every known process (a new collector session: its first
    /// snapshot tells who is alive now).
    pub fn forget_processes(&mut self) {
        self.table.clear();
    }

    /// Repeats suppressed.
    pub fn suppressed(&self) -> u64 {
        self.dedup.suppressed()
    }

    fn row(&mut self, e: &ProcessEvent) -> ProcessRow {
        let writable = e.executable_path.as_deref().and_then(|p| {
            let dir = p
                .rsplit_once('/')
                .map(|(d, _)| if d.is_empty() { "/" } else { d })?;
            self.dirs.get(dir)
        });
        let parent = e.ppid.and_then(|pp| self.table.get(&pp));
        ProcessRow::from_event(e, parent, writable)
    }

    /// Updates the table with `events` and judges them. Returns the new
    /// (not deduplicated away) alerts.
    ///
    /// # Errors
    /// Only when the engine itself fails.
    pub fn on_events(&mut self, events: &[ProcessEvent]) -> Result<Vec<Alert>, EngineError> {
        self.engine.observe(events);
        let keep_exited = self.engine.has_file_rules();
        let now = Instant::now();
        for e in events {
            match e.event_type {
                ProcessEventType::Exit => {
                    let last = self.table.remove(&e.pid);
                    if keep_exited {
                        self.exited.keep(last.unwrap_or_else(|| e.clone()), now);
                    }
                }
                _ if e.accessible || !self.table.contains_key(&e.pid) => {
                    self.table.insert(e.pid, e.clone());
                }
                _ => {}
            }
        }
        // One row per process: its most complete event of the batch (the
        // last readable one), so a process that execs and exits within one
        // batch is still judged on what it ran, and each alert shows the
        // event that matched.
        let mut best: Vec<&ProcessEvent> = Vec::new();
        let mut slot: HashMap<u32, usize> = HashMap::with_capacity(events.len());
        for e in events {
            match slot.get(&e.pid).map(|&i| &mut best[i]) {
                Some(b) if e.accessible || !b.accessible => {
                    if e.event_type != ProcessEventType::Exit || !b.accessible {
                        *b = e;
                    }
                }
                Some(_) => {}
                None => {
                    slot.insert(e.pid, best.len());
                    best.push(e);
                }
            }
        }
        let rows: Vec<ProcessRow> = best.iter().map(|e| self.row(e)).collect();
        let mut alerts = self.judge(&best, &rows)?;
        // The connections that waited for these processes.
        if self.held.len > 0 {
            let mut ready = Vec::new();
            for e in events {
                if self.held.by_pid.contains_key(&e.pid) && self.table.contains_key(&e.pid) {
                    ready.extend(self.held.take(e.pid));
                }
            }
            if !ready.is_empty() {
                alerts.extend(self.judge_network(&ready)?);
            }
        }
        // The file events that waited for these processes, and those that
        // waited long enough.
        if self.held_files.len > 0 {
            let mut ready = self.held_files.expire(now, false);
            for e in events {
                if self.held_files.by_pid.contains_key(&e.pid) && self.actor(e.pid).is_some() {
                    ready.extend(self.held_files.take(e.pid));
                }
            }
            alerts.extend(self.judge_files(&ready)?);
        }
        Ok(alerts)
    }

    /// Connections dropped unjudged (their holder never came; see
    /// [`HELD_CONNECTIONS_FOR`]).
    pub fn connections_unjudged(&self) -> u64 {
        self.held.left.get()
    }

    /// File events judged without their process (it never came; see
    /// [`HELD_FILE_EVENTS_FOR`]).
    pub fn file_events_without_process(&self) -> u64 {
        self.held_files.left.get()
    }

    /// Runs the rules over the whole table (the periodic sweep).
    ///
    /// # Errors
    /// Only when the engine itself fails.
    pub fn sweep(&mut self) -> Result<Vec<Alert>, EngineError> {
        // Owned: rows are built with `&mut self` (the directory cache).
        let events: Vec<ProcessEvent> = self.table.values().cloned().collect();
        let rows: Vec<ProcessRow> = events.iter().map(|e| self.row(e)).collect();
        self.judge(&events.iter().collect::<Vec<_>>(), &rows)
    }

    /// Judges a batch of performance samples with the performance rules,
    /// beside the live processes the samples name (by pid, when their key
    /// is that process's). A match of pid 0 is about the host: its alert
    /// names no process. Returns the new (not deduplicated away) alerts.
    ///
    /// # Errors
    /// Only when the engine itself fails.
    pub fn on_performance(
        &mut self,
        samples: &[PerformanceEvent],
    ) -> Result<Vec<Alert>, EngineError> {
        if samples.is_empty() || !self.engine.has_performance_rules() {
            return Ok(Vec::new());
        }
        let named = self.named(samples.iter().map(|s| (s.pid(), s.process_key())));
        let host_time = samples
            .iter()
            .map(|s| s.timestamp)
            .max()
            .unwrap_or_else(SystemTime::now);
        let rows: Vec<ProcessRow> = named.iter().map(|e| self.row(e)).collect();
        let samples: Vec<PerformanceRow> = samples.iter().map(PerformanceRow::new).collect();
        let matches = self
            .engine
            .evaluate_batch(Batch::Performance(&samples), &rows)?;
        let mut alerts = Vec::new();
        let events: Vec<&ProcessEvent> = named.iter().collect();
        for m in &matches {
            if m.pid == 0 {
                let Some(rule) = self.engine.rules().iter().find(|r| r.id == m.rule_id) else {
                    continue;
                };
                let alert = Alert::new(rule, AlertProcess::host(), host_time);
                if self.dedup.admit(&alert) {
                    alerts.push(alert);
                }
            }
        }
        alerts.extend(self.alerts_of(matches, &events, &rows));
        Ok(alerts)
    }

    /// Judges a batch of netmond's connections with the network rules,
    /// beside the live processes that hold them (by pid, when their key is
    /// that process's). Returns the new (not deduplicated away) alerts,
    /// each naming the process a rule matched.
    ///
    /// A connection whose holder is not in the table yet (netmond looked
    /// before procmond's report of it was judged) is held, and judged with
    /// the batch of process events that brings its holder, for up to
    /// [`HELD_CONNECTIONS_FOR`].
    ///
    /// # Errors
    /// Only when the engine itself fails.
    pub fn on_network(&mut self, events: &[NetworkEvent]) -> Result<Vec<Alert>, EngineError> {
        if events.is_empty() || !self.engine.has_network_rules() {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        self.held.expire(now, false);
        let mut known = Vec::with_capacity(events.len());
        for e in events {
            match e.pid {
                Some(pid) if !self.table.contains_key(&pid) => {
                    // What left to make room is dropped unjudged (counted).
                    drop(self.held.hold(pid, e.clone(), now));
                }
                _ => known.push(e),
            }
        }
        if known.len() == events.len() {
            return self.judge_network(events);
        }
        let known: Vec<NetworkEvent> = known.into_iter().cloned().collect();
        self.judge_network(&known)
    }

    /// Judges `events` beside the live processes that hold them.
    fn judge_network(&mut self, events: &[NetworkEvent]) -> Result<Vec<Alert>, EngineError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let named = self.named(events.iter().map(|e| (e.pid, e.process_key)));
        let rows: Vec<ProcessRow> = named.iter().map(|e| self.row(e)).collect();
        let connections: Vec<ConnectionRow> = events.iter().map(ConnectionRow::new).collect();
        let matches = self
            .engine
            .evaluate_batch(Batch::Network(&connections), &rows)?;
        let events: Vec<&ProcessEvent> = named.iter().collect();
        Ok(self.alerts_of(matches, &events, &rows))
    }

    /// Judges a batch of fsmond's file events with the file rules, beside
    /// the processes that made them (by pid, when their key is that
    /// process's; a process that exited within [`EXITED_KEPT_FOR`] is still
    /// known). Returns the new (not deduplicated away) alerts, each naming
    /// the process and kept apart per file (its dedup key ends in the
    /// path).
    ///
    /// A file event whose process is not known yet (fsmond saw the write
    /// before procmond's report of the process was judged) is held, and
    /// judged with the batch of process events that brings it, or without
    /// it after [`HELD_FILE_EVENTS_FOR`]: a rule then names the event's pid
    /// alone (an alert about process `unknown`), or the host when the event
    /// has none (a change a rescan found).
    ///
    /// A running process's executable deleted (a delete of its path) or
    /// replaced (a file renamed onto it, or made there anew) is, at once,
    /// that process's `executable_deleted` or `executable_replaced` event,
    /// judged by the process rules (`deleted-executable`) and kept for the
    /// store ([`take_implied`](Self::take_implied)): procmond would tell
    /// only at its next snapshot, up to its interval later.
    ///
    /// # Errors
    /// Only when the engine itself fails.
    pub fn on_files(&mut self, events: &[FilesystemEvent]) -> Result<Vec<Alert>, EngineError> {
        let implied = self.executables_touched(events);
        let mut alerts = if implied.is_empty() {
            Vec::new()
        } else {
            let alerts = self.on_events(&implied)?;
            self.implied.extend(implied);
            alerts
        };
        alerts.extend(self.judge_file_rules(events)?);
        Ok(alerts)
    }

    /// The process events implied by file events since the last call (a
    /// running executable deleted or replaced), for the store.
    pub fn take_implied(&mut self) -> Vec<ProcessEvent> {
        std::mem::take(&mut self.implied)
    }

    /// The `executable_deleted` and `executable_replaced` events of the
    /// live processes whose executable path `events` delete or replace
    /// (each once: a process already known so is left out). Paths under a
    /// watch root are compared as the host names them (root and path).
    fn executables_touched(&mut self, events: &[FilesystemEvent]) -> Vec<ProcessEvent> {
        let touching = |e: &&FilesystemEvent| {
            matches!(
                e.operation,
                FileOperation::Delete | FileOperation::Rename | FileOperation::Create
            )
        };
        if !events.iter().any(|e| touching(&e)) {
            return Vec::new();
        }
        let mut by_exe: HashMap<&str, Vec<u32>> = HashMap::new();
        for (pid, p) in &self.table {
            if let Some(exe) = p.executable_path.as_deref() {
                by_exe.entry(exe).or_default().push(*pid);
            }
        }
        let mut out: Vec<ProcessEvent> = Vec::new();
        for e in events.iter().filter(touching) {
            let host_path = match &e.root {
                Some(root) => format!("{}{}", root.trim_end_matches('/'), e.path),
                None => e.path.clone(),
            };
            let Some(pids) = by_exe.get(host_path.as_str()) else {
                continue;
            };
            let deleted = e.operation == FileOperation::Delete;
            for pid in pids {
                let Some(p) = self.table.get(pid) else {
                    continue;
                };
                let kind = if deleted {
                    ProcessEventType::ExecutableDeleted
                } else {
                    ProcessEventType::ExecutableReplaced
                };
                let known = if deleted {
                    !p.file_exists
                } else {
                    p.exe_replaced
                };
                if known || out.iter().any(|o| o.pid == *pid && o.event_type == kind) {
                    continue;
                }
                let mut implied = p.clone();
                implied.event_type = kind;
                implied.timestamp = e.timestamp;
                if deleted {
                    implied.file_exists = false;
                } else {
                    implied.exe_replaced = true;
                }
                out.push(implied);
            }
        }
        out
    }

    /// The file rules over `events` (see [`on_files`](Self::on_files)).
    fn judge_file_rules(&mut self, events: &[FilesystemEvent]) -> Result<Vec<Alert>, EngineError> {
        if events.is_empty() || !self.engine.has_file_rules() {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        let mut ready = self.held_files.expire(now, false);
        for e in events {
            match e.pid {
                Some(pid) if self.actor(pid).is_none() => {
                    ready.extend(self.held_files.hold(pid, e.clone(), now));
                }
                _ => ready.push(e.clone()),
            }
        }
        self.judge_files(&ready)
    }

    /// The process of `pid`: live, or exited lately.
    fn actor(&self, pid: u32) -> Option<&ProcessEvent> {
        self.table.get(&pid).or_else(|| self.exited.get(pid))
    }

    /// Judges `events` beside the processes that made them, those known.
    fn judge_files(&mut self, events: &[FilesystemEvent]) -> Result<Vec<Alert>, EngineError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.exited.expire(Instant::now());
        let mut named: Vec<ProcessEvent> = Vec::new();
        for e in events {
            let Some(p) = e.pid.and_then(|pid| self.actor(pid)) else {
                continue;
            };
            let same = match (e.process_key, p.process_key) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if same && named.iter().all(|n| n.pid != p.pid) {
                named.push(p.clone());
            }
        }
        let rows: Vec<ProcessRow> = named.iter().map(|e| self.row(e)).collect();
        let files: Vec<FileEventRow> = events.iter().map(FileEventRow::new).collect();
        let matches = self.engine.evaluate_batch(Batch::Files(&files), &rows)?;
        let mut alerts = Vec::new();
        for m in matches {
            let Some(rule) = self.engine.rules().iter().find(|r| r.id == m.rule_id) else {
                continue;
            };
            let process = match rows.iter().position(|r| r.pid == m.pid) {
                Some(i) if m.process_key.is_none() || rows[i].process_key == m.process_key => {
                    let e = &named[i];
                    let parent = e.ppid.and_then(|pp| self.table.get(&pp));
                    AlertProcess::from_event(e, parent)
                }
                Some(_) => continue,
                None if m.pid == 0 => AlertProcess::host(),
                None => AlertProcess::unknown(m.pid),
            };
            // When the file event was seen (its last operation of the
            // batch), not when its process was.
            let when = events
                .iter()
                .filter(|e| m.path.is_none() || m.path.as_deref() == Some(e.path.as_str()))
                .map(|e| e.timestamp)
                .max()
                .unwrap_or_else(SystemTime::now);
            let mut alert = Alert::new(rule, process, when);
            if let Some(path) = &m.path {
                alert.dedup_key = format!("{}:{path}", alert.dedup_key);
                alert.file = Some(path.clone());
            }
            if self.dedup.admit(&alert) {
                alerts.push(alert);
            }
        }
        Ok(alerts)
    }

    /// The live processes `subjects` (pid, key) name, each once: by pid,
    /// when the key (if any) is that process's.
    fn named(
        &self,
        subjects: impl Iterator<Item = (Option<u32>, Option<ProcessKey>)>,
    ) -> Vec<ProcessEvent> {
        let mut named: Vec<ProcessEvent> = Vec::new();
        for (pid, key) in subjects {
            let Some(e) = pid.and_then(|pid| self.table.get(&pid)) else {
                continue;
            };
            let same = match (key, e.process_key) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
            if same && named.iter().all(|n| n.pid != e.pid) {
                named.push(e.clone());
            }
        }
        named
    }

    fn judge(
        &mut self,
        events: &[&ProcessEvent],
        rows: &[ProcessRow],
    ) -> Result<Vec<Alert>, EngineError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let matches = self.engine.evaluate(rows)?;
        Ok(self.alerts_of(matches, events, rows))
    }

    /// The alerts of `matches` over `rows` (`events[i]` is `rows[i]`'s),
    /// deduplicated.
    fn alerts_of(
        &mut self,
        matches: Vec<crate::engine::Match>,
        events: &[&ProcessEvent],
        rows: &[ProcessRow],
    ) -> Vec<Alert> {
        // Rows are one per pid (a batch is merged per process, the table is
        // keyed by pid): find a match's row without scanning.
        let row_of: HashMap<u32, usize> =
            rows.iter().enumerate().map(|(i, r)| (r.pid, i)).collect();
        let mut alerts = Vec::new();
        for m in matches {
            let Some(&i) = row_of.get(&m.pid) else {
                continue;
            };
            if m.process_key.is_some() && rows[i].process_key != m.process_key {
                continue;
            }
            let Some(rule) = self.engine.rules().iter().find(|r| r.id == m.rule_id) else {
                continue;
            };
            let e = &events[i];
            let parent = e.ppid.and_then(|pp| self.table.get(&pp));
            let alert = Alert::new(rule, AlertProcess::from_event(e, parent), e.timestamp);
            if self.dedup.admit(&alert) {
                alerts.push(alert);
            }
        }
        alerts
    }
}

/// When `event` was observed, for latency figures.
pub fn age(event: &ProcessEvent) -> Duration {
    SystemTime::now()
        .duration_since(event.timestamp)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::rules;

    /// A detector with the built-in pack, repeats suppressed for a minute.
    fn builtin_detector() -> Detector {
        Detector::new(
            RuleEngine::new(rules::builtin().unwrap()).unwrap(),
            Duration::from_secs(60),
        )
    }

    fn exec(pid: u32, ppid: u32, name: &str, exe: &str, argv: &[&str]) -> ProcessEvent {
        let mut e = ProcessEvent::new(pid, name);
        e.event_type = ProcessEventType::Exec;
        e.ppid = Some(ppid);
        e.executable_path = Some(exe.to_owned());
        e.command_line = argv.iter().map(ToString::to_string).collect();
        e
    }

    #[test]
    fn parents_are_joined_and_repeats_suppressed() {
        let mut d = builtin_detector();
        let nginx = exec(100, 1, "nginx", "/usr/sbin/nginx", &["nginx"]);
        assert!(d.on_events(&[nginx]).unwrap().is_empty());
        let shell = exec(200, 100, "sh", "/usr/bin/dash", &["sh", "-c", "id"]);
        let alerts = d.on_events(std::slice::from_ref(&shell)).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].rule_id, "service-spawned-shell");
        assert_eq!(alerts[0].process.parent_name.as_deref(), Some("nginx"));
        assert_eq!(
            alerts[0].process.parent_executable_path.as_deref(),
            Some("/usr/sbin/nginx")
        );
        // The periodic sweep sees the same process: no second alert.
        assert!(d.sweep().unwrap().is_empty());
        assert_eq!(d.suppressed(), 1);
        let mut exit = shell;
        exit.event_type = ProcessEventType::Exit;
        d.on_events(&[exit]).unwrap();
        assert_eq!(d.live(), 1);
    }

    #[test]
    fn a_process_that_execs_and_exits_in_one_batch_is_still_judged() {
        let mut d = builtin_detector();
        let mut unreadable_first = ProcessEvent::new(300, "");
        unreadable_first.accessible = false;
        unreadable_first.event_type = ProcessEventType::Fork;
        let run = exec(300, 1, "x", "/dev/shm/x", &["/dev/shm/x"]);
        let mut exit = run.clone();
        exit.event_type = ProcessEventType::Exit;
        let alerts = d.on_events(&[unreadable_first, run, exit]).unwrap();
        let temp = alerts
            .iter()
            .find(|a| a.rule_id == "exec-from-temp-dir")
            .unwrap();
        assert_eq!(
            temp.process.executable_path.as_deref(),
            Some("/dev/shm/x"),
            "the alert shows the matching event"
        );
        assert_eq!(d.live(), 0);
    }

    /// `pid`'s outbound TCP socket on descriptor `fd`, just opened.
    fn socket_of(pid: u32, key: collector_core::ProcessKey, fd: u32) -> NetworkEvent {
        collector_core::testing::loopback_connection(pid, key, fd, 40_001)
    }

    /// `bash -i` as pid `pid`, with its key.
    fn interactive_shell(pid: u32) -> (ProcessEvent, collector_core::ProcessKey) {
        let key =
            collector_core::ProcessKey::new(collector_core::BootId::from_bytes([1; 16]), pid, 9);
        let mut shell = exec(pid, 1, "bash", "/usr/bin/bash", &["bash", "-i"]);
        shell.process_key = Some(key);
        (shell, key)
    }

    #[test]
    fn a_shell_whose_stdin_is_a_socket_is_judged_with_the_connection() {
        let mut d = builtin_detector();
        let (shell, key) = interactive_shell(500);
        assert!(
            d.on_events(&[shell]).unwrap().is_empty(),
            "no command line to see"
        );
        // Its stderr alone is not its stdio; another process under its pid
        // is not it; its stdin is.
        assert!(d.on_network(&[socket_of(500, key, 2)]).unwrap().is_empty());
        let stale =
            collector_core::ProcessKey::new(collector_core::BootId::from_bytes([1; 16]), 500, 8);
        assert!(d
            .on_network(&[socket_of(500, stale, 0)])
            .unwrap()
            .is_empty());
        let alerts = d.on_network(&[socket_of(500, key, 0)]).unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].rule_id, "socket-stdio-shell");
        assert_eq!(alerts[0].process.pid, 500);
        // Seen again at the next look: suppressed.
        assert!(d.on_network(&[socket_of(500, key, 0)]).unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_seen_before_its_holder_waits_for_it_then_expires() {
        let mut d = builtin_detector();
        // netmond first: held, nothing to judge it with yet.
        let (shell, key) = interactive_shell(600);
        assert!(d.on_network(&[socket_of(600, key, 0)]).unwrap().is_empty());
        // procmond's report of the shell brings the alert.
        let alerts = d.on_events(&[shell]).unwrap();
        let ids: Vec<&str> = alerts.iter().map(|a| a.rule_id.as_str()).collect();
        assert_eq!(ids, ["socket-stdio-shell"]);
        assert_eq!(alerts[0].process.pid, 600);
        assert_eq!(d.connections_unjudged(), 0);

        // A holder that never comes: dropped after the wait, counted.
        let (_, other) = interactive_shell(601);
        d.on_network(&[socket_of(601, other, 0)]).unwrap();
        tokio::time::advance(HELD_CONNECTIONS_FOR).await;
        d.on_network(&[socket_of(602, other, 5)]).unwrap();
        assert_eq!(d.connections_unjudged(), 1);
        let (late, _) = interactive_shell(601);
        assert!(
            d.on_events(&[late]).unwrap().is_empty(),
            "expired: not judged"
        );
    }

    /// `pid` (key `key`) wrote `path`: one merged record's operations.
    fn wrote(pid: u32, key: collector_core::ProcessKey, path: &str) -> Vec<FilesystemEvent> {
        use collector_core::FileOperation::{CloseWrite, Create, Modify};
        [Create, Modify, CloseWrite]
            .into_iter()
            .map(|op| FilesystemEvent {
                pid: Some(pid),
                process_key: Some(key),
                permissions: Some(0o644),
                file_type: Some(collector_core::FileType::Regular),
                ..FilesystemEvent::new(path, op, SystemTime::now())
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_event_waits_for_its_process_one_alert_per_file_and_one_that_exited_is_named() {
        let mut d = builtin_detector();
        let (sh, key) = interactive_shell(700);
        // fsmond first: held until procmond's report of the shell.
        assert!(d
            .on_files(&wrote(700, key, "/etc/cron.d/x"))
            .unwrap()
            .is_empty());
        let alerts = d.on_events(std::slice::from_ref(&sh)).unwrap();
        let got: Vec<(&str, u32, &str)> = alerts
            .iter()
            .map(|a| (a.rule_id.as_str(), a.process.pid, a.process.name.as_str()))
            .collect();
        assert_eq!(got, [("persistence-file-written", 700, "bash")]);
        assert!(
            alerts[0].dedup_key.ends_with(":/etc/cron.d/x"),
            "{alerts:?}"
        );
        assert_eq!(alerts[0].file.as_deref(), Some("/etc/cron.d/x"));
        // The same file again: a repeat; another file: its own alert.
        assert!(d
            .on_files(&wrote(700, key, "/etc/cron.d/x"))
            .unwrap()
            .is_empty());
        let other = d
            .on_files(&wrote(700, key, "/root/.ssh/authorized_keys"))
            .unwrap();
        assert_eq!(other.len(), 1);
        // A process that wrote and exited before its event was judged
        // (`cp`) is still named.
        let mut cp = exec(701, 700, "cp", "/usr/bin/cp", &["cp", "x", "/usr/bin/ls"]);
        let cp_key =
            collector_core::ProcessKey::new(collector_core::BootId::from_bytes([1; 16]), 701, 3);
        cp.process_key = Some(cp_key);
        let mut gone = cp.clone();
        gone.event_type = ProcessEventType::Exit;
        d.on_events(&[cp, gone]).unwrap();
        let replaced = d.on_files(&wrote(701, cp_key, "/usr/bin/ls")).unwrap();
        let got: Vec<(&str, u32, &str)> = replaced
            .iter()
            .map(|a| (a.rule_id.as_str(), a.process.pid, a.process.name.as_str()))
            .collect();
        assert_eq!(got, [("system-binary-written", 701, "cp")]);
        assert_eq!(d.file_events_without_process(), 0);
        // A process that never comes: judged without it after the wait,
        // naming its pid alone.
        let (_, ghost) = interactive_shell(702);
        assert!(d
            .on_files(&wrote(702, ghost, "/etc/ld.so.preload"))
            .unwrap()
            .is_empty());
        tokio::time::advance(HELD_FILE_EVENTS_FOR).await;
        let late = d
            .on_events(&[exec(703, 1, "true", "/usr/bin/true", &["true"])])
            .unwrap();
        let got: Vec<(&str, u32, &str)> = late
            .iter()
            .map(|a| (a.rule_id.as_str(), a.process.pid, a.process.name.as_str()))
            .collect();
        assert_eq!(got, [("persistence-file-written", 702, "unknown")]);
        assert_eq!(d.file_events_without_process(), 3, "its three operations");
    }

    /// A running program's file deleted, as fsmond tells: that process's
    /// `executable_deleted` at once (its alert, its event for the store),
    /// once; a file renamed onto another's: `executable_replaced`; under a
    /// watch root, the host's path is compared; other files imply nothing.
    #[test]
    fn a_running_executable_deleted_or_replaced_is_that_process_s_event_at_once() {
        use collector_core::FileOperation::{Create, Delete, Rename};
        let mut d = builtin_detector();
        let mut tool = exec(800, 1, "tool", "/usr/local/bin/tool", &["tool"]);
        tool.file_exists = true;
        let mut sshd = exec(801, 1, "sshd", "/usr/sbin/sshd", &["sshd", "-D"]);
        sshd.file_exists = true;
        let mut boxed = exec(802, 1, "srv", "/var/lib/c1/usr/bin/srv", &["srv"]);
        boxed.file_exists = true;
        d.on_events(&[tool, sshd, boxed]).unwrap();
        let file = |op, path: &str| FilesystemEvent::new(path, op, SystemTime::now());
        assert!(d
            .on_files(&[file(Delete, "/usr/local/bin/other")])
            .unwrap()
            .is_empty());
        assert!(d.take_implied().is_empty());

        let alerts = d.on_files(&[file(Delete, "/usr/local/bin/tool")]).unwrap();
        let got: Vec<(&str, u32)> = alerts
            .iter()
            .map(|a| (a.rule_id.as_str(), a.process.pid))
            .collect();
        assert_eq!(got, [("deleted-executable", 800)]);
        let implied = d.take_implied();
        assert_eq!(implied.len(), 1);
        assert_eq!(implied[0].event_type, ProcessEventType::ExecutableDeleted);
        assert!(!implied[0].file_exists);
        // Told once.
        d.on_files(&[file(Delete, "/usr/local/bin/tool")]).unwrap();
        assert!(d.take_implied().is_empty());

        // Renamed over (an upgrade, or a trojan): replaced, not deleted.
        let mut over = file(Rename, "/usr/sbin/sshd");
        over.old_path = Some("/usr/sbin/sshd.new".to_owned());
        d.on_files(&[over, file(Create, "/usr/sbin/sshd")]).unwrap();
        let implied = d.take_implied();
        let kinds: Vec<(u32, ProcessEventType)> =
            implied.iter().map(|e| (e.pid, e.event_type)).collect();
        assert_eq!(kinds, [(801, ProcessEventType::ExecutableReplaced)]);
        assert!(implied[0].exe_replaced && implied[0].file_exists);

        // Under a watch root: the host's path is the root's and the path.
        let mut rooted = file(Delete, "/usr/bin/srv");
        rooted.root = Some("/var/lib/c1".to_owned());
        d.on_files(&[rooted]).unwrap();
        let implied = d.take_implied();
        assert_eq!(implied.iter().map(|e| e.pid).collect::<Vec<_>>(), [802]);
    }

    #[test]
    fn a_performance_anomaly_is_judged_with_the_process_it_names() {
        use collector_core::{
            BootId, PerformanceAnomaly, PerformanceAnomalyKind, PerformanceMetric,
            PerformanceSubject, ProcessKey,
        };
        let mut d = builtin_detector();
        let key = ProcessKey::new(BootId::from_bytes([1; 16]), 400, 9);
        let mut miner = exec(400, 1, "sh", "/tmp/.m/sh", &["sh"]);
        miner.process_key = Some(key);
        d.on_events(&[miner]).unwrap();
        let anomaly = |kind, metric, subject| {
            PerformanceEvent::new(metric, 99.0, subject, SystemTime::now()).with_anomaly(
                PerformanceAnomaly {
                    kind,
                    threshold: 90.0,
                    duration: Duration::from_secs(60),
                },
            )
        };
        let of = |pid, process_key| PerformanceSubject::Process { pid, process_key };
        // Another process under the same pid (another key) is not it.
        let stale = ProcessKey::new(BootId::from_bytes([1; 16]), 400, 8);
        let busy = |s| {
            anomaly(
                PerformanceAnomalyKind::SustainedCpu,
                PerformanceMetric::ProcessCpu,
                s,
            )
        };
        assert!(d
            .on_performance(&[busy(of(400, Some(stale)))])
            .unwrap()
            .is_empty());
        let alerts = d.on_performance(&[busy(of(400, Some(key)))]).unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].rule_id, "sustained-cpu-suspicious-binary");
        assert_eq!(
            alerts[0].process.executable_path.as_deref(),
            Some("/tmp/.m/sh")
        );
        let fork = anomaly(
            PerformanceAnomalyKind::ForkRate,
            PerformanceMetric::ForkRate,
            PerformanceSubject::Host,
        );
        let alerts = d.on_performance(&[fork]).unwrap();
        assert_eq!(
            (alerts[0].rule_id.as_str(), alerts[0].process.pid),
            ("fork-bomb", 0)
        );
    }

    #[test]
    fn user_writable_dirs() {
        assert_eq!(user_writable("/tmp"), Some(true));
        assert_eq!(user_writable("/nonexistent-dir"), None);
    }

    fn chmod(path: &std::path::Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A directory made world-writable after its first lookup is seen as
    /// such once the answer expires (and not before). Cached forever, it
    /// stayed "not writable".
    #[tokio::test(start_paused = true)]
    async fn a_directory_made_writable_later_is_seen_after_the_ttl() {
        if !nix_is_root() {
            eprintln!("skipped: needs root (a non-root owner is always user-writable)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let exe = dir.path().join("tool");
        let mut d = builtin_detector()
            // A generous deadline: this test is about the TTL, not a slow stat.
            .with_dir_cache(Duration::from_secs(60), Duration::from_secs(10));
        let e = exec(10, 1, "tool", exe.to_str().unwrap(), &["tool"]);
        assert_eq!(d.row(&e).exe_dir_user_writable, Some(false));
        chmod(dir.path(), 0o777);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(d.row(&e).exe_dir_user_writable, Some(false), "cached");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(d.row(&e).exe_dir_user_writable, Some(true), "refreshed");
        assert_eq!(d.dirs.counters.lookups.get(), 2);
        assert_eq!(d.dir_lookups_unknown(), 0);
    }

    fn nix_is_root() -> bool {
        // The effective uid, from /proc (no libc in this crate).
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))
            .unwrap_or(false)
    }

    /// A stat that hangs on paths under `/hung` until released.
    fn hanging_stat() -> (StatFn, Arc<(Mutex<bool>, Condvar)>) {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let g = Arc::clone(&gate);
        let stat: StatFn = Arc::new(move |dir: &str| {
            if dir.starts_with("/hung") {
                let (open, cv) = &*g;
                let guard = open.lock().unwrap();
                drop(cv.wait_while(guard, |open| !*open).unwrap());
            }
            Some(true)
        });
        (stat, gate)
    }

    #[test]
    fn a_hung_lookup_yields_none_in_time_and_is_picked_up_later() {
        let (stat, gate) = hanging_stat();
        let deadline = Duration::from_millis(200);
        let mut cache = DirCache::new(Duration::from_secs(60), deadline, stat);
        let t0 = Instant::now();
        assert_eq!(cache.get("/hung/a"), None);
        let first = t0.elapsed();
        assert!(
            first >= deadline && first < Duration::from_secs(2),
            "{first:?}"
        );
        // Still running: no second wait, no second thread.
        let t1 = Instant::now();
        assert_eq!(cache.get("/hung/a"), None);
        assert!(t1.elapsed() < deadline, "{:?}", t1.elapsed());
        // Other directories are still answered.
        assert_eq!(cache.get("/usr/bin"), Some(true));
        // At most DIR_LOOKUPS_IN_FLIGHT hung lookups; beyond, none is started.
        for i in 1..=DIR_LOOKUPS_IN_FLIGHT {
            assert_eq!(cache.get(&format!("/hung/{i}")), None);
        }
        assert_eq!(
            cache.counters.lookups.get(),
            DIR_LOOKUPS_IN_FLIGHT as u64 + 1,
            "/hung/a, /usr/bin, /hung/1..7; /hung/8 found no free lookup"
        );
        assert_eq!(
            cache.counters.unknown.get(),
            2 + DIR_LOOKUPS_IN_FLIGHT as u64
        );

        // The filesystem comes back: the answers arrive and are used.
        {
            let (open, cv) = &*gate;
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
        let handoff = Arc::clone(&cache.handoff);
        let state = handoff.lock();
        let (state, timeout) = handoff
            .answered
            .wait_timeout_while(state, Duration::from_secs(10), |s| !s.pending.is_empty())
            .unwrap();
        assert!(!timeout.timed_out());
        drop(state);
        assert_eq!(cache.get("/hung/a"), Some(true));
        // Never looked up (no thread was free): looked up now.
        assert_eq!(
            cache.get(&format!("/hung/{DIR_LOOKUPS_IN_FLIGHT}")),
            Some(true)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_stays_within_its_capacity() {
        let mut cache = DirCache::new(
            Duration::from_secs(60),
            Duration::from_secs(10),
            Arc::new(|_: &str| Some(false)),
        );
        cache.capacity = 4;
        for i in 0..4 {
            assert_eq!(cache.get(&format!("/d{i}")), Some(false));
        }
        tokio::time::advance(Duration::from_secs(61)).await;
        cache.get("/d1");
        // Full: the expired ones go first.
        cache.get("/new");
        assert!(cache.entries.len() <= 4, "{}", cache.entries.len());
        assert!(cache.entries.contains_key("/d1") && cache.entries.contains_key("/new"));
        assert_eq!(cache.counters.evicted.get(), 3);
        for i in 0..10 {
            cache.get(&format!("/e{i}"));
            assert!(cache.entries.len() <= 4);
        }
    }
}
