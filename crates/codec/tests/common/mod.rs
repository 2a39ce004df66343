//! Proptest strategies for every packet, per protocol version. For 3.1.1 only the fields
//! 3.1.1 carries are set; for 5.0 every property is populated at random.
#![allow(dead_code)]

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;
use tern_codec::*;

pub const V311: ProtocolVersion = ProtocolVersion::V311;
pub const V5: ProtocolVersion = ProtocolVersion::V5;

pub const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
pub const CONNACK_V311: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
pub const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
pub const PUBREL: &[u8] = &[0x00, 0x92];
pub const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
pub const SUBACK_V311: &[u8] = &[0x00, 0x01, 0x02, 0x80];
pub const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
pub const DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
pub const AUTH: &[u8] = &[0x00, 0x18, 0x19];

/// Strings: mostly topic-like ASCII, sometimes any non-control Unicode (never U+0000).
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z0-9/+#$_ -]{0,16}", 1 => "\\PC{0,8}"]
}

pub fn bin() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

pub fn users() -> impl Strategy<Value = UserProperties> {
    vec((text(), text()), 0..3)
}

pub fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

pub fn reason(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    select(codes).prop_map(ReasonCode)
}

pub fn flag() -> impl Strategy<Value = u8> {
    0u8..=1
}

pub fn pkid() -> impl Strategy<Value = u16> {
    1u16..=u16::MAX
}

pub fn sub_id() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..=200, 1u32..=268_435_455]
}

fn connect_props() -> impl Strategy<Value = ConnectProperties> {
    (
        of(any::<u32>()),
        of(1u16..),
        of(1u32..),
        of(any::<u16>()),
        of(flag()),
        of(flag()),
        users(),
        of(text()),
        of(bin()),
    )
        .prop_map(
            |(se, rm, mps, tam, rri, rpi, up, am, ad)| ConnectProperties {
                session_expiry_interval: se,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: up,
                authentication_method: am,
                authentication_data: ad,
            },
        )
}

