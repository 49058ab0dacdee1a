//! The eBPF tier: every fork, exec and exit as the kernel saw it, with the
//! exec's argv, filename and resolved executable path, and every lost
//! record counted.
//!
//! `crates/procmond/ebpf/process.bpf.c` (built by `cargo xtask ebpf`, the
//! object committed beside it and embedded here) attaches to the BTF
//! tracepoints `sched_process_fork` (new processes only), `sched_process_exec`
//! and `sched_process_exit` (the last thread of a process) and sends one
//! record per event through one ring buffer. Each record it tries to send is
//! counted in a per-CPU array, and each one the ring buffer had no room for is
//! counted again there, so `produced = delivered + dropped` holds exactly
//! ([`KernelAccounting`]).
//!
//! - [`EbpfTier::load`] loads and attaches (needs `CAP_BPF` and
//!   `CAP_PERFMON`, or root, and kernel BTF at `/sys/kernel/btf/vmlinux`);
//!   [`EbpfError::Unavailable`] when this machine cannot run it.
//! - [`EbpfTier::spawn_reader`] hands the ring buffer to a dedicated thread
//!   that only polls, [decodes](decode()) and sends [`EbpfMessage`]s, the same
//!   shape of message as the [process connector](crate::connector)'s reader,
//!   so the collector's enrichment and lifecycle path is shared.
//!
//! No `unsafe` here: aya's API is safe, and polling goes through `rustix`.
//!
//! # Minimum kernel version
//!
//! Linux 5.8 (ring buffer, `CAP_BPF`/`CAP_PERFMON`; BTF tracepoints since
//! 5.5) with `CONFIG_DEBUG_INFO_BTF`. Every field read is relocated against
//! the running kernel's BTF; a kernel that lacks one (for example
//! `start_boottime`, before 5.3) fails the load with
//! [`EbpfError::Unavailable`], and the source falls back to the connector.
//! Tested on 6.18.

pub mod decode;

use collector_core::ebpf::{read_loop, Delivery, Loaded, ObjectSpec, ReadSettings};
pub use collector_core::ebpf::{EbpfConfig, EbpfCounters, EbpfError, KernelAccounting};
use collector_core::source::unless_cancelled;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use collector_core::{ProcessEvent, ProcessKey, ReadDepth};

use crate::connector::{EventMeta, ProcEvent, ProcId};
use crate::reader_thread::{
    current_thread_runtime, wall_time, ReaderError, ThreadError, TierReader,
};
use crate::snapshot::ProcReader;
pub use decode::{decode, DecodeError, ExecRecord, Record, TaskRecord};

/// The compiled program (`cargo xtask ebpf` rebuilds it), 8-byte aligned as
/// the ELF parser needs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../ebpf/process.bpf.o");

/// The programs and the tracepoints they attach to.
const PROGRAMS: [(&str, &str); 3] = [
    ("handle_fork", "sched_process_fork"),
    ("handle_exec", "sched_process_exec"),
    ("handle_exit", "sched_process_exit"),
];

impl From<ThreadError> for EbpfError {
    fn from(err: ThreadError) -> Self {
        Self::Thread(Box::new(err))
    }
}

impl ReaderError for EbpfError {
    const READER: &'static str = "eBPF";
}

/// What the reader thread sends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EbpfMessage {
    /// Records, in ring buffer order.
    Events(Vec<Record>),
    /// The kernel dropped this many more records (ring buffer full): run a
    /// reconciliation snapshot.
    Dropped(u64),
}

impl Record {
    /// The process connector's event for this record, so both tiers share
    /// one path: a fork of `child`, an exec, or the exit of the process
    /// (reported as its main thread's, since the process ended).
    pub fn to_proc_event(&self) -> ProcEvent {
        let meta = |t: &TaskRecord| EventMeta {
            cpu: 0,
            timestamp_ns: t.timestamp_ns,
            seq: 0,
        };
        match self {
            Self::Fork(t) => ProcEvent::Fork {
                meta: meta(t),
                parent: ProcId {
                    pid: t.ppid,
                    tgid: t.ppid,
                },
                child: ProcId {
                    pid: t.pid,
                    tgid: t.tgid,
                },
            },
            Self::Exec(e) => ProcEvent::Exec {
                meta: meta(&e.task),
                process: ProcId {
                    pid: e.task.tgid,
                    tgid: e.task.tgid,
                },
            },
            Self::Exit(t) => ProcEvent::Exit {
                meta: meta(t),
                process: ProcId {
                    pid: t.tgid,
                    tgid: t.tgid,
                },
                exit_code: u32::from_ne_bytes(t.exit_code.to_ne_bytes()),
                exit_signal: 0,
                parent: Some(ProcId {
                    pid: t.ppid,
                    tgid: t.ppid,
                }),
            },
        }
    }
}

