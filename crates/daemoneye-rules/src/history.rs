//! What rules know of the past: each process's ancestry, the images it ran
//! in turn, and the lifecycle events of a recent window.
//!
//! [`History`] follows the process events the detector sees (forks, execs,
//! exits, snapshots) and keeps, bounded:
//!
//! - each process (by `process_key`) with its parent as first seen, so a
//!   chain stays whole after a parent exits (and after the kernel
//!   reparents its children): at most [`MAX_PROCESSES`], exited ones
//!   evicted first, then the oldest; each eviction counted;
//! - the images each process ran, at most [`MAX_IMAGES`] (past it, counted
//!   and dropped); `exec_lineage` lists the processes that ran more than
//!   one (most run one: a worker forked and never exec'd);
//! - the forks, execs and exits of the last [`LIFECYCLE_WINDOW`], at most
//!   [`MAX_LIFECYCLE_EVENTS`] (the oldest go first, counted).
//!
//! It does not write SQL: it hands its [`Change`]s to
//! [`RuleEngine::apply_history`](crate::engine::RuleEngine::apply_history),
//! which keeps the rules' `ancestry` view and `exec_lineage` and
//! `lifecycle_events` tables (columns:
//! [`collector_core::vocabulary::ANCESTRY`], [`EXEC_LINEAGE`](collector_core::vocabulary::EXEC_LINEAGE),
//! [`LIFECYCLE`](collector_core::vocabulary::LIFECYCLE)) up to date between
//! batches: a batch costs what changed, not the whole history.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use collector_core::metrics::Counter;
use collector_core::{ProcessEvent, ProcessEventType};

/// The most processes remembered (live and exited).
pub const MAX_PROCESSES: usize = 32_768;
/// The longest ancestry kept for one process (parent first): with
/// [`MAX_PROCESSES`], at most 524,288 links (some 170 bytes each with its
/// index: about 90 MiB of the engine's heap at the worst; a real tree is a
/// few levels deep).
pub const MAX_DEPTH: usize = 16;
/// The most images kept for one process.
pub const MAX_IMAGES: usize = 16;
/// How far back `lifecycle_events` reaches (by the events' own times).
pub const LIFECYCLE_WINDOW: Duration = Duration::from_secs(300);
/// The most lifecycle events kept.
pub const MAX_LIFECYCLE_EVENTS: usize = 8192;

/// One image a process ran.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    /// The executable.
    pub exe: Option<String>,
    /// `comm`.
    pub name: String,
    /// The arguments, joined by spaces.
    pub cmdline: String,
    /// When it was seen, unix ns.
    pub observed_at: Option<i64>,
}

/// One row of `lifecycle_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleRow {
    /// Its order among those kept.
    pub seq: i64,
    /// When, unix ns.
    pub observed_at: Option<i64>,
    /// `fork`, `exec` or `exit`.
    pub event_type: &'static str,
    /// The process.
    pub process_key: String,
    /// Its pid.
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: Option<u32>,
    /// The image as the event reported it.
    pub image: Image,
}

/// A change to the rules' history tables.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A process first seen, with its ancestors' keys, parent first.
    Process {
        /// Its key.
        key: String,
        /// Its pid.
        pid: u32,
        /// Its ancestors, parent first.
        ancestors: Vec<String>,
    },
    /// The process ran `image`, its `seq`-th (from 0); its last image now.
    /// `exec_lineage` holds only processes that ran more than one: the
    /// second image brings the first (`previous`) with it.
    Image {
        /// Its key.
        key: String,
        /// Its pid.
        pid: u32,
        /// Which image.
        seq: usize,
        /// The image.
        image: Image,
        /// With the second image: the first.
        previous: Option<Image>,
    },
    /// The process exited.
    Exited {
        /// Its key.
        key: String,
    },
    /// The process is forgotten (evicted), its rows with it.
    Forget {
        /// Its key.
        key: String,
    },
    /// A lifecycle event.
    Lifecycle(LifecycleRow),
    /// The lifecycle events up to this `seq` go.
    LifecycleUpTo(i64),
}

#[derive(Debug)]
struct Node {
    pid: u32,
    parent: Option<String>,
    images: usize,
    last: Image,
    exited: bool,
}

/// What [`History`] counts.
#[derive(Debug, Default, Clone)]
pub struct HistoryCounters {
    /// Processes forgotten to stay within [`MAX_PROCESSES`].
    pub evicted: Counter,
    /// Images not kept past [`MAX_IMAGES`].
    pub images_dropped: Counter,
    /// Lifecycle events dropped before their window ended, to stay within
    /// [`MAX_LIFECYCLE_EVENTS`].
    pub lifecycle_dropped: Counter,
}

