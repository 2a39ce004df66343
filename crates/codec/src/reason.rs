//! MQTT 5 reason codes. A newtype over `u8` rather than an enum so that any byte a peer
//! sends can be carried and reported without a lossy conversion.

/// An MQTT 5 reason code (also used internally for 3.1.1, mapped on encode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    pub const SUCCESS: Self = Self(0x00);
    pub const NORMAL_DISCONNECTION: Self = Self(0x00);
    pub const GRANTED_QOS_0: Self = Self(0x00);
    pub const GRANTED_QOS_1: Self = Self(0x01);
    pub const GRANTED_QOS_2: Self = Self(0x02);
    pub const DISCONNECT_WITH_WILL: Self = Self(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: Self = Self(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: Self = Self(0x11);
    pub const CONTINUE_AUTHENTICATION: Self = Self(0x18);
    pub const RE_AUTHENTICATE: Self = Self(0x19);
    pub const UNSPECIFIED_ERROR: Self = Self(0x80);
    pub const MALFORMED_PACKET: Self = Self(0x81);
    pub const PROTOCOL_ERROR: Self = Self(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: Self = Self(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: Self = Self(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: Self = Self(0x86);
    pub const NOT_AUTHORIZED: Self = Self(0x87);
    pub const SERVER_UNAVAILABLE: Self = Self(0x88);
    pub const SERVER_BUSY: Self = Self(0x89);
    pub const BANNED: Self = Self(0x8A);
    pub const SERVER_SHUTTING_DOWN: Self = Self(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: Self = Self(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(0x8D);
    pub const SESSION_TAKEN_OVER: Self = Self(0x8E);
    pub const TOPIC_FILTER_INVALID: Self = Self(0x8F);
    pub const TOPIC_NAME_INVALID: Self = Self(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: Self = Self(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: Self = Self(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: Self = Self(0x93);
    pub const TOPIC_ALIAS_INVALID: Self = Self(0x94);
    pub const PACKET_TOO_LARGE: Self = Self(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: Self = Self(0x96);
    pub const QUOTA_EXCEEDED: Self = Self(0x97);
    pub const ADMINISTRATIVE_ACTION: Self = Self(0x98);
    pub const PAYLOAD_FORMAT_INVALID: Self = Self(0x99);
    pub const RETAIN_NOT_SUPPORTED: Self = Self(0x9A);
    pub const QOS_NOT_SUPPORTED: Self = Self(0x9B);
    pub const USE_ANOTHER_SERVER: Self = Self(0x9C);
    pub const SERVER_MOVED: Self = Self(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: Self = Self(0x9F);
    pub const MAXIMUM_CONNECT_TIME: Self = Self(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: Self = Self(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0xA2);

    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// The 3.1.1 CONNACK return code closest to this v5 reason code.
    pub fn to_v311_connack(self) -> u8 {
        match self.0 {
            0x00 => 0,
            0x84 => 1,
            0x85 => 2,
            0x86 => 4,
            0x87 | 0x8A => 5,
            _ => 3,
        }
    }

    /// Short stable name, used as a metric label and in logs.
    pub fn name(self) -> &'static str {
        match self.0 {
            0x00 => "success",
            0x01 => "granted_qos_1",
            0x02 => "granted_qos_2",
            0x04 => "disconnect_with_will",
            0x10 => "no_matching_subscribers",
            0x11 => "no_subscription_existed",
            0x18 => "continue_authentication",
            0x19 => "re_authenticate",
            0x80 => "unspecified_error",
            0x81 => "malformed_packet",
            0x82 => "protocol_error",
            0x83 => "implementation_specific_error",
            0x84 => "unsupported_protocol_version",
            0x85 => "client_identifier_not_valid",
            0x86 => "bad_user_name_or_password",
            0x87 => "not_authorized",
            0x88 => "server_unavailable",
            0x89 => "server_busy",
            0x8A => "banned",
            0x8B => "server_shutting_down",
            0x8C => "bad_authentication_method",
            0x8D => "keep_alive_timeout",
            0x8E => "session_taken_over",
            0x8F => "topic_filter_invalid",
            0x90 => "topic_name_invalid",
            0x91 => "packet_identifier_in_use",
            0x92 => "packet_identifier_not_found",
            0x93 => "receive_maximum_exceeded",
            0x94 => "topic_alias_invalid",
            0x95 => "packet_too_large",
            0x96 => "message_rate_too_high",
            0x97 => "quota_exceeded",
            0x98 => "administrative_action",
            0x99 => "payload_format_invalid",
            0x9A => "retain_not_supported",
            0x9B => "qos_not_supported",
            0x9C => "use_another_server",
            0x9D => "server_moved",
            0x9E => "shared_subscriptions_not_supported",
            0x9F => "connection_rate_exceeded",
            0xA0 => "maximum_connect_time",
            0xA1 => "subscription_identifiers_not_supported",
            0xA2 => "wildcard_subscriptions_not_supported",
            _ => "unknown",
        }
    }
}
