//! [`CollectorIpcClient`]: connect with backoff, handshake, tasks matched by
//! request id, event subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use daemoneye_lib::codec::{decode_payload, EnvelopeCodec};
use daemoneye_lib::proto::{
    envelope::Payload, CapabilityRequest, CapabilityResponse, ComponentHealth, DetectionResult,
    DetectionTask, Envelope, ErrorCode, EventBatch, HealthRequest, Heartbeat, SubscribeRequest,
    Unsubscribe, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;

use crate::common::lock;
use crate::ipc::convert::caps_to_domains;
use crate::ipc::wire::FrameReader;
use crate::ipc::{IpcClientConfig, IpcError};
use crate::source::unless_cancelled;

type Pending = Mutex<HashMap<u64, oneshot::Sender<Envelope>>>;

/// One live connection: a writer task fed by `out`, a reader task routing
/// answers to `pending` and batches to `events`.
struct Conn {
    out: mpsc::Sender<Envelope>,
    pending: Arc<Pending>,
    events: Arc<Mutex<Option<mpsc::Sender<EventBatch>>>>,
    closed: CancellationToken,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// A client of a [`CollectorIpcServer`](crate::CollectorIpcServer).
///
/// [`connect`](Self::connect) retries with capped exponential backoff
/// ([`IpcClientConfig::backoff`]) and performs the handshake. When the
/// connection is lost, the next request reconnects the same way; a request
/// in flight when it was lost fails with [`IpcError::ConnectionClosed`] (it
/// is not resent), and an [`EventStream`] ends.
///
/// Requests may be made concurrently from clones of an `Arc` of the client;
/// answers are matched by request id.
pub struct CollectorIpcClient {
    config: IpcClientConfig,
    // A tokio mutex on purpose: it serialises reconnects, which await.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    capabilities: Mutex<CapabilityResponse>,
    next_id: AtomicU64,
}

debug_fields!(CollectorIpcClient { socket_path = config.socket_path });

/// The events of a subscription, in batches.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<EventBatch>,
    subscription_id: u64,
}

impl EventStream {
    /// The next batch; `None` once the connection is closed.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<EventBatch> {
        self.rx.recv().await
    }

    /// The server's id of this subscription.
    pub fn subscription_id(&self) -> u64 {
        self.subscription_id
    }
}

impl CollectorIpcClient {
    /// Connects (retrying with backoff) and performs the handshake.
    ///
    /// # Errors
    /// [`IpcError::ConnectFailed`] after `max_connect_attempts`;
    /// [`IpcError::Server`], [`IpcError::Handshake`],
    /// [`IpcError::ConnectionClosed`] or [`IpcError::Timeout`] when the
    /// handshake fails (not retried).
    pub async fn connect(config: IpcClientConfig) -> Result<Self, IpcError> {
        let (conn, caps) = open(&config).await?;
        Ok(Self {
            config,
            conn: tokio::sync::Mutex::new(Some(Arc::new(conn))),
            capabilities: Mutex::new(caps),
            next_id: AtomicU64::new(1),
        })
    }

    /// What the server reported in the last handshake.
    pub fn capabilities(&self) -> CapabilityResponse {
        lock(&self.capabilities).clone()
    }

    /// Whether the current connection is up (no reconnect is attempted).
    pub async fn is_connected(&self) -> bool {
        self.conn
            .lock()
            .await
            .as_ref()
            .is_some_and(|c| !c.closed.is_cancelled())
    }

