//! A node forwards the messages one read of a client's socket brings, on one topic, as a
//! run (`Cluster::forward_run`: one route lookup and one queueing per peer). These tests
//! send many PUBLISHes in one write on node 0 and check, on the other nodes, that a run
//! changes nothing a subscriber can see: every message once, in send order, for a plain
//! subscriber and for a shared group's member, across topic changes and QoS levels.

use bytes::BytesMut;
use std::time::Duration;
use tern_broker::DropReason;
use tern_codec::{Packet, ProtocolVersion, Publish, QoS};
use tern_tests::clients::{publish_packet, topics_and_texts, RawClient};
use tern_tests::cluster::TestCluster;
use tern_tests::wait_until;

const FORM: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_cross_nodes_whole_and_in_order() {
    let cluster = TestCluster::start(3, 3).await;
    assert!(cluster.wait_formed(3, FORM).await, "cluster formed");

    // Node 1: a wildcard subscriber to everything. Node 2: a plain subscriber to one topic,
    // and the only member of a shared group on it (so that topic takes the shared path
    // on node 0 and the other does not). Each subscribes last to its own fence topic:
    // once node 0 has the fence routes, it has the ones before them.
    let mut all = RawClient::v5(cluster.node(1).mqtt_addr, "runs-all").await;
    all.subscribe_many(&[("runs/#", QoS::AtLeastOnce), ("fence-1", QoS::AtMostOnce)])
        .await;
    let mut only_a = RawClient::v311(cluster.node(2).mqtt_addr, "runs-only-a").await;
    only_a
        .subscribe_many(&[("runs/a", QoS::AtLeastOnce), ("fence-2", QoS::AtMostOnce)])
        .await;
    let mut member = RawClient::v5(cluster.node(2).mqtt_addr, "runs-member").await;
    let ack = member
        .subscribe_many(&[
            ("$share/g/runs/a", QoS::AtLeastOnce),
            ("fence-3", QoS::AtMostOnce),
        ])
        .await;
    assert!(ack.reasons.iter().all(|r| !r.is_error()), "{ack:?}");
    assert!(
        cluster
            .wait_status(0, SETTLE, |s| s.route_count >= 5
                && s.shared_route_count >= 1)
            .await,
        "node 0 knows the routes of nodes 1 and 2"
    );

    // Runs of different lengths on two topics and both QoS levels a run can mix, written
    // at once so that they arrive in as few reads as the socket allows.
    let mut publisher = RawClient::v311(cluster.node(0).mqtt_addr, "runs-publisher").await;
    let plan = [
        ("runs/a", 40, QoS::AtLeastOnce),
        ("runs/b", 25, QoS::AtLeastOnce),
        ("runs/a", 1, QoS::AtMostOnce),
        ("runs/a", 30, QoS::AtMostOnce),
        ("runs/b", 3, QoS::AtMostOnce),
        ("runs/a", 64, QoS::AtLeastOnce),
    ];
    let mut expected = Vec::new();
    let mut buf = BytesMut::new();
    let mut acks_due = 0;
    for (topic, n, qos) in plan {
        for _ in 0..n {
            let payload = format!("m{}", expected.len());
            let mut p: Publish = publish_packet(topic, &payload, qos, false);
            if qos != QoS::AtMostOnce {
                p.packet_id = publisher.next_id();
                acks_due += 1;
            }
            tern_codec::encode(&Packet::Publish(p), ProtocolVersion::V311, &mut buf)
                .expect("encodable test packet");
            expected.push((topic.to_string(), payload));
        }
    }
    publisher.send_bytes(&buf).await.expect("write the runs");
    publisher.expect_pubacks(acks_due).await;

    let got = all.recv_publishes(expected.len()).await;
    assert_eq!(
        topics_and_texts(&got),
        expected,
        "node 1's wildcard subscriber: send order"
    );
    let expected_a: Vec<_> = expected
        .iter()
        .filter(|(t, _)| t == "runs/a")
        .cloned()
        .collect();
    let got = only_a.recv_publishes(expected_a.len()).await;
    assert_eq!(
        topics_and_texts(&got),
        expected_a,
        "node 2's plain subscriber"
    );
    let got = member.recv_publishes(expected_a.len()).await;
    assert_eq!(
        topics_and_texts(&got),
        expected_a,
        "node 2's shared group member"
    );

    // Nothing more arrives: a fence published after them is the next thing each sees.
    let fences = [
        ("fence-1", &mut all),
        ("fence-2", &mut only_a),
        ("fence-3", &mut member),
    ];
    for (fence, client) in fences {
        publisher
            .publish(fence, "fence", QoS::AtMostOnce, false)
            .await;
        assert!(
            client.recv_until_payload("fence").await.is_empty(),
            "{fence}: no duplicates"
        );
    }

    // Every message had subscribers, only on other nodes: node 0 dropped none of them. One
    // to a topic nobody subscribes to is a drop, counted once, by the node it was
    // published on.
    let no_subscriber = |node: usize| {
        cluster
            .node(node)
            .broker
            .stats
            .dropped(DropReason::NoSubscriber)
    };
    assert_eq!(no_subscriber(0), 0, "forwarded messages are not drops");
    publisher
        .publish("nobody/listens", "lost", QoS::AtLeastOnce, false)
        .await;
    assert!(
        wait_until(SETTLE, || no_subscriber(0) == 1).await,
        "a message nobody subscribed to is counted"
    );
    assert_eq!(
        no_subscriber(1) + no_subscriber(2),
        0,
        "and only by its node"
    );
    cluster.shutdown().await;
}
