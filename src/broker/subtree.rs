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
//! matching (group, filter) pair: round-robin among the members that fit best
//! (the caller rates each member with a [`Fit`]; see `broker/share.rs`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How well a member of a shared subscription can take one message, worst first: the pick
/// goes to the best fit, round-robin among equals, and never to [`Fit::Never`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fit {
    /// Must not get it.
    Never,
    /// May get it, but it will be dropped (and counted) there.
    Lossy,
    /// Will keep it for later.
    Later,
    /// Can take it now.
    Now,
}

/// Members of one shared subscription (group + filter), in arrival order.
#[derive(Debug)]
struct Group<K, V> {
    members: Vec<(K, V)>,
    /// Index of the next member to try; only ever read/written modulo `len`.
    cursor: AtomicUsize,
}

impl<K: Copy + Eq, V> Group<K, V> {
    /// Round-robin pick of the best-fitting member ([`Fit`]); `None` when every member is
    /// [`Fit::Never`]. Stops at the first [`Fit::Now`], so a group whose members are online
    /// costs one rating per message.
    fn pick(&self, fit: &impl Fn(K, &V) -> Fit) -> Option<&(K, V)> {
        let n = self.members.len();
        let start = self.cursor.load(Ordering::Relaxed) % n.max(1);
        let mut best: Option<(usize, Fit)> = None;
        for i in (0..n).map(|i| (start + i) % n) {
            let Some(m) = self.members.get(i) else { continue };
            let f = fit(m.0, &m.1);
            if f > best.map_or(Fit::Never, |b| b.1) {
                best = Some((i, f));
                if f == Fit::Now {
                    break;
                }
            }
        }
        let (idx, _) = best?;
        self.cursor.store((idx + 1) % n, Ordering::Relaxed);
        self.members.get(idx)
    }
}

/// One subscription that matched a topic ([`SubscriptionTree::for_each_match`]).
#[derive(Debug)]
pub enum Hit<'a, K, V> {
    /// A plain subscription of `K`.
    Plain(K, &'a V),
    /// A shared subscription's group: the member picked, `None` when no member fits at all.
    Shared(Option<(K, &'a V)>),
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

    /// The member of `$share/{group}/{filter}` that `fit` rates best (round-robin among
    /// equals, as a publish would pick), or `None` when there is no such group or no member
    /// fits. `filter` is the plain filter as subscribed.
    pub fn pick_shared(&self, group: &str, filter: &str, fit: impl Fn(K, &V) -> Fit) -> Option<(K, &V)> {
        let (path, slot) = split_filter(filter);
        let mut node = &self.root;
        for step in path {
            node = node.child(step)?;
        }
        let subs = match slot {
            Slot::Exact => node.exact.as_deref(),
            Slot::Hash => node.hash.as_deref(),
        }?;
        subs.shared.get(group)?.pick(&fit).map(|(k, v)| (*k, v))
    }

    /// Calls `f` for every subscription matching `topic`.
    ///
    /// * Plain subscriptions: one [`Hit::Plain`] per matching (key, filter); a key with
    ///   overlapping filters gets several and the caller merges them (MQTT 5.0 section
    ///   4.7.1.1 allows either).
    /// * Shared subscriptions: one [`Hit::Shared`] per matching (group, filter) with the
    ///   member picked round-robin among those `fit` rates best ([`Fit`]), or none when all are
    ///   [`Fit::Never`]. Concurrent callers through `&self` may occasionally pick the same
    ///   member; the rotation stays approximately fair.
    ///
    /// Topics starting with `$` do not match filters starting with `+` or `#`.
    pub fn for_each_match<'a>(
        &'a self,
        topic: &str,
        fit: impl Fn(K, &V) -> Fit,
        mut f: impl FnMut(Hit<'a, K, V>),
    ) {
        let mut emit = |subs: Option<&'a Subs<K, V>>| {
            let Some(subs) = subs else { return };
            for (k, v) in &subs.direct {
                f(Hit::Plain(*k, v));
            }
            for grp in subs.shared.values() {
                f(Hit::Shared(grp.pick(&fit).map(|(k, v)| (*k, v))));
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
mod tests;
