//! PUBLISH at QoS 0, 1 and 2, client -> broker -> client, with exact counts; QoS 2 exactly
//! once across a subscriber's reconnect (DUP redelivery, PUBREL resend) and across a
//! publisher's resend of the same packet id.

use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet as V4Packet, QoS as V4QoS};
use tern_codec::{Packet, ProtocolVersion, PubResponse, QoS};
use tern_tests::clients::{connect_packet, publish_packet, text, Pump, RawClient, TIMEOUT};
use tern_tests::TestNode;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

type V4Pump = Pump<Event, ConnectionError>;
type V5Pump = Pump<rumqttc::v5::Event, rumqttc::v5::ConnectionError>;

async fn v4_client(node: &TestNode, id: &str) -> (AsyncClient, V4Pump) {
    let opts = MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    let (client, eventloop) = AsyncClient::new(opts, 1000);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    pump.wait_for("CONNACK", |e| {
        matches!(e, Event::Incoming(V4Packet::ConnAck(_))).then_some(())
    })
    .await;
    (client, pump)
}

async fn v4_subscribe(client: &AsyncClient, pump: &mut V4Pump, filter: &str, qos: V4QoS) {
    client
        .subscribe(filter, qos)
        .await
        .expect("queue SUBSCRIBE");
    let ack = pump
        .wait_for("SUBACK", |e| match e {
            Event::Incoming(V4Packet::SubAck(a)) => Some(a.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        ack.return_codes,
        vec![rumqttc::SubscribeReasonCode::Success(qos)],
        "SUBACK for {filter}"
    );
}

/// Publishes received until the one with payload `fence` (excluded).
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

async fn v5_client(node: &TestNode, id: &str) -> (rumqttc::v5::AsyncClient, V5Pump) {
    let opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 1000);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::v5::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    pump.wait_for("CONNACK", |e| {
        matches!(e, rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_))).then_some(())
    })
    .await;
    (client, pump)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos_0_1_2_round_trip_exact_counts() {
    let node = TestNode::start().await;
    let (sub, mut sub_pump) = v4_client(&node, "qos-v311-sub").await;
    v4_subscribe(&sub, &mut sub_pump, "qos311/#", V4QoS::ExactlyOnce).await;
    let (publ, mut pub_pump) = v4_client(&node, "qos-v311-pub").await;

    const N: usize = 50;
    for i in 0..N {
        for (topic, qos) in [
            ("qos311/0", V4QoS::AtMostOnce),
            ("qos311/1", V4QoS::AtLeastOnce),
            ("qos311/2", V4QoS::ExactlyOnce),
        ] {
            publ.publish(topic, qos, false, format!("{i}"))
                .await
                .expect("queue publish");
        }
    }
    publ.publish("qos311/2", V4QoS::ExactlyOnce, false, "fence")
        .await
        .expect("queue publish");

    // The publisher sees every acknowledgement: N PUBACKs and N + 1 PUBCOMPs.
    let (mut acks, mut comps) = (0, 0);
    pub_pump
        .wait_for("all acknowledgements", |e| {
            match e {
                Event::Incoming(V4Packet::PubAck(_)) => acks += 1,
                Event::Incoming(V4Packet::PubComp(_)) => comps += 1,
                _ => {}
            }
            (acks == N && comps == N + 1).then_some(())
        })
        .await;

    let got = v4_until_fence(&mut sub_pump, "fence").await;
    for (topic, qos) in [
        ("qos311/0", V4QoS::AtMostOnce),
        ("qos311/1", V4QoS::AtLeastOnce),
        ("qos311/2", V4QoS::ExactlyOnce),
    ] {
        let on_topic: Vec<_> = got.iter().filter(|p| p.topic == topic).collect();
        let payloads: Vec<String> = on_topic.iter().map(|p| text(&p.payload)).collect();
        let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        assert_eq!(
            payloads, expected,
            "{topic}: every message exactly once, in order"
        );
        assert!(
            on_topic.iter().all(|p| p.qos == qos),
            "{topic}: delivered at the publish QoS {qos:?}"
        );
        assert!(
            on_topic.iter().all(|p| !p.dup),
            "{topic}: nothing is a redelivery on a healthy link"
        );
    }
    assert_eq!(got.len(), 3 * N, "no message on any other topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos_0_1_2_round_trip_exact_counts() {
    let node = TestNode::start().await;
    let (sub, mut sub_pump) = v5_client(&node, "qos-v5-sub").await;
    sub.subscribe("qos5/#", V5QoS::ExactlyOnce)
        .await
        .expect("queue SUBSCRIBE");
    sub_pump
        .wait_for("SUBACK", |e| {
            matches!(e, rumqttc::v5::Event::Incoming(V5Packet::SubAck(_))).then_some(())
        })
        .await;
    let (publ, mut pub_pump) = v5_client(&node, "qos-v5-pub").await;

    const N: usize = 50;
    for i in 0..N {
        for (topic, qos) in [
            ("qos5/0", V5QoS::AtMostOnce),
            ("qos5/1", V5QoS::AtLeastOnce),
            ("qos5/2", V5QoS::ExactlyOnce),
        ] {
            publ.publish(topic, qos, false, format!("{i}"))
                .await
                .expect("queue publish");
        }
    }
    publ.publish("qos5/2", V5QoS::ExactlyOnce, false, "fence")
        .await
        .expect("queue publish");
    let (mut acks, mut comps) = (0, 0);
    pub_pump
        .wait_for("all acknowledgements", |e| {
            match e {
                rumqttc::v5::Event::Incoming(V5Packet::PubAck(a)) => {
                    // No subscriber-less 0x10 here: there is a subscriber.
                    assert_eq!(
                        a.reason,
                        rumqttc::v5::mqttbytes::v5::PubAckReason::Success,
                        "{a:?}"
                    );
                    acks += 1
                }
                rumqttc::v5::Event::Incoming(V5Packet::PubComp(_)) => comps += 1,
                _ => {}
            }
            (acks == N && comps == N + 1).then_some(())
        })
        .await;

    let mut got = Vec::new();
    sub_pump
        .wait_for("fence", |e| match e {
            rumqttc::v5::Event::Incoming(V5Packet::Publish(p))
                if p.payload.as_ref() == b"fence" =>
            {
                Some(())
            }
            rumqttc::v5::Event::Incoming(V5Packet::Publish(p)) => {
                got.push(p.clone());
                None
            }
            _ => None,
        })
        .await;
    for (topic, qos) in [
        ("qos5/0", V5QoS::AtMostOnce),
        ("qos5/1", V5QoS::AtLeastOnce),
        ("qos5/2", V5QoS::ExactlyOnce),
    ] {
        let on_topic: Vec<_> = got
            .iter()
            .filter(|p| p.topic.as_ref() == topic.as_bytes())
            .collect();
        let payloads: Vec<String> = on_topic.iter().map(|p| text(&p.payload)).collect();
        let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        assert_eq!(
            payloads, expected,
            "{topic}: every message exactly once, in order"
        );
        assert!(
            on_topic.iter().all(|p| p.qos == qos),
            "{topic}: delivered at the publish QoS {qos:?}"
        );
    }
    assert_eq!(got.len(), 3 * N, "no message on any other topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_qos_is_min_of_publish_and_subscription() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v311(addr, "downgrade-sub").await;
    sub.subscribe("dg/0", QoS::AtMostOnce).await;
    sub.subscribe("dg/1", QoS::AtLeastOnce).await;
    sub.subscribe("dg/2", QoS::ExactlyOnce).await;
    let mut publ = RawClient::v5(addr, "downgrade-pub").await;
    publ.publish("dg/0", "a", QoS::ExactlyOnce, false).await;
    publ.publish("dg/1", "b", QoS::ExactlyOnce, false).await;
    publ.publish("dg/2", "c", QoS::AtLeastOnce, false).await;
    publ.publish("dg/2", "d", QoS::AtMostOnce, false).await;
    let got = sub.recv_publishes(4).await;
    let seen: Vec<_> = got
        .iter()
        .map(|p| (p.topic.as_str(), text(&p.payload), p.qos))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("dg/0", "a".to_string(), QoS::AtMostOnce),
            ("dg/1", "b".to_string(), QoS::AtLeastOnce),
            ("dg/2", "c".to_string(), QoS::AtLeastOnce),
            ("dg/2", "d".to_string(), QoS::AtMostOnce),
        ]
    );
}

