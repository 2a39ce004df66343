//! Shared subscriptions `$share/{group}/{filter}`: each message goes to exactly one member
//! of a group, every member gets a share, and non-shared subscribers still get everything.

use std::collections::BTreeMap;

use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tern_codec::{ProtocolVersion, QoS, ReasonCode};
use tern_tests::clients::{connect_packet, text, Pump, RawClient};
use tern_tests::TestNode;

type V5Pump = Pump<Event, ConnectionError>;

async fn member(node: &TestNode, id: &str, filters: &[&str]) -> (AsyncClient, V5Pump) {
    let opts = MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    let (client, eventloop) = AsyncClient::new(opts, 100);
    let mut pump = Pump::spawn(eventloop, |mut el: EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    pump.wait_for("CONNACK", |e| {
        matches!(e, Event::Incoming(V5Packet::ConnAck(_))).then_some(())
    })
    .await;
    for f in filters {
        client
            .subscribe(*f, V5QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
        let ack = pump
            .wait_for("SUBACK", |e| match e {
                Event::Incoming(V5Packet::SubAck(a)) => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            ack.return_codes,
            vec![SubscribeReasonCode::Success(V5QoS::AtLeastOnce)],
            "SUBACK for {f}"
        );
    }
    (client, pump)
}

/// Payloads received on `topic` until the publish with payload `fence`.
async fn collect(pump: &mut V5Pump, topic: &str, fence: &str) -> Vec<String> {
    let mut got = Vec::new();
    pump.wait_for(&format!("fence {fence:?}"), |e| match e {
        Event::Incoming(V5Packet::Publish(p)) if p.payload.as_ref() == fence.as_bytes() => Some(()),
        Event::Incoming(V5Packet::Publish(p)) => {
            assert_eq!(p.topic.as_ref(), topic.as_bytes(), "unexpected topic");
            got.push(text(&p.payload));
            None
        }
        _ => None,
    })
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_group_delivers_each_message_to_exactly_one_member() {
    let node = TestNode::start().await;
    let mut members = Vec::new();
    for i in 0..3 {
        let fence_topic = format!("fence/m{i}");
        members.push(
            member(
                &node,
                &format!("shared-m{i}"),
                &["$share/g/sh/t", &fence_topic],
            )
            .await,
        );
    }
    let (_plain, mut plain_pump) = member(&node, "shared-plain", &["sh/t", "fence/plain"]).await;

    const N: usize = 300;
    let mut publ = RawClient::v5(node.mqtt_addr(), "shared-pub").await;
    for i in 0..N {
        let reason = publ
            .publish("sh/t", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
        assert_eq!(reason, ReasonCode::SUCCESS, "message {i}");
    }
    // One fence per subscriber on its own topic, from the same publisher, after all 300:
    // when a member has its fence, it has everything the broker routed to it before.
    for i in 0..3 {
        publ.publish(&format!("fence/m{i}"), "fence", QoS::AtLeastOnce, false)
            .await;
    }
    publ.publish("fence/plain", "fence", QoS::AtLeastOnce, false)
        .await;

    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut per_member = Vec::new();
    for (i, (_client, pump)) in members.iter_mut().enumerate() {
        let got = collect(pump, "sh/t", "fence").await;
        per_member.push(got.len());
        for p in got {
            seen.entry(p).or_default().push(i);
        }
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, m)| m.len() > 1).collect();
    assert!(
        duplicates.is_empty(),
        "messages delivered to more than one member (or twice): {duplicates:?}"
    );
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    let mut delivered: Vec<String> = seen.keys().cloned().collect();
    delivered.sort_by_key(|p| p.parse::<usize>().unwrap_or(usize::MAX));
    assert_eq!(
        delivered.len(),
        N,
        "every message reaches one member; counts per member {per_member:?}"
    );
    assert_eq!(delivered, expected);
    assert!(
        per_member.iter().all(|&n| n > 0),
        "every member gets a share: {per_member:?}"
    );

    let plain = collect(&mut plain_pump, "sh/t", "fence").await;
    assert_eq!(
        plain, expected,
        "a non-shared subscriber gets all {N}, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_group_with_mixed_protocol_versions() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut raws = Vec::new();
    for (i, version) in [
        ProtocolVersion::V311,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ]
    .into_iter()
    .enumerate()
    {
        let mut c =
            RawClient::connect_ok(addr, connect_packet(version, &format!("mixed-share-{i}")))
                .await
                .0;
        c.subscribe("$share/mixed/ms/+", QoS::AtLeastOnce).await;
        c.subscribe(&format!("fence/{i}"), QoS::AtLeastOnce).await;
        raws.push(c);
    }
    // Two groups on the same filter are independent: each gets every message once.
    let mut other_group = RawClient::v5(addr, "mixed-share-other").await;
    other_group
        .subscribe("$share/other/ms/+", QoS::AtLeastOnce)
        .await;
    other_group.subscribe("fence/other", QoS::AtLeastOnce).await;

    const N: usize = 60;
    let mut publ = RawClient::v311(addr, "mixed-share-pub").await;
    for i in 0..N {
        publ.publish(
            &format!("ms/{}", i % 4),
            format!("{i}"),
            QoS::AtLeastOnce,
            false,
        )
        .await;
    }
    for i in 0..3 {
        publ.publish(&format!("fence/{i}"), "fence", QoS::AtLeastOnce, false)
            .await;
    }
    publ.publish("fence/other", "fence", QoS::AtLeastOnce, false)
        .await;

    let mut all = Vec::new();
    for c in raws.iter_mut() {
        let got = c.recv_until_payload("fence").await;
        all.extend(
            got.into_iter()
                .map(|p| text(&p.payload).parse::<usize>().expect("numeric payload")),
        );
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (0..N).collect::<Vec<_>>(),
        "each message to exactly one member of group `mixed`"
    );

    let other: Vec<usize> = other_group
        .recv_until_payload("fence")
        .await
        .into_iter()
        .map(|p| text(&p.payload).parse().expect("numeric payload"))
        .collect();
    assert_eq!(
        other,
        (0..N).collect::<Vec<_>>(),
        "the single member of group `other` gets all, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_member_leaving_gets_no_more() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut a = RawClient::v5(addr, "share-leave-a").await;
    a.subscribe("$share/g/leave/t", QoS::AtLeastOnce).await;
    a.subscribe("fence/a", QoS::AtLeastOnce).await;
    let mut b = RawClient::v5(addr, "share-leave-b").await;
    b.subscribe("$share/g/leave/t", QoS::AtLeastOnce).await;
    let ack = b.unsubscribe(&["$share/g/leave/t"]).await;
    assert_eq!(ack.reasons, vec![ReasonCode::SUCCESS]);
    b.subscribe("fence/b", QoS::AtLeastOnce).await;

    let mut publ = RawClient::v5(addr, "share-leave-pub").await;
    for i in 0..20 {
        publ.publish("leave/t", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    publ.publish("fence/a", "fence", QoS::AtLeastOnce, false)
        .await;
    publ.publish("fence/b", "fence", QoS::AtLeastOnce, false)
        .await;
    let got_a: Vec<String> = a
        .recv_until_payload("fence")
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(
        got_a,
        (0..20).map(|i| i.to_string()).collect::<Vec<_>>(),
        "the remaining member gets all"
    );
    let got_b = b.recv_until_payload("fence").await;
    assert!(
        got_b.is_empty(),
        "an unsubscribed member gets nothing: {got_b:?}"
    );
}
