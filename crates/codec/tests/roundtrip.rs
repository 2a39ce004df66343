//! Encode → decode gives back the same packet, for every packet type and both versions;
//! `encoded_len` is exact; partial input is `Ok(None)` until the last byte arrives.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::prelude::*;
use tern_codec::*;

const MAX: usize = MAX_REMAINING_LENGTH + 5;

fn version_for_decode(p: &Packet, v: ProtocolVersion) -> Option<ProtocolVersion> {
    // A CONNECT is also the first packet of a connection.
    if matches!(p, Packet::Connect(_)) {
        None
    } else {
        Some(v)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_identity((v, packet) in versioned_packet()) {
        let len = encoded_len(&packet, v).unwrap();
        let mut buf = BytesMut::new();
        encode(&packet, v, &mut buf).unwrap();
        prop_assert_eq!(buf.len(), len);

        // A second packet behind it must stay in the buffer.
        encode(&Packet::PingReq, v, &mut buf).unwrap();
        let decoded = decode(&mut buf, version_for_decode(&packet, v), MAX).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(&packet));
        prop_assert_eq!(&buf[..], &[0xC0, 0x00][..]);

        // Any connection state accepts it too (CONNECT carries its own version).
        let mut again = BytesMut::from(&encode_vec(&packet, v)[..]);
        prop_assert_eq!(decode(&mut again, Some(v), MAX).unwrap(), Some(packet));
        prop_assert!(again.is_empty());
    }

    #[test]
    fn byte_at_a_time_is_incomplete_until_the_end((v, packet) in versioned_packet()) {
        let bytes = encode_vec(&packet, v);
        let version = version_for_decode(&packet, v);
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = decode(&mut buf, version, MAX).unwrap();
            if i + 1 < bytes.len() {
                prop_assert_eq!(got, None);
                prop_assert_eq!(buf.len(), i + 1, "nothing consumed");
            } else {
                prop_assert_eq!(got, Some(packet.clone()));
                prop_assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn max_packet_size_is_inclusive((v, packet) in versioned_packet()) {
        let bytes = encode_vec(&packet, v);
        let version = version_for_decode(&packet, v);
        let mut exact = BytesMut::from(&bytes[..]);
        prop_assert!(decode(&mut exact, version, bytes.len()).unwrap().is_some());
        // One byte too small fails on the fixed header alone.
        let header = &bytes[..bytes.len().min(5)];
        let mut short = BytesMut::from(header);
        let e = decode(&mut short, version, bytes.len() - 1).unwrap_err();
        prop_assert_eq!(e.kind, DecodeErrorKind::PacketTooLarge);
    }
}

#[test]
fn payloads_are_zero_copy() {
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: 7,
        payload: Bytes::from_static(b"hello world"),
        properties: PublishProperties {
            correlation_data: Some(Bytes::from_static(b"corr")),
            ..Default::default()
        },
    });
    let mut buf = BytesMut::new();
    encode(&p, V5, &mut buf).unwrap();
    let base = buf.as_ptr() as usize;
    let end = base + buf.len();
    let Some(Packet::Publish(got)) = decode(&mut buf, Some(V5), MAX).unwrap() else {
        panic!("not a publish")
    };
    let inside = |b: &Bytes| (base..end).contains(&(b.as_ptr() as usize));
    assert!(inside(&got.payload));
    assert!(inside(got.properties.correlation_data.as_ref().unwrap()));
}

