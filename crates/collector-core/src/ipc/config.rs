//! Server and client settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::common::first_zero;
use crate::ipc::IpcError;
use crate::source::SourceCaps;

/// The socket path when none is given: `/run/daemoneye/<name>.sock` as root,
/// `$XDG_RUNTIME_DIR/daemoneye/<name>.sock` otherwise (or
/// `/tmp/daemoneye-<uid>/<name>.sock` without `XDG_RUNTIME_DIR`).
pub fn default_socket_path(name: &str) -> PathBuf {
    let uid = nix::unistd::geteuid();
    let file = format!("{name}.sock");
    if uid.is_root() {
        return Path::new("/run/daemoneye").join(file);
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("daemoneye").join(file),
        _ => Path::new("/tmp")
            .join(format!("daemoneye-{}", uid.as_raw()))
            .join(file),
    }
}

/// Settings of a [`CollectorIpcServer`](crate::CollectorIpcServer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpcServerConfig {
    /// Where the socket is created. Its directory is created 0700 when
    /// missing and refused when writable by group or others.
    pub socket_path: PathBuf,
    /// Peer uids allowed to connect; empty means the server's own effective
    /// uid and root (and `peer_uid`).
    pub allowed_uids: Vec<u32>,
    /// One more peer uid, an unprivileged supervisor's (the agent's after it
    /// dropped to its user): allowed to connect, and able to reach the
    /// socket through its group, because the socket is made 0660 instead of
    /// 0600. Its group is the directory's group when the directory is
    /// setgid (the agent prepares `<data-dir>/collectors` so: owned by root,
    /// group the agent's, mode 2750); nobody else is in that group.
    pub peer_uid: Option<u32>,
    /// Connections served at once. When all are taken, a new connection
    /// evicts the one that has been idle longest, if any has been idle for
    /// at least `evict_idle_after`; otherwise it is refused with an
    /// `ERROR_CODE_OVERLOADED` answer and closed.
    pub max_connections: usize,
    /// How long a connection must have sent nothing (no byte, heartbeats
    /// included) before a new connection may evict it when the server is
    /// full. A connection with a subscription or a task in flight is never
    /// evicted.
    #[serde(with = "humantime_serde")]
    pub evict_idle_after: Duration,
    /// Connections served at once for one peer uid, so that one peer's idle
    /// or trickling connections cannot take every place. At the limit, a
    /// new connection from that uid evicts that uid's longest idle
    /// connection (as at `max_connections`), or is refused with
    /// `ERROR_CODE_OVERLOADED` and counted (`peer_limit`).
    pub max_connections_per_uid: usize,
    /// Tasks run at once per connection; further tasks wait (the connection
    /// is not read meanwhile).
    pub max_tasks_in_flight: usize,
    /// The first message (a capability request) must arrive within this.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A frame that has begun must be complete within this.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// One write to the client must finish within this; a client that stops
    /// reading is disconnected.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// A connection with no subscription and no task in flight that sends
    /// nothing for this long is closed (clients send heartbeats).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A task handler that has not answered within this yields a failure
    /// result.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Duration,
    /// How long shutdown waits for connections to end.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// The largest frame payload accepted or sent, in bytes.
    pub max_frame_length: usize,
    /// Event batches queued per connection before events are dropped (and
    /// counted); with `max_batch_size` this bounds the server's memory per
    /// subscriber.
    pub event_queue_batches: usize,
    /// The most events in one `EventBatch`.
    pub max_batch_size: usize,
}

impl Default for IpcServerConfig {
    fn default() -> Self {
        Self {
            socket_path: default_socket_path("collector"),
            allowed_uids: Vec::new(),
            peer_uid: None,
            max_connections: 64,
            max_connections_per_uid: 16,
            evict_idle_after: Duration::from_secs(1),
            max_tasks_in_flight: 16,
            handshake_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            handler_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
            max_frame_length: daemoneye_lib::codec::DEFAULT_MAX_FRAME_LENGTH,
            event_queue_batches: 64,
            max_batch_size: 256,
        }
    }
}

