//! Every frame between nodes: a big-endian `u32` length, then a MessagePack [`Envelope`]
//! written with named fields (`to_vec_named`), so that a node of the next version can add
//! fields and still be understood, and unknown fields are skipped rather than fatal.
//! The length is checked against a maximum before anything is allocated for it.
//!
//! The first frame on every connection is a [`Hello`]; the two sides then talk only if
//! their ranges of supported protocol versions overlap.
//!
//! Everything here is pure (no I/O) so that it can be tested and fuzzed directly.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// The protocol version this build speaks. 2: forwarded batches may come in the compact
/// form (`forward/compact.rs`); everything else is as in 1.
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version this build still understands.
pub const MIN_COMPATIBLE_VERSION: u16 = 1;
/// Default cap on one frame (length prefix excluded).
pub const DEFAULT_MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: u64, max: u32 },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("cannot encode frame: {0}")]
    Encode(String),
    #[error("expected a {expected:?} frame, got kind {got}")]
    UnexpectedKind { expected: FrameKind, got: u8 },
}

/// What an envelope carries. Sent as a plain `u8` so that an unknown kind from a newer
/// peer is a clean, reportable error instead of a decode failure of the whole envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// First frame on a connection, both directions: [`Hello`].
    Hello = 1,
    /// An RPC request, first frame of a bidirectional stream: [`Request`].
    Request = 2,
    /// The answer on the same stream: [`Response`].
    Response = 3,
    /// First frame of a unidirectional lane stream: [`LaneOpen`].
    LaneOpen = 4,
    /// One frame on a lane; the body is the caller's bytes, untouched.
    LaneData = 5,
}

impl FrameKind {
    pub fn from_u8(kind: u8) -> Option<Self> {
        Some(match kind {
            1 => Self::Hello,
            2 => Self::Request,
            3 => Self::Response,
            4 => Self::LaneOpen,
            5 => Self::LaneData,
            _ => return None,
        })
    }
}

/// The versioned wrapper of every frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Protocol version of the sender.
    pub version: u16,
    /// A [`FrameKind`] as `u8`.
    pub kind: u8,
    pub body: Bytes,
}

impl Envelope {
    pub fn new(kind: FrameKind, body: Bytes) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            kind: kind as u8,
            body,
        }
    }

    /// An envelope whose body is `value` in named-field MessagePack.
    pub fn of<T: Serialize>(kind: FrameKind, value: &T) -> Result<Self, FrameError> {
        let body = rmp_serde::to_vec_named(value).map_err(|e| FrameError::Encode(e.to_string()))?;
        Ok(Self::new(kind, Bytes::from(body)))
    }

    /// Decodes the body as `T`, after checking that the envelope is of kind `expected`.
    pub fn body_as<T: DeserializeOwned>(&self, expected: FrameKind) -> Result<T, FrameError> {
        if self.kind != expected as u8 {
            return Err(FrameError::UnexpectedKind {
                expected,
                got: self.kind,
            });
        }
        rmp_serde::from_slice(&self.body).map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

/// The first message on every connection, in both directions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The newest protocol version the sender speaks.
    pub protocol_version: u16,
    /// The oldest protocol version the sender still understands.
    pub min_compatible: u16,
    pub node_id: NodeId,
    /// Where the sender can be dialled (`host:port`).
    pub cluster_addr: String,
    pub region: String,
    /// Random per process start. A connection from a new incarnation replaces the old
    /// one at once, instead of waiting for the old one's idle timeout.
    #[serde(default)]
    pub incarnation: u64,
}

impl Hello {
    /// The version both sides will speak, or `None` if their ranges do not overlap.
    pub fn negotiate(&self, peer: &Hello) -> Option<u16> {
        let low = self.min_compatible.max(peer.min_compatible);
        let high = self.protocol_version.min(peer.protocol_version);
        (low <= high).then_some(high)
    }
}

/// An RPC request: the handler's kind and its opaque body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub kind: u8,
    pub body: Bytes,
}

/// An RPC answer: the handler's bytes, or its error message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ok(Bytes),
    Err(String),
}

