//! The event bus: publish/subscribe between collectors, the trigger system
//! and analysis chains, with correlation metadata on every event.
//!
//! Without the `triggers` feature (the default) this module holds only
//! [`EventFilter`] and [`TopicPattern`], which filtered runtime subscriptions
//! and the IPC event stream use; everything else below needs the feature.
//!
//! - [`EventBus`]: the trait (publish, subscribe with an [`EventFilter`],
//!   unsubscribe, statistics, shutdown).
//! - [`LocalEventBus`]: the in-process implementation. It is built on the
//!   same fan-out as the [`Collector`](crate::Collector) runtime: each
//!   subscriber has its own bounded queue with the configured
//!   [`WhenFull`] policy, and every event is accounted for per subscriber
//!   (offered = delivered + dropped (full, closed, shutdown) + queued; an
//!   event a filter rejects is not offered). With `DropNewest` a slow
//!   subscriber loses events (counted) and never slows the others; with
//!   `Block` a publisher waits for room.
//! - [`BusEvent`]: a [`CollectionEvent`] with its [`CorrelationMetadata`],
//!   the name of its source and its topic.
//!
//! Events published one after another by one publisher reach each
//! subscriber in that order; the bus stamps each with a sequence number,
//! strictly increasing per bus.
//!
//! Every [`Collector`](crate::Collector) owns a `LocalEventBus` and
//! publishes every accepted event into it (only while it has subscribers);
//! reach it with [`CollectorHandle::bus`](crate::CollectorHandle::bus).
//!
//! ```
//! use collector_core::{
//!     BusEvent, CollectionEvent, CorrelationFilter, EventBus, EventBusConfig, EventFilter,
//!     EventKind, LocalEventBus, ProcessEvent,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let bus = LocalEventBus::new(EventBusConfig::default()).await?;
//! bus.start().await?;
//! let filter = EventFilter::new()
//!     .with_event_type(EventKind::Process)
//!     .with_correlation_filter(CorrelationFilter::by_pid(1234));
//! let mut sub = bus.subscribe(filter).await?;
//!
//! bus.publish(BusEvent::new("demo", CollectionEvent::Process(ProcessEvent::new(1, "init")))).await?;
//! bus.publish(BusEvent::new("demo", CollectionEvent::Process(ProcessEvent::new(1234, "sh")))).await?;
//! let got = sub.recv().await.unwrap();
//! assert_eq!(got.event.pid(), Some(1234));
//! assert_eq!(got.topic, "events.process.snapshot");
//! assert_eq!(bus.statistics().await.events_published, 2);
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "triggers")]
mod correlation;
mod filter;

pub use filter::{
    topic_of, EventFilter, FilterError, TopicPattern, MAX_TOPIC_LEN, MAX_TOPIC_SEGMENTS,
};

// The bus itself and its correlation: the `triggers` feature.
#[cfg(feature = "triggers")]
pub use {
    correlation::{
        new_correlation_id, CorrelationMetadata, MAX_CORRELATION_FIELD_LEN, MAX_CORRELATION_TAGS,
    },
    filter::CorrelationFilter,
};

#[cfg(feature = "triggers")]
pub(crate) use filter::analysis_str;

#[cfg(feature = "triggers")]
use {
    crate::config::WhenFull,
    crate::event::{CollectionEvent, EventValidationError},
    crate::metrics::{Counter, Registry},
    crate::subscription::{EventBatch, Mode, Routable, Subscribers, Subscription},
    crate::telemetry::SubscriberStats,
    async_trait::async_trait,
    serde::{Deserialize, Serialize},
    std::sync::atomic::{AtomicBool, AtomicU64, Ordering},
    std::sync::Arc,
    tokio_util::sync::CancellationToken,
};

/// A subscription to an event bus: [`Subscription::recv`] yields [`BusEvent`]s.
#[cfg(feature = "triggers")]
pub type BusSubscription = Subscription<BusEvent>;

/// An event on the bus.
#[cfg(feature = "triggers")]
#[derive(Debug, Clone, PartialEq)]
pub struct BusEvent {
    /// The event.
    pub event: CollectionEvent,
    /// How it relates to other events.
    pub correlation: CorrelationMetadata,
    /// The source or collector that published it.
    pub source: &'static str,
    /// Its topic, `events.<kind>.<detail>` unless the publisher chose one.
    pub topic: String,
}

