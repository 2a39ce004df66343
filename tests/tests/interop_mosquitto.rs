//! Interop with Debian's mosquitto command-line clients (mosquitto_sub, mosquitto_pub),
//! in MQTT 3.1.1 and 5.0 against a live node.
//!
//! A subscriber runs with `-d` so the test can wait for its "Subscribed" line before
//! publishing, and with `-F` so each message is one line the test can parse.

use std::time::Duration;

use tern_broker::{AclAccess, AclDecision, AclRule, UserEntry};
use tern_tests::external::{line_buffered, run, Lines, Output};
use tern_tests::TestNode;
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(30);
/// Each message line: MSG|qos|retain|topic|payload
const FORMAT: &str = "MSG|%q|%r|%t|%p";

#[derive(Clone, Copy, Debug)]
enum V {
    V311,
    V5,
}

impl V {
    fn flag(self) -> &'static str {
        match self {
            V::V311 => "mqttv311",
            V::V5 => "mqttv5",
        }
    }
}

fn unique_topic(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}/{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn base(tool: &str, port: u16, v: V) -> Command {
    let mut cmd = line_buffered(tool);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", v.flag()]);
    cmd
}

/// Starts mosquitto_sub and waits until its subscription is acknowledged.
async fn subscribe(port: u16, v: V, args: &[&str]) -> Lines {
    let mut cmd = base("mosquitto_sub", port, v);
    cmd.args(["-d", "-W", "30"]).args(args);
    let mut sub = Lines::spawn(&mut cmd);
    let line = sub
        .wait_line(WAIT, |l| l.starts_with("Subscribed (mid:"))
        .await;
    if line.is_none() {
        panic!(
            "mosquitto_sub never reported its subscription\n{}",
            sub.finish(WAIT).await.describe()
        );
    }
    sub
}

/// The formatted message lines of a subscriber's output.
fn messages(out: &Output) -> Vec<String> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("MSG|"))
        .map(str::to_string)
        .collect()
}

async fn publish(port: u16, v: V, args: &[&str]) -> Output {
    let mut cmd = base("mosquitto_pub", port, v);
    cmd.args(args);
    run(&mut cmd, WAIT).await
}

