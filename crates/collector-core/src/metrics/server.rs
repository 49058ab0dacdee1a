//! `GET /metrics` over HTTP/1 (hyper), off unless asked for.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Registry;
use crate::source::unless_cancelled;

/// Scrapes served at once; more connections wait for a slot.
const MAX_CONNECTIONS: usize = 16;
/// A connection (request read, answer written) gets this long.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the metrics endpoint could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// A bound metrics endpoint: build it (binding can fail early), then
/// [`run`](Self::run) it.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    registry: Registry,
}

impl MetricsServer {
    /// Binds `addr`; nothing is served before [`run`](Self::run).
    ///
    /// # Errors
    /// [`ServeError::Bind`].
    pub async fn bind(addr: SocketAddr, registry: Registry) -> Result<Self, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Self { listener, registry })
    }

    /// The address actually bound (port 0 picks a free one).
    ///
    /// # Errors
    /// When the socket cannot say (it always can once bound).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers `GET /metrics` (and `HEAD`) with [`Registry::encode`] until
    /// `shutdown` is cancelled; other paths are 404, other methods 405.
    /// Connections still open at shutdown are closed.
    ///
    /// # Cancel safety
    /// Dropping the future stops accepting; spawned connections end on
    /// their own within the connection timeout.
    pub async fn run(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let tracker = TaskTracker::new();
        loop {
            let Some(Ok(permit)) = unless_cancelled(&shutdown, slots.clone().acquire_owned()).await
            else {
                break;
            };
            let Some(accepted) = unless_cancelled(&shutdown, self.listener.accept()).await else {
                break;
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors and the like: the next accept may work.
                    tracing::warn!(error = %err, "metrics accept failed");
                    continue;
                }
            };
            let registry = self.registry.clone();
            let stop = shutdown.clone();
            tracker.spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(answer(&req, &registry)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    biased;
                    () = stop.cancelled() => {}
                    done = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {
                        if let Ok(Err(err)) = done {
                            tracing::debug!(error = %err, "metrics connection failed");
                        }
                    }
                }
            });
        }
        tracker.close();
        tracker.wait().await;
    }
}

fn answer(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n"));
    }
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"method not allowed\n"),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(registry.encode())
    };
    let mut r = reply(StatusCode::OK, body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
    r
}

/// Binds `addr` and serves `registry` at `/metrics` until `shutdown`
/// (see [`MetricsServer::run`]).
///
/// ```no_run
/// # async fn f() -> Result<(), collector_core::metrics::ServeError> {
/// use collector_core::metrics::{serve, Registry};
/// use tokio_util::sync::CancellationToken;
///
/// let registry = Registry::new();
/// let shutdown = CancellationToken::new();
/// serve("127.0.0.1:9464".parse().unwrap(), registry, shutdown).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`ServeError::Bind`].
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    MetricsServer::bind(addr, registry)
        .await?
        .run(shutdown)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn request(addr: SocketAddr, head: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_404s_the_rest_and_stops_on_shutdown() {
        let registry = Registry::new();
        registry
            .counter("daemoneye_things_seen_total", "Things.", &[("stage", "t")])
            .add(3);
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), registry)
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(server.run(shutdown.clone()));

        let ok = request(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("content-type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(
            ok.ends_with("daemoneye_things_seen_total{stage=\"t\"} 3\n"),
            "{ok}"
        );
        let missing = request(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        let post = request(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");

        shutdown.cancel();
        running.await.unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_bind_error_naming_it() {
        let held = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = held.local_addr().unwrap();
        let err = MetricsServer::bind(addr, Registry::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
