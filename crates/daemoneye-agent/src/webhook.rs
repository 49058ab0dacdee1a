//! Alert delivery to an HTTP(S) webhook.
//!
//! [`WebhookSink`] POSTs each alert as one JSON document (the
//! [`Alert`](crate::alert::Alert) as `serde_json` writes it, `Content-Type:
//! application/json`, `User-Agent: daemoneye-agent/<version>`, plus any
//! [`WebhookHeader`]s such as `Authorization: Bearer …`) to a
//! [`WebhookUrl`], over HTTP/1.1 or HTTPS (rustls with the system's root
//! certificates).
//!
//! It never holds up the agent: [`WebhookSink::send`] only puts the alert in
//! a bounded queue, and when the queue is full the alert is dropped and
//! counted. One background task delivers in order, each request within a
//! timeout, and retries connection errors, timeouts, HTTP 5xx and 429 with a
//! capped exponential backoff and jitter (a `Retry-After` in seconds on 429
//! and 503 is honoured, up to the cap). Other answers (3xx, 4xx) are
//! rejections: counted and not retried. Delivery is at least once: a request
//! whose answer is lost is sent again.
//!
//! [`WebhookStats`] counts, at any time, what became of every alert: each
//! one sent is either `dropped` at once, or `queued` and then exactly one of
//! `delivered`, `failed`, `rejected` or `dropped_at_shutdown` (or still in
//! flight). [`WebhookSink::close`] stops accepting alerts, delivers what is
//! queued until its deadline, and counts the rest as dropped at shutdown.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use daemoneye_agent::alert::Alert;
//! use daemoneye_agent::webhook::{WebhookConfig, WebhookSink};
//!
//! # async fn run(alert: Alert) -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = WebhookConfig::new("https://siem.example/hooks/daemoneye".parse()?);
//! config.headers.push("Authorization: Bearer s3cret".parse()?);
//! let sink = WebhookSink::new(config)?;
//!
//! // Never waits: the alert is queued, or dropped and counted.
//! sink.send(&alert)?;
//!
//! let stats = sink
//!     .close(tokio::time::Instant::now() + Duration::from_secs(5))
//!     .await;
//! assert_eq!(stats.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::hash::{BuildHasher as _, Hasher as _};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::alert::Alert;

/// Alerts the queue holds by default.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// The most alerts a queue may hold (a bound on the memory it can take).
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;
/// Time allowed for one request by default, from connecting to the answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per alert by default (the first one and its retries).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Wait before the first retry by default; it doubles with each retry.
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// The longest wait between two attempts by default.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the sink says it is.
const USER_AGENT: &str = concat!("daemoneye-agent/", env!("CARGO_PKG_VERSION"));
/// Of an answer's body, this much is read (and ignored) so that the
/// connection can be used again; a longer body closes it.
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// Headers the sink sets itself.
const RESERVED_HEADERS: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
    header::CONNECTION,
    header::USER_AGENT,
];

/// Why a webhook could not be configured or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL does not parse.
    #[error("webhook url {url:?} is not a valid url")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The URL is not `http://…` or `https://…`.
    #[error("webhook url {url:?}: expected http://HOST[:PORT]/PATH or https://…")]
    UnsupportedScheme {
        /// The URL given.
        url: String,
    },
    /// The URL names no host.
    #[error("webhook url {url:?} has no host")]
    MissingHost {
        /// The URL given.
        url: String,
    },
    /// The URL carries `user:password@`, which would not be sent (and should
    /// not be logged).
    #[error("webhook url for {host:?} carries credentials; send them in a header (`Authorization: …`) instead")]
    CredentialsInUrl {
        /// The host the URL names.
        host: String,
    },
    /// A header is not `Name: value`. The text is not repeated: it may be a
    /// secret.
    #[error("webhook header: expected `Name: value`")]
    HeaderSyntax,
    /// A header's name is not a valid HTTP header name.
    #[error("webhook header {name:?}: invalid name")]
    InvalidHeaderName {
        /// The name given.
        name: String,
        /// Why it is invalid.
        #[source]
        source: http::header::InvalidHeaderName,
    },
    /// A header's value is not a valid HTTP header value (a control
    /// character, a line break).
    #[error("webhook header {name:?}: invalid value")]
    InvalidHeaderValue {
        /// The header's name.
        name: String,
        /// Why it is invalid.
        #[source]
        source: http::header::InvalidHeaderValue,
    },
    /// The header is one the sink sets itself.
    #[error("webhook header {name:?} is set by the sink")]
    ReservedHeader {
        /// The header's name.
        name: String,
    },
    /// A setting is out of range.
    #[error("webhook {field} {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// HTTPS needs root certificates to trust, and the system has none that
    /// could be read.
    #[error("no root certificates could be read from the system for https ({errors} errors)")]
    NoRootCertificates {
        /// Errors met while reading them.
        errors: usize,
    },
    /// rustls refused the TLS configuration.
    #[error("cannot set up tls")]
    Tls {
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// The sink was created outside a tokio runtime, which it needs for its
    /// worker.
    #[error("the webhook sink must be created inside a tokio runtime")]
    NoRuntime,
}

