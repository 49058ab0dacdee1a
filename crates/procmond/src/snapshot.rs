//! Reading processes from `/proc`: one process ([`ProcReader::read_process`],
//! used to enrich an exec as it happens) or all of them
//! ([`ProcReader::snapshot`]).
//!
//! A lean reader: per process it reads `stat`, `status`, `cmdline` and the
//! `exe` link, and with enhanced metadata the `cgroup` file and namespace
//! links. A process that vanishes mid-read is counted and skipped; a file we
//! may not read (EACCES) leaves its fields empty and `accessible = false`.
//! Nothing is invented.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::ffi::CStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use collector_core::metrics::{Counter, Registry};
use collector_core::{BootId, ProcessContext, ProcessEvent, ProcessKey, ReadDepth};
use nix::errno::Errno;
use nix::fcntl::{open, openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

use crate::procfs::{self, ParseError};

/// Why one process could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The process exited (or never existed) while we read it.
    #[error("process {pid} vanished")]
    Vanished {
        /// The pid.
        pid: u32,
    },
    /// We may not read even its `stat`.
    #[error("permission denied reading process {pid}")]
    PermissionDenied {
        /// The pid.
        pid: u32,
    },
    /// Its files did not parse.
    #[error("process {pid}")]
    Parse {
        /// The pid.
        pid: u32,
        /// What did not parse.
        #[source]
        source: ParseError,
    },
    /// Another I/O error.
    #[error("cannot read process {pid}")]
    Io {
        /// The pid.
        pid: u32,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ReadError {
    /// Whether it failed for want of a file descriptor (EMFILE, ENFILE).
    fn is_out_of_files(&self) -> bool {
        matches!(self, Self::Io { source, .. }
            if matches!(source.raw_os_error(), Some(code) if code == Errno::EMFILE as i32 || code == Errno::ENFILE as i32))
    }

    /// ENOENT and ESRCH mean the process is gone; EACCES and EPERM that we
    /// may not look.
    fn from_errno(pid: u32, e: Errno) -> Self {
        match e {
            Errno::ENOENT | Errno::ESRCH => Self::Vanished { pid },
            Errno::EACCES | Errno::EPERM => Self::PermissionDenied { pid },
            other => Self::Io {
                pid,
                source: std::io::Error::from(other),
            },
        }
    }
}

/// Why the reader could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// `/proc/stat` (boot time) unreadable or without `btime`.
    #[error("cannot read boot time from {path}")]
    BootTime {
        /// The file.
        path: PathBuf,
    },
    /// The process directory cannot be listed.
    #[error("cannot list {path}")]
    List {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What a snapshot reads besides the basics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// cgroup path, container id, namespaces.
    pub enhanced_metadata: bool,
    /// The (device, inode) of the running executable and of the file now at
    /// its path, to notice a replaced binary.
    pub executable_identity: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            enhanced_metadata: true,
            executable_identity: true,
        }
    }
}

/// Counts of what one snapshot met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SnapshotStats {
    /// Processes read.
    pub processes: u64,
    /// Processes that exited while being read (skipped).
    pub vanished: u64,
    /// Processes with at least one file we could not read (kept, fields empty).
    pub access_denied: u64,
    /// Processes skipped for other errors (parse or I/O).
    pub errors: u64,
    /// Processes left out because `max_processes` was reached.
    pub truncated: u64,
}

/// [`SnapshotStats`] added up over every pass. Clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct SnapshotCounters {
    processes: Counter,
    vanished: Counter,
    access_denied: Counter,
    errors: Counter,
    truncated: Counter,
}

impl SnapshotCounters {
    /// Adds one pass.
    pub fn record(&self, stats: &SnapshotStats) {
        self.processes.add(stats.processes);
        self.vanished.add(stats.vanished);
        self.access_denied.add(stats.access_denied);
        self.errors.add(stats.errors);
        self.truncated.add(stats.truncated);
    }

    /// The sums so far, as one [`SnapshotStats`].
    pub fn totals(&self) -> SnapshotStats {
        SnapshotStats {
            processes: self.processes.get(),
            vanished: self.vanished.get(),
            access_denied: self.access_denied.get(),
            errors: self.errors.get(),
            truncated: self.truncated.get(),
        }
    }

    /// Registers the counters in `registry` (stage `snapshot`).
    pub fn register(&self, registry: &Registry) {
        let stage = ("stage", "snapshot");
        registry.register_counter(
            "daemoneye_processes_read_total",
            "Processes read by snapshots.",
            &[stage],
            &self.processes,
        );
        registry.register_counter(
            "daemoneye_processes_vanished_total",
            "Processes that exited while a snapshot read them (skipped).",
            &[stage],
            &self.vanished,
        );
        registry.register_counter(
            "daemoneye_processes_denied_total",
            "Processes with a file a snapshot could not read (kept, fields empty).",
            &[stage],
            &self.access_denied,
        );
        registry.register_by_reason(
            "daemoneye_processes_skipped_total",
            "Processes a snapshot left out: parse or I/O errors, or max_processes reached.",
            &[stage],
            [("error", &self.errors), ("truncated", &self.truncated)],
        );
    }
}