/// A persistent-session CONNECT for `version`.
fn persistent(version: ProtocolVersion, id: &str) -> tern_codec::Connect {
    let mut c = connect_packet(version, id);
    c.clean_start = false;
    if version == V5 {
        c.properties.session_expiry_interval = Some(300);
    }
    c
}

/// The subscriber receives a QoS 2 PUBLISH, never answers it and loses its connection.
/// On reconnect the broker must resend it with DUP=1 and the same packet id, and once the
/// flow completes there is no second copy.
async fn qos2_unacked_publish_is_redelivered_with_dup(version: ProtocolVersion) {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let id = format!("q2-redeliver-{}", version.label());
    let topic = format!("q2/redeliver/{}", version.label());
    let (mut sub, _) = RawClient::connect_ok(addr, persistent(version, &id)).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;

    let mut publ = RawClient::v5(addr, &format!("{id}-pub")).await;
    publ.publish(&topic, "m1", QoS::ExactlyOnce, false).await;

    let first = sub.expect_publish().await;
    assert_eq!(
        (text(&first.payload).as_str(), first.qos, first.dup),
        ("m1", QoS::ExactlyOnce, false)
    );
    sub.drop_connection();

    let (mut sub, ack) = RawClient::connect_ok(addr, persistent(version, &id)).await;
    assert!(ack.session_present, "{ack:?}");
    let again = sub.expect_publish().await;
    assert_eq!(text(&again.payload), "m1", "{again:?}");
    assert!(
        again.dup,
        "a redelivered PUBLISH must have DUP=1: {again:?}"
    );
    assert_eq!(
        again.packet_id, first.packet_id,
        "a redelivered PUBLISH keeps its packet id"
    );
    assert_eq!(again.qos, QoS::ExactlyOnce);
    sub.ack(&again).await;

    publ.publish(&topic, "fence", QoS::ExactlyOnce, false).await;
    let extra = sub.recv_until_payload("fence").await;
    assert!(
        extra.is_empty(),
        "m1 must not be delivered again after the flow completed: {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_unacked_publish_is_redelivered_with_dup() {
    qos2_unacked_publish_is_redelivered_with_dup(V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos2_unacked_publish_is_redelivered_with_dup() {
    qos2_unacked_publish_is_redelivered_with_dup(V311).await;
}

/// The subscriber answers PUBREC, gets PUBREL, and loses its connection before PUBCOMP. On
/// reconnect the broker must resend PUBREL (not the PUBLISH), and the message is never
/// delivered twice.
async fn qos2_pubrel_is_resent_after_reconnect(version: ProtocolVersion) {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let id = format!("q2-pubrel-{}", version.label());
    let topic = format!("q2/pubrel/{}", version.label());
    let (mut sub, _) = RawClient::connect_ok(addr, persistent(version, &id)).await;
    sub.subscribe(&topic, QoS::ExactlyOnce).await;
    let mut publ = RawClient::v5(addr, &format!("{id}-pub")).await;
    publ.publish(&topic, "m1", QoS::ExactlyOnce, false).await;

    let first = sub.expect_publish().await;
    sub.send(Packet::PubRec(PubResponse::new(first.packet_id)))
        .await;
    match sub.expect("PUBREL").await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, first.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.drop_connection();

    let (mut sub, ack) = RawClient::connect_ok(addr, persistent(version, &id)).await;
    assert!(ack.session_present, "{ack:?}");
    match sub.expect("resent PUBREL").await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, first.packet_id, "{r:?}"),
        other => {
            panic!("after PUBREC the broker must resend PUBREL, not the message: got {other:?}")
        }
    }
    sub.send(Packet::PubComp(PubResponse::new(first.packet_id)))
        .await;

    publ.publish(&topic, "fence", QoS::ExactlyOnce, false).await;
    let extra = sub.recv_until_payload("fence").await;
    assert!(
        extra.is_empty(),
        "m1 must not be delivered again: {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_pubrel_is_resent_after_reconnect() {
    qos2_pubrel_is_resent_after_reconnect(V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos2_pubrel_is_resent_after_reconnect() {
    qos2_pubrel_is_resent_after_reconnect(V311).await;
}

/// The publisher sends the same QoS 2 packet id twice (the second with DUP=1) before its
/// PUBREL: the broker must deliver the message once.
async fn qos2_publisher_resend_is_not_duplicated(version: ProtocolVersion) {
    let node = TestNode::start().await;
    let (sub, mut sub_pump) = v4_client(&node, &format!("q2-resend-sub-{}", version.label())).await;
    v4_subscribe(&sub, &mut sub_pump, "q2/resend", V4QoS::ExactlyOnce).await;

    let pub_id = format!("q2-resend-pub-{}", version.label());
    let (mut publ, _) =
        RawClient::connect_ok(node.mqtt_addr(), connect_packet(version, &pub_id)).await;
    let mut p = publish_packet("q2/resend", "once", QoS::ExactlyOnce, false);
    p.packet_id = 7;
    publ.send(Packet::Publish(p.clone())).await;
    match publ.expect("PUBREC").await {
        Packet::PubRec(r) => assert_eq!(r.packet_id, 7),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    p.dup = true;
    publ.send(Packet::Publish(p)).await;
    match publ.expect("second PUBREC").await {
        Packet::PubRec(r) => assert_eq!(
            r.packet_id, 7,
            "the resend must be answered with PUBREC again"
        ),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publ.send(Packet::PubRel(PubResponse::new(7))).await;
    match publ.expect("PUBCOMP").await {
        Packet::PubComp(r) => assert_eq!(r.packet_id, 7),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    publ.publish("q2/resend", "fence", QoS::ExactlyOnce, false)
        .await;

    let got = v4_until_fence(&mut sub_pump, "fence").await;
    let payloads: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(
        payloads,
        vec!["once"],
        "the message must be delivered exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_publisher_resend_before_pubrel_is_not_duplicated() {
    qos2_publisher_resend_is_not_duplicated(V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos2_publisher_resend_before_pubrel_is_not_duplicated() {
    qos2_publisher_resend_is_not_duplicated(V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_publisher_reconnects_and_resends_pubrel() {
    // The publisher got PUBREC, lost its connection, resumes its session and resends the
    // PUBREL only: the broker completes with PUBCOMP and the message is delivered once.
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v5(addr, "q2-pubrel-pub-sub").await;
    sub.subscribe("q2/pubrel-pub", QoS::ExactlyOnce).await;

    let (mut publ, _) = RawClient::connect_ok(addr, persistent(V5, "q2-pubrel-pub")).await;
    let mut p = publish_packet("q2/pubrel-pub", "once", QoS::ExactlyOnce, false);
    p.packet_id = 11;
    publ.send(Packet::Publish(p)).await;
    match publ.expect("PUBREC").await {
        Packet::PubRec(r) => assert_eq!(r.packet_id, 11),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    publ.drop_connection();

    let (mut publ, ack) = RawClient::connect_ok(addr, persistent(V5, "q2-pubrel-pub")).await;
    assert!(ack.session_present, "{ack:?}");
    publ.send(Packet::PubRel(PubResponse::new(11))).await;
    match publ.expect("PUBCOMP").await {
        Packet::PubComp(r) => {
            assert_eq!(r.packet_id, 11);
            assert_eq!(
                r.reason,
                tern_codec::ReasonCode::SUCCESS,
                "the packet id is known to the session: {r:?}"
            );
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    publ.publish("q2/pubrel-pub", "fence", QoS::ExactlyOnce, false)
        .await;
    let got = sub.recv_until_payload("fence").await;
    let payloads: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(payloads, vec!["once"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos1_unacked_publish_is_redelivered_with_dup() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let (mut sub, _) = RawClient::connect_ok(addr, persistent(V5, "q1-redeliver")).await;
    sub.subscribe("q1/redeliver", QoS::AtLeastOnce).await;
    let mut publ = RawClient::v5(addr, "q1-redeliver-pub").await;
    publ.publish("q1/redeliver", "m1", QoS::AtLeastOnce, false)
        .await;
    let first = sub.expect_publish().await;
    assert!(!first.dup);
    sub.drop_connection();

    let (mut sub, ack) = RawClient::connect_ok(addr, persistent(V5, "q1-redeliver")).await;
    assert!(ack.session_present);
    let again = sub.expect_publish().await;
    assert_eq!(
        (text(&again.payload).as_str(), again.dup, again.packet_id),
        ("m1", true, first.packet_id),
        "{again:?}"
    );
    sub.ack(&again).await;
    publ.publish("q1/redeliver", "fence", QoS::AtLeastOnce, false)
        .await;
    let extra = sub.recv_until_payload("fence").await;
    assert!(
        extra.is_empty(),
        "acknowledged message delivered again: {extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_qos2_messages_exactly_once_between_raw_clients() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v311(addr, "q2-many-sub").await;
    sub.subscribe("q2/many", QoS::ExactlyOnce).await;
    let mut publ = RawClient::v5(addr, "q2-many-pub").await;
    const N: usize = 200;
    for i in 0..N {
        publ.publish("q2/many", format!("{i}"), QoS::ExactlyOnce, false)
            .await;
    }
    publ.publish("q2/many", "fence", QoS::ExactlyOnce, false)
        .await;
    let got = tokio::time::timeout(TIMEOUT * 2, sub.recv_until_payload("fence"))
        .await
        .expect("all messages in time");
    let payloads: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
}
