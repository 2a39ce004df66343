//! `[cluster]` settings. Off by default: `tern serve` alone is a single node.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::transport::TransportConfig;
use crate::types::NodeId;

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Run as a member of a cluster. Off: a single node, nothing below is used.
    pub enabled: bool,
    /// This node's id. Absent: the ordinal at the end of the host name (`tern-2` is 2),
    /// as a Kubernetes StatefulSet names its pods.
    pub node_id: Option<NodeId>,
    /// QUIC (UDP) address for other nodes.
    pub listen: SocketAddr,
    /// The `host:port` other nodes dial to reach this one. Empty: the listen address
    /// (which must then not be 0.0.0.0).
    pub advertise: String,
    /// Region label; voters are spread over distinct regions where possible.
    pub region: String,
    /// Existing members to join through, each `ID@host:port` (node ID's cluster address)
    /// or a StatefulSet host name whose ordinal is the id (`tern-0.tern-headless:7946`).
    /// Empty: this node bootstraps a new cluster (once; a restarted node rejoins from its
    /// data).
    pub seeds: Vec<String>,
    /// How many voters the cluster keeps (3 or 5); the other members are learners.
    pub voters: usize,
    /// Leave the cluster (hand clients over, withdraw routes, leave the membership) on
    /// SIGTERM instead of only stopping.
    pub leave_on_shutdown: bool,
    /// The leader removes a member (and purges its routes and claims) once no link to it
    /// has been up for this many seconds; 0 never does. Covers a StatefulSet scaled down
    /// and nodes that are gone for good; a removed node that comes back joins again.
    pub remove_dead_after_secs: u64,
    /// Certificates for the links between nodes; `tern cert` writes a set for a local
    /// cluster.
    pub tls: ClusterTls,
    pub raft: RaftTimings,
    /// How long route changes collect before they are proposed as one Raft entry.
    pub route_batch_ms: u64,
    /// Messages kept per peer for forwarding while its link is down or slow; past it the
    /// oldest QoS 0 messages go first, then new messages are refused (counted).
    pub forward_backlog_messages: usize,
    pub forward_backlog_bytes: usize,
    pub transport: TransportConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            node_id: None,
            listen: SocketAddr::from(([0, 0, 0, 0], 7946)),
            advertise: String::new(),
            region: "default".to_string(),
            seeds: Vec::new(),
            voters: 3,
            leave_on_shutdown: false,
            remove_dead_after_secs: 300,
            tls: ClusterTls::default(),
            raft: RaftTimings::default(),
            route_batch_ms: 10,
            forward_backlog_messages: 100_000,
            forward_backlog_bytes: 64 * 1024 * 1024,
            transport: TransportConfig::default(),
        }
    }
}

/// PEM files: the cluster CA's certificate, and this node's certificate and key (issued
/// by that CA for this node id). Relative paths are under the data directory.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTls {
    pub ca_cert: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
}

impl Default for ClusterTls {
    fn default() -> Self {
        Self {
            ca_cert: PathBuf::from("certs/ca.pem"),
            node_cert: PathBuf::from("certs/node.pem"),
            node_key: PathBuf::from("certs/node.key"),
        }
    }
}

/// Raft timing. The defaults suit links between regions (openraft's own suit a LAN).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub install_snapshot_timeout_ms: u64,
    /// Entries after which a snapshot is taken (and the log before it purged).
    pub snapshot_every_entries: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 250,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            install_snapshot_timeout_ms: 10_000,
            snapshot_every_entries: 10_000,
        }
    }
}

impl ClusterConfig {
    /// This node's id: configured, or the ordinal ending `hostname` (`tern-2` → 2).
    pub fn resolve_node_id(&self, hostname: &str) -> Result<NodeId, String> {
        if let Some(id) = self.node_id {
            return Ok(id);
        }
        let short = hostname.split('.').next().unwrap_or(hostname);
        short
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse().ok())
            .ok_or_else(|| {
                format!("cluster.node_id is not set and the host name {hostname:?} does not end in -<number>")
            })
    }

    /// Checks what serde cannot: names the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if !(1..=7).contains(&self.voters) {
            return Err("cluster.voters must be between 1 and 7 (3 or 5 in production)".into());
        }
        if self.advertise.is_empty() && self.listen.ip().is_unspecified() {
            return Err(
                "cluster.advertise must be set when cluster.listen is 0.0.0.0 / [::]".into(),
            );
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_ms {
            return Err(
                "cluster.raft.election_timeout_min_ms must exceed cluster.raft.heartbeat_ms (> 0)"
                    .into(),
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(
                "cluster.raft.election_timeout_max_ms must exceed election_timeout_min_ms".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_come_from_statefulset_host_names() {
        let c = ClusterConfig::default();
        assert_eq!(c.resolve_node_id("tern-2"), Ok(2));
        assert_eq!(
            c.resolve_node_id("tern-10.tern-headless.ns.svc.cluster.local"),
            Ok(10)
        );
        assert!(c.resolve_node_id("tern").is_err());
        let fixed = ClusterConfig {
            node_id: Some(7),
            ..c
        };
        assert_eq!(fixed.resolve_node_id("anything"), Ok(7));
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = ClusterConfig {
            enabled: true,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("cluster.advertise"));
        c.advertise = "10.0.0.1:7946".into();
        assert_eq!(c.validate(), Ok(()));
        c.voters = 0;
        assert!(c.validate().unwrap_err().contains("cluster.voters"));
    }
}
