//! A hand-written decoder of forwarded batches, straight into broker messages.
//!
//! It reads the same MessagePack as the serde-derived [`ForwardBatch`] of
//! [`WireMessage`](crate::types::WireMessage)s (named fields in any order, unknown fields
//! skipped, absent optional fields `None`), and the compact form of `compact.rs`, told
//! apart by the first byte, but without serde's generic visitor layers,
//! which made decoding the largest single cost of a forwarded message on the receiving
//! node. Strings are checked to be UTF-8 and copied once, into the `Arc<str>`s the broker
//! keeps; payloads of [`SHARE_PAYLOAD_FROM`] bytes or more share the frame's memory.
//!
//! Untrusted input: every length is checked against what is left before anything is read
//! or allocated, nesting is bounded, and nothing panics.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use tern_broker::Message;
use tern_codec::QoS;

use super::frame::{ForwardBatch, Forwarded, SharedTarget};
use crate::types::WireClock;

/// Payloads from this size on share the received frame's memory instead of being copied.
/// A shared payload keeps its whole frame (up to a batch, about 1 MiB) alive for as long
/// as the message lives, say in an offline session's queue; below this size a copy costs
/// no more than sharing does (one allocation either way), so small messages never pin a
/// frame.
pub const SHARE_PAYLOAD_FROM: usize = 1024;

/// Why a batch could not be decoded: where, and what was wrong there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed forward batch at byte {at}: {what}")]
pub struct DecodeError {
    pub at: usize,
    pub what: &'static str,
}

/// Longest string an [`Interner`] keeps; longer ones are copied each time.
const INTERN_MAX_LEN: usize = 256;
/// Bytes of strings an [`Interner`] keeps before it starts over.
const INTERN_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The topics and client ids of earlier batches, for a receiver that decodes many: a
/// message that repeats one (the common case: publishers keep to their topics) shares the
/// kept `Arc<str>` (one hash lookup) instead of allocating and copying its own, which
/// was most of decoding's cost. Bounded by [`INTERN_MAX_BYTES`]: past that it forgets
/// everything and starts over.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
    bytes: usize,
    /// The last topic and the last client id read: a batch mostly holds runs of one
    /// publisher's messages, and comparing with the last one skips the UTF-8 check and
    /// the hash.
    last: [Option<Arc<str>>; 2],
}

/// Which of [`Interner`]'s last strings a field compares with.
#[derive(Clone, Copy)]
pub(super) enum LastString {
    Topic = 0,
    Client = 1,
}

impl Interner {
    /// Reads a string field, shared with an equal string read before.
    pub(super) fn read(&mut self, r: &mut Reader<'_>, which: LastString) -> R<Arc<str>> {
        let at = r.pos;
        let raw = r.raw()?;
        let last = &mut self.last[which as usize];
        if let Some(kept) = last.as_ref().filter(|kept| kept.as_bytes() == raw) {
            return Ok(kept.clone());
        }
        let s = std::str::from_utf8(raw).map_err(|_| DecodeError {
            at,
            what: "string not UTF-8",
        })?;
        let shared = self.get(s);
        self.last[which as usize] = Some(shared.clone());
        Ok(shared)
    }

    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(kept) = self.strings.get(s) {
            return kept.clone();
        }
        let new: Arc<str> = Arc::from(s);
        if s.len() <= INTERN_MAX_LEN {
            if self.bytes + s.len() > INTERN_MAX_BYTES {
                self.strings.clear();
                self.bytes = 0;
            }
            self.bytes += s.len();
            self.strings.insert(new.clone());
        }
        new
    }
}

