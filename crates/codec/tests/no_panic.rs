//! Decoding never panics: on random bytes, and on valid encodings that were mutated or
//! cut short, for both versions and before CONNECT. Whatever decodes re-encodes to bytes
//! that decode to the same packet.

mod common;

use bytes::BytesMut;
use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use tern_codec::*;

fn versions() -> impl Strategy<Value = Option<ProtocolVersion>> {
    proptest::sample::select(vec![None, Some(V311), Some(V5)])
}

fn max_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        Just(usize::MAX),
        Just(MAX_REMAINING_LENGTH + 5),
        0usize..64,
        64usize..1024
    ]
}

/// Decodes everything in `bytes`, checking each decoded packet survives a re-encode.
fn drain(bytes: &[u8], version: Option<ProtocolVersion>, max: usize) -> Result<(), TestCaseError> {
    let _ = decode_connect_version(bytes);
    let mut buf = BytesMut::from(bytes);
    let mut version = version;
    for _ in 0..bytes.len() + 1 {
        let before = buf.len();
        match decode(&mut buf, version, max) {
            Ok(None) => {
                prop_assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                return Ok(());
            }
            Err(_) => {
                prop_assert_eq!(buf.len(), before, "an error consumed bytes");
                return Ok(());
            }
            Ok(Some(p)) => {
                prop_assert!(buf.len() < before);
                let v = match &p {
                    Packet::Connect(c) => c.protocol,
                    _ => version.expect("only CONNECT decodes before CONNECT"),
                };
                version = Some(v);
                check_reencode(&p, v)?;
            }
        }
    }
    Ok(())
}

fn check_reencode(p: &Packet, v: ProtocolVersion) -> Result<(), TestCaseError> {
    let mut out = BytesMut::new();
    encode(p, v, &mut out).map_err(|e| TestCaseError::fail(format!("re-encode of {p:?}: {e}")))?;
    prop_assert_eq!(out.len(), encoded_len(p, v).unwrap());
    let again = decode(&mut out, Some(v), usize::MAX)
        .map_err(|e| TestCaseError::fail(format!("re-decode of {p:?}: {e}")))?;
    prop_assert_eq!(again.as_ref(), Some(p));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes(bytes in vec(any::<u8>(), 0..300), version in versions(), max in max_size()) {
        drain(&bytes, version, max)?;
    }

    /// Random bodies behind a plausible fixed header reach the body readers more often.
    #[test]
    fn random_bodies(
        byte1 in any::<u8>(),
        body in vec(any::<u8>(), 0..200),
        version in versions(),
    ) {
        let mut bytes = vec![byte1, body.len() as u8 & 0x7F];
        bytes.extend_from_slice(&body[..body.len().min(127)]);
        drain(&bytes, version, usize::MAX)?;
    }

    #[test]
    fn mutated_encodings(
        (v, packet) in versioned_packet(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
        version in versions(),
    ) {
        let mut bytes = encode_vec(&packet, v);
        for (at, b) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        drain(&bytes, version, usize::MAX)?;
        drain(&bytes, Some(v), usize::MAX)?;
    }

    #[test]
    fn truncated_and_extended_encodings(
        (v, packet) in versioned_packet(),
        cut in any::<prop::sample::Index>(),
        extra in vec(any::<u8>(), 0..8),
    ) {
        let mut bytes = encode_vec(&packet, v);
        bytes.truncate(cut.index(bytes.len() + 1));
        bytes.extend_from_slice(&extra);
        drain(&bytes, Some(v), usize::MAX)?;
        drain(&bytes, None, usize::MAX)?;
    }

    /// Lengths inside the packet (remaining length, string lengths, property lengths)
    /// lie: the body is shorter or longer than they say.
    #[test]
    fn lying_remaining_length((v, packet) in versioned_packet(), delta in -3i32..=3) {
        let bytes = encode_vec(&packet, v);
        // Rebuild the fixed header with a remaining length off by `delta`.
        let header_len = (1..5).find(|&i| bytes[i] & 0x80 == 0).unwrap() + 1;
        let body = &bytes[header_len..];
        let claimed = (body.len() as i32 + delta).max(0) as usize;
        let mut forged = vec![bytes[0]];
        let mut n = claimed;
        loop {
            let mut b = (n & 0x7F) as u8;
            n >>= 7;
            if n > 0 { b |= 0x80; }
            forged.push(b);
            if n == 0 { break; }
        }
        forged.extend_from_slice(body);
        drain(&forged, Some(v), usize::MAX)?;
    }
}
