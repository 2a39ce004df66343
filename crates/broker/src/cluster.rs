//! How a node's broker reaches the rest of the cluster. The broker calls these hooks and
//! knows nothing else about other nodes; a single node uses [`SingleNode`], where each is
//! a no-op. The cluster crate implements the trait with Raft and QUIC.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::message::Message;
use crate::session::Session;

/// What [`Cluster::claim`] answers: the client's session if another node held it.
pub type SessionFuture = Pin<Box<dyn Future<Output = Option<Session>> + Send>>;

pub trait Cluster: Send + Sync + 'static {
    /// This node now has its first local subscriber to `filter`. Called with the
    /// subscription index locked, so calls arrive in the order of the changes: record,
    /// don't block.
    fn route_added(&self, filter: &str);
    /// This node's last local subscriber to `filter` has gone (same calling rules).
    fn route_removed(&self, filter: &str);
    /// This node now has `members` local members of `$share/{group}/{filter}` (0: none
    /// left). Same calling rules.
    fn shared_members(&self, group: &str, filter: &str, members: usize);
    /// A message published by a local client, after local delivery: send it to the
    /// other nodes whose routes match. Returns whether it went anywhere (another node,
    /// or a shared group member the cluster picked): if not, and it reached no local
    /// subscriber either, the broker counts it as dropped for want of a subscriber.
    fn forward(&self, message: &Arc<Message>) -> bool;
    /// Messages published by one local client in one read, on one topic, none retained,
    /// after local delivery: [`Cluster::forward`] for each, in order; whether any went
    /// anywhere. One call per run lets an implementation look the route up and queue for
    /// a peer once per run.
    fn forward_run(&self, run: &[Arc<Message>]) -> bool {
        let mut forwarded = false;
        for message in run {
            forwarded |= self.forward(message);
        }
        forwarded
    }
    /// A retained message was set (`Some`) or cleared (`None`) by a local client.
    fn retained_changed(&self, topic: &str, message: Option<&Arc<Message>>);
    /// A client connected here with this id (the local session, if any, is already
    /// settled). With `want_session`, the client asked to resume a session this node does
    /// not have: if another node has it, the cluster takes it from there (that node
    /// disconnects its client) and hands it back. Only that case waits for anything.
    fn claim(&self, client_id: &str, want_session: bool) -> SessionFuture;
    /// Whether the cluster picks the node for each shared-group delivery (then the
    /// broker leaves shared groups to `forward`, which calls
    /// [`Broker::deliver_shared`](crate::Broker::deliver_shared) for local picks).
    fn shares_across_nodes(&self) -> bool {
        false
    }
}

/// A node on its own: nothing to tell anyone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SingleNode;

impl Cluster for SingleNode {
    fn route_added(&self, _filter: &str) {}
    fn route_removed(&self, _filter: &str) {}
    fn shared_members(&self, _group: &str, _filter: &str, _members: usize) {}
    fn forward(&self, _message: &Arc<Message>) -> bool {
        false
    }
    fn forward_run(&self, _run: &[Arc<Message>]) -> bool {
        false
    }
    fn retained_changed(&self, _topic: &str, _message: Option<&Arc<Message>>) {}
    fn claim(&self, _client_id: &str, _want_session: bool) -> SessionFuture {
        Box::pin(std::future::ready(None))
    }
}
