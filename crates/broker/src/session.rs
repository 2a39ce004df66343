//! One client's session state as MQTT defines it, as plain data: its subscriptions, the
//! QoS 1/2 messages in flight in both directions, and the queue of messages waiting for a
//! free slot in the client's receive window. No I/O, no clocks of its own (callers pass
//! `now`), so every rule here is unit-tested directly.
//!
//! While a client is connected its connection task owns the `Session`; while it is
//! offline the session waits in the broker's registry, and messages are queued into it
//! there.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use tern_codec::{QoS, SubscriptionOptions};

use crate::message::Message;

/// One message on its way to this session's client, at the QoS it will be sent with.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(message QoS, granted QoS) over the matching subscriptions.
    pub qos: QoS,
    /// The RETAIN flag as it will be sent (set for retained messages sent on subscribe,
    /// kept for Retain As Published subscriptions).
    pub retain: bool,
    /// v5 Subscription Identifiers of every matching subscription that has one.
    pub subscription_ids: Vec<u32>,
}

/// A subscription as the session remembers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

/// A message [`Session::take_next`] hands out for sending.
#[derive(Debug)]
pub enum Outgoing<'a> {
    /// QoS 0: it leaves the session.
    AtMostOnce(Delivery),
    /// QoS 1/2: in flight under this packet identifier, kept by the session.
    InFlight(u16, &'a Delivery),
}

impl Outgoing<'_> {
    /// The packet identifier to send it with (0 for QoS 0).
    pub fn packet_id(&self) -> u16 {
        match self {
            Self::AtMostOnce(_) => 0,
            Self::InFlight(id, _) => *id,
        }
    }

    pub fn delivery(&self) -> &Delivery {
        match self {
            Self::AtMostOnce(d) => d,
            Self::InFlight(_, d) => d,
        }
    }
}

/// A QoS 1/2 message we sent and the client has not finished acknowledging.
#[derive(Clone, Debug)]
pub enum OutgoingInflight {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish(Delivery),
    /// QoS 2: PUBREC received and PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// What happened to a message offered to a session's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Queued,
    /// Queued, and the oldest queued QoS 0 message was dropped to make room.
    QueuedDroppedOldestQos0,
    /// The queue was full of QoS 1/2 messages: the new message was dropped.
    Dropped,
}

/// What the session wants sent again when a client resumes it.
#[derive(Clone, Debug)]
pub enum Resend {
    /// A PUBLISH to send again with DUP set, under the same packet identifier.
    Publish(u16, Delivery),
    /// A PUBREL to send again.
    PubRel(u16),
}

#[derive(Debug, PartialEq, Eq)]
pub enum AckError {
    /// The packet identifier is not in flight (or in flight in another state).
    UnknownPacketId,
}

/// A session as plain data: what moves to another node when its client connects there.
#[derive(Clone, Debug)]
pub struct SessionParts {
    pub client_id: String,
    pub expiry_interval: u32,
    pub subscriptions: Vec<(String, Subscription)>,
    /// In flight to the client, oldest first: the message, or `None` once PUBREL was sent.
    pub outgoing: Vec<(u16, Option<Delivery>)>,
    pub queue: Vec<Delivery>,
    pub next_packet_id: u16,
    /// QoS 2 packet identifiers received from the client and not yet released.
    pub incoming_qos2: Vec<u16>,
}

#[derive(Debug)]
pub struct Session {
    pub client_id: Arc<str>,
    /// Keyed by the filter exactly as subscribed (including any `$share/group/` prefix).
    pub subscriptions: HashMap<String, Subscription>,
    /// Session Expiry Interval in seconds (0: the session ends with the connection).
    pub expiry_interval: u32,
    /// In flight to the client, oldest first. Acknowledgements nearly always come in
    /// order, so the entry sought is almost always at the front.
    outgoing: VecDeque<(u16, OutgoingInflight)>,
    queue: VecDeque<Delivery>,
    queued_qos0: usize,
    next_packet_id: u16,
    /// QoS 2 packet identifiers received from the client and not yet released (PUBREL).
    incoming_qos2: HashSet<u16>,
}

