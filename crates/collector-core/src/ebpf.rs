//! The eBPF loader the collectors share (feature `ebpf`): procmond's process
//! programs and netmond's TCP state program load, attach, read and count
//! through it.
//!
//! A collector's program is a committed CO-RE object (built from C by
//! `cargo xtask ebpf`, with the headers in `crates/collector-core/ebpf`)
//! whose BTF tracepoint programs send records through one ring buffer and
//! count, in a per-CPU array, every record they tried to send (index 0) and
//! every one the ring buffer had no room for (index 1). So
//! `produced = delivered + dropped` holds exactly ([`KernelAccounting`]).
//!
//! - [`Loaded::load`]: checks the ring buffer size and kernel BTF, loads the
//!   object relocated against the running kernel, attaches its programs to
//!   their tracepoints, and classifies what went wrong into
//!   [`EbpfError::PermissionDenied`] or [`EbpfError::Unavailable`] (a
//!   reason, for the collector's fallback to its next tier);
//! - [`read_loop`]: the reader's loop (one dedicated thread): waits on the
//!   ring buffer, decodes and hands records on in batches, brings the
//!   kernel's counters into [`EbpfCounters`], and at the end detaches the
//!   programs and reads what is left until the books balance. It sleeps
//!   until a record, the stop or its receiver's end wakes it: an idle host
//!   costs it nothing.
//!
//! No `unsafe` here: aya's API is safe, and polling goes through `rustix`
//! and tokio's `AsyncFd`.
//! Linux 5.8 at least (ring buffer, `CAP_BPF`/`CAP_PERFMON`) with
//! `CONFIG_DEBUG_INFO_BTF`.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::{Btf, Ebpf, EbpfLoader};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Counter, Registry};

const COUNTER_PRODUCED: u32 = 0;
const COUNTER_DROPPED: u32 = 1;
const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// How often a program load interrupted by a signal is tried.
const LOAD_ATTEMPTS: u32 = 5;

/// Errors of an eBPF tier.
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
    /// The reader thread (or a thread after it) could not start, or
    /// panicked.
    #[error(transparent)]
    Thread(Box<dyn std::error::Error + Send + Sync>),
}

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

/// Whether `err` (or what caused it) is an OS error that `is`.
fn caused_by(err: &(dyn std::error::Error + 'static), is: impl Fn(&io::Error) -> bool) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<io::Error>().is_some_and(&is) {
            return true;
        }
        next = e.source();
    }
    false
}

fn is_eagain(err: &(dyn std::error::Error + 'static)) -> bool {
    caused_by(err, |io| {
        io.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error())
    })
}

/// What a loader error means for the tier: `EPERM`/`EACCES` anywhere in
/// its causes is [`EbpfError::PermissionDenied`], anything else
/// [`EbpfError::Unavailable`] with `what` as the reason.
pub fn load_error<E>(what: &str, err: E) -> EbpfError
where
    E: std::error::Error + Send + Sync + 'static,
{
    if caused_by(&err, |io| io.kind() == io::ErrorKind::PermissionDenied) {
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

/// Counters of an eBPF reader. Clones share them.
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

    /// Records that could not be decoded (a bug: the program and its
    /// decoder disagree).
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

/// The ring buffer map every program of the workspace sends through.
pub const RING_MAP: &str = "EVENTS";
/// The per-CPU counters of `accounting.h` (produced, dropped).
pub const COUNTERS_MAP: &str = "COUNTERS";

impl<'a> ObjectSpec<'a> {
    /// `object`'s `programs` with the workspace's maps: [`RING_MAP`], sized
    /// as `config` says, and [`COUNTERS_MAP`].
    pub fn new(object: &'a [u8], programs: &'a [(&'a str, &'a str)], config: &EbpfConfig) -> Self {
        Self {
            object,
            programs,
            ring_map: RING_MAP,
            ring_bytes: config.ring_buffer_bytes,
            counters_map: COUNTERS_MAP,
        }
    }
}

/// What to load: the object, its programs and its maps.
#[derive(Debug, Clone, Copy)]
pub struct ObjectSpec<'a> {
    /// The object's bytes (8-byte aligned: `aya::include_bytes_aligned!`).
    pub object: &'a [u8],
    /// (program, what it attaches to) pairs, attached in this order; the
    /// program's section says what the second is: a BTF tracepoint's name
    /// (`tp_btf/`), an LSM hook's (`lsm/`) or a tracefs tracepoint's
    /// `category/name` (`tracepoint/`).
    pub programs: &'a [(&'a str, &'a str)],
    /// The ring buffer map's name.
    pub ring_map: &'a str,
    /// Its size in bytes: a power of two of pages (checked).
    pub ring_bytes: u32,
    /// The per-CPU `u64` array of (produced, dropped).
    pub counters_map: &'a str,
}

/// The loaded and attached programs with their ring buffer and counters.
pub struct Loaded {
    /// Owns the programs: dropping it detaches them (`None` once detached).
    ebpf: Option<Ebpf>,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    seen_produced: u64,
    seen_dropped: u64,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("attached", &self.ebpf.is_some())
            .finish_non_exhaustive()
    }
}

