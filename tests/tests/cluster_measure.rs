//! Measurements of the cluster, not checks: they print numbers and assert only that the
//! work happened. Run them on a quiet machine:
//! `cargo test --release -p tern-tests --test cluster_measure -- --ignored --nocapture`

use std::time::{Duration, Instant};

use tern_codec::{Packet, QoS, Subscribe, SubscribeFilter, SubscriptionOptions};
use tern_tests::clients::RawClient;
use tern_tests::cluster::TestCluster;

const FILTERS: usize = 20_000;
const PER_PACKET: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
async fn route_changes_replicated_per_second() {
    let cluster = TestCluster::start(3, 3).await;
    assert!(cluster.wait_formed(3, Duration::from_secs(30)).await);
    let mut client = RawClient::v5(cluster.node(1).mqtt_addr, "router").await;
    let started = Instant::now();
    for chunk in 0..FILTERS / PER_PACKET {
        let filters = (0..PER_PACKET)
            .map(|i| SubscribeFilter {
                filter: format!("routes/{chunk}/{i}/+"),
                options: SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    ..Default::default()
                },
            })
            .collect();
        let packet_id = client.next_id();
        client
            .send(Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties: Default::default(),
            }))
            .await;
        client.expect("SUBACK").await;
    }
    let acked = started.elapsed();
    assert!(
        cluster
            .wait_status(0, Duration::from_secs(120), |s| s.route_count >= FILTERS)
            .await
    );
    let replicated = started.elapsed();
    eprintln!(
        "route adds: {FILTERS} subscribes acknowledged in {acked:?}, replicated to another node in {replicated:?}: {:.0} route changes/s",
        FILTERS as f64 / replicated.as_secs_f64()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
async fn leader_failover_time() {
    let mut cluster = TestCluster::start(3, 3).await;
    assert!(cluster.wait_formed(3, Duration::from_secs(30)).await);
    let leader = cluster
        .node(0)
        .cluster
        .status()
        .await
        .leader
        .expect("a leader");
    let index = usize::try_from(leader).expect("node ids are indexes here");
    let killed_at = Instant::now();
    cluster.crash(index); // no shutdown: its links go silent as after kill -9
    let survivor = (index + 1) % 3;
    assert!(
        cluster
            .wait_status(survivor, Duration::from_secs(30), |s| s
                .leader
                .is_some_and(|l| l != leader))
            .await
    );
    let elected = killed_at.elapsed();
    eprintln!("leader {leader} crashed: a new leader was elected after {elected:?} (election timeout 600-1200 ms in this test's config)");
    cluster.shutdown().await;
}
