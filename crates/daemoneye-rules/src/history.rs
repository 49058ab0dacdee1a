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
//! Rules read it where it lives: `ancestry`, `exec_lineage` and
//! `lifecycle_events` are SQLite virtual tables over this structure
//! (columns: [`collector_core::vocabulary::ANCESTRY`],
//! [`EXEC_LINEAGE`](collector_core::vocabulary::EXEC_LINEAGE),
//! [`LIFECYCLE`](collector_core::vocabulary::LIFECYCLE)), answered from the
//! indexes kept here (a process's key, an ancestor's key or name, an
//! image's name, a lifecycle event's parent pid or key). Nothing is written
//! to SQL per event: a storm of short-lived processes cost some twenty
//! SQLite statements each when the history was mirrored into tables.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use collector_core::metrics::Counter;
use collector_core::{ProcessEvent, ProcessEventType, ProcessKey};

/// The most processes remembered (live and exited).
pub const MAX_PROCESSES: usize = 32_768;
/// The longest ancestry kept for one process (parent first): with
/// [`MAX_PROCESSES`], at most 524,288 links (a real tree is a few levels
/// deep).
pub const MAX_DEPTH: usize = 16;
/// The most images kept for one process.
pub const MAX_IMAGES: usize = 16;
/// How far back `lifecycle_events` reaches (by the events' own times).
pub const LIFECYCLE_WINDOW: Duration = Duration::from_secs(300);
/// The most lifecycle events kept.
pub const MAX_LIFECYCLE_EVENTS: usize = 8192;

/// A process key, shared by the structures that name it.
pub(crate) type Key = Arc<str>;

/// The hasher of the maps and sets keyed by process key: foldhash, with a
/// random seed per map, several times cheaper than the standard library's
/// hasher (`std::hash::RandomState`) over a key's 50-odd bytes: a spawn
/// storm hashes each new key into several maps and sets, and out again. A
/// process key (boot id, pid, start time) is not text anyone can choose,
/// as names are; nor are pids many at once (the live ones,
/// under `pid_max`), which the maps keyed by pid hash with it too. The
/// maps keyed by names keep the standard hasher against collision floods.
type KeyHasher = foldhash::fast::RandomState;
/// A map keyed by process key.
type KeyMap<V> = HashMap<Key, V, KeyHasher>;
/// A set of process keys.
type KeySet = HashSet<Key, KeyHasher>;

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
pub(crate) struct LifecycleRow {
    /// Its order among those kept.
    pub(crate) seq: i64,
    /// When, unix ns.
    pub(crate) observed_at: Option<i64>,
    /// `fork`, `exec` or `exit`.
    pub(crate) event_type: &'static str,
    /// The process.
    pub(crate) process_key: Key,
    /// Its pid.
    pub(crate) pid: u32,
    /// Its parent's pid.
    pub(crate) ppid: Option<u32>,
    /// The image as the event reported it: the process's own image when
    /// the event shows that one (shared, not copied per event).
    pub(crate) image: Arc<Image>,
}

/// One process remembered.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) pid: u32,
    parent: Option<Key>,
    /// Its nearest ancestor still remembered (its parent until that is
    /// forgotten): where it hangs in [`History`]'s tree of children.
    up: Option<Key>,
    /// Its ancestors as first seen, parent first (at most [`MAX_DEPTH`]).
    ancestors: Box<[Key]>,
    /// The images it ran, in turn (at most [`MAX_IMAGES`]); none while it
    /// was never readable.
    pub(crate) images: Vec<Arc<Image>>,
    pub(crate) exited: bool,
}

