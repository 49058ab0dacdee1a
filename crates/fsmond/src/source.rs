//! fsmond as an event source: fanotify marks on the filesystems of the
//! watched paths, a baseline scan, and then every record turned into
//! [`FilesystemEvent`]s for the paths under a watched one.
//!
//! # What a record becomes
//! The kernel merges queued events on one object (a create, its writes and
//! its close by one process are one record, the masks OR-ed), so a record
//! gives one event per operation bit it has, in the order create, modify,
//! close-after-write, attribute change, rename, delete. Its directory
//! handle is opened with `open_by_handle_at` on the marked filesystem and
//! named by its `/proc/self/fd` link, and the entry's name joined to it; a
//! directory gone by then cannot be named, and its record is counted
//! `unresolved`. Paths outside every watched path are dropped (counted
//! `ignored`): marks cover whole filesystems.
//!
//! # What is watched
//! Each watched path with everything under it; a component `*` matches any
//! one name (`/home/*/.ssh`: every home's, those made later too). A path
//! that does not exist yet is watched all the same, on the filesystem of
//! its nearest existing directory (`/root/.ssh` before anyone made it).
//! With a [`watch_root`](FsmondConfig::watch_root) other than `/` (a
//! container's root filesystem, a chroot, a test's root), the watched paths
//! are under it and events say their paths as that system sees them, with
//! the root in [`FilesystemEvent::root`]: rules that match `/etc/cron.d/`
//! match there too.
//!
//! # Losing events
//! A full queue (16,384 records unless `unlimited_queue`) makes the kernel
//! drop records and queue one `FAN_Q_OVERFLOW`. fsmond counts it, reports
//! itself degraded, and once the queue is drained rescans the watched
//! paths: every difference from its baseline becomes an event without a
//! pid, so the final state is right even when the history is not.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use collector_core::metrics::{Counter, Registry};
use collector_core::source::{start_from_flag, EventSender, ShutdownFlag};
use collector_core::{
    procfs, BootId, CollectionEvent, EventSource, FileOperation, FileType, FilesystemEvent,
    HashAlgorithm, ProcessKey, SourceCaps, SourceContext,
};
use daemoneye_hasher::{HashEngine, HasherConfig};
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, warn};

use crate::baseline::{self, Baseline, FileState};
use crate::record::{parse_records, FidKind, Record};
use crate::sys::{self, Group};

/// The source's name, in logs, metrics and health.
pub const NAME: &str = "fsmond";

/// The most scans of one rescan (each after the last found changes).
const RESCAN_ROUNDS: usize = 4;

/// `FAN_Q_OVERFLOW`.
const Q_OVERFLOW: u64 = 0x4000;

/// The most directory paths kept (see `Watcher::dirs`): some 200 bytes each.
const DIR_CACHE_CAPACITY: usize = 8192;

/// The most ignore marks at once (each pins its directory's inode in the
/// kernel, some hundreds of bytes; the group's limit is 8,192 marks by
/// default): past it they are all let go, and it starts again.
const MAX_IGNORED: usize = 4096;

/// What a directory's record may change the paths under it by.
const MOVES: u64 = sys::FAN_RENAME
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_DELETE
    | libc::FAN_DELETE_SELF
    | libc::FAN_MOVE_SELF;

/// fsmond's settings (`[fsmond]` in its config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsmondConfig {
    /// Absolute paths watched (each with everything under it; a component
    /// `*` matches any one name), under `watch_root`.
    pub watch: Vec<PathBuf>,
    /// Where the watched system's `/` is (default the host's own): the
    /// watched paths are under it, and events give their paths as that
    /// system sees them, with this root.
    pub watch_root: PathBuf,
    /// Hash regular files: in the baseline, and after each close-after-write,
    /// create or rename.
    pub hash: bool,
    /// The hasher's settings (algorithm, size limit, byte budget).
    pub hasher: HasherConfig,
    /// Ask the kernel for a queue without a limit (`FAN_UNLIMITED_QUEUE`):
    /// no overflow, at the price of kernel memory under a storm.
    pub unlimited_queue: bool,
    /// Where procfs is mounted (process keys).
    pub proc_root: PathBuf,
    /// After the first record of a quiet spell, how long to let more come
    /// before reading them all (milliseconds; 0: read at once): one wake-up
    /// for many records on a busy filesystem, at the price of that much
    /// latency.
    pub batch_window_ms: u64,
}

impl Default for FsmondConfig {
    fn default() -> Self {
        Self {
            watch: [
                "/etc",
                "/usr/bin",
                "/usr/sbin",
                "/usr/local/bin",
                "/usr/lib/systemd/system",
                "/root/.ssh",
                "/root/.bashrc",
                "/root/.bash_profile",
                "/root/.profile",
                "/home/*/.ssh",
                "/var/spool/cron",
            ]
            .map(PathBuf::from)
            .to_vec(),
            watch_root: PathBuf::from("/"),
            hash: true,
            hasher: HasherConfig::default(),
            unlimited_queue: false,
            proc_root: PathBuf::from("/proc"),
            batch_window_ms: 10,
        }
    }
}

