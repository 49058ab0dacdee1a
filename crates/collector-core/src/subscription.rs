//! Fan-out from the runtime to subscribers: bounded queues with a
//! [`WhenFull`] policy and exact drop accounting.

use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::EventFilter;
use crate::common::{lock, read, write};
use crate::config::WhenFull;
use crate::event::CollectionEvent;
use crate::metrics::Registry;
use crate::telemetry::{SubscriberCounters, SubscriberStats};

/// A batch of events from one source, shared by every subscriber it went to.
///
/// `T` is [`CollectionEvent`] for [`Subscription`]s of the runtime and
/// [`BusEvent`](crate::bus::BusEvent) for subscriptions of an event bus.
#[derive(Debug)]
pub struct EventBatch<T = CollectionEvent> {
    events: Arc<Vec<T>>,
    start: usize,
    source: &'static str,
}

impl<T> Clone for EventBatch<T> {
    fn clone(&self) -> Self {
        Self {
            events: self.events.clone(),
            start: self.start,
            source: self.source,
        }
    }
}

impl<T> EventBatch<T> {
    pub(crate) fn new(events: Vec<T>, source: &'static str) -> Self {
        Self {
            events: Arc::new(events),
            start: 0,
            source,
        }
    }

    /// The name of the source that emitted these events.
    pub fn source(&self) -> &'static str {
        self.source
    }
}

impl<T> Deref for EventBatch<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.events.get(self.start..).unwrap_or_default()
    }
}

/// Events not yet handed out by [`Subscription::recv`].
enum Pending<T> {
    /// Nobody else holds the batch: events are moved out, not cloned.
    Owned(std::vec::IntoIter<T>, &'static str),
    Shared(EventBatch<T>),
}

/// A subscriber's end of the event stream.
///
/// Obtained from [`CollectorHandle::subscribe`](crate::CollectorHandle::subscribe).
/// The stream ends (`None`) once the runtime has shut down and everything
/// queued for this subscriber has been taken. Dropping a subscription counts
/// the events still queued for it as `events_dropped_closed`.
pub struct Subscription<T = CollectionEvent> {
    rx: mpsc::Receiver<Queued<T>>,
    counters: Arc<SubscriberCounters>,
    pending: Option<Pending<T>>,
}

debug_fields!(Subscription<T> { id = counters.id });

impl<T> Subscription<T> {
    /// This subscription's id, as in [`SubscriberStats::id`].
    pub fn id(&self) -> u64 {
        self.counters.id
    }

    /// This subscription's counters.
    pub fn stats(&self) -> SubscriberStats {
        self.counters.snapshot()
    }

    /// The next batch of events (from one source, in that source's order).
    ///
    /// # Cancel safety
    /// Cancel safe: a batch is counted as delivered only when returned.
    pub async fn recv_batch(&mut self) -> Option<EventBatch<T>> {
        let batch = match self.pending.take() {
            Some(Pending::Shared(b)) => b,
            Some(Pending::Owned(rest, source)) => EventBatch::new(rest.collect(), source),
            None => self.rx.recv().await?.take(),
        };
        self.counters.delivered.add_usize(batch.len());
        Some(batch)
    }
}

impl<T: Clone> Subscription<T> {
    /// The next event.
    ///
    /// Moves events out of a batch no other subscriber shares; clones them
    /// otherwise. [`recv_batch`](Self::recv_batch) never clones.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            match &mut self.pending {
                Some(Pending::Owned(iter, _)) => {
                    if let Some(event) = iter.next() {
                        self.counters.delivered.inc();
                        return Some(event);
                    }
                    self.pending = None;
                }
                Some(Pending::Shared(batch)) => {
                    if let Some(event) = batch.first().cloned() {
                        batch.start += 1;
                        self.counters.delivered.inc();
                        return Some(event);
                    }
                    self.pending = None;
                }
                None => {
                    let batch = self.rx.recv().await?.take();
                    self.pending = Some(match Arc::try_unwrap(batch.events) {
                        Ok(mut events) => {
                            events.drain(..batch.start);
                            Pending::Owned(events.into_iter(), batch.source)
                        }
                        Err(events) => Pending::Shared(EventBatch { events, ..batch }),
                    });
                }
            }
        }
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.rx.close();
        let lost = match self.pending.take() {
            Some(Pending::Owned(rest, _)) => rest.len(),
            Some(Pending::Shared(b)) => b.len(),
            None => 0,
        };
        self.counters.dropped_closed.add_usize(lost);
        // Queued batches count themselves as dropped when they are freed,
        // including one a pump sends through a permit it reserved just
        // before `close`.
        while self.rx.try_recv().is_ok() {}
    }
}

