//! A table of malformed inputs, each with the exact error it must produce.

use bytes::BytesMut;
use tern_codec::DecodeErrorKind::{
    ConnectFlags, DuplicateProperty, EmptyOrBadFilters, FirstPacketNotConnect, PacketId,
    PacketTooLarge, PacketType, PropertyNotAllowed, PropertyValue, ProtocolName, Qos,
    RemainingLength, ReservedFlags, Truncated, UnknownProperty, Utf8,
};
use tern_codec::{decode, decode_connect_version, DecodeErrorKind, ProtocolVersion};

const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V311);
const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);
const BIG: usize = 1 << 20;

/// A fixed header for `byte1` with the right remaining length, then `body`.
fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut v = vec![byte1, body.len() as u8];
    v.extend_from_slice(body);
    v
}

/// A CONNECT: protocol name, level, flags, keep alive 60, then `rest` (properties on 5.0,
/// client id, will, user name, password as the caller writes them).
fn connect(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 60]);
    body.extend_from_slice(rest);
    frame(0x10, &body)
}

/// A 5.0 CONNECT with clean start, the given property bytes and client id "c".
fn connect_v5_props(props: &[u8]) -> Vec<u8> {
    let mut rest = vec![props.len() as u8];
    rest.extend_from_slice(props);
    rest.extend_from_slice(&[0, 1, b'c']);
    connect(b"MQTT", 5, 0x02, &rest)
}

/// A 5.0 PUBLISH QoS 0 to topic "t" with the given property bytes and no payload.
fn publish_v5_props(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 1, b't', props.len() as u8];
    body.extend_from_slice(props);
    frame(0x30, &body)
}

/// A 5.0 CONNACK (success) with the given property bytes.
fn connack_v5_props(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0, props.len() as u8];
    body.extend_from_slice(props);
    frame(0x20, &body)
}

/// Name, bytes, connection version, maximum packet size, expected error.
type Case = (
    &'static str,
    Vec<u8>,
    Option<ProtocolVersion>,
    usize,
    DecodeErrorKind,
);