impl FsmondConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`collector_core::ConfigError::Invalid`] naming the bad field.
    pub fn validate(&self) -> Result<(), collector_core::ConfigError> {
        let bad = |field: &'static str, reason: String| collector_core::ConfigError::Invalid {
            field,
            reason,
        };
        if self.watch.is_empty() {
            return Err(bad("fsmond.watch", "is empty".to_owned()));
        }
        if let Some(p) = self.watch.iter().find(|p| !p.is_absolute()) {
            return Err(bad(
                "fsmond.watch",
                format!("{} is not absolute", p.display()),
            ));
        }
        if let Some(p) = self.watch.iter().find(|p| {
            p.components().any(|c| {
                let c = c.as_os_str().as_encoded_bytes();
                c == b".." || (c.contains(&b'*') && c != b"*")
            })
        }) {
            return Err(bad(
                "fsmond.watch",
                format!(
                    "{}: `..` is not allowed, and `*` only as a whole component",
                    p.display()
                ),
            ));
        }
        if !self.watch_root.is_absolute() {
            return Err(bad(
                "fsmond.watch_root",
                format!("{} is not absolute", self.watch_root.display()),
            ));
        }
        self.hasher
            .validate()
            .map_err(|e| bad("fsmond.hasher", e.to_string()))
    }
}

/// What fsmond counts (shared: clones see the same).
#[derive(Debug, Clone, Default)]
pub struct FsmondCounters {
    /// Records read from the kernel.
    pub records: Counter,
    /// Events sent.
    pub events: Counter,
    /// Records on paths outside every watched path.
    pub ignored: Counter,
    /// Records whose directory could not be named (gone by then).
    pub unresolved: Counter,
    /// Queue overflows (`FAN_Q_OVERFLOW`): records the kernel dropped.
    pub overflows: Counter,
    /// Rescans of the watched paths (at start and after overflows).
    pub rescans: Counter,
    /// Records the parser refused.
    pub parse_errors: Counter,
    /// Directories the kernel was told to ignore (ignore marks: nothing
    /// watched is in or under them, see [`FsmondSource`]).
    pub ignored_dirs: Counter,
}

impl FsmondCounters {
    /// Registers the counters for `/metrics`.
    pub fn register_metrics(&self, registry: &Registry) {
        let labels = [("source", NAME)];
        registry.register_counters(
            &labels,
            &[
                (
                    "daemoneye_fs_records_total",
                    "fanotify records read.",
                    &self.records,
                ),
                (
                    "daemoneye_fs_events_total",
                    "File events sent.",
                    &self.events,
                ),
                (
                    "daemoneye_fs_ignored_total",
                    "fanotify records on paths outside the watched ones.",
                    &self.ignored,
                ),
                (
                    "daemoneye_fs_unresolved_total",
                    "fanotify records whose directory could not be named.",
                    &self.unresolved,
                ),
                (
                    "daemoneye_fs_overflows_total",
                    "fanotify queue overflows (records dropped by the kernel).",
                    &self.overflows,
                ),
                (
                    "daemoneye_fs_rescans_total",
                    "Scans of the watched paths.",
                    &self.rescans,
                ),
                (
                    "daemoneye_fs_parse_errors_total",
                    "fanotify reads the record parser refused.",
                    &self.parse_errors,
                ),
                (
                    "daemoneye_fs_ignored_dirs_total",
                    "Unwatched directories whose events the kernel was told to drop.",
                    &self.ignored_dirs,
                ),
            ],
        );
    }
}

/// Why health is not good, shared with the health check.
#[derive(Debug, Default)]
struct Status {
    rescanning: AtomicBool,
    unwatched: Mutex<Vec<(PathBuf, String)>>,
}

/// The fsmond source.
#[derive(Debug)]
pub struct FsmondSource {
    config: FsmondConfig,
    counters: FsmondCounters,
    engine: Option<HashEngine>,
    status: Arc<Status>,
}

impl FsmondSource {
    /// A source with `config` (validated) counting into `counters`.
    ///
    /// # Errors
    /// [`collector_core::ConfigError::Invalid`] for a bad setting.
    pub fn new(
        config: FsmondConfig,
        counters: FsmondCounters,
    ) -> Result<Self, collector_core::ConfigError> {
        config.validate()?;
        let engine = if config.hash {
            Some(HashEngine::new(config.hasher.clone()).map_err(|e| {
                collector_core::ConfigError::Invalid {
                    field: "fsmond.hasher",
                    reason: e.to_string(),
                }
            })?)
        } else {
            None
        };
        Ok(Self {
            config,
            counters,
            engine,
            status: Arc::default(),
        })
    }

    /// Its counters.
    pub fn counters(&self) -> &FsmondCounters {
        &self.counters
    }

    /// The hash engine, when hashing (for its metrics).
    pub fn engine(&self) -> Option<&HashEngine> {
        self.engine.as_ref()
    }

    /// Whether a rescan after an overflow is under way.
    pub fn rescanning(&self) -> bool {
        self.status.rescanning.load(Ordering::SeqCst)
    }

    /// The watched paths that could not be marked, and why.
    pub fn unwatched(&self) -> Vec<(PathBuf, String)> {
        self.status
            .unwatched
            .lock()
            .map(|u| u.clone())
            .unwrap_or_default()
    }
}

/// One marked filesystem: a descriptor on it (for `open_by_handle_at`).
struct Mount {
    dev: u64,
    fd: OwnedFd,
}

