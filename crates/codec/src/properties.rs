//! MQTT 5 properties: identifiers, which packet allows which, value checks, and the
//! reading and writing of each packet's property block.

use bytes::Bytes;

use crate::primitives::{err, Counter, Reader, Sink, MAX_VARINT};
use crate::{
    AuthProperties, ConnAckProperties, ConnectProperties, DecodeError, DecodeErrorKind,
    DisconnectProperties, EncodeError, PublishProperties, ReasonProperties, SubscribeProperties,
    UserProperties, WillProperties,
};

pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

const fn bits(ids: &[u8]) -> u64 {
    let mut mask = 0u64;
    let mut i = 0;
    while i < ids.len() {
        mask |= 1 << ids[i];
        i += 1;
    }
    mask
}

/// Every property identifier MQTT 5 defines.
const KNOWN: u64 = bits(&[
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    SUBSCRIPTION_IDENTIFIER,
    SESSION_EXPIRY_INTERVAL,
    ASSIGNED_CLIENT_IDENTIFIER,
    SERVER_KEEP_ALIVE,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
    REQUEST_PROBLEM_INFORMATION,
    WILL_DELAY_INTERVAL,
    REQUEST_RESPONSE_INFORMATION,
    RESPONSE_INFORMATION,
    SERVER_REFERENCE,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    TOPIC_ALIAS_MAXIMUM,
    TOPIC_ALIAS,
    MAXIMUM_QOS,
    RETAIN_AVAILABLE,
    USER_PROPERTY,
    MAXIMUM_PACKET_SIZE,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    SHARED_SUBSCRIPTION_AVAILABLE,
]);

/// The packet (or will) a property block belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK.
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

impl Context {
    fn allowed(self) -> u64 {
        match self {
            Context::Connect => bits(&[
                SESSION_EXPIRY_INTERVAL,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                REQUEST_PROBLEM_INFORMATION,
                REQUEST_RESPONSE_INFORMATION,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
            ]),
            Context::Will => bits(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                WILL_DELAY_INTERVAL,
                USER_PROPERTY,
            ]),
            Context::ConnAck => bits(&[
                SESSION_EXPIRY_INTERVAL,
                ASSIGNED_CLIENT_IDENTIFIER,
                SERVER_KEEP_ALIVE,
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                RESPONSE_INFORMATION,
                SERVER_REFERENCE,
                REASON_STRING,
                RECEIVE_MAXIMUM,
                TOPIC_ALIAS_MAXIMUM,
                MAXIMUM_QOS,
                RETAIN_AVAILABLE,
                USER_PROPERTY,
                MAXIMUM_PACKET_SIZE,
                WILDCARD_SUBSCRIPTION_AVAILABLE,
                SUBSCRIPTION_IDENTIFIER_AVAILABLE,
                SHARED_SUBSCRIPTION_AVAILABLE,
            ]),
            Context::Publish => bits(&[
                PAYLOAD_FORMAT_INDICATOR,
                MESSAGE_EXPIRY_INTERVAL,
                CONTENT_TYPE,
                RESPONSE_TOPIC,
                CORRELATION_DATA,
                SUBSCRIPTION_IDENTIFIER,
                TOPIC_ALIAS,
                USER_PROPERTY,
            ]),
            Context::Ack => bits(&[REASON_STRING, USER_PROPERTY]),
            Context::Subscribe => bits(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]),
            Context::Unsubscribe => bits(&[USER_PROPERTY]),
            Context::Disconnect => bits(&[
                SESSION_EXPIRY_INTERVAL,
                SERVER_REFERENCE,
                REASON_STRING,
                USER_PROPERTY,
            ]),
            Context::Auth => bits(&[
                AUTHENTICATION_METHOD,
                AUTHENTICATION_DATA,
                REASON_STRING,
                USER_PROPERTY,
            ]),
        }
    }

    /// Whether property `id` may appear more than once in this context.
    fn repeatable(self, id: u8) -> bool {
        id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && self == Context::Publish)
    }
}

