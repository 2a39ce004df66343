//! Child processes that are killed when the test that started them ends, pass or fail.

use std::path::PathBuf;
use std::process::{Child, Command};

pub struct ChildGuard {
    pub child: Child,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        Ok(Self {
            child: cmd.spawn()?,
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `tern` binary built alongside the tests (target/<profile>/tern).
pub fn tern_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/tern
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("tern");
    assert!(
        bin.exists(),
        "{} missing: build it first (`cargo build -p tern`)",
        bin.display()
    );
    bin
}

/// `tern serve` as one member of a loopback test cluster: node `id` of the nodes whose
/// QUIC ports are `quic` (node 0 bootstraps, the others join through it), three voters,
/// fast Raft timings, certificates from `tern cert` in `certs`. `TERN_` variables of the
/// test's own environment are not passed on. The caller adds stdio.
pub fn clustered_serve_command(
    id: usize,
    quic: &[u16],
    mqtt: std::net::SocketAddr,
    http: std::net::SocketAddr,
    data_dir: &std::path::Path,
    certs: &std::path::Path,
) -> Command {
    let mut cmd = Command::new(tern_binary());
    let set = |key: &str, value: String| ["--set".to_string(), format!("{key}={value}")];
    cmd.arg("serve")
        .args([
            "--cluster",
            "--node-id",
            &id.to_string(),
            "--region",
            &format!("r{}", id % 3),
        ])
        .args(["--cluster-listen", &format!("127.0.0.1:{}", quic[id])])
        .args([
            "--mqtt-listen",
            &mqtt.to_string(),
            "--http-listen",
            &http.to_string(),
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(set("cluster.voters", "3".into()))
        .args(set("cluster.raft.heartbeat_ms", "100".into()))
        .args(set("cluster.raft.election_timeout_min_ms", "600".into()))
        .args(set("cluster.raft.election_timeout_max_ms", "1200".into()))
        .args(set("broker.sys_interval_secs", "0".into()))
        .args(set(
            "cluster.tls.ca_cert",
            certs.join("ca.pem").display().to_string(),
        ))
        .args(set(
            "cluster.tls.node_cert",
            certs.join(format!("node-{id}.pem")).display().to_string(),
        ))
        .args(set(
            "cluster.tls.node_key",
            certs.join(format!("node-{id}.key")).display().to_string(),
        ));
    if id > 0 {
        cmd.args(["--seeds", &format!("0@127.0.0.1:{}", quic[0])]);
    }
    for (name, _) in std::env::vars() {
        if name.starts_with("TERN_") {
            cmd.env_remove(name);
        }
    }
    cmd
}
