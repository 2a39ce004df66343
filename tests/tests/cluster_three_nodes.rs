//! Three nodes on loopback: the cluster forms (one bootstraps, two join and become
//! voters), and publishes on one node reach subscribers on the others, counted.

use std::collections::BTreeSet;
use std::time::Duration;

use tern_codec::QoS;
use tern_tests::clients::{text, RawClient};
use tern_tests::cluster::TestCluster;

const FORM: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_and_forward_qos1_exactly_once() {
    let cluster = TestCluster::start(3, 3).await;
    assert!(
        cluster.wait_formed(3, FORM).await,
        "3 members, 3 voters, all ready"
    );

    // Subscribers on nodes 1 and 2 (one with a wildcard); routes reach node 0.
    let mut sub1 = RawClient::v5(cluster.node(1).mqtt_addr, "sub1").await;
    sub1.subscribe("sensors/+/temp", QoS::AtLeastOnce).await;
    let mut sub2 = RawClient::v311(cluster.node(2).mqtt_addr, "sub2").await;
    sub2.subscribe("sensors/#", QoS::AtLeastOnce).await;
    assert!(
        cluster.wait_status(0, FORM, |s| s.route_count >= 2).await,
        "node 0 learns both routes through Raft"
    );

    let mut publisher = RawClient::v5(cluster.node(0).mqtt_addr, "pub0").await;
    for i in 0..200 {
        publisher
            .publish(
                &format!("sensors/{}/temp", i % 7),
                format!("{i}"),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    for sub in [&mut sub1, &mut sub2] {
        let got = sub.recv_publishes(200).await;
        let unique: BTreeSet<String> = got.iter().map(|p| text(&p.payload)).collect();
        assert_eq!(unique.len(), 200, "every message once");
        let order: Vec<u32> = got
            .iter()
            .map(|p| text(&p.payload).parse().expect("number"))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "in publish order");
    }
    // Nothing more arrives: a fence published after them is the next thing each sees.
    publisher
        .publish("sensors/fence/temp", "fence", QoS::AtLeastOnce, false)
        .await;
    assert!(
        sub1.recv_until_payload("fence").await.is_empty(),
        "no duplicates on node 1"
    );
    assert!(
        sub2.recv_until_payload("fence").await.is_empty(),
        "no duplicates on node 2"
    );
    cluster.shutdown().await;
}

/// Members that advertise a host name (as StatefulSet pods do: `tern-1.tern-headless:7946`),
/// here `localhost:PORT`: two members that are not the leader must resolve and dial each
/// other to forward, since no Raft traffic links them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_advertising_host_names_forward_between_followers() {
    let cluster = TestCluster::start_with(3, 3, |_, c| {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free UDP port")
            .port();
        c.listen = format!("127.0.0.1:{port}").parse().expect("addr");
        c.advertise = format!("localhost:{port}");
    })
    .await;
    assert!(cluster.wait_formed(3, FORM).await, "formed");
    let leader = cluster
        .node(0)
        .cluster
        .status()
        .await
        .leader
        .expect("leader");
    let followers: Vec<usize> = (0..3).filter(|&i| i as u64 != leader).collect();
    let (sub_node, pub_node) = (followers[0], followers[1]);
    let mut sub = RawClient::v5(cluster.node(sub_node).mqtt_addr, "names-sub").await;
    sub.subscribe("names/#", QoS::AtLeastOnce).await;
    assert!(
        cluster
            .wait_status(pub_node, FORM, |s| s.route_count == 1)
            .await,
        "the publisher's node knows the route"
    );
    let mut publisher = RawClient::v5(cluster.node(pub_node).mqtt_addr, "names-pub").await;
    for i in 0..50 {
        publisher
            .publish("names/x", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    let got: Vec<String> = sub
        .recv_publishes(50)
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(got, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());
    cluster.shutdown().await;
}
