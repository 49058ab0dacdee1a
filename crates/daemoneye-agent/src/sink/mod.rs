//! Where alerts (and the ledger's checkpoints) go: one contract, one
//! worker, one set of counters.
//!
//! - [`AlertSink`]: the contract of whatever receives alerts and
//!   checkpoints: a [`name`](AlertSink::name), a
//!   [`deliver`](AlertSink::deliver) that says what became of one alert
//!   ([`Delivery`]: delivered, worth a retry, failed, rejected) and a
//!   [`deliver_checkpoint`](AlertSink::deliver_checkpoint) that does the
//!   same for one [`Checkpoint`] (the ledger's head leaving the host), each
//!   in the sink's own format. Both go through the same worker, queue,
//!   policy and retries ([`Item`]), counted per kind.
//! - [`SinkWorker`]: the one bounded worker every sink runs behind, on a
//!   thread of its own (so a sink that blocks, such as a full stdout pipe,
//!   holds up nothing else): a bounded queue with the
//!   [`WhenFull`](collector_core::WhenFull) policy, retries of transient
//!   failures with the one [`Backoff`](daemoneye_lib::Backoff), a deadline
//!   at close, and the same [`SinkStats`] for every sink.
//! - The sinks, each a small implementation: [`LineSink`] (JSON lines on
//!   stdout or a file), [`SyslogSink`] (RFC 5424), [`WebhookSink`] (HTTP(S)
//!   `POST`, hyper and rustls), [`FleetSink`] (NATS JetStream, at least
//!   once, from the store's outbox).
//! - [`AlertFormat`]: what a sink writes an alert as: the native record
//!   (the default), ECS or OCSF Process Activity, chosen per sink.
//! - [`SinkSet`]: the agent's fan-out, built from a plain [`SinksConfig`]:
//!   [`deliver`](SinkSet::deliver) to every sink,
//!   [`close`](SinkSet::close) by a deadline, and the counters health reads.
//!
//! Every alert offered to a sink ends in exactly one counter: `dropped`
//! (not queued), or `queued` and then `delivered`, `failed`, `rejected` or
//! `dropped_at_shutdown` ([`SinkStatsSnapshot::in_flight`] until then).
//! Checkpoints are counted alike, in counters of their own
//! ([`SinkWorker::checkpoint_stats`]).
//!
//! ```
//! use std::time::Duration;
//!
//! use daemoneye_agent::alert::{Alert, AlertProcess};
//! use daemoneye_agent::rules;
//! use daemoneye_agent::sink::{LineSink, SinkWorker, WorkerConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rule = rules::builtin()?.remove(0);
//! let process = AlertProcess::from_event(&collector_core::ProcessEvent::new(42, "x"), None);
//! let alert = Alert::new(&rule, process, std::time::SystemTime::now());
//!
//! let sink = LineSink::new("stdout", Box::new(std::io::sink()));
//! let worker = SinkWorker::start(sink, WorkerConfig::default())?;
//! worker.try_send(alert)?; // never waits: queued, or dropped and counted
//! let stats = worker
//!     .close(tokio::time::Instant::now() + Duration::from_secs(5))
//!     .await;
//! assert_eq!((stats.queued, stats.delivered, stats.in_flight()), (1, 1, 0));
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::alert::Alert;
pub use crate::ledger::Checkpoint;

mod format;
mod lines;
pub mod nats;
mod set;
mod stats;
mod syslog;
pub mod webhook;
mod worker;

pub use format::{AlertFormat, Host, ECS_VERSION, OCSF_VERSION};
pub use lines::LineSink;
pub use nats::{FleetConfig, FleetError, FleetSink, FleetStatus};
pub use set::{SinkError, SinkFormats, SinkSet, SinksConfig, DEFAULT_LINE_QUEUE};
#[cfg(test)]
pub(crate) use stats::Outcome;
pub use stats::{SinkStats, SinkStatsSnapshot};
pub use syslog::{format_checkpoint_rfc5424, format_rfc5424, SyslogSink, SyslogTarget};
pub use webhook::{WebhookConfig, WebhookError, WebhookHeader, WebhookSink, WebhookUrl};
pub use worker::{SinkSendError, SinkWorker, WorkerConfig};

