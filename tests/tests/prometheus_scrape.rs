//! A real Prometheus (Debian's `prometheus` package, which scripts/test installs) scrapes
//! three real `tern serve` processes forming a cluster, on loopback ports:
//!
//! - every target is up, and Prometheus's view of the Raft metrics agrees (one leader,
//!   the same leader everywhere, a commit index on every node);
//! - QoS 1 messages published on node 0 to a subscriber on node 2 move the message
//!   counters and the cross-node forwarding histogram by exactly what was sent;
//! - every expression of the Grafana dashboard (deploy/grafana/tern-dashboard.json) is
//!   valid PromQL to this Prometheus, and every metric it names is in a node's /metrics;
//! - every metric family the nodes expose is listed in docs/operations.md.
//!
//! Prometheus and the nodes are child processes in [`ChildGuard`]s: killed however the
//! test ends.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tern_codec::QoS;
use tern_tests::clients::RawClient;
use tern_tests::external::{free_port, http_get, repo_root, require_tool};
use tern_tests::process::{
    cluster_settled, cluster_status, clustered_serve_command, write_cluster_certs,
};
use tern_tests::{unique_temp_dir, ChildGuard};

const NODES: usize = 3;
/// QoS 1 messages published on node 0 for the subscriber on node 2.
const MESSAGES: u64 = 200;
/// `cluster.raft.snapshot_every_entries`: low, so that snapshots happen during the test.
const SNAPSHOT_EVERY: u64 = 5;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct Node {
    _guard: ChildGuard,
    mqtt: SocketAddr,
    http: SocketAddr,
    dir: PathBuf,
}

/// The logs of every child, for failure messages.
fn logs(nodes: &[Node], prometheus_log: &Path) -> String {
    let mut out = String::new();
    for (id, n) in nodes.iter().enumerate() {
        let log = std::fs::read_to_string(n.dir.join("stderr.log")).unwrap_or_default();
        out.push_str(&format!("=== node {id} ===\n{log}\n"));
    }
    let log = std::fs::read_to_string(prometheus_log).unwrap_or_default();
    out.push_str(&format!("=== prometheus ===\n{log}"));
    out
}

/// Polls `cond` every 100 ms until it gives a value or `timeout` passes.
async fn poll<T, F, Fut>(timeout: Duration, mut cond: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Percent-encodes a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GETs `path` from Prometheus and parses the JSON answer.
async fn prom_json(prometheus: SocketAddr, path: &str) -> Option<Value> {
    let (_, body) = http_get(prometheus, path).await?;
    serde_json::from_str(&body).ok()
}

/// An instant query's answer: `Ok(samples)` as (labels, value), or `Err(error text)`.
async fn query(prometheus: SocketAddr, promql: &str) -> Result<Vec<(Value, f64)>, String> {
    let path = format!("/api/v1/query?query={}", encode(promql));
    let answer = prom_json(prometheus, &path)
        .await
        .ok_or_else(|| "no JSON answer".to_string())?;
    if answer["status"] != "success" {
        return Err(answer.to_string());
    }
    let data = &answer["data"];
    let samples = match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| {
                let v = s["value"][1].as_str()?.parse().ok()?;
                Some((s["metric"].clone(), v))
            })
            .collect(),
        Some("scalar") => data["result"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .map(|v| vec![(Value::Null, v)])
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    Ok(samples)
}

/// The single value of `promql`, once it has exactly one sample.
async fn one_value(prometheus: SocketAddr, promql: &str) -> Option<f64> {
    match query(prometheus, promql).await {
        Ok(samples) if samples.len() == 1 => Some(samples[0].1),
        _ => None,
    }
}

/// Every node ready, 3 voters, and one leader all agree on.
async fn cluster_formed(nodes: &[Node]) -> Option<u64> {
    let https: Vec<_> = nodes.iter().map(|n| n.http).collect();
    cluster_settled(&https, NODES, NODES).await
}

/// The expressions of every panel of the dashboard, panels in rows included.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn load_dashboard() -> Value {
    let path = repo_root().join("deploy/grafana/tern-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("deploy/grafana/tern-dashboard.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Grafana's variables, as a query sent straight to Prometheus needs them.
fn substitute_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "15s")
        .replace("$__interval", "5s")
        .replace("$__range", "1h")
        .replace("$instance", ".*")
}

