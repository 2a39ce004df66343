//! Folding a node's route changes between two Raft proposals. The broker reports every
//! first/last local subscriber of a filter and every shared-group member count; the node
//! proposes what accumulated as one `Command::Routes` entry per short window, so a storm
//! of subscribes is one Raft round, and a filter added and removed again within the
//! window costs nothing.

use std::collections::BTreeMap;

use crate::types::{NodeId, RouteChange};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Plain(String),
    Shared { group: String, filter: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    Add,
    Remove,
    Members(u32),
}

/// Route changes not yet proposed, relative to what the replicated state already holds.
#[derive(Debug, Default)]
pub struct RouteBatcher {
    pending: BTreeMap<Key, Pending>,
}

impl RouteBatcher {
    pub fn new() -> Self {
        Self::default()
    }

    /// The node has its first local subscriber to `filter`.
    pub fn added(&mut self, filter: &str) {
        self.fold(Key::Plain(filter.to_string()), Pending::Add);
    }

    /// The node's last local subscriber to `filter` left.
    pub fn removed(&mut self, filter: &str) {
        self.fold(Key::Plain(filter.to_string()), Pending::Remove);
    }

    /// The node has `members` local members of `$share/{group}/{filter}`.
    pub fn shared_members(&mut self, group: &str, filter: &str, members: usize) {
        let key = Key::Shared {
            group: group.to_string(),
            filter: filter.to_string(),
        };
        let members = u32::try_from(members).unwrap_or(u32::MAX);
        self.pending.insert(key, Pending::Members(members));
    }

    fn fold(&mut self, key: Key, change: Pending) {
        match (self.pending.get(&key), change) {
            // Added then removed (or the reverse) within one window: the replicated
            // state is already right.
            (Some(Pending::Add), Pending::Remove) | (Some(Pending::Remove), Pending::Add) => {
                self.pending.remove(&key);
            }
            _ => {
                self.pending.insert(key, change);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Everything pending, as the changes of one proposal (in a stable order); the
    /// batcher is empty afterwards. If the proposal fails, give them back with
    /// [`RouteBatcher::restore`].
    pub fn take(&mut self) -> Vec<RouteChange> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(key, change)| match (key, change) {
                (Key::Plain(filter), Pending::Add) => RouteChange::Add { filter },
                (Key::Plain(filter), _) => RouteChange::Remove { filter },
                (Key::Shared { group, filter }, Pending::Members(members)) => RouteChange::Shared {
                    group,
                    filter,
                    members,
                },
                (Key::Shared { group, filter }, _) => RouteChange::Shared {
                    group,
                    filter,
                    members: 0,
                },
            })
            .collect()
    }

    /// Puts back changes whose proposal failed, under anything that happened since
    /// (newer changes win).
    pub fn restore(&mut self, changes: Vec<RouteChange>) {
        let newer = std::mem::take(&mut self.pending);
        for change in changes {
            match change {
                RouteChange::Add { filter } => self.added(&filter),
                RouteChange::Remove { filter } => self.removed(&filter),
                RouteChange::Shared {
                    group,
                    filter,
                    members,
                } => self.shared_members(&group, &filter, members as usize),
            }
        }
        for (key, change) in newer {
            match change {
                Pending::Members(_) => {
                    self.pending.insert(key, change);
                }
                _ => self.fold(key, change),
            }
        }
    }

    /// The proposal for `node`, if anything is pending.
    pub fn take_command(&mut self, node: NodeId) -> Option<crate::types::Command> {
        (!self.is_empty()).then(|| crate::types::Command::Routes {
            node,
            changes: self.take(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_add_undone_within_the_window_costs_nothing() {
        let mut b = RouteBatcher::new();
        b.added("a");
        b.removed("a");
        b.removed("b");
        b.added("b");
        assert!(b.is_empty());
        b.added("c");
        b.shared_members("g", "jobs", 2);
        b.shared_members("g", "jobs", 1);
        assert_eq!(
            b.take(),
            [
                RouteChange::Add { filter: "c".into() },
                RouteChange::Shared {
                    group: "g".into(),
                    filter: "jobs".into(),
                    members: 1
                },
            ]
        );
        assert!(b.is_empty());
    }

    #[test]
    fn a_failed_proposal_is_restored_under_newer_changes() {
        let mut b = RouteBatcher::new();
        b.added("x");
        b.shared_members("g", "f", 3);
        let failed = b.take();
        b.removed("x");
        b.shared_members("g", "f", 1);
        b.restore(failed);
        assert!(b
            .take()
            .iter()
            .all(|c| !matches!(c, RouteChange::Add { .. } | RouteChange::Remove { .. })));
        b.added("y");
        let failed = b.take();
        b.restore(failed);
        assert_eq!(b.take(), [RouteChange::Add { filter: "y".into() }]);
    }

    proptest! {
        /// Applying the batches in order gives the same routes as applying every event:
        /// folding never loses or invents a change.
        #[test]
        fn batches_replay_to_the_same_routes(
            events in proptest::collection::vec((0..4u8, 0..3usize, prop::bool::ANY, 0..4usize), 0..200),
            flush_every in 1..20usize,
        ) {
            let filters = ["a", "b/+", "c/#", "d"];
            let mut local: BTreeMap<&str, usize> = BTreeMap::new();
            let mut shared: BTreeMap<&str, usize> = BTreeMap::new();
            let mut replicated: BTreeSet<String> = BTreeSet::new();
            let mut replicated_shared: BTreeMap<String, u32> = BTreeMap::new();
            let mut b = RouteBatcher::new();
            let apply = |changes: Vec<RouteChange>, r: &mut BTreeSet<String>, rs: &mut BTreeMap<String, u32>| {
                for c in changes {
                    match c {
                        RouteChange::Add { filter } => { r.insert(filter); }
                        RouteChange::Remove { filter } => { r.remove(&filter); }
                        RouteChange::Shared { filter, members, .. } => {
                            if members == 0 { rs.remove(&filter); } else { rs.insert(filter, members); }
                        }
                    }
                }
            };
            for (i, (f, _, subscribe, members)) in events.into_iter().enumerate() {
                let filter = filters[usize::from(f)];
                // A local subscriber count per filter drives first/last events, as the
                // broker's index does.
                let n = local.entry(filter).or_default();
                if subscribe {
                    *n += 1;
                    if *n == 1 { b.added(filter); }
                } else if *n > 0 {
                    *n -= 1;
                    if *n == 0 { b.removed(filter); }
                }
                shared.insert(filter, members);
                b.shared_members("g", filter, members);
                if i % flush_every == 0 {
                    apply(b.take(), &mut replicated, &mut replicated_shared);
                }
            }
            apply(b.take(), &mut replicated, &mut replicated_shared);
            let expected: BTreeSet<String> = local.iter().filter(|(_, n)| **n > 0).map(|(f, _)| f.to_string()).collect();
            prop_assert_eq!(replicated, expected);
            let expected_shared: BTreeMap<String, u32> =
                shared.iter().filter(|(_, m)| **m > 0).map(|(f, m)| (f.to_string(), *m as u32)).collect();
            prop_assert_eq!(replicated_shared, expected_shared);
        }
    }
}
