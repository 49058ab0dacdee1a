//! The fleet sink: alerts shipped to NATS JetStream, at least once.
//!
//! The alerts come from the store's [outbox](daemoneye_store::outbox), not
//! from the alert handed to [`deliver`](AlertSink::deliver): every alert is
//! queued there in the transaction that stores it, so what the broker has
//! not acknowledged survives the network, the broker and the agent going
//! away. A delivery drains the outbox: it reads the waiting items in order
//! (at most [`FleetConfig::window`] unacknowledged publishes at a time),
//! publishes each to `<prefix>.<host>.alerts` with `Nats-Msg-Id` =
//! `<host>.alert-<id>` (the stream's duplicate window drops a resend),
//! awaits JetStream's acks and removes from the outbox what was
//! acknowledged. When the broker cannot be reached the delivery is retried
//! by the [`SinkWorker`](super::SinkWorker) with the one
//! [`Backoff`], for as long as the agent runs; the
//! client's own reconnects wait by the same backoff. The agent offers the
//! fleet sink each alert once the store writer has it, and each checkpoint
//! (the first at start, so an outbox left by a killed agent is drained when
//! it starts again).
//!
//! Checkpoints go the same way: the store queues each in the outbox with
//! its `checkpoint` ledger entry, and the drain publishes it, in its place
//! among the alerts, to `<prefix>.<host>.ledger` (`Nats-Msg-Id`
//! `<host>.checkpoint-<seq>`, the body the checkpoint's JSON line), where
//! `daemoneye-cli fleet verify` reads them as anchors of the host's chain.
//!
//! Events, when the config asks for their domains ([`FleetConfig::events`]:
//! `process`, `network`, `filesystem`, `performance`), go the same way too:
//! the store queues each in the transaction that stores its row, and the
//! drain publishes it to `<prefix>.<host>.events.<domain>` (`Nats-Msg-Id`
//! `<host>.event-<domain>-<event id>`, the body the event as the event
//! model serializes it). The sink reads the outbox on a read-only connection
//! of its own (not through the writer's queue, so shipping goes on while
//! the writer stores) and its worker drains it each time the writer has
//! committed items there ([`StoreWriter::outbox_changes`]): an item is
//! shipped once it is committed, never before. A full outbox drops events before any alert or
//! checkpoint ([outbox](daemoneye_store::outbox)).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{ConnectOptions, HeaderMap};
use bytes::Bytes;
use collector_core::lock;
use collector_core::metrics::{Counter, Gauge, Registry};
use collector_core::{EventKind, WhenFull};
use daemoneye_lib::secret::{read_secret_file, Secret, SecretFileError};
use daemoneye_lib::Backoff;
use daemoneye_store::{OutboxItem, OutboxKind, OutboxState, StoreWriter};
use tracing::{info, warn};

use super::{AlertFormat, AlertSink, Checkpoint, Delivery, Host, WorkerConfig};
use crate::alert::Alert;

