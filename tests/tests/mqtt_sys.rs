//! `$SYS/broker/...` statistics: published every `broker.sys_interval_secs`, with values
//! that track the node, and never matched by filters starting with a wildcard.

use std::collections::BTreeMap;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet as V4Packet, QoS as V4QoS};
use tern_codec::{Packet, QoS, Subscribe, SubscribeProperties};
use tern_tests::clients::{filter, text, Pump, RawClient, Recv};
use tern_tests::TestNode;

type V4Pump = Pump<Event, ConnectionError>;

async fn sys_node() -> TestNode {
    TestNode::start_with(|cfg| cfg.broker.sys_interval_secs = 1).await
}

async fn sys_watcher(node: &TestNode, id: &str) -> (AsyncClient, V4Pump) {
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
        .subscribe("$SYS/#", V4QoS::AtMostOnce)
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
        vec![rumqttc::SubscribeReasonCode::Success(V4QoS::AtMostOnce)]
    );
    (client, pump)
}

fn leading_number(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_are_published_within_a_few_seconds() {
    let node = sys_node().await;
    // Some traffic first, so messages/received has something to count.
    let mut publ = RawClient::v311(node.mqtt_addr(), "sys-traffic").await;
    publ.publish("traffic/t", "x", QoS::AtLeastOnce, false)
        .await;

    let (_c, mut pump) = sys_watcher(&node, "sys-watch").await;
    let wanted = [
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/uptime",
        "$SYS/broker/version",
    ];
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    pump.wait_for_within(Duration::from_secs(5), "the four $SYS topics", |e| {
        if let Event::Incoming(V4Packet::Publish(p)) = e {
            assert!(
                p.topic.starts_with("$SYS/"),
                "only $SYS topics expected: {}",
                p.topic
            );
            seen.insert(p.topic.clone(), text(&p.payload));
        }
        wanted.iter().all(|t| seen.contains_key(*t)).then_some(())
    })
    .await;

    // The first values may be the retained ones from before the watcher connected; the
    // next live report counts both clients and the one publish.
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let connected = live.get("$SYS/broker/clients/connected") == Some(&2);
        let received = live
            .get("$SYS/broker/messages/received")
            .is_some_and(|n| *n >= 1);
        if connected && received {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match pump.next(left).await {
            Some(Ok(Event::Incoming(V4Packet::Publish(p)))) => {
                if let Some(n) = leading_number(&text(&p.payload)) {
                    live.insert(p.topic.clone(), n);
                }
            }
            Some(Ok(_)) => {}
            other => panic!(
                "expected a report with clients/connected = 2 and messages/received >= 1; \
                 got {other:?}, last values {live:?}"
            ),
        }
    }
    assert!(
        leading_number(&seen["$SYS/broker/uptime"]).is_some(),
        "uptime is a number: {seen:?}"
    );
    assert!(
        !seen["$SYS/broker/version"].trim().is_empty(),
        "version is named: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_values_track_the_node() {
    let node = sys_node().await;
    let (_c, mut pump) = sys_watcher(&node, "sys-track").await;
    let mut extra = Vec::new();
    for i in 0..3 {
        extra.push(RawClient::v5(node.mqtt_addr(), &format!("sys-extra-{i}")).await);
    }
    // 4 connected clients (the watcher and 3 more); wait for the next report saying so.
    pump.wait_for_within(
        Duration::from_secs(5),
        "clients/connected = 4",
        |e| match e {
            Event::Incoming(V4Packet::Publish(p)) if p.topic == "$SYS/broker/clients/connected" => {
                (leading_number(&text(&p.payload)) == Some(4)).then_some(())
            }
            _ => None,
        },
    )
    .await;

    // The uptime grows.
    let mut uptimes = Vec::new();
    pump.wait_for_within(
        Duration::from_secs(6),
        "two later uptime reports",
        |e| match e {
            Event::Incoming(V4Packet::Publish(p)) if p.topic == "$SYS/broker/uptime" => {
                uptimes.push(leading_number(&text(&p.payload)).expect("numeric uptime"));
                (uptimes.len() >= 3 && uptimes.last() > uptimes.first()).then_some(())
            }
            _ => None,
        },
    )
    .await;

    drop(extra);
    pump.wait_for_within(
        Duration::from_secs(5),
        "clients/connected back to 1",
        |e| match e {
            Event::Incoming(V4Packet::Publish(p)) if p.topic == "$SYS/broker/clients/connected" => {
                (leading_number(&text(&p.payload)) == Some(1)).then_some(())
            }
            _ => None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_are_not_matched_by_hash() {
    let node = sys_node().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v5(addr, "sys-ids").await;
    for (f, id) in [("#", 1), ("$SYS/#", 2)] {
        sub.subscribe_packet(Subscribe {
            packet_id: 0,
            filters: vec![filter(f, QoS::AtMostOnce)],
            properties: SubscribeProperties {
                subscription_identifier: Some(id),
                user_properties: Vec::new(),
            },
        })
        .await;
    }
    let mut publ = RawClient::v5(addr, "sys-ids-pub").await;
    publ.publish("plain/topic", "plain", QoS::AtMostOnce, false)
        .await;

    let mut sys_seen = 0;
    let mut plain_seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while sys_seen < 10 || plain_seen < 1 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let p = match sub.recv(left).await {
            Recv::Packet(Packet::Publish(p)) => p,
            other => {
                panic!("waiting for publishes (sys {sys_seen}, plain {plain_seen}): {other:?}")
            }
        };
        let ids = p.properties.subscription_identifiers.clone();
        if p.topic.starts_with("$SYS/") {
            assert_eq!(
                ids,
                vec![2],
                "`#` must not match {}: it came for subscriptions {ids:?}",
                p.topic
            );
            sys_seen += 1;
        } else {
            assert_eq!((p.topic.as_str(), ids), ("plain/topic", vec![1]));
            plain_seen += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_hash_subscriber_gets_no_sys_messages() {
    let node = sys_node().await;
    let addr = node.mqtt_addr();
    let mut hash = RawClient::v311(addr, "sys-hash").await;
    hash.subscribe("#", QoS::AtMostOnce).await;
    let mut plus = RawClient::v311(addr, "sys-plus").await;
    plus.subscribe("+/broker/#", QoS::AtMostOnce).await;

    // Wait until $SYS messages have been published twice after the subscriptions.
    let (_c, mut pump) = sys_watcher(&node, "sys-hash-watch").await;
    let mut uptimes = 0;
    pump.wait_for_within(Duration::from_secs(6), "two $SYS rounds", |e| {
        if matches!(e, Event::Incoming(V4Packet::Publish(p)) if p.topic == "$SYS/broker/uptime") {
            uptimes += 1;
        }
        (uptimes >= 2).then_some(())
    })
    .await;

    let mut publ = RawClient::v311(addr, "sys-hash-pub").await;
    publ.publish("x/broker/y", "fence", QoS::AtMostOnce, false)
        .await;
    let got = hash.recv_until_payload("fence").await;
    assert!(
        got.is_empty(),
        "`#` must not receive $SYS topics (live or retained): {:?}",
        got.iter().map(|p| &p.topic).collect::<Vec<_>>()
    );
    let got = plus.recv_until_payload("fence").await;
    assert!(
        got.is_empty(),
        "`+/broker/#` must not receive $SYS topics: {:?}",
        got.iter().map(|p| &p.topic).collect::<Vec<_>>()
    );
}
