//! Real-time process events from the kernel's netlink process connector.
//!
//! The kernel multicasts one message per fork, exec, exit, uid/gid/sid
//! change, ptrace attach, comm change and core dump to every subscribed
//! `NETLINK_CONNECTOR` socket. Nothing is missed however short-lived the
//! process, unless the socket's receive buffer overflows; then `recv` fails
//! with `ENOBUFS` once or a few times, whatever the number of lost events.
//!
//! - [`ProcConnector::open`] creates the socket, forces a large receive
//!   buffer (root or `CAP_NET_ADMIN`, else the buffer is capped by
//!   `net.core.rmem_max`), binds and subscribes.
//! - [`ProcConnector::spawn_reader`] hands the socket to a dedicated thread
//!   that only receives, [decodes](decode) and sends one
//!   [`ConnectorMessage::Events`] per datagram into a bounded tokio channel,
//!   or [`ConnectorMessage::Overrun`] when the kernel reports lost events
//!   (the consumer then runs a reconciliation snapshot).
//! - [`decode`] is pure: it turns one datagram into [`ProcEvent`]s and can be
//!   tested without privileges.
//!
//! ```no_run
//! use procmond::connector::{ConnectorConfig, ConnectorError, ConnectorMessage, ProcConnector};
//!
//! # async fn run() -> Result<(), ConnectorError> {
//! let connector = match ProcConnector::open(&ConnectorConfig::default()) {
//!     Err(ConnectorError::PermissionDenied { .. }) => return Ok(()), // fall back to snapshots
//!     other => other?,
//! };
//! let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
//! let reader = connector.spawn_reader(tx)?;
//! while let Some(message) = rx.recv().await {
//!     match message {
//!         ConnectorMessage::Events(events) => println!("{events:?}"),
//!         ConnectorMessage::Overrun => println!("events were lost: reconcile"),
//!         _ => {}
//!     }
//! #   break;
//! }
//! reader.stop()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Minimum kernel version
//!
//! The process connector exists since Linux 2.6.15 (`CONFIG_PROC_EVENTS`);
//! see [`ProcEvent`] for when each event kind appeared. Up to about Linux 6.6
//! subscribing needs `CAP_NET_ADMIN` ([`ConnectorError::PermissionDenied`]
//! otherwise); newer kernels let any user subscribe (measured on 6.18: an
//! unprivileged thread subscribed and received every event, with its buffer
//! capped by `rmem_max`). Subscribing only works from the initial user and pid
//! namespaces: elsewhere the kernel ignores the request silently, which
//! [`ProcConnector::open`] reports as [`ConnectorError::NotAcknowledged`].

mod decode;
mod sys;

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use collector_core::metrics::{Counter, Registry};
use collector_core::source::unless_cancelled;
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::reader_thread::{current_thread_runtime, ReaderError, ThreadError, TierReader};
pub use decode::{
    decode, exit_status, messages, DecodeError, EventMeta, ExitStatus, Messages, ProcEvent, ProcId,
    CN_IDX_PROC, CN_VAL_PROC,
};

/// 32 MiB: measured to absorb a 15,000-event burst with the reader stalled
/// (each event takes about 830 bytes of socket buffer).
const DEFAULT_RECV_BUFFER_BYTES: usize = 32 * 1024 * 1024;
const DEFAULT_POLL_INTERVAL_MS: u64 = 100;
const DEFAULT_ACK_TIMEOUT_MS: u64 = 1_000;
/// Far more than one connector datagram (76 bytes on `x86_64`).
const RECV_BUFFER_LEN: usize = 16 * 1024;

/// Settings of the process connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorConfig {
    /// Receive buffer to request: with `SO_RCVBUFFORCE` when permitted, else
    /// `SO_RCVBUF` (capped by `net.core.rmem_max`). Default 32 MiB.
    pub recv_buffer_bytes: usize,
    /// How often the reader thread wakes up to check whether it should stop
    /// (`SO_RCVTIMEO`); bounds how long [`ReaderHandle::stop`] takes.
    /// Default 100 ms.
    pub poll_interval_ms: u64,
    /// How long [`ProcConnector::open`] waits for the kernel to acknowledge
    /// the subscription. Default 1000 ms.
    pub ack_timeout_ms: u64,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self {
            recv_buffer_bytes: DEFAULT_RECV_BUFFER_BYTES,
            poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
            ack_timeout_ms: DEFAULT_ACK_TIMEOUT_MS,
        }
    }
}