use daemoneye_lib::fleet;
pub use daemoneye_lib::fleet::{subject_token, DEFAULT_STREAM, DEFAULT_SUBJECT_PREFIX};
/// Unacknowledged publishes at a time, when the config names none.
pub const DEFAULT_WINDOW: usize = 256;
/// How many windows of items a drain reads from the outbox at once.
const READ_AHEAD_WINDOWS: usize = 4;
/// How long a stream the sink creates keeps a message, when the config
/// names nothing else.
pub const DEFAULT_STREAM_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most bytes a stream the sink creates holds (the oldest messages
/// discarded past it), when the config names nothing else: 10 GiB.
pub const DEFAULT_STREAM_MAX_BYTES: u64 = 10 << 30;
/// The duplicate window of a stream the sink creates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a publish waits for its ack, and a connection for the server.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the oldest item may wait in the outbox before health says
/// degraded, when the config names no `max_outbox_age`.
pub const DEFAULT_MAX_OUTBOX_AGE: Duration = Duration::from_secs(300);

/// The fleet sink's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetConfig {
    /// The server(s): `nats://host:4222`, comma-separated for several;
    /// `nats://user:password@host` for a user and password, `tls://` for
    /// TLS.
    pub url: String,
    /// This host's name in the subjects and message ids (a subject token:
    /// `.`, `*`, `>` and white space are replaced by `_`).
    pub host: String,
    /// The subjects' first token.
    pub subject_prefix: String,
    /// The JetStream stream the subjects belong to.
    pub stream: String,
    /// Create the stream (subjects `<prefix>.*.alerts`,
    /// `<prefix>.*.ledger` and `<prefix>.*.events.*`, file storage, a
    /// [`DUPLICATE_WINDOW`], [`replicas`](Self::replicas) copies, kept
    /// [`stream_max_age`](Self::stream_max_age) and up to
    /// [`stream_max_bytes`](Self::stream_max_bytes)) when it is
    /// missing, and add those subjects to one that lacks them; otherwise a
    /// missing stream is an error.
    pub create_stream: bool,
    /// A NATS credentials file (JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// Its contents, once read ([`load_creds`](Self::load_creds): as root,
    /// before privileges are dropped); read at connect time otherwise.
    pub creds: Option<Secret>,
    /// A file holding a user's nkey seed (`SU…`), for a server that knows
    /// the user by its public nkey (no JWT).
    pub nkey_file: Option<PathBuf>,
    /// The seed, once read ([`load_creds`](Self::load_creds)).
    pub nkey: Option<Secret>,
    /// A CA file the server's certificate must chain to (TLS required).
    pub tls_ca_file: Option<PathBuf>,
    /// The alerts' format in the messages.
    pub format: AlertFormat,
    /// The most items the outbox holds (the oldest dropped past it).
    pub outbox_items: usize,
    /// The most unacknowledged publishes at a time.
    pub window: usize,
    /// How long the oldest item may wait in the outbox before the fleet
    /// component is degraded.
    pub max_outbox_age: Duration,
    /// The copies a stream the sink creates keeps (1 to 5; 3 on a
    /// three-node cluster, so a node lost loses nothing).
    pub replicas: usize,
    /// The event domains shipped besides alerts and checkpoints (none by
    /// default).
    pub events: Vec<EventKind>,
    /// How long a stream the sink creates keeps a message.
    pub stream_max_age: Duration,
    /// The most bytes a stream the sink creates holds (the oldest
    /// discarded past it).
    pub stream_max_bytes: u64,
}

impl FleetConfig {
    /// The defaults for the server `url` and this `host`.
    pub fn new(url: impl Into<String>, host: &str) -> Self {
        Self {
            url: url.into(),
            host: subject_token(host),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
            stream: DEFAULT_STREAM.to_owned(),
            create_stream: true,
            creds_file: None,
            creds: None,
            nkey_file: None,
            nkey: None,
            tls_ca_file: None,
            format: AlertFormat::Native,
            outbox_items: daemoneye_store::DEFAULT_OUTBOX_ITEMS,
            window: DEFAULT_WINDOW,
            max_outbox_age: DEFAULT_MAX_OUTBOX_AGE,
            replicas: 1,
            events: Vec::new(),
            stream_max_age: DEFAULT_STREAM_MAX_AGE,
            stream_max_bytes: DEFAULT_STREAM_MAX_BYTES,
        }
    }

    /// Reads the creds file and the nkey file, once each (refused when
    /// others may read them; see [`read_secret_file`]; an nkey file must
    /// hold a user's seed).
    ///
    /// # Errors
    /// [`FleetError::Creds`].
    pub fn load_creds(&mut self) -> Result<(), FleetError> {
        let read = |path: &PathBuf| {
            read_secret_file(path).map_err(|source| FleetError::Creds {
                path: path.clone(),
                source,
            })
        };
        if let (Some(path), None) = (&self.creds_file, &self.creds) {
            self.creds = Some(Secret::new(read(path)?));
        }
        if let (Some(path), None) = (&self.nkey_file, &self.nkey) {
            let seed = read(path)?.trim().to_owned();
            // A user seed: `SU` and 56 more base32 characters.
            let base32 = |c: char| c.is_ascii_uppercase() || ('2'..='7').contains(&c);
            if !(seed.len() == 58 && seed.starts_with("SU") && seed.chars().all(base32)) {
                return Err(FleetError::Creds {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "not a user's nkey seed (one line, `SU` and 56 more characters)",
                    )
                    .into(),
                });
            }
            self.nkey = Some(Secret::new(seed));
        }
        Ok(())
    }

    /// The subject this host's alerts go to.
    pub fn alerts_subject(&self) -> String {
        fleet::subject(&self.subject_prefix, &self.host, fleet::ALERTS)
    }

    /// The subject this host's checkpoints go to.
    pub fn ledger_subject(&self) -> String {
        fleet::subject(&self.subject_prefix, &self.host, fleet::LEDGER)
    }

    /// The subject this host's events of `domain` go to.
    pub fn events_subject(&self, domain: EventKind) -> String {
        fleet::subject(
            &self.subject_prefix,
            &self.host,
            &fleet::events(domain.as_str()),
        )
    }

    /// The subjects of every host a stream of the fleet holds.
    pub fn stream_subjects(&self) -> Vec<String> {
        [
            fleet::ALERTS.to_owned(),
            fleet::LEDGER.to_owned(),
            fleet::events("*"),
        ]
        .iter()
        .map(|what| fleet::every_host(&self.subject_prefix, what))
        .collect()
    }
}

