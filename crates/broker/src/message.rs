//! An application message as the broker routes it: immutable once published and shared by
//! every subscriber it reaches (`Arc<Message>`; the payload is `Bytes`), so fan-out never
//! copies a payload.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tern_codec::{PublishProperties, QoS, UserProperties};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Client id of the publisher (for no-local); empty for messages made by the broker.
    pub origin_client: Arc<str>,
    pub received_at: Instant,
    /// When the message expires (v5 Message Expiry Interval); `None` never.
    pub expires_at: Option<Instant>,
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

impl Message {
    /// Builds a message from a PUBLISH's parts (topic alias already resolved).
    pub fn from_publish(
        topic: Arc<str>,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        origin_client: Arc<str>,
        props: PublishProperties,
        now: Instant,
    ) -> Self {
        Self {
            topic,
            payload,
            qos,
            retain,
            origin_client,
            received_at: now,
            expires_at: props
                .message_expiry_interval
                .map(|s| now + std::time::Duration::from_secs(u64::from(s))),
            payload_format_indicator: props.payload_format_indicator,
            content_type: props.content_type,
            response_topic: props.response_topic,
            correlation_data: props.correlation_data,
            user_properties: props.user_properties,
        }
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds left before expiry, rounded up, as sent onward in Message Expiry Interval.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}
