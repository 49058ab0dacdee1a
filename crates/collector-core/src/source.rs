//! The [`EventSource`] contract, the [`SourceCaps`] a source declares and
//! the [`SourceContext`] the runtime starts it with.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

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

/// What the runtime hands a source when it starts it: its name, the sender
/// for its events and its shutdown signal, awaitable
/// ([`shutdown`](Self::shutdown), a [`CancellationToken`]) and, for the
/// reference API, the [`shutdown_flag`](Self::shutdown_flag) beside it.
///
/// One struct so that a source's inputs can grow (counters, acknowledgements)
/// without changing [`EventSource::start_with`]. Cloning it clones the
/// sender: the runtime sees a source's stream end once every clone is gone.
///
/// ```
/// use collector_core::SourceContext;
/// use tokio::sync::mpsc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (tx, _rx) = mpsc::channel(8);
/// let ctx = SourceContext::new("demo", tx);
/// let stop = ctx.shutdown().clone();
/// stop.cancel();
/// ctx.shutdown().cancelled().await; // resolves at once: no polling
/// assert!(ctx.is_shutdown());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SourceContext {
    name: &'static str,
    out: mpsc::Sender<CollectionEvent>,
    shutdown: CancellationToken,
    shutdown_flag: Arc<AtomicBool>,
    /// Wakes the runtime's health checker ([`health_changed`](Self::health_changed)).
    health: Arc<Notify>,
    /// Alive while any clone of a [`from_flag`](Self::from_flag) context is;
    /// its bridge task ends when this is gone.
    _bridge: Option<Arc<()>>,
}

/// How often a [`SourceContext::from_flag`] bridge looks at the flag.
const FLAG_BRIDGE_PERIOD: Duration = Duration::from_millis(20);

impl SourceContext {
    /// A context with a fresh shutdown token and flag (neither set).
    pub fn new(name: &'static str, out: mpsc::Sender<CollectionEvent>) -> Self {
        Self {
            name,
            out,
            shutdown: CancellationToken::new(),
            shutdown_flag: Arc::new(AtomicBool::new(false)),
            health: Arc::new(Notify::new()),
            _bridge: None,
        }
    }

    /// Uses `token` as the shutdown signal (for example a child of the
    /// caller's own token).
    #[must_use]
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Uses `flag` as the reference API's shutdown flag; the runtime sets it
    /// when it cancels the token.
    #[must_use]
    pub fn with_shutdown_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.shutdown_flag = flag;
        self
    }

    /// A context for a caller of the reference [`EventSource::start`] that
    /// can only set `flag`: the token is cancelled once the flag is seen set.
    ///
    /// A flag cannot be awaited, so a small task looks at it every 20 ms
    /// until the token is cancelled or every clone of this context is gone.
    /// This is the one place in the workspace that polls a shutdown flag;
    /// the runtime and the conformance kit call
    /// [`start_with`](EventSource::start_with) and never take this path.
    /// Sources that implement `start_with` implement `start` with it:
    ///
    /// ```
    /// # use std::sync::{atomic::AtomicBool, Arc};
    /// # use collector_core::{CollectionEvent, EventSource, SourceCaps, SourceContext};
    /// # use tokio::sync::mpsc;
    /// # struct Mine;
    /// # #[async_trait::async_trait]
    /// # impl EventSource for Mine {
    /// # fn name(&self) -> &'static str { "mine" }
    /// # fn capabilities(&self) -> SourceCaps { SourceCaps::PROCESS }
    /// # async fn stop(&self) -> anyhow::Result<()> { Ok(()) }
    /// async fn start(
    ///     &self,
    ///     tx: mpsc::Sender<CollectionEvent>,
    ///     flag: Arc<AtomicBool>,
    /// ) -> anyhow::Result<()> {
    ///     self.start_with(SourceContext::from_flag(self.name(), tx, flag)).await
    /// }
    ///
    /// async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
    ///     ctx.shutdown().cancelled().await;
    ///     Ok(())
    /// }
    /// # }
    /// ```
    ///
    /// Outside a Tokio runtime there is no task, and only the token stops
    /// the source.
    pub fn from_flag(
        name: &'static str,
        out: mpsc::Sender<CollectionEvent>,
        flag: Arc<AtomicBool>,
    ) -> Self {
        let alive = Arc::new(());
        let ctx = Self {
            _bridge: Some(alive.clone()),
            ..Self::new(name, out).with_shutdown_flag(flag)
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(bridge_flag(
                ctx.shutdown_flag.clone(),
                ctx.shutdown.clone(),
                Arc::downgrade(&alive),
            ));
        }
        ctx
    }

    /// The source's name, as registered.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Where the source sends its events. `send(..).await` waits while the
    /// runtime's buffer is full.
    pub fn out(&self) -> &mpsc::Sender<CollectionEvent> {
        &self.out
    }

    /// The shutdown signal: `ctx.shutdown().cancelled().await` resolves
    /// once the runtime shuts down. Await it in a `select!` with `biased;`
    /// and this branch first, so a loop ends on shutdown by construction.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The reference API's flag, set by the runtime together with the token.
    pub fn shutdown_flag(&self) -> &Arc<AtomicBool> {
        &self.shutdown_flag
    }

    /// Whether shutdown was signalled (token cancelled or flag set).
    pub fn is_shutdown(&self) -> bool {
        self.shutdown.is_cancelled() || self.shutdown_flag.load(Ordering::SeqCst)
    }

    /// Says that what [`EventSource::health_check`] would answer has
    /// changed (a path found unwatchable, a rescan begun or ended): the
    /// runtime checks at once instead of at its next interval, so health
    /// never tells an old story for up to `health_check_interval`. Calls
    /// before the checker waits are kept (one check for all of them).
    pub fn health_changed(&self) {
        self.health.notify_one();
    }

    /// What [`health_changed`](Self::health_changed) wakes.
    pub(crate) fn health_signal(&self) -> Arc<Notify> {
        self.health.clone()
    }

    /// The sender and the flag, for the reference [`EventSource::start`].
    pub fn into_parts(self) -> (mpsc::Sender<CollectionEvent>, Arc<AtomicBool>) {
        (self.out, self.shutdown_flag)
    }
}

