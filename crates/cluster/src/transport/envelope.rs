//! Every frame between nodes: a big-endian `u32` length, then a MessagePack [`Envelope`]
//! written with named fields (`to_vec_named`), so that a node of the next version can add
//! fields and still be understood, and unknown fields are skipped rather than fatal.
//! The length is checked against a maximum before anything is allocated for it.
//!
//! The first frame on every connection is a [`Hello`]; the two sides then talk only if
//! their ranges of supported protocol versions overlap.
//!
//! Everything here is pure (no I/O) so that it can be tested and fuzzed directly.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
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
