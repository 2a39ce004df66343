//! Packet decoding: framing (fixed header, remaining length, size limit, which packet
//! types a connection accepts). The packets' bodies are read in [`crate::read`].
use bytes::{Buf, Bytes, BytesMut};

use crate::primitives::{err, parse_varint, VarInt};
use crate::{read, DecodeError, DecodeErrorKind, Packet, ProtocolVersion, PubResponse};

/// The largest remaining length MQTT can express (four varint bytes).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Decodes one packet from the front of `buf`.
///
/// - `Ok(None)`: not a whole packet yet; nothing consumed.
/// - `Ok(Some(p))`: the packet's bytes were consumed from `buf`; payloads share `buf`'s
///   memory (no copy).
/// - `Err(e)`: the stream is not valid MQTT; the caller closes the connection. `buf` is
///   left as it was (so [`decode_connect_version`] can still look at a bad CONNECT).
///
/// `version` is `None` until CONNECT has been seen: then only CONNECT is accepted.
/// `max_packet_size` bounds the whole packet (fixed header included) and is checked as
/// soon as the fixed header is complete, before the body arrives.
///
/// A CONNECT is always read with the protocol level it carries, whatever `version` says.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(byte1, version)?;

    let (remaining, len_len) = match parse_varint(buf.get(1..).unwrap_or_default()) {
        VarInt::Value(v, n) => (v, n),
        VarInt::Incomplete => return Ok(None),
        VarInt::Malformed => {
            return Err(err(
                DecodeErrorKind::RemainingLength,
                "remaining length over four bytes",
            ))
        }
    };
    let header_len = 1 + len_len;
    let total = header_len + remaining;
    if total > max_packet_size {
        return Err(err(
            DecodeErrorKind::PacketTooLarge,
            "packet larger than the maximum packet size",
        ));
    }
    if buf.len() < total {
        return Ok(None);
    }

    if let Some(ack) = short_ack(byte1, remaining, buf) {
        buf.advance(total);
        return Ok(Some(ack));
    }
    let frame = buf.split_to(total).freeze();
    match read::packet(byte1, &frame, header_len, version) {
        Ok(packet) => Ok(Some(packet)),
        Err(e) => {
            restore(buf, frame);
            Err(e)
        }
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP with just a packet identifier (3.1.1's only form,
/// 5.0's for success), read in place. A subscriber acknowledges every QoS 1/2 message,
/// and splitting a frame off the buffer for four bytes cost two reference-count updates
/// on the read buffer per acknowledgement. `byte1` has passed `check_first_byte`;
/// anything else (packet identifier 0 among it) is left to the general path.
fn short_ack(byte1: u8, remaining: usize, buf: &[u8]) -> Option<Packet> {
    if remaining != 2 {
        return None;
    }
    let packet_id = match buf.get(2..4)? {
        &[hi, lo] => u16::from_be_bytes([hi, lo]),
        _ => return None,
    };
    if packet_id == 0 {
        return None;
    }
    let response = PubResponse::new(packet_id);
    match byte1 >> 4 {
        4 => Some(Packet::PubAck(response)),
        5 => Some(Packet::PubRec(response)),
        6 => Some(Packet::PubRel(response)),
        7 => Some(Packet::PubComp(response)),
        _ => None,
    }
}

/// Checks what the first byte alone can tell: the packet type, whether this connection
/// accepts it, and the fixed-header flags.
fn check_first_byte(byte1: u8, version: Option<ProtocolVersion>) -> Result<(), DecodeError> {
    let kind = byte1 >> 4;
    let flags = byte1 & 0x0F;
    match (kind, version) {
        (0, _) => {
            return Err(err(
                DecodeErrorKind::PacketType,
                "packet type 0 is reserved",
            ))
        }
        (15, Some(ProtocolVersion::V311)) => {
            return Err(err(
                DecodeErrorKind::PacketType,
                "packet type 15 is reserved in 3.1.1",
            ))
        }
        (1, _) => {}
        (_, None) => {
            return Err(err(
                DecodeErrorKind::FirstPacketNotConnect,
                "first packet is not CONNECT",
            ))
        }
        _ => {}
    }
    match kind {
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(err(DecodeErrorKind::Qos, "PUBLISH with QoS 3"));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(err(DecodeErrorKind::Qos, "PUBLISH with QoS 0 and DUP set"));
            }
        }
        6 | 8 | 10 => {
            if flags != 0b0010 {
                return Err(err(
                    DecodeErrorKind::ReservedFlags,
                    "fixed-header flags must be 0010",
                ));
            }
        }
        _ => {
            if flags != 0 {
                return Err(err(
                    DecodeErrorKind::ReservedFlags,
                    "fixed-header flags must be 0000",
                ));
            }
        }
    }
    Ok(())
}

