//! The retained-message store: at most one message per topic name, found by a new
//! subscriber's filter. A trie by topic level, so a filter such as `sensors/+/temp` visits
//! only the matching branches instead of every retained topic.
//!
//! Plain data, no locks. Deep topics are walked with loops and explicit stacks (never
//! recursion, dropping included), so a retained message on a topic with tens of thousands
//! of levels cannot overflow a thread's stack.

use std::collections::HashMap;
use std::str::Split;

struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    /// The message retained at exactly this topic, with the topic's full name (so that
    /// callbacks get it without building strings).
    entry: Option<Box<(Box<str>, V)>>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            entry: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.entry.is_none() && self.children.is_empty()
    }

    fn visit(&self, f: &mut impl FnMut(&str, &V)) {
        if let Some(entry) = &self.entry {
            f(&entry.0, &entry.1);
        }
    }
}

/// Drops a subtree iteratively (see the module documentation).
impl<V> Drop for Node<V> {
    fn drop(&mut self) {
        if self.children.is_empty() {
            return;
        }
        let mut stack: Vec<Node<V>> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
        }
    }
}

/// Retained messages by topic name.
pub struct RetainedStore<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for RetainedStore<V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V> std::fmt::Debug for RetainedStore<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetainedStore")
            .field("len", &self.len)
            .finish()
    }
}

