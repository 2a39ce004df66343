//! The compact form of a forwarded batch, sent to peers that speak cluster protocol
//! version 2 or later: MessagePack arrays with fields by position instead of maps with
//! field names, sequence numbers as differences, and a topic or client id that repeats
//! the previous message's written as nil. Field names, topic and client id made up about
//! half of a forwarded 100-byte message's 235 bytes in the named form, and QUIC's work
//! (copying, sealing, acknowledging) and the cross-region bill grow with the bytes.
//!
//! ```text
//! batch   = [origin, link_epoch, [message, ...], ...]
//! message = [seq, topic, payload, flags, origin_client,
//!            expires_at_unix_ms, payload_format_indicator, content_type,
//!            response_topic, correlation_data, user_properties, shared, ...]
//! ```
//!
//! - `seq`: the message's sequence number minus the previous message's (the first one's
//!   minus 0), wrapping, so any order round-trips and ascending runs take one byte each.
//! - `topic`, `origin_client`: a string, or nil for "the same as the previous message in
//!   this batch" (nil in the first message is malformed).
//! - `flags`: QoS in bits 0-1, retain in bit 2; other bits set is malformed.
//! - The fields from `expires_at_unix_ms` on are optional: nil or left off the end when
//!   absent. `user_properties` is an array of `[key, value]` pairs, `shared` is
//!   `[group, filter]`.
//! - Elements past the last known one (of a batch or a message) are skipped, so a later
//!   version may append fields.
//!
//! The receiver tells the two forms apart by the batch's first byte (an array here, a
//! map in the named form), so it reads both whatever it negotiated.

use std::sync::Arc;

use bytes::Bytes;
use tern_broker::Message;
use tern_codec::QoS;

use super::decode::{bytes_of, DecodeError, Interner, LastString, Reader};
use super::encode::{array, bin, str, uint};
use super::frame::{ForwardBatch, ForwardMessage, Forwarded, FrameError, SharedTarget};
use crate::types::{NodeId, WireClock};

const NIL: u8 = 0xc0;
/// Fields of a message before the optional ones.
const REQUIRED_FIELDS: usize = 5;
const FLAG_QOS: u64 = 0b011;
const FLAG_RETAIN: u64 = 0b100;

/// Appends a batch of `messages` in the compact form to `out`.
pub(crate) fn encode_batch<M: ForwardMessage>(
    out: &mut Vec<u8>,
    origin: NodeId,
    link_epoch: u64,
    messages: &[Forwarded<M>],
    clock: WireClock,
) -> Result<(), FrameError> {
    array(out, 3)?;
    uint(out, origin);
    uint(out, link_epoch);
    array(out, messages.len())?;
    let mut prev_seq = 0u64;
    let mut prev: Option<(&str, &str)> = None;
    for f in messages {
        let m = f.message.wire(clock);
        let optional = [
            m.expires_at_unix_ms.is_some(),
            m.payload_format_indicator.is_some(),
            m.content_type.is_some(),
            m.response_topic.is_some(),
            m.correlation_data.is_some(),
            !m.user_properties.is_empty(),
            f.shared.is_some(),
        ];
        let present = optional.iter().rposition(|&p| p).map_or(0, |i| i + 1);
        array(out, REQUIRED_FIELDS + present)?;
        uint(out, f.seq.wrapping_sub(prev_seq));
        prev_seq = f.seq;
        // The strings of a run are mostly one shared allocation: pointers first.
        let same = |a: &str, b: &str| std::ptr::eq(a, b) || a == b;
        let (same_topic, same_client) = prev.map_or((false, false), |(t, c)| {
            (same(t, m.topic), same(c, m.origin_client))
        });
        if same_topic {
            out.push(NIL);
        } else {
            str(out, m.topic)?;
        }
        bin(out, m.payload)?;
        uint(
            out,
            (u64::from(m.qos) & FLAG_QOS) | if m.retain { FLAG_RETAIN } else { 0 },
        );
        if same_client {
            out.push(NIL);
        } else {
            str(out, m.origin_client)?;
        }
        prev = Some((m.topic, m.origin_client));
        for i in 0..present {
            match i {
                0 => match m.expires_at_unix_ms {
                    Some(at) => uint(out, at),
                    None => out.push(NIL),
                },
                1 => match m.payload_format_indicator {
                    Some(p) => uint(out, u64::from(p)),
                    None => out.push(NIL),
                },
                2 => match m.content_type {
                    Some(s) => str(out, s)?,
                    None => out.push(NIL),
                },
                3 => match m.response_topic {
                    Some(s) => str(out, s)?,
                    None => out.push(NIL),
                },
                4 => match m.correlation_data {
                    Some(b) => bin(out, b)?,
                    None => out.push(NIL),
                },
                5 if m.user_properties.is_empty() => out.push(NIL),
                5 => {
                    array(out, m.user_properties.len())?;
                    for (k, v) in m.user_properties {
                        array(out, 2)?;
                        str(out, k)?;
                        str(out, v)?;
                    }
                }
                _ => match &f.shared {
                    Some(s) => {
                        array(out, 2)?;
                        str(out, &s.group)?;
                        str(out, &s.filter)?;
                    }
                    None => out.push(NIL),
                },
            }
        }
    }
    Ok(())
}