/// The running state of [`FsmondSource::start_with`].
struct Watcher<'a> {
    source: &'a FsmondSource,
    /// The watched paths on this host (under the watch root, resolved),
    /// each perhaps with `*` components.
    roots: Vec<PathBuf>,
    /// The watch root (resolved), when it is not `/`.
    root: Option<PathBuf>,
    mounts: Vec<Mount>,
    /// Which mount opened handles of this fsid last.
    by_fsid: HashMap<[i32; 2], usize>,
    /// Directory handle (fsid, type and bytes) -> its path: a record in a
    /// directory named before costs no system call (most records, on a
    /// marked filesystem, come from a few busy directories, and most are
    /// outside the watched paths). Cleared whenever a directory is
    /// renamed or deleted (its path, and those under it, may have changed)
    /// and when full.
    dirs: HashMap<Vec<u8>, PathBuf>,
    /// The key being looked up in `dirs` (one buffer for every record).
    dir_key: Vec<u8>,
    /// Directories named while reading, in which nothing is watched,
    /// to be ignored by the kernel once the read is handled.
    to_ignore: Vec<OwnedFd>,
    /// Ignore marks in place (flushed at [`MAX_IGNORED`]).
    ignored: usize,
    /// Whether the kernel takes ignore marks (`FAN_MARK_IGNORE`, 6.0).
    can_ignore: bool,
    baseline: Baseline,
    algorithm: Option<HashAlgorithm>,
    boot: Option<BootId>,
}

#[async_trait::async_trait]
impl EventSource for FsmondSource {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> SourceCaps {
        SourceCaps::FILESYSTEM | SourceCaps::REALTIME | SourceCaps::KERNEL_LEVEL
    }

    async fn start(&self, tx: EventSender, flag: ShutdownFlag) -> anyhow::Result<()> {
        start_from_flag(self, tx, flag).await
    }

    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        let group = match Group::new(self.config.unlimited_queue) {
            Ok(group) => group,
            Err(e) => {
                let why = format!(
                    "fanotify_init with FAN_REPORT_DFID_NAME: {e} (needs CAP_SYS_ADMIN and Linux 5.9)"
                );
                return self.unavailable(&ctx, why).await;
            }
        };
        let mut w = Watcher {
            source: self,
            roots: Vec::new(),
            root: Some(resolve(&self.config.watch_root)).filter(|r| r != Path::new("/")),
            mounts: Vec::new(),
            by_fsid: HashMap::new(),
            dirs: HashMap::new(),
            dir_key: Vec::new(),
            to_ignore: Vec::new(),
            ignored: 0,
            can_ignore: true,
            baseline: Baseline::default(),
            algorithm: self
                .engine
                .as_ref()
                .and_then(|e| e.algorithms().first().copied()),
            boot: BootId::current().ok(),
        };
        w.mark(&group);
        // The paths that could not be marked are in health now, not at the
        // health checker's next interval.
        ctx.health_changed();
        if w.roots.is_empty() {
            error!("no watched path could be marked: fsmond sees nothing until restarted");
            ctx.shutdown().cancelled().await;
            return Ok(());
        }
        let mut group = Some(group);
        w.baseline = baseline::scan(&w.scanned(), self.engine.as_ref()).await;
        self.counters.rescans.inc();
        for (path, why) in &w.baseline.unreadable {
            warn!(path = %path.display(), error = %why, "unreadable in the baseline");
        }
        for path in &w.baseline.missing {
            debug!(path = %path.display(), "watched, not there yet");
        }
        let mut buf = vec![0u8; 256 * 1024];
        let window = std::time::Duration::from_millis(self.config.batch_window_ms);
        loop {
            // Registered with the reactor only while waiting for the first
            // record: registered, every record the kernel queues wakes the
            // reactor's thread (an edge for each), a wake-up (and an IPI)
            // paid by the process that wrote; an untar's every file.
            let Some(idle) = group.take() else {
                return Ok(());
            };
            let waiting = idle
                .into_async()
                .context("registering the fanotify descriptor")?;
            tokio::select! {
                biased;
                () = ctx.shutdown().cancelled() => return Ok(()),
                r = waiting.readable() => drop(r.context("waiting on the fanotify descriptor")?),
            }
            let g = group.insert(waiting.into_inner());
            if !window.is_zero() {
                tokio::select! {
                    biased;
                    () = ctx.shutdown().cancelled() => return Ok(()),
                    () = tokio::time::sleep(window) => {}
                }
            }
            let mut overflowed = false;
            // Drain what is queued now, then rescan if anything was lost.
            loop {
                let n = g.read(&mut buf).context("reading fanotify records")?;
                if n == 0 {
                    break;
                }
                let records = match parse_records(&buf[..n]) {
                    Ok(records) => records,
                    Err(e) => {
                        self.counters.parse_errors.inc();
                        warn!(error = %e, "unparsable fanotify records");
                        continue;
                    }
                };
                match w.deliver(&records, ctx.out(), g).await {
                    Some(lost) => overflowed |= lost,
                    None => return Ok(()),
                }
                if ctx.shutdown().is_cancelled() {
                    return Ok(());
                }
            }
            if overflowed {
                warn!("fanotify queue overflowed: rescanning the watched paths");
                ctx.health_changed();
                if !w.rescan(ctx.out()).await {
                    return Ok(());
                }
                self.status.rescanning.store(false, Ordering::SeqCst);
                ctx.health_changed();
            }
        }
    }

    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn health_check(&self) -> anyhow::Result<()> {
        if self.rescanning() {
            anyhow::bail!("the fanotify queue overflowed: rescanning the watched paths");
        }
        let unwatched = self.unwatched();
        if !unwatched.is_empty() {
            // By reason: without fanotify, every path has the same.
            let mut by_reason: Vec<(&str, Vec<String>)> = Vec::new();
            for (path, why) in &unwatched {
                let path = path.display().to_string();
                match by_reason.iter_mut().find(|(w, _)| w == why) {
                    Some((_, paths)) => paths.push(path),
                    None => by_reason.push((why, vec![path])),
                }
            }
            let parts: Vec<String> = by_reason
                .iter()
                .map(|(why, paths)| format!("{} ({why})", paths.join(", ")))
                .collect();
            anyhow::bail!("unwatched: {}", parts.join("; "));
        }
        Ok(())
    }
}