/// Checks a ring buffer size: a power of two and a multiple of the page
/// size.
///
/// # Errors
/// [`EbpfError::Config`] naming `ring_buffer_bytes`.
pub fn check_ring_bytes(size: u32) -> Result<(), EbpfError> {
    let page = rustix::param::page_size();
    let pages_ok = usize::try_from(size).is_ok_and(|s| s >= page && s % page == 0);
    if !size.is_power_of_two() || !pages_ok {
        return Err(EbpfError::Config {
            field: "ring_buffer_bytes",
            reason: format!("{size} is not a power of two of {page}-byte pages"),
        });
    }
    Ok(())
}

/// Loads one program (a BTF tracepoint, a BPF LSM hook or a tracefs
/// tracepoint, by its section) against `btf` and attaches it to
/// `attach_to`: the BTF tracepoint's or the hook's name, or the tracefs
/// tracepoint's `category/name`.
fn load_and_attach(
    program: &mut aya::programs::Program,
    attach_to: &str,
    btf: &Btf,
) -> Result<(), EbpfError> {
    use aya::programs::Program;
    // The verifier gives up with EAGAIN when a signal is pending on this
    // thread: signals are held back while it runs, and a load that is still
    // interrupted (SIGKILL aside, only if the mask could not be set) is
    // tried again, as libbpf does.
    let load = |load_once: &mut dyn FnMut() -> Result<(), aya::programs::ProgramError>| {
        let held = SignalsHeld::hold();
        let mut attempts = 0;
        let loaded = loop {
            attempts += 1;
            match load_once() {
                Ok(()) => break Ok(()),
                Err(e) if attempts < LOAD_ATTEMPTS && is_eagain(&e) => {}
                Err(e) => break Err(e),
            }
        };
        drop(held);
        loaded.map_err(|e| load_error("the verifier refused a program", e))
    };
    match program {
        Program::BtfTracePoint(p) => {
            load(&mut || p.load(attach_to, btf))?;
            p.attach()
                .map_err(|e| load_error("cannot attach to a tracepoint", e))?;
        }
        Program::Lsm(p) => {
            load(&mut || p.load(attach_to, btf))?;
            p.attach()
                .map_err(|e| load_error("cannot attach to an LSM hook", e))?;
        }
        Program::TracePoint(p) => {
            // `category/name`, as under tracefs's `events/` (which must be
            // mounted: the tracepoint's id is read there).
            let (category, name) =
                attach_to
                    .split_once('/')
                    .ok_or_else(|| EbpfError::Unavailable {
                        reason: format!("tracepoint {attach_to}: not category/name"),
                        source: None,
                    })?;
            load(&mut || p.load())?;
            p.attach(category, name)
                .map_err(|e| load_error("cannot attach to a tracepoint", e))?;
        }
        other => {
            return Err(EbpfError::Unavailable {
                reason: format!(
                    "program for {attach_to}: a {:?} program (only tracepoints and LSM hooks load)",
                    other.prog_type()
                ),
                source: None,
            })
        }
    }
    Ok(())
}

