//! A node leaving gracefully: it leaves the membership, its routes are purged, and the
//! rest of the cluster keeps working without forwarding anything to it.

use std::time::Duration;

use tern_codec::QoS;
use tern_tests::clients::{text, RawClient};
use tern_tests::cluster::TestCluster;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_node_takes_its_routes_with_it() {
    let mut cluster = TestCluster::start(4, 3).await;
    assert!(cluster.wait_formed(3, WAIT).await);
    let mut staying = RawClient::v5(cluster.node(1).mqtt_addr, "stays").await;
    staying.subscribe("leave/#", QoS::AtLeastOnce).await;
    let mut leaving = RawClient::v5(cluster.node(3).mqtt_addr, "goes").await;
    leaving.subscribe("leave/#", QoS::AtLeastOnce).await;
    assert!(
        cluster.wait_status(0, WAIT, |s| s.route_count >= 2).await,
        "both routes known"
    );

    cluster
        .node(3)
        .cluster
        .leave()
        .await
        .expect("node 3 leaves");
    assert!(
        cluster
            .wait_status(0, WAIT, |s| s.members.len() == 3 && s.route_count == 1)
            .await,
        "node 3 is out of the membership and its route is gone"
    );
    let gone = cluster.stop(3).await;
    drop(gone);

    let mut publisher = RawClient::v5(cluster.node(0).mqtt_addr, "pub").await;
    for i in 0..50 {
        publisher
            .publish("leave/x", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    let got: Vec<String> = staying
        .recv_publishes(50)
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(got, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());
    let status = cluster.node(0).cluster.status().await;
    assert!(
        status
            .links
            .iter()
            .filter(|l| l.node_id == 3)
            .all(|l| l.backlog == 0),
        "nothing queued for the node that left"
    );
    cluster.shutdown().await;
}
