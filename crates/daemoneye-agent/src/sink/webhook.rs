//! Alert delivery to an HTTP(S) webhook.
//!
//! [`WebhookSink`] POSTs each alert as one JSON document (the
//! [`Alert`] as `serde_json` writes it, `Content-Type:
//! application/json`, `User-Agent: daemoneye-agent/<version>`, plus any
//! [`WebhookHeader`]s such as `Authorization: Bearer …`) to a
//! [`WebhookUrl`], over HTTP/1.1 or HTTPS (rustls with the system's root
//! certificates).
//!
//! It is an [`AlertSink`]: [`WebhookSink::start`] runs it behind its
//! [`SinkWorker`], which queues (bounded; a full queue drops and counts),
//! delivers in order, each request within a timeout, and retries what this
//! sink calls transient (connection errors, timeouts, HTTP 5xx and 429) with
//! the capped, jittered [`Backoff`] (a `Retry-After`
//! in seconds on 429 and 503 is honoured, up to the cap). Other answers
//! (3xx, 4xx) are rejections: counted and not retried. Delivery is at least
//! once: a request whose answer is lost is sent again.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use daemoneye_agent::alert::Alert;
//! use daemoneye_agent::sink::{WebhookConfig, WebhookSink};
//!
//! # async fn run(alert: Alert) -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = WebhookConfig::new("https://siem.example/hooks/daemoneye".parse()?);
//! config.headers.push("Authorization: Bearer s3cret".parse()?);
//! let sink = WebhookSink::start(&config)?;
//!
//! // Never waits: the alert is queued, or dropped and counted.
//! sink.try_send(alert)?;
//!
//! let stats = sink
//!     .close(tokio::time::Instant::now() + Duration::from_secs(5))
//!     .await;
//! assert_eq!(stats.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use collector_core::WhenFull;
use daemoneye_lib::Backoff;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use tracing::warn;

