//! Reading the host and its processes: [`Sampler`] turns two reads of the
//! kernel's files a sample apart into [`PerformanceEvent`]s.
//!
//! - Host: `/proc/stat` (CPU total and per core, forks, runnable and
//!   blocked tasks, context switches), `/proc/meminfo`, `/proc/loadavg`,
//!   `/proc/pressure/{cpu,memory,io}`, `/proc/diskstats` and
//!   `/proc/net/dev` (as rates), and cgroup v2 `cpu.stat` and
//!   `memory.current` of the hierarchy's root and its groups down to
//!   [`SamplerConfig::cgroup_depth`], at most
//!   [`SamplerConfig::max_cgroups`] of them.
//! - Processes ([`ProcessTable`]): one read of `/proc/<pid>/stat` per
//!   process per sample; CPU share = CPU ticks since the last sample /
//!   time since then. The table lives across samples: an entry is updated
//!   in place, a process that exited is removed after the sample that no
//!   longer found it, a reused pid (another start time) starts a new entry.
//!   Each process's `stat` stays open from its first read and is read again
//!   with one `pread` at offset 0: no path lookup, open or close (half the
//!   cost of a scan of idle processes), and a file whose process has exited
//!   answers ESRCH, so a reused pid is never read as the old process. At
//!   most [`ProcessTable::file_budget`] files are kept (the open-file limit
//!   less a reserve; [`raise_open_file_limit`](collector_core::procfs::raise_open_file_limit) lifts the soft limit to the
//!   hard one); past it, `stat` is opened and closed each sample. The
//!   buffers (directory listing, file bytes, path, top-N order) are reused
//!   and `/proc` is listed with `getdents64` into one of them, so a scan of
//!   processes already known allocates nothing.
//! - A single-threaded process's `schedstat` is kept open beside its
//!   `stat` and read first: while its run time (in nanoseconds) has not
//!   moved, the process has not run, so its CPU time and comm are as last
//!   read and its RSS has not grown, and its last read stands (a share of
//!   0 %) without the `stat` (about 0.9 µs of the kernel's time against
//!   4.2 µs). Every [`FULL_READ_EVERY`]th sample reads every `stat`, so an
//!   RSS the kernel shrank (reclaim) or a parent that changed (the old one
//!   exited) shows within that many samples.
//!
//! Polling cannot see what lives and dies between two samples: a process
//! shorter than the interval is never read (its CPU time still shows in
//! the host's CPU and in its parent's cgroup). procmond, which hears every
//! fork and exit from the kernel, is the collector for those.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use collector_core::metrics::{Counter, Gauge};
use collector_core::{
    BootId, PerformanceAnomalyKind, PerformanceEvent, PerformanceMetric as Metric,
    PerformanceSubject as Subject, ProcessKey, PsiResource,
};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags, RawDir};
use serde::{Deserialize, Serialize};

use crate::anomaly::{AnomalyConfig, Fired, HostWatch, ProcWatch};
use crate::metric::event;
use crate::parse::{self, CpuTimes, DiskCounters, HostStat, NetCounters};
use collector_core::procfs;

/// What is sampled and where from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerConfig {
    /// Where procfs is mounted.
    pub proc_root: PathBuf,
    /// The cgroup v2 hierarchy; unset: the first `cgroup2` mount in
    /// `<proc_root>/mounts`, and none when there is none.
    pub cgroup_root: Option<PathBuf>,
    /// How deep below the hierarchy's root groups are read (0: the root
    /// only; 2: top-level groups and one level below them).
    pub cgroup_depth: usize,
    /// Most cgroups read per sample; the rest are counted as skipped.
    pub max_cgroups: usize,
    /// Most disks and most interfaces reported per sample (each); the rest
    /// are counted as skipped. Loop and RAM disks are never reported.
    pub max_devices: usize,
    /// The busiest processes reported per sample.
    pub top_processes: usize,
    /// Most processes read per sample; the rest are counted as skipped.
    pub max_processes: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            cgroup_root: None,
            cgroup_depth: 2,
            max_cgroups: 64,
            max_devices: 32,
            top_processes: 10,
            max_processes: 100_000,
        }
    }
}