/// Errors of the process connector.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectorError {
    /// Not privileged: on kernels before about 6.6 binding to the group and
    /// subscribing need root or `CAP_NET_ADMIN`. Expected when running
    /// unprivileged there; fall back to snapshots.
    #[error("permission denied to {operation} the process connector (needs CAP_NET_ADMIN)")]
    PermissionDenied {
        /// What was refused: `bind` or `subscribe`.
        operation: &'static str,
    },
    /// A socket call failed.
    #[error("process connector {operation} failed")]
    Io {
        /// The call: `socket`, `setsockopt`, `getsockopt`, `bind`, `send`, `recv`.
        operation: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel answered the subscription with an error other than `EPERM`.
    #[error("the kernel refused the process connector subscription with errno {errno}")]
    Refused {
        /// The errno of the acknowledgement.
        errno: u32,
    },
    /// No acknowledgement of the subscription arrived in time: the kernel
    /// ignores requests from a non-initial user or pid namespace.
    #[error("no acknowledgement of the process connector subscription within {timeout_ms} ms")]
    NotAcknowledged {
        /// How long was waited.
        timeout_ms: u64,
    },
    /// The reader thread could not be started, or panicked.
    #[error(transparent)]
    Thread(#[from] ThreadError),
}

impl ReaderError for ConnectorError {
    const READER: &'static str = "process connector";
}

impl ConnectorError {
    fn io(operation: &'static str, errno: Errno) -> Self {
        if errno == Errno::PERM || errno == Errno::ACCESS {
            Self::PermissionDenied { operation }
        } else {
            Self::Io {
                operation,
                source: errno.into(),
            }
        }
    }
}

/// The receive buffer the kernel granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvBuffer {
    /// What was asked for ([`ConnectorConfig::recv_buffer_bytes`]).
    pub requested_bytes: usize,
    /// What `getsockopt(SO_RCVBUF)` reports: the kernel doubles the request
    /// for its bookkeeping, so this is about twice `requested_bytes` when the
    /// request was honoured.
    pub granted_bytes: usize,
    /// Whether `SO_RCVBUFFORCE` was permitted; if not, `SO_RCVBUF` was used
    /// and the grant is capped by `net.core.rmem_max`.
    pub forced: bool,
}

/// What the reader thread sends.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectorMessage {
    /// The events of one datagram (usually one event).
    Events(Vec<ProcEvent>),
    /// `recv` failed with `ENOBUFS`: the socket buffer overflowed and events
    /// were lost, how many is unknown. Run a reconciliation snapshot.
    Overrun,
}

/// A subscribed process connector socket, not yet read.
///
/// Dropping it unsubscribes.
#[derive(Debug)]
pub struct ProcConnector {
    subscription: Subscription,
    recv_buffer: RecvBuffer,
    /// Events received while waiting for the acknowledgement.
    pending: Vec<ProcEvent>,
    /// Whether `ENOBUFS` was seen while waiting for the acknowledgement.
    pending_overrun: bool,
}