impl Session {
    pub fn new(client_id: Arc<str>, expiry_interval: u32) -> Self {
        Self {
            client_id,
            subscriptions: HashMap::new(),
            expiry_interval,
            outgoing: VecDeque::new(),
            queue: VecDeque::new(),
            queued_qos0: 0,
            next_packet_id: 1,
            incoming_qos2: HashSet::new(),
        }
    }

    pub fn into_parts(self) -> SessionParts {
        SessionParts {
            client_id: self.client_id.to_string(),
            expiry_interval: self.expiry_interval,
            subscriptions: self.subscriptions.into_iter().collect(),
            outgoing: self
                .outgoing
                .into_iter()
                .map(|(id, state)| match state {
                    OutgoingInflight::Publish(d) => (id, Some(d)),
                    OutgoingInflight::Released => (id, None),
                })
                .collect(),
            queue: self.queue.into_iter().collect(),
            next_packet_id: self.next_packet_id,
            incoming_qos2: self.incoming_qos2.into_iter().collect(),
        }
    }

    pub fn from_parts(parts: SessionParts) -> Self {
        let queue: VecDeque<Delivery> = parts.queue.into();
        Self {
            client_id: Arc::from(parts.client_id.as_str()),
            subscriptions: parts.subscriptions.into_iter().collect(),
            expiry_interval: parts.expiry_interval,
            outgoing: parts
                .outgoing
                .into_iter()
                .map(|(id, d)| {
                    (
                        id,
                        d.map_or(OutgoingInflight::Released, OutgoingInflight::Publish),
                    )
                })
                .collect(),
            queued_qos0: queue.iter().filter(|d| d.qos == QoS::AtMostOnce).count(),
            queue,
            next_packet_id: parts.next_packet_id.max(1),
            incoming_qos2: parts.incoming_qos2.into_iter().collect(),
        }
    }

    /// Offers a message to the queue, keeping it within `max_queued`: when full, the oldest
    /// QoS 0 message makes room; with none to drop, the new message is dropped.
    pub fn enqueue(&mut self, delivery: Delivery, max_queued: usize) -> EnqueueOutcome {
        let mut outcome = EnqueueOutcome::Queued;
        if self.queue.len() >= max_queued {
            if self.queued_qos0 == 0 || !self.drop_oldest_qos0() {
                return EnqueueOutcome::Dropped;
            }
            outcome = EnqueueOutcome::QueuedDroppedOldestQos0;
        }
        if delivery.qos == QoS::AtMostOnce {
            self.queued_qos0 += 1;
        }
        self.queue.push_back(delivery);
        outcome
    }

    fn drop_oldest_qos0(&mut self) -> bool {
        match self.queue.iter().position(|d| d.qos == QoS::AtMostOnce) {
            Some(i) => {
                self.queue.remove(i);
                self.queued_qos0 -= 1;
                true
            }
            None => false,
        }
    }

    pub fn queued_len(&self) -> usize {
        self.queue.len()
    }