/// One decoded property, its value already range-checked.
enum Property {
    Byte(u8, u8),
    TwoByte(u8, u16),
    FourByte(u8, u32),
    VarInt(u8, u32),
    Str(u8, String),
    Binary(u8, Bytes),
    User(String, String),
}

fn value_error(detail: &'static str) -> DecodeError {
    err(DecodeErrorKind::PropertyValue, detail)
}

fn read_value(r: &mut Reader<'_>, id: u8) -> Result<Property, DecodeError> {
    const D: &str = "property value";
    Ok(match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => {
            let v = r.u8(D)?;
            if v > 1 {
                return Err(value_error("a byte property that must be 0 or 1 is not"));
            }
            Property::Byte(id, v)
        }
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
            let v = r.u16(D)?;
            if v == 0 && id == RECEIVE_MAXIMUM {
                return Err(value_error("receive maximum is 0"));
            }
            if v == 0 && id == TOPIC_ALIAS {
                return Err(value_error("topic alias is 0"));
            }
            Property::TwoByte(id, v)
        }
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => {
            let v = r.u32(D)?;
            if v == 0 && id == MAXIMUM_PACKET_SIZE {
                return Err(value_error("maximum packet size is 0"));
            }
            Property::FourByte(id, v)
        }
        SUBSCRIPTION_IDENTIFIER => {
            let v = r.varint(DecodeErrorKind::PropertyValue, "subscription identifier")?;
            if v == 0 {
                return Err(value_error("subscription identifier is 0"));
            }
            // At most four varint bytes, so it fits in u32.
            Property::VarInt(id, v as u32)
        }
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Property::Str(id, r.string("string property")?),
        CORRELATION_DATA | AUTHENTICATION_DATA => {
            Property::Binary(id, r.binary("binary property")?)
        }
        USER_PROPERTY => {
            let k = r.string("user property name")?;
            let v = r.string("user property value")?;
            Property::User(k, v)
        }
        _ => {
            return Err(err(
                DecodeErrorKind::UnknownProperty,
                "unknown property identifier",
            ))
        }
    })
}

/// Reads a property block (variable-length length, then properties) for `ctx`, checking
/// identifiers, placement, repetition and values, and hands each property to `on`.
fn read_block(
    r: &mut Reader<'_>,
    ctx: Context,
    mut on: impl FnMut(Property) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint(DecodeErrorKind::RemainingLength, "property length")?;
    let mut p = r.sub(len, "property block runs past the end of the packet")?;
    let allowed = ctx.allowed();
    let mut seen = 0u64;
    while !p.is_empty() {
        // Identifiers are variable byte integers, but all are below 0x80: a byte with the
        // continuation bit set starts an identifier MQTT does not define.
        let id = p.u8("property identifier")?;
        let bit = 1u64.checked_shl(u32::from(id)).unwrap_or(0);
        if id >= 64 || KNOWN & bit == 0 {
            return Err(err(
                DecodeErrorKind::UnknownProperty,
                "unknown property identifier",
            ));
        }
        if allowed & bit == 0 {
            return Err(err(
                DecodeErrorKind::PropertyNotAllowed,
                "property not allowed in this packet",
            ));
        }
        if seen & bit != 0 && !ctx.repeatable(id) {
            return Err(err(
                DecodeErrorKind::DuplicateProperty,
                "property appears twice",
            ));
        }
        seen |= bit;
        on(read_value(&mut p, id)?)?;
    }
    Ok(())
}

fn misplaced() -> DecodeError {
    err(
        DecodeErrorKind::PropertyNotAllowed,
        "property not allowed in this packet",
    )
}

