//! Reading frames off a socket half without `Framed`, so that a bad envelope
//! can be answered and the connection kept.

use bytes::{Bytes, BytesMut};
use daemoneye_lib::codec::{CodecError, FrameCodec};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::Decoder;

pub(crate) struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    codec: FrameCodec,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub(crate) fn new(io: R, max_frame_length: usize) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(8 * 1024),
            codec: FrameCodec::with_max_frame_length(max_frame_length),
        }
    }

    /// A whole verified payload already buffered, if any.
    pub(crate) fn try_decode(&mut self) -> Result<Option<Bytes>, CodecError> {
        self.codec.decode(&mut self.buf)
    }

    /// Bytes buffered that do not yet make a frame.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Reads more bytes; `Ok(0)` at the end of the stream.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes are either appended to the buffer or not read.
    pub(crate) async fn read_more(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8 * 1024);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// The next verified payload; `Ok(None)` at a clean end of stream.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub(crate) async fn next_frame(&mut self) -> Result<Option<Bytes>, CodecError> {
        loop {
            if let Some(frame) = self.try_decode()? {
                return Ok(Some(frame));
            }
            if self.read_more().await? == 0 {
                return match self.codec.decode_eof(&mut self.buf)? {
                    Some(frame) => Ok(Some(frame)),
                    None => Ok(None),
                };
            }
        }
    }
}
