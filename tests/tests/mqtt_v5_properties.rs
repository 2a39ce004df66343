//! MQTT 5 message and connection properties: message expiry, application properties passed
//! through unchanged (and stripped cleanly for 3.1.1 subscribers), Request Response
//! Information, reason strings and Request Problem Information.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet as V5Packet, PublishProperties as V5PublishProperties};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet as V4Packet, QoS as V4QoS};
use tern_codec::{ProtocolVersion, PublishProperties, QoS, ReasonCode};
use tern_tests::clients::{connect_packet, publish_packet, text, Pump, RawClient};
use tern_tests::TestNode;

const V5: ProtocolVersion = ProtocolVersion::V5;

type V4Pump = Pump<Event, ConnectionError>;
type V5Pump = Pump<rumqttc::v5::Event, rumqttc::v5::ConnectionError>;

fn app_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("replies/for/me".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xFF])),
        user_properties: vec![
            ("k".into(), "v1".into()),
            ("other".into(), "x".into()),
            ("k".into(), "v2".into()), // repeated keys, order kept
        ],
        ..Default::default()
    }
}

// ---- message expiry ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_not_delivered_to_returning_session() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(V5, "expiry-offline");
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(300);
    let (mut sub, _) = RawClient::connect_ok(addr, connect.clone()).await;
    sub.subscribe("mexp/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publ = RawClient::v5(addr, "expiry-offline-pub").await;
    for (payload, expiry) in [("short", Some(1)), ("long", Some(60)), ("none", None)] {
        let mut p = publish_packet("mexp/t", payload, QoS::AtLeastOnce, false);
        p.properties.message_expiry_interval = expiry;
        publ.publish_packet(p).await;
    }
    // The interval under test is 1 s: let it pass (this wait is the behaviour tested).
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (mut sub, ack) = RawClient::connect_ok(addr, connect).await;
    assert!(ack.session_present);
    publ.publish("mexp/t", "fence", QoS::AtLeastOnce, false)
        .await;
    let got = sub.recv_until_payload("fence").await;
    let payloads: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(
        payloads,
        vec!["long", "none"],
        "the expired message must not be delivered"
    );
    let long = &got[0];
    let left = long
        .properties
        .message_expiry_interval
        .expect("the remaining expiry is sent on");
    assert!(
        (55..=58).contains(&left),
        "60 s expiry, ~2 s spent queued: the interval sent must be decremented, got {left}"
    );
    assert_eq!(
        got[1].properties.message_expiry_interval, None,
        "no expiry stays no expiry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_message_carries_message_expiry() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v5(addr, "expiry-online").await;
    sub.subscribe("mexp/online", QoS::AtLeastOnce).await;
    let mut publ = RawClient::v5(addr, "expiry-online-pub").await;
    let mut p = publish_packet("mexp/online", "x", QoS::AtLeastOnce, false);
    p.properties.message_expiry_interval = Some(30);
    publ.publish_packet(p).await;
    let got = sub.expect_publish().await;
    let left = got
        .properties
        .message_expiry_interval
        .expect("expiry passed on");
    assert!(
        (28..=30).contains(&left),
        "remaining expiry of a fresh 30 s message: {left}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_retained_message_is_not_sent() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut publ = RawClient::v5(addr, "expiry-retained-pub").await;
    let mut p = publish_packet("mexp/retained", "short", QoS::AtLeastOnce, true);
    p.properties.message_expiry_interval = Some(1);
    publ.publish_packet(p).await;
    let mut p = publish_packet("mexp/retained2", "long", QoS::AtLeastOnce, true);
    p.properties.message_expiry_interval = Some(60);
    publ.publish_packet(p).await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // the 1 s expiry under test
    let mut sub = RawClient::v5(addr, "expiry-retained-sub").await;
    sub.subscribe("mexp/+", QoS::AtLeastOnce).await;
    publ.publish("mexp/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    let got: Vec<String> = sub
        .recv_until_payload("fence")
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(
        got,
        vec!["long"],
        "an expired retained message is not sent to new subscribers"
    );
}

// ---- properties passed through -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_properties_pass_through_unchanged_to_v5_subscriber() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v5(addr, "props-sub").await;
    sub.subscribe("props/t", QoS::ExactlyOnce).await;
    let mut publ = RawClient::v5(addr, "props-pub").await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut p = publish_packet("props/t", "{\"a\":1}", qos, false);
        p.properties = app_properties();
        publ.publish_packet(p).await;
        let got = sub.expect_publish().await;
        sub.ack(&got).await;
        let want = app_properties();
        assert_eq!(
            got.properties.payload_format_indicator, want.payload_format_indicator,
            "{qos:?}"
        );
        assert_eq!(got.properties.content_type, want.content_type, "{qos:?}");
        assert_eq!(
            got.properties.response_topic, want.response_topic,
            "{qos:?}"
        );
        assert_eq!(
            got.properties.correlation_data, want.correlation_data,
            "{qos:?}"
        );
        assert_eq!(
            got.properties.user_properties, want.user_properties,
            "{qos:?}: same pairs, same order"
        );
        assert_eq!(text(&got.payload), "{\"a\":1}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_properties_pass_through_with_rumqttc() {
    let node = TestNode::start().await;
    let (sub, mut sub_pump) = v5_client(&node, "props-rumqttc-sub").await;
    sub.subscribe("propsr/t", V5QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    sub_pump
        .wait_for("SUBACK", |e| {
            matches!(e, rumqttc::v5::Event::Incoming(V5Packet::SubAck(_))).then_some(())
        })
        .await;
    let (publ, _pub_pump) = v5_client(&node, "props-rumqttc-pub").await;
    let props = V5PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"corr-42")),
        user_properties: vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ],
        ..Default::default()
    };
    publ.publish_with_properties(
        "propsr/t",
        V5QoS::AtLeastOnce,
        false,
        "hello",
        props.clone(),
    )
    .await
    .expect("queue publish");
    let got = sub_pump
        .wait_for("publish", |e| match e {
            rumqttc::v5::Event::Incoming(V5Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await;
    let gp = got.properties.clone().expect("properties present");
    assert_eq!(gp.payload_format_indicator, props.payload_format_indicator);
    assert_eq!(gp.content_type, props.content_type);
    assert_eq!(gp.response_topic, props.response_topic);
    assert_eq!(gp.correlation_data, props.correlation_data);
    assert_eq!(gp.user_properties, props.user_properties);
    assert_eq!(text(&got.payload), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_with_properties_reaches_v311_subscriber_cleanly() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    // A real 3.1.1 client: it would fail to decode a PUBLISH that leaked v5 properties.
    let (_v4, mut v4_pump) = v4_client(&node, "props-v311-rumqttc").await;
    let mut raw311 = RawClient::v311(addr, "props-v311-raw").await;
    raw311.subscribe("props311/t", QoS::AtLeastOnce).await;

    let mut publ = RawClient::v5(addr, "props-v311-pub").await;
    let mut p = publish_packet("props311/t", "payload-intact", QoS::AtLeastOnce, false);
    p.properties = app_properties();
    p.properties.message_expiry_interval = Some(60);
    publ.publish_packet(p).await;
    publ.publish("props311/t", "fence", QoS::AtLeastOnce, false)
        .await;

    let mut got = Vec::new();
    v4_pump
        .wait_for("fence", |e| match e {
            Event::Incoming(V4Packet::Publish(p)) if p.payload.as_ref() == b"fence" => Some(()),
            Event::Incoming(V4Packet::Publish(p)) => {
                got.push(p.clone());
                None
            }
            _ => None,
        })
        .await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].topic.as_str(), text(&got[0].payload).as_str()),
        ("props311/t", "payload-intact")
    );

    let got = raw311.recv_until_payload("fence").await;
    assert_eq!(got.len(), 1);
    assert_eq!(text(&got[0].payload), "payload-intact");
    assert_eq!(
        got[0].properties,
        PublishProperties::default(),
        "no properties on 3.1.1"
    );
}

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
    client
        .subscribe("props311/t", V4QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    pump.wait_for("SUBACK", |e| {
        matches!(e, Event::Incoming(V4Packet::SubAck(_))).then_some(())
    })
    .await;
    (client, pump)
}

async fn v5_client(node: &TestNode, id: &str) -> (rumqttc::v5::AsyncClient, V5Pump) {
    let opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    let (client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 100);
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

// ---- request/response and problem information ----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_information_is_returned_when_requested() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(V5, "rri-client");
    connect.properties.request_response_information = Some(1);
    let (_c, ack) = RawClient::connect_ok(addr, connect).await;
    let info = ack
        .properties
        .response_information
        .clone()
        .expect("Response Information when requested");
    assert_eq!(
        info, "response/rri-client",
        "config default `response/{{client_id}}`: {ack:?}"
    );

    let (_c, ack) = RawClient::connect_ok(addr, connect_packet(V5, "rri-not-asked")).await;
    assert_eq!(
        ack.properties.response_information, None,
        "not requested, not sent: {ack:?}"
    );

    let mut connect = connect_packet(V5, "rri-zero");
    connect.properties.request_response_information = Some(0);
    let (_c, ack) = RawClient::connect_ok(addr, connect).await;
    assert_eq!(
        ack.properties.response_information, None,
        "request 0: not sent: {ack:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_information_can_be_switched_off() {
    let node = TestNode::start_with(|cfg| cfg.broker.response_information = String::new()).await;
    let mut connect = connect_packet(V5, "rri-off");
    connect.properties.request_response_information = Some(1);
    let (_c, ack) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
    assert_eq!(ack.properties.response_information, None, "{ack:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_round_trip_with_correlation_data() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut connect = connect_packet(V5, "requester");
    connect.properties.request_response_information = Some(1);
    let (mut requester, ack) = RawClient::connect_ok(addr, connect).await;
    let reply_topic = ack
        .properties
        .response_information
        .clone()
        .expect("response information");
    requester.subscribe(&reply_topic, QoS::AtLeastOnce).await;

    let mut responder = RawClient::v5(addr, "responder").await;
    responder.subscribe("service/echo", QoS::AtLeastOnce).await;
    let mut req = publish_packet("service/echo", "ping", QoS::AtLeastOnce, false);
    req.properties.response_topic = Some(reply_topic.clone());
    req.properties.correlation_data = Some(Bytes::from_static(b"req-1"));
    requester.publish_packet(req).await;

    let got = responder.expect_publish().await;
    responder.ack(&got).await;
    let mut reply = publish_packet(
        got.properties
            .response_topic
            .as_deref()
            .expect("response topic"),
        "pong",
        QoS::AtLeastOnce,
        false,
    );
    reply.properties.correlation_data = got.properties.correlation_data.clone();
    responder.publish_packet(reply).await;

    let back = requester.expect_publish().await;
    assert_eq!(
        (back.topic.as_str(), text(&back.payload).as_str()),
        (reply_topic.as_str(), "pong")
    );
    assert_eq!(
        back.properties.correlation_data,
        Some(Bytes::from_static(b"req-1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reason_string_on_error_unless_problem_information_is_refused() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();

    let mut c = RawClient::v5(addr, "problem-default").await;
    let ack = c.subscribe_many(&[("bad/#/filter", QoS::AtMostOnce)]).await;
    assert_eq!(ack.reasons, vec![ReasonCode::TOPIC_FILTER_INVALID]);
    let reason = ack.properties.reason_string.clone();
    assert!(
        reason.as_deref().is_some_and(|r| !r.is_empty()),
        "an error SUBACK carries a reason string by default: {ack:?}"
    );

    let mut connect = connect_packet(V5, "problem-refused");
    connect.properties.request_problem_information = Some(0);
    let (mut c, _) = RawClient::connect_ok(addr, connect).await;
    let ack = c.subscribe_many(&[("bad/#/filter", QoS::AtMostOnce)]).await;
    assert_eq!(ack.reasons, vec![ReasonCode::TOPIC_FILTER_INVALID]);
    assert_eq!(
        ack.properties.reason_string, None,
        "Request Problem Information 0: no reason string: {ack:?}"
    );
    assert!(
        ack.properties.user_properties.is_empty(),
        "nor user properties: {ack:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_for_protocol_error_carries_reason_string() {
    let node = TestNode::start().await;
    let mut c = RawClient::v5(node.mqtt_addr(), "problem-disconnect").await;
    c.send(tern_codec::Packet::Connect(connect_packet(
        V5,
        "problem-disconnect",
    )))
    .await;
    let d = c.expect_disconnect().await;
    assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
    assert!(
        d.properties
            .reason_string
            .as_deref()
            .is_some_and(|r| !r.is_empty()),
        "{d:?}"
    );
}