fn cases() -> Vec<Case> {
    vec![
        // Framing.
        (
            "remaining length of 5 bytes",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            V5,
            BIG,
            RemainingLength,
        ),
        (
            "remaining length: 4 continuation bytes",
            vec![0xC0, 0x80, 0x80, 0x80, 0x80],
            V311,
            BIG,
            RemainingLength,
        ),
        (
            "oversize, before the body arrives",
            vec![0x30, 0x64],
            V311,
            50,
            PacketTooLarge,
        ),
        (
            "oversize, 4-byte length",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F],
            V5,
            BIG,
            PacketTooLarge,
        ),
        ("packet type 0", vec![0x00, 0x00], V5, BIG, PacketType),
        (
            "packet type 15 on 3.1.1",
            vec![0xF0, 0x00],
            V311,
            BIG,
            PacketType,
        ),
        (
            "first packet not CONNECT",
            vec![0xC0, 0x00],
            None,
            BIG,
            FirstPacketNotConnect,
        ),
        (
            "first packet a PUBLISH",
            frame(0x30, &[0, 1, b't']),
            None,
            BIG,
            FirstPacketNotConnect,
        ),
        // Fixed-header flags.
        (
            "SUBSCRIBE flags 0000",
            frame(0x80, &[0, 1, 0, 1, b'a', 0]),
            V311,
            BIG,
            ReservedFlags,
        ),
        (
            "UNSUBSCRIBE flags 0011",
            frame(0xA3, &[0, 1, 0, 1, b'a']),
            V311,
            BIG,
            ReservedFlags,
        ),
        (
            "PUBREL flags 0000",
            frame(0x60, &[0, 1]),
            V5,
            BIG,
            ReservedFlags,
        ),
        (
            "PINGREQ flags 0001",
            vec![0xC1, 0x00],
            V311,
            BIG,
            ReservedFlags,
        ),
        (
            "CONNECT flags 0010",
            vec![0x12, 0x00],
            None,
            BIG,
            ReservedFlags,
        ),
        (
            "PUBLISH QoS 3",
            frame(0x36, &[0, 1, b't', 0, 1]),
            V311,
            BIG,
            Qos,
        ),
        (
            "PUBLISH QoS 0 with DUP",
            frame(0x38, &[0, 1, b't']),
            V311,
            BIG,
            Qos,
        ),
        // Strings.
        (
            "invalid UTF-8 topic",
            frame(0x30, &[0, 2, 0xC3, 0x28]),
            V311,
            BIG,
            Utf8,
        ),
        (
            "U+0000 in topic",
            frame(0x30, &[0, 3, b'a', 0, b'b']),
            V311,
            BIG,
            Utf8,
        ),
        (
            "surrogate in topic",
            frame(0x30, &[0, 3, 0xED, 0xA0, 0x80, 0]),
            V5,
            BIG,
            Utf8,
        ),
        (
            "U+0000 in user property",
            publish_v5_props(&[0x26, 0, 1, 0, 0, 1, b'v']),
            V5,
            BIG,
            Utf8,
        ),
        // Packet identifiers.
        (
            "packet id 0 on QoS 1 PUBLISH",
            frame(0x32, &[0, 1, b't', 0, 0]),
            V311,
            BIG,
            PacketId,
        ),
        (
            "packet id 0 on PUBACK",
            frame(0x40, &[0, 0]),
            V5,
            BIG,
            PacketId,
        ),
        (
            "packet id 0 on SUBSCRIBE",
            frame(0x82, &[0, 0, 0, 1, b'a', 0]),
            V311,
            BIG,
            PacketId,
        ),
        // CONNECT.
        (
            "truncated CONNECT",
            connect(b"MQTT", 4, 0x02, &[0, 5, b'a']),
            None,
            BIG,
            Truncated,
        ),
        (
            "CONNECT cut in the name",
            frame(0x10, &[0, 4, b'M', b'Q']),
            None,
            BIG,
            Truncated,
        ),
        (
            "bad protocol name",
            connect(b"MQTX", 4, 0x02, &[0, 0]),
            None,
            BIG,
            ProtocolName,
        ),
        (
            "MQTT 3.1 protocol name",
            connect(b"MQIsdp", 3, 0x02, &[0, 0]),
            None,
            BIG,
            ProtocolName,
        ),
        (
            "protocol level 3",
            connect(b"MQTT", 3, 0x02, &[0, 0]),
            None,
            BIG,
            DecodeErrorKind::ProtocolVersion,
        ),
        (
            "protocol level 6",
            connect(b"MQTT", 6, 0x02, &[0, 0]),
            None,
            BIG,
            DecodeErrorKind::ProtocolVersion,
        ),
        (
            "reserved connect flag",
            connect(b"MQTT", 4, 0x03, &[0, 0]),
            None,
            BIG,
            ConnectFlags,
        ),
        (
            "will QoS without will",
            connect(b"MQTT", 4, 0x0A, &[0, 0]),
            None,
            BIG,
            ConnectFlags,
        ),
        (
            "will retain without will",
            connect(b"MQTT", 4, 0x22, &[0, 0]),
            None,
            BIG,
            ConnectFlags,
        ),
        (
            "will QoS 3",
            connect(b"MQTT", 4, 0x1C, &[0, 0, 0, 1, b't', 0, 0]),
            None,
            BIG,
            ConnectFlags,
        ),
        (
            "3.1.1 password without user name",
            connect(b"MQTT", 4, 0x42, &[0, 0, 0, 1, b'p']),
            None,
            BIG,
            ConnectFlags,
        ),
        (
            "CONNECT trailing bytes",
            connect(b"MQTT", 4, 0x02, &[0, 0, 9]),
            None,
            BIG,
            Truncated,
        ),
        // Properties.
        (
            "unknown property 0x7F",
            publish_v5_props(&[0x7F, 0]),
            V5,
            BIG,
            UnknownProperty,
        ),
        (
            "unknown property 0x00",
            publish_v5_props(&[0x00, 0]),
            V5,
            BIG,
            UnknownProperty,
        ),
        (
            "topic alias in CONNECT",
            connect_v5_props(&[0x23, 0, 1]),
            None,
            BIG,
            PropertyNotAllowed,
        ),
        (
            "will delay in PUBLISH",
            publish_v5_props(&[0x18, 0, 0, 0, 1]),
            V5,
            BIG,
            PropertyNotAllowed,
        ),
        (
            "subscription id in UNSUBSCRIBE",
            frame(0xA2, &[0, 1, 2, 0x0B, 1, 0, 1, b'a']),
            V5,
            BIG,
            PropertyNotAllowed,
        ),
        (
            "duplicate session expiry",
            connect_v5_props(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]),
            None,
            BIG,
            DuplicateProperty,
        ),
        (
            "duplicate topic alias",
            publish_v5_props(&[0x23, 0, 1, 0x23, 0, 2]),
            V5,
            BIG,
            DuplicateProperty,
        ),
        (
            "two subscription ids in SUBSCRIBE",
            frame(0x82, &[0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0]),
            V5,
            BIG,
            DuplicateProperty,
        ),
        (
            "receive maximum 0",
            connect_v5_props(&[0x21, 0, 0]),
            None,
            BIG,
            PropertyValue,
        ),
        (
            "maximum packet size 0",
            connect_v5_props(&[0x27, 0, 0, 0, 0]),
            None,
            BIG,
            PropertyValue,
        ),
        (
            "request problem information 2",
            connect_v5_props(&[0x17, 2]),
            None,
            BIG,
            PropertyValue,
        ),
        (
            "request response information 2",
            connect_v5_props(&[0x19, 2]),
            None,
            BIG,
            PropertyValue,
        ),
        (
            "payload format indicator 2",
            publish_v5_props(&[0x01, 2]),
            V5,
            BIG,
            PropertyValue,
        ),
        (
            "topic alias 0",
            publish_v5_props(&[0x23, 0, 0]),
            V5,
            BIG,
            PropertyValue,
        ),
        (
            "subscription id 0",
            frame(0x82, &[0, 1, 2, 0x0B, 0, 0, 1, b'a', 0]),
            V5,
            BIG,
            PropertyValue,
        ),
        (
            "subscription id of 5 bytes",
            publish_v5_props(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]),
            V5,
            BIG,
            PropertyValue,
        ),
        (
            "maximum QoS 2",
            connack_v5_props(&[0x24, 2]),
            V5,
            BIG,
            PropertyValue,
        ),
        (
            "retain available 2",
            connack_v5_props(&[0x25, 2]),
            V5,
            BIG,
            PropertyValue,
        ),
        (
            "wildcard available 2",
            connack_v5_props(&[0x28, 2]),
            V5,
            BIG,
            PropertyValue,
        ),
        (
            "subscription ids available 2",
            connack_v5_props(&[0x29, 2]),
            V5,
            BIG,
            PropertyValue,
        ),
        (
            "shared available 2",
            connack_v5_props(&[0x2A, 2]),
            V5,
            BIG,
            PropertyValue,
        ),
        (
            "property block past the end",
            frame(0x30, &[0, 1, b't', 9, 0x01]),
            V5,
            BIG,
            Truncated,
        ),
        (
            "property value past its block",
            publish_v5_props(&[0x02, 0, 0]),
            V5,
            BIG,
            Truncated,
        ),
        (
            "property length of 5 bytes",
            frame(0x30, &[0, 1, b't', 0x80, 0x80, 0x80, 0x80, 0x01]),
            V5,
            BIG,
            RemainingLength,
        ),
        // SUBSCRIBE / UNSUBSCRIBE.
        (
            "SUBSCRIBE with no filters (3.1.1)",
            frame(0x82, &[0, 1]),
            V311,
            BIG,
            EmptyOrBadFilters,
        ),
        (
            "SUBSCRIBE with no filters (5.0)",
            frame(0x82, &[0, 1, 0]),
            V5,
            BIG,
            EmptyOrBadFilters,
        ),
        (
            "UNSUBSCRIBE with no filters",
            frame(0xA2, &[0, 1]),
            V311,
            BIG,
            EmptyOrBadFilters,
        ),
        (
            "3.1.1 subscription option bit 2",
            frame(0x82, &[0, 1, 0, 1, b'a', 0x04]),
            V311,
            BIG,
            EmptyOrBadFilters,
        ),
        (
            "5.0 subscription option bit 6",
            frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x40]),
            V5,
            BIG,
            EmptyOrBadFilters,
        ),
        (
            "retain handling 3",
            frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x30]),
            V5,
            BIG,
            EmptyOrBadFilters,
        ),
        (
            "subscription QoS 3",
            frame(0x82, &[0, 1, 0, 1, b'a', 0x03]),
            V311,
            BIG,
            Qos,
        ),
        (
            "filter without options",
            frame(0x82, &[0, 1, 0, 1, b'a']),
            V311,
            BIG,
            Truncated,
        ),
        // Lengths and leftovers.
        ("PINGREQ with a body", frame(0xC0, &[0]), V5, BIG, Truncated),
        (
            "3.1.1 PUBACK with a reason",
            frame(0x40, &[0, 1, 0]),
            V311,
            BIG,
            Truncated,
        ),
        (
            "3.1.1 DISCONNECT with a body",
            frame(0xE0, &[0]),
            V311,
            BIG,
            Truncated,
        ),
        (
            "3.1.1 UNSUBACK with reasons",
            frame(0xB0, &[0, 1, 0]),
            V311,
            BIG,
            Truncated,
        ),
        (
            "3.1.1 CONNACK too long",
            frame(0x20, &[0, 0, 0]),
            V311,
            BIG,
            Truncated,
        ),
        (
            "5.0 CONNACK without properties",
            frame(0x20, &[0, 0]),
            V5,
            BIG,
            Truncated,
        ),
        (
            "PUBACK with one byte",
            frame(0x40, &[0]),
            V5,
            BIG,
            Truncated,
        ),
        (
            "CONNACK reserved flags",
            frame(0x20, &[0x02, 0]),
            V311,
            BIG,
            ReservedFlags,
        ),
        // Reason codes.
        (
            "PUBACK reason 0x05",
            frame(0x40, &[0, 1, 0x05]),
            V5,
            BIG,
            DecodeErrorKind::ReasonCode,
        ),
        (
            "PUBREL reason 0x10",
            frame(0x62, &[0, 1, 0x10]),
            V5,
            BIG,
            DecodeErrorKind::ReasonCode,
        ),
        (
            "3.1.1 CONNACK return code 6",
            frame(0x20, &[0, 6]),
            V311,
            BIG,
            DecodeErrorKind::ReasonCode,
        ),
        (
            "3.1.1 SUBACK return code 3",
            frame(0x90, &[0, 1, 3]),
            V311,
            BIG,
            DecodeErrorKind::ReasonCode,
        ),
        (
            "DISCONNECT reason 0x01",
            frame(0xE0, &[0x01]),
            V5,
            BIG,
            DecodeErrorKind::ReasonCode,
        ),
        (
            "AUTH reason 0x80",
            frame(0xF0, &[0x80, 0]),
            V5,
            BIG,
            DecodeErrorKind::ReasonCode,
        ),
    ]
}

