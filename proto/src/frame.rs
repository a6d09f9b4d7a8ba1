//! The frame codec: `[flag: u8][length: u32 big-endian][message]`.
//!
//! This is gRPC's length-prefixed message framing without HTTP/2 under it.
//! The decoder rejects a bad flag or an oversized length as soon as the
//! header is in, so a hostile peer cannot make us buffer a 4 GiB "frame".
//! Written by hand because it is twenty lines on top of `tokio_util::codec`
//! and no crate offers exactly this framing without a gRPC stack around it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Bytes before the message: the flag and the length.
pub const HEADER_LEN: usize = 5;

/// The default limit on a frame's message length (1 MiB).
pub const DEFAULT_MAX_FRAME_LEN: usize = 1 << 20;

/// The only flag value defined: an uncompressed message.
pub const FLAG_UNCOMPRESSED: u8 = 0;

/// Why a byte stream is not a valid sequence of frames. Every variant but
/// `Io` means the stream is out of sync and the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The flag byte is not 0 (compression is not supported).
    #[error("unsupported frame flag {0:#04x} (only 0, uncompressed, is defined)")]
    BadFlag(u8),
    /// The announced length is larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced (or, when encoding, the actual) length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes of it received)")]
    Truncated(usize),
    /// The underlying stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into frame payloads and writes messages as frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_len: usize,
}

impl FrameCodec {
    /// A codec that refuses messages longer than `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        Self { max_frame_len }
    }

    /// The configured limit.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Changes the limit for the frames still to come; a server raises it
    /// once a client has authenticated.
    pub fn set_max_frame_len(&mut self, max_frame_len: usize) {
        self.max_frame_len = max_frame_len;
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(&flag) = src.first() else {
            return Ok(None);
        };
        if flag != FLAG_UNCOMPRESSED {
            return Err(FrameError::BadFlag(flag));
        }
        let Some(len_bytes) = src.get(1..HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_be = [0u8; 4];
        len_be.copy_from_slice(len_bytes);
        let len = u32::from_be_bytes(len_be) as usize;
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len())),
        }
    }
}

impl<M: prost::Message> Encoder<&M> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, message: &M, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = message.encoded_len();
        if len > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u8(FLAG_UNCOMPRESSED);
        // `len <= max_frame_len`, which is configured far below 4 GiB.
        dst.put_u32(u32::try_from(len).map_err(|_| FrameError::TooLarge {
            len,
            max: self.max_frame_len,
        })?);
        message
            .encode(dst)
            .map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
        Ok(())
    }
}

