//! Reading processes from `/proc`: one process ([`ProcReader::read_process`],
//! used to enrich an exec as it happens) or all of them
//! ([`ProcReader::snapshot`]).
//!
//! A lean reader: per process it reads `stat`, `status`, `cmdline` and the
//! `exe` link, and with enhanced metadata the `cgroup` file and namespace
//! links. A process that vanishes mid-read is counted and skipped; a file we
//! may not read (EACCES) leaves its fields empty and `accessible = false`.
//! Nothing is invented.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use collector_core::{BootId, ProcessEvent, ProcessKey};

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

fn ticks_per_sec() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t.unsigned_abs(),
        _ => 100,
    }
}

fn page_size() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => p.unsigned_abs(),
        _ => 4096,
    }
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
        Ok(Self {
            root,
            boot_id,
            btime,
            ticks_per_sec: ticks_per_sec(),
            page_size: page_size(),
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
        let tps = self.ticks_per_sec.max(1);
        SystemTime::UNIX_EPOCH
            + Duration::from_secs(self.btime)
            + Duration::from_secs(ticks / tps)
            + Duration::from_nanos((ticks % tps) * 1_000_000_000 / tps)
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
        let mut pids: Vec<u32> = std::fs::read_dir(&self.root)
            .map_err(list_err)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// Reads every process once. Processes that vanish mid-read are counted
    /// and skipped; the pass never fails because of one process.
    ///
    /// # Errors
    /// Only when the process directory itself cannot be listed.
    pub fn snapshot(&self, max_processes: usize) -> Result<Snapshot, SetupError> {
        let taken_at = SystemTime::now();
        let pids = self.pids()?;
        let mut stats = SnapshotStats::default();
        let mut processes = Vec::with_capacity(pids.len().min(max_processes));
        let mut buf = Vec::with_capacity(4096);
        for pid in pids {
            if processes.len() >= max_processes {
                stats.truncated += 1;
                continue;
            }
            match self.read_into(pid, &mut buf) {
                Ok(p) => {
                    if !p.accessible {
                        stats.access_denied += 1;
                    }
                    processes.push(p);
                }
                Err(ReadError::Vanished { .. }) => stats.vanished += 1,
                Err(ReadError::PermissionDenied { .. }) => stats.access_denied += 1,
                Err(_) => stats.errors += 1,
            }
        }
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
        self.read_into(pid, &mut Vec::with_capacity(4096))
    }

    fn read_into(&self, pid: u32, buf: &mut Vec<u8>) -> Result<ProcessEvent, ReadError> {
        let dir = self.root.join(pid.to_string());
        let io = |source: std::io::Error| match source.kind() {
            ErrorKind::NotFound => ReadError::Vanished { pid },
            ErrorKind::PermissionDenied => ReadError::PermissionDenied { pid },
            // ESRCH: the task died between open and read.
            _ if source.raw_os_error() == Some(libc_esrch()) => ReadError::Vanished { pid },
            _ => ReadError::Io { pid, source },
        };
        read_file(&dir.join("stat"), buf).map_err(io)?;
        if buf.is_empty() {
            return Err(ReadError::Vanished { pid });
        }
        let stat = procfs::parse_stat(buf).map_err(|source| ReadError::Parse { pid, source })?;
        let now = SystemTime::now();

        let mut accessible = true;
        let mut metadata = BTreeMap::new();
        metadata.insert("state".to_owned(), stat.state.to_string());
        metadata.insert("threads".to_owned(), stat.num_threads.to_string());

        // After stat, a vanished process leaves the rest empty; we keep what
        // we read, marked as not fully readable, rather than drop it.
        let mut soft = |r: std::io::Result<()>| match r {
            Ok(()) => true,
            Err(_) => {
                accessible = false;
                false
            }
        };
        let ids = if soft(read_file(&dir.join("status"), buf)) {
            procfs::parse_status_ids(buf).ok()
        } else {
            None
        };
        let argv = if soft(read_file(&dir.join("cmdline"), buf)) {
            procfs::parse_cmdline(buf)
        } else {
            Vec::new()
        };
        let exe_link = dir.join("exe");
        let exe = match std::fs::read_link(&exe_link) {
            Ok(target) => Some(procfs::parse_exe_link(
                target.as_os_str().as_encoded_bytes(),
            )),
            // Kernel threads have no exe (ENOENT) and are fully readable.
            Err(e) if e.kind() == ErrorKind::NotFound && stat.rss_pages == 0 && argv.is_empty() => {
                None
            }
            Err(_) => {
                accessible = false;
                None
            }
        };
        if let Some(ids) = ids {
            metadata.insert("euid".to_owned(), ids.euid.to_string());
            metadata.insert("gid".to_owned(), ids.rgid.to_string());
        }
        let mut file_exists = true;
        if let Some((path, deleted)) = &exe {
            file_exists = !deleted;
            if *deleted {
                metadata.insert("exe_deleted".to_owned(), "true".to_owned());
            }
            if self.options.executable_identity && !deleted {
                if let (Ok(running), Ok(on_disk)) =
                    (std::fs::metadata(&exe_link), std::fs::metadata(path))
                {
                    if (running.dev(), running.ino()) != (on_disk.dev(), on_disk.ino()) {
                        metadata.insert("exe_replaced".to_owned(), "true".to_owned());
                    }
                }
            }
        }
        if self.options.enhanced_metadata {
            if read_file(&dir.join("cgroup"), buf).is_ok() {
                if let Some(cg) = procfs::parse_cgroup(buf) {
                    if let Some(id) = procfs::container_id(&cg) {
                        metadata.insert("container_id".to_owned(), id.to_owned());
                    }
                    metadata.insert("cgroup".to_owned(), cg);
                }
            }
            for ns in ["pid", "mnt", "net", "user"] {
                if let Ok(t) = std::fs::read_link(dir.join("ns").join(ns)) {
                    if let Some(inode) = procfs::parse_ns_link(t.as_os_str().as_encoded_bytes()) {
                        metadata.insert(format!("ns_{ns}"), inode.to_string());
                    }
                }
            }
        }

        let mut event = ProcessEvent::new(pid, stat.comm);
        event.ppid = Some(stat.ppid);
        event.executable_path = exe.map(|(p, _)| p);
        event.command_line = argv;
        event.start_time = Some(self.start_time_of(stat.starttime));
        event.memory_usage = Some(stat.rss_pages * self.page_size);
        event.user_id = ids.map(|i| i.ruid);
        event.accessible = accessible;
        event.file_exists = file_exists;
        event.timestamp = now;
        event.platform_metadata = metadata;
        event.process_key = self
            .boot_id
            .map(|b| ProcessKey::new(b, pid, stat.starttime));
        event.platform_metadata.insert(
            "cpu_ticks".to_owned(),
            (stat.utime + stat.stime).to_string(),
        );
        event
            .platform_metadata
            .insert("start_ticks".to_owned(), stat.starttime.to_string());
        Ok(event)
    }
}

const fn libc_esrch() -> i32 {
    3 // ESRCH on every Linux architecture
}

fn read_file(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    std::fs::File::open(path)?.read_to_end(buf)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

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
    fn a_vanished_pid_is_reported_as_such() {
        let reader = ProcReader::new(ReadOptions::default()).unwrap();
        // pid_max is at most 2^22: this pid cannot exist.
        assert!(matches!(
            reader.read_process(u32::MAX - 1),
            Err(ReadError::Vanished { .. })
        ));
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
    fn max_processes_truncates_and_counts() {
        let reader = ProcReader::new(ReadOptions::default()).unwrap();
        let snap = reader.snapshot(3).unwrap();
        assert_eq!(snap.processes.len(), 3);
        assert!(snap.stats.truncated > 0);
    }

    #[test]
    fn a_missing_proc_root_is_a_setup_error() {
        assert!(matches!(
            ProcReader::with_root("/nonexistent-proc", ReadOptions::default()),
            Err(SetupError::BootTime { .. })
        ));
    }
}
