//! A hand-written encoder of forwarded batches, writing what the serde-derived form of
//! [`ForwardBatch`](super::ForwardBatch) writes (named fields, every integer and length in
//! its smallest MessagePack form), except that absent optional fields are left out (see
//! [`WireRef`]). It writes straight into the transport frame; serde's generic serializer
//! was most of the sending node's cost of a forwarded message.

use super::frame::{ForwardMessage, Forwarded, FrameError};
use crate::types::{NodeId, WireClock, WireRef};

pub(super) fn uint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0x7f => out.push(v as u8),
        0x80..=0xff => out.extend_from_slice(&[0xcc, v as u8]),
        0x100..=0xffff => {
            out.push(0xcd);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0xce);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        }
        _ => {
            out.push(0xcf);
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
}

/// A length header: `small` is the fix-form marker base and holds up to `small_max`;
/// `m8` is the 8-bit form's marker, if the type has one; then the 16- and 32-bit ones.
fn len_header(
    out: &mut Vec<u8>,
    len: usize,
    small: u8,
    small_max: usize,
    m8: Option<u8>,
    m16: u8,
    m32: u8,
) -> Result<(), FrameError> {
    match (len, m8) {
        (l, _) if l <= small_max && small != 0 => out.push(small | l as u8),
        (l, Some(m)) if l <= 0xff => out.extend_from_slice(&[m, l as u8]),
        (l, _) if l <= 0xffff => {
            out.push(m16);
            out.extend_from_slice(&(l as u16).to_be_bytes());
        }
        (l, _) => {
            let l = u32::try_from(l).map_err(|_| FrameError::TooLong(len))?;
            out.push(m32);
            out.extend_from_slice(&l.to_be_bytes());
        }
    }
    Ok(())
}

pub(super) fn str(out: &mut Vec<u8>, s: &str) -> Result<(), FrameError> {
    len_header(out, s.len(), 0xa0, 31, Some(0xd9), 0xda, 0xdb)?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

pub(super) fn bin(out: &mut Vec<u8>, b: &[u8]) -> Result<(), FrameError> {
    // `bin` has no fix form: a zero `small` skips it.
    len_header(out, b.len(), 0, 0, Some(0xc4), 0xc5, 0xc6)?;
    out.extend_from_slice(b);
    Ok(())
}

pub(super) fn array(out: &mut Vec<u8>, len: usize) -> Result<(), FrameError> {
    len_header(out, len, 0x90, 15, None, 0xdc, 0xdd)
}

fn map(out: &mut Vec<u8>, len: usize) {
    // Only our own structs: never more than 15 fields.
    debug_assert!(len <= 15);
    out.push(0x80 | len as u8);
}

/// A field name: all of ours are short ASCII, so a fixstr.
fn key(out: &mut Vec<u8>, name: &'static str) {
    debug_assert!(name.len() <= 31);
    out.push(0xa0 | name.len() as u8);
    out.extend_from_slice(name.as_bytes());
}

/// Appends a `ForwardBatch` of `messages` to `out`.
pub(crate) fn batch<M: ForwardMessage>(
    out: &mut Vec<u8>,
    origin: NodeId,
    link_epoch: u64,
    messages: &[Forwarded<M>],
    clock: WireClock,
) -> Result<(), FrameError> {
    map(out, 3);
    key(out, "origin");
    uint(out, origin);
    key(out, "link_epoch");
    uint(out, link_epoch);
    key(out, "messages");
    array(out, messages.len())?;
    for f in messages {
        map(out, 2 + usize::from(f.shared.is_some()));
        key(out, "seq");
        uint(out, f.seq);
        key(out, "message");
        message(out, &f.message.wire(clock))?;
        if let Some(s) = &f.shared {
            key(out, "shared");
            map(out, 2);
            key(out, "group");
            str(out, &s.group)?;
            key(out, "filter");
            str(out, &s.filter)?;
        }
    }
    Ok(())
}

/// Appends one message, as the derived serialisation of [`WireRef`] would.
pub(crate) fn message(out: &mut Vec<u8>, m: &WireRef<'_>) -> Result<(), FrameError> {
    let optional = usize::from(m.expires_at_unix_ms.is_some())
        + usize::from(m.payload_format_indicator.is_some())
        + usize::from(m.content_type.is_some())
        + usize::from(m.response_topic.is_some())
        + usize::from(m.correlation_data.is_some());
    map(out, 6 + optional);
    key(out, "topic");
    str(out, m.topic)?;
    key(out, "payload");
    bin(out, m.payload)?;
    key(out, "qos");
    uint(out, u64::from(m.qos));
    key(out, "retain");
    out.push(if m.retain { 0xc3 } else { 0xc2 });
    key(out, "origin_client");
    str(out, m.origin_client)?;
    if let Some(at) = m.expires_at_unix_ms {
        key(out, "expires_at_unix_ms");
        uint(out, at);
    }
    if let Some(p) = m.payload_format_indicator {
        key(out, "payload_format_indicator");
        uint(out, u64::from(p));
    }
    if let Some(c) = m.content_type {
        key(out, "content_type");
        str(out, c)?;
    }
    if let Some(r) = m.response_topic {
        key(out, "response_topic");
        str(out, r)?;
    }
    if let Some(c) = m.correlation_data {
        key(out, "correlation_data");
        bin(out, c)?;
    }
    key(out, "user_properties");
    array(out, m.user_properties.len())?;
    for (k, v) in m.user_properties {
        array(out, 2)?;
        str(out, k)?;
        str(out, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn arb_str() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z/é]{0,40}",
            (0usize..70_000).prop_map(|n| "x".repeat(n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every length and integer boundary: the same bytes as serde's derived form.
        #[test]
        fn messages_encode_as_serde_does(
            topic in arb_str(),
            payload_len in prop_oneof![0usize..300, 65_000usize..70_000],
            qos in any::<u8>(),
            retain in any::<bool>(),
            origin in arb_str(),
            expires in proptest::option::of(any::<u64>()),
            pfi in proptest::option::of(any::<u8>()),
            content_type in proptest::option::of(arb_str()),
            response_topic in proptest::option::of("[a-z]{0,300}"),
            correlation in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            props in proptest::collection::vec(("[a-z]{0,40}", "[a-z]{0,3}"), 0..20),
        ) {
            let payload = Bytes::from(vec![5u8; payload_len]);
            let correlation = correlation.map(Bytes::from);
            let m = WireRef {
                topic: &topic,
                payload: &payload,
                qos,
                retain,
                origin_client: &origin,
                expires_at_unix_ms: expires,
                payload_format_indicator: pfi,
                content_type: content_type.as_deref(),
                response_topic: response_topic.as_deref(),
                correlation_data: correlation.as_ref(),
                user_properties: &props,
            };
            let mut ours = Vec::new();
            message(&mut ours, &m).expect("encode");
            prop_assert_eq!(ours, rmp_serde::to_vec_named(&m).expect("serde"));
        }

        #[test]
        fn integers_encode_as_serde_does(v in prop_oneof![any::<u64>(), 0u64..70_000]) {
            let mut ours = Vec::new();
            uint(&mut ours, v);
            prop_assert_eq!(ours, rmp_serde::to_vec(&v).expect("serde"));
        }
    }
}
