//! What `tern cluster status` and `GET /api/v1/cluster` show.

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub region: String,
    /// Whether this node has joined and caught up (what `/readyz` answers).
    pub ready: bool,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// A voter change is half done (Raft's joint configuration): until it completes,
    /// a leader needs a majority of both the old and the new voters.
    #[serde(default)]
    pub membership_changing: bool,
    pub route_count: usize,
    /// (group, filter, node) entries of shared subscriptions.
    #[serde(default)]
    pub shared_route_count: usize,
    pub claim_count: usize,
    pub retained_count: usize,
    pub links: Vec<LinkView>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub cluster_addr: String,
    pub region: String,
    /// "voter" or "learner".
    pub role: String,
    /// The leader's view of how far this member's log matches (leader only).
    pub matched_index: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    pub node_id: NodeId,
    pub connected: bool,
    pub rtt_ms: Option<f64>,
    /// Largest UDP payload the link sends (path MTU discovery; `transport.max_udp_payload`).
    #[serde(default)]
    pub udp_payload: Option<u16>,
    /// The cluster protocol version negotiated on the link (2: compact forwarded batches).
    #[serde(default)]
    pub protocol_version: Option<u16>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Forwarded messages waiting for this peer, and of those, sent but not acknowledged.
    pub backlog: usize,
    pub unacked: usize,
    pub resent_total: u64,
    pub overflow_dropped: u64,
}

pub(crate) fn collect(inner: &super::core::Inner) -> ClusterStatus {
    let m = inner.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(&id, info)| MemberStatus {
            node_id: id,
            cluster_addr: info.cluster_addr.clone(),
            region: info.region.clone(),
            role: if voters.contains(&id) {
                "voter"
            } else {
                "learner"
            }
            .to_string(),
            matched_index: m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).cloned().flatten())
                .map(|l| l.index),
        })
        .collect();
    let peers = inner.peers.lock();
    let links = inner
        .transport
        .links()
        .into_iter()
        .map(|l| {
            let out = peers.get(&l.node_id);
            let (backlog, unacked, resent, dropped) = out.map_or((0, 0, 0, 0), |p| {
                let o = p.outbound.lock();
                (
                    o.backlog_len(),
                    o.unacked_len(),
                    o.resent_total(),
                    o.overflow_dropped(),
                )
            });
            LinkView {
                node_id: l.node_id,
                connected: l.connected,
                rtt_ms: l.rtt.map(|d| d.as_secs_f64() * 1000.0),
                udp_payload: l.udp_payload,
                protocol_version: l.protocol_version,
                bytes_sent: l.bytes_sent,
                bytes_received: l.bytes_received,
                backlog,
                unacked,
                resent_total: resent,
                overflow_dropped: dropped,
            }
        })
        .collect();
    let state = inner.state.read();
    ClusterStatus {
        node_id: inner.id,
        region: inner.info.region.clone(),
        ready: inner.ready.load(std::sync::atomic::Ordering::Relaxed),
        leader: m.current_leader,
        term: m.current_term,
        commit_index: m.last_log_index,
        applied_index: m.last_applied.map(|l| l.index),
        members,
        membership_changing: membership.get_joint_config().len() > 1,
        route_count: state.route_count(),
        shared_route_count: state.shared_count(),
        claim_count: state.claim_count(),
        retained_count: state.retained_count(),
        links,
    }
}