/// Why [`WebhookSink::send`] did not queue an alert. Either way the alert is
/// dropped and counted in [`WebhookStatsSnapshot::dropped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookSendError {
    /// The queue is full: the endpoint is slower than the alerts.
    #[error("webhook queue is full; alert dropped")]
    Full,
    /// The worker is gone (it can only have panicked).
    #[error("webhook worker has stopped; alert dropped")]
    Closed,
}

/// An `http://` or `https://` URL with a host.
///
/// Its `Display` and `Debug` show only the scheme and the host, since the
/// path or query of a webhook URL often holds a token.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(Uri);

impl WebhookUrl {
    /// The whole URL.
    pub fn as_uri(&self) -> &Uri {
        &self.0
    }

    /// Whether it is `https://`.
    pub fn is_https(&self) -> bool {
        self.0.scheme() == Some(&http::uri::Scheme::HTTPS)
    }
}

impl FromStr for WebhookUrl {
    type Err = WebhookError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let uri: Uri = s.parse().map_err(|source| WebhookError::InvalidUrl {
            url: s.to_owned(),
            source,
        })?;
        let scheme_ok = uri.scheme_str().is_some_and(|scheme| {
            scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
        });
        if !scheme_ok {
            return Err(WebhookError::UnsupportedScheme { url: s.to_owned() });
        }
        let Some(authority) = uri.authority() else {
            return Err(WebhookError::MissingHost { url: s.to_owned() });
        };
        if authority.as_str().contains('@') {
            return Err(WebhookError::CredentialsInUrl {
                host: authority.host().to_owned(),
            });
        }
        if authority.host().is_empty() {
            return Err(WebhookError::MissingHost { url: s.to_owned() });
        }
        Ok(Self(uri))
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.0.scheme_str().unwrap_or("http");
        let authority = self.0.authority().map_or("", |a| a.as_str());
        let rest = match self.0.path_and_query().map(http::uri::PathAndQuery::as_str) {
            None | Some("" | "/") => "",
            Some(_) => "/…",
        };
        write!(f, "{scheme}://{authority}{rest}")
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({self})")
    }
}

/// An extra request header, parsed from `Name: value`.
///
/// Its `Debug` hides the value, which is often a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookHeader {
    name: HeaderName,
    value: HeaderValue,
}

impl WebhookHeader {
    /// The header's name (lowercase).
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The header's value.
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }
}

impl FromStr for WebhookHeader {
    type Err = WebhookError;

    /// Parses `Name: value`; space around the name and the value is trimmed.
    /// Headers the sink sets itself (`Content-Type`, `Content-Length`,
    /// `Transfer-Encoding`, `Host`, `Connection`, `User-Agent`) are refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s.split_once(':').ok_or(WebhookError::HeaderSyntax)?;
        let name = name.trim();
        if name.is_empty() {
            return Err(WebhookError::HeaderSyntax);
        }
        let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|source| {
            WebhookError::InvalidHeaderName {
                name: name.to_owned(),
                source,
            }
        })?;
        if RESERVED_HEADERS.contains(&header_name) {
            return Err(WebhookError::ReservedHeader {
                name: name.to_owned(),
            });
        }
        let mut value = HeaderValue::from_str(value.trim()).map_err(|source| {
            WebhookError::InvalidHeaderValue {
                name: name.to_owned(),
                source,
            }
        })?;
        value.set_sensitive(true);
        Ok(Self {
            name: header_name,
            value,
        })
    }
}

impl fmt::Debug for WebhookHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookHeader({}: <redacted>)", self.name)
    }
}

