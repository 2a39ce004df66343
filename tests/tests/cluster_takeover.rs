//! Client takeover between nodes: a persistent session follows its client from one node to
//! another with its queued and in-flight messages (counted: nothing lost, no duplicate
//! beyond the DUP redeliveries), and a client connecting on another node while still
//! connected ends the old connection with DISCONNECT 0x8E.

use std::collections::BTreeSet;
use std::time::Duration;

use tern_codec::{ConnectProperties, ProtocolVersion, QoS, ReasonCode};
use tern_tests::clients::{connect_packet, text, RawClient};
use tern_tests::cluster::TestCluster;
use tern_tests::wait_until;

const FORM: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(10);

fn persistent(client_id: &str) -> tern_codec::Connect {
    let mut c = connect_packet(ProtocolVersion::V5, client_id);
    c.clean_start = false;
    c.properties = ConnectProperties {
        session_expiry_interval: Some(300),
        ..Default::default()
    };
    c
}

/// Waits until node `from`'s forwarding to `to` has nothing queued or unacknowledged.
async fn wait_forwarded(cluster: &TestCluster, from: usize, to: u64) -> bool {
    cluster
        .wait_status(from, SETTLE, |s| {
            s.links
                .iter()
                .filter(|l| l.node_id == to)
                .all(|l| l.backlog == 0 && l.unacked == 0)
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_moves_to_another_node_with_queued_and_inflight_messages() {
    let cluster = TestCluster::start(3, 3).await;
    assert!(cluster.wait_formed(3, FORM).await, "cluster formed");

    let (mut client, ack) =
        RawClient::connect_ok(cluster.node(0).mqtt_addr, persistent("roam")).await;
    assert!(!ack.session_present);
    client.subscribe("tk/#", QoS::AtLeastOnce).await;
    assert!(
        cluster.wait_status(2, SETTLE, |s| s.route_count >= 1).await,
        "node 2 knows node 0's route"
    );
    assert!(
        cluster.wait_status(1, SETTLE, |s| s.claim_count >= 1).await,
        "node 1 knows node 0 owns the client id"
    );

    // Published on node 2, so every message crosses nodes.
    let mut publisher = RawClient::v5(cluster.node(2).mqtt_addr, "tk-pub").await;
    for i in 0..10 {
        publisher
            .publish("tk/a", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    // 0..5 acknowledged; 5..10 received but left in flight.
    let mut first = Vec::new();
    for i in 0..10 {
        let p = client.expect_publish().await;
        assert_eq!(text(&p.payload), format!("{i}"));
        assert!(!p.dup);
        if i < 5 {
            client.ack(&p).await;
        }
        first.push(p);
    }
    // The PINGRESP comes after the broker has read the PUBACKs before it.
    client.ping().await;
    client.drop_connection();
    let broker0 = cluster.node(0).broker.clone();

    // Queued while offline: 10..20, all delivered into node 0's session.
    for i in 10..20 {
        publisher
            .publish("tk/a", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    assert!(
        wait_forwarded(&cluster, 2, 0).await,
        "node 2 forwarded (and node 0 acknowledged) the offline messages"
    );
    assert!(broker0.has_session("roam"));

    let (mut client, ack) =
        RawClient::connect_ok(cluster.node(1).mqtt_addr, persistent("roam")).await;
    assert!(ack.session_present, "session present on node 1: {ack:?}");
    let got = client.recv_publishes(15).await;
    let mut seen = BTreeSet::new();
    for p in &got {
        let n: u32 = text(&p.payload).parse().expect("number");
        assert!(seen.insert(n), "message {n} delivered twice after the move");
        assert_eq!(
            p.dup,
            n < 10,
            "DUP set on the in-flight redeliveries only: {p:?}"
        );
    }
    assert_eq!(seen, (5..20).collect::<BTreeSet<u32>>(), "nothing lost");
    // Nothing else is queued: a fence published on node 1 is the next message.
    let mut local = RawClient::v5(cluster.node(1).mqtt_addr, "tk-fence").await;
    local
        .publish("tk/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    let extra = client.recv_until_payload("fence").await;
    assert!(extra.is_empty(), "unexpected extra deliveries: {extra:?}");
    assert!(
        wait_until(SETTLE, || !broker0.has_session("roam")).await,
        "node 0 gave the session up"
    );
    assert!(cluster.node(1).broker.has_session("roam"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_on_another_node_disconnects_the_old_connection_with_0x8e() {
    let cluster = TestCluster::start(3, 3).await;
    assert!(cluster.wait_formed(3, FORM).await, "cluster formed");

    let mut old = RawClient::v5(cluster.node(0).mqtt_addr, "twice").await;
    assert!(
        cluster.wait_status(2, SETTLE, |s| s.claim_count >= 1).await,
        "node 2 knows node 0 has the client"
    );
    let mut new = RawClient::v5(cluster.node(2).mqtt_addr, "twice").await;
    let d = old.expect_disconnect().await;
    assert_eq!(d.reason, ReasonCode::SESSION_TAKEN_OVER, "{d:?}");
    let broker0 = cluster.node(0).broker.clone();
    assert!(
        wait_until(SETTLE, || !broker0.has_session("twice")).await,
        "node 0 has no session for the client any more"
    );
    // The new connection works.
    new.ping().await;
    assert!(cluster.node(2).broker.has_session("twice"));
    cluster.shutdown().await;
}
