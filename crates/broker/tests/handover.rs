//! A client's persistent session moving between two brokers in one process, through the
//! `Cluster::claim` / `Broker::hand_over` pair that the cluster layer drives over QUIC.
//! The test cluster here passes the session across as `SessionParts`, as the wire does.

mod common;

use std::sync::{Arc, Weak};

use common::{start_in, Client};
use parking_lot::Mutex;
use tern_broker::cluster::SessionFuture;
use tern_broker::session::Session;
use tern_broker::{Broker, BrokerConfig, Cluster, Message};
use tern_codec::*;

/// Knows the other broker and, on a claim that wants a session, takes it from there.
#[derive(Default)]
struct PairedNode {
    other: Mutex<Option<Weak<Broker>>>,
}

impl Cluster for PairedNode {
    fn route_added(&self, _: &str) {}
    fn route_removed(&self, _: &str) {}
    fn shared_members(&self, _: &str, _: &str, _: usize) {}
    fn forward(&self, _: &Arc<Message>) -> bool {
        false
    }
    fn retained_changed(&self, _: &str, _: Option<&Arc<Message>>) {}
    fn claim(&self, client_id: &str, want_session: bool) -> SessionFuture {
        let other = self.other.lock().as_ref().and_then(Weak::upgrade);
        let client_id = client_id.to_string();
        Box::pin(async move {
            let other = other?;
            // The old node gives the session up whether or not the client resumes it.
            let session = other.hand_over(&client_id).await?;
            // This test's "cluster" has no routes to wait for: finish at once.
            other.finish_hand_over(&client_id);
            want_session.then(|| Session::from_parts(session.into_parts()))
        })
    }
}

#[tokio::test]
async fn persistent_session_moves_with_its_queued_messages() {
    let (cluster_a, cluster_b) = (
        Arc::new(PairedNode::default()),
        Arc::new(PairedNode::default()),
    );
    let (broker_a, addr_a) = start_in(BrokerConfig::default(), cluster_a.clone()).await;
    let (broker_b, addr_b) = start_in(BrokerConfig::default(), cluster_b.clone()).await;
    *cluster_a.other.lock() = Some(Arc::downgrade(&broker_b));
    *cluster_b.other.lock() = Some(Arc::downgrade(&broker_a));

    // On node A: a persistent subscriber, then messages queued while it is connected but
    // not acknowledging (in flight) and while it is offline (queued).
    let (mut sub, _) =
        Client::connect(addr_a, ProtocolVersion::V5, "mover", false, Some(300)).await;
    sub.subscribe("jobs/#", QoS::AtLeastOnce).await;
    let (mut publ, _) = Client::connect(addr_a, ProtocolVersion::V5, "pub", true, None).await;
    for i in 0..5u16 {
        publ.publish("jobs/a", b"in-flight", QoS::AtLeastOnce, 10 + i)
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    }
    for _ in 0..5 {
        assert!(
            matches!(sub.recv().await, Some(Packet::Publish(_))),
            "delivered, left unacknowledged"
        );
    }

    // The client shows up on node B: A disconnects it (0x8E) and hands the session over.
    let (mut moved, ack) =
        Client::connect(addr_b, ProtocolVersion::V5, "mover", false, Some(300)).await;
    assert!(ack.session_present, "the session came from node A");
    assert!(
        matches!(sub.recv().await, Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SESSION_TAKEN_OVER)
    );
    assert!(!broker_a.has_session("mover"), "node A forgot the session");

    // The five unacknowledged messages come again with DUP; nothing else, nothing lost.
    let mut redelivered = 0;
    while redelivered < 5 {
        match moved.recv().await {
            Some(Packet::Publish(p)) => {
                assert!(p.dup, "a resent message carries DUP");
                assert_eq!(&p.payload[..], b"in-flight");
                moved
                    .send(Packet::PubAck(PubResponse::new(p.packet_id)))
                    .await;
                redelivered += 1;
            }
            other => panic!("expected a redelivered PUBLISH, got {other:?}"),
        }
    }
    // Its subscription lives on node B now.
    let (mut publ_b, _) = Client::connect(addr_b, ProtocolVersion::V311, "pub-b", true, None).await;
    publ_b.publish("jobs/b", b"on-b", QoS::AtLeastOnce, 1).await;
    assert!(matches!(publ_b.recv().await, Some(Packet::PubAck(_))));
    match moved.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"on-b"),
        other => panic!("expected the new message, got {other:?}"),
    }
    assert_eq!(broker_b.subscription_count(), 1);
    assert_eq!(broker_a.subscription_count(), 0);
}

#[tokio::test]
async fn clean_start_elsewhere_discards_the_old_session() {
    let (cluster_a, cluster_b) = (
        Arc::new(PairedNode::default()),
        Arc::new(PairedNode::default()),
    );
    let (broker_a, addr_a) = start_in(BrokerConfig::default(), cluster_a.clone()).await;
    let (_broker_b, addr_b) = start_in(BrokerConfig::default(), cluster_b.clone()).await;
    *cluster_a.other.lock() = Some(Arc::downgrade(&_broker_b));
    *cluster_b.other.lock() = Some(Arc::downgrade(&broker_a));

    let (mut old, _) =
        Client::connect(addr_a, ProtocolVersion::V5, "fresh", false, Some(300)).await;
    old.subscribe("x", QoS::AtLeastOnce).await;
    let (_new, ack) = Client::connect(addr_b, ProtocolVersion::V5, "fresh", true, Some(300)).await;
    assert!(!ack.session_present);
    assert!(
        matches!(old.recv().await, Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SESSION_TAKEN_OVER)
    );
    assert!(!broker_a.has_session("fresh"));
    assert_eq!(broker_a.subscription_count(), 0);
}