impl FsmondSource {
    /// Without fanotify: every watched path unwatched, for `why` (health
    /// says so), until shutdown. Not an error that ends the collector: its
    /// supervisor would start it again and again to the same end.
    async fn unavailable(&self, ctx: &SourceContext, why: String) -> anyhow::Result<()> {
        error!(reason = %why, "fanotify unavailable: nothing is watched");
        if let Ok(mut u) = self.status.unwatched.lock() {
            *u = self
                .config
                .watch
                .iter()
                .map(|p| (p.clone(), why.clone()))
                .collect();
        }
        ctx.health_changed();
        ctx.shutdown().cancelled().await;
        Ok(())
    }
}

impl Watcher<'_> {
    /// Sends the events of `records`; whether the kernel lost some
    /// (`FAN_Q_OVERFLOW`), or `None` once nobody receives.
    ///
    /// One read's records are taken together: each is named and looked at
    /// (a path looked at once, a process's key read once), then the files
    /// whose content changed are hashed in one go (each path once: the
    /// hasher's batch, two hand-offs to its blocking pool for the lot),
    /// then the events are made in order and sent without waiting between
    /// them. An untar's thousands of files so cost a few thread wake-ups a
    /// read, not several a file.
    async fn deliver(
        &mut self,
        records: &[Record<'_>],
        out: &EventSender,
        group: &Group,
    ) -> Option<bool> {
        let counters = &self.source.counters;
        let mut overflowed = false;
        let mut batch = Batch::default();
        for record in records {
            counters.records.inc();
            if record.mask & Q_OVERFLOW != 0 {
                counters.overflows.inc();
                self.source.status.rescanning.store(true, Ordering::SeqCst);
                overflowed = true;
                continue;
            }
            self.look(record, &mut batch);
            // A directory moved or gone: the paths kept may be stale (after
            // this record, whose own handles are its parents').
            if record.mask & libc::FAN_ONDIR != 0 && record.mask & MOVES != 0 {
                self.dirs.clear();
            }
        }
        if !batch.moved_dirs.is_empty() && self.ignored > 0 {
            // A directory moved where something is watched may have been
            // ignored, or be above one that was: let them all go.
            self.unignore(group);
        }
        self.ignore_pending(group);
        let hashes = self.hash(&batch).await;
        let moved = std::mem::take(&mut batch.moved_dirs);
        let moved_out = std::mem::take(&mut batch.moved_out);
        let Batch { seen, states, .. } = batch;
        let mut events = Vec::with_capacity(seen.len() * 3);
        for seen in seen {
            let now = states.get(&seen.path).cloned().flatten();
            events.extend(self.events(seen, now, &hashes));
        }
        for from in moved_out {
            self.take_subtree(&from);
        }
        for (dir, from) in moved {
            if self.watched(&dir) {
                events.extend(self.moved_in(&dir, from.as_deref()).await);
            }
        }
        for event in events {
            out.send(CollectionEvent::Filesystem(event)).await.ok()?;
            counters.events.inc();
        }
        Some(overflowed)
    }

    /// The events of what a directory moved into a watched path (from
    /// `from`, when known) holds: scanned, and told apart from what the
    /// baseline had under either path (a watched directory renamed within
    /// the watched paths: its unchanged files are no news), without a pid;
    /// the baseline follows (the old paths let go).
    async fn moved_in(&mut self, dir: &Path, from: Option<&Path>) -> Vec<FilesystemEvent> {
        let fresh = baseline::scan(&[dir.to_path_buf()], self.source.engine.as_ref()).await;
        let mut old = self.take_subtree(dir);
        if let Some(from) = from.filter(|f| *f != dir) {
            for (path, state) in self.take_subtree(from) {
                if let Ok(rest) = path.strip_prefix(from) {
                    old.insert(dir.join(rest), state);
                }
            }
        }
        let events = baseline::diff(&old, &fresh.files, self.algorithm, SystemTime::now());
        self.baseline.files.extend(fresh.files);
        events.into_iter().filter_map(|e| self.rooted(e)).collect()
    }

    /// What the baseline has under `dir` (itself included), taken out.
    fn take_subtree(&mut self, dir: &Path) -> std::collections::BTreeMap<PathBuf, FileState> {
        let paths: Vec<PathBuf> = self
            .baseline
            .files
            .range(dir.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(dir))
            .map(|(p, _)| p.clone())
            .collect();
        paths
            .into_iter()
            .filter_map(|p| self.baseline.files.remove_entry(&p))
            .collect()
    }

    /// Marks the directories named in the last read in which nothing is
    /// watched as ignored (see [`sys::Group::ignore_dir`]), up to
    /// [`MAX_IGNORED`] (then every mark is let go, and it starts again).
    fn ignore_pending(&mut self, group: &Group) {
        for dir in std::mem::take(&mut self.to_ignore) {
            if !self.can_ignore {
                return;
            }
            if self.ignored >= MAX_IGNORED {
                self.unignore(group);
            }
            match group.ignore_dir(dir.as_fd()) {
                Ok(()) => {
                    self.ignored += 1;
                    self.source.counters.ignored_dirs.inc();
                }
                // Before Linux 6.0: records outside the watched paths are
                // dropped here, as they always were.
                Err(Errno::EINVAL) => {
                    debug!("no FAN_MARK_IGNORE: unwatched directories are filtered here");
                    self.can_ignore = false;
                }
                Err(e) => debug!(error = %e, "ignore mark"),
            }
        }
    }

    /// Lets every ignore mark go (and the paths kept, so that the
    /// directories are seen, and marked, again).
    fn unignore(&mut self, group: &Group) {
        if let Err(e) = group.flush_ignored() {
            warn!(error = %e, "cannot flush the ignore marks");
            self.can_ignore = false;
        }
        self.ignored = 0;
        self.dirs.clear();
    }

    /// Whether something watched may be in or under `dir` (a path as
    /// this host names it): it is watched, or is on the way to a watched
    /// path (`/`, `/home` and `/home/ann` for `/home/*/.ssh`).
    fn relevant(&self, dir: &Path) -> bool {
        self.roots
            .iter()
            .any(|r| under(r, dir) || under(dir, r) || leads_to(dir, r))
    }

    /// The digests of the regular files of `batch` whose content changed,
    /// each path hashed once (none without an engine).
    async fn hash(&self, batch: &Batch) -> HashMap<PathBuf, String> {
        let Some(engine) = self.source.engine.as_ref() else {
            return HashMap::new();
        };
        let mut wanted: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
        let mut asked = std::collections::HashSet::new();
        for seen in &batch.seen {
            let Some(meta) = batch.metadata.get(&seen.path) else {
                continue;
            };
            if seen.mask & CONTENT != 0 && asked.insert(&seen.path) {
                wanted.push((seen.path.clone(), meta.clone()));
            }
        }
        if wanted.is_empty() {
            return HashMap::new();
        }
        let paths: Vec<PathBuf> = wanted.iter().map(|(p, _)| p.clone()).collect();
        let results = engine.hash_files_probed(wanted).await;
        paths
            .into_iter()
            .zip(results)
            .filter_map(|(path, r)| {
                let digest = r.ok()?.digests.first()?.hex.clone();
                Some((path, digest))
            })
            .collect()
    }

    /// Rescans the watched paths and sends what changed since the
    /// baseline; `false` once nobody receives.
    ///
    /// A directory listed while entries are added to it may miss some
    /// (readdir promises nothing about them), so scans are repeated until
    /// one finds nothing new (at most [`RESCAN_ROUNDS`]).
    async fn rescan(&mut self, out: &EventSender) -> bool {
        for _ in 0..RESCAN_ROUNDS {
            let fresh = baseline::scan(&self.scanned(), self.source.engine.as_ref()).await;
            self.source.counters.rescans.inc();
            let events = baseline::diff(
                &self.baseline.files,
                &fresh.files,
                self.algorithm,
                SystemTime::now(),
            );
            self.baseline = fresh;
            if events.is_empty() {
                break;
            }
            for event in events.into_iter().filter_map(|e| self.rooted(e)) {
                if out.send(CollectionEvent::Filesystem(event)).await.is_err() {
                    return false;
                }
                self.source.counters.events.inc();
            }
        }
        true
    }

    /// The paths a scan walks: every watched path, its `*` components
    /// expanded to what exists now.
    fn scanned(&self) -> Vec<PathBuf> {
        self.roots.iter().flat_map(|r| expand(r)).collect()
    }

    /// An event of this host's paths as the watched system sees them
    /// (`None` for one outside the watch root).
    fn rooted(&self, mut e: FilesystemEvent) -> Option<FilesystemEvent> {
        let Some(root) = &self.root else {
            return Some(e);
        };
        let inside = |p: &str| -> Option<String> {
            let rest = Path::new(p).strip_prefix(root).ok()?;
            Some(Path::new("/").join(rest).to_string_lossy().into_owned())
        };
        e.path = inside(&e.path)?;
        e.old_path = e.old_path.as_deref().and_then(inside);
        e.root = Some(root.to_string_lossy().into_owned());
        Some(e)
    }

    /// Marks the filesystems of every watched path (once per device): that
    /// of its nearest existing directory, and, for a path with `*`, those
    /// of what it matches now; notes the paths that cannot be.
    fn mark(&mut self, group: &Group) {
        let mut unwatched = Vec::new();
        let base = self.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        for path in &self.source.config.watch.clone() {
            let real = resolve(&base.join(path.strip_prefix("/").unwrap_or(path)));
            let mut on: Vec<PathBuf> = vec![existing(&fixed_prefix(&real))];
            if real != fixed_prefix(&real) {
                on.extend(expand(&real));
            }
            let mut failed = None;
            for dir in &on {
                if let Err(why) = self.mark_one(group, dir) {
                    failed = Some(why);
                    break;
                }
            }
            match failed {
                Some(why) => unwatched.push((real, why)),
                None => self.roots.push(real),
            }
        }
        for (path, why) in &unwatched {
            warn!(path = %path.display(), reason = %why, "not watched");
        }
        if let Ok(mut u) = self.source.status.unwatched.lock() {
            *u = unwatched;
        }
    }

    /// Marks the filesystem `dir` is on, unless one of its device's is.
    fn mark_one(&mut self, group: &Group, dir: &Path) -> Result<(), String> {
        let fd = sys::open_mount(dir).map_err(|e| format!("open: {e}"))?;
        let dev = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|e| format!("fstat: {e}"))?
            .st_dev;
        if self.mounts.iter().any(|m| m.dev == dev) {
            return Ok(());
        }
        group
            .mark_filesystem(fd.as_fd(), dir, sys::BASE_MASK | sys::FAN_RENAME)
            .or_else(|e| match e {
                // Before Linux 5.17: the two halves of a rename apart.
                Errno::EINVAL => group.mark_filesystem(
                    fd.as_fd(),
                    dir,
                    sys::BASE_MASK | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO,
                ),
                e => Err(e),
            })
            .map_err(|e| format!("fanotify_mark: {e}"))?;
        self.mounts.push(Mount { dev, fd });
        Ok(())
    }

    /// The path a directory handle and name stand for.
    fn resolve(&mut self, fid: &crate::record::Fid<'_>) -> Option<PathBuf> {
        let name = |dir: &Path| match fid.name {
            None | Some(b".") => dir.to_path_buf(),
            Some(name) => {
                dir.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name))
            }
        };
        self.dir_key.clear();
        for w in fid.fsid.iter().chain([&fid.handle_type]) {
            self.dir_key.extend_from_slice(&w.to_ne_bytes());
        }
        self.dir_key.extend_from_slice(fid.handle);
        if let Some(dir) = self.dirs.get(self.dir_key.as_slice()) {
            return Some(name(dir));
        }
        let dir = self.open_dir(fid)?;
        if self.dirs.len() >= DIR_CACHE_CAPACITY {
            self.dirs.clear();
        }
        self.dirs.insert(self.dir_key.clone(), dir.clone());
        Some(name(&dir))
    }

    /// The path of the directory a handle names now (`open_by_handle_at`
    /// on the filesystems marked, then its `/proc/self/fd` link).
    fn open_dir(&mut self, fid: &crate::record::Fid<'_>) -> Option<PathBuf> {
        let order: Vec<usize> = match self.by_fsid.get(&fid.fsid) {
            Some(&i) => std::iter::once(i)
                .chain((0..self.mounts.len()).filter(|&j| j != i))
                .collect(),
            None => (0..self.mounts.len()).collect(),
        };
        for i in order {
            match sys::open_by_handle(self.mounts[i].fd.as_fd(), fid.handle_type, fid.handle) {
                Ok(dir) => {
                    self.by_fsid.insert(fid.fsid, i);
                    let path = sys::fd_path(dir.as_fd());
                    if self.can_ignore && path.as_deref().is_some_and(|p| !self.relevant(p)) {
                        self.to_ignore.push(dir);
                    }
                    return path;
                }
                Err(Errno::ESTALE) if self.mounts.len() == 1 => return None,
                Err(e) => debug!(error = %e, "open_by_handle_at"),
            }
        }
        None
    }

    fn watched(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| under(r, path))
    }

    fn key(&self, pid: u32) -> Option<ProcessKey> {
        procfs::process_key(&self.source.config.proc_root, self.boot?, pid)
    }

    /// Names one record's paths and, for a watched one, notes it in
    /// `batch` with its pid and key and what its path is now (an unwatched
    /// or unnamed one is counted and left out).
    fn look(&mut self, record: &Record<'_>, batch: &mut Batch) {
        let renamed = record.mask & sys::FAN_RENAME != 0;
        let (old, new) = if renamed {
            (
                record.fid(FidKind::OldDirName).copied(),
                record.fid(FidKind::NewDirName).copied(),
            )
        } else {
            (None, record.fid(FidKind::DirName).copied())
        };
        let old_path = old.and_then(|f| self.resolve(&f));
        let Some(path) = new.and_then(|f| self.resolve(&f)) else {
            self.source.counters.unresolved.inc();
            return;
        };
        if !self.watched(&path) && !old_path.as_deref().is_some_and(|p| self.watched(p)) {
            self.source.counters.ignored.inc();
            return;
        }
        let pid = u32::try_from(record.pid).ok().filter(|&p| p > 0);
        let process_key = pid.and_then(|p| *batch.keys.entry(p).or_insert_with(|| self.key(p)));
        if !batch.states.contains_key(&path) {
            let meta = std::fs::symlink_metadata(&path).ok();
            let state = meta.as_ref().map(FileState::from_metadata);
            if let Some(meta) = meta.filter(std::fs::Metadata::is_file) {
                batch.metadata.insert(path.clone(), meta);
            }
            batch.states.insert(path.clone(), state);
        }
        if record.mask & libc::FAN_ONDIR != 0 {
            let moved_in =
                record.mask & (sys::FAN_RENAME | libc::FAN_MOVED_TO) != 0 && self.relevant(&path);
            if moved_in {
                batch.moved_dirs.push((path.clone(), old_path.clone()));
            } else if renamed {
                // Renamed out of the watched paths.
                batch.moved_out.extend(old_path.clone());
            } else if record.mask & libc::FAN_MOVED_FROM != 0 {
                // Moved from here (its new place, if any, in another record).
                batch.moved_out.push(path.clone());
            }
        }
        batch.seen.push(Seen {
            mask: record.mask,
            path,
            old_path,
            pid,
            process_key,
            at: SystemTime::now(),
        });
    }

    /// The events of one record noted in a batch, its path now `after`
    /// (`None`: gone) and `hashes` the digests of the batch's changed
    /// files; the baseline follows.
    fn events(
        &mut self,
        seen: Seen,
        mut after: Option<FileState>,
        hashes: &HashMap<PathBuf, String>,
    ) -> Vec<FilesystemEvent> {
        let Seen {
            mask,
            path,
            old_path,
            pid,
            process_key,
            at,
        } = seen;
        let renamed = mask & sys::FAN_RENAME != 0;
        let before = old_path
            .as_deref()
            .and_then(|p| self.baseline.files.remove(p))
            .or_else(|| self.baseline.files.get(&path).cloned());
        if let (Some(state), true) = (after.as_mut(), self.source.engine.is_some()) {
            if state.file_type == FileType::Regular {
                state.hash = if mask & CONTENT != 0 {
                    hashes.get(&path).cloned()
                } else {
                    before.as_ref().and_then(|b| b.hash.clone())
                };
            }
        }
        match &after {
            Some(state) => {
                self.baseline.files.insert(path.clone(), state.clone());
            }
            None => {
                self.baseline.files.remove(&path);
            }
        }
        let mut ops = operations(mask);
        // A file fsmond never knew of, there now, in a record without its
        // creation: the kernel dropped that (a queue overflow) and kept a
        // later event of it (its close after the writes) once there was
        // room again. The rescan will not report it (it is in the
        // baseline by then): its creation is told here, without a pid
        // (what made it is not known).
        let missed = before.is_none()
            && after.is_some()
            && mask & (libc::FAN_CREATE | libc::FAN_MOVED_TO | sys::FAN_RENAME | libc::FAN_DELETE)
                == 0;
        if missed {
            ops.insert(0, FileOperation::Create);
        }
        let mut out = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            let mut e = FilesystemEvent::new(path.to_string_lossy(), op.clone(), at);
            e.previous_permissions = before.as_ref().map(|b| b.permissions);
            if !(missed && i == 0) {
                e.pid = pid;
                e.process_key = process_key;
            }
            if op == FileOperation::Rename {
                e.old_path = old_path.as_ref().map(|p| p.to_string_lossy().into_owned());
            }
            let gone =
                op == FileOperation::Delete || (mask & libc::FAN_MOVED_FROM != 0 && !renamed);
            let state = if gone {
                before.as_ref()
            } else {
                after.as_ref()
            };
            if let Some(state) = state {
                state.describe(&mut e);
                if !gone {
                    e.file_hash.clone_from(&state.hash);
                }
            } else if mask & libc::FAN_ONDIR != 0 {
                e.file_type = Some(FileType::Directory);
            }
            e.previous_hash = before.as_ref().and_then(|b| b.hash.clone());
            if e.file_hash.is_some() || e.previous_hash.is_some() {
                e.hash_algorithm = self.algorithm;
            }
            out.extend(self.rooted(e));
        }
        out
    }
}