#[cfg(feature = "triggers")]
impl BusEvent {
    /// Wraps `event` from `source` with fresh correlation metadata (a trigger
    /// request keeps its own `correlation_id`) and its derived topic.
    pub fn new(source: &'static str, event: CollectionEvent) -> Self {
        let correlation = match &event {
            CollectionEvent::TriggerRequest(t) if !t.correlation_id.is_empty() => {
                CorrelationMetadata::with_id(t.correlation_id.clone())
            }
            _ => CorrelationMetadata::new(),
        };
        Self {
            topic: topic_of(&event),
            event,
            correlation,
            source,
        }
    }

    with_setters! {
        /// Replaces the correlation metadata (the bus still sets `sequence`).
        with_correlation(correlation: CorrelationMetadata) { correlation = correlation }
        /// Replaces the topic; it must be a valid pattern without wildcards.
        with_topic(topic: impl Into<String>) { topic = topic.into() }
    }
}

#[cfg(feature = "triggers")]
impl Routable for BusEvent {
    fn passes(&self, filter: &EventFilter, source: &str) -> bool {
        filter.matches_parts(&self.event, Some(&self.topic), source)
            && filter.matches_correlation(&self.event, Some(&self.correlation))
    }
}

/// Errors of the event bus.
#[cfg(feature = "triggers")]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// Publishing before [`LocalEventBus::start`].
    #[error("the event bus is not started")]
    NotStarted,
    /// The bus was shut down.
    #[error("the event bus is shut down")]
    ShutDown,
    /// The event failed validation.
    #[error(transparent)]
    InvalidEvent(#[from] EventValidationError),
    /// The correlation metadata is out of bounds.
    #[error("invalid correlation metadata: field `{field}` {reason}")]
    InvalidCorrelation {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A topic is not a valid concrete topic.
    #[error("invalid topic {topic:?}")]
    InvalidTopic {
        /// The refused topic.
        topic: String,
    },
    /// No subscription with that id was ever made on this bus.
    #[error("no subscription with id {id}")]
    UnknownSubscription {
        /// The id asked for.
        id: u64,
    },
    /// The subscriber limit is reached.
    #[error("the limit of {max} subscribers is reached")]
    TooManySubscribers {
        /// The configured limit.
        max: usize,
    },
    /// The configuration is invalid.
    #[error("invalid event bus config: field `{field}` {reason}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Configuration of a [`LocalEventBus`].
#[cfg(feature = "triggers")]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct EventBusConfig {
    /// Events each subscriber's queue holds (about; queues hold batches).
    pub buffer_size: usize,
    /// The largest batch handed over at once.
    pub max_batch_size: usize,
    /// What a publisher does when a subscriber's queue is full.
    pub when_full: WhenFull,
    /// Upper bound on live subscribers.
    pub max_subscribers: usize,
}

#[cfg(feature = "triggers")]
impl Default for EventBusConfig {
    fn default() -> Self {
        Self {
            buffer_size: 1000,
            max_batch_size: 1,
            when_full: WhenFull::Block,
            max_subscribers: 1024,
        }
    }
}

#[cfg(feature = "triggers")]
impl EventBusConfig {
    with_setters! {
        /// Sets [`buffer_size`](Self::buffer_size).
        with_buffer_size(n: usize) { buffer_size = n }
        /// Sets [`when_full`](Self::when_full).
        with_when_full(w: WhenFull) { when_full = w }
        /// Sets [`max_batch_size`](Self::max_batch_size).
        with_max_batch_size(n: usize) { max_batch_size = n }
    }

    /// Checks the bounds.
    ///
    /// # Errors
    /// [`BusError::Config`] naming the field.
    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |field, reason| Err(BusError::Config { field, reason });
        if self.buffer_size == 0 {
            return bad("buffer_size", "must be positive");
        }
        if self.max_batch_size == 0 || self.max_batch_size > self.buffer_size {
            return bad("max_batch_size", "must be between 1 and buffer_size");
        }
        if self.max_subscribers == 0 {
            return bad("max_subscribers", "must be positive");
        }
        Ok(())
    }
}

/// What a bus has seen.
#[cfg(feature = "triggers")]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BusStatistics {
    /// Events accepted by `publish` (and from the runtime).
    pub events_published: u64,
    /// Events refused by `publish` (invalid event, correlation or topic).
    pub events_rejected: u64,
    /// Published events no live subscriber existed for.
    pub events_unrouted: u64,
    /// Live subscribers now.
    pub subscribers_live: usize,
    /// Every subscriber ever made, with its counters.
    pub subscribers: Vec<SubscriberStats>,
}

