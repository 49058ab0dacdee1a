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
//! knows instead (the connecting process, or for an accepted connection the
//! process holding the listener it came in on).
//!
//! Needs `CAP_BPF` and `CAP_PERFMON` (or root) to load, and kernel BTF;
//! tested on Linux 6.18.

pub mod decode;

use std::thread::JoinHandle;

use collector_core::ebpf::{read_loop, Loaded, ObjectSpec, ReadSettings};
pub use collector_core::ebpf::{Delivery, EbpfConfig, EbpfCounters, EbpfError, KernelAccounting};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use decode::{decode, DecodeError, StateRecord, TaskRecord};

/// The compiled program (`cargo xtask ebpf` rebuilds it), 8-byte aligned as
/// the ELF parser needs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../ebpf/net.bpf.o");

/// The program and the tracepoint it attaches to.
const PROGRAMS: [(&str, &str); 1] = [("handle_set_state", "inet_sock_set_state")];

/// The loaded and attached program with its maps.
#[derive(Debug)]
pub struct NetTier {
    loaded: Loaded,
    settings: ReadSettings,
}

impl NetTier {
    /// Loads the embedded object and attaches it.
    ///
    /// # Errors
    /// [`EbpfError::PermissionDenied`] without `CAP_BPF`/`CAP_PERFMON`;
    /// [`EbpfError::Unavailable`] without kernel BTF or when the kernel
    /// refuses the program; [`EbpfError::Config`] for a bad ring size.
    pub fn load(config: &EbpfConfig) -> Result<Self, EbpfError> {
        Ok(Self {
            loaded: Loaded::load(&ObjectSpec::new(OBJECT, &PROGRAMS, config))?,
            settings: config.read_settings("TCP state records"),
        })
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
                read_loop(
                    &mut tier.loaded,
                    &shared,
                    &tier.settings,
                    &token,
                    || tx.is_closed(),
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
        for name in [PROGRAMS[0].0, ebpf::RING_MAP, ebpf::COUNTERS_MAP] {
            assert!(names.iter().any(|n| n == name), "{name} missing");
        }
    }
}
