//! Subscription trie: which sessions' filters match a published topic.
//!
//! The tree is keyed by topic level. Every node has literal children, a
//! separate `+` child and two subscriber slots: `exact` (filters ending at this
//! node) and `hash` (filters ending with `/#` here, or `#` at the root).
//! Matching a topic visits only the nodes its levels can reach, so its cost
//! does not grow with the number of unrelated filters. Nodes are removed as
//! soon as they hold nothing, so churning clients do not leak memory.
//!
//! Filters are expected to be validated by the caller
//! ([`dataloom_codec::topic::parse_subscription`]); anything else is stored
//! literally and never panics. All walks are iterative (no recursion), so very
//! deep filters cannot overflow the stack.
//!
//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 section 4.8.2) are
//! stored per (group, filter); a publish delivers to one member of each
//! matching (group, filter) pair, chosen round-robin.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Members of one shared subscription (group + filter), in arrival order.
#[derive(Debug)]
struct Group<K, V> {
    members: Vec<(K, V)>,
    /// Index of the next member to try; only ever read/written modulo `len`.
    cursor: AtomicUsize,
}

impl<K: Copy + Eq, V> Group<K, V> {
    /// Round-robin pick preferring available members; if none is available the
    /// member at the cursor is returned anyway.
    fn pick(&self, is_available: &impl Fn(K) -> bool) -> Option<&(K, V)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.load(Ordering::Relaxed) % n;
        let idx = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.members.get(i).is_some_and(|m| is_available(m.0)))
            .unwrap_or(start);
        self.cursor.store((idx + 1) % n, Ordering::Relaxed);
        self.members.get(idx)
    }
}

/// Subscribers whose filter ends at one slot of a node.
#[derive(Debug)]
struct Subs<K, V> {
    direct: HashMap<K, V>,
    shared: HashMap<Box<str>, Group<K, V>>,
}

impl<K, V> Subs<K, V> {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.shared.is_empty()
    }
}

#[derive(Debug)]
struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    exact: Option<Box<Subs<K, V>>>,
    hash: Option<Box<Subs<K, V>>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self { children: HashMap::new(), plus: None, exact: None, hash: None }
    }
}

impl<K, V> Node<K, V> {
    fn child(&self, step: &str) -> Option<&Self> {
        if step == "+" { self.plus.as_deref() } else { self.children.get(step) }
    }

    fn child_mut(&mut self, step: &str) -> Option<&mut Self> {
        if step == "+" { self.plus.as_deref_mut() } else { self.children.get_mut(step) }
    }

    fn child_or_insert(&mut self, step: &str) -> &mut Self {
        if step == "+" {
            self.plus.get_or_insert_with(Box::default)
        } else {
            self.children.entry(Box::from(step)).or_default()
        }
    }

    fn remove_child(&mut self, step: &str) {
        if step == "+" {
            self.plus = None;
        } else {
            self.children.remove(step);
        }
    }

    fn has_subs(&self) -> bool {
        self.exact.is_some() || self.hash.is_some()
    }

    fn fanout(&self) -> usize {
        self.children.len() + usize::from(self.plus.is_some())
    }
}

/// Which subscriber slot a filter ends in.
#[derive(Clone, Copy)]
enum Slot {
    Exact,
    Hash,
}

/// Splits a filter into the levels leading to its node and its slot:
/// `a/b` → (`a`,`b`; Exact), `a/#` → (`a`; Hash), `#` → (root; Hash).
fn split_filter(filter: &str) -> (impl Iterator<Item = &str> + Clone, Slot) {
    let (path, slot) = if filter == "#" {
        (None, Slot::Hash)
    } else if let Some(p) = filter.strip_suffix("/#") {
        (Some(p), Slot::Hash)
    } else {
        (Some(filter), Slot::Exact)
    };
    (path.into_iter().flat_map(|p| p.split('/')), slot)
}

/// A trie of topic-filter subscriptions keyed by session id `K` with options `V`.
#[derive(Debug)]
pub struct SubscriptionTree<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self { root: Node::default(), len: 0 }
    }
}

