//! Every openraft type Tern names, in one place. openraft 0.9 is generic over a type
//! config; the rest of the crate uses these aliases, so that moving to openraft 0.10 (whose
//! API still changes) touches this file rather than every module.

use std::io::Cursor;

use crate::types::{Command, CommandResponse, NodeId, NodeInfo};

openraft::declare_raft_types!(
    /// Tern's Raft group: entries carry [`Command`]s, members are [`NodeInfo`]s, and
    /// snapshots are whole in-memory buffers (the replicated state is small: routes,
    /// claims and retained messages).
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A running Raft node.
pub type Raft = openraft::Raft<TypeConfig>;
pub type Config = openraft::Config;
pub type SnapshotPolicy = openraft::SnapshotPolicy;
pub type ServerState = openraft::ServerState;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;

// Log and state-machine vocabulary.
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
pub type LogState = openraft::LogState<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type SnapshotData = Cursor<Vec<u8>>;
pub type LogFlushed = openraft::storage::LogFlushed<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StorageIOError = openraft::StorageIOError<NodeId>;

// RPC messages, for the transport.
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;
pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;
pub type RPCOption = openraft::network::RPCOption;

// Errors.
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
pub type RPCError<E = openraft::error::Infallible> =
    openraft::error::RPCError<NodeId, NodeInfo, RaftError<E>>;
pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, NodeInfo>;
pub type InstallSnapshotError = openraft::error::InstallSnapshotError;
pub type InitializeError = openraft::error::InitializeError<NodeId, NodeInfo>;
pub type Unreachable = openraft::error::Unreachable;