/// A checkpoint for tests.
#[cfg(test)]
pub(crate) fn test_checkpoint(seq: i64) -> Checkpoint {
    Checkpoint {
        seq,
        head: "ab".repeat(32),
        time: 1_750_000_000_000_000_000,
        lost: crate::ledger::Lost {
            writes: 2,
            events: 5,
            gaps: 1,
        },
    }
}

/// What became of one attempt to deliver an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// The receiver has it.
    Delivered,
    /// A transient failure (a connection error, a timeout, an overloaded
    /// receiver): worth another attempt, after `after` when the receiver
    /// said when, else after the worker's backoff. Counted `failed` once
    /// the attempts run out.
    Retry {
        /// Why, for the logs.
        cause: String,
        /// The receiver's own "come back then" (`Retry-After`).
        after: Option<Duration>,
    },
    /// A failure that another attempt would not mend (a write error on a
    /// file, a syslog socket that is gone): counted `failed`, not retried.
    Failed(String),
    /// The receiver refused the alert (an HTTP 4xx): counted `rejected`,
    /// not retried.
    Rejected(String),
}

/// What a sink delivers: an alert, or a checkpoint of the ledger.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Item {
    /// An alert.
    Alert(Arc<Alert>),
    /// The ledger's head, sent off the host.
    Checkpoint(Arc<Checkpoint>),
    /// The store queued items (events) in its outbox: a sink that ships
    /// from the store ([`FleetSink`]) drains it; the others have nothing
    /// to do.
    Outbox,
}

/// Whatever receives alerts and checkpoints: a name and a delivery of each.
///
/// A sink runs behind a [`SinkWorker`], on a thread of its own with a
/// single-threaded tokio runtime: `deliver` may await (an HTTP request) or
/// block (a write to a pipe nobody reads) without holding up detection or
/// the other sinks; the worker queues, retries, counts and closes.
pub trait AlertSink: Send + 'static {
    /// The sink's name in logs and health (`stdout`, `file`, `syslog`,
    /// `webhook`).
    fn name(&self) -> &'static str;

    /// One attempt to deliver `alert`. Called again for the same alert
    /// when it returns [`Delivery::Retry`] and attempts remain.
    ///
    /// # Cancel safety
    /// At the close deadline the worker stops awaiting the future: an
    /// attempt may be cut short (the alert is then counted
    /// `dropped_at_shutdown`).
    fn deliver(&mut self, alert: &Alert) -> impl Future<Output = Delivery>;

    /// One attempt to deliver `checkpoint` (the ledger's head), in the
    /// sink's own format; retried and cut short as alerts are.
    fn deliver_checkpoint(&mut self, checkpoint: &Checkpoint) -> impl Future<Output = Delivery>;

    /// One attempt to ship what the store's outbox holds ([`Item::Outbox`]);
    /// retried and cut short as alerts are. Only a sink that ships from the
    /// store has anything to do.
    fn deliver_outbox(&mut self) -> impl Future<Output = Delivery> {
        std::future::ready(Delivery::Delivered)
    }

    /// A signal that the store committed outbox items
    /// ([`StoreWriter::outbox_changes`](daemoneye_store::StoreWriter::outbox_changes)):
    /// the worker makes an [`Item::Outbox`] delivery each time it changes
    /// (changes while one is under way make one more). Asked once, when
    /// the worker starts; `None` (the default) for a sink that does not
    /// ship from the store.
    fn outbox_changes(&mut self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// An alert from the built-in pack about process `pid`, for tests.
#[cfg(test)]
pub(crate) fn test_alert(pid: u32) -> Alert {
    #![allow(clippy::unwrap_used)]
    let rule = crate::rules::builtin().unwrap().remove(0);
    let event = collector_core::ProcessEvent::new(pid, "x");
    Alert::new(
        &rule,
        crate::alert::AlertProcess::from_event(&event, None),
        std::time::SystemTime::now(),
    )
}
