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

    /// The message as published at `now` rather than when it was built: a will is built
    /// from the CONNECT and published when its connection ends, and its Message Expiry
    /// Interval counts from the publication (MQTT 5, 3.1.3.2.4), as do the broker's
    /// latency measures.
    pub fn published_at(&self, now: Instant) -> Self {
        Self {
            received_at: now,
            expires_at: self
                .expires_at
                .map(|at| now + at.saturating_duration_since(self.received_at)),
            ..self.clone()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(expiry: Option<u32>, now: Instant) -> Message {
        let props = PublishProperties {
            message_expiry_interval: expiry,
            ..Default::default()
        };
        let (topic, client) = (Arc::from("t"), Arc::from("c"));
        Message::from_publish(
            topic,
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
            client,
            props,
            now,
        )
    }

    #[test]
    fn a_message_published_later_keeps_its_whole_expiry_interval() {
        let built = Instant::now();
        let later = built + Duration::from_secs(30);
        let will = message(Some(10), built);
        assert!(will.is_expired(later), "counted from when it was built");
        let published = will.published_at(later);
        assert_eq!(published.received_at, later);
        assert!(!published.is_expired(later + Duration::from_secs(9)));
        assert_eq!(published.remaining_expiry(later), Some(10));
        assert!(published.is_expired(later + Duration::from_secs(10)));
        let forever = message(None, built).published_at(later);
        assert_eq!(forever.expires_at, None);
    }
}
