//! `GET /metrics`: the counters move with what real clients do, a cluster member reports
//! Raft and its links, and `promtool check metrics` (Debian's prometheus package, which
//! scripts/test installs) accepts the output.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tern::metrics::NodeMetrics;
use tern_codec::QoS;
use tern_tests::clients::RawClient;
use tern_tests::cluster::TestCluster;
use tern_tests::external::http_get;
use tern_tests::TestNode;

/// The value of the sample `name_and_labels` (exactly as rendered), if present.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name_and_labels)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

fn value(text: &str, name_and_labels: &str) -> f64 {
    sample(text, name_and_labels)
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{text}"))
}

/// Runs `promtool check metrics` on `text` and panics with its complaints if it fails.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package `prometheus`; scripts/test installs it)");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn counters_follow_clients_and_promtool_accepts_them() {
    let node = TestNode::start().await;
    let addr = node.mqtt_addr();
    let mut sub = RawClient::v5(addr, "metrics-sub").await;
    sub.subscribe("m/#", QoS::AtLeastOnce).await;
    let mut publisher = RawClient::v311(addr, "metrics-pub").await;
    for i in 0..5 {
        publisher
            .publish("m/one", format!("q1-{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    for i in 0..3 {
        publisher
            .publish("m/zero", format!("q0-{i}"), QoS::AtMostOnce, false)
            .await;
    }
    // Nobody subscribes to this one; it stays retained.
    publisher
        .publish("kept/x", "retained", QoS::AtLeastOnce, true)
        .await;
    assert_eq!(sub.recv_publishes(8).await.len(), 8);

    let (status, text) = http_get(node.http_addr(), "/metrics")
        .await
        .expect("/metrics answers");
    assert_eq!(status, 200, "{text}");

    assert!(value(&text, "tern_messages_received_total{qos=\"1\"}") >= 6.0);
    assert!(value(&text, "tern_messages_received_total{qos=\"0\"}") >= 3.0);
    assert!(value(&text, "tern_messages_delivered_total{qos=\"1\"}") >= 5.0);
    assert!(value(&text, "tern_messages_delivered_total{qos=\"0\"}") >= 3.0);
    assert!(
        value(
            &text,
            "tern_messages_dropped_total{reason=\"no_subscriber\"}"
        ) >= 1.0
    );
    assert_eq!(value(&text, "tern_connections{version=\"5.0\"}"), 1.0);
    assert_eq!(value(&text, "tern_connections{version=\"3.1.1\"}"), 1.0);
    assert!(value(&text, "tern_connections_total") >= 2.0);
    assert!(value(&text, "tern_connect_outcomes_total{reason=\"success\"}") >= 2.0);
    assert!(value(&text, "tern_listener_accepted_total{listener=\"mqtt\"}") >= 2.0);
    assert_eq!(value(&text, "tern_sessions{state=\"online\"}"), 2.0);
    assert_eq!(value(&text, "tern_subscriptions"), 1.0);
    // $SYS topics are retained too.
    assert!(value(&text, "tern_retained_messages") >= 1.0);
    assert!(value(&text, "tern_bytes_received_total") > 0.0);
    assert!(value(&text, "tern_bytes_sent_total") > 0.0);
    assert!(value(&text, "tern_publish_delivery_seconds_count") >= 8.0);
    assert_eq!(
        value(&text, "tern_publish_delivery_seconds_count"),
        value(&text, "tern_publish_delivery_seconds_bucket{le=\"+Inf\"}")
    );
    assert!(value(&text, "process_resident_memory_bytes") > 0.0);
    assert!(!text.contains("tern_raft_"), "a single node has no Raft");

    // A garbage packet is counted by kind.
    let mut bad = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut bad, &[0x10, 0xff, 0xff, 0xff, 0xff, 0x01])
        .await
        .unwrap();
    let mut counted = false;
    for _ in 0..200 {
        let (_, text) = http_get(node.http_addr(), "/metrics").await.unwrap();
        if text.contains("tern_malformed_packets_total{kind=") {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(counted, "the malformed packet is counted");

    let (_, text) = http_get(node.http_addr(), "/metrics").await.unwrap();
    promtool_check(&text);
    sub.disconnect().await;
    publisher.disconnect().await;
    node.shutdown().await;
}

#[tokio::test]
async fn cluster_members_report_raft_and_links() {
    let cluster = TestCluster::start(2, 2).await;
    assert!(
        cluster.wait_formed(2, Duration::from_secs(30)).await,
        "cluster formed"
    );
    let metrics: Vec<_> = cluster
        .running()
        .map(|n| {
            let m = NodeMetrics::new(n.broker.clone(), Some(n.cluster.clone()), Vec::new());
            (n.id, n.cluster.clone(), m)
        })
        .collect();

    // Links come up with Raft's traffic; wait until each node sees its peer connected.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let texts = loop {
        let mut texts = Vec::new();
        for (_, _, m) in &metrics {
            texts.push(m.render().await);
        }
        let all_linked = texts.iter().zip(&metrics).all(|(text, (id, _, _))| {
            let peer = 1 - id;
            text.lines().any(|l| {
                l.starts_with(&format!("tern_link_connected{{peer=\"{peer}\"")) && l.ends_with(" 1")
            })
        });
        if all_linked {
            break texts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "links connected:\n{texts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let leaders: f64 = texts.iter().map(|t| value(t, "tern_raft_is_leader")).sum();
    assert_eq!(leaders, 1.0, "exactly one leader");
    let leader = cluster
        .node(0)
        .cluster
        .status()
        .await
        .leader
        .expect("a leader");
    for text in &texts {
        assert_eq!(value(text, "tern_cluster_ready"), 1.0);
        assert!(value(text, "tern_raft_term") >= 1.0);
        assert!(value(text, "tern_raft_commit_index") >= 1.0);
        assert_eq!(value(text, "tern_raft_members{role=\"voter\"}"), 2.0);
        assert_eq!(
            value(text, &format!("tern_raft_leader{{node_id=\"{leader}\"}}")),
            1.0
        );
        // Counters only the metrics show: present from the start, moving with traffic.
        assert!(text.contains("# TYPE tern_raft_proposals_total counter\n"));
        assert!(text.contains("# TYPE tern_raft_proposal_batch_commands histogram\n"));
        assert!(text.contains("tern_raft_snapshots_total{source=\"built\"} "));
        assert!(text.contains("# TYPE tern_forward_ack_seconds histogram\n"));
        promtool_check(text);
    }
    for (text, (id, _, _)) in texts.iter().zip(&metrics) {
        let peer = 1 - id;
        let frames = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}{{peer=\"{peer}\"")))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{name} for peer {peer}:\n{text}"))
        };
        assert!(frames("tern_link_sent_frames_total") >= 1.0);
        assert!(frames("tern_link_received_frames_total") >= 1.0);
    }
    for (_, node, _) in &metrics {
        assert!(node.is_ready());
    }
}