type R<T> = Result<T, DecodeError>;

/// Decodes a compact batch that fills `bytes` exactly.
pub(crate) fn decode_batch(
    bytes: &Bytes,
    clock: WireClock,
    strings: &mut Interner,
) -> R<ForwardBatch<Arc<Message>>> {
    let mut r = Reader::new(bytes);
    let fields = r.array_len()?;
    if fields < 3 {
        return r.err("batch field missing");
    }
    let origin = r.uint()?;
    let link_epoch = r.uint()?;
    let n = r.array_len()?;
    let mut messages: Vec<Forwarded<Arc<Message>>> = Vec::with_capacity(n);
    for _ in 0..n {
        let f = message(&mut r, bytes, clock, strings, messages.last())?;
        messages.push(f);
    }
    for _ in 3..fields {
        r.skip(0)?;
    }
    if r.remaining() != 0 {
        return r.err("bytes left over after the batch");
    }
    Ok(ForwardBatch {
        origin,
        link_epoch,
        messages,
    })
}

/// A string field that may repeat the previous message's (nil).
fn string_or_same(
    r: &mut Reader<'_>,
    strings: &mut Interner,
    which: LastString,
    previous: Option<&Arc<str>>,
) -> R<Arc<str>> {
    if r.nil()? {
        return match previous {
            Some(s) => Ok(s.clone()),
            None => r.err("nil string with no previous message to repeat"),
        };
    }
    strings.read(r, which)
}

