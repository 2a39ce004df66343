//! Authentication (password hashes, anonymous clients) and ACLs (per user, per client id,
//! `%u`/`%c` substitution, publish and subscribe checked separately).

use std::sync::OnceLock;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet as V4Packet,
};
use tern_broker::{AclAccess, AclDecision, AclRule, AuthConfig, UserEntry};
use tern_codec::{Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use tern_tests::clients::{
    connect_packet, publish_packet, text, v311_return_code, Pump, RawClient, Recv, TIMEOUT,
};
use tern_tests::{wait_until, TestNode};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

/// Password hashes are computed once per test binary (argon2 is deliberately slow).
fn hashes() -> &'static (String, String) {
    static HASHES: OnceLock<(String, String)> = OnceLock::new();
    HASHES.get_or_init(|| {
        (
            tern_broker::auth::hash_password("alice-secret"),
            tern_broker::auth::hash_password("bob-secret"),
        )
    })
}

fn rule(
    username: Option<&str>,
    client_id: Option<&str>,
    topic: &str,
    access: AclAccess,
    decision: AclDecision,
) -> AclRule {
    AclRule {
        username: username.map(String::from),
        client_id: client_id.map(String::from),
        topic: topic.to_string(),
        access,
        decision,
    }
}

/// Users alice and bob; anonymous refused; first matching rule decides, default deny.
fn auth_config() -> AuthConfig {
    use AclAccess::{All, Publish, Subscribe};
    use AclDecision::Allow;
    let (alice, bob) = hashes().clone();
    AuthConfig {
        allow_anonymous: false,
        users: vec![
            UserEntry {
                username: "alice".into(),
                password_hash: alice,
            },
            UserEntry {
                username: "bob".into(),
                password_hash: bob,
            },
        ],
        acl: vec![
            rule(None, None, "users/%u/#", All, Allow),
            rule(None, None, "public/#", Subscribe, Allow),
            rule(Some("alice"), None, "public/#", Publish, Allow),
            rule(None, None, "devices/%c/out", Publish, Allow),
            rule(None, None, "devices/+/out", Subscribe, Allow),
            rule(None, Some("admin-client"), "#", All, Allow),
            rule(None, None, "inbox/#", Publish, Allow),
        ],
        acl_default: AclDecision::Deny,
    }
}

async fn secure_node() -> TestNode {
    let auth = auth_config();
    TestNode::start_with(move |cfg| cfg.auth = auth).await
}

fn login(version: ProtocolVersion, client_id: &str, user: &str, password: &str) -> Connect {
    let mut c = connect_packet(version, client_id);
    c.username = Some(user.to_string());
    c.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    c
}

async fn alice(node: &TestNode, version: ProtocolVersion, client_id: &str) -> RawClient {
    RawClient::connect_ok(
        node.mqtt_addr(),
        login(version, client_id, "alice", "alice-secret"),
    )
    .await
    .0
}

async fn bob(node: &TestNode, version: ProtocolVersion, client_id: &str) -> RawClient {
    RawClient::connect_ok(
        node.mqtt_addr(),
        login(version, client_id, "bob", "bob-secret"),
    )
    .await
    .0
}

// ---- authentication ------------------------------------------------------------------

/// The outcome of a rumqttc 3.1.1 connection attempt: CONNACK session flag or the error.
async fn v4_attempt(
    node: &TestNode,
    id: &str,
    credentials: Option<(&str, &str)>,
) -> Result<(), ConnectionError> {
    let mut opts = MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    if let Some((u, p)) = credentials {
        opts.set_credentials(u, p);
    }
    let (_client, eventloop) = AsyncClient::new(opts, 10);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    match pump.next(TIMEOUT).await {
        Some(Ok(Event::Incoming(V4Packet::ConnAck(_)))) => Ok(()),
        Some(Ok(other)) => panic!("expected CONNACK, got {other:?}"),
        Some(Err(e)) => Err(e),
        None => panic!("no answer to CONNECT"),
    }
}

