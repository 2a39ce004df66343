//! The rolling restart a StatefulSet does (stop node 2, restart it on its data directory,
//! wait for /readyz, then node 1, then node 0), on three real `tern serve` processes,
//! while a QoS 1 publisher and a persistent QoS 1 subscriber keep running. Every message
//! the publisher got a PUBACK for reaches the subscriber at least once.
//!
//! Clients behave like clients behind a load balancer:
//!
//! - The publisher (clean start) simply reconnects to a live node when its node goes away
//!   and resends the message that had no PUBACK yet (with DUP): at least once.
//! - The subscriber has a persistent session (v5, clean start 0, session expiry 300 s,
//!   fixed client id). A session moves between nodes while the node holding it is alive
//!   to hand it over (docs/clustering.md, "A client moves between live nodes"). A stopping
//!   node disconnects its clients (DISCONNECT 0x8B) and stays up until the sessions of
//!   those that reconnect elsewhere have moved (at most 10 s), so the subscriber can
//!   simply reconnect to a live node and get CONNACK session present 1, with what was
//!   queued or in flight meanwhile.
//!
//! The subscriber dedups by the sequence number in the payload; duplicates are allowed
//! (at least once) and reported.
//!
//! Three variants, all publishing throughout: the subscriber reconnects on its own when
//! its node stops; it is moved away before its node stops (a normal DISCONNECT keeping the
//! session, then a CONNECT to another live node); and moved away with the publisher
//! paused around each move.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_codec::{Connect, Disconnect, Packet, ProtocolVersion, PubResponse, QoS, ReasonCode};
use tern_tests::clients::{connect_packet, publish_packet, text, RawClient, Recv};
use tern_tests::external::{free_port, http_get};
use tern_tests::process::{
    cluster_settled, cluster_status, clustered_serve_command, write_cluster_certs,
};
use tern_tests::{unique_temp_dir, ChildGuard};

const NODES: usize = 3;
/// The publisher sends at least this many messages, and goes on until the restarts are done.
const MIN_MESSAGES: u64 = 1500;
/// Pause between two publishes (each also waits for its PUBACK).
const PUBLISH_GAP: Duration = Duration::from_millis(4);
const SUB_ID: &str = "rr-sub";
const SESSION_EXPIRY: u32 = 300;

/// One node: fixed ports and data directory, reused by every restart.
struct Node {
    id: usize,
    guard: Option<ChildGuard>,
    mqtt: SocketAddr,
    http: SocketAddr,
    dir: PathBuf,
}

impl Node {
    fn new(id: usize, root: &Path) -> Self {
        let dir = root.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let port = || -> SocketAddr { format!("127.0.0.1:{}", free_port()).parse().expect("addr") };
        Self {
            id,
            guard: None,
            mqtt: port(),
            http: port(),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Starts `tern serve` on this node's ports and data directory; the log is appended to.
    fn spawn(&mut self, certs: &Path, quic: &[u16]) {
        let id = self.id;
        let mut cmd = clustered_serve_command(
            id,
            quic,
            self.mqtt,
            self.http,
            &self.dir.join("data"),
            certs,
        );
        cmd.args(["--set", "node.shutdown_grace_secs=1"]);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))
            .expect("log file");
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.guard = Some(ChildGuard::spawn(&mut cmd).expect("spawn tern serve"));
    }