/// The fleet sink's state, as health and metrics read it.
#[derive(Debug)]
pub struct FleetStatus {
    /// 1 while the client is connected to a server.
    pub connected: Gauge,
    /// Items waiting in the outbox, at the last look.
    pub outbox_depth: Gauge,
    /// When the oldest waiting item entered the outbox, unix seconds, at
    /// the last look; 0 while it is empty.
    pub outbox_oldest_queued: Gauge,
    /// Alerts and checkpoints the outbox dropped when full, ever (kept in
    /// the store).
    pub outbox_dropped: Gauge,
    /// Events the outbox dropped when full, ever (kept in the store).
    pub outbox_dropped_events: Gauge,
    /// 1 from a look at the outbox that found new drops until it is empty
    /// again.
    pub dropping: Gauge,
    /// Messages published (resends included).
    pub published: Counter,
    /// Messages JetStream acknowledged.
    pub acknowledged: Counter,
    /// Acknowledged messages the stream had already (resends it dropped).
    pub duplicates: Counter,
    /// Drains that failed (to be retried).
    pub retried: Counter,
    /// Why the last drain failed; empty after one succeeds.
    last_error: Mutex<String>,
    /// Bumped at every change, for [`wait_for`](Self::wait_for).
    changed: tokio::sync::watch::Sender<u64>,
    /// Whether the outbox was looked at yet (the drops a first look finds
    /// are an earlier run's, not new).
    looked: AtomicBool,
    /// How long the oldest item may wait ([`FleetConfig::max_outbox_age`]).
    max_outbox_age: Duration,
}

impl Default for FleetStatus {
    fn default() -> Self {
        Self {
            connected: Gauge::default(),
            outbox_depth: Gauge::default(),
            outbox_oldest_queued: Gauge::default(),
            outbox_dropped: Gauge::default(),
            outbox_dropped_events: Gauge::default(),
            dropping: Gauge::default(),
            published: Counter::default(),
            acknowledged: Counter::default(),
            duplicates: Counter::default(),
            retried: Counter::default(),
            last_error: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
            looked: AtomicBool::new(false),
            max_outbox_age: DEFAULT_MAX_OUTBOX_AGE,
        }
    }
}

impl FleetStatus {
    /// A status judging the outbox's age against `max_outbox_age`.
    pub fn new(max_outbox_age: Duration) -> Self {
        Self {
            max_outbox_age,
            ..Self::default()
        }
    }

    /// How long the oldest item has waited in the outbox at `now` (as of
    /// the last look); `None` while it is empty.
    pub fn outbox_age(&self, now: std::time::SystemTime) -> Option<Duration> {
        let queued = u64::try_from(self.outbox_oldest_queued.get()).ok()?;
        if queued == 0 {
            return None;
        }
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Some(Duration::from_secs(now.saturating_sub(queued)))
    }

    /// The outbox's age at `now` when it is past `max_outbox_age`, with
    /// that bound.
    pub fn outbox_stale(&self, now: std::time::SystemTime) -> Option<(Duration, Duration)> {
        self.outbox_age(now)
            .filter(|age| *age > self.max_outbox_age)
            .map(|age| (age, self.max_outbox_age))
    }

    /// Waits until `done` holds, looked at after every change.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait_for(&self, done: impl Fn(&Self) -> bool) {
        let mut rx = self.changed.subscribe();
        // Fails only when the sender is gone, which it never is while
        // `self` lives.
        let _ = rx.wait_for(|_| done(self)).await;
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Why the last attempt failed (empty: it did not).
    pub fn last_error(&self) -> String {
        lock(&self.last_error).clone()
    }

    fn set_error(&self, e: &str) {
        e.clone_into(&mut lock(&self.last_error));
        self.bump();
    }

    fn set_connected(&self, on: bool) {
        self.connected.set_bool(on);
        self.bump();
    }

