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

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};
use collector_core::metrics::{Counter, Registry};
use collector_core::source::unless_cancelled;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use collector_core::{ProcessEvent, ProcessKey};

use crate::connector::{EventMeta, ProcEvent, ProcId};
use crate::reader_thread::{current_thread_runtime, ReaderError, ThreadError, TierReader};
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
const RING_MAP: &str = "EVENTS";
const COUNTERS_MAP: &str = "COUNTERS";
const COUNTER_PRODUCED: u32 = 0;
const COUNTER_DROPPED: u32 = 1;
const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// The most records sent to the collector in one message.
const BATCH: usize = 256;

/// Settings of the eBPF tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Ring buffer size in bytes: a power of two and a multiple of the page
    /// size. Default 4 MiB: about 2,400 execs of a short argv (1.7 KiB
    /// each; up to 5.6 KiB with a full argv), or 52,000 forks/exits (80 B).
    pub ring_buffer_bytes: u32,
    /// How long the reader waits for records before checking whether it
    /// should stop and reading the kernel's counters. Default 100 ms.
    pub poll_interval_ms: u64,
    /// Once woken by a record, how long the reader lets more gather before
    /// it takes them all (0: at once). Default 5 ms: a storm of execs then
    /// costs one hand-over to the collector (and one wake-up of each stage
    /// after it) per window instead of per record, for at most that much
    /// more latency; an idle host is not woken more often.
    pub batch_window_ms: u64,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 4 * 1024 * 1024,
            poll_interval_ms: 100,
            batch_window_ms: 5,
        }
    }
}

/// Errors of the eBPF tier.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EbpfError {
    /// This machine cannot run the programs: no kernel BTF, no privilege, or
    /// the kernel refused them. The source falls back to the next tier.
    #[error("eBPF tier unavailable: {reason}")]
    Unavailable {
        /// Why, in a few words.
        reason: String,
        /// The loader's error, when there was one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Not privileged (`EPERM`): needs `CAP_BPF` and `CAP_PERFMON`, or root.
    #[error("no privilege to load eBPF programs (needs CAP_BPF and CAP_PERFMON)")]
    PermissionDenied {
        /// The loader's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An invalid setting.
    #[error("invalid eBPF setting {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Polling the ring buffer or reading a map failed.
    #[error("eBPF {operation} failed")]
    Io {
        /// The call.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The reader thread (or the enrichment thread after it) could not
    /// start, or panicked.
    #[error(transparent)]
    Thread(#[from] ThreadError),
}

impl ReaderError for EbpfError {
    const READER: &'static str = "eBPF";
}

/// How often a program load interrupted by a signal is tried.
const LOAD_ATTEMPTS: u32 = 5;

/// Signals held back on this thread while it lives; the old mask is put
/// back on drop.
///
/// The verifier gives up with `EAGAIN` whenever a signal is pending on the
/// loading thread. In a process that reaps children through a `SIGCHLD`
/// handler (tokio's, say) every exiting child sends one, so under a fork
/// storm retries alone can all lose. A blocked signal does not count as
/// pending: it waits, and is delivered when the mask is restored.
struct SignalsHeld {
    old: Option<nix::sys::signal::SigSet>,
}

impl SignalsHeld {
    fn hold() -> Self {
        use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
        let mut old = SigSet::empty();
        // Fails only for an invalid `how`; then loads fall back to retries.
        let old = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old))
            .ok()
            .map(|()| old);
        Self { old }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        use nix::sys::signal::{pthread_sigmask, SigmaskHow};
        if let Some(old) = &self.old {
            let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(old), None);
        }
    }
}

/// Whether `err` (or what caused it) is `EAGAIN`.
fn is_eagain(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error()) {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// Whether `err` (or what caused it) is `EPERM`/`EACCES`.
fn is_permission(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::PermissionDenied {
                return true;
            }
        }
        next = e.source();
    }
    false
}

fn load_error<E>(what: &str, err: E) -> EbpfError
where
    E: std::error::Error + Send + Sync + 'static,
{
    if is_permission(&err) {
        EbpfError::PermissionDenied {
            source: Box::new(err),
        }
    } else {
        EbpfError::Unavailable {
            reason: what.to_owned(),
            source: Some(Box::new(err)),
        }
    }
}

/// The kernel's count of records against what reached us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelAccounting {
    /// Records the programs tried to send (the per-CPU counters, summed).
    pub produced: u64,
    /// Records read from the ring buffer (decodable or not).
    pub delivered: u64,
    /// Records the ring buffer had no room for.
    pub dropped: u64,
}

impl KernelAccounting {
    /// `produced == delivered + dropped`: nothing in flight, nothing unaccounted.
    pub fn balanced(&self) -> bool {
        self.produced == self.delivered.saturating_add(self.dropped)
    }
}