/// The records of one read, named and looked at, before hashing.
#[derive(Default)]
struct Batch {
    /// The watched records, in order.
    seen: Vec<Seen>,
    /// Each path's state when first looked at in this batch (`None`: gone).
    states: HashMap<PathBuf, Option<FileState>>,
    /// The `lstat` of each regular file of `states` (the hasher's probe).
    metadata: HashMap<PathBuf, std::fs::Metadata>,
    /// Each pid's process key, read once a batch.
    keys: HashMap<u32, Option<ProcessKey>>,
    /// Directories moved to a watched path or one on the way to it.
    moved_dirs: Vec<(PathBuf, Option<PathBuf>)>,
    /// Where directories moved out of the watched paths were: what the
    /// baseline has under them is stale.
    moved_out: Vec<PathBuf>,
}

/// One watched record (see [`Batch`]).
struct Seen {
    mask: u64,
    path: PathBuf,
    old_path: Option<PathBuf>,
    pid: Option<u32>,
    process_key: Option<ProcessKey>,
    at: SystemTime,
}

/// The operations after which a regular file is hashed again.
const CONTENT: u64 =
    libc::FAN_CLOSE_WRITE | libc::FAN_CREATE | libc::FAN_MOVED_TO | sys::FAN_RENAME;

/// Whether `dir` is above `pattern` (a proper prefix of it, a `*` of
/// `pattern` matching any one name): `/home/ann` for `/home/*/.ssh`.
fn leads_to(dir: &Path, pattern: &Path) -> bool {
    let mut parts = pattern.components();
    dir.components().all(|d| match parts.next() {
        Some(p) => p == d || (p.as_os_str() == "*" && matches!(d, Component::Normal(_))),
        None => false,
    }) && parts.next().is_some()
}