/// Metric names in a PromQL expression: identifiers starting with `tern_` or `process_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start_ok = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if start_ok && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            let word = &expr[start..i];
            if word.starts_with("tern_") || word.starts_with("process_") {
                names.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The sample names (`tern_x_bucket` included) and family names (`# TYPE`) of a scrape.
fn exposed_names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(name) = rest.split(' ').next() {
                families.insert(name.to_string());
            }
        } else if !line.starts_with('#') {
            if let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
                samples.insert(name.to_string());
            }
        }
    }
    (samples, families)
}

/// The dashboard's structure, without any process: a Prometheus data-source variable that
/// every panel and target uses, unique panel ids, and at least one expression for each
/// area an operator looks at.
#[test]
fn dashboard_is_well_formed() {
    let dashboard = load_dashboard();
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data-source variable named datasource"
    );
    let mut ids = BTreeSet::new();
    fn check(panels: &Value, ids: &mut BTreeSet<u64>) {
        for panel in panels.as_array().into_iter().flatten() {
            let id = panel["id"].as_u64().expect("panel id");
            assert!(ids.insert(id), "duplicate panel id {id}");
            if panel["type"] != "row" {
                assert_eq!(
                    panel["datasource"]["uid"], "${datasource}",
                    "panel {} uses the datasource variable",
                    panel["title"]
                );
                let targets = panel["targets"].as_array().expect("targets");
                assert!(!targets.is_empty(), "panel {} has targets", panel["title"]);
                for t in targets {
                    assert_eq!(t["datasource"]["uid"], "${datasource}");
                }
            }
            check(&panel["panels"], ids);
        }
    }
    check(&dashboard["panels"], &mut ids);
    let exprs: Vec<String> = dashboard_exprs(&dashboard)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let all = exprs.join("\n");
    for needed in [
        "tern_connections",
        "tern_messages_received_total",
        "histogram_quantile(0.99, sum by (le) (rate(tern_publish_delivery_seconds_bucket",
        "tern_forward_ack_seconds_bucket",
        "tern_raft_leader",
        "tern_raft_term",
        "tern_raft_applied_index",
        "tern_raft_replication_lag",
        "tern_link_connected",
        "tern_link_rtt_seconds",
        "tern_link_backlog",
        "tern_link_resent_total",
        "tern_link_overflow_dropped_total",
    ] {
        assert!(all.contains(needed), "the dashboard shows {needed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_three_node_cluster() {
    let prometheus_bin = require_tool("prometheus");
    let root = unique_temp_dir("tern-prometheus");
    let certs = root.join("certs");
    write_cluster_certs(&certs, NODES);

    let quic: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for id in 0..NODES {
        let dir = root.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir).expect("node dir");
        let (mqtt, http) = (addr(free_port()), addr(free_port()));
        let mut cmd = clustered_serve_command(id, &quic, mqtt, http, &dir.join("data"), &certs);
        // Snapshots early, so that the snapshot counter moves in this short test.
        cmd.args([
            "--set",
            &format!("cluster.raft.snapshot_every_entries={SNAPSHOT_EVERY}"),
        ]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.join("stderr.log")).expect("log file"));
        let guard = ChildGuard::spawn(&mut cmd).expect("spawn tern serve");
        nodes.push(Node {
            _guard: guard,
            mqtt,
            http,
            dir,
        });
    }

    // Prometheus: one job, the three nodes' HTTP ports, each labelled with its node id.
    let prom_dir = root.join("prometheus");
    std::fs::create_dir_all(prom_dir.join("data")).expect("prometheus dir");
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: tern\n    static_configs:\n",
    );
    for (id, n) in nodes.iter().enumerate() {
        config.push_str(&format!(
            "      - targets: ['{}']\n        labels:\n          node: '{id}'\n",
            n.http
        ));
    }
    let config_path = prom_dir.join("prometheus.yml");
    std::fs::write(&config_path, &config).expect("write prometheus.yml");
    let prom_log = prom_dir.join("prometheus.log");
    let prometheus = addr(free_port());
    let mut cmd = Command::new(prometheus_bin);
    cmd.arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={prometheus}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&prom_log).expect("prometheus log"));
    let _prometheus_guard = ChildGuard::spawn(&mut cmd).expect("spawn prometheus");

    let leader = poll(Duration::from_secs(60), || cluster_formed(&nodes))
        .await
        .unwrap_or_else(|| {
            panic!(
                "3 ready nodes, 3 voters, one leader\n{}",
                logs(&nodes, &prom_log)
            )
        });

    // Every target up in Prometheus's eyes.
    let started = Instant::now();
    let targets_up = poll(Duration::from_secs(60), || async {
        let targets = prom_json(prometheus, "/api/v1/targets").await?;
        let active = targets["data"]["activeTargets"].as_array()?;
        let up = active.iter().filter(|t| t["health"] == "up").count();
        (active.len() == NODES && up == NODES).then_some(())
    })
    .await;
    assert!(
        targets_up.is_some(),
        "all 3 targets up in Prometheus\n{}",
        logs(&nodes, &prom_log)
    );
    eprintln!(
        "prometheus: all targets up {:?} after the cluster formed",
        started.elapsed()
    );

    // Raft as Prometheus sees it: every node has a commit index, one node is the leader,
    // and every node names the same leader.
    let commit = poll(Duration::from_secs(30), || async {
        let samples = query(prometheus, "tern_raft_commit_index").await.ok()?;
        (samples.len() == NODES && samples.iter().all(|(_, v)| *v >= 1.0)).then_some(samples)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "tern_raft_commit_index of 3 nodes\n{}",
            logs(&nodes, &prom_log)
        )
    });
    let leaders = poll(Duration::from_secs(30), || async {
        let v = one_value(prometheus, "sum(tern_raft_is_leader)").await?;
        (v == 1.0).then_some(v)
    })
    .await;
    assert_eq!(leaders, Some(1.0), "exactly one leader in Prometheus");
    let agreed = poll(Duration::from_secs(30), || async {
        let samples = query(prometheus, "tern_raft_leader == 1").await.ok()?;
        let ids: BTreeSet<_> = samples
            .iter()
            .filter_map(|(m, _)| m["node_id"].as_str().map(str::to_string))
            .collect();
        (samples.len() == NODES && ids.len() == 1).then(|| ids.into_iter().next())?
    })
    .await;
    assert_eq!(
        agreed,
        Some(leader.to_string()),
        "all 3 nodes report the leader the cluster API names"
    );
    eprintln!(
        "prometheus: commit index per node {:?}",
        commit
            .iter()
            .map(|(m, v)| (m["node"].as_str().unwrap_or("?").to_string(), *v))
            .collect::<Vec<_>>()
    );

    // A subscriber on node 2, a publisher on node 0; the route must reach node 0 first.
    let mut sub = RawClient::v5(nodes[2].mqtt, "prom-sub").await;
    sub.subscribe("prom/#", QoS::AtLeastOnce).await;
    let pub_http = nodes[0].http;
    let routed = poll(Duration::from_secs(30), || async move {
        let routes = cluster_status(pub_http).await?["route_count"].as_u64()?;
        (routes >= 1).then_some(())
    })
    .await;
    assert!(
        routed.is_some(),
        "the route on node 0\n{}",
        logs(&nodes, &prom_log)
    );
    let receiving = tokio::spawn(async move {
        let got = sub.recv_publishes(MESSAGES as usize).await;
        sub.disconnect().await;
        got.len()
    });
    let mut publisher = RawClient::v311(nodes[0].mqtt, "prom-pub").await;
    let sent_at = Instant::now();
    for i in 0..MESSAGES {
        publisher
            .publish("prom/x", format!("m{i}"), QoS::AtLeastOnce, false)
            .await;
    }
    let received = receiving.await.expect("subscriber task");
    assert_eq!(received, MESSAGES as usize);
    eprintln!(
        "{MESSAGES} QoS 1 messages node 0 -> node 2 in {:?}",
        sent_at.elapsed()
    );

    // The counters reach exactly what was sent, as Prometheus scraped them.
    let expected = MESSAGES as f64;
    let scraped_at = Instant::now();
    let checks = [
        (
            "tern_messages_received_total{node=\"0\",qos=\"1\"}".to_string(),
            "node 0 received",
        ),
        (
            "tern_messages_delivered_total{node=\"2\",qos=\"1\"}".to_string(),
            "node 2 delivered",
        ),
        (
            "tern_forward_ack_seconds_count{node=\"0\",peer=\"2\"}".to_string(),
            "node 0's acknowledged forwards to node 2",
        ),
    ];
    for (promql, what) in &checks {
        let value = poll(Duration::from_secs(30), || async {
            let v = one_value(prometheus, promql).await?;
            (v >= expected).then_some(v)
        })
        .await;
        assert_eq!(
            value,
            Some(expected),
            "{what} ({promql}) in Prometheus\n{}",
            logs(&nodes, &prom_log)
        );
    }
    eprintln!(
        "prometheus: counters at {MESSAGES} {:?} after the last message",
        scraped_at.elapsed()
    );
    for quantile in ["0.5", "0.99"] {
        let promql = format!(
            "histogram_quantile({quantile}, sum by (le) (tern_forward_ack_seconds_bucket{{node=\"0\",peer=\"2\"}}))"
        );
        let v = one_value(prometheus, &promql).await;
        eprintln!("forward ack p{quantile} node 0 -> 2: {v:?} s");
        assert!(v.is_some_and(|v| v > 0.0 && v < 10.0), "{promql}: {v:?}");
        let promql = format!(
            "histogram_quantile({quantile}, sum by (le) (tern_publish_delivery_seconds_bucket{{node=\"2\"}}))"
        );
        let v = one_value(prometheus, &promql).await;
        eprintln!("delivery p{quantile} on node 2: {v:?} s");
    }
    // The subscription and the two clients' claims were proposed, batched; links carry
    // frames; with a snapshot every few entries, snapshots were built; the nodes report
    // their sockets' drops.
    for (promql, min) in [
        ("sum(tern_raft_proposals_total)", 1.0),
        ("sum(tern_raft_proposal_batch_commands_count)", 1.0),
        ("tern_link_sent_frames_total{node=\"0\",peer=\"2\"}", 1.0),
        (
            "tern_link_received_frames_total{node=\"2\",peer=\"0\"}",
            1.0,
        ),
        ("sum(tern_raft_snapshots_total{source=\"built\"})", 1.0),
        // Every node reads its cluster socket's drop count from the kernel.
        ("count(tern_cluster_udp_receive_drops_total)", 3.0),
        ("count(tern_cluster_forward_malformed_frames_total)", 3.0),
    ] {
        let value = poll(Duration::from_secs(30), || async {
            let v = one_value(prometheus, promql).await?;
            (v >= min).then_some(v)
        })
        .await;
        eprintln!("prometheus: {promql} = {value:?}");
        assert!(
            value.is_some(),
            "{promql} >= {min}\n{}",
            logs(&nodes, &prom_log)
        );
    }

    // A malformed packet, so that tern_malformed_packets_total has a series too.
    let mut bad = tokio::net::TcpStream::connect(nodes[1].mqtt)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut bad, &[0x10, 0xff, 0xff, 0xff, 0xff, 0x01])
        .await
        .expect("write garbage");
    let node1 = nodes[1].http;
    let texts = poll(Duration::from_secs(30), || async {
        let mut texts = Vec::new();
        for n in &nodes {
            let (code, text) = http_get(n.http, "/metrics").await?;
            (code == 200).then_some(())?;
            texts.push(text);
        }
        let (_, t1) = http_get(node1, "/metrics").await?;
        t1.contains("tern_malformed_packets_total{")
            .then_some(texts)
    })
    .await
    .expect("the malformed packet counted on node 1");
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for text in &texts {
        let (s, f) = exposed_names(text);
        samples.extend(s);
        families.extend(f);
    }
    // The malformed series may have appeared after node 1's text in `texts` was read.
    samples.insert("tern_malformed_packets_total".into());

    // docs/operations.md lists every family the nodes expose.
    let docs = std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("docs");
    let undocumented: Vec<_> = families
        .iter()
        .filter(|f| !docs.contains(&format!("`{f}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/operations.md does not list {undocumented:?}"
    );

    // The dashboard: every metric it names is exposed, every expression is valid PromQL.
    let dashboard = load_dashboard();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 30, "the dashboard has its panels");
    let mut missing = Vec::new();
    for (title, expr) in &exprs {
        for name in metric_names(expr) {
            if !samples.contains(&name) {
                missing.push(format!("{name} (panel {title:?})"));
            }
        }
        let promql = substitute_variables(expr);
        if let Err(e) = query(prometheus, &promql).await {
            panic!("panel {title:?}: {promql} fails in Prometheus: {e}");
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard metrics missing from /metrics: {missing:?}"
    );
    let used: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    eprintln!(
        "dashboard: {} expressions, {} metric names, all exposed; {} families exposed",
        exprs.len(),
        used.len(),
        families.len()
    );
    let _ = std::fs::remove_dir_all(&root);
}
