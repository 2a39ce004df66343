//! Encoding a delivery as the PUBLISH one client gets: its protocol version, the topic
//! aliases it accepts, the largest packet it takes, the message's remaining expiry.
//!
//! Kept apart from the connection's other state so that a message can be encoded
//! straight from the session's in-flight entry, which the connection lends out while it
//! writes (see [`crate::session::Session::take_next`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tern_codec::{
    encode_publish, publish_encoded_len, EncodeError, ProtocolVersion, PublishProperties,
    PublishRef,
};

use crate::session::Delivery;
use crate::stats::DeliveryTally;

/// Why a PUBLISH was not written.
#[derive(Debug)]
pub(crate) enum Unwritten {
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
    NotEncodable(EncodeError),
}

/// What one client negotiated for the PUBLISH packets it receives.
pub(crate) struct PublishWriter {
    version: ProtocolVersion,
    /// The client's Maximum Packet Size (`usize::MAX`: none).
    max_packet_size: usize,
    /// The client's Topic Alias Maximum (0: no aliases).
    topic_alias_max: u16,
    /// Aliases given out so far, by topic.
    aliases: HashMap<Arc<str>, u16>,
}

impl PublishWriter {
    pub(crate) fn new(
        version: ProtocolVersion,
        max_packet_size: usize,
        topic_alias_max: u16,
    ) -> Self {
        Self {
            version,
            max_packet_size,
            topic_alias_max,
            aliases: HashMap::new(),
        }
    }

    /// Appends `d` to `out` as a PUBLISH under `packet_id` (0 for QoS 0), counting it (or
    /// its drop for size) in `tally`.
    pub(crate) fn write(
        &mut self,
        out: &mut BytesMut,
        packet_id: u16,
        d: &Delivery,
        dup: bool,
        now: Instant,
        tally: &mut DeliveryTally,
    ) -> Result<(), Unwritten> {
        let m = &d.message;
        // (alias, whether the client already knows it)
        let alias = if self.topic_alias_max > 0 {
            match self.aliases.get(&m.topic) {
                Some(&a) => Some((a, true)),
                None if self.aliases.len() < usize::from(self.topic_alias_max) => {
                    Some((self.aliases.len() as u16 + 1, false))
                }
                None => None,
            }
        } else {
            None
        };
        // 3.1.1 carries no properties: the empty default allocates nothing.
        let properties = if self.version == ProtocolVersion::V5 {
            PublishProperties {
                payload_format_indicator: m.payload_format_indicator,
                message_expiry_interval: m.remaining_expiry(now),
                topic_alias: alias.map(|(a, _)| a),
                response_topic: m.response_topic.clone(),
                correlation_data: m.correlation_data.clone(),
                user_properties: m.user_properties.clone(),
                subscription_identifiers: d.subscription_ids.clone(),
                content_type: m.content_type.clone(),
            }
        } else {
            PublishProperties::default()
        };
        let publish = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: if matches!(alias, Some((_, true))) {
                ""
            } else {
                &m.topic
            },
            packet_id,
            payload: &m.payload,
            properties: &properties,
        };
        if self.max_packet_size != usize::MAX {
            let fits = publish_encoded_len(&publish, self.version)
                .is_ok_and(|len| len <= self.max_packet_size);
            if !fits {
                tally.too_large += 1;
                return Err(Unwritten::TooLarge);
            }
        }
        encode_publish(&publish, self.version, out).map_err(Unwritten::NotEncodable)?;
        if let Some((a, false)) = alias {
            self.aliases.insert(m.topic.clone(), a);
        }
        tally.sent[d.qos as usize] += 1;
        // Not resends, nor retained messages sent on subscribe: their age is not latency.
        if !dup && !d.retain {
            tally
                .latency
                .record(now.saturating_duration_since(m.received_at));
        }
        Ok(())
    }
}