impl IpcServerConfig {
    /// The defaults with the socket at `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            ..Self::default()
        }
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`IpcError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), IpcError> {
        let bad = |field, reason| Err(IpcError::InvalidConfig { field, reason });
        if self.socket_path.file_name().is_none() {
            return bad("socket_path", "has no file name");
        }
        let zero = first_zero([
            ("max_connections", self.max_connections),
            ("max_connections_per_uid", self.max_connections_per_uid),
            ("max_tasks_in_flight", self.max_tasks_in_flight),
            ("event_queue_batches", self.event_queue_batches),
            ("max_batch_size", self.max_batch_size),
        ])
        .or(first_zero([
            ("handshake_timeout", self.handshake_timeout),
            ("read_timeout", self.read_timeout),
            ("write_timeout", self.write_timeout),
            ("idle_timeout", self.idle_timeout),
            ("evict_idle_after", self.evict_idle_after),
            ("handler_timeout", self.handler_timeout),
        ]));
        if let Some(field) = zero {
            return bad(field, "is zero");
        }
        if self.max_frame_length < 1024 {
            return bad("max_frame_length", "is below 1024 bytes");
        }
        Ok(())
    }
}

/// Settings of a [`CollectorIpcClient`](crate::CollectorIpcClient).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpcClientConfig {
    /// The server's socket.
    pub socket_path: PathBuf,
    /// A name for logs on the server side.
    pub client_name: String,
    /// The domains wanted (only the domain bits count); empty means all.
    pub wanted_capabilities: SourceCaps,
    /// One connection attempt's limit.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The wait for any answer (handshake, task result, acknowledgement).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The wait after the first failed attempt; doubled after each, up to
    /// `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The longest wait between attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Attempts before giving up; 0 retries forever.
    pub max_connect_attempts: u32,
    /// A heartbeat is sent after this long without sending anything, so the
    /// server's idle timeout does not close a quiet connection.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// The largest frame payload accepted or sent, in bytes.
    pub max_frame_length: usize,
    /// Event batches buffered for a subscription before the client stops
    /// reading the socket (and the server starts dropping).
    pub event_buffer_batches: usize,
}

impl Default for IpcClientConfig {
    fn default() -> Self {
        Self {
            socket_path: default_socket_path("collector"),
            client_name: "daemoneye-client".to_owned(),
            wanted_capabilities: SourceCaps::empty(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(35),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            max_connect_attempts: 8,
            heartbeat_interval: Duration::from_secs(30),
            max_frame_length: daemoneye_lib::codec::DEFAULT_MAX_FRAME_LENGTH,
            event_buffer_batches: 64,
        }
    }
}

impl IpcClientConfig {
    /// The defaults with the server at `socket_path`.
    pub fn new(socket_path: impl Into<PathBuf>) -> Self {
        Self {
            socket_path: socket_path.into(),
            ..Self::default()
        }
    }

    /// The client's [`Backoff`](daemoneye_lib::Backoff): `initial_backoff`
    /// doubling up to `max_backoff`, the upper half of each wait jittered so
    /// that clients restarted together do not all retry in step.
    pub fn connect_backoff(&self) -> daemoneye_lib::Backoff {
        daemoneye_lib::Backoff::new(self.initial_backoff, self.max_backoff).with_jitter(0.5)
    }

    /// The longest wait before attempt `attempt + 1` (0-based):
    /// `initial_backoff` doubled `attempt` times, capped at `max_backoff`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.connect_backoff().delay(attempt)
    }

    /// The wait actually taken before attempt `attempt + 1`: the upper half
    /// of [`backoff`](Self::backoff) scaled by `jitter` (in `0..=1`).
    pub fn jittered_backoff(&self, attempt: u32, jitter: f64) -> Duration {
        self.connect_backoff().jittered(attempt, jitter)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let c = IpcClientConfig {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            ..IpcClientConfig::default()
        };
        let waits: Vec<u128> = (0..6).map(|a| c.backoff(a).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 100, 100]);
        assert_eq!(c.backoff(u32::MAX), Duration::from_millis(100));
        assert_eq!(c.jittered_backoff(1, 0.0), Duration::from_millis(10));
        assert_eq!(c.jittered_backoff(1, 1.0), Duration::from_millis(20));
        assert_eq!(c.jittered_backoff(5, 0.5), Duration::from_millis(75));
        assert_eq!(c.jittered_backoff(5, 7.0), Duration::from_millis(100));
    }

    #[test]
    fn server_config_round_trips_through_toml_and_validates() {
        let c = IpcServerConfig::new("/tmp/x/y.sock");
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        let back: IpcServerConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        let bad = IpcServerConfig {
            max_connections: 0,
            ..c
        };
        assert!(matches!(
            bad.validate(),
            Err(IpcError::InvalidConfig {
                field: "max_connections",
                ..
            })
        ));
        assert!(toml::from_str::<IpcServerConfig>("nope = 1").is_err());
    }
}
