//! The eBPF tier: every TCP connect, accept, listen and close as the kernel
//! makes it, with the process that did it, and every lost record counted.
//!
//! `crates/netmond/ebpf/net.bpf.c` (built by `cargo xtask ebpf`, the object
//! committed beside it and embedded here) attaches to the BTF tracepoint
//! `sock:inet_sock_set_state` and sends one [`StateRecord`] per TCP state
//! change of an IPv4 or IPv6 socket through one ring buffer, counting each
//! record it tries to send and each one the ring buffer had no room for, so
//! `produced = delivered + dropped` holds exactly ([`KernelAccounting`]).
//! Loading, attaching, reading and counting go through the loader the
//! collectors share, [`collector_core::ebpf`].
//!
//! UDP has no state tracepoint: UDP sockets stay on the snapshot tier.
//!
//! # Who did it
//! `connect()`, `listen()`, `close()` and `shutdown()` change a socket's
//! state with the socket locked by the calling process: the record carries
//! that task ([`StateRecord::task`]). A handshake completed by a packet
//! (an outbound connection's `ESTABLISHED`, an inbound one's), a peer's
//! FIN or RST and the timers run in softirq, on whatever task the CPU was
//! running: the record carries none, and the source names the owner it
//! knows instead: the connecting process, or for an accepted connection the
//! process that accepted it. That one is told by a second record kind,
//! [`RecordKind::Accepted`], sent at the exit of `accept()`/`accept4()` in
//! the accepting process (its descriptor resolved to the socket in the
//! kernel, the socket's cookie and inode in the record), by the hook
//! [`AcceptHook`] picks; its cost is there. Both kinds go through the same
//! ring buffer and counters, so the books balance over both.
//!
//! Needs `CAP_BPF` and `CAP_PERFMON` (or root) to load, and kernel BTF;
//! tested on Linux 6.18.

pub mod decode;

use std::thread::JoinHandle;

use collector_core::ebpf::{read_loop, Loaded, ObjectSpec, ReadSettings};
pub use collector_core::ebpf::{Delivery, EbpfConfig, EbpfCounters, EbpfError, KernelAccounting};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use decode::{decode, DecodeError, RecordKind, StateRecord, TaskRecord};

/// The compiled program (`cargo xtask ebpf` rebuilds it), 8-byte aligned as
/// the ELF parser needs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../ebpf/net.bpf.o");

/// The program of TCP state changes and the BTF tracepoint it attaches to.
const STATE_PROGRAM: (&str, &str) = ("handle_set_state", "inet_sock_set_state");

/// The programs naming the process that accepts a connection, by hook:
/// `accept()`'s and `accept4()`'s syscall tracepoints (under tracefs), or the
/// BTF tracepoint of every syscall's exit.
const TRACEPOINT_PROGRAMS: [(&str, &str); 2] = [
    ("handle_accept4_exit", "syscalls/sys_exit_accept4"),
    ("handle_accept_exit", "syscalls/sys_exit_accept"),
];
const RAW_SYSCALL_PROGRAM: (&str, &str) = ("handle_sys_exit", "sys_exit");

/// Where tracefs shows `accept4()`'s exit tracepoint (aya looks in the same
/// two places).
const TRACEFS_ACCEPT4: [&str; 2] = [
    "/sys/kernel/tracing/events/syscalls/sys_exit_accept4",
    "/sys/kernel/debug/tracing/events/syscalls/sys_exit_accept4",
];

/// How the eBPF tier names the process that accepts an inbound connection
/// (`accept_hook` in `[netmond]`).
///
/// This kernel refuses the hooks that would cost nothing elsewhere (an
/// fexit program on `inet_csk_accept`, the BPF LSM hook `sock_graft`: both
/// fail to load with `EPERM`, measured on 6.18), so the acceptor is read at
/// the exit of `accept()` and `accept4()`. Any syscall tracepoint puts
/// every syscall of the host on the kernel's slower path while it is
/// attached. Measured on this 6.18 host, 2 shared cores (a `getppid` loop
/// in C, 3 M calls, 3 rounds of each, ±15 ns noise): about 138 ns a call
/// with nothing attached, 143 with the state program alone (`off`), 175
/// with `tracepoints`, 240 with `raw_syscalls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AcceptHook {
    /// [`Tracepoints`](Self::Tracepoints) where tracefs is mounted, else
    /// [`Off`](Self::Off) (said in the log): the dearer
    /// [`RawSyscalls`](Self::RawSyscalls) only when asked for.
    Auto,
    /// `syscalls:sys_exit_accept{,4}`: needs tracefs mounted
    /// (`/sys/kernel/tracing` or `/sys/kernel/debug/tracing`) when the tier
    /// loads; only those two syscalls run a program.
    Tracepoints,
    /// The BTF tracepoint `raw_syscalls:sys_exit`, a program on every
    /// syscall's exit that leaves at once for all but `accept()` and
    /// `accept4()`: no tracefs needed, the dearer of the two.
    RawSyscalls,
    /// None: an accepted connection is named for its listener's holder.
    /// The default: a hook slows every syscall of the host, not only
    /// netmond's, so naming the acceptor is asked for.
    #[default]
    Off,
}

impl AcceptHook {
    /// `Auto` resolved on this host.
    fn resolve(self) -> Self {
        if self != Self::Auto {
            return self;
        }
        if TRACEFS_ACCEPT4
            .iter()
            .any(|p| std::path::Path::new(p).exists())
        {
            Self::Tracepoints
        } else {
            Self::Off
        }
    }

