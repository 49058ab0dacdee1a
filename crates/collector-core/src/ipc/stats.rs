//! Server counters: atomics inside, a plain snapshot outside.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::metrics::{Counter, Registry};

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
    /// Evicted, idle, to make room for a new connection.
    Evicted,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) accepted: Counter,
    pub(crate) refused_peer: Counter,
    pub(crate) refused_overloaded: Counter,
    pub(crate) refused_peer_limit: Counter,
    pub(crate) evicted: Counter,
    pub(crate) accept_errors: Counter,
    closed: [Counter; CLOSE_LABELS.len()],
    pub(crate) frames_received: Counter,
    pub(crate) envelopes_accepted: Counter,
    rejected: [Counter; REJECT_REASONS.len()],
    pub(crate) messages_refused: Counter,
    pub(crate) tasks_received: Counter,
    pub(crate) tasks_succeeded: Counter,
    pub(crate) tasks_failed: Counter,
    pub(crate) tasks_timed_out: Counter,
    pub(crate) tasks_panicked: Counter,
    pub(crate) tasks_unsupported: Counter,
    pub(crate) subscriptions_opened: Counter,
    pub(crate) events_streamed: Counter,
    pub(crate) events_dropped: Counter,
    pub(crate) batches_sent: Counter,
    pub(crate) shutdown_forced: Counter,
}

/// The label of every [`Close`], in declaration order (`close as usize`
/// is its slot in `closed`).
const CLOSE_LABELS: [&str; 8] = [
    "eof",
    "handshake_timeout",
    "read_timeout",
    "idle",
    "protocol_error",
    "io",
    "shutdown",
    "evicted",
];

impl Counters {
    pub(crate) fn closed(&self, close: Close) {
        if let Some(c) = self.closed.get(close as usize) {
            c.inc();
        }
    }

    pub(crate) fn rejected(&self, reason: &str) {
        let i = REJECT_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(REJECT_REASONS.len() - 1);
        if let Some(c) = self.rejected.get(i) {
            c.inc();
        }
    }

    /// Registers every counter in `registry` under the stage `ipc`.
    pub(crate) fn register(&self, registry: &Registry) {
        let ipc = ("stage", "ipc");
        registry.register_counters(&[ipc], &[
            ("daemoneye_connections_accepted_total", "Connections admitted (peer allowed, under the limit).", &self.accepted),
            ("daemoneye_connections_evicted_total", "Idle connections closed to make room for a new one at max_connections.", &self.evicted),
            ("daemoneye_accepts_failed_total", "accept() itself failing (for example out of file descriptors).", &self.accept_errors),
            ("daemoneye_frames_received_total", "Whole frames that passed the length and checksum checks.", &self.frames_received),
            ("daemoneye_envelopes_accepted_total", "Frames that held a valid envelope.", &self.envelopes_accepted),
            ("daemoneye_messages_refused_total", "Valid envelopes refused (before the handshake, unexpected type, bad subscription).", &self.messages_refused),
            ("daemoneye_tasks_received_total", "Detection tasks received.", &self.tasks_received),
            ("daemoneye_tasks_succeeded_total", "Tasks answered with a successful result.", &self.tasks_succeeded),
            ("daemoneye_tasks_failed_total", "Tasks answered with a failure result (timed out, panicked and unsupported among them).", &self.tasks_failed),
            ("daemoneye_tasks_timed_out_total", "Tasks whose handler did not answer within handler_timeout.", &self.tasks_timed_out),
            ("daemoneye_tasks_panicked_total", "Tasks whose handler panicked.", &self.tasks_panicked),
            ("daemoneye_tasks_unsupported_total", "Tasks for a domain the server does not serve.", &self.tasks_unsupported),
            ("daemoneye_subscriptions_opened_total", "Event subscriptions opened.", &self.subscriptions_opened),
            ("daemoneye_events_streamed_total", "Events written to subscribers.", &self.events_streamed),
            ("daemoneye_batches_sent_total", "Event batches written to subscribers.", &self.batches_sent),
            ("daemoneye_connections_forced_total", "Connections still running at the shutdown deadline.", &self.shutdown_forced),
        ]);
        registry.register_by_reason(
            "daemoneye_connections_refused_total",
            "Connections refused, by reason.",
            &[ipc],
            [
                ("peer", &self.refused_peer),
                ("overloaded", &self.refused_overloaded),
                ("peer_limit", &self.refused_peer_limit),
            ],
        );
        registry.register_by_reason(
            "daemoneye_connections_closed_total",
            "Connections closed, by reason.",
            &[ipc],
            CLOSE_LABELS.iter().copied().zip(&self.closed),
        );
        registry.register_by_reason(
            "daemoneye_frames_rejected_total",
            "Frames rejected, by codec error.",
            &[ipc],
            REJECT_REASONS.iter().copied().zip(&self.rejected),
        );
        registry.register_events_dropped(&[ipc], [("slow_subscriber", &self.events_dropped)]);
    }

