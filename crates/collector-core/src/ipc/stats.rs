//! Server counters: atomics inside, a plain snapshot outside.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Every [`CodecError::reason`](daemoneye_lib::codec::CodecError::reason).
const REJECT_REASONS: [&str; 8] = [
    "empty_frame",
    "frame_too_long",
    "checksum_mismatch",
    "truncated",
    "trailing_bytes",
    "invalid_envelope",
    "unknown_message_type",
    "io",
];

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// The client closed it.
    Eof,
    /// No capability request within the handshake timeout.
    HandshakeTimeout,
    /// A started frame was not completed within the read timeout.
    ReadTimeout,
    /// Nothing was received for the idle timeout.
    Idle,
    /// A framing error, or a bad first message.
    ProtocolError,
    /// Reading or writing failed, or a write timed out.
    Io,
    /// The server shut down.
    Shutdown,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) refused_peer: AtomicU64,
    pub(crate) refused_overloaded: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    closed: [AtomicU64; 7],
    pub(crate) frames_received: AtomicU64,
    pub(crate) envelopes_accepted: AtomicU64,
    rejected: [AtomicU64; 8],
    pub(crate) messages_refused: AtomicU64,
    pub(crate) tasks_received: AtomicU64,
    pub(crate) tasks_succeeded: AtomicU64,
    pub(crate) tasks_failed: AtomicU64,
    pub(crate) tasks_timed_out: AtomicU64,
    pub(crate) tasks_panicked: AtomicU64,
    pub(crate) tasks_unsupported: AtomicU64,
    pub(crate) subscriptions_opened: AtomicU64,
    pub(crate) events_streamed: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    pub(crate) shutdown_forced: AtomicU64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

const fn close_index(close: Close) -> usize {
    match close {
        Close::Eof => 0,
        Close::HandshakeTimeout => 1,
        Close::ReadTimeout => 2,
        Close::Idle => 3,
        Close::ProtocolError => 4,
        Close::Io => 5,
        Close::Shutdown => 6,
    }
}

impl Counters {
    pub(crate) fn closed(&self, close: Close) {
        if let Some(c) = self.closed.get(close_index(close)) {
            inc(c);
        }
    }