    async fn connection(&self) -> Result<Arc<Conn>, IpcError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            if !conn.closed.is_cancelled() {
                return Ok(conn.clone());
            }
        }
        *guard = None;
        let (conn, caps) = open(&self.config).await?;
        *lock(&self.capabilities) = caps;
        let conn = Arc::new(conn);
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn request(&self, conn: &Conn, payload: Payload) -> Result<Envelope, IpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&conn.pending).insert(id, tx);
        let envelope = Envelope {
            request_id: id,
            payload: Some(payload),
        };
        let timeout = self.config.request_timeout;
        let answer = async {
            conn.out
                .send(envelope)
                .await
                .map_err(|_| IpcError::ConnectionClosed)?;
            rx.await.map_err(|_| IpcError::ConnectionClosed)
        };
        let result = match tokio::time::timeout(timeout, answer).await {
            Ok(r) => r,
            Err(_) => Err(IpcError::Timeout { timeout }),
        };
        if result.is_err() {
            lock(&conn.pending).remove(&id);
        }
        result
    }

    /// Runs `task` on the server and returns its result.
    ///
    /// # Errors
    /// [`IpcError::Server`] when the server refused it,
    /// [`IpcError::Timeout`], [`IpcError::ConnectionClosed`], or a connect
    /// error when the connection had to be re-established and could not be.
    pub async fn send_task(&self, task: DetectionTask) -> Result<DetectionResult, IpcError> {
        let conn = self.connection().await?;
        match self.request(&conn, task.into()).await?.payload {
            Some(Payload::DetectionResult(result)) => Ok(result),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a heartbeat and waits for its echo.
    ///
    /// # Errors
    /// As [`send_task`](Self::send_task).
    pub async fn ping(&self) -> Result<(), IpcError> {
        let conn = self.connection().await?;
        match self
            .request(&conn, Heartbeat { nonce: 1 }.into())
            .await?
            .payload
        {
            Some(Payload::Heartbeat(_)) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the server for its health: the collector's (or its provider's)
    /// report, with the server's own counters as the `ipc` component.
    ///
    /// # Errors
    /// As [`send_task`](Self::send_task).
    pub async fn health(&self) -> Result<ComponentHealth, IpcError> {
        let conn = self.connection().await?;
        match self.request(&conn, HealthRequest {}.into()).await?.payload {
            Some(Payload::Health(report)) => Ok(report),
            other => Err(unexpected(other)),
        }
    }

    /// Subscribes to the server's live events with `filter` (empty lists
    /// select everything). One subscription per connection.
    ///
    /// While the stream's buffer (`event_buffer_batches`) is full the client
    /// stops reading the socket, answers included; the server then drops
    /// events and says so in `dropped_since_last`. Use a separate client for
    /// tasks when the events are consumed slowly.
    ///
    /// # Errors
    /// As [`send_task`](Self::send_task).
    pub async fn subscribe(&self, filter: SubscribeRequest) -> Result<EventStream, IpcError> {
        let conn = self.connection().await?;
        let (tx, rx) = mpsc::channel(self.config.event_buffer_batches.max(1));
        *lock(&conn.events) = Some(tx);
        match self.request(&conn, filter.into()).await?.payload {
            Some(Payload::SubscribeAck(ack)) => Ok(EventStream {
                rx,
                subscription_id: ack.subscription_id,
            }),
            other => {
                *lock(&conn.events) = None;
                Err(unexpected(other))
            }
        }
    }

    /// Ends a subscription (its stream ends once the server stops).
    ///
    /// # Errors
    /// [`IpcError::ConnectionClosed`] when there is no connection.
    pub async fn unsubscribe(&self, subscription_id: u64) -> Result<(), IpcError> {
        let conn = self.connection().await?;
        *lock(&conn.events) = None;
        conn.out
            .send(Envelope::from(Unsubscribe { subscription_id }))
            .await
            .map_err(|_| IpcError::ConnectionClosed)
    }
}

fn unexpected(payload: Option<Payload>) -> IpcError {
    match payload {
        Some(Payload::Error(e)) => IpcError::Server {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            message: e.message,
        },
        Some(other) => IpcError::UnexpectedMessage { got: other.name() },
        None => IpcError::UnexpectedMessage { got: "empty" },
    }
}

async fn connect_with_backoff(config: &IpcClientConfig) -> Result<UnixStream, IpcError> {
    let mut attempt: u32 = 0;
    let mut backoff = config.connect_backoff();
    loop {
        let error = match tokio::time::timeout(
            config.connect_timeout,
            UnixStream::connect(&config.socket_path),
        )
        .await
        {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => e,
            Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        };
        attempt = attempt.saturating_add(1);
        if config.max_connect_attempts != 0 && attempt >= config.max_connect_attempts {
            return Err(IpcError::ConnectFailed {
                path: config.socket_path.clone(),
                attempts: attempt,
                source: error,
            });
        }
        let wait = backoff.next();
        tracing::debug!(attempt, ?wait, %error, "ipc connect failed, retrying");
        tokio::time::sleep(wait).await;
    }
}

async fn write_frame(
    wr: &mut OwnedWriteHalf,
    envelope: &Envelope,
    max: usize,
) -> Result<(), IpcError> {
    let mut buf = BytesMut::new();
    EnvelopeCodec::with_max_frame_length(max).encode(envelope, &mut buf)?;
    wr.write_all(&buf).await.map_err(|source| IpcError::Codec {
        source: source.into(),
    })
}

/// Connects, shakes hands, and spawns the connection's reader and writer.
async fn open(config: &IpcClientConfig) -> Result<(Conn, CapabilityResponse), IpcError> {
    let stream = connect_with_backoff(config).await?;
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd, config.max_frame_length);
    let hello = Envelope::from(CapabilityRequest {
        client_version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: PROTOCOL_VERSION,
        wanted_domains: caps_to_domains(config.wanted_capabilities)
            .into_iter()
            .map(i32::from)
            .collect(),
        client_name: config.client_name.clone(),
    });
    let timeout = config.request_timeout;
    let answer = tokio::time::timeout(timeout, async {
        write_frame(&mut wr, &hello, config.max_frame_length).await?;
        match reader.next_frame().await? {
            Some(payload) => Ok(decode_payload(&payload)?),
            None => Err(IpcError::ConnectionClosed),
        }
    })
    .await
    .map_err(|_| IpcError::Timeout { timeout })?
    .map_err(|e| match e {
        // The server closed on us (peer refused, overloaded, shutting down).
        IpcError::Codec {
            source: daemoneye_lib::codec::CodecError::Io { .. },
        } => IpcError::ConnectionClosed,
        e => e,
    })?;
    let caps = match answer.payload {
        Some(Payload::CapabilityResponse(caps)) => caps,
        other => {
            return Err(match unexpected(other) {
                IpcError::UnexpectedMessage { got } => IpcError::Handshake {
                    reason: format!("expected capability_response, got {got}"),
                },
                e => e,
            })
        }
    };
    if caps.protocol_version != PROTOCOL_VERSION {
        return Err(IpcError::Handshake {
            reason: format!("server speaks protocol version {}", caps.protocol_version),
        });
    }
    let closed = CancellationToken::new();
    let pending: Arc<Pending> = Arc::default();
    let events: Arc<Mutex<Option<mpsc::Sender<EventBatch>>>> = Arc::default();
    let (out, out_rx) = mpsc::channel(64);
    tokio::spawn(client_writer(wr, out_rx, config.clone(), closed.clone()));
    tokio::spawn(client_reader(
        reader,
        pending.clone(),
        events.clone(),
        closed.clone(),
    ));
    Ok((
        Conn {
            out,
            pending,
            events,
            closed,
        },
        caps,
    ))
}

async fn client_writer(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Envelope>,
    config: IpcClientConfig,
    closed: CancellationToken,
) {
    let mut nonce = 0u64;
    loop {
        let next = tokio::select! {
            biased;
            () = closed.cancelled() => break,
            m = rx.recv() => m,
            () = tokio::time::sleep(config.heartbeat_interval) => {
                nonce += 1;
                Some(Envelope::from(Heartbeat { nonce }))
            }
        };
        let Some(envelope) = next else { break };
        if let Err(error) = write_frame(&mut wr, &envelope, config.max_frame_length).await {
            tracing::debug!(%error, "ipc client write failed");
            break;
        }
    }
    closed.cancel();
    let _ = wr.shutdown().await;
}

async fn client_reader(
    mut reader: FrameReader<OwnedReadHalf>,
    pending: Arc<Pending>,
    events: Arc<Mutex<Option<mpsc::Sender<EventBatch>>>>,
    closed: CancellationToken,
) {
    loop {
        let Some(frame) = unless_cancelled(&closed, reader.next_frame()).await else {
            break;
        };
        let payload = match frame {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(%error, "ipc client read failed");
                break;
            }
        };
        let envelope = match decode_payload(&payload) {
            Ok(e) => e,
            Err(error) => {
                tracing::warn!(%error, "ipc client got a bad envelope");
                continue;
            }
        };
        if let Some(Payload::EventBatch(batch)) = envelope.payload {
            let tx = lock(&events).clone();
            if let Some(tx) = tx {
                // Waiting here is the flow control: the server sees a
                // full socket and drops (and counts) for us.
                if unless_cancelled(&closed, tx.send(batch)).await.is_none() {
                    break;
                }
            }
            continue;
        }
        let waiter = lock(&pending).remove(&envelope.request_id);
        match waiter {
            Some(tx) => {
                let _ = tx.send(envelope);
            }
            None => {
                if let Some(Payload::Error(e)) = &envelope.payload {
                    tracing::warn!(code = e.code, message = %e.message, "ipc server error");
                }
            }
        }
    }
    closed.cancel();
    lock(&pending).clear();
    *lock(&events) = None;
}