/// Counters of the eBPF reader. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct EbpfCounters {
    produced: Counter,
    delivered: Counter,
    dropped: Counter,
    decode_errors: Counter,
}

impl EbpfCounters {
    /// The accounting so far (the kernel's side as of the reader's last read).
    pub fn accounting(&self) -> KernelAccounting {
        KernelAccounting {
            produced: self.produced.get(),
            delivered: self.delivered.get(),
            dropped: self.dropped.get(),
        }
    }

    /// Records that could not be decoded (a bug: the program and
    /// [`decode()`] disagree).
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors.get()
    }

    /// Registers the counters in `registry`: `stage="kernel"`, the drops as
    /// `daemoneye_events_dropped_total{stage="kernel",reason="ringbuf_full"}`.
    pub fn register(&self, registry: &Registry) {
        let stage = [("stage", "kernel")];
        registry.register_counters(
            &stage,
            &[
                (
                    "daemoneye_kernel_events_produced_total",
                    "Records the eBPF programs tried to send (the kernel's count).",
                    &self.produced,
                ),
                (
                    "daemoneye_kernel_events_delivered_total",
                    "Records read from the eBPF ring buffer.",
                    &self.delivered,
                ),
                (
                    "daemoneye_kernel_messages_undecodable_total",
                    "eBPF records that could not be decoded.",
                    &self.decode_errors,
                ),
            ],
        );
        registry.register_events_dropped(&stage, [("ringbuf_full", &self.dropped)]);
    }
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

impl ExecRecord {
    /// The exec as a process event, from the kernel's record alone (no
    /// `/proc` read: the process may be gone already): identity, parent,
    /// ids, name, argv and filename, and the key `/proc` would give
    /// (`reader` knows the boot id and clock tick). `timestamp` is left for
    /// the caller.
    ///
    /// The executable path is the one the kernel resolved from the opened
    /// file (as `/proc/<pid>/exe` gives it, so it matches the other tiers);
    /// when that could not be read whole, the filename as executed.
    /// `file_exists` is false when the file had no name left (deleted, a
    /// memfd) or only the filename is known and it is not an absolute path
    /// of a file (relative, `/dev/fd/N`, `/proc/self/fd/N`): it is not hashed
    /// as if it were one of ours.
    pub fn to_process_event(&self, reader: &ProcReader) -> ProcessEvent {
        let t = &self.task;
        let ticks = t.start_ticks(reader.ticks_per_sec());
        let mut e = ProcessEvent::new(t.tgid, t.comm.clone());
        e.ppid = Some(t.ppid);
        e.user_id = Some(t.uid);
        e.euid = Some(t.euid);
        e.gid = Some(t.gid);
        e.start_time = Some(reader.start_time_of(ticks));
        e.process_key = reader.boot_id().map(|b| ProcessKey::new(b, t.tgid, ticks));
        e.command_line.clone_from(&self.argv);
        let resolved = !self.exe.is_empty() && !self.exe_truncated;
        let path = if resolved { &self.exe } else { &self.filename };
        if !path.is_empty() {
            e.executable_path = Some(path.clone());
        }
        e.file_exists = !self.exe_unlinked
            && path.starts_with('/')
            && (resolved || !(path.starts_with("/dev/fd/") || path.starts_with("/proc/")));
        e
    }
}

/// The loaded and attached programs with their maps.
pub struct EbpfTier {
    /// Owns the programs: dropping it detaches them (`None` once detached).
    ebpf: Option<Ebpf>,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    poll_interval: Duration,
    batch_window: Duration,
}

impl std::fmt::Debug for EbpfTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfTier").finish_non_exhaustive()
    }
}

impl EbpfTier {
    /// Loads the embedded object (relocated against this kernel's BTF),
    /// sizes the ring buffer, and attaches the three programs.
    ///
    /// # Errors
    /// [`EbpfError::PermissionDenied`] without `CAP_BPF`/`CAP_PERFMON`;
    /// [`EbpfError::Unavailable`] without kernel BTF or when the kernel
    /// refuses a map or program; [`EbpfError::Config`] for a ring buffer
    /// size that is not a power of two of pages.
    pub fn load(config: &EbpfConfig) -> Result<Self, EbpfError> {
        let size = config.ring_buffer_bytes;
        let page = rustix::param::page_size();
        let pages_ok = usize::try_from(size).is_ok_and(|s| s >= page && s % page == 0);
        if !size.is_power_of_two() || !pages_ok {
            return Err(EbpfError::Config {
                field: "ring_buffer_bytes",
                reason: format!("{size} is not a power of two of {page}-byte pages"),
            });
        }
        if !std::path::Path::new(BTF_PATH).exists() {
            return Err(EbpfError::Unavailable {
                reason: format!("no kernel BTF at {BTF_PATH} (CONFIG_DEBUG_INFO_BTF)"),
                source: None,
            });
        }
        let btf = Btf::from_sys_fs().map_err(|e| load_error("cannot read kernel BTF", e))?;
        let tier = Self::load_with(config, &btf);
        // The parsed BTF (some 16 MiB in small allocations, under the tier's
        // long-lived ones) would stay resident for the life of the process:
        // procmond's RSS went from 33 to 18 MB with it handed back.
        drop(btf);
        collector_core::sys::release_free_memory();
        tier
    }

