//! The store's writer: a thread of its own owning the [`AgentStore`], so
//! that detection never waits on the disk.
//!
//! Writes arrive on a bounded queue, in order; a full queue makes the
//! sender wait (backpressure reaches the collector, which counts what it
//! drops), so nothing is lost silently. A write that fails is logged and
//! counted; [`StoreWriter::close`] commits everything queued before
//! returning.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use collector_core::ProcessEvent;
use tokio::sync::mpsc;
use tracing::error;

use crate::alert::Alert;
use crate::store::{AgentStore, StoreError};

/// One write.
#[derive(Debug)]
enum Write {
    Events(Vec<ProcessEvent>),
    Alert(Box<Alert>),
    ClearProcesses,
}

/// What the writer has done.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Event batches committed.
    pub batches: AtomicU64,
    /// Lifecycle events committed (each with a ledger entry).
    pub lifecycle_events: AtomicU64,
    /// Alerts committed (each with a ledger entry).
    pub alerts: AtomicU64,
    /// Writes that failed (logged).
    pub failures: AtomicU64,
}

/// The handle to the writer thread.
#[derive(Debug)]
pub struct StoreWriter {
    tx: Option<mpsc::Sender<Write>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<WriterStats>,
}

impl StoreWriter {
    /// Starts the writer thread over `store`, with room for `capacity`
    /// queued writes.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(mut store: AgentStore, capacity: usize) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Write>(capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let s = stats.clone();
        let thread = std::thread::Builder::new()
            .name("agent-store".to_owned())
            .spawn(move || {
                while let Some(w) = rx.blocking_recv() {
                    let result: Result<(), StoreError> = match w {
                        Write::Events(events) => store.record_events(&events).map(|r| {
                            s.batches.fetch_add(1, Ordering::Relaxed);
                            s.lifecycle_events.fetch_add(r.lifecycle, Ordering::Relaxed);
                        }),
                        Write::Alert(a) => store.record_alert(&a).map(|_| {
                            s.alerts.fetch_add(1, Ordering::Relaxed);
                        }),
                        Write::ClearProcesses => store.clear_processes(),
                    };
                    if let Err(e) = result {
                        let n = s.failures.fetch_add(1, Ordering::Relaxed) + 1;
                        error!(error = %e, failures = n, "writing to the agent store failed");
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    /// The writer's counters.
    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    async fn send(&self, w: Write) {
        let sent = match &self.tx {
            Some(tx) => tx.send(w).await.is_ok(),
            None => false,
        };
        if !sent {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues a batch of events (waits while the queue is full).
    pub async fn events(&self, events: Vec<ProcessEvent>) {
        self.send(Write::Events(events)).await;
    }

    /// Queues an alert.
    pub async fn alert(&self, alert: Alert) {
        self.send(Write::Alert(Box::new(alert))).await;
    }

    /// Queues forgetting every known process (a new collector session).
    pub async fn clear_processes(&self) {
        self.send(Write::ClearProcesses).await;
    }

    /// Commits everything queued and stops the thread.
    pub async fn close(mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || t.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                error!("the agent store's writer thread failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use collector_core::ProcessEventType;

    use super::*;

    #[tokio::test]
    async fn everything_queued_is_committed_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let writer = StoreWriter::start(AgentStore::open(dir.path()).unwrap(), 2).unwrap();
        let stats = writer.stats();
        for i in 0..100u32 {
            let mut e = ProcessEvent::new(i + 1, "x");
            e.event_type = ProcessEventType::Exec;
            e.accessible = true;
            writer.events(vec![e]).await;
        }
        writer.close().await;
        assert_eq!(stats.batches.load(Ordering::Relaxed), 100);
        assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
        let ro = AgentStore::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.verify_ledger().unwrap().entries, 100);
        assert_eq!(
            ro.query("SELECT count(*) FROM processes").unwrap().rows[0][0],
            100
        );
    }
}