#[test]
fn v5_short_forms() {
    let ack = PubResponse::new(9);
    assert_eq!(
        encode_vec(&Packet::PubAck(ack.clone()), V5),
        [0x40, 0x02, 0x00, 0x09]
    );
    let mut err = ack.clone();
    err.reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
    assert_eq!(
        encode_vec(&Packet::PubComp(err), V5),
        [0x70, 0x03, 0x00, 0x09, 0x92]
    );
    assert_eq!(
        encode_vec(&Packet::PubRel(ack.clone()), V5),
        [0x62, 0x02, 0x00, 0x09]
    );
    assert_eq!(
        encode_vec(&Packet::Disconnect(Disconnect::default()), V5),
        [0xE0, 0x00]
    );
    assert_eq!(encode_vec(&Packet::Auth(Auth::default()), V5), [0xF0, 0x00]);
    let d = Disconnect {
        reason: ReasonCode::SESSION_TAKEN_OVER,
        ..Default::default()
    };
    assert_eq!(
        encode_vec(&Packet::Disconnect(d), V5),
        [0xE0, 0x02, 0x8E, 0x00]
    );

    // Decoding the short and long forms.
    let cases: &[(&[u8], Packet)] = &[
        (&[0x40, 0x02, 0x00, 0x09], Packet::PubAck(ack.clone())),
        (&[0x50, 0x03, 0x00, 0x09, 0x00], Packet::PubRec(ack.clone())),
        (
            &[0x50, 0x04, 0x00, 0x09, 0x00, 0x00],
            Packet::PubRec(ack.clone()),
        ),
        (&[0xE0, 0x00], Packet::Disconnect(Disconnect::default())),
        (
            &[0xE0, 0x01, 0x04],
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::DISCONNECT_WITH_WILL,
                ..Default::default()
            }),
        ),
        (&[0xF0, 0x00], Packet::Auth(Auth::default())),
        (
            &[0xF0, 0x01, 0x18],
            Packet::Auth(Auth {
                reason: ReasonCode::CONTINUE_AUTHENTICATION,
                ..Default::default()
            }),
        ),
    ];
    for (bytes, want) in cases {
        let mut buf = BytesMut::from(*bytes);
        assert_eq!(
            decode(&mut buf, Some(V5), MAX).unwrap().as_ref(),
            Some(want),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn v311_specifics() {
    // CONNACK return codes both ways.
    for (rc, v5) in [
        (0u8, 0x00u8),
        (1, 0x84),
        (2, 0x85),
        (3, 0x88),
        (4, 0x86),
        (5, 0x87),
    ] {
        let mut buf = BytesMut::from(&[0x20, 0x02, 0x00, rc][..]);
        let Some(Packet::ConnAck(c)) = decode(&mut buf, Some(V311), MAX).unwrap() else {
            panic!("not a connack")
        };
        assert_eq!(c.reason, ReasonCode(v5));
        assert_eq!(
            encode_vec(&Packet::ConnAck(c), V311),
            [0x20, 0x02, 0x00, rc]
        );
    }
    let banned = ConnAck {
        session_present: false,
        reason: ReasonCode::BANNED,
        properties: ConnAckProperties::default(),
    };
    assert_eq!(
        encode_vec(&Packet::ConnAck(banned), V311),
        [0x20, 0x02, 0x00, 0x05]
    );

    // SUBACK: any error is 0x80.
    let s = SubAck {
        packet_id: 1,
        reasons: vec![
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::NOT_AUTHORIZED,
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
        ],
        properties: ReasonProperties {
            reason_string: Some("x".into()),
            ..Default::default()
        },
    };
    assert_eq!(
        encode_vec(&Packet::SubAck(s), V311),
        [0x90, 0x06, 0, 1, 2, 0x80, 0, 0x80]
    );

    // UNSUBACK has no reasons, DISCONNECT no body, acks no reason.
    let u = UnsubAck {
        packet_id: 3,
        reasons: vec![ReasonCode::SUCCESS],
        properties: ReasonProperties::default(),
    };
    assert_eq!(encode_vec(&Packet::UnsubAck(u), V311), [0xB0, 0x02, 0, 3]);
    let d = Disconnect {
        reason: ReasonCode::SERVER_SHUTTING_DOWN,
        ..Default::default()
    };
    assert_eq!(encode_vec(&Packet::Disconnect(d), V311), [0xE0, 0x00]);
    let mut a = PubResponse::new(4);
    a.reason = ReasonCode::QUOTA_EXCEEDED;
    assert_eq!(encode_vec(&Packet::PubAck(a), V311), [0x40, 0x02, 0, 4]);

    // AUTH does not exist.
    let mut buf = BytesMut::from(&b"keep"[..]);
    assert_eq!(
        encode(&Packet::Auth(Auth::default()), V311, &mut buf),
        Err(EncodeError::NotInVersion("AUTH"))
    );
    assert_eq!(&buf[..], b"keep");

    // Empty client id is the broker's business.
    let c = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0];
    let mut buf = BytesMut::from(&c[..]);
    let Some(Packet::Connect(c)) = decode(&mut buf, None, MAX).unwrap() else {
        panic!()
    };
    assert_eq!(c.client_id, "");
    assert_eq!(c.protocol, V311);
    assert!(c.clean_start);
}

#[test]
fn qos0_publish_never_carries_dup() {
    let p = Publish {
        dup: true,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: "t".into(),
        packet_id: 5,
        payload: Bytes::new(),
        properties: PublishProperties::default(),
    };
    let bytes = encode_vec(&Packet::Publish(p), V311);
    assert_eq!(bytes, [0x31, 0x03, 0, 1, b't']);
}

#[test]
fn encode_errors_append_nothing() {
    let long = "x".repeat(65_536);
    let mut buf = BytesMut::from(&b"ab"[..]);
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: long.clone(),
        packet_id: 0,
        payload: Bytes::new(),
        properties: PublishProperties::default(),
    });
    assert_eq!(encode(&p, V311, &mut buf), Err(EncodeError::FieldTooLong));
    assert_eq!(encoded_len(&p, V311), Err(EncodeError::FieldTooLong));
    assert_eq!(&buf[..], b"ab");

    // A too-long user property value, nested in a property block.
    let mut d = Disconnect::default();
    d.properties.user_properties.push(("k".into(), long));
    assert_eq!(
        encode(&Packet::Disconnect(d.clone()), V5, &mut buf),
        Err(EncodeError::FieldTooLong)
    );
    // ...which 3.1.1 does not write at all.
    assert_eq!(encoded_len(&Packet::Disconnect(d), V311), Ok(2));

    // Subscription identifiers beyond the variable byte integer range.
    let mut s = Subscribe {
        packet_id: 1,
        filters: vec![],
        properties: Default::default(),
    };
    s.properties.subscription_identifier = Some(268_435_456);
    assert_eq!(
        encode(&Packet::Subscribe(s), V5, &mut buf),
        Err(EncodeError::FieldTooLong)
    );

    // Password without user name on 3.1.1.
    let c = Connect {
        protocol: V311,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"pw")),
        properties: ConnectProperties::default(),
    };
    assert!(matches!(
        encode(&Packet::Connect(c.clone()), V311, &mut buf),
        Err(EncodeError::NotInVersion(_))
    ));
    assert!(encoded_len(&Packet::Connect(c), V5).is_ok());
    assert_eq!(&buf[..], b"ab");

    // Remaining length beyond 268435455. The zeroed allocation is never touched.
    let huge = Bytes::from(vec![0u8; MAX_REMAINING_LENGTH]);
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 0,
        payload: huge,
        properties: PublishProperties::default(),
    });
    assert_eq!(encoded_len(&p, V311), Err(EncodeError::PacketTooLarge));
    assert_eq!(encode(&p, V311, &mut buf), Err(EncodeError::PacketTooLarge));
    assert_eq!(&buf[..], b"ab");
}