/// Opens a lane stream: every following frame on the stream belongs to `lane`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneOpen {
    pub lane: u8,
}

/// The envelope as one length-prefixed frame, ready to write.
pub fn encode_frame(envelope: &Envelope, max_len: u32) -> Result<Bytes, FrameError> {
    let body = rmp_serde::to_vec_named(envelope).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = frame_len(body.len() as u64, max_len)?;
    let mut out = BytesMut::with_capacity(LEN_PREFIX + body.len());
    out.put_u32(len);
    out.extend_from_slice(&body);
    Ok(out.freeze())
}

/// A `LaneData` frame built in place: the length prefix and the envelope's fields first,
/// then the body, which the caller appends to [`body_mut`](Self::body_mut) (encoding
/// straight into the frame), then [`finish`](Self::finish) fills in the lengths. The
/// bytes decode exactly like `encode_frame(&Envelope::new(FrameKind::LaneData, body))`;
/// the body's length is always a 32-bit `bin` header, which MessagePack allows for any
/// length. Building the envelope around an encoded body instead cost two more copies of
/// every batch of forwarded messages.
#[derive(Debug)]
pub struct LaneFrame {
    buf: Vec<u8>,
    /// Lowest protocol version a link must speak to carry this body.
    needs_version: u16,
}

/// The MessagePack of a `LaneData` envelope up to its `body` value (a map of three named
/// fields, as `to_vec_named` writes it), from serde itself so that it cannot drift from
/// [`Envelope`]'s derived form.
fn lane_data_head() -> &'static [u8] {
    static HEAD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    HEAD.get_or_init(|| {
        let empty = Envelope::new(FrameKind::LaneData, Bytes::new());
        let mut bytes = rmp_serde::to_vec_named(&empty).unwrap_or_default();
        // An empty body is written last as `bin 8` of length 0: 0xc4 0x00.
        debug_assert!(bytes.ends_with(&[0xc4, 0x00]), "envelope layout changed");
        bytes.truncate(bytes.len().saturating_sub(2));
        bytes
    })
}

/// `bin 32` marker.
const BIN32: u8 = 0xc6;

impl LaneFrame {
    /// An empty frame with room for `body_capacity` bytes of body.
    pub fn with_capacity(body_capacity: usize) -> Self {
        let head = lane_data_head();
        let mut buf = Vec::with_capacity(LEN_PREFIX + head.len() + 5 + body_capacity);
        buf.extend_from_slice(&[0; LEN_PREFIX]);
        buf.extend_from_slice(head);
        buf.push(BIN32);
        buf.extend_from_slice(&[0; 4]);
        Self {
            buf,
            needs_version: MIN_COMPATIBLE_VERSION,
        }
    }

    /// Marks the body as readable only by peers of protocol `version` or later: sending
    /// then fails, rather than write it, on a link that negotiated less.
    pub fn require_version(&mut self, version: u16) {
        self.needs_version = version;
    }

    pub fn needs_version(&self) -> u16 {
        self.needs_version
    }

    fn header_len() -> usize {
        LEN_PREFIX + lane_data_head().len() + 5
    }

    /// Where the body goes: append to it.
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The body written so far.
    pub fn body(&self) -> &[u8] {
        &self.buf[Self::header_len()..]
    }

    /// The finished frame, ready to write, if it is within `max_len`.
    pub fn finish(mut self, max_len: u32) -> Result<Bytes, FrameError> {
        let header = Self::header_len();
        let body_len = self.buf.len() - header;
        let frame = frame_len((self.buf.len() - LEN_PREFIX) as u64, max_len)?;
        // The frame length bounds the body's, so this cannot fail once that check passed.
        let body = u32::try_from(body_len).map_err(|_| FrameError::TooLarge {
            len: body_len as u64,
            max: max_len,
        })?;
        self.buf[..LEN_PREFIX].copy_from_slice(&frame.to_be_bytes());
        self.buf[header - 4..header].copy_from_slice(&body.to_be_bytes());
        Ok(Bytes::from(self.buf))
    }
}

