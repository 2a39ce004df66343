//! In-process clusters for end-to-end tests: each node is a broker on a loopback TCP port
//! plus a `ClusterNode` on a loopback QUIC port, with certificates from one test CA.
//! Nodes stop when the `TestCluster` (or the node) is dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tern_broker::{AuthConfig, Broker, BrokerConfig};
use tern_cluster::{ClusterConfig, ClusterNode, ClusterStatus, NodeId};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::unique_temp_dir;

pub struct ClusterTestNode {
    pub id: NodeId,
    pub cluster: Arc<ClusterNode>,
    pub broker: Arc<Broker>,
    pub mqtt_addr: SocketAddr,
    pub data_dir: PathBuf,
    accept: JoinHandle<()>,
}

impl Drop for ClusterTestNode {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

pub struct TestCluster {
    pub nodes: Vec<ClusterTestNode>,
    pub certs: PathBuf,
}

/// Fast Raft timings for loopback.
pub fn test_config(
    id: NodeId,
    certs: &std::path::Path,
    seeds: Vec<String>,
    voters: usize,
) -> ClusterConfig {
    let mut c = ClusterConfig {
        enabled: true,
        node_id: Some(id),
        listen: "127.0.0.1:0".parse().expect("literal"),
        region: format!("region-{}", id % 3),
        seeds,
        voters,
        route_batch_ms: 5,
        ..Default::default()
    };
    c.tls.ca_cert = certs.join("ca.pem");
    c.tls.node_cert = certs.join(format!("node-{id}.pem"));
    c.tls.node_key = certs.join(format!("node-{id}.key"));
    c.raft.heartbeat_ms = 100;
    c.raft.election_timeout_min_ms = 600;
    c.raft.election_timeout_max_ms = 1200;
    c
}

impl TestCluster {
    /// Starts `n` nodes (ids 0..n): node 0 bootstraps, the others join through it.
    pub async fn start(n: u64, voters: usize) -> Self {
        let certs = unique_temp_dir("tern-certs");
        let ids: Vec<NodeId> = (0..n).collect();
        tern_cluster::transport::tls::write_local_cluster_certs(&certs, &ids, true)
            .expect("test certificates");
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            certs,
        };
        for id in ids {
            let seeds = match cluster.nodes.first() {
                Some(first) => vec![format!("0@{}", first.cluster.cluster_addr())],
                None => Vec::new(),
            };
            let config = test_config(id, &cluster.certs, seeds, voters);
            cluster.nodes.push(start_node(id, config).await);
        }
        cluster
    }

    pub fn node(&self, i: usize) -> &ClusterTestNode {
        &self.nodes[i]
    }

    /// Waits until every node reports ready and `n` members.
    pub async fn wait_formed(&self, voters: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut all = true;
            for node in &self.nodes {
                let s = node.cluster.status().await;
                let v = s.members.iter().filter(|m| m.role == "voter").count();
                all &= s.ready && s.members.len() == self.nodes.len() && v == voters;
            }
            if all {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `cond` holds for the status of node `i`.
    pub async fn wait_status(
        &self,
        i: usize,
        timeout: Duration,
        cond: impl Fn(&ClusterStatus) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(&self.nodes[i].cluster.status().await) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(self) {
        for node in &self.nodes {
            node.broker.shutdown(Duration::from_secs(1)).await;
            node.cluster.shutdown().await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.certs);
    }
}

pub async fn start_node(id: NodeId, config: ClusterConfig) -> ClusterTestNode {
    let data_dir = unique_temp_dir(&format!("tern-cluster-{id}"));
    let cluster = ClusterNode::start(config, &data_dir, "test")
        .await
        .expect("cluster node starts");
    let broker = Broker::new(
        BrokerConfig::default(),
        AuthConfig::default(),
        cluster.hooks(),
    )
    .expect("broker");
    broker.start_background_tasks();
    cluster.attach_broker(&broker);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mqtt");
    let mqtt_addr = listener.local_addr().expect("addr");
    let b = broker.clone();
    let accept = tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let b = b.clone();
            tokio::spawn(async move { b.serve_connection(stream, peer, "tcp").await });
        }
    });
    ClusterTestNode {
        id,
        cluster,
        broker,
        mqtt_addr,
        data_dir,
        accept,
    }
}
