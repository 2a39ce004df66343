//! Membership: a node restarted on its data directory catches up with what changed while
//! it was down; a crashed node removed from another node leaves no routes behind (nothing
//! is forwarded into the void); five nodes keep three voters in distinct regions, and
//! losing one voter (the leader) leaves a working cluster. Every message is counted.

use std::collections::BTreeSet;
use std::time::Duration;

use tern_codec::QoS;
use tern_tests::clients::{text, RawClient};
use tern_tests::cluster::{wait_udp_port_free, TestCluster};
use tern_tests::wait_until;

const FORM: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_catches_up_on_routes_and_retained() {
    let mut cluster = TestCluster::start(3, 3).await;
    assert!(cluster.wait_formed(3, FORM).await, "cluster formed");
    let mut sub0 = RawClient::v5(cluster.node(0).mqtt_addr, "rs-sub0").await;
    sub0.subscribe("m/#", QoS::AtLeastOnce).await;
    assert!(
        cluster.wait_all(SETTLE, |s| s.route_count == 1).await,
        "every node knows node 0's route"
    );

    let stopped = cluster.stop(2).await;
    // While node 2 is down (two voters of three still commit): a new route, a route
    // gone, a retained message.
    let mut sub1 = RawClient::v5(cluster.node(1).mqtt_addr, "rs-sub1").await;
    sub1.subscribe("n/#", QoS::AtLeastOnce).await;
    let mut gone = RawClient::v5(cluster.node(1).mqtt_addr, "rs-gone").await;
    gone.subscribe("gone/#", QoS::AtLeastOnce).await;
    gone.disconnect().await;
    let mut setter = RawClient::v5(cluster.node(0).mqtt_addr, "rs-ret").await;
    setter.publish("r/x", "v1", QoS::AtLeastOnce, true).await;
    assert!(
        cluster
            .wait_all(SETTLE, |s| s.route_count == 2 && s.retained_count == 1)
            .await,
        "nodes 0 and 1 applied the changes"
    );

    cluster.restart(stopped).await;
    assert!(
        cluster
            .wait_status(2, FORM, |s| s.ready
                && s.route_count == 2
                && s.retained_count == 1
                && s.members.len() == 3)
            .await,
        "node 2 is ready again and current: {:?}",
        cluster.node(2).cluster.status().await
    );
    assert!(cluster.wait_formed(3, FORM).await, "three voters again");
    let broker2 = cluster.node(2).broker.clone();
    assert!(
        wait_until(SETTLE, || broker2.retained_count() == 1).await,
        "node 2's broker holds the retained message"
    );

    // Routes on node 2 are current: its publishes reach nodes 0 and 1, counted.
    let mut pub2 = RawClient::v5(cluster.node(2).mqtt_addr, "rs-pub2").await;
    for i in 0..20 {
        pub2.publish(&format!("n/{i}"), format!("n{i}"), QoS::AtLeastOnce, false)
            .await;
        pub2.publish(&format!("m/{i}"), format!("m{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    pub2.publish("n/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    pub2.publish("m/fence", "fence", QoS::AtLeastOnce, false)
        .await;
    for (prefix, sub) in [("n", &mut sub1), ("m", &mut sub0)] {
        let got = sub.recv_until_payload("fence").await;
        let names: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
        let want: Vec<String> = (0..20).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(names, want, "exactly once, in order");
    }
    // A new subscriber on node 2 gets the retained message set while it was down.
    let mut late = RawClient::v5(cluster.node(2).mqtt_addr, "rs-late").await;
    late.subscribe("r/x", QoS::AtLeastOnce).await;
    let p = late.expect_publish().await;
    assert_eq!((text(&p.payload).as_str(), p.retain), ("v1", true));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_crashed_node_leaves_no_routes_behind() {
    let mut cluster = TestCluster::start(3, 3).await;
    assert!(cluster.wait_formed(3, FORM).await, "cluster formed");
    let mut doomed = RawClient::v5(cluster.node(2).mqtt_addr, "cr-sub2").await;
    doomed.subscribe("c/#", QoS::AtLeastOnce).await;
    let mut local = RawClient::v5(cluster.node(0).mqtt_addr, "cr-sub0").await;
    local.subscribe("c/#", QoS::AtLeastOnce).await;
    assert!(
        cluster.wait_all(SETTLE, |s| s.route_count == 2).await,
        "every node knows both routes"
    );
    let mut publisher = RawClient::v5(cluster.node(0).mqtt_addr, "cr-pub").await;
    publisher
        .publish("c/x", "before", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(text(&doomed.recv_publishes(1).await[0].payload), "before");
    assert_eq!(text(&local.recv_publishes(1).await[0].payload), "before");

    let port2 = cluster.node(2).cluster.cluster_addr();
    cluster.crash(2);
    doomed.drop_connection();
    assert!(
        wait_udp_port_free(port2, SETTLE).await,
        "the crashed node's Drop closed its QUIC endpoint"
    );
    cluster
        .node(1)
        .cluster
        .remove_node(2)
        .await
        .expect("node 1 removes node 2");
    assert!(
        cluster
            .wait_all(SETTLE, |s| s.route_count == 1
                && s.members.len() == 2
                && s.members.iter().all(|m| m.node_id != 2))
            .await,
        "node 2 is out of the membership and its route is gone: {:?}",
        cluster.node(0).cluster.status().await
    );

    let backlog_to_2 = |s: &tern_cluster::ClusterStatus| {
        s.links
            .iter()
            .filter(|l| l.node_id == 2)
            .map(|l| l.backlog)
            .sum::<usize>()
    };
    let before = backlog_to_2(&cluster.node(0).cluster.status().await);
    for i in 0..10 {
        publisher
            .publish("c/x", format!("after-{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    publisher
        .publish("c/x", "fence", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(local.recv_until_payload("fence").await.len(), 10);
    let after = cluster.node(0).cluster.status().await;
    assert_eq!(
        (before, backlog_to_2(&after)),
        (0, 0),
        "nothing is queued for the removed node: {:?}",
        after.links
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_keep_three_voters_in_distinct_regions_and_survive_a_voter_crash() {
    let mut cluster = TestCluster::start(5, 3).await;
    assert!(cluster.wait_formed(3, FORM).await, "5 members, 3 voters");
    let status = cluster.node(0).cluster.status().await;
    let voters: Vec<_> = status
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .collect();
    let regions: BTreeSet<&str> = voters.iter().map(|m| m.region.as_str()).collect();
    assert_eq!(regions.len(), 3, "voters in distinct regions: {voters:?}");
    assert_eq!(
        status
            .members
            .iter()
            .filter(|m| m.role == "learner")
            .count(),
        2
    );

    // Crash the leader (a voter).
    let leader = status.leader.expect("a leader");
    let leader_i = usize::try_from(leader).expect("small");
    cluster.crash(leader_i);
    let survivors: Vec<usize> = (0..5).filter(|&i| i != leader_i).collect();
    assert!(
        cluster
            .wait_all(FORM, |s| s.leader.is_some_and(|l| l != leader))
            .await,
        "the surviving voters elect a new leader"
    );
    let new_leader = cluster.node(survivors[0]).cluster.status().await.leader;
    eprintln!("leader {leader} crashed; new leader {new_leader:?}");

    // Publishes between surviving nodes: routes made after the crash still commit.
    let (p, a, b) = (survivors[0], survivors[1], survivors[3]);
    let mut sub_a = RawClient::v5(cluster.node(a).mqtt_addr, "five-a").await;
    sub_a.subscribe("five/#", QoS::AtLeastOnce).await;
    let mut sub_b = RawClient::v311(cluster.node(b).mqtt_addr, "five-b").await;
    sub_b.subscribe("five/+", QoS::AtLeastOnce).await;
    let want_routes = 2;
    assert!(
        cluster
            .wait_status(p, SETTLE, |s| s.route_count >= want_routes)
            .await,
        "node {p} learns the new routes"
    );
    let mut publisher = RawClient::v5(cluster.node(p).mqtt_addr, "five-pub").await;
    const N: usize = 100;
    for i in 0..N {
        publisher
            .publish("five/x", format!("{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    publisher
        .publish("five/x", "fence", QoS::AtLeastOnce, false)
        .await;
    for (name, sub) in [("a", &mut sub_a), ("b", &mut sub_b)] {
        let got: Vec<String> = sub
            .recv_until_payload("fence")
            .await
            .iter()
            .map(|p| text(&p.payload))
            .collect();
        let want: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        assert_eq!(got, want, "subscriber {name}: all {N}, once, in order");
    }
    cluster.shutdown().await;
}

/// `cluster.remove_dead_after_secs`: the leader removes a member it has had no link to
/// for that long (a StatefulSet scaled down), purges its routes, promotes the learner to
/// keep three voters; the node, restarted on its old data directory, joins again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_member_is_removed_and_comes_back_as_a_learner() {
    let mut cluster = TestCluster::start_with(4, 3, |_, c| c.remove_dead_after_secs = 2).await;
    assert!(cluster.wait_formed(3, FORM).await, "4 members, 3 voters");
    let status = cluster.node(0).cluster.status().await;
    let leader = status.leader.expect("a leader");
    let victim = status
        .members
        .iter()
        .find(|m| m.role == "voter" && m.node_id != leader)
        .map(|m| usize::try_from(m.node_id).expect("small"))
        .expect("a voter that does not lead");
    let victim_id = victim as u64;
    let mut sub = RawClient::v5(cluster.node(victim).mqtt_addr, "dead-sub").await;
    sub.subscribe("dead/#", QoS::AtLeastOnce).await;
    assert!(
        cluster.wait_all(SETTLE, |s| s.route_count == 1).await,
        "every node knows the victim's route"
    );
    drop(sub);

    let stopped = cluster.stop(victim).await;
    let started = std::time::Instant::now();
    assert!(
        cluster
            .wait_all(SETTLE, |s| {
                let voters = s.members.iter().filter(|m| m.role == "voter").count();
                s.members.len() == 3
                    && !s.members.iter().any(|m| m.node_id == victim_id)
                    && voters == 3
                    && s.route_count == 0
                    && !s.membership_changing
            })
            .await,
        "node {victim} removed with its route; the learner promoted: {:?}",
        cluster.node(leader as usize).cluster.status().await
    );
    eprintln!(
        "node {victim} removed and a learner promoted {:?} after it stopped",
        started.elapsed()
    );
    let removed: u64 = cluster
        .running()
        .map(|n| n.cluster.stats().dead_members_removed)
        .sum();
    assert_eq!(removed, 1, "one removal, counted");

    cluster.restart(stopped).await;
    assert!(
        cluster
            .wait_all(FORM, |s| {
                s.ready
                    && s.members
                        .iter()
                        .any(|m| m.node_id == victim_id && m.role == "learner")
            })
            .await,
        "node {victim} joined again as a learner"
    );
    cluster.shutdown().await;
}
