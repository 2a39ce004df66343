//! Child processes that are killed when the test that started them ends, pass or fail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::external::http_get;

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

/// Runs `tern cert --nodes 0,..,nodes-1 --dir dir`: a cluster CA and a certificate and key
/// for each node, as `clustered_serve_command` expects them.
pub fn write_cluster_certs(dir: &Path, nodes: usize) {
    let ids: Vec<String> = (0..nodes).map(|i| i.to_string()).collect();
    let out = Command::new(tern_binary())
        .args(["cert", "--nodes", &ids.join(","), "--dir"])
        .arg(dir)
        .output()
        .expect("run tern cert");
    assert!(
        out.status.success(),
        "tern cert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node's `GET /api/v1/cluster`, parsed; `None` unless it answers 200 with JSON.
pub async fn cluster_status(http: SocketAddr) -> Option<serde_json::Value> {
    let (code, body) = http_get(http, "/api/v1/cluster").await?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// `Some(leader)` once every node behind `https` is ready (`/readyz`), sees `members`
/// members of which `voters` are voters, has no voter change half done (in Raft's joint
/// configuration a leader also needs a majority of the old voters, so killing one then
/// can stall the cluster), and names the same leader.
pub async fn cluster_settled(https: &[SocketAddr], members: usize, voters: usize) -> Option<u64> {
    let mut leaders = Vec::new();
    for &http in https {
        if !matches!(http_get(http, "/readyz").await, Some((200, _))) {
            return None;
        }
        let s = cluster_status(http).await?;
        let listed = s["members"].as_array()?;
        let voting = listed.iter().filter(|m| m["role"] == "voter").count();
        if listed.len() != members || voting != voters || s["membership_changing"] != false {
            return None;
        }
        leaders.push(s["leader"].as_u64()?);
    }
    leaders.dedup();
    (leaders.len() == 1).then(|| leaders[0])
}
