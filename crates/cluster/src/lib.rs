//! The cluster layer. The broker reaches other nodes only through
//! [`tern_broker::Cluster`]; [`single_node`] is the no-op implementation a lone node runs
//! with. The pieces of the multi-node cluster (replicated state, Raft storage, QUIC
//! transport, forwarding) live in the modules below; see docs/clustering.md.

pub mod forward;
pub mod handover;
pub mod node;
pub mod raft_types;
pub mod routes;
pub mod state;
pub mod store;
pub mod transport;
pub mod types;

use std::sync::Arc;

use tern_broker::{Cluster, SingleNode};

pub use node::{ClusterConfig, ClusterError, ClusterNode, ClusterStatus};
pub use types::{Command, CommandResponse, NodeId, NodeInfo, RouteChange, WireMessage};

/// The cluster hooks for a node that runs alone.
pub fn single_node() -> Arc<dyn Cluster> {
    Arc::new(SingleNode)
}