/// A full pass over the process table.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// One event per process, `event_type = Snapshot`, sorted by pid.
    pub processes: Vec<ProcessEvent>,
    /// What the pass met.
    pub stats: SnapshotStats,
    /// When the pass started.
    pub taken_at: SystemTime,
}

/// Reads processes from a procfs mount. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProcReader {
    root: PathBuf,
    boot_id: Option<BootId>,
    btime: u64,
    ticks_per_sec: u64,
    page_size: u64,
    options: ReadOptions,
}

impl ProcReader {
    /// A reader of `/proc`.
    ///
    /// # Errors
    /// When `/proc/stat` has no boot time.
    pub fn new(options: ReadOptions) -> Result<Self, SetupError> {
        Self::with_root("/proc", options)
    }

    /// A reader of a procfs mounted at `root` (tests use recorded trees).
    ///
    /// # Errors
    /// When `<root>/stat` has no boot time.
    pub fn with_root(root: impl Into<PathBuf>, options: ReadOptions) -> Result<Self, SetupError> {
        let root = root.into();
        let stat_path = root.join("stat");
        let btime = std::fs::read(&stat_path)
            .ok()
            .as_deref()
            .and_then(procfs::parse_btime)
            .ok_or(SetupError::BootTime { path: stat_path })?;
        let boot_id = std::fs::read_to_string(root.join("sys/kernel/random/boot_id"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let units = collector_core::procfs::KernelUnits::current();
        Ok(Self {
            root,
            boot_id,
            btime,
            ticks_per_sec: units.ticks_per_second,
            page_size: units.page_size,
            options,
        })
    }

    /// The boot id, when readable.
    pub fn boot_id(&self) -> Option<BootId> {
        self.boot_id
    }

    /// Clock ticks per second (`USER_HZ`).
    pub fn ticks_per_sec(&self) -> u64 {
        self.ticks_per_sec
    }

    /// The wall-clock time of a start time given in ticks after boot.
    pub fn start_time_of(&self, ticks: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(self.btime)
            + collector_core::procfs::ticks_to_duration(ticks, self.ticks_per_sec)
    }

    /// Lists the pids present now.
    ///
    /// # Errors
    /// When the procfs root cannot be listed.
    pub fn pids(&self) -> Result<Vec<u32>, SetupError> {
        let list_err = |source| SetupError::List {
            path: self.root.clone(),
            source,
        };
        collector_core::procfs::pids(&self.root).map_err(list_err)
    }

    /// Reads every process once. Processes that vanish mid-read are counted
    /// and skipped; the pass never fails because of one process.
    ///
    /// # Errors
    /// Only when the process directory itself cannot be listed.
    pub fn snapshot(&self, max_processes: usize) -> Result<Snapshot, SetupError> {
        self.snapshot_cached(max_processes, &mut SnapshotCache::default())
    }

    /// As [`snapshot`](Self::snapshot), reusing `cache` from earlier passes:
    /// what rarely changes per process is read only for new processes.
    ///
    /// # Errors
    /// Only when the process directory itself cannot be listed.
    pub fn snapshot_cached(
        &self,
        max_processes: usize,
        cache: &mut SnapshotCache,
    ) -> Result<Snapshot, SetupError> {
        let taken_at = SystemTime::now();
        let mut pids = self.pids()?;
        let mut stats = SnapshotStats::default();
        if pids.len() > max_processes {
            stats.truncated = (pids.len() - max_processes) as u64;
            pids.truncate(max_processes);
        }
        let n = cache.shards.len();
        let parts: Vec<(Vec<ProcessEvent>, SnapshotStats)> = if n == 1 || pids.len() < 64 {
            let pids = &pids;
            cache
                .shards
                .iter_mut()
                .enumerate()
                .map(|(i, shard)| {
                    self.read_shard(pids.iter().copied().filter(|p| *p as usize % n == i), shard)
                })
                .collect()
        } else {
            std::thread::scope(|scope| {
                let pids = &pids;
                let running: Vec<_> = cache
                    .shards
                    .iter_mut()
                    .enumerate()
                    .map(|(i, shard)| {
                        scope.spawn(move || {
                            self.read_shard(
                                pids.iter().copied().filter(|p| *p as usize % n == i),
                                shard,
                            )
                        })
                    })
                    .collect();
                running
                    .into_iter()
                    .map(|t| {
                        // A reader thread cannot panic on input; if it did (a
                        // bug), its share is counted as errors, not lost silently.
                        t.join().unwrap_or_else(|_| {
                            (
                                Vec::new(),
                                SnapshotStats {
                                    errors: 1,
                                    ..SnapshotStats::default()
                                },
                            )
                        })
                    })
                    .collect()
            })
        };
        let mut processes = Vec::with_capacity(pids.len());
        for (part, s) in parts {
            processes.extend(part);
            stats.vanished += s.vanished;
            stats.access_denied += s.access_denied;
            stats.errors += s.errors;
        }
        processes.sort_unstable_by_key(|p| p.pid);
        stats.processes = processes.len() as u64;
        Ok(Snapshot {
            processes,
            stats,
            taken_at,
        })
    }

    /// Reads one process now.
    ///
    /// # Errors
    /// [`ReadError::Vanished`] when it is gone (common for short-lived
    /// processes), [`ReadError::PermissionDenied`] when even `stat` is refused.
    pub fn read_process(&self, pid: u32) -> Result<ProcessEvent, ReadError> {
        self.read_into(pid, &mut Shard::default())
    }

    /// Reads the given pids with one shard of the cache.
    fn read_shard(
        &self,
        pids: impl Iterator<Item = u32>,
        shard: &mut Shard,
    ) -> (Vec<ProcessEvent>, SnapshotStats) {
        let mut stats = SnapshotStats::default();
        let mut out = Vec::new();
        shard.begin_pass();
        for pid in pids {
            let mut read = self.read_into(pid, shard);
            if read.as_ref().is_err_and(ReadError::is_out_of_files) {
                // The files kept open leave too few for the rest of the
                // process: close them, keep half as many from now on, and
                // read this process again.
                shard.kept.clear();
                shard.budget /= 2;
                read = self.read_into(pid, shard);
            }
            match read {
                Ok(p) => {
                    if !p.accessible {
                        stats.access_denied += 1;
                    }
                    out.push(p);
                }
                Err(ReadError::Vanished { .. }) => stats.vanished += 1,
                Err(ReadError::PermissionDenied { .. }) => stats.access_denied += 1,
                Err(_) => stats.errors += 1,
            }
        }
        shard.end_pass();
        (out, stats)
    }

    /// Reads only `/proc/<pid>/stat`: name, parent, start time, memory and
    /// the stable key. For a fork, whose child usually execs at once and is
    /// read in full then. The event says `read = stat_only`.
    ///
    /// # Errors
    /// As [`read_process`](Self::read_process).
    pub fn read_stat_only(&self, pid: u32) -> Result<ProcessEvent, ReadError> {
        let mut path = self.root.clone();
        path.push(itoa(pid, &mut [0u8; 10]));
        path.push("stat");
        let mut buf = Vec::with_capacity(512);
        let dir_errno = |e: std::io::Error| match e.raw_os_error() {
            Some(code) => ReadError::from_errno(pid, Errno::from_raw(code)),
            None => ReadError::Io { pid, source: e },
        };
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(dir_errno)?;
        if buf.is_empty() {
            return Err(ReadError::Vanished { pid });
        }
        let stat = procfs::parse_stat(&buf).map_err(|source| ReadError::Parse { pid, source })?;
        let mut event = ProcessEvent::new(pid, stat.comm.clone());
        event.ppid = Some(stat.ppid);
        event.start_time = Some(self.start_time_of(stat.starttime));
        event.memory_usage = Some(stat.rss_pages * self.page_size);
        event.process_key = self
            .boot_id
            .map(|b| ProcessKey::new(b, pid, stat.starttime));
        event.state = Some(stat.state);
        event.threads = u32::try_from(stat.num_threads).ok();
        event.cpu_ticks = Some(stat.utime + stat.stime);
        event.read = ReadDepth::StatOnly;
        Ok(event)
    }

    fn read_into(&self, pid: u32, cache: &mut Shard) -> Result<ProcessEvent, ReadError> {
        let Shard {
            buf,
            on_disk,
            stable,
            pass,
            kept: kept_files,
            budget,
        } = cache;
        let Front {
            dir,
            stat,
            ran,
            schedstat,
        } = self.front(pid, kept_files.remove(&pid), *pass, buf)?;
        let now = SystemTime::now();

        // A zombie's argv and executable are gone: it cannot be read in full.
        let mut accessible = !stat.is_dead();

        let key = (pid, stat.starttime);
        // A one-off read (an exec's, pass 0) keeps nothing for a later pass:
        // no `schedstat` read, no copy of the argv.
        let kept_for_later = *pass > 0 && stat.num_threads == 1 && accessible;
        let ran = ran.filter(|_| kept_for_later);
        let kept = ran.and_then(|ns| {
            let idle = stable.get(&key)?.0.idle.as_ref()?;
            (idle.ran_ns == ns).then(|| idle.clone())
        });
        let kept_ids = kept.as_ref().map(|idle| idle.ids);
        // After stat, a failed read leaves that part empty and the process
        // marked as not fully readable; we keep what we read.
        let (kept_argv, kept_exe) = kept.map_or((None, None), |idle| (Some(idle.argv), idle.exe));
        let argv = match kept_argv {
            Some(argv) => argv,
            None => match read_at(&dir, c"cmdline", buf) {
                Ok(()) => procfs::parse_cmdline(buf),
                Err(_) => {
                    accessible = false;
                    Vec::new()
                }
            },
        };
        let running = stable.get(&key).and_then(|(s, _)| s.running_exe);
        let exe = match exe_now(&dir, stat.is_kernel_thread(), kept_exe, running, on_disk) {
            Ok(exe) => Some(exe),
            Err(Errno::ENOENT) if stat.is_kernel_thread() => None,
            Err(_) => {
                accessible = false;
                None
            }
        };
        // Read last: argv and exe matter most for a process about to exit.
        let ids = match kept_ids {
            Some(ids) => Some(ids),
            None => match read_at(&dir, c"status", buf) {
                Ok(()) => procfs::parse_status_ids(buf).ok(),
                Err(_) => {
                    accessible = false;
                    None
                }
            },
        };
        if let Entry::Vacant(slot) = stable.entry(key) {
            slot.insert((self.read_stable(&dir, exe.is_some(), buf), *pass));
        }
        let mut event = ProcessEvent::new(pid, stat.comm.clone());
        if let Some((found, seen)) = stable.get_mut(&key) {
            *seen = *pass;
            if kept_for_later && kept_ids.is_none() {
                let exe = exe.as_ref().filter(|(_, deleted)| !deleted);
                found.idle = Idle::of_read(
                    ran,
                    &argv,
                    ids.filter(|_| accessible),
                    exe.map(|(path, _)| path),
                );
            }
            event.context.clone_from(&found.context);
            if let Some((path, deleted)) = &exe {
                event.file_exists = !deleted;
                if !deleted {
                    if let Some(running) = found.running_exe {
                        // The inode the process runs against the file now at
                        // its path (looked up once per path per pass).
                        let now_at_path = file_at(on_disk, path);
                        event.exe_replaced = now_at_path.is_some_and(|id| id != running);
                    }
                }
            }
        }
        event.ppid = Some(stat.ppid);
        event.executable_path = exe.map(|(p, _)| p);
        event.command_line = argv;
        event.start_time = Some(self.start_time_of(stat.starttime));
        event.memory_usage = Some(stat.rss_pages * self.page_size);
        event.user_id = ids.map(|i| i.ruid);
        event.euid = ids.map(|i| i.euid);
        event.gid = ids.map(|i| i.rgid);
        event.state = Some(stat.state);
        event.threads = u32::try_from(stat.num_threads).ok();
        event.cpu_ticks = Some(stat.utime + stat.stime);
        event.accessible = accessible;
        event.timestamp = now;
        event.process_key = self
            .boot_id
            .map(|b| ProcessKey::new(b, pid, stat.starttime));
        if accessible && *pass > 0 && kept_files.len() < *budget {
            kept_files.insert(pid, Kept::read(dir, schedstat, ran, stat, *pass));
        }
        Ok(event)
    }

    /// The first reads of process `pid` in a pass: its run time while it
    /// is single-threaded (before anything else: unchanged, it has not run
    /// since), then its `stat`, taken from `held` (the files kept from the
    /// last pass, while they still answer for the process they were opened
    /// on: a pid reused answers ESRCH) when it has not run.
    fn front(
        &self,
        pid: u32,
        mut held: Option<Kept>,
        pass: u64,
        buf: &mut Vec<u8>,
    ) -> Result<Front, ReadError> {
        let errno = |e| ReadError::from_errno(pid, e);
        let full = pass % FULL_READ_EVERY == 1;
        // A pass (not a one-off read) reads a process's run time before
        // anything else, while it is single-threaded: unchanged, it has not
        // run since.
        let mut ran = None;
        let mut schedstat = None;
        if pass > 0 {
            let fd = match held.as_mut() {
                Some(k) => k.schedstat.take().or_else(|| {
                    let single = k.stat.as_ref().is_some_and(|s| s.num_threads == 1);
                    single
                        .then(|| openat(&k.dir, c"schedstat", READ, Mode::empty()).ok())
                        .flatten()
                }),
                None => {
                    let dir = self.open_dir(pid).map_err(errno)?;
                    let fd = openat(&dir, c"schedstat", READ, Mode::empty()).ok();
                    held = Some(Kept::opened(dir));
                    fd
                }
            };
            if let Some(fd) = fd {
                match collector_core::procfs::pread_whole(&fd, buf) {
                    Ok(()) => {
                        ran = procfs::parse_schedstat_runtime(buf);
                        schedstat = Some(fd);
                    }
                    // Gone, or another process under its pid: read afresh.
                    Err(e) if e.raw_os_error() == Some(Errno::ESRCH as i32) => held = None,
                    Err(_) => {}
                }
            }
        }
        // One directory fd per process: every file below is opened relative
        // to it, which spares the kernel a /proc and pid lookup per file and
        // pins the process's directory while we read. Kept between passes.
        let fresh = held.as_ref().is_none_or(|k| k.stat.is_none());
        let (mut dir, last) = match held {
            Some(Kept {
                dir, stat, ran_ns, ..
            }) => (
                dir,
                stat.filter(|_| !full && ran.is_some() && ran == ran_ns),
            ),
            None => (self.open_dir(pid).map_err(errno)?, None),
        };
        let stat = match last {
            // Not run since that read: it stands.
            Some(stat) => stat,
            None => {
                match read_at(&dir, c"stat", buf) {
                    // The process the kept directory was opened on is gone;
                    // its pid may be another's now.
                    Err(Errno::ENOENT | Errno::ESRCH) if !fresh => {
                        dir = self.open_dir(pid).map_err(errno)?;
                        schedstat = None;
                        ran = None;
                        read_at(&dir, c"stat", buf).map_err(errno)?;
                    }
                    read => read.map_err(errno)?,
                }
                if buf.is_empty() {
                    return Err(ReadError::Vanished { pid });
                }
                procfs::parse_stat(buf).map_err(|source| ReadError::Parse { pid, source })?
            }
        };
        Ok(Front {
            dir,
            stat,
            ran,
            schedstat,
        })
    }

    /// `/proc/<pid>`, opened.
    fn open_dir(&self, pid: u32) -> Result<OwnedFd, Errno> {
        let mut dir_path = self.root.clone();
        dir_path.push(itoa(pid, &mut [0u8; 10]));
        open(
            &dir_path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    }
}

/// What [`ProcReader::front`] read.
struct Front {
    dir: OwnedFd,
    stat: procfs::Stat,
    /// The run time, read before the `stat`.
    ran: Option<u64>,
    /// The file it was read from, to keep.
    schedstat: Option<OwnedFd>,
}

/// How procfs files are opened.
const READ: OFlag = OFlag::O_RDONLY.union(OFlag::O_CLOEXEC);

pub use collector_core::procfs::FULL_READ_EVERY;

/// A process's files kept open between passes (while the open-file budget
/// allows): its directory, and while it is single-threaded its `schedstat`
/// with the run time read from it before its last `stat`, and that `stat`.
/// A pass that finds the run time unchanged takes the `stat` as it was
/// (the process has not run: its CPU time, state and comm are the same,
/// and its RSS has not grown) and opens nothing.
#[derive(Debug)]
struct Kept {
    dir: OwnedFd,
    schedstat: Option<OwnedFd>,
    ran_ns: Option<u64>,
    stat: Option<procfs::Stat>,
    seen: u64,
}

impl Kept {
    /// What a pass read: its run time `ran` and `schedstat` only while it is
    /// single-threaded.
    fn read(
        dir: OwnedFd,
        schedstat: Option<OwnedFd>,
        ran: Option<u64>,
        stat: procfs::Stat,
        pass: u64,
    ) -> Self {
        let single = stat.num_threads == 1;
        Self {
            dir,
            schedstat: schedstat.filter(|_| single),
            ran_ns: ran.filter(|_| single),
            stat: Some(stat),
            seen: pass,
        }
    }

    /// Just the directory, opened this pass.
    fn opened(dir: OwnedFd) -> Self {
        Self {
            dir,
            schedstat: None,
            ran_ns: None,
            stat: None,
            seen: 0,
        }
    }
}

/// What rarely changes while a process lives: read once per process (keyed
/// by pid and start time) and reused by later passes.
#[derive(Debug, Clone, Default)]
struct Stable {
    /// Shared by every event of the process.
    context: Option<Arc<ProcessContext>>,
    /// (device, inode) of the executable the process runs.
    running_exe: Option<(u64, u64)>,
    /// Its argv and ids as read by the last pass that read them, and its
    /// CPU time (`schedstat`, in ns) just before: valid while that time
    /// stays the same. Only for a single-threaded, fully readable process.
    idle: Option<Idle>,
}

/// See [`Stable::idle`].
#[derive(Debug, Clone)]
struct Idle {
    ran_ns: u64,
    argv: Vec<String>,
    ids: procfs::Ids,
    /// Its executable's path, when the read found the file not deleted.
    exe: Option<String>,
}

impl Idle {
    /// What a later pass may reuse while the process does not run: its
    /// run time `ran` read before its `argv`, `ids` and `exe` (none of it
    /// when a part could not be read; no `exe` when it was deleted).
    fn of_read(
        ran: Option<u64>,
        argv: &[String],
        ids: Option<procfs::Ids>,
        exe: Option<&String>,
    ) -> Option<Self> {
        Some(Self {
            ran_ns: ran?,
            argv: argv.to_vec(),
            ids: ids?,
            exe: exe.cloned(),
        })
    }
}

/// The executable (path, deleted) of the process whose `/proc` directory is
/// `dir`, as its `exe` link reads.
///
/// A process that has not run since the last pass has not exec'd: its
/// executable is `kept`, the one that pass read, unless the file was
/// deleted or replaced since, which the file now at its path tells (looked
/// up once per path per pass, in `on_disk`) against the one it runs
/// (`running`), without reading the link. A kernel thread has no `exe`
/// (`ENOENT`, not read).
fn exe_now(
    dir: &OwnedFd,
    kernel_thread: bool,
    kept: Option<String>,
    running: Option<(u64, u64)>,
    on_disk: &mut HashMap<String, Option<(u64, u64)>>,
) -> Result<(String, bool), Errno> {
    if let Some(path) = kept.filter(|p| running.is_some() && file_at(on_disk, p) == running) {
        return Ok((path, false));
    }
    if kernel_thread {
        return Err(Errno::ENOENT);
    }
    readlinkat(dir, c"exe").map(|t| procfs::parse_exe_link(t.as_encoded_bytes()))
}

/// (device, inode) of the file at `path` now, looked up once per pass
/// (`on_disk` is the pass's).
fn file_at(on_disk: &mut HashMap<String, Option<(u64, u64)>>, path: &str) -> Option<(u64, u64)> {
    if let Some(found) = on_disk.get(path) {
        return *found;
    }
    let found = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    on_disk.insert(path.to_owned(), found);
    found
}

/// What one reader thread keeps between passes: reusable buffers and what
/// rarely changes per process (cgroup, namespaces, the inode of the running
/// executable). Entries of processes not seen in a pass are dropped.
#[derive(Debug, Default)]
struct Shard {
    buf: Vec<u8>,
    /// (device, inode) now at each executable path, looked up once a pass.
    on_disk: HashMap<String, Option<(u64, u64)>>,
    stable: HashMap<(u32, u64), (Stable, u64)>,
    pass: u64,
    /// By pid, the files of processes read by the last pass.
    kept: HashMap<u32, Kept>,
    /// The most processes whose files it keeps (two or three each).
    budget: usize,
}

impl Shard {
    fn begin_pass(&mut self) {
        self.pass += 1;
        self.on_disk.clear();
    }

    fn end_pass(&mut self) {
        let pass = self.pass;
        self.stable.retain(|_, (_, seen)| *seen == pass);
        self.kept.retain(|_, k| k.seen == pass);
    }
}

/// State kept between snapshot passes, split in one shard per reader
/// thread (a pid always goes to the same shard), so a steady-state pass
/// reads only what changes, on every core.
#[derive(Debug)]
pub struct SnapshotCache {
    shards: Vec<Shard>,
}

impl Default for SnapshotCache {
    /// One shard per core, at most four.
    fn default() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        Self::with_threads(n)
    }
}

impl SnapshotCache {
    /// A cache read by `threads` threads (at least one), keeping the files
    /// of as many processes as a third of the open-file limit allows (see
    /// [`collector_core::procfs::raise_open_file_limit`]).
    pub fn with_threads(threads: usize) -> Self {
        let threads = threads.max(1);
        let budget = collector_core::procfs::file_budget(FILE_RESERVE, 3) / threads;
        Self {
            shards: (0..threads)
                .map(|_| Shard {
                    budget,
                    ..Shard::default()
                })
                .collect(),
        }
    }

    /// Processes whose files are kept open between passes.
    pub fn kept_files(&self) -> usize {
        self.shards.iter().map(|s| s.kept.len()).sum()
    }

    fn shard_of(&self, pid: u32) -> usize {
        usize::try_from(pid).unwrap_or(0) % self.shards.len()
    }

    /// Processes remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.stable.len()).sum()
    }

    /// Whether the process with this pid and start time is remembered.
    pub fn remembers(&self, pid: u32, start_ticks: u64) -> bool {
        self.shards[self.shard_of(pid)]
            .stable
            .contains_key(&(pid, start_ticks))
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ProcReader {
    fn read_stable(&self, dir: &OwnedFd, has_exe: bool, buf: &mut Vec<u8>) -> Stable {
        let mut out = Stable::default();
        if self.options.executable_identity && has_exe {
            out.running_exe = fstatat(dir, c"exe", AtFlags::empty())
                .ok()
                .map(|st| (st.st_dev, st.st_ino));
        }
        if self.options.enhanced_metadata {
            let mut c = ProcessContext::default();
            if read_at(dir, c"cgroup", buf).is_ok() {
                if let Some(cg) = procfs::parse_cgroup(buf) {
                    c.container_id = procfs::container_id(&cg).map(str::to_owned);
                    c.cgroup = Some(cg);
                }
            }
            for (link, slot) in [
                (c"ns/pid", &mut c.pid_ns),
                (c"ns/mnt", &mut c.mnt_ns),
                (c"ns/net", &mut c.net_ns),
                (c"ns/user", &mut c.user_ns),
            ] {
                *slot = readlinkat(dir, link)
                    .ok()
                    .and_then(|t| procfs::parse_ns_link(t.as_encoded_bytes()));
            }
            out.context = c.shared();
        }
        out
    }
}

/// Formats `n` in decimal without allocating.
fn itoa(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

/// Open files left to everything else procmond does when the budget of
/// kept files is taken from the open-file limit.
const FILE_RESERVE: u64 = 512;

/// Reads a whole procfs file. procfs hands over a whole small file in one
/// read, so a short first read means the end was reached: that saves the
/// usual extra read that only returns 0.
fn read_at(dir: &OwnedFd, name: &CStr, buf: &mut Vec<u8>) -> Result<(), Errno> {
    const FIRST: usize = 8192;
    buf.clear();
    let fd = openat(dir, name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut file = std::fs::File::from(fd);
    let io = |e: std::io::Error| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw);
    buf.resize(FIRST, 0);
    let n = loop {
        match file.read(buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    };
    buf.truncate(n);
    if n == FIRST {
        file.read_to_end(buf).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A process in a recorded tree at `root`: `stat` saying `threads`
    /// threads, `schedstat` saying it ran `ran_ns`, and `argv`.
    fn record(root: &std::path::Path, threads: u32, ran_ns: u64, argv: &str) {
        let dir = root.join("42");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("stat"),
            format!(
                "42 (worker) S 1 42 42 0 -1 4194560 10 0 0 0 3 1 0 0 20 0 {threads} 0 500 \
                 1000000 100 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("schedstat"), format!("{ran_ns} 1000 7\n")).unwrap();
        std::fs::write(dir.join("cmdline"), argv.replace(' ', "\0") + "\0").unwrap();
        std::fs::write(
            dir.join("status"),
            "Name:\tworker\nUid:\t1000\t1000\t1000\t1000\nGid:\t100\t100\t100\t100\n",
        )
        .unwrap();
        if !dir.join("exe").exists() {
            std::os::unix::fs::symlink("/bin/sh", dir.join("exe")).unwrap();
        }
    }

    /// An empty recorded tree (its host `stat` only) and a reader of it.
    fn recorded_tree() -> (tempfile::TempDir, ProcReader) {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("stat"), "cpu 1 2 3\nbtime 1700000000\n").unwrap();
        let options = ReadOptions {
            enhanced_metadata: false,
            ..ReadOptions::default()
        };
        let reader = ProcReader::with_root(root.path(), options).unwrap();
        (root, reader)
    }

    /// A steady-state pass takes a single-threaded process's argv and ids
    /// from the last pass while its CPU time (`schedstat`) is unchanged,
    /// and reads them again once it ran, or when it has more threads.
    #[test]
    fn a_process_that_did_not_run_is_not_read_again() {
        let (root, reader) = recorded_tree();
        let mut cache = SnapshotCache::with_threads(1);
        let mut argv = |threads, ran_ns, argv: &str| {
            record(root.path(), threads, ran_ns, argv);
            let snap = reader.snapshot_cached(10, &mut cache).unwrap();
            assert_eq!(snap.processes.len(), 1, "{snap:?}");
            let p = &snap.processes[0];
            assert!(p.accessible, "{p:?}");
            assert_eq!(p.user_id, Some(1000));
            p.command_line.join(" ")
        };
        assert_eq!(argv(1, 5_000, "worker a"), "worker a");
        // Rewritten, yet the process did not run since: not read.
        assert_eq!(argv(1, 5_000, "worker b"), "worker a");
        // It ran: read again.
        assert_eq!(argv(1, 6_000, "worker c"), "worker c");
        // Two threads (it ran to start one): the leader's time does not
        // cover the other one.
        assert_eq!(argv(2, 7_000, "worker d"), "worker d");
        assert_eq!(argv(2, 7_000, "worker e"), "worker e");
    }

    /// A pass takes the `stat` of a single-threaded process that has not
    /// run from the last read, through the files kept open; every
    /// `FULL_READ_EVERY`th pass reads it whatever.
    #[test]
    fn a_process_that_did_not_run_keeps_its_stat_until_a_full_read() {
        let (root, reader) = recorded_tree();
        let mut cache = SnapshotCache::with_threads(1);
        let stat = root.path().join("42/stat");
        let rss = |pages: u64| {
            let line = std::fs::read_to_string(&stat).unwrap();
            let (head, tail) = line.split_once(" 1000000 ").unwrap();
            let rest = tail.split_once(' ').unwrap().1;
            std::fs::write(&stat, format!("{head} 1000000 {pages} {rest}")).unwrap();
        };
        let mut memory = || {
            let snap = reader.snapshot_cached(10, &mut cache).unwrap();
            snap.processes[0].memory_usage.unwrap() / reader.page_size
        };
        record(root.path(), 1, 5_000, "worker");
        assert_eq!(memory(), 100);
        // The kernel shrank it while it slept: seen at the next full read.
        rss(80);
        for _ in 2..=FULL_READ_EVERY {
            assert_eq!(memory(), 100);
        }
        assert_eq!(memory(), 80);
        // It ran: read at once.
        rss(300);
        std::fs::write(root.path().join("42/schedstat"), "6000 1000 8\n").unwrap();
        assert_eq!(memory(), 300);
        assert_eq!(cache.kept_files(), 1);
    }

    #[test]
    fn reads_this_process() {
        let reader = ProcReader::new(ReadOptions::default()).unwrap();
        let me = reader.read_process(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(me.accessible);
        assert!(me.file_exists);
        let exe = std::env::current_exe().unwrap();
        assert_eq!(me.executable_path.as_deref(), exe.to_str());
        assert_eq!(
            me.command_line.first().map(String::as_str),
            std::env::args().next().as_deref()
        );
        assert_eq!(me.user_id, Some(nix::unistd::getuid().as_raw()));
        assert!(me.memory_usage.unwrap() > 0);
        let key = me.process_key.unwrap();
        assert_eq!(key.pid, me.pid);
        assert!(me.start_time.unwrap() <= SystemTime::now());
    }

    #[test]
    fn stat_only_reads_agree_with_full_reads() {
        let reader = ProcReader::new(ReadOptions::default()).unwrap();
        let full = reader.read_process(std::process::id()).unwrap();
        let light = reader.read_stat_only(std::process::id()).unwrap();
        assert_eq!(
            (light.pid, light.ppid, &light.name),
            (full.pid, full.ppid, &full.name)
        );
        assert_eq!(light.process_key, full.process_key);
        assert_eq!(light.start_time, full.start_time);
        assert_eq!(
            (light.read, full.read),
            (ReadDepth::StatOnly, ReadDepth::Full)
        );
        assert_eq!(light.state, full.state);
        assert!(light.command_line.is_empty() && light.executable_path.is_none());
    }

    #[test]
    fn a_vanished_pid_is_reported_as_such() {
        let reader = ProcReader::new(ReadOptions::default()).unwrap();
        // pid_max is at most 2^22: this pid cannot exist.
        for read in [ProcReader::read_process, ProcReader::read_stat_only] {
            assert!(matches!(
                read(&reader, u32::MAX - 1),
                Err(ReadError::Vanished { .. })
            ));
        }
    }

    #[test]
    fn snapshot_sees_this_process_and_its_parent() {
        let reader = ProcReader::new(ReadOptions::default()).unwrap();
        let snap = reader.snapshot(usize::MAX).unwrap();
        let me = snap
            .processes
            .iter()
            .find(|p| p.pid == std::process::id())
            .unwrap();
        let parent = nix::unistd::getppid().as_raw().unsigned_abs();
        assert_eq!(me.ppid, Some(parent));
        assert!(snap.processes.iter().any(|p| p.pid == parent));
        assert_eq!(snap.stats.processes, snap.processes.len() as u64);
        assert!(snap.processes.windows(2).all(|w| w[0].pid < w[1].pid));
        for p in &snap.processes {
            collector_core::CollectionEvent::Process(p.clone())
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn cached_passes_match_a_cold_pass_and_forget_the_dead() {
        let reader = ProcReader::new(ReadOptions::default()).unwrap();
        let mut cache = SnapshotCache::default();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let warm1 = reader.snapshot_cached(usize::MAX, &mut cache).unwrap();
        assert!(warm1.processes.iter().any(|p| p.pid == child.id()));
        let warm2 = reader.snapshot_cached(usize::MAX, &mut cache).unwrap();
        let cold = reader.read_process(std::process::id()).unwrap();
        let me = warm2
            .processes
            .iter()
            .find(|p| p.pid == std::process::id())
            .unwrap();
        assert_eq!(
            me.context(),
            cold.context(),
            "the cached context is the cold one"
        );
        assert!(cold.context().pid_ns.is_some() && cold.context().cgroup.is_some());
        assert!(cold.euid.is_some() && cold.state.is_some() && cold.cpu_ticks.is_some());
        let start = warm2
            .processes
            .iter()
            .find(|p| p.pid == child.id())
            .and_then(|p| p.process_key)
            .unwrap()
            .start_ticks;
        assert!(cache.remembers(child.id(), start));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.snapshot_cached(usize::MAX, &mut cache).unwrap();
        // By its key: other tests' processes come and go meanwhile.
        assert!(
            !cache.remembers(child.id(), start),
            "the dead child's entry was not dropped"
        );
    }

    #[test]
    fn an_idle_process_whose_executable_goes_is_reported_so_by_the_next_pass() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("idle-sleep");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        let pid = child.id();
        // Its exec is done once its argv is its own.
        while !std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap_or_default()
            .ends_with(b"idle-sleep\x0030\x00")
        {
            std::thread::yield_now();
        }
        let reader = ProcReader::new(ReadOptions::default()).unwrap();
        let mut cache = SnapshotCache::with_threads(1);
        let mut pass = || {
            let snap = reader.snapshot_cached(usize::MAX, &mut cache).unwrap();
            snap.processes.into_iter().find(|p| p.pid == pid).unwrap()
        };
        let path = exe.to_str().unwrap();
        // Read, then passes over a sleeper that has not run since.
        for n in 0..3 {
            let p = pass();
            assert_eq!(p.executable_path.as_deref(), Some(path), "pass {n}");
            assert!(p.file_exists && !p.exe_replaced, "pass {n}: {p:?}");
        }
        // Replaced by a rename (its old file unlinked): it runs a deleted file.
        let new = dir.path().join("new");
        std::fs::copy("/bin/sleep", &new).unwrap();
        std::fs::rename(&new, &exe).unwrap();
        let p = pass();
        assert_eq!(p.executable_path.as_deref(), Some(path));
        assert!(
            !p.file_exists,
            "the replaced file is reported deleted: {p:?}"
        );
        // Deleted outright.
        std::fs::remove_file(&exe).unwrap();
        assert!(!pass().file_exists);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn max_processes_truncates_and_counts() {
        let reader = ProcReader::new(ReadOptions::default()).unwrap();
        let snap = reader.snapshot(3).unwrap();
        assert_eq!(snap.processes.len(), 3);
        assert!(snap.stats.truncated > 0);
    }

    #[test]
    fn itoa_formats_decimal() {
        for n in [0, 7, 10, 4_194_304, u32::MAX] {
            assert_eq!(itoa(n, &mut [0; 10]), n.to_string());
        }
    }

    #[test]
    fn a_missing_proc_root_is_a_setup_error() {
        assert!(matches!(
            ProcReader::with_root("/nonexistent-proc", ReadOptions::default()),
            Err(SetupError::BootTime { .. })
        ));
    }
}
