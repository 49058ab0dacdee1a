//! Shared ground between DaemonEye collectors and the agent.
//!
//! - [`backoff`]: the one capped exponential [`Backoff`] (with
//!   [`jitter`]) every retry loop waits with.
//! - [`models`]: identities every component agrees on, such as the stable
//!   [`ProcessKey`](models::ProcessKey) that survives PID reuse.
//! - [`proto`]: the protobuf protocol (`daemoneye.v1`) between collectors and
//!   the agent: [`DetectionTask`](proto::DetectionTask) and
//!   [`DetectionResult`](proto::DetectionResult), the capability handshake,
//!   event subscriptions and streamed [`EventBatch`](proto::EventBatch)es, all
//!   carried in one [`Envelope`](proto::Envelope) type.
//! - [`codec`]: the framing of envelopes on a byte stream,
//!   `u32 LE length | u32 LE CRC32C | payload`, as
//!   [`tokio_util::codec`] encoders and decoders that reject empty, oversized
//!   (1 MiB by default) and corrupted frames with a typed
//!   [`CodecError`](codec::CodecError).
//!
//! This crate has no async runtime and no I/O beyond small reads of `/proc`,
//! so every part of it can be tested without privileges. The socket server
//! and client that use the protocol live in `collector-core`.
//!
//! # The protocol
//!
//! The `.proto` file is `proto/daemoneye.proto` in this crate, compiled at
//! build time without a system `protoc`. A connection carries a sequence of
//! frames, each holding one [`Envelope`](proto::Envelope): the client opens
//! with a [`CapabilityRequest`](proto::CapabilityRequest), then sends tasks
//! or a subscription; the server answers with results, batches of events, or
//! an [`ErrorResponse`](proto::ErrorResponse).
//!
//! ```
//! use daemoneye_lib::codec::{decode_envelope, encode_envelope, CodecError, HEADER_LEN};
//! use daemoneye_lib::proto::{DetectionTask, Envelope, ProcessFilter, ProtoTaskType};
//!
//! let mut task = DetectionTask::new("task-1", ProtoTaskType::EnumerateProcesses);
//! task.process_filter = Some(ProcessFilter {
//!     process_names: vec!["sshd".to_owned()],
//!     ..ProcessFilter::default()
//! });
//! let sent = Envelope::from(task).with_request_id(1);
//!
//! let frame = encode_envelope(&sent)?;
//! assert_eq!(u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - HEADER_LEN);
//! assert_eq!(decode_envelope(&frame)?, sent);
//!
//! // A flipped bit anywhere in the payload is caught by the checksum.
//! let mut corrupted = frame.to_vec();
//! corrupted[HEADER_LEN] ^= 0x01;
//! assert!(matches!(decode_envelope(&corrupted), Err(CodecError::ChecksumMismatch { .. })));
//! # Ok::<(), CodecError>(())
//! ```
//!
//! # Process keys
//!
//! ```
//! use daemoneye_lib::models::{BootId, ProcessKey};
//!
//! let boot: BootId = "5f1b2c3d-0a1b-4c2d-8e9f-0123456789ab".parse()?;
//! let key = ProcessKey::new(boot, 4242, 1_234_567);
//! assert_eq!(key.to_string(), "5f1b2c3d-0a1b-4c2d-8e9f-0123456789ab:4242:1234567");
//! assert_eq!(key.to_string().parse::<ProcessKey>()?, key);
//! # Ok::<(), daemoneye_lib::models::ModelError>(())
//! ```

pub mod backoff;
pub mod codec;
pub mod fleet;
pub mod models;
pub mod proto;
pub mod secret;

pub use backoff::{jitter, Backoff};

/// An error and its sources, `: `-separated, for one log field or message
/// (some libraries' own messages are terse and say the rest in their
/// sources).
///
/// ```
/// #[derive(Debug, thiserror::Error)]
/// #[error("cannot write the batch")]
/// struct WriteError(#[source] std::io::Error);
///
/// let e = WriteError(std::io::Error::other("disk full"));
/// assert_eq!(daemoneye_lib::error_chain(&e), "cannot write the batch: disk full");
/// ```
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `url` (one URL or several, `,`-separated) without the user and password
/// in it, for logs and messages.
///
/// ```
/// assert_eq!(
///     daemoneye_lib::redact_url("nats://u:secret@a:4222,nats://b:4222"),
///     "nats://***@a:4222,nats://b:4222"
/// );
/// assert_eq!(daemoneye_lib::redact_url("nats://a:4222"), "nats://a:4222");
/// ```
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &u[..scheme], &u[at + 1..])
            }
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}
