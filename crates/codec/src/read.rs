//! Reading each packet's variable header and payload from a complete frame whose fixed
//! header has already been checked by [`crate::decode`].

use bytes::Bytes;

use crate::primitives::{err, Reader};
use crate::{
    properties, Auth, ConnAck, Connect, DecodeError, DecodeErrorKind, Disconnect, Packet,
    ProtocolVersion, PubResponse, Publish, QoS, ReasonCode, ReasonProperties, RetainHandling,
    SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};

use ProtocolVersion::{V311, V5};

/// Reads the packet in `frame` (fixed header included; its body starts at `start`).
pub(crate) fn packet(
    byte1: u8,
    frame: &Bytes,
    start: usize,
    version: Option<ProtocolVersion>,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(frame, start);
    let kind = byte1 >> 4;
    if kind == 1 {
        return connect(&mut r).map(Packet::Connect);
    }
    let Some(v) = version else {
        return Err(err(
            DecodeErrorKind::FirstPacketNotConnect,
            "first packet is not CONNECT",
        ));
    };
    let r = &mut r;
    Ok(match kind {
        2 => Packet::ConnAck(connack(r, v)?),
        3 => Packet::Publish(publish(byte1, r, v)?),
        4 => Packet::PubAck(pub_response(r, v, AckKind::PubAck)?),
        5 => Packet::PubRec(pub_response(r, v, AckKind::PubAck)?),
        6 => Packet::PubRel(pub_response(r, v, AckKind::PubRel)?),
        7 => Packet::PubComp(pub_response(r, v, AckKind::PubRel)?),
        8 => Packet::Subscribe(subscribe(r, v)?),
        9 => Packet::SubAck(suback(r, v)?),
        10 => Packet::Unsubscribe(unsubscribe(r, v)?),
        11 => Packet::UnsubAck(unsuback(r, v)?),
        12 => {
            r.finish("PINGREQ has a body")?;
            Packet::PingReq
        }
        13 => {
            r.finish("PINGRESP has a body")?;
            Packet::PingResp
        }
        14 => Packet::Disconnect(disconnect(r, v)?),
        15 if v == V5 => Packet::Auth(auth(r)?),
        _ => return Err(err(DecodeErrorKind::PacketType, "reserved packet type")),
    })
}

fn packet_id(r: &mut Reader<'_>) -> Result<u16, DecodeError> {
    match r.u16("packet identifier")? {
        0 => Err(err(DecodeErrorKind::PacketId, "packet identifier is 0")),
        id => Ok(id),
    }
}

fn bad_reason() -> DecodeError {
    err(
        DecodeErrorKind::ReasonCode,
        "reason code not valid for this packet",
    )
}

fn reason(code: u8, valid: fn(u8) -> bool) -> Result<ReasonCode, DecodeError> {
    if valid(code) {
        Ok(ReasonCode(code))
    } else {
        Err(bad_reason())
    }
}

fn connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let name = r.raw_field("protocol name")?;
    if name != b"MQTT" {
        return Err(err(
            DecodeErrorKind::ProtocolName,
            "protocol name is not MQTT",
        ));
    }
    let protocol = match r.u8("protocol level")? {
        4 => V311,
        5 => V5,
        _ => {
            return Err(err(
                DecodeErrorKind::ProtocolVersion,
                "protocol level is not 4 or 5",
            ))
        }
    };
    let flags = r.u8("connect flags")?;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if flags & 0x01 != 0 {
        return Err(err(
            DecodeErrorKind::ConnectFlags,
            "reserved connect flag is set",
        ));
    }
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(err(
            DecodeErrorKind::ConnectFlags,
            "will QoS or retain without will flag",
        ));
    }
    let Some(will_qos) = QoS::from_u8(will_qos) else {
        return Err(err(DecodeErrorKind::ConnectFlags, "will QoS 3"));
    };
    if protocol == V311 && has_password && !has_username {
        return Err(err(
            DecodeErrorKind::ConnectFlags,
            "password flag without user name flag",
        ));
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if protocol == V5 {
        properties::read_connect(r)?
    } else {
        Default::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = if protocol == V5 {
            properties::read_will(r)?
        } else {
            Default::default()
        };
        let topic = r.string("will topic")?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary("password")?)
    } else {
        None
    };
    r.finish("bytes after the last CONNECT field")?;
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn connack(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("connack flags")?;
    if flags & 0xFE != 0 {
        return Err(err(
            DecodeErrorKind::ReservedFlags,
            "reserved CONNACK flags are set",
        ));
    }
    let code = r.u8("connack reason code")?;
    let (reason, properties) = match v {
        V311 => {
            let reason = match code {
                0 => ReasonCode::SUCCESS,
                1 => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
                2 => ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                3 => ReasonCode::SERVER_UNAVAILABLE,
                4 => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                5 => ReasonCode::NOT_AUTHORIZED,
                _ => return Err(bad_reason()),
            };
            (reason, Default::default())
        }
        V5 => (reason(code, valid_connack)?, properties::read_connack(r)?),
    };
    r.finish("bytes after the last CONNACK field")?;
    Ok(ConnAck {
        session_present: flags & 0x01 != 0,
        reason,
        properties,
    })
}

