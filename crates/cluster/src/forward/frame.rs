//! The frames of the forwarding protocol and their MessagePack form (named fields, so a
//! peer one version apart can add fields without breaking the other). The transport puts
//! these bytes inside its versioned envelope; decoding untrusted bytes returns an error,
//! never panics, and never allocates more than the input holds.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, WireMessage};

/// The shared subscription a forwarded message was chosen for: the receiver hands it to
/// one local member of `$share/group/filter` instead of to every matching subscriber.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedTarget {
    pub group: String,
    pub filter: String,
}

/// One message on a link, with its sequence number on that link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    /// Per (origin → destination) link, from 1, increasing across reconnects.
    pub seq: u64,
    pub message: WireMessage,
    /// `Some` when the origin picked this node for a shared subscription.
    pub shared: Option<SharedTarget>,
}

/// Messages from one origin, in sequence order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardBatch {
    pub origin: NodeId,
    /// The sender's incarnation of this link's sequence space (see the module docs).
    pub link_epoch: u64,
    pub messages: Vec<Forwarded>,
}

/// Cumulative acknowledgement: the receiver has processed every sequence `<= up_to` of
/// the sequence space `link_epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardAck {
    pub link_epoch: u64,
    pub up_to: u64,
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("encoding a forwarding frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decoding a forwarding frame: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("{0} bytes left over after a forwarding frame")]
    TrailingBytes(usize),
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

/// Decodes exactly one value. The reader copies each string or byte field only after
/// checking the input holds it, so a forged length cannot make it allocate gigabytes.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    let mut rest = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    let value = T::deserialize(&mut de)?;
    drop(de);
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(FrameError::TrailingBytes(rest.len()))
    }
}

impl ForwardBatch {
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        decode(bytes)
    }
}

impl ForwardAck {
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        decode(bytes)
    }
}

/// Fixed per-message allowance for field names, lengths and small fields.
const MESSAGE_OVERHEAD: usize = 128;

/// An estimate of a message's encoded size, used for the backlog's byte limit and batch
/// sizes. Cheap (no encoding) and never below the variable-length content it holds.
pub(crate) fn approx_size(message: &WireMessage, shared: Option<&SharedTarget>) -> usize {
    let props: usize = message
        .user_properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum();
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    MESSAGE_OVERHEAD
        + message.topic.len()
        + message.payload.len()
        + message.origin_client.len()
        + opt(&message.content_type)
        + opt(&message.response_topic)
        + message.correlation_data.as_ref().map_or(0, |c| c.len())
        + props
        + shared.map_or(0, |s| s.group.len() + s.filter.len() + 16)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn message(topic: &str, payload: &'static [u8], qos: u8) -> WireMessage {
        WireMessage {
            topic: topic.into(),
            payload: Bytes::from_static(payload),
            qos,
            retain: false,
            origin_client: "client-1".into(),
            expires_at_unix_ms: Some(1_700_000_000_000),
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into())],
        }
    }

    fn batch() -> ForwardBatch {
        ForwardBatch {
            origin: 3,
            link_epoch: 1_700_000_000_123_456,
            messages: vec![
                Forwarded {
                    seq: 1,
                    message: message("a/b", b"hello", 1),
                    shared: None,
                },
                Forwarded {
                    seq: 7,
                    message: message("a/c", b"", 0),
                    shared: Some(SharedTarget {
                        group: "g".into(),
                        filter: "a/+".into(),
                    }),
                },
            ],
        }
    }

    #[test]
    fn batches_and_acks_round_trip() {
        let b = batch();
        let bytes = b.encode().expect("encode");
        assert_eq!(ForwardBatch::decode(&bytes).expect("decode"), b);
        let ack = ForwardAck {
            link_epoch: 9,
            up_to: u64::MAX,
        };
        let bytes = ack.encode().expect("encode");
        assert_eq!(ForwardAck::decode(&bytes).expect("decode"), ack);
    }

    #[test]
    fn truncated_and_padded_frames_are_errors() {
        let bytes = batch().encode().expect("encode");
        for len in 0..bytes.len() {
            assert!(ForwardBatch::decode(&bytes[..len]).is_err(), "prefix {len}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(
            ForwardBatch::decode(&padded),
            Err(FrameError::TrailingBytes(1))
        ));
    }

    #[test]
    fn wrong_frames_are_errors() {
        let ack = ForwardAck {
            link_epoch: 1,
            up_to: 2,
        }
        .encode()
        .expect("encode");
        assert!(ForwardBatch::decode(&ack).is_err());
        assert!(ForwardAck::decode(&[0xc1]).is_err()); // "never used" marker
        assert!(ForwardAck::decode(b"").is_err());
        // A bin field claiming 4 GiB with nothing behind it.
        assert!(ForwardBatch::decode(&[0xc6, 0xff, 0xff, 0xff, 0xff]).is_err());
        // An array claiming 4 billion entries.
        assert!(ForwardBatch::decode(&[0x93, 0x01, 0x02, 0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ForwardBatch::decode(&bytes);
            let _ = ForwardAck::decode(&bytes);
        }

        #[test]
        fn corrupted_frames_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut bytes = batch().encode().expect("encode");
            for (at, byte) in flips {
                let len = bytes.len();
                bytes[at % len] = byte;
            }
            let _ = ForwardBatch::decode(&bytes);
        }
    }
}
