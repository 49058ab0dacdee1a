//! [`CollectorIpcServer`]: accept loop, per-connection reader, writer and
//! event forwarder.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use daemoneye_lib::codec::{decode_payload, CodecError, EnvelopeCodec};
use daemoneye_lib::proto::{
    envelope::Payload, CapabilityRequest, CapabilityResponse, ComponentHealth, DetectionResult,
    DetectionTask, Domain, Envelope, ErrorCode, ErrorResponse, EventRecord, HealthState,
    SourceCapability, SubscribeAck, SubscribeRequest, TaskType, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::lock;
use crate::ipc::convert::{caps_to_domains, domain_to_caps, event_to_record, kind_to_proto};
use crate::ipc::health::{collector_health, ipc_component, HealthFuture};
use crate::ipc::socket::{bind, BoundSocket};
use crate::ipc::stats::{Close, Counters};
use crate::ipc::wire::FrameReader;
use crate::ipc::{IpcError, IpcServerConfig, IpcServerStats};
use crate::runtime::CollectorHandle;
use crate::source::{unless_cancelled, SourceCaps};
use crate::subscription::Subscription;

/// What a task handler returns.
pub type TaskFuture = Pin<Box<dyn Future<Output = DetectionResult> + Send>>;

type Handler = Arc<dyn Fn(DetectionTask) -> TaskFuture + Send + Sync>;

type HealthProvider = Arc<dyn Fn() -> HealthFuture + Send + Sync>;

struct Shared {
    shutdown: CancellationToken,
    counters: Counters,
    /// Subscriptions opened so far, for [`IpcServerHandle::subscribed`].
    subscribed: tokio::sync::watch::Sender<u64>,
}

shared_handle! {
    /// A cheap, cloneable handle to a running [`CollectorIpcServer`]: stop it,
    /// read its counters.
    pub struct IpcServerHandle(Shared);
    /// Stops accepting, closes every connection, and makes `start` return
    /// (after removing the socket file).
}

impl IpcServerHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> IpcServerStats {
        self.shared.counters.snapshot()
    }

    /// Registers the server's counters in `registry` (stage `ipc`:
    /// `daemoneye_connections_closed_total{stage="ipc",reason="eof"}`, ...),
    /// for example a collector's [`CollectorHandle::metrics`](crate::CollectorHandle::metrics).
    /// Call it once per registry.
    pub fn register_metrics(&self, registry: &crate::metrics::Registry) {
        self.shared.counters.register(registry);
    }

    /// Completes once a client has subscribed to the events (at once if one
    /// already has). A collector whose consumer must see everything from
    /// the start waits for this before running its sources.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn subscribed(&self) {
        let mut rx = self.shared.subscribed.subscribe();
        // The sender lives in `shared`, as long as this handle.
        let _ = rx.wait_for(|n| *n > 0).await;
    }
}

/// The collector's end of the IPC protocol, on a Unix socket.
///
/// Built in two steps: [`new`](Self::new) validates the config and binds
/// the socket (errors surface before anything runs), [`start`](Self::start)
/// or [`serve_until`](Self::serve_until) serves until shutdown.
///
/// Each connection must open with a `CapabilityRequest`, answered with the
/// capabilities given to `new`; then it may send `DetectionTask`s (answered
/// by the handler, matched by `request_id`), `Heartbeat`s (echoed), and one
/// `SubscribeRequest` at a time when the server streams a collector's events
/// ([`with_events`](Self::with_events)).
///
/// At `max_connections`, a new connection evicts the connection that has
/// been idle longest (no byte received for at least `evict_idle_after`, no
/// subscription, no task in flight), which is told so
/// (`ERROR_CODE_OVERLOADED`) and closed; with none to evict, the new one is
/// refused. Either way it is counted. One peer uid holds at most
/// `max_connections_per_uid` places: beyond that its new connection may only
/// evict one of its own (counted `peer_limit` when refused), so that one
/// peer's idle connections never lock the others out. Subscription filters: event kinds,
/// pids, source names and topic patterns (`events.<kind>.<detail>`, as on
/// the event bus: `*`/`+` one segment, `#`/`**` any number).
pub struct CollectorIpcServer {
    config: Arc<IpcServerConfig>,
    capabilities: SourceCaps,
    listener: Option<UnixListener>,
    socket: BoundSocket,
    events: Option<CollectorHandle>,
    name: String,
    health: Option<HealthProvider>,
    allowed_uids: Arc<[u32]>,
    shared: Arc<Shared>,
}

debug_fields!(CollectorIpcServer { socket = socket.path, capabilities });