fn publish(byte1: u8, r: &mut Reader<'_>, v: ProtocolVersion) -> Result<Publish, DecodeError> {
    let Some(qos) = QoS::from_u8((byte1 >> 1) & 0b11) else {
        return Err(err(DecodeErrorKind::Qos, "PUBLISH with QoS 3"));
    };
    let topic = r.string("topic name")?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = if v == V5 {
        properties::read_publish(r)?
    } else {
        Default::default()
    };
    Ok(Publish {
        dup: byte1 & 0b1000 != 0,
        qos,
        retain: byte1 & 0b0001 != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

#[derive(Clone, Copy)]
enum AckKind {
    /// PUBACK and PUBREC.
    PubAck,
    /// PUBREL and PUBCOMP.
    PubRel,
}

fn pub_response(
    r: &mut Reader<'_>,
    v: ProtocolVersion,
    kind: AckKind,
) -> Result<PubResponse, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut out = PubResponse::new(packet_id);
    if v == V5 && !r.is_empty() {
        let valid = match kind {
            AckKind::PubAck => valid_puback,
            AckKind::PubRel => valid_pubrel,
        };
        out.reason = reason(r.u8("reason code")?, valid)?;
        if !r.is_empty() {
            out.properties = properties::read_reason(r)?;
        }
    }
    r.finish("bytes after the last field of an acknowledgement")?;
    Ok(out)
}

fn subscription_options(o: u8, v: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
    let bad = |detail| err(DecodeErrorKind::EmptyOrBadFilters, detail);
    let Some(qos) = QoS::from_u8(o & 0b11) else {
        return Err(err(DecodeErrorKind::Qos, "subscription with QoS 3"));
    };
    if v == V311 {
        if o & 0xFC != 0 {
            return Err(bad("reserved subscription option bits are set"));
        }
        return Ok(SubscriptionOptions {
            qos,
            ..Default::default()
        });
    }
    if o & 0xC0 != 0 {
        return Err(bad("reserved subscription option bits are set"));
    }
    let retain_handling = match (o >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::DoNotSend,
        _ => return Err(bad("retain handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: o & 0x04 != 0,
        retain_as_published: o & 0x08 != 0,
        retain_handling,
    })
}

fn subscribe(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if v == V5 {
        properties::read_subscribe(r)?
    } else {
        Default::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("topic filter")?;
        let options = subscription_options(r.u8("subscription options")?, v)?;
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(err(
            DecodeErrorKind::EmptyOrBadFilters,
            "SUBSCRIBE without topic filters",
        ));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn reason_list(r: &mut Reader<'_>, valid: fn(u8) -> bool) -> Result<Vec<ReasonCode>, DecodeError> {
    let mut out = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        out.push(reason(r.u8("reason code")?, valid)?);
    }
    Ok(out)
}

fn suback(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let (properties, valid): (ReasonProperties, fn(u8) -> bool) = match v {
        V311 => (Default::default(), valid_suback_v311),
        V5 => (properties::read_reason(r)?, valid_suback),
    };
    let reasons = reason_list(r, valid)?;
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

fn unsubscribe(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let user_properties = if v == V5 {
        properties::read_unsubscribe(r)?
    } else {
        Default::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(err(
            DecodeErrorKind::EmptyOrBadFilters,
            "UNSUBSCRIBE without topic filters",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        user_properties,
    })
}

fn unsuback(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let mut out = UnsubAck {
        packet_id,
        reasons: Vec::new(),
        properties: Default::default(),
    };
    if v == V5 {
        out.properties = properties::read_reason(r)?;
        out.reasons = reason_list(r, valid_unsuback)?;
    }
    r.finish("bytes after the last UNSUBACK field")?;
    Ok(out)
}

fn disconnect(r: &mut Reader<'_>, v: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    let mut out = Disconnect::default();
    if v == V5 && !r.is_empty() {
        out.reason = reason(r.u8("reason code")?, valid_disconnect)?;
        if !r.is_empty() {
            out.properties = properties::read_disconnect(r)?;
        }
    }
    r.finish("bytes after the last DISCONNECT field")?;
    Ok(out)
}

fn auth(r: &mut Reader<'_>) -> Result<Auth, DecodeError> {
    let mut out = Auth::default();
    if !r.is_empty() {
        out.reason = reason(r.u8("reason code")?, valid_auth)?;
        if !r.is_empty() {
            out.properties = properties::read_auth(r)?;
        }
    }
    r.finish("bytes after the last AUTH field")?;
    Ok(out)
}

// The reason codes MQTT 5 allows in each packet.

fn valid_connack(c: u8) -> bool {
    matches!(
        c,
        0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
    )
}

fn valid_puback(c: u8) -> bool {
    matches!(
        c,
        0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
    )
}

fn valid_pubrel(c: u8) -> bool {
    matches!(c, 0x00 | 0x92)
}

fn valid_suback(c: u8) -> bool {
    matches!(
        c,
        0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
    )
}

fn valid_suback_v311(c: u8) -> bool {
    matches!(c, 0x00..=0x02 | 0x80)
}

fn valid_unsuback(c: u8) -> bool {
    matches!(c, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
}

fn valid_disconnect(c: u8) -> bool {
    matches!(
        c,
        0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
    )
}

fn valid_auth(c: u8) -> bool {
    matches!(c, 0x00 | 0x18 | 0x19)
}

/// The reason codes valid in each v5 packet, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn valid_reasons(name: &str) -> Vec<u8> {
    let f: fn(u8) -> bool = match name {
        "connack" => valid_connack,
        "puback" => valid_puback,
        "pubrel" => valid_pubrel,
        "suback" => valid_suback,
        "unsuback" => valid_unsuback,
        "disconnect" => valid_disconnect,
        "auth" => valid_auth,
        _ => return Vec::new(),
    };
    (0..=255u8).filter(|&c| f(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_tables_match_the_spec() {
        assert_eq!(
            valid_reasons("connack"),
            vec![
                0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
                0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F
            ]
        );
        assert_eq!(
            valid_reasons("disconnect"),
            vec![
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93,
                0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1,
                0xA2
            ]
        );
        assert_eq!(valid_reasons("pubrel"), vec![0x00, 0x92]);
        assert_eq!(valid_reasons("auth"), vec![0x00, 0x18, 0x19]);
    }
}
