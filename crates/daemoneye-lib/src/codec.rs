//! Framing of protocol messages on a byte stream.
//!
//! A frame is
//!
//! ```text
//! +----------------+-------------------------+------------------+
//! | length: u32 LE | CRC32C(payload): u32 LE | payload (length) |
//! +----------------+-------------------------+------------------+
//! ```
//!
//! where the payload is one protobuf-encoded [`Envelope`]. A length of zero or
//! above the configured maximum ([`DEFAULT_MAX_FRAME_LENGTH`], 1 MiB) and a
//! checksum mismatch are errors after which the stream cannot be
//! resynchronised: the reader closes the connection and counts the error by
//! its [`CodecError::reason`].
//!
//! [`FrameCodec`] moves verified payloads ([`Bytes`]); [`EnvelopeCodec`] moves
//! [`Envelope`]s. Both implement [`tokio_util::codec::Decoder`] and
//! [`Encoder`], so a server wraps a socket in `Framed` with them. They are
//! pure: they work on buffers, never block, and never panic on any input.
//! [`encode_envelope`] and [`decode_envelope`] do the same for one whole frame,
//! and [`decode_payload`] for one verified payload.
//!
//! `Framed` ends the stream after any decoder error. A reader that wants to
//! answer a bad envelope (garbage protobuf, an unknown message type) with an
//! [`ErrorResponse`](crate::proto::ErrorResponse) and keep the connection
//! frames with [`FrameCodec`] and decodes each payload with [`decode_payload`];
//! [`CodecError::is_stream_intact`] tells which errors allow that.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

use crate::proto::Envelope;

/// Bytes before the payload: length and checksum.
pub const HEADER_LEN: usize = 8;

/// The default largest payload accepted, 1 MiB.
pub const DEFAULT_MAX_FRAME_LENGTH: usize = 1024 * 1024;

/// A framing or decoding failure.
///
/// Every variant but [`CodecError::Io`] (and [`CodecError::FrameTooLong`] from
/// an encoder) means the peer sent something wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The header announced an empty payload.
    #[error("empty frame: a length of zero is not allowed")]
    EmptyFrame,
    /// The header announced (or the encoder was given) a payload above the
    /// limit.
    #[error("frame of {length} bytes exceeds the limit of {max} bytes")]
    FrameTooLong {
        /// The announced or attempted payload length.
        length: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The payload's CRC32C differs from the header's.
    #[error("frame checksum mismatch: header has {expected:#010x}, payload has {actual:#010x}")]
    ChecksumMismatch {
        /// The checksum in the header.
        expected: u32,
        /// The checksum of the payload received.
        actual: u32,
    },
    /// The stream or buffer ended inside a frame.
    #[error("truncated frame: {received} of {expected} bytes received")]
    Truncated {
        /// Bytes the frame needs (header included), or [`HEADER_LEN`] when the
        /// header itself is cut.
        expected: usize,
        /// Bytes received.
        received: usize,
    },
    /// Bytes followed a whole frame where exactly one frame was expected.
    #[error("{count} trailing bytes after the frame")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The payload passed the checksum but is not a protobuf [`Envelope`].
    #[error("frame payload is not a valid envelope")]
    InvalidEnvelope {
        /// What prost reported.
        #[source]
        source: prost::DecodeError,
    },
    /// The envelope carried no message this build knows (an empty payload
    /// oneof, or a message type from a newer peer).
    #[error("envelope carries no known message type")]
    UnknownMessageType {
        /// The envelope's request id, so the peer can be answered.
        request_id: u64,
    },
    /// Reading or writing the underlying stream failed.
    #[error("frame stream i/o failed")]
    Io {
        /// The I/O error.
        #[from]
        source: std::io::Error,
    },
}

impl CodecError {
    /// Whether the frame boundaries are still known: the error concerns the
    /// content of one whole, checksummed frame, which was consumed, so a
    /// reader could answer it and go on with the next frame. False for
    /// framing errors, after which the connection must be closed.
    pub const fn is_stream_intact(&self) -> bool {
        matches!(
            self,
            Self::InvalidEnvelope { .. } | Self::UnknownMessageType { .. }
        )
    }

    /// A stable `snake_case` label for metrics (`frames_rejected_total{reason}`).
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::EmptyFrame => "empty_frame",
            Self::FrameTooLong { .. } => "frame_too_long",
            Self::ChecksumMismatch { .. } => "checksum_mismatch",
            Self::Truncated { .. } => "truncated",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::InvalidEnvelope { .. } => "invalid_envelope",
            Self::UnknownMessageType { .. } => "unknown_message_type",
            Self::Io { .. } => "io",
        }
    }
}