impl CollectorIpcServer {
    /// Validates `config` and binds its socket (0600, in a 0700 directory
    /// created when missing; a stale socket is replaced, a live one is an
    /// error). `capabilities` are what the handshake reports and what tasks
    /// are checked against.
    ///
    /// # Errors
    /// [`IpcError::InvalidConfig`], [`IpcError::UnsafeDirectory`],
    /// [`IpcError::SocketInUse`], [`IpcError::NotASocket`],
    /// [`IpcError::Setup`].
    pub async fn new(config: IpcServerConfig, capabilities: SourceCaps) -> Result<Self, IpcError> {
        config.validate()?;
        let (listener, socket) = bind(&config.socket_path, config.peer_uid.is_some()).await?;
        let mut allowed_uids = config.allowed_uids.clone();
        if allowed_uids.is_empty() {
            allowed_uids.extend([nix::unistd::geteuid().as_raw(), 0]);
        }
        allowed_uids.extend(config.peer_uid);
        let allowed_uids: Arc<[u32]> = Arc::from(allowed_uids);
        tracing::info!(path = %socket.path.display(), caps = ?capabilities, "ipc server listening");
        Ok(Self {
            config: Arc::new(config),
            capabilities,
            listener: Some(listener),
            socket,
            events: None,
            name: "collector".to_owned(),
            health: None,
            allowed_uids,
            shared: Arc::new(Shared {
                shutdown: CancellationToken::new(),
                counters: Counters::default(),
                subscribed: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    with_setters! {
        /// Streams the events of the collector behind `handle` to clients that
        /// subscribe; each subscribing connection holds one subscription of the
        /// collector.
        with_events(handle: CollectorHandle) { events = Some(handle) }
        /// The name health reports give this server's component (default
        /// `collector`).
        with_name(name: impl Into<String>) { name = name.into() }
    }

    /// Answers health requests with `provider` instead of the collector's
    /// own health ([`collector_health`](crate::ipc::collector_health) of the
    /// [`with_events`](Self::with_events) handle). Either way the answer
    /// gets one more component, `ipc`, with this server's counters; a
    /// provider that does not answer within `handler_timeout` yields an
    /// `unreachable` report.
    #[must_use]
    pub fn with_health<F>(mut self, provider: F) -> Self
    where
        F: Fn() -> HealthFuture + Send + Sync + 'static,
    {
        self.health = Some(Arc::new(provider));
        self
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket.path
    }

    /// A handle to stop the server and read its counters.
    pub fn handle(&self) -> IpcServerHandle {
        IpcServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> IpcServerStats {
        self.shared.counters.snapshot()
    }

    /// Serves until [`IpcServerHandle::shutdown`], answering tasks with
    /// `handler`.
    ///
    /// # Errors
    /// [`IpcError::AlreadyStarted`] when called a second time.
    pub async fn start<F>(&mut self, handler: F) -> Result<(), IpcError>
    where
        F: Fn(DetectionTask) -> TaskFuture + Send + Sync + 'static,
    {
        self.serve_until(handler, std::future::pending()).await
    }

    /// Serves until `signal` completes or [`IpcServerHandle::shutdown`] is
    /// called; then closes every connection (waiting up to
    /// `shutdown_timeout`) and removes the socket file.
    ///
    /// # Errors
    /// [`IpcError::AlreadyStarted`] when called a second time.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future stops accepting but leaves the
    /// socket file (a later `new` replaces it as stale).
    pub async fn serve_until<F, S>(&mut self, handler: F, signal: S) -> Result<(), IpcError>
    where
        F: Fn(DetectionTask) -> TaskFuture + Send + Sync + 'static,
        S: Future<Output = ()>,
    {
        let listener = self.listener.take().ok_or(IpcError::AlreadyStarted)?;
        let ctx = Arc::new(ConnCtx {
            config: self.config.clone(),
            capabilities: self.capabilities,
            sources: self.sources(),
            events: self.events.clone(),
            name: self.name.clone(),
            health: self.health.clone(),
            handler: Arc::new(handler),
            shared: self.shared.clone(),
            next_subscription: AtomicU64::new(1),
            epoch: Instant::now(),
            live: Mutex::default(),
        });
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let tracker = TaskTracker::new();
        let shutdown = self.shared.shutdown.clone();
        let counters = &self.shared.counters;
        tokio::pin!(signal);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = &mut signal => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if let Some((stream, admitted)) = self.admit(stream, &limit, &ctx) {
                            let ctx = ctx.clone();
                            let cancel = shutdown.child_token();
                            tracker.spawn(async move {
                                let id = admitted.id;
                                let close = serve_connection(stream, &ctx, cancel, admitted).await;
                                ctx.shared.counters.closed(close);
                                // Frees its place (unless it was handed on).
                                lock(&ctx.live).conns.remove(&id);
                            });
                        }
                    }
                    Err(error) => {
                        counters.accept_errors.inc();
                        tracing::warn!(%error, "ipc accept failed");
                        // Out of descriptors: give connections time to close.
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                },
            }
        }
        shutdown.cancel();
        drop(listener);
        self.socket.remove();
        tracker.close();
        if tokio::time::timeout(self.config.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            counters.shutdown_forced.add(tracker.len() as u64);
            tracing::warn!(
                connections = tracker.len(),
                "ipc connections still open at the shutdown deadline"
            );
        }
        tracing::info!(path = %self.socket.path.display(), "ipc server stopped");
        Ok(())
    }

    fn sources(&self) -> Vec<SourceCapability> {
        self.events.as_ref().map_or_else(Vec::new, |h| {
            h.stats()
                .sources
                .iter()
                .map(|s| SourceCapability {
                    name: s.name.to_owned(),
                    capability_bits: s.capabilities.bits(),
                    domains: caps_to_domains(s.capabilities)
                        .into_iter()
                        .map(i32::from)
                        .collect(),
                })
                .collect()
        })
    }

    /// Checks the peer and the connection limit (evicting the longest idle
    /// connection at the limit), and registers the connection.
    fn admit(
        &self,
        stream: UnixStream,
        limit: &Arc<Semaphore>,
        ctx: &ConnCtx,
    ) -> Option<(UnixStream, Admitted)> {
        let counters = &self.shared.counters;
        let uid = match stream.peer_cred() {
            Ok(cred) if self.allowed_uids.contains(&cred.uid()) => cred.uid(),
            Ok(cred) => {
                counters.refused_peer.inc();
                tracing::warn!(
                    uid = cred.uid(),
                    pid = cred.pid(),
                    "ipc peer refused: uid not allowed"
                );
                return None;
            }
            Err(error) => {
                counters.refused_peer.inc();
                tracing::warn!(%error, "ipc peer refused: credentials unreadable");
                return None;
            }
        };
        let mut live = lock(&ctx.live);
        // At the peer's own limit it may only take the place of one of its
        // own connections; otherwise of anyone's at the total limit.
        let at_peer_limit = live.holding(uid) >= self.config.max_connections_per_uid;
        let permit = if at_peer_limit {
            live.evict(ctx, Some(uid))
        } else {
            match limit.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => live.evict(ctx, None),
            }
        };
        if let Some(permit) = permit {
            counters.accepted.inc();
            let admitted = live.register(ctx, permit, uid);
            Some((stream, admitted))
        } else {
            drop(live);
            let why = if at_peer_limit {
                counters.refused_peer_limit.inc();
                "too many connections from this uid"
            } else {
                counters.refused_overloaded.inc();
                "too many connections"
            };
            tracing::debug!(uid, reason = why, "ipc connection refused");
            let refusal = Envelope::from(ErrorResponse::new(ErrorCode::Overloaded, why));
            let mut buf = BytesMut::new();
            // A fresh socket's send buffer has room for this small frame;
            // never wait for it.
            if EnvelopeCodec::new().encode(&refusal, &mut buf).is_ok() {
                let _ = stream.try_write(&buf);
            }
            None
        }
    }
}

/// The connections admitted and their places (semaphore permits), so that
/// the accept loop can evict one.
#[derive(Default)]
struct Live {
    next_id: u64,
    conns: HashMap<u64, LiveConn>,
}

struct LiveConn {
    /// The peer's uid, for `max_connections_per_uid`.
    uid: u32,
    activity: Arc<Activity>,
    evict: CancellationToken,
    /// Its place under `max_connections`; taken when evicted (handed to the
    /// new connection at once, while this one closes).
    permit: Option<OwnedSemaphorePermit>,
}

/// What the accept loop reads of a connection to decide whether it is idle.
struct Activity {
    /// When a byte last arrived (or the connection was admitted), in
    /// nanoseconds since [`ConnCtx::epoch`].
    last_read: AtomicU64,
    subscribed: AtomicBool,
    /// The connection's task permits: all free means no task in flight.
    task_limit: Arc<Semaphore>,
}

/// A connection's part of the registry.
struct Admitted {
    id: u64,
    activity: Arc<Activity>,
    evict: CancellationToken,
}

impl Live {
    /// The places `uid`'s connections hold (an evicted one, closing, holds
    /// none).
    fn holding(&self, uid: u32) -> usize {
        self.conns
            .values()
            .filter(|c| c.uid == uid && c.permit.is_some())
            .count()
    }

    fn register(&mut self, ctx: &ConnCtx, permit: OwnedSemaphorePermit, uid: u32) -> Admitted {
        let id = self.next_id;
        self.next_id += 1;
        let activity = Arc::new(Activity {
            last_read: AtomicU64::new(ctx.now()),
            subscribed: AtomicBool::new(false),
            task_limit: Arc::new(Semaphore::new(ctx.config.max_tasks_in_flight)),
        });
        let evict = CancellationToken::new();
        self.conns.insert(
            id,
            LiveConn {
                uid,
                activity: activity.clone(),
                evict: evict.clone(),
                permit: Some(permit),
            },
        );
        Admitted {
            id,
            activity,
            evict,
        }
    }

    /// Takes the place of the connection idle longest (of `uid`'s, when
    /// given), if one has been idle for `evict_idle_after` with no
    /// subscription and no task in flight, and tells it to close.
    fn evict(&mut self, ctx: &ConnCtx, uid: Option<u32>) -> Option<OwnedSemaphorePermit> {
        let now = ctx.now();
        let grace = u64::try_from(ctx.config.evict_idle_after.as_nanos()).unwrap_or(u64::MAX);
        let max_tasks = ctx.config.max_tasks_in_flight;
        let victim = self
            .conns
            .values_mut()
            .filter(|c| c.permit.is_some() && uid.is_none_or(|u| c.uid == u))
            .filter(|c| {
                let a = &c.activity;
                !a.subscribed.load(Ordering::Relaxed)
                    && a.task_limit.available_permits() == max_tasks
                    && now.saturating_sub(a.last_read.load(Ordering::Relaxed)) >= grace
            })
            .min_by_key(|c| c.activity.last_read.load(Ordering::Relaxed))?;
        victim.evict.cancel();
        ctx.counters().evicted.inc();
        tracing::debug!("ipc connection evicted: idle while the server was full");
        victim.permit.take()
    }
}

/// What every connection of one server shares.
struct ConnCtx {
    config: Arc<IpcServerConfig>,
    capabilities: SourceCaps,
    sources: Vec<SourceCapability>,
    events: Option<CollectorHandle>,
    name: String,
    health: Option<HealthProvider>,
    handler: Handler,
    shared: Arc<Shared>,
    next_subscription: AtomicU64,
    /// The origin of [`Activity::last_read`].
    epoch: Instant,
    live: Mutex<Live>,
}

impl ConnCtx {
    /// Nanoseconds since [`epoch`](Self::epoch).
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    fn serves(&self, domain: Domain) -> bool {
        let caps = domain_to_caps(domain);
        !caps.is_empty() && self.capabilities.contains(caps)
    }

    /// The answer to a health request.
    async fn health(&self) -> ComponentHealth {
        let mut report = match (&self.health, &self.events) {
            (Some(provider), _) => {
                match tokio::time::timeout(self.config.handler_timeout, provider()).await {
                    Ok(report) => report,
                    Err(_) => ComponentHealth {
                        name: self.name.clone(),
                        state: HealthState::Unreachable.into(),
                        message: "the health provider did not answer in time".to_owned(),
                        ..ComponentHealth::default()
                    },
                }
            }
            (None, Some(handle)) => collector_health(&self.name, handle),
            (None, None) => ComponentHealth {
                name: self.name.clone(),
                state: HealthState::Healthy.into(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                pid: std::process::id(),
                ..ComponentHealth::default()
            },
        };
        report
            .components
            .push(ipc_component(&self.shared.counters.snapshot()));
        report
    }

    fn capability_response(&self, req: &CapabilityRequest) -> CapabilityResponse {
        let served = caps_to_domains(self.capabilities);
        let wanted: Vec<Domain> = req.wanted_domains().collect();
        let supported_domains = served
            .iter()
            .filter(|d| wanted.is_empty() || wanted.contains(d))
            .map(|d| i32::from(*d))
            .collect();
        let supported_tasks = (1..=7)
            .filter_map(|v| TaskType::try_from(v).ok())
            .filter(|t| t.domain().is_some_and(|d| self.serves(d)))
            .map(i32::from)
            .collect();
        CapabilityResponse {
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol_version: PROTOCOL_VERSION,
            supported_domains,
            capability_bits: self.capabilities.bits(),
            sources: self.sources.clone(),
            supported_tasks,
        }
    }
}

/// The event stream of one connection: records queued for the writer, and
/// what was dropped since the last batch written.
struct StreamState {
    dropped_since_last: AtomicU64,
}

type Records = (u64, Vec<EventRecord>);

async fn serve_connection(
    stream: UnixStream,
    ctx: &Arc<ConnCtx>,
    cancel: CancellationToken,
    admitted: Admitted,
) -> Close {
    let (rd, wr) = stream.into_split();
    let (resp_tx, resp_rx) = mpsc::channel::<Envelope>(ctx.config.max_tasks_in_flight + 8);
    let (event_tx, event_rx) = mpsc::channel::<Records>(ctx.config.event_queue_batches);
    let state = Arc::new(StreamState {
        dropped_since_last: AtomicU64::new(0),
    });
    // Ends the writer at once (shutdown, or a failed write).
    let conn_cancel = cancel.child_token();
    let mut writer = tokio::spawn(write_loop(
        wr,
        resp_rx,
        event_rx,
        ctx.clone(),
        state.clone(),
        conn_cancel.clone(),
    ));
    let mut conn = Connection {
        ctx: ctx.clone(),
        resp_tx,
        event_tx,
        state,
        cancel: conn_cancel.clone(),
        handshaken: false,
        tasks: JoinSet::new(),
        task_limit: admitted.activity.task_limit.clone(),
        subscription: None,
        activity: admitted.activity,
        evict: admitted.evict,
    };
    let mut close = conn.read_loop(rd).await;
    if cancel.is_cancelled() {
        close = Close::Shutdown;
    }
    // Abort in-flight tasks and the forwarder; the writer flushes what is
    // queued (a last error answer) and ends.
    drop(conn);
    if tokio::time::timeout(ctx.config.write_timeout, &mut writer)
        .await
        .is_err()
    {
        conn_cancel.cancel();
        writer.abort();
    }
    conn_cancel.cancel();
    close
}

struct Connection {
    ctx: Arc<ConnCtx>,
    resp_tx: mpsc::Sender<Envelope>,
    event_tx: mpsc::Sender<Records>,
    state: Arc<StreamState>,
    cancel: CancellationToken,
    handshaken: bool,
    tasks: JoinSet<()>,
    task_limit: Arc<Semaphore>,
    subscription: Option<(u64, CancellationToken)>,
    activity: Arc<Activity>,
    /// Cancelled when a new connection takes this one's place.
    evict: CancellationToken,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some((_, token)) = self.subscription.take() {
            token.cancel();
        }
    }
}

/// Whether the connection goes on after a message.
enum Next {
    Continue,
    Close(Close),
}

impl Connection {
    async fn read_loop(&mut self, rd: OwnedReadHalf) -> Close {
        let config = self.ctx.config.clone();
        let mut reader = FrameReader::new(rd, config.max_frame_length);
        let opened = Instant::now();
        let mut last_frame = opened;
        let mut partial_since: Option<Instant> = None;
        loop {
            while self.tasks.try_join_next().is_some() {}
            self.activity
                .subscribed
                .store(self.subscription.is_some(), Ordering::Relaxed);
            match reader.try_decode() {
                Ok(Some(payload)) => {
                    self.ctx.counters().frames_received.inc();
                    last_frame = Instant::now();
                    partial_since = None;
                    let next = match decode_payload(&payload) {
                        Ok(envelope) => {
                            self.ctx.counters().envelopes_accepted.inc();
                            self.on_envelope(envelope).await
                        }
                        Err(err) => self.on_bad_envelope(&err).await,
                    };
                    match next {
                        Next::Continue => continue,
                        Next::Close(close) => return close,
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    self.ctx.counters().rejected(err.reason());
                    tracing::debug!(error = %err, "ipc framing error, closing");
                    self.reply(
                        0,
                        ErrorResponse::new(ErrorCode::BadRequest, err.to_string()).into(),
                    )
                    .await;
                    return Close::ProtocolError;
                }
            }
            let buffered = reader.buffered() > 0;
            if buffered && partial_since.is_none() {
                partial_since = Some(Instant::now());
            }
            if !buffered {
                partial_since = None;
            }
            let (deadline, on_timeout) = if !self.handshaken {
                (
                    Some(opened + config.handshake_timeout),
                    Close::HandshakeTimeout,
                )
            } else if let Some(since) = partial_since {
                (Some(since + config.read_timeout), Close::ReadTimeout)
            } else if self.subscription.is_none()
                && self.task_limit.available_permits() == config.max_tasks_in_flight
            {
                (Some(last_frame + config.idle_timeout), Close::Idle)
            } else {
                (None, Close::Idle)
            };
            let read = async {
                match deadline {
                    Some(at) => tokio::time::timeout_at(at, reader.read_more()).await,
                    None => Ok(reader.read_more().await),
                }
            };
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Close::Io,
                () = self.evict.cancelled() => return self.evicted().await,
                r = read => match r {
                    Err(_elapsed) => {
                        tracing::debug!(reason = ?on_timeout, "ipc connection timed out");
                        return on_timeout;
                    }
                    Ok(Ok(0)) => {
                        if reader.buffered() > 0 {
                            self.ctx.counters().rejected("truncated");
                        }
                        return Close::Eof;
                    }
                    Ok(Ok(_)) => {
                        self.activity.last_read.store(self.ctx.now(), Ordering::Relaxed);
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "ipc read failed");
                        return Close::Io;
                    }
                },
            }
        }
    }

    /// Tells the client why it is closed (its place went to a new
    /// connection).
    async fn evicted(&self) -> Close {
        let why = ErrorResponse::new(
            ErrorCode::Overloaded,
            "closed: idle while the server was full",
        );
        self.reply(0, why.into()).await;
        Close::Evicted
    }

    /// Queues an answer for the writer; false when the connection is ending.
    async fn reply(&self, request_id: u64, payload: Payload) -> bool {
        let envelope = Envelope {
            request_id,
            payload: Some(payload),
        };
        matches!(
            unless_cancelled(&self.cancel, self.resp_tx.send(envelope)).await,
            Some(Ok(()))
        )
    }

    async fn refuse(&self, request_id: u64, code: ErrorCode, message: &str) -> bool {
        self.ctx.counters().messages_refused.inc();
        self.reply(request_id, ErrorResponse::new(code, message).into())
            .await
    }

    async fn on_bad_envelope(&self, err: &CodecError) -> Next {
        self.ctx.counters().rejected(err.reason());
        let (request_id, code) = match err {
            CodecError::UnknownMessageType { request_id } => {
                (*request_id, ErrorCode::UnsupportedMessage)
            }
            _ => (0, ErrorCode::BadRequest),
        };
        self.reply(request_id, ErrorResponse::new(code, err.to_string()).into())
            .await;
        if self.handshaken {
            Next::Continue
        } else {
            Next::Close(Close::ProtocolError)
        }
    }

    async fn on_envelope(&mut self, envelope: Envelope) -> Next {
        let id = envelope.request_id;
        let Some(payload) = envelope.payload else {
            return Next::Continue;
        };
        if !self.handshaken {
            return match payload {
                Payload::CapabilityRequest(req) => self.on_handshake(id, &req).await,
                other => {
                    let message = format!("expected capability_request, got {}", other.name());
                    self.refuse(id, ErrorCode::HandshakeRequired, &message)
                        .await;
                    Next::Close(Close::ProtocolError)
                }
            };
        }
        match payload {
            Payload::CapabilityRequest(req) => self.on_handshake(id, &req).await,
            Payload::DetectionTask(task) => self.on_task(id, task).await,
            Payload::Heartbeat(hb) => {
                self.reply(id, hb.into()).await;
                Next::Continue
            }
            Payload::HealthRequest(_) => {
                let report = self.ctx.health().await;
                self.reply(id, report.into()).await;
                Next::Continue
            }
            Payload::SubscribeRequest(req) => {
                self.on_subscribe(id, &req).await;
                Next::Continue
            }
            Payload::Unsubscribe(u) => {
                if self
                    .subscription
                    .as_ref()
                    .is_some_and(|(sid, _)| *sid == u.subscription_id)
                {
                    if let Some((_, token)) = self.subscription.take() {
                        token.cancel();
                    }
                } else {
                    self.refuse(id, ErrorCode::BadRequest, "no such subscription")
                        .await;
                }
                Next::Continue
            }
            other => {
                let message = format!("unexpected {} from a client", other.name());
                self.refuse(id, ErrorCode::BadRequest, &message).await;
                Next::Continue
            }
        }
    }

    async fn on_handshake(&mut self, id: u64, req: &CapabilityRequest) -> Next {
        if req.protocol_version != PROTOCOL_VERSION {
            let message = format!(
                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                req.protocol_version
            );
            self.refuse(id, ErrorCode::UnsupportedVersion, &message)
                .await;
            // A connection that already shook hands keeps what it agreed.
            return if self.handshaken {
                Next::Continue
            } else {
                Next::Close(Close::ProtocolError)
            };
        }
        tracing::debug!(client = %req.client_name, version = %req.client_version, "ipc handshake");
        self.handshaken = true;
        let response = self.ctx.capability_response(req);
        self.reply(id, response.into()).await;
        Next::Continue
    }

    async fn on_task(&mut self, id: u64, task: DetectionTask) -> Next {
        let counters = self.ctx.counters();
        counters.tasks_received.inc();
        let task_type = task.task_type();
        let refusal = match task_type.domain() {
            None => Some(format!(
                "task type {} is not supported",
                task_type.as_str_name()
            )),
            Some(domain) if !self.ctx.serves(domain) => Some(format!(
                "task type {} needs the {} domain, which this collector does not serve",
                task_type.as_str_name(),
                domain.as_str_name()
            )),
            Some(_) => None,
        };
        if let Some(message) = refusal {
            counters.tasks_unsupported.inc();
            counters.tasks_failed.inc();
            let result = DetectionResult::failure(&task.task_id, message);
            self.reply(id, result.into()).await;
            return Next::Continue;
        }
        let permit = self.task_limit.clone().acquire_owned();
        let Some(Ok(permit)) = unless_cancelled(&self.cancel, permit).await else {
            return Next::Close(Close::Io);
        };
        let ctx = self.ctx.clone();
        let resp_tx = self.resp_tx.clone();
        self.tasks.spawn(async move {
            let result = run_task(&ctx, task).await;
            let _ = resp_tx
                .send(Envelope::from(result).with_request_id(id))
                .await;
            drop(permit);
        });
        Next::Continue
    }

    async fn on_subscribe(&mut self, id: u64, req: &SubscribeRequest) {
        let Some(events) = self.ctx.events.as_ref() else {
            self.refuse(
                id,
                ErrorCode::UnsupportedMessage,
                "this server does not stream events",
            )
            .await;
            return;
        };
        let topics = match req
            .topic_patterns
            .iter()
            .try_fold(crate::bus::EventFilter::new(), |f, p| f.try_with_topic(p))
        {
            Ok(f) => (!req.topic_patterns.is_empty()).then_some(f),
            Err(e) => {
                self.refuse(id, ErrorCode::BadRequest, &e.to_string()).await;
                return;
            }
        };
        if self.subscription.is_some() {
            self.refuse(
                id,
                ErrorCode::BadRequest,
                "already subscribed on this connection",
            )
            .await;
            return;
        }
        let filter = Filter::new(req, topics, self.ctx.config.max_batch_size);
        let subscription = events.subscribe();
        let sid = self.ctx.next_subscription.fetch_add(1, Ordering::Relaxed);
        self.ctx.counters().subscriptions_opened.inc();
        self.ctx.shared.subscribed.send_modify(|n| *n += 1);
        self.reply(
            id,
            SubscribeAck {
                subscription_id: sid,
            }
            .into(),
        )
        .await;
        let token = self.cancel.child_token();
        self.subscription = Some((sid, token.clone()));
        tokio::spawn(forward(
            subscription,
            filter,
            sid,
            self.event_tx.clone(),
            self.state.clone(),
            self.ctx.clone(),
            token,
        ));
    }
}

/// Aborts a spawned task when dropped (the connection went away).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_task(ctx: &ConnCtx, task: DetectionTask) -> DetectionResult {
    let counters = ctx.counters();
    let task_id = task.task_id.clone();
    let handler = ctx.handler.clone();
    // Its own task, so that a panicking handler is caught as a JoinError.
    let inner = tokio::spawn(async move { handler(task).await });
    let _abort = AbortOnDrop(inner.abort_handle());
    let timeout = ctx.config.handler_timeout;
    let mut result = match tokio::time::timeout(timeout, inner).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => {
            counters.tasks_panicked.inc();
            tracing::error!(task_id = %task_id, %error, "ipc task handler failed");
            DetectionResult::failure(&task_id, "task handler failed")
        }
        Err(_) => {
            counters.tasks_timed_out.inc();
            tracing::warn!(task_id = %task_id, ?timeout, "ipc task handler timed out");
            DetectionResult::failure(
                &task_id,
                format!("task handler timed out after {} ms", timeout.as_millis()),
            )
        }
    };
    if result.task_id.is_empty() {
        result.task_id = task_id;
    }
    if result.success {
        counters.tasks_succeeded.inc();
    } else {
        counters.tasks_failed.inc();
    }
    result
}

