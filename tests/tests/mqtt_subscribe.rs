//! SUBSCRIBE/UNSUBSCRIBE: `+` and `#` wildcards, `$`-topics kept out of wildcards,
//! overlapping subscriptions (one copy, highest QoS; v5: every subscription identifier),
//! UNSUBSCRIBE stopping delivery, UNSUBACK 0x11, invalid filters.

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet as V4Packet, QoS as V4QoS};
use std::time::Duration;
use tern_broker::DropReason;
use tern_codec::{
    Packet, ProtocolVersion, QoS, ReasonCode, Subscribe, SubscribeProperties, Unsubscribe,
};
use tern_tests::clients::{filter, text, Pump, RawClient};
use tern_tests::TestNode;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

type V4Pump = Pump<Event, ConnectionError>;

async fn v4_client(node: &TestNode, id: &str) -> (AsyncClient, V4Pump) {
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

/// Topics published, in order, and which of them `s/+/x` and `h/#` match.
const WILDCARD_CASES: &[(&str, bool)] = &[
    ("s/a/x", true),
    ("s/b/x", true),
    ("s//x", true),     // `+` matches an empty level
    ("s/a/b/x", false), // `+` is exactly one level
    ("s/a/y", false),
    ("s/x", false),
    ("h", true), // `#` includes the parent level
    ("h/1", true),
    ("h/1/2/3", true),
    ("h/", true),
    ("hx/1", false),
    ("other/h/1", false),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_plus_and_hash_wildcards_match_exactly() {
    let node = TestNode::start().await;
    let (sub, mut pump) = v4_client(&node, "wild-v311-sub").await;
    v4_subscribe(&sub, &mut pump, "s/+/x", V4QoS::AtLeastOnce).await;
    v4_subscribe(&sub, &mut pump, "h/#", V4QoS::AtLeastOnce).await;
    v4_subscribe(&sub, &mut pump, "fence", V4QoS::AtLeastOnce).await;

    let mut publ = RawClient::v311(node.mqtt_addr(), "wild-v311-pub").await;
    for (topic, _) in WILDCARD_CASES {
        publ.publish(topic, *topic, QoS::AtLeastOnce, false).await;
    }
    publ.publish("fence", "fence", QoS::AtLeastOnce, false)
        .await;

    let got: Vec<String> = v4_until_fence(&mut pump, "fence")
        .await
        .iter()
        .map(|p| p.topic.clone())
        .collect();
    let expected: Vec<String> = WILDCARD_CASES
        .iter()
        .filter(|(_, m)| *m)
        .map(|(t, _)| t.to_string())
        .collect();
    assert_eq!(
        got, expected,
        "each matching topic exactly once, nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_plus_and_hash_wildcards_match_exactly() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v5(addr, "wild-v5-sub").await;
    let ack = sub
        .subscribe_many(&[
            ("s/+/x", QoS::AtLeastOnce),
            ("h/#", QoS::AtLeastOnce),
            ("fence", QoS::AtMostOnce),
        ])
        .await;
    assert_eq!(
        ack.reasons,
        vec![ReasonCode(1), ReasonCode(1), ReasonCode(0)]
    );
    let mut publ = RawClient::v5(addr, "wild-v5-pub").await;
    for (topic, _) in WILDCARD_CASES {
        publ.publish(topic, *topic, QoS::AtLeastOnce, false).await;
    }
    publ.publish("fence", "fence", QoS::AtLeastOnce, false)
        .await;
    let got: Vec<String> = sub
        .recv_until_payload("fence")
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    let expected: Vec<String> = WILDCARD_CASES
        .iter()
        .filter(|(_, m)| *m)
        .map(|(t, _)| t.to_string())
        .collect();
    assert_eq!(
        got, expected,
        "each matching topic exactly once, nothing else"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    // `#` and `+/bar` must not match `$foo/bar`; an explicit `$foo/bar` or `$foo/+` must.
    let mut wild = RawClient::v311(addr, "dollar-wild").await;
    let ack = wild
        .subscribe_many(&[("#", QoS::AtLeastOnce), ("+/bar", QoS::AtLeastOnce)])
        .await;
    assert_eq!(ack.reasons, vec![ReasonCode(1), ReasonCode(1)]);
    let mut explicit = RawClient::v311(addr, "dollar-explicit").await;
    explicit.subscribe("$foo/bar", QoS::AtLeastOnce).await;
    explicit.subscribe("$foo/+", QoS::AtLeastOnce).await;
    explicit.subscribe("plain/bar", QoS::AtLeastOnce).await;

    let mut publ = RawClient::v5(addr, "dollar-pub").await;
    publ.publish("$foo/bar", "dollar", QoS::AtLeastOnce, false)
        .await;
    publ.publish("plain/bar", "fence", QoS::AtLeastOnce, false)
        .await;

    let before = explicit.recv_until_payload("fence").await;
    let payloads: Vec<String> = before.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(
        payloads,
        vec!["dollar"],
        "an explicit `$foo/bar` subscriber gets it once (overlap: one copy)"
    );

    let before = wild.recv_until_payload("fence").await;
    assert!(
        before.is_empty(),
        "`#` and `+/bar` must not match `$foo/bar`: {before:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_overlapping_subscriptions_deliver_one_copy_at_highest_qos() {
    let node = TestNode::start().await;
    let (sub, mut pump) = v4_client(&node, "overlap-v311").await;
    v4_subscribe(&sub, &mut pump, "a/#", V4QoS::AtMostOnce).await;
    v4_subscribe(&sub, &mut pump, "a/b", V4QoS::ExactlyOnce).await;
    let mut publ = RawClient::v311(node.mqtt_addr(), "overlap-v311-pub").await;
    publ.publish("a/b", "one", QoS::ExactlyOnce, false).await;
    publ.publish("a/b", "fence", QoS::ExactlyOnce, false).await;
    let got = v4_until_fence(&mut pump, "fence").await;
    assert_eq!(
        got.len(),
        1,
        "exactly one copy for overlapping subscriptions: {got:?}"
    );
    assert_eq!(
        got[0].qos,
        V4QoS::ExactlyOnce,
        "the copy goes at the highest granted QoS: {:?}",
        got[0]
    );
    assert_eq!(text(&got[0].payload), "one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_overlapping_subscriptions_deliver_one_copy_with_both_identifiers() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v5(addr, "overlap-v5").await;
    for (f, qos, id) in [("a/#", QoS::AtMostOnce, 1), ("a/b", QoS::ExactlyOnce, 2)] {
        let ack = sub
            .subscribe_packet(Subscribe {
                packet_id: 0,
                filters: vec![filter(f, qos)],
                properties: SubscribeProperties {
                    subscription_identifier: Some(id),
                    user_properties: Vec::new(),
                },
            })
            .await;
        assert_eq!(ack.reasons, vec![ReasonCode(qos as u8)]);
    }
    let mut publ = RawClient::v5(addr, "overlap-v5-pub").await;
    publ.publish("a/b", "one", QoS::ExactlyOnce, false).await;
    publ.publish("a/c", "fence", QoS::AtMostOnce, false).await;
    let got = sub.recv_until_payload("fence").await;
    assert_eq!(
        got.len(),
        1,
        "exactly one copy for overlapping subscriptions: {got:?}"
    );
    let p = &got[0];
    assert_eq!(p.qos, QoS::ExactlyOnce, "at the highest granted QoS: {p:?}");
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec![1, 2],
        "the one copy carries both subscription identifiers: {p:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscription_identifier_only_on_matching_subscription() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v5(addr, "subid-v5").await;
    sub.subscribe_packet(Subscribe {
        packet_id: 0,
        filters: vec![filter("id/with", QoS::AtLeastOnce)],
        properties: SubscribeProperties {
            subscription_identifier: Some(42),
            user_properties: Vec::new(),
        },
    })
    .await;
    sub.subscribe("id/without", QoS::AtLeastOnce).await;
    let mut publ = RawClient::v5(addr, "subid-v5-pub").await;
    publ.publish("id/with", "a", QoS::AtLeastOnce, false).await;
    publ.publish("id/without", "b", QoS::AtLeastOnce, false)
        .await;
    let got = sub.recv_publishes(2).await;
    assert_eq!(
        got[0].properties.subscription_identifiers,
        vec![42],
        "{:?}",
        got[0]
    );
    assert!(
        got[1].properties.subscription_identifiers.is_empty(),
        "{:?}",
        got[1]
    );
}

async fn unsubscribe_stops_delivery(version: ProtocolVersion) {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let id = format!("unsub-{}", version.label());
    let mut sub = RawClient::connect_ok(addr, tern_tests::clients::connect_packet(version, &id))
        .await
        .0;
    sub.subscribe("u/#", QoS::AtLeastOnce).await;
    sub.subscribe("keep", QoS::AtLeastOnce).await;
    let mut publ = RawClient::v5(addr, &format!("{id}-pub")).await;
    publ.publish("u/1", "before", QoS::AtLeastOnce, false).await;
    publ.publish("keep", "fence1", QoS::AtLeastOnce, false)
        .await;
    let got: Vec<String> = sub
        .recv_until_payload("fence1")
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(got, vec!["before"]);

    let ack = sub.unsubscribe(&["u/#"]).await;
    if version == V5 {
        assert_eq!(ack.reasons, vec![ReasonCode::SUCCESS], "{ack:?}");
    }
    publ.publish("u/1", "after", QoS::AtLeastOnce, false).await;
    publ.publish("keep", "fence2", QoS::AtLeastOnce, false)
        .await;
    let got = sub.recv_until_payload("fence2").await;
    assert!(got.is_empty(), "nothing on u/# after UNSUBACK: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_unsubscribe_stops_delivery() {
    unsubscribe_stops_delivery(V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unsubscribe_stops_delivery() {
    unsubscribe_stops_delivery(V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_unsubscribe_with_rumqttc_stops_delivery() {
    let node = TestNode::start().await;
    let (sub, mut pump) = v4_client(&node, "unsub-rumqttc").await;
    v4_subscribe(&sub, &mut pump, "ru/+", V4QoS::AtLeastOnce).await;
    v4_subscribe(&sub, &mut pump, "ru-keep", V4QoS::AtLeastOnce).await;
    sub.unsubscribe("ru/+").await.expect("queue UNSUBSCRIBE");
    pump.wait_for("UNSUBACK", |e| {
        matches!(e, Event::Incoming(V4Packet::UnsubAck(_))).then_some(())
    })
    .await;
    let mut publ = RawClient::v311(node.mqtt_addr(), "unsub-rumqttc-pub").await;
    publ.publish("ru/1", "gone", QoS::AtLeastOnce, false).await;
    publ.publish("ru-keep", "fence", QoS::AtLeastOnce, false)
        .await;
    let got = v4_until_fence(&mut pump, "fence").await;
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unsuback_reports_0x11_for_unknown_filter() {
    let node = TestNode::start().await;
    let mut c = RawClient::v5(node.mqtt_addr(), "unsuback-0x11").await;
    c.subscribe("known/t", QoS::AtMostOnce).await;
    let ack = c
        .unsubscribe(&["never/subscribed", "known/t", "known/t/deeper"])
        .await;
    assert_eq!(
        ack.reasons,
        vec![
            ReasonCode::NO_SUBSCRIPTION_EXISTED,
            ReasonCode::SUCCESS,
            ReasonCode::NO_SUBSCRIPTION_EXISTED
        ],
        "{ack:?}"
    );
    // Unsubscribing again: it is gone now.
    let ack = c.unsubscribe(&["known/t"]).await;
    assert_eq!(
        ack.reasons,
        vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
        "{ack:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_unsuback_for_unknown_filter_is_plain() {
    let node = TestNode::start().await;
    let mut c = RawClient::v311(node.mqtt_addr(), "unsuback-v311").await;
    c.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: 77,
        filters: vec!["never/subscribed".into()],
        user_properties: Vec::new(),
    }))
    .await;
    match c.expect("UNSUBACK").await {
        Packet::UnsubAck(u) => assert_eq!(u.packet_id, 77),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    c.ping().await;
}

async fn invalid_filter_gets_suback_failure(version: ProtocolVersion, expected: ReasonCode) {
    let node = TestNode::start().await;
    let id = format!("badfilter-{}", version.label());
    let mut c = RawClient::connect_ok(
        node.mqtt_addr(),
        tern_tests::clients::connect_packet(version, &id),
    )
    .await
    .0;
    let ack = c
        .subscribe_many(&[
            ("a/#/b", QoS::AtLeastOnce),
            ("ok/t", QoS::AtLeastOnce),
            ("a/b+", QoS::AtMostOnce),
            ("#/x", QoS::AtMostOnce),
        ])
        .await;
    assert_eq!(
        ack.reasons,
        vec![expected, ReasonCode::GRANTED_QOS_1, expected, expected],
        "invalid filters fail one by one; the valid one is granted: {ack:?}"
    );
    // The connection stays usable and the valid filter works.
    c.publish("ok/t", "fine", QoS::AtLeastOnce, false).await;
    let p = c.expect_publish().await;
    assert_eq!(text(&p.payload), "fine");
    c.ack(&p).await;
    c.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_invalid_filter_gets_suback_0x80() {
    invalid_filter_gets_suback_failure(V311, ReasonCode(0x80)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_invalid_filter_gets_suback_0x8f() {
    invalid_filter_gets_suback_failure(V5, ReasonCode::TOPIC_FILTER_INVALID).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribe_replaces_qos_without_duplicates() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v5(addr, "resub").await;
    sub.subscribe("re/t", QoS::AtMostOnce).await;
    sub.subscribe("re/t", QoS::ExactlyOnce).await;
    let mut publ = RawClient::v5(addr, "resub-pub").await;
    publ.publish("re/t", "x", QoS::ExactlyOnce, false).await;
    publ.publish("re/t", "fence", QoS::AtMostOnce, false).await;
    let got = sub.recv_until_payload("fence").await;
    assert_eq!(
        got.len(),
        1,
        "a repeated SUBSCRIBE replaces the subscription: {got:?}"
    );
    assert_eq!(
        got[0].qos,
        QoS::ExactlyOnce,
        "with the new QoS: {:?}",
        got[0]
    );
}

/// A publisher that keeps to one topic has its subscribers looked up once and reused
/// (the broker's match cache) while no subscription changes: every change must still
/// show at once, for a subscriber arriving, upgrading its QoS, leaving by UNSUBSCRIBE
/// and leaving by disconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_on_one_topic_sees_every_subscription_change() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut publ = RawClient::v5(addr, "cache-pub").await;
    let mut fencer = RawClient::v5(addr, "cache-fencer").await;
    let topic = "cache/t";
    publ.publish(topic, "m0", QoS::AtLeastOnce, false).await;

    let mut a = RawClient::v5(addr, "cache-a").await;
    a.subscribe(topic, QoS::AtMostOnce).await;
    a.subscribe("cache-fence/a", QoS::AtMostOnce).await;
    publ.publish(topic, "m1", QoS::AtLeastOnce, false).await;
    let got = a.recv_publishes(1).await;
    assert_eq!(
        (text(&got[0].payload), got[0].qos),
        ("m1".into(), QoS::AtMostOnce)
    );

    // The same filter again with a higher QoS replaces the subscription's options.
    a.subscribe(topic, QoS::AtLeastOnce).await;
    publ.publish(topic, "m2", QoS::AtLeastOnce, false).await;
    let got = a.recv_publishes(1).await;
    assert_eq!(
        (text(&got[0].payload), got[0].qos),
        ("m2".into(), QoS::AtLeastOnce)
    );

    let mut b = RawClient::v5(addr, "cache-b").await;
    b.subscribe("cache/+", QoS::AtLeastOnce).await;
    publ.publish(topic, "m3", QoS::AtLeastOnce, false).await;
    assert_eq!(text(&a.recv_publishes(1).await[0].payload), "m3");
    assert_eq!(text(&b.recv_publishes(1).await[0].payload), "m3");

    a.unsubscribe(&[topic]).await;
    publ.publish(topic, "m4", QoS::AtLeastOnce, false).await;
    assert_eq!(text(&b.recv_publishes(1).await[0].payload), "m4");
    fencer
        .publish("cache-fence/a", "fence-a", QoS::AtMostOnce, false)
        .await;
    let late = a.recv_until_payload("fence-a").await;
    assert!(late.is_empty(), "nothing after UNSUBACK: {late:?}");

    b.disconnect().await;
    // b's clean session ends once the broker has handled its DISCONNECT.
    let broker = node.running().broker().clone();
    assert!(
        tern_tests::wait_until(Duration::from_secs(10), || !broker.has_session("cache-b")).await,
        "b's session outlived its connection"
    );
    let dropped = broker.stats.dropped(DropReason::NoSubscriber);
    publ.publish(topic, "m5", QoS::AtLeastOnce, false).await;
    assert_eq!(
        broker.stats.dropped(DropReason::NoSubscriber),
        dropped + 1,
        "m5 reached nobody"
    );
    let mut c = RawClient::v5(addr, "cache-c").await;
    c.subscribe(topic, QoS::AtLeastOnce).await;
    publ.publish(topic, "m6", QoS::AtLeastOnce, false).await;
    assert_eq!(text(&c.recv_publishes(1).await[0].payload), "m6");
}