#[test]
fn remaining_length_boundaries() {
    // Payload sizes around the varint byte boundaries.
    for n in [
        0usize, 120, 121, 122, 16_375, 16_376, 16_377, 2_097_140, 2_097_148, 2_097_150,
    ] {
        let p = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "abcd".into(),
            packet_id: 0,
            payload: Bytes::from(vec![7u8; n]),
            properties: PublishProperties::default(),
        });
        for v in [V311, V5] {
            let mut buf = BytesMut::new();
            encode(&p, v, &mut buf).unwrap();
            assert_eq!(buf.len(), encoded_len(&p, v).unwrap());
            assert_eq!(decode(&mut buf, Some(v), MAX).unwrap(), Some(p.clone()));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The broker's by-reference PUBLISH encoder writes exactly what the owned one does.
    #[test]
    fn encode_publish_by_reference_matches_encode(
        (v, publish) in prop_oneof![Just(ProtocolVersion::V311), Just(ProtocolVersion::V5)]
            .prop_flat_map(|v| (Just(v), common::publish(v)))
    ) {
        let mut owned = BytesMut::new();
        encode(&Packet::Publish(publish.clone()), v, &mut owned).unwrap();
        let mut by_ref = BytesMut::new();
        let view = PublishRef::from(&publish);
        let written = encode_publish(&view, v, &mut by_ref).unwrap();
        prop_assert_eq!(&owned[..], &by_ref[..]);
        prop_assert_eq!(written, owned.len());
        prop_assert_eq!(publish_encoded_len(&view, v).unwrap(), owned.len());
    }
}