    pub(crate) fn outbox(&self, state: OutboxState) {
        let dropped = i64::try_from(state.dropped).unwrap_or(i64::MAX);
        let dropped_events = i64::try_from(state.dropped_events).unwrap_or(i64::MAX);
        let before = self.outbox_dropped.swap(dropped);
        let events_before = self.outbox_dropped_events.swap(dropped_events);
        let looked = self.looked.swap(true, Ordering::Relaxed);
        if state.depth == 0 {
            self.dropping.set_bool(false);
        } else if looked && (dropped > before || dropped_events > events_before) {
            self.dropping.set_bool(true);
        }
        self.outbox_depth
            .set(i64::try_from(state.depth).unwrap_or(i64::MAX));
        // Seconds, rounded down: an item is never younger than it says.
        let oldest = state
            .oldest_queued_at
            .filter(|_| state.depth > 0)
            .map_or(0, |ns| ns.div_euclid(1_000_000_000).max(1));
        self.outbox_oldest_queued.set(oldest);
        self.bump();
    }

    /// Registers the counters as `daemoneye_fleet_*`.
    pub fn register_metrics(&self, registry: &Registry) {
        let gauges = [
            (
                "daemoneye_fleet_connected",
                "1 while connected to a NATS server.",
                &self.connected,
            ),
            (
                "daemoneye_fleet_outbox_depth",
                "Items waiting in the outbox.",
                &self.outbox_depth,
            ),
            (
                "daemoneye_fleet_outbox_oldest_queued_timestamp_seconds",
                "When the oldest waiting item entered the outbox (unix seconds; 0: empty). Its age is time() minus this.",
                &self.outbox_oldest_queued,
            ),
            (
                "daemoneye_fleet_outbox_dropped",
                "Alerts and checkpoints the full outbox dropped (oldest first, after every event), ever.",
                &self.outbox_dropped,
            ),
            (
                "daemoneye_fleet_outbox_dropped_events",
                "Events the full outbox dropped (oldest first, before any alert), ever.",
                &self.outbox_dropped_events,
            ),
        ];
        for (name, help, g) in gauges {
            registry.register_gauge(name, help, &[], g);
        }
        let counters = [
            (
                "daemoneye_fleet_published_total",
                "Messages published to JetStream.",
                &self.published,
            ),
            (
                "daemoneye_fleet_acknowledged_total",
                "Messages JetStream acknowledged.",
                &self.acknowledged,
            ),
            (
                "daemoneye_fleet_duplicates_total",
                "Resends the stream had already.",
                &self.duplicates,
            ),
            (
                "daemoneye_fleet_retried_total",
                "Drains that failed and are retried.",
                &self.retried,
            ),
        ];
        for (name, help, c) in counters {
            registry.register_counter(name, help, &[], c);
        }
    }
}

