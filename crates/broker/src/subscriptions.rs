//! The subscription index: which subscribers' filters match a topic. Every PUBLISH is
//! matched here, so matching walks a trie of filter levels instead of scanning filters,
//! and allocates nothing per level: the topic is split lazily with a cloned `Split`
//! iterator, and each filter's full text is stored once in its node so the callback gets
//! it without building strings.
//!
//! Plain data structures without locks; the broker decides how to share them. Filters are
//! assumed valid (see [`crate::topic::validate_topic_filter`]); an invalid one is stored
//! without panicking but may never match.
//!
//! Deep filters and topics (up to 32768 levels fit in 65535 bytes) are walked with
//! explicit stacks and loops, never recursion, so a hostile client cannot overflow a
//! worker thread's stack.
//!
//! HashMaps use the standard SipHash hasher on purpose: topic levels come from clients, and
//! a weaker hasher would let one client degrade every lookup with colliding level names.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::str::Split;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The subscribers of one filter, kept in the filter's trie node.
struct Leaf<K, V> {
    /// The filter's full text, handed to match callbacks.
    filter: Box<str>,
    entries: HashMap<K, V>,
}

struct Node<K, V> {
    /// Literal levels. An empty map does not allocate, so leaves stay small.
    children: HashMap<Box<str>, Node<K, V>>,
    /// The `+` child.
    plus: Option<Box<Node<K, V>>>,
    /// The `#` child. In a valid filter it has subscribers and no children.
    hash: Option<Box<Node<K, V>>>,
    /// Subscribers whose filter ends at this node; `None` when there are none.
    leaf: Option<Box<Leaf<K, V>>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            plus: None,
            hash: None,
            leaf: None,
        }
    }
}

impl<K, V> Node<K, V> {
    fn child(&self, level: &str) -> Option<&Node<K, V>> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            l => self.children.get(l),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node<K, V>> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            l => self.children.get_mut(l),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node<K, V> {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            "#" => self.hash.get_or_insert_with(Box::default),
            l => self.children.entry(l.into()).or_default(),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            "#" => self.hash = None,
            l => {
                self.children.remove(l);
            }
        }
    }

    fn child_count(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some()) + usize::from(self.hash.is_some())
    }

    fn is_empty(&self) -> bool {
        self.leaf.is_none() && self.child_count() == 0
    }

    fn children(&self) -> impl Iterator<Item = &Node<K, V>> {
        self.children
            .values()
            .chain(self.plus.as_deref())
            .chain(self.hash.as_deref())
    }

    fn move_children_to(&mut self, out: &mut Vec<Node<K, V>>) {
        out.extend(self.children.drain().map(|(_, n)| n));
        out.extend(self.plus.take().map(|n| *n));
        out.extend(self.hash.take().map(|n| *n));
    }

    /// Calls `f` for every subscriber stored at this node.
    fn visit_leaf(&self, f: &mut impl FnMut(&str, &K, &V)) {
        if let Some(leaf) = &self.leaf {
            for (k, v) in &leaf.entries {
                f(&leaf.filter, k, v);
            }
        }
    }
}

/// Dropping a trie node drops its subtree with an explicit stack: the default recursive
/// drop would overflow the stack on a filter with tens of thousands of levels.
impl<K, V> Drop for Node<K, V> {
    fn drop(&mut self) {
        if self.child_count() == 0 {
            return;
        }
        let mut stack: Vec<Node<K, V>> = Vec::new();
        self.move_children_to(&mut stack);
        while let Some(mut node) = stack.pop() {
            node.move_children_to(&mut stack);
            // `node` now has no children, so its own drop returns at once.
        }
    }
}

/// A trie of topic filters, each with a set of subscribers (`K`, e.g. a client id) and
/// per-subscription data (`V`, e.g. subscription options).
///
/// The same key may subscribe to many filters, and many keys to one filter; a (filter,
/// key) pair holds one value.
pub struct SubscriptionTree<K, V> {
    root: Node<K, V>,
    /// Total (filter, key) subscriptions.
    len: usize,
    /// Filters with at least one subscriber.
    filters: usize,
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
            filters: 0,
        }
    }
}

