//! The snapshot form of [`ClusterState`]: its canonical maps as named MessagePack (field
//! names survive a rolling upgrade that adds fields), with a format version. Derived
//! indexes are not in it; decoding rebuilds them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tern_broker::retained::RetainedStore;

use super::{ClaimRecord, ClusterState, Members};
use crate::types::{NodeId, WireMessage};

/// The snapshot format this code writes. Decoding refuses newer formats rather than
/// silently dropping what it does not understand.
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot encode the cluster state: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode the cluster state: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("cluster state snapshot has format {0}, this node reads up to {VERSION}")]
    UnknownVersion(u32),
}

#[derive(Serialize)]
struct ImageRef<'a> {
    version: u32,
    routes: &'a BTreeMap<String, BTreeSet<NodeId>>,
    shared: &'a BTreeMap<String, BTreeMap<String, Members>>,
    claims: &'a BTreeMap<String, ClaimRecord>,
    retained: Vec<(String, WireMessage)>,
}

#[derive(Deserialize)]
struct Image {
    version: u32,
    #[serde(default)]
    routes: BTreeMap<String, BTreeSet<NodeId>>,
    #[serde(default)]
    shared: BTreeMap<String, BTreeMap<String, Members>>,
    #[serde(default)]
    claims: BTreeMap<String, ClaimRecord>,
    #[serde(default)]
    retained: Vec<(String, WireMessage)>,
}

/// Retained messages sorted by topic, so that equal states encode to equal bytes.
/// Copies are cheap: payloads are reference-counted `Bytes`.
pub(super) fn sorted_retained(store: &RetainedStore<WireMessage>) -> Vec<(String, WireMessage)> {
    let mut out = Vec::with_capacity(store.len());
    store.for_each(|topic, m| out.push((topic.to_owned(), m.clone())));
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
}

impl ClusterState {
    /// The whole state as snapshot bytes (deterministic for equal states).
    pub fn to_snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        let image = ImageRef {
            version: VERSION,
            routes: &self.routes,
            shared: &self.shared,
            claims: &self.claims,
            retained: sorted_retained(&self.retained),
        };
        Ok(rmp_serde::to_vec_named(&image)?)
    }

    /// Rebuilds a state, derived indexes included, from [`Self::to_snapshot`] bytes.
    /// Bytes from elsewhere are checked, never trusted: empty sets and zero member counts
    /// are dropped so the maps keep their invariants.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let image: Image = rmp_serde::from_slice(bytes)?;
        if image.version > VERSION {
            return Err(SnapshotError::UnknownVersion(image.version));
        }
        let mut state = ClusterState::new();
        for (filter, nodes) in image.routes {
            for &node in &nodes {
                state.route_index.insert(&filter, node, ());
            }
            if !nodes.is_empty() {
                state.routes.insert(filter, nodes);
            }
        }
        for (group, filters) in image.shared {
            for (filter, members) in filters {
                for (node, m) in members {
                    state.set_shared(&group, &filter, node, m);
                }
            }
        }
        state.claims = image.claims;
        for (topic, message) in image.retained {
            state.retained.set(&topic, message);
        }
        Ok(state)
    }
}
