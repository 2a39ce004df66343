//! The broker served over real loopback TCP, driven by a minimal client built on
//! tern-codec: exercises connection handling without the server crate.

mod common;

use std::time::Duration;

use common::{start, Client};
use tern_broker::BrokerConfig;
use tern_codec::*;

#[tokio::test]
async fn qos1_roundtrip_and_offline_queue() {
    let (broker, addr) = start(BrokerConfig::default()).await;
    let (mut sub, ack) = Client::connect(addr, ProtocolVersion::V5, "sub", true, Some(60)).await;
    assert!(!ack.session_present);
    assert_eq!(
        sub.subscribe("a/+", QoS::AtLeastOnce).await.reasons,
        vec![ReasonCode(1)]
    );
    let (mut publ, _) = Client::connect(addr, ProtocolVersion::V311, "pub", true, None).await;
    publ.publish("a/b", b"one", QoS::AtLeastOnce, 7).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(r)) if r.packet_id == 7));
    match sub.recv().await {
        Some(Packet::Publish(p)) => {
            assert_eq!(&p.payload[..], b"one");
            assert_eq!(p.qos, QoS::AtLeastOnce);
            sub.send(Packet::PubAck(PubResponse::new(p.packet_id)))
                .await;
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    // Go offline (DISCONNECT keeps the session: expiry 60 s), publish, come back.
    sub.send(Packet::Disconnect(Disconnect::default())).await;
    assert!(sub.recv().await.is_none());
    for i in 0..10u16 {
        publ.publish("a/c", b"queued", QoS::AtLeastOnce, 100 + i)
            .await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    }
    let (mut sub, ack) = Client::connect(addr, ProtocolVersion::V5, "sub", false, Some(60)).await;
    assert!(ack.session_present);
    for _ in 0..10 {
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], b"queued");
                sub.send(Packet::PubAck(PubResponse::new(p.packet_id)))
                    .await;
            }
            other => panic!("expected queued PUBLISH, got {other:?}"),
        }
    }
    assert!(broker.has_session("sub"));
    broker.shutdown(Duration::from_secs(2)).await;
    assert!(
        matches!(sub.recv().await, Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SERVER_SHUTTING_DOWN)
    );
}

#[tokio::test]
async fn takeover_disconnects_the_first_connection() {
    let (_broker, addr) = start(BrokerConfig::default()).await;
    let (mut first, _) = Client::connect(addr, ProtocolVersion::V5, "same", false, Some(60)).await;
    first.subscribe("t", QoS::AtLeastOnce).await;
    let (mut second, ack) =
        Client::connect(addr, ProtocolVersion::V5, "same", false, Some(60)).await;
    assert!(
        ack.session_present,
        "the session moved to the new connection"
    );
    assert!(
        matches!(first.recv().await, Some(Packet::Disconnect(d)) if d.reason == ReasonCode::SESSION_TAKEN_OVER)
    );
    second.publish("t", b"x", QoS::AtLeastOnce, 1).await;
    let mut got = 0;
    while let Some(p) = second.recv().await {
        match p {
            Packet::PubAck(_) => {}
            Packet::Publish(p) => {
                got += 1;
                assert_eq!(&p.payload[..], b"x");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, 1, "the subscription survived the takeover");
}