    fn load_with(config: &EbpfConfig, btf: &Btf) -> Result<Self, EbpfError> {
        let size = config.ring_buffer_bytes;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(btf))
            .map_max_entries(RING_MAP, size)
            .load(OBJECT)
            .map_err(|e| load_error("the kernel refused the object", e))?;
        for (name, tracepoint) in PROGRAMS {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or_else(|| EbpfError::Unavailable {
                    reason: format!("program {name} missing from the object"),
                    source: None,
                })?
                .try_into()
                .map_err(|e| load_error("wrong program type", e))?;
            // The verifier gives up with EAGAIN when a signal is pending on
            // this thread: signals are held back while it runs, and a load
            // that is still interrupted (SIGKILL aside, only if the mask
            // could not be set) is tried again, as libbpf does.
            let held = SignalsHeld::hold();
            let mut attempts = 0;
            let loaded = loop {
                attempts += 1;
                match program.load(tracepoint, btf) {
                    Ok(()) => break Ok(()),
                    Err(e) if attempts < LOAD_ATTEMPTS && is_eagain(&e) => {}
                    Err(e) => break Err(e),
                }
            };
            drop(held);
            loaded.map_err(|e| load_error("the verifier refused a program", e))?;
            program
                .attach()
                .map_err(|e| load_error("cannot attach to a tracepoint", e))?;
        }
        let missing = |name: &str| EbpfError::Unavailable {
            reason: format!("map {name} missing from the object"),
            source: None,
        };
        let ring = ebpf.take_map(RING_MAP).ok_or_else(|| missing(RING_MAP))?;
        let ring = RingBuf::try_from(ring).map_err(|e| load_error("ring buffer map", e))?;
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or_else(|| missing(COUNTERS_MAP))?;
        let counters =
            PerCpuArray::try_from(counters).map_err(|e| load_error("counters map", e))?;
        Ok(Self {
            ebpf: Some(ebpf),
            ring,
            counters,
            poll_interval: Duration::from_millis(config.poll_interval_ms.max(1)),
            batch_window: Duration::from_millis(config.batch_window_ms),
        })
    }

    /// The kernel's counters now: (produced, dropped), summed over CPUs.
    fn kernel_counts(&self) -> Result<(u64, u64), EbpfError> {
        let sum = |index: u32| {
            self.counters
                .get(&index, 0)
                .map(|values| values.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
                .map_err(|e| EbpfError::Io {
                    operation: "counter map read",
                    source: io::Error::other(e),
                })
        };
        Ok((sum(COUNTER_PRODUCED)?, sum(COUNTER_DROPPED)?))
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
        EbpfReaderHandle::spawn("procmond-ebpf", counters, read, |cancel, counters| {
            Reader {
                tier: Some(self),
                tx,
                cancel,
                counters,
                seen_produced: 0,
                seen_dropped: 0,
            }
            .run()
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

struct Reader {
    /// `None` once the programs are detached.
    tier: Option<EbpfTier>,
    tx: mpsc::Sender<EbpfMessage>,
    cancel: CancellationToken,
    counters: EbpfCounters,
    seen_produced: u64,
    seen_dropped: u64,
}

impl Reader {
    fn run(mut self) -> Result<(), EbpfError> {
        let runtime = current_thread_runtime::<EbpfError>()?;
        let result = self.read_loop(&runtime);
        let drained = self.finish();
        result.and(drained)
    }

    fn read_loop(&mut self, runtime: &tokio::runtime::Runtime) -> Result<(), EbpfError> {
        while !self.cancel.is_cancelled() && !self.tx.is_closed() {
            if self.wait_readable()? {
                self.let_a_batch_gather();
            }
            loop {
                let batch = self.drain(BATCH);
                if batch.is_empty() {
                    break;
                }
                if self.send(runtime, EbpfMessage::Events(batch)).is_err() {
                    return Ok(());
                }
            }
            let newly_dropped = self.read_kernel_counts()?;
            if newly_dropped > 0 {
                tracing::warn!(
                    dropped = newly_dropped,
                    "eBPF ring buffer full: the kernel dropped process records"
                );
                if self
                    .send(runtime, EbpfMessage::Dropped(newly_dropped))
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Detaches the programs, then reads until the books balance (a program
    /// running on another CPU as it was detached may still add a record).
    fn finish(&mut self) -> Result<(), EbpfError> {
        let Some(tier) = self.tier.as_mut() else {
            return Ok(());
        };
        // Dropping the programs detaches them: nothing new is produced.
        drop(tier.ebpf.take());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            while !self.drain(BATCH).is_empty() {}
            self.read_kernel_counts()?;
            if self.counters.accounting().balanced() || tokio::time::Instant::now() >= deadline {
                break;
            }
            let _ = self.wait_readable()?;
        }
        self.tier = None;
        Ok(())
    }

    /// After a wake-up by a record: the batch window, so that what follows
    /// it is taken in the same drain.
    fn let_a_batch_gather(&self) {
        let Some(window) = self.tier.as_ref().map(|t| t.batch_window) else {
            return;
        };
        let until = tokio::time::Instant::now() + window;
        while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
            if left.is_zero() || self.cancel.is_cancelled() {
                break;
            }
            std::thread::park_timeout(left);
        }
    }

    /// Waits at most one poll interval for the ring buffer to have data;
    /// whether it has.
    fn wait_readable(&self) -> Result<bool, EbpfError> {
        let Some(tier) = &self.tier else {
            return Ok(false);
        };
        let timeout = rustix::event::Timespec {
            tv_sec: i64::try_from(tier.poll_interval.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(tier.poll_interval.subsec_nanos()),
        };
        let fd = tier.ring.as_fd();
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(ready) => Ok(ready > 0),
            Err(e) if e == rustix::io::Errno::INTR => Ok(false),
            Err(e) => Err(EbpfError::Io {
                operation: "poll",
                source: e.into(),
            }),
        }
    }

    /// Takes up to `max` records from the ring buffer.
    fn drain(&mut self, max: usize) -> Vec<Record> {
        let Some(tier) = self.tier.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = tier.ring.next() else {
                break;
            };
            self.counters.delivered.inc();
            match decode(&item) {
                Ok(record) => out.push(record),
                Err(err) => {
                    self.counters.decode_errors.inc();
                    tracing::debug!(error = %err, "undecodable eBPF record");
                }
            }
        }
        out
    }

    /// Brings the kernel's counts into ours; how many more were dropped.
    fn read_kernel_counts(&mut self) -> Result<u64, EbpfError> {
        let Some(tier) = &self.tier else {
            return Ok(0);
        };
        let (produced, dropped) = tier.kernel_counts()?;
        self.counters
            .produced
            .add(produced.saturating_sub(self.seen_produced));
        let newly_dropped = dropped.saturating_sub(self.seen_dropped);
        self.counters.dropped.add(newly_dropped);
        self.seen_produced = self.seen_produced.max(produced);
        self.seen_dropped = self.seen_dropped.max(dropped);
        Ok(newly_dropped)
    }

    fn send(&self, runtime: &tokio::runtime::Runtime, message: EbpfMessage) -> Result<(), ()> {
        let message = match self.tx.try_send(message) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(()),
            Err(mpsc::error::TrySendError::Full(message)) => message,
        };
        runtime.block_on(async {
            match unless_cancelled(&self.cancel, self.tx.send(message)).await {
                Some(Ok(())) => Ok(()),
                Some(Err(_)) | None => Err(()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sha256(bytes: &[u8]) -> String {
        use sha2::Digest as _;
        format!("{:x}", sha2::Sha256::digest(bytes))
    }

    /// The committed object is the one `cargo xtask ebpf` built from the
    /// committed sources (CI rebuilds it with clang to be sure; this needs
    /// no clang): edit the C without rebuilding, or swap the object, and
    /// this fails.
    #[test]
    fn the_committed_object_is_built_from_the_committed_sources() {
        let record = include_str!("../../ebpf/process.bpf.o.sha256");
        let files: [(&str, &[u8]); 4] = [
            (
                "source process.bpf.c",
                include_bytes!("../../ebpf/process.bpf.c"),
            ),
            ("source helpers.h", include_bytes!("../../ebpf/helpers.h")),
            ("source vmlinux.h", include_bytes!("../../ebpf/vmlinux.h")),
            ("object process.bpf.o", OBJECT),
        ];
        for (what, bytes) in files {
            let line = record
                .lines()
                .find(|l| l.starts_with(what))
                .unwrap_or_else(|| panic!("{what} not recorded"));
            assert_eq!(
                line.rsplit(' ').next(),
                Some(sha256(bytes).as_str()),
                "{what} changed since `cargo xtask ebpf`: rebuild and commit"
            );
        }
    }

    #[test]
    fn the_object_has_the_programs_and_maps_the_loader_expects() {
        // Parsing only (no kernel): names the loader looks up exist.
        let obj = aya_obj_names();
        for (name, _) in PROGRAMS {
            assert!(obj.iter().any(|n| n == name), "{name} missing: {obj:?}");
        }
        for map in [RING_MAP, COUNTERS_MAP] {
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