/// Cancels `token` once `flag` is set; ends when the token is cancelled or
/// the context it serves is gone.
async fn bridge_flag(flag: Arc<AtomicBool>, token: CancellationToken, alive: Weak<()>) {
    let mut tick = tokio::time::interval(FLAG_BRIDGE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => return,
            _ = tick.tick() => {
                if flag.load(Ordering::SeqCst) {
                    token.cancel();
                    return;
                }
                if alive.strong_count() == 0 {
                    return;
                }
            }
        }
    }
}

/// Where a source sends its events (the `tx` of [`EventSource::start`]).
pub type EventSender = mpsc::Sender<CollectionEvent>;

/// The reference API's shutdown signal (the flag of [`EventSource::start`]).
pub type ShutdownFlag = Arc<AtomicBool>;

/// [`EventSource::start`] for a source that implements
/// [`start_with`](EventSource::start_with): runs it with a context whose
/// token is cancelled once `flag` is set ([`SourceContext::from_flag`]).
///
/// ```
/// # use collector_core::source::{start_from_flag, EventSender, ShutdownFlag};
/// # use collector_core::{EventSource, SourceCaps, SourceContext};
/// # struct Mine;
/// # #[async_trait::async_trait]
/// # impl EventSource for Mine {
/// # fn name(&self) -> &'static str { "mine" }
/// # fn capabilities(&self) -> SourceCaps { SourceCaps::PROCESS }
/// # async fn stop(&self) -> anyhow::Result<()> { Ok(()) }
/// async fn start(&self, tx: EventSender, flag: ShutdownFlag) -> anyhow::Result<()> {
///     start_from_flag(self, tx, flag).await
/// }
///
/// async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
///     ctx.shutdown().cancelled().await;
///     Ok(())
/// }
/// # }
/// ```
///
/// # Errors
/// What `start_with` returns.
pub async fn start_from_flag<S: EventSource + ?Sized>(
    source: &S,
    tx: EventSender,
    flag: ShutdownFlag,
) -> anyhow::Result<()> {
    let ctx = SourceContext::from_flag(source.name(), tx, flag);
    source.start_with(ctx).await
}

/// Awaits `fut` unless `token` is cancelled first: `None` once it is, also
/// when both are ready (the token is polled first, as in a `biased`
/// `select!` with its branch first). A loop written with it ends on
/// shutdown by construction.
///
/// ```
/// use collector_core::source::unless_cancelled;
/// use tokio_util::sync::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let token = CancellationToken::new();
/// assert_eq!(unless_cancelled(&token, async { 1 }).await, Some(1));
/// token.cancel();
/// assert_eq!(unless_cancelled(&token, async { 1 }).await, None);
/// # }
/// ```
///
/// # Cancel safety
/// As `fut`.
pub async fn unless_cancelled<F: Future>(token: &CancellationToken, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = token.cancelled() => None,
        out = fut => Some(out),
    }
}

