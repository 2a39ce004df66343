//! The real `tern` binary: `tern serve` on chosen ports, its probes, a mosquitto round
//! trip, graceful stop on SIGTERM/SIGINT (v5 clients get DISCONNECT 0x8B, exit status 0),
//! configuration errors (exit 2, the key named), environment variables, `tern passwd`.
//!
//! Needs the binary built first (`cargo build -p tern`; ./scripts/test does it).

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tern_tests::external::raw::{self, Conn, Next};
use tern_tests::external::{free_port, http_get, line_buffered, require_tool, run, Lines, Output};
use tern_tests::{tern_binary, unique_temp_dir, wait_until, ChildGuard};
use tokio::process::Command;

/// A `tern serve` process and where it listens.
struct Served {
    guard: ChildGuard,
    mqtt: SocketAddr,
    http: SocketAddr,
    dir: PathBuf,
}

impl Served {
    fn log(&self) -> String {
        let out = std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default();
        let err = std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default();
        format!("--- tern stdout ---\n{out}\n--- tern stderr ---\n{err}")
    }

    fn pid(&self) -> u32 {
        self.guard.child.id()
    }

    /// Waits for the process to exit; None if it is still running after `timeout`.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        let child = &mut self.guard.child;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        })
        .await;
        status
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.guard.child.kill();
        let _ = self.guard.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `tern` command with no `TERN_...` variables inherited from the test's environment.
fn tern_std_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(tern_binary());
    for (name, _) in std::env::vars() {
        if name.to_ascii_uppercase().starts_with("TERN_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

fn tern_command() -> Command {
    Command::from(tern_std_command())
}

/// Starts `tern serve` on free ports, retrying once if a port was taken in between.
/// `mqtt_by_env` passes the MQTT address as TERN_MQTT__LISTEN instead of the flag.
async fn serve(mqtt_by_env: bool, extra: &[&str]) -> Served {
    let mut failures = Vec::new();
    for _attempt in 0..2 {
        let dir = unique_temp_dir("tern-bin");
        let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = tern_std_command();
        cmd.arg("serve")
            .arg("--http-listen")
            .arg(http.to_string())
            .arg("--data-dir")
            .arg(dir.join("data"));
        if mqtt_by_env {
            cmd.env("TERN_MQTT__LISTEN", mqtt.to_string());
        } else {
            cmd.arg("--mqtt-listen").arg(mqtt.to_string());
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("stdout.log")).expect("log file"))
            .stderr(File::create(dir.join("stderr.log")).expect("log file"));
        let guard = ChildGuard::spawn(&mut cmd).expect("spawn tern serve");
        let mut served = Served {
            guard,
            mqtt,
            http,
            dir,
        };
        if wait_healthy(&mut served).await {
            return served;
        }
        failures.push(served.log());
        // Dropping `served` kills the process and removes its directory.
    }
    panic!(
        "tern serve did not become healthy (two attempts)\n{}",
        failures.join("\n=====\n")
    );
}

/// Waits until /healthz answers 200 and the MQTT port accepts connections; false if the
/// process exited first (a port taken in between) or 30 s passed.
async fn wait_healthy(served: &mut Served) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if served.guard.child.try_wait().ok().flatten().is_some() {
            return false;
        }
        if matches!(http_get(served.http, "/healthz").await, Some((200, _)))
            && tokio::net::TcpStream::connect(served.mqtt).await.is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "kill -{signal} {pid} failed: {status:?}"
    );
}

async fn v5_connected(addr: SocketAddr) -> Conn {
    let mut conn = Conn::open(addr).await.expect("connect");
    let connack = conn
        .handshake(&raw::connect_v5("cli-v5", 60, &[]))
        .await
        .expect("CONNACK");
    assert_eq!(connack.reason_code(), Some(0), "v5 CONNACK {connack}");
    conn
}

async fn v311_connected(addr: SocketAddr) -> Conn {
    let mut conn = Conn::open(addr).await.expect("connect");
    let connack = conn
        .handshake(&raw::connect_v311("cli-v311", 60))
        .await
        .expect("CONNACK");
    assert_eq!(connack.reason_code(), Some(0), "3.1.1 CONNACK {connack}");
    conn
}