#[test]
fn malformed_inputs_give_the_exact_error() {
    let mut failures = Vec::new();
    for (name, bytes, version, max, want) in cases() {
        let mut buf = BytesMut::from(&bytes[..]);
        match decode(&mut buf, version, max) {
            Err(e) if e.kind == want => {
                assert_eq!(&buf[..], &bytes[..], "{name}: error consumed bytes");
            }
            other => failures.push(format!("{name}: want {want:?}, got {other:?}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn well_formed_neighbours_of_the_table_decode() {
    // Each is one change away from a malformed case above.
    let ok: Vec<(&str, Vec<u8>, Option<ProtocolVersion>)> = vec![
        (
            "SUBSCRIBE flags 0010",
            frame(0x82, &[0, 1, 0, 1, b'a', 0]),
            V311,
        ),
        (
            "session expiry once",
            connect_v5_props(&[0x11, 0, 0, 0, 1]),
            None,
        ),
        ("receive maximum 1", connect_v5_props(&[0x21, 0, 1]), None),
        (
            "two subscription ids in PUBLISH",
            publish_v5_props(&[0x0B, 1, 0x0B, 2]),
            V5,
        ),
        (
            "two user properties",
            publish_v5_props(&[0x26, 0, 0, 0, 0, 0x26, 0, 0, 0, 0]),
            V5,
        ),
        (
            "5.0 password without user name",
            connect(b"MQTT", 5, 0x42, &[0, 0, 0, 0, 1, b'p']),
            None,
        ),
        (
            "empty 3.1.1 client id",
            connect(b"MQTT", 4, 0x00, &[0, 0]),
            None,
        ),
        ("AUTH on 5.0", frame(0xF0, &[0x18, 0]), V5),
        (
            "PUBACK with reason, no properties",
            frame(0x40, &[0, 1, 0x10]),
            V5,
        ),
        ("non-minimal remaining length", vec![0xC0, 0x80, 0x00], V311),
    ];
    for (name, bytes, version) in ok {
        let mut buf = BytesMut::from(&bytes[..]);
        let got = decode(&mut buf, version, BIG);
        assert!(matches!(got, Ok(Some(_))), "{name}: {got:?}");
        assert!(buf.is_empty(), "{name}: bytes left");
    }
}

#[test]
fn incomplete_inputs_are_none() {
    let partial: Vec<(&str, Vec<u8>, Option<ProtocolVersion>)> = vec![
        ("empty", vec![], None),
        ("first byte only", vec![0x30], V5),
        ("three continuation bytes", vec![0x30, 0x80, 0x80, 0x80], V5),
        ("header, no body", vec![0x30, 0x05], V311),
        ("CONNECT header only", vec![0x10, 0x0C], None),
    ];
    for (name, bytes, version) in partial {
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode(&mut buf, version, BIG), Ok(None), "{name}");
        assert_eq!(buf.len(), bytes.len(), "{name}");
    }
}

#[test]
fn connect_version_of_bad_connects() {
    assert_eq!(
        decode_connect_version(&connect(b"MQTT", 5, 0x01, &[])),
        Some(ProtocolVersion::V5)
    );
    assert_eq!(
        decode_connect_version(&connect(b"MQTT", 4, 0xFF, &[0, 9])),
        Some(ProtocolVersion::V311)
    );
    assert_eq!(
        decode_connect_version(&connect(b"MQTT", 3, 0x02, &[])),
        None
    );
    assert_eq!(
        decode_connect_version(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        None
    );
    assert_eq!(decode_connect_version(&[0xC0, 0x00]), None);
}