    pub(crate) fn rejected(&self, reason: &str) {
        let i = REJECT_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REJECT_REASONS.len() - 1);
        if let Some(c) = self.rejected.get(i) {
            inc(c);
        }
    }

    pub(crate) fn snapshot(&self) -> IpcServerStats {
        let closed = |c: Close| self.closed.get(close_index(c)).map_or(0, load);
        let closed_total: u64 = self.closed.iter().map(load).sum();
        let accepted = load(&self.accepted);
        IpcServerStats {
            connections_accepted: accepted,
            connections_active: accepted.saturating_sub(closed_total),
            connections_refused_peer: load(&self.refused_peer),
            connections_refused_overloaded: load(&self.refused_overloaded),
            accept_errors: load(&self.accept_errors),
            connections_closed_eof: closed(Close::Eof),
            connections_closed_handshake_timeout: closed(Close::HandshakeTimeout),
            connections_closed_read_timeout: closed(Close::ReadTimeout),
            connections_closed_idle: closed(Close::Idle),
            connections_closed_protocol_error: closed(Close::ProtocolError),
            connections_closed_io: closed(Close::Io),
            connections_closed_shutdown: closed(Close::Shutdown),
            frames_received: load(&self.frames_received),
            envelopes_accepted: load(&self.envelopes_accepted),
            frames_rejected: REJECT_REASONS
                .iter()
                .zip(self.rejected.iter())
                .map(|(r, c)| (*r, load(c)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            messages_refused: load(&self.messages_refused),
            tasks_received: load(&self.tasks_received),
            tasks_succeeded: load(&self.tasks_succeeded),
            tasks_failed: load(&self.tasks_failed),
            tasks_timed_out: load(&self.tasks_timed_out),
            tasks_panicked: load(&self.tasks_panicked),
            tasks_unsupported: load(&self.tasks_unsupported),
            subscriptions_opened: load(&self.subscriptions_opened),
            events_streamed: load(&self.events_streamed),
            events_dropped: load(&self.events_dropped),
            batches_sent: load(&self.batches_sent),
            shutdown_forced: load(&self.shutdown_forced),
        }
    }
}

/// A snapshot of a [`CollectorIpcServer`](crate::CollectorIpcServer)'s
/// counters.
///
/// Invariants: `connections_accepted = connections_active + Σ
/// connections_closed_*`; `frames_received = envelopes_accepted +
/// frames_rejected["invalid_envelope"] + frames_rejected["unknown_message_type"]`
/// (the other reasons are framing errors, counted apart from frames);
/// `tasks_received = tasks_succeeded + tasks_failed + tasks in flight`, with
/// `tasks_timed_out`, `tasks_panicked` and `tasks_unsupported` among the
/// failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct IpcServerStats {
    /// Connections admitted (peer allowed, under the limit).
    pub connections_accepted: u64,
    /// Admitted connections still open.
    pub connections_active: u64,
    /// Connections refused: peer uid not allowed (or unreadable).
    pub connections_refused_peer: u64,
    /// Connections refused: over `max_connections`.
    pub connections_refused_overloaded: u64,
    /// `accept` itself failed (for example out of file descriptors).
    pub accept_errors: u64,
    /// Closed by the client.
    pub connections_closed_eof: u64,
    /// Closed: no handshake in time.
    pub connections_closed_handshake_timeout: u64,
    /// Closed: a frame was started and not finished in time.
    pub connections_closed_read_timeout: u64,
    /// Closed: idle.
    pub connections_closed_idle: u64,
    /// Closed: framing error or bad first message.
    pub connections_closed_protocol_error: u64,
    /// Closed: read or write failed or timed out.
    pub connections_closed_io: u64,
    /// Closed: server shutdown.
    pub connections_closed_shutdown: u64,
    /// Whole frames that passed the length and checksum checks.
    pub frames_received: u64,
    /// Frames that held a valid envelope.
    pub envelopes_accepted: u64,
    /// Rejected frames by [`CodecError::reason`](daemoneye_lib::codec::CodecError::reason).
    pub frames_rejected: BTreeMap<&'static str, u64>,
    /// Valid envelopes refused (before the handshake, unexpected type, bad
    /// subscription).
    pub messages_refused: u64,
    /// Detection tasks received.
    pub tasks_received: u64,
    /// Tasks answered with a successful result.
    pub tasks_succeeded: u64,
    /// Tasks answered with a failure result.
    pub tasks_failed: u64,
    /// Failed: the handler did not answer within `handler_timeout`.
    pub tasks_timed_out: u64,
    /// Failed: the handler panicked.
    pub tasks_panicked: u64,
    /// Failed: the task's domain is not served (the handler was not called).
    pub tasks_unsupported: u64,
    /// Subscriptions opened.
    pub subscriptions_opened: u64,
    /// Events written to subscribers.
    pub events_streamed: u64,
    /// Events dropped for slow or departed subscribers.
    pub events_dropped: u64,
    /// Event batches written.
    pub batches_sent: u64,
    /// Connections still running at the shutdown deadline.
    pub shutdown_forced: u64,
}

impl IpcServerStats {
    /// Sum of every connection-closed counter.
    pub fn connections_closed(&self) -> u64 {
        self.connections_closed_eof
            + self.connections_closed_handshake_timeout
            + self.connections_closed_read_timeout
            + self.connections_closed_idle
            + self.connections_closed_protocol_error
            + self.connections_closed_io
            + self.connections_closed_shutdown
    }

    /// Sum of rejected frames over every reason.
    pub fn frames_rejected_total(&self) -> u64 {
        self.frames_rejected.values().sum()
    }
}
