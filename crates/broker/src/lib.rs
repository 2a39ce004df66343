//! What one Tern node does with its MQTT clients. No sockets, disks or Raft here: a
//! connection is any `AsyncRead + AsyncWrite`, and the rest of the cluster is reached only
//! through the [`Cluster`] trait.

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
mod connection;
mod mailbox;
pub mod message;
mod publish_writer;
mod registry;
pub mod retained;
mod run;
pub mod session;
pub mod stats;
pub mod subscriptions;
mod sys;
pub mod topic;

pub use broker::{Broker, BrokerError};
pub use cluster::{Cluster, SingleNode};
pub use config::{AclAccess, AclDecision, AclRule, AuthConfig, BrokerConfig, UserEntry};
pub use message::Message;
pub use run::MessageRun;
pub use stats::{DropReason, Stats};
pub use sys::snapshot as sys_snapshot;
