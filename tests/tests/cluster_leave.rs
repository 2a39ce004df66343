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

/// `cluster.leave_on_shutdown`: SIGTERM makes a real `tern serve` leave the membership and
/// take its routes along, and exit cleanly; the other two keep a leader and deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_leave_on_shutdown_leaves_the_cluster() {
    use std::net::SocketAddr;
    use std::process::{Command, Stdio};
    use std::time::Instant;
    use tern_tests::external::free_port;
    use tern_tests::process::{cluster_status, clustered_serve_command, write_cluster_certs};
    use tern_tests::{unique_temp_dir, ChildGuard};

    async fn wait_status(
        http: SocketAddr,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(s) = cluster_status(http).await {
                if cond(&s) {
                    return s;
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}: {s}"
                );
            } else {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let root = unique_temp_dir("tern-leave-sigterm");
    let certs = root.join("certs");
    write_cluster_certs(&certs, 3);
    let quic: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().expect("addr") };
    let mqtt: Vec<SocketAddr> = (0..3).map(|_| addr(free_port())).collect();
    let http: Vec<SocketAddr> = (0..3).map(|_| addr(free_port())).collect();
    let mut guards: Vec<Option<ChildGuard>> = (0..3)
        .map(|id| {
            let mut cmd = clustered_serve_command(
                id,
                &quic,
                mqtt[id],
                http[id],
                &root.join(format!("d{id}")),
                &certs,
            );
            if id == 2 {
                cmd.args(["--set", "cluster.leave_on_shutdown=true"]);
            }
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Some(ChildGuard::spawn(&mut cmd).expect("spawn tern serve"))
        })
        .collect();
    for h in &http {
        wait_status(*h, "3 ready members, 3 voters", |s| {
            let members = s["members"].as_array().map_or(0, Vec::len);
            let voters = s["members"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["role"] == "voter").count());
            s["ready"] == true && members == 3 && voters == 3 && s["membership_changing"] == false
        })
        .await;
    }

    let mut staying = RawClient::v5(mqtt[1], "stays").await;
    staying.subscribe("bye/#", QoS::AtLeastOnce).await;
    let mut leaving = RawClient::v5(mqtt[2], "goes").await;
    leaving.subscribe("bye/#", QoS::AtLeastOnce).await;
    wait_status(http[0], "both routes", |s| s["route_count"] == 2).await;

    let mut node2 = guards[2].take().expect("node 2");
    let term = Command::new("kill")
        .args(["-TERM", &node2.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    let exit = loop {
        if let Some(exit) = node2.child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 still running 40 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "node 2 exited with {exit}");

    // Both survivors: two members, a leader, and only node 1's route left.
    for h in &http[..2] {
        wait_status(*h, "node 2 gone with its route", |s| {
            s["members"].as_array().map_or(0, Vec::len) == 2
                && s["leader"].is_u64()
                && s["route_count"] == 1
        })
        .await;
    }
    let mut publisher = RawClient::v5(mqtt[0], "pub").await;
    for i in 0..20 {
        publisher
            .publish("bye/x", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    let got: Vec<String> = staying
        .recv_publishes(20)
        .await
        .iter()
        .map(|p| text(&p.payload))
        .collect();
    assert_eq!(got, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    drop(guards);
    let _ = std::fs::remove_dir_all(&root);
}
