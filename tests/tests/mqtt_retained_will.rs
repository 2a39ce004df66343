//! Retained messages (late subscribers, clearing, QoS, retain flag) and will messages
//! (abnormal disconnect, normal DISCONNECT, v5 DISCONNECT 0x04, v5 will delay).

use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Packet as V4Packet, QoS as V4QoS,
};
use tern_codec::{Disconnect, ProtocolVersion, QoS, ReasonCode};
use tern_tests::clients::{connect_packet, text, will, Pump, RawClient, TIMEOUT};
use tern_tests::TestNode;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

type V4Pump = Pump<Event, ConnectionError>;

async fn v4_client(opts: MqttOptions) -> (AsyncClient, V4Pump) {
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

fn v4_opts(node: &TestNode, id: &str) -> MqttOptions {
    MqttOptions::new(id, "127.0.0.1", node.mqtt_port())
}

async fn v4_subscribe(client: &AsyncClient, pump: &mut V4Pump, filter: &str, qos: V4QoS) {
    client
        .subscribe(filter, qos)
        .await
        .expect("queue SUBSCRIBE");
    pump.wait_for("SUBACK", |e| {
        matches!(e, Event::Incoming(V4Packet::SubAck(_))).then_some(())
    })
    .await;
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

// ---- retained ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_late_subscriber_gets_retained_message_with_retain_flag() {
    let node = TestNode::start().await;
    let mut publ = RawClient::v311(node.mqtt_addr(), "ret-pub").await;
    publ.publish("ret/t", "kept", QoS::AtLeastOnce, true).await;

    let (sub, mut pump) = v4_client(v4_opts(&node, "ret-late")).await;
    v4_subscribe(&sub, &mut pump, "ret/#", V4QoS::AtLeastOnce).await;
    publ.publish("ret/t", "fence", QoS::AtLeastOnce, false)
        .await;
    let got = v4_until_fence(&mut pump, "fence").await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].topic.as_str(), text(&got[0].payload).as_str()),
        ("ret/t", "kept")
    );
    assert!(
        got[0].retain,
        "a retained message sent to a new subscriber has retain 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_late_subscriber_gets_latest_retained_message() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut publ = RawClient::v5(addr, "ret5-pub").await;
    publ.publish("ret5/t", "old", QoS::AtLeastOnce, true).await;
    publ.publish("ret5/t", "new", QoS::AtLeastOnce, true).await;
    publ.publish("ret5/other", "other", QoS::AtLeastOnce, true)
        .await;

    let mut sub = RawClient::v5(addr, "ret5-late").await;
    sub.subscribe("ret5/t", QoS::AtLeastOnce).await;
    publ.publish("ret5/t", "fence", QoS::AtLeastOnce, false)
        .await;
    let got = sub.recv_until_payload("fence").await;
    assert_eq!(
        got.len(),
        1,
        "only the latest retained message on the topic: {got:?}"
    );
    assert_eq!(text(&got[0].payload), "new");
    assert!(got[0].retain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_forward_of_retained_publish_clears_retain_flag_on_v311() {
    // 3.1.1: a message forwarded to an existing subscription has retain 0.
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v311(addr, "ret-live").await;
    sub.subscribe("live/t", QoS::AtLeastOnce).await;
    let mut publ = RawClient::v311(addr, "ret-live-pub").await;
    publ.publish("live/t", "r", QoS::AtLeastOnce, true).await;
    let p = sub.expect_publish().await;
    assert_eq!(text(&p.payload), "r");
    assert!(
        !p.retain,
        "3.1.1: forwarded to an established subscription with retain 0"
    );
}

async fn empty_retained_payload_clears(version: ProtocolVersion) {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut publ = RawClient::connect_ok(addr, connect_packet(version, "clear-pub"))
        .await
        .0;
    publ.publish("clr/t", "kept", QoS::AtLeastOnce, true).await;
    publ.publish("clr/t", "", QoS::AtLeastOnce, true).await;

    let mut sub = RawClient::connect_ok(addr, connect_packet(version, "clear-sub"))
        .await
        .0;
    sub.subscribe("clr/#", QoS::AtLeastOnce).await;
    publ.publish("clr/t", "fence", QoS::AtLeastOnce, false)
        .await;
    let got = sub.recv_until_payload("fence").await;
    assert!(
        got.is_empty(),
        "an empty retained payload clears the retained message: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_retained_payload_clears() {
    empty_retained_payload_clears(V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_empty_retained_payload_clears() {
    empty_retained_payload_clears(V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_delivered_at_min_of_original_and_granted_qos() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut publ = RawClient::v5(addr, "retq-pub").await;
    publ.publish("retq/0", "q0", QoS::AtMostOnce, true).await;
    publ.publish("retq/1", "q1", QoS::AtLeastOnce, true).await;
    publ.publish("retq/2", "q2", QoS::ExactlyOnce, true).await;

    for (granted, id) in [
        (QoS::AtLeastOnce, "retq-sub-1"),
        (QoS::ExactlyOnce, "retq-sub-2"),
        (QoS::AtMostOnce, "retq-sub-0"),
    ] {
        let mut sub = RawClient::v311(addr, id).await;
        sub.subscribe("retq/+", granted).await;
        let mut got: Vec<(String, QoS, bool)> = sub
            .recv_publishes(3)
            .await
            .into_iter()
            .map(|p| (text(&p.payload), p.qos, p.retain))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let min = |q: QoS| {
            if (q as u8) < (granted as u8) {
                q
            } else {
                granted
            }
        };
        assert_eq!(
            got,
            vec![
                ("q0".to_string(), min(QoS::AtMostOnce), true),
                ("q1".to_string(), min(QoS::AtLeastOnce), true),
                ("q2".to_string(), min(QoS::ExactlyOnce), true),
            ],
            "granted {granted:?}"
        );
        publ.publish("retq/x", "fence", QoS::AtLeastOnce, false)
            .await;
        let extra = sub.recv_until_payload("fence").await;
        assert!(extra.is_empty(), "each retained message once: {extra:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_for_wildcard_subscription() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut publ = RawClient::v311(addr, "retw-pub").await;
    for t in ["w/a", "w/b/c", "w/b/d", "x/a"] {
        publ.publish(t, t, QoS::AtLeastOnce, true).await;
    }
    let mut sub = RawClient::v5(addr, "retw-sub").await;
    sub.subscribe("w/#", QoS::AtLeastOnce).await;
    publ.publish("w/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    let mut got: Vec<String> = sub
        .recv_until_payload("fence")
        .await
        .into_iter()
        .map(|p| p.topic)
        .collect();
    got.sort();
    assert_eq!(got, vec!["w/a", "w/b/c", "w/b/d"]);
}

// ---- will ----------------------------------------------------------------------------

/// A watcher subscribed to `will/#` (3.1.1, rumqttc).
async fn watcher(node: &TestNode, id: &str) -> (AsyncClient, V4Pump) {
    let (c, mut pump) = v4_client(v4_opts(node, id)).await;
    v4_subscribe(&c, &mut pump, "will/#", V4QoS::AtLeastOnce).await;
    (c, pump)
}

async fn wait_will(pump: &mut V4Pump, timeout: Duration) -> rumqttc::Publish {
    pump.wait_for_within(timeout, "will message", |e| match e {
        Event::Incoming(V4Packet::Publish(p))
            if p.topic.starts_with("will/") && p.payload.as_ref() != b"fence" =>
        {
            Some(p.clone())
        }
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_will_sent_when_connection_drops() {
    let node = TestNode::start().await;
    let (_w, mut wpump) = watcher(&node, "will-watch-311").await;
    let mut opts = v4_opts(&node, "will-311");
    opts.set_last_will(LastWill::new("will/311", "gone", V4QoS::AtLeastOnce, false));
    let (_c, pump) = v4_client(opts).await;
    pump.kill().await; // drops the TCP connection without DISCONNECT
    let p = wait_will(&mut wpump, TIMEOUT).await;
    assert_eq!(
        (p.topic.as_str(), text(&p.payload).as_str()),
        ("will/311", "gone")
    );
}

/// A rumqttc MQTT 5 client with `opts`, connected (CONNACK seen).
async fn v5_connected(
    opts: rumqttc::v5::MqttOptions,
) -> (
    rumqttc::v5::AsyncClient,
    Pump<rumqttc::v5::Event, rumqttc::v5::ConnectionError>,
) {
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::v5::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    pump.wait_for("CONNACK", |e| {
        matches!(
            e,
            rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_))
        )
        .then_some(())
    })
    .await;
    (client, pump)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_sent_when_connection_drops() {
    let node = TestNode::start().await;
    let (_w, mut wpump) = watcher(&node, "will-watch-5").await;
    let opts = {
        let mut o = rumqttc::v5::MqttOptions::new("will-5", "127.0.0.1", node.mqtt_port());
        o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            "will/5",
            "gone5",
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            None,
        ));
        o
    };
    let (_c, pump) = v5_connected(opts).await;
    pump.kill().await;
    let p = wait_will(&mut wpump, TIMEOUT).await;
    assert_eq!(
        (p.topic.as_str(), text(&p.payload).as_str()),
        ("will/5", "gone5")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_sent_when_keep_alive_expires() {
    let node = TestNode::start().await;
    let (_w, mut wpump) = watcher(&node, "will-watch-ka").await;
    let mut connect = connect_packet(V311, "will-ka");
    connect.keep_alive = 1;
    connect.will = Some(will("will/ka", "silent", QoS::AtLeastOnce, false));
    let (_c, _) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
    // The client keeps its socket open but says nothing: a network failure by keep alive.
    let p = wait_will(&mut wpump, TIMEOUT).await;
    assert_eq!(text(&p.payload), "silent");
}

async fn will_not_sent_on_normal_disconnect(version: ProtocolVersion) {
    let node = TestNode::start().await;
    let (_w, mut wpump) = watcher(&node, &format!("will-watch-normal-{}", version.label())).await;
    let mut connect = connect_packet(version, &format!("will-normal-{}", version.label()));
    connect.will = Some(will(
        "will/normal",
        "must-not-appear",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, _) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
    // DISCONNECT, then wait until the broker has closed the connection.
    c.disconnect().await;

    let mut other = RawClient::v311(
        node.mqtt_addr(),
        &format!("will-normal-fence-{}", version.label()),
    )
    .await;
    other
        .publish("will/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    let got = v4_until_fence(&mut wpump, "fence").await;
    assert!(got.is_empty(), "no will after a normal DISCONNECT: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_will_not_sent_on_normal_disconnect() {
    will_not_sent_on_normal_disconnect(V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_not_sent_on_normal_disconnect() {
    will_not_sent_on_normal_disconnect(V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_disconnect_with_will_message_0x04_sends_will() {
    let node = TestNode::start().await;
    let (_w, mut wpump) = watcher(&node, "will-watch-04").await;
    let mut connect = connect_packet(V5, "will-04");
    connect.will = Some(will("will/04", "asked-for", QoS::AtLeastOnce, false));
    let (c, _) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
    c.disconnect_with(Disconnect {
        reason: ReasonCode::DISCONNECT_WITH_WILL,
        properties: Default::default(),
    })
    .await;
    let p = wait_will(&mut wpump, TIMEOUT).await;
    assert_eq!(text(&p.payload), "asked-for");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will_is_stored() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(V5, "will-retained");
    connect.will = Some(will("will/retained", "last", QoS::AtLeastOnce, true));
    let (c, _) = RawClient::connect_ok(addr, connect).await;
    let (_w, mut wpump) = watcher(&node, "will-watch-retained").await;
    c.drop_connection();
    wait_will(&mut wpump, TIMEOUT).await;

    let mut late = RawClient::v5(addr, "will-retained-late").await;
    late.subscribe("will/retained", QoS::AtLeastOnce).await;
    let p = late.expect_publish().await;
    assert_eq!((text(&p.payload).as_str(), p.retain), ("last", true));
}

/// A v5 client with a will on `topic` delayed by `delay` seconds, and a session that
/// outlives it.
fn delayed_will_connect(id: &str, topic: &str, delay: u32) -> tern_codec::Connect {
    let mut connect = connect_packet(V5, id);
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(300);
    let mut w = will(topic, id, QoS::AtLeastOnce, false);
    w.properties.will_delay_interval = Some(delay);
    connect.will = Some(w);
    connect
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_interval_delays_the_will() {
    let node = TestNode::start().await;
    let (_w, mut wpump) = watcher(&node, "will-watch-delay").await;
    let (c, _) = RawClient::connect_ok(
        node.mqtt_addr(),
        delayed_will_connect("will-delay", "will/delay", 2),
    )
    .await;
    c.drop_connection();
    let dropped = Instant::now();
    let p = wait_will(&mut wpump, Duration::from_secs(8)).await;
    let elapsed = dropped.elapsed();
    assert_eq!(text(&p.payload), "will-delay");
    assert!(
        elapsed >= Duration::from_millis(1800),
        "will delay 2 s: the will came after only {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(5000),
        "will delay 2 s: the will came after {elapsed:?}"
    );
}

/// The will's Message Expiry Interval counts from when the will is published, not from
/// the CONNECT that carried it (MQTT 5, 3.1.3.2.4): a 2-second expiry on a will published
/// 3 seconds after the connection dropped still reaches its subscriber, with about 2
/// seconds left. The will's client is rumqttc (MQTT 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_expiry_counts_from_its_publication() {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    use rumqttc::v5::mqttbytes::QoS as V5QoS;

    let node = TestNode::start().await;
    let mut watcher = RawClient::v5(node.mqtt_addr(), "will-watch-expiry").await;
    watcher.subscribe("will/expiry", QoS::AtLeastOnce).await;
    let mut opts = rumqttc::v5::MqttOptions::new("will-expiry", "127.0.0.1", node.mqtt_port());
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(300));
    let properties = LastWillProperties {
        delay_interval: Some(3),
        payload_format_indicator: None,
        message_expiry_interval: Some(2),
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    opts.set_last_will(LastWill::new(
        "will/expiry",
        "will-expiry",
        V5QoS::AtLeastOnce,
        false,
        Some(properties),
    ));
    let (_c, pump) = v5_connected(opts).await;
    pump.kill().await; // drops the TCP connection without DISCONNECT
    let p = watcher.expect_publish().await;
    assert_eq!(text(&p.payload), "will-expiry");
    let left = p.properties.message_expiry_interval;
    assert!(matches!(left, Some(1..=2)), "expiry left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_cancelled_by_reconnect() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let (_w, mut wpump) = watcher(&node, "will-watch-cancel").await;
    // The client that comes back, and a control client with the same delay that does not.
    let (c, _) =
        RawClient::connect_ok(addr, delayed_will_connect("will-back", "will/back", 2)).await;
    let (control, _) = RawClient::connect_ok(
        addr,
        delayed_will_connect("will-control", "will/control", 2),
    )
    .await;
    c.drop_connection();
    let (back, ack) =
        RawClient::connect_ok(addr, delayed_will_connect("will-back", "will/back", 2)).await;
    assert!(ack.session_present, "{ack:?}");
    control.drop_connection();

    // The control's will is due after the returning client's would have been: once it has
    // arrived, the cancelled one would have too.
    let p = wait_will(&mut wpump, Duration::from_secs(8)).await;
    assert_eq!(
        (p.topic.as_str(), text(&p.payload).as_str()),
        ("will/control", "will-control"),
        "the returning client's will must be cancelled by its reconnect"
    );
    drop(back);
}
