//! JSON-lines alert sinks: stdout, a file.

use std::io::Write;

use super::{AlertFormat, AlertSink, Checkpoint, Delivery, Host};
use crate::alert::Alert;

/// Writes each alert as one JSON line to `out` (stdout, an appended file),
/// flushed at once; each checkpoint too, as the line
/// `{"kind":"checkpoint","seq":…,"head":"…","time":…,"lost":{…}}` that
/// `daemoneye-cli ledger verify --anchor FILE` reads back. Behind its [`SinkWorker`](super::SinkWorker) a stalled
/// reader (a full pipe, a hung disk) holds up only this sink's thread:
/// what does not fit in its queue is dropped and counted.
pub struct LineSink {
    name: &'static str,
    out: Box<dyn Write + Send>,
    format: AlertFormat,
    host: Host,
}

collector_core::debug_fields!(LineSink { name, format });

impl LineSink {
    /// A sink called `name` writing to `out`, alerts in the native format.
    pub fn new(name: &'static str, out: Box<dyn Write + Send>) -> Self {
        Self {
            name,
            out,
            format: AlertFormat::Native,
            host: Host::local(),
        }
    }

    /// The same sink writing alerts in `format` (checkpoints stay native).
    #[must_use]
    pub fn with_format(mut self, format: AlertFormat) -> Self {
        self.format = format;
        self
    }
}

impl AlertSink for LineSink {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn deliver(&mut self, alert: &Alert) -> Delivery {
        self.write_line(self.format.encode(alert, &self.host), "alert")
    }

    async fn deliver_checkpoint(&mut self, checkpoint: &Checkpoint) -> Delivery {
        self.write_line(serde_json::to_string(checkpoint), "checkpoint")
    }
}

impl LineSink {
    fn write_line(&mut self, line: serde_json::Result<String>, what: &str) -> Delivery {
        let line = match line {
            Ok(line) => line,
            Err(e) => return Delivery::Failed(format!("cannot encode the {what}: {e}")),
        };
        match writeln!(self.out, "{line}").and_then(|()| self.out.flush()) {
            Ok(()) => Delivery::Delivered,
            Err(e) => Delivery::Failed(format!("cannot write: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::sink::{test_alert, SinkWorker, WorkerConfig};

    /// A writer that blocks until released, then keeps what it was given.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, std::sync::Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.open;
            let mut open = collector_core::lock(open);
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

    /// Fails every write.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn queue(capacity: usize) -> WorkerConfig {
        WorkerConfig {
            capacity,
            ..WorkerConfig::default()
        }
    }

    #[tokio::test]
    async fn a_stalled_writer_never_blocks_the_sender_and_drops_are_counted() {
        let gate = Gate::default();
        let sink =
            SinkWorker::start(LineSink::new("test", Box::new(gate.clone())), queue(4)).unwrap();
        let counters = sink.stats();
        // One line held by the stalled writer, four queued, the rest dropped.
        for pid in 0..20 {
            let _ = sink.try_send(test_alert(pid));
        }
        let dropped = counters.snapshot().dropped;
        assert!((15..=16).contains(&dropped), "{dropped}");
        assert!(counters.snapshot().failing);
        {
            let (lock, cv) = &*gate.open;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        let stats = sink.close(Instant::now() + Duration::from_secs(10)).await;
        let written = String::from_utf8(gate.got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len() as u64 + dropped, 20, "{lines:?}");
        let first: Alert = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first.process.pid, 0, "in order");
        assert_eq!(stats.delivered, lines.len() as u64);
        assert_eq!(stats.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_checkpoint_is_one_json_line_the_anchor_parser_reads_back() {
        let gate = Gate::default();
        {
            let (lock, _) = &*gate.open;
            *lock.lock().unwrap() = true;
        }
        let sink =
            SinkWorker::start(LineSink::new("file", Box::new(gate.clone())), queue(4)).unwrap();
        sink.try_send(test_alert(1)).unwrap();
        let cp = crate::sink::test_checkpoint(12);
        sink.send_checkpoint(cp.clone()).await.unwrap();
        let checkpoints = sink.checkpoint_stats();
        sink.close(Instant::now() + Duration::from_secs(10)).await;
        assert_eq!(checkpoints.snapshot().delivered, 1);
        let written = String::from_utf8(gate.got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 2, "{written}");
        let line: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(line["kind"], "checkpoint");
        assert_eq!(line["seq"], 12);
        assert_eq!(line["lost"]["events"], 5);
        assert_eq!(
            crate::ledger::Anchor::from_lines(&written).unwrap(),
            vec![cp.anchor()]
        );
    }

    #[tokio::test]
    async fn close_gives_up_on_a_writer_that_never_returns() {
        let gate = Gate::default();
        let sink = SinkWorker::start(LineSink::new("stuck", Box::new(gate)), queue(2)).unwrap();
        sink.try_send(test_alert(1)).unwrap();
        let closed = tokio::time::timeout(
            Duration::from_secs(5),
            sink.close(Instant::now() + Duration::from_millis(50)),
        );
        let stats = closed.await.unwrap();
        assert_eq!((stats.queued, stats.dropped_at_shutdown), (1, 1));
    }

    #[tokio::test]
    async fn write_errors_are_failures_not_retried() {
        let sink = SinkWorker::start(LineSink::new("broken", Box::new(Broken)), queue(8)).unwrap();
        for pid in 0..3 {
            sink.try_send(test_alert(pid)).unwrap();
        }
        let stats = sink.close(Instant::now() + Duration::from_secs(10)).await;
        assert_eq!((stats.failed, stats.retries, stats.delivered), (3, 0, 0));
        assert!(stats.failing);
    }
}