/// Publish/subscribe of [`BusEvent`]s.
#[cfg(feature = "triggers")]
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Publishes one event to every subscriber whose filter accepts it.
    /// Returns its sequence number.
    ///
    /// # Cancel safety
    /// Not cancel safe with `WhenFull::Block`: a cancelled publish may have
    /// reached some subscribers and not others.
    async fn publish(&self, event: BusEvent) -> Result<u64, BusError>;

    /// Subscribes to the events `filter` accepts, from now on.
    async fn subscribe(&self, filter: EventFilter) -> Result<BusSubscription, BusError>;

    /// Ends a subscription: its stream yields what is queued, then `None`.
    async fn unsubscribe(&self, id: u64) -> Result<(), BusError>;

    /// Counters of the bus and of every subscriber.
    async fn statistics(&self) -> BusStatistics;

    /// Refuses further publications and ends every stream after what is
    /// queued; blocked publishers give up (counted as dropped at shutdown).
    async fn shutdown(&self) -> Result<(), BusError>;
}

#[cfg(feature = "triggers")]
struct BusInner {
    config: EventBusConfig,
    subscribers: Subscribers<BusEvent>,
    started: AtomicBool,
    closed: AtomicBool,
    shutdown: CancellationToken,
    sequence: AtomicU64,
    published: Counter,
    rejected: Counter,
    unrouted: Counter,
}

/// The in-process [`EventBus`]. Cheap to clone (clones share the bus).
#[cfg(feature = "triggers")]
#[derive(Clone)]
pub struct LocalEventBus {
    inner: Arc<BusInner>,
}

#[cfg(feature = "triggers")]
debug_fields!(LocalEventBus { config = inner.config });

#[cfg(feature = "triggers")]
impl LocalEventBus {
    /// Validates `config` and builds a bus; call [`start`](Self::start)
    /// before publishing.
    ///
    /// # Errors
    /// [`BusError::Config`].
    #[allow(clippy::unused_async)] // the reference API awaits it
    pub async fn new(config: EventBusConfig) -> Result<Self, BusError> {
        Self::try_new(config)
    }

    /// As [`new`](Self::new), without `async`.
    ///
    /// # Errors
    /// [`BusError::Config`].
    pub fn try_new(config: EventBusConfig) -> Result<Self, BusError> {
        config.validate()?;
        Ok(Self::build(config))
    }

    pub(crate) fn build(config: EventBusConfig) -> Self {
        let subscribers = Subscribers::new(
            config.buffer_size.max(1),
            config.max_batch_size.max(1),
            config.when_full,
        );
        Self {
            inner: Arc::new(BusInner {
                config,
                subscribers,
                started: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                sequence: AtomicU64::new(0),
                published: Counter::new(),
                rejected: Counter::new(),
                unrouted: Counter::new(),
            }),
        }
    }

    /// Starts accepting publications.
    ///
    /// # Errors
    /// [`BusError::ShutDown`] after [`EventBus::shutdown`].
    #[allow(clippy::unused_async)] // the reference API awaits it
    pub async fn start(&self) -> Result<(), BusError> {
        self.start_now()
    }