/// Where and how alerts are posted. [`WebhookConfig::new`] gives the
/// defaults; [`WebhookConfig::validate`] checks the ranges.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WebhookConfig {
    /// Where alerts are posted.
    pub url: WebhookUrl,
    /// Extra headers on every request, such as `Authorization`.
    pub headers: Vec<WebhookHeader>,
    /// Time allowed for one request, from connecting to the answer's status
    /// line (default 5 s).
    pub timeout: Duration,
    /// Attempts per alert, the first one included (default 5, at least 1).
    pub max_attempts: u32,
    /// Alerts waiting for delivery, beyond which new ones are dropped
    /// (default 1024, from 1 to [`MAX_QUEUE_CAPACITY`]).
    pub queue_capacity: usize,
    /// Wait before the first retry; it doubles with each retry (default
    /// 0.5 s). Each wait is jittered down by up to half.
    pub initial_backoff: Duration,
    /// The longest wait between two attempts, `Retry-After` included
    /// (default 30 s).
    pub max_backoff: Duration,
}

impl WebhookConfig {
    /// Posting to `url` with no extra header and the default settings.
    pub fn new(url: WebhookUrl) -> Self {
        Self {
            url,
            headers: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }

    /// Checks that every setting is in range.
    ///
    /// # Errors
    /// [`WebhookError::InvalidConfig`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), WebhookError> {
        let invalid = |field, reason| Err(WebhookError::InvalidConfig { field, reason });
        if self.timeout.is_zero() {
            return invalid("timeout", "must be more than zero");
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts", "must be at least 1");
        }
        if self.queue_capacity == 0 || self.queue_capacity > MAX_QUEUE_CAPACITY {
            return invalid("queue_capacity", "must be from 1 to 1048576");
        }
        if self.initial_backoff.is_zero() {
            return invalid("initial_backoff", "must be more than zero");
        }
        if self.initial_backoff > self.max_backoff {
            return invalid("initial_backoff", "must not exceed max_backoff");
        }
        Ok(())
    }
}

/// What became of the alerts sent to a [`WebhookSink`], counted as it goes.
/// Cheap to read at any time; see [`WebhookStats::snapshot`].
#[derive(Debug, Default)]
pub struct WebhookStats {
    queued: AtomicU64,
    delivered: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    dropped_at_shutdown: AtomicU64,
}

/// The counts of a [`WebhookStats`] at one moment.
///
/// Every alert sent is counted once in `queued` or `dropped`; every queued
/// alert, once in `delivered`, `failed`, `rejected` or `dropped_at_shutdown`
/// when it is done with ([`in_flight`](Self::in_flight) until then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WebhookStatsSnapshot {
    /// Alerts accepted into the queue.
    pub queued: u64,
    /// Alerts the endpoint accepted (2xx).
    pub delivered: u64,
    /// Attempts after the first, over all alerts.
    pub retries: u64,
    /// Alerts given up on after the last attempt (connection errors,
    /// timeouts, 5xx, 429).
    pub failed: u64,
    /// Alerts the endpoint refused (3xx, 4xx other than 429); not retried.
    pub rejected: u64,
    /// Alerts not queued: the queue was full (or the worker gone).
    pub dropped: u64,
    /// Queued alerts still undelivered when [`WebhookSink::close`] reached
    /// its deadline.
    pub dropped_at_shutdown: u64,
}

impl WebhookStatsSnapshot {
    /// Queued alerts not yet delivered, failed, rejected or dropped at
    /// shutdown. Counters are read one by one, so while the sink runs this
    /// can be off by the alerts that changed state meanwhile; after
    /// [`WebhookSink::close`] it is exact.
    pub fn in_flight(&self) -> u64 {
        self.queued
            .saturating_sub(self.delivered + self.failed + self.rejected + self.dropped_at_shutdown)
    }
}

impl WebhookStats {
    /// The counts now.
    pub fn snapshot(&self) -> WebhookStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WebhookStatsSnapshot {
            delivered: get(&self.delivered),
            retries: get(&self.retries),
            failed: get(&self.failed),
            rejected: get(&self.rejected),
            dropped: get(&self.dropped),
            dropped_at_shutdown: get(&self.dropped_at_shutdown),
            // Last, so that an alert counted done is also counted queued.
            queued: get(&self.queued),
        }
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Posts alerts to a webhook from a background task, never blocking the
/// caller. See the [module docs](self).
pub struct WebhookSink {
    tx: mpsc::Sender<Alert>,
    stats: Arc<WebhookStats>,
    worker: JoinHandle<()>,
    abort: CancellationToken,
    url: WebhookUrl,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.url)
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// Validates `config`, reads the system's root certificates for an
    /// `https://` URL, and starts the worker on the current tokio runtime.
    ///
    /// # Errors
    /// An invalid config ([`WebhookConfig::validate`]), no root certificates
    /// for HTTPS, or no tokio runtime.
    pub fn new(config: WebhookConfig) -> Result<Self, WebhookError> {
        config.validate()?;
        let roots = if config.url.is_https() {
            native_roots()?
        } else {
            RootCertStore::empty()
        };
        Self::with_roots(config, roots)
    }