/// A subscription's filters: empty lists select everything.
struct Filter {
    kinds: Vec<i32>,
    pids: Vec<u32>,
    sources: Vec<String>,
    /// Topic patterns (`events.process.exec`, `events.*.#`), as the bus
    /// matches them; `None` when the request gave none.
    topics: Option<crate::bus::EventFilter>,
    max_batch: usize,
}

impl Filter {
    fn new(
        req: &SubscribeRequest,
        topics: Option<crate::bus::EventFilter>,
        server_max: usize,
    ) -> Self {
        let max_batch = match usize::try_from(req.max_batch_size) {
            Ok(n) if n > 0 => n.min(server_max),
            _ => server_max,
        };
        Self {
            kinds: req.event_kinds.clone(),
            pids: req.pids.clone(),
            sources: req.source_names.clone(),
            topics,
            max_batch,
        }
    }

    fn source_ok(&self, source: &str) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|s| s == source)
    }

    fn matches(&self, event: &crate::CollectionEvent, source: &str) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&i32::from(kind_to_proto(event.kind()))))
            && (self.pids.is_empty() || event.pid().is_some_and(|p| self.pids.contains(&p)))
            && self
                .topics
                .as_ref()
                .is_none_or(|t| t.matches_event(event, source))
    }
}

/// Moves a collector subscription's events into the connection's bounded
/// queue as fast as they come, so the collector never waits for a slow
/// client: when the queue is full the events are dropped and counted.
async fn forward(
    mut subscription: Subscription,
    filter: Filter,
    sid: u64,
    tx: mpsc::Sender<Records>,
    state: Arc<StreamState>,
    ctx: Arc<ConnCtx>,
    token: CancellationToken,
) {
    let counters = ctx.counters();
    loop {
        let Some(Some(batch)) = unless_cancelled(&token, subscription.recv_batch()).await else {
            return;
        };
        if !filter.source_ok(batch.source()) {
            continue;
        }
        let source = batch.source();
        let mut matching = batch
            .iter()
            .filter(|e| filter.matches(e, source))
            .peekable();
        while matching.peek().is_some() {
            match tx.try_reserve() {
                Ok(permit) => {
                    let records: Vec<EventRecord> = matching
                        .by_ref()
                        .take(filter.max_batch)
                        .map(|e| event_to_record(e, source))
                        .collect();
                    permit.send((sid, records));
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    let n = matching.by_ref().take(filter.max_batch).count() as u64;
                    state.dropped_since_last.fetch_add(n, Ordering::Relaxed);
                    counters.events_dropped.add(n);
                }
                Err(mpsc::error::TrySendError::Closed(())) => {
                    let n = matching.count() as u64;
                    counters.events_dropped.add(n);
                    return;
                }
            }
        }
    }
}

