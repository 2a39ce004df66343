//! Delivery across a three-node cluster: QoS 0, 1 and 2 publishes reach subscribers on
//! other nodes (wildcards `+` and `#`) exactly once; a shared subscription with a member
//! on each node gets each message exactly once cluster-wide; a retained message set on one
//! node reaches a new subscriber on another, and clearing it on a third clears it
//! everywhere. Every message is counted.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tern_codec::QoS;
use tern_tests::clients::{text, RawClient};
use tern_tests::cluster::TestCluster;
use tern_tests::wait_until;

const FORM: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_reach_wildcard_subscribers_on_other_nodes_exactly_once() {
    let cluster = TestCluster::start(3, 3).await;
    assert!(cluster.wait_formed(3, FORM).await, "cluster formed");

    let mut plus = RawClient::v5(cluster.node(1).mqtt_addr, "plus-1").await;
    plus.subscribe("deliv/+/t", QoS::ExactlyOnce).await;
    let mut hash = RawClient::v311(cluster.node(2).mqtt_addr, "hash-2").await;
    hash.subscribe("deliv/#", QoS::ExactlyOnce).await;
    assert!(
        cluster.wait_status(0, SETTLE, |s| s.route_count >= 2).await,
        "node 0 knows the routes of nodes 1 and 2"
    );

    const PER_QOS: usize = 40;
    let mut publisher = RawClient::v5(cluster.node(0).mqtt_addr, "pub-0").await;
    for i in 0..PER_QOS {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let q = qos as u8;
            publisher
                .publish(&format!("deliv/q{q}/t"), format!("{q}-{i}"), qos, false)
                .await;
        }
    }
    publisher
        .publish("deliv/fence/t", "fence", QoS::AtLeastOnce, false)
        .await;
    for (name, sub) in [("node 1 (+)", &mut plus), ("node 2 (#)", &mut hash)] {
        let got = sub.recv_until_payload("fence").await;
        let mut per_qos: BTreeMap<u8, BTreeSet<String>> = BTreeMap::new();
        for p in &got {
            let payload = text(&p.payload);
            let q: u8 = payload[..1].parse().expect("qos prefix");
            assert_eq!(
                p.qos as u8, q,
                "{name}: delivered at the publish QoS: {p:?}"
            );
            assert_eq!(p.topic, format!("deliv/q{q}/t"));
            assert!(
                per_qos.entry(q).or_default().insert(payload.clone()),
                "{name}: {payload} delivered twice"
            );
        }
        assert_eq!(got.len(), 3 * PER_QOS, "{name}: every message, once");
        for q in 0..3u8 {
            assert_eq!(
                per_qos.get(&q).map_or(0, BTreeSet::len),
                PER_QOS,
                "{name}: QoS {q} count"
            );
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_each_message_once_cluster_wide() {
    let cluster = TestCluster::start(3, 3).await;
    assert!(cluster.wait_formed(3, FORM).await, "cluster formed");

    // One member per node. Each also subscribes (in the same SUBSCRIBE, after the shared
    // filter, so in the same or a later route entry) to a plain fence topic: once node 0
    // knows the fence routes of nodes 1 and 2, it knows their shared members too.
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = RawClient::v5(cluster.node(i).mqtt_addr, &format!("worker-{i}")).await;
        let ack = m
            .subscribe_many(&[
                ("$share/g/jobs", QoS::AtLeastOnce),
                ("jobs-fence", QoS::AtLeastOnce),
            ])
            .await;
        assert!(ack.reasons.iter().all(|r| !r.is_error()), "{ack:?}");
        members.push(m);
    }
    assert!(
        cluster.wait_status(0, SETTLE, |s| s.route_count >= 2).await,
        "node 0 knows the routes of nodes 1 and 2"
    );

    const N: usize = 300;
    let mut publisher = RawClient::v5(cluster.node(0).mqtt_addr, "jobs-pub").await;
    for i in 0..N {
        publisher
            .publish("jobs", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    // Every member's fence comes after what it was sent from the 300, on each path.
    publisher
        .publish("jobs-fence", "fence", QoS::AtLeastOnce, false)
        .await;
    let mut all = BTreeSet::new();
    let mut per_node = Vec::new();
    for (i, m) in members.iter_mut().enumerate() {
        let got = m.recv_until_payload("fence").await;
        for p in &got {
            assert_eq!(p.topic, "jobs");
            assert!(
                all.insert(text(&p.payload)),
                "message {} delivered twice (second time on node {i})",
                text(&p.payload)
            );
        }
        per_node.push(got.len());
    }
    eprintln!("shared group deliveries per node: {per_node:?}");
    assert_eq!(
        per_node.iter().sum::<usize>(),
        N,
        "each message exactly once"
    );
    assert_eq!(all.len(), N);
    // One member per node, equal weights: every node's member gets a share.
    assert!(
        per_node.iter().all(|&n| n > 0),
        "members on every node get messages: {per_node:?}"
    );
    cluster.shutdown().await;
}

/// Retained messages the broker on `node` holds, and the status count of its replica.
async fn retained_on(cluster: &TestCluster, node: usize) -> (usize, usize) {
    let n = cluster.node(node);
    (
        n.broker.retained_count(),
        n.cluster.status().await.retained_count,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_replicates_and_clears_everywhere() {
    let cluster = TestCluster::start(3, 3).await;
    assert!(cluster.wait_formed(3, FORM).await, "cluster formed");

    let mut setter = RawClient::v5(cluster.node(0).mqtt_addr, "ret-set").await;
    setter
        .publish("ret/a", "kept", QoS::AtLeastOnce, true)
        .await;
    for i in 0..3 {
        assert!(
            cluster
                .wait_status(i, SETTLE, |s| s.retained_count == 1)
                .await,
            "node {i} replicated the retained message"
        );
        let broker = cluster.node(i).broker.clone();
        assert!(
            wait_until(SETTLE, || broker.retained_count() == 1).await,
            "node {i}'s broker holds it"
        );
    }

    let mut reader = RawClient::v5(cluster.node(2).mqtt_addr, "ret-read-2").await;
    reader.subscribe("ret/#", QoS::AtLeastOnce).await;
    let p = reader.expect_publish().await;
    assert_eq!(
        (p.topic.as_str(), text(&p.payload).as_str()),
        ("ret/a", "kept")
    );
    assert!(p.retain, "delivered as retained: {p:?}");
    reader.ack(&p).await;
    // Exactly one retained message: a local fence published on node 2 comes next.
    let mut local = RawClient::v5(cluster.node(2).mqtt_addr, "ret-fence-2").await;
    local
        .publish("ret/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    assert!(reader.recv_until_payload("fence").await.is_empty());

    // Cleared on node 1: gone on every node.
    let mut clearer = RawClient::v5(cluster.node(1).mqtt_addr, "ret-clear").await;
    clearer.publish("ret/a", "", QoS::AtLeastOnce, true).await;
    for i in 0..3 {
        assert!(
            cluster
                .wait_status(i, SETTLE, |s| s.retained_count == 0)
                .await,
            "node {i} replicated the clear"
        );
        let broker = cluster.node(i).broker.clone();
        assert!(
            wait_until(SETTLE, || broker.retained_count() == 0).await,
            "node {i}'s broker dropped it: {:?}",
            retained_on(&cluster, i).await
        );
    }
    for i in 0..3 {
        let addr = cluster.node(i).mqtt_addr;
        let mut late = RawClient::v5(addr, &format!("ret-late-{i}")).await;
        late.subscribe("ret/#", QoS::AtLeastOnce).await;
        let mut fence = RawClient::v5(addr, &format!("ret-late-fence-{i}")).await;
        fence
            .publish("ret/fence", "fence", QoS::AtLeastOnce, false)
            .await;
        let before = late.recv_until_payload("fence").await;
        assert!(before.is_empty(), "node {i} still sends {before:?}");
    }
    cluster.shutdown().await;
}