/// Checks a frame length (from a prefix, or of an encoded envelope) against the maximum.
pub fn frame_len(len: u64, max_len: u32) -> Result<u32, FrameError> {
    match u32::try_from(len) {
        Ok(l) if l <= max_len => Ok(l),
        _ => Err(FrameError::TooLarge { len, max: max_len }),
    }
}

/// Reads the length prefix; the length is already checked against `max_len`.
pub fn decode_len(prefix: [u8; LEN_PREFIX], max_len: u32) -> Result<u32, FrameError> {
    frame_len(u64::from(u32::from_be_bytes(prefix)), max_len)
}

/// Decodes the envelope of one frame (the bytes after the length prefix).
pub fn decode_envelope(payload: &[u8]) -> Result<Envelope, FrameError> {
    rmp_serde::from_slice(payload).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// [`Envelope`] with its body still borrowed from the frame.
#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    version: u16,
    kind: u8,
    #[serde(borrow)]
    body: Cow<'a, [u8]>,
}

/// [`decode_envelope`] of a frame the caller owns: the body is a slice of `payload`, not
/// a copy of it (forwarded batches are the bulk of the traffic between nodes).
pub fn decode_envelope_shared(payload: Bytes) -> Result<Envelope, FrameError> {
    let Ok(env) = rmp_serde::from_slice::<EnvelopeIn>(&payload) else {
        // Whatever the borrowing form does not take (a body written as an array, say)
        // gets the owned decoder's verdict.
        return decode_envelope(&payload);
    };
    let body = match env.body {
        // Borrowed means inside `payload`; checked anyway, so that a surprise costs a
        // copy rather than a panic.
        Cow::Borrowed(b) => match (b.as_ptr() as usize).checked_sub(payload.as_ptr() as usize) {
            Some(start) if start + b.len() <= payload.len() => {
                payload.slice(start..start + b.len())
            }
            _ => Bytes::copy_from_slice(b),
        },
        Cow::Owned(v) => Bytes::from(v),
    };
    Ok(Envelope {
        version: env.version,
        kind: env.kind,
        body,
    })
}