/// Puts a frame that failed to decode back at the front of `buf`. Cheap when nothing
/// else holds the frame's memory (the usual case: the partial packet has been dropped).
fn restore(buf: &mut BytesMut, frame: Bytes) {
    let rest = std::mem::take(buf);
    let mut whole = frame
        .try_into_mut()
        .unwrap_or_else(|f| BytesMut::from(&f[..]));
    whole.unsplit(rest);
    *buf = whole;
}

/// The protocol version a (possibly malformed) CONNECT at the front of `buf` asks for, so
/// that a server can answer a bad CONNECT with a CONNACK of the right version.
///
/// Looks only at the packet type, the remaining length, the protocol name's length prefix
/// and bytes (whatever they say) and the protocol level byte.
pub fn decode_connect_version(buf: &[u8]) -> Option<ProtocolVersion> {
    let (&byte1, rest) = buf.split_first()?;
    if byte1 >> 4 != 1 {
        return None;
    }
    let VarInt::Value(_, len_len) = parse_varint(rest) else {
        return None;
    };
    let body = rest.get(len_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    match body.get(2 + name_len)? {
        4 => Some(ProtocolVersion::V311),
        5 => Some(ProtocolVersion::V5),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_version_peek() {
        assert_eq!(decode_connect_version(&[]), None);
        assert_eq!(decode_connect_version(&[0x10]), None);
        assert_eq!(decode_connect_version(&[0x10, 0x80]), None);
        let v5 = [0x10, 0x0A, 0, 4, b'M', b'Q', b'T', b'T', 5];
        assert_eq!(decode_connect_version(&v5), Some(ProtocolVersion::V5));
        let v4 = [0x10, 0x00, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xFF];
        assert_eq!(decode_connect_version(&v4), Some(ProtocolVersion::V311));
        let v3 = [0x10, 0x0A, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        assert_eq!(decode_connect_version(&v3), None);
        assert_eq!(decode_connect_version(&v5[..8]), None);
        assert_eq!(
            decode_connect_version(&[0x20, 0x0A, 0, 4, b'M', b'Q', b'T', b'T', 5]),
            None
        );
    }

    /// The in-place reading of short acknowledgements gives what the general reader gives.
    #[test]
    fn short_acks_read_in_place_match_the_general_reader() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            for byte1 in [0x40u8, 0x50, 0x62, 0x70] {
                for packet_id in [1u16, 2, 0x1234, u16::MAX] {
                    let [hi, lo] = packet_id.to_be_bytes();
                    let bytes = [byte1, 2, hi, lo, 0xC0, 0x00];
                    let general = read::packet(
                        byte1,
                        &Bytes::copy_from_slice(&bytes[..4]),
                        2,
                        Some(version),
                    )
                    .expect("valid acknowledgement");
                    let mut buf = BytesMut::from(&bytes[..]);
                    let decoded = decode(&mut buf, Some(version), 1024)
                        .expect("valid")
                        .expect("whole packet");
                    assert_eq!(decoded, general);
                    assert_eq!(
                        &buf[..],
                        &[0xC0, 0x00],
                        "exactly the acknowledgement consumed"
                    );
                }
            }
        }
        // Packet identifier 0 is still refused, by the general reader.
        let mut buf = BytesMut::from(&[0x40u8, 2, 0, 0][..]);
        let e = decode(&mut buf, Some(ProtocolVersion::V311), 1024).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::PacketId);
    }

    #[test]
    fn error_leaves_buffer_intact() {
        // CONNECT with protocol level 3, followed by more bytes.
        let bytes = [0x10, 0x07, 0, 4, b'M', b'Q', b'T', b'T', 3, 0xC0, 0x00];
        let mut buf = BytesMut::from(&bytes[..]);
        let e = decode(&mut buf, None, 1024).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::ProtocolVersion);
        assert_eq!(&buf[..], &bytes[..]);
    }
}
