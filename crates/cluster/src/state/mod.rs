//! The replicated state machine: what every node knows about the cluster's routes, client
//! claims and retained messages. Pure data: no I/O, no locks, no openraft types. The Raft
//! store ([`crate::store`]) feeds it committed [`Command`]s in log order and shares it with
//! the rest of the node behind a lock.
//!
//! Applying is deterministic: the same commands in the same order give the same state on
//! every node, whatever the machine, clock or hash seed. That is why the canonical data
//! lives in `BTreeMap`s and nothing reads the clock (expired retained messages are skipped
//! by readers, see [`ClusterState::retained_matching`]).
//!
//! Next to the canonical maps sit derived indexes (topic tries) that answer "which nodes
//! need this publish" without scanning filters. They are never serialised: a snapshot holds
//! the canonical maps only, and [`ClusterState::from_snapshot`] rebuilds the indexes.

mod image;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use serde::{Deserialize, Serialize};
use tern_broker::retained::RetainedStore;
use tern_broker::subscriptions::SubscriptionTree;

use crate::types::{Command, CommandResponse, NodeId, RouteChange, WireMessage};

pub use image::SnapshotError;

/// Who owns a client id, and since which claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub node: NodeId,
    /// Counts the claims of this client id, from 1. A node compares epochs to tell a
    /// stale claim from the current one.
    pub epoch: u64,
}

/// A client id's claim record. `owner` is `None` once the owning node was purged: the
/// record stays as a tombstone so that the next claim's epoch still grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ClaimRecord {
    owner: Option<NodeId>,
    epoch: u64,
}

/// What applying a command changed, for observers outside the state machine (see
/// [`ClusterState::apply_observed`]). Reported only when something actually changed,
/// except claims and retained sets, which are always news.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `node`'s routes or shared-group routes changed.
    Routes { node: NodeId },
    /// `client_id` is now owned by `node`; `previous` is the former owner if it was
    /// another node (that node must disconnect its client).
    Claimed {
        client_id: String,
        node: NodeId,
        epoch: u64,
        previous: Option<NodeId>,
    },
    /// A retained message was set (`Some`) or cleared (`None`).
    Retained {
        topic: String,
        message: Option<WireMessage>,
    },
    /// Everything `node` owned (routes, shared entries, claims) was forgotten.
    Purged { node: NodeId },
}

/// Members of one shared group for one filter, per node.
type Members = BTreeMap<NodeId, u32>;

/// The cluster's replicated state (see the module documentation).
#[derive(Default)]
pub struct ClusterState {
    /// filter -> nodes with at least one local subscriber to it.
    routes: BTreeMap<String, BTreeSet<NodeId>>,
    /// group -> filter -> node -> members of `$share/group/filter` on that node (never 0).
    shared: BTreeMap<String, BTreeMap<String, Members>>,
    /// client id -> owner and epoch.
    claims: BTreeMap<String, ClaimRecord>,
    /// topic -> retained message. A trie, so it is both the data and its filter index.
    retained: RetainedStore<WireMessage>,
    /// Derived from `routes`: filter trie, key = node.
    route_index: SubscriptionTree<NodeId, ()>,
    /// Derived from `shared`: filter trie, key = group, value = (node, members) sorted by
    /// node, handed to callers as a slice.
    shared_index: SubscriptionTree<Arc<str>, Vec<(NodeId, u32)>>,
    /// Derived from both indexes, filled lazily by [`Self::topic_route`]: per topic, the
    /// nodes with a matching route and whether any shared group matches. Emptied by every
    /// command that can change routes or shared groups (under the caller's write lock), so
    /// a reader holding the read lock never sees an entry older than the indexes.
    topic_routes: Mutex<HashMap<Box<str>, TopicRoute>>,
}

/// Most topics [`ClusterState::topic_route`] remembers; past it, it starts over (a
/// publish path with more distinct live topics than this just walks the tries as before).
const TOPIC_ROUTES_MAX: usize = 16 * 1024;