fn message(
    r: &mut Reader<'_>,
    frame: &Bytes,
    clock: WireClock,
    strings: &mut Interner,
    prev: Option<&Forwarded<Arc<Message>>>,
) -> R<Forwarded<Arc<Message>>> {
    let fields = r.array_len()?;
    if fields < REQUIRED_FIELDS {
        return r.err("message field missing");
    }
    let seq = prev.map_or(0, |p| p.seq).wrapping_add(r.uint()?);
    let topic = string_or_same(
        r,
        strings,
        LastString::Topic,
        prev.map(|p| &p.message.topic),
    )?;
    let payload = bytes_of(frame, r.raw()?);
    let flags = r.uint()?;
    if flags & !(FLAG_QOS | FLAG_RETAIN) != 0 {
        return r.err("unknown message flags");
    }
    let Some(qos) = QoS::from_u8((flags & FLAG_QOS) as u8) else {
        return r.err("QoS 3");
    };
    let origin_client = string_or_same(
        r,
        strings,
        LastString::Client,
        prev.map(|p| &p.message.origin_client),
    )?;
    let mut m = Message {
        topic,
        payload,
        qos,
        retain: flags & FLAG_RETAIN != 0,
        origin_client,
        received_at: clock.now,
        expires_at: None,
        payload_format_indicator: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    let mut shared = None;
    for field in REQUIRED_FIELDS..fields {
        if r.nil()? {
            continue;
        }
        match field - REQUIRED_FIELDS {
            0 => m.expires_at = Some(clock.to_instant(r.uint()?)),
            1 => m.payload_format_indicator = Some(r.u8()?),
            2 => m.content_type = Some(r.str()?.to_owned()),
            3 => m.response_topic = Some(r.str()?.to_owned()),
            4 => m.correlation_data = Some(bytes_of(frame, r.raw()?)),
            5 => m.user_properties = r.user_properties()?,
            6 => {
                if r.array_len()? != 2 {
                    return r.err("a shared target is not a pair");
                }
                shared = Some(SharedTarget {
                    group: r.str()?.to_owned(),
                    filter: r.str()?.to_owned(),
                });
            }
            _ => r.skip(0)?,
        }
    }
    Ok(Forwarded {
        seq,
        message: Arc::new(m),
        shared,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::forward::frame::BatchFormat;
    use crate::forward::test_support::{clock, reference};
    use crate::types::WireMessage;

    fn plain(topic: &str, client: &str, payload: &[u8], qos: u8) -> WireMessage {
        WireMessage {
            origin_client: client.into(),
            ..WireMessage::new(topic, Bytes::copy_from_slice(payload), qos, false)
        }
    }

    fn batch(messages: Vec<(u64, WireMessage, Option<SharedTarget>)>) -> ForwardBatch {
        ForwardBatch {
            origin: 7,
            link_epoch: 1_700_000_000_123_456,
            messages: messages
                .into_iter()
                .map(|(seq, message, shared)| Forwarded {
                    seq,
                    message,
                    shared,
                })
                .collect(),
        }
    }

    fn encode(b: &ForwardBatch, format: BatchFormat) -> Bytes {
        let mut out = Vec::new();
        b.encode_into(&mut out, clock(), format).expect("encode");
        Bytes::from(out)
    }

    fn decode(bytes: &Bytes, clock: WireClock) -> R<ForwardBatch<Arc<Message>>> {
        super::super::decode::decode_batch_with(bytes, clock, &mut Interner::default())
    }

    /// The named form of `b`, decoded by the serde-derived reference decoder.
    fn named_reference(b: &ForwardBatch, clock: WireClock) -> ForwardBatch<Arc<Message>> {
        reference(&encode(b, BatchFormat::Named), clock)
    }

    fn arb_message() -> impl Strategy<Value = (u64, WireMessage, Option<SharedTarget>)> {
        let optional = (
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u8>()),
            proptest::option::of("[a-z/]{0,12}"),
            proptest::option::of("[a-z/]{0,12}"),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
            proptest::collection::vec(("[a-z]{0,5}", "[a-zé]{0,5}"), 0..3),
            proptest::option::of(("[a-z]{1,5}", "[a-z/+#]{1,8}")),
        );
        (
            prop_oneof![any::<u64>(), 0u64..100],
            // Few topics and clients, so that repeats (written as nil) are common.
            prop_oneof!["a/[bc]", "[a-z/é]{0,40}", Just(String::new())],
            prop_oneof!["c[12]", "[a-z0-9]{0,30}"],
            proptest::collection::vec(any::<u8>(), 0..1500),
            0u8..3,
            any::<bool>(),
            proptest::option::of(optional),
        )
            .prop_map(|(seq, topic, client, payload, qos, retain, optional)| {
                let mut m = plain(&topic, &client, &payload, qos);
                m.retain = retain;
                let mut shared = None;
                if let Some((exp, pfi, ct, rt, cd, props, sh)) = optional {
                    m.expires_at_unix_ms = exp;
                    m.payload_format_indicator = pfi;
                    m.content_type = ct;
                    m.response_topic = rt;
                    m.correlation_data = cd.map(Bytes::from);
                    m.user_properties = props;
                    shared = sh.map(|(group, filter)| SharedTarget { group, filter });
                }
                (seq, m, shared)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the messages, sequence order and repeats: the compact form decodes to
        /// what the named form does.
        #[test]
        fn decodes_to_what_the_named_form_decodes_to(
            messages in proptest::collection::vec(arb_message(), 0..20),
        ) {
            let clock = clock();
            let b = batch(messages);
            let compact = encode(&b, BatchFormat::Compact);
            prop_assert_eq!(decode(&compact, clock).expect("decode"), named_reference(&b, clock));
        }

        /// Every cut of a valid batch is refused with an error, never a panic.
        #[test]
        fn truncated_batches_are_errors(
            messages in proptest::collection::vec(arb_message(), 1..6),
        ) {
            let bytes = encode(&batch(messages), BatchFormat::Compact);
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes.slice(..cut), clock()).is_err());
            }
        }

        /// Garbage that starts like a compact batch: an error or a batch, never a panic.
        #[test]
        fn garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = vec![0x93];
            bytes.extend(tail);
            let _ = decode(&Bytes::from(bytes), clock());
        }
    }

    #[test]
    fn a_run_of_small_messages_takes_about_half_the_named_bytes() {
        let payload = [b'x'; 100];
        let run = |n: u64| {
            batch(
                (0..n)
                    .map(|i| {
                        let m = plain("bench/pairs/42", "tern-bench-pub-42", &payload, 1);
                        (100_000 + i, m, None)
                    })
                    .collect(),
            )
        };
        // Bytes each message after the first adds.
        let each = |format| (encode(&run(24), format).len() - encode(&run(1), format).len()) / 23;
        let (named, compact) = (each(BatchFormat::Named), each(BatchFormat::Compact));
        // Array header, seq step, nil topic, bin header and payload, flags, nil client.
        assert_eq!(compact, 107);
        // Field names, topic and client id in every message.
        assert!(named >= 200, "named {named}");
    }

    #[test]
    fn fields_a_later_version_appends_are_skipped() {
        let clock = clock();
        let b = batch(vec![(5, plain("t", "c", b"p", 1), None)]);
        // By hand: the batch and its message each with one element more than known.
        let mut bytes = vec![0x94, 7];
        uint(&mut bytes, b.link_epoch);
        bytes.extend([0x91, 0x9d, 5, 0xa1, b't', 0xc4, 1, b'p', 1, 0xa1, b'c']);
        bytes.extend([0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0]); // the optional fields
        bytes.push(0x2a); // a message field of a later version
        bytes.extend([0x92, 1, 2]); // a batch field of a later version
        let bytes = Bytes::from(bytes);
        assert_eq!(
            decode(&bytes, clock).expect("decode"),
            named_reference(&b, clock)
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        let clock = clock();
        let mut head = vec![0x93, 7, 1, 0x91, 0x95];
        let cases: [(&[u8], &str); 4] = [
            (&[1, 0xc0, 0xc4, 0, 1, 0xa1, b'c'], "nil string"),
            (
                &[1, 0xa1, b't', 0xc4, 0, 8, 0xa1, b'c'],
                "unknown message flags",
            ),
            (&[1, 0xa1, b't', 0xc4, 0, 3, 0xa1, b'c'], "QoS 3"),
            (&[1, 0xa1, 0xff, 0xc4, 0, 1, 0xa1, b'c'], "UTF-8"),
        ];
        for (message, why) in cases {
            head.truncate(5);
            head.extend_from_slice(message);
            let err = decode(&Bytes::from(head.clone()), clock).expect_err(why);
            assert!(err.what.contains(why), "{why}: {err}");
        }
    }
}