impl ProcConnector {
    /// Opens the socket, sets its receive buffer, binds to the process events
    /// group, subscribes and waits for the kernel's acknowledgement.
    ///
    /// # Errors
    ///
    /// [`ConnectorError::PermissionDenied`] without root or `CAP_NET_ADMIN`;
    /// [`ConnectorError::NotAcknowledged`] in a non-initial namespace;
    /// [`ConnectorError::Io`] when a socket call fails otherwise.
    ///
    /// # Minimum kernel version
    ///
    /// Linux 2.6.15; `SO_RCVBUFFORCE` since 2.6.14.
    pub fn open(config: &ConnectorConfig) -> Result<Self, ConnectorError> {
        let socket = sys::Socket::new().map_err(|e| ConnectorError::io("socket", e))?;

        let requested_bytes = config.recv_buffer_bytes;
        let forced = match socket.force_recv_buffer(requested_bytes) {
            Ok(()) => true,
            Err(e) if e == Errno::PERM => {
                socket
                    .set_recv_buffer(requested_bytes)
                    .map_err(|e| ConnectorError::io("setsockopt", e))?;
                false
            }
            Err(e) => return Err(ConnectorError::io("setsockopt", e)),
        };
        let granted_bytes = socket
            .recv_buffer()
            .map_err(|e| ConnectorError::io("getsockopt", e))?;
        let recv_buffer = RecvBuffer {
            requested_bytes,
            granted_bytes,
            forced,
        };

        let poll_interval = Duration::from_millis(config.poll_interval_ms.max(1));
        socket
            .set_recv_timeout(poll_interval)
            .map_err(|e| ConnectorError::io("setsockopt", e))?;
        socket.bind().map_err(|e| ConnectorError::io("bind", e))?;

        let token = next_token();
        socket
            .subscribe(token)
            .map_err(|e| ConnectorError::io("subscribe", e))?;
        let mut connector = Self {
            subscription: Subscription {
                socket,
                token,
                subscribed: true,
            },
            recv_buffer,
            pending: Vec::new(),
            pending_overrun: false,
        };
        connector.await_ack(Duration::from_millis(config.ack_timeout_ms))?;
        tracing::debug!(
            granted_bytes = recv_buffer.granted_bytes,
            forced = recv_buffer.forced,
            "process connector subscribed"
        );
        Ok(connector)
    }

    /// Receives until our acknowledgement arrives, keeping other events.
    fn await_ack(&mut self, timeout: Duration) -> Result<(), ConnectorError> {
        let expected = self.subscription.token.wrapping_add(1);
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; RECV_BUFFER_LEN];
        loop {
            match self.subscription.socket.recv(&mut buf) {
                Ok(len) => {
                    for item in messages(buf.get(..len).unwrap_or_default()) {
                        match item {
                            Ok(ProcEvent::Ack { ack, err, .. }) if ack == expected => {
                                return match err {
                                    0 => Ok(()),
                                    e if e == errno_u32(Errno::PERM)
                                        || e == errno_u32(Errno::ACCESS) =>
                                    {
                                        self.subscription.subscribed = false;
                                        Err(ConnectorError::PermissionDenied {
                                            operation: "subscribe",
                                        })
                                    }
                                    errno => {
                                        self.subscription.subscribed = false;
                                        Err(ConnectorError::Refused { errno })
                                    }
                                };
                            }
                            Ok(event) => self.pending.push(event),
                            Err(err) => {
                                tracing::debug!(error = %err, "undecodable process connector message");
                            }
                        }
                    }
                }
                Err(e) if e == Errno::AGAIN || e == Errno::INTR => {}
                Err(e) if e == Errno::NOBUFS => self.pending_overrun = true,
                Err(e) => return Err(ConnectorError::io("recv", e)),
            }
            if Instant::now() >= deadline {
                return Err(ConnectorError::NotAcknowledged {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                });
            }
        }
    }

    /// The receive buffer the kernel granted.
    pub fn recv_buffer(&self) -> RecvBuffer {
        self.recv_buffer
    }

    /// Starts the reader thread, which receives, decodes and sends into `tx`
    /// until [`ReaderHandle::stop`] is called, the handle is dropped, `tx` is
    /// closed, or `recv` fails with an error other than a timeout or
    /// `ENOBUFS`.
    ///
    /// The thread blocks while `tx` is full, on purpose: the kernel's receive
    /// buffer absorbs the backlog, and an overflow shows up as
    /// [`ConnectorMessage::Overrun`]. It still stops promptly when asked.
    ///
    /// # Errors
    ///
    /// [`ConnectorError::Thread`] ([`ThreadError::Spawn`]) when the thread
    /// cannot be created.
    pub fn spawn_reader(
        self,
        tx: mpsc::Sender<ConnectorMessage>,
    ) -> Result<ReaderHandle, ConnectorError> {
        self.spawn_reader_counted(tx, ReaderCounters::default())
    }

    /// As [`spawn_reader`](Self::spawn_reader), counting into `counters`
    /// (made, and registered in a metrics registry, before the reader
    /// starts; they outlive it).
    ///
    /// # Errors
    /// [`ConnectorError::Thread`] ([`ThreadError::Spawn`]) when the thread
    /// cannot be started.
    pub fn spawn_reader_counted(
        self,
        tx: mpsc::Sender<ConnectorMessage>,
        counters: ReaderCounters,
    ) -> Result<ReaderHandle, ConnectorError> {
        let read = ReaderCounters::snapshot;
        ReaderHandle::spawn("procmond-connector", counters, read, |cancel, counters| {
            Reader {
                connector: self,
                tx,
                cancel,
                counters,
            }
            .run()
        })
    }
}