    pub(crate) fn snapshot(&self) -> IpcServerStats {
        let closed = |c: Close| self.closed.get(c as usize).map_or(0, Counter::get);
        let closed_total: u64 = self.closed.iter().map(Counter::get).sum();
        let accepted = self.accepted.get();
        IpcServerStats {
            connections_accepted: accepted,
            connections_active: accepted.saturating_sub(closed_total),
            connections_refused_peer: self.refused_peer.get(),
            connections_refused_overloaded: self.refused_overloaded.get(),
            connections_refused_peer_limit: self.refused_peer_limit.get(),
            connections_evicted: self.evicted.get(),
            accept_errors: self.accept_errors.get(),
            connections_closed_eof: closed(Close::Eof),
            connections_closed_handshake_timeout: closed(Close::HandshakeTimeout),
            connections_closed_read_timeout: closed(Close::ReadTimeout),
            connections_closed_idle: closed(Close::Idle),
            connections_closed_protocol_error: closed(Close::ProtocolError),
            connections_closed_io: closed(Close::Io),
            connections_closed_shutdown: closed(Close::Shutdown),
            connections_closed_evicted: closed(Close::Evicted),
            frames_received: self.frames_received.get(),
            envelopes_accepted: self.envelopes_accepted.get(),
            frames_rejected: REJECT_REASONS
                .iter()
                .zip(self.rejected.iter())
                .map(|(r, c)| (*r, c.get()))
                .filter(|(_, n)| *n > 0)
                .collect(),
            messages_refused: self.messages_refused.get(),
            tasks_received: self.tasks_received.get(),
            tasks_succeeded: self.tasks_succeeded.get(),
            tasks_failed: self.tasks_failed.get(),
            tasks_timed_out: self.tasks_timed_out.get(),
            tasks_panicked: self.tasks_panicked.get(),
            tasks_unsupported: self.tasks_unsupported.get(),
            subscriptions_opened: self.subscriptions_opened.get(),
            events_streamed: self.events_streamed.get(),
            events_dropped: self.events_dropped.get(),
            batches_sent: self.batches_sent.get(),
            shutdown_forced: self.shutdown_forced.get(),
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
    /// Connections refused: at `max_connections`, none evictable.
    pub connections_refused_overloaded: u64,
    /// Connections refused: their peer uid held `max_connections_per_uid`
    /// places, none of them evictable.
    pub connections_refused_peer_limit: u64,
    /// Idle connections evicted to admit a new one at `max_connections`.
    pub connections_evicted: u64,
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
    /// Closed: evicted (idle) for a new connection.
    pub connections_closed_evicted: u64,
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
            + self.connections_closed_evicted
    }

    /// Sum of rejected frames over every reason.
    pub fn frames_rejected_total(&self) -> u64 {
        self.frames_rejected.values().sum()
    }
}
