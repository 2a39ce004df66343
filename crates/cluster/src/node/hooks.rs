//! The broker's `Cluster` hooks for a clustered node.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tern_broker::cluster::SessionFuture;
use tern_broker::{Cluster, Message};

use super::core::{finish_handover, take_session, Inner};
use super::forwarding;
use crate::forward::SharedTarget;
use crate::state::{pick_weighted, ClusterState};
use crate::types::{Command, WireMessage};

pub(crate) struct Hooks(pub Arc<Inner>);

impl Cluster for Hooks {
    fn route_added(&self, filter: &str) {
        self.0.routes.lock().added(filter);
        self.0.proposals_due.notify_one();
    }

    fn route_removed(&self, filter: &str) {
        self.0.routes.lock().removed(filter);
        self.0.proposals_due.notify_one();
    }

    fn shared_members(&self, group: &str, filter: &str, members: usize) {
        self.0.routes.lock().shared_members(group, filter, members);
        self.0.proposals_due.notify_one();
    }

    fn forward(&self, message: &Arc<Message>) -> bool {
        self.forward_run(std::slice::from_ref(message))
    }

    fn forward_run(&self, run: &[Arc<Message>]) -> bool {
        let Some(first) = run.first() else {
            return false;
        };
        let inner = &self.0;
        // The read guard is held until every copy is queued: a route change waits for
        // it, so once a node has applied a change, everything routed by the old routes
        // is already in the links' queues (what a session handover's flush relies on).
        let state = inner.state.read();
        // A run shares its topic, so one lookup serves it all.
        let route = state.topic_route(&first.topic);
        let peers = route.nodes.iter().filter(|&&n| n != inner.id);
        let mut forwarded = peers.clone().next().is_some();
        // Each link queues the messages themselves (reference counts): they are converted
        // to their wire form only when encoded into a batch.
        if route.shared {
            // Message by message, as each draws its own shared-group tickets.
            for message in run {
                for &node in peers.clone() {
                    forwarding::push(inner, node, message.clone(), None);
                }
                forwarded |= self.forward_to_shared_groups(&state, message);
            }
        } else {
            for &node in peers {
                forwarding::push_run(inner, node, run);
            }
        }
        drop(state);
        forwarded
    }

    fn retained_changed(&self, topic: &str, message: Option<&Arc<Message>>) {
        let wire = message.map(|m| WireMessage::from_message(m));
        self.0
            .pending_retained
            .lock()
            .insert(topic.to_string(), wire);
        self.0.proposals_due.notify_one();
    }

    fn claim(&self, client_id: &str, want_session: bool) -> SessionFuture {
        let inner = self.0.clone();
        let owner = inner.state.read().claim(client_id).map(|c| c.node);
        match owner {
            // Connected (or kept offline) elsewhere: that node must give the client up,
            // and the log's order decides. Only this case waits.
            Some(node) if node != inner.id => {
                let client_id = client_id.to_string();
                Box::pin(async move {
                    let command = Command::Claim {
                        client_id: client_id.clone(),
                        node: inner.id,
                    };
                    if let Err(e) = inner.propose(command).await {
                        tracing::warn!(client_id, error = %e, "claim not committed");
                        return None;
                    }
                    if !want_session {
                        return None;
                    }
                    let session = take_session(&inner, &client_id, node).await?;
                    let filters = session.subscriptions.keys().cloned().collect();
                    tokio::spawn(finish_handover(inner.clone(), client_id, node, filters));
                    Some(session)
                })
            }
            _ => {
                inner.pending_claims.lock().push(client_id.to_string());
                inner.proposals_due.notify_one();
                Box::pin(std::future::ready(None))
            }
        }
    }

    fn shares_across_nodes(&self) -> bool {
        true
    }
}

impl Hooks {
    /// Sends `message` to one member of each shared group whose filter matches it,
    /// drawing a ticket per group; whether some member took it or it was queued for one.
    /// Called with the state's read lock held (`state`).
    fn forward_to_shared_groups(&self, state: &ClusterState, message: &Arc<Message>) -> bool {
        let inner = &self.0;
        let mut shared = Vec::new();
        state.shared_groups_for_topic(&message.topic, |group, filter, members| {
            let ticket = inner.shared_ticket.fetch_add(1, Ordering::Relaxed);
            if let Some(node) = pick_weighted(members, ticket) {
                let others: Vec<_> = members
                    .iter()
                    .filter(|(n, _)| *n != inner.id)
                    .copied()
                    .collect();
                shared.push((group.to_string(), filter.to_string(), node, others));
            }
        });
        let mut forwarded = false;
        for (group, filter, node, others) in shared {
            let mut target = Some(node);
            if node == inner.id {
                let delivered = inner
                    .broker()
                    .is_some_and(|b| b.deliver_shared(message, &group, &filter));
                // Picked here but no local member is left: another node's member takes it.
                // (Only then is a ticket drawn: drawing one after every local delivery
                // skipped the next node in the rotation, so with one member on each of
                // three nodes, one node never got a message.)
                forwarded |= delivered;
                target = if delivered {
                    None
                } else {
                    let ticket = inner.shared_ticket.fetch_add(1, Ordering::Relaxed);
                    pick_weighted(&others, ticket)
                };
            }
            if let Some(node) = target {
                forwarding::push(
                    inner,
                    node,
                    message.clone(),
                    Some(SharedTarget { group, filter }),
                );
                forwarded = true;
            }
        }
        forwarded
    }
}