/// Frames bigger than this are written on their own rather than coalesced.
const COALESCE_BYTES: usize = 256 * 1024;

struct Writer {
    codec: EnvelopeCodec,
    buf: BytesMut,
    sequence: u64,
    pending_events: u64,
    pending_batches: u64,
    ctx: Arc<ConnCtx>,
    state: Arc<StreamState>,
}

impl Writer {
    fn encode_response(&mut self, envelope: &Envelope) {
        match self.codec.encode(envelope, &mut self.buf) {
            Ok(()) => {}
            Err(CodecError::FrameTooLong { length, .. }) => {
                let task_id = match &envelope.payload {
                    Some(Payload::DetectionResult(r)) => r.task_id.clone(),
                    _ => String::new(),
                };
                tracing::warn!(length, "ipc answer too large for one frame");
                let fallback = Envelope::from(DetectionResult::failure(
                    &task_id,
                    format!("result of {length} bytes exceeds the frame limit"),
                ))
                .with_request_id(envelope.request_id);
                if let Err(error) = self.codec.encode(&fallback, &mut self.buf) {
                    tracing::error!(%error, "ipc answer could not be encoded");
                }
            }
            Err(error) => tracing::error!(%error, "ipc answer could not be encoded"),
        }
    }

    fn encode_events(&mut self, sid: u64, records: Vec<EventRecord>) {
        let n = records.len() as u64;
        let dropped = self.state.dropped_since_last.swap(0, Ordering::Relaxed);
        let batch = daemoneye_lib::proto::EventBatch {
            subscription_id: sid,
            sequence: self.sequence + 1,
            events: records,
            dropped_since_last: dropped,
        };
        match self.codec.encode(Envelope::from(batch), &mut self.buf) {
            Ok(()) => {
                self.sequence += 1;
                self.pending_events += n;
                self.pending_batches += 1;
            }
            Err(CodecError::FrameTooLong { .. }) => {
                // The envelope was moved into the encoder; rebuild nothing:
                // count the records as dropped and tell the client next time.
                self.state
                    .dropped_since_last
                    .fetch_add(dropped + n, Ordering::Relaxed);
                self.ctx.counters().events_dropped.add(n);
                tracing::warn!(
                    events = n,
                    "ipc event batch too large for one frame, dropped"
                );
            }
            Err(error) => {
                self.state
                    .dropped_since_last
                    .fetch_add(dropped + n, Ordering::Relaxed);
                self.ctx.counters().events_dropped.add(n);
                tracing::error!(%error, "ipc event batch could not be encoded");
            }
        }
    }