    /// The programs this hook loads, the state program first.
    fn programs(self) -> Vec<(&'static str, &'static str)> {
        let mut programs = vec![STATE_PROGRAM];
        match self.resolve() {
            Self::Tracepoints => programs.extend(TRACEPOINT_PROGRAMS),
            Self::RawSyscalls => programs.push(RAW_SYSCALL_PROGRAM),
            Self::Off | Self::Auto => {}
        }
        programs
    }
}

/// The loaded and attached program with its maps.
#[derive(Debug)]
pub struct NetTier {
    loaded: Loaded,
    settings: ReadSettings,
    accept_hook: AcceptHook,
}

impl NetTier {
    /// Loads the embedded object and attaches it, naming acceptors as
    /// [`AcceptHook::Auto`] does.
    ///
    /// # Errors
    /// As [`load_with`](Self::load_with).
    pub fn load(config: &EbpfConfig) -> Result<Self, EbpfError> {
        Self::load_with(config, AcceptHook::Auto)
    }

    /// Loads the embedded object and attaches the state program and the
    /// accept hook `accept` says.
    ///
    /// # Errors
    /// [`EbpfError::PermissionDenied`] without `CAP_BPF`/`CAP_PERFMON`;
    /// [`EbpfError::Unavailable`] without kernel BTF or when the kernel
    /// refuses a program (or, for [`AcceptHook::Tracepoints`], tracefs is
    /// not mounted); [`EbpfError::Config`] for a bad ring size.
    pub fn load_with(config: &EbpfConfig, accept: AcceptHook) -> Result<Self, EbpfError> {
        let accept_hook = accept.resolve();
        let programs = accept_hook.programs();
        Ok(Self {
            loaded: Loaded::load(&ObjectSpec::new(OBJECT, &programs, config))?,
            settings: config.read_settings("TCP state records"),
            accept_hook,
        })
    }

    /// The accept hook attached ([`AcceptHook::Auto`] resolved).
    pub fn accept_hook(&self) -> AcceptHook {
        self.accept_hook
    }

    /// The kernel's counters now: (produced, dropped), summed over CPUs.
    ///
    /// # Errors
    /// [`EbpfError::Io`] when the map cannot be read.
    pub fn kernel_counts(&self) -> Result<(u64, u64), EbpfError> {
        self.loaded.kernel_counts()
    }

    /// Starts the reader thread, which decodes records and sends them into
    /// `tx` (waiting while it is full: the ring buffer absorbs the backlog,
    /// and what it cannot hold is counted dropped) until the handle is
    /// stopped or dropped, or `tx` is closed.
    ///
    /// # Errors
    /// [`EbpfError::Thread`] when the thread cannot be created.
    pub fn spawn_reader(
        self,
        tx: mpsc::Sender<Delivery<StateRecord>>,
        counters: EbpfCounters,
    ) -> Result<NetReader, EbpfError> {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let shared = counters.clone();
        let thread = std::thread::Builder::new()
            .name("netmond-ebpf".into())
            .spawn(move || {
                let mut tier = self;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(|e| EbpfError::Thread(Box::new(e)))?;
                read_loop(
                    &mut tier.loaded,
                    &shared,
                    &tier.settings,
                    &runtime,
                    &token,
                    tx.closed(),
                    decode,
                    |delivery| tx.blocking_send(delivery).is_ok(),
                )
            })
            .map_err(|e| EbpfError::Thread(Box::new(e)))?;
        Ok(NetReader {
            cancel,
            counters,
            thread: Some(thread),
        })
    }
}

/// The running reader. Stopping (or dropping) it detaches the program,
/// reads what is left, and waits for the thread; the final accounting then
/// balances.
#[derive(Debug)]
pub struct NetReader {
    cancel: CancellationToken,
    counters: EbpfCounters,
    thread: Option<JoinHandle<Result<(), EbpfError>>>,
}

impl NetReader {
    /// The accounting so far.
    pub fn accounting(&self) -> KernelAccounting {
        self.counters.accounting()
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the reader (blocking: about one poll interval) and returns the
    /// final accounting.
    ///
    /// # Errors
    /// The error that ended the thread.
    pub fn stop(mut self) -> Result<KernelAccounting, EbpfError> {
        self.wait()
    }

    fn wait(&mut self) -> Result<KernelAccounting, EbpfError> {
        self.cancel.cancel();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap_or_else(|_| {
                Err(EbpfError::Thread(
                    "the netmond eBPF reader thread panicked".into(),
                ))
            })?;
        }
        Ok(self.counters.accounting())
    }
}

impl Drop for NetReader {
    fn drop(&mut self) {
        if let Err(err) = self.wait() {
            tracing::warn!(error = %err, "the eBPF reader ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use collector_core::ebpf;

    #[test]
    fn the_object_names_the_program_and_maps_the_loader_expects() {
        let names: Vec<String> = OBJECT
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let programs = [STATE_PROGRAM, RAW_SYSCALL_PROGRAM]
            .into_iter()
            .chain(TRACEPOINT_PROGRAMS)
            .map(|(name, _)| name);
        for name in programs.chain([ebpf::RING_MAP, ebpf::COUNTERS_MAP]) {
            assert!(names.iter().any(|n| n == name), "{name} missing");
        }
    }
}