/// Encodes and decodes frames whose payload is opaque bytes.
///
/// # Examples
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use daemoneye_lib::codec::FrameCodec;
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = FrameCodec::new();
/// let mut wire = BytesMut::new();
/// codec.encode(Bytes::from_static(b"hello"), &mut wire)?;
///
/// // A partial frame waits for more bytes.
/// let mut partial = wire.split_to(6);
/// assert_eq!(codec.decode(&mut partial)?, None);
/// partial.unsplit(wire);
/// assert_eq!(codec.decode(&mut partial)?, Some(Bytes::from_static(b"hello")));
/// # Ok::<(), daemoneye_lib::codec::CodecError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCodec {
    max_frame_length: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameCodec {
    /// A codec with the [`DEFAULT_MAX_FRAME_LENGTH`].
    pub const fn new() -> Self {
        Self {
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
        }
    }

    /// A codec accepting payloads of up to `max_frame_length` bytes (capped at
    /// `u32::MAX`, the largest length a header can carry; at least 1).
    pub fn with_max_frame_length(max_frame_length: usize) -> Self {
        let cap = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
        Self {
            max_frame_length: max_frame_length.clamp(1, cap),
        }
    }

    /// The largest payload accepted.
    pub const fn max_frame_length(&self) -> usize {
        self.max_frame_length
    }

    /// Checks an announced length against the limits; returns it as `usize`.
    fn check_length(self, length: u64) -> Result<usize, CodecError> {
        if length == 0 {
            return Err(CodecError::EmptyFrame);
        }
        match usize::try_from(length) {
            Ok(len) if len <= self.max_frame_length => Ok(len),
            _ => Err(CodecError::FrameTooLong {
                length,
                max: self.max_frame_length,
            }),
        }
    }

    /// Appends one frame carrying `payload` to `dst`.
    fn encode_payload(self, payload: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = self.check_length(payload.len() as u64)?;
        let len_u32 = u32::try_from(len).map_err(|_| CodecError::FrameTooLong {
            length: payload.len() as u64,
            max: self.max_frame_length,
        })?;
        dst.reserve(HEADER_LEN + len);
        dst.put_u32_le(len_u32);
        dst.put_u32_le(crc32c::crc32c(payload));
        dst.put_slice(payload);
        Ok(())
    }
}

impl FrameCodec {
    /// Looks at the frame at the start of `src`: `Ok(None)` while it is
    /// incomplete, `Ok(Some(payload length))` once it is whole and its
    /// checksum matches. A bad length is reported as soon as the header is
    /// complete, before any payload is awaited.
    fn check_frame(self, src: &[u8]) -> Result<Option<usize>, CodecError> {
        let Some(mut header) = src.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let length = header.get_u32_le();
        let expected = header.get_u32_le();
        let len = self.check_length(u64::from(length))?;
        let Some(payload) = src.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let actual = crc32c::crc32c(payload);
        if actual != expected {
            return Err(CodecError::ChecksumMismatch { expected, actual });
        }
        Ok(Some(len))
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = CodecError;

    /// Returns the next verified payload, `Ok(None)` while the frame is
    /// incomplete, or an error for a bad header or checksum. A bad length is
    /// reported as soon as the header arrives, before any payload is buffered.
    ///
    /// After an error the buffer is left as it was: the stream cannot be
    /// resynchronised, and the caller should drop the connection.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        if let Some(len) = self.check_frame(src)? {
            src.advance(HEADER_LEN);
            return Ok(Some(src.split_to(len).freeze()));
        }
        if src.len() >= HEADER_LEN {
            // The header passed `check_frame`, so its length is within the
            // limit: make room for the rest of the frame once rather than
            // growing step by step.
            let frame_len = frame_len_from_header(src);
            src.reserve(frame_len.saturating_sub(src.len()));
        }
        Ok(None)
    }

    /// Like [`decode`](Self::decode), but bytes left over at the end of the
    /// stream are a [`CodecError::Truncated`] frame.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(truncated(src)),
        }
    }
}

/// The whole frame's length announced by the header at the start of `src`,
/// or [`HEADER_LEN`] when the header itself is incomplete.
fn frame_len_from_header(src: &[u8]) -> usize {
    src.get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .and_then(|b| usize::try_from(u32::from_le_bytes(b)).ok())
        .map_or(HEADER_LEN, |len| len.saturating_add(HEADER_LEN))
}

fn truncated(src: &[u8]) -> CodecError {
    CodecError::Truncated {
        expected: frame_len_from_header(src),
        received: src.len(),
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_payload(&item, dst)
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_payload(item, dst)
    }
}