impl Node {
    /// Its last image.
    pub(crate) fn last(&self) -> Option<&Arc<Image>> {
        self.images.last()
    }
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
fn push_key(order: &mut VecDeque<Key>, key: Key, nodes: &KeyMap<Node>, capacity: usize) {
    order.push_back(key);
    if order.len() > 2 * capacity {
        order.retain(|k| nodes.contains_key(k));
    }
}

/// Adds `key` to the set of the name `at` in `index` (the name copied
/// only when it is new there: a storm runs the same few).
fn name_add(index: &mut HashMap<String, KeySet>, at: &str, key: &Key) {
    if let Some(set) = index.get_mut(at) {
        set.insert(Arc::clone(key));
    } else {
        index.insert(at.to_owned(), KeySet::from_iter([Arc::clone(key)]));
    }
}

/// Adds `key` to the set of `at` in `index`.
fn index_add<K: std::hash::Hash + Eq, S: std::hash::BuildHasher>(
    index: &mut HashMap<K, KeySet, S>,
    at: K,
    key: &Key,
) {
    index.entry(at).or_default().insert(Arc::clone(key));
}

/// Takes `key` from the set of `at` in `index` (and the set, once empty).
fn index_remove<K, Q, S>(index: &mut HashMap<K, KeySet, S>, at: &Q, key: &str)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
    S: std::hash::BuildHasher,
{
    if let Some(set) = index.get_mut(at) {
        set.remove(key);
        if set.is_empty() {
            index.remove(at);
        }
    }
}

/// The lifecycle events of each value of one column, oldest first.
#[derive(Debug, Default)]
struct SeqIndex<K, S = std::hash::RandomState>(HashMap<K, VecDeque<i64>, S>);

impl<K: std::hash::Hash + Eq, S: std::hash::BuildHasher> SeqIndex<K, S> {
    fn push(&mut self, at: K, seq: i64) {
        self.0.entry(at).or_default().push_back(seq);
    }

    /// Forgets the oldest event of `at` (the oldest of all is the oldest
    /// of its own value).
    fn pop<Q>(&mut self, at: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some(seqs) = self.0.get_mut(at) {
            seqs.pop_front();
            if seqs.is_empty() {
                self.0.remove(at);
            }
        }
    }