/// A producer of [`CollectionEvent`]s: the one trait a collector implements.
///
/// # Contract
///
/// The [`Collector`](crate::Collector) runtime calls
/// [`start_with`](Self::start_with) once, in its own task, and lets it run
/// for as long as the collector runs; no startup timeout cancels it. At
/// shutdown it cancels the context's token and sets its flag, both. A
/// source:
///
/// - sends events on `tx` (the context's [`out`](SourceContext::out));
///   `tx.send(..).await` waits when the runtime's buffer is full
///   (backpressure). A source that prefers `try_send` must count what it
///   could not send and report it (for example through
///   [`health_check`](Self::health_check));
/// - returns soon after shutdown is signalled or `tx` is closed. The
///   runtime also calls [`stop`](Self::stop) at shutdown, and aborts a
///   source still running at the shutdown deadline;
/// - treats a failed read as an event to count, not a reason to return: an
///   `Err` from `start` marks the source failed (the rest of the runtime goes
///   on).
///
/// A source written against the reference API implements only
/// [`start`](Self::start) and watches `shutdown_signal`; the default
/// `start_with` sets that flag the moment the token is cancelled. A new
/// source should implement `start_with` and await
/// [`SourceContext::shutdown`] instead of polling a flag, and implement
/// `start` with [`start_from_flag`].
///
/// `collector_core::testing` checks a source against this contract.
#[async_trait]
pub trait EventSource: Send + Sync {
    /// A unique, stable name (used in logs, metrics and health).
    fn name(&self) -> &'static str;

    /// What this source collects.
    fn capabilities(&self) -> SourceCaps;

    /// Collects until `shutdown_signal` is set or `tx` closes (the reference
    /// API; see [`start_with`](Self::start_with)).
    ///
    /// # Errors
    /// Returning an error marks the source failed in health; it is logged and
    /// counted and does not affect other sources.
    async fn start(
        &self,
        tx: mpsc::Sender<CollectionEvent>,
        shutdown_signal: Arc<AtomicBool>,
    ) -> anyhow::Result<()>;

    /// Collects until the context's shutdown token is cancelled or its
    /// sender closes. This is what the runtime calls.
    ///
    /// The default runs [`start`](Self::start) with the context's sender and
    /// flag, and sets the flag as soon as the token is cancelled, so a
    /// source that only watches the flag stops on either.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        let token = ctx.shutdown().clone();
        let (tx, flag) = ctx.into_parts();
        // A task of its own turns the token into the flag: polled beside
        // `start`, the token would be polled again at every wake-up of a
        // busy source (each send into a full channel).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let watched = flag.clone();
            let watcher = rt.spawn(async move {
                token.cancelled().await;
                watched.store(true, Ordering::SeqCst);
            });
            let result = self.start(tx, flag).await;
            watcher.abort();
            return result;
        }
        let run = self.start(tx, flag.clone());
        tokio::pin!(run);
        tokio::select! {
            biased;
            r = &mut run => return r,
            () = token.cancelled() => flag.store(true, Ordering::SeqCst),
        }
        run.await
    }

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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    const fn assert_send_sync<T: Send + Sync>() {}
    const _: () = assert_send_sync::<SourceContext>();

    #[tokio::test(start_paused = true)]
    async fn a_flag_context_is_cancelled_once_the_flag_is_set() {
        let (tx, _rx) = mpsc::channel(1);
        let flag = Arc::new(AtomicBool::new(false));
        let ctx = SourceContext::from_flag("f", tx, flag.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!ctx.shutdown().is_cancelled());
        flag.store(true, Ordering::SeqCst);
        tokio::time::timeout(FLAG_BRIDGE_PERIOD * 2, ctx.shutdown().cancelled())
            .await
            .unwrap();
        assert!(ctx.is_shutdown());
    }

    #[tokio::test(start_paused = true)]
    async fn the_flag_bridge_ends_with_its_context() {
        let alive = Arc::new(());
        let token = CancellationToken::new();
        let bridge = tokio::spawn(bridge_flag(
            Arc::new(AtomicBool::new(false)),
            token.clone(),
            Arc::downgrade(&alive),
        ));
        drop(alive);
        tokio::time::timeout(FLAG_BRIDGE_PERIOD * 2, bridge)
            .await
            .unwrap()
            .unwrap();
        assert!(!token.is_cancelled());
    }
}