/// Encodes and decodes frames carrying [`Envelope`]s.
///
/// Decoding also rejects envelopes without a known message type
/// ([`CodecError::UnknownMessageType`]). After such an error, and after
/// [`CodecError::InvalidEnvelope`], the bad frame has been consumed and the
/// next `decode` goes on with the following frame (but `Framed` stops at the
/// first error; see the [module docs](self)).
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use daemoneye_lib::codec::EnvelopeCodec;
/// use daemoneye_lib::proto::{Envelope, Heartbeat};
/// use tokio_util::codec::{Decoder, Encoder};
///
/// let mut codec = EnvelopeCodec::new();
/// let mut wire = BytesMut::new();
/// let sent = Envelope::from(Heartbeat { nonce: 9 });
/// codec.encode(&sent, &mut wire)?;
/// assert_eq!(codec.decode(&mut wire)?, Some(sent));
/// # Ok::<(), daemoneye_lib::codec::CodecError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvelopeCodec {
    frames: FrameCodec,
}

impl EnvelopeCodec {
    /// A codec with the [`DEFAULT_MAX_FRAME_LENGTH`].
    pub const fn new() -> Self {
        Self {
            frames: FrameCodec::new(),
        }
    }

    /// A codec accepting payloads of up to `max_frame_length` bytes (see
    /// [`FrameCodec::with_max_frame_length`]).
    pub fn with_max_frame_length(max_frame_length: usize) -> Self {
        Self {
            frames: FrameCodec::with_max_frame_length(max_frame_length),
        }
    }

    /// The largest payload accepted.
    pub const fn max_frame_length(&self) -> usize {
        self.frames.max_frame_length()
    }