    fn get<Q>(&self, at: &Q) -> Vec<i64>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0
            .get(at)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The history the rules see, bounded; see the [module](self).
#[derive(Debug)]
pub struct History {
    nodes: KeyMap<Node>,
    /// The live process of each pid, with its key unformatted (an event of
    /// it finds its shared string without formatting the key again).
    live: HashMap<u32, (ProcessKey, Key), KeyHasher>,
    /// Keys in the order they exited (evicted first).
    exited: VecDeque<Key>,
    /// Keys in the order they were first seen.
    seen: VecDeque<Key>,
    /// Each last image's name: the processes whose last image it is.
    by_name: HashMap<String, KeySet>,
    /// Each process: those whose nearest remembered ancestor it is (its
    /// children, and those of its forgotten children). A lookup by
    /// ancestor walks down it, where an index of every descendant cost a
    /// new process an insert into the set of each of its ancestors (up to
    /// [`MAX_DEPTH`], sets as large as the host's process count).
    children: KeyMap<KeySet>,
    /// Each image name: the processes with more than one image (those
    /// `exec_lineage` lists) that ran an image of that name.
    lineage_names: HashMap<String, KeySet>,
    /// The lifecycle events kept, oldest first (consecutive `seq`s).
    lifecycle: VecDeque<LifecycleRow>,
    lifecycle_by_ppid: SeqIndex<u32, KeyHasher>,
    lifecycle_by_key: SeqIndex<Key, KeyHasher>,
    next_seq: i64,
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

impl Image {
    /// Whether `e` reports this image (its executable, name and arguments;
    /// compared without joining the arguments).
    fn is_shown_by(&self, e: &ProcessEvent) -> bool {
        self.exe == e.executable_path
            && self.name == e.name
            && joined_is(&self.cmdline, &e.command_line)
    }
}

/// Whether `parts` joined by spaces are `joined`.
fn joined_is(joined: &str, parts: &[String]) -> bool {
    let mut rest = joined;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            let Some(r) = rest.strip_prefix(' ') else {
                return false;
            };
            rest = r;
        }
        let Some(r) = rest.strip_prefix(part.as_str()) else {
            return false;
        };
        rest = r;
    }
    rest.is_empty()
}

/// Which rows of `ancestry` a lookup wants.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AncestryBy<'a> {
    /// Every row.
    All,
    /// The rows of one descendant.
    Key(&'a str),
    /// The rows whose ancestor is this process.
    AncestorKey(&'a str),
    /// The rows whose ancestor's last image has this name.
    AncestorName(&'a str),
}

/// Which rows of `exec_lineage` a lookup wants.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LineageBy<'a> {
    /// Every row.
    All,
    /// The images of one process.
    Key(&'a str),
    /// The images of this name.
    Name(&'a str),
}

/// Which rows of `lifecycle_events` a lookup wants.
#[derive(Debug, Clone, Copy)]
pub(crate) enum LifecycleBy<'a> {
    /// Every row.
    All,
    /// The events of one process.
    Key(&'a str),
    /// The events whose parent pid is this.
    Ppid(u32),
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
            nodes: KeyMap::default(),
            live: HashMap::default(),
            exited: VecDeque::new(),
            seen: VecDeque::new(),
            by_name: HashMap::new(),
            children: KeyMap::default(),
            lineage_names: HashMap::new(),
            lifecycle: VecDeque::new(),
            lifecycle_by_ppid: SeqIndex::default(),
            lifecycle_by_key: SeqIndex::default(),
            next_seq: 0,
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

    /// Lifecycle events kept.
    pub fn lifecycle_len(&self) -> usize {
        self.lifecycle.len()
    }

    /// The keys of `key`'s ancestors still remembered, parent first (what
    /// the `ancestry` table holds for it).
    pub fn ancestors(&self, key: &str) -> Vec<String> {
        self.nodes.get(key).map_or_else(Vec::new, |n| {
            n.ancestors
                .iter()
                .filter(|a| self.nodes.contains_key(&***a))
                .map(ToString::to_string)
                .collect()
        })
    }

    /// The process `key`.
    pub(crate) fn node(&self, key: &str) -> Option<&Node> {
        self.nodes.get(key)
    }

    /// The rows of `ancestry` `by` wants: (descendant, depth, ancestor),
    /// for ancestors still remembered.
    pub(crate) fn ancestry(&self, by: AncestryBy<'_>) -> Vec<(Key, usize, Key)> {
        let mut out = Vec::new();
        let of_descendant = |out: &mut Vec<_>, key: &Key, node: &Node| {
            for (i, a) in node.ancestors.iter().enumerate() {
                if self.nodes.contains_key(a) {
                    out.push((Arc::clone(key), i + 1, Arc::clone(a)));
                }
            }
        };
        // Down the tree from the ancestor: a process that has it among its
        // ancestors hangs under it (the ancestors between forgotten, it
        // hangs nearer), at most `MAX_DEPTH` levels down.
        let of_ancestor = |out: &mut Vec<_>, ancestor: &str| {
            let Some((a, _)) = self.nodes.get_key_value(ancestor) else {
                return;
            };
            let mut level: Vec<&Key> = vec![a];
            for _ in 0..MAX_DEPTH {
                let mut below = Vec::new();
                for d in level.iter().filter_map(|k| self.children.get(*k)).flatten() {
                    let Some(node) = self.nodes.get(d) else {
                        continue;
                    };
                    if let Some(i) = node.ancestors.iter().position(|x| x == a) {
                        out.push((Arc::clone(d), i + 1, Arc::clone(a)));
                    }
                    below.push(d);
                }
                if below.is_empty() {
                    break;
                }
                level = below;
            }
        };
        match by {
            AncestryBy::All => {
                for (key, node) in &self.nodes {
                    of_descendant(&mut out, key, node);
                }
            }
            AncestryBy::Key(key) => {
                if let Some((key, node)) = self.nodes.get_key_value(key) {
                    of_descendant(&mut out, key, node);
                }
            }
            AncestryBy::AncestorKey(a) => of_ancestor(&mut out, a),
            AncestryBy::AncestorName(name) => {
                for a in self.by_name.get(name).into_iter().flatten() {
                    of_ancestor(&mut out, a);
                }
            }
        }
        out
    }

    /// The rows of `exec_lineage` `by` wants: (process, image index).
    pub(crate) fn lineage(&self, by: LineageBy<'_>) -> Vec<(Key, usize)> {
        let images = |key: &Key, node: &Node, name: Option<&str>| {
            let all = node.images.len() > 1;
            node.images
                .iter()
                .enumerate()
                .filter(move |(_, i)| all && name.is_none_or(|n| i.name == n))
                .map(|(seq, _)| (Arc::clone(key), seq))
                .collect::<Vec<_>>()
        };
        match by {
            LineageBy::All => self
                .nodes
                .iter()
                .flat_map(|(k, n)| images(k, n, None))
                .collect(),
            LineageBy::Key(key) => self
                .nodes
                .get_key_value(key)
                .map(|(k, n)| images(k, n, None))
                .unwrap_or_default(),
            LineageBy::Name(name) => self
                .lineage_names
                .get(name)
                .into_iter()
                .flatten()
                .filter_map(|k| self.nodes.get_key_value(k))
                .flat_map(|(k, n)| images(k, n, Some(name)))
                .collect(),
        }
    }

    /// The `seq`s of the rows of `lifecycle_events` `by` wants, oldest
    /// first.
    pub(crate) fn lifecycle(&self, by: LifecycleBy<'_>) -> Vec<i64> {
        match by {
            LifecycleBy::All => self.lifecycle.iter().map(|r| r.seq).collect(),
            LifecycleBy::Key(key) => self.lifecycle_by_key.get(key),
            LifecycleBy::Ppid(ppid) => self.lifecycle_by_ppid.get(&ppid),
        }
    }

    /// The lifecycle event `seq`, if kept.
    pub(crate) fn lifecycle_row(&self, seq: i64) -> Option<&LifecycleRow> {
        let first = self.lifecycle.front()?.seq;
        usize::try_from(seq.checked_sub(first)?)
            .ok()
            .and_then(|i| self.lifecycle.get(i))
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
        let Some(pk) = e.process_key else {
            return;
        };
        // One shared string per process, whatever names it.
        let key: Key = match self.live.get(&e.pid) {
            Some((live, k)) if *live == pk => Arc::clone(k),
            _ => {
                let text = pk.to_string();
                self.nodes
                    .get_key_value(text.as_str())
                    .map_or_else(|| Arc::from(text), |(k, _)| Arc::clone(k))
            }
        };
        // The image the event shows: the process's last one, shared, when
        // it is unchanged (an exit, a snapshot of a known process).
        let image = match self.nodes.get(&key).and_then(Node::last) {
            Some(last) if last.is_shown_by(e) => Arc::clone(last),
            _ => Arc::new(image_of(e)),
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
                process_key: Arc::clone(&key),
                pid: e.pid,
                ppid: e.ppid,
                image: Arc::clone(&image),
            });
        }
        if e.event_type == ProcessEventType::Exit {
            self.exit(&key, e.pid);
            return;
        }
        if let Some(old) = self
            .live
            .get(&e.pid)
            .map(|(_, k)| k)
            .filter(|k| **k != key)
            .cloned()
        {
            // The pid names another process now: the one before is gone.
            self.exit(&old, e.pid);
        }
        let readable = e.accessible || !e.name.is_empty();
        match self.nodes.get_mut(&key) {
            Some(node) => {
                if !readable {
                    return;
                }
                let changed = node.last().is_none_or(|last| !Arc::ptr_eq(last, &image));
                if !changed {
                    return;
                }
                if node.images.len() >= MAX_IMAGES {
                    self.counters.images_dropped.inc();
                    return;
                }
                if let Some(last) = node.images.last() {
                    index_remove(&mut self.by_name, last.name.as_str(), &key);
                }
                name_add(&mut self.by_name, &image.name, &key);
                node.images.push(image);
                match node.images.as_slice() {
                    [] | [_] => {}
                    [first, second] => {
                        name_add(&mut self.lineage_names, &first.name, &key);
                        name_add(&mut self.lineage_names, &second.name, &key);
                    }
                    [.., latest] => {
                        name_add(&mut self.lineage_names, &latest.name, &key);
                    }
                }
            }
            None => self.insert(pk, key, e, readable.then_some(image)),
        }
    }

    /// Remembers a new process (with `image` when it was readable).
    fn insert(&mut self, pk: ProcessKey, key: Key, e: &ProcessEvent, image: Option<Arc<Image>>) {
        while self.nodes.len() >= self.capacity {
            if !self.evict_one() {
                break;
            }
        }
        let parent = e
            .ppid
            .filter(|&pp| pp != e.pid)
            .and_then(|pp| self.live.get(&pp))
            .map(|(_, k)| k)
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
        let up = parent.clone().filter(|p| self.nodes.contains_key(p));
        if let Some(up) = &up {
            index_add(&mut self.children, Arc::clone(up), &key);
        }
        let images = match image {
            Some(image) => {
                name_add(&mut self.by_name, &image.name, &key);
                vec![image]
            }
            None => Vec::new(),
        };
        self.nodes.insert(
            Arc::clone(&key),
            Node {
                pid: e.pid,
                parent,
                up,
                ancestors: ancestors.into_boxed_slice(),
                images,
                exited: false,
            },
        );
        self.live.insert(e.pid, (pk, Arc::clone(&key)));
        push_key(&mut self.seen, key, &self.nodes, self.capacity);
    }

    fn exit(&mut self, key: &Key, pid: u32) {
        if self.live.get(&pid).is_some_and(|(_, k)| k == key) {
            self.live.remove(&pid);
        }
        let Some(node) = self.nodes.get_mut(key) else {
            return;
        };
        if node.exited {
            return;
        }
        node.exited = true;
        push_key(
            &mut self.exited,
            Arc::clone(key),
            &self.nodes,
            self.capacity,
        );
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
            if self.live.get(&node.pid).is_some_and(|(_, k)| *k == key) {
                self.live.remove(&node.pid);
            }
            if let Some(last) = node.last() {
                index_remove(&mut self.by_name, last.name.as_str(), &key);
            }
            if node.images.len() > 1 {
                for image in &node.images {
                    index_remove(&mut self.lineage_names, image.name.as_str(), &key);
                }
            }
            // Its children hang from its own nearest ancestor now.
            if let Some(up) = &node.up {
                index_remove(&mut self.children, &**up, &key);
            }
            if let Some(children) = self.children.remove(&key) {
                for c in &children {
                    if let Some(child) = self.nodes.get_mut(c) {
                        child.up.clone_from(&node.up);
                    }
                }
                if let Some(up) = &node.up {
                    self.children
                        .entry(Arc::clone(up))
                        .or_default()
                        .extend(children);
                }
            }
        }
        self.counters.evicted.inc();
        true
    }

    fn push_lifecycle(&mut self, mut row: LifecycleRow) {
        row.seq = self.next_seq;
        self.next_seq += 1;
        let window = i64::try_from(LIFECYCLE_WINDOW.as_nanos()).unwrap_or(i64::MAX);
        let horizon = row.observed_at.map(|t| t.saturating_sub(window));
        while let Some(front) = self.lifecycle.front() {
            let expired = matches!((front.observed_at, horizon), (Some(a), Some(h)) if a < h);
            let full = self.lifecycle.len() >= self.lifecycle_capacity;
            if !expired && !full {
                break;
            }
            if !expired {
                self.counters.lifecycle_dropped.inc();
            }
            if let Some(gone) = self.lifecycle.pop_front() {
                if let Some(ppid) = gone.ppid {
                    self.lifecycle_by_ppid.pop(&ppid);
                }
                self.lifecycle_by_key.pop(&*gone.process_key);
            }
        }
        if let Some(ppid) = row.ppid {
            self.lifecycle_by_ppid.push(ppid, row.seq);
        }
        self.lifecycle_by_key
            .push(Arc::clone(&row.process_key), row.seq);
        self.lifecycle.push_back(row);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use collector_core::BootId;
    use proptest::prelude::*;

    fn event(kind: ProcessEventType, pid: u32, name: &str, argv: &[&str]) -> ProcessEvent {
        let mut e = ProcessEvent::new(pid, name);
        e.event_type = kind;
        e.ppid = Some(1);
        e.executable_path = Some(format!("/usr/bin/{name}"));
        e.command_line = argv.iter().map(|a| (*a).to_owned()).collect();
        e.process_key = Some(ProcessKey::new(BootId::from_bytes([3; 16]), pid, 77));
        e
    }

    #[test]
    fn an_event_showing_the_last_image_shares_it_and_another_does_not() {
        let mut h = History::new();
        for e in [
            event(ProcessEventType::Fork, 9, "sh", &["sh"]),
            event(ProcessEventType::Exec, 9, "true", &["true", "a b"]),
            // The arguments joined are the image's (as they always were).
            event(ProcessEventType::Snapshot, 9, "true", &["true", "a", "b"]),
            event(ProcessEventType::Exit, 9, "true", &["true", "a b"]),
        ] {
            h.observe(&e);
        }
        let rows: Vec<_> = h.lifecycle.iter().collect();
        assert_eq!(rows.len(), 3);
        let key = rows[0].process_key.clone();
        let node = h.node(&key).unwrap();
        assert_eq!(node.images.len(), 2, "{:?}", node.images);
        assert!(Arc::ptr_eq(&rows[0].image, &node.images[0]));
        assert!(Arc::ptr_eq(&rows[1].image, &node.images[1]));
        assert!(Arc::ptr_eq(&rows[2].image, &node.images[1]), "the exit's");
        assert_eq!(rows[2].image.cmdline, "true a b");

        let mut other = event(ProcessEventType::Exit, 10, "true", &["true"]);
        other.executable_path = Some("/tmp/true".into());
        h.observe(&event(ProcessEventType::Exec, 10, "true", &["true"]));
        h.observe(&other);
        let rows: Vec<_> = h.lifecycle.iter().skip(3).collect();
        assert!(!Arc::ptr_eq(&rows[0].image, &rows[1].image));
        assert_eq!(rows[1].image.exe.as_deref(), Some("/tmp/true"));
    }

    /// Every row of `ancestry` whose ancestor is `a`, as a scan finds them.
    fn scanned(h: &History, a: &str) -> Vec<(Key, usize, Key)> {
        let mut rows: Vec<_> = h
            .ancestry(AncestryBy::All)
            .into_iter()
            .filter(|(_, _, x)| &**x == a)
            .collect();
        rows.sort();
        rows
    }

    fn looked_up(h: &History, a: &str) -> Vec<(Key, usize, Key)> {
        let mut rows = h.ancestry(AncestryBy::AncestorKey(a));
        rows.sort();
        rows
    }

    #[test]
    fn a_grandchild_is_found_under_its_grandparent_once_the_parent_between_is_forgotten() {
        let mut h = History::with_capacity(4, 100);
        let child = |pid: u32, ppid: u32| {
            let mut e = event(ProcessEventType::Fork, pid, "sh", &["sh"]);
            e.ppid = Some(ppid);
            e
        };
        h.observe(&event(ProcessEventType::Snapshot, 1, "init", &["init"]));
        h.observe(&child(2, 1));
        h.observe(&child(3, 2));
        h.observe(&child(4, 3));
        h.observe(&event(ProcessEventType::Exit, 2, "sh", &["sh"]));
        // Full: the next process evicts 2, which exited.
        h.observe(&child(5, 1));
        assert_eq!(h.counters().evicted.get(), 1);
        let key = |pid| ProcessKey::new(BootId::from_bytes([3; 16]), pid, 77).to_string();
        assert!(h.node(&key(2)).is_none());
        let rows: Vec<_> = looked_up(&h, &key(1))
            .into_iter()
            .map(|(d, depth, _)| (d.to_string(), depth))
            .collect();
        assert_eq!(rows, [(key(3), 2), (key(4), 3), (key(5), 1)]);
        assert_eq!(looked_up(&h, &key(1)), scanned(&h, &key(1)));
    }

    proptest! {
        /// Forks under random live parents, exits and evictions (a small
        /// history): every lookup by ancestor finds what a scan of every
        /// process's ancestors does.
        #[test]
        fn a_lookup_by_ancestor_finds_what_a_scan_does(
            steps in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..120),
        ) {
            let mut h = History::with_capacity(12, 100);
            h.observe(&event(ProcessEventType::Snapshot, 1, "init", &["init"]));
            let mut live = vec![1_u32];
            let mut next = 2_u32;
            for (fork, at) in steps {
                if fork || live.len() == 1 {
                    let mut e = event(ProcessEventType::Fork, next, "sh", &["sh"]);
                    e.ppid = Some(live[at.index(live.len())]);
                    h.observe(&e);
                    live.push(next);
                    next += 1;
                } else {
                    let pid = live.remove(1 + at.index(live.len() - 1));
                    h.observe(&event(ProcessEventType::Exit, pid, "sh", &["sh"]));
                }
                for a in h.nodes.keys() {
                    prop_assert_eq!(looked_up(&h, a), scanned(&h, a));
                }
            }
        }

        #[test]
        fn joined_is_what_joining_says(
            parts in proptest::collection::vec("[ ab]{0,3}", 0..4),
            other in "[ ab]{0,8}",
        ) {
            let joined = parts.join(" ");
            prop_assert!(joined_is(&joined, &parts));
            prop_assert_eq!(joined_is(&other, &parts), other == joined);
        }
    }
}