/// Whether `path` is `pattern` or under it, a `*` component of `pattern`
/// matching any one name.
pub fn under(pattern: &Path, path: &Path) -> bool {
    let mut names = path.components();
    pattern.components().all(|c| match names.next() {
        Some(n) => c == n || (c.as_os_str() == "*" && matches!(n, Component::Normal(_))),
        None => false,
    })
}

/// `pattern` up to its first `*` component.
fn fixed_prefix(pattern: &Path) -> PathBuf {
    pattern
        .components()
        .take_while(|c| c.as_os_str() != "*")
        .collect()
}

/// The existing paths `pattern` matches now (itself, without `*`; a path
/// that does not exist is kept: a scan says it is missing).
fn expand(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    for c in pattern.components() {
        if c.as_os_str() == "*" {
            found = found
                .iter()
                .filter_map(|dir| std::fs::read_dir(dir).ok())
                .flatten()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
        } else {
            for f in &mut found {
                f.push(c);
            }
        }
    }
    found.sort();
    found
}

/// The nearest existing directory of `path` (itself when it is one).
fn existing(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

/// `path` with the symlinks of its existing part resolved (events name
/// paths so, from the kernel's view of each directory): `/lib/systemd`
/// on a merged-/usr host is `/usr/lib/systemd`.
fn resolve(path: &Path) -> PathBuf {
    let fixed = fixed_prefix(path);
    for dir in fixed.ancestors() {
        if let Ok(real) = std::fs::canonicalize(dir) {
            let rest = path.strip_prefix(dir).unwrap_or(Path::new(""));
            return if rest.as_os_str().is_empty() {
                real
            } else {
                real.join(rest)
            };
        }
    }
    path.to_path_buf()
}

/// The operations of a mask, in the order they happen.
pub fn operations(mask: u64) -> Vec<FileOperation> {
    [
        (libc::FAN_CREATE, FileOperation::Create),
        (libc::FAN_MODIFY, FileOperation::Modify),
        (libc::FAN_CLOSE_WRITE, FileOperation::CloseWrite),
        (libc::FAN_ATTRIB, FileOperation::Attrib),
        (
            sys::FAN_RENAME | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO,
            FileOperation::Rename,
        ),
        (libc::FAN_DELETE, FileOperation::Delete),
    ]
    .into_iter()
    .filter(|(bit, _)| mask & bit != 0)
    .map(|(_, op)| op)
    .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_merged_mask_gives_each_operation_once_in_order() {
        let mask = libc::FAN_CLOSE_WRITE | libc::FAN_CREATE | libc::FAN_MODIFY | libc::FAN_ONDIR;
        assert_eq!(
            operations(mask),
            [
                FileOperation::Create,
                FileOperation::Modify,
                FileOperation::CloseWrite
            ]
        );
        assert_eq!(
            operations(sys::FAN_RENAME | libc::FAN_DELETE),
            [FileOperation::Rename, FileOperation::Delete]
        );
        assert!(operations(Q_OVERFLOW).is_empty());
    }

    #[test]
    fn relative_or_no_watched_paths_are_refused() {
        let mut c = FsmondConfig {
            watch: vec![PathBuf::from("etc")],
            ..FsmondConfig::default()
        };
        assert!(c.validate().is_err());
        c.watch.clear();
        assert!(c.validate().is_err());
        assert!(FsmondConfig::default().validate().is_ok());
        for bad in ["/home/u*/.ssh", "/etc/../root"] {
            c.watch = vec![PathBuf::from(bad)];
            assert!(c.validate().is_err(), "{bad}");
        }
        c.watch = vec![PathBuf::from("/etc")];
        c.watch_root = PathBuf::from("chroot");
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_star_matches_any_one_name_and_expands_to_what_exists() {
        let p = Path::new("/home/*/.ssh");
        assert!(under(p, Path::new("/home/ann/.ssh")));
        assert!(under(p, Path::new("/home/ann/.ssh/authorized_keys")));
        assert!(!under(p, Path::new("/home/ann/.sshx")));
        assert!(!under(p, Path::new("/home/ann")));
        assert!(!under(p, Path::new("/root/.ssh")));
        assert!(under(Path::new("/etc"), Path::new("/etc/cron.d/x")));
        assert!(!under(Path::new("/etc"), Path::new("/etcetera")));
        let dir = tempfile::tempdir().unwrap();
        for home in ["ann", "bob"] {
            std::fs::create_dir_all(dir.path().join(home).join(".ssh")).unwrap();
        }
        std::fs::write(dir.path().join("file"), b"").unwrap();
        let pattern = dir.path().join("*/.ssh");
        assert_eq!(
            expand(&pattern),
            [dir.path().join("ann/.ssh"), dir.path().join("bob/.ssh")]
        );
        assert_eq!(fixed_prefix(&pattern), dir.path());
        assert_eq!(existing(&dir.path().join("none/of/this")), dir.path());
    }
}
