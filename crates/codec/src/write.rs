//! Describing each packet's first byte and body to a [`Sink`]: once, generically, so
//! that measuring (for the remaining length and `encoded_len`) and writing agree.

use crate::primitives::Sink;
use crate::properties::{put_block, Props, UserOnly};
use crate::{
    Auth, ConnAck, Connect, Disconnect, EncodeError, Packet, ProtocolVersion, PubResponse, Publish,
    PublishRef, QoS, ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe,
};

use ProtocolVersion::{V311, V5};

/// The fixed header's first byte: packet type and flags.
pub(crate) fn first_byte(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish_first_byte(&PublishRef::from(p)),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Describes the packet's body (everything after the remaining length).
pub(crate) fn body<S: Sink>(packet: &Packet, v: ProtocolVersion, s: &mut S) {
    match packet {
        Packet::Connect(p) => connect(p, v, s),
        Packet::ConnAck(p) => connack(p, v, s),
        Packet::Publish(p) => publish(p, v, s),
        Packet::PubAck(p) | Packet::PubRec(p) | Packet::PubRel(p) | Packet::PubComp(p) => {
            pub_response(p, v, s)
        }
        Packet::Subscribe(p) => subscribe(p, v, s),
        Packet::SubAck(p) => suback(p, v, s),
        Packet::Unsubscribe(p) => unsubscribe(p, v, s),
        Packet::UnsubAck(p) => unsuback(p, v, s),
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(p) => disconnect(p, v, s),
        Packet::Auth(p) => auth(p, v, s),
    }
}

fn connect<S: Sink>(p: &Connect, v: ProtocolVersion, s: &mut S) {
    if v == V311 && p.password.is_some() && p.username.is_none() {
        s.fail(EncodeError::NotInVersion("a password without a user name"));
    }
    let mut flags = u8::from(p.clean_start) << 1;
    if let Some(w) = &p.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    if p.password.is_some() {
        flags |= 0x40;
    }
    if p.username.is_some() {
        flags |= 0x80;
    }
    s.field(b"MQTT");
    s.u8(v.level());
    s.u8(flags);
    s.u16(p.keep_alive);
    if v == V5 {
        put_block(s, &p.properties);
    }
    s.field(p.client_id.as_bytes());
    if let Some(w) = &p.will {
        if v == V5 {
            put_block(s, &w.properties);
        }
        s.field(w.topic.as_bytes());
        s.field(&w.payload);
    }
    if let Some(u) = &p.username {
        s.field(u.as_bytes());
    }
    if let Some(pw) = &p.password {
        s.field(pw);
    }
}

fn connack<S: Sink>(p: &ConnAck, v: ProtocolVersion, s: &mut S) {
    s.u8(u8::from(p.session_present));
    match v {
        V311 => s.u8(p.reason.to_v311_connack()),
        V5 => {
            s.u8(p.reason.0);
            put_block(s, &p.properties);
        }
    }
}

fn publish<S: Sink>(p: &Publish, v: ProtocolVersion, s: &mut S) {
    publish_ref(&PublishRef::from(p), v, s);
}

/// The first byte of a PUBLISH.
pub(crate) fn publish_first_byte(p: &PublishRef<'_>) -> u8 {
    // DUP must be 0 on QoS 0 [MQTT-3.3.1-2]; a message downgraded to QoS 0 may still carry
    // it, so it is dropped here.
    let dup = p.dup && p.qos != QoS::AtMostOnce;
    0x30 | (u8::from(dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
}

pub(crate) fn publish_ref<S: Sink>(p: &PublishRef<'_>, v: ProtocolVersion, s: &mut S) {
    s.field(p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        s.u16(p.packet_id);
    }
    if v == V5 {
        put_block(s, p.properties);
    }
    s.slice(p.payload);
}

/// On 5.0, success without properties takes the two-byte short form and an error
/// without properties the three-byte one.
fn pub_response<S: Sink>(p: &PubResponse, v: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id);
    if v == V5 && (p.reason != ReasonCode::SUCCESS || !p.properties.is_empty()) {
        s.u8(p.reason.0);
        if !p.properties.is_empty() {
            put_block(s, &p.properties);
        }
    }
}

fn subscribe<S: Sink>(p: &Subscribe, v: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id);
    if v == V5 {
        put_block(s, &p.properties);
    }
    for f in &p.filters {
        s.field(f.filter.as_bytes());
        let o = &f.options;
        let mut options = o.qos as u8;
        if v == V5 {
            let rh = match o.retain_handling {
                RetainHandling::SendAtSubscribe => 0,
                RetainHandling::SendIfNew => 1,
                RetainHandling::DoNotSend => 2,
            };
            options |=
                (u8::from(o.no_local) << 2) | (u8::from(o.retain_as_published) << 3) | (rh << 4);
        }
        s.u8(options);
    }
}

fn suback<S: Sink>(p: &SubAck, v: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id);
    match v {
        V311 => {
            for r in &p.reasons {
                s.u8(if r.0 <= 2 { r.0 } else { 0x80 });
            }
        }
        V5 => {
            put_block(s, &p.properties);
            for r in &p.reasons {
                s.u8(r.0);
            }
        }
    }
}

fn unsubscribe<S: Sink>(p: &Unsubscribe, v: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id);
    if v == V5 {
        put_block(s, &UserOnly(&p.user_properties));
    }
    for f in &p.filters {
        s.field(f.as_bytes());
    }
}

fn unsuback<S: Sink>(p: &UnsubAck, v: ProtocolVersion, s: &mut S) {
    s.u16(p.packet_id);
    if v == V5 {
        put_block(s, &p.properties);
        for r in &p.reasons {
            s.u8(r.0);
        }
    }
}

/// On 5.0, success without properties is the empty short form. Any other reason is
/// written with a property length, even a zero one: some clients (rumqttc among them)
/// cannot read a DISCONNECT that stops after its reason code.
fn disconnect<S: Sink>(p: &Disconnect, v: ProtocolVersion, s: &mut S) {
    if v == V5 && (p.reason != ReasonCode::SUCCESS || !p.properties.is_empty()) {
        s.u8(p.reason.0);
        put_block(s, &p.properties);
    }
}

/// Like DISCONNECT. AUTH does not exist in 3.1.1.
fn auth<S: Sink>(p: &Auth, v: ProtocolVersion, s: &mut S) {
    if v == V311 {
        s.fail(EncodeError::NotInVersion("AUTH"));
        return;
    }
    if p.reason != ReasonCode::SUCCESS || !p.properties.is_empty() {
        s.u8(p.reason.0);
        put_block(s, &p.properties);
    }
}
