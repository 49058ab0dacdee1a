//! The agent's fan-out: every configured sink, each behind its worker.

use std::path::PathBuf;
use std::sync::Arc;

use collector_core::WhenFull;
use tokio::time::Instant;

use super::{
    AlertFormat, Checkpoint, FleetConfig, FleetSink, FleetStatus, LineSink, SinkStats,
    SinkStatsSnapshot, SinkWorker, SyslogSink, SyslogTarget, WebhookConfig, WebhookError,
    WebhookHeader, WebhookSink, WebhookUrl, WorkerConfig,
};
use crate::alert::Alert;

/// Alerts queued per JSON-lines sink (stdout, the file) and syslog before
/// they are dropped.
pub const DEFAULT_LINE_QUEUE: usize = 4096;

/// Which sinks the agent delivers alerts to, and how: the agent's settings
/// resolve the configuration file, flags and variables into this
/// ([`Settings::sinks`](crate::config::Settings::sinks)), and
/// [`SinkSet::start`] opens what it names.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SinksConfig {
    /// JSON lines on stdout (default on).
    pub stdout: bool,
    /// JSON lines appended to this file.
    pub alerts_jsonl: Option<PathBuf>,
    /// RFC 5424 messages to this syslog socket.
    pub syslog: Option<SyslogTarget>,
    /// HTTP(S) `POST`s to this webhook (its own queue and retries, the
    /// defaults of [`WebhookConfig::new`]).
    pub webhook: Option<WebhookUrl>,
    /// Headers sent with every webhook request.
    pub webhook_headers: Vec<WebhookHeader>,
    /// More headers, read from this private file when the sinks open
    /// ([`WebhookHeader::from_file`]).
    pub webhook_headers_file: Option<PathBuf>,
    /// Alerts queued for stdout, the file and syslog.
    pub line_queue: usize,
    /// What a full queue does, for every sink (default: drop and count, so
    /// that a stalled sink never holds up detection).
    pub when_full: WhenFull,
    /// The format each line sink writes alerts in (stdout, file, syslog).
    pub formats: SinkFormats,
    /// The format of the webhook's bodies.
    pub webhook_format: AlertFormat,
    /// The fleet sink (NATS JetStream), its format included; it ships from
    /// the store's outbox, so it is started over the store writer
    /// ([`SinkSet::start_fleet`]), not by [`SinkSet::start`].
    pub fleet: Option<FleetConfig>,
}

/// The format of each line-oriented sink's alerts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkFormats {
    /// Stdout.
    pub stdout: AlertFormat,
    /// The alerts file.
    pub alerts_jsonl: AlertFormat,
    /// Syslog's message bodies.
    pub syslog: AlertFormat,
}

impl Default for SinksConfig {
    /// Stdout only.
    fn default() -> Self {
        Self {
            stdout: true,
            alerts_jsonl: None,
            syslog: None,
            webhook: None,
            webhook_headers: Vec::new(),
            webhook_headers_file: None,
            line_queue: DEFAULT_LINE_QUEUE,
            when_full: WhenFull::DropNewest,
            formats: SinkFormats::default(),
            webhook_format: AlertFormat::default(),
            fleet: None,
        }
    }
}