/// What the routes say about one topic: see [`ClusterState::topic_route`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicRoute {
    /// Nodes with at least one route matching the topic, sorted, without duplicates (the
    /// local node included if it has one).
    pub nodes: Arc<[NodeId]>,
    /// Whether some shared group's filter matches the topic (then ask
    /// [`ClusterState::shared_groups_for_topic`]).
    pub shared: bool,
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one committed command. Deterministic; never panics on any input.
    pub fn apply(&mut self, cmd: &Command) -> CommandResponse {
        self.apply_observed(cmd, &mut |_| {})
    }

    /// [`Self::apply`], reporting each [`Change`] to `on_change` as it happens.
    pub fn apply_observed<F: FnMut(Change)>(
        &mut self,
        cmd: &Command,
        on_change: &mut F,
    ) -> CommandResponse {
        // Claims and retained messages leave routes alone; anything else may change them.
        if !matches!(cmd, Command::Claim { .. } | Command::Retain { .. }) {
            self.topic_routes.get_mut().clear();
        }
        match cmd {
            Command::Routes { node, changes } => {
                let mut changed = false;
                for change in changes {
                    changed |= self.route_change(*node, change);
                }
                if changed {
                    on_change(Change::Routes { node: *node });
                }
                CommandResponse::Done
            }
            Command::Claim { client_id, node } => {
                let (epoch, previous) = self.claim_for(client_id, *node);
                on_change(Change::Claimed {
                    client_id: client_id.clone(),
                    node: *node,
                    epoch,
                    previous,
                });
                CommandResponse::Claimed { epoch, previous }
            }
            Command::Retain { topic, message } => {
                let changed = match message {
                    Some(m) => {
                        self.retained.set(topic, m.clone());
                        true
                    }
                    None => self.retained.remove(topic).is_some(),
                };
                if changed {
                    on_change(Change::Retained {
                        topic: topic.clone(),
                        message: message.clone(),
                    });
                }
                CommandResponse::Done
            }
            Command::PurgeNode { node } => {
                self.purge(*node);
                on_change(Change::Purged { node: *node });
                CommandResponse::Done
            }
            Command::Batch(cmds) => CommandResponse::Batch(
                cmds.iter()
                    .map(|c| self.apply_observed(c, on_change))
                    .collect(),
            ),
        }
    }

    /// Applies one route change of `node`; true if the state changed.
    fn route_change(&mut self, node: NodeId, change: &RouteChange) -> bool {
        match change {
            RouteChange::Add { filter } => {
                let added = self.routes.entry(filter.clone()).or_default().insert(node);
                if added {
                    self.route_index.insert(filter, node, ());
                }
                added
            }
            RouteChange::Remove { filter } => self.remove_route(filter, node),
            RouteChange::Shared {
                group,
                filter,
                members,
            } => self.set_shared(group, filter, node, *members),
        }
    }

    fn remove_route(&mut self, filter: &str, node: NodeId) -> bool {
        let Some(nodes) = self.routes.get_mut(filter) else {
            return false;
        };
        if !nodes.remove(&node) {
            return false;
        }
        if nodes.is_empty() {
            self.routes.remove(filter);
        }
        self.route_index.remove(filter, &node);
        true
    }

    /// Sets `node`'s member count in (group, filter); 0 removes it. True if it changed.
    fn set_shared(&mut self, group: &str, filter: &str, node: NodeId, members: u32) -> bool {
        let old = match self.shared.get_mut(group).and_then(|g| g.get_mut(filter)) {
            Some(m) if members == 0 => m.remove(&node),
            Some(m) => m.insert(node, members),
            None if members == 0 => return false,
            None => self
                .shared
                .entry(group.to_owned())
                .or_default()
                .entry(filter.to_owned())
                .or_default()
                .insert(node, members),
        };
        if old == Some(members) || (old.is_none() && members == 0) {
            return false;
        }
        self.sync_shared(group, filter);
        true
    }

    /// Makes the shared index entry of (group, filter) match `shared`, dropping empty
    /// maps on the way.
    fn sync_shared(&mut self, group: &str, filter: &str) {
        let list: Vec<(NodeId, u32)> = self
            .shared
            .get(group)
            .and_then(|g| g.get(filter))
            .map(|m| m.iter().map(|(n, c)| (*n, *c)).collect())
            .unwrap_or_default();
        if list.is_empty() {
            if let Some(g) = self.shared.get_mut(group) {
                g.remove(filter);
                if g.is_empty() {
                    self.shared.remove(group);
                }
            }
            self.shared_index.remove(filter, group);
        } else if let Some(slot) = self.shared_index.get_mut(filter, group) {
            *slot = list;
        } else {
            self.shared_index.insert(filter, Arc::from(group), list);
        }
    }

    /// Records a claim of `client_id` by `node`: its epoch, and the previous owner if that
    /// was another node.
    fn claim_for(&mut self, client_id: &str, node: NodeId) -> (u64, Option<NodeId>) {
        let record = self
            .claims
            .entry(client_id.to_owned())
            .or_insert(ClaimRecord {
                owner: None,
                epoch: 0,
            });
        let previous = record.owner.filter(|&owner| owner != node);
        record.owner = Some(node);
        record.epoch = record.epoch.saturating_add(1);
        (record.epoch, previous)
    }

    /// Forgets `node`'s routes, shared members and claims (claims become tombstones that
    /// keep their epoch). Scans everything: purges are rare.
    fn purge(&mut self, node: NodeId) {
        let filters: Vec<String> = self
            .routes
            .iter()
            .filter(|(_, nodes)| nodes.contains(&node))
            .map(|(f, _)| f.clone())
            .collect();
        for filter in filters {
            self.remove_route(&filter, node);
        }
        let shared: Vec<(String, String)> = self
            .shared
            .iter()
            .flat_map(|(g, filters)| {
                filters
                    .iter()
                    .filter(|(_, m)| m.contains_key(&node))
                    .map(move |(f, _)| (g.clone(), f.clone()))
            })
            .collect();
        for (group, filter) in shared {
            self.set_shared(&group, &filter, node, 0);
        }
        for record in self.claims.values_mut() {
            if record.owner == Some(node) {
                record.owner = None;
            }
        }
    }

    /// The nodes whose routes match `topic` (a valid topic name; the `$` rule applies)
    /// and whether a shared group does (then ask [`Self::shared_groups_for_topic`]),
    /// remembered per topic until the next route change: the publish path asks this for
    /// every message, and most messages go to a topic seen before.
    pub fn topic_route(&self, topic: &str) -> TopicRoute {
        if let Some(route) = self.topic_routes.lock().get(topic) {
            return route.clone();
        }
        // Few nodes match a topic; a small vector beats a set.
        let mut nodes: Vec<NodeId> = Vec::new();
        self.route_index
            .for_each_match(topic, |_, &node, _| nodes.push(node));
        nodes.sort_unstable();
        nodes.dedup();
        let mut shared = false;
        self.shared_index
            .for_each_match(topic, |_, _, _| shared = true);
        let route = TopicRoute {
            nodes: nodes.into(),
            shared,
        };
        let mut cache = self.topic_routes.lock();
        if cache.len() >= TOPIC_ROUTES_MAX {
            cache.clear();
        }
        cache.insert(topic.into(), route.clone());
        route
    }

    /// Calls `f(group, filter, members)` for every shared group whose filter matches
    /// `topic`, where `members` lists (node, member count) sorted by node, the local node
    /// included. The caller picks one node per group, e.g. with [`pick_weighted`].
    pub fn shared_groups_for_topic(
        &self,
        topic: &str,
        mut f: impl FnMut(&str, &str, &[(NodeId, u32)]),
    ) {
        self.shared_index
            .for_each_match(topic, |filter, group, members| f(group, filter, members));
    }

    /// The live claim of `client_id`, if any node owns it.
    pub fn claim(&self, client_id: &str) -> Option<Claim> {
        let record = self.claims.get(client_id)?;
        record.owner.map(|node| Claim {
            node,
            epoch: record.epoch,
        })
    }

    /// Calls `f(topic, message)` for every retained message whose topic matches `filter`.
    /// Expired messages are still stored (applying cannot read the clock): skip them with
    /// [`WireMessage::is_expired_at`].
    pub fn retained_matching(&self, filter: &str, f: impl FnMut(&str, &WireMessage)) {
        self.retained.for_each_matching(filter, f);
    }

    /// The message retained on exactly `topic`.
    pub fn retained(&self, topic: &str) -> Option<&WireMessage> {
        self.retained.get(topic)
    }

    /// Calls `f(filter)` for each plain route of `node`, e.g. to reconcile a restarted
    /// node's subscriptions with what the cluster believes.
    pub fn routes_of(&self, node: NodeId, mut f: impl FnMut(&str)) {
        for (filter, nodes) in &self.routes {
            if nodes.contains(&node) {
                f(filter);
            }
        }
    }

    /// Calls `f(group, filter, members)` for each shared-group entry of `node`.
    pub fn shared_of(&self, node: NodeId, mut f: impl FnMut(&str, &str, u32)) {
        for (group, filters) in &self.shared {
            for (filter, members) in filters {
                if let Some(&m) = members.get(&node) {
                    f(group, filter, m);
                }
            }
        }
    }

    /// Number of plain (node, filter) routes.
    pub fn route_count(&self) -> usize {
        self.route_index.len()
    }

    /// Number of (group, filter, node) shared entries.
    pub fn shared_count(&self) -> usize {
        self.shared
            .values()
            .flat_map(|g| g.values())
            .map(|m| m.len())
            .sum()
    }

    /// Number of client ids currently owned by some node.
    pub fn claim_count(&self) -> usize {
        self.claims.values().filter(|r| r.owner.is_some()).count()
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }
}

/// Picks one node of a shared group, weighted by its member count: `ticket` (a counter or
/// random number) is taken modulo the total number of members. `None` if no members.
pub fn pick_weighted(members: &[(NodeId, u32)], ticket: u64) -> Option<NodeId> {
    let total: u64 = members.iter().map(|&(_, m)| u64::from(m)).sum();
    if total == 0 {
        return None;
    }
    let mut left = ticket % total;
    for &(node, m) in members {
        let m = u64::from(m);
        if left < m {
            return Some(node);
        }
        left -= m;
    }
    None
}

impl PartialEq for ClusterState {
    /// Equal canonical data (derived indexes follow from it).
    fn eq(&self, other: &Self) -> bool {
        self.routes == other.routes
            && self.shared == other.shared
            && self.claims == other.claims
            && image::sorted_retained(&self.retained) == image::sorted_retained(&other.retained)
    }
}

impl std::fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterState")
            .field("routes", &self.route_count())
            .field("shared", &self.shared_count())
            .field("claims", &self.claims.len())
            .field("retained", &self.retained.len())
            .finish()
    }
}