/// A batch in a subscriber's queue; if it is freed without being received
/// it counts itself as `dropped_closed`.
struct Queued<T> {
    batch: Option<EventBatch<T>>,
    counters: Arc<SubscriberCounters>,
}

impl<T> Queued<T> {
    fn take(mut self) -> EventBatch<T> {
        self.batch
            .take()
            .unwrap_or_else(|| EventBatch::new(Vec::new(), ""))
    }
}

impl<T> Drop for Queued<T> {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            self.counters.dropped_closed.add_usize(batch.len());
        }
    }
}

struct Slot<T> {
    tx: mpsc::Sender<Queued<T>>,
    counters: Arc<SubscriberCounters>,
    /// `None`: every event. An event the filter rejects is not offered.
    filter: Option<Arc<EventFilter>>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
            filter: self.filter.clone(),
        }
    }
}

/// An item a [`Subscribers`] fan-out can route through an [`EventFilter`].
pub(crate) trait Routable: Clone + Send + Sync + 'static {
    /// Whether `filter` lets this item, published by `source`, through.
    fn passes(&self, filter: &EventFilter, source: &str) -> bool;
}

impl Routable for CollectionEvent {
    fn passes(&self, filter: &EventFilter, source: &str) -> bool {
        filter.matches_event(self, source)
    }
}

/// Whether a dispatch may wait for room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Apply the configured policy; give up at the hard deadline.
    Normal,
    /// The deadline has passed: queue what fits, count the rest.
    Final,
}

/// The set of live subscribers, read by every pump on every batch.
pub(crate) struct Subscribers<T = CollectionEvent> {
    live: RwLock<Arc<[Slot<T>]>>,
    all: Mutex<Vec<Arc<SubscriberCounters>>>,
    /// Where each subscriber's counters are registered, and its stage label.
    metrics: OnceLock<(Registry, &'static str)>,
    next_id: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    queue_batches: usize,
    when_full: WhenFull,
}

impl<T: Routable> Subscribers<T> {
    pub(crate) fn new(buffer_events: usize, batch_events: usize, when_full: WhenFull) -> Self {
        Self {
            live: RwLock::new(Arc::from(Vec::new())),
            all: Mutex::new(Vec::new()),
            metrics: OnceLock::new(),
            next_id: std::sync::atomic::AtomicU64::new(1),
            closed: std::sync::atomic::AtomicBool::new(false),
            // Batches hold at most `batch_events`, so this bounds the queue at
            // about `buffer_events` (+ one batch) events.
            queue_batches: buffer_events.div_ceil(batch_events.max(1)).max(1),
            when_full,
        }
    }

    fn snapshot(&self) -> Arc<[Slot<T>]> {
        read(&self.live).clone()
    }

    pub(crate) fn subscribe(&self) -> Subscription<T> {
        self.subscribe_filtered(None)
    }

    /// Whether any subscriber is live (cheap; for skipping work nobody reads).
    #[cfg(feature = "triggers")] // used by the event bus only
    pub(crate) fn has_live(&self) -> bool {
        self.live_count() > 0
    }

    /// The number of live subscribers.
    #[cfg(feature = "triggers")] // used by the event bus only
    pub(crate) fn live_count(&self) -> usize {
        read(&self.live).len()
    }

    /// Subscribes with an optional filter.
    pub(crate) fn subscribe_filtered(&self, filter: Option<EventFilter>) -> Subscription<T> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let counters = Arc::new(SubscriberCounters::new(id));
        let (tx, rx) = mpsc::channel(self.queue_batches);
        {
            let mut all = lock(&self.all);
            if let Some((registry, stage)) = self.metrics.get() {
                counters.register(registry, stage);
            }
            all.push(counters.clone());
        }
        let mut live = write(&self.live);
        // After shutdown the sender is dropped at once: the stream is empty.
        if !self.closed.load(std::sync::atomic::Ordering::Acquire) {
            let mut slots = live.to_vec();
            slots.push(Slot {
                tx,
                counters: counters.clone(),
                filter: filter.map(Arc::new),
            });
            *live = Arc::from(slots);
        }
        Subscription {
            rx,
            counters,
            pending: None,
        }
    }