impl<K, V> std::fmt::Debug for SubscriptionTree<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("len", &self.len)
            .field("filters", &self.filters)
            .finish()
    }
}

impl<K: Eq + Hash, V> SubscriptionTree<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes `key` to `filter` with `value`; returns the value it replaced if the key
    /// was already subscribed to this filter. The caller has validated the filter.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_or_insert(level);
        }
        let leaf = node.leaf.get_or_insert_with(|| {
            self.filters += 1;
            Box::new(Leaf {
                filter: filter.into(),
                entries: HashMap::new(),
            })
        });
        let previous = leaf.entries.insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Unsubscribes `key` from `filter`, returning its value. Nodes left without
    /// subscribers or children are removed, so churn does not grow memory.
    pub fn remove<Q>(&mut self, filter: &str, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Walk down, remembering the deepest node that must survive if everything below
        // it on this path turns out empty: the root, or a node with subscribers or with
        // other children.
        let mut cut: Option<(usize, &str)> = None;
        let mut node = &mut self.root;
        for (depth, level) in filter.split('/').enumerate() {
            if depth == 0 || node.leaf.is_some() || node.child_count() > 1 {
                cut = Some((depth, level));
            }
            node = node.child_mut(level)?;
        }
        let leaf = node.leaf.as_mut()?;
        let value = leaf.entries.remove(key)?;
        self.len -= 1;
        if leaf.entries.is_empty() {
            node.leaf = None;
            self.filters -= 1;
        }
        if node.is_empty() {
            if let Some((cut_depth, cut_level)) = cut {
                let mut node = &mut self.root;
                for level in filter.split('/').take(cut_depth) {
                    match node.child_mut(level) {
                        Some(next) => node = next,
                        None => return Some(value), // unreachable: the path exists
                    }
                }
                node.remove_child(cut_level);
            }
        }
        Some(value)
    }

    /// The value of `key`'s subscription to `filter`.
    pub fn get<Q>(&self, filter: &str, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.leaf(filter)?.entries.get(key)
    }

    /// Mutable access to the value of `key`'s subscription to `filter`.
    pub fn get_mut<Q>(&mut self, filter: &str, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut node = &mut self.root;
        for level in filter.split('/') {
            node = node.child_mut(level)?;
        }
        node.leaf.as_mut()?.entries.get_mut(key)
    }

    fn leaf(&self, filter: &str) -> Option<&Leaf<K, V>> {
        let mut node = &self.root;
        for level in filter.split('/') {
            node = node.child(level)?;
        }
        node.leaf.as_deref()
    }

    /// How many keys subscribe to exactly this filter (wildcards taken literally).
    pub fn subscriber_count(&self, filter: &str) -> usize {
        self.leaf(filter).map_or(0, |l| l.entries.len())
    }

    /// Distinct filters with at least one subscriber.
    pub fn filter_count(&self) -> usize {
        self.filters
    }

    /// Total subscriptions ((filter, key) pairs).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Trie nodes below the root; 0 for an empty tree. Walks the whole trie: for tests and
    /// occasional diagnostics, not the hot path.
    pub fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack: Vec<&Node<K, V>> = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += node.child_count();
            stack.extend(node.children());
        }
        count
    }

    /// Calls `f(filter, key, value)` for every subscription whose filter matches `topic`
    /// (a valid topic name), honouring the `$` rule. Each subscription is visited once;
    /// the order is unspecified. A key subscribed through several matching filters is
    /// visited once per filter: deduplicating (MQTT delivers one copy per client, at the
    /// highest granted QoS) is the caller's business.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&str, &K, &V)) {
        let dollar = topic.starts_with('$');
        // The branch being walked, and pending ones (a node and the topic levels it has
        // still to consume). Only `+` subscriptions add a pending branch, so a topic that
        // meets none allocates nothing.
        let mut current = Some((&self.root, topic.split('/')));
        let mut stack: Vec<(&Node<K, V>, Split<'_, char>)> = Vec::new();
        while let Some((node, mut rest)) = current.take().or_else(|| stack.pop()) {
            let wildcards_allowed = !(dollar && std::ptr::eq(node, &self.root));
            match rest.next() {
                None => {
                    // The topic ends here: this node's filter matches, and so does
                    // `{this}/#` (`#` also matches the parent level).
                    node.visit_leaf(&mut f);
                    if let Some(hash) = &node.hash {
                        hash.visit_leaf(&mut f);
                    }
                }
                Some(level) => {
                    if wildcards_allowed {
                        if let Some(hash) = &node.hash {
                            hash.visit_leaf(&mut f);
                        }
                        if let Some(plus) = &node.plus {
                            stack.push((plus, rest.clone()));
                        }
                    }
                    if let Some(child) = node.children.get(level) {
                        current = Some((child, rest));
                    }
                }
            }
        }
    }

    /// Calls `f(filter, key, value)` for every subscription, in no particular order (for
    /// snapshots and route rebuilds).
    pub fn for_each(&self, mut f: impl FnMut(&str, &K, &V)) {
        let mut stack: Vec<&Node<K, V>> = vec![&self.root];
        while let Some(node) = stack.pop() {
            node.visit_leaf(&mut f);
            stack.extend(node.children());
        }
    }
}

