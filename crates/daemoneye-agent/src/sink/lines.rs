//! JSON-lines alert sinks (stdout, a file) behind a bounded queue and a
//! thread of their own, so that a stalled reader (a full pipe, a hung
//! disk) never holds up detection or the other sinks: what does not fit in
//! the queue is dropped and counted.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use crate::health::SinkCounters;

/// One JSON-lines sink.
#[derive(Debug)]
pub struct LineSink {
    name: &'static str,
    tx: Option<SyncSender<String>>,
    /// Completes when the thread has written everything and ended.
    done: tokio::sync::oneshot::Receiver<()>,
    counters: Arc<SinkCounters>,
}

impl LineSink {
    /// Starts the sink's thread writing to `out`, with room for `capacity`
    /// queued lines; outcomes are counted in `counters`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(
        name: &'static str,
        mut out: Box<dyn Write + Send>,
        capacity: usize,
        counters: Arc<SinkCounters>,
    ) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<String>(capacity.max(1));
        let c = counters.clone();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || {
                let _done = done_tx; // dropped, and so signalled, at the end
                for line in rx {
                    let ok = writeln!(out, "{line}").and_then(|()| out.flush()).is_ok();
                    if !ok && !c.failing.load(Ordering::Relaxed) {
                        tracing::warn!(sink = name, "alert sink failed to write");
                    }
                    c.record(ok);
                }
            })?;
        Ok(Self {
            name,
            tx: Some(tx),
            done,
            counters,
        })
    }

    /// Queues one line; never waits. A full queue drops it (counted).
    pub fn send(&self, line: String) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                self.counters.failing.store(true, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(
                        sink = self.name,
                        dropped = n,
                        "alert sink is not keeping up; alerts dropped"
                    );
                }
            }
        }
    }

    /// Writes what is queued, waiting at most `grace` for a stalled
    /// writer (whose thread is then left behind, detached: it holds up
    /// neither this call nor the runtime's shutdown).
    pub async fn close(mut self, grace: Duration) {
        drop(self.tx.take());
        if tokio::time::timeout(grace, &mut self.done).await.is_err() {
            tracing::warn!(sink = self.name, "alert sink still blocked at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Mutex, PoisonError};

    use super::*;

    /// A writer that blocks until released, then keeps what it was given.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while !*open {
                open = cv.wait(open).unwrap_or_else(PoisonError::into_inner);
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stalled_writer_never_blocks_the_sender_and_drops_are_counted() {
        let gate = Gate::default();
        let counters = Arc::new(SinkCounters::default());
        let sink = LineSink::start("test", Box::new(gate.clone()), 4, counters.clone()).unwrap();
        // One line held by the stalled writer, four queued, the rest dropped.
        for i in 0..20 {
            sink.send(format!("line {i}"));
        }
        let dropped = counters.dropped.load(Ordering::Relaxed);
        assert!((15..=16).contains(&dropped), "{dropped}");
        assert!(counters.failing.load(Ordering::Relaxed));
        {
            let (lock, cv) = &*gate.open;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        sink.close(Duration::from_secs(10)).await;
        let written = String::from_utf8(gate.got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len() as u64 + dropped, 20, "{lines:?}");
        assert_eq!(lines[0], "line 0", "in order");
        assert_eq!(
            counters.delivered.load(Ordering::Relaxed),
            lines.len() as u64
        );
    }

    #[tokio::test]
    async fn close_gives_up_on_a_writer_that_never_returns() {
        let gate = Gate::default();
        let sink = LineSink::start("stuck", Box::new(gate), 2, Arc::default()).unwrap();
        sink.send("x".to_owned());
        let closed = tokio::time::timeout(
            Duration::from_secs(5),
            sink.close(Duration::from_millis(50)),
        );
        assert!(closed.await.is_ok(), "close returned by its grace period");
    }
}
