//! The cluster's shared vocabulary: node identities, the commands Raft replicates, and a
//! message as it travels between nodes. Everything here is serialisable (MessagePack on
//! the wire and in the Raft log) and free of `Instant`s, which mean nothing on another
//! machine.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tern_broker::Message;
use tern_codec::QoS;

/// A node's identity in the cluster. From config, or the ordinal of a StatefulSet-style
/// host name (`tern-2` is node 2).
pub type NodeId = u64;

/// What the cluster knows about a member (openraft's `Node` type).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// QUIC address other nodes dial (`host:port`).
    pub cluster_addr: String,
    /// Region label, used to spread voters.
    pub region: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.cluster_addr, self.region)
    }
}

/// One change to a node's routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteChange {
    /// The node has its first local subscriber to `filter`.
    Add { filter: String },
    /// The node's last local subscriber to `filter` left.
    Remove { filter: String },
    /// The node has `members` local members of `$share/group/filter` (0 removes it).
    Shared {
        group: String,
        filter: String,
        members: u32,
    },
}

/// A state change replicated through Raft. Applied in log order on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Route changes of one node, batched over a short window.
    Routes {
        node: NodeId,
        changes: Vec<RouteChange>,
    },
    /// A client connected to `node`; the log's order decides which connection wins.
    Claim { client_id: String, node: NodeId },
    /// Set (`Some`) or clear (`None`) a retained message.
    Retain {
        topic: String,
        message: Option<WireMessage>,
    },
    /// Forget what a node owned (routes, claims): it was removed or declared dead.
    PurgeNode { node: NodeId },
    /// Several commands in one log entry.
    Batch(Vec<Command>),
}

/// What applying a command answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    #[default]
    Done,
    /// A claim was applied: its epoch, and the node that owned the client id before.
    Claimed {
        epoch: u64,
        previous: Option<NodeId>,
    },
    /// Responses of a batch, in order.
    Batch(Vec<CommandResponse>),
}

/// A message as it crosses between nodes or sits in the Raft log (retained messages).
/// Expiry is absolute wall-clock time, so that every node, and a node applying the log
/// later, agrees on when it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub origin_client: String,
    /// Milliseconds since the UNIX epoch at which the message expires.
    pub expires_at_unix_ms: Option<u64>,
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One reading of both clocks, to turn `Instant`s into wall-clock time and back. A batch
/// of messages shares one reading: reading the clocks per message was a measurable part
/// of forwarding.
#[derive(Clone, Copy, Debug)]
pub struct WireClock {
    pub now: Instant,
    pub wall: SystemTime,
}

impl WireClock {
    pub fn now() -> Self {
        Self {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn to_unix_ms(self, at: Instant) -> u64 {
        unix_ms(self.wall + at.saturating_duration_since(self.now))
    }

    pub(crate) fn to_instant(self, unix_ms_at: u64) -> Instant {
        self.now + Duration::from_millis(unix_ms_at.saturating_sub(unix_ms(self.wall)))
    }
}

/// A [`WireMessage`] borrowed from wherever the message lives, so the forwarder can
/// encode a broker [`Message`] without building a `WireMessage` first. It decodes as the
/// `WireMessage` it stands for: the same fields in the same order, except that absent
/// optional fields are left out rather than written as nil (a `WireMessage` decoder takes
/// a missing `Option` field as `None`). Most messages have none of them, and their names
/// were about a third of a forwarded 100-byte message's bytes.
#[derive(Clone, Debug, Serialize)]
pub struct WireRef<'a> {
    pub topic: &'a str,
    pub payload: &'a Bytes,
    pub qos: u8,
    pub retain: bool,
    pub origin_client: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_unix_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_format_indicator: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<&'a Bytes>,
    pub user_properties: &'a [(String, String)],
}

impl<'a> WireRef<'a> {
    pub fn of_message(m: &'a Message, clock: WireClock) -> Self {
        Self {
            topic: &m.topic,
            payload: &m.payload,
            qos: m.qos as u8,
            retain: m.retain,
            origin_client: &m.origin_client,
            expires_at_unix_ms: m.expires_at.map(|t| clock.to_unix_ms(t)),
            payload_format_indicator: m.payload_format_indicator,
            content_type: m.content_type.as_deref(),
            response_topic: m.response_topic.as_deref(),
            correlation_data: m.correlation_data.as_ref(),
            user_properties: &m.user_properties,
        }
    }