    fn encode_envelope(self, item: &Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = item.encoded_len();
        // Check before encoding so an oversized envelope costs no copy.
        self.frames.check_length(len as u64)?;
        let start = dst.len();
        dst.reserve(HEADER_LEN + len);
        dst.put_u64_le(0); // header placeholder
        item.encode_raw(dst);
        let payload = &dst[start + HEADER_LEN..];
        let crc = crc32c::crc32c(payload);
        let len_u32 = u32::try_from(payload.len()).map_err(|_| CodecError::FrameTooLong {
            length: payload.len() as u64,
            max: self.frames.max_frame_length,
        })?;
        dst[start..start + 4].copy_from_slice(&len_u32.to_le_bytes());
        dst[start + 4..start + HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

/// Decodes one verified payload (as [`FrameCodec`] yields it) into an envelope
/// with a known message type.
///
/// # Errors
/// [`CodecError::InvalidEnvelope`] when the payload is not a protobuf
/// envelope, [`CodecError::UnknownMessageType`] when it carries no message
/// this build knows.
pub fn decode_payload(payload: &[u8]) -> Result<Envelope, CodecError> {
    let envelope =
        Envelope::decode(payload).map_err(|source| CodecError::InvalidEnvelope { source })?;
    if envelope.payload.is_none() {
        return Err(CodecError::UnknownMessageType {
            request_id: envelope.request_id,
        });
    }
    Ok(envelope)
}

impl Decoder for EnvelopeCodec {
    type Item = Envelope;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, CodecError> {
        match self.frames.decode(src)? {
            Some(payload) => decode_payload(&payload).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Envelope>, CodecError> {
        match self.frames.decode_eof(src)? {
            Some(payload) => decode_payload(&payload).map(Some),
            None => Ok(None),
        }
    }
}

impl Encoder<&Envelope> for EnvelopeCodec {
    type Error = CodecError;

    fn encode(&mut self, item: &Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_envelope(item, dst)
    }
}

impl Encoder<Envelope> for EnvelopeCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Envelope, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_envelope(&item, dst)
    }
}

/// Encodes `envelope` as one complete frame, with the default limit.
///
/// # Errors
/// [`CodecError::FrameTooLong`] when the envelope encodes to more than
/// [`DEFAULT_MAX_FRAME_LENGTH`] bytes, [`CodecError::EmptyFrame`] when it
/// encodes to nothing (an envelope without payload and request id 0).
pub fn encode_envelope(envelope: &Envelope) -> Result<Bytes, CodecError> {
    let mut dst = BytesMut::new();
    EnvelopeCodec::new().encode_envelope(envelope, &mut dst)?;
    Ok(dst.freeze())
}

/// Decodes exactly one complete frame into an envelope, with the default
/// limit.
///
/// # Errors
/// Any [`CodecError`] but `Io`: a bad header or checksum, a cut frame
/// ([`CodecError::Truncated`]), bytes after the frame
/// ([`CodecError::TrailingBytes`]), a payload that is not an envelope, or an
/// envelope without a known message type.
pub fn decode_envelope(frame: &[u8]) -> Result<Envelope, CodecError> {
    let Some(len) = FrameCodec::new().check_frame(frame)? else {
        return Err(truncated(frame));
    };
    let (frame, rest) = frame.split_at(HEADER_LEN + len);
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes { count: rest.len() });
    }
    decode_payload(&frame[HEADER_LEN..])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::proto::{
        envelope::Payload, CapabilityRequest, CapabilityResponse, DetectionResult, DetectionTask,
        Domain, ErrorCode, ErrorResponse, EventBatch, EventRecord, FilesystemRecord, Heartbeat,
        LifecycleDetail, NetworkRecord, PerformanceRecord, ProcessContext, ProcessFilter,
        ProcessRecord, SourceCapability, SubscribeAck, SubscribeRequest, TaskType, Timestamp,
        TriggerRequestRecord, Unsubscribe,
    };
    use proptest::prelude::*;

    /// Large enough for any generated envelope: the round-trip properties
    /// test the encoding, not the limit.
    const ROOMY: usize = 64 * 1024 * 1024;

    /// Decodes everything decodable in `buf`: the envelopes, then the error
    /// that stopped decoding, if any.
    fn drain(codec: &mut EnvelopeCodec, buf: &mut BytesMut) -> (Vec<Envelope>, Option<CodecError>) {
        let mut out = Vec::new();
        loop {
            match codec.decode(buf) {
                Ok(Some(env)) => out.push(env),
                Ok(None) => return (out, None),
                Err(err) => return (out, Some(err)),
            }
        }
    }

    fn frame(payload: &[u8]) -> BytesMut {
        let mut dst = BytesMut::new();
        FrameCodec::new().encode(payload, &mut dst).unwrap();
        dst
    }

    fn raw_frame(length: u32, crc: u32, payload: &[u8]) -> BytesMut {
        let mut dst = BytesMut::new();
        dst.put_u32_le(length);
        dst.put_u32_le(crc);
        dst.put_slice(payload);
        dst
    }

    fn encoded(env: &Envelope) -> Vec<u8> {
        env.encode_to_vec()
    }

    /// One populated envelope per message type; the `match` fails to compile
    /// when a message type is added without a sample here.
    fn health_sample() -> crate::proto::ComponentHealth {
        crate::proto::ComponentHealth {
            name: "daemoneye-agent".to_owned(),
            state: crate::proto::HealthState::Degraded.into(),
            message: "collector restarting".to_owned(),
            version: "0.1.0".to_owned(),
            pid: 4242,
            uptime_ms: 60_000,
            counters: [("restarts".to_owned(), 2)].into(),
            components: vec![crate::proto::ComponentHealth {
                name: "procmond".to_owned(),
                state: crate::proto::HealthState::Unreachable.into(),
                ..Default::default()
            }],
        }
    }

    #[allow(clippy::too_many_lines)] // one sample of every message type, in one list
    fn samples() -> Vec<Envelope> {
        let process = ProcessRecord {
            pid: 4242,
            ppid: Some(1),
            name: "sshd".to_owned(),
            executable_path: Some("/usr/sbin/sshd".to_owned()),
            command_line: vec!["sshd".to_owned(), "-D".to_owned()],
            start_time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            cpu_usage: Some(1.5),
            memory_usage: Some(8 << 20),
            executable_hash: Some("ab".repeat(32)),
            hash_algorithm: Some("sha256".to_owned()),
            user_id: Some(0),
            accessible: true,
            file_exists: true,
            timestamp: Some(Timestamp::now()),
            platform_metadata: [("seccomp".to_owned(), "2".to_owned())].into(),
            process_key: "5f1b2c3d-0a1b-4c2d-8e9f-0123456789ab:4242:1234567".to_owned(),
            event_type: "exec".to_owned(),
            exit_code: None,
            euid: Some(0),
            gid: Some(0),
            state: "S".to_owned(),
            threads: Some(1),
            cpu_ticks: Some(12),
            exe_replaced: false,
            read: String::new(),
            context: Some(ProcessContext {
                cgroup: Some("/system.slice/ssh.service".to_owned()),
                pid_ns: Some(4_026_531_836),
                ..ProcessContext::default()
            }),
            lifecycle: Some(LifecycleDetail {
                observed_by: "kernel".to_owned(),
                changed: vec!["argv".to_owned()],
                ..LifecycleDetail::default()
            }),
        };
        let mut task = DetectionTask::new("t-1", TaskType::EnumerateProcesses);
        task.process_filter = Some(ProcessFilter {
            process_names: vec!["sshd".to_owned()],
            ..ProcessFilter::default()
        });
        task.metadata
            .insert("origin".to_owned(), "rule-7".to_owned());
        let payloads = vec![
            Payload::CapabilityRequest(CapabilityRequest {
                client_version: "0.1.0".to_owned(),
                protocol_version: crate::proto::PROTOCOL_VERSION,
                wanted_domains: vec![Domain::Process.into(), Domain::Network.into()],
                client_name: "daemoneye-agent".to_owned(),
            }),
            Payload::CapabilityResponse(CapabilityResponse {
                server_version: "0.1.0".to_owned(),
                protocol_version: crate::proto::PROTOCOL_VERSION,
                supported_domains: vec![Domain::Process.into()],
                capability_bits: 0b101_0001,
                sources: vec![SourceCapability {
                    name: "procmond".to_owned(),
                    capability_bits: 0b101_0001,
                    domains: vec![Domain::Process.into()],
                }],
                supported_tasks: vec![TaskType::EnumerateProcesses.into()],
            }),
            Payload::DetectionTask(task),
            Payload::DetectionResult(DetectionResult::success("t-1", vec![process.clone()])),
            Payload::SubscribeRequest(SubscribeRequest {
                event_kinds: vec![crate::proto::EventKind::Process.into()],
                pids: vec![1, 2],
                source_names: vec!["procmond".to_owned()],
                topic_patterns: vec!["events.process.*".to_owned()],
                max_batch_size: 512,
            }),
            Payload::SubscribeAck(SubscribeAck { subscription_id: 3 }),
            Payload::Unsubscribe(Unsubscribe { subscription_id: 3 }),
            Payload::EventBatch(EventBatch {
                subscription_id: 3,
                sequence: 1,
                events: vec![
                    EventRecord::new("procmond", process),
                    EventRecord::new("netmond", NetworkRecord::default()),
                    EventRecord::new("fsmond", FilesystemRecord::default()),
                    EventRecord::new("perfmond", PerformanceRecord::default()),
                    EventRecord::new("triggers", TriggerRequestRecord::default()),
                ],
                dropped_since_last: 17,
            }),
            Payload::Error(ErrorResponse::new(
                ErrorCode::UnsupportedDomain,
                "no network source",
            )),
            Payload::Heartbeat(Heartbeat { nonce: 11 }),
            Payload::HealthRequest(crate::proto::HealthRequest {}),
            health_sample().into(),
        ];
        for p in &payloads {
            match p {
                Payload::CapabilityRequest(_)
                | Payload::CapabilityResponse(_)
                | Payload::DetectionTask(_)
                | Payload::DetectionResult(_)
                | Payload::SubscribeRequest(_)
                | Payload::SubscribeAck(_)
                | Payload::Unsubscribe(_)
                | Payload::EventBatch(_)
                | Payload::Error(_)
                | Payload::Heartbeat(_)
                | Payload::HealthRequest(_)
                | Payload::Health(_) => {}
            }
        }
        payloads
            .into_iter()
            .zip(1..)
            .map(|(p, id)| Envelope::new(p).with_request_id(id))
            .collect()
    }

    #[test]
    fn every_message_type_round_trips() {
        let samples = samples();
        assert_eq!(samples.len(), 12);
        let mut wire = BytesMut::new();
        let mut codec = EnvelopeCodec::new();
        for env in &samples {
            let frame = encode_envelope(env).unwrap();
            assert_eq!(&decode_envelope(&frame).unwrap(), env);
            codec.encode(env, &mut wire).unwrap();
        }
        let (decoded, err) = drain(&mut codec, &mut wire);
        assert!(err.is_none());
        assert_eq!(decoded, samples);
        assert!(wire.is_empty());
    }

    #[test]
    fn frame_layout_is_length_crc_payload() {
        let frame = frame(b"abc");
        assert_eq!(&frame[..4], &3u32.to_le_bytes());
        assert_eq!(&frame[4..8], &crc32c::crc32c(b"abc").to_le_bytes());
        assert_eq!(&frame[8..], b"abc");
        // The CRC32C check value (Castagnoli) guards against a wrong polynomial.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn envelope_codec_and_frame_codec_agree() {
        let env = samples().swap_remove(3);
        let mut a = BytesMut::new();
        EnvelopeCodec::new().encode(&env, &mut a).unwrap();
        assert_eq!(a, frame(&encoded(&env)));
        assert_eq!(encode_envelope(&env).unwrap(), a.freeze());
    }

    #[test]
    fn partial_frames_wait_byte_by_byte_and_resume() {
        let samples = samples();
        let mut wire = BytesMut::new();
        let mut codec = EnvelopeCodec::new();
        for env in &samples {
            codec.encode(env, &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for &byte in &wire {
            buf.put_u8(byte);
            while let Some(env) = codec.decode(&mut buf).unwrap() {
                decoded.push(env);
            }
        }
        assert_eq!(decoded, samples);
        assert!(buf.is_empty());
    }

    #[test]
    fn eof_inside_a_frame_is_a_truncated_error() {
        let full = encode_envelope(&Envelope::from(Heartbeat { nonce: 1 })).unwrap();
        for cut in 1..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            let mut codec = EnvelopeCodec::new();
            assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
            let err = codec.decode_eof(&mut buf).unwrap_err();
            let expected = if cut < 4 { HEADER_LEN } else { full.len() };
            assert!(
                matches!(err, CodecError::Truncated { expected: e, received } if e == expected && received == cut),
                "cut at {cut}: {err:?}"
            );
            assert!(matches!(
                decode_envelope(&full[..cut]),
                Err(CodecError::Truncated { .. })
            ));
        }
        let mut empty = BytesMut::new();
        assert_eq!(EnvelopeCodec::new().decode_eof(&mut empty).unwrap(), None);
        assert!(matches!(
            decode_envelope(&[]),
            Err(CodecError::Truncated {
                expected: 8,
                received: 0
            })
        ));
    }

    #[test]
    fn zero_length_is_rejected() {
        let mut buf = raw_frame(0, 0, b"");
        assert!(matches!(
            FrameCodec::new().decode(&mut buf),
            Err(CodecError::EmptyFrame)
        ));
        assert!(matches!(
            decode_envelope(&raw_frame(0, 0, b"")),
            Err(CodecError::EmptyFrame)
        ));
        // An envelope that encodes to nothing is refused on the way out too.
        assert!(matches!(
            encode_envelope(&Envelope::default()),
            Err(CodecError::EmptyFrame)
        ));
        let mut dst = BytesMut::new();
        assert!(matches!(
            FrameCodec::new().encode(&b""[..], &mut dst),
            Err(CodecError::EmptyFrame)
        ));
        assert!(dst.is_empty());
    }

    #[test]
    fn over_limit_length_is_rejected_from_the_header_alone() {
        // Only the 8 header bytes: the decoder must not wait for (or buffer)
        // a payload it will refuse.
        for length in [
            u32::try_from(DEFAULT_MAX_FRAME_LENGTH).unwrap() + 1,
            u32::MAX,
        ] {
            let mut buf = raw_frame(length, 0, b"");
            let err = FrameCodec::new().decode(&mut buf).unwrap_err();
            assert!(
                matches!(err, CodecError::FrameTooLong { length: l, max: DEFAULT_MAX_FRAME_LENGTH } if l == u64::from(length)),
                "{err:?}"
            );
            assert!(
                buf.capacity() < 1024,
                "decoder reserved for a refused frame"
            );
        }
        // Exactly at the limit is fine.
        let payload = vec![7u8; DEFAULT_MAX_FRAME_LENGTH];
        let mut buf = frame(&payload);
        assert_eq!(
            FrameCodec::new().decode(&mut buf).unwrap().unwrap().len(),
            payload.len()
        );
    }

    #[test]
    fn configured_limit_applies_both_ways() {
        let mut codec = FrameCodec::with_max_frame_length(16);
        assert_eq!(codec.max_frame_length(), 16);
        let mut dst = BytesMut::new();
        assert!(matches!(
            codec.encode(&[0u8; 17][..], &mut dst),
            Err(CodecError::FrameTooLong {
                length: 17,
                max: 16
            })
        ));
        assert!(dst.is_empty());
        let mut buf = frame(&[0u8; 17]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::FrameTooLong {
                length: 17,
                max: 16
            })
        ));

        let mut envelopes = EnvelopeCodec::with_max_frame_length(16);
        assert_eq!(envelopes.max_frame_length(), 16);
        let big = Envelope::from(ErrorResponse::new(ErrorCode::Internal, "x".repeat(32)));
        assert!(matches!(
            envelopes.encode(&big, &mut dst),
            Err(CodecError::FrameTooLong { max: 16, .. })
        ));
        assert!(dst.is_empty());

        assert_eq!(FrameCodec::with_max_frame_length(0).max_frame_length(), 1);
        assert_eq!(FrameCodec::default(), FrameCodec::new());
        assert_eq!(
            EnvelopeCodec::default().max_frame_length(),
            DEFAULT_MAX_FRAME_LENGTH
        );
    }

