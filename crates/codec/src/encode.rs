//! Packet encoding: measuring a packet, then writing its fixed header and body. The
//! bodies are described in [`crate::write`].
use bytes::{BufMut, BytesMut};

use crate::primitives::{put_varint, varint_len, Counter};
use crate::{write, EncodeError, Packet, ProtocolVersion, PublishRef, MAX_REMAINING_LENGTH};

/// Appends `packet`, as `version` writes it, to `buf`. On error nothing is appended.
///
/// A CONNECT is written with `version`'s protocol level (its `protocol` field is not
/// consulted). Fields the version does not carry (properties and most reason codes on
/// 3.1.1) are left out. DUP is never written on a QoS 0 PUBLISH.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = remaining_len(packet, version)?;
    let total = 1 + varint_len(remaining) + remaining;
    buf.reserve(total);
    let start = buf.len();
    buf.put_u8(write::first_byte(packet));
    put_varint(buf, remaining);
    write::body(packet, version, buf);
    debug_assert_eq!(
        buf.len() - start,
        total,
        "measured and written lengths differ"
    );
    Ok(())
}

/// The whole encoded size of `packet` (fixed header included) for `version`.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let remaining = remaining_len(packet, version)?;
    Ok(1 + varint_len(remaining) + remaining)
}

/// Measures and validates the body: every error `encode` can report is found here,
/// before anything is written.
fn remaining_len(packet: &Packet, version: ProtocolVersion) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    write::body(packet, version, &mut counter);
    let remaining = counter.finish()?;
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge);
    }
    Ok(remaining)
}

/// Appends a PUBLISH given by reference, as `version` writes it, to `buf`; returns the
/// bytes written. The broker's hot path: it encodes one shared message for many
/// subscribers without building an owned [`Publish`](crate::Publish) for each.
/// On error nothing is appended.
pub fn encode_publish(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<usize, EncodeError> {
    let remaining = publish_remaining_len(publish, version)?;
    let total = 1 + varint_len(remaining) + remaining;
    buf.reserve(total);
    buf.put_u8(write::publish_first_byte(publish));
    put_varint(buf, remaining);
    write::publish_ref(publish, version, buf);
    Ok(total)
}

/// The whole encoded size of a PUBLISH given by reference.
pub fn publish_encoded_len(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    let remaining = publish_remaining_len(publish, version)?;
    Ok(1 + varint_len(remaining) + remaining)
}

fn publish_remaining_len(
    publish: &PublishRef<'_>,
    version: ProtocolVersion,
) -> Result<usize, EncodeError> {
    let mut counter = Counter::default();
    write::publish_ref(publish, version, &mut counter);
    let remaining = counter.finish()?;
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge);
    }
    Ok(remaining)
}