/// Queues `key` in `order` (an eviction order); past twice `capacity` keys,
/// those of processes already forgotten go, so the queue stays bounded.
fn push_key(
    order: &mut VecDeque<String>,
    key: String,
    nodes: &HashMap<String, Node>,
    capacity: usize,
) {
    order.push_back(key);
    if order.len() > 2 * capacity {
        order.retain(|k| nodes.contains_key(k));
    }
}

/// The history the rules see, bounded; see the [module](self).
#[derive(Debug)]
pub struct History {
    nodes: HashMap<String, Node>,
    /// The live process of each pid.
    live: HashMap<u32, String>,
    /// Keys in the order they exited (evicted first).
    exited: VecDeque<String>,
    /// Keys in the order they were first seen.
    seen: VecDeque<String>,
    /// `(seq, observed_at)` of the lifecycle events kept, oldest first.
    lifecycle: VecDeque<(i64, Option<i64>)>,
    next_seq: i64,
    changes: Vec<Change>,
    capacity: usize,
    lifecycle_capacity: usize,
    counters: HistoryCounters,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_ns(t: SystemTime) -> Option<i64> {
    i64::try_from(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_nanos()).ok()
}

fn image_of(e: &ProcessEvent) -> Image {
    Image {
        exe: e.executable_path.clone(),
        name: e.name.clone(),
        cmdline: e.command_line.join(" "),
        observed_at: unix_ns(e.timestamp),
    }
}

impl History {
    /// An empty history with the default bounds.
    pub fn new() -> Self {
        Self::with_capacity(MAX_PROCESSES, MAX_LIFECYCLE_EVENTS)
    }

    /// An empty history remembering at most `processes` processes and
    /// `lifecycle_events` events (tests; a host that wants less memory).
    pub fn with_capacity(processes: usize, lifecycle_events: usize) -> Self {
        Self {
            nodes: HashMap::new(),
            live: HashMap::new(),
            exited: VecDeque::new(),
            seen: VecDeque::new(),
            lifecycle: VecDeque::new(),
            next_seq: 0,
            changes: Vec::new(),
            capacity: processes.max(1),
            lifecycle_capacity: lifecycle_events.max(1),
            counters: HistoryCounters::default(),
        }
    }

    /// Its counters.
    pub fn counters(&self) -> &HistoryCounters {
        &self.counters
    }

    /// Processes remembered.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no process is remembered.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The changes since the last call, for
    /// [`RuleEngine::apply_history`](crate::engine::RuleEngine::apply_history).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// The keys of `key`'s ancestors, parent first (what the `ancestry`
    /// view holds for it).
    pub fn ancestors(&self, key: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut cur = self.nodes.get(key).and_then(|n| n.parent.clone());
        while let Some(k) = cur {
            if out.len() == MAX_DEPTH {
                break;
            }
            cur = self.nodes.get(&k).and_then(|n| n.parent.clone());
            out.push(k);
        }
        out
    }

    /// Follows a batch of events. Snapshots go first, oldest process
    /// first (by start time, then pid), so that a parent is known before
    /// its children; the others in their order.
    pub fn observe_batch(&mut self, events: &[ProcessEvent]) {
        let mut snapshots: Vec<&ProcessEvent> = events
            .iter()
            .filter(|e| e.event_type == ProcessEventType::Snapshot)
            .collect();
        snapshots.sort_by_key(|e| (e.start_time, e.pid));
        for e in snapshots {
            self.observe(e);
        }
        for e in events
            .iter()
            .filter(|e| e.event_type != ProcessEventType::Snapshot)
        {
            self.observe(e);
        }
    }

