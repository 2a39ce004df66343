//! The cluster layer. A single node needs nothing from it yet: the broker reaches other
//! nodes only through [`tern_broker::Cluster`], and [`single_node`] is the no-op
//! implementation a lone node runs with. Raft and QUIC arrive with the clustering work.

use std::sync::Arc;

use tern_broker::{Cluster, SingleNode};

/// The cluster hooks for a node that runs alone.
pub fn single_node() -> Arc<dyn Cluster> {
    Arc::new(SingleNode)
}