    pub(crate) fn start_now(&self) -> Result<(), BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::ShutDown);
        }
        self.inner.started.store(true, Ordering::Release);
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &EventBusConfig {
        &self.inner.config
    }

    /// Whether any subscriber is live.
    pub fn has_subscribers(&self) -> bool {
        self.inner.subscribers.has_live()
    }

    fn check_open(&self) -> Result<(), BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::ShutDown);
        }
        if !self.inner.started.load(Ordering::Acquire) {
            return Err(BusError::NotStarted);
        }
        Ok(())
    }

    fn admit(&self, event: &mut BusEvent) -> Result<(), BusError> {
        let checked = event
            .event
            .validate()
            .map_err(BusError::from)
            .and_then(|()| event.correlation.validate())
            .and_then(|()| match TopicPattern::new(&event.topic) {
                Ok(p) if !p.as_str().contains(['*', '+', '#']) => Ok(()),
                _ => Err(BusError::InvalidTopic {
                    topic: event.topic.chars().take(MAX_TOPIC_LEN).collect(),
                }),
            });
        if let Err(err) = checked {
            self.inner.rejected.inc();
            return Err(err);
        }
        event.correlation.sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(())
    }

    /// Publishes a batch from one source, in order. Returns the sequence
    /// number of the last event (0 for an empty batch).
    ///
    /// # Errors
    /// As [`EventBus::publish`]; nothing is published if any event is
    /// invalid.
    pub async fn publish_batch(
        &self,
        source: &'static str,
        mut events: Vec<BusEvent>,
    ) -> Result<u64, BusError> {
        self.check_open()?;
        let mut last = 0;
        for e in &mut events {
            e.source = source;
            self.admit(e)?;
            last = e.correlation.sequence;
        }
        let size = self.inner.config.max_batch_size;
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let chunk: Vec<BusEvent> = events.by_ref().take(size).collect();
            self.dispatch(chunk, source, Mode::Normal, &self.inner.shutdown.clone())
                .await;
        }
        Ok(last)
    }

    /// Hands events from the runtime's pump to the bus subscribers.
    pub(crate) async fn dispatch_from_runtime(
        &self,
        events: &[CollectionEvent],
        source: &'static str,
        mode: Mode,
        deadline: &CancellationToken,
    ) -> bool {
        let batch: Vec<BusEvent> = events
            .iter()
            .map(|e| {
                let mut b = BusEvent::new(source, e.clone());
                b.correlation.sequence = self.inner.sequence.fetch_add(1, Ordering::Relaxed) + 1;
                b
            })
            .collect();
        self.dispatch(batch, source, mode, deadline).await
    }

    async fn dispatch(
        &self,
        events: Vec<BusEvent>,
        source: &'static str,
        mode: Mode,
        deadline: &CancellationToken,
    ) -> bool {
        let n = events.len();
        self.inner.published.add_usize(n);
        let routed = self
            .inner
            .subscribers
            .dispatch(EventBatch::new(events, source), mode, deadline)
            .await
            .is_some();
        if !routed {
            self.inner.unrouted.add_usize(n);
        }
        routed
    }

    /// Ends every stream (after what is queued) without refusing
    /// publications; used by the runtime at the end of its shutdown.
    pub(crate) fn close_streams(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        self.inner.subscribers.close();
    }

    /// Subscribes without `async` (see [`EventBus::subscribe`]).
    ///
    /// # Errors
    /// [`BusError::ShutDown`], [`BusError::TooManySubscribers`].
    pub fn subscribe_now(&self, filter: EventFilter) -> Result<BusSubscription, BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::ShutDown);
        }
        let live = self.inner.subscribers.live_count();
        if live >= self.inner.config.max_subscribers {
            return Err(BusError::TooManySubscribers {
                max: self.inner.config.max_subscribers,
            });
        }
        Ok(self.inner.subscribers.subscribe_filtered(Some(filter)))
    }

    /// Registers the bus's counters and its subscribers' (now and later)
    /// in `registry`, under the stages `bus` and `bus_subscriber`. A
    /// [`Collector`](crate::Collector) does this for its own bus.
    pub fn register_metrics(&self, registry: &Registry) {
        let stage = [("stage", "bus")];
        registry.register_counter(
            "daemoneye_events_published_total",
            "Events published into an event bus.",
            &stage,
            &self.inner.published,
        );
        registry.register_counter(
            "daemoneye_events_rejected_total",
            "Events an event bus refused (invalid event, correlation or topic).",
            &stage,
            &self.inner.rejected,
        );
        registry.register_counter(
            "daemoneye_events_unrouted_total",
            "Events published while no subscriber existed.",
            &stage,
            &self.inner.unrouted,
        );
        self.inner
            .subscribers
            .register_metrics(registry, "bus_subscriber");
    }

    /// Counters without `async` (see [`EventBus::statistics`]).
    pub fn statistics_now(&self) -> BusStatistics {
        BusStatistics {
            events_published: self.inner.published.get(),
            events_rejected: self.inner.rejected.get(),
            events_unrouted: self.inner.unrouted.get(),
            subscribers_live: self.inner.subscribers.live_count(),
            subscribers: self.inner.subscribers.stats(),
        }
    }
}

#[cfg(feature = "triggers")]
#[async_trait]
impl EventBus for LocalEventBus {
    async fn publish(&self, mut event: BusEvent) -> Result<u64, BusError> {
        self.check_open()?;
        self.admit(&mut event)?;
        let seq = event.correlation.sequence;
        let source = event.source;
        self.dispatch(
            vec![event],
            source,
            Mode::Normal,
            &self.inner.shutdown.clone(),
        )
        .await;
        Ok(seq)
    }

    async fn subscribe(&self, filter: EventFilter) -> Result<BusSubscription, BusError> {
        self.subscribe_now(filter)
    }

    async fn unsubscribe(&self, id: u64) -> Result<(), BusError> {
        if self.inner.subscribers.remove(id) || self.inner.subscribers.knows(id) {
            Ok(())
        } else {
            Err(BusError::UnknownSubscription { id })
        }
    }

    async fn statistics(&self) -> BusStatistics {
        self.statistics_now()
    }

    async fn shutdown(&self) -> Result<(), BusError> {
        self.close_streams();
        Ok(())
    }
}

#[cfg(all(test, feature = "triggers"))]
mod tests;