/// Why a drain failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// No server could be reached or the connection was refused
    /// (including bad credentials).
    #[error("cannot connect to {url}")]
    Connect {
        /// The configured URL.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// The credentials file cannot be read, or is not one.
    #[error("cannot read the credentials file {}", path.display())]
    Creds {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SecretFileError,
    },
    /// The stream is missing (and not to be created) or cannot be created.
    #[error("stream {stream}: {reason}")]
    Stream {
        /// The stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// A publish was not acknowledged.
    #[error("publish to {subject} not acknowledged: {reason}")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// The store's outbox cannot be read or acked.
    #[error("outbox")]
    Outbox(#[from] daemoneye_store::StoreError),
    /// A read of the outbox did not finish (its thread panicked or was
    /// cancelled).
    #[error("the outbox's read did not finish: {0}")]
    ReadAborted(String),
}

/// The fleet sink; see the [module docs](self).
pub struct FleetSink {
    config: FleetConfig,
    writer: StoreWriter,
    status: Arc<FleetStatus>,
    host: Host,
    js: Option<jetstream::Context>,
    /// Whether the stream is known to be there (checked again after a
    /// publish fails: it may have been deleted).
    stream_ready: bool,
    /// The client's reconnect waits (shared with the worker's retries).
    backoff: Backoff,
    /// The outbox read on a connection of its own, off the writer's queue
    /// (opened at the first drain; `None` after it failed to open: then
    /// read through the writer).
    reader: Reader,
    /// The last item this sink shipped with every item before it
    /// acknowledged: a drain reads after it (what it removed may still
    /// wait in the writer's queue).
    shipped_through: i64,
    /// Removals queued to the writer, oldest first, not yet seen applied.
    removals: std::collections::VecDeque<daemoneye_store::OutboxAck>,
    /// Whether the outbox's state was read since the sink started.
    state_known: bool,
}

/// The sink's own connection to the outbox.
enum Reader {
    NotOpen,
    Open(Box<daemoneye_store::Store>),
    /// It could not be opened (said once): read through the writer.
    Unavailable,
}

collector_core::debug_fields!(FleetSink { config });

impl FleetSink {
    /// The sink over `writer`'s outbox (the store must have been opened
    /// [`with_outbox`](daemoneye_store::Store::with_outbox)). Connects on
    /// the first delivery.
    pub fn new(config: FleetConfig, writer: StoreWriter) -> Self {
        let host = Host {
            hostname: config.host.clone(),
            ..Host::local()
        };
        let status = Arc::new(FleetStatus::new(config.max_outbox_age));
        Self {
            config,
            writer,
            status,
            host,
            js: None,
            stream_ready: false,
            backoff: Self::worker_config().backoff,
            reader: Reader::NotOpen,
            shipped_through: 0,
            removals: std::collections::VecDeque::new(),
            state_known: false,
        }
    }

    /// Up to `limit` committed items after `after`, read on the sink's own
    /// connection (on a blocking thread: a read holds neither the writer
    /// nor the runtime), or through the writer when that cannot be opened.
    async fn read(&mut self, after: i64, limit: usize) -> Result<Vec<OutboxItem>, FleetError> {
        if matches!(self.reader, Reader::NotOpen) {
            self.reader = match daemoneye_store::Store::open_file_read_only(self.writer.path()) {
                Ok(store) => Reader::Open(Box::new(store)),
                Err(e) => {
                    warn!(sink = "fleet", error = %daemoneye_lib::error_chain(&e), "cannot open the outbox to read it; reading through the store's writer");
                    Reader::Unavailable
                }
            };
        }
        let reader = match std::mem::replace(&mut self.reader, Reader::NotOpen) {
            Reader::Open(reader) => reader,
            Reader::NotOpen | Reader::Unavailable => {
                self.reader = Reader::Unavailable;
                return Ok(self.writer.outbox_read(after, limit).await?);
            }
        };
        let read = tokio::task::spawn_blocking(move || {
            let items = reader.outbox_read(after, limit);
            (reader, items)
        })
        .await;
        match read {
            Ok((reader, items)) => {
                self.reader = Reader::Open(reader);
                Ok(items?)
            }
            // The read panicked or was cancelled: opened again next time.
            Err(e) => Err(FleetError::ReadAborted(e.to_string())),
        }
    }

    /// The outbox's state from the removals the writer has applied (the
    /// latest), without waiting for those it has not; read from the writer
    /// once when nothing tells it.
    async fn look(&mut self) -> Result<(), FleetError> {
        let mut state = None;
        while let Some(applied) = self
            .removals
            .front_mut()
            .and_then(daemoneye_store::OutboxAck::try_applied)
        {
            self.removals.pop_front();
            state = Some(applied?);
        }
        if state.is_none() && !self.state_known && self.removals.is_empty() {
            state = Some(self.writer.outbox_state().await?);
        }
        if let Some(state) = state {
            self.state_known = true;
            self.status.outbox(state);
        }
        Ok(())
    }

    /// The sink's state, shared with health.
    pub fn status(&self) -> Arc<FleetStatus> {
        Arc::clone(&self.status)
    }

    /// The worker the sink runs behind: a drain that fails is retried for
    /// as long as the agent runs (the alerts wait in the outbox, not in
    /// the worker's queue, whose drops only skip a wake-up).
    pub fn worker_config() -> WorkerConfig {
        WorkerConfig {
            capacity: 1024,
            when_full: WhenFull::DropNewest,
            max_attempts: u32::MAX,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
                .with_jitter(0.2),
        }
    }

    async fn connect(&mut self) -> Result<jetstream::Context, FleetError> {
        let js = match &self.js {
            Some(js) => js.clone(),
            None => {
                // Read once (as root, before the drop, when separated); a
                // failed read is tried again at the next connect.
                self.config.load_creds()?;
                let js = self.open().await?;
                self.js = Some(js.clone());
                js
            }
        };
        if !self.stream_ready {
            self.ensure_stream(&js).await?;
            self.stream_ready = true;
        }
        Ok(js)
    }

    /// A client (reconnecting by itself from then on) and its JetStream
    /// context.
    async fn open(&self) -> Result<jetstream::Context, FleetError> {
        let c = &self.config;
        let status = Arc::clone(&self.status);
        let backoff = self.backoff;
        let mut options = ConnectOptions::new()
            .name("daemoneye-agent")
            .connection_timeout(ACK_TIMEOUT)
            .reconnect_delay_callback(move |n| {
                backoff.jittered(
                    u32::try_from(n).unwrap_or(u32::MAX),
                    daemoneye_lib::jitter(),
                )
            })
            .event_callback(move |event| {
                let status = Arc::clone(&status);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            status.set_connected(true);
                            info!(sink = "fleet", "connected to the NATS server");
                        }
                        async_nats::Event::Disconnected => {
                            status.set_connected(false);
                            warn!(sink = "fleet", "disconnected from the NATS server");
                        }
                        other => warn!(sink = "fleet", event = %other, "NATS client event"),
                    }
                }
            });
        // async-nats ignores a URL's user and password (or token): they are
        // given to it as options.
        if let Some((user, password)) = fleet::credentials(&c.url) {
            options = match password {
                Some(password) => options.user_and_password(user, password),
                None => options.token(user),
            };
        }
        if let (Some(creds), Some(path)) = (&c.creds, &c.creds_file) {
            options = options
                .credentials(creds.expose())
                .map_err(|e| FleetError::Creds {
                    path: path.clone(),
                    source: e.into(),
                })?;
        }
        if let Some(seed) = &c.nkey {
            options = options.nkey(seed.expose().to_owned());
        }
        if let Some(ca) = &c.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let client = options
            .connect(fleet::servers(&c.url))
            .await
            .map_err(|source| FleetError::Connect {
                url: daemoneye_lib::redact_url(&c.url),
                source,
            })?;
        self.status.set_connected(true);
        Ok(jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client))
    }

    /// Creates the stream when missing (as configured), or checks it is
    /// there.
    async fn ensure_stream(&self, js: &jetstream::Context) -> Result<(), FleetError> {
        let c = &self.config;
        let stream_error = |reason: String| FleetError::Stream {
            stream: c.stream.clone(),
            reason,
        };
        if c.create_stream {
            let config = stream::Config {
                name: c.stream.clone(),
                subjects: c.stream_subjects(),
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                num_replicas: c.replicas,
                max_age: c.stream_max_age,
                max_bytes: i64::try_from(c.stream_max_bytes).unwrap_or(i64::MAX),
                discard: stream::DiscardPolicy::Old,
                ..stream::Config::default()
            };
            let found = js.get_or_create_stream(config).await.map_err(|e| {
                stream_error(match e.kind() {
                    // The stream reserves its `max_bytes` when it is made.
                    jetstream::context::CreateStreamErrorKind::JetStream(api)
                        if api.error_code() == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED =>
                    {
                        format!(
                            "{e}: the broker's JetStream store has less room than \
                             fleet.stream_max_bytes ({} bytes); lower that or raise \
                             the broker's max_file_store",
                            c.stream_max_bytes
                        )
                    }
                    _ => e.to_string(),
                })
            })?;
            // A stream made by an older agent lacks the events subjects.
            let mut existing = found.cached_info().config.clone();
            let missing: Vec<String> = c
                .stream_subjects()
                .into_iter()
                .filter(|s| !existing.subjects.contains(s))
                .collect();
            if !missing.is_empty() {
                existing.subjects.extend(missing);
                js.update_stream(existing)
                    .await
                    .map_err(|e| stream_error(format!("adding the fleet's subjects: {e}")))?;
            }
        } else {
            js.get_stream(&c.stream)
                .await
                .map_err(|e| stream_error(e.to_string()))?;
        }
        info!(sink = "fleet", url = %daemoneye_lib::redact_url(&c.url), stream = %c.stream, subject = %c.alerts_subject(), "fleet sink ready");
        Ok(())
    }

    /// Publishes everything committed to the outbox after what this sink
    /// shipped, oldest first, with at most [`FleetConfig::window`]
    /// publishes unacknowledged: a window that slides (the next item is
    /// published as the oldest is acknowledged), the items read on the
    /// sink's own connection ([`read`](Self::read)) four windows at a time,
    /// so a drain ships while the writer goes on storing; what was
    /// acknowledged removed from the outbox half a window at a time, the
    /// removal queued to the store writer without waiting for it (what a
    /// crash leaves unremoved is sent again; the stream drops the resend).
    /// What the writer commits meanwhile is shipped by the next drain (the
    /// writer's [`outbox_changes`](StoreWriter::outbox_changes) wake the
    /// worker).
    async fn drain(&mut self) -> Result<(), FleetError> {
        let js = self.connect().await?;
        let window = self.config.window.max(1);
        let refill = window.div_ceil(2);
        // An item unencodable (`None`) holds its place and is done at once.
        let mut in_flight = std::collections::VecDeque::with_capacity(window);
        let mut acked = Vec::with_capacity(window);
        // Read ahead of the window: a read is made seldom and large.
        let read_ahead = window.saturating_mul(READ_AHEAD_WINDOWS);
        let mut ready = std::collections::VecDeque::with_capacity(read_ahead);
        let (mut after, mut more, mut failed) = (self.shipped_through, true, None);
        let mut rows = Rows::default();
        loop {
            if more && failed.is_none() && ready.len() < refill {
                let items = self.read(after, read_ahead).await?;
                more = !items.is_empty();
                if let Some(last) = items.last() {
                    after = last.id;
                }
                ready.extend(items);
            }
            while failed.is_none() && in_flight.len() < window {
                let Some(item) = ready.pop_front() else {
                    break;
                };
                let msg_id = format!("{}.{}", self.config.host, item.msg_id);
                let (id, ends_row) = (item.id, item.ends_row);
                let Some((subject, payload)) = self.message(item) else {
                    // Unencodable: done at once, no retry would mend it.
                    in_flight.push_back((id, ends_row, String::new(), None));
                    continue;
                };
                let mut headers = HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
                match js
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await
                {
                    Ok(ack) => {
                        self.status.published.inc();
                        in_flight.push_back((id, ends_row, subject, Some(ack)));
                    }
                    Err(e) => failed = Some((subject, e.to_string())),
                }
            }
            let Some((id, ends_row, subject, ack)) = in_flight.pop_front() else {
                break;
            };
            let done = match ack {
                None => true,
                Some(ack) => match ack.await {
                    Ok(ack) => {
                        self.status.acknowledged.inc();
                        if ack.duplicate {
                            self.status.duplicates.inc();
                        }
                        true
                    }
                    Err(e) => {
                        failed.get_or_insert_with(|| (subject, e.to_string()));
                        false
                    }
                },
            };
            if let Some(id) = rows.done(id, ends_row, done) {
                acked.push(id);
                // In order, up to the first failure: what follows it is
                // read again by the next drain.
                if failed.is_none() {
                    self.shipped_through = id;
                }
            }
            if acked.len() >= refill {
                let ids = std::mem::take(&mut acked);
                self.removals
                    .push_back(self.writer.outbox_ack_queued(ids).await?);
            }
        }
        if !acked.is_empty() {
            self.removals
                .push_back(self.writer.outbox_ack_queued(acked).await?);
        }
        // The removals' states as the writer applies them, without waiting
        // (it signals each: a later drain looks again).
        self.look().await?;
        if let Some((subject, reason)) = failed {
            self.stream_ready = false;
            return Err(FleetError::Publish { subject, reason });
        }
        Ok(())
    }

    /// The item's subject and message body (an alert in the configured
    /// format, a checkpoint or an event as stored); `None` (logged) for a
    /// body that is not what its kind says, which no retry would mend.
    fn message(&self, item: OutboxItem) -> Option<(String, Bytes)> {
        match item.kind {
            OutboxKind::Alert => self
                .encode(&item)
                .map(|body| (self.config.alerts_subject(), body)),
            OutboxKind::Checkpoint => match serde_json::from_str::<Checkpoint>(&item.body) {
                Ok(_) => Some((self.config.ledger_subject(), Bytes::from(item.body))),
                Err(e) => {
                    warn!(sink = "fleet", item = item.id, error = %e, "outbox item is not a checkpoint; dropped");
                    None
                }
            },
            // Stored as the event model serializes it: shipped as is.
            OutboxKind::Event(domain) => {
                Some((self.config.events_subject(domain), Bytes::from(item.body)))
            }
            // `read` skips kinds this build does not know.
            _ => None,
        }
    }

    /// The item's message body in the configured format; `None` (logged)
    /// for a body that is not an alert record, which no retry would mend.
    fn encode(&self, item: &OutboxItem) -> Option<Bytes> {
        let encoded = serde_json::from_str::<Alert>(&item.body)
            .and_then(|alert| self.config.format.encode(&alert, &self.host));
        match encoded {
            Ok(text) => Some(Bytes::from(text)),
            Err(e) => {
                warn!(sink = "fleet", item = item.id, error = %e, "outbox item is not an alert record; dropped");
                None
            }
        }
    }

    /// A delivery: the outbox drained, or the failure counted (retried).
    async fn drain_outbox(&mut self) -> Delivery {
        match self.drain().await {
            Ok(()) => {
                self.status.set_error("");
                Delivery::Delivered
            }
            Err(e) => self.failed(&e).await,
        }
    }

    /// Counts and logs a failed attempt, and looks at the outbox (its
    /// depth while the broker is away).
    async fn failed(&self, e: &FleetError) -> Delivery {
        let cause = daemoneye_lib::error_chain(e);
        let depth = self.writer.outbox_state().await.ok().map(|state| {
            self.status.outbox(state);
            state.depth
        });
        self.status.retried.inc();
        self.status.set_error(&cause);
        if matches!(e, FleetError::Connect { .. }) {
            self.status.set_connected(false);
        }
        warn!(sink = "fleet", error = %cause, outbox_depth = ?depth, "fleet delivery failed; alerts wait in the outbox");
        Delivery::Retry { cause, after: None }
    }
}