pub(crate) fn read_connect(r: &mut Reader<'_>) -> Result<ConnectProperties, DecodeError> {
    let mut out = ConnectProperties::default();
    read_block(r, Context::Connect, |p| {
        match p {
            Property::FourByte(SESSION_EXPIRY_INTERVAL, v) => out.session_expiry_interval = Some(v),
            Property::TwoByte(RECEIVE_MAXIMUM, v) => out.receive_maximum = Some(v),
            Property::FourByte(MAXIMUM_PACKET_SIZE, v) => out.maximum_packet_size = Some(v),
            Property::TwoByte(TOPIC_ALIAS_MAXIMUM, v) => out.topic_alias_maximum = Some(v),
            Property::Byte(REQUEST_RESPONSE_INFORMATION, v) => {
                out.request_response_information = Some(v)
            }
            Property::Byte(REQUEST_PROBLEM_INFORMATION, v) => {
                out.request_problem_information = Some(v)
            }
            Property::User(k, v) => out.user_properties.push((k, v)),
            Property::Str(AUTHENTICATION_METHOD, v) => out.authentication_method = Some(v),
            Property::Binary(AUTHENTICATION_DATA, v) => out.authentication_data = Some(v),
            _ => return Err(misplaced()),
        }
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn read_will(r: &mut Reader<'_>) -> Result<WillProperties, DecodeError> {
    let mut out = WillProperties::default();
    read_block(r, Context::Will, |p| {
        match p {
            Property::FourByte(WILL_DELAY_INTERVAL, v) => out.will_delay_interval = Some(v),
            Property::Byte(PAYLOAD_FORMAT_INDICATOR, v) => out.payload_format_indicator = Some(v),
            Property::FourByte(MESSAGE_EXPIRY_INTERVAL, v) => out.message_expiry_interval = Some(v),
            Property::Str(CONTENT_TYPE, v) => out.content_type = Some(v),
            Property::Str(RESPONSE_TOPIC, v) => out.response_topic = Some(v),
            Property::Binary(CORRELATION_DATA, v) => out.correlation_data = Some(v),
            Property::User(k, v) => out.user_properties.push((k, v)),
            _ => return Err(misplaced()),
        }
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn read_connack(r: &mut Reader<'_>) -> Result<ConnAckProperties, DecodeError> {
    let mut out = ConnAckProperties::default();
    read_block(r, Context::ConnAck, |p| {
        match p {
            Property::FourByte(SESSION_EXPIRY_INTERVAL, v) => out.session_expiry_interval = Some(v),
            Property::TwoByte(RECEIVE_MAXIMUM, v) => out.receive_maximum = Some(v),
            Property::Byte(MAXIMUM_QOS, v) => out.maximum_qos = Some(v),
            Property::Byte(RETAIN_AVAILABLE, v) => out.retain_available = Some(v),
            Property::FourByte(MAXIMUM_PACKET_SIZE, v) => out.maximum_packet_size = Some(v),
            Property::Str(ASSIGNED_CLIENT_IDENTIFIER, v) => {
                out.assigned_client_identifier = Some(v)
            }
            Property::TwoByte(TOPIC_ALIAS_MAXIMUM, v) => out.topic_alias_maximum = Some(v),
            Property::Str(REASON_STRING, v) => out.reason_string = Some(v),
            Property::User(k, v) => out.user_properties.push((k, v)),
            Property::Byte(WILDCARD_SUBSCRIPTION_AVAILABLE, v) => {
                out.wildcard_subscription_available = Some(v)
            }
            Property::Byte(SUBSCRIPTION_IDENTIFIER_AVAILABLE, v) => {
                out.subscription_identifiers_available = Some(v)
            }
            Property::Byte(SHARED_SUBSCRIPTION_AVAILABLE, v) => {
                out.shared_subscription_available = Some(v)
            }
            Property::TwoByte(SERVER_KEEP_ALIVE, v) => out.server_keep_alive = Some(v),
            Property::Str(RESPONSE_INFORMATION, v) => out.response_information = Some(v),
            Property::Str(SERVER_REFERENCE, v) => out.server_reference = Some(v),
            Property::Str(AUTHENTICATION_METHOD, v) => out.authentication_method = Some(v),
            Property::Binary(AUTHENTICATION_DATA, v) => out.authentication_data = Some(v),
            _ => return Err(misplaced()),
        }
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn read_publish(r: &mut Reader<'_>) -> Result<PublishProperties, DecodeError> {
    let mut out = PublishProperties::default();
    read_block(r, Context::Publish, |p| {
        match p {
            Property::Byte(PAYLOAD_FORMAT_INDICATOR, v) => out.payload_format_indicator = Some(v),
            Property::FourByte(MESSAGE_EXPIRY_INTERVAL, v) => out.message_expiry_interval = Some(v),
            Property::TwoByte(TOPIC_ALIAS, v) => out.topic_alias = Some(v),
            Property::Str(RESPONSE_TOPIC, v) => out.response_topic = Some(v),
            Property::Binary(CORRELATION_DATA, v) => out.correlation_data = Some(v),
            Property::User(k, v) => out.user_properties.push((k, v)),
            Property::VarInt(SUBSCRIPTION_IDENTIFIER, v) => out.subscription_identifiers.push(v),
            Property::Str(CONTENT_TYPE, v) => out.content_type = Some(v),
            _ => return Err(misplaced()),
        }
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn read_reason(r: &mut Reader<'_>) -> Result<ReasonProperties, DecodeError> {
    let mut out = ReasonProperties::default();
    read_block(r, Context::Ack, |p| {
        match p {
            Property::Str(REASON_STRING, v) => out.reason_string = Some(v),
            Property::User(k, v) => out.user_properties.push((k, v)),
            _ => return Err(misplaced()),
        }
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn read_subscribe(r: &mut Reader<'_>) -> Result<SubscribeProperties, DecodeError> {
    let mut out = SubscribeProperties::default();
    read_block(r, Context::Subscribe, |p| {
        match p {
            Property::VarInt(SUBSCRIPTION_IDENTIFIER, v) => out.subscription_identifier = Some(v),
            Property::User(k, v) => out.user_properties.push((k, v)),
            _ => return Err(misplaced()),
        }
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn read_unsubscribe(r: &mut Reader<'_>) -> Result<UserProperties, DecodeError> {
    let mut out = UserProperties::new();
    read_block(r, Context::Unsubscribe, |p| {
        match p {
            Property::User(k, v) => out.push((k, v)),
            _ => return Err(misplaced()),
        }
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn read_disconnect(r: &mut Reader<'_>) -> Result<DisconnectProperties, DecodeError> {
    let mut out = DisconnectProperties::default();
    read_block(r, Context::Disconnect, |p| {
        match p {
            Property::FourByte(SESSION_EXPIRY_INTERVAL, v) => out.session_expiry_interval = Some(v),
            Property::Str(REASON_STRING, v) => out.reason_string = Some(v),
            Property::User(k, v) => out.user_properties.push((k, v)),
            Property::Str(SERVER_REFERENCE, v) => out.server_reference = Some(v),
            _ => return Err(misplaced()),
        }
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn read_auth(r: &mut Reader<'_>) -> Result<AuthProperties, DecodeError> {
    let mut out = AuthProperties::default();
    read_block(r, Context::Auth, |p| {
        match p {
            Property::Str(AUTHENTICATION_METHOD, v) => out.authentication_method = Some(v),
            Property::Binary(AUTHENTICATION_DATA, v) => out.authentication_data = Some(v),
            Property::Str(REASON_STRING, v) => out.reason_string = Some(v),
            Property::User(k, v) => out.user_properties.push((k, v)),
            _ => return Err(misplaced()),
        }
        Ok(())
    })?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Writing

/// A property set that can describe itself to a [`Sink`] (without its length prefix).
pub(crate) trait Props {
    fn visit<S: Sink>(&self, s: &mut S);
    fn is_empty(&self) -> bool;
}

/// Writes `p` as a property block: its length as a variable byte integer, then the
/// properties. On a counter this measures the block (and records any error).
pub(crate) fn put_block<S: Sink, P: Props>(s: &mut S, p: &P) {
    let mut c = Counter::default();
    p.visit(&mut c);
    if let Some(e) = c.error.take() {
        s.fail(e);
    }
    s.varint(c.len, EncodeError::PacketTooLarge);
    p.visit(s);
}

fn byte<S: Sink>(s: &mut S, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        s.u8(id);
        s.u8(v);
    }
}

fn two<S: Sink>(s: &mut S, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        s.u8(id);
        s.u16(v);
    }
}

fn four<S: Sink>(s: &mut S, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        s.u8(id);
        s.u32(v);
    }
}

fn string<S: Sink>(s: &mut S, id: u8, v: &Option<String>) {
    if let Some(v) = v {
        s.u8(id);
        s.field(v.as_bytes());
    }
}

fn binary<S: Sink>(s: &mut S, id: u8, v: &Option<Bytes>) {
    if let Some(v) = v {
        s.u8(id);
        s.field(v);
    }
}

fn subscription_identifier<S: Sink>(s: &mut S, v: u32) {
    s.u8(SUBSCRIPTION_IDENTIFIER);
    // A value above the variable byte integer range cannot be written.
    let v = usize::try_from(v).unwrap_or(MAX_VARINT + 1);
    s.varint(v, EncodeError::FieldTooLong);
}

fn users<S: Sink>(s: &mut S, v: &UserProperties) {
    for (k, v) in v {
        s.u8(USER_PROPERTY);
        s.field(k.as_bytes());
        s.field(v.as_bytes());
    }
}

impl Props for ConnectProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        four(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        two(s, RECEIVE_MAXIMUM, self.receive_maximum);
        four(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        two(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        byte(
            s,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        byte(
            s,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        string(s, AUTHENTICATION_METHOD, &self.authentication_method);
        binary(s, AUTHENTICATION_DATA, &self.authentication_data);
        users(s, &self.user_properties);
    }
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Props for WillProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        four(s, WILL_DELAY_INTERVAL, self.will_delay_interval);
        byte(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        four(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        string(s, CONTENT_TYPE, &self.content_type);
        string(s, RESPONSE_TOPIC, &self.response_topic);
        binary(s, CORRELATION_DATA, &self.correlation_data);
        users(s, &self.user_properties);
    }
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Props for ConnAckProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        four(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        two(s, RECEIVE_MAXIMUM, self.receive_maximum);
        byte(s, MAXIMUM_QOS, self.maximum_qos);
        byte(s, RETAIN_AVAILABLE, self.retain_available);
        four(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        string(
            s,
            ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        two(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        string(s, REASON_STRING, &self.reason_string);
        byte(
            s,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        byte(
            s,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        byte(
            s,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        two(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        string(s, RESPONSE_INFORMATION, &self.response_information);
        string(s, SERVER_REFERENCE, &self.server_reference);
        string(s, AUTHENTICATION_METHOD, &self.authentication_method);
        binary(s, AUTHENTICATION_DATA, &self.authentication_data);
        users(s, &self.user_properties);
    }
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Props for PublishProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        byte(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        four(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        two(s, TOPIC_ALIAS, self.topic_alias);
        string(s, RESPONSE_TOPIC, &self.response_topic);
        binary(s, CORRELATION_DATA, &self.correlation_data);
        for &id in &self.subscription_identifiers {
            subscription_identifier(s, id);
        }
        string(s, CONTENT_TYPE, &self.content_type);
        users(s, &self.user_properties);
    }
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Props for ReasonProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        string(s, REASON_STRING, &self.reason_string);
        users(s, &self.user_properties);
    }
    fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl Props for SubscribeProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        if let Some(id) = self.subscription_identifier {
            subscription_identifier(s, id);
        }
        users(s, &self.user_properties);
    }
    fn is_empty(&self) -> bool {
        self.subscription_identifier.is_none() && self.user_properties.is_empty()
    }
}

/// UNSUBSCRIBE carries only user properties.
pub(crate) struct UserOnly<'a>(pub(crate) &'a UserProperties);

impl Props for UserOnly<'_> {
    fn visit<S: Sink>(&self, s: &mut S) {
        users(s, self.0);
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Props for DisconnectProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        four(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        string(s, REASON_STRING, &self.reason_string);
        string(s, SERVER_REFERENCE, &self.server_reference);
        users(s, &self.user_properties);
    }
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl Props for AuthProperties {
    fn visit<S: Sink>(&self, s: &mut S) {
        string(s, AUTHENTICATION_METHOD, &self.authentication_method);
        binary(s, AUTHENTICATION_DATA, &self.authentication_data);
        string(s, REASON_STRING, &self.reason_string);
        users(s, &self.user_properties);
    }
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}