    #[test]
    fn length_larger_than_sent_waits_then_truncates() {
        // A lying length within the limit looks like a slow peer: wait, and
        // report truncation at end of stream.
        let mut buf = raw_frame(100, crc32c::crc32c(b"abc"), b"abc");
        let mut codec = FrameCodec::new();
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::Truncated {
                expected: 108,
                received: 11
            })
        ));
    }

    #[test]
    fn length_smaller_than_sent_fails_the_checksum() {
        let payload = encoded(&Envelope::from(Heartbeat { nonce: 77 }));
        let crc = crc32c::crc32c(&payload);
        let mut buf = raw_frame(u32::try_from(payload.len()).unwrap() - 1, crc, &payload);
        assert!(matches!(
            FrameCodec::new().decode(&mut buf),
            Err(CodecError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let full = encode_envelope(&samples().swap_remove(3)).unwrap();
        for byte in 0..full.len() {
            for bit in 0..8 {
                let mut bad = BytesMut::from(&full[..]);
                bad[byte] ^= 1 << bit;
                let mut codec = EnvelopeCodec::new();
                let result = codec.decode(&mut bad);
                if byte < 4 {
                    // A corrupted length: refused, or awaited (then truncated),
                    // or the checksum no longer matches.
                    match result {
                        Err(
                            CodecError::EmptyFrame
                            | CodecError::FrameTooLong { .. }
                            | CodecError::ChecksumMismatch { .. },
                        ) => {}
                        Ok(None) => assert!(codec.decode_eof(&mut bad).is_err()),
                        other => panic!("byte {byte} bit {bit}: {other:?}"),
                    }
                } else {
                    assert!(
                        matches!(result, Err(CodecError::ChecksumMismatch { .. })),
                        "byte {byte} bit {bit}: {result:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn garbage_protobuf_with_a_valid_checksum_is_an_invalid_envelope() {
        for garbage in [
            &[0xff_u8; 16][..],
            &[0x0a, 0x05, 0x01][..], // field 1 as length-delimited, cut short
            &[0x08][..],             // a varint tag with no value
            &[0x82, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0f][..], // field 16, absurd length
            &[0x00][..],             // field number 0
        ] {
            let err = decode_envelope(&frame(garbage)).unwrap_err();
            assert!(
                matches!(err, CodecError::InvalidEnvelope { .. }),
                "{garbage:?}: {err:?}"
            );
            let mut buf = frame(garbage);
            assert!(matches!(
                EnvelopeCodec::new().decode(&mut buf),
                Err(CodecError::InvalidEnvelope { .. })
            ));
        }
    }

    #[test]
    fn unknown_message_type_is_typed_and_the_stream_goes_on() {
        // request_id = 5, then field 99 (a message type from a newer peer) as
        // a varint.
        let mut payload = vec![0x08, 0x05];
        payload.extend_from_slice(&[0x98, 0x06, 0x01]);
        let mut buf = frame(&payload);
        let next = Envelope::from(Heartbeat { nonce: 1 });
        EnvelopeCodec::new().encode(&next, &mut buf).unwrap();

        let mut codec = EnvelopeCodec::new();
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::UnknownMessageType { request_id: 5 })
        ));
        // The bad frame was consumed: the next one decodes.
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(next));
        assert!(matches!(
            decode_envelope(&frame(&payload)),
            Err(CodecError::UnknownMessageType { request_id: 5 })
        ));
        // An envelope with no payload at all is the same error.
        let empty_payload = encoded(&Envelope {
            request_id: 9,
            payload: None,
        });
        assert!(matches!(
            decode_envelope(&frame(&empty_payload)),
            Err(CodecError::UnknownMessageType { request_id: 9 })
        ));
    }

    #[test]
    fn a_reader_can_answer_bad_envelopes_and_go_on() {
        // FrameCodec + decode_payload: the way to keep a connection after a
        // well-framed but bad envelope.
        let good = Envelope::from(Heartbeat { nonce: 4 }).with_request_id(2);
        let mut buf = frame(&[0xff; 8]);
        buf.unsplit(frame(&[0x08, 0x03, 0x98, 0x06, 0x01]));
        buf.unsplit(BytesMut::from(&encode_envelope(&good).unwrap()[..]));
        let mut frames = FrameCodec::new();
        let mut outcomes = Vec::new();
        while let Some(payload) = frames.decode(&mut buf).unwrap() {
            outcomes.push(decode_payload(&payload));
        }
        assert_eq!(outcomes.len(), 3);
        let err = outcomes.remove(0).unwrap_err();
        assert!(matches!(err, CodecError::InvalidEnvelope { .. }) && err.is_stream_intact());
        let err = outcomes.remove(0).unwrap_err();
        assert!(
            matches!(err, CodecError::UnknownMessageType { request_id: 3 })
                && err.is_stream_intact()
        );
        assert_eq!(outcomes.remove(0).unwrap(), good);
    }

    #[test]
    fn trailing_bytes_after_one_frame_are_refused() {
        let mut two =
            BytesMut::from(&encode_envelope(&Envelope::from(Heartbeat { nonce: 1 })).unwrap()[..]);
        two.put_slice(b"xyz");
        assert!(matches!(
            decode_envelope(&two),
            Err(CodecError::TrailingBytes { count: 3 })
        ));
    }

    #[test]
    fn error_messages_are_lowercase_and_reasons_are_stable() {
        let errors = [
            CodecError::EmptyFrame,
            CodecError::FrameTooLong { length: 2, max: 1 },
            CodecError::ChecksumMismatch {
                expected: 1,
                actual: 2,
            },
            CodecError::Truncated {
                expected: 9,
                received: 3,
            },
            CodecError::TrailingBytes { count: 1 },
            CodecError::InvalidEnvelope {
                source: Envelope::decode(&[0xff_u8][..]).unwrap_err(),
            },
            CodecError::UnknownMessageType { request_id: 0 },
            CodecError::from(std::io::Error::other("boom")),
        ];
        let mut reasons = std::collections::BTreeSet::new();
        for err in &errors {
            let text = err.to_string();
            assert!(!text.ends_with('.'), "{text}");
            assert!(
                text.chars().next().unwrap().is_ascii_lowercase()
                    || text.starts_with(char::is_numeric),
                "{text}"
            );
            assert!(reasons.insert(err.reason()));
            assert_eq!(
                err.is_stream_intact(),
                matches!(
                    err,
                    CodecError::InvalidEnvelope { .. } | CodecError::UnknownMessageType { .. }
                )
            );
        }
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<FrameCodec>();
        check::<EnvelopeCodec>();
        check::<CodecError>();
        check::<Envelope>();
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (any::<u64>(), any::<Payload>()).prop_map(|(id, p)| Envelope::new(p).with_request_id(id))
    }

    /// Applies byte-level mutations: flips, overwrites, cuts and insertions.
    fn arb_mutations() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
        prop::collection::vec((0u8..4, any::<usize>(), any::<u8>()), 1..8)
    }

    fn mutate(frame: &mut Vec<u8>, mutations: &[(u8, usize, u8)]) {
        for &(op, at, value) in mutations {
            if frame.is_empty() {
                frame.push(value);
                continue;
            }
            let i = at % frame.len();
            match op {
                0 => frame[i] ^= 1 << (value % 8),
                1 => frame[i] = value,
                2 => frame.truncate(i),
                _ => frame.insert(i, value),
            }
        }
    }

    proptest! {
        #[test]
        fn envelopes_round_trip_through_the_codec(envs in prop::collection::vec(arb_envelope(), 1..4), chunk in 1usize..4096) {
            let mut codec = EnvelopeCodec::with_max_frame_length(ROOMY);
            let mut wire = BytesMut::new();
            for env in &envs {
                codec.encode(env, &mut wire).unwrap();
            }
            // Feed the stream in chunks of arbitrary size.
            let mut buf = BytesMut::new();
            let mut decoded = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.put_slice(piece);
                while let Some(env) = codec.decode(&mut buf).unwrap() {
                    decoded.push(env);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(decoded.len(), envs.len());
            for (got, sent) in decoded.iter().zip(&envs) {
                // Bytes, not `==`: generated doubles include NaN.
                prop_assert_eq!(encoded(got), encoded(sent));
            }
        }

        #[test]
        fn one_frame_helpers_round_trip(env in arb_envelope()) {
            prop_assume!(env.encoded_len() <= DEFAULT_MAX_FRAME_LENGTH);
            let frame = encode_envelope(&env).unwrap();
            prop_assert_eq!(frame.len(), HEADER_LEN + env.encoded_len());
            prop_assert_eq!(encoded(&decode_envelope(&frame).unwrap()), encoded(&env));
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
            let mut codec = EnvelopeCodec::new();
            let mut buf = BytesMut::new();
            'feed: for piece in bytes.chunks(chunk) {
                buf.put_slice(piece);
                let (_, err) = drain(&mut codec, &mut buf);
                if err.is_some() {
                    break 'feed;
                }
            }
            let _ = codec.decode_eof(&mut buf);
            let _ = decode_envelope(&bytes);
        }

        #[test]
        fn random_headers_give_a_typed_answer(length in any::<u32>(), crc in any::<u32>(), body in prop::collection::vec(any::<u8>(), 0..64)) {
            let buf = raw_frame(length, crc, &body);
            let mut stream = buf.clone();
            match FrameCodec::new().decode(&mut stream) {
                Ok(None) => prop_assert!(length as usize > body.len()),
                Ok(Some(payload)) => {
                    prop_assert_eq!(crc, crc32c::crc32c(&payload));
                    prop_assert_eq!(payload.len(), length as usize);
                }
                Err(CodecError::EmptyFrame) => prop_assert_eq!(length, 0),
                Err(CodecError::FrameTooLong { .. }) => prop_assert!(length as usize > DEFAULT_MAX_FRAME_LENGTH),
                Err(CodecError::ChecksumMismatch { .. }) => {}
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
            let _ = decode_envelope(&buf);
        }

        #[test]
        fn garbage_payloads_with_valid_checksums_never_panic(payload in prop::collection::vec(any::<u8>(), 1..1024)) {
            let mut buf = frame(&payload);
            match EnvelopeCodec::new().decode(&mut buf) {
                Ok(Some(_)) | Err(CodecError::InvalidEnvelope { .. } | CodecError::UnknownMessageType { .. }) => {}
                other => prop_assert!(false, "unexpected {:?}", other),
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn mutated_frames_never_panic(env in arb_envelope(), mutations in arb_mutations()) {
            let mut bytes = encoded(&env);
            let mut framed = frame(&bytes).to_vec();
            mutate(&mut framed, &mutations);
            let mut codec = EnvelopeCodec::new();
            let mut buf = BytesMut::from(&framed[..]);
            let _ = drain(&mut codec, &mut buf);
            let _ = codec.decode_eof(&mut buf);
            let _ = decode_envelope(&framed);
            // The same mutations on the payload alone, framed with a valid
            // checksum, reach the protobuf decoder.
            mutate(&mut bytes, &mutations);
            if !bytes.is_empty() {
                let _ = decode_envelope(&frame(&bytes));
            }
        }
    }
}
