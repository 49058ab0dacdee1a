//! A source that looks every interval: the loop every polling collector
//! needs, written once.
//!
//! A collector whose kernel interface is a look rather than a stream
//! (`sock_diag` dumps, `/proc` samples) implements [`Poll`]: one blocking
//! look that appends events. [`Polled`] makes it an [`EventSource`]: it runs
//! each look on Tokio's blocking pool every [`Polled::interval`] (the poller
//! moved in and out, so no lock is held across an `.await`), sends what it
//! found with the runtime's backpressure, ends promptly at shutdown (between
//! and during sends), counts looks, failures and events, and reports the
//! last failure in [`EventSource::health_check`] until a look succeeds.
//!
//! ```
//! use collector_core::poll::{Poll, Polled};
//! use collector_core::{CollectionEvent, SourceCaps};
//! use std::time::Duration;
//!
//! struct Ticks(u32);
//!
//! impl Poll for Ticks {
//!     fn poll(&mut self, _out: &mut Vec<CollectionEvent>) -> anyhow::Result<()> {
//!         self.0 += 1;
//!         Ok(())
//!     }
//! }
//!
//! let source = Polled::new("ticks", SourceCaps::SYSTEM_WIDE, Duration::from_secs(5), Ticks(0));
//! assert_eq!(source.counters().polls.get(), 0);
//! ```

use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;

use crate::common::lock;
use crate::metrics::{Counter, Registry};
use crate::source::{start_from_flag, EventSender, ShutdownFlag};
use crate::{CollectionEvent, EventSource, SourceCaps, SourceContext};

/// One look at the kernel: the part of a polling collector that is its own.
pub trait Poll: Send + 'static {
    /// Looks once, appending what it saw to `out` (empty on entry). Runs on
    /// the blocking pool: it may read files and sockets.
    ///
    /// # Errors
    /// A look that failed: counted, logged, and reported by the source's
    /// health until a later look succeeds; the source keeps looking.
    fn poll(&mut self, out: &mut Vec<CollectionEvent>) -> anyhow::Result<()>;
}

/// The shortest interval a polling collector accepts: below it, looking
/// costs more than it can tell.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Checks a polling collector's `interval` setting against [`MIN_INTERVAL`].
///
/// # Errors
/// [`ConfigError::Invalid`](crate::ConfigError::Invalid) naming `interval`.
pub fn validate_interval(interval: Duration) -> Result<(), crate::ConfigError> {
    if interval < MIN_INTERVAL {
        return Err(crate::ConfigError::Invalid {
            field: "interval",
            reason: format!("must be at least {} ms", MIN_INTERVAL.as_millis()),
        });
    }
    Ok(())
}

/// What a [`Polled`] source counts (shared: clones see the same values).
#[derive(Debug, Clone, Default)]
pub struct PollCounters {
    /// Looks that succeeded.
    pub polls: Counter,
    /// Looks that failed.
    pub polls_failed: Counter,
    /// Events sent to the runtime.
    pub emitted: Counter,
}

impl PollCounters {
    /// Registers the counters for `/metrics`, labelled `source="<name>"`.
    pub fn register_metrics(&self, registry: &Registry, name: &str) {
        registry.register_counters(
            &[("source", name)],
            &[
                (
                    "daemoneye_collection_cycles_total",
                    "Full collections (samples) completed.",
                    &self.polls,
                ),
                (
                    "daemoneye_collections_failed_total",
                    "Full collections (samples) that failed.",
                    &self.polls_failed,
                ),
                (
                    "daemoneye_events_emitted_total",
                    "Events a source sent to the runtime.",
                    &self.emitted,
                ),
            ],
        );
    }
}

/// A [`Poll`] as an [`EventSource`]. See the [module docs](self).
pub struct Polled<P> {
    name: &'static str,
    caps: SourceCaps,
    interval: Duration,
    poller: tokio::sync::Mutex<Option<P>>,
    counters: PollCounters,
    last_error: Mutex<Option<String>>,
}

impl<P> std::fmt::Debug for Polled<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Polled")
            .field("name", &self.name)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl<P: Poll> Polled<P> {
    /// `poller` looked through every `interval` (the first look at once),
    /// as the source `name` with `caps`.
    pub fn new(name: &'static str, caps: SourceCaps, interval: Duration, poller: P) -> Self {
        Self {
            name,
            caps,
            interval,
            poller: tokio::sync::Mutex::new(Some(poller)),
            counters: PollCounters::default(),
            last_error: Mutex::new(None),
        }
    }

    /// The same, counting into `counters` (shared with whoever reports
    /// them beside the collector's own).
    #[must_use]
    pub fn with_counters(mut self, counters: PollCounters) -> Self {
        self.counters = counters;
        self
    }

    /// The time between looks.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The counters (shared: clones see the same values).
    pub fn counters(&self) -> PollCounters {
        self.counters.clone()
    }

    /// Notes the last look's failure (or none); whether health's answer
    /// changed with it.
    fn set_error(&self, e: Option<String>) -> bool {
        let mut last = lock(&self.last_error);
        let changed = *last != e;
        *last = e;
        changed
    }
}

