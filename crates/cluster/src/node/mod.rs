//! A node's membership of the cluster: Raft over the QUIC transport, the broker's
//! `Cluster` hooks, forwarding of publishes, and client takeover between nodes.

mod config;
mod core;
mod forwarding;
mod hooks;
mod network;
pub(crate) mod stats;
mod status;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use config::{ClusterConfig, ClusterTls, RaftTimings};
pub use stats::{ClusterStats, HistogramSnapshot, PeerStats, BATCH_SIZE_BUCKETS};
pub use status::{ClusterStatus, LinkView, MemberStatus};
use tern_broker::{Broker, Cluster};

use crate::types::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster configuration: {0}")]
    Config(String),
    #[error("cluster certificates: {0}")]
    Tls(String),
    #[error("raft storage in {path}: {reason}")]
    Storage { path: String, reason: String },
    #[error("cluster transport: {0}")]
    Transport(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("no leader is known right now; try again")]
    NoLeader,
}

/// This node's part in the cluster.
pub struct ClusterNode {
    inner: Arc<core::Inner>,
}

impl ClusterNode {
    /// Opens the Raft store under `data_dir`, binds the QUIC endpoint and starts Raft:
    /// bootstraps a new cluster (no seeds, no data), rejoins from the data directory, or
    /// joins through a seed, in the background. `hostname` names the node when
    /// `cluster.node_id` is not set.
    pub async fn start(
        config: ClusterConfig,
        data_dir: &Path,
        hostname: &str,
    ) -> Result<Arc<Self>, ClusterError> {
        let inner = core::start(config, data_dir, hostname).await?;
        Ok(Arc::new(Self { inner }))
    }

    /// The hooks to create this node's broker with.
    pub fn hooks(self: &Arc<Self>) -> Arc<dyn Cluster> {
        Arc::new(hooks::Hooks(self.inner.clone()))
    }

    /// Connects the broker made with [`ClusterNode::hooks`]: deliveries from other nodes,
    /// session handovers and retained messages reach it from now on.
    pub fn attach_broker(self: &Arc<Self>, broker: &Arc<Broker>) {
        let _ = self.inner.broker.set(Arc::downgrade(broker));
        core::sync_retained(&self.inner, broker);
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The bound QUIC address.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.inner
            .transport
            .local_addr()
            .unwrap_or_else(|_| self.inner.config.listen)
    }

    /// Joined, and applied the log up to the leader's applied index when last checked.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub async fn status(&self) -> ClusterStatus {
        status::collect(&self.inner)
    }

    /// Counters only the metrics show: Raft proposals and snapshots, and per peer the
    /// link's frames and forwarding acknowledgement times.
    pub fn stats(&self) -> ClusterStats {
        stats::collect(&self.inner)
    }

    /// Leaves gracefully: out of the membership, then this node's routes and claims are
    /// purged (its clients reconnect elsewhere and take their sessions with them).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        core::request_membership(&self.inner, core::MembershipRequest::Remove(self.inner.id))
            .await?;
        self.inner
            .propose(crate::types::Command::PurgeNode {
                node: self.inner.id,
            })
            .await?;
        Ok(())
    }

    /// Removes another (typically dead) node from the membership and purges its routes
    /// and claims.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterError> {
        core::request_membership(&self.inner, core::MembershipRequest::Remove(id)).await?;
        self.inner
            .propose(crate::types::Command::PurgeNode { node: id })
            .await?;
        Ok(())
    }

    /// Stops Raft and closes the links (after the broker has shut down).
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let _ = self.inner.raft.shutdown().await;
        self.inner.transport.shutdown().await;
    }
}

impl Drop for ClusterNode {
    /// A node dropped without [`ClusterNode::shutdown`] (a failing test, say) still stops
    /// its tasks and frees its port.
    fn drop(&mut self) {
        if self.inner.shutdown.send_replace(true) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            runtime.spawn(async move {
                let _ = inner.raft.shutdown().await;
                inner.transport.shutdown().await;
            });
        }
    }
}