/// The `ack` cookie of a request; the kernel's answer carries it plus one.
fn next_token() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    std::process::id()
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(NEXT.fetch_add(2, Ordering::Relaxed))
}

fn errno_u32(errno: Errno) -> u32 {
    u32::try_from(errno.raw_os_error()).unwrap_or(u32::MAX)
}

/// The socket and whether it is subscribed; unsubscribes on drop.
#[derive(Debug)]
struct Subscription {
    socket: sys::Socket,
    token: u32,
    subscribed: bool,
}

impl Subscription {
    /// Sends `PROC_CN_MCAST_IGNORE` once.
    fn unsubscribe(&mut self) -> Result<(), ConnectorError> {
        if !std::mem::replace(&mut self.subscribed, false) {
            return Ok(());
        }
        self.socket
            .unsubscribe(next_token())
            .map_err(|e| ConnectorError::io("unsubscribe", e))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Err(err) = self.unsubscribe() {
            tracing::debug!(error = %err, "process connector unsubscribe failed");
        }
    }
}

/// Counters of the reader thread. Clones share them.
#[derive(Debug, Clone, Default)]
pub struct ReaderCounters {
    datagrams: Counter,
    events: Counter,
    overruns: Counter,
    decode_errors: Counter,
    unknown_events: Counter,
}

/// A snapshot of the reader thread's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderStats {
    /// Datagrams received.
    pub datagrams_received: u64,
    /// Events decoded (including acknowledgements and unknown events).
    pub events_decoded: u64,
    /// `ENOBUFS` reports: times the kernel dropped events.
    pub overruns: u64,
    /// Messages that could not be decoded.
    pub decode_errors: u64,
    /// Events with a `what` this decoder does not know.
    pub unknown_events: u64,
}

impl ReaderCounters {
    /// The counters so far.
    pub fn snapshot(&self) -> ReaderStats {
        ReaderStats {
            datagrams_received: self.datagrams.get(),
            events_decoded: self.events.get(),
            overruns: self.overruns.get(),
            decode_errors: self.decode_errors.get(),
            unknown_events: self.unknown_events.get(),
        }
    }

    /// Registers the counters in `registry` (stage `connector`).
    pub fn register(&self, registry: &Registry) {
        let stage = [("stage", "connector")];
        registry.register_counters(
            &stage,
            &[
            (
                "daemoneye_datagrams_received_total",
                "Netlink datagrams received from the kernel.",
                &self.datagrams,
            ),
            (
                "daemoneye_kernel_events_decoded_total",
                "Process connector events decoded (acknowledgements and unknown events included).",
                &self.events,
            ),
            (
                "daemoneye_kernel_overruns_reported_total",
                "ENOBUFS reports: times the kernel dropped process events.",
                &self.overruns,
            ),
            (
                "daemoneye_kernel_messages_undecodable_total",
                "Process connector messages that could not be decoded.",
                &self.decode_errors,
            ),
            (
                "daemoneye_kernel_events_unknown_total",
                "Process connector events of a kind this decoder does not know.",
                &self.unknown_events,
            ),
            ],
        );
    }
}

/// The running reader thread: [`stats`](TierReader::stats),
/// [`stop`](TierReader::stop) (the thread unsubscribes before it ends; at
/// most about one [`ConnectorConfig::poll_interval_ms`]),
/// [`join`](TierReader::join). Dropping it stops the thread and waits for it.
pub type ReaderHandle = TierReader<ConnectorError, ReaderCounters, ReaderStats>;

/// What the reader thread owns.
struct Reader {
    connector: ProcConnector,
    tx: mpsc::Sender<ConnectorMessage>,
    cancel: CancellationToken,
    counters: ReaderCounters,
}