impl Loaded {
    /// Loads `spec`'s object (relocated against this kernel's BTF), sizes
    /// its ring buffer and attaches its programs.
    ///
    /// # Errors
    /// [`EbpfError::Config`] for a bad ring size;
    /// [`EbpfError::PermissionDenied`] without `CAP_BPF`/`CAP_PERFMON`;
    /// [`EbpfError::Unavailable`] without kernel BTF or when the kernel
    /// refuses a program.
    pub fn load(spec: &ObjectSpec<'_>) -> Result<Self, EbpfError> {
        check_ring_bytes(spec.ring_bytes)?;
        if !std::path::Path::new(BTF_PATH).exists() {
            return Err(EbpfError::Unavailable {
                reason: format!("no kernel BTF at {BTF_PATH} (CONFIG_DEBUG_INFO_BTF)"),
                source: None,
            });
        }
        let btf = Btf::from_sys_fs().map_err(|e| load_error("cannot read kernel BTF", e))?;
        let loaded = Self::load_with(spec, &btf);
        // The parsed BTF (some 16 MiB in small allocations, under the tier's
        // long-lived ones) would stay resident for the life of the process:
        // procmond's RSS went from 33 to 18 MB with it handed back.
        drop(btf);
        crate::sys::release_free_memory();
        loaded
    }

    fn load_with(spec: &ObjectSpec<'_>, btf: &Btf) -> Result<Self, EbpfError> {
        let mut ebpf = EbpfLoader::new()
            .btf(Some(btf))
            .map_max_entries(spec.ring_map, spec.ring_bytes)
            .load(spec.object)
            .map_err(|e| load_error("the kernel refused the object", e))?;
        for &(name, attach_to) in spec.programs {
            let program = ebpf
                .program_mut(name)
                .ok_or_else(|| EbpfError::Unavailable {
                    reason: format!("program {name} missing from the object"),
                    source: None,
                })?;
            load_and_attach(program, attach_to, btf)?;
        }
        let missing = |name: &str| EbpfError::Unavailable {
            reason: format!("map {name} missing from the object"),
            source: None,
        };
        let ring = ebpf
            .take_map(spec.ring_map)
            .ok_or_else(|| missing(spec.ring_map))?;
        let ring = RingBuf::try_from(ring).map_err(|e| load_error("ring buffer map", e))?;
        let counters = ebpf
            .take_map(spec.counters_map)
            .ok_or_else(|| missing(spec.counters_map))?;
        let counters =
            PerCpuArray::try_from(counters).map_err(|e| load_error("counters map", e))?;
        Ok(Self {
            ebpf: Some(ebpf),
            ring,
            counters,
            seen_produced: 0,
            seen_dropped: 0,
        })
    }

    /// Detaches the programs (nothing new is produced); the ring buffer and
    /// counters stay readable.
    pub fn detach(&mut self) {
        drop(self.ebpf.take());
    }

    /// Whether the programs are still attached.
    pub fn is_attached(&self) -> bool {
        self.ebpf.is_some()
    }

    /// The kernel's counters now: (produced, dropped), summed over CPUs.
    ///
    /// # Errors
    /// [`EbpfError::Io`] when the map cannot be read.
    pub fn kernel_counts(&self) -> Result<(u64, u64), EbpfError> {
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

    /// Brings the kernel's counts into `counters`; how many more records
    /// were dropped since the last call.
    ///
    /// # Errors
    /// As [`kernel_counts`](Self::kernel_counts).
    pub fn read_kernel_counts(&mut self, counters: &EbpfCounters) -> Result<u64, EbpfError> {
        let (produced, dropped) = self.kernel_counts()?;
        counters
            .produced
            .add(produced.saturating_sub(self.seen_produced));
        let newly_dropped = dropped.saturating_sub(self.seen_dropped);
        counters.dropped.add(newly_dropped);
        self.seen_produced = self.seen_produced.max(produced);
        self.seen_dropped = self.seen_dropped.max(dropped);
        Ok(newly_dropped)
    }

    /// A new descriptor of the ring buffer, for a reactor to wait on (its
    /// own registration, so that the ring stays borrowable for reads).
    fn ring_fd(&self) -> Result<OwnedFd, EbpfError> {
        self.ring
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| EbpfError::Io {
                operation: "ring buffer fd dup",
                source,
            })
    }

