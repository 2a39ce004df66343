//! Interop with the Eclipse Paho Go client: examples/go-paho, the program from the talk
//! this project grew from, built with Debian's Go packages and run against a live node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tern_tests::external::{repo_root, require_tool, run};
use tern_tests::{unique_temp_dir, TestNode};
use tokio::process::Command;

/// Builds examples/go-paho into a fresh temp dir (GOPATH mode, Debian's paho package).
/// The Go build cache lives under the target dir so reruns are quick.
async fn build_go_paho() -> PathBuf {
    let go = require_tool("go");
    let out_dir = unique_temp_dir("go-paho");
    let bin = out_dir.join("go-paho");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-build-cache");
    std::fs::create_dir_all(&cache).expect("create GOCACHE");
    let mut cmd = Command::new(go);
    cmd.current_dir(repo_root())
        .args(["build", "-o"])
        .arg(&bin)
        .arg("./examples/go-paho")
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOCACHE", &cache)
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0");
    let out = run(&mut cmd, Duration::from_secs(300)).await;
    assert!(
        out.success(),
        "go build of examples/go-paho failed (needs golang-go and golang-github-eclipse-paho.mqtt.golang-dev; \
         ./scripts/test installs them)\n{}",
        out.describe()
    );
    bin
}

async fn go_round_trip(qos: u8, n: usize) {
    let bin = build_go_paho().await;
    let node = TestNode::start().await;
    let topic = format!("go/paho/q{qos}/{}", std::process::id());
    let mut cmd = Command::new(&bin);
    cmd.arg("-broker")
        .arg(format!("tcp://{}", node.mqtt_addr()))
        .args([
            "-topic",
            &topic,
            "-n",
            &n.to_string(),
            "-qos",
            &qos.to_string(),
            "-timeout",
            "30s",
        ]);
    let out = run(&mut cmd, Duration::from_secs(60)).await;
    let _ = std::fs::remove_dir_all(bin.parent().expect("temp dir"));
    assert!(
        out.success(),
        "go-paho QoS {qos} failed\n{}",
        out.describe()
    );

    let mut counts = BTreeMap::<String, usize>::new();
    for line in out.stdout.lines() {
        if let Some(rest) = line.strip_prefix("received ") {
            let (t, payload) = rest.split_once(' ').unwrap_or((rest, ""));
            assert_eq!(t, topic, "message on an unexpected topic: {line}");
            *counts.entry(payload.to_string()).or_default() += 1;
        }
    }
    let want: BTreeMap<String, usize> = (0..n).map(|i| (format!("message-{i}"), 1)).collect();
    assert_eq!(
        counts,
        want,
        "QoS {qos}: every message must arrive exactly once\n{}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&format!("done {n}")),
        "no 'done' line\n{}",
        out.describe()
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_paho_qos0() {
    go_round_trip(0, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_paho_qos1() {
    go_round_trip(1, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_paho_qos2() {
    go_round_trip(2, 100).await;
}