    /// Follows one event (one without a process key is not remembered).
    pub fn observe(&mut self, e: &ProcessEvent) {
        let Some(key) = e.process_key.map(|k| k.to_string()) else {
            return;
        };
        let event_type = match e.event_type {
            ProcessEventType::Fork => Some("fork"),
            ProcessEventType::Exec => Some("exec"),
            ProcessEventType::Exit => Some("exit"),
            _ => None,
        };
        if let Some(event_type) = event_type {
            self.push_lifecycle(LifecycleRow {
                seq: 0,
                observed_at: unix_ns(e.timestamp),
                event_type,
                process_key: key.clone(),
                pid: e.pid,
                ppid: e.ppid,
                image: image_of(e),
            });
        }
        if e.event_type == ProcessEventType::Exit {
            self.exit(&key, e.pid);
            return;
        }
        if let Some(old) = self.live.get(&e.pid).filter(|k| **k != key).cloned() {
            // The pid names another process now: the one before is gone.
            self.exit(&old, e.pid);
        }
        let readable = e.accessible || !e.name.is_empty();
        match self.nodes.get_mut(&key) {
            Some(node) => {
                let image = image_of(e);
                let changed = node.last.exe != image.exe
                    || node.last.name != image.name
                    || node.last.cmdline != image.cmdline;
                if readable && changed {
                    if node.images >= MAX_IMAGES {
                        self.counters.images_dropped.inc();
                        return;
                    }
                    let seq = node.images;
                    node.images += 1;
                    let last = std::mem::replace(&mut node.last, image.clone());
                    self.changes.push(Change::Image {
                        key,
                        pid: e.pid,
                        seq,
                        image,
                        previous: (seq == 1).then_some(last),
                    });
                }
            }
            None => self.insert(key, e, readable),
        }
    }

    fn insert(&mut self, key: String, e: &ProcessEvent, readable: bool) {
        while self.nodes.len() >= self.capacity {
            if !self.evict_one() {
                break;
            }
        }
        let parent = e
            .ppid
            .filter(|&pp| pp != e.pid)
            .and_then(|pp| self.live.get(&pp))
            .filter(|k| **k != key)
            .cloned();
        let mut ancestors = Vec::new();
        let mut cur = parent.clone();
        while let Some(k) = cur {
            if ancestors.len() == MAX_DEPTH {
                break;
            }
            cur = self.nodes.get(&k).and_then(|n| n.parent.clone());
            ancestors.push(k);
        }
        let image = image_of(e);
        self.nodes.insert(
            key.clone(),
            Node {
                pid: e.pid,
                parent,
                images: usize::from(readable),
                last: image.clone(),
                exited: false,
            },
        );
        self.live.insert(e.pid, key.clone());
        push_key(&mut self.seen, key.clone(), &self.nodes, self.capacity);
        self.changes.push(Change::Process {
            key: key.clone(),
            pid: e.pid,
            ancestors,
        });
        if readable {
            self.changes.push(Change::Image {
                key,
                pid: e.pid,
                seq: 0,
                image,
                previous: None,
            });
        }
    }

    fn exit(&mut self, key: &str, pid: u32) {
        if self.live.get(&pid).is_some_and(|k| k == key) {
            self.live.remove(&pid);
        }
        let Some(node) = self.nodes.get_mut(key) else {
            return;
        };
        if node.exited {
            return;
        }
        node.exited = true;
        push_key(&mut self.exited, key.to_owned(), &self.nodes, self.capacity);
        self.changes.push(Change::Exited {
            key: key.to_owned(),
        });
    }

    /// Forgets one process: the first to have exited, else the oldest.
    fn evict_one(&mut self) -> bool {
        let key = loop {
            let next = self.exited.pop_front().or_else(|| self.seen.pop_front());
            match next {
                Some(k) if self.nodes.contains_key(&k) => break k,
                Some(_) => {}
                None => return false,
            }
        };
        if let Some(node) = self.nodes.remove(&key) {
            if self.live.get(&node.pid).is_some_and(|k| *k == key) {
                self.live.remove(&node.pid);
            }
        }
        self.counters.evicted.inc();
        self.changes.push(Change::Forget { key });
        true
    }

    fn push_lifecycle(&mut self, mut row: LifecycleRow) {
        row.seq = self.next_seq;
        self.next_seq += 1;
        let window = i64::try_from(LIFECYCLE_WINDOW.as_nanos()).unwrap_or(i64::MAX);
        let horizon = row.observed_at.map(|t| t.saturating_sub(window));
        let mut up_to = None;
        while let Some(&(seq, at)) = self.lifecycle.front() {
            let expired = matches!((at, horizon), (Some(a), Some(h)) if a < h);
            let full = self.lifecycle.len() >= self.lifecycle_capacity;
            if !expired && !full {
                break;
            }
            if !expired {
                self.counters.lifecycle_dropped.inc();
            }
            self.lifecycle.pop_front();
            up_to = Some(seq);
        }
        if let Some(seq) = up_to {
            self.changes.push(Change::LifecycleUpTo(seq));
        }
        self.lifecycle.push_back((row.seq, row.observed_at));
        self.changes.push(Change::Lifecycle(row));
    }
}
