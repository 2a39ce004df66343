//! The frames of the forwarding protocol and their MessagePack form (named fields, so a
//! peer one version apart can add fields without breaking the other). The transport puts
//! these bytes inside its versioned envelope; decoding untrusted bytes returns an error,
//! never panics, and never allocates more than the input holds.
//!
//! The frame types are generic over the message they carry, so that the forwarding path
//! never converts a message twice: the sending node queues the broker's `Arc<Message>`
//! itself and encodes it straight from there ([`WireRef`], a hand-written encoder); the
//! receiving node decodes a batch straight into broker messages
//! ([`ForwardBatch::decode_messages`], a hand-written decoder). The bytes decode as a
//! [`ForwardBatch`] of [`WireMessage`]s, which stays the reference form (serde-derived;
//! the tests check both decoders against it). Batches to peers of protocol version 2 and
//! later are written in a compact form instead ([`BatchFormat`]), tested against the same
//! reference.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tern_broker::Message;

use crate::types::{NodeId, WireClock, WireMessage, WireRef};

/// The shared subscription a forwarded message was chosen for: the receiver hands it to
/// one local member of `$share/group/filter` instead of to every matching subscriber.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedTarget {
    pub group: String,
    pub filter: String,
}

/// One message on a link, with its sequence number on that link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded<M = WireMessage> {
    /// Per (origin → destination) link, from 1, increasing across reconnects.
    pub seq: u64,
    pub message: M,
    /// `Some` when the origin picked this node for a shared subscription.
    pub shared: Option<SharedTarget>,
}

/// Messages from one origin, in sequence order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardBatch<M = WireMessage> {
    pub origin: NodeId,
    /// The sender's incarnation of this link's sequence space (see the module docs).
    pub link_epoch: u64,
    pub messages: Vec<Forwarded<M>>,
}

/// Cumulative acknowledgement: the receiver has processed every sequence `<= up_to` of
/// the sequence space `link_epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardAck {
    pub link_epoch: u64,
    pub up_to: u64,
}

/// What a link can carry: a message that knows its QoS, roughly how large it encodes,
/// and how to present itself as a [`WireMessage`] for encoding.
pub trait ForwardMessage: Clone {
    fn qos(&self) -> u8;
    /// The variable-length content: topic, payload, strings and properties, in bytes.
    fn content_len(&self) -> usize;
    /// The message's wire form; `clock` turns an `Instant` expiry into wall-clock time.
    fn wire(&self, clock: WireClock) -> WireRef<'_>;
}

/// [`ForwardMessage::content_len`] from the fields a `WireMessage` and a broker `Message`
/// share.
fn content_len(
    topic: &str,
    payload: &[u8],
    origin_client: &str,
    strings: [&Option<String>; 2],
    correlation_data: Option<&[u8]>,
    user_properties: &[(String, String)],
) -> usize {
    let props: usize = user_properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum();
    let strings: usize = strings
        .iter()
        .map(|s| s.as_ref().map_or(0, String::len))
        .sum();
    topic.len()
        + payload.len()
        + origin_client.len()
        + strings
        + correlation_data.map_or(0, <[u8]>::len)
        + props
}

impl ForwardMessage for WireMessage {
    fn qos(&self) -> u8 {
        self.qos
    }

    fn content_len(&self) -> usize {
        content_len(
            &self.topic,
            &self.payload,
            &self.origin_client,
            [&self.content_type, &self.response_topic],
            self.correlation_data.as_deref(),
            &self.user_properties,
        )
    }

    fn wire(&self, _clock: WireClock) -> WireRef<'_> {
        WireRef::of_wire(self)
    }
}

impl ForwardMessage for Arc<Message> {
    fn qos(&self) -> u8 {
        self.qos as u8
    }

    fn content_len(&self) -> usize {
        content_len(
            &self.topic,
            &self.payload,
            &self.origin_client,
            [&self.content_type, &self.response_topic],
            self.correlation_data.as_deref(),
            &self.user_properties,
        )
    }

    fn wire(&self, clock: WireClock) -> WireRef<'_> {
        WireRef::of_message(self, clock)
    }
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
    #[error(transparent)]
    Malformed(#[from] super::decode::DecodeError),
    #[error("a string or list of {0} entries is too long for a forwarding frame")]
    TooLong(usize),
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

/// The first cluster protocol version whose nodes read [`BatchFormat::Compact`].
pub const COMPACT_BATCHES_SINCE: u16 = 2;

/// How a batch is written. Every version reads the named form; nodes of protocol version
/// [`COMPACT_BATCHES_SINCE`] and later also read the compact one, and a receiver tells
/// them apart by the first byte, so only the sender has to know what its peer speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchFormat {
    /// Maps with field names: the serde-derived form of [`ForwardBatch`].
    Named,
    /// Arrays, fields by position, repeated strings left out (`compact.rs`).
    Compact,
}

