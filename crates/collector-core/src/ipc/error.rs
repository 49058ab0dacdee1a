//! The one error type of the IPC module.

use std::path::PathBuf;
use std::time::Duration;

use daemoneye_lib::codec::CodecError;
use daemoneye_lib::proto::ErrorCode;

/// An IPC server or client failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpcError {
    /// A configuration value is out of range.
    #[error("invalid ipc config: field `{field}` {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The socket's directory cannot be trusted (writable by others, not a
    /// directory, owned by another user).
    #[error("unsafe socket directory {path}: {reason}")]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A live server already listens on the socket path.
    #[error("socket {path} is in use by a live server")]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket exists at the socket path.
    #[error("{path} exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating, binding or inspecting the socket failed.
    #[error("socket setup failed at {path}")]
    Setup {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// [`CollectorIpcServer::start`](crate::CollectorIpcServer::start) was
    /// called twice.
    #[error("the ipc server was already started")]
    AlreadyStarted,
    /// Every connection attempt failed.
    #[error("could not connect to {path} after {attempts} attempts")]
    ConnectFailed {
        /// The socket path.
        path: PathBuf,
        /// How many attempts were made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        source: std::io::Error,
    },
    /// The connection ended before the answer arrived.
    #[error("connection closed")]
    ConnectionClosed,
    /// A frame could not be encoded or decoded.
    #[error("frame error")]
    Codec {
        /// The codec error.
        #[from]
        source: CodecError,
    },
    /// The server answered with an `ErrorResponse`.
    #[error("server refused the request ({code:?}): {message}")]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The server answered the handshake with something unusable.
    #[error("handshake failed: {reason}")]
    Handshake {
        /// Why.
        reason: String,
    },
    /// No answer within the request timeout.
    #[error("no answer within {timeout:?}")]
    Timeout {
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The peer answered with a message of the wrong type.
    #[error("unexpected {got} message")]
    UnexpectedMessage {
        /// The message type received.
        got: &'static str,
    },
}