impl<V> RetainedStore<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Retains `value` on `topic` (a valid topic name), returning the message it replaces.
    pub fn set(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        match &mut node.entry {
            Some(entry) => Some(std::mem::replace(&mut entry.1, value)),
            slot @ None => {
                *slot = Some(Box::new((topic.into(), value)));
                self.len += 1;
                None
            }
        }
    }

    /// Clears the message retained on `topic`, returning it. Nodes left empty are removed.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        // The deepest node on the path that must survive if everything below it becomes
        // empty: the root, or a node with its own message or other children.
        let mut cut: Option<(usize, &str)> = None;
        let mut node = &mut self.root;
        for (depth, level) in topic.split('/').enumerate() {
            if depth == 0 || node.entry.is_some() || node.children.len() > 1 {
                cut = Some((depth, level));
            }
            node = node.children.get_mut(level)?;
        }
        let (_, value) = *node.entry.take()?;
        self.len -= 1;
        if node.is_empty() {
            if let Some((cut_depth, cut_level)) = cut {
                let mut node = &mut self.root;
                for level in topic.split('/').take(cut_depth) {
                    match node.children.get_mut(level) {
                        Some(next) => node = next,
                        None => return Some(value), // unreachable: the path exists
                    }
                }
                node.children.remove(cut_level);
            }
        }
        Some(value)
    }

    /// The message retained on exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.entry.as_ref().map(|e| &e.1)
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Trie nodes below the root (0 when empty); for tests and diagnostics.
    pub fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += node.children.len();
            stack.extend(node.children.values());
        }
        count
    }

    /// Calls `f(topic, message)` for every retained message whose topic `filter` (a valid
    /// filter, wildcards allowed) matches, in no particular order. The `$` rule applies:
    /// `#` and `+/...` never return `$SYS/...` topics; `$SYS/#` does.
    pub fn for_each_matching(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        // Pending branches: a node and the filter levels it has still to match.
        let mut stack: Vec<(&Node<V>, Split<'_, char>)> = vec![(&self.root, filter.split('/'))];
        while let Some((node, mut rest)) = stack.pop() {
            let at_root = std::ptr::eq(node, &self.root);
            // At the root a wildcard must not descend into `$` topics.
            let eligible = |name: &str| !(at_root && name.starts_with('$'));
            match rest.next() {
                None => node.visit(&mut f),
                Some("#") => {
                    // `#` matches the parent level too: `a/#` returns `a`.
                    if !at_root {
                        node.visit(&mut f);
                    }
                    for (name, child) in &node.children {
                        if eligible(name) {
                            Self::visit_subtree(child, &mut f);
                        }
                    }
                }
                Some("+") => {
                    for (name, child) in &node.children {
                        if eligible(name) {
                            stack.push((child, rest.clone()));
                        }
                    }
                }
                Some(level) => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, rest));
                    }
                }
            }
        }
    }

    fn visit_subtree(node: &Node<V>, f: &mut impl FnMut(&str, &V)) {
        let mut stack = vec![node];
        while let Some(node) = stack.pop() {
            node.visit(f);
            stack.extend(node.children.values());
        }
    }

    /// Calls `f(topic, message)` for every retained message (for snapshots).
    pub fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        Self::visit_subtree(&self.root, &mut f);
    }

    /// Keeps only the messages for which `keep` returns true (e.g. drops expired ones),
    /// pruning emptied nodes. Returns how many were removed.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &V) -> bool) -> usize {
        let mut doomed: Vec<Box<str>> = Vec::new();
        self.for_each(|topic, v| {
            if !keep(topic, v) {
                doomed.push(topic.into());
            }
        });
        for topic in &doomed {
            self.remove(topic);
        }
        doomed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;
    use std::collections::BTreeMap;

    fn found(store: &RetainedStore<u32>, filter: &str) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        store.for_each_matching(filter, |t, v| {
            assert!(out.insert(t.to_string(), *v).is_none(), "twice: {t}")
        });
        out
    }

    fn topics(m: BTreeMap<String, u32>) -> Vec<String> {
        m.into_keys().collect()
    }

    #[test]
    fn set_get_remove() {
        let mut s = RetainedStore::new();
        assert_eq!(s.set("a/b", 1), None);
        assert_eq!(s.set("a/b", 2), Some(1));
        assert_eq!(s.set("a", 3), None);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("a/b"), Some(&2));
        assert_eq!(s.get("a/c"), None);
        assert_eq!(s.get("a/b/c"), None);
        assert_eq!(s.remove("a/b/c"), None);
        assert_eq!(s.remove("a/b"), Some(2));
        assert_eq!(s.remove("a/b"), None);
        assert_eq!(s.node_count(), 1);
        assert_eq!(s.remove("a"), Some(3));
        assert!(s.is_empty());
        assert_eq!(s.node_count(), 0);
    }

    #[test]
    fn wildcards_and_dollar_rule() {
        let mut s = RetainedStore::new();
        for (i, t) in [
            "a",
            "a/b",
            "a/b/c",
            "a/x",
            "/a",
            "$SYS/load",
            "$SYS/x/y",
            "b",
        ]
        .iter()
        .enumerate()
        {
            s.set(t, i as u32);
        }
        assert_eq!(topics(found(&s, "a/#")), ["a", "a/b", "a/b/c", "a/x"]);
        assert_eq!(topics(found(&s, "a/+")), ["a/b", "a/x"]);
        assert_eq!(topics(found(&s, "+")), ["a", "b"]);
        assert_eq!(topics(found(&s, "+/a")), ["/a"]);
        assert_eq!(
            topics(found(&s, "#")),
            ["/a", "a", "a/b", "a/b/c", "a/x", "b"]
        );
        assert_eq!(topics(found(&s, "+/+")), ["/a", "a/b", "a/x"]);
        assert_eq!(topics(found(&s, "$SYS/#")), ["$SYS/load", "$SYS/x/y"]);
        assert_eq!(topics(found(&s, "$SYS/+")), ["$SYS/load"]);
        assert_eq!(topics(found(&s, "a/b")), ["a/b"]);
        assert!(found(&s, "c/#").is_empty());
    }

    #[test]
    fn retain_drops_and_prunes() {
        let mut s = RetainedStore::new();
        for (i, t) in ["a/b", "a/c", "d/e/f"].iter().enumerate() {
            s.set(t, i as u32);
        }
        assert_eq!(s.retain(|_, v| *v == 1), 2);
        assert_eq!(s.len(), 1);
        assert_eq!(s.node_count(), 2);
        assert_eq!(s.get("a/c"), Some(&1));
    }

    #[test]
    fn deep_topics_do_not_recurse() {
        let deep = vec!["a"; 30_000].join("/");
        let mut s = RetainedStore::new();
        s.set(&deep, 1u32);
        s.set("a", 2);
        assert_eq!(found(&s, "#").len(), 2);
        assert_eq!(found(&s, &deep).len(), 1);
        assert_eq!(s.remove(&deep), Some(1));
        assert_eq!(s.node_count(), 1);
        s.set(&deep, 1);
        drop(s);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn join(v: Vec<&str>, fallback: &str) -> String {
            let s = v.join("/");
            if s.is_empty() {
                fallback.to_string()
            } else {
                s
            }
        }

        fn topic() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(&["a", "b", "", "$s"][..]), 1..5)
                .prop_map(|v| join(v, "c"))
        }

        fn filter() -> impl Strategy<Value = String> {
            let lvl = prop::sample::select(&["a", "b", "", "$s", "+", "+"][..]);
            (prop::collection::vec(lvl, 0..4), any::<bool>()).prop_map(|(mut v, hash)| {
                if hash {
                    v.push("#");
                }
                join(v, "a")
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn matches_linear_scan(
                ops in prop::collection::vec((topic(), prop::option::of(any::<u32>())), 0..40),
                filters in prop::collection::vec(filter(), 1..10),
            ) {
                let mut store = RetainedStore::new();
                let mut model: BTreeMap<String, u32> = BTreeMap::new();
                for (t, v) in &ops {
                    match v {
                        Some(v) => prop_assert_eq!(store.set(t, *v), model.insert(t.clone(), *v)),
                        None => prop_assert_eq!(store.remove(t), model.remove(t)),
                    }
                }
                prop_assert_eq!(store.len(), model.len());
                for f in &filters {
                    let expected: BTreeMap<String, u32> =
                        model.iter().filter(|(t, _)| matches(f, t)).map(|(t, v)| (t.clone(), *v)).collect();
                    prop_assert_eq!(found(&store, f), expected);
                }
                for t in model.keys() {
                    prop_assert_eq!(store.get(t), model.get(t));
                    prop_assert!(store.remove(t).is_some());
                }
                prop_assert!(store.is_empty());
                prop_assert_eq!(store.node_count(), 0);
            }
        }
    }
}
