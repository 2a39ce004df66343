//! MQTT 5 subscription options: No Local, Retain As Published, Retain Handling 0/1/2.
//! Driven with rumqttc's v5 client.

use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet as V5Packet, Publish, RetainForwardRule, SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use tern_tests::clients::{text, Pump};
use tern_tests::TestNode;

type V5Pump = Pump<Event, ConnectionError>;

async fn client(node: &TestNode, id: &str) -> (AsyncClient, V5Pump) {
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
    (client, pump)
}

/// Subscribes with `filter` and asserts it was granted.
async fn subscribe(client: &AsyncClient, pump: &mut V5Pump, filter: Filter) {
    let qos = filter.qos;
    let path = filter.path.clone();
    client
        .subscribe_many([filter])
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
        vec![SubscribeReasonCode::Success(qos)],
        "SUBACK for {path}"
    );
}

fn opts(path: &str, f: impl FnOnce(&mut Filter)) -> Filter {
    let mut filter = Filter::new(path, QoS::AtLeastOnce);
    f(&mut filter);
    filter
}

/// Publishes until the one with payload `fence` (excluded).
async fn until_fence(pump: &mut V5Pump, fence: &str) -> Vec<Publish> {
    let mut got = Vec::new();
    pump.wait_for(&format!("publish {fence:?}"), |e| match e {
        Event::Incoming(V5Packet::Publish(p)) if p.payload.as_ref() == fence.as_bytes() => Some(()),
        Event::Incoming(V5Packet::Publish(p)) => {
            got.push(p.clone());
            None
        }
        _ => None,
    })
    .await;
    got
}

/// Publishes at QoS 1 and waits for the PUBACK, so the broker has processed it.
async fn publish_acked(
    client: &AsyncClient,
    pump: &mut V5Pump,
    topic: &str,
    retain: bool,
    payload: &str,
) {
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload.to_string())
        .await
        .expect("queue publish");
    pump.wait_for("PUBACK", |e| {
        matches!(e, Event::Incoming(V5Packet::PubAck(_))).then_some(())
    })
    .await;
}

