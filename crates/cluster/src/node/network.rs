//! openraft's network over the QUIC transport: each Raft RPC is one request/response
//! exchange, its body MessagePack. The receiving side hands it to the local `Raft`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{NetworkError, RemoteError, Unreachable};
use openraft::network::{RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::raft_types::*;
use crate::transport::{Transport, TransportError};
use crate::types::{NodeId, NodeInfo};

/// Request kinds on the transport.
pub(crate) mod kind {
    pub const APPEND: u8 = 1;
    pub const VOTE: u8 = 2;
    pub const SNAPSHOT: u8 = 3;
    /// A node asks to join (answered by the leader, or with where the leader is).
    pub const JOIN: u8 = 10;
    /// A follower hands a command to the leader to propose.
    pub const PROPOSE: u8 = 11;
    /// The leader's commit index (confirmed by a quorum), for a follower's readiness check.
    pub const LEADER_APPLIED: u8 = 12;
    /// Take a client's session from the node that had it.
    pub const TAKE_SESSION: u8 = 13;
    /// Membership changes asked of the leader (leave, remove).
    pub const MEMBERSHIP: u8 = 14;
    /// The node that took a session has its routes in place: the old node drops its
    /// subscriptions and returns what they received meanwhile.
    pub const FINISH_HANDOVER: u8 = 15;
    // 16 was APPLIED, a node's own applied index, which handovers polled before
    // FORWARDS_FLUSHED replaced it.
    /// Once this node has applied up to an index, has the given peer processed every
    /// message this node queued for it? (A session handover's last step.)
    pub const FORWARDS_FLUSHED: u8 = 17;
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, String> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

/// Resolves a member's advertised `host:port` (a StatefulSet pod's DNS name, say),
/// preferring IPv4: `localhost` and dual-stack names list `::1`-style addresses first,
/// which an endpoint bound to an IPv4 address cannot dial.
pub(crate) async fn resolve(addr: &str) -> Option<SocketAddr> {
    if let Ok(a) = addr.parse() {
        return Some(a);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host(addr).await.ok()?.collect();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| found.first())
        .copied()
}

#[derive(Clone)]
pub(crate) struct Network {
    pub transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        if let Some(addr) = resolve(&node.cluster_addr).await {
            let _ = self.transport.add_peer(target, addr);
        }
        PeerClient {
            transport: self.transport.clone(),
            target,
            node: node.clone(),
        }
    }
}

pub(crate) struct PeerClient {
    transport: Transport,
    target: NodeId,
    node: NodeInfo,
}

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        kind: u8,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body =
            encode(req).map_err(|e| RPCError::Network(NetworkError::new(&StringError(e))))?;
        let timeout = option.hard_ttl().max(Duration::from_millis(100));
        let answer = self
            .transport
            .request(self.target, kind, body, timeout)
            .await
            .map_err(|e| match e {
                e if e.is_unreachable() => {
                    // Redial in the background; openraft backs off meanwhile.
                    if let Ok(addr) = self.node.cluster_addr.parse() {
                        let _ = self.transport.add_peer(self.target, addr);
                    }
                    RPCError::Unreachable(Unreachable::new(&e))
                }
                TransportError::Timeout { .. } => RPCError::Network(NetworkError::new(&e)),
                e => RPCError::Network(NetworkError::new(&e)),
            })?;
        let result: Result<Resp, RaftError<E>> =
            decode(&answer).map_err(|e| RPCError::Network(NetworkError::new(&StringError(e))))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

#[derive(Debug)]
struct StringError(String);

impl std::fmt::Display for StringError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StringError {}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse, RPCError> {
        self.call(kind::APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse, RPCError<InstallSnapshotError>> {
        self.call(kind::SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Result<VoteResponse, RPCError> {
        self.call(kind::VOTE, &rpc, &option).await
    }
}

/// Answers Raft RPCs from other nodes with the local `Raft`.
pub(crate) fn serve_raft(transport: &Transport, raft: Raft) {
    let r = raft.clone();
    transport.set_request_handler(kind::APPEND, move |_, body| {
        let raft = r.clone();
        async move {
            let req: AppendEntriesRequest = decode(&body)?;
            encode(&raft.append_entries(req).await)
        }
    });
    let r = raft.clone();
    transport.set_request_handler(kind::VOTE, move |_, body| {
        let raft = r.clone();
        async move {
            let req: VoteRequest = decode(&body)?;
            encode(&raft.vote(req).await)
        }
    });
    transport.set_request_handler(kind::SNAPSHOT, move |_, body| {
        let raft = raft.clone();
        async move {
            let req: InstallSnapshotRequest = decode(&body)?;
            encode(&raft.install_snapshot(req).await)
        }
    });
}
