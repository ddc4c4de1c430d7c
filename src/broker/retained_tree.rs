//! Retained messages indexed by topic name.
//!
//! A trie by topic level whose nodes hold at most one retained value plus the
//! full topic (`Arc<str>`, shared with the caller's `f`). Looking up the
//! retained messages for a new subscription walks only the branches the
//! filter can reach: a literal level goes straight to its child, `+` iterates
//! the children of one node and `#` walks one subtree. Topics starting with
//! `$` are not matched by filters starting with `+` or `#` [MQTT-4.7.2-1].
//!
//! Nodes are pruned as soon as they hold nothing. All walks are iterative, so
//! deep topics cannot overflow the stack.

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    value: Option<(Arc<str>, V)>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self { children: HashMap::new(), value: None }
    }
}

/// Retained messages (any `V`) keyed by topic name.
#[derive(Debug)]
pub struct RetainedTree<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for RetainedTree<V> {
    fn default() -> Self {
        Self { root: Node::default(), len: 0 }
    }
}

impl<V> RetainedTree<V> {
    /// Creates an empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing is retained.
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
        }
        count
    }

    /// Stores `v` as the retained message of `topic`; returns the previous one.
    pub fn set(&mut self, topic: &str, v: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(Box::from(level)).or_default();
        }
        let prev = node.value.replace((Arc::from(topic), v)).map(|(_, old)| old);
        if prev.is_none() {
            self.len += 1;
        }
        prev
    }

    /// Returns the retained message of `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref().map(|(_, v)| v)
    }

    /// Removes and returns the retained message of `topic`, pruning empty nodes.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_mut(level)?;
        }
        let (_, v) = node.value.take()?;
        self.len = self.len.saturating_sub(1);
        self.prune(topic);
        Some(v)
    }

    /// Removes the chain of nodes at the end of `topic`'s path that hold
    /// nothing but the next node of the chain.
    fn prune(&mut self, topic: &str) {
        let mut cut: Option<usize> = None;
        let mut node = &self.root;
        for (i, level) in topic.split('/').enumerate() {
            let Some(next) = node.children.get(level) else {
                return;
            };
            node = next;
            if node.value.is_none() && node.children.len() <= 1 {
                cut = cut.or(Some(i));
            } else {
                cut = None;
            }
        }
        if node.value.is_some() || !node.children.is_empty() {
            return;
        }
        let Some(cut) = cut else { return };
        let mut parent = &mut self.root;
        for (i, level) in topic.split('/').enumerate() {
            if i == cut {
                parent.children.remove(level);
                return;
            }
            match parent.children.get_mut(level) {
                Some(next) => parent = next,
                None => return,
            }
        }
    }

    /// Calls `f(topic, value)` for every retained message whose topic matches
    /// `filter` (a valid, non-shared filter; strip `$share/{group}/` first).
    /// Visits only branches the filter can reach; order is unspecified.
    pub fn for_each_match(&self, filter: &str, mut f: impl FnMut(&str, &V)) {
        let mut emit = |node: &Node<V>| {
            if let Some((t, v)) = &node.value {
                f(t, v);
            }
        };
        // Root-level wildcards must skip `$` topics [MQTT-4.7.2-1].
        let visible = |at_root: bool, key: &str| !(at_root && key.starts_with('$'));
        let mut stack = vec![(&self.root, filter.split('/'), true)];
        let mut subtree: Vec<&Node<V>> = Vec::new();
        while let Some((node, mut levels, at_root)) = stack.pop() {
            match levels.next() {
                None => emit(node),
                Some("#") => {
                    emit(node);
                    subtree.extend(node.children.iter().filter(|(k, _)| visible(at_root, k)).map(|(_, c)| c));
                    while let Some(n) = subtree.pop() {
                        emit(n);
                        subtree.extend(n.children.values());
                    }
                }
                Some("+") => {
                    for (k, child) in &node.children {
                        if visible(at_root, k) {
                            stack.push((child, levels.clone(), false));
                        }
                    }
                }
                Some(level) => {
                    if let Some(child) = node.children.get(level) {
                        stack.push((child, levels, false));
                    }
                }
            }
        }
    }

    /// Keeps only the messages for which `keep(topic, value)` returns true
    /// (e.g. to drop expired messages); returns how many were removed.
    #[cfg(test)]
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &V) -> bool) -> usize {
        let mut doomed: Vec<Arc<str>> = Vec::new();
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some((t, v)) = &node.value
                && !keep(t, v)
            {
                doomed.push(Arc::clone(t));
            }
            stack.extend(node.children.values());
        }
        doomed.iter().filter(|t| self.remove(t).is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(t: &RetainedTree<u32>, filter: &str) -> Vec<(String, u32)> {
        let mut v = Vec::new();
        t.for_each_match(filter, |topic, val| v.push((topic.to_string(), *val)));
        v.sort();
        v
    }

    #[test]
    fn set_get_remove() {
        let mut t = RetainedTree::new();
        assert_eq!(t.set("a/b", 1), None);
        assert_eq!(t.set("a/b", 2), Some(1));
        assert_eq!(t.set("a", 3), None);
        assert_eq!(t.set("a//b", 4), None);
        assert_eq!(t.len(), 3);
        assert_eq!(t.get("a/b"), Some(&2));
        assert_eq!(t.get("a/"), None);
        assert_eq!(t.get("a//b"), Some(&4));
        assert_eq!(t.remove("a/x"), None);
        assert_eq!(t.remove("a/b"), Some(2));
        assert_eq!(t.remove("a/b"), None);
        assert_eq!(t.node_count(), 1 + 1 + 2);
        assert_eq!(t.remove("a//b"), Some(4));
        assert_eq!(t.node_count(), 2);
        assert_eq!(t.remove("a"), Some(3));
        assert_eq!(t.node_count(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn matching() {
        let mut t = RetainedTree::new();
        for (i, topic) in ["a", "a/b", "a/c", "a/b/c", "/a", "b", "$SYS/x", "a/$y"].iter().enumerate() {
            t.set(topic, i as u32);
        }
        let names = |filter| found(&t, filter).into_iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(names("a/b"), ["a/b"]);
        assert_eq!(names("a/+"), ["a/$y", "a/b", "a/c"]);
        assert_eq!(names("a/#"), ["a", "a/$y", "a/b", "a/b/c", "a/c"]);
        assert_eq!(names("+"), ["a", "b"]);
        assert_eq!(names("+/a"), ["/a"]);
        assert_eq!(names("#").len(), 7);
        assert!(!names("#").contains(&"$SYS/x".to_string()));
        assert_eq!(names("$SYS/#"), ["$SYS/x"]);
        assert_eq!(names("$SYS/+"), ["$SYS/x"]);
        assert_eq!(names("+/+/c"), ["a/b/c"]);
        assert!(names("zz/#").is_empty());
    }

    #[test]
    fn retain_drops_and_prunes() {
        let mut t = RetainedTree::new();
        for i in 0..100u32 {
            t.set(&format!("x/{}/{}", i % 10, i), i);
        }
        assert_eq!(t.retain(|_, v| v % 2 == 0), 50);
        assert_eq!(t.len(), 50);
        assert_eq!(t.get("x/3/13"), None);
        assert_eq!(t.get("x/4/14"), Some(&14));
        assert_eq!(t.retain(|topic, _| !topic.starts_with("x/")), 50);
        assert_eq!(t.node_count(), 1);
    }

    #[test]
    fn hundred_k_topics() {
        let mut t = RetainedTree::new();
        for i in 0..100_000u32 {
            t.set(&format!("site/{}/dev/{}", i % 100, i), i);
        }
        assert_eq!(t.len(), 100_000);
        let mut n = 0usize;
        let mut ok = true;
        t.for_each_match("#", |topic, v| {
            n += 1;
            ok &= topic.ends_with(&format!("/{v}"));
        });
        assert_eq!(n, 100_000);
        assert!(ok);
        assert_eq!(found(&t, "site/42/dev/+").len(), 1000);
        assert_eq!(found(&t, "site/+/dev/4242"), [("site/42/dev/4242".to_string(), 4242)]);
        assert_eq!(found(&t, "site/7/#").len(), 1000);
        for i in 0..100_000u32 {
            assert_eq!(t.remove(&format!("site/{}/dev/{}", i % 100, i)), Some(i));
        }
        assert_eq!(t.node_count(), 1);
    }
}