    /// [`new`](Self::new) trusting `roots` for HTTPS.
    pub(crate) fn with_roots(
        config: WebhookConfig,
        roots: RootCertStore,
    ) -> Result<Self, WebhookError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookError::NoRuntime)?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|source| WebhookError::Tls { source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build(connector);

        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        for h in &config.headers {
            headers.append(h.name.clone(), h.value.clone());
        }

        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let stats = Arc::new(WebhookStats::default());
        let abort = CancellationToken::new();
        let worker = Worker {
            client,
            uri: config.url.0.clone(),
            url: config.url.clone(),
            headers,
            timeout: config.timeout,
            max_attempts: config.max_attempts,
            initial_backoff: config.initial_backoff,
            max_backoff: config.max_backoff,
            stats: Arc::clone(&stats),
        };
        let worker = runtime.spawn(worker.run(rx, abort.clone()));
        Ok(Self {
            tx,
            stats,
            worker,
            abort,
            url: config.url,
        })
    }

    /// Queues `alert` for delivery, or drops it if the queue is full. Never
    /// waits. The outcome is counted either way.
    ///
    /// # Errors
    /// [`WebhookSendError::Full`] when the alert was dropped for want of
    /// room.
    pub fn send(&self, alert: &Alert) -> Result<(), WebhookSendError> {
        // Reserving first keeps the clone off the path of a full queue.
        match self.tx.try_reserve() {
            Ok(permit) => {
                // Before the send, so a finished alert is never seen
                // unqueued.
                WebhookStats::add(&self.stats.queued, 1);
                permit.send(alert.clone());
                Ok(())
            }
            Err(e) => {
                WebhookStats::add(&self.stats.dropped, 1);
                Err(match e {
                    mpsc::error::TrySendError::Full(()) => WebhookSendError::Full,
                    mpsc::error::TrySendError::Closed(()) => WebhookSendError::Closed,
                })
            }
        }
    }

    /// The counters, shared with the worker: they stay readable after the
    /// sink is closed.
    pub fn stats(&self) -> Arc<WebhookStats> {
        Arc::clone(&self.stats)
    }

    /// Stops accepting alerts, delivers those queued (retries included)
    /// until `deadline`, then abandons the rest, counting them in
    /// `dropped_at_shutdown`, and returns the final counts.
    ///
    /// Returns by `deadline`, give or take the moment the worker needs to
    /// count what it abandons.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes abandons the queue at once,
    /// as if the deadline had passed.
    pub async fn close(self, deadline: Instant) -> WebhookStatsSnapshot {
        let Self {
            tx,
            stats,
            mut worker,
            abort,
            url,
        } = self;
        // With the sender gone the worker ends once the queue is empty.
        drop(tx);
        let _abandon_if_dropped = abort.clone().drop_guard();
        let finished = match tokio::time::timeout_at(deadline, &mut worker).await {
            Ok(finished) => finished,
            Err(_) => {
                abort.cancel();
                worker.await
            }
        };
        if let Err(e) = finished {
            warn!(error = %e, url = %url, "webhook worker ended abnormally; queued alerts are unaccounted for");
        }
        let snapshot = stats.snapshot();
        if snapshot.dropped_at_shutdown > 0 {
            warn!(
                dropped_at_shutdown = snapshot.dropped_at_shutdown,
                url = %url,
                "webhook alerts abandoned at shutdown"
            );
        }
        snapshot
    }
}

/// The system's root certificates.
fn native_roots() -> Result<RootCertStore, WebhookError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(WebhookError::NoRootCertificates {
            errors: found.errors.len() + ignored,
        });
    }
    if !found.errors.is_empty() || ignored > 0 {
        warn!(
            loaded = added,
            ignored,
            errors = found.errors.len(),
            "some system root certificates could not be read"
        );
    }
    Ok(roots)
}

/// What became of one alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    Rejected,
    Failed,
}

/// What became of one attempt.
#[derive(Debug)]
enum Attempt {
    Delivered,
    Rejected(StatusCode),
    /// Worth another try, after `retry_after` when the endpoint said so.
    Retry {
        cause: String,
        retry_after: Option<Duration>,
    },
}

struct Worker {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    /// For logs: the URL without its path.
    url: WebhookUrl,
    headers: HeaderMap,
    timeout: Duration,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    stats: Arc<WebhookStats>,
}

