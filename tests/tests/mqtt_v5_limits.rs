//! MQTT 5 limits negotiated at CONNECT: topic aliases (both directions), Receive Maximum
//! (both directions), Maximum Packet Size (both directions).

use std::collections::BTreeSet;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet as V4Packet, QoS as V4QoS};
use tern_codec::{Packet, ProtocolVersion, PubResponse, QoS, ReasonCode};
use tern_tests::clients::{connect_packet, publish_packet, text, Pump, RawClient, Recv, TIMEOUT};
use tern_tests::TestNode;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

type V4Pump = Pump<Event, ConnectionError>;

async fn v4_subscriber(node: &TestNode, id: &str, filter: &str) -> (AsyncClient, V4Pump) {
    let opts = MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    let (client, eventloop) = AsyncClient::new(opts, 100);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    pump.wait_for("CONNACK", |e| {
        matches!(e, Event::Incoming(V4Packet::ConnAck(_))).then_some(())
    })
    .await;
    client
        .subscribe(filter, V4QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    pump.wait_for("SUBACK", |e| {
        matches!(e, Event::Incoming(V4Packet::SubAck(_))).then_some(())
    })
    .await;
    (client, pump)
}

async fn v4_until_fence(pump: &mut V4Pump, fence: &str) -> Vec<rumqttc::Publish> {
    let mut got = Vec::new();
    pump.wait_for(&format!("publish {fence:?}"), |e| match e {
        Event::Incoming(V4Packet::Publish(p)) if p.payload.as_ref() == fence.as_bytes() => Some(()),
        Event::Incoming(V4Packet::Publish(p)) => {
            got.push(p.clone());
            None
        }
        _ => None,
    })
    .await;
    got
}

fn aliased(topic: &str, alias: u16, payload: &str, qos: QoS) -> tern_codec::Publish {
    let mut p = publish_packet(topic, payload, qos, false);
    p.properties.topic_alias = Some(alias);
    p
}

// ---- topic aliases -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_from_client_is_resolved_for_subscribers() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let (_v4, mut v4_pump) = v4_subscriber(&node, "alias-in-v4", "alias/#").await;
    let mut v5_sub = RawClient::v5(addr, "alias-in-v5").await; // announces no Topic Alias Maximum
    v5_sub.subscribe("alias/#", QoS::AtLeastOnce).await;

    let (mut publ, ack) = RawClient::connect_ok(addr, connect_packet(V5, "alias-in-pub")).await;
    let max = ack.properties.topic_alias_maximum.unwrap_or(0);
    assert!(
        max >= 2,
        "the default config offers topic aliases (64): CONNACK {ack:?}"
    );

    // (topic, alias, payload, qos): an empty topic means "the topic this alias stands for";
    // alias 1 is re-mapped to another topic half way.
    let publishes = [
        ("alias/one", 1, "a", QoS::AtLeastOnce),
        ("", 1, "b", QoS::AtLeastOnce),
        ("alias/two", 2, "c", QoS::AtMostOnce),
        ("", 2, "d", QoS::AtLeastOnce),
        ("alias/three", 1, "e", QoS::AtLeastOnce),
        ("", 1, "f", QoS::AtLeastOnce),
    ];
    for (topic, alias, payload, qos) in publishes {
        assert_eq!(
            publ.publish_packet(aliased(topic, alias, payload, qos))
                .await,
            ReasonCode::SUCCESS,
            "publish {payload}"
        );
    }
    publ.publish("alias/fence", "fence", QoS::AtLeastOnce, false)
        .await;

    let expected = [
        ("alias/one", "a"),
        ("alias/one", "b"),
        ("alias/two", "c"),
        ("alias/two", "d"),
        ("alias/three", "e"),
        ("alias/three", "f"),
    ];
    let got = v4_until_fence(&mut v4_pump, "fence").await;
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|p| (p.topic.clone(), text(&p.payload)))
        .collect();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect();
    assert_eq!(seen, want, "3.1.1 subscriber: full topics");

    let got = v5_sub.recv_until_payload("fence").await;
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|p| (p.topic.clone(), text(&p.payload)))
        .collect();
    assert_eq!(
        seen, want,
        "v5 subscriber without Topic Alias Maximum: full topics"
    );
    assert!(
        got.iter().all(|p| p.properties.topic_alias.is_none()),
        "no alias may be sent to a client that did not announce Topic Alias Maximum: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_above_maximum_disconnects_0x94() {
    let node = TestNode::start_with(|cfg| cfg.broker.topic_alias_maximum = 4).await;
    let (mut publ, ack) =
        RawClient::connect_ok(node.mqtt_addr(), connect_packet(V5, "alias-too-big")).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(4), "{ack:?}");
    assert_eq!(
        publ.publish_packet(aliased("ok/t", 4, "fine", QoS::AtLeastOnce))
            .await,
        ReasonCode::SUCCESS
    );
    publ.send(Packet::Publish(aliased(
        "big/t",
        5,
        "too far",
        QoS::AtMostOnce,
    )))
    .await;
    let d = publ.expect_disconnect().await;
    assert_eq!(d.reason, ReasonCode::TOPIC_ALIAS_INVALID, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_zero_is_refused_with_disconnect() {
    let node = TestNode::start().await;
    let mut publ = RawClient::v5(node.mqtt_addr(), "alias-zero").await;
    publ.send(Packet::Publish(aliased("zero/t", 0, "x", QoS::AtMostOnce)))
        .await;
    let d = publ.expect_disconnect().await;
    // MQTT-3.3.2-8 forbids alias 0 without naming the code: 0x94 (Topic Alias invalid, what
    // mosquitto sends) or 0x82 (Protocol Error) are both accepted.
    assert!(
        d.reason == ReasonCode::TOPIC_ALIAS_INVALID || d.reason == ReasonCode::PROTOCOL_ERROR,
        "expected 0x94 (or 0x82), got {d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_alias_with_empty_topic_is_a_protocol_error() {
    let node = TestNode::start().await;
    let mut publ = RawClient::v5(node.mqtt_addr(), "alias-unknown").await;
    publ.send(Packet::Publish(aliased("", 3, "x", QoS::AtMostOnce)))
        .await;
    let d = publ.expect_disconnect().await;
    // MQTT 5 section 3.3.4: an alias with no mapping is a Protocol Error; 0x94 is accepted too.
    assert!(
        d.reason == ReasonCode::PROTOCOL_ERROR || d.reason == ReasonCode::TOPIC_ALIAS_INVALID,
        "expected 0x82 (or 0x94), got {d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_is_not_allowed_when_broker_offers_none() {
    let node = TestNode::start_with(|cfg| cfg.broker.topic_alias_maximum = 0).await;
    let (mut publ, ack) =
        RawClient::connect_ok(node.mqtt_addr(), connect_packet(V5, "alias-none")).await;
    assert!(
        matches!(ack.properties.topic_alias_maximum, None | Some(0)),
        "{ack:?}"
    );
    publ.send(Packet::Publish(aliased("none/t", 1, "x", QoS::AtMostOnce)))
        .await;
    let d = publ.expect_disconnect().await;
    assert_eq!(d.reason, ReasonCode::TOPIC_ALIAS_INVALID, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_uses_topic_aliases_towards_client_that_allows_them() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(V5, "alias-out-sub");
    connect.properties.topic_alias_maximum = Some(10);
    let (mut sub, _) = RawClient::connect_ok(addr, connect).await;
    sub.subscribe("alias-out/#", QoS::AtLeastOnce).await;

    let mut publ = RawClient::v311(addr, "alias-out-pub").await;
    for (t, p) in [
        ("alias-out/a", "1"),
        ("alias-out/a", "2"),
        ("alias-out/b", "3"),
        ("alias-out/a", "4"),
        ("alias-out/b", "5"),
    ] {
        publ.publish(t, p, QoS::AtLeastOnce, false).await;
    }
    let got = sub.recv_publishes(5).await;
    let first_a = &got[0];
    assert_eq!(
        first_a.topic, "alias-out/a",
        "the first use of a topic carries the topic name: {first_a:?}"
    );
    let alias_a = first_a
        .properties
        .topic_alias
        .expect("the broker assigns an alias on first use");
    assert!(
        (1..=10).contains(&alias_a),
        "alias within the client's maximum: {alias_a}"
    );

    let second_a = &got[1];
    assert_eq!(
        (second_a.topic.as_str(), second_a.properties.topic_alias),
        ("", Some(alias_a)),
        "the second message on the topic arrives with the alias and an empty topic: {second_a:?}"
    );
    let first_b = &got[2];
    assert_eq!(first_b.topic, "alias-out/b");
    if let Some(alias_b) = first_b.properties.topic_alias {
        assert_ne!(alias_b, alias_a, "two topics cannot share an alias at once");
        assert_eq!(
            (got[4].topic.as_str(), got[4].properties.topic_alias),
            ("", Some(alias_b))
        );
    }
    assert_eq!(
        (got[3].topic.as_str(), got[3].properties.topic_alias),
        ("", Some(alias_a))
    );
    let payloads: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(payloads, vec!["1", "2", "3", "4", "5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_never_exceeds_client_topic_alias_maximum() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(V5, "alias-out-max");
    connect.properties.topic_alias_maximum = Some(2);
    let (mut sub, _) = RawClient::connect_ok(addr, connect).await;
    sub.subscribe("am/#", QoS::AtLeastOnce).await;
    let mut publ = RawClient::v5(addr, "alias-out-max-pub").await;
    for i in 0..5 {
        for _ in 0..2 {
            publ.publish(&format!("am/{i}"), format!("{i}"), QoS::AtLeastOnce, false)
                .await;
        }
    }
    let got = sub.recv_publishes(10).await;
    let mut known = std::collections::HashMap::new();
    for p in &got {
        if let Some(a) = p.properties.topic_alias {
            assert!(
                (1..=2).contains(&a),
                "alias {a} beyond the client's maximum 2: {p:?}"
            );
        }
        let topic = if p.topic.is_empty() {
            let a = p
                .properties
                .topic_alias
                .expect("an empty topic needs an alias");
            known
                .get(&a)
                .cloned()
                .expect("alias used before it was set")
        } else {
            if let Some(a) = p.properties.topic_alias {
                known.insert(a, p.topic.clone());
            }
            p.topic.clone()
        };
        assert_eq!(
            topic,
            format!("am/{}", text(&p.payload)),
            "alias resolves to the right topic"
        );
    }
}

// ---- receive maximum -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_announces_receive_maximum_and_disconnects_0x93_beyond_it() {
    let node = TestNode::start_with(|cfg| cfg.broker.receive_maximum = 5).await;
    let (mut c, ack) =
        RawClient::connect_ok(node.mqtt_addr(), connect_packet(V5, "recv-max-exceed")).await;
    assert_eq!(ack.properties.receive_maximum, Some(5), "{ack:?}");
    // QoS 2 without PUBREL keeps each publish in flight.
    for id in 1..=5u16 {
        let mut p = publish_packet("rm/t", format!("{id}"), QoS::ExactlyOnce, false);
        p.packet_id = id;
        c.send(Packet::Publish(p)).await;
        match c.expect("PUBREC").await {
            Packet::PubRec(r) => {
                assert_eq!((r.packet_id, r.reason.is_error()), (id, false), "{r:?}")
            }
            other => panic!("expected PUBREC for {id}, got {other:?}"),
        }
    }
    let mut sixth = publish_packet("rm/t", "6", QoS::ExactlyOnce, false);
    sixth.packet_id = 6;
    c.send(Packet::Publish(sixth)).await;
    let d = c.expect_disconnect().await;
    assert_eq!(d.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_flow_frees_a_receive_maximum_slot() {
    let node = TestNode::start_with(|cfg| cfg.broker.receive_maximum = 5).await;
    let mut c = RawClient::v5(node.mqtt_addr(), "recv-max-ok").await;
    for id in 1..=5u16 {
        let mut p = publish_packet("rm/t", format!("{id}"), QoS::ExactlyOnce, false);
        p.packet_id = id;
        c.send(Packet::Publish(p)).await;
        assert!(matches!(c.expect("PUBREC").await, Packet::PubRec(r) if r.packet_id == id));
    }
    c.send(Packet::PubRel(PubResponse::new(1))).await;
    assert!(matches!(c.expect("PUBCOMP").await, Packet::PubComp(r) if r.packet_id == 1));
    let mut p = publish_packet("rm/t", "6", QoS::ExactlyOnce, false);
    p.packet_id = 6;
    c.send(Packet::Publish(p)).await;
    match c.expect("PUBREC").await {
        Packet::PubRec(r) => assert_eq!(r.packet_id, 6),
        other => panic!("5 in flight after one completed: the 6th is allowed; got {other:?}"),
    }
    // QoS 1 and 0 publishes still go through while 5 QoS 2 are in flight? QoS 1 would be a
    // 6th in-flight publish, so only QoS 0 is tried here.
    c.publish("rm/t", "q0", QoS::AtMostOnce, false).await;
    c.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_respects_client_receive_maximum() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(V5, "client-recv-max");
    connect.properties.receive_maximum = Some(2);
    let (mut sub, _) = RawClient::connect_ok(addr, connect).await;
    sub.subscribe("crm/t", QoS::AtLeastOnce).await;

    // All 20 are routed to the subscriber's session before it acknowledges anything.
    const N: usize = 20;
    let mut publ = RawClient::v5(addr, "client-recv-max-pub").await;
    for i in 0..N {
        publ.publish("crm/t", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }

    let mut outstanding: BTreeSet<u16> = BTreeSet::new();
    let mut received = Vec::new();
    fn take(p: tern_codec::Publish, outstanding: &mut BTreeSet<u16>, received: &mut Vec<String>) {
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert!(
            outstanding.insert(p.packet_id),
            "packet id {} reused while unacknowledged",
            p.packet_id
        );
        assert!(
            outstanding.len() <= 2,
            "Receive Maximum 2: the broker sent a 3rd unacknowledged QoS 1 publish {p:?}"
        );
        received.push(text(&p.payload));
    }
    while received.len() < N {
        // Take everything the broker sends until a PINGRESP, without acknowledging.
        sub.send(Packet::PingReq).await;
        loop {
            match sub.recv(TIMEOUT).await {
                Recv::Packet(Packet::Publish(p)) => take(p, &mut outstanding, &mut received),
                Recv::Packet(Packet::PingResp) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        if outstanding.is_empty() {
            // The next one may just not have been sent yet.
            match sub.recv(TIMEOUT).await {
                Recv::Packet(Packet::Publish(p)) => take(p, &mut outstanding, &mut received),
                other => panic!("nothing in flight, waiting for the next publish: {other:?}"),
            }
            continue;
        }
        // Acknowledge the oldest one only; the broker may then send one more.
        let oldest = *outstanding.iter().next().expect("non-empty");
        outstanding.remove(&oldest);
        sub.send(Packet::PubAck(PubResponse::new(oldest))).await;
    }
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(received, expected, "all messages, once each, in order");
}

// ---- maximum packet size -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_larger_than_broker_maximum_disconnects_0x95() {
    let node = TestNode::start_with(|cfg| cfg.broker.max_packet_size = 1024).await;
    let (mut c, ack) =
        RawClient::connect_ok(node.mqtt_addr(), connect_packet(V5, "too-large-v5")).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024), "{ack:?}");
    // Just under the limit is fine.
    c.publish("big/t", vec![b'x'; 900], QoS::AtLeastOnce, false)
        .await;
    c.send(Packet::Publish(publish_packet(
        "big/t",
        vec![b'x'; 2000],
        QoS::AtLeastOnce,
        false,
    )))
    .await;
    let d = c.expect_disconnect().await;
    assert_eq!(d.reason, ReasonCode::PACKET_TOO_LARGE, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_publish_larger_than_broker_maximum_closes_connection() {
    let node = TestNode::start_with(|cfg| cfg.broker.max_packet_size = 1024).await;
    let mut c = RawClient::v311(node.mqtt_addr(), "too-large-v311").await;
    c.send(Packet::Publish(publish_packet(
        "big/t",
        vec![b'x'; 2000],
        QoS::AtLeastOnce,
        false,
    )))
    .await;
    let packets = c.expect_closed(TIMEOUT).await;
    assert!(packets.is_empty(), "3.1.1: a plain close: {packets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_larger_than_client_maximum_packet_size_is_not_sent() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(V5, "small-client");
    connect.properties.maximum_packet_size = Some(200);
    let (mut small, _) = RawClient::connect_ok(addr, connect).await;
    small.subscribe("size/t", QoS::AtLeastOnce).await;
    let mut plain = RawClient::v311(addr, "size-plain").await;
    plain.subscribe("size/t", QoS::AtLeastOnce).await;

    let mut publ = RawClient::v5(addr, "size-pub").await;
    publ.publish("size/t", "small-1", QoS::AtLeastOnce, false)
        .await;
    publ.publish("size/t", vec![b'L'; 500], QoS::AtLeastOnce, false)
        .await;
    publ.publish("size/t", vec![b'Q'; 500], QoS::AtMostOnce, false)
        .await;
    publ.publish("size/t", "small-2", QoS::AtLeastOnce, false)
        .await;
    publ.publish("size/t", "fence", QoS::AtLeastOnce, false)
        .await;

    let got: Vec<String> = small
        .recv_until_payload("fence")
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(
        got,
        vec!["small-1", "small-2"],
        "messages over the client's Maximum Packet Size are dropped"
    );
    small.ping().await; // and the client stays connected

    let got = plain.recv_until_payload("fence").await;
    assert_eq!(
        got.len(),
        4,
        "a client without a limit gets all four: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_for_client_does_not_block_its_queue() {
    // An oversized QoS 1 message queued while the client is offline is dropped on resume,
    // and what follows is still delivered.
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(V5, "small-offline");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(300);
    connect.properties.maximum_packet_size = Some(200);
    let (mut sub, _) = RawClient::connect_ok(addr, connect.clone()).await;
    sub.subscribe("size-off/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = RawClient::v5(addr, "small-offline-pub").await;
    publ.publish("size-off/t", vec![b'L'; 500], QoS::AtLeastOnce, false)
        .await;
    publ.publish("size-off/t", "after", QoS::AtLeastOnce, false)
        .await;
    let (mut sub, _) = RawClient::connect_ok(addr, connect).await;
    let p = tokio::time::timeout(Duration::from_secs(5), sub.expect_publish())
        .await
        .expect("delivery");
    assert_eq!(text(&p.payload), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_client_is_unaffected_by_v5_limits() {
    // A 3.1.1 client has no Maximum Packet Size of its own: large messages reach it.
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::connect_ok(addr, connect_packet(V311, "v311-large"))
        .await
        .0;
    sub.subscribe("large/t", QoS::AtLeastOnce).await;
    let mut publ = RawClient::v5(addr, "v311-large-pub").await;
    publ.publish("large/t", vec![b'Z'; 200_000], QoS::AtLeastOnce, false)
        .await;
    let p = sub.expect_publish().await;
    assert_eq!(p.payload.len(), 200_000);
}