async fn v5_attempt(
    node: &TestNode,
    id: &str,
    credentials: Option<(&str, &str)>,
) -> Result<(), rumqttc::v5::ConnectionError> {
    let mut opts = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", node.mqtt_port());
    if let Some((u, p)) = credentials {
        opts.set_credentials(u, p);
    }
    let (_client, eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
    let mut pump = Pump::spawn(eventloop, |mut el: rumqttc::v5::EventLoop| async move {
        let r = el.poll().await;
        (el, r)
    });
    match pump.next(TIMEOUT).await {
        Some(Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_)))) => {
            Ok(())
        }
        Some(Ok(other)) => panic!("expected CONNACK, got {other:?}"),
        Some(Err(e)) => Err(e),
        None => panic!("no answer to CONNECT"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_credentials_are_accepted() {
    let node = secure_node().await;
    v4_attempt(&node, "auth-ok-v4", Some(("alice", "alice-secret")))
        .await
        .expect("3.1.1 alice accepted");
    v5_attempt(&node, "auth-ok-v5", Some(("bob", "bob-secret")))
        .await
        .expect("v5 bob accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_bad_credentials_get_return_code_4() {
    let node = secure_node().await;
    for (id, creds) in [
        ("bad-pw-v4", ("alice", "wrong")),
        ("bad-user-v4", ("mallory", "alice-secret")),
        ("swap-v4", ("alice", "bob-secret")),
    ] {
        match v4_attempt(&node, id, Some(creds)).await {
            Err(ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword)) => {}
            other => panic!(
                "{creds:?}: expected return code 4 (bad user name or password), got {other:?}"
            ),
        }
    }
    // The raw view: return code 4 and the connection closed.
    let (mut c, ack) =
        RawClient::connect_with(node.mqtt_addr(), login(V311, "bad-pw-raw", "alice", "nope")).await;
    assert_eq!(v311_return_code(ack.reason), 4, "{ack:?}");
    assert!(!ack.session_present);
    assert!(c.expect_closed(TIMEOUT).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_bad_credentials_get_0x86() {
    let node = secure_node().await;
    match v5_attempt(&node, "bad-pw-v5", Some(("alice", "wrong"))).await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::BadUserNamePassword,
        )) => {}
        other => panic!("expected 0x86, got {other:?}"),
    }
    let (mut c, ack) =
        RawClient::connect_with(node.mqtt_addr(), login(V5, "bad-user-v5", "mallory", "x")).await;
    assert_eq!(ack.reason, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "{ack:?}");
    assert!(
        ack.properties.reason_string.is_some(),
        "an error CONNACK carries a reason string: {ack:?}"
    );
    assert!(c.expect_closed(TIMEOUT).await.is_empty());

    // A user name with no password at all is refused the same way.
    let mut no_pw = connect_packet(V5, "no-pw-v5");
    no_pw.username = Some("alice".into());
    let (_c, ack) = RawClient::connect_with(node.mqtt_addr(), no_pw).await;
    assert_eq!(ack.reason, ReasonCode::BAD_USER_NAME_OR_PASSWORD, "{ack:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_anonymous_refused_with_return_code_5() {
    let node = secure_node().await;
    match v4_attempt(&node, "anon-v4", None).await {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)) => {}
        other => panic!("expected return code 5 (not authorized), got {other:?}"),
    }
    let (mut c, ack) =
        RawClient::connect_with(node.mqtt_addr(), connect_packet(V311, "anon-raw")).await;
    assert_eq!(v311_return_code(ack.reason), 5, "{ack:?}");
    assert!(c.expect_closed(TIMEOUT).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_anonymous_refused_with_0x87() {
    let node = secure_node().await;
    match v5_attempt(&node, "anon-v5", None).await {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(
            rumqttc::v5::mqttbytes::v5::ConnectReturnCode::NotAuthorized,
        )) => {}
        other => panic!("expected 0x87, got {other:?}"),
    }
    let (mut c, ack) =
        RawClient::connect_with(node.mqtt_addr(), connect_packet(V5, "anon-raw-v5")).await;
    assert_eq!(ack.reason, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
    assert!(c.expect_closed(TIMEOUT).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_allowed_by_default() {
    let node = TestNode::start().await;
    v4_attempt(&node, "anon-default-v4", None)
        .await
        .expect("default config accepts anonymous 3.1.1");
    v5_attempt(&node, "anon-default-v5", None)
        .await
        .expect("default config accepts anonymous v5");
}

// ---- ACL: subscribe -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_denied_subscribe_gets_0x80() {
    let node = secure_node().await;
    let mut b = bob(&node, V311, "acl-sub-v311").await;
    let ack = b
        .subscribe_many(&[
            ("users/alice/#", QoS::AtLeastOnce), // someone else's %u
            ("users/bob/#", QoS::AtLeastOnce),   // own %u
            ("public/#", QoS::AtMostOnce),       // subscribe-only rule
            ("inbox/#", QoS::AtLeastOnce),       // publish-only rule
            ("#", QoS::AtLeastOnce),             // only admin-client
        ])
        .await;
    assert_eq!(
        ack.reasons,
        vec![
            ReasonCode(0x80),
            ReasonCode(1),
            ReasonCode(0),
            ReasonCode(0x80),
            ReasonCode(0x80)
        ],
        "{ack:?}"
    );
    b.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_denied_subscribe_gets_failure_reason() {
    let node = secure_node().await;
    let mut b = bob(&node, V5, "acl-sub-v5").await;
    let ack = b
        .subscribe_many(&[
            ("users/alice/#", QoS::AtLeastOnce),
            ("users/bob/+", QoS::ExactlyOnce),
        ])
        .await;
    assert_eq!(ack.reasons.len(), 2);
    // The feature list says 0x80; MQTT 5 defines 0x87 Not authorized for this. Either is a
    // failure; the exact code Tern sends is printed for the report.
    let denied = ack.reasons[0];
    assert!(
        denied == ReasonCode::NOT_AUTHORIZED || denied == ReasonCode::UNSPECIFIED_ERROR,
        "denied SUBSCRIBE must fail with 0x87 (or 0x80): {ack:?}"
    );
    eprintln!("v5 denied SUBSCRIBE reason code: {:#04x}", denied.0);
    assert_eq!(ack.reasons[1], ReasonCode::GRANTED_QOS_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_rule_per_client_id() {
    let node = secure_node().await;
    let mut admin = bob(&node, V5, "admin-client").await;
    let ack = admin
        .subscribe_many(&[("#", QoS::AtLeastOnce), ("inbox/#", QoS::AtLeastOnce)])
        .await;
    assert_eq!(
        ack.reasons,
        vec![ReasonCode(1), ReasonCode(1)],
        "admin-client may subscribe anywhere: {ack:?}"
    );
    let mut other = bob(&node, V5, "not-admin").await;
    let ack = other.subscribe_many(&[("inbox/#", QoS::AtLeastOnce)]).await;
    assert!(
        ack.reasons[0].is_error(),
        "the same user under another client id may not: {ack:?}"
    );

    // Publish-only topic: bob may write to inbox/, and admin-client receives it.
    assert_eq!(
        other
            .publish("inbox/mail", "letter", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::SUCCESS
    );
    let p = admin.expect_publish().await;
    assert_eq!(
        (p.topic.as_str(), text(&p.payload).as_str()),
        ("inbox/mail", "letter")
    );
}

// ---- ACL: publish ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_denied_publish_is_dropped_and_acked_with_0x87() {
    let node = secure_node().await;
    let mut a = alice(&node, V5, "acl-pub-alice").await;
    a.subscribe("public/#", QoS::AtLeastOnce).await;
    let mut b = bob(&node, V5, "acl-pub-bob").await;

    // bob may subscribe to public/# but not publish there.
    assert_eq!(
        b.publish("public/news", "from-bob-q1", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::NOT_AUTHORIZED
    );
    assert_eq!(
        b.publish("public/news", "from-bob-q2", QoS::ExactlyOnce, false)
            .await,
        ReasonCode::NOT_AUTHORIZED
    );
    b.publish("public/news", "from-bob-q0", QoS::AtMostOnce, false)
        .await;
    b.ping().await; // the QoS 0 one was processed (and the connection survives)

    // alice may publish there; her message is the fence.
    assert_eq!(
        a.publish("public/news", "fence", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::SUCCESS
    );
    let got = a.recv_until_payload("fence").await;
    assert!(
        got.is_empty(),
        "denied publishes must not be delivered: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_denied_publish_is_dropped() {
    let node = secure_node().await;
    let mut a = alice(&node, V311, "acl-pub311-alice").await;
    a.subscribe("public/#", QoS::AtLeastOnce).await;
    let mut b = bob(&node, V311, "acl-pub311-bob").await;
    // 3.1.1 cannot report the refusal: the broker acknowledges normally or closes.
    b.send(Packet::Publish({
        let mut p = publish_packet("public/news", "from-bob", QoS::AtLeastOnce, false);
        p.packet_id = 5;
        p
    }))
    .await;
    match b.recv(TIMEOUT).await {
        Recv::Packet(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, 5),
        Recv::Closed => {}
        other => panic!("expected PUBACK or a close, got {other:?}"),
    }
    assert_eq!(
        a.publish("public/news", "fence", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::SUCCESS
    );
    let got = a.recv_until_payload("fence").await;
    assert!(
        got.is_empty(),
        "a denied publish must not be delivered: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_substitutes_client_id_and_user_name() {
    let node = secure_node().await;
    let mut watcher = bob(&node, V5, "acl-subst-watch").await;
    watcher.subscribe("devices/+/out", QoS::AtLeastOnce).await;
    watcher.subscribe("users/bob/#", QoS::AtLeastOnce).await;

    let mut sensor = bob(&node, V5, "sensor-1").await;
    assert_eq!(
        sensor
            .publish("devices/sensor-1/out", "own", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        sensor
            .publish("devices/sensor-2/out", "spoofed", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::NOT_AUTHORIZED,
        "%c: only the client's own device topic"
    );
    assert_eq!(
        sensor
            .publish("users/bob/notes", "mine", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::SUCCESS
    );
    let mut a = alice(&node, V5, "acl-subst-alice").await;
    assert_eq!(
        a.publish("users/bob/notes", "forged", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::NOT_AUTHORIZED,
        "%u: alice may not write under users/bob/"
    );
    assert_eq!(
        a.publish("users/alice/notes", "hers", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::SUCCESS
    );

    sensor
        .publish("devices/sensor-1/out", "fence", QoS::AtLeastOnce, false)
        .await;
    let got: Vec<(String, String)> = watcher
        .recv_until_payload("fence")
        .await
        .iter()
        .map(|p| (p.topic.clone(), text(&p.payload)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("devices/sensor-1/out".to_string(), "own".to_string()),
            ("users/bob/notes".to_string(), "mine".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_allows_nothing_by_default_deny() {
    let node = secure_node().await;
    let mut b = bob(&node, V5, "acl-default").await;
    let ack = b.subscribe_many(&[("random/topic", QoS::AtMostOnce)]).await;
    assert!(
        ack.reasons[0].is_error(),
        "no rule matches: default deny: {ack:?}"
    );
    assert_eq!(
        b.publish("random/topic", "x", QoS::AtLeastOnce, false)
            .await,
        ReasonCode::NOT_AUTHORIZED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_applies_to_will_messages() {
    // A will is published with its client's rights: bob's will on public/ (publish denied to
    // bob) must not be delivered; on users/bob/ it is.
    let node = secure_node().await;
    let mut watcher = alice(&node, V5, "acl-will-watch").await;
    watcher.subscribe("public/#", QoS::AtLeastOnce).await;
    let mut bob_watch = bob(&node, V5, "acl-will-bob-watch").await;
    bob_watch.subscribe("users/bob/#", QoS::AtLeastOnce).await;

    let mut denied = login(V5, "acl-will-denied", "bob", "bob-secret");
    denied.will = Some(tern_tests::clients::will(
        "public/will",
        "denied-will",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, _) = RawClient::connect_ok(node.mqtt_addr(), denied).await;
    c.drop_connection();
    // Its session (expiry 0) ends with the connection, and the will decision with it.
    let broker = node.running().broker().clone();
    assert!(
        wait_until(TIMEOUT, || !broker.has_session("acl-will-denied")).await,
        "session not ended"
    );
    let mut allowed = login(V5, "acl-will-allowed", "bob", "bob-secret");
    allowed.will = Some(tern_tests::clients::will(
        "users/bob/will",
        "allowed-will",
        QoS::AtLeastOnce,
        false,
    ));
    let (c, _) = RawClient::connect_ok(node.mqtt_addr(), allowed).await;
    c.drop_connection();

    let p = bob_watch.expect_publish().await;
    assert_eq!(text(&p.payload), "allowed-will");
    // The denied will was handled first; by now it would have arrived.
    watcher
        .publish("public/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    let got = watcher.recv_until_payload("fence").await;
    assert!(
        got.is_empty(),
        "a will the client may not publish is not delivered: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_denied_puback_reason_string_follows_request_problem_information() {
    let node = secure_node().await;
    for (problem_info, want_reason_string) in [(None, true), (Some(1), true), (Some(0), false)] {
        let id = format!("acl-problem-{problem_info:?}");
        let mut connect = login(V5, &id, "bob", "bob-secret");
        connect.properties.request_problem_information = problem_info;
        let (mut b, _) = RawClient::connect_ok(node.mqtt_addr(), connect).await;
        let mut p = publish_packet("public/news", "denied", QoS::AtLeastOnce, false);
        p.packet_id = 9;
        b.send(Packet::Publish(p)).await;
        match b.expect("PUBACK").await {
            Packet::PubAck(ack) => {
                assert_eq!(ack.reason, ReasonCode::NOT_AUTHORIZED, "{ack:?}");
                assert_eq!(
                    ack.properties.reason_string.is_some(),
                    want_reason_string,
                    "Request Problem Information {problem_info:?}: {ack:?}"
                );
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}
