//! CONNECT/CONNACK conformance: clean start and session present, assigned client
//! identifiers, keep alive (client's and server's), a second CONNECT, client id takeover.
//! Credential checks live in mqtt_auth.rs.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet as V4Packet};
use tern_codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use tern_tests::clients::{connect_packet, text, v311_return_code, Pump, RawClient, Recv, TIMEOUT};
use tern_tests::TestNode;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

type V4Pump = Pump<Event, ConnectionError>;

/// A rumqttc 3.1.1 client whose CONNACK has arrived.
async fn v4_connect(
    node: &TestNode,
    id: &str,
    clean: bool,
) -> (AsyncClient, V4Pump, rumqttc::ConnAck) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    opts.set_clean_session(clean);
    let (client, eventloop) = AsyncClient::new(opts, 100);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    let ack = pump
        .wait_for("CONNACK", |e| match e {
            Event::Incoming(V4Packet::ConnAck(a)) => Some(a.clone()),
            _ => None,
        })
        .await;
    (client, pump, ack)
}

/// DISCONNECT, then wait until the broker has closed the connection.
async fn v4_disconnect(client: AsyncClient, mut pump: V4Pump) {
    client.disconnect().await.expect("queue DISCONNECT");
    pump.wait_error(TIMEOUT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_clean_start_sets_session_present() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut resume = connect_packet(V5, "session-present-v5");
    resume.clean_start = false;
    resume.properties.session_expiry_interval = Some(300);

    let (mut c, ack) = RawClient::connect_ok(addr, resume.clone()).await;
    assert!(
        !ack.session_present,
        "first connection: no session can exist yet: {ack:?}"
    );
    c.subscribe("sp/v5", QoS::AtLeastOnce).await;
    c.disconnect().await;

    let (c, ack) = RawClient::connect_ok(addr, resume.clone()).await;
    assert!(
        ack.session_present,
        "clean start 0 with a stored session: session present must be 1: {ack:?}"
    );
    c.disconnect().await;

    let mut fresh = resume.clone();
    fresh.clean_start = true;
    let (c, ack) = RawClient::connect_ok(addr, fresh).await;
    assert!(
        !ack.session_present,
        "clean start 1 must discard the session and report 0: {ack:?}"
    );
    c.disconnect().await;

    // The clean-start connection asked for expiry 300, so its (new, empty) session is kept.
    let (c, ack) = RawClient::connect_ok(addr, resume).await;
    assert!(
        ack.session_present,
        "the session created by the clean-start connection is kept: {ack:?}"
    );
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_clean_session_sets_session_present() {
    let node = TestNode::start().await;
    let id = "session-present-v311";

    let (c, p, ack) = v4_connect(&node, id, false).await;
    assert!(
        !ack.session_present,
        "first connection: no session yet: {ack:?}"
    );
    v4_disconnect(c, p).await;

    let (c, p, ack) = v4_connect(&node, id, false).await;
    assert!(
        ack.session_present,
        "clean session 0 with a stored session: session present 1: {ack:?}"
    );
    v4_disconnect(c, p).await;

    let (c, p, ack) = v4_connect(&node, id, true).await;
    assert!(
        !ack.session_present,
        "clean session 1: session present must be 0: {ack:?}"
    );
    v4_disconnect(c, p).await;

    // A clean session ends with its connection; nothing is left to resume.
    let (c, p, ack) = v4_connect(&node, id, false).await;
    assert!(
        !ack.session_present,
        "the clean session must not outlive its connection: {ack:?}"
    );
    v4_disconnect(c, p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_empty_client_id_gets_assigned_identifier() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let (mut a, ack_a) = RawClient::connect_ok(addr, connect_packet(V5, "")).await;
    let (mut b, ack_b) = RawClient::connect_ok(addr, connect_packet(V5, "")).await;
    let id_a = ack_a
        .properties
        .assigned_client_identifier
        .clone()
        .expect("CONNACK must carry Assigned Client Identifier");
    let id_b = ack_b
        .properties
        .assigned_client_identifier
        .clone()
        .expect("CONNACK must carry Assigned Client Identifier");
    assert!(
        !id_a.is_empty() && !id_b.is_empty(),
        "assigned ids must not be empty: {id_a:?} {id_b:?}"
    );
    assert_ne!(id_a, id_b, "two clients must get different identifiers");

    // Both connections are fully usable: neither took the other over.
    a.subscribe("assigned/t", QoS::AtLeastOnce).await;
    b.publish("assigned/t", "hello", QoS::AtLeastOnce, false)
        .await;
    let p = a.expect_publish().await;
    assert_eq!(text(&p.payload), "hello");
    a.ack(&p).await;
    b.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_client_id_with_clean_session_is_accepted() {
    let node = TestNode::start().await;
    let (mut c, ack) = RawClient::connect_with(node.mqtt_addr(), connect_packet(V311, "")).await;
    assert_eq!(
        v311_return_code(ack.reason),
        0,
        "empty id with clean session 1 must be accepted: {ack:?}"
    );
    assert!(!ack.session_present);
    c.subscribe("empty-id/t", QoS::AtMostOnce).await;
    c.publish("empty-id/t", "x", QoS::AtMostOnce, false).await;
    assert_eq!(text(&c.expect_publish().await.payload), "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_client_id_without_clean_session_is_rejected_with_code_2() {
    let node = TestNode::start().await;
    let mut connect = connect_packet(V311, "");
    connect.clean_start = false;
    let (mut c, ack) = RawClient::connect_with(node.mqtt_addr(), connect).await;
    assert_eq!(
        v311_return_code(ack.reason),
        2,
        "3.1.1: empty client id with clean session 0 must get return code 2 (identifier rejected): {ack:?}"
    );
    let after = c.expect_closed(TIMEOUT).await;
    assert!(
        after.is_empty(),
        "nothing may follow a refusing CONNACK: {after:?}"
    );
}

/// Connects with keep alive 1 s and then sends nothing. Returns the time until the broker
/// closed the connection and the packets it sent first.
async fn silent_client(
    node: &TestNode,
    version: ProtocolVersion,
    id: &str,
) -> (Duration, Vec<Packet>) {
    let mut connect = connect_packet(version, id);
    connect.keep_alive = 1;
    let (mut c, _) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
    let start = Instant::now();
    let packets = c.expect_closed(Duration::from_secs(6)).await;
    (start.elapsed(), packets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_keep_alive_timeout_sends_disconnect_0x8d_and_closes() {
    let node = TestNode::start().await;
    let (elapsed, packets) = silent_client(&node, V5, "keepalive-v5").await;
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed before the keep alive (1 s) ran out: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(3500),
        "keep alive 1 s must be enforced by ~1.5 s; closed after {elapsed:?}"
    );
    match packets.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode::KEEP_ALIVE_TIMEOUT, "{d:?}"),
        other => panic!("expected exactly DISCONNECT 0x8D before the close, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_keep_alive_timeout_closes_connection() {
    let node = TestNode::start().await;
    let (elapsed, packets) = silent_client(&node, V311, "keepalive-v311").await;
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed before the keep alive (1 s) ran out: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(3500),
        "keep alive 1 s must be enforced by ~1.5 s; closed after {elapsed:?}"
    );
    assert!(
        packets.is_empty(),
        "3.1.1 has no DISCONNECT from the server; got {packets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_satisfied_by_pings() {
    let node = TestNode::start().await;
    let mut connect = connect_packet(V5, "keepalive-pinger");
    connect.keep_alive = 1;
    let (mut c, _) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
    // Ping twice a second for 3 s (two full keep-alive timeouts): the connection must live.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    for _ in 0..6 {
        tick.tick().await;
        c.ping().await;
    }
    // Publishes count as activity too.
    c.subscribe("ka/t", QoS::AtMostOnce).await;
    c.publish("ka/t", "alive", QoS::AtMostOnce, false).await;
    assert_eq!(text(&c.expect_publish().await.payload), "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_server_keep_alive_caps_client_request() {
    let node = TestNode::start_with(|cfg| cfg.broker.max_keep_alive = 5).await;
    let mut connect = connect_packet(V5, "server-keepalive");
    connect.keep_alive = 60;
    let (_c, ack) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
    assert_eq!(
        ack.properties.server_keep_alive,
        Some(5),
        "keep alive 60 > max 5: {ack:?}"
    );

    let mut connect = connect_packet(V5, "server-keepalive-zero");
    connect.keep_alive = 0;
    let (_c, ack) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
    assert_eq!(
        ack.properties.server_keep_alive,
        Some(5),
        "keep alive 0 (none) is replaced by the max: {ack:?}"
    );

    let mut connect = connect_packet(V5, "server-keepalive-low");
    connect.keep_alive = 3;
    let (_c, ack) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
    assert!(
        matches!(ack.properties.server_keep_alive, None | Some(3)),
        "keep alive 3 within the max must be kept: {ack:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_server_keep_alive_is_enforced() {
    // The server's keep alive, not the client's 60 s, is the one enforced.
    let node = TestNode::start_with(|cfg| cfg.broker.max_keep_alive = 1).await;
    let mut connect = connect_packet(V5, "server-keepalive-enforced");
    connect.keep_alive = 60;
    let (mut c, ack) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
    assert_eq!(ack.properties.server_keep_alive, Some(1), "{ack:?}");
    let start = Instant::now();
    let packets = c.expect_closed(Duration::from_secs(6)).await;
    assert!(
        start.elapsed() <= Duration::from_millis(3500),
        "closed after {:?}",
        start.elapsed()
    );
    assert!(
        matches!(packets.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::KEEP_ALIVE_TIMEOUT),
        "expected DISCONNECT 0x8D, got {packets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_second_connect_is_protocol_error() {
    let node = TestNode::start().await;
    let mut c = RawClient::v5(node.mqtt_addr(), "double-connect-v5").await;
    c.send(Packet::Connect(connect_packet(V5, "double-connect-v5")))
        .await;
    let d = c.expect_disconnect().await;
    assert_eq!(
        d.reason,
        ReasonCode::PROTOCOL_ERROR,
        "second CONNECT: {d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_second_connect_closes_connection() {
    let node = TestNode::start().await;
    let mut c = RawClient::v311(node.mqtt_addr(), "double-connect-v311").await;
    c.send(Packet::Connect(connect_packet(V311, "double-connect-v311")))
        .await;
    let packets = c.expect_closed(TIMEOUT).await;
    assert!(
        packets.is_empty(),
        "3.1.1: the connection is closed, nothing sent: {packets:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_client_id_takeover_disconnects_first_with_0x8e() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut first = RawClient::v5(addr, "takeover-v5").await;
    first.subscribe("takeover/v5", QoS::AtLeastOnce).await;

    let (mut second, _) = RawClient::connect_ok(addr, connect_packet(V5, "takeover-v5")).await;
    let d = first.expect_disconnect().await;
    assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER, "{d:?}");

    // The new connection works and the old one gets nothing more.
    second.subscribe("takeover/v5", QoS::AtLeastOnce).await;
    second
        .publish("takeover/v5", "after", QoS::AtLeastOnce, false)
        .await;
    let p = second.expect_publish().await;
    assert_eq!(text(&p.payload), "after");
    second.ack(&p).await;
    assert!(matches!(
        first.recv(Duration::from_millis(10)).await,
        Recv::Closed
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_client_id_takeover_closes_first() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut first = RawClient::v311(addr, "takeover-v311").await;
    let mut second = RawClient::v311(addr, "takeover-v311").await;
    let packets = first.expect_closed(TIMEOUT).await;
    assert!(
        packets.is_empty(),
        "3.1.1: the old connection is just closed: {packets:?}"
    );
    second.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_across_versions_keeps_persistent_session() {
    // A 3.1.1 persistent session taken over by a v5 client with the same id resumes it.
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut old = connect_packet(V311, "takeover-mixed");
    old.clean_start = false;
    let (mut first, _) = RawClient::connect_ok(addr, old).await;
    first.subscribe("takeover/mixed", QoS::AtLeastOnce).await;

    let mut new = connect_packet(V5, "takeover-mixed");
    new.clean_start = false;
    new.properties.session_expiry_interval = Some(60);
    let (mut second, ack) = RawClient::connect_ok(addr, new).await;
    assert!(
        ack.session_present,
        "the live persistent session is taken over: {ack:?}"
    );
    first.expect_closed(TIMEOUT).await;

    let mut publisher = RawClient::v5(addr, "takeover-mixed-pub").await;
    publisher
        .publish("takeover/mixed", "kept", QoS::AtLeastOnce, false)
        .await;
    let p = second.expect_publish().await;
    assert_eq!(
        (p.topic.as_str(), text(&p.payload).as_str()),
        ("takeover/mixed", "kept")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_session_is_gone_once_the_broker_has_closed_the_connection() {
    // Once the broker has closed a clean session's connection (after DISCONNECT), nothing
    // of the session may be left to resume. Repeated, because a broker that closes the
    // socket before it has dropped the session only fails this now and then.
    let node = TestNode::start().await;
    let id = "clean-gone";
    for round in 0..30 {
        let (c, p, _) = v4_connect(&node, id, true).await;
        v4_disconnect(c, p).await; // returns once the broker has closed the connection
        let (c, p, ack) = v4_connect(&node, id, false).await;
        assert!(
            !ack.session_present,
            "round {round}: the clean session outlived its closed connection: {ack:?}"
        );
        v4_disconnect(c, p).await;
    }
}