/// Sends the signal and checks the graceful stop: the v5 client gets DISCONNECT 0x8B then
/// the close, the 3.1.1 client a plain close, and the process exits 0.
async fn graceful_stop(mut served: Served, signal: &str) {
    let mut v5 = v5_connected(served.mqtt).await;
    let v311 = v311_connected(served.mqtt).await;
    send_signal(served.pid(), signal);

    match v5.next(Duration::from_secs(10)).await {
        Next::Packet(p) => {
            assert!(
                p.kind() == raw::DISCONNECT && p.reason_code() == Some(0x8B),
                "{signal}: v5 client got {p}, want DISCONNECT 0x8B\n{}",
                served.log()
            );
        }
        other => panic!(
            "{signal}: v5 client got {other:?}, want DISCONNECT 0x8B\n{}",
            served.log()
        ),
    }
    let rest = v5.read_until_closed(Duration::from_secs(10)).await;
    assert!(
        rest.closed() && rest.packets.is_empty(),
        "{signal}: after DISCONNECT: {}",
        rest.describe()
    );
    let closure = v311.read_until_closed(Duration::from_secs(10)).await;
    assert!(
        closure.closed() && closure.packets.is_empty(),
        "{signal}: 3.1.1 client: {}",
        closure.describe()
    );

    let status = served.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "{signal}: tern serve should exit 0 within 15 s, got {status:?}\n{}",
        served.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_probes_and_mqtt_then_stops_on_sigterm() {
    let served = serve(false, &[]).await;

    let health = http_get(served.http, "/healthz").await;
    assert!(matches!(health, Some((200, _))), "/healthz: {health:?}");
    // A single node is ready once it has started; allow it a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let ready = loop {
        let ready = http_get(served.http, "/readyz").await;
        if matches!(ready, Some((200, _))) || tokio::time::Instant::now() >= deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        matches!(ready, Some((200, _))),
        "/readyz of a single node: {ready:?}\n{}",
        served.log()
    );

    // A mosquitto round trip through the real binary.
    let port = served.mqtt.port().to_string();
    let mut sub_cmd = line_buffered("mosquitto_sub");
    sub_cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-t",
        "cli/rt",
        "-q",
        "1",
        "-C",
        "1",
        "-W",
        "30",
        "-d",
    ]);
    let mut sub = Lines::spawn(&mut sub_cmd);
    assert!(
        sub.wait_line(Duration::from_secs(30), |l| l
            .starts_with("Subscribed (mid:"))
            .await
            .is_some(),
        "mosquitto_sub did not subscribe\n{}",
        served.log()
    );
    let mut pub_cmd = Command::new(require_tool("mosquitto_pub"));
    pub_cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "mqttv311",
        "-t",
        "cli/rt",
        "-q",
        "1",
        "-m",
        "through-the-binary",
    ]);
    let out = run(&mut pub_cmd, Duration::from_secs(30)).await;
    assert!(out.success(), "mosquitto_pub\n{}", out.describe());
    let out = sub.finish(Duration::from_secs(30)).await;
    assert!(
        out.success() && out.stdout.lines().any(|l| l == "through-the-binary"),
        "mosquitto_sub\n{}",
        out.describe()
    );

    graceful_stop(served, "TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stops_gracefully_on_sigint() {
    let served = serve(false, &[]).await;
    graceful_stop(served, "INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_listen_from_environment_is_honoured() {
    let served = serve(true, &[]).await;
    let mut conn = v311_connected(served.mqtt).await;
    let _ = conn.send(&raw::disconnect()).await;
}

/// The properties of a v5 CONNACK, as (identifier, value bytes).
fn connack_properties(connack: &raw::Packet) -> Vec<(u8, Vec<u8>)> {
    let body = &connack.body;
    let mut out = Vec::new();
    let mut i = 2;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let Some(&b) = body.get(i) else { return out };
        len |= ((b & 0x7F) as usize) << shift;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let Some(props) = body.get(i..i + len) else {
        return out;
    };
    let u16_at = |k: usize| {
        props
            .get(k..k + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    };
    let mut j = 0;
    while j < props.len() {
        let id = props[j];
        j += 1;
        let size = match id {
            0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Some(1),
            0x13 | 0x21 | 0x22 => Some(2),
            0x11 | 0x27 => Some(4),
            0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => u16_at(j).map(|n| 2 + n),
            0x26 => u16_at(j).and_then(|k| u16_at(j + 2 + k).map(|v| 2 + k + 2 + v)),
            _ => None,
        };
        let Some(value) = size.and_then(|n| props.get(j..j + n)) else {
            return out;
        };
        out.push((id, value.to_vec()));
        j += value.len();
    }
    out
}

fn property(props: &[(u8, Vec<u8>)], id: u8) -> Option<u64> {
    props
        .iter()
        .find(|(i, _)| *i == id)
        .map(|(_, v)| v.iter().fold(0u64, |acc, b| acc << 8 | *b as u64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_and_set_flag_are_honoured() {
    let dir = unique_temp_dir("tern-cfg");
    let file = dir.join("tern.toml");
    std::fs::write(
        &file,
        "[broker]\nmax_packet_size = 4096\nmax_keep_alive = 30\n",
    )
    .unwrap();
    let served = serve(
        false,
        &[
            "--config",
            file.to_str().unwrap(),
            "--set",
            "broker.max_packet_size=2048",
        ],
    )
    .await;
    let mut conn = Conn::open(served.mqtt).await.expect("connect");
    let connack = conn
        .handshake(&raw::connect_v5("cfg", 60, &[]))
        .await
        .expect("CONNACK");
    assert_eq!(connack.reason_code(), Some(0));
    let props = connack_properties(&connack);
    assert_eq!(
        property(&props, 0x13),
        Some(30),
        "the file's broker.max_keep_alive = 30 must cap a keep-alive of 60 (Server Keep Alive): {props:02X?}"
    );
    assert_eq!(
        property(&props, 0x27),
        Some(2048),
        "--set must override the file's broker.max_packet_size (Maximum Packet Size): {props:02X?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `node.worker_threads` sizes the runtime: the start-up line reports the number in use
/// (the default here would be the machine's core count, 2 in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_setting_sizes_the_runtime() {
    let served = serve(false, &["--set", "node.worker_threads=3"]).await;
    let _client = v5_connected(served.mqtt).await;
    let log = served.log();
    let started = log
        .lines()
        .find(|line| line.contains("starting tern"))
        .unwrap_or_else(|| panic!("no start-up line\n{log}"));
    assert!(started.contains("worker_threads=3"), "{started}");
}

async fn expect_config_error(cmd: &mut Command, what: &str, names: &[&str]) -> Output {
    let out = run(cmd, Duration::from_secs(20)).await;
    assert_eq!(
        out.code(),
        Some(2),
        "{what}: tern serve should exit 2\n{}",
        out.describe()
    );
    for name in names {
        assert!(
            out.stderr.contains(name),
            "{what}: stderr should name {name:?}\n{}",
            out.describe()
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_in_config_file_exits_2_naming_key_and_file() {
    let dir = unique_temp_dir("tern-badcfg");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[broker]\nmax_packet_sizee = 5\n").unwrap();
    let mut cmd = tern_command();
    cmd.arg("serve")
        .arg("--config")
        .arg(&file)
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("data"));
    expect_config_error(&mut cmd, "unknown key", &["max_packet_sizee", "bad.toml"]).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_environment_value_exits_2_naming_key() {
    let dir = unique_temp_dir("tern-badenv");
    let mut cmd = tern_command();
    cmd.env("TERN_BROKER__MAX_PACKET_SIZE", "abc")
        .arg("serve")
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.join("data"));
    expect_config_error(
        &mut cmd,
        "bad env value",
        &["max_packet_size", "TERN_BROKER__MAX_PACKET_SIZE"],
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwd_prints_an_argon2id_hash_that_verifies() {
    let mut cmd = tern_command();
    cmd.args(["passwd", "--password", "x"]);
    let out = run(&mut cmd, Duration::from_secs(20)).await;
    assert!(out.success(), "tern passwd\n{}", out.describe());
    let hash = out.stdout.trim();
    assert!(
        hash.starts_with("$argon2id$"),
        "want a $argon2id$ PHC string, got {hash:?}"
    );

    use tern_broker::auth::{AuthOutcome, Authenticator};
    let config = tern_broker::AuthConfig {
        allow_anonymous: false,
        users: vec![tern_broker::UserEntry {
            username: "u".into(),
            password_hash: hash.to_string(),
        }],
        ..Default::default()
    };
    let auth = Authenticator::new(&config).expect("the printed hash parses");
    assert!(matches!(
        auth.authenticate(Some("u"), Some(b"x")),
        AuthOutcome::Allowed
    ));
    assert!(matches!(
        auth.authenticate(Some("u"), Some(b"y")),
        AuthOutcome::BadCredentials
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_writes_a_local_cluster_set_and_refuses_to_overwrite_it() {
    let dir = unique_temp_dir("tern-cert");
    let certs = dir.join("certs");
    let cert = |force: bool| {
        let mut cmd = tern_command();
        cmd.args(["cert", "--nodes", "0,1,2", "--dir"]).arg(&certs);
        if force {
            cmd.arg("--force");
        }
        cmd
    };
    let out = run(&mut cert(false), Duration::from_secs(30)).await;
    assert!(out.success(), "tern cert\n{}", out.describe());
    for name in [
        "ca.pem",
        "ca.key",
        "node-0.pem",
        "node-0.key",
        "node-1.pem",
        "node-1.key",
        "node-2.pem",
        "node-2.key",
    ] {
        let path = certs.join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            text.contains("-----BEGIN "),
            "{} should hold PEM\n{}",
            path.display(),
            out.describe()
        );
        assert!(
            out.stdout.contains(name),
            "stdout should list {name}\n{}",
            out.describe()
        );
    }
    for key in [
        "cluster.tls.ca_cert",
        "cluster.tls.node_cert",
        "cluster.tls.node_key",
    ] {
        assert!(
            out.stdout.contains(key),
            "stdout should name {key}\n{}",
            out.describe()
        );
    }
    let before = std::fs::read_to_string(certs.join("ca.pem")).unwrap();

    let again = run(&mut cert(false), Duration::from_secs(30)).await;
    assert_eq!(
        again.code(),
        Some(1),
        "second tern cert\n{}",
        again.describe()
    );
    assert!(
        again.stderr.contains("--force") && again.stderr.contains("already exists"),
        "{}",
        again.describe()
    );
    assert_eq!(
        std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
        before,
        "nothing is overwritten without --force"
    );

    let forced = run(&mut cert(true), Duration::from_secs(30)).await;
    assert!(forced.success(), "tern cert --force\n{}", forced.describe());
    assert_ne!(
        std::fs::read_to_string(certs.join("ca.pem")).unwrap(),
        before,
        "--force writes a new CA"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_against_a_single_node_exit_1_with_the_reason() {
    let served = serve(false, &[]).await;
    let http = served.http.to_string();
    for args in [
        vec!["cluster", "status", "--http", &http],
        vec!["cluster", "status", "--json", "--http", &http],
        vec!["cluster", "leave", "--http", &http],
        vec!["cluster", "remove", "3", "--http", &http],
    ] {
        let mut cmd = tern_command();
        cmd.args(&args);
        let out = run(&mut cmd, Duration::from_secs(30)).await;
        assert_eq!(out.code(), Some(1), "tern {args:?}\n{}", out.describe());
        assert!(
            out.stderr.contains("clustering is not enabled") && out.stderr.contains("404"),
            "tern {args:?} should say why\n{}",
            out.describe()
        );
    }

    let closed = format!("127.0.0.1:{}", free_port());
    let mut cmd = tern_command();
    cmd.args(["cluster", "status", "--http", &closed]);
    let out = run(&mut cmd, Duration::from_secs(30)).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("cannot reach") && out.stderr.contains(&closed),
        "{}",
        out.describe()
    );
}

/// Three `tern serve` processes on 127.0.0.1 with certificates from `tern cert`: node 0
/// bootstraps, 1 and 2 join through it; all become ready, and `tern cluster status`
/// shows three members and a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_form_a_cluster() {
    let dir = unique_temp_dir("tern-cluster3");
    let certs = dir.join("certs");
    let mut cmd = tern_command();
    cmd.args(["cert", "--nodes", "0,1,2", "--dir"]).arg(&certs);
    let out = run(&mut cmd, Duration::from_secs(30)).await;
    assert!(out.success(), "tern cert\n{}", out.describe());

    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for id in 0..3u16 {
        let node_dir = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = tern_std_command();
        cmd.arg("serve")
            .args(["--cluster", "--node-id", &id.to_string()])
            .args([
                "--cluster-listen",
                &format!("127.0.0.1:{}", cluster_ports[usize::from(id)]),
            ])
            .args(["--http-listen", &http.to_string()])
            .args(["--mqtt-listen", &mqtt.to_string()])
            .arg("--data-dir")
            .arg(node_dir.join("data"))
            .arg("--set")
            .arg(format!(
                "cluster.tls.ca_cert={}",
                certs.join("ca.pem").display()
            ))
            .arg("--set")
            .arg(format!(
                "cluster.tls.node_cert={}",
                certs.join(format!("node-{id}.pem")).display()
            ))
            .arg("--set")
            .arg(format!(
                "cluster.tls.node_key={}",
                certs.join(format!("node-{id}.key")).display()
            ))
            .args(["--set", "node.shutdown_grace_secs=2"]);
        if id > 0 {
            cmd.args(["--seeds", &format!("0@127.0.0.1:{}", cluster_ports[0])]);
        }
        cmd.stdin(Stdio::null())
            .stdout(File::create(node_dir.join("stdout.log")).expect("log file"))
            .stderr(File::create(node_dir.join("stderr.log")).expect("log file"));
        let guard = ChildGuard::spawn(&mut cmd).expect("spawn tern serve");
        nodes.push(Served {
            guard,
            mqtt,
            http,
            dir: node_dir,
        });
    }
    let logs = |nodes: &[Served]| {
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("=== node {i} ===\n{}", n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };

    for (id, node) in nodes.iter().enumerate() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if matches!(http_get(node.http, "/readyz").await, Some((200, _))) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id} not ready within 60 s\n{}",
                logs(&nodes)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Every node reports the same membership; wait for the last join to be applied.
    for node in &nodes {
        let http = node.http.to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut cmd = tern_command();
            cmd.args(["cluster", "status", "--json", "--http", &http]);
            let out = run(&mut cmd, Duration::from_secs(30)).await;
            let members = out.stdout.matches("\"role\":").count();
            let leader = out
                .stdout
                .lines()
                .find(|l| l.trim_start().starts_with("\"leader\":"))
                .map(|l| !l.contains("null"));
            if out.success() && members == 3 && leader == Some(true) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status of {http} should show 3 members and a leader\n{}\n{}",
                out.describe(),
                logs(&nodes)
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    let mut cmd = tern_command();
    cmd.args(["cluster", "status", "--http", &nodes[1].http.to_string()]);
    let table = run(&mut cmd, Duration::from_secs(30)).await;
    assert!(
        table.success() && table.stdout.contains("Members: 3") && table.stdout.contains("leader"),
        "{}",
        table.describe()
    );

    for node in &nodes {
        send_signal(node.pid(), "TERM");
    }
    for (id, node) in nodes.iter_mut().enumerate() {
        let status = node.wait_exit(Duration::from_secs(20)).await;
        assert!(
            status.is_some_and(|s| s.code() == Some(0)),
            "node {id} should exit 0 on SIGTERM, got {status:?}\n{}",
            node.log()
        );
    }
    drop(nodes);
    let _ = std::fs::remove_dir_all(dir);
}
