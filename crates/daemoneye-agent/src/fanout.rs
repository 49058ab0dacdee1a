//! The alert fan-out: every alert to each configured sink (stdout, a
//! JSON-lines file, syslog, a webhook), each with its own counters.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tracing::{error, info, warn};

use crate::alert::Alert;
use crate::config::SinkSettings;
use crate::health::SinkCounters;
use crate::lines::LineSink;

/// Where alerts go besides the store, each with its own counters: one
/// failing or stalled sink never blocks the others (stdout and the file are
/// written by threads of their own behind bounded queues; syslog never
/// waits; the webhook queues).
pub struct Sinks {
    stdout: LineSink,
    file: Option<LineSink>,
    syslog: Option<(crate::sink::SyslogSink, Arc<SinkCounters>)>,
    pub(crate) webhook: Option<crate::webhook::WebhookSink>,
    pub(crate) counters: Vec<(&'static str, Arc<SinkCounters>)>,
}

/// Alerts queued per JSON-lines sink before they are dropped.
const LINE_QUEUE: usize = 4096;

impl Sinks {
    /// Opens every configured sink, and stdout.
    pub fn new(args: &SinkSettings) -> anyhow::Result<Self> {
        let mut counters = Vec::new();
        let mut counted = |name: &'static str| {
            let c = Arc::new(SinkCounters::default());
            counters.push((name, c.clone()));
            c
        };
        let stdout = LineSink::start(
            "stdout",
            Box::new(std::io::stdout()),
            LINE_QUEUE,
            counted("stdout"),
        )?;
        let file = match &args.alerts_jsonl {
            Some(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("cannot open {}", p.display()))?;
                Some(LineSink::start(
                    "file",
                    Box::new(f),
                    LINE_QUEUE,
                    counted("file"),
                )?)
            }
            None => None,
        };
        let syslog = match args.syslog.clone() {
            Some(t) => {
                let sink = crate::sink::SyslogSink::open(t.clone())
                    .with_context(|| format!("cannot open syslog {t:?}"))?;
                Some((sink, counted("syslog")))
            }
            None => None,
        };
        let webhook = match args.webhook.clone() {
            Some(url) => {
                let mut config = crate::webhook::WebhookConfig::new(url);
                config.headers.clone_from(&args.webhook_headers);
                if let Some(path) = &args.webhook_headers_file {
                    config
                        .headers
                        .extend(crate::webhook::WebhookHeader::from_file(path)?);
                }
                Some(
                    crate::webhook::WebhookSink::new(config)
                        .context("cannot set up the webhook sink")?,
                )
            }
            None => None,
        };
        Ok(Self {
            stdout,
            file,
            syslog,
            webhook,
            counters,
        })
    }

    /// Hands `a` to every sink; never waits.
    pub fn deliver(&mut self, a: &Alert) {
        if let Some(w) = &self.webhook {
            // A refusal is counted by the sink (dropped: queue full).
            if let Err(e) = w.send(a) {
                let dropped = w.stats().snapshot().dropped;
                if dropped.is_power_of_two() {
                    warn!(error = %e, dropped, "webhook sink dropped an alert");
                }
            }
        }
        if let Some((s, counters)) = &mut self.syslog {
            let sent = s.send(a);
            if let Err(e) = &sent {
                warn!(error = %e, failures = s.failures(), "syslog sink failed");
            }
            counters.record(sent.is_ok());
        }
        match serde_json::to_string(a) {
            Ok(line) => {
                if let Some(f) = &self.file {
                    f.send(line.clone());
                }
                self.stdout.send(line);
            }
            Err(e) => error!(error = %e, "encoding an alert failed"),
        }
    }

    /// Delivers what is queued, within a few seconds.
    pub async fn close(self) {
        if let Some(w) = self.webhook {
            let left = w
                .close(tokio::time::Instant::now() + Duration::from_secs(5))
                .await;
            info!(?left, "webhook sink closed");
        }
        if let Some(f) = self.file {
            f.close(Duration::from_secs(2)).await;
        }
        self.stdout.close(Duration::from_secs(2)).await;
    }
}