/// Why sending stopped.
enum Closed {
    /// Asked to stop or the receiver is gone.
    Stop,
}

impl Reader {
    fn run(mut self) -> Result<(), ConnectorError> {
        let runtime = current_thread_runtime::<ConnectorError>()?;
        let result = self.read_loop(&runtime);
        let unsubscribed = self.connector.subscription.unsubscribe();
        result.and(unsubscribed)
    }

    fn read_loop(&mut self, runtime: &tokio::runtime::Runtime) -> Result<(), ConnectorError> {
        if std::mem::take(&mut self.connector.pending_overrun) {
            self.counters.overruns.inc();
            if self.send(runtime, ConnectorMessage::Overrun).is_err() {
                return Ok(());
            }
        }
        let pending = std::mem::take(&mut self.connector.pending);
        if !pending.is_empty() {
            self.counters.events.add_usize(pending.len());
            if self
                .send(runtime, ConnectorMessage::Events(pending))
                .is_err()
            {
                return Ok(());
            }
        }

        let mut buf = vec![0u8; RECV_BUFFER_LEN];
        while !self.cancel.is_cancelled() && !self.tx.is_closed() {
            let message = match self.connector.subscription.socket.recv(&mut buf) {
                Ok(len) => {
                    self.counters.datagrams.inc();
                    let events = self.decode(buf.get(..len).unwrap_or_default());
                    if events.is_empty() {
                        continue;
                    }
                    ConnectorMessage::Events(events)
                }
                Err(e) if e == Errno::AGAIN || e == Errno::INTR => continue,
                Err(e) if e == Errno::NOBUFS => {
                    self.counters.overruns.inc();
                    tracing::warn!("process connector receive buffer overflowed: events were lost");
                    ConnectorMessage::Overrun
                }
                Err(e) => return Err(ConnectorError::io("recv", e)),
            };
            if self.send(runtime, message).is_err() {
                break;
            }
        }
        Ok(())
    }

    fn decode(&self, datagram: &[u8]) -> Vec<ProcEvent> {
        let mut events = Vec::with_capacity(1);
        for item in messages(datagram) {
            match item {
                Ok(event) => {
                    if matches!(event, ProcEvent::Unknown { .. }) {
                        self.counters.unknown_events.inc();
                    }
                    events.push(event);
                }
                Err(err) => {
                    self.counters.decode_errors.inc();
                    tracing::debug!(error = %err, "undecodable process connector message");
                }
            }
        }
        self.counters.events.add_usize(events.len());
        events
    }

    /// Sends without blocking when there is room; otherwise waits for room or
    /// for the stop signal, whichever comes first.
    fn send(
        &self,
        runtime: &tokio::runtime::Runtime,
        message: ConnectorMessage,
    ) -> Result<(), Closed> {
        let message = match self.tx.try_send(message) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Closed::Stop),
            Err(mpsc::error::TrySendError::Full(message)) => message,
        };
        runtime.block_on(async {
            match unless_cancelled(&self.cancel, self.tx.send(message)).await {
                Some(Ok(())) => Ok(()),
                Some(Err(_)) | None => Err(Closed::Stop),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_types_are_send_and_sync() {
        collector_core::assert_send_sync!(
            ProcConnector,
            ReaderHandle,
            ConnectorMessage,
            ConnectorError,
            ProcEvent
        );
    }

    #[test]
    fn config_defaults_and_rejects_unknown_fields() {
        let config: ConnectorConfig = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config, ConnectorConfig::default());
        assert_eq!(config.recv_buffer_bytes, 32 * 1024 * 1024);
        assert!(serde_json::from_str::<ConnectorConfig>(r#"{"recv_buffer":1}"#).is_err());
    }

    #[test]
    fn eperm_maps_to_permission_denied() {
        assert!(matches!(
            ConnectorError::io("bind", Errno::PERM),
            ConnectorError::PermissionDenied { operation: "bind" }
        ));
        assert!(matches!(
            ConnectorError::io("bind", Errno::INVAL),
            ConnectorError::Io {
                operation: "bind",
                ..
            }
        ));
    }
}