    /// Registers every subscriber's counters, now and from now on, in
    /// `registry` under the label `stage`. Only the first call counts.
    pub(crate) fn register_metrics(&self, registry: &Registry, stage: &'static str) {
        let all = lock(&self.all);
        if self.metrics.set((registry.clone(), stage)).is_ok() {
            for c in all.iter() {
                c.register(registry, stage);
            }
        }
    }

    /// Removes a live subscriber; its stream ends after what is queued.
    /// Returns whether it was live.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut live = write(&self.live);
        let before = live.len();
        let slots: Vec<Slot<T>> = live
            .iter()
            .filter(|s| s.counters.id != id)
            .cloned()
            .collect();
        let removed = slots.len() != before;
        *live = Arc::from(slots);
        removed
    }

    /// Whether a subscription with this id was ever made here.
    #[cfg(feature = "triggers")] // used by the event bus only
    pub(crate) fn knows(&self, id: u64) -> bool {
        lock(&self.all).iter().any(|c| c.id == id)
    }

    /// Ends every stream: subscribers get what is queued, then `None`.
    pub(crate) fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        *write(&self.live) = Arc::from(Vec::new());
    }

    pub(crate) fn stats(&self) -> Vec<SubscriberStats> {
        lock(&self.all).iter().map(|c| c.snapshot()).collect()
    }

    /// Offers `batch` to every live subscriber whose filter lets at least
    /// one of its events through (only those events are offered). Returns
    /// `None` when there was no live subscriber (the events were unrouted),
    /// otherwise the number of subscribers events were offered to.
    ///
    /// # Cancel safety
    /// Not cancel safe; it ends early on its own when `deadline` fires.
    pub(crate) async fn dispatch(
        &self,
        batch: EventBatch<T>,
        mode: Mode,
        deadline: &CancellationToken,
    ) -> Option<usize> {
        let slots = self.snapshot();
        if slots.is_empty() {
            return None;
        }
        let mut offered_to = 0;
        for slot in slots.iter() {
            let batch = match &slot.filter {
                None => batch.clone(),
                Some(filter) => match filtered(&batch, filter) {
                    Some(b) => b,
                    None => continue,
                },
            };
            let n = batch.len();
            offered_to += 1;
            slot.counters.offered.add_usize(n);
            let blocking = mode == Mode::Normal && self.when_full == WhenFull::Block;
            let permit = if blocking {
                tokio::select! {
                    biased;
                    () = deadline.cancelled() => {
                        // Give it one last non-blocking chance below.
                        slot.tx.try_reserve().map_err(|e| match e {
                            mpsc::error::TrySendError::Full(()) => Lost::Shutdown,
                            mpsc::error::TrySendError::Closed(()) => Lost::Closed,
                        })
                    }
                    r = slot.tx.reserve() => r.map_err(|_| Lost::Closed),
                }
            } else {
                slot.tx.try_reserve().map_err(|e| match e {
                    mpsc::error::TrySendError::Full(()) if mode == Mode::Final => Lost::Shutdown,
                    mpsc::error::TrySendError::Full(()) => Lost::Full,
                    mpsc::error::TrySendError::Closed(()) => Lost::Closed,
                })
            };
            match permit {
                Ok(permit) => permit.send(Queued {
                    batch: Some(batch),
                    counters: slot.counters.clone(),
                }),
                Err(Lost::Full) => slot.counters.dropped_full.add_usize(n),
                Err(Lost::Shutdown) => slot.counters.dropped_shutdown.add_usize(n),
                Err(Lost::Closed) => {
                    slot.counters.dropped_closed.add_usize(n);
                    self.remove(slot.counters.id);
                }
            }
        }
        Some(offered_to)
    }
}

/// The part of `batch` that `filter` lets through: the batch itself (shared,
/// not copied) when all of it passes, `None` when none of it does.
fn filtered<T: Routable>(batch: &EventBatch<T>, filter: &EventFilter) -> Option<EventBatch<T>> {
    let source = batch.source;
    let Some(first_out) = batch.iter().position(|e| !e.passes(filter, source)) else {
        return Some(batch.clone());
    };
    let mut kept: Vec<T> = batch.get(..first_out).unwrap_or_default().to_vec();
    kept.extend(
        batch
            .get(first_out + 1..)
            .unwrap_or_default()
            .iter()
            .filter(|e| e.passes(filter, source))
            .cloned(),
    );
    if kept.is_empty() {
        None
    } else {
        Some(EventBatch::new(kept, source))
    }
}

enum Lost {
    Full,
    Shutdown,
    Closed,
}