/// One shared-subscription group for one filter: its members and a round-robin cursor.
struct Group<K> {
    /// Members in join order, except that leaving swaps the last member into the gap.
    members: Vec<K>,
    /// Each member's index in `members`, for O(1) removal.
    index: HashMap<K, usize>,
    /// Where the next [`SharedGroups::pick`] starts looking. Atomic so that picking needs
    /// only `&self` (a read lock in the broker); concurrent pickers may skew the rotation
    /// slightly, never break it.
    cursor: AtomicUsize,
}

/// Shared subscriptions (`$share/{group}/{filter}`): for each (group, filter), the member
/// keys, and a round-robin choice of one member per message.
///
/// Groups live in a [`SubscriptionTree`] keyed by filter and group name, so finding the
/// groups whose filter matches a topic is the same trie walk as for ordinary
/// subscriptions. Per-member subscription options are not kept here: the broker looks
/// them up in the chosen member's session.
///
/// ```
/// use tern_broker::subscriptions::SharedGroups;
/// let mut groups: SharedGroups<&str> = SharedGroups::new();
/// assert!(groups.add("workers", "jobs/+", "c1")); // first member: announce the route
/// assert!(!groups.add("workers", "jobs/+", "c2"));
/// let mut chosen = Vec::new();
/// groups.for_each_matching_group("jobs/1", |group, filter| {
///     chosen.extend(groups.pick(group, filter, |_| true));
/// });
/// assert_eq!(chosen.len(), 1);
/// assert!(!groups.remove("workers", "jobs/+", &"c1"));
/// assert!(groups.remove("workers", "jobs/+", &"c2")); // empty: withdraw the route
/// ```
pub struct SharedGroups<K> {
    groups: SubscriptionTree<Arc<str>, Group<K>>,
}

impl<K> Default for SharedGroups<K> {
    fn default() -> Self {
        Self {
            groups: SubscriptionTree::default(),
        }
    }
}