/// Decodes the first frame in `buf`: `Ok(None)` if more bytes are needed, otherwise the
/// envelope and how many bytes it used.
pub fn decode_frame(buf: &[u8], max_len: u32) -> Result<Option<(Envelope, usize)>, FrameError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let mut raw = [0u8; LEN_PREFIX];
    raw.copy_from_slice(prefix);
    let len = decode_len(raw, max_len)? as usize;
    let Some(payload) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(None);
    };
    Ok(Some((decode_envelope(payload)?, LEN_PREFIX + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello(min: u16, max: u16) -> Hello {
        Hello {
            protocol_version: max,
            min_compatible: min,
            node_id: 7,
            cluster_addr: "tern-7:7000".into(),
            region: "eu".into(),
            incarnation: 9,
        }
    }

    #[test]
    fn frames_round_trip() {
        let env = Envelope::of(FrameKind::Hello, &hello(1, 1)).expect("encode");
        let frame = encode_frame(&env, DEFAULT_MAX_FRAME_LEN).expect("frame");
        let (back, used) = decode_frame(&frame, DEFAULT_MAX_FRAME_LEN)
            .expect("decode")
            .expect("complete");
        assert_eq!((back.clone(), used), (env, frame.len()));
        assert_eq!(
            back.body_as::<Hello>(FrameKind::Hello).expect("hello"),
            hello(1, 1)
        );
        assert!(matches!(
            back.body_as::<Hello>(FrameKind::Request),
            Err(FrameError::UnexpectedKind { .. })
        ));
        // Partial input asks for more.
        for cut in 0..frame.len() {
            assert_eq!(decode_frame(&frame[..cut], DEFAULT_MAX_FRAME_LEN), Ok(None));
        }
    }

    #[test]
    fn oversize_frames_are_refused_before_allocation() {
        let claim = [0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_frame(&claim, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        let env = Envelope::new(FrameKind::LaneData, Bytes::from(vec![0u8; 2048]));
        assert!(matches!(
            encode_frame(&env, 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn version_ranges_must_overlap() {
        assert_eq!(hello(1, 1).negotiate(&hello(1, 1)), Some(1));
        assert_eq!(hello(1, 3).negotiate(&hello(2, 2)), Some(2));
        assert_eq!(hello(2, 3).negotiate(&hello(3, 5)), Some(3));
        assert_eq!(hello(1, 1).negotiate(&hello(2, 2)), None);
        assert_eq!(hello(3, 4).negotiate(&hello(1, 2)), None);
    }

    /// A frame from a future version with an extra field still decodes.
    #[test]
    fn unknown_fields_are_skipped() {
        #[derive(Serialize)]
        struct FutureHello {
            protocol_version: u16,
            min_compatible: u16,
            node_id: NodeId,
            cluster_addr: String,
            region: String,
            incarnation: u64,
            zone: String,
        }
        let future = FutureHello {
            protocol_version: 2,
            min_compatible: 1,
            node_id: 3,
            cluster_addr: "a:1".into(),
            region: "r".into(),
            incarnation: 1,
            zone: "z".into(),
        };
        let env = Envelope::of(FrameKind::Hello, &future).expect("encode");
        let back: Hello = env.body_as(FrameKind::Hello).expect("decode");
        assert_eq!((back.node_id, back.protocol_version), (3, 2));
    }

    #[test]
    fn lane_frames_built_in_place_decode_like_encoded_envelopes() {
        for body in [Vec::new(), b"x".to_vec(), vec![7u8; 70_000]] {
            let mut frame = LaneFrame::with_capacity(body.len());
            frame.body_mut().extend_from_slice(&body);
            assert_eq!(frame.body(), &body[..]);
            let bytes = frame.finish(DEFAULT_MAX_FRAME_LEN).expect("finish");
            let (env, used) = decode_frame(&bytes, DEFAULT_MAX_FRAME_LEN)
                .expect("decode")
                .expect("whole");
            assert_eq!(used, bytes.len());
            assert_eq!(env, Envelope::new(FrameKind::LaneData, Bytes::from(body)));
        }
        let mut big = LaneFrame::with_capacity(0);
        big.body_mut().extend_from_slice(&[0; 2048]);
        assert!(matches!(big.finish(1024), Err(FrameError::TooLarge { .. })));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&data, 256);
            let _ = decode_envelope(&data);
            if let Ok(env) = decode_envelope(&data) {
                let _ = env.body_as::<Hello>(FrameKind::Hello);
                let _ = env.body_as::<Request>(FrameKind::Request);
                let _ = env.body_as::<Response>(FrameKind::Response);
            }
        }

        #[test]
        fn shared_decoding_agrees_with_owned_decoding(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let owned = decode_envelope(&data);
            let shared = decode_envelope_shared(Bytes::from(data));
            prop_assert_eq!(owned.is_ok(), shared.is_ok());
            if let (Ok(a), Ok(b)) = (owned, shared) {
                prop_assert_eq!(a, b);
            }
        }

        #[test]
        fn any_lane_frame_round_trips(body in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let mut frame = LaneFrame::with_capacity(0);
            frame.body_mut().extend_from_slice(&body);
            let bytes = frame.finish(DEFAULT_MAX_FRAME_LEN).expect("finish");
            let payload = bytes.slice(LEN_PREFIX..);
            let env = decode_envelope_shared(payload).expect("decode");
            prop_assert_eq!(env, Envelope::new(FrameKind::LaneData, Bytes::from(body)));
        }

        #[test]
        fn any_envelope_round_trips(kind in any::<u8>(), version in any::<u16>(),
                                    body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let env = Envelope { version, kind, body: Bytes::from(body) };
            let frame = encode_frame(&env, DEFAULT_MAX_FRAME_LEN).expect("encode");
            let (back, used) = decode_frame(&frame, DEFAULT_MAX_FRAME_LEN).expect("decode").expect("whole");
            prop_assert_eq!(back, env);
            prop_assert_eq!(used, frame.len());
        }
    }
}
