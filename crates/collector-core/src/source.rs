//! The [`EventSource`] contract and the [`SourceCaps`] a source declares.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::event::CollectionEvent;

bitflags::bitflags! {
    /// What a source can collect and how.
    ///
    /// ```
    /// use collector_core::SourceCaps;
    ///
    /// let caps = SourceCaps::PROCESS | SourceCaps::REALTIME;
    /// assert!(caps.contains(SourceCaps::PROCESS));
    /// assert!(!caps.contains(SourceCaps::NETWORK));
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    #[serde(transparent)]
    pub struct SourceCaps: u32 {
        /// Process events.
        const PROCESS = 1 << 0;
        /// Network events.
        const NETWORK = 1 << 1;
        /// Filesystem events.
        const FILESYSTEM = 1 << 2;
        /// Performance metrics.
        const PERFORMANCE = 1 << 3;
        /// Events arrive as they happen, not only by polling.
        const REALTIME = 1 << 4;
        /// Collected through a kernel interface (netlink, fanotify, eBPF).
        const KERNEL_LEVEL = 1 << 5;
        /// Sees the whole host, not one process or container.
        const SYSTEM_WIDE = 1 << 6;
    }
}

/// A producer of [`CollectionEvent`]s: the one trait a collector implements.
///
/// # Contract
///
/// The [`Collector`](crate::Collector) runtime calls [`start`](Self::start)
/// once, in its own task, and lets it run for as long as the collector runs;
/// no startup timeout cancels it. A source:
///
/// - sends events on `tx`; `tx.send(..).await` waits when the runtime's buffer
///   is full (backpressure). A source that prefers `try_send` must count what
///   it could not send and report it (for example through
///   [`health_check`](Self::health_check));
/// - returns from `start` soon after `shutdown_signal` becomes `true` or `tx`
///   is closed. The runtime also calls [`stop`](Self::stop) at shutdown, and
///   aborts a source still running at the shutdown deadline;
/// - treats a failed read as an event to count, not a reason to return: an
///   `Err` from `start` marks the source failed (the rest of the runtime goes
///   on).
///
/// `collector_core::testing` checks a source against this contract.
#[async_trait]
pub trait EventSource: Send + Sync {
    /// A unique, stable name (used in logs, metrics and health).
    fn name(&self) -> &'static str;

    /// What this source collects.
    fn capabilities(&self) -> SourceCaps;

    /// Collects until `shutdown_signal` is set or `tx` closes.
    ///
    /// # Errors
    /// Returning an error marks the source failed in health; it is logged and
    /// counted and does not affect other sources.
    async fn start(
        &self,
        tx: mpsc::Sender<CollectionEvent>,
        shutdown_signal: Arc<AtomicBool>,
    ) -> anyhow::Result<()>;

    /// Asks the source to release what it holds; called once at shutdown,
    /// possibly while `start` is still running.
    ///
    /// # Errors
    /// An error is logged and counted.
    async fn stop(&self) -> anyhow::Result<()>;

    /// Reports whether the source is working; called every
    /// `health_check_interval`.
    ///
    /// # Errors
    /// An error marks the source degraded until a later check succeeds.
    async fn health_check(&self) -> anyhow::Result<()> {
        Ok(())
    }
}