    pub fn inflight_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Takes the next message that may be sent now. QoS 1/2 messages need a free slot in
    /// the client's receive window (`window`) and get a packet identifier; QoS 0 never
    /// waits for one. Expired messages are skipped and counted in `expired`.
    ///
    /// A QoS 1/2 message is lent from its in-flight entry rather than copied: the copy
    /// would touch the message's shared reference count twice per delivery, on a cache
    /// line every core delivering that message fights over.
    pub fn take_next(
        &mut self,
        window: usize,
        now: Instant,
        expired: &mut u64,
    ) -> Option<Outgoing<'_>> {
        loop {
            let front = self.queue.front()?;
            if front.qos != QoS::AtMostOnce && self.outgoing.len() >= window {
                // Keep order: a QoS 0 message behind a blocked QoS 1 waits its turn too.
                return None;
            }
            let delivery = self.queue.pop_front()?;
            if delivery.qos == QoS::AtMostOnce {
                self.queued_qos0 -= 1;
            }
            if delivery.message.is_expired(now) {
                *expired += 1;
                continue;
            }
            if delivery.qos == QoS::AtMostOnce {
                return Some(Outgoing::AtMostOnce(delivery));
            }
            let packet_id = self.allocate_packet_id()?;
            self.outgoing
                .push_back((packet_id, OutgoingInflight::Publish(delivery)));
            return match self.outgoing.back() {
                Some((_, OutgoingInflight::Publish(delivery))) => {
                    Some(Outgoing::InFlight(packet_id, delivery))
                }
                _ => None,
            };
        }
    }

    /// [`Session::take_next`] as owned values: the packet identifier (0 for QoS 0) and a
    /// copy of the delivery.
    pub fn next_to_send(
        &mut self,
        window: usize,
        now: Instant,
        expired: &mut u64,
    ) -> Option<(u16, Delivery)> {
        self.take_next(window, now, expired)
            .map(|o| (o.packet_id(), o.delivery().clone()))
    }

    fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if !self.packet_id_in_use(id) {
                return Some(id);
            }
        }
        None
    }

    /// Ids are handed out in sequence, so every id in flight lies on the cycle from the
    /// oldest one's id to the newest one's. A candidate outside that arc is free without
    /// a search; only a window stretched over nearly all 65535 ids needs one.
    fn packet_id_in_use(&self, id: u16) -> bool {
        let (Some((oldest, _)), Some((newest, _))) = (self.outgoing.front(), self.outgoing.back())
        else {
            return false;
        };
        let arc = |from: u16, to: u16| (u32::from(to) + 65535 - u32::from(from)) % 65535;
        if arc(*oldest, id) > arc(*oldest, *newest) {
            return false;
        }
        self.outgoing.iter().any(|(i, _)| *i == id)
    }

    fn position(&self, packet_id: u16) -> Option<usize> {
        self.outgoing.iter().position(|(id, _)| *id == packet_id)
    }

    fn remove_at(&mut self, index: usize) {
        if index == 0 {
            self.outgoing.pop_front();
        } else {
            self.outgoing.remove(index);
        }
    }

    /// Forgets a packet identifier handed out by `take_next` whose PUBLISH could not be
    /// sent at all (e.g. larger than the client's Maximum Packet Size).
    pub fn abandon(&mut self, packet_id: u16) {
        if let Some(i) = self.position(packet_id) {
            self.remove_at(i);
        }
    }

    /// PUBACK for a QoS 1 message we sent.
    pub fn on_puback(&mut self, packet_id: u16) -> Result<(), AckError> {
        match self.position(packet_id) {
            Some(i) if matches!(&self.outgoing[i].1, OutgoingInflight::Publish(d) if d.qos == QoS::AtLeastOnce) =>
            {
                self.remove_at(i);
                Ok(())
            }
            _ => Err(AckError::UnknownPacketId),
        }
    }

    /// PUBREC for a QoS 2 message we sent: the caller sends PUBREL. A repeated PUBREC for a
    /// message already released is answered with PUBREL again. `accepted` is false when the
    /// client's PUBREC carried an error reason: the exchange then ends there.
    pub fn on_pubrec(&mut self, packet_id: u16, accepted: bool) -> Result<(), AckError> {
        let Some(i) = self.position(packet_id) else {
            return Err(AckError::UnknownPacketId);
        };
        match &self.outgoing[i].1 {
            OutgoingInflight::Publish(d) if d.qos == QoS::ExactlyOnce => {
                if accepted {
                    self.outgoing[i].1 = OutgoingInflight::Released;
                } else {
                    self.remove_at(i);
                }
                Ok(())
            }
            OutgoingInflight::Released => Ok(()),
            OutgoingInflight::Publish(_) => Err(AckError::UnknownPacketId),
        }
    }

    /// PUBCOMP: the QoS 2 exchange for a message we sent is complete.
    pub fn on_pubcomp(&mut self, packet_id: u16) -> Result<(), AckError> {
        match self.position(packet_id) {
            Some(i) if matches!(self.outgoing[i].1, OutgoingInflight::Released) => {
                self.remove_at(i);
                Ok(())
            }
            _ => Err(AckError::UnknownPacketId),
        }
    }

    /// What to send again, in the order first sent, when the client resumes this session
    /// on a new connection.
    pub fn resend_on_resume(&self) -> Vec<Resend> {
        self.outgoing
            .iter()
            .map(|&(id, ref state)| match state {
                OutgoingInflight::Publish(d) => Resend::Publish(id, d.clone()),
                OutgoingInflight::Released => Resend::PubRel(id),
            })
            .collect()
    }

    /// A QoS 2 PUBLISH arrived from the client. Returns true when it is new and must be
    /// delivered; false when it repeats one not yet released (deliver nothing, PUBREC again).
    pub fn on_incoming_qos2(&mut self, packet_id: u16) -> bool {
        self.incoming_qos2.insert(packet_id)
    }

    /// How many QoS 2 messages from the client await PUBREL (they count against the
    /// server's Receive Maximum).
    pub fn incoming_qos2_len(&self) -> usize {
        self.incoming_qos2.len()
    }

    pub fn incoming_qos2_pending(&self, packet_id: u16) -> bool {
        self.incoming_qos2.contains(&packet_id)
    }

    /// PUBREL from the client. Returns whether the packet identifier was known.
    pub fn on_pubrel(&mut self, packet_id: u16) -> bool {
        self.incoming_qos2.remove(&packet_id)
    }

    /// Drops every queued message; returns how many there were.
    pub fn clear_queue(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        self.queued_qos0 = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;
    use tern_codec::PublishProperties;

    fn delivery(qos: QoS, payload: &'static str, now: Instant) -> Delivery {
        let message = Message::from_publish(
            Arc::from("t"),
            Bytes::from_static(payload.as_bytes()),
            qos,
            false,
            Arc::from("pub"),
            PublishProperties::default(),
            now,
        );
        Delivery {
            message: Arc::new(message),
            qos,
            retain: false,
            subscription_ids: vec![],
        }
    }

    fn payloads(s: &mut Session, window: usize, now: Instant) -> Vec<(u16, String)> {
        let mut expired = 0;
        std::iter::from_fn(|| s.next_to_send(window, now, &mut expired))
            .map(|(id, d)| (id, String::from_utf8_lossy(&d.message.payload).into_owned()))
            .collect()
    }

    #[test]
    fn full_queue_drops_oldest_qos0_first_then_new_messages() {
        let now = Instant::now();
        let mut s = Session::new(Arc::from("c"), 0);
        let steps = [
            (QoS::AtMostOnce, "a0", EnqueueOutcome::Queued),
            (QoS::AtLeastOnce, "b1", EnqueueOutcome::Queued),
            (QoS::AtMostOnce, "c0", EnqueueOutcome::Queued),
            (
                QoS::AtLeastOnce,
                "d1",
                EnqueueOutcome::QueuedDroppedOldestQos0,
            ),
            (
                QoS::AtLeastOnce,
                "e1",
                EnqueueOutcome::QueuedDroppedOldestQos0,
            ),
            (QoS::AtMostOnce, "f0", EnqueueOutcome::Dropped),
        ];
        for (qos, payload, outcome) in steps {
            assert_eq!(
                s.enqueue(delivery(qos, payload, now), 3),
                outcome,
                "{payload}"
            );
        }
        let sent: Vec<String> = payloads(&mut s, 10, now)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(sent, ["b1", "d1", "e1"]);
    }

    #[test]
    fn window_limits_qos1_and_keeps_order() {
        let now = Instant::now();
        let mut s = Session::new(Arc::from("c"), 0);
        for p in ["m1", "m2", "m3"] {
            s.enqueue(delivery(QoS::AtLeastOnce, p, now), 100);
        }
        s.enqueue(delivery(QoS::AtMostOnce, "q0", now), 100);
        let first = payloads(&mut s, 2, now);
        assert_eq!(first, [(1, "m1".to_string()), (2, "m2".to_string())]);
        assert_eq!(s.on_puback(1), Ok(()));
        assert_eq!(s.on_puback(1), Err(AckError::UnknownPacketId));
        // m3 takes the freed slot; the QoS 0 message behind it needs no slot.
        let next = payloads(&mut s, 2, now);
        assert_eq!(next, [(3, "m3".to_string()), (0, "q0".to_string())]);
        assert_eq!(s.inflight_len(), 2);
    }

    #[test]
    fn qos2_outgoing_flow_and_resume() {
        let now = Instant::now();
        let mut s = Session::new(Arc::from("c"), 60);
        s.enqueue(delivery(QoS::ExactlyOnce, "x", now), 10);
        s.enqueue(delivery(QoS::ExactlyOnce, "y", now), 10);
        let sent = payloads(&mut s, 10, now);
        assert_eq!(sent.len(), 2);
        assert_eq!(s.on_pubcomp(1), Err(AckError::UnknownPacketId));
        assert_eq!(s.on_pubrec(1, true), Ok(()));
        assert_eq!(
            s.on_pubrec(1, true),
            Ok(()),
            "repeated PUBREC is answered again"
        );
        let resend = s.resend_on_resume();
        assert!(matches!(resend[0], Resend::PubRel(1)));
        assert!(matches!(&resend[1], Resend::Publish(2, d) if &d.message.payload[..] == b"y"));
        assert_eq!(s.on_pubcomp(1), Ok(()));
        assert_eq!(
            s.on_puback(2),
            Err(AckError::UnknownPacketId),
            "QoS 2 is not PUBACKed"
        );
        assert_eq!(s.on_pubrec(2, false), Ok(()));
        assert_eq!(s.inflight_len(), 0);
    }

    #[test]
    fn incoming_qos2_is_delivered_once_until_released() {
        let mut s = Session::new(Arc::from("c"), 0);
        assert!(s.on_incoming_qos2(7));
        assert!(!s.on_incoming_qos2(7));
        assert_eq!(s.incoming_qos2_len(), 1);
        assert!(s.on_pubrel(7));
        assert!(!s.on_pubrel(7));
        assert!(s.on_incoming_qos2(7), "after release the id may be reused");
    }

    #[test]
    fn expired_messages_are_skipped() {
        let now = Instant::now();
        let mut s = Session::new(Arc::from("c"), 0);
        let props = PublishProperties {
            message_expiry_interval: Some(1),
            ..Default::default()
        };
        let m = Message::from_publish(
            Arc::from("t"),
            Bytes::from_static(b"old"),
            QoS::AtLeastOnce,
            false,
            Arc::from("p"),
            props,
            now,
        );
        s.enqueue(
            Delivery {
                message: Arc::new(m),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: vec![],
            },
            10,
        );
        s.enqueue(delivery(QoS::AtLeastOnce, "fresh", now), 10);
        let mut expired = 0;
        let later = now + Duration::from_secs(2);
        let (_, d) = s
            .next_to_send(10, later, &mut expired)
            .expect("fresh message");
        assert_eq!(&d.message.payload[..], b"fresh");
        assert_eq!(expired, 1);
    }

    #[test]
    fn packet_ids_wrap_and_skip_ids_in_flight() {
        let now = Instant::now();
        let mut s = Session::new(Arc::from("c"), 0);
        s.next_packet_id = u16::MAX;
        for p in ["a", "b"] {
            s.enqueue(delivery(QoS::AtLeastOnce, p, now), 10);
        }
        let ids: Vec<u16> = payloads(&mut s, 10, now)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, [u16::MAX, 1]);
    }

    #[test]
    fn packet_id_allocation_skips_ids_still_in_flight_after_a_full_cycle() {
        let now = Instant::now();
        let mut s = Session::new(Arc::from("c"), 0);
        // Ids 1 and 2 stay unacknowledged while the counter goes once round the cycle.
        for p in ["old1", "old2"] {
            s.enqueue(delivery(QoS::AtLeastOnce, p, now), 10);
        }
        assert_eq!(payloads(&mut s, 10, now).len(), 2);
        s.next_packet_id = u16::MAX;
        s.enqueue(delivery(QoS::AtLeastOnce, "new", now), 10);
        s.enqueue(delivery(QoS::AtLeastOnce, "newer", now), 10);
        let ids: Vec<u16> = payloads(&mut s, 10, now)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, [u16::MAX, 3], "1 and 2 are still in flight");
        assert_eq!(s.on_puback(2), Ok(()), "an out-of-order ack");
        assert_eq!(s.on_puback(1), Ok(()));
        assert_eq!(s.on_puback(u16::MAX), Ok(()));
        assert_eq!(s.on_puback(3), Ok(()));
        assert_eq!(s.inflight_len(), 0);
    }
}
