//! Counters of the cluster machinery that only the metrics read (`GET /metrics`): Raft
//! proposals and their batch sizes, snapshots, and per peer the transport's frames and the
//! forwarding acknowledgement times. Recording is a relaxed atomic add; reading is
//! [`ClusterNode::stats`](super::ClusterNode::stats), at scrape time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tern_broker::stats::LatencySnapshot;

use crate::types::NodeId;

/// Upper bounds of [`NodeStats`]' proposal batch-size histogram, in commands (a last
/// bucket, +Inf, follows).
pub const BATCH_SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// What the node records as it goes; lives in the node's `Inner`.
#[derive(Debug, Default)]
pub(crate) struct NodeStats {
    proposals: AtomicU64,
    proposal_failures: AtomicU64,
    /// Non-cumulative bucket counts of batch sizes; the last is +Inf.
    batch_buckets: [AtomicU64; BATCH_SIZE_BUCKETS.len() + 1],
    batch_sum: AtomicU64,
    dead_members_removed: AtomicU64,
    malformed_forward_frames: AtomicU64,
}

impl NodeStats {
    /// This node, as leader, removed a member that had no link up for too long.
    pub(crate) fn dead_member_removed(&self) {
        self.dead_members_removed.fetch_add(1, Relaxed);
    }

    /// A forwarded batch or ack from a peer that could not be decoded.
    pub(crate) fn malformed_forward_frame(&self) {
        self.malformed_forward_frames.fetch_add(1, Relaxed);
    }

    /// A command proposed to Raft by this node (as leader, or through the leader).
    pub(crate) fn proposal(&self) {
        self.proposals.fetch_add(1, Relaxed);
    }

    /// A proposal that did not commit before its deadline.
    pub(crate) fn proposal_failed(&self) {
        self.proposal_failures.fetch_add(1, Relaxed);
    }

    /// A batched proposal of `commands` route changes, claims and retained messages.
    pub(crate) fn batch(&self, commands: usize) {
        let bucket = BATCH_SIZE_BUCKETS.partition_point(|&bound| bound < commands as f64);
        self.batch_buckets[bucket].fetch_add(1, Relaxed);
        self.batch_sum.fetch_add(commands as u64, Relaxed);
    }

    fn batch_snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = Vec::with_capacity(BATCH_SIZE_BUCKETS.len());
        let mut running = 0;
        for bucket in &self.batch_buckets[..BATCH_SIZE_BUCKETS.len()] {
            running += bucket.load(Relaxed);
            cumulative.push(running);
        }
        let count = running + self.batch_buckets[BATCH_SIZE_BUCKETS.len()].load(Relaxed);
        HistogramSnapshot {
            cumulative,
            count,
            sum: self.batch_sum.load(Relaxed) as f64,
        }
    }
}

/// Snapshots taken of the Raft state machine, kept in the state handle (the store counts,
/// the node reads).
#[derive(Debug, Default)]
pub(crate) struct SnapshotCounters {
    pub built: AtomicU64,
    pub installed: AtomicU64,
}

/// A histogram read at one moment: cumulative counts per bound, count and sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

/// One peer's traffic as the metrics report it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerStats {
    pub node_id: NodeId,
    /// Transport frames (Raft, RPCs, forwarded batches and acks), cumulative over
    /// reconnects.
    pub frames_sent: u64,
    pub frames_received: u64,
    /// Time from a QoS 1/2 message being queued for the peer to the peer's acknowledgement
    /// of it, measured here (the peer acknowledges after delivering it to its sessions).
    pub forward_ack: LatencySnapshot,
}

/// Everything [`NodeStats`], the store and the links counted, at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterStats {
    pub proposals: u64,
    pub proposal_failures: u64,
    /// Commands per batched proposal; bounds are [`BATCH_SIZE_BUCKETS`].
    pub proposal_batch_size: HistogramSnapshot,
    /// Snapshots this node built of its state machine (log compaction).
    pub snapshots_built: u64,
    /// Snapshots this node installed from the leader.
    pub snapshots_installed: u64,
    /// Members this node removed as leader after `cluster.remove_dead_after_secs`
    /// without a link.
    pub dead_members_removed: u64,
    /// Datagrams the kernel dropped on the cluster's UDP socket (a full receive buffer,
    /// mostly); `None` where the kernel does not say.
    pub udp_receive_drops: Option<u64>,
    /// Forwarded batches and acks from peers that could not be decoded (the first closes
    /// the link it came on; see `node/forwarding.rs`).
    pub malformed_forward_frames: u64,
    pub peers: Vec<PeerStats>,
}

pub(crate) fn collect(inner: &super::core::Inner) -> ClusterStats {
    let snapshots = inner.state.snapshot_counters();
    let peers = inner.peers.lock();
    let peers = inner
        .transport
        .links()
        .into_iter()
        .map(|l| PeerStats {
            node_id: l.node_id,
            frames_sent: l.frames_sent,
            frames_received: l.frames_received,
            forward_ack: peers
                .get(&l.node_id)
                .map(|p| p.outbound.lock().ack_latency())
                .unwrap_or_else(empty_latency),
        })
        .collect();
    ClusterStats {
        proposals: inner.stats.proposals.load(Relaxed),
        proposal_failures: inner.stats.proposal_failures.load(Relaxed),
        proposal_batch_size: inner.stats.batch_snapshot(),
        snapshots_built: snapshots.built.load(Relaxed),
        snapshots_installed: snapshots.installed.load(Relaxed),
        dead_members_removed: inner.stats.dead_members_removed.load(Relaxed),
        udp_receive_drops: inner.transport.udp_receive_drops(),
        malformed_forward_frames: inner.stats.malformed_forward_frames.load(Relaxed),
        peers,
    }
}

fn empty_latency() -> LatencySnapshot {
    tern_broker::stats::LatencyHistogram::default().snapshot()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_are_bucketed_cumulatively() {
        let stats = NodeStats::default();
        for n in [1, 1, 3, 8, 2000] {
            stats.batch(n);
        }
        let h = stats.batch_snapshot();
        assert_eq!(h.count, 5);
        assert_eq!(h.sum, 2013.0);
        // <=1: 2, <=2: 2, <=4: 3, <=8: 4, ..., <=1024: 4; +Inf: 5.
        assert_eq!(&h.cumulative[..4], &[2, 2, 3, 4]);
        assert_eq!(h.cumulative.last(), Some(&4));
    }
}