impl TaskRecord {
    /// What the record says of its process: identity, parent, ids, name,
    /// start time and the key `/proc` would give (`reader` knows the boot
    /// id and clock tick), timed as the kernel timed it.
    fn process_event(&self, reader: &ProcReader) -> ProcessEvent {
        let ticks = self.start_ticks(reader.ticks_per_sec());
        let mut e = ProcessEvent::new(self.tgid, self.comm.clone());
        e.timestamp = wall_time(self.timestamp_ns);
        e.ppid = Some(self.ppid);
        e.user_id = Some(self.uid);
        e.euid = Some(self.euid);
        e.gid = Some(self.gid);
        e.start_time = Some(reader.start_time_of(ticks));
        e.process_key = reader
            .boot_id()
            .map(|b| ProcessKey::new(b, self.tgid, ticks));
        e
    }

    /// A fork's child as a process event, from the kernel's record alone:
    /// what `/proc/<pid>/stat` would say of it (name, parent, start time,
    /// key) and its ids, without the read. Like that read, it says
    /// `read = stat_only`: argv and executable come with the exec that
    /// usually follows at once.
    pub fn to_fork_event(&self, reader: &ProcReader) -> ProcessEvent {
        let mut e = self.process_event(reader);
        e.read = ReadDepth::StatOnly;
        e
    }
}

impl ExecRecord {
    /// The exec as a process event, from the kernel's record alone (no
    /// `/proc` read: the process may be gone already): identity, parent,
    /// ids, name, argv and filename, and the key `/proc` would give
    /// (`reader` knows the boot id and clock tick), timed as the kernel
    /// timed it, with the record's flags (argv truncated, setuid, setgid).
    ///
    /// The executable path is the one the kernel resolved from the opened
    /// file (as `/proc/<pid>/exe` gives it, so it matches the other tiers);
    /// when that could not be read whole, the filename as executed.
    /// `file_exists` is false when the file had no name left (deleted, a
    /// memfd) or only the filename is known and it is not an absolute path
    /// of a file (relative, `/dev/fd/N`, `/proc/self/fd/N`): it is not hashed
    /// as if it were one of ours.
    pub fn to_process_event(&self, reader: &ProcReader) -> ProcessEvent {
        let mut e = self.task.process_event(reader);
        e.command_line.clone_from(&self.argv);
        let resolved = !self.exe.is_empty() && !self.exe_truncated;
        let path = if resolved { &self.exe } else { &self.filename };
        if !path.is_empty() {
            e.executable_path = Some(path.clone());
        }
        e.file_exists = !self.exe_unlinked
            && path.starts_with('/')
            && (resolved || !(path.starts_with("/dev/fd/") || path.starts_with("/proc/")));
        let detail = e.lifecycle_mut();
        detail.argv_truncated = self.argv_truncated;
        detail.setuid = self.setuid;
        detail.setgid = self.setgid;
        e
    }
}

/// The loaded and attached programs with their maps.
pub struct EbpfTier {
    loaded: Loaded,
    settings: ReadSettings,
}

impl std::fmt::Debug for EbpfTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfTier").finish_non_exhaustive()
    }
}

impl EbpfTier {
    /// Loads the embedded object (relocated against this kernel's BTF),
    /// sizes the ring buffer, and attaches the three programs, through the
    /// loader the collectors share ([`collector_core::ebpf`]).
    ///
    /// # Errors
    /// [`EbpfError::PermissionDenied`] without `CAP_BPF`/`CAP_PERFMON`;
    /// [`EbpfError::Unavailable`] without kernel BTF or when the kernel
    /// refuses a program; [`EbpfError::Config`] for a bad ring size.
    pub fn load(config: &EbpfConfig) -> Result<Self, EbpfError> {
        Ok(Self {
            loaded: Loaded::load(&ObjectSpec::new(OBJECT, &PROGRAMS, config))?,
            settings: config.read_settings("process records"),
        })
    }