    async fn flush(&mut self, wr: &mut OwnedWriteHalf) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let ok = matches!(
            tokio::time::timeout(self.ctx.config.write_timeout, wr.write_all(&self.buf)).await,
            Ok(Ok(()))
        );
        let counters = self.ctx.counters();
        if ok {
            counters.events_streamed.add(self.pending_events);
            counters.batches_sent.add(self.pending_batches);
        } else {
            counters.events_dropped.add(self.pending_events);
        }
        self.pending_events = 0;
        self.pending_batches = 0;
        self.buf.clear();
        ok
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut resp_rx: mpsc::Receiver<Envelope>,
    mut event_rx: mpsc::Receiver<Records>,
    ctx: Arc<ConnCtx>,
    state: Arc<StreamState>,
    cancel: CancellationToken,
) {
    let mut w = Writer {
        codec: EnvelopeCodec::with_max_frame_length(ctx.config.max_frame_length),
        buf: BytesMut::with_capacity(64 * 1024),
        sequence: 0,
        pending_events: 0,
        pending_batches: 0,
        ctx: ctx.clone(),
        state,
    };
    let mut events_open = true;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            m = resp_rx.recv() => match m {
                Some(envelope) => w.encode_response(&envelope),
                None => break,
            },
            b = event_rx.recv(), if events_open => match b {
                Some((sid, records)) => w.encode_events(sid, records),
                None => {
                    events_open = false;
                    continue;
                }
            },
        }
        // Coalesce whatever else is ready into one write.
        while w.buf.len() < COALESCE_BYTES {
            if let Ok(envelope) = resp_rx.try_recv() {
                w.encode_response(&envelope);
            } else if let Ok((sid, records)) = event_rx.try_recv() {
                w.encode_events(sid, records);
            } else {
                break;
            }
        }
        if !w.flush(&mut wr).await {
            tracing::debug!("ipc write failed or timed out, closing");
            cancel.cancel();
            break;
        }
    }
    // Whatever was still queued for this client is lost: count it.
    event_rx.close();
    while let Ok((_, records)) = event_rx.try_recv() {
        ctx.counters().events_dropped.add(records.len() as u64);
    }
    let _ = tokio::time::timeout(ctx.config.write_timeout, wr.shutdown()).await;
}
