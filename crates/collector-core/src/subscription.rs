//! Fan-out from the runtime to subscribers: bounded queues with a
//! [`WhenFull`] policy and exact drop accounting.

use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::WhenFull;
use crate::event::CollectionEvent;
use crate::telemetry::{add, SubscriberCounters, SubscriberStats};

/// A batch of events from one source, shared by every subscriber it went to.
#[derive(Debug, Clone)]
pub struct EventBatch {
    events: Arc<Vec<CollectionEvent>>,
    start: usize,
    source: &'static str,
}

impl EventBatch {
    pub(crate) fn new(events: Vec<CollectionEvent>, source: &'static str) -> Self {
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

impl Deref for EventBatch {
    type Target = [CollectionEvent];

    fn deref(&self) -> &[CollectionEvent] {
        self.events.get(self.start..).unwrap_or_default()
    }
}

/// Events not yet handed out by [`Subscription::recv`].
enum Pending {
    /// Nobody else holds the batch: events are moved out, not cloned.
    Owned(std::vec::IntoIter<CollectionEvent>, &'static str),
    Shared(EventBatch),
}

/// A subscriber's end of the event stream.
///
/// Obtained from [`CollectorHandle::subscribe`](crate::CollectorHandle::subscribe).
/// The stream ends (`None`) once the runtime has shut down and everything
/// queued for this subscriber has been taken. Dropping a subscription counts
/// the events still queued for it as `events_dropped_closed`.
pub struct Subscription {
    rx: mpsc::Receiver<Queued>,
    counters: Arc<SubscriberCounters>,
    pending: Option<Pending>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.counters.id)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// This subscription's id, as in [`SubscriberStats::id`].
    pub fn id(&self) -> u64 {
        self.counters.id
    }

    /// The next batch of events (from one source, in that source's order).
    ///
    /// # Cancel safety
    /// Cancel safe: a batch is counted as delivered only when returned.
    pub async fn recv_batch(&mut self) -> Option<EventBatch> {
        let batch = match self.pending.take() {
            Some(Pending::Shared(b)) => b,
            Some(Pending::Owned(rest, source)) => EventBatch::new(rest.collect(), source),
            None => self.rx.recv().await?.take(),
        };
        add(&self.counters.delivered, batch.len());
        Some(batch)
    }

    /// The next event.
    ///
    /// Moves events out of a batch no other subscriber shares; clones them
    /// otherwise. [`recv_batch`](Self::recv_batch) never clones.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<CollectionEvent> {
        loop {
            match &mut self.pending {
                Some(Pending::Owned(iter, _)) => {
                    if let Some(event) = iter.next() {
                        add(&self.counters.delivered, 1);
                        return Some(event);
                    }
                    self.pending = None;
                }
                Some(Pending::Shared(batch)) => {
                    if let Some(event) = batch.first().cloned() {
                        batch.start += 1;
                        add(&self.counters.delivered, 1);
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

    /// This subscription's counters.
    pub fn stats(&self) -> SubscriberStats {
        self.counters.snapshot()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.rx.close();
        let lost = match self.pending.take() {
            Some(Pending::Owned(rest, _)) => rest.len(),
            Some(Pending::Shared(b)) => b.len(),
            None => 0,
        };
        add(&self.counters.dropped_closed, lost);
        // Queued batches count themselves as dropped when they are freed,
        // including one a pump sends through a permit it reserved just
        // before `close`.
        while self.rx.try_recv().is_ok() {}
    }
}

/// A batch in a subscriber's queue; if it is freed without being received
/// it counts itself as `dropped_closed`.
struct Queued {
    batch: Option<EventBatch>,
    counters: Arc<SubscriberCounters>,
}

impl Queued {
    fn take(mut self) -> EventBatch {
        self.batch
            .take()
            .unwrap_or_else(|| EventBatch::new(Vec::new(), ""))
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            add(&self.counters.dropped_closed, batch.len());
        }
    }
}

#[derive(Clone)]
struct Slot {
    tx: mpsc::Sender<Queued>,
    counters: Arc<SubscriberCounters>,
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
pub(crate) struct Subscribers {
    live: RwLock<Arc<[Slot]>>,
    all: Mutex<Vec<Arc<SubscriberCounters>>>,
    next_id: std::sync::atomic::AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    queue_batches: usize,
    when_full: WhenFull,
}

impl Subscribers {
    pub(crate) fn new(buffer_events: usize, batch_events: usize, when_full: WhenFull) -> Self {
        Self {
            live: RwLock::new(Arc::from(Vec::new())),
            all: Mutex::new(Vec::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
            closed: std::sync::atomic::AtomicBool::new(false),
            // Batches hold at most `batch_events`, so this bounds the queue at
            // about `buffer_events` (+ one batch) events.
            queue_batches: buffer_events.div_ceil(batch_events.max(1)).max(1),
            when_full,
        }
    }

    fn snapshot(&self) -> Arc<[Slot]> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn subscribe(&self) -> Subscription {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let counters = Arc::new(SubscriberCounters::new(id));
        let (tx, rx) = mpsc::channel(self.queue_batches);
        self.all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(counters.clone());
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        // After shutdown the sender is dropped at once: the stream is empty.
        if !self.closed.load(std::sync::atomic::Ordering::Acquire) {
            let mut slots = live.to_vec();
            slots.push(Slot {
                tx,
                counters: counters.clone(),
            });
            *live = Arc::from(slots);
        }
        Subscription {
            rx,
            counters,
            pending: None,
        }
    }

    fn remove(&self, id: u64) {
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        let slots: Vec<Slot> = live
            .iter()
            .filter(|s| s.counters.id != id)
            .cloned()
            .collect();
        *live = Arc::from(slots);
    }

    /// Ends every stream: subscribers get what is queued, then `None`.
    pub(crate) fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        *self.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::from(Vec::new());
    }

    pub(crate) fn stats(&self) -> Vec<SubscriberStats> {
        self.all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|c| c.snapshot())
            .collect()
    }

    /// Offers `batch` to every live subscriber. Returns false when there was
    /// none (the events were unrouted).
    ///
    /// # Cancel safety
    /// Not cancel safe; it ends early on its own when `deadline` fires.
    pub(crate) async fn dispatch(
        &self,
        batch: EventBatch,
        mode: Mode,
        deadline: &CancellationToken,
    ) -> bool {
        let slots = self.snapshot();
        if slots.is_empty() {
            return false;
        }
        let n = batch.len();
        for slot in slots.iter() {
            add(&slot.counters.offered, n);
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
                    batch: Some(batch.clone()),
                    counters: slot.counters.clone(),
                }),
                Err(Lost::Full) => add(&slot.counters.dropped_full, n),
                Err(Lost::Shutdown) => add(&slot.counters.dropped_shutdown, n),
                Err(Lost::Closed) => {
                    add(&slot.counters.dropped_closed, n);
                    self.remove(slot.counters.id);
                }
            }
        }
        true
    }
}

enum Lost {
    Full,
    Shutdown,
    Closed,
}
