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
use std::time::Duration;

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

    /// The graceful stop's step between the broker's shutdown and [`Self::shutdown`]:
    /// waits (at most `wait`) until every session handover this node takes part in is
    /// over: sessions given up and not yet fetched by their new node, subscriptions kept
    /// for a session that moved until its new node's routes are everywhere, and the
    /// persistent sessions of `reconnecting` (the clients the shutdown disconnected),
    /// which move to whichever node their clients reconnect to. Then it withdraws this
    /// node's routes and claims, since the sessions still here end with it. Returns false
    /// if it gave up waiting or could not withdraw.
    pub async fn drain(&self, wait: Duration, reconnecting: &[Arc<str>]) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let broker = self.inner.broker();
            let moved = broker.as_ref().map_or(0, |b| b.moved_sessions());
            let departing = self.inner.departing.lock().len();
            let staying = broker.as_ref().map_or(0, |b| {
                reconnecting.iter().filter(|id| b.has_session(id)).count()
            });
            if moved == 0 && departing == 0 && staying == 0 {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    moved,
                    departing,
                    sessions_not_taken = staying,
                    "session handovers still running at shutdown; stopping anyway"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let purge = crate::types::Command::PurgeNode {
            node: self.inner.id,
        };
        match tokio::time::timeout_at(deadline, self.inner.propose(purge)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not withdraw this node's routes at shutdown");
                false
            }
            Err(_) => {
                tracing::warn!("withdrawing this node's routes at shutdown timed out");
                false
            }
        }
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
