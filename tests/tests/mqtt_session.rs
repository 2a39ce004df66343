//! Persistent sessions: subscriptions and QoS 1/2 messages kept while the client is away,
//! clean start discarding them, v5 session expiry, and the per-session queue limit.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet as V4Packet, QoS as V4QoS};
use tern_broker::stats::DropReason;
use tern_codec::{Connect, Disconnect, DisconnectProperties, ProtocolVersion, QoS, ReasonCode};
use tern_tests::clients::{connect_packet, text, Pump, RawClient, TIMEOUT};
use tern_tests::{wait_until, TestNode};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

type V4Pump = Pump<Event, ConnectionError>;
type V5Pump = Pump<rumqttc::v5::Event, rumqttc::v5::ConnectionError>;

async fn v4_persistent(node: &TestNode, id: &str) -> (AsyncClient, V4Pump, bool) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    opts.set_clean_session(false);
    let (client, eventloop) = AsyncClient::new(opts, 100);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    let present = pump
        .wait_for("CONNACK", |e| match e {
            Event::Incoming(V4Packet::ConnAck(a)) => Some(a.session_present),
            _ => None,
        })
        .await;
    (client, pump, present)
}

async fn v5_persistent(node: &TestNode, id: &str) -> (rumqttc::v5::AsyncClient, V5Pump, bool) {
    let mut opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(300));
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 100);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::v5::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    let present = pump
        .wait_for("CONNACK", |e| match e {
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(a)) => {
                Some(a.session_present)
            }
            _ => None,
        })
        .await;
    (client, pump, present)
}