/// Encodes one message as a complete frame (for tests and simple clients).
pub fn encode_frame<M: prost::Message>(message: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + message.encoded_len());
    out.push(FLAG_UNCOMPRESSED);
    out.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode_raw(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    fn ping(id: u64) -> v1::Request {
        v1::Request {
            id,
            command: Some(v1::request::Command::Ping(v1::PingRequest {})),
        }
    }

    fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(buf).expect("valid frames") {
            out.push(frame);
        }
        out
    }

    #[test]
    fn coalesced_frames_decode_one_by_one() {
        let mut buf = BytesMut::new();
        for id in 1..=3 {
            buf.extend_from_slice(&encode_frame(&ping(id)));
        }
        let frames = decode_all(&mut FrameCodec::default(), &mut buf);
        let ids: Vec<u64> = frames
            .iter()
            .map(|f| {
                <v1::Request as prost::Message>::decode(f.clone())
                    .expect("request")
                    .id
            })
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        assert!(buf.is_empty());
    }

    #[test]
    fn frame_split_at_every_byte_boundary() {
        let bytes = encode_frame(&ping(0xdead_beef));
        for split in 0..=bytes.len() {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(&bytes[..split]);
            let first = codec.decode(&mut buf).expect("no error on a prefix");
            if split < bytes.len() {
                assert!(first.is_none(), "a {split}-byte prefix is not a frame");
                buf.extend_from_slice(&bytes[split..]);
                let frame = codec.decode(&mut buf).expect("ok").expect("complete");
                let request = <v1::Request as prost::Message>::decode(frame).expect("request");
                assert_eq!(request.id, 0xdead_beef);
            } else {
                assert!(first.is_some());
            }
        }
    }

    #[test]
    fn empty_message_is_a_valid_frame() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 0][..]);
        let frame = FrameCodec::default().decode(&mut buf).expect("ok");
        assert_eq!(frame.map(|f| f.len()), Some(0));
    }

    #[test]
    fn bad_flag_is_refused_before_the_length_arrives() {
        let mut buf = BytesMut::from(&[1u8][..]);
        let err = FrameCodec::default()
            .decode(&mut buf)
            .expect_err("bad flag");
        assert!(matches!(err, FrameError::BadFlag(1)), "{err}");
    }

    #[test]
    fn oversize_length_is_refused_from_the_header_alone() {
        let mut buf = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        let err = FrameCodec::new(1024)
            .decode(&mut buf)
            .expect_err("too large");
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    len: 0xffff_ffff,
                    max: 1024
                }
            ),
            "{err}"
        );
        // Exactly at the limit is fine.
        let mut at_limit = BytesMut::from(&[0u8, 0, 0, 4, 0][..]);
        at_limit.extend_from_slice(&[0u8; 1024]);
        assert!(
            FrameCodec::new(1024)
                .decode(&mut at_limit)
                .expect("ok")
                .is_some()
        );
    }

    #[test]
    fn truncated_frame_at_end_of_stream_is_an_error() {
        let bytes = encode_frame(&ping(7));
        let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
        let err = FrameCodec::default()
            .decode_eof(&mut buf)
            .expect_err("truncated");
        assert!(
            matches!(err, FrameError::Truncated(n) if n == bytes.len() - 1),
            "{err}"
        );
        // A clean end between frames is not an error.
        let mut empty = BytesMut::new();
        assert!(
            FrameCodec::default()
                .decode_eof(&mut empty)
                .expect("ok")
                .is_none()
        );
    }

    #[test]
    fn garbage_is_refused_not_buffered() {
        // Typical garbage: text, random high bytes. The first byte decides.
        for garbage in [&b"GET / HTTP/1.1\r\n\r\n"[..], &[0x80, 1, 2, 3, 4, 5][..]] {
            let mut buf = BytesMut::from(garbage);
            assert!(FrameCodec::default().decode(&mut buf).is_err());
        }
        // Garbage that starts with a zero byte but announces a huge length.
        let mut buf = BytesMut::from(&[0u8, 0x7f, 0x00, 0x00, 0x00, 1, 2][..]);
        assert!(matches!(
            FrameCodec::default().decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn encoder_matches_encode_frame_and_enforces_the_limit() {
        let request = ping(42);
        let mut dst = BytesMut::new();
        FrameCodec::default()
            .encode(&request, &mut dst)
            .expect("encode");
        assert_eq!(&dst[..], &encode_frame(&request)[..]);

        let big = v1::Request {
            id: 1,
            command: Some(v1::request::Command::Authenticate(
                v1::AuthenticateRequest {
                    token: "x".repeat(100),
                },
            )),
        };
        let err = FrameCodec::new(16)
            .encode(&big, &mut BytesMut::new())
            .expect_err("limit");
        assert!(matches!(err, FrameError::TooLarge { max: 16, .. }));
    }

    #[test]
    fn undecodable_payload_in_a_valid_frame_is_a_message_error_only() {
        // The frame layer accepts it; protobuf decoding reports the error, and
        // the stream stays in sync for the next frame.
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 2, 0xff, 0xff][..]);
        buf.extend_from_slice(&encode_frame(&ping(9)));
        let mut codec = FrameCodec::default();
        let bad = codec.decode(&mut buf).expect("ok").expect("frame");
        assert!(<v1::Request as prost::Message>::decode(bad).is_err());
        let good = codec.decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(
            <v1::Request as prost::Message>::decode(good)
                .expect("ok")
                .id,
            9
        );
    }

    #[test]
    fn json_mapping_uses_code_names_and_prints_zero_fields() {
        let response = v1::Response::error(3, v1::Code::NotFound, "no such session");
        let json = serde_json::to_value(&response).expect("json");
        assert_eq!(json["error"]["code"], "NOT_FOUND");
        assert_eq!(json["error"]["message"], "no such session");
        let stats = serde_json::to_value(v1::GetStatsResponse::default()).expect("json");
        assert!(stats.get("control_connections").is_some(), "{stats}");
    }
}
