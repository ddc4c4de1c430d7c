//! A trie of topic filters that answers "which single filter governs this topic?" with the
//! schema precedence: compared level by level, a literal level beats `+`, and `+` beats `#`.
//!
//! The lookup walks the topic's levels once, trying the literal child first, then `+`, then a
//! `#` at that node, and stops at the first complete match, so it returns the most specific
//! filter without visiting the others. Its cost depends on the topic's depth, not on how many
//! filters are stored (a hash lookup per level; backtracking only where a literal branch
//! fails deeper down). A filter starting with a wildcard never matches a topic starting with
//! `$` [MQTT-4.7.2-1].

use std::collections::HashMap;

/// Per-level maps hash with foldhash: topic levels are short and SipHash dominated the
/// lookup. Only registrations (admins) insert keys, so there is no flooding to defend against.
type Levels<V> = HashMap<Box<str>, Node<V>, foldhash::fast::RandomState>;

#[derive(Debug)]
struct Node<V> {
    literal: Levels<V>,
    plus: Option<Box<Node<V>>>,
    /// The value of the filter ending in `#` at this node.
    hash: Option<V>,
    /// The value of the filter ending exactly at this node.
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node { literal: Levels::default(), plus: None, hash: None, value: None }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.plus.is_none() && self.hash.is_none() && self.value.is_none()
    }
}

/// Filters mapped to values, looked up by topic with schema precedence.
#[derive(Debug)]
pub struct FilterTrie<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for FilterTrie<V> {
    fn default() -> Self {
        FilterTrie { root: Node::default(), len: 0 }
    }
}

impl<V> FilterTrie<V> {
    /// Number of filters stored.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no filter is stored.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` for `filter` (assumed valid); returns the value it replaces.
    pub fn insert(&mut self, filter: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            let last = levels.peek().is_none();
            if level == "#" && last {
                let old = node.hash.replace(value);
                self.len += usize::from(old.is_none());
                return old;
            }
            node = match level {
                "+" => node.plus.get_or_insert_with(Box::default),
                l => node.literal.entry(l.into()).or_default(),
            };
        }
        let old = node.value.replace(value);
        self.len += usize::from(old.is_none());
        old
    }

    /// The value stored for exactly `filter`.
    pub fn get(&self, filter: &str) -> Option<&V> {
        let mut node = &self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" && levels.peek().is_none() {
                return node.hash.as_ref();
            }
            node = match level {
                "+" => node.plus.as_deref()?,
                l => node.literal.get(l)?,
            };
        }
        node.value.as_ref()
    }

    /// Removes exactly `filter`; returns its value. Empty branches are pruned.
    pub fn remove(&mut self, filter: &str) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let old = remove_in(&mut self.root, &levels);
        self.len -= usize::from(old.is_some());
        old
    }

    /// The value of the most specific filter matching `topic` (a topic name, no wildcards).
    pub fn lookup(&self, topic: &str) -> Option<&V> {
        find(&self.root, Some(topic), topic.starts_with('$'))
    }

    /// Every stored value, in no particular order.
    pub fn values(&self) -> Vec<&V> {
        let mut out = Vec::with_capacity(self.len);
        collect(&self.root, &mut out);
        out
    }
}

fn remove_in<V>(node: &mut Node<V>, levels: &[&str]) -> Option<V> {
    let Some((&level, rest)) = levels.split_first() else {
        return node.value.take();
    };
    if level == "#" && rest.is_empty() {
        return node.hash.take();
    }
    let old;
    if level == "+" {
        let child = node.plus.as_deref_mut()?;
        old = remove_in(child, rest);
        if child.is_empty() {
            node.plus = None;
        }
    } else {
        let child = node.literal.get_mut(level)?;
        old = remove_in(child, rest);
        if child.is_empty() {
            node.literal.remove(level);
        }
    }
    old
}