/// Deepest nesting an unknown field may have before the batch is refused.
const MAX_SKIP_DEPTH: u32 = 32;

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, DecodeError>;

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(super) fn err<T>(&self, what: &'static str) -> R<T> {
        Err(DecodeError { at: self.pos, what })
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> R<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.err("unexpected end"),
        }
    }

    fn peek(&self) -> R<u8> {
        match self.buf.get(self.pos) {
            Some(&b) => Ok(b),
            None => self.err("unexpected end"),
        }
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.remaining() {
            return self.err("length beyond the end");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> R<u64> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// A length that must leave at least `min_each` bytes per item in the input.
    fn len(&self, count: u64, min_each: usize) -> R<usize> {
        match usize::try_from(count) {
            Ok(c) if c.saturating_mul(min_each) <= self.remaining() => Ok(c),
            _ => self.err("length beyond the end"),
        }
    }

    fn map_len(&mut self) -> R<usize> {
        let m = self.byte()?;
        let count = match m {
            0x80..=0x8f => u64::from(m & 0x0f),
            0xde => self.be(2)?,
            0xdf => self.be(4)?,
            _ => return self.err("expected a map"),
        };
        // A key and a value take at least one byte each.
        self.len(count, 2)
    }

    pub(super) fn array_len(&mut self) -> R<usize> {
        let m = self.byte()?;
        let count = match m {
            0x90..=0x9f => u64::from(m & 0x0f),
            0xdc => self.be(2)?,
            0xdd => self.be(4)?,
            _ => return self.err("expected an array"),
        };
        self.len(count, 1)
    }

    /// A `str` or `bin` value's bytes (serde accepts either for strings and byte fields).
    pub(super) fn raw(&mut self) -> R<&'a [u8]> {
        let m = self.byte()?;
        let n = match m {
            0xa0..=0xbf => u64::from(m & 0x1f),
            0xd9 | 0xc4 => self.be(1)?,
            0xda | 0xc5 => self.be(2)?,
            0xdb | 0xc6 => self.be(4)?,
            _ => return self.err("expected a string or bytes"),
        };
        let n = self.len(n, 1)?;
        self.take(n)
    }

    /// A field name, compared as bytes: only values need a UTF-8 check.
    fn key(&mut self) -> R<&'a [u8]> {
        self.raw()
    }

    pub(super) fn str(&mut self) -> R<&'a str> {
        let at = self.pos;
        let raw = self.raw()?;
        std::str::from_utf8(raw).map_err(|_| DecodeError {
            at,
            what: "string not UTF-8",
        })
    }

    pub(super) fn uint(&mut self) -> R<u64> {
        let m = self.byte()?;
        let v: i128 = match m {
            0x00..=0x7f => i128::from(m),
            0xcc => i128::from(self.be(1)?),
            0xcd => i128::from(self.be(2)?),
            0xce => i128::from(self.be(4)?),
            0xcf => i128::from(self.be(8)?),
            0xe0..=0xff => i128::from(m as i8),
            0xd0 => i128::from(self.be(1)? as u8 as i8),
            0xd1 => i128::from(self.be(2)? as u16 as i16),
            0xd2 => i128::from(self.be(4)? as u32 as i32),
            0xd3 => i128::from(self.be(8)? as i64),
            _ => return self.err("expected an integer"),
        };
        u64::try_from(v).or_else(|_| self.err("negative integer"))
    }

    pub(super) fn u8(&mut self) -> R<u8> {
        let v = self.uint()?;
        u8::try_from(v).or_else(|_| self.err("integer out of range"))
    }

    fn bool(&mut self) -> R<bool> {
        match self.byte()? {
            0xc2 => Ok(false),
            0xc3 => Ok(true),
            _ => self.err("expected a boolean"),
        }
    }

    /// Consumes a nil and says so, or leaves anything else for the caller.
    pub(super) fn nil(&mut self) -> R<bool> {
        if self.peek()? == 0xc0 {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Skips one value of any type (an unknown field of a newer peer).
    pub(super) fn skip(&mut self, depth: u32) -> R<()> {
        if depth > MAX_SKIP_DEPTH {
            return self.err("nested too deeply");
        }
        let m = self.peek()?;
        match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => {
                self.pos += 1;
            }
            0xcc | 0xd0 => {
                self.take(2)?;
            }
            0xcd | 0xd1 => {
                self.take(3)?;
            }
            0xce | 0xd2 | 0xca => {
                self.take(5)?;
            }
            0xcf | 0xd3 | 0xcb => {
                self.take(9)?;
            }
            0xa0..=0xbf | 0xd9..=0xdb | 0xc4..=0xc6 => {
                self.raw()?;
            }
            0x90..=0x9f | 0xdc | 0xdd => {
                for _ in 0..self.array_len()? {
                    self.skip(depth + 1)?;
                }
            }
            0x80..=0x8f | 0xde | 0xdf => {
                for _ in 0..self.map_len()? {
                    self.skip(depth + 1)?;
                    self.skip(depth + 1)?;
                }
            }
            // fixext 1, 2, 4, 8, 16: marker, type, data.
            0xd4 => {
                self.take(3)?;
            }
            0xd5 => {
                self.take(4)?;
            }
            0xd6 => {
                self.take(6)?;
            }
            0xd7 => {
                self.take(10)?;
            }
            0xd8 => {
                self.take(18)?;
            }
            0xc7..=0xc9 => {
                self.pos += 1;
                let n = match m {
                    0xc7 => self.be(1)?,
                    0xc8 => self.be(2)?,
                    _ => self.be(4)?,
                };
                let n = self.len(n, 1)?;
                self.take(n + 1)?; // type byte, then data
            }
            _ => return self.err("reserved marker"),
        }
        Ok(())
    }

    /// MQTT 5 user properties: an array of `[key, value]` arrays.
    pub(super) fn user_properties(&mut self) -> R<Vec<(String, String)>> {
        let n = self.array_len()?;
        let mut props = Vec::with_capacity(n);
        for _ in 0..n {
            if self.array_len()? != 2 {
                return self.err("a user property is not a pair");
            }
            props.push((self.str()?.to_owned(), self.str()?.to_owned()));
        }
        Ok(props)
    }

    fn opt_string(&mut self) -> R<Option<String>> {
        if self.nil()? {
            return Ok(None);
        }
        Ok(Some(self.str()?.to_owned()))
    }
}