impl Worker {
    /// Delivers alerts in order until the queue is closed and empty, or
    /// `abort`; then counts what is left as dropped at shutdown.
    async fn run(self, mut rx: mpsc::Receiver<Alert>, abort: CancellationToken) {
        loop {
            let alert = tokio::select! {
                biased;
                () = abort.cancelled() => break,
                next = rx.recv() => match next {
                    Some(alert) => alert,
                    None => break,
                },
            };
            let outcome = tokio::select! {
                biased;
                () = abort.cancelled() => {
                    WebhookStats::add(&self.stats.dropped_at_shutdown, 1);
                    break;
                }
                outcome = self.deliver(&alert) => outcome,
            };
            let counter = match outcome {
                Outcome::Delivered => &self.stats.delivered,
                Outcome::Rejected => &self.stats.rejected,
                Outcome::Failed => &self.stats.failed,
            };
            WebhookStats::add(counter, 1);
        }
        rx.close();
        let mut left = 0;
        while rx.try_recv().is_ok() {
            left += 1;
        }
        WebhookStats::add(&self.stats.dropped_at_shutdown, left);
    }

    /// Posts one alert, retrying as configured.
    async fn deliver(&self, alert: &Alert) -> Outcome {
        let body = match serde_json::to_vec(alert) {
            Ok(body) => Bytes::from(body),
            Err(e) => {
                warn!(error = %e, rule = %alert.rule_id, "cannot encode an alert for the webhook");
                return Outcome::Failed;
            }
        };
        let mut attempt = 1;
        loop {
            let (cause, retry_after) = match self.attempt(body.clone()).await {
                Attempt::Delivered => {
                    debug!(rule = %alert.rule_id, attempt, "webhook alert delivered");
                    return Outcome::Delivered;
                }
                Attempt::Rejected(status) => {
                    warn!(status = status.as_u16(), rule = %alert.rule_id, url = %self.url, "webhook refused an alert; not retried");
                    return Outcome::Rejected;
                }
                Attempt::Retry { cause, retry_after } => (cause, retry_after),
            };
            if attempt >= self.max_attempts {
                warn!(error = %cause, attempts = attempt, rule = %alert.rule_id, url = %self.url, "webhook delivery failed; alert given up");
                return Outcome::Failed;
            }
            let wait = retry_after.map_or_else(
                || backoff(attempt, self.initial_backoff, self.max_backoff, jitter()),
                |after| after.min(self.max_backoff),
            );
            debug!(error = %cause, attempt, wait_ms = wait.as_millis(), "webhook attempt failed; retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
            WebhookStats::add(&self.stats.retries, 1);
        }
    }

    /// One request, within the timeout.
    async fn attempt(&self, body: Bytes) -> Attempt {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                return Attempt::Retry {
                    cause: error_chain(&e),
                    retry_after: None,
                }
            }
            Err(_) => {
                return Attempt::Retry {
                    cause: format!("no answer within {:?}", self.timeout),
                    retry_after: None,
                }
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        // The status decides; the body is read only so that the connection
        // can serve the next alert, and how that goes does not matter.
        let drain = Limited::new(response.into_body(), MAX_RESPONSE_BODY).collect();
        let _ = tokio::time::timeout(self.timeout, drain).await;
        classify(status, retry_after)
    }
}

/// Delivered (2xx), worth a retry (5xx, 429), or refused (anything else).
/// `Retry-After` counts only on 429 and 503, where it means "come back then".
fn classify(status: StatusCode, retry_after: Option<Duration>) -> Attempt {
    if status.is_success() {
        Attempt::Delivered
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let honoured =
            status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
        Attempt::Retry {
            cause: format!("http status {}", status.as_u16()),
            retry_after: retry_after.filter(|_| honoured),
        }
    } else {
        Attempt::Rejected(status)
    }
}

/// `Retry-After` in seconds; the HTTP-date form is not understood (the
/// backoff applies instead).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// The wait after the `failures`-th failed attempt (from 1): `initial`
/// doubling up to `max`, of which the upper half is scaled by `jitter` (in
/// `[0, 1)`), so that agents that failed together do not retry together,
/// yet none retries sooner than half the step.
fn backoff(failures: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doubled = 2u32.saturating_pow(failures.saturating_sub(1));
    let step = initial.saturating_mul(doubled).min(max);
    step / 2 + (step / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

/// A number in `[0, 1)`, different each call. Jitter needs no better: the
/// standard library's randomly keyed hasher will do.
fn jitter() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// An error and its causes, `: `-separated (hyper's own message is terse).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
