//! Real `tern serve` processes: five nodes with three voters; the leader is killed with
//! SIGKILL while a publisher on one surviving node sends QoS 1 messages to a subscriber
//! on another. The cluster elects a new leader and not one message is lost or doubled.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tern_codec::QoS;
use tern_tests::clients::{text, RawClient};
use tern_tests::external::free_port;
use tern_tests::process::{
    cluster_settled, cluster_status, clustered_serve_command, write_cluster_certs,
};
use tern_tests::{unique_temp_dir, ChildGuard};

const NODES: u64 = 5;
const MESSAGES: usize = 1000;
const KILL_AT: usize = 300;

struct Node {
    id: u64,
    guard: Option<ChildGuard>,
    mqtt: SocketAddr,
    http: SocketAddr,
    dir: PathBuf,
}

impl Node {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}

fn start(id: u64, certs: &std::path::Path, root: &std::path::Path, quic: &[u16]) -> Node {
    let dir = root.join(format!("node-{id}"));
    std::fs::create_dir_all(&dir).expect("node dir");
    let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut cmd = clustered_serve_command(id as usize, quic, mqtt, http, &dir.join("data"), certs);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("stderr.log")).expect("log file"));
    let guard = ChildGuard::spawn(&mut cmd).expect("spawn tern serve");
    Node {
        id,
        guard: Some(guard),
        mqtt,
        http,
        dir,
    }
}

async fn status(node: &Node) -> Option<serde_json::Value> {
    cluster_status(node.http).await
}

/// Panics with every node's log once `deadline` has passed.
fn check_deadline(what: &str, deadline: Instant, nodes: &[Node]) {
    if Instant::now() > deadline {
        let logs: Vec<String> = nodes
            .iter()
            .map(|n| format!("=== node {} ===\n{}", n.id, n.log()))
            .collect();
        panic!("timed out waiting for {what}\n{}", logs.join("\n"));
    }
}

async fn has_route(node: &Node) -> bool {
    let routes = status(node).await.and_then(|s| s["route_count"].as_u64());
    routes.unwrap_or(0) >= 1
}

async fn has_other_leader(node: &Node, old: u64) -> bool {
    let leader = status(node).await.and_then(|s| s["leader"].as_u64());
    matches!(leader, Some(l) if l != old)
}

async fn all_ready_with_voters(nodes: &[Node]) -> bool {
    let https: Vec<_> = nodes.iter().map(|n| n.http).collect();
    cluster_settled(&https, NODES as usize, 3).await.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_loses_no_qos1_message_between_survivors() {
    let root = unique_temp_dir("tern-kill9");
    let certs = root.join("certs");
    write_cluster_certs(&certs, NODES as usize);
    let quic: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|id| start(id, &certs, &root, &quic))
        .collect();

    // Every node ready; three voters.
    let deadline = Instant::now() + Duration::from_secs(40);
    while !all_ready_with_voters(&nodes).await {
        check_deadline("all nodes ready with 3 voters", deadline, &nodes);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = status(&nodes[0])
        .await
        .and_then(|s| s["leader"].as_u64())
        .expect("a leader");
    let survivors: Vec<usize> = (0..NODES as usize)
        .filter(|&i| i as u64 != leader)
        .collect();
    let (sub_node, pub_node) = (survivors[0], survivors[1]);

    let mut subscriber = RawClient::v5(nodes[sub_node].mqtt, "k9-sub").await;
    subscriber.subscribe("k9/#", QoS::AtLeastOnce).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has_route(&nodes[pub_node]).await {
        check_deadline("the route on the publisher's node", deadline, &nodes);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut publisher = RawClient::v5(nodes[pub_node].mqtt, "k9-pub").await;
    let receiving = tokio::spawn(async move {
        let got = subscriber.recv_publishes(MESSAGES).await;
        got.iter().map(|p| text(&p.payload)).collect::<Vec<_>>()
    });
    let mut killed_at = None;
    for i in 0..MESSAGES {
        if i == KILL_AT {
            if let Some(mut guard) = nodes[leader as usize].guard.take() {
                guard.child.kill().expect("SIGKILL the leader");
                let _ = guard.child.wait();
                killed_at = Some(Instant::now());
            }
        }
        publisher
            .publish(
                &format!("k9/{}", i % 10),
                format!("{i}"),
                QoS::AtLeastOnce,
                false,
            )
            .await;
    }
    let got = tokio::time::timeout(Duration::from_secs(30), receiving)
        .await
        .expect("all delivered")
        .expect("receiver");
    let expected: Vec<String> = (0..MESSAGES).map(|i| i.to_string()).collect();
    assert_eq!(
        got, expected,
        "every QoS 1 message once, in order, across the leader's death"
    );

    // A new leader among the survivors.
    let killed_at = killed_at.expect("the leader was killed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !has_other_leader(&nodes[pub_node], leader).await {
        check_deadline("a new leader", deadline, &nodes);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "leader {leader} killed with SIGKILL: new leader visible {:?} later (election timeout 600-1200 ms); {MESSAGES} QoS 1 messages, none lost",
        killed_at.elapsed()
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&root);
}