/// Depth-first in precedence order; `rest` is the unmatched part of the topic (`None` once
/// every level is consumed). `dollar`: the topic starts with `$` and this is the first level.
fn find<'a, V>(node: &'a Node<V>, rest: Option<&str>, dollar: bool) -> Option<&'a V> {
    let Some(rest) = rest else {
        // `a/#` also matches `a` itself, after the exact filter.
        return node.value.as_ref().or(node.hash.as_ref());
    };
    let (level, next) = match rest.split_once('/') {
        Some((l, n)) => (l, Some(n)),
        None => (rest, None),
    };
    if let Some(v) = node.literal.get(level).and_then(|child| find(child, next, false)) {
        return Some(v);
    }
    if dollar {
        return None;
    }
    if let Some(v) = node.plus.as_deref().and_then(|child| find(child, next, false)) {
        return Some(v);
    }
    node.hash.as_ref()
}

fn collect<'a, V>(node: &'a Node<V>, out: &mut Vec<&'a V>) {
    out.extend(node.value.iter().chain(node.hash.iter()));
    if let Some(p) = &node.plus {
        collect(p, out);
    }
    for child in node.literal.values() {
        collect(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataloom_codec::topic::matches;

    fn trie(filters: &[&'static str]) -> FilterTrie<&'static str> {
        let mut t = FilterTrie::default();
        for f in filters {
            t.insert(f, *f);
        }
        t
    }

    #[test]
    fn precedence_literal_plus_hash() {
        let t = trie(&["sensors/#", "sensors/+/temperature", "sensors/kitchen/temperature", "#"]);
        assert_eq!(t.lookup("sensors/kitchen/temperature"), Some(&"sensors/kitchen/temperature"));
        assert_eq!(t.lookup("sensors/hall/temperature"), Some(&"sensors/+/temperature"));
        assert_eq!(t.lookup("sensors/hall/humidity"), Some(&"sensors/#"));
        assert_eq!(t.lookup("sensors"), Some(&"sensors/#"));
        assert_eq!(t.lookup("lights/1"), Some(&"#"));
        assert_eq!(t.lookup("$SYS/broker/uptime"), None);
    }

    #[test]
    fn earlier_level_decides() {
        // Level 2: literal `b` beats `+`, whatever follows.
        let t = trie(&["a/+/c", "a/b/#"]);
        assert_eq!(t.lookup("a/b/c"), Some(&"a/b/#"));
        assert_eq!(t.lookup("a/x/c"), Some(&"a/+/c"));
        // A literal branch that fails deeper falls back to `+`.
        let t = trie(&["a/b/c", "a/+/d"]);
        assert_eq!(t.lookup("a/b/d"), Some(&"a/+/d"));
        assert_eq!(t.lookup("a/b/e"), None);
    }

    #[test]
    fn insert_get_remove() {
        let mut t = trie(&["a/+", "a/#", "a"]);
        assert_eq!(t.len(), 3);
        assert_eq!(t.insert("a/+", "again"), Some("a/+"));
        assert_eq!(t.get("a/#"), Some(&"a/#"));
        assert_eq!(t.remove("a/+"), Some("again"));
        assert_eq!(t.remove("a/+"), None);
        assert_eq!(t.lookup("a/x"), Some(&"a/#"));
        assert_eq!(t.remove("a/#"), Some("a/#"));
        assert_eq!(t.remove("a"), Some("a"));
        assert!(t.is_empty() && t.root.is_empty());
    }

    #[test]
    fn agrees_with_matches() {
        let filters = ["#", "+", "+/+", "a/#", "a/+/c", "a/b/c", "+/b/#", "a//c", "/#"];
        let topics = ["a", "a/b", "a/b/c", "x/b/c/d", "a//c", "/x", "$x/b"];
        for f in filters {
            let t = trie(&[f]);
            for topic in topics {
                assert_eq!(t.lookup(topic).is_some(), matches(f, topic), "{f} vs {topic}");
            }
        }
    }
}