fn will_props() -> impl Strategy<Value = WillProperties> {
    (
        of(any::<u32>()),
        of(flag()),
        of(any::<u32>()),
        of(text()),
        of(text()),
        of(bin()),
        users(),
    )
        .prop_map(|(wd, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wd,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

fn will(v: ProtocolVersion) -> impl Strategy<Value = Will> {
    let props = if v == V5 {
        will_props().boxed()
    } else {
        Just(WillProperties::default()).boxed()
    };
    (text(), bin(), qos(), any::<bool>(), props).prop_map(
        |(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    )
}

pub fn connect(v: ProtocolVersion) -> impl Strategy<Value = Connect> {
    let props = if v == V5 {
        connect_props().boxed()
    } else {
        Just(ConnectProperties::default()).boxed()
    };
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        of(will(v)),
        of(text()),
        of(bin()),
        props,
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.1.1 forbids a password without a user name.
                let password = if v == V311 && username.is_none() {
                    None
                } else {
                    password
                };
                Connect {
                    protocol: v,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

fn connack_props() -> impl Strategy<Value = ConnAckProperties> {
    (
        (
            of(any::<u32>()),
            of(1u16..),
            of(flag()),
            of(flag()),
            of(1u32..),
            of(text()),
        ),
        (
            of(any::<u16>()),
            of(text()),
            users(),
            of(flag()),
            of(flag()),
            of(flag()),
        ),
        (
            of(any::<u16>()),
            of(text()),
            of(text()),
            of(text()),
            of(bin()),
        ),
    )
        .prop_map(
            |((se, rm, mq, ra, mps, aci), (tam, rs, up, wsa, sia, ssa), (ska, ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: se,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        )
}

pub fn connack(v: ProtocolVersion) -> impl Strategy<Value = ConnAck> {
    let (codes, props) = if v == V5 {
        (CONNACK_V5, connack_props().boxed())
    } else {
        (CONNACK_V311, Just(ConnAckProperties::default()).boxed())
    };
    (any::<bool>(), reason(codes), props).prop_map(|(session_present, reason, properties)| {
        ConnAck {
            session_present,
            reason,
            properties,
        }
    })
}

pub fn publish_props() -> impl Strategy<Value = PublishProperties> {
    (
        of(flag()),
        of(any::<u32>()),
        of(1u16..),
        of(text()),
        of(bin()),
        users(),
        vec(sub_id(), 0..3),
        of(text()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, si, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
        })
}

pub fn publish(v: ProtocolVersion) -> impl Strategy<Value = Publish> {
    let props = if v == V5 {
        publish_props().boxed()
    } else {
        Just(PublishProperties::default()).boxed()
    };
    let payload = prop_oneof![4 => bin(), 1 => vec(any::<u8>(), 100..400).prop_map(Bytes::from)];
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        text(),
        pkid(),
        payload,
        props,
    )
        .prop_map(|(dup, qos, retain, topic, id, payload, properties)| {
            let qos0 = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: if qos0 { 0 } else { id },
                payload,
                properties,
            }
        })
}

fn reason_props(v: ProtocolVersion) -> BoxedStrategy<ReasonProperties> {
    if v == V5 {
        (of(text()), users())
            .prop_map(|(reason_string, user_properties)| ReasonProperties {
                reason_string,
                user_properties,
            })
            .boxed()
    } else {
        Just(ReasonProperties::default()).boxed()
    }
}

pub fn pub_response(
    v: ProtocolVersion,
    codes: &'static [u8],
) -> impl Strategy<Value = PubResponse> {
    let codes = if v == V5 { codes } else { &[0x00] };
    // Half the time the short forms (success / no properties).
    let props = prop_oneof![Just(ReasonProperties::default()), reason_props(v)];
    (pkid(), reason(codes), props).prop_map(|(packet_id, reason, properties)| PubResponse {
        packet_id,
        reason,
        properties,
    })
}

fn sub_options(v: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let rh = select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendIfNew,
        RetainHandling::DoNotSend,
    ]);
    (qos(), any::<bool>(), any::<bool>(), rh).prop_map(move |(qos, nl, rap, rh)| {
        if v == V5 {
            SubscriptionOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh,
            }
        } else {
            SubscriptionOptions {
                qos,
                ..Default::default()
            }
        }
    })
}

pub fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Subscribe> {
    let props = if v == V5 {
        (of(sub_id()), users())
            .prop_map(
                |(subscription_identifier, user_properties)| SubscribeProperties {
                    subscription_identifier,
                    user_properties,
                },
            )
            .boxed()
    } else {
        Just(SubscribeProperties::default()).boxed()
    };
    let filters = vec(
        (text(), sub_options(v)).prop_map(|(filter, options)| SubscribeFilter { filter, options }),
        1..4,
    );
    (pkid(), filters, props).prop_map(|(packet_id, filters, properties)| Subscribe {
        packet_id,
        filters,
        properties,
    })
}

pub fn suback(v: ProtocolVersion) -> impl Strategy<Value = SubAck> {
    let codes = if v == V5 { SUBACK_V5 } else { SUBACK_V311 };
    (pkid(), vec(reason(codes), 0..5), reason_props(v)).prop_map(
        |(packet_id, reasons, properties)| SubAck {
            packet_id,
            reasons,
            properties,
        },
    )
}

pub fn unsubscribe(v: ProtocolVersion) -> impl Strategy<Value = Unsubscribe> {
    let users = if v == V5 {
        users().boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (pkid(), vec(text(), 1..4), users).prop_map(|(packet_id, filters, user_properties)| {
        Unsubscribe {
            packet_id,
            filters,
            user_properties,
        }
    })
}

pub fn unsuback(v: ProtocolVersion) -> impl Strategy<Value = UnsubAck> {
    let reasons = if v == V5 {
        vec(reason(UNSUBACK), 0..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (pkid(), reasons, reason_props(v)).prop_map(|(packet_id, reasons, properties)| UnsubAck {
        packet_id,
        reasons,
        properties,
    })
}

pub fn disconnect(v: ProtocolVersion) -> BoxedStrategy<Disconnect> {
    if v == V311 {
        return Just(Disconnect::default()).boxed();
    }
    let props = (of(any::<u32>()), of(text()), users(), of(text())).prop_map(|(se, rs, up, sr)| {
        DisconnectProperties {
            session_expiry_interval: se,
            reason_string: rs,
            user_properties: up,
            server_reference: sr,
        }
    });
    let props = prop_oneof![Just(DisconnectProperties::default()), props];
    (reason(DISCONNECT), props)
        .prop_map(|(reason, properties)| Disconnect { reason, properties })
        .boxed()
}

pub fn auth() -> impl Strategy<Value = Auth> {
    let props =
        (of(text()), of(bin()), of(text()), users()).prop_map(|(am, ad, rs, up)| AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: up,
        });
    let props = prop_oneof![Just(AuthProperties::default()), props];
    (reason(AUTH), props).prop_map(|(reason, properties)| Auth { reason, properties })
}

/// Any packet `v` can carry.
pub fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let common = prop_oneof![
        connect(v).prop_map(Packet::Connect),
        connack(v).prop_map(Packet::ConnAck),
        publish(v).prop_map(Packet::Publish),
        pub_response(v, PUBACK).prop_map(Packet::PubAck),
        pub_response(v, PUBACK).prop_map(Packet::PubRec),
        pub_response(v, PUBREL).prop_map(Packet::PubRel),
        pub_response(v, PUBREL).prop_map(Packet::PubComp),
        subscribe(v).prop_map(Packet::Subscribe),
        suback(v).prop_map(Packet::SubAck),
        unsubscribe(v).prop_map(Packet::Unsubscribe),
        unsuback(v).prop_map(Packet::UnsubAck),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        disconnect(v).prop_map(Packet::Disconnect),
    ];
    if v == V5 {
        prop_oneof![14 => common, 1 => auth().prop_map(Packet::Auth)].boxed()
    } else {
        common.boxed()
    }
}

/// A version and a packet for it.
pub fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    prop_oneof![
        packet(V311).prop_map(|p| (V311, p)),
        packet(V5).prop_map(|p| (V5, p)),
    ]
}

pub fn encode_vec(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    encode(p, v, &mut buf).expect("encode");
    buf.to_vec()
}