    /// Waits at most `timeout` for the ring buffer to have data; whether it
    /// has.
    ///
    /// # Errors
    /// [`EbpfError::Io`] when `poll` fails (not for `EINTR`).
    pub fn wait_readable(&self, timeout: Duration) -> Result<bool, EbpfError> {
        let timeout = rustix::event::Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let fd = self.ring.as_fd();
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

    /// Takes up to `max` records from the ring buffer, each counted
    /// delivered, decoded by `decode` (an undecodable one is counted and
    /// skipped).
    pub fn drain<T, E: std::fmt::Display>(
        &mut self,
        max: usize,
        counters: &EbpfCounters,
        decode: &mut impl FnMut(&[u8]) -> Result<T, E>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(item) = self.ring.next() else {
                break;
            };
            counters.delivered.inc();
            match decode(&item) {
                Ok(record) => out.push(record),
                Err(err) => {
                    counters.decode_errors.inc();
                    tracing::debug!(error = %err, "undecodable eBPF record");
                }
            }
        }
        out
    }
}

/// The most records [`read_loop`] hands on at once, by default.
pub const BATCH: usize = 256;

/// Settings of an eBPF tier (`[...ebpf]` in a collector's config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Ring buffer size in bytes: a power of two and a multiple of the page
    /// size. Default 4 MiB: for procmond about 2,400 execs of a short argv
    /// (1.7 KiB each; up to 5.6 KiB with a full argv), or 52,000
    /// forks/exits (80 B); for netmond some 35,000 TCP state changes
    /// (120 B; a short connection makes about ten, both ends counted).
    pub ring_buffer_bytes: u32,
    /// Once woken by a record, how long the reader lets more gather before
    /// it takes them all (0: at once). Default 20 ms: a storm of events
    /// then costs one hand-over to the collector (and one wake-up of each
    /// stage after it, and one run of the rules) per window instead of per
    /// record, for at most that much more latency; an idle host is not
    /// woken more often. Against 5 ms, it halved the main job's CPU per
    /// exec of a spawn storm (104–128 → 56–58 µs, alternated in one run)
    /// for an exec-to-alert p99 of 23–27 ms instead of 11.
    pub batch_window_ms: u64,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 4 * 1024 * 1024,
            batch_window_ms: 20,
        }
    }
}

impl EbpfConfig {
    /// How [`read_loop`] reads with these settings, [`BATCH`] records at a
    /// time; `what` names the records in the log.
    pub fn read_settings(&self, what: &'static str) -> ReadSettings {
        ReadSettings {
            batch_window: Duration::from_millis(self.batch_window_ms),
            batch: BATCH,
            what,
        }
    }
}

/// How [`read_loop`] reads.
#[derive(Debug, Clone, Copy)]
pub struct ReadSettings {
    /// Once woken by a record, how long it lets more gather before it takes
    /// them all (zero: at once).
    pub batch_window: Duration,
    /// The most records handed on at once.
    pub batch: usize,
    /// What the records are, in the log's warning of drops ("process
    /// records").
    pub what: &'static str,
}

/// What [`read_loop`] hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery<T> {
    /// Records, in ring buffer order.
    Records(Vec<T>),
    /// The kernel dropped this many more records (ring buffer full).
    Dropped(u64),
}