impl<K> std::fmt::Debug for SharedGroups<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedGroups")
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl<K: Eq + Hash + Clone> SharedGroups<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` to `group` for `filter` (the part after `$share/{group}/`). Returns true
    /// if it is the group's first member for this filter, i.e. the node now needs a
    /// shared-group route. Adding an existing member changes nothing and returns false.
    pub fn add(&mut self, group: &str, filter: &str, key: K) -> bool {
        if let Some(g) = self.groups.get_mut(filter, group) {
            if !g.index.contains_key(&key) {
                g.index.insert(key.clone(), g.members.len());
                g.members.push(key);
            }
            return false;
        }
        let g = Group {
            members: vec![key.clone()],
            index: HashMap::from([(key, 0)]),
            cursor: AtomicUsize::new(0),
        };
        self.groups.insert(filter, group.into(), g);
        true
    }

    /// Removes `key` from `group` for `filter`. Returns true if the group is now empty
    /// (and gone), i.e. the node should withdraw its shared-group route; false if members
    /// remain or `key` was not a member.
    pub fn remove(&mut self, group: &str, filter: &str, key: &K) -> bool {
        let Some(g) = self.groups.get_mut(filter, group) else {
            return false;
        };
        let Some(i) = g.index.remove(key) else {
            return false;
        };
        g.members.swap_remove(i);
        if let Some(moved) = g.members.get(i) {
            if let Some(slot) = g.index.get_mut(moved) {
                *slot = i;
            }
        }
        if g.members.is_empty() {
            self.groups.remove(filter, group);
            return true;
        }
        false
    }

    /// Chooses the next member of `group` for `filter`, round-robin, skipping members for
    /// which `is_eligible` is false (so the broker can prefer online members: call it
    /// first with "online", then, if that yields nothing, with "any"). `None` if the group
    /// does not exist or no member is eligible.
    pub fn pick(&self, group: &str, filter: &str, is_eligible: impl Fn(&K) -> bool) -> Option<K> {
        let g = self.groups.get(filter, group)?;
        let n = g.members.len();
        let start = g.cursor.load(Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| is_eligible(&g.members[i]))
            .map(|i| {
                g.cursor.store((i + 1) % n, Ordering::Relaxed);
                g.members[i].clone()
            })
    }

    /// Calls `f(group, filter)` for every group whose filter matches `topic` (`$` rule
    /// included), once per (group, filter). Same trie walk as
    /// [`SubscriptionTree::for_each_match`].
    pub fn for_each_matching_group(&self, topic: &str, mut f: impl FnMut(&str, &str)) {
        self.groups
            .for_each_match(topic, |filter, group, _| f(group, filter));
    }

    /// The members of `group` for `filter` (empty if there is no such group).
    pub fn members(&self, group: &str, filter: &str) -> &[K] {
        self.groups.get(filter, group).map_or(&[], |g| &g.members)
    }

    /// Calls `f(group, filter, member_count)` for every group (for route rebuilds).
    pub fn for_each_group(&self, mut f: impl FnMut(&str, &str, usize)) {
        self.groups
            .for_each(|filter, group, g| f(group, filter, g.members.len()));
    }

    /// Number of (group, filter) pairs with at least one member.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Trie nodes in use (0 when empty); for tests and diagnostics.
    pub fn node_count(&self) -> usize {
        self.groups.node_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use std::collections::BTreeSet;

    fn matched(tree: &SubscriptionTree<u32, u8>, topic: &str) -> BTreeSet<(String, u32, u8)> {
        let mut out = BTreeSet::new();
        tree.for_each_match(topic, |f, k, v| {
            assert!(
                out.insert((f.to_string(), *k, *v)),
                "visited twice: {f} {k}"
            );
        });
        out
    }

    #[test]
    fn insert_replace_remove() {
        let mut t = SubscriptionTree::new();
        assert_eq!(t.insert("a/b", 1, 10), None);
        assert_eq!(t.insert("a/b", 1, 11), Some(10));
        assert_eq!(t.insert("a/b", 2, 20), None);
        assert_eq!(t.insert("a/+", 1, 30), None);
        assert_eq!((t.len(), t.filter_count()), (3, 2));
        assert_eq!(t.subscriber_count("a/b"), 2);
        assert_eq!(t.subscriber_count("a"), 0);
        assert_eq!(t.get("a/b", &1), Some(&11));
        assert_eq!(t.remove("a/b", &3), None);
        assert_eq!(t.remove("x/y", &1), None);
        assert_eq!(t.remove("a/b", &1), Some(11));
        assert_eq!(t.remove("a/b", &1), None);
        assert_eq!((t.len(), t.filter_count()), (2, 2));
        assert_eq!(t.remove("a/b", &2), Some(20));
        assert_eq!(t.remove("a/+", &1), Some(30));
        assert!(t.is_empty());
        assert_eq!((t.filter_count(), t.node_count()), (0, 0));
    }

    #[test]
    fn pruning_keeps_shared_prefixes() {
        let mut t = SubscriptionTree::new();
        t.insert("a/b/c/d", 1, 0);
        t.insert("a/b", 2, 0);
        t.insert("a/x/#", 3, 0);
        assert_eq!(t.node_count(), 6); // a, a/b, a/b/c, a/b/c/d, a/x, a/x/#
        t.remove("a/b/c/d", &1);
        assert_eq!(t.node_count(), 4); // a, a/b, a/x, a/x/#
        assert_eq!(t.subscriber_count("a/b"), 1);
        t.remove("a/b", &2);
        assert_eq!(t.node_count(), 3);
        t.remove("a/x/#", &3);
        assert_eq!(t.node_count(), 0);
    }

    #[test]
    fn matching_rules() {
        let mut t = SubscriptionTree::new();
        for (i, f) in [
            "a/b", "a/+", "a/#", "#", "+/b", "+", "a/b/#", "$SYS/#", "$SYS/+", "+/+/#",
        ]
        .iter()
        .enumerate()
        {
            t.insert(f, i as u32, 0);
        }
        let filters = |topic| {
            matched(&t, topic)
                .into_iter()
                .map(|(f, _, _)| f)
                .collect::<BTreeSet<_>>()
        };
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            filters("a/b"),
            set(&["a/b", "a/+", "a/#", "#", "+/b", "a/b/#", "+/+/#"])
        );
        assert_eq!(filters("a"), set(&["a/#", "#", "+"]));
        assert_eq!(filters("$SYS/x"), set(&["$SYS/#", "$SYS/+"]));
        assert_eq!(filters("$SYS"), set(&["$SYS/#"]));
        assert_eq!(filters("b/c/d"), set(&["#", "+/+/#"]));
    }

    #[test]
    fn deep_topics_do_not_recurse() {
        let deep = vec!["a"; 30_000].join("/");
        let mut t = SubscriptionTree::new();
        t.insert(&deep, 1u32, 0u8);
        let plus_deep = vec!["+"; 30_000].join("/");
        t.insert(&plus_deep, 2, 0);
        assert_eq!(matched(&t, &deep).len(), 2);
        assert_eq!(t.remove(&deep, &1), Some(0));
        assert_eq!(t.remove(&plus_deep, &2), Some(0));
        assert_eq!(t.node_count(), 0);
    }

    #[test]
    fn shared_groups_round_robin() {
        let mut g: SharedGroups<u32> = SharedGroups::new();
        assert!(g.add("g", "a/+", 1));
        assert!(!g.add("g", "a/+", 2));
        assert!(!g.add("g", "a/+", 3));
        assert!(!g.add("g", "a/+", 3));
        assert!(g.add("h", "a/+", 9));
        assert_eq!(g.members("g", "a/+"), &[1, 2, 3]);
        let picks: Vec<_> = (0..6)
            .filter_map(|_| g.pick("g", "a/+", |_| true))
            .collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        // Only eligible members, still rotating among them.
        let picks: Vec<_> = (0..4)
            .filter_map(|_| g.pick("g", "a/+", |&k| k != 2))
            .collect();
        assert_eq!(picks, [1, 3, 1, 3]);
        assert_eq!(g.pick("g", "a/+", |_| false), None);
        assert_eq!(g.pick("nope", "a/+", |_| true), None);

        let mut seen = Vec::new();
        g.for_each_matching_group("a/x", |grp, f| seen.push((grp.to_string(), f.to_string())));
        seen.sort();
        assert_eq!(
            seen,
            [("g".into(), "a/+".into()), ("h".into(), "a/+".into())]
        );

        assert!(!g.remove("g", "a/+", &1));
        assert!(!g.remove("g", "a/+", &1));
        let picks: BTreeSet<_> = (0..4)
            .filter_map(|_| g.pick("g", "a/+", |_| true))
            .collect();
        assert_eq!(picks, BTreeSet::from([2, 3]));
        assert!(!g.remove("g", "a/+", &2));
        assert!(g.remove("g", "a/+", &3));
        assert!(g.remove("h", "a/+", &9));
        assert!(!g.remove("h", "a/+", &9));
        assert!(g.is_empty());
        assert_eq!(g.node_count(), 0);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn filter() -> impl Strategy<Value = String> {
            let lvl = prop::sample::select(&["a", "b", "", "$s", "+", "+"][..]);
            (prop::collection::vec(lvl, 0..4), any::<bool>()).prop_map(|(mut v, hash)| {
                if hash {
                    v.push("#");
                }
                let s = v.join("/");
                if s.is_empty() {
                    "a".to_string()
                } else {
                    s
                }
            })
        }

        fn topic() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(&["a", "b", "", "$s", "c"][..]), 1..5)
                .prop_map(|v| {
                    let s = v.join("/");
                    if s.is_empty() {
                        "c".to_string()
                    } else {
                        s
                    }
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn matches_linear_scan(
                subs in prop::collection::vec((filter(), 0u32..4, any::<u8>()), 0..40),
                topics in prop::collection::vec(topic(), 1..10),
            ) {
                let mut tree = SubscriptionTree::new();
                let mut model: HashMap<(String, u32), u8> = HashMap::new();
                for (f, k, v) in &subs {
                    prop_assert_eq!(tree.insert(f, *k, *v), model.insert((f.clone(), *k), *v));
                }
                prop_assert_eq!(tree.len(), model.len());
                let distinct: BTreeSet<&String> = model.keys().map(|(f, _)| f).collect();
                prop_assert_eq!(tree.filter_count(), distinct.len());
                for t in &topics {
                    let expected: BTreeSet<(String, u32, u8)> = model
                        .iter()
                        .filter(|((f, _), _)| matches(f, t))
                        .map(|((f, k), v)| (f.clone(), *k, *v))
                        .collect();
                    prop_assert_eq!(matched(&tree, t), expected);
                }
                for (f, k, _) in &subs {
                    prop_assert_eq!(tree.remove(f, k), model.remove(&(f.clone(), *k)));
                }
                prop_assert!(tree.is_empty());
                prop_assert_eq!(tree.filter_count(), 0);
                prop_assert_eq!(tree.node_count(), 0);
            }

            #[test]
            fn shared_groups_match_linear_scan(
                subs in prop::collection::vec((prop::sample::select(&["g", "h"][..]), filter(), 0u32..3), 0..30),
                t in topic(),
            ) {
                let mut groups = SharedGroups::new();
                let mut model: BTreeSet<(String, String, u32)> = BTreeSet::new();
                for (g, f, k) in &subs {
                    let first = !model.iter().any(|(mg, mf, _)| mg == g && mf == f);
                    prop_assert_eq!(groups.add(g, f, *k), first);
                    model.insert((g.to_string(), f.clone(), *k));
                }
                let mut seen = BTreeSet::new();
                groups.for_each_matching_group(&t, |g, f| assert!(seen.insert((g.to_string(), f.to_string()))));
                let expected: BTreeSet<(String, String)> =
                    model.iter().filter(|(_, f, _)| matches(f, &t)).map(|(g, f, _)| (g.clone(), f.clone())).collect();
                prop_assert_eq!(seen, expected);
                for (g, f, k) in &subs {
                    if model.remove(&(g.to_string(), f.clone(), *k)) {
                        let last = !model.iter().any(|(mg, mf, _)| mg == g && mf == f);
                        prop_assert_eq!(groups.remove(g, f, k), last);
                    }
                }
                prop_assert!(groups.is_empty());
                prop_assert_eq!(groups.node_count(), 0);
            }
        }
    }
}