impl AlertSink for FleetSink {
    fn name(&self) -> &'static str {
        "fleet"
    }

    /// Drains the outbox, which holds `_alert` (queued by the store
    /// writer before the agent offers it here) and whatever waits before
    /// it.
    async fn deliver(&mut self, _alert: &Alert) -> Delivery {
        self.drain_outbox().await
    }

    /// Drains the outbox, which holds `_checkpoint` (queued with its
    /// ledger entry) and whatever waits before it.
    async fn deliver_checkpoint(&mut self, _checkpoint: &Checkpoint) -> Delivery {
        self.drain_outbox().await
    }

    /// Drains the outbox (events the store queued with their rows).
    fn outbox_changes(&mut self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.writer.outbox_changes())
    }

    async fn deliver_outbox(&mut self) -> Delivery {
        self.drain_outbox().await
    }
}

/// Which outbox rows a drain has shipped whole: a row (the events of one
/// write) is removed once every item of it is done, and one item that
/// failed keeps its row, read again whole by the next drain (the stream's
/// duplicate window drops the resends of what it has).
#[derive(Debug)]
struct Rows {
    /// Whether every item of the row being shipped so far is done.
    clean: bool,
}

impl Default for Rows {
    fn default() -> Self {
        Self { clean: true }
    }
}