/// Why the sinks could not be started: a file or socket that cannot be
/// opened, a webhook that cannot be set up (all the user's to fix), or a
/// worker that cannot be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The alerts file cannot be opened for appending.
    #[error("cannot open {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The syslog socket cannot be opened.
    #[error("cannot open syslog {target:?}")]
    Syslog {
        /// Where.
        target: SyslogTarget,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The webhook headers file is unusable.
    #[error(transparent)]
    HeadersFile(WebhookError),
    /// The webhook cannot be set up.
    #[error("cannot set up the webhook sink")]
    Webhook(#[from] WebhookError),
    /// A sink's worker cannot be started.
    #[error("cannot start the {sink} sink")]
    Start {
        /// The sink.
        sink: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Every configured sink behind its own [`SinkWorker`]: one failing or
/// stalled sink never blocks the others, and each is counted alike.
#[derive(Debug)]
pub struct SinkSet {
    workers: Vec<SinkWorker>,
    /// The fleet sink, which ships from the store's outbox: offered each
    /// alert once the store writer has it ([`deliver_stored`](Self::deliver_stored)).
    fleet: Option<SinkWorker>,
}

impl SinkSet {
    /// Opens and starts the sinks `config` names, in this order: stdout,
    /// file, syslog, webhook (its headers file read first). The fleet sink
    /// is started apart ([`start_fleet`](Self::start_fleet)).
    ///
    /// # Errors
    /// [`SinkError::HeadersFile`] when the webhook headers file is unusable
    /// (before any sink opens); [`SinkError`] for the first sink that cannot
    /// be opened or started (those already started are closed at once).
    pub fn start(config: SinksConfig) -> Result<Self, SinkError> {
        let webhook = match config.webhook {
            Some(url) => {
                let mut webhook = WebhookConfig::new(url);
                webhook.format = config.webhook_format;
                webhook.headers = config.webhook_headers;
                if let Some(path) = &config.webhook_headers_file {
                    let more = WebhookHeader::from_file(path).map_err(SinkError::HeadersFile)?;
                    webhook.headers.extend(more);
                }
                Some(webhook)
            }
            None => None,
        };
        let lines = WorkerConfig {
            capacity: config.line_queue,
            when_full: config.when_full,
            ..WorkerConfig::default()
        };
        let started = |sink: &'static str| move |source| SinkError::Start { sink, source };
        let mut workers = Vec::new();
        if config.stdout {
            let sink = LineSink::new("stdout", Box::new(std::io::stdout()))
                .with_format(config.formats.stdout);
            workers.push(SinkWorker::start(sink, lines).map_err(started("stdout"))?);
        }
        if let Some(path) = config.alerts_jsonl {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| SinkError::File { path, source })?;
            let sink =
                LineSink::new("file", Box::new(file)).with_format(config.formats.alerts_jsonl);
            workers.push(SinkWorker::start(sink, lines).map_err(started("file"))?);
        }
        if let Some(target) = config.syslog {
            let sink = SyslogSink::open(target.clone())
                .map_err(|source| SinkError::Syslog { target, source })?
                .with_format(config.formats.syslog);
            workers.push(SinkWorker::start(sink, lines).map_err(started("syslog"))?);
        }
        if let Some(webhook) = webhook {
            let sink = WebhookSink::new(&webhook)?;
            let worker = WorkerConfig {
                when_full: config.when_full,
                ..WebhookSink::worker_config(&webhook)
            };
            workers.push(SinkWorker::start(sink, worker).map_err(started("webhook"))?);
        }
        Ok(Self {
            workers,
            fleet: None,
        })
    }

    /// Starts the fleet sink over `writer`'s outbox (the store must queue
    /// alerts there: [`Store::with_outbox`](daemoneye_store::Store::with_outbox));
    /// returns its state for health.
    ///
    /// # Errors
    /// [`SinkError::Start`] when its worker cannot be started.
    pub fn start_fleet(
        &mut self,
        config: FleetConfig,
        writer: daemoneye_store::StoreWriter,
    ) -> Result<Arc<FleetStatus>, SinkError> {
        let sink = FleetSink::new(config, writer);
        let status = sink.status();
        let worker = SinkWorker::start(sink, FleetSink::worker_config()).map_err(|source| {
            SinkError::Start {
                sink: "fleet",
                source,
            }
        })?;
        self.fleet = Some(worker);
        Ok(status)
    }

    /// Whether a sink ships from the store (then offer it each alert with
    /// [`deliver_stored`](Self::deliver_stored)).
    pub fn ships_stored(&self) -> bool {
        self.fleet.is_some()
    }

    fn all(&self) -> impl Iterator<Item = &SinkWorker> {
        self.workers.iter().chain(&self.fleet)
    }

    /// Offers `alert`, once the store writer has it (queued in its outbox),
    /// to the sinks that ship from the store (the fleet sink).
    pub async fn deliver_stored(&self, alert: &Alert) {
        if let Some(w) = &self.fleet {
            // One delivery drains the whole outbox: when one waits behind
            // the one under way (its read comes after this alert's write),
            // another would find nothing more. So a long outage fills
            // neither the queue nor the drop counters.
            if w.in_flight() >= 2 {
                return;
            }
            // A refusal is counted (and logged) by the worker; the alert
            // waits in the outbox for the next delivery.
            let _ = w.send(Arc::new(alert.clone())).await;
        }
    }

    /// Offers `alert` to every sink, each as its [`WhenFull`] policy says
    /// (with `DropNewest`, never waiting). Drops are counted by each sink.
    pub async fn deliver(&self, alert: &Alert) {
        let alert = Arc::new(alert.clone());
        for w in &self.workers {
            // A refusal is counted (and logged) by the worker.
            let _ = w.send(Arc::clone(&alert)).await;
        }
    }

    /// Offers `checkpoint` to every sink, in the same queue as the alerts
    /// and under the same policy; drops are counted in each sink's
    /// checkpoint counters.
    pub async fn deliver_checkpoint(&self, checkpoint: &Checkpoint) {
        let checkpoint = Arc::new(checkpoint.clone());
        for w in self.all() {
            // A refusal is counted (and logged) by the worker.
            let _ = w.send_checkpoint(Arc::clone(&checkpoint)).await;
        }
    }

    /// Each sink's name and counters, for health.
    pub fn stats(&self) -> Vec<(&'static str, Arc<SinkStats>)> {
        self.all().map(|w| (w.name(), w.stats())).collect()
    }

    /// Each sink's name and checkpoint counters.
    pub fn checkpoint_stats(&self) -> Vec<(&'static str, Arc<SinkStats>)> {
        self.all()
            .map(|w| (w.name(), w.checkpoint_stats()))
            .collect()
    }

    /// Stops accepting alerts, lets every sink deliver what it has queued
    /// until `deadline` (all at once, each on its own thread), counts the
    /// rest as dropped at shutdown, and returns each sink's final counts.
    /// Returns by `deadline`.
    pub async fn close(mut self, deadline: Instant) -> Vec<(&'static str, SinkStatsSnapshot)> {
        self.workers.extend(self.fleet.take());
        for w in &mut self.workers {
            w.stop_accepting();
        }
        let mut closed = Vec::with_capacity(self.workers.len());
        for w in self.workers {
            closed.push((w.name(), w.close(deadline).await));
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;
    use crate::sink::test_alert;

    /// The file and syslog sinks (in `formats`), to a file in `dir` and a
    /// UDP socket of the test's: the config, the file, the socket.
    fn file_and_syslog(
        dir: &tempfile::TempDir,
        formats: SinkFormats,
    ) -> (SinksConfig, PathBuf, std::net::UdpSocket) {
        let path = dir.path().join("alerts.jsonl");
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let config = SinksConfig {
            stdout: false,
            alerts_jsonl: Some(path.clone()),
            syslog: Some(
                format!("udp://{}", server.local_addr().unwrap())
                    .parse()
                    .unwrap(),
            ),
            formats,
            ..SinksConfig::default()
        };
        (config, path, server)
    }

    #[tokio::test]
    async fn every_sink_gets_every_alert_and_reports_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (config, path, server) = file_and_syslog(&dir, SinkFormats::default());
        let set = SinkSet::start(config).unwrap();
        let names: Vec<&str> = set.stats().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["file", "syslog"]);
        let checkpoints = set.checkpoint_stats();
        for pid in 1..=3 {
            set.deliver(&test_alert(pid)).await;
        }
        set.deliver_checkpoint(&crate::sink::test_checkpoint(4))
            .await;
        let closed = set.close(Instant::now() + Duration::from_secs(10)).await;
        for (name, s) in &closed {
            assert_eq!((s.queued, s.delivered, s.in_flight()), (3, 3, 0), "{name}");
        }
        for (name, s) in &checkpoints {
            let s = s.snapshot();
            assert_eq!((s.queued, s.delivered), (1, 1), "{name}");
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let pids: Vec<u32> = lines[..3]
            .iter()
            .map(|l| serde_json::from_str::<Alert>(l).unwrap().process.pid)
            .collect();
        assert_eq!(pids, [1, 2, 3]);
        assert!(lines[3].starts_with("{\"kind\":\"checkpoint\","), "{text}");
        let mut buf = [0u8; 8192];
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut n = 0;
        for _ in 0..4 {
            n = server.recv(&mut buf).unwrap();
        }
        let last = String::from_utf8_lossy(&buf[..n]);
        assert!(
            last.contains(" checkpoint [checkpoint@32473 seq=\"4\""),
            "{last}"
        );
    }

    #[tokio::test]
    async fn each_sink_writes_its_own_format_and_checkpoints_stay_native() {
        let dir = tempfile::tempdir().unwrap();
        let formats = SinkFormats {
            alerts_jsonl: AlertFormat::Ecs,
            syslog: AlertFormat::Ocsf,
            ..SinkFormats::default()
        };
        let (config, path, server) = file_and_syslog(&dir, formats);
        let set = SinkSet::start(config).unwrap();
        set.deliver(&test_alert(7)).await;
        set.deliver_checkpoint(&crate::sink::test_checkpoint(8))
            .await;
        set.close(Instant::now() + Duration::from_secs(10)).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let ecs: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(ecs["event"]["kind"], "alert", "{text}");
        assert_eq!(ecs["process"]["pid"], 7, "{text}");
        assert!(lines[1].starts_with("{\"kind\":\"checkpoint\","), "{text}");
        let mut buf = [0u8; 8192];
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = server.recv(&mut buf).unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]);
        let body = &msg[msg.find("] ").unwrap() + 2..];
        let ocsf: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(ocsf["class_uid"], 1007, "{msg}");
        assert_eq!(ocsf["process"]["pid"], 7, "{msg}");
    }

    #[test]
    fn what_cannot_be_opened_is_named() {
        let config = SinksConfig {
            stdout: false,
            alerts_jsonl: Some("/nonexistent/dir/alerts.jsonl".into()),
            ..SinksConfig::default()
        };
        let err = SinkSet::start(config).unwrap_err();
        assert!(matches!(err, SinkError::File { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/dir"), "{err}");
        let config = SinksConfig {
            stdout: false,
            syslog: Some(SyslogTarget::Unix("/nonexistent/log".into())),
            ..SinksConfig::default()
        };
        assert!(matches!(
            SinkSet::start(config),
            Err(SinkError::Syslog { .. })
        ));
    }
}
