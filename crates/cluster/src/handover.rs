//! A persistent session on its way from one node to another (client takeover across
//! nodes): the broker's `SessionParts` in a serialisable form, messages as
//! [`WireMessage`]s.

use serde::{Deserialize, Serialize};
use tern_broker::session::{Delivery, SessionParts, Subscription};
use tern_codec::{QoS, RetainHandling, SubscriptionOptions};

use crate::types::WireMessage;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSession {
    pub client_id: String,
    pub expiry_interval: u32,
    pub subscriptions: Vec<WireSubscription>,
    /// In flight to the client, oldest first; `None` once PUBREL was sent.
    pub outgoing: Vec<(u16, Option<WireDelivery>)>,
    pub queue: Vec<WireDelivery>,
    pub next_packet_id: u16,
    pub incoming_qos2: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSubscription {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub identifier: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireDelivery {
    pub message: WireMessage,
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

fn qos(v: u8) -> QoS {
    QoS::from_u8(v).unwrap_or(QoS::AtMostOnce)
}

impl WireDelivery {
    pub fn from_delivery(d: &Delivery) -> Self {
        Self {
            message: WireMessage::from_message(&d.message),
            qos: d.qos as u8,
            retain: d.retain,
            subscription_ids: d.subscription_ids.clone(),
        }
    }

    pub fn into_delivery(self) -> Delivery {
        Delivery {
            message: std::sync::Arc::new(self.message.to_message()),
            qos: qos(self.qos),
            retain: self.retain,
            subscription_ids: self.subscription_ids,
        }
    }
}

impl WireSession {
    pub fn from_parts(parts: &SessionParts) -> Self {
        Self {
            client_id: parts.client_id.clone(),
            expiry_interval: parts.expiry_interval,
            subscriptions: parts
                .subscriptions
                .iter()
                .map(|(filter, s)| WireSubscription {
                    filter: filter.clone(),
                    qos: s.options.qos as u8,
                    no_local: s.options.no_local,
                    retain_as_published: s.options.retain_as_published,
                    retain_handling: s.options.retain_handling as u8,
                    identifier: s.identifier,
                })
                .collect(),
            outgoing: parts
                .outgoing
                .iter()
                .map(|(id, d)| (*id, d.as_ref().map(WireDelivery::from_delivery)))
                .collect(),
            queue: parts
                .queue
                .iter()
                .map(WireDelivery::from_delivery)
                .collect(),
            next_packet_id: parts.next_packet_id,
            incoming_qos2: parts.incoming_qos2.clone(),
        }
    }

    pub fn into_parts(self) -> SessionParts {
        SessionParts {
            client_id: self.client_id,
            expiry_interval: self.expiry_interval,
            subscriptions: self
                .subscriptions
                .into_iter()
                .map(|s| {
                    let options = SubscriptionOptions {
                        qos: qos(s.qos),
                        no_local: s.no_local,
                        retain_as_published: s.retain_as_published,
                        retain_handling: match s.retain_handling {
                            1 => RetainHandling::SendIfNew,
                            2 => RetainHandling::DoNotSend,
                            _ => RetainHandling::SendAtSubscribe,
                        },
                    };
                    (
                        s.filter,
                        Subscription {
                            options,
                            identifier: s.identifier,
                        },
                    )
                })
                .collect(),
            outgoing: self
                .outgoing
                .into_iter()
                .map(|(id, d)| (id, d.map(WireDelivery::into_delivery)))
                .collect(),
            queue: self
                .queue
                .into_iter()
                .map(WireDelivery::into_delivery)
                .collect(),
            next_packet_id: self.next_packet_id,
            incoming_qos2: self.incoming_qos2,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        rmp_serde::to_vec_named(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use tern_broker::session::Session;
    use tern_broker::Message;
    use tern_codec::PublishProperties;

    use super::*;

    fn delivery(payload: &'static str, qos: QoS) -> Delivery {
        let m = Message::from_publish(
            Arc::from("t/1"),
            Bytes::from_static(payload.as_bytes()),
            qos,
            false,
            Arc::from("p"),
            PublishProperties::default(),
            Instant::now(),
        );
        Delivery {
            message: Arc::new(m),
            qos,
            retain: false,
            subscription_ids: vec![7],
        }
    }

    #[test]
    fn a_session_crosses_the_wire_intact() {
        let mut session = Session::new(Arc::from("c1"), 300);
        let options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::SendIfNew,
        };
        session.subscriptions.insert(
            "t/#".into(),
            Subscription {
                options,
                identifier: Some(7),
            },
        );
        for (p, q) in [
            ("a", QoS::AtLeastOnce),
            ("b", QoS::ExactlyOnce),
            ("c", QoS::AtMostOnce),
            ("d", QoS::AtLeastOnce),
        ] {
            session.enqueue(delivery(p, q), 100);
        }
        let mut expired = 0;
        let (first, _) = session
            .next_to_send(2, Instant::now(), &mut expired)
            .expect("a");
        let (second, _) = session
            .next_to_send(2, Instant::now(), &mut expired)
            .expect("b");
        session.on_pubrec(second, true).expect("b released");
        session.on_incoming_qos2(42);
        let before = session.into_parts();

        let wire = WireSession::from_parts(&before);
        let bytes = wire.encode().expect("encode");
        let after = WireSession::decode(&bytes).expect("decode").into_parts();

        assert_eq!(after.client_id, "c1");
        assert_eq!(after.expiry_interval, 300);
        assert_eq!(after.subscriptions, before.subscriptions);
        assert_eq!(after.outgoing.len(), 2);
        assert_eq!(after.outgoing[0].0, first);
        assert_eq!(after.outgoing[1].0, second);
        assert!(
            after.outgoing[1].1.is_none(),
            "released QoS 2 awaits only PUBCOMP"
        );
        let payloads: Vec<_> = after
            .queue
            .iter()
            .map(|d| d.message.payload.clone())
            .collect();
        assert_eq!(
            payloads,
            [Bytes::from_static(b"c"), Bytes::from_static(b"d")]
        );
        assert_eq!(after.incoming_qos2, [42]);
        assert_eq!(after.next_packet_id, before.next_packet_id);
        // And the broker takes it back as a working session.
        let mut resumed = Session::from_parts(after);
        assert_eq!(resumed.inflight_len(), 2);
        assert!(
            !resumed.on_incoming_qos2(42),
            "a QoS 2 publish not yet released stays known"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(WireSession::decode(b"\x93\x01garbage").is_err());
        assert!(WireSession::decode(&[]).is_err());
    }
}