/// Publishes one message per line of `lines` with `mosquitto_pub -l`.
async fn publish_lines(port: u16, v: V, args: &[&str], lines: &[String]) -> Output {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;
    let mut cmd = base("mosquitto_pub", port, v);
    cmd.arg("-l")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn mosquitto_pub");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = lines.join("\n") + "\n";
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("write to mosquitto_pub");
    drop(stdin);
    match tokio::time::timeout(WAIT, child.wait_with_output()).await {
        Ok(Ok(out)) => Output {
            status: Some(out.status),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("mosquitto_pub: {e}"),
        Err(_) => panic!("mosquitto_pub -l did not finish within {WAIT:?}"),
    }
}

async fn qos_round_trip(v: V) {
    let node = TestNode::start().await;
    let port = node.mqtt_port();
    const N: usize = 20;
    for qos in 0..=2u8 {
        for sub_qos in [2u8, 1] {
            let topic = unique_topic("mosq/rt");
            let count = (N + 1).to_string();
            let q = sub_qos.to_string();
            let sub = subscribe(
                port,
                v,
                &["-t", &topic, "-q", &q, "-C", &count, "-F", FORMAT],
            )
            .await;
            let mut lines: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
            lines.push("end".to_string());
            let pubbed =
                publish_lines(port, v, &["-t", &topic, "-q", &qos.to_string()], &lines).await;
            assert!(
                pubbed.success(),
                "{v:?} mosquitto_pub -q {qos} failed\n{}",
                pubbed.describe()
            );
            let out = sub.finish(WAIT).await;
            assert!(
                out.success(),
                "{v:?} QoS {qos}: mosquitto_sub did not get {count} messages\n{}",
                out.describe()
            );
            let want_qos = qos.min(sub_qos);
            let want: Vec<String> = lines
                .iter()
                .map(|p| format!("MSG|{want_qos}|0|{topic}|{p}"))
                .collect();
            assert_eq!(
                messages(&out),
                want,
                "{v:?}: publish QoS {qos} to a QoS {sub_qos} subscriber: every message once, in order, at QoS {want_qos}"
            );
        }
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_round_trip_v311() {
    qos_round_trip(V::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_round_trip_v5() {
    qos_round_trip(V::V5).await;
}

async fn retained(v: V) {
    let node = TestNode::start().await;
    let port = node.mqtt_port();
    let topic = unique_topic("mosq/retained");

    for payload in ["first", "second"] {
        let out = publish(port, v, &["-t", &topic, "-q", "1", "-r", "-m", payload]).await;
        assert!(out.success(), "retained publish failed\n{}", out.describe());
    }
    // A late subscriber gets the last retained message, flagged retained.
    let sub = subscribe(port, v, &["-t", &topic, "-q", "1", "-C", "1", "-F", FORMAT]).await;
    let out = sub.finish(WAIT).await;
    assert!(
        out.success(),
        "{v:?}: late subscriber got no retained message\n{}",
        out.describe()
    );
    assert_eq!(
        messages(&out),
        vec![format!("MSG|1|1|{topic}|second")],
        "{v:?}: the last retained message"
    );

    // An empty retained message clears it: a new subscriber's first message is the marker.
    let out = publish(port, v, &["-t", &topic, "-q", "1", "-r", "-n"]).await;
    assert!(out.success(), "clearing publish failed\n{}", out.describe());
    let sub = subscribe(port, v, &["-t", &topic, "-q", "1", "-C", "1", "-F", FORMAT]).await;
    let out = publish(port, v, &["-t", &topic, "-q", "1", "-m", "marker"]).await;
    assert!(out.success(), "marker publish failed\n{}", out.describe());
    let out = sub.finish(WAIT).await;
    assert_eq!(
        messages(&out),
        vec![format!("MSG|1|0|{topic}|marker")],
        "{v:?}: after clearing, no retained message may arrive\n{}",
        out.describe()
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_and_cleared_v311() {
    retained(V::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_and_cleared_v5() {
    retained(V::V5).await;
}

const PROPS: &[&str] = &[
    "-D",
    "publish",
    "user-property",
    "k",
    "v",
    "-D",
    "publish",
    "user-property",
    "lang",
    "en",
    "-D",
    "publish",
    "content-type",
    "text/plain",
    "-D",
    "publish",
    "response-topic",
    "reply/here",
    "-D",
    "publish",
    "correlation-data",
    "corr-42",
    "-D",
    "publish",
    "payload-format-indicator",
    "1",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_reach_a_v5_subscriber() {
    let node = TestNode::start().await;
    let port = node.mqtt_port();
    let topic = unique_topic("mosq/props");
    let sub = subscribe(
        port,
        V::V5,
        &[
            "-t",
            &topic,
            "-q",
            "1",
            "-C",
            "1",
            "-F",
            "MSG|%t|%p|%P|%C|%R|%D|%F",
        ],
    )
    .await;
    let mut args = vec!["-t", topic.as_str(), "-q", "1", "-m", "hello"];
    args.extend_from_slice(PROPS);
    let out = publish(port, V::V5, &args).await;
    assert!(
        out.success(),
        "v5 publish with properties failed\n{}",
        out.describe()
    );
    let out = sub.finish(WAIT).await;
    assert!(
        out.success(),
        "v5 subscriber got nothing\n{}",
        out.describe()
    );
    assert_eq!(
        messages(&out),
        vec![format!(
            "MSG|{topic}|hello|k:v lang:en|text/plain|reply/here|corr-42|1"
        )]
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_publish_with_properties_reaches_a_v311_subscriber() {
    let node = TestNode::start().await;
    let port = node.mqtt_port();
    let topic = unique_topic("mosq/props311");
    let sub = subscribe(
        port,
        V::V311,
        &["-t", &topic, "-q", "1", "-C", "2", "-F", FORMAT],
    )
    .await;
    let mut args = vec!["-t", topic.as_str(), "-q", "1", "-m", "with-props"];
    args.extend_from_slice(PROPS);
    let out = publish(port, V::V5, &args).await;
    assert!(out.success(), "v5 publish failed\n{}", out.describe());
    // A second, plain message shows the 3.1.1 connection survived the first.
    let out = publish(port, V::V311, &["-t", &topic, "-q", "1", "-m", "plain"]).await;
    assert!(out.success(), "v3.1.1 publish failed\n{}", out.describe());
    let out = sub.finish(WAIT).await;
    assert!(
        out.success(),
        "v3.1.1 subscriber failed\n{}",
        out.describe()
    );
    assert_eq!(
        messages(&out),
        vec![
            format!("MSG|1|0|{topic}|with-props"),
            format!("MSG|1|0|{topic}|plain")
        ]
    );
    node.shutdown().await;
}

async fn auth_node() -> TestNode {
    let hash = tern_broker::auth::hash_password("s3cret");
    TestNode::start_with(move |cfg| {
        cfg.auth.allow_anonymous = false;
        cfg.auth.users = vec![UserEntry {
            username: "alice".into(),
            password_hash: hash,
        }];
        cfg.auth.acl = vec![AclRule {
            username: Some("alice".into()),
            client_id: None,
            topic: "secret/#".into(),
            access: AclAccess::Subscribe,
            decision: AclDecision::Deny,
        }];
        cfg.auth.acl_default = AclDecision::Allow;
    })
    .await
}

async fn auth(v: V) {
    let node = auth_node().await;
    let port = node.mqtt_port();
    let topic = unique_topic("open");
    let creds = ["-u", "alice", "-P", "s3cret"];

    // The right password: a round trip works.
    let mut args = creds.to_vec();
    args.extend(["-t", &topic, "-q", "1", "-C", "1", "-F", FORMAT]);
    let sub = subscribe(port, v, &args).await;
    let mut args = creds.to_vec();
    args.extend(["-t", &topic, "-q", "1", "-m", "authed"]);
    let out = publish(port, v, &args).await;
    assert!(
        out.success(),
        "{v:?}: publish with the right password failed\n{}",
        out.describe()
    );
    let out = sub.finish(WAIT).await;
    assert_eq!(
        messages(&out),
        vec![format!("MSG|1|0|{topic}|authed")],
        "{v:?}\n{}",
        out.describe()
    );

    // A wrong password and no credentials are refused at CONNACK; mosquitto_pub exits with
    // the CONNACK code: 4/5 in 3.1.1, 0x86/0x87 in 5.0.
    let refused: &[i32] = match v {
        V::V311 => &[4, 5],
        V::V5 => &[0x86, 0x87],
    };
    let out = publish(
        port,
        v,
        &["-u", "alice", "-P", "wrong", "-t", &topic, "-m", "x"],
    )
    .await;
    assert!(
        out.code().is_some_and(|c| refused.contains(&c)),
        "{v:?}: wrong password must be refused with {refused:?}\n{}",
        out.describe()
    );
    let out = publish(
        port,
        v,
        &["-u", "mallory", "-P", "s3cret", "-t", &topic, "-m", "x"],
    )
    .await;
    assert!(
        out.code().is_some_and(|c| refused.contains(&c)),
        "{v:?}: unknown user must be refused\n{}",
        out.describe()
    );
    let out = publish(port, v, &["-t", &topic, "-m", "x"]).await;
    assert!(
        out.code().is_some_and(|c| refused.contains(&c)),
        "{v:?}: anonymous must be refused\n{}",
        out.describe()
    );

    // An ACL-denied subscription: a failure code in SUBACK, which mosquitto_sub reports.
    let mut cmd = base("mosquitto_sub", port, v);
    cmd.args(creds)
        .args(["-d", "-W", "20", "-t", "secret/plans", "-q", "1"]);
    let out = run(&mut cmd, WAIT).await;
    // Any failure code (>= 0x80) is a refusal: 0x80 (unspecified) or, in 5.0, also 0x87
    // (not authorized).
    let granted = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Subscribed (mid: 1): "))
        .and_then(|code| code.trim().parse::<u8>().ok());
    let allowed: &[u8] = match v {
        V::V311 => &[0x80],
        V::V5 => &[0x80, 0x87],
    };
    assert!(
        granted.is_some_and(|c| allowed.contains(&c)),
        "{v:?}: want SUBACK {allowed:02X?} for an ACL-denied filter, got {granted:?}\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("All subscription requests were denied"),
        "{v:?}: mosquitto_sub should report the denied subscription\n{}",
        out.describe()
    );
    assert!(
        out.status.is_some() && out.code() != Some(27),
        "{v:?}: mosquitto_sub kept running after the denial\n{}",
        out.describe()
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_acl_v311() {
    auth(V::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_acl_v5() {
    auth(V::V5).await;
}