#[async_trait]
impl<P: Poll> EventSource for Polled<P> {
    async fn start_with(&self, ctx: SourceContext) -> anyhow::Result<()> {
        let mut poller = self
            .poller
            .lock()
            .await
            .take()
            .with_context(|| format!("{} is already running", self.name))?;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Vec::new();
        let result = 'run: loop {
            tokio::select! {
                biased;
                () = ctx.shutdown().cancelled() => break 'run Ok(()),
                _ = tick.tick() => {}
            }
            let joined = tokio::task::spawn_blocking(move || {
                out.clear();
                let looked = poller.poll(&mut out);
                (poller, out, looked)
            })
            .await;
            let looked;
            (poller, out, looked) = match joined {
                Ok(parts) => parts,
                // The poller is lost with its task: this source is done.
                Err(e) => return Err(anyhow::anyhow!("{} failed: {e}", self.name)),
            };
            let changed = match looked {
                Ok(()) => {
                    self.counters.polls.inc();
                    self.set_error(None)
                }
                Err(e) => {
                    self.counters.polls_failed.inc();
                    tracing::warn!(source = self.name, error = %format!("{e:#}"), "look failed");
                    self.set_error(Some(format!("the last look failed: {e:#}")))
                }
            };
            if changed {
                ctx.health_changed();
            }
            for e in out.drain(..) {
                let sent = tokio::select! {
                    biased;
                    () = ctx.shutdown().cancelled() => break 'run Ok(()),
                    sent = ctx.out().send(e) => sent,
                };
                if sent.is_err() {
                    break 'run Ok(()); // the runtime is gone
                }
                self.counters.emitted.inc();
            }
        };
        *self.poller.lock().await = Some(poller);
        result
    }

    async fn start(&self, tx: EventSender, flag: ShutdownFlag) -> anyhow::Result<()> {
        start_from_flag(self, tx, flag).await
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn capabilities(&self) -> SourceCaps {
        self.caps
    }

    async fn stop(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn health_check(&self) -> anyhow::Result<()> {
        let e = lock(&self.last_error).clone();
        match e {
            Some(e) => Err(anyhow::anyhow!(e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{NetworkEvent, NetworkProtocol};
    use std::sync::Arc;

    /// Fails every other look; otherwise sends one event numbered by look.
    struct Flaky(u64);

    impl Poll for Flaky {
        fn poll(&mut self, out: &mut Vec<CollectionEvent>) -> anyhow::Result<()> {
            self.0 += 1;
            if self.0 % 2 == 0 {
                anyhow::bail!("look {} failed", self.0);
            }
            out.push(CollectionEvent::Network(NetworkEvent {
                connection_id: self.0,
                protocol: NetworkProtocol::Udp,
                ..NetworkEvent::default()
            }));
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn looks_every_interval_counts_failures_and_stops_at_shutdown() {
        let source = Arc::new(Polled::new(
            "flaky",
            SourceCaps::NETWORK,
            Duration::from_secs(5),
            Flaky(0),
        ));
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let ctx = SourceContext::new("flaky", tx);
        let token = ctx.shutdown().clone();
        let running = tokio::spawn({
            let source = Arc::clone(&source);
            async move { source.start_with(ctx).await }
        });
        // Looks 1 and 3 send; look 2 fails between them.
        let first = rx.recv().await.unwrap();
        assert!(matches!(first, CollectionEvent::Network(ref n) if n.connection_id == 1));
        let third = rx.recv().await.unwrap();
        assert!(matches!(third, CollectionEvent::Network(ref n) if n.connection_id == 3));
        let c = source.counters();
        assert_eq!(
            (c.polls.get(), c.polls_failed.get(), c.emitted.get()),
            (2, 1, 2)
        );
        assert!(source.health_check().await.is_ok(), "look 3 cleared it");
        token.cancel();
        running.await.unwrap().unwrap();
        // The poller is back: it can run again.
        assert!(source.poller.lock().await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_look_is_in_health_until_one_succeeds() {
        struct Broken;
        impl Poll for Broken {
            fn poll(&mut self, _: &mut Vec<CollectionEvent>) -> anyhow::Result<()> {
                anyhow::bail!("no kernel today")
            }
        }
        let source = Arc::new(Polled::new(
            "broken",
            SourceCaps::NETWORK,
            Duration::from_secs(1),
            Broken,
        ));
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let ctx = SourceContext::new("broken", tx);
        let token = ctx.shutdown().clone();
        let running = tokio::spawn({
            let source = Arc::clone(&source);
            async move { source.start_with(ctx).await }
        });
        while source.counters().polls_failed.get() == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let err = source.health_check().await.unwrap_err().to_string();
        assert!(err.contains("no kernel today"), "{err}");
        token.cancel();
        running.await.unwrap().unwrap();
    }
}
