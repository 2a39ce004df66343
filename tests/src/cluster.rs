//! In-process clusters for end-to-end tests: each node is a broker on a loopback TCP port
//! plus a `ClusterNode` on a loopback QUIC port, with certificates from one test CA.
//! Nodes stop when the `TestCluster` (or the node) is dropped.
//!
//! Beyond starting a cluster, tests can stop a node gracefully ([`TestCluster::stop`]),
//! crash it ([`TestCluster::crash`]: its broker stops accepting and its `ClusterNode` is
//! dropped without `shutdown`), restart it on the same data directory and QUIC port
//! ([`TestCluster::restart`]), and start nodes with a tweaked configuration
//! ([`TestCluster::start_with`]), e.g. advertising a [`crate::relay::UdpRelay`]'s address
//! so that peers reach the node through the relay.

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
    /// The configuration it was started with (`listen` is the bound address).
    pub config: ClusterConfig,
    accept: JoinHandle<()>,
}

impl Drop for ClusterTestNode {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

pub struct TestCluster {
    /// Indexed by node id; `None` while a node is stopped or after it crashed.
    pub nodes: Vec<Option<ClusterTestNode>>,
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
        Self::start_with(n, voters, |_, _| {}).await
    }

    /// As [`TestCluster::start`], with `tweak` applied to each node's configuration (after
    /// the defaults and the seed) before it starts.
    pub async fn start_with(
        n: u64,
        voters: usize,
        mut tweak: impl FnMut(NodeId, &mut ClusterConfig),
    ) -> Self {
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
                Some(Some(first)) => vec![format!("0@{}", first.cluster.cluster_addr())],
                _ => Vec::new(),
            };
            let mut config = test_config(id, &cluster.certs, seeds, voters);
            tweak(id, &mut config);
            cluster.nodes.push(Some(start_node(id, config).await));
        }
        cluster
    }

    /// A running node; panics if node `i` is stopped or crashed.
    pub fn node(&self, i: usize) -> &ClusterTestNode {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is not running"))
    }

    /// The running nodes.
    pub fn running(&self) -> impl Iterator<Item = &ClusterTestNode> {
        self.nodes.iter().flatten()
    }

    /// Waits until every running node reports ready, as many members as there are
    /// running nodes, and `voters` voters, with no voter change half done.
    pub async fn wait_formed(&self, voters: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut all = true;
            let running = self.running().count();
            for node in self.running() {
                let s = node.cluster.status().await;
                let v = s.members.iter().filter(|m| m.role == "voter").count();
                // A joint configuration lists the old and new voters together, but a
                // leader still needs a majority of the old ones: not formed yet.
                all &=
                    s.ready && s.members.len() == running && v == voters && !s.membership_changing;
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
            if cond(&self.node(i).cluster.status().await) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `cond` holds for the status of every running node.
    pub async fn wait_all(&self, timeout: Duration, cond: impl Fn(&ClusterStatus) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut all = true;
            for node in self.running() {
                all &= cond(&node.cluster.status().await);
            }
            if all {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops node `i` gracefully (broker, then cluster) and keeps its data directory.
    pub async fn stop(&mut self, i: usize) -> ClusterTestNode {
        let node = self.nodes[i].take().expect("node running");
        node.accept.abort();
        node.broker.shutdown(Duration::from_secs(1)).await;
        node.cluster.shutdown().await;
        node
    }

    /// Crashes node `i`: stops accepting MQTT connections and drops its `ClusterNode`
    /// without `shutdown` (its `Drop` stops Raft and closes the QUIC endpoint, so peers
    /// see the links die). Its broker lives on only as long as client connections the
    /// test still holds to it; such clients must not be used any more.
    pub fn crash(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("node running");
        drop(node);
    }

    /// Restarts a node stopped with [`TestCluster::stop`] on the same data directory,
    /// configuration and QUIC port (waiting for the port to be free).
    pub async fn restart(&mut self, stopped: ClusterTestNode) {
        let id = stopped.id;
        let data_dir = stopped.data_dir.clone();
        let config = stopped.config.clone();
        drop(stopped);
        assert!(
            wait_udp_port_free(config.listen, Duration::from_secs(10)).await,
            "node {id}'s QUIC port {} is still bound after its shutdown",
            config.listen
        );
        let node = start_node_in(id, config, data_dir).await;
        let i = usize::try_from(id).expect("small id");
        assert!(self.nodes[i].is_none(), "node {id} is still running");
        self.nodes[i] = Some(node);
    }

    pub async fn shutdown(self) {
        for node in self.running() {
            node.broker.shutdown(Duration::from_secs(1)).await;
            node.cluster.shutdown().await;
        }
    }
}

/// A loopback UDP port that is free now (for a node or relay whose port must be known
/// before it starts).
pub fn free_udp_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::external::free_port()))
}

/// Waits until `addr` can be bound (UDP), i.e. a stopped node's endpoint has let go.
pub async fn wait_udp_port_free(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if std::net::UdpSocket::bind(addr).is_ok() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.certs);
    }
}

pub async fn start_node(id: NodeId, config: ClusterConfig) -> ClusterTestNode {
    let data_dir = unique_temp_dir(&format!("tern-cluster-{id}"));
    start_node_in(id, config, data_dir).await
}

/// Starts a node on an existing (or fresh) data directory.
pub async fn start_node_in(
    id: NodeId,
    mut config: ClusterConfig,
    data_dir: PathBuf,
) -> ClusterTestNode {
    let cluster = ClusterNode::start(config.clone(), &data_dir, "test")
        .await
        .expect("cluster node starts");
    // No `$SYS` messages: they are retained locally, and tests count retained messages.
    let broker = Broker::new(
        BrokerConfig {
            sys_interval_secs: 0,
            ..Default::default()
        },
        AuthConfig::default(),
        cluster.hooks(),
    )
    .expect("broker");
    broker.start_background_tasks();
    cluster.attach_broker(&broker);
    // A restart reuses the port it was given.
    config.listen = cluster.cluster_addr();
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
        config,
        accept,
    }
}