    pub fn of_wire(w: &'a WireMessage) -> Self {
        Self {
            topic: &w.topic,
            payload: &w.payload,
            qos: w.qos,
            retain: w.retain,
            origin_client: &w.origin_client,
            expires_at_unix_ms: w.expires_at_unix_ms,
            payload_format_indicator: w.payload_format_indicator,
            content_type: w.content_type.as_deref(),
            response_topic: w.response_topic.as_deref(),
            correlation_data: w.correlation_data.as_ref(),
            user_properties: &w.user_properties,
        }
    }
}

impl WireMessage {
    /// A message with no MQTT 5 properties, no expiry and no origin client.
    pub fn new(topic: impl Into<String>, payload: Bytes, qos: u8, retain: bool) -> Self {
        Self {
            topic: topic.into(),
            payload,
            qos,
            retain,
            origin_client: String::new(),
            expires_at_unix_ms: None,
            payload_format_indicator: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }
    }

    pub fn from_message(m: &Message) -> Self {
        Self::from_message_at(m, WireClock::now())
    }

    pub fn from_message_at(m: &Message, clock: WireClock) -> Self {
        Self {
            topic: m.topic.to_string(),
            payload: m.payload.clone(),
            qos: m.qos as u8,
            retain: m.retain,
            origin_client: m.origin_client.to_string(),
            expires_at_unix_ms: m.expires_at.map(|t| clock.to_unix_ms(t)),
            payload_format_indicator: m.payload_format_indicator,
            content_type: m.content_type.clone(),
            response_topic: m.response_topic.clone(),
            correlation_data: m.correlation_data.clone(),
            user_properties: m.user_properties.clone(),
        }
    }

    /// The broker's form of the message, as received now. An expiry in the past gives a
    /// message that is already expired.
    pub fn to_message(&self) -> Message {
        self.to_message_at(WireClock::now())
    }

    pub fn to_message_at(&self, clock: WireClock) -> Message {
        Message {
            topic: Arc::from(self.topic.as_str()),
            payload: self.payload.clone(),
            qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
            retain: self.retain,
            origin_client: Arc::from(self.origin_client.as_str()),
            received_at: clock.now,
            expires_at: self.expires_at_unix_ms.map(|at| clock.to_instant(at)),
            payload_format_indicator: self.payload_format_indicator,
            content_type: self.content_type.clone(),
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone(),
            user_properties: self.user_properties.clone(),
        }
    }

    pub fn is_expired_at(&self, unix_ms_now: u64) -> bool {
        self.expires_at_unix_ms.is_some_and(|at| at <= unix_ms_now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_wire_form() {
        let props = tern_codec::PublishProperties {
            message_expiry_interval: Some(60),
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        let m = Message::from_publish(
            Arc::from("a/b"),
            Bytes::from_static(b"hello"),
            QoS::AtLeastOnce,
            true,
            Arc::from("client"),
            props,
            Instant::now(),
        );
        let wire = WireMessage::from_message(&m);
        let bytes = rmp_serde::to_vec_named(&wire).expect("encode");
        let back: WireMessage = rmp_serde::from_slice(&bytes).expect("decode");
        assert_eq!(back, wire);
        let again = back.to_message();
        assert_eq!(
            (&*again.topic, &again.payload[..], again.qos, again.retain),
            ("a/b", &b"hello"[..], QoS::AtLeastOnce, true)
        );
        let left = again.remaining_expiry(Instant::now()).expect("expiry kept");
        assert!((58..=60).contains(&left), "{left}");
    }
}