impl Rows {
    /// An item of row `id` finished (`done`: acknowledged, or skipped as
    /// unencodable), in order; the row's id when it was its last and the
    /// whole row is done.
    fn done(&mut self, id: i64, ends_row: bool, done: bool) -> Option<i64> {
        self.clean &= done;
        if !ends_row {
            return None;
        }
        let whole = std::mem::replace(&mut self.clean, true);
        whole.then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_done_when_its_last_item_is_and_every_item_before_it() {
        let mut rows = Rows::default();
        // Row 1 of three items, all acknowledged.
        assert_eq!(rows.done(1, false, true), None);
        assert_eq!(rows.done(1, false, true), None);
        assert_eq!(rows.done(1, true, true), Some(1));
        // Row 2: its middle item failed; the row stays.
        assert_eq!(rows.done(2, false, true), None);
        assert_eq!(rows.done(2, false, false), None);
        assert_eq!(rows.done(2, true, true), None);
        // The failure does not carry over to the next row.
        assert_eq!(rows.done(3, true, true), Some(3));
        assert_eq!(rows.done(4, true, false), None);
        assert_eq!(rows.done(5, false, true), None);
        assert_eq!(rows.done(5, true, true), Some(5));
    }

    #[test]
    fn host_names_become_one_subject_token() {
        assert_eq!(subject_token("web-1.example.com"), "web-1_example_com");
        assert_eq!(subject_token("a b*>"), "a_b__");
        assert_eq!(subject_token(""), "_");
        let c = FleetConfig::new("nats://127.0.0.1:4222", "db.local");
        assert_eq!(c.alerts_subject(), "daemoneye.db_local.alerts");
        assert_eq!(c.ledger_subject(), "daemoneye.db_local.ledger");
    }
}