fn persistent(version: ProtocolVersion, id: &str, expiry: u32) -> Connect {
    let mut c = connect_packet(version, id);
    c.clean_start = false;
    if version == V5 {
        c.properties.session_expiry_interval = Some(expiry);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_persistent_session_keeps_subscription_and_100_qos1_messages_in_order() {
    let node = TestNode::start().await;
    let id = "offline-v311";
    let (sub, mut pump, present) = v4_persistent(&node, id).await;
    assert!(!present);
    sub.subscribe("offline/v311", V4QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    pump.wait_for("SUBACK", |e| {
        matches!(e, Event::Incoming(V4Packet::SubAck(_))).then_some(())
    })
    .await;
    sub.disconnect().await.expect("queue DISCONNECT");
    pump.wait_error(TIMEOUT).await;

    const N: usize = 100;
    let mut publ = RawClient::v311(node.mqtt_addr(), "offline-v311-pub").await;
    for i in 0..N {
        publ.publish("offline/v311", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }

    let (_sub, mut pump, present) = v4_persistent(&node, id).await;
    assert!(present, "the session was kept");
    publ.publish("offline/v311", "fence", QoS::AtLeastOnce, false)
        .await;
    let mut got = Vec::new();
    pump.wait_for("fence", |e| match e {
        Event::Incoming(V4Packet::Publish(p)) if p.payload.as_ref() == b"fence" => Some(()),
        Event::Incoming(V4Packet::Publish(p)) => {
            got.push(text(&p.payload));
            None
        }
        _ => None,
    })
    .await;
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(
        got, expected,
        "all {N} queued messages exactly once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_persistent_session_keeps_subscription_and_100_qos1_messages_in_order() {
    let node = TestNode::start().await;
    let id = "offline-v5";
    let (sub, mut pump, present) = v5_persistent(&node, id).await;
    assert!(!present);
    sub.subscribe("offline/v5", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    pump.wait_for("SUBACK", |e| {
        matches!(
            e,
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::SubAck(_))
        )
        .then_some(())
    })
    .await;
    sub.disconnect().await.expect("queue DISCONNECT");
    pump.wait_error(TIMEOUT).await;

    const N: usize = 100;
    let mut publ = RawClient::v5(node.mqtt_addr(), "offline-v5-pub").await;
    for i in 0..N {
        publ.publish("offline/v5", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }

    let (_sub, mut pump, present) = v5_persistent(&node, id).await;
    assert!(present, "the session was kept");
    publ.publish("offline/v5", "fence", QoS::AtLeastOnce, false)
        .await;
    let mut got = Vec::new();
    pump.wait_for("fence", |e| match e {
        rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::Publish(p)) => {
            if p.payload.as_ref() == b"fence" {
                return Some(());
            }
            got.push(text(&p.payload));
            None
        }
        _ => None,
    })
    .await;
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(
        got, expected,
        "all {N} queued messages exactly once, in order"
    );
}

async fn offline_qos2_messages_kept(version: ProtocolVersion) {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let id = format!("offline-q2-{}", version.label());
    let (mut sub, _) = RawClient::connect_ok(addr, persistent(version, &id, 300)).await;
    sub.subscribe("offq2/#", QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publ = RawClient::v5(addr, &format!("{id}-pub")).await;
    for i in 0..20 {
        let qos = if i % 2 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        publ.publish("offq2/t", format!("{i}"), qos, false).await;
    }
    let (mut sub, ack) = RawClient::connect_ok(addr, persistent(version, &id, 300)).await;
    assert!(ack.session_present);
    publ.publish("offq2/t", "fence", QoS::ExactlyOnce, false)
        .await;
    let got = sub.recv_until_payload("fence").await;
    let seen: Vec<(String, QoS)> = got.iter().map(|p| (text(&p.payload), p.qos)).collect();
    let expected: Vec<(String, QoS)> = (0..20)
        .map(|i| {
            (
                i.to_string(),
                if i % 2 == 0 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                },
            )
        })
        .collect();
    assert_eq!(
        seen, expected,
        "QoS 1 and 2 messages kept offline, each once, in order, at their QoS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_offline_qos1_and_qos2_messages_kept() {
    offline_qos2_messages_kept(V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_offline_qos1_and_qos2_messages_kept() {
    offline_qos2_messages_kept(V5).await;
}

async fn clean_start_discards_session(version: ProtocolVersion) {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let id = format!("discard-{}", version.label());
    let (mut sub, _) = RawClient::connect_ok(addr, persistent(version, &id, 300)).await;
    sub.subscribe("discard/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publ = RawClient::v5(addr, &format!("{id}-pub")).await;
    publ.publish("discard/t", "queued", QoS::AtLeastOnce, false)
        .await;

    let mut fresh = persistent(version, &id, 300);
    fresh.clean_start = true;
    let (mut sub, ack) = RawClient::connect_ok(addr, fresh).await;
    assert!(!ack.session_present);
    sub.subscribe("discard/fence", QoS::AtLeastOnce).await;
    publ.publish("discard/t", "after", QoS::AtLeastOnce, false)
        .await;
    publ.publish("discard/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    let got = sub.recv_until_payload("fence").await;
    assert!(
        got.is_empty(),
        "clean start discards both the queued message and the subscription: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_clean_session_discards_stored_session() {
    clean_start_discards_session(V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_clean_start_discards_stored_session() {
    clean_start_discards_session(V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expires_after_its_interval() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let broker = node.running().broker().clone();
    let (mut short, _) = RawClient::connect_ok(addr, persistent(V5, "expiry-short", 1)).await;
    short.subscribe("expiry/t", QoS::AtLeastOnce).await;
    let (long, _) = RawClient::connect_ok(addr, persistent(V5, "expiry-long", 60)).await;
    short.disconnect().await;
    let disconnected = Instant::now();
    long.disconnect().await;
    assert!(
        broker.has_session("expiry-short"),
        "the session outlives the connection for its expiry interval"
    );

    assert!(
        wait_until(Duration::from_secs(10), || !broker
            .has_session("expiry-short"))
        .await,
        "the session with expiry 1 s still exists 10 s after its disconnect"
    );
    let gone_after = disconnected.elapsed();
    assert!(
        gone_after >= Duration::from_millis(900),
        "the session expired too early: {gone_after:?}"
    );
    assert!(
        gone_after <= Duration::from_secs(4),
        "the session expired late: {gone_after:?}"
    );

    // Seen from the client: nothing to resume, and its subscription went with it.
    let (mut again, ack) = RawClient::connect_ok(addr, persistent(V5, "expiry-short", 1)).await;
    assert!(
        !ack.session_present,
        "the expired session must not be resumed: {ack:?}"
    );
    again.subscribe("expiry/fence", QoS::AtLeastOnce).await;
    let mut publ = RawClient::v5(addr, "expiry-pub").await;
    publ.publish("expiry/t", "x", QoS::AtLeastOnce, false).await;
    publ.publish("expiry/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    let got = again.recv_until_payload("fence").await;
    assert!(
        got.is_empty(),
        "the expired session's subscription must be gone: {got:?}"
    );

    // The long one is still there.
    assert!(broker.has_session("expiry-long"));
    let (_long, ack) = RawClient::connect_ok(addr, persistent(V5, "expiry-long", 60)).await;
    assert!(
        ack.session_present,
        "session expiry 60 s: still there: {ack:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_probed_by_reconnecting() {
    // The same as above, seen only through MQTT: reconnect with clean start 0 until the
    // CONNACK says session present 0. Each probe that finds the session resumes it and
    // restarts its 1 s expiry on disconnect, so probes are spaced by more than 1 s.
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let (c, _) = RawClient::connect_ok(addr, persistent(V5, "expiry-probe", 1)).await;
    c.disconnect().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut probes = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        probes += 1;
        let (c, ack) = RawClient::connect_ok(addr, persistent(V5, "expiry-probe", 1)).await;
        c.disconnect().await;
        if !ack.session_present {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session with expiry 1 s is still present after {probes} probes"
        );
    }
    assert_eq!(
        probes, 1,
        "1.5 s after its disconnect, a session with expiry 1 s must be gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_expiry_zero_ends_session_at_disconnect() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(V5, "expiry-zero");
    connect.clean_start = false; // and no Session Expiry Interval: 0
    let (mut c, _) = RawClient::connect_ok(addr, connect.clone()).await;
    c.subscribe("ez/t", QoS::AtLeastOnce).await;
    c.disconnect().await;
    let (_c, ack) = RawClient::connect_ok(addr, connect).await;
    assert!(
        !ack.session_present,
        "expiry 0: the session ends with the connection: {ack:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_can_set_session_expiry_to_zero() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let (c, _) = RawClient::connect_ok(addr, persistent(V5, "expiry-on-disconnect", 300)).await;
    c.disconnect_with(Disconnect {
        reason: ReasonCode::NORMAL_DISCONNECTION,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..Default::default()
        },
    })
    .await;
    let (_c, ack) = RawClient::connect_ok(addr, persistent(V5, "expiry-on-disconnect", 300)).await;
    assert!(
        !ack.session_present,
        "DISCONNECT with session expiry 0 ends the session: {ack:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limit_drops_oldest_qos0_first() {
    let node = TestNode::start_with(|cfg| cfg.broker.max_queued_messages = 10).await;
    let addr = node.mqtt_addr();
    let (mut sub, _) = RawClient::connect_ok(addr, persistent(V5, "queue-limit", 300)).await;
    sub.subscribe("ql/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let drops_before = node.running().broker().stats.dropped(DropReason::QueueFull);

    // 4 QoS 0 then 8 QoS 1: 12 messages for a queue of 10. The two oldest QoS 0 go.
    let mut publ = RawClient::v5(addr, "queue-limit-pub").await;
    for i in 0..4 {
        publ.publish("ql/t", format!("q0-{i}"), QoS::AtMostOnce, false)
            .await;
    }
    for i in 0..8 {
        publ.publish("ql/t", format!("q1-{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    // The PUBACK of the last QoS 1 means every earlier publish was processed.
    let broker = node.running().broker().clone();
    assert!(
        wait_until(TIMEOUT, || broker.stats.dropped(DropReason::QueueFull)
            >= drops_before + 2)
        .await,
        "the node must count the 2 dropped messages (dropped queue_full: {} before, {} now)",
        drops_before,
        broker.stats.dropped(DropReason::QueueFull)
    );

    let (mut sub, ack) = RawClient::connect_ok(addr, persistent(V5, "queue-limit", 300)).await;
    assert!(ack.session_present);
    // Take the 10 first, then fence: a fence sent earlier could itself meet a full queue.
    let got: Vec<String> = sub
        .recv_publishes(10)
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    publ.publish("ql/t", "fence", QoS::AtLeastOnce, false).await;
    let extra = sub.recv_until_payload("fence").await;
    assert!(
        extra.is_empty(),
        "more than the queue limit was kept: {extra:?}"
    );
    let expected: Vec<String> = ["q0-2", "q0-3"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..8).map(|i| format!("q1-{i}")))
        .collect();
    assert_eq!(
        got, expected,
        "the 2 oldest QoS 0 messages are dropped; every QoS 1 is kept"
    );
    assert_eq!(
        broker.stats.dropped(DropReason::QueueFull),
        drops_before + 2,
        "exactly 2 drops counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_limit_full_of_qos1_drops_the_new_message() {
    let node = TestNode::start_with(|cfg| cfg.broker.max_queued_messages = 10).await;
    let addr = node.mqtt_addr();
    let (mut sub, _) = RawClient::connect_ok(addr, persistent(V311, "queue-full", 0)).await;
    sub.subscribe("qf/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publ = RawClient::v311(addr, "queue-full-pub").await;
    for i in 0..13 {
        publ.publish("qf/t", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    let broker = node.running().broker().clone();
    assert!(
        wait_until(TIMEOUT, || broker.stats.dropped(DropReason::QueueFull) >= 3).await,
        "3 drops must be counted, got {}",
        broker.stats.dropped(DropReason::QueueFull)
    );
    let (mut sub, ack) = RawClient::connect_ok(addr, persistent(V311, "queue-full", 0)).await;
    assert!(ack.session_present);
    let got: Vec<String> = sub
        .recv_publishes(10)
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    publ.publish("qf/t", "fence", QoS::AtLeastOnce, false).await;
    let extra = sub.recv_until_payload("fence").await;
    assert!(
        extra.is_empty(),
        "more than the queue limit was kept: {extra:?}"
    );
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(
        got, expected,
        "with no QoS 0 to drop, the newest messages are the ones dropped"
    );
}