impl BatchFormat {
    /// The form for a link that negotiated cluster protocol `version`.
    pub fn for_protocol(version: u16) -> Self {
        if version >= COMPACT_BATCHES_SINCE {
            Self::Compact
        } else {
            Self::Named
        }
    }
}

impl<M: ForwardMessage> ForwardBatch<M> {
    /// Appends the batch in `format` to `out` (where the caller may already have put a
    /// frame header: the batch is encoded in place, not copied afterwards). `clock`
    /// converts expiry times of messages that hold `Instant`s.
    pub fn encode_into(
        &self,
        out: &mut Vec<u8>,
        clock: WireClock,
        format: BatchFormat,
    ) -> Result<(), FrameError> {
        let (origin, epoch, messages) = (self.origin, self.link_epoch, &self.messages);
        match format {
            BatchFormat::Named => super::encode::batch(out, origin, epoch, messages, clock),
            BatchFormat::Compact => {
                super::compact::encode_batch(out, origin, epoch, messages, clock)
            }
        }
    }
}

impl ForwardBatch {
    /// The named form (what every version reads).
    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encode_into(&mut out, WireClock::now(), BatchFormat::Named)?;
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        decode(bytes)
    }
}

impl ForwardBatch<Arc<Message>> {
    /// Decodes exactly one batch from `bytes` (a whole received frame body, or a slice of
    /// one) into broker messages received at `clock`. Payloads share `bytes`' memory;
    /// topics and client ids are shared with earlier batches decoded with the same
    /// `strings` (see [`Interner`](super::decode::Interner)), or copied once each.
    pub fn decode_messages(
        bytes: &Bytes,
        clock: WireClock,
        strings: &mut super::decode::Interner,
    ) -> Result<Self, FrameError> {
        Ok(super::decode::decode_batch_with(bytes, clock, strings)?)
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
pub(crate) fn approx_size<M: ForwardMessage>(message: &M, shared: Option<&SharedTarget>) -> usize {
    MESSAGE_OVERHEAD
        + message.content_len()
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

    /// With every optional field set, the encoder writes exactly what the derived
    /// serialisation writes; with some absent it leaves them out, and the derived decoder
    /// (what nodes before it run) still reads the same batch.
    #[test]
    fn encoding_is_the_derived_form_minus_absent_options() {
        let b = batch();
        let mut full = b.clone();
        full.messages[0].shared = full.messages[1].shared.clone();
        assert_eq!(
            full.encode().expect("encode"),
            rmp_serde::to_vec_named(&full).expect("derived")
        );
        let mut sparse = b;
        sparse.messages[1].message.expires_at_unix_ms = None;
        sparse.messages[1].message.content_type = None;
        sparse.messages[1].message.correlation_data = None;
        let bytes = sparse.encode().expect("encode");
        assert!(bytes.len() < rmp_serde::to_vec_named(&sparse).expect("derived").len());
        assert_eq!(ForwardBatch::decode(&bytes).expect("decode"), sparse);
    }

    /// A batch of broker messages encodes as the batch of their wire forms.
    #[test]
    fn messages_encode_as_their_wire_form() {
        let props = tern_codec::PublishProperties {
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let clock = WireClock::now();
        let m = Arc::new(Message::from_publish(
            Arc::from("a/b"),
            Bytes::from_static(b"hello"),
            tern_codec::QoS::AtLeastOnce,
            true,
            Arc::from("client"),
            props,
            clock.now,
        ));
        let plain = Arc::new(Message {
            expires_at: None,
            content_type: None,
            user_properties: Vec::new(),
            ..(*m).clone()
        });
        let ours = ForwardBatch {
            origin: 1,
            link_epoch: 2,
            messages: vec![
                Forwarded {
                    seq: 1,
                    message: m.clone(),
                    shared: None,
                },
                Forwarded {
                    seq: 2,
                    message: plain.clone(),
                    shared: None,
                },
            ],
        };
        let wire = ForwardBatch {
            origin: 1,
            link_epoch: 2,
            messages: vec![
                Forwarded {
                    seq: 1,
                    message: WireMessage::from_message_at(&m, clock),
                    shared: None,
                },
                Forwarded {
                    seq: 2,
                    message: WireMessage::from_message_at(&plain, clock),
                    shared: None,
                },
            ],
        };
        let mut bytes = Vec::new();
        ours.encode_into(&mut bytes, clock, BatchFormat::Named)
            .expect("encode");
        let mut expected = Vec::new();
        wire.encode_into(&mut expected, clock, BatchFormat::Named)
            .expect("encode");
        assert_eq!(bytes, expected);
        assert_eq!(ForwardBatch::decode(&bytes).expect("decode"), wire);
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