fn payloads(got: &[Publish]) -> Vec<String> {
    got.iter().map(|p| text(&p.payload)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_suppresses_own_messages_only() {
    let node = TestNode::start().await;
    let (a, mut a_pump) = client(&node, "nolocal-a").await;
    subscribe(&a, &mut a_pump, opts("nl/t", |f| f.nolocal = true)).await;
    subscribe(&a, &mut a_pump, opts("nl/fence", |_| {})).await;
    let (b, mut b_pump) = client(&node, "nolocal-b").await;
    subscribe(&b, &mut b_pump, opts("nl/t", |_| {})).await;

    a.publish("nl/t", QoS::AtLeastOnce, false, "own")
        .await
        .expect("publish");
    a.publish("nl/fence", QoS::AtLeastOnce, false, "fence")
        .await
        .expect("publish");
    let got = until_fence(&mut a_pump, "fence").await;
    assert!(
        got.is_empty(),
        "No Local: a client must not get its own messages: {:?}",
        payloads(&got)
    );

    // The message was published: the other subscriber has it.
    b.publish("nl/t", QoS::AtLeastOnce, false, "fence")
        .await
        .expect("publish");
    let got = until_fence(&mut b_pump, "fence").await;
    assert_eq!(payloads(&got), vec!["own"]);

    // Messages from others still reach the No Local subscriber.
    b.publish("nl/t", QoS::AtLeastOnce, false, "from-b")
        .await
        .expect("publish");
    a.publish("nl/fence", QoS::AtLeastOnce, false, "fence")
        .await
        .expect("publish");
    let from_b = a_pump
        .wait_for("message from b", |e| match e {
            Event::Incoming(V5Packet::Publish(p)) if p.payload.as_ref() == b"from-b" => {
                Some(p.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(from_b.topic.as_ref(), b"nl/t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_no_local_own_messages_are_received() {
    let node = TestNode::start().await;
    let (c, mut pump) = client(&node, "local-echo").await;
    subscribe(&c, &mut pump, opts("echo/t", |_| {})).await;
    c.publish("echo/t", QoS::AtLeastOnce, false, "own")
        .await
        .expect("publish");
    c.publish("echo/t", QoS::AtLeastOnce, false, "fence")
        .await
        .expect("publish");
    let got = until_fence(&mut pump, "fence").await;
    assert_eq!(payloads(&got), vec!["own"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_keeps_or_clears_retain_flag_on_forward() {
    let node = TestNode::start().await;
    let (s, mut s_pump) = client(&node, "rap-sub").await;
    subscribe(
        &s,
        &mut s_pump,
        opts("rap/keep", |f| f.preserve_retain = true),
    )
    .await;
    subscribe(
        &s,
        &mut s_pump,
        opts("rap/clear", |f| f.preserve_retain = false),
    )
    .await;
    subscribe(&s, &mut s_pump, opts("rap/fence", |_| {})).await;

    let (p, _p_pump) = client(&node, "rap-pub").await;
    p.publish("rap/keep", QoS::AtLeastOnce, true, "k")
        .await
        .expect("publish");
    p.publish("rap/clear", QoS::AtLeastOnce, true, "c")
        .await
        .expect("publish");
    p.publish("rap/keep", QoS::AtLeastOnce, false, "k-plain")
        .await
        .expect("publish");
    p.publish("rap/fence", QoS::AtLeastOnce, false, "fence")
        .await
        .expect("publish");
    let got = until_fence(&mut s_pump, "fence").await;
    let seen: Vec<(String, bool)> = got.iter().map(|m| (text(&m.payload), m.retain)).collect();
    assert_eq!(
        seen,
        vec![("k".to_string(), true), ("c".to_string(), false), ("k-plain".to_string(), false)],
        "Retain As Published keeps the publisher's flag; without it a forwarded message has retain 0"
    );

    // Retained messages sent because of a new subscription always carry retain 1.
    let (late, mut late_pump) = client(&node, "rap-late").await;
    subscribe(
        &late,
        &mut late_pump,
        opts("rap/+", |f| f.preserve_retain = false),
    )
    .await;
    p.publish("rap/fence", QoS::AtLeastOnce, false, "fence")
        .await
        .expect("publish");
    let got = until_fence(&mut late_pump, "fence").await;
    let mut seen: Vec<(String, bool)> = got.iter().map(|m| (text(&m.payload), m.retain)).collect();
    seen.sort();
    assert_eq!(seen, vec![("c".to_string(), true), ("k".to_string(), true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_0_sends_retained_on_every_subscribe() {
    let node = TestNode::start().await;
    let (p, mut p_pump) = client(&node, "rh0-pub").await;
    publish_acked(&p, &mut p_pump, "rh/t", true, "retained").await;
    let (s, mut pump) = client(&node, "rh0-sub").await;
    for round in 0..2 {
        subscribe(
            &s,
            &mut pump,
            opts("rh/t", |f| {
                f.retain_forward_rule = RetainForwardRule::OnEverySubscribe
            }),
        )
        .await;
        p.publish("rh/t", QoS::AtLeastOnce, false, "fence")
            .await
            .expect("publish");
        let got = until_fence(&mut pump, "fence").await;
        assert_eq!(
            payloads(&got),
            vec!["retained"],
            "round {round}: retain handling 0 sends it every time"
        );
        assert!(
            got[0].retain,
            "sent because of the subscribe: retain flag 1"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_1_sends_retained_only_for_new_subscription() {
    let node = TestNode::start().await;
    let (p, mut p_pump) = client(&node, "rh1-pub").await;
    publish_acked(&p, &mut p_pump, "rh/t", true, "retained").await;
    let (s, mut pump) = client(&node, "rh1-sub").await;
    let rh1 = || {
        opts("rh/t", |f| {
            f.retain_forward_rule = RetainForwardRule::OnNewSubscribe
        })
    };

    subscribe(&s, &mut pump, rh1()).await;
    p.publish("rh/t", QoS::AtLeastOnce, false, "fence")
        .await
        .expect("publish");
    let got = until_fence(&mut pump, "fence").await;
    assert_eq!(
        payloads(&got),
        vec!["retained"],
        "new subscription: retained message sent"
    );

    subscribe(&s, &mut pump, rh1()).await;
    p.publish("rh/t", QoS::AtLeastOnce, false, "fence")
        .await
        .expect("publish");
    let got = until_fence(&mut pump, "fence").await;
    assert!(
        got.is_empty(),
        "existing subscription: retain handling 1 must not resend: {:?}",
        payloads(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_2_never_sends_retained() {
    let node = TestNode::start().await;
    let (p, mut p_pump) = client(&node, "rh2-pub").await;
    publish_acked(&p, &mut p_pump, "rh/t", true, "retained").await;
    let (s, mut pump) = client(&node, "rh2-sub").await;
    subscribe(
        &s,
        &mut pump,
        opts("rh/t", |f| f.retain_forward_rule = RetainForwardRule::Never),
    )
    .await;
    p.publish("rh/t", QoS::AtLeastOnce, false, "fence")
        .await
        .expect("publish");
    let got = until_fence(&mut pump, "fence").await;
    assert!(
        got.is_empty(),
        "retain handling 2: no retained message at subscribe: {:?}",
        payloads(&got)
    );

    // New publishes still flow.
    p.publish("rh/t", QoS::AtLeastOnce, false, "live")
        .await
        .expect("publish");
    p.publish("rh/t", QoS::AtLeastOnce, false, "fence")
        .await
        .expect("publish");
    let got = until_fence(&mut pump, "fence").await;
    assert_eq!(payloads(&got), vec!["live"]);
}
