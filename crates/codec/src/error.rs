use crate::ReasonCode;

/// Why a byte stream is not a valid MQTT packet. Every variant maps to the v5 reason code
/// a server sends before closing the connection, and to a stable metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    /// The remaining-length varint is longer than four bytes or otherwise malformed.
    RemainingLength,
    /// The packet is larger than the receiver's maximum packet size.
    PacketTooLarge,
    /// Packet type 0 or 15 (15 is AUTH on 5.0 only), or a type the receiver never accepts.
    PacketType,
    /// Fixed-header flags that must be fixed values are not.
    ReservedFlags,
    /// A field runs past the end of the packet, or bytes are left over after the last field.
    Truncated,
    /// A UTF-8 string is not valid UTF-8 or contains U+0000.
    Utf8,
    /// A QoS of 3, or QoS 0 with DUP set.
    Qos,
    /// CONNECT protocol name is not "MQTT".
    ProtocolName,
    /// CONNECT protocol level is neither 4 nor 5.
    ProtocolVersion,
    /// CONNECT reserved flag set or inconsistent will/password flags.
    ConnectFlags,
    /// A property identifier unknown to MQTT 5.
    UnknownProperty,
    /// A known property that is not allowed in this packet.
    PropertyNotAllowed,
    /// A property that may appear once appears twice.
    DuplicateProperty,
    /// A property value out of range (e.g. receive maximum 0, subscription identifier 0).
    PropertyValue,
    /// A packet identifier of zero where one is required.
    PacketId,
    /// SUBSCRIBE/UNSUBSCRIBE with no topic filters, or bad subscription option bits.
    EmptyOrBadFilters,
    /// A reason code that is not valid for this packet.
    ReasonCode,
    /// The first packet on a connection is not CONNECT.
    FirstPacketNotConnect,
}

impl DecodeErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::RemainingLength => "remaining_length",
            Self::PacketTooLarge => "packet_too_large",
            Self::PacketType => "packet_type",
            Self::ReservedFlags => "reserved_flags",
            Self::Truncated => "truncated",
            Self::Utf8 => "utf8",
            Self::Qos => "qos",
            Self::ProtocolName => "protocol_name",
            Self::ProtocolVersion => "protocol_version",
            Self::ConnectFlags => "connect_flags",
            Self::UnknownProperty => "unknown_property",
            Self::PropertyNotAllowed => "property_not_allowed",
            Self::DuplicateProperty => "duplicate_property",
            Self::PropertyValue => "property_value",
            Self::PacketId => "packet_id",
            Self::EmptyOrBadFilters => "bad_filters",
            Self::ReasonCode => "reason_code",
            Self::FirstPacketNotConnect => "first_packet_not_connect",
        }
    }

    /// The v5 reason code to send in CONNACK/DISCONNECT for this error.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            Self::PacketTooLarge => ReasonCode::PACKET_TOO_LARGE,
            Self::ProtocolName | Self::ProtocolVersion => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            Self::FirstPacketNotConnect | Self::DuplicateProperty | Self::PropertyValue => {
                ReasonCode::PROTOCOL_ERROR
            }
            _ => ReasonCode::MALFORMED_PACKET,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {detail}")]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    /// Human-readable detail for logs (never sent to the peer verbatim on 3.1.1).
    pub detail: &'static str,
}

impl DecodeError {
    pub fn new(kind: DecodeErrorKind, detail: &'static str) -> Self {
        Self { kind, detail }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a string or binary field is longer than 65535 bytes")]
    FieldTooLong,
    #[error("the packet is larger than the largest MQTT packet (268435455 bytes remaining)")]
    PacketTooLarge,
    #[error("{0} cannot be sent on this protocol version")]
    NotInVersion(&'static str),
}