    /// SIGTERM, then waits for the process to exit (a graceful shutdown); returns how
    /// long it took, or why it went wrong.
    async fn stop(&mut self) -> Result<Duration, String> {
        let mut guard = self.guard.take().expect("node is running");
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &guard.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM node {}", self.id);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(exit) = guard.child.try_wait().expect("try_wait") {
                if !exit.success() {
                    return Err(format!("node {} exited with {exit} after SIGTERM", self.id));
                }
                return Ok(started.elapsed());
            }
            if Instant::now() > deadline {
                return Err(format!("node {} still running 20 s after SIGTERM", self.id));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn all_logs(nodes: &[Node]) -> String {
    nodes
        .iter()
        .map(|n| format!("=== node {} ===\n{}", n.id, n.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn status(http: SocketAddr) -> Option<serde_json::Value> {
    cluster_status(http).await
}

async fn ready(http: SocketAddr) -> bool {
    matches!(http_get(http, "/readyz").await, Some((200, _)))
}

/// Every node ready, and each sees 3 members (3 voters) and the same leader.
async fn cluster_healthy(nodes: &[Node]) -> Option<u64> {
    let https: Vec<_> = nodes.iter().map(|n| n.http).collect();
    cluster_settled(&https, NODES, NODES).await
}

async fn wait_for<F, Fut>(what: &str, timeout: Duration, nodes: &[Node], mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", all_logs(nodes));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which nodes clients may connect to (what a load balancer's health check would say).
type Up = Arc<Mutex<[bool; NODES]>>;

fn sub_connect() -> Connect {
    let mut connect = connect_packet(ProtocolVersion::V5, SUB_ID);
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(SESSION_EXPIRY);
    connect
}

enum SubCommand {
    /// Disconnect cleanly (keeping the session) and connect to this node; replies with
    /// CONNACK's session present.
    MoveTo(usize, tokio::sync::oneshot::Sender<bool>),
    Stop,
}

/// What the subscriber saw: how often each sequence number arrived.
#[derive(Default)]
struct Received {
    counts: HashMap<u64, u32>,
    unplanned_reconnects: u32,
}

async fn subscriber(
    addrs: Vec<SocketAddr>,
    mut node: usize,
    mut client: RawClient,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<SubCommand>,
    received: Arc<Mutex<Received>>,
    up: Up,
) {
    loop {
        match commands.try_recv() {
            Ok(SubCommand::MoveTo(to, reply)) => {
                client.disconnect_with(Disconnect::default()).await;
                let (c, ack) = RawClient::connect_ok(addrs[to], sub_connect()).await;
                client = c;
                node = to;
                let _ = reply.send(ack.session_present);
                continue;
            }
            Ok(SubCommand::Stop) => {
                client.disconnect().await;
                return;
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return,
        }
        match client.recv(Duration::from_millis(20)).await {
            Recv::Packet(Packet::Publish(p)) => {
                let seq: u64 = text(&p.payload).parse().expect("numeric payload");
                // Count only what is acknowledged; an unacknowledged message is redelivered.
                if client
                    .try_send(Packet::PubAck(PubResponse::new(p.packet_id)))
                    .await
                    .is_ok()
                {
                    *received.lock().unwrap().counts.entry(seq).or_default() += 1;
                }
            }
            // A stopping node says goodbye (v5: DISCONNECT 0x8B) before it closes.
            Recv::Packet(Packet::Disconnect(_)) | Recv::Closed => {
                // Its node stopped under it (or, when moves are planned, a bug).
                received.lock().unwrap().unplanned_reconnects += 1;
                let to = (0..NODES)
                    .find(|&n| n != node && up.lock().unwrap()[n])
                    .expect("a live node");
                eprintln!("subscriber: connection to node {node} closed; reconnecting to {to}");
                let (c, ack) = RawClient::connect_ok(addrs[to], sub_connect()).await;
                assert!(
                    ack.session_present,
                    "subscriber reconnected to node {to} after an unplanned close: session lost"
                );
                client = c;
                node = to;
            }
            Recv::Packet(other) => {
                panic!("subscriber on node {node}: unexpected {other:?}")
            }
            Recv::Timeout => {}
        }
    }
}

/// Publishes sequence numbers until `done` is set and at least [`MIN_MESSAGES`] are
/// acknowledged. Returns (messages acknowledged, reconnects, resends).
async fn publisher(
    addrs: Vec<SocketAddr>,
    mut node: usize,
    published: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    up: Up,
) -> (u64, u32, u32) {
    let mut client = RawClient::v5(addrs[node], "rr-pub").await;
    let (mut reconnects, mut resends) = (0, 0);
    let mut seq = 0u64;
    while seq < MIN_MESSAGES || !done.load(Ordering::SeqCst) {
        while paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut publish = publish_packet(
            &format!("rr/{}", seq % 10),
            seq.to_string(),
            QoS::AtLeastOnce,
            false,
        );
        publish.packet_id = client.next_id();
        loop {
            if client
                .try_send(Packet::Publish(publish.clone()))
                .await
                .is_ok()
            {
                match puback(&mut client, publish.packet_id).await {
                    Ok(reason) => {
                        assert_eq!(
                            reason,
                            ReasonCode::SUCCESS,
                            "PUBACK for message {seq} on node {node}"
                        );
                        break;
                    }
                    Err(why) => {
                        eprintln!("publisher: message {seq} on node {node}: {why}; reconnecting")
                    }
                }
            }
            // The node went away: reconnect to a live one and resend.
            let deadline = Instant::now() + Duration::from_secs(10);
            let to = loop {
                let live = *up.lock().unwrap();
                if let Some(n) = (0..NODES).find(|&n| n != node && live[n]) {
                    break n;
                }
                assert!(Instant::now() < deadline, "no live node for the publisher");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            client = RawClient::v5(addrs[to], "rr-pub").await;
            node = to;
            reconnects += 1;
            resends += 1;
            publish.dup = true;
            publish.packet_id = client.next_id();
        }
        seq += 1;
        published.store(seq, Ordering::SeqCst);
        tokio::time::sleep(PUBLISH_GAP).await;
    }
    client.disconnect().await;
    (seq, reconnects, resends)
}

/// Waits for the PUBACK of `id`; an error says why the connection is unusable.
async fn puback(client: &mut RawClient, id: u16) -> Result<ReasonCode, String> {
    match client.recv(Duration::from_secs(10)).await {
        Recv::Packet(Packet::PubAck(a)) if a.packet_id == id => Ok(a.reason),
        Recv::Packet(Packet::Disconnect(d)) => Err(format!("DISCONNECT {d:?}")),
        Recv::Packet(other) => Err(format!("unexpected {other:?}")),
        Recv::Closed => Err("connection closed".into()),
        Recv::Timeout => Err("no PUBACK within 10 s".into()),
    }
}

/// How the subscriber leaves a node that is about to stop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Moves {
    /// It is not moved: the node's shutdown disconnects it, it reconnects to another live
    /// node, and the stopping node hands its session over before it exits.
    OnItsOwn,
    /// Before the node stops, it disconnects cleanly and connects to another live node,
    /// while the publisher goes on.
    Planned,
    /// As `Planned`, but the publisher pauses from the start of each move until 1 s after
    /// it (as if the operator drained publishers too).
    PlannedQuiet,
}

/// What a StatefulSet's rolling restart does to clients behind a load balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_loses_no_acknowledged_qos1_message() {
    rolling_restart(Moves::OnItsOwn).await;
}

/// The publisher keeps publishing while the subscriber's session moves between nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_with_planned_session_moves_loses_no_acknowledged_qos1_message() {
    rolling_restart(Moves::Planned).await;
}

/// Planned moves with the publisher paused around each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_with_quiet_session_moves_loses_no_acknowledged_qos1_message() {
    rolling_restart(Moves::PlannedQuiet).await;
}

async fn rolling_restart(moves: Moves) {
    let pause_during_moves = moves == Moves::PlannedQuiet;
    let test_started = Instant::now();
    let root = unique_temp_dir("tern-rolling");
    let certs = root.join("certs");
    write_cluster_certs(&certs, NODES);
    // Ports chosen once: a restarted node comes back on the same ones.
    let quic: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let mut nodes: Vec<Node> = (0..NODES).map(|id| Node::new(id, &root)).collect();
    for n in nodes.iter_mut() {
        n.spawn(&certs, &quic);
    }
    wait_for(
        "3 ready nodes, 3 voters, one leader",
        Duration::from_secs(40),
        &nodes,
        || async { cluster_healthy(&nodes).await.is_some() },
    )
    .await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.mqtt).collect();
    let up: Up = Arc::new(Mutex::new([true; NODES]));

    // The subscriber starts on node 2, the publisher on node 0.
    let (mut sub_node, pub_node) = (2, 0);
    let (mut sub, ack) = RawClient::connect_ok(addrs[sub_node], sub_connect()).await;
    assert!(!ack.session_present, "a fresh cluster has no session");
    sub.subscribe("rr/#", QoS::AtLeastOnce).await;
    let pub_http = nodes[pub_node].http;
    wait_for(
        "the subscriber's route on the publisher's node",
        Duration::from_secs(30),
        &nodes,
        || async move {
            let routes = status(pub_http)
                .await
                .and_then(|s| s["route_count"].as_u64());
            routes.unwrap_or(0) >= 1
        },
    )
    .await;

    let received = Arc::new(Mutex::new(Received::default()));
    let (commands, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    let subscribing = tokio::spawn(subscriber(
        addrs.clone(),
        sub_node,
        sub,
        commands_rx,
        received.clone(),
        up.clone(),
    ));
    let published = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let publishing = tokio::spawn(publisher(
        addrs.clone(),
        pub_node,
        published.clone(),
        done.clone(),
        paused.clone(),
        up.clone(),
    ));

    let wait_published = |n: u64| {
        let published = published.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while published.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "publisher stalled before {n}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_published(200).await;

    // The StatefulSet's order: highest ordinal first.
    for id in [2, 1, 0] {
        if sub_node == id && moves != Moves::OnItsOwn {
            // Move the subscriber off the node first, while it can still hand the session over.
            let to = (id + 2) % NODES;
            let move_from = published.load(Ordering::SeqCst);
            if pause_during_moves {
                paused.store(true, Ordering::SeqCst);
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            commands
                .send(SubCommand::MoveTo(to, reply))
                .expect("subscriber running");
            let session_present = tokio::time::timeout(Duration::from_secs(15), answer)
                .await
                .expect("subscriber moved within 15 s")
                .expect("subscriber answered");
            assert!(
                session_present,
                "the subscriber's session did not move from node {id} to node {to}\n{}",
                all_logs(&nodes)
            );
            eprintln!(
                "subscriber moved from node {id} to node {to}: session present 1 \
                 (messages {move_from}..{} published meanwhile)",
                published.load(Ordering::SeqCst)
            );
            sub_node = to;
            if pause_during_moves {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            paused.store(false, Ordering::SeqCst);
        }
        up.lock().unwrap()[id] = false;
        let sigterm_at = Instant::now();
        let before = published.load(Ordering::SeqCst);
        let stopped_in = match nodes[id].stop().await {
            Ok(t) => t,
            Err(why) => panic!("{why}\n{}", all_logs(&nodes)),
        };
        nodes[id].spawn(&certs, &quic);
        let http = nodes[id].http;
        wait_for(
            &format!("node {id} ready after its restart"),
            Duration::from_secs(40),
            &nodes,
            || ready(http),
        )
        .await;
        wait_for(
            &format!("a healthy cluster after node {id}'s restart"),
            Duration::from_secs(40),
            &nodes,
            || async { cluster_healthy(&nodes).await.is_some() },
        )
        .await;
        up.lock().unwrap()[id] = true;
        eprintln!(
            "node {id}: stopped in {stopped_in:?}, ready again {:?} after the SIGTERM; {} messages published meanwhile",
            sigterm_at.elapsed(),
            published.load(Ordering::SeqCst) - before
        );
        // Traffic flows through the restarted cluster before the next node goes.
        let now = published.load(Ordering::SeqCst);
        wait_published(now + 100).await;
    }
    done.store(true, Ordering::SeqCst);
    let (total, reconnects, resends) = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .expect("publisher finished")
        .expect("publisher task");

    // Every acknowledged message arrives at least once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<u64> = {
            let r = received.lock().unwrap();
            (0..total).filter(|s| !r.counts.contains_key(s)).collect()
        };
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "{} of {total} acknowledged messages never reached the subscriber: {:?}{}\n{}",
                missing.len(),
                &missing[..missing.len().min(50)],
                if missing.len() > 50 { " ..." } else { "" },
                all_logs(&nodes)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    commands.send(SubCommand::Stop).expect("subscriber running");
    tokio::time::timeout(Duration::from_secs(10), subscribing)
        .await
        .expect("subscriber stopped")
        .expect("subscriber task");

    let (deliveries, duplicates, sub_reconnects) = {
        let r = received.lock().unwrap();
        let deliveries: u64 = r.counts.values().map(|&c| u64::from(c)).sum();
        let duplicates = deliveries - r.counts.len() as u64;
        let unexpected: Vec<u64> = r.counts.keys().copied().filter(|&s| s >= total).collect();
        assert!(
            unexpected.is_empty(),
            "never published, yet received: {unexpected:?}"
        );
        if moves == Moves::OnItsOwn {
            assert!(
                r.unplanned_reconnects >= 1,
                "the subscriber's node stopped, yet it never reconnected"
            );
        } else {
            assert_eq!(
                r.unplanned_reconnects, 0,
                "the subscriber lost its connection without being moved"
            );
        }
        (deliveries, duplicates, r.unplanned_reconnects)
    };

    let leader = cluster_healthy(&nodes).await;
    assert!(
        leader.is_some(),
        "after the rolling restart: 3 members, 3 voters and one leader\n{}",
        all_logs(&nodes)
    );
    eprintln!(
        "rolling restart of 3 nodes ({moves:?}): {total} QoS 1 messages acknowledged, all \
         received; {deliveries} deliveries, {duplicates} duplicates; publisher reconnected \
         {reconnects} times and resent {resends} messages; subscriber reconnected on its own \
         {sub_reconnects} times; leader {}; test took {:?}",
        leader.expect("leader"),
        test_started.elapsed()
    );
    drop(nodes);
    let _ = std::fs::remove_dir_all(&root);
}