impl<K: Copy + Eq + Hash, V: Clone> SubscriptionTree<K, V> {
    /// Creates an empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions (plain and shared memberships).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no subscriptions.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of trie nodes including the root (diagnostics and tests).
    #[cfg(test)]
    pub fn node_count(&self) -> usize {
        let mut count = 0;
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            count += 1;
            stack.extend(node.children.values());
            stack.extend(node.plus.as_deref());
        }
        count
    }

    fn subs_mut(&mut self, filter: &str) -> &mut Subs<K, V> {
        let (path, slot) = split_filter(filter);
        let mut node = &mut self.root;
        for step in path {
            node = node.child_or_insert(step);
        }
        let s = match slot {
            Slot::Exact => &mut node.exact,
            Slot::Hash => &mut node.hash,
        };
        s.get_or_insert_with(|| Box::new(Subs { direct: HashMap::new(), shared: HashMap::new() }))
    }

    /// Subscribes `key` to `filter`; returns the previous options of that
    /// (key, filter) subscription if it already existed.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let prev = self.subs_mut(filter).direct.insert(key, value);
        if prev.is_none() {
            self.len += 1;
        }
        prev
    }

    /// Adds `key` to the shared subscription `$share/{group}/{filter}`;
    /// returns the previous options if `key` was already a member.
    pub fn insert_shared(&mut self, group: &str, filter: &str, key: K, value: V) -> Option<V> {
        let subs = self.subs_mut(filter);
        let grp = subs
            .shared
            .entry(Box::from(group))
            .or_insert_with(|| Group { members: Vec::new(), cursor: AtomicUsize::new(0) });
        if let Some(m) = grp.members.iter_mut().find(|m| m.0 == key) {
            return Some(std::mem::replace(&mut m.1, value));
        }
        grp.members.push((key, value));
        self.len += 1;
        None
    }

    /// Unsubscribes `key` from `filter`; returns its options if it was subscribed.
    pub fn remove(&mut self, filter: &str, key: K) -> Option<V> {
        self.remove_with(filter, |subs| subs.direct.remove(&key))
    }

    /// Removes `key` from `$share/{group}/{filter}`; returns its options if it
    /// was a member. The group disappears with its last member.
    pub fn remove_shared(&mut self, group: &str, filter: &str, key: K) -> Option<V> {
        self.remove_with(filter, |subs| {
            let grp = subs.shared.get_mut(group)?;
            let pos = grp.members.iter().position(|m| m.0 == key)?;
            let (_, v) = grp.members.remove(pos);
            if grp.members.is_empty() {
                subs.shared.remove(group);
            }
            Some(v)
        })
    }

    fn remove_with(&mut self, filter: &str, take: impl FnOnce(&mut Subs<K, V>) -> Option<V>) -> Option<V> {
        let (path, slot) = split_filter(filter);
        let mut node = &mut self.root;
        for step in path.clone() {
            node = node.child_mut(step)?;
        }
        let s = match slot {
            Slot::Exact => &mut node.exact,
            Slot::Hash => &mut node.hash,
        };
        let subs = s.as_deref_mut()?;
        let v = take(subs)?;
        if subs.is_empty() {
            *s = None;
        }
        self.len = self.len.saturating_sub(1);
        self.prune(path);
        Some(v)
    }

    /// Removes the longest chain of nodes at the end of `path` that hold
    /// nothing but the next node of the chain.
    fn prune<'p>(&mut self, path: impl Iterator<Item = &'p str> + Clone) {
        // cut = index (1-based depth) of the first node of the removable chain.
        let mut cut: Option<usize> = None;
        let mut node = &self.root;
        let mut depth = 0;
        for step in path.clone() {
            let Some(next) = node.child(step) else { return };
            node = next;
            depth += 1;
            if !node.has_subs() && node.fanout() <= 1 {
                cut = cut.or(Some(depth));
            } else {
                cut = None;
            }
        }
        if node.has_subs() || node.fanout() != 0 {
            return;
        }
        let Some(cut) = cut else { return };
        let mut parent = &mut self.root;
        for (i, step) in path.enumerate() {
            if i + 1 == cut {
                parent.remove_child(step);
                return;
            }
            match parent.child_mut(step) {
                Some(next) => parent = next,
                None => return,
            }
        }
    }

    /// Calls `f(key, options, group)` for every subscription matching `topic`.
    ///
    /// * Plain subscriptions: one call per matching (key, filter) with
    ///   `group == None`; a key with overlapping filters gets several calls and
    ///   the caller merges them (MQTT 5.0 section 4.7.1.1 allows either).
    /// * Shared subscriptions: one call per matching (group, filter) with
    ///   `group == Some(name)`, for a single member picked round-robin among
    ///   those for which `is_available(key)` is true; if no member is
    ///   available the round-robin member is picked anyway (its session queues
    ///   the message). Concurrent callers through `&self` may occasionally
    ///   pick the same member; the rotation stays approximately fair.
    ///
    /// Topics starting with `$` do not match filters starting with `+` or `#`.
    pub fn for_each_match<'a>(
        &'a self,
        topic: &str,
        is_available: impl Fn(K) -> bool,
        mut f: impl FnMut(K, &'a V, Option<&'a str>),
    ) {
        let mut emit = |subs: Option<&'a Subs<K, V>>| {
            let Some(subs) = subs else { return };
            for (k, v) in &subs.direct {
                f(*k, v, None);
            }
            for (name, grp) in &subs.shared {
                if let Some((k, v)) = grp.pick(&is_available) {
                    f(*k, v, Some(name));
                }
            }
        };
        let dollar = topic.starts_with('$');
        let mut stack = vec![(&self.root, topic.split('/'), true)];
        while let Some((node, mut levels, at_root)) = stack.pop() {
            let wild_ok = !(at_root && dollar);
            if wild_ok {
                emit(node.hash.as_deref());
            }
            match levels.next() {
                None => emit(node.exact.as_deref()),
                Some(level) => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, levels.clone(), false));
                    }
                    if let (Some(plus), true) = (node.plus.as_deref(), wild_ok) {
                        stack.push((plus, levels, false));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(t: &SubscriptionTree<u64, u8>, topic: &str) -> Vec<(u64, u8, Option<String>)> {
        let mut v = Vec::new();
        t.for_each_match(topic, |_| true, |k, o, g| v.push((k, *o, g.map(String::from))));
        v.sort();
        v
    }

    #[test]
    fn overlaps_and_replace() {
        let mut t = SubscriptionTree::new();
        assert_eq!(t.insert("a/b", 1u64, 0u8), None);
        assert_eq!(t.insert("a/+", 1, 1), None);
        assert_eq!(t.insert("a/#", 2, 2), None);
        assert_eq!(t.insert("+/b", 3, 3), None);
        assert_eq!(t.insert("a/b", 1, 9), Some(0));
        assert_eq!(t.len(), 4);
        assert_eq!(hits(&t, "a/b"), vec![(1, 1, None), (1, 9, None), (2, 2, None), (3, 3, None)]);
        assert_eq!(hits(&t, "a/c"), vec![(1, 1, None), (2, 2, None)]);
        assert_eq!(hits(&t, "b/b"), vec![(3, 3, None)]);
        assert!(hits(&t, "a/b/c").iter().all(|h| h.0 == 2));
    }

    #[test]
    fn hash_matches_parent_and_empty_levels() {
        let mut t = SubscriptionTree::new();
        t.insert("a/#", 1u64, 0u8);
        t.insert("#", 2, 0);
        t.insert("a//b", 3, 0);
        t.insert("+/a", 4, 0);
        assert_eq!(hits(&t, "a").len(), 2);
        assert_eq!(hits(&t, "a//b").len(), 3);
        assert_eq!(hits(&t, "/a"), vec![(2, 0, None), (4, 0, None)]);
    }

    #[test]
    fn dollar_rule() {
        let mut t = SubscriptionTree::new();
        t.insert("#", 1u64, 0u8);
        t.insert("+/uptime", 2, 0);
        t.insert("$SYS/#", 3, 0);
        t.insert("$SYS/+", 4, 0);
        t.insert_shared("g", "#", 5, 0);
        assert_eq!(hits(&t, "$SYS/uptime"), vec![(3, 0, None), (4, 0, None)]);
        assert_eq!(hits(&t, "x/uptime").len(), 3);
    }

    /// Calls per (key, group) over `n` publishes to `s/x` with `avail` members.
    fn tally(t: &SubscriptionTree<u64, u8>, n: usize, avail: fn(u64) -> bool) -> Vec<(u64, usize)> {
        let mut c: HashMap<u64, usize> = HashMap::new();
        for _ in 0..n {
            t.for_each_match("s/x", avail, |k, _, g| {
                *c.entry(k).or_default() += usize::from(g.is_some());
            });
        }
        let mut v: Vec<_> = c.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn shared_round_robin() {
        let mut t = SubscriptionTree::new();
        for k in 1u64..=3 {
            assert_eq!(t.insert_shared("g", "s/+", k, 0u8), None);
        }
        t.insert_shared("h", "s/#", 9, 0);
        t.insert("s/x", 7, 0);
        assert_eq!(t.insert_shared("g", "s/+", 2, 1), Some(0));
        assert_eq!(t.len(), 5);
        let groups = hits(&t, "s/x").into_iter().filter_map(|h| h.2);
        assert_eq!(groups.collect::<Vec<_>>(), ["g", "h"]);
        assert_eq!(tally(&t, 300, |_| true), [(1, 100), (2, 100), (3, 100), (7, 0), (9, 300)]);
        // member 2 offline: 1 and 3 alternate
        assert_eq!(tally(&t, 100, |k| k != 2), [(1, 50), (3, 50), (7, 0), (9, 100)]);
        // nobody available: still one member of each group per publish
        assert_eq!(tally(&t, 3, |_| false), [(1, 1), (2, 1), (3, 1), (7, 0), (9, 3)]);

        assert_eq!(t.remove_shared("g", "s/+", 2), Some(1));
        assert_eq!(t.remove_shared("g", "s/+", 2), None);
        assert_eq!(t.remove_shared("nope", "s/+", 1), None);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn removal_cleans_nodes() {
        let mut t = SubscriptionTree::new();
        assert_eq!(t.node_count(), 1);
        t.insert("a/b/c/d", 1u64, 0u8);
        t.insert("a/b/+/#", 2, 0);
        t.insert("a/b", 3, 0);
        t.insert_shared("g", "x/y/z", 4, 0);
        t.insert("#", 5, 0);
        let full = t.node_count();
        assert_eq!(full, 1 + 4 + 1 + 3);
        assert_eq!(t.remove("a/b/c/d", 9), None);
        assert_eq!(t.remove("a/b/c/d", 1), Some(0));
        assert_eq!(t.node_count(), full - 2);
        assert_eq!(t.remove("a/b/+/#", 2), Some(0));
        assert_eq!(t.node_count(), full - 3);
        assert_eq!(t.remove("a/b", 3), Some(0));
        assert_eq!(t.remove_shared("g", "x/y/z", 4), Some(0));
        assert_eq!(t.remove("#", 5), Some(0));
        assert_eq!(t.remove("#", 5), None);
        assert_eq!(t.remove("q/r", 5), None);
        assert_eq!(t.node_count(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn churn_10k_filters() {
        let mut t = SubscriptionTree::new();
        for i in 0..10_000u64 {
            t.insert(&format!("dev/{}/sensor/{}", i % 100, i), i, 0u8);
        }
        t.insert("dev/+/sensor/#", 99_999, 1);
        assert_eq!(t.len(), 10_001);
        assert_eq!(hits(&t, "dev/7/sensor/507"), vec![(507, 0, None), (99_999, 1, None)]);
        assert_eq!(hits(&t, "dev/7/sensor/508"), vec![(99_999, 1, None)]);
        let removed =
            (0..10_000u64).filter(|&i| t.remove(&format!("dev/{}/sensor/{i}", i % 100), i).is_some());
        assert_eq!(removed.count(), 10_000);
        assert_eq!(t.remove("dev/+/sensor/#", 99_999), Some(1));
        assert_eq!(t.node_count(), 1);
        assert!(t.is_empty());
    }
}