/// Decodes exactly one batch (`bytes` holds nothing else) into messages received at
/// `clock`.
#[cfg(test)]
pub(crate) fn decode_batch(
    bytes: &Bytes,
    clock: WireClock,
) -> Result<ForwardBatch<Arc<Message>>, DecodeError> {
    decode_batch_with(bytes, clock, &mut Interner::default())
}

pub(crate) fn decode_batch_with(
    bytes: &Bytes,
    clock: WireClock,
    strings: &mut Interner,
) -> Result<ForwardBatch<Arc<Message>>, DecodeError> {
    // The compact form is an array, the named form a map.
    if matches!(bytes.first(), Some(0x90..=0x9f | 0xdc | 0xdd)) {
        return super::compact::decode_batch(bytes, clock, strings);
    }
    let mut r = Reader::new(bytes);
    let (mut origin, mut link_epoch, mut messages) = (None, None, None);
    for _ in 0..r.map_len()? {
        match r.key()? {
            b"origin" => origin = Some(r.uint()?),
            b"link_epoch" => link_epoch = Some(r.uint()?),
            b"messages" => {
                let n = r.array_len()?;
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push(forwarded(&mut r, bytes, clock, strings)?);
                }
                messages = Some(list);
            }
            _ => r.skip(0)?,
        }
    }
    if r.remaining() != 0 {
        return r.err("bytes left over after the batch");
    }
    match (origin, link_epoch, messages) {
        (Some(origin), Some(link_epoch), Some(messages)) => Ok(ForwardBatch {
            origin,
            link_epoch,
            messages,
        }),
        _ => r.err("batch field missing"),
    }
}

fn forwarded(
    r: &mut Reader<'_>,
    frame: &Bytes,
    clock: WireClock,
    strings: &mut Interner,
) -> R<Forwarded<Arc<Message>>> {
    let (mut seq, mut message, mut shared) = (None, None, None);
    for _ in 0..r.map_len()? {
        match r.key()? {
            b"seq" => seq = Some(r.uint()?),
            b"message" => message = Some(self::message(r, frame, clock, strings)?),
            b"shared" => {
                shared = if r.nil()? {
                    None
                } else {
                    Some(shared_target(r)?)
                }
            }
            _ => r.skip(0)?,
        }
    }
    match (seq, message) {
        (Some(seq), Some(message)) => Ok(Forwarded {
            seq,
            message,
            shared,
        }),
        _ => r.err("forwarded message field missing"),
    }
}