use super::{AlertFormat, AlertSink, Checkpoint, Delivery, Host, SinkWorker, WorkerConfig};
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
    /// A headers file is unreadable, readable by others, or has a bad line.
    #[error("webhook headers file {path}: {reason}")]
    HeadersFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong (never the line's text: it may be a secret).
        reason: String,
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
    /// The sink's worker could not be started.
    #[error("cannot start the webhook sink's worker")]
    Start {
        /// Why.
        #[source]
        source: std::io::Error,
    },
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

impl WebhookHeader {
    /// Reads headers from a file, one `Name: value` a line (blank lines and
    /// lines starting with `#` are skipped), so that secrets such as
    /// `Authorization` stay out of the command line, which every local user
    /// can read in `/proc`. The file must not be readable by group or others.
    ///
    /// # Errors
    /// [`WebhookError::HeadersFile`] naming the file and, for a bad header,
    /// the line number and why (not the line itself).
    pub fn from_file(path: &std::path::Path) -> Result<Vec<Self>, WebhookError> {
        let fail = |reason: String| WebhookError::HeadersFile {
            path: path.to_path_buf(),
            reason,
        };
        let text =
            daemoneye_lib::secret::read_secret_file(path).map_err(|e| fail(e.to_string()))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|(i, l)| {
                l.parse()
                    .map_err(|e: WebhookError| fail(format!("line {}: {e}", i + 1)))
            })
            .collect()
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
    /// The body's format (default: the native record).
    pub format: AlertFormat,
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
            format: AlertFormat::Native,
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

/// Posts alerts to a webhook: the [`AlertSink`]; see the
/// [module docs](self). [`start`](Self::start) runs it behind its worker.
pub struct WebhookSink {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    /// For logs: the URL without its path.
    url: WebhookUrl,
    headers: HeaderMap,
    timeout: Duration,
    format: AlertFormat,
    host: Host,
}

collector_core::debug_fields!(WebhookSink { url, format });

impl WebhookSink {
    /// Validates `config`, reads the system's root certificates for an
    /// `https://` URL, and starts the sink behind its worker (queue of
    /// `queue_capacity`, dropping when full; `max_attempts` with the
    /// backoff from `initial_backoff` to `max_backoff`, half jittered).
    ///
    /// # Errors
    /// An invalid config ([`WebhookConfig::validate`]), no root certificates
    /// for HTTPS, or a worker that cannot be started.
    pub fn start(config: &WebhookConfig) -> Result<SinkWorker, WebhookError> {
        Self::new(config)?.run(config)
    }

    /// [`start`](Self::start) trusting `roots` for HTTPS.
    #[cfg(test)]
    pub(crate) fn start_with_roots(
        config: &WebhookConfig,
        roots: RootCertStore,
    ) -> Result<SinkWorker, WebhookError> {
        Self::with_roots(config, roots)?.run(config)
    }

    /// Validates `config` and builds the sink (the system's root
    /// certificates for an `https://` URL), not yet started.
    ///
    /// # Errors
    /// An invalid config ([`WebhookConfig::validate`]) or no root
    /// certificates for HTTPS.
    pub fn new(config: &WebhookConfig) -> Result<Self, WebhookError> {
        config.validate()?;
        let roots = if config.url.is_https() {
            native_roots()?
        } else {
            RootCertStore::empty()
        };
        Self::with_roots(config, roots)
    }

    /// [`new`](Self::new) trusting `roots` for HTTPS.
    fn with_roots(config: &WebhookConfig, roots: RootCertStore) -> Result<Self, WebhookError> {
        config.validate()?;
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
        Ok(Self {
            client,
            uri: config.url.0.clone(),
            url: config.url.clone(),
            headers,
            timeout: config.timeout,
            format: config.format,
            host: Host::local(),
        })
    }

    /// How the worker queues and retries for `config`.
    pub fn worker_config(config: &WebhookConfig) -> WorkerConfig {
        WorkerConfig {
            capacity: config.queue_capacity,
            when_full: WhenFull::DropNewest,
            max_attempts: config.max_attempts,
            backoff: Backoff::new(config.initial_backoff, config.max_backoff).with_jitter(0.5),
        }
    }

    fn run(self, config: &WebhookConfig) -> Result<SinkWorker, WebhookError> {
        SinkWorker::start(self, Self::worker_config(config))
            .map_err(|source| WebhookError::Start { source })
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

impl AlertSink for WebhookSink {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn deliver(&mut self, alert: &Alert) -> Delivery {
        match self.format.encode(alert, &self.host) {
            Ok(body) => self.post(Bytes::from(body)).await,
            Err(e) => Delivery::Failed(format!("cannot encode the alert: {e}")),
        }
    }

    /// The checkpoint's JSON object (`"kind":"checkpoint"`) as the body.
    async fn deliver_checkpoint(&mut self, checkpoint: &Checkpoint) -> Delivery {
        match serde_json::to_vec(checkpoint) {
            Ok(body) => self.post(Bytes::from(body)).await,
            Err(e) => Delivery::Failed(format!("cannot encode the checkpoint: {e}")),
        }
    }
}

impl WebhookSink {
    async fn post(&self, body: Bytes) -> Delivery {
        // Causes name the URL (without its path, which may hold a token).
        match self.attempt(body).await {
            Delivery::Retry { cause, after } => Delivery::Retry {
                cause: format!("{}: {cause}", self.url),
                after,
            },
            Delivery::Rejected(cause) => Delivery::Rejected(format!("{}: {cause}", self.url)),
            other => other,
        }
    }
}

impl WebhookSink {
    /// One request, within the timeout.
    async fn attempt(&self, body: Bytes) -> Delivery {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        let response = match tokio::time::timeout(self.timeout, self.client.request(request)).await
        {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                return Delivery::Retry {
                    cause: daemoneye_lib::error_chain(&e),
                    after: None,
                }
            }
            Err(_) => {
                return Delivery::Retry {
                    cause: format!("no answer within {:?}", self.timeout),
                    after: None,
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
fn classify(status: StatusCode, retry_after: Option<Duration>) -> Delivery {
    if status.is_success() {
        Delivery::Delivered
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let honoured =
            status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE;
        Delivery::Retry {
            cause: format!("http status {}", status.as_u16()),
            after: retry_after.filter(|_| honoured),
        }
    } else {
        Delivery::Rejected(format!("http status {}; not retried", status.as_u16()))
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::SystemTime;

    use collector_core::ProcessEvent;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite};
    use tokio::io::{AsyncWriteExt as _, BufReader};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    use super::*;
    use crate::alert::AlertProcess;
    use crate::rules;
    use crate::sink::{SinkSendError, SinkStatsSnapshot};

    /// A self-signed certificate for `localhost` and 127.0.0.1, valid until
    /// 2126, and its key: the test HTTPS endpoint's (and the fleet tests'
    /// TLS broker's).
    const TEST_CERT: &str = include_str!("../../tests/data/localhost.pem");
    const TEST_KEY: &str = include_str!("../../tests/data/localhost.key");

    fn alert(pid: u32) -> Alert {
        let rule = rules::builtin().unwrap().into_iter().next().unwrap();
        let mut e = ProcessEvent::new(pid, "x");
        e.command_line = vec!["x".into(), "\"quoted\" ünïcode".into()];
        Alert::new(&rule, AlertProcess::from_event(&e, None), SystemTime::now())
    }

    /// Tiny backoffs so that retries take milliseconds.
    fn config(url: WebhookUrl) -> WebhookConfig {
        let mut c = WebhookConfig::new(url);
        c.initial_backoff = Duration::from_millis(1);
        c.max_backoff = Duration::from_millis(4);
        c.timeout = Duration::from_secs(10);
        c
    }

    /// A deadline no test should reach: `close` returns when the queue is done.
    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// Every queued alert is in exactly one final count.
    #[track_caller]
    fn assert_accounted(s: &SinkStatsSnapshot) {
        assert_eq!(
            s.queued,
            s.delivered + s.failed + s.rejected + s.dropped_at_shutdown,
            "{s:?}"
        );
        assert_eq!(s.in_flight(), 0, "{s:?}");
    }

    /// One request as the test endpoint read it.
    #[derive(Debug)]
    struct Seen {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// How the test endpoint answers a request.
    #[derive(Debug, Clone, Copy)]
    enum Reply {
        Status(u16),
        RetryAfter(u16, u64),
        /// Never answers, keeping the connection open.
        Stall,
    }

    type Script = Arc<Mutex<(VecDeque<Reply>, Reply)>>;

    /// A real HTTP/1.1 endpoint on 127.0.0.1 that answers with a script and
    /// reports each request it reads.
    struct Endpoint {
        addr: SocketAddr,
        seen: mpsc::UnboundedReceiver<Seen>,
    }

    impl Endpoint {
        /// Answers with `script` in turn, then with `then`.
        async fn start(script: &[Reply], then: Reply) -> Self {
            Self::start_with(script, then, None).await
        }

        /// The same over TLS with [`TEST_CERT`].
        async fn start_tls(script: &[Reply], then: Reply) -> Self {
            let cert = CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).unwrap();
            let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).unwrap();
            let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            Self::start_with(script, then, Some(acceptor)).await
        }

        async fn start_with(
            script: &[Reply],
            then: Reply,
            tls: Option<tokio_rustls::TlsAcceptor>,
        ) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let script: Script = Arc::new(Mutex::new((script.iter().copied().collect(), then)));
            let (tx, seen) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (script, tx, tls) = (Arc::clone(&script), tx.clone(), tls.clone());
                    tokio::spawn(async move {
                        match tls {
                            Some(tls) => {
                                if let Ok(stream) = tls.accept(stream).await {
                                    let _ = serve(stream, &script, &tx).await;
                                }
                            }
                            None => {
                                let _ = serve(stream, &script, &tx).await;
                            }
                        }
                    });
                }
            });
            Self { addr, seen }
        }

        fn url(&self, scheme: &str, path: &str) -> WebhookUrl {
            format!("{scheme}://{}{path}", self.addr).parse().unwrap()
        }

        /// Waits for the next request.
        async fn next(&mut self) -> Seen {
            self.seen.recv().await.unwrap()
        }

        /// Takes the requests read so far.
        fn take_seen(&mut self) -> Vec<Seen> {
            std::iter::from_fn(|| self.seen.try_recv().ok()).collect()
        }
    }

    /// Reads requests from one connection and answers them, until it closes.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        stream: S,
        script: &Script,
        seen: &mpsc::UnboundedSender<Seen>,
    ) -> std::io::Result<()> {
        let mut stream = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let mut words = line.split_whitespace();
            let method = words.next().unwrap_or_default().to_owned();
            let target = words.next().unwrap_or_default().to_owned();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                stream.read_line(&mut h).await?;
                let Some((name, value)) = h.trim_end().split_once(':') else {
                    break;
                };
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
            let len = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            stream.read_exact(&mut body).await?;
            let reply = {
                let mut script = script.lock().unwrap();
                let then = script.1;
                script.0.pop_front().unwrap_or(then)
            };
            let _ = seen.send(Seen {
                method,
                target,
                headers,
                body,
            });
            let answer = match reply {
                Reply::Stall => std::future::pending().await,
                Reply::Status(code) => {
                    format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\n\r\nok")
                }
                Reply::RetryAfter(code, secs) => {
                    format!("HTTP/1.1 {code} X\r\nretry-after: {secs}\r\ncontent-length: 0\r\n\r\n")
                }
            };
            stream.get_mut().write_all(answer.as_bytes()).await?;
            stream.get_mut().flush().await?;
        }
    }

    #[tokio::test]
    async fn an_alert_arrives_as_json_with_its_headers() {
        let mut endpoint = Endpoint::start(&[], Reply::Status(200)).await;
        let mut config = config(endpoint.url("http", "/hooks/daemoneye?source=test"));
        config
            .headers
            .push("Authorization:  Bearer t0ken ".parse().unwrap());
        config.headers.push("X-Tenant: blue".parse().unwrap());
        let sink = WebhookSink::start(&config).unwrap();
        let sent = alert(4242);
        sink.try_send(sent.clone()).unwrap();

        let seen = endpoint.next().await;
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.target, "/hooks/daemoneye?source=test");
        assert_eq!(seen.header("content-type"), Some("application/json"));
        assert_eq!(
            seen.header("user-agent"),
            Some(concat!("daemoneye-agent/", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(seen.header("authorization"), Some("Bearer t0ken"));
        assert_eq!(seen.header("x-tenant"), Some("blue"));
        assert_eq!(
            seen.header("host"),
            Some(endpoint.addr.to_string().as_str())
        );
        let back: Alert = serde_json::from_slice(&seen.body).unwrap();
        assert_eq!(back, sent);

        let stats = sink.close(far()).await;
        assert_eq!((stats.queued, stats.delivered, stats.retries), (1, 1, 0));
        assert_accounted(&stats);
    }

    #[tokio::test]
    async fn a_checkpoint_is_posted_as_its_json_object_and_retried_like_an_alert() {
        let mut endpoint = Endpoint::start(&[Reply::Status(503)], Reply::Status(200)).await;
        let sink = WebhookSink::start(&config(endpoint.url("http", "/hook"))).unwrap();
        let checkpoints = sink.checkpoint_stats();
        let cp = crate::sink::test_checkpoint(21);
        sink.send_checkpoint(cp.clone()).await.unwrap();
        for _ in 0..2 {
            let seen = endpoint.next().await;
            assert_eq!(seen.method, "POST");
            assert_eq!(seen.header("content-type"), Some("application/json"));
            let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
            assert_eq!(body["kind"], "checkpoint");
            assert_eq!(
                std::str::from_utf8(&seen.body)
                    .unwrap()
                    .parse::<crate::ledger::Anchor>()
                    .unwrap(),
                cp.anchor()
            );
        }
        let s = sink.close(far()).await;
        let c = checkpoints.snapshot();
        assert_eq!((c.queued, c.delivered, c.retries), (1, 1, 1));
        assert_eq!(s.queued, 0, "no alert counted");
    }

    #[tokio::test]
    async fn alerts_reach_an_https_endpoint_whose_certificate_is_trusted() {
        let mut endpoint = Endpoint::start_tls(&[], Reply::Status(201)).await;
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).unwrap())
            .unwrap();
        let sink =
            WebhookSink::start_with_roots(&config(endpoint.url("https", "/tls")), roots).unwrap();
        let sent = alert(7);
        sink.try_send(sent.clone()).unwrap();
        let seen = endpoint.next().await;
        assert_eq!(seen.target, "/tls");
        assert_eq!(serde_json::from_slice::<Alert>(&seen.body).unwrap(), sent);
        let stats = sink.close(far()).await;
        assert_eq!(stats.delivered, 1);
        assert_accounted(&stats);
    }

    #[tokio::test]
    async fn an_untrusted_https_endpoint_is_never_sent_the_alert() {
        let mut endpoint = Endpoint::start_tls(&[], Reply::Status(200)).await;
        // The system's roots do not include the test certificate.
        let mut c = config(endpoint.url("https", "/tls"));
        c.max_attempts = 2;
        let sink = WebhookSink::start_with_roots(&c, RootCertStore::empty()).unwrap();
        sink.try_send(alert(7)).unwrap();
        let stats = sink.close(far()).await;
        assert_eq!((stats.delivered, stats.failed, stats.retries), (0, 1, 1));
        assert_accounted(&stats);
        assert!(endpoint.take_seen().is_empty(), "no request got through");
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_delivered() {
        let mut endpoint = Endpoint::start(
            &[Reply::Status(500), Reply::Status(500)],
            Reply::Status(200),
        )
        .await;
        let sink = WebhookSink::start(&config(endpoint.url("http", "/"))).unwrap();
        let sent = alert(1);
        sink.try_send(sent.clone()).unwrap();
        let stats = sink.close(far()).await;
        assert_eq!(
            (stats.delivered, stats.retries, stats.failed, stats.rejected),
            (1, 2, 0, 0)
        );
        assert_accounted(&stats);
        let seen = endpoint.take_seen();
        assert_eq!(seen.len(), 3);
        assert!(
            seen.iter().all(|s| s.body == seen[0].body),
            "the same alert each time"
        );
    }

    #[tokio::test]
    async fn too_many_requests_and_unavailable_are_retried() {
        let mut endpoint = Endpoint::start(
            &[Reply::RetryAfter(429, 0), Reply::RetryAfter(503, 0)],
            Reply::Status(204),
        )
        .await;
        let sink = WebhookSink::start(&config(endpoint.url("http", "/"))).unwrap();
        sink.try_send(alert(1)).unwrap();
        let stats = sink.close(far()).await;
        assert_eq!((stats.delivered, stats.retries), (1, 2));
        assert_eq!(endpoint.take_seen().len(), 3);
    }

    #[tokio::test]
    async fn client_errors_are_rejected_without_retry() {
        let mut endpoint = Endpoint::start(&[], Reply::Status(400)).await;
        let sink = WebhookSink::start(&config(endpoint.url("http", "/"))).unwrap();
        sink.try_send(alert(1)).unwrap();
        let stats = sink.close(far()).await;
        assert_eq!(
            (stats.rejected, stats.retries, stats.failed, stats.delivered),
            (1, 0, 0, 0)
        );
        assert_accounted(&stats);
        assert_eq!(endpoint.take_seen().len(), 1, "exactly one request");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_fails_after_max_attempts() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap()
        };
        let mut c = config(format!("http://{addr}/").parse().unwrap());
        c.max_attempts = 3;
        let sink = WebhookSink::start(&c).unwrap();
        sink.try_send(alert(1)).unwrap();
        sink.try_send(alert(2)).unwrap();
        let stats = sink.close(far()).await;
        assert_eq!(
            (stats.failed, stats.retries, stats.delivered),
            (2, 4, 0),
            "two alerts, three attempts each"
        );
        assert_accounted(&stats);
    }

    #[tokio::test]
    async fn a_silent_endpoint_times_out_and_is_retried() {
        let mut endpoint = Endpoint::start(&[], Reply::Stall).await;
        let mut c = config(endpoint.url("http", "/"));
        c.timeout = Duration::from_millis(100);
        c.max_attempts = 2;
        let sink = WebhookSink::start(&c).unwrap();
        sink.try_send(alert(1)).unwrap();
        let stats = sink.close(far()).await;
        assert_eq!((stats.failed, stats.retries, stats.delivered), (1, 1, 0));
        assert_accounted(&stats);
        assert_eq!(endpoint.take_seen().len(), 2);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        let mut endpoint = Endpoint::start(&[], Reply::Stall).await;
        let mut c = config(endpoint.url("http", "/"));
        c.queue_capacity = 2;
        c.timeout = Duration::from_secs(600);
        let sink = WebhookSink::start(&c).unwrap();
        sink.try_send(alert(1)).unwrap();
        // The worker holds alert 1 and waits on an endpoint that never answers.
        endpoint.next().await;
        sink.try_send(alert(2)).unwrap();
        sink.try_send(alert(3)).unwrap();
        let started = Instant::now();
        for pid in 4..=10 {
            assert_eq!(sink.try_send(alert(pid)), Err(SinkSendError::Full));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let running = sink.stats().snapshot();
        assert_eq!((running.queued, running.dropped), (3, 7));
        assert_eq!(running.in_flight(), 3);

        let stats = sink.close(Instant::now() + Duration::from_millis(50)).await;
        assert_eq!((stats.dropped, stats.dropped_at_shutdown), (7, 3));
        assert_accounted(&stats);
        assert_eq!(stats.queued + stats.dropped, 10, "every send counted once");
    }

    #[tokio::test]
    async fn close_returns_by_its_deadline_and_accounts_for_everything() {
        let mut endpoint = Endpoint::start(&[], Reply::Status(503)).await;
        let mut c = config(endpoint.url("http", "/"));
        c.initial_backoff = Duration::from_secs(3600);
        c.max_backoff = Duration::from_secs(3600);
        let sink = WebhookSink::start(&c).unwrap();
        let stats = sink.stats();
        for pid in 1..=3 {
            sink.try_send(alert(pid)).unwrap();
        }
        // Alert 1 got its 503; the worker now waits half an hour or more.
        endpoint.next().await;
        let started = Instant::now();
        let deadline = started + Duration::from_millis(200);
        let closed = sink.close(deadline).await;
        assert!(Instant::now() >= deadline);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            (closed.dropped_at_shutdown, closed.delivered, closed.retries),
            (3, 0, 0)
        );
        assert_accounted(&closed);
        assert_eq!(stats.snapshot(), closed, "the shared counters agree");
    }

    #[tokio::test]
    async fn close_delivers_what_is_queued_in_order() {
        let mut endpoint = Endpoint::start(&[Reply::Status(500)], Reply::Status(200)).await;
        let sink = WebhookSink::start(&config(endpoint.url("http", "/"))).unwrap();
        for pid in 1..=5 {
            sink.try_send(alert(pid)).unwrap();
        }
        let stats = sink.close(far()).await;
        assert_eq!((stats.delivered, stats.retries), (5, 1));
        assert_accounted(&stats);
        let pids: Vec<u32> = endpoint
            .take_seen()
            .iter()
            .map(|s| {
                serde_json::from_slice::<Alert>(&s.body)
                    .unwrap()
                    .process
                    .pid
            })
            .collect();
        assert_eq!(pids, [1, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let c = WebhookConfig::new("http://127.0.0.1/".parse().unwrap());
        let b = WebhookSink::worker_config(&c).backoff;
        // The wait after the n-th failed attempt (from 1).
        let top = |n: u32| b.jittered(n.saturating_sub(1), 1.0);
        assert_eq!(top(1), Duration::from_millis(500));
        assert_eq!(top(2), Duration::from_secs(1));
        assert_eq!(top(3), Duration::from_secs(2));
        assert_eq!(top(7), Duration::from_secs(30), "32 s capped");
        assert_eq!(top(u32::MAX), Duration::from_secs(30), "no overflow");
        assert_eq!(b.jittered(0, 0.0), Duration::from_millis(250));
        assert_eq!(b.jittered(6, 0.0), Duration::from_secs(15));
        let samples: Vec<f64> = (0..200).map(|_| daemoneye_lib::jitter()).collect();
        assert!(samples.iter().all(|j| (0.0..1.0).contains(j)));
        assert!(
            samples.iter().any(|j| j.to_bits() != samples[0].to_bits()),
            "it varies"
        );
        assert_eq!(WebhookSink::worker_config(&c).max_attempts, 5);
    }

    #[test]
    fn statuses_decide_between_delivered_retried_and_rejected() {
        let retry = |code, after| match classify(StatusCode::from_u16(code).unwrap(), after) {
            Delivery::Retry { after, .. } => Some(after),
            _ => None,
        };
        let secs = Some(Duration::from_secs(7));
        assert!(matches!(
            classify(StatusCode::OK, None),
            Delivery::Delivered
        ));
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, None),
            Delivery::Delivered
        ));
        for code in [301, 400, 401, 403, 404, 413] {
            assert!(matches!(
                classify(StatusCode::from_u16(code).unwrap(), secs),
                Delivery::Rejected(_)
            ));
        }
        assert_eq!(retry(500, secs), Some(None), "Retry-After only on 429/503");
        assert_eq!(retry(502, None), Some(None));
        assert_eq!(retry(503, secs), Some(secs));
        assert_eq!(retry(429, secs), Some(secs));

        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(header::RETRY_AFTER, HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&h), secs);
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None, "dates fall back to the backoff");
    }

    #[test]
    fn urls_headers_and_settings_are_checked() {
        let url = |s: &str| s.parse::<WebhookUrl>();
        assert!(url("http://127.0.0.1:8080/hook").is_ok());
        assert!(url("https://siem.example/a/b?c=d").unwrap().is_https());
        assert!(!url("http://siem.example").unwrap().is_https());
        for bad in [
            "ftp://siem.example/",
            "siem.example",
            "/hook",
            "udp://1.2.3.4:5",
        ] {
            assert!(
                matches!(url(bad), Err(WebhookError::UnsupportedScheme { .. })),
                "{bad}: {:?}",
                url(bad)
            );
        }
        assert!(matches!(
            url("http://a b/"),
            Err(WebhookError::InvalidUrl { .. })
        ));
        assert!(matches!(url(""), Err(WebhookError::InvalidUrl { .. })));
        let creds = url("https://user:hunter2@siem.example/").unwrap_err();
        assert!(matches!(creds, WebhookError::CredentialsInUrl { .. }));
        assert!(!creds.to_string().contains("hunter2"), "{creds}");
        let shown = url("https://siem.example/services/T0KEN").unwrap();
        assert_eq!(shown.to_string(), "https://siem.example/…");
        assert!(!format!("{shown:?}").contains("T0KEN"));

        let header = |s: &str| s.parse::<WebhookHeader>();
        let auth = header("Authorization: Bearer a:b").unwrap();
        assert_eq!(auth.name(), "authorization");
        assert_eq!(auth.value(), "Bearer a:b", "split at the first colon");
        assert!(!format!("{auth:?}").contains("Bearer"), "{auth:?}");
        assert!(matches!(
            header("Bearer s3cret"),
            Err(WebhookError::HeaderSyntax)
        ));
        assert!(!header("Bearer s3cret")
            .unwrap_err()
            .to_string()
            .contains("s3cret"));
        assert!(matches!(header(": v"), Err(WebhookError::HeaderSyntax)));
        assert!(matches!(
            header("Bad Name: v"),
            Err(WebhookError::InvalidHeaderName { .. })
        ));
        assert!(matches!(
            header("X-A: a\nb"),
            Err(WebhookError::InvalidHeaderValue { .. })
        ));
        for reserved in ["Content-Type: text/plain", "host: x", "User-Agent: curl"] {
            assert!(matches!(
                header(reserved),
                Err(WebhookError::ReservedHeader { .. })
            ));
        }

        let base = WebhookConfig::new(url("http://127.0.0.1/").unwrap());
        assert!(base.validate().is_ok());
        let field = |c: WebhookConfig| match c.validate() {
            Err(WebhookError::InvalidConfig { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut c = base.clone();
        c.queue_capacity = 0;
        assert_eq!(field(c), "queue_capacity");
        let mut c = base.clone();
        c.queue_capacity = MAX_QUEUE_CAPACITY + 1;
        assert_eq!(field(c), "queue_capacity");
        let mut c = base.clone();
        c.max_attempts = 0;
        assert_eq!(field(c), "max_attempts");
        let mut c = base.clone();
        c.timeout = Duration::ZERO;
        assert_eq!(field(c), "timeout");
        let mut c = base.clone();
        c.initial_backoff = Duration::from_secs(60);
        assert_eq!(field(c), "initial_backoff");
        // No runtime needed to build it: its worker brings its own.
        assert!(WebhookSink::new(&base).is_ok());
    }

    #[test]
    fn public_types_are_send_and_sync() {
        collector_core::assert_send_sync!(WebhookSink, WebhookConfig, WebhookError);
    }

    #[test]
    fn headers_come_from_a_private_file_and_bad_lines_are_named_not_shown() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("headers");
        let write_private = |text: &str| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        write_private("# secrets\nAuthorization: Bearer s3cret\n\nX-Team: sec\n");
        let headers = WebhookHeader::from_file(&path).unwrap();
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[0].name().as_str(), "authorization");
        assert_eq!(headers[1].value().to_str().unwrap(), "sec");

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = WebhookHeader::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");

        write_private("X-Ok: 1\nno colon s3cret\n");
        let err = WebhookHeader::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("s3cret"), "the secret is not repeated: {err}");
        assert!(WebhookHeader::from_file(&dir.path().join("missing")).is_err());
    }
}