impl SamplerConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// [`collector_core::ConfigError::Invalid`] naming the bad field.
    pub fn validate(&self) -> Result<(), collector_core::ConfigError> {
        for (field, v) in [
            ("max_cgroups", self.max_cgroups),
            ("max_devices", self.max_devices),
            ("max_processes", self.max_processes),
        ] {
            if v == 0 {
                return Err(collector_core::ConfigError::Invalid {
                    field,
                    reason: "must be greater than zero".to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// What the sampler counts. Every handle is a [`Counter`] the source
/// registers for `/metrics` and health.
#[derive(Debug, Clone, Default)]
pub struct SamplerCounters {
    /// Samples taken.
    pub samples: Counter,
    /// Host files that could not be read or parsed.
    pub read_errors: Counter,
    /// Processes that exited between the directory listing and the read of
    /// their `stat`.
    pub vanished: Counter,
    /// Processes removed from the table because a sample no longer found
    /// them.
    pub exited: Counter,
    /// `stat` files unreadable for another reason, or malformed.
    pub unreadable: Counter,
    /// Processes, cgroups and devices over their limit, not read.
    pub skipped: Counter,
    /// Process reads answered from the last one: not run since
    /// (`schedstat`), so their `stat` was not read again.
    pub unchanged: Counter,
    /// Anomalies reported.
    pub anomalies: Counter,
    /// Pressure files (of `cpu`, `memory`, `io`) found absent: not sampled.
    pub psi_absent: Gauge,
}

/// The current time since boot (`CLOCK_BOOTTIME`, the clock of
/// `/proc/<pid>/stat`'s start times).
///
/// # Errors
/// When the clock cannot be read.
pub fn boot_time_now() -> io::Result<Duration> {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(Duration::from)
        .map_err(io::Error::from)
}

/// The kernel's clock tick rate and page size (collector-core's).
pub use collector_core::procfs::KernelUnits;

/// Reads `path` into `buf` (cleared first), reusing its allocation.
fn read_into(path: &Path, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.clear();
    std::fs::File::open(path)?.read_to_end(buf).map(|_| ())
}

/// Reads the whole of the open file `fd` from offset 0 into `buf` (which
/// is left that long): one `pread` while `buf` is large enough, which it
/// stays once it has grown, so no allocation either.
///
/// The most processes whose files a table of `max_processes` keeps open
/// (two each at most, `stat` and `schedstat`), within the soft open-file
/// limit now less [`FILE_RESERVE`].
fn file_budget(max_processes: usize) -> usize {
    procfs::file_budget(FILE_RESERVE, 2).min(max_processes)
}

/// Whether a read failed because the process is gone.
fn gone(e: &io::Error) -> bool {
    // ESRCH: the task exited while its file was open.
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(3)
}

/// One process as the table knows it.
#[derive(Debug, Clone)]
pub struct ProcEntry {
    /// Start time in clock ticks after boot (with the pid, its identity).
    pub start_ticks: u64,
    /// `comm`, lossy UTF-8.
    pub comm: String,
    /// Parent pid.
    pub ppid: u32,
    /// utime + stime at the last sample, in ticks.
    pub ticks: u64,
    /// RSS at the last sample, in bytes.
    pub rss_bytes: u64,
    /// CPU share over the last interval (percent of one core); `None` on
    /// the first sight of a process that already ran before the previous
    /// sample.
    pub cpu_percent: Option<f64>,
    seen: u64,
    read_at: Duration,
    watch: ProcWatch,
    file: KeptFile,
    /// Threads at the last `stat` read.
    threads: u64,
    /// Its `schedstat` run time read just before its last `stat`, while it
    /// is single-threaded.
    ran_ns: Option<u64>,
}

/// A process's `stat`, kept open between samples, and its `schedstat`
/// beside it while it is single-threaded; a clone of its entry keeps none
/// (the table alone holds the files).
#[derive(Debug, Default)]
struct KeptFile {
    stat: Option<OwnedFd>,
    schedstat: Option<OwnedFd>,
}

impl Clone for KeptFile {
    fn clone(&self) -> Self {
        Self::default()
    }
}

pub use collector_core::procfs::FULL_READ_EVERY;

/// Open files left to everything else perfmond does (its socket, its
/// clients, host files, the runtime) when the budget of kept `stat` files
/// is taken from the open-file limit.
const FILE_RESERVE: u64 = 256;

/// A process among the busiest of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopProcess {
    /// Its pid.
    pub pid: u32,
    /// Its start time in ticks (for its key).
    pub start_ticks: u64,
    /// Its CPU share over the last interval (percent of one core).
    pub cpu_percent: f64,
    /// Its RSS, bytes.
    pub rss_bytes: u64,
}

/// One process's anomaly from the last scan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcAnomaly {
    /// Its pid.
    pub pid: u32,
    /// Its start time in ticks.
    pub start_ticks: u64,
    /// What fired.
    pub fired: Fired,
}

/// What one [`ProcessTable::scan`] saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Processes read.
    pub processes: usize,
    /// Gone between listing and reading.
    pub vanished: usize,
    /// Removed: not found any more.
    pub exited: usize,
    /// Unreadable or malformed `stat`.
    pub unreadable: usize,
    /// Over `max_processes`.
    pub skipped: usize,
    /// Read (counted in `processes`) from their `schedstat` alone: not run
    /// since their last read.
    pub unchanged: usize,
}

/// Every process's CPU ticks and RSS, kept across samples. See the
/// [module docs](self).
#[derive(Debug)]
pub struct ProcessTable {
    proc_root: PathBuf,
    units: KernelUnits,
    max_processes: usize,
    entries: HashMap<u32, ProcEntry>,
    epoch: u64,
    last_scan: Option<Duration>,
    buf: Vec<u8>,
    dirbuf: Vec<u8>,
    path: String,
    order: Vec<TopProcess>,
    anomalies: Vec<ProcAnomaly>,
    file_budget: usize,
    kept_files: usize,
}

impl ProcessTable {
    /// An empty table reading `<proc_root>/<pid>/stat`.
    pub fn new(proc_root: impl Into<PathBuf>, units: KernelUnits, max_processes: usize) -> Self {
        let units = KernelUnits {
            ticks_per_second: units.ticks_per_second.max(1),
            page_size: units.page_size,
        };
        Self {
            proc_root: proc_root.into(),
            units,
            max_processes,
            entries: HashMap::new(),
            epoch: 0,
            last_scan: None,
            buf: Vec::with_capacity(512),
            dirbuf: Vec::with_capacity(32 * 1024),
            path: String::new(),
            order: Vec::new(),
            anomalies: Vec::new(),
            file_budget: file_budget(max_processes),
            kept_files: 0,
        }
    }

    /// The most `stat` files kept open between samples: `max_processes`, or
    /// fewer when the open-file limit at construction leaves less (less
    /// a reserve of 256 for its other files).
    pub fn file_budget(&self) -> usize {
        self.file_budget
    }

    /// At most `budget` processes' files kept open (fewer than
    /// [`file_budget`](Self::file_budget) for an embedder with other uses
    /// for its open files); the rest are opened and closed each sample.
    #[must_use]
    pub fn with_file_budget(mut self, budget: usize) -> Self {
        self.limit_files(budget);
        self
    }

    /// [`with_file_budget`](Self::with_file_budget) on a table in use:
    /// files kept past the new budget are closed at the next scan's read
    /// of their process.
    pub fn limit_files(&mut self, budget: usize) {
        self.file_budget = self.file_budget.min(budget);
    }

    /// The `stat` file kept open for `pid`, if one is.
    pub fn kept_file(&self, pid: u32) -> Option<rustix::fd::BorrowedFd<'_>> {
        use rustix::fd::AsFd as _;
        self.entries
            .get(&pid)?
            .file
            .stat
            .as_ref()
            .map(|f| f.as_fd())
    }

    /// The processes whose `stat` is kept open now.
    pub fn kept_files(&self) -> usize {
        self.kept_files
    }

    /// Reads every process once and judges the per-process anomalies.
    /// `clock` gives the time since boot; it is read after each process's
    /// `stat`, so that a share covers the time between that process's two
    /// reads, not between the starts of two scans (a scan of thousands of
    /// processes takes long enough to matter).
    ///
    /// # Errors
    /// Only when the process directory cannot be listed; a process that
    /// vanished or cannot be read is counted and skipped.
    pub fn scan(
        &mut self,
        mut clock: impl FnMut() -> Duration,
        anomalies: &AnomalyConfig,
    ) -> io::Result<ScanStats> {
        let mut stats = ScanStats::default();
        let started = clock();
        let dir = rustix::fs::open(
            &self.proc_root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        self.epoch += 1;
        let pass = Pass {
            full: self.epoch % FULL_READ_EVERY == 1,
            since: self.last_scan,
            anomalies,
        };
        self.anomalies.clear();
        let mut dirbuf = std::mem::take(&mut self.dirbuf);
        let mut listing = RawDir::new(&dir, dirbuf.spare_capacity_mut());
        while let Some(dirent) = listing.next() {
            let Ok(dirent) = dirent else { break };
            let Some(pid) =
                parse::parse_u64(dirent.file_name().to_bytes()).and_then(|p| u32::try_from(p).ok())
            else {
                continue;
            };
            if stats.processes >= self.max_processes {
                stats.skipped += 1;
                continue;
            }
            self.read_one(&dir, pid, &pass, &mut clock, &mut stats);
        }
        self.dirbuf = dirbuf;
        let before = self.entries.len();
        let epoch = self.epoch;
        self.entries.retain(|_, e| e.seen == epoch);
        stats.exited += before - self.entries.len();
        self.kept_files = self
            .entries
            .values()
            .filter(|e| e.file.stat.is_some())
            .count();
        self.last_scan = Some(started);
        Ok(stats)
    }

    /// Reads process `pid` into the table (see [`scan`](Self::scan)),
    /// counting what happened in `stats`.
    fn read_one(
        &mut self,
        dir: &OwnedFd,
        pid: u32,
        pass: &Pass<'_>,
        clock: &mut impl FnMut() -> Duration,
        stats: &mut ScanStats,
    ) {
        let mut file = self
            .entries
            .get_mut(&pid)
            .map(|e| std::mem::take(&mut e.file))
            .unwrap_or_default();
        let ran = self.read_ran(dir, pid, &mut file);
        let last = self
            .entries
            .get(&pid)
            .filter(|e| !pass.full && ran.is_some() && e.seen != 0 && e.ran_ns == ran);
        let reading = if let Some(entry) = last {
            // Not run since its last read: that read stands.
            stats.unchanged += 1;
            Reading {
                ticks: entry.ticks,
                rss_bytes: entry.rss_bytes,
                start_ticks: entry.start_ticks,
                ppid: entry.ppid,
                threads: entry.threads,
                comm: None,
            }
        } else {
            let read = match &file.stat {
                Some(kept) => match procfs::pread_whole(kept, &mut self.buf) {
                    // The process this file was opened on has exited and
                    // another has its pid: that one is new to the table.
                    Err(e) if gone(&e) => {
                        file = KeptFile::default();
                        self.kept_files -= 1;
                        self.entries.remove(&pid);
                        stats.exited += 1;
                        self.open_stat(dir, pid, &mut file)
                    }
                    read => read,
                },
                None => self.open_stat(dir, pid, &mut file),
            };
            match read {
                Ok(()) => {}
                Err(e) if gone(&e) => {
                    stats.vanished += 1;
                    return;
                }
                Err(_) => {
                    stats.unreadable += 1;
                    return;
                }
            }
            let Ok(st) = parse::parse_pid_stat(&self.buf) else {
                stats.unreadable += 1;
                return;
            };
            Reading {
                ticks: st.utime.saturating_add(st.stime),
                rss_bytes: st.rss_pages.saturating_mul(self.units.page_size),
                start_ticks: st.starttime,
                ppid: st.ppid,
                threads: st.num_threads,
                comm: Some(st.comm),
            }
        };
        stats.processes += 1;
        let now = clock();
        let entry = Recorder {
            entries: &mut self.entries,
            fired: &mut self.anomalies,
            epoch: self.epoch,
            units: self.units,
            since: pass.since,
            config: pass.anomalies,
        }
        .record(pid, &reading, now);
        if self.kept_files > self.file_budget && file.stat.take().is_some() {
            self.kept_files -= 1;
        }
        // Its run time says whether it ran only while it is the only
        // thread (and only when read before this `stat`).
        if reading.threads != 1 || file.stat.is_none() {
            file.schedstat = None;
        }
        entry.ran_ns = ran.filter(|_| file.schedstat.is_some());
        entry.file = file;
    }

    /// Opens `<pid>/stat` below `dir` and reads it into the buffer; the file
    /// goes to `kept` while the budget allows (it is counted as kept).
    fn open_stat(&mut self, dir: &OwnedFd, pid: u32, kept: &mut KeptFile) -> io::Result<()> {
        let fd = self.open_file(dir, pid, "stat")?;
        procfs::pread_whole(&fd, &mut self.buf)?;
        if self.kept_files < self.file_budget {
            self.kept_files += 1;
            kept.stat = Some(fd);
        }
        Ok(())
    }

    /// `<pid>/<name>` below `dir`, opened.
    fn open_file(&mut self, dir: &OwnedFd, pid: u32, name: &str) -> io::Result<OwnedFd> {
        self.path.clear();
        let _ = write!(self.path, "{pid}/{name}");
        Ok(rustix::fs::openat(
            dir,
            &self.path,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// The run time in `pid`'s `schedstat`, read before its `stat`: from the
    /// kept file, else (a process new to the table, or single-threaded at
    /// its last read, with room for its files) from one opened and kept.
    /// `None` when it cannot be read, or is not worth reading.
    fn read_ran(&mut self, dir: &OwnedFd, pid: u32, kept: &mut KeptFile) -> Option<u64> {
        if kept.schedstat.is_none() {
            let single = self.entries.get(&pid).is_none_or(|e| e.threads == 1);
            let room = kept.stat.is_some() || self.kept_files < self.file_budget;
            if !single || !room {
                return None;
            }
            kept.schedstat = Some(self.open_file(dir, pid, "schedstat").ok()?);
        }
        let fd = kept.schedstat.as_ref()?;
        match procfs::pread_whole(fd, &mut self.buf) {
            Ok(()) => procfs::parse_schedstat_runtime(&self.buf),
            Err(_) => {
                // Gone (its `stat` read says so) or unreadable.
                kept.schedstat = None;
                None
            }
        }
    }

    /// The `n` busiest processes of the last scan, busiest first (only
    /// processes whose share is known).
    pub fn top(&mut self, n: usize) -> &[TopProcess] {
        self.order.clear();
        self.order
            .extend(self.entries.iter().filter_map(|(&pid, e)| {
                e.cpu_percent.map(|cpu_percent| TopProcess {
                    pid,
                    start_ticks: e.start_ticks,
                    cpu_percent,
                    rss_bytes: e.rss_bytes,
                })
            }));
        let busiest_first = |a: &TopProcess, b: &TopProcess| {
            b.cpu_percent
                .total_cmp(&a.cpu_percent)
                .then(a.pid.cmp(&b.pid))
        };
        if n == 0 {
            self.order.clear();
        } else if self.order.len() > n {
            self.order.select_nth_unstable_by(n - 1, busiest_first);
            self.order.truncate(n);
        }
        self.order.sort_unstable_by(busiest_first);
        &self.order
    }

    /// The anomalies of the last scan.
    pub fn anomalies(&self) -> &[ProcAnomaly] {
        &self.anomalies
    }

    /// What the table knows of `pid`.
    pub fn get(&self, pid: u32) -> Option<&ProcEntry> {
        self.entries.get(&pid)
    }

    /// Processes in the table.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What one read of a process gave: its `stat`, or its last read again
/// when it has not run since.
struct Reading<'b> {
    /// utime + stime, ticks.
    ticks: u64,
    rss_bytes: u64,
    start_ticks: u64,
    ppid: u32,
    threads: u64,
    /// `None`: as last read.
    comm: Option<&'b [u8]>,
}

/// What every process of one scan is read with.
struct Pass<'c> {
    /// Every `stat` read, run or not.
    full: bool,
    /// When the previous scan began.
    since: Option<Duration>,
    anomalies: &'c AnomalyConfig,
}

/// Records one process's read into the table.
struct Recorder<'a> {
    entries: &'a mut HashMap<u32, ProcEntry>,
    fired: &'a mut Vec<ProcAnomaly>,
    epoch: u64,
    units: KernelUnits,
    /// When the previous scan began.
    since: Option<Duration>,
    config: &'a AnomalyConfig,
}

impl<'a> Recorder<'a> {
    fn record(self, pid: u32, st: &Reading<'_>, now: Duration) -> &'a mut ProcEntry {
        let tps = self.units.ticks_per_second;
        let tick = tps as f64;
        let ticks = st.ticks;
        let rss_bytes = st.rss_bytes;
        let born = Duration::from_secs(st.start_ticks / tps)
            + Duration::from_nanos((st.start_ticks % tps) * 1_000_000_000 / tps);
        let entry = self.entries.entry(pid).or_insert_with(|| ProcEntry {
            start_ticks: st.start_ticks,
            comm: String::new(),
            ppid: st.ppid,
            ticks,
            rss_bytes,
            cpu_percent: None,
            seen: 0,
            read_at: now,
            watch: ProcWatch::default(),
            file: KeptFile::default(),
            threads: st.threads,
            ran_ns: None,
        });
        let known = entry.seen != 0 && entry.start_ticks == st.start_ticks;
        // The interval this share covers: since the last read of this
        // process, or since it was born when that was after the last scan
        // began.
        let (share, from) = match self.since {
            Some(_) if known => (
                share(
                    ticks.saturating_sub(entry.ticks),
                    tick,
                    now.saturating_sub(entry.read_at),
                ),
                entry.read_at,
            ),
            Some(prev) if born >= prev => (share(ticks, tick, now.saturating_sub(born)), born),
            _ => (None, now),
        };
        if !known {
            entry.start_ticks = st.start_ticks;
            entry.watch = ProcWatch::default();
        }
        if let Some(comm) = st.comm.filter(|c| entry.comm.as_bytes() != *c) {
            entry.comm.clear();
            entry.comm.push_str(&String::from_utf8_lossy(comm));
        }
        entry.ppid = st.ppid;
        entry.threads = st.threads;
        entry.ticks = ticks;
        entry.rss_bytes = rss_bytes;
        entry.cpu_percent = share;
        entry.seen = self.epoch;
        entry.read_at = now;
        let observed = entry
            .watch
            .observe(self.config, from, now, share, Some(rss_bytes));
        for fired in observed.into_iter().flatten() {
            self.fired.push(ProcAnomaly {
                pid,
                start_ticks: st.start_ticks,
                fired,
            });
        }
        entry
    }
}

/// Percent of one core: `ticks` of CPU over `elapsed`; `None` over too short
/// a time to say (less than a tick).
fn share(ticks: u64, ticks_per_second: f64, elapsed: Duration) -> Option<f64> {
    let secs = elapsed.as_secs_f64();
    (secs * ticks_per_second >= 1.0).then(|| ticks as f64 / ticks_per_second / secs * 100.0)
}

/// Per second over `secs`, of a counter that went from `prev` to `cur` (a
/// counter that went back, a device reset, counts as 0).
fn rate(prev: u64, cur: u64, secs: f64) -> f64 {
    cur.saturating_sub(prev) as f64 / secs
}

/// A device (disk, interface, cgroup) and its counters at the last sample.
#[derive(Debug)]
struct Dev<C> {
    name: String,
    prev: C,
    seen: u64,
}

/// Devices kept across samples by name, found without allocating when
/// known; the ones not seen in a sample are dropped after it.
#[derive(Debug)]
struct DevTable<C> {
    devs: Vec<Dev<C>>,
    epoch: u64,
    /// The most devices reported in one sample, and this sample's counts.
    max: usize,
    reported: usize,
    skipped: u64,
}

impl<C: Copy> DevTable<C> {
    const fn new() -> Self {
        Self {
            devs: Vec::new(),
            epoch: 0,
            max: 0,
            reported: 0,
            skipped: 0,
        }
    }

    /// A device of this sample: its counters at the last sample and the
    /// `secs` since, what its rates need (`None` when new, on the first
    /// sample, or past the `max` devices reported, which is counted).
    fn seen(&mut self, name: &[u8], cur: C, secs: Option<f64>) -> Option<(C, f64)> {
        if self.reported >= self.max {
            self.skipped += 1;
            return None;
        }
        self.reported += 1;
        Some((self.update(name, cur)?, secs?))
    }

    /// The counters at the last sample of `name` (`None` when new), and
    /// records `cur` as its latest.
    fn update(&mut self, name: &[u8], cur: C) -> Option<C> {
        let epoch = self.epoch;
        if let Some(d) = self.devs.iter_mut().find(|d| d.name.as_bytes() == name) {
            d.seen = epoch;
            return Some(std::mem::replace(&mut d.prev, cur));
        }
        self.devs.push(Dev {
            name: String::from_utf8_lossy(name).into_owned(),
            prev: cur,
            seen: epoch,
        });
        None
    }

    fn begin(&mut self, max: usize) {
        self.epoch += 1;
        (self.max, self.reported, self.skipped) = (max, 0, 0);
    }

    /// Forgets the devices this sample did not see; the devices skipped.
    fn end(&mut self) -> u64 {
        let epoch = self.epoch;
        self.devs.retain(|d| d.seen == epoch);
        self.skipped
    }
}

/// What one [`Sampler::sample`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SampleReport {
    /// The process scan.
    pub scan: ScanStats,
    /// Events produced.
    pub events: usize,
    /// Anomalies among them.
    pub anomalies: usize,
}

/// The host and process sampler. See the [module docs](self).
#[derive(Debug)]
pub struct Sampler {
    config: SamplerConfig,
    anomalies: AnomalyConfig,
    units: KernelUnits,
    boot_id: Option<BootId>,
    counters: SamplerCounters,
    buf: Vec<u8>,
    path: PathBuf,
    stat: HostStat,
    prev_stat: HostStat,
    last: Option<Duration>,
    disks: DevTable<DiskCounters>,
    nets: DevTable<NetCounters>,
    cgroups: DevTable<(u64, u64)>,
    cgroup_root: Option<PathBuf>,
    cgroup_dirs: Vec<PathBuf>,
    psi_absent: [bool; PsiResource::ALL.len()],
    host_watch: HostWatch,
    processes: ProcessTable,
}

impl Sampler {
    /// A sampler with `config`, judging `anomalies`; the boot id (for
    /// process keys) is read from the running kernel.
    pub fn new(config: SamplerConfig, anomalies: AnomalyConfig, counters: SamplerCounters) -> Self {
        let units = KernelUnits::current();
        let boot_id = match BootId::current() {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(error = %e, "no boot id: per-process events carry no process key");
                None
            }
        };
        let cgroup_root = config.cgroup_root.clone().or_else(|| {
            std::fs::read(config.proc_root.join("mounts"))
                .ok()
                .and_then(|m| parse::cgroup2_mount(&m))
                .map(PathBuf::from)
        });
        match &cgroup_root {
            Some(root) => tracing::info!(root = %root.display(), "cgroup v2 hierarchy"),
            None => tracing::info!("no cgroup v2 hierarchy mounted: no cgroup samples"),
        }
        let processes = ProcessTable::new(&config.proc_root, units, config.max_processes);
        Self {
            config,
            anomalies,
            units,
            boot_id,
            counters,
            buf: Vec::with_capacity(4096),
            path: PathBuf::new(),
            stat: HostStat::default(),
            prev_stat: HostStat::default(),
            last: None,
            disks: DevTable::new(),
            nets: DevTable::new(),
            cgroups: DevTable::new(),
            cgroup_root,
            cgroup_dirs: Vec::new(),
            psi_absent: [false; PsiResource::ALL.len()],
            host_watch: HostWatch::default(),
            processes,
        }
    }

    /// The process table (the last scan's processes).
    pub fn processes(&mut self) -> &mut ProcessTable {
        &mut self.processes
    }

    /// The counters.
    pub fn counters(&self) -> &SamplerCounters {
        &self.counters
    }

    /// Takes one sample now, appending its events to `out`. Rates need a
    /// previous sample: the first one reports levels only.
    ///
    /// # Errors
    /// When the boot-time clock cannot be read or the process directory
    /// cannot be listed (a missing host file is counted, not an error).
    pub fn sample(&mut self, out: &mut Vec<PerformanceEvent>) -> io::Result<SampleReport> {
        // Checked once: CLOCK_BOOTTIME does not fail once it has worked.
        let first = boot_time_now()?;
        self.sample_at(
            &mut || boot_time_now().unwrap_or(first),
            SystemTime::now(),
            out,
        )
    }

    /// [`sample`](Self::sample) with a given clock (time since boot, read
    /// at the start and per process) and wall time.
    ///
    /// # Errors
    /// As [`sample`](Self::sample).
    pub fn sample_at(
        &mut self,
        clock: &mut dyn FnMut() -> Duration,
        wall: SystemTime,
        out: &mut Vec<PerformanceEvent>,
    ) -> io::Result<SampleReport> {
        let now = clock();
        let first = out.len();
        let secs = self
            .last
            .map(|l| now.saturating_sub(l).as_secs_f64())
            .filter(|&s| s > 0.0);
        let mut anomalies = 0;
        self.cpu(secs, wall, out, &mut anomalies);
        self.memory(wall, out);
        self.psi(wall, out, &mut anomalies);
        self.disks(secs, wall, out);
        self.nets(secs, wall, out);
        self.cgroups(secs, wall, out);
        let scan = self.processes.scan(&mut *clock, &self.anomalies)?;
        self.count(&scan);
        let top = self.config.top_processes;
        // The process key needs the boot id; without it, the pid alone.
        let boot_id = self.boot_id;
        let subject = |pid, start_ticks| Subject::Process {
            pid,
            process_key: boot_id.map(|b| ProcessKey::new(b, pid, start_ticks)),
        };
        let procs = &mut self.processes;
        for a in &procs.anomalies {
            let metric = match a.fired.kind {
                PerformanceAnomalyKind::SustainedCpu => Metric::ProcessCpu,
                _ => Metric::ProcessRssGrowth,
            };
            let anomaly = self.anomalies.anomaly(a.fired.kind, a.fired.duration);
            let e = event(metric, a.fired.value, subject(a.pid, a.start_ticks), wall);
            out.extend(e.map(|e| e.with_anomaly(anomaly)));
            anomalies += 1;
        }
        procs.top(top);
        for t in &procs.order {
            // A share judged sustained above is that sample already.
            let judged = procs
                .anomalies
                .iter()
                .any(|a| a.pid == t.pid && a.fired.kind == PerformanceAnomalyKind::SustainedCpu);
            if !judged {
                let s = subject(t.pid, t.start_ticks);
                out.extend(event(Metric::ProcessCpu, t.cpu_percent, s, wall));
            }
            let s = subject(t.pid, t.start_ticks);
            out.extend(event(Metric::ProcessRss, t.rss_bytes as f64, s, wall));
        }
        out.extend(event(
            Metric::ProcessesSampled,
            scan.processes as f64,
            Subject::Collector,
            wall,
        ));
        self.last = Some(now);
        self.counters.samples.inc();
        self.counters.anomalies.add_usize(anomalies);
        Ok(SampleReport {
            scan,
            events: out.len() - first,
            anomalies,
        })
    }

    fn count(&self, scan: &ScanStats) {
        let c = &self.counters;
        c.vanished.add_usize(scan.vanished);
        c.exited.add_usize(scan.exited);
        c.unreadable.add_usize(scan.unreadable);
        c.skipped.add_usize(scan.skipped);
        c.unchanged.add_usize(scan.unchanged);
    }

    /// Reads `<proc_root>/<rel>` into the buffer; `false` (counted) when it
    /// cannot be read.
    fn read_proc(&mut self, rel: &str) -> bool {
        self.path.clear();
        self.path.push(&self.config.proc_root);
        self.path.push(rel);
        match read_into(&self.path, &mut self.buf) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "unreadable");
                self.counters.read_errors.inc();
                false
            }
        }
    }

    fn cpu(
        &mut self,
        secs: Option<f64>,
        wall: SystemTime,
        out: &mut Vec<PerformanceEvent>,
        anomalies: &mut usize,
    ) {
        if !self.read_proc("stat") {
            return;
        }
        std::mem::swap(&mut self.stat, &mut self.prev_stat);
        if let Err(e) = parse::parse_stat(&self.buf, &mut self.stat) {
            tracing::debug!(error = %e, "unparsable");
            self.counters.read_errors.inc();
            std::mem::swap(&mut self.stat, &mut self.prev_stat);
            return;
        }
        let sys = |m, v| event(m, v, Subject::Host, wall);
        out.extend(sys(Metric::ProcsRunning, self.stat.procs_running as f64));
        out.extend(sys(Metric::ProcsBlocked, self.stat.procs_blocked as f64));
        // A previous read is needed for shares and rates (`forks` is never
        // zero once the kernel has booted).
        let (Some(secs), true) = (secs, self.prev_stat.forks > 0) else {
            return;
        };
        let (p, c) = (&self.prev_stat.total, &self.stat.total);
        let dt = c.total().saturating_sub(p.total()) as f64;
        if dt > 0.0 {
            let pct = |f: fn(&CpuTimes) -> u64| f(c).saturating_sub(f(p)) as f64 / dt * 100.0;
            out.extend(sys(Metric::CpuTotal, pct(CpuTimes::busy)));
            out.extend(sys(Metric::CpuUser, pct(|t| t.user + t.nice)));
            out.extend(sys(
                Metric::CpuSystem,
                pct(|t| t.system + t.irq + t.softirq),
            ));
            out.extend(sys(Metric::CpuIowait, pct(|t| t.iowait)));
            out.extend(sys(Metric::CpuSteal, pct(|t| t.steal)));
        }
        for (i, cur) in self.stat.per_cpu.iter().enumerate() {
            let id = self.stat.cpu_ids.get(i).copied();
            // The same CPU in the previous read (CPUs can go offline).
            let prev = self
                .prev_stat
                .cpu_ids
                .iter()
                .position(|&p| Some(p) == id)
                .and_then(|j| self.prev_stat.per_cpu.get(j));
            let (Some(id), Some(prev)) = (id, prev) else {
                continue;
            };
            let dt = cur.total().saturating_sub(prev.total()) as f64;
            if dt > 0.0 {
                let busy = cur.busy().saturating_sub(prev.busy()) as f64 / dt * 100.0;
                out.extend(event(
                    Metric::CpuCore,
                    busy,
                    Subject::Cpu { core: id },
                    wall,
                ));
            }
        }
        let forks = rate(self.prev_stat.forks, self.stat.forks, secs);
        // A fork rate above the threshold is that sample, judged.
        let judged = self.host_watch.forks(&self.anomalies, forks).map(|_| {
            *anomalies += 1;
            self.anomalies.anomaly(
                PerformanceAnomalyKind::ForkRate,
                Duration::try_from_secs_f64(secs).unwrap_or_default(),
            )
        });
        out.extend(sys(Metric::ForkRate, forks).map(|e| match judged {
            Some(a) => e.with_anomaly(a),
            None => e,
        }));
        out.extend(sys(
            Metric::ContextSwitchRate,
            rate(
                self.prev_stat.context_switches,
                self.stat.context_switches,
                secs,
            ),
        ));
    }

    fn memory(&mut self, wall: SystemTime, out: &mut Vec<PerformanceEvent>) {
        let sys = |m, v: u64| event(m, v as f64, Subject::Host, wall);
        if self.read_proc("meminfo") {
            match parse::parse_meminfo(&self.buf) {
                Ok(m) => {
                    out.extend(sys(Metric::MemoryTotal, m.total));
                    out.extend(sys(Metric::MemoryAvailable, m.available));
                    out.extend(sys(Metric::MemoryFree, m.free));
                    out.extend(sys(
                        Metric::SwapUsed,
                        m.swap_total.saturating_sub(m.swap_free),
                    ));
                }
                Err(_) => self.counters.read_errors.inc(),
            }
        }
        if self.read_proc("loadavg") {
            match parse::parse_loadavg(&self.buf) {
                Ok(l) => {
                    for (m, v) in [
                        (Metric::LoadAvg1, l.avg1),
                        (Metric::LoadAvg5, l.avg5),
                        (Metric::LoadAvg15, l.avg15),
                    ] {
                        out.extend(event(m, v, Subject::Host, wall));
                    }
                }
                Err(_) => self.counters.read_errors.inc(),
            }
        }
    }

    fn psi(&mut self, wall: SystemTime, out: &mut Vec<PerformanceEvent>, anomalies: &mut usize) {
        for (i, &r) in PsiResource::ALL.iter().enumerate() {
            if self.psi_absent.get(i).copied().unwrap_or(true) {
                continue;
            }
            self.path.clear();
            self.path.push(&self.config.proc_root);
            self.path.push("pressure");
            self.path.push(r.as_str());
            if let Err(e) = read_into(&self.path, &mut self.buf) {
                // Without CONFIG_PSI (or with psi=0) the files are absent or
                // refuse reads (EOPNOTSUPP): that does not change while the
                // kernel runs, so it is said once and not tried again.
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "no pressure stall information for {}: not sampled", r.as_str()
                );
                if let Some(absent) = self.psi_absent.get_mut(i) {
                    *absent = true;
                }
                self.counters.psi_absent.set(
                    i64::try_from(self.psi_absent.iter().filter(|a| **a).count()).unwrap_or(0),
                );
                continue;
            }
            let Ok(p) = parse::parse_pressure(&self.buf) else {
                self.counters.read_errors.inc();
                continue;
            };
            let m = r.metrics();
            // A `some avg10` above the threshold is that sample, judged.
            let stall = self
                .host_watch
                .psi(&self.anomalies, r, p.some.avg10)
                .map(|_| {
                    *anomalies += 1;
                    self.anomalies
                        .anomaly(PerformanceAnomalyKind::PsiStall, Duration::from_secs(10))
                });
            let mut emit = |metrics: &[Metric], l: parse::PressureLine| {
                for (metric, v) in
                    metrics
                        .iter()
                        .zip([l.avg10, l.avg60, l.avg300, l.total_us as f64])
                {
                    let e = event(*metric, v, Subject::Host, wall);
                    out.extend(e.map(|e| match &stall {
                        Some(a) if *metric == r.some_avg10() => e.with_anomaly(a.clone()),
                        _ => e,
                    }));
                }
            };
            emit(&m[..4], p.some);
            if let Some(full) = p.full {
                emit(&m[4..], full);
            }
        }
    }

    /// Whether PSI is known absent for `r` (said once in the log).
    pub fn psi_absent(&self, r: PsiResource) -> bool {
        PsiResource::ALL
            .iter()
            .position(|x| *x == r)
            .and_then(|i| self.psi_absent.get(i))
            .is_some_and(|a| *a)
    }

    fn disks(&mut self, secs: Option<f64>, wall: SystemTime, out: &mut Vec<PerformanceEvent>) {
        if !self.read_proc("diskstats") {
            return;
        }
        let table = &mut self.disks;
        table.begin(self.config.max_devices);
        let malformed = parse::parse_diskstats(&self.buf, |name, cur| {
            if name.starts_with(b"loop") || name.starts_with(b"ram") {
                return;
            }
            let Some((prev, secs)) = table.seen(name, cur, secs) else {
                return;
            };
            let dev = String::from_utf8_lossy(name);
            for (m, v) in [
                (
                    Metric::DiskReadRate,
                    rate(prev.sectors_read, cur.sectors_read, secs) * 512.0,
                ),
                (
                    Metric::DiskWriteRate,
                    rate(prev.sectors_written, cur.sectors_written, secs) * 512.0,
                ),
                (Metric::DiskReadOps, rate(prev.reads, cur.reads, secs)),
                (Metric::DiskWriteOps, rate(prev.writes, cur.writes, secs)),
                (
                    Metric::DiskBusy,
                    (rate(prev.io_ms, cur.io_ms, secs) / 10.0).min(100.0),
                ),
            ] {
                let disk = Subject::Disk {
                    name: dev.clone().into_owned(),
                };
                out.extend(event(m, v, disk, wall));
            }
        });
        self.counters.skipped.add(table.end());
        self.counters.read_errors.add_usize(malformed);
    }

    fn nets(&mut self, secs: Option<f64>, wall: SystemTime, out: &mut Vec<PerformanceEvent>) {
        if !self.read_proc("net/dev") {
            return;
        }
        let table = &mut self.nets;
        table.begin(self.config.max_devices);
        let malformed = parse::parse_net_dev(&self.buf, |name, cur| {
            let Some((prev, secs)) = table.seen(name, cur, secs) else {
                return;
            };
            let dev = String::from_utf8_lossy(name);
            let errors = |c: &NetCounters| c.rx_errors.saturating_add(c.tx_errors);
            let drops = |c: &NetCounters| c.rx_drops.saturating_add(c.tx_drops);
            for (m, v) in [
                (Metric::NetRxRate, rate(prev.rx_bytes, cur.rx_bytes, secs)),
                (Metric::NetTxRate, rate(prev.tx_bytes, cur.tx_bytes, secs)),
                (
                    Metric::NetRxPackets,
                    rate(prev.rx_packets, cur.rx_packets, secs),
                ),
                (
                    Metric::NetTxPackets,
                    rate(prev.tx_packets, cur.tx_packets, secs),
                ),
                (Metric::NetErrors, rate(errors(&prev), errors(&cur), secs)),
                (Metric::NetDrops, rate(drops(&prev), drops(&cur), secs)),
            ] {
                let interface = Subject::Interface {
                    name: dev.clone().into_owned(),
                };
                out.extend(event(m, v, interface, wall));
            }
        });
        self.counters.skipped.add(table.end());
        self.counters.read_errors.add_usize(malformed);
    }

    /// Lists the groups to read, breadth first, bounded by depth and count.
    fn list_cgroups(&mut self, root: &Path) {
        self.cgroup_dirs.clear();
        self.cgroup_dirs.push(root.to_owned());
        let mut level_start = 0;
        for _ in 0..self.config.cgroup_depth {
            let level_end = self.cgroup_dirs.len();
            for i in level_start..level_end {
                let Ok(dir) = std::fs::read_dir(&self.cgroup_dirs[i]) else {
                    continue;
                };
                for d in dir.flatten() {
                    if !d.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    if self.cgroup_dirs.len() >= self.config.max_cgroups {
                        self.counters.skipped.inc();
                        continue;
                    }
                    self.cgroup_dirs.push(d.path());
                }
            }
            level_start = level_end;
        }
    }

    fn cgroups(&mut self, secs: Option<f64>, wall: SystemTime, out: &mut Vec<PerformanceEvent>) {
        let Some(root) = self.cgroup_root.clone() else {
            return;
        };
        self.list_cgroups(&root);
        // Bounded by list_cgroups already.
        self.cgroups.begin(usize::MAX);
        let dirs = std::mem::take(&mut self.cgroup_dirs);
        for dir in &dirs {
            let rel = dir.strip_prefix(&root).unwrap_or(dir);
            let name = format!("/{}", rel.display());
            let usage = read_into(&dir.join("cpu.stat"), &mut self.buf)
                .ok()
                .and_then(|()| parse::parse_cgroup_cpu_stat(&self.buf).ok());
            if let Some(cpu) = usage {
                let prev = self
                    .cgroups
                    .update(name.as_bytes(), (cpu.usage_us, cpu.throttled_us));
                if let (Some((pu, pt)), Some(secs)) = (prev, secs) {
                    let us = secs * 1e6;
                    for (m, v) in [
                        (
                            Metric::CgroupCpu,
                            cpu.usage_us.saturating_sub(pu) as f64 / us * 100.0,
                        ),
                        (
                            Metric::CgroupThrottled,
                            cpu.throttled_us.saturating_sub(pt) as f64 / us * 100.0,
                        ),
                    ] {
                        let path = name.clone();
                        out.extend(event(m, v, Subject::Cgroup { path }, wall));
                    }
                }
            }
            // The root has no memory.current, nor a group without the
            // memory controller: absent is normal, not an error.
            if read_into(&dir.join("memory.current"), &mut self.buf).is_ok() {
                if let Ok(bytes) = parse::parse_memory_current(&self.buf) {
                    let path = name.clone();
                    out.extend(event(
                        Metric::CgroupMemory,
                        bytes as f64,
                        Subject::Cgroup { path },
                        wall,
                    ));
                }
            }
        }
        self.cgroup_dirs = dirs;
        self.cgroups.end();
    }

    /// The kernel units the sampler computes with.
    pub fn units(&self) -> KernelUnits {
        self.units
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::float_cmp)]

    use super::*;

    const UNITS: KernelUnits = KernelUnits {
        ticks_per_second: 100,
        page_size: 4096,
    };

    fn stat_line(pid: u32, comm: &str, ticks: u64, start: u64, rss: u64) -> String {
        format!("{pid} ({comm}) R 1 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 1 0 {start} 0 {rss} 0\n")
    }

    fn write_proc(root: &Path, pid: u32, comm: &str, ticks: u64, start: u64, rss: u64) {
        let dir = root.join(pid.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stat"), stat_line(pid, comm, ticks, start, rss)).unwrap();
    }

    const fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn shares_come_from_tick_deltas_and_exited_processes_leave() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let cfg = AnomalyConfig::default();
        write_proc(r, 10, "busy", 1000, 100, 10);
        write_proc(r, 11, "idle", 5, 100, 20);
        write_proc(r, 12, "gone", 5, 100, 20);
        std::fs::create_dir_all(r.join("self")).unwrap(); // not a pid
        let mut t = ProcessTable::new(r, UNITS, 100);
        let st = t.scan(|| s(100), &cfg).unwrap();
        assert_eq!((st.processes, st.exited), (3, 0));
        assert!(t.top(10).is_empty(), "no share on first sight");

        // 10 s later: busy used 10 s of CPU (1000 ticks), idle nothing,
        // 12 exited, 13 was born at t=105 s and used 2.5 s.
        write_proc(r, 10, "busy", 2000, 100, 10);
        std::fs::remove_dir_all(r.join("12")).unwrap();
        write_proc(r, 13, "new", 250, 10_500, 1);
        let st = t.scan(|| s(110), &cfg).unwrap();
        assert_eq!((st.processes, st.exited, st.vanished), (3, 1, 0));
        assert!(t.get(12).is_none(), "no stale entry");
        let top: Vec<(u32, f64)> = t.top(2).iter().map(|p| (p.pid, p.cpu_percent)).collect();
        assert_eq!(top, [(10, 100.0), (13, 50.0)]);
        assert_eq!(t.get(10).unwrap().rss_bytes, 10 * 4096);
        assert_eq!(t.top(10).len(), 3);

        // The pid 10 is reused by another process: a new entry, no share
        // computed against the old one's ticks.
        write_proc(r, 10, "other", 3, 5, 1);
        t.scan(|| s(120), &cfg).unwrap();
        let e = t.get(10).unwrap();
        assert_eq!(
            (e.comm.as_str(), e.start_ticks, e.cpu_percent),
            ("other", 5, None)
        );
    }

    #[test]
    fn a_single_threaded_process_that_has_not_run_keeps_its_last_read() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let cfg = AnomalyConfig::default();
        let schedstat = |pid: u32, ran_ns: u64| {
            std::fs::write(
                r.join(format!("{pid}/schedstat")),
                format!("{ran_ns} 5 3\n"),
            )
            .unwrap();
        };
        // 21 has two threads: its `schedstat` is its main thread's only.
        let two_threads = |ticks: u64, rss: u64| {
            std::fs::write(
                r.join("21/stat"),
                stat_line(21, "threads", ticks, 1, rss).replace(" 20 0 1 0 ", " 20 0 2 0 "),
            )
            .unwrap();
        };
        write_proc(r, 20, "sleeper", 50, 1, 10);
        write_proc(r, 21, "threads", 50, 1, 10);
        two_threads(50, 10);
        schedstat(20, 1000);
        schedstat(21, 1000);
        let mut t = ProcessTable::new(r, UNITS, 100);
        t.scan(|| s(100), &cfg).unwrap();

        // Their `stat`s moved but not their run times: 20 did not run, so
        // its `stat` is not read again; 21's other thread may have.
        write_proc(r, 20, "sleeper", 80, 1, 99);
        two_threads(80, 99);
        let st = t.scan(|| s(110), &cfg).unwrap();
        assert_eq!((st.processes, st.unchanged), (2, 1));
        let e = t.get(20).unwrap();
        assert_eq!(
            (e.ticks, e.rss_bytes, e.cpu_percent),
            (50, 10 * 4096, Some(0.0))
        );
        assert_eq!(t.get(21).unwrap().ticks, 80);

        // 20 ran: read again. Its 30 ticks ran in the 10 s since the last
        // sample (it had not run before): 3 %.
        schedstat(20, 2000);
        let st = t.scan(|| s(120), &cfg).unwrap();
        assert_eq!(st.unchanged, 0);
        let e = t.get(20).unwrap();
        assert_eq!(
            (e.ticks, e.rss_bytes, e.cpu_percent),
            (80, 99 * 4096, Some(3.0))
        );

        // The kernel shrank its RSS while it slept: seen at the next full
        // read, every FULL_READ_EVERY samples, and not before.
        write_proc(r, 20, "sleeper", 80, 1, 5);
        for epoch in 4..=FULL_READ_EVERY {
            let st = t.scan(|| s(100 + epoch * 10), &cfg).unwrap();
            assert_eq!((st.unchanged, t.get(20).unwrap().rss_bytes), (1, 99 * 4096));
        }
        let st = t.scan(|| s(1000), &cfg).unwrap();
        assert_eq!((st.unchanged, t.get(20).unwrap().rss_bytes), (0, 5 * 4096));
        assert_eq!(t.kept_files(), 2);
    }

    #[test]
    fn a_stat_that_vanishes_or_is_malformed_is_counted_not_fatal() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write_proc(r, 10, "ok", 1, 1, 1);
        std::fs::create_dir_all(r.join("11")).unwrap(); // listed, no stat: exited
        std::fs::create_dir_all(r.join("12")).unwrap();
        std::fs::write(r.join("12/stat"), "garbage").unwrap();
        let mut t = ProcessTable::new(r, UNITS, 100);
        let st = t.scan(|| s(1), &AnomalyConfig::default()).unwrap();
        assert_eq!((st.processes, st.vanished, st.unreadable), (1, 1, 1));
        assert!(ProcessTable::new(r.join("none"), UNITS, 1)
            .scan(|| s(1), &AnomalyConfig::default())
            .is_err());
        // The limit.
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write_proc(r, 10, "ok", 1, 1, 1);
        write_proc(r, 11, "ok", 1, 1, 1);
        let mut t = ProcessTable::new(r, UNITS, 1);
        let st = t.scan(|| s(1), &AnomalyConfig::default()).unwrap();
        assert_eq!((st.processes, st.skipped), (1, 1));
    }

    #[test]
    fn top_is_bounded_and_ordered() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for pid in 1..=30 {
            write_proc(r, pid, "p", 0, 1, 1);
        }
        let mut t = ProcessTable::new(r, UNITS, 100);
        t.scan(|| s(10), &AnomalyConfig::default()).unwrap();
        for pid in 1..=30 {
            write_proc(r, pid, "p", u64::from(pid) * 10, 1, 1);
        }
        t.scan(|| s(20), &AnomalyConfig::default()).unwrap();
        let pids: Vec<u32> = t.top(5).iter().map(|p| p.pid).collect();
        assert_eq!(pids, [30, 29, 28, 27, 26]);
        assert!(t.top(0).is_empty());
    }

    #[test]
    fn sustained_cpu_fires_through_the_table() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let cfg = AnomalyConfig {
            sustained_cpu_percent: 80.0,
            sustained_cpu_for: s(20),
            ..AnomalyConfig::default()
        };
        let mut t = ProcessTable::new(r, UNITS, 100);
        let mut fired_at = None;
        for (i, now) in (100..=150).step_by(10).enumerate() {
            write_proc(r, 7, "miner", i as u64 * 1000, 1, 1);
            t.scan(|| s(now), &cfg).unwrap();
            if let Some(a) = t.anomalies().first() {
                assert_eq!(
                    (a.pid, a.fired.kind),
                    (7, PerformanceAnomalyKind::SustainedCpu)
                );
                fired_at.get_or_insert(now);
            }
        }
        // Busy from 100 (the first interval's start): 20 s at 120.
        assert_eq!(fired_at, Some(120));
    }

    /// A fake procfs with the recorded host files.
    fn host_root(stat: &str) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        std::fs::write(r.join("stat"), stat).unwrap();
        for (from, to) in [
            ("meminfo", "meminfo"),
            ("loadavg", "loadavg"),
            ("diskstats", "diskstats"),
        ] {
            std::fs::copy(data.join(from), r.join(to)).unwrap();
        }
        std::fs::create_dir_all(r.join("pressure")).unwrap();
        std::fs::copy(data.join("pressure_cpu"), r.join("pressure/cpu")).unwrap();
        // No memory or io pressure file: absent, said once.
        std::fs::create_dir_all(r.join("net")).unwrap();
        std::fs::copy(data.join("net_dev"), r.join("net/dev")).unwrap();
        root
    }

    fn proc_stat(user: u64, idle: u64, forks: u64) -> String {
        format!(
            "cpu  {user} 0 0 {idle} 0 0 0 0 0 0\ncpu0 {user} 0 0 {idle} 0 0 0 0 0 0\n\
             ctxt 100\nprocesses {forks}\nprocs_running 3\nprocs_blocked 1\n"
        )
    }

    /// The value of metric `name` on the subject named `subject` (or of
    /// that kind, for a subject without a name).
    fn value(events: &[PerformanceEvent], name: &str, subject: &str) -> Option<f64> {
        events
            .iter()
            .find(|e| {
                e.metric.as_str() == name
                    && e.subject
                        .name()
                        .map_or(e.subject.kind().as_str() == subject, |n| n == subject)
            })
            .map(|e| e.value)
    }

    #[test]
    fn host_rates_come_from_two_reads() {
        let root = host_root(&proc_stat(100, 100, 1000));
        let r = root.path();
        let config = SamplerConfig {
            proc_root: r.to_owned(),
            cgroup_root: Some(r.join("no-cgroups")),
            ..SamplerConfig::default()
        };
        let anomalies = AnomalyConfig {
            fork_rate_per_second: 50.0,
            ..AnomalyConfig::default()
        };
        let mut s = Sampler::new(config, anomalies, SamplerCounters::default());
        let wall = SystemTime::now();
        let mut out = Vec::new();
        s.sample_at(&mut || Duration::from_secs(1000), wall, &mut out)
            .unwrap();
        assert_eq!(value(&out, "processes.running", "host"), Some(3.0));
        assert_eq!(value(&out, "cpu.total", "host"), None, "no rate yet");
        assert_eq!(value(&out, "psi.cpu.some_avg10", "host"), Some(28.22));
        assert!(s.psi_absent(PsiResource::Memory) && s.psi_absent(PsiResource::Io));
        assert_eq!(s.counters().psi_absent.get(), 2);
        assert!(!s.psi_absent(PsiResource::Cpu));
        assert!(value(&out, "memory.available", "host").unwrap() > 0.0);

        // 10 s later: 300 of 400 ticks busy, 1000 forks (100/s), eth0 got
        // 1000 more bytes.
        std::fs::write(r.join("stat"), proc_stat(400, 200, 2000)).unwrap();
        let dev = std::fs::read_to_string(r.join("net/dev"))
            .unwrap()
            .replace("eth0: 118506355", "eth0: 118507355");
        std::fs::write(r.join("net/dev"), dev).unwrap();
        out.clear();
        let report = s
            .sample_at(&mut || Duration::from_secs(1010), wall, &mut out)
            .unwrap();
        assert_eq!(value(&out, "cpu.total", "host"), Some(75.0));
        assert_eq!(value(&out, "cpu.user", "host"), Some(75.0));
        assert_eq!(value(&out, "cpu.core", "0"), Some(75.0));
        assert_eq!(
            value(&out, "processes.forks_per_second", "host"),
            Some(100.0)
        );
        let fork = out
            .iter()
            .find(|e| e.metric == Metric::ForkRate)
            .and_then(|e| e.anomaly.as_deref())
            .unwrap();
        assert_eq!(
            (fork.kind, fork.threshold, fork.duration),
            (
                PerformanceAnomalyKind::ForkRate,
                50.0,
                Duration::from_secs(10)
            )
        );
        assert_eq!(report.anomalies, 1);
        assert_eq!(value(&out, "net.rx_bytes_per_second", "eth0"), Some(100.0));
        assert_eq!(value(&out, "net.tx_bytes_per_second", "eth0"), Some(0.0));
        assert!(
            value(&out, "disk.read_bytes_per_second", "loop0").is_none(),
            "loop devices are not reported"
        );
        // Said once: the absent PSI files are not read again, so they add
        // no read errors.
        assert_eq!(s.counters().read_errors.get(), 0);
        for e in &out {
            let event = collector_core::CollectionEvent::Performance(e.clone());
            assert_eq!(event.validate(), Ok(()), "{e:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// The whole sampler, on host and process files of arbitrary bytes:
        /// no panic, no error (a bad file is counted), no event that is not
        /// finite.
        #[test]
        fn the_sampler_survives_any_file_contents(
            files in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 8),
        ) {
            let root = host_root(&proc_stat(1, 1, 1));
            let r = root.path();
            std::fs::create_dir_all(r.join("42")).unwrap();
            let mut smp = Sampler::new(
                SamplerConfig {
                    proc_root: r.to_owned(),
                    cgroup_root: Some(r.to_owned()),
                    cgroup_depth: 0,
                    ..SamplerConfig::default()
                },
                AnomalyConfig::default(),
                SamplerCounters::default(),
            );
            let mut out = Vec::new();
            for (round, now) in [(0, 1000), (1, 1010)] {
                let names = ["stat", "meminfo", "loadavg", "diskstats", "net/dev", "pressure/cpu", "42/stat", "cpu.stat"];
                for (name, bytes) in names.iter().zip(&files) {
                    let mut bytes = bytes.clone();
                    bytes.push(round);
                    std::fs::write(r.join(name), bytes).unwrap();
                }
                smp.sample_at(&mut || s(now), SystemTime::now(), &mut out).unwrap();
            }
            proptest::prop_assert!(out.iter().all(|e| e.value.is_finite()));
        }
    }

    #[test]
    fn cgroups_are_bounded_by_depth_and_count() {
        let root = host_root(&proc_stat(1, 1, 1));
        let cg = tempfile::tempdir().unwrap();
        let c = cg.path();
        std::fs::write(c.join("cpu.stat"), "usage_usec 1000\n").unwrap();
        for dir in ["a", "a/x", "a/x/deep", "b"] {
            std::fs::create_dir_all(c.join(dir)).unwrap();
            std::fs::write(
                c.join(dir).join("cpu.stat"),
                "usage_usec 1000\nthrottled_usec 0\n",
            )
            .unwrap();
            std::fs::write(c.join(dir).join("memory.current"), "4096\n").unwrap();
        }
        let config = SamplerConfig {
            proc_root: root.path().to_owned(),
            cgroup_root: Some(c.to_owned()),
            cgroup_depth: 2,
            ..SamplerConfig::default()
        };
        let mut smp = Sampler::new(config, AnomalyConfig::default(), SamplerCounters::default());
        let mut out = Vec::new();
        smp.sample_at(&mut || s(1000), SystemTime::now(), &mut out)
            .unwrap();
        std::fs::write(c.join("a/cpu.stat"), "usage_usec 501000\n").unwrap();
        out.clear();
        smp.sample_at(&mut || s(1001), SystemTime::now(), &mut out)
            .unwrap();
        assert_eq!(value(&out, "cgroup.cpu_percent", "/a"), Some(50.0));
        assert_eq!(value(&out, "cgroup.cpu_percent", "/"), Some(0.0));
        assert_eq!(value(&out, "cgroup.memory_current", "/a/x"), Some(4096.0));
        assert_eq!(
            value(&out, "cgroup.memory_current", "/a/x/deep"),
            None,
            "too deep"
        );

        let mut smp = Sampler::new(
            SamplerConfig {
                proc_root: root.path().to_owned(),
                cgroup_root: Some(c.to_owned()),
                max_cgroups: 2,
                ..SamplerConfig::default()
            },
            AnomalyConfig::default(),
            SamplerCounters::default(),
        );
        out.clear();
        smp.sample_at(&mut || s(1000), SystemTime::now(), &mut out)
            .unwrap();
        let groups = out
            .iter()
            .filter(|e| e.metric == Metric::CgroupMemory)
            .count();
        assert_eq!(groups, 1, "the root has none; one group within the limit");
        // `b` or `a` (listing order), and `a/x` when `a` was listed.
        assert!(smp.counters().skipped.get() >= 1);
    }
}