fn shared_target(r: &mut Reader<'_>) -> R<SharedTarget> {
    let (mut group, mut filter) = (None, None);
    for _ in 0..r.map_len()? {
        match r.key()? {
            b"group" => group = Some(r.str()?.to_owned()),
            b"filter" => filter = Some(r.str()?.to_owned()),
            _ => r.skip(0)?,
        }
    }
    match (group, filter) {
        (Some(group), Some(filter)) => Ok(SharedTarget { group, filter }),
        _ => r.err("shared target field missing"),
    }
}

/// `part` of `frame` as `Bytes`: sharing the frame's memory when it is large, else a copy
/// (see [`SHARE_PAYLOAD_FROM`]).
pub(super) fn bytes_of(frame: &Bytes, part: &[u8]) -> Bytes {
    // `part` was read from `frame`, so it lies within it; checked anyway, so that a
    // mistake costs a copy rather than a panic on network input.
    let start = (part.as_ptr() as usize).wrapping_sub(frame.as_ptr() as usize);
    let inside = part.len() <= frame.len() && start <= frame.len() - part.len();
    if part.len() >= SHARE_PAYLOAD_FROM && inside {
        frame.slice(start..start + part.len())
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// Built in its `Arc` directly: moving the large `Message` through results showed up.
fn message(
    r: &mut Reader<'_>,
    frame: &Bytes,
    clock: WireClock,
    strings: &mut Interner,
) -> R<Arc<Message>> {
    let mut topic = None;
    let mut payload = None;
    let mut qos = None;
    let mut retain = None;
    let mut origin_client = None;
    let mut expires_at_unix_ms = None;
    let mut payload_format_indicator = None;
    let mut content_type = None;
    let mut response_topic = None;
    let mut correlation_data = None;
    let mut user_properties = None;
    for _ in 0..r.map_len()? {
        match r.key()? {
            b"topic" => topic = Some(strings.read(r, LastString::Topic)?),
            b"payload" => payload = Some(r.raw()?),
            b"qos" => qos = Some(r.u8()?),
            b"retain" => retain = Some(r.bool()?),
            b"origin_client" => origin_client = Some(strings.read(r, LastString::Client)?),
            b"expires_at_unix_ms" => {
                expires_at_unix_ms = if r.nil()? { None } else { Some(r.uint()?) }
            }
            b"payload_format_indicator" => {
                payload_format_indicator = if r.nil()? { None } else { Some(r.u8()?) }
            }
            b"content_type" => content_type = r.opt_string()?,
            b"response_topic" => response_topic = r.opt_string()?,
            b"correlation_data" => {
                correlation_data = if r.nil()? {
                    None
                } else {
                    Some(bytes_of(frame, r.raw()?))
                }
            }
            b"user_properties" => user_properties = Some(r.user_properties()?),
            _ => r.skip(0)?,
        }
    }
    let (Some(topic), Some(payload), Some(qos), Some(retain), Some(origin), Some(props)) =
        (topic, payload, qos, retain, origin_client, user_properties)
    else {
        return r.err("message field missing");
    };
    Ok(Arc::new(Message {
        topic,
        payload: bytes_of(frame, payload),
        qos: QoS::from_u8(qos).unwrap_or(QoS::AtMostOnce),
        retain,
        origin_client: origin,
        received_at: clock.now,
        expires_at: expires_at_unix_ms.map(|at| clock.to_instant(at)),
        payload_format_indicator,
        content_type,
        response_topic,
        correlation_data,
        user_properties: props,
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;
    use crate::forward::test_support::{clock, reference};
    use crate::types::WireMessage;

    fn wire(topic: String, payload: Vec<u8>, qos: u8, full: bool) -> WireMessage {
        WireMessage {
            topic,
            payload: Bytes::from(payload),
            qos,
            retain: full,
            origin_client: "client-1".into(),
            expires_at_unix_ms: full.then_some(1_700_000_060_000),
            payload_format_indicator: full.then_some(1),
            content_type: full.then(|| "text/plain".into()),
            response_topic: full.then(|| "reply/here".into()),
            correlation_data: full.then(|| Bytes::from_static(b"\x00\x01")),
            user_properties: if full {
                vec![("k".into(), "v".into()), ("k".into(), "w".into())]
            } else {
                Vec::new()
            },
        }
    }

    fn batch_of(messages: Vec<(WireMessage, bool)>) -> ForwardBatch {
        ForwardBatch {
            origin: 3,
            link_epoch: 1_700_000_000_123_456,
            messages: messages
                .into_iter()
                .enumerate()
                .map(|(i, (message, shared))| Forwarded {
                    seq: 10 + i as u64,
                    message,
                    shared: shared.then(|| SharedTarget {
                        group: "g".into(),
                        filter: "a/+".into(),
                    }),
                })
                .collect(),
        }
    }

    fn arb_message() -> impl Strategy<Value = (WireMessage, bool)> {
        (
            "[a-z/+#é]{0,20}",
            proptest::collection::vec(any::<u8>(), 0..1500),
            0u8..3,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(t, p, q, full, shared)| (wire(t, p, q, full), shared))
    }

    #[test]
    fn agrees_with_the_reference_decoder_on_both_encodings() {
        let clock = clock();
        let b = batch_of(vec![
            (wire("a/b".into(), b"hello".to_vec(), 1, true), false),
            (wire("a/c".into(), Vec::new(), 0, false), true),
            (wire("big".into(), vec![7; 5000], 2, false), false),
        ]);
        // This build's encoder (absent options left out) and the derived one (options
        // written as nil, as nodes before it sent them).
        for bytes in [
            b.encode().expect("encode"),
            rmp_serde::to_vec_named(&b).expect("derived encode"),
        ] {
            let bytes = Bytes::from(bytes);
            let decoded = decode_batch(&bytes, clock).expect("decode");
            assert_eq!(decoded, reference(&bytes, clock));
        }
    }

    #[test]
    fn repeated_strings_are_shared_across_batches_and_decode_the_same() {
        let clock = clock();
        let long = "x".repeat(INTERN_MAX_LEN + 1);
        let b = batch_of(vec![
            (wire("a/b".into(), b"1".to_vec(), 1, false), false),
            (wire("a/b".into(), b"2".to_vec(), 0, true), false),
            (wire(long.clone(), b"3".to_vec(), 0, false), false),
        ]);
        let bytes = Bytes::from(b.encode().expect("encode"));
        let mut strings = Interner::default();
        let first = decode_batch_with(&bytes, clock, &mut strings).expect("decode");
        let second = decode_batch_with(&bytes, clock, &mut strings).expect("decode");
        assert_eq!(first, reference(&bytes, clock));
        assert_eq!(second, first);
        let (m0, m1) = (&first.messages[0].message, &second.messages[1].message);
        assert!(Arc::ptr_eq(&m0.topic, &m1.topic));
        assert!(Arc::ptr_eq(&m0.origin_client, &m1.origin_client));
        // Too long to keep: a copy each time, still the same text.
        let (l0, l1) = (&first.messages[2].message, &second.messages[2].message);
        assert!(!Arc::ptr_eq(&l0.topic, &l1.topic));
        assert_eq!(&*l1.topic, long);
    }

    #[test]
    fn a_string_equal_to_the_last_one_is_shared_but_still_checked_when_it_differs() {
        let clock = clock();
        let long = "y".repeat(INTERN_MAX_LEN + 1);
        let b = batch_of(vec![
            (wire(long.clone(), b"1".to_vec(), 0, false), false),
            (wire(long.clone(), b"2".to_vec(), 0, false), false),
            (wire("q/é".into(), b"3".to_vec(), 0, false), false),
            (wire("q/é".into(), b"4".to_vec(), 0, false), false),
        ]);
        let bytes = b.encode().expect("encode");
        let decoded = decode_batch(&Bytes::from(bytes.clone()), clock).expect("decode");
        let m = |i: usize| &decoded.messages[i].message;
        // Too long for the set, yet shared with the message right before it.
        assert!(Arc::ptr_eq(&m(0).topic, &m(1).topic));
        assert!(Arc::ptr_eq(&m(2).topic, &m(3).topic));
        assert_eq!(&*m(1).topic, long);
        // The last topic's bytes with one byte changed into invalid UTF-8: refused.
        let needle = "q/é".as_bytes();
        let last = bytes
            .windows(needle.len())
            .rposition(|w| w == needle)
            .expect("topic in the encoding");
        let mut bad = bytes;
        bad[last + 2] = 0xff;
        let err = decode_batch(&Bytes::from(bad), clock).expect_err("invalid UTF-8");
        assert_eq!(err.what, "string not UTF-8");
    }

    #[test]
    fn an_interner_starts_over_past_its_byte_bound() {
        let mut strings = Interner::default();
        let kept = strings.get("first");
        for i in 0..=(INTERN_MAX_BYTES / INTERN_MAX_LEN) {
            strings.get(&format!("{i:0>w$}", w = INTERN_MAX_LEN));
        }
        assert!(strings.bytes <= INTERN_MAX_BYTES);
        assert!(!Arc::ptr_eq(&kept, &strings.get("first")));
    }

    #[test]
    fn large_payloads_share_the_frame_and_small_ones_do_not() {
        let b = batch_of(vec![
            (wire("s".into(), vec![1; 100], 0, false), false),
            (
                wire("l".into(), vec![2; SHARE_PAYLOAD_FROM], 0, false),
                false,
            ),
        ]);
        let bytes = Bytes::from(b.encode().expect("encode"));
        let decoded = decode_batch(&bytes, clock()).expect("decode");
        let inside = |p: &Bytes| {
            let (start, end) = (
                bytes.as_ptr() as usize,
                bytes.as_ptr() as usize + bytes.len(),
            );
            (start..end).contains(&(p.as_ptr() as usize))
        };
        assert!(!inside(&decoded.messages[0].message.payload));
        assert!(inside(&decoded.messages[1].message.payload));
    }

    /// A newer peer's batch: fields in another order, and fields this build does not know
    /// (of every shape) at every level.
    #[test]
    fn unknown_fields_and_any_order_are_accepted() {
        #[derive(Serialize)]
        struct Msg {
            extra: Vec<(u32, String, f64, Option<bool>)>,
            user_properties: Vec<(String, String)>,
            retain: bool,
            payload: Bytes,
            origin_client: String,
            qos: u8,
            topic: String,
            zone: std::collections::BTreeMap<String, Vec<i64>>,
        }
        #[derive(Serialize)]
        struct Fwd {
            message: Msg,
            hops: i8,
            seq: u64,
        }
        #[derive(Serialize)]
        struct Batch {
            messages: Vec<Fwd>,
            link_epoch: u64,
            trace: Bytes,
            origin: u64,
        }
        let future = Batch {
            messages: vec![Fwd {
                message: Msg {
                    extra: vec![
                        (1, "x".into(), 1.5, None),
                        (70_000, "y".into(), -2.0, Some(true)),
                    ],
                    user_properties: vec![("a".into(), "b".into())],
                    retain: true,
                    payload: Bytes::from_static(b"hi"),
                    origin_client: "c".into(),
                    qos: 1,
                    topic: "t/u".into(),
                    zone: [("z".to_string(), vec![-1, 300, -40_000])].into(),
                },
                hops: -3,
                seq: 5,
            }],
            link_epoch: 9,
            trace: Bytes::from_static(&[0; 300]),
            origin: 2,
        };
        let bytes = Bytes::from(rmp_serde::to_vec_named(&future).expect("encode"));
        let clock = clock();
        let decoded = decode_batch(&bytes, clock).expect("decode");
        assert_eq!(decoded, reference(&bytes, clock));
        let m = &decoded.messages[0].message;
        assert_eq!(
            (&*m.topic, &m.payload[..], m.retain),
            ("t/u", &b"hi"[..], true)
        );
    }

    #[test]
    fn truncated_padded_and_incomplete_batches_are_errors() {
        let b = batch_of(vec![
            (wire("a/b".into(), b"hello".to_vec(), 1, true), true),
            (wire("a/c".into(), vec![9; 2000], 0, false), false),
        ]);
        let bytes = b.encode().expect("encode");
        for len in 0..bytes.len() {
            assert!(decode_batch(&Bytes::copy_from_slice(&bytes[..len]), clock()).is_err());
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(decode_batch(&Bytes::from(padded), clock()).is_err());
        // A message without its topic.
        #[derive(Serialize)]
        struct NoTopic {
            payload: Bytes,
            qos: u8,
            retain: bool,
            origin_client: String,
            user_properties: Vec<(String, String)>,
        }
        #[derive(Serialize)]
        struct Fwd {
            seq: u64,
            message: NoTopic,
        }
        #[derive(Serialize)]
        struct Batch {
            origin: u64,
            link_epoch: u64,
            messages: Vec<Fwd>,
        }
        let bad = Batch {
            origin: 1,
            link_epoch: 1,
            messages: vec![Fwd {
                seq: 1,
                message: NoTopic {
                    payload: Bytes::new(),
                    qos: 0,
                    retain: false,
                    origin_client: String::new(),
                    user_properties: Vec::new(),
                },
            }],
        };
        let bytes = Bytes::from(rmp_serde::to_vec_named(&bad).expect("encode"));
        assert!(decode_batch(&bytes, clock()).is_err());
        assert!(
            ForwardBatch::decode(&bytes).is_err(),
            "the reference agrees"
        );
    }

    #[test]
    fn forged_lengths_are_refused_without_allocating() {
        // A map claiming 4 billion fields, an array claiming 4 billion messages, a
        // string claiming 4 GiB: all with nothing behind them.
        for bytes in [
            &[0xdf, 0xff, 0xff, 0xff, 0xff][..],
            &[
                0x81, 0xa8, b'm', b'e', b's', b's', b'a', b'g', b'e', b's', 0xdd, 0xff, 0xff, 0xff,
                0xff,
            ],
            &[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff],
            &[0x81, 0xa1, b'x', 0xc9, 0xff, 0xff, 0xff, 0xff, 0x01],
        ] {
            assert!(decode_batch(&Bytes::copy_from_slice(bytes), clock()).is_err());
        }
        // Unknown fields nested deeper than allowed.
        let mut deep = vec![0x81, 0xa1, b'x'];
        deep.extend(std::iter::repeat_n(0x91, 100));
        deep.push(0x00);
        assert!(decode_batch(&Bytes::from(deep), clock()).is_err());
    }

    proptest! {
        #[test]
        fn any_batch_decodes_like_the_reference(
            messages in proptest::collection::vec(arb_message(), 0..12),
        ) {
            let clock = clock();
            let b = batch_of(messages);
            let bytes = Bytes::from(b.encode().expect("encode"));
            let decoded = decode_batch(&bytes, clock).expect("decode");
            prop_assert_eq!(decoded, reference(&bytes, clock));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch(&Bytes::from(bytes), clock());
        }

        #[test]
        fn corrupted_batches_never_panic_and_agree_when_accepted(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let b = batch_of(vec![
                (wire("a/b".into(), b"hello".to_vec(), 1, true), true),
                (wire("a/c".into(), vec![3; 40], 0, false), false),
            ]);
            let mut bytes = b.encode().expect("encode");
            for (at, byte) in flips {
                let len = bytes.len();
                bytes[at % len] = byte;
            }
            let bytes = Bytes::from(bytes);
            let clock = clock();
            if let (Ok(ours), Ok(_)) = (decode_batch(&bytes, clock), ForwardBatch::decode(&bytes)) {
                prop_assert_eq!(ours, reference(&bytes, clock));
            }
        }
    }
}