/// The reader's loop, on its own thread: until `cancel` or `closed`
/// completes, waits on the ring buffer, decodes records with `decode` and
/// hands them to `deliver` (which may block while its receiver is full: the
/// ring buffer absorbs the backlog, and what it cannot hold is counted
/// dropped), with each new count of drops. `deliver` returning `false` (its
/// receiver gone) ends the loop. Then it detaches the programs and reads
/// what is left (not handed on) until the books in `counters` balance, or a
/// second has passed.
///
/// The waits run on `runtime` (a current-thread runtime with I/O enabled,
/// the thread's own; `deliver` may use it too, between waits): the thread
/// sleeps until the kernel signals a record, `cancel` fires or `closed`
/// completes, with no timer. The kernel's counters are read after each
/// drain: it drops only when the ring buffer is full, which wakes the
/// reader, so no drop waits for a timer to be counted.
///
/// # Errors
/// [`EbpfError::Io`] when the ring buffer or the counters cannot be read.
#[allow(clippy::too_many_arguments)] // each is one part of the loop; a struct would only rename them
pub fn read_loop<T, E: std::fmt::Display>(
    loaded: &mut Loaded,
    counters: &EbpfCounters,
    settings: &ReadSettings,
    runtime: &tokio::runtime::Runtime,
    cancel: &CancellationToken,
    closed: impl Future<Output = ()>,
    mut decode: impl FnMut(&[u8]) -> Result<T, E>,
    mut deliver: impl FnMut(Delivery<T>) -> bool,
) -> Result<(), EbpfError> {
    let result = (|| {
        let ring = {
            let _context = runtime.enter();
            crate::sys::async_readable(loaded.ring_fd()?).map_err(|source| EbpfError::Io {
                operation: "ring buffer registration",
                source,
            })?
        };
        let mut closed = std::pin::pin!(closed);
        loop {
            let woken = runtime.block_on(async {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => None,
                    () = &mut closed => None,
                    ready = ring.readable() => Some(ready.map(|mut guard| {
                        // Cleared before the drain: a record committed after
                        // the drain's last read finds the reader caught up,
                        // and the kernel wakes it again.
                        guard.clear_ready();
                    })),
                }
            });
            match woken {
                None => return Ok(()),
                Some(Err(source)) => {
                    return Err(EbpfError::Io {
                        operation: "ring buffer wait",
                        source,
                    })
                }
                Some(Ok(())) => let_a_batch_gather(settings.batch_window, cancel),
            }
            loop {
                let batch = loaded.drain(settings.batch, counters, &mut decode);
                if batch.is_empty() {
                    break;
                }
                if !deliver(Delivery::Records(batch)) {
                    return Ok(());
                }
            }
            let newly_dropped = loaded.read_kernel_counts(counters)?;
            if newly_dropped > 0 {
                tracing::warn!(
                    dropped = newly_dropped,
                    "eBPF ring buffer full: the kernel dropped {}",
                    settings.what
                );
                if !deliver(Delivery::Dropped(newly_dropped)) {
                    return Ok(());
                }
            }
        }
    })();
    result.and(finish(loaded, counters, &mut decode))
}

/// Detaches the programs, then reads until the books balance (a program
/// running on another CPU as it was detached may still add a record).
fn finish<T, E: std::fmt::Display>(
    loaded: &mut Loaded,
    counters: &EbpfCounters,
    decode: &mut impl FnMut(&[u8]) -> Result<T, E>,
) -> Result<(), EbpfError> {
    loaded.detach();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    loop {
        while !loaded.drain(BATCH, counters, decode).is_empty() {}
        loaded.read_kernel_counts(counters)?;
        if counters.accounting().balanced() || tokio::time::Instant::now() >= deadline {
            return Ok(());
        }
        let _ = loaded.wait_readable(Duration::from_millis(10))?;
    }
}

/// After a wake-up by a record: the batch window, so that what follows it
/// is taken in the same drain.
fn let_a_batch_gather(window: Duration, cancel: &CancellationToken) {
    let until = tokio::time::Instant::now() + window;
    while let Some(left) = until.checked_duration_since(tokio::time::Instant::now()) {
        if left.is_zero() || cancel.is_cancelled() {
            break;
        }
        std::thread::park_timeout(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_size_must_be_a_power_of_two_of_pages() {
        assert!(check_ring_bytes(1 << 20).is_ok());
        for bad in [0, 100, 3 << 20, 1024] {
            assert!(
                matches!(
                    check_ring_bytes(bad),
                    Err(EbpfError::Config {
                        field: "ring_buffer_bytes",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn permission_errors_anywhere_in_the_causes_are_told_apart() {
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(matches!(
            load_error("x", denied),
            EbpfError::PermissionDenied { .. }
        ));
        match load_error("the verifier refused a program", io::Error::other("nope")) {
            EbpfError::Unavailable { reason, .. } => {
                assert_eq!(reason, "the verifier refused a program");
            }
            other => panic!("{other:?}"),
        }
        let again = io::Error::from_raw_os_error(rustix::io::Errno::AGAIN.raw_os_error());
        assert!(is_eagain(&again));
        assert!(!is_eagain(&io::Error::other("x")));
    }

    #[test]
    fn the_books_balance_only_when_every_record_is_accounted_for() {
        let books = |produced, delivered, dropped| KernelAccounting {
            produced,
            delivered,
            dropped,
        };
        assert!(books(5, 3, 2).balanced());
        assert!(!books(5, 3, 1).balanced());
        assert!(KernelAccounting::default().balanced());
    }
}