    /// Starts the reader thread, which polls the ring buffer, decodes and
    /// sends into `tx` until [`EbpfReaderHandle::stop`], the handle is
    /// dropped, or `tx` is closed. While `tx` is full it waits, and the ring
    /// buffer absorbs the backlog; what it cannot hold is counted as dropped.
    ///
    /// # Errors
    /// [`EbpfError::Thread`] ([`ThreadError::Spawn`]) when the thread cannot
    /// be created.
    pub fn spawn_reader(
        self,
        tx: mpsc::Sender<EbpfMessage>,
        counters: EbpfCounters,
    ) -> Result<EbpfReaderHandle, EbpfError> {
        let read = EbpfCounters::accounting;
        EbpfReaderHandle::spawn("procmond-ebpf", counters, read, move |cancel, counters| {
            let mut tier = self;
            let runtime = current_thread_runtime::<EbpfError>()?;
            let send = |message| send(&runtime, &tx, &cancel, message);
            read_loop(
                &mut tier.loaded,
                &counters,
                &tier.settings,
                &runtime,
                &cancel,
                tx.closed(),
                decode,
                |delivery| match delivery {
                    Delivery::Records(batch) => send(EbpfMessage::Events(batch)),
                    Delivery::Dropped(n) => send(EbpfMessage::Dropped(n)),
                },
            )
        })
    }
}

/// The running reader: [`accounting`](EbpfReaderHandle::accounting) so far,
/// [`stop`](TierReader::stop), which detaches the programs, reads what is
/// left in the ring buffer and returns the final accounting, which then
/// balances ([`KernelAccounting::balanced`]; records read after detaching
/// are counted as delivered but not sent on, the receiver going away), and
/// [`join`](TierReader::join). Dropping it stops the thread and waits for it.
pub type EbpfReaderHandle = TierReader<EbpfError, EbpfCounters, KernelAccounting>;

impl EbpfReaderHandle {
    /// The accounting so far.
    pub fn accounting(&self) -> KernelAccounting {
        self.stats()
    }
}

/// Sends `message`, waiting while `tx` is full; `false` once `tx` is
/// closed or the reader is told to stop.
fn send(
    runtime: &tokio::runtime::Runtime,
    tx: &mpsc::Sender<EbpfMessage>,
    cancel: &CancellationToken,
    message: EbpfMessage,
) -> bool {
    let message = match tx.try_send(message) {
        Ok(()) => return true,
        Err(mpsc::error::TrySendError::Closed(_)) => return false,
        Err(mpsc::error::TrySendError::Full(message)) => message,
    };
    runtime.block_on(async {
        matches!(
            unless_cancelled(cancel, tx.send(message)).await,
            Some(Ok(()))
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use collector_core::ebpf;

    #[test]
    fn the_object_has_the_programs_and_maps_the_loader_expects() {
        // Parsing only (no kernel): names the loader looks up exist.
        let obj = aya_obj_names();
        for (name, _) in PROGRAMS {
            assert!(obj.iter().any(|n| n == name), "{name} missing: {obj:?}");
        }
        for map in [ebpf::RING_MAP, ebpf::COUNTERS_MAP] {
            assert!(obj.iter().any(|n| n == map), "{map} missing: {obj:?}");
        }
    }

    /// Symbol names in the object's string table.
    fn aya_obj_names() -> Vec<String> {
        OBJECT
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    #[test]
    fn records_map_onto_the_connector_events_the_source_handles() {
        let t = TaskRecord {
            pid: 7,
            tgid: 5,
            ppid: 1,
            uid: 0,
            euid: 0,
            gid: 0,
            egid: 0,
            exit_code: 3 << 8,
            timestamp_ns: 9,
            start_ns: 0,
            comm: String::new(),
        };
        // The last thread to leave may not be the main one: the process ended.
        match Record::Exit(t.clone()).to_proc_event() {
            ProcEvent::Exit {
                process, exit_code, ..
            } => {
                assert!(process.is_main_thread() && process.tgid == 5);
                assert_eq!(exit_code, 3 << 8);
            }
            other => panic!("{other:?}"),
        }
        match Record::Fork(t).to_proc_event() {
            ProcEvent::Fork {
                parent,
                child,
                meta,
            } => {
                assert_eq!(
                    (parent.tgid, child.pid, child.tgid, meta.timestamp_ns),
                    (1, 7, 5, 9)
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
