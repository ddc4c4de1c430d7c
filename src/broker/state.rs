//! Reading the retained state without subscribing (the HTTP state API, issue 17): one topic,
//! or the topics under a filter in topic order, a page at a time after a cursor, each page with
//! the state revision it reflects.
//!
//! A page is taken under one read lock of the retained index; it keeps only the `limit + 1`
//! smallest topics after the cursor (a bounded heap), so reading millions of topics page by
//! page holds one page in memory, not the whole state.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

use super::Broker;
use crate::model::Message;

/// One page of state.
#[derive(Debug)]
pub struct StatePage {
    /// The states in topic order (byte order of the UTF-8 topic).
    pub items: Vec<Arc<Message>>,
    /// True when more topics follow the last item.
    pub more: bool,
    /// The state revision the page reflects: every change up to it, none after.
    pub revision: u64,
}

/// A message ordered by its topic (the heap keeps the largest on top, to drop it first).
struct ByTopic(Arc<Message>);

impl PartialEq for ByTopic {
    fn eq(&self, other: &Self) -> bool {
        self.0.topic == other.0.topic
    }
}

impl Eq for ByTopic {}

impl PartialOrd for ByTopic {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByTopic {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.topic.cmp(&other.0.topic)
    }
}

impl Broker {
    /// The state of `topic` (not expired) and the revision it reflects.
    pub fn state_of(&self, topic: &str) -> (Option<Arc<Message>>, u64) {
        let tree = self.retained.read();
        let now = Instant::now();
        let found = tree.get(topic).filter(|m| !m.is_expired(now)).cloned();
        (found, self.revision())
    }

    /// Up to `limit` states whose topic matches `filter` (a valid, non-shared filter), comes
    /// after `after` and passes `readable`, in topic order. Expired states are left out.
    pub fn state_page(
        &self,
        filter: &str,
        after: Option<&str>,
        limit: usize,
        readable: &dyn Fn(&str) -> bool,
    ) -> StatePage {
        let now = Instant::now();
        let keep = limit.saturating_add(1);
        let mut heap: BinaryHeap<ByTopic> = BinaryHeap::with_capacity(keep.min(4096) + 1);
        let tree = self.retained.read();
        tree.for_each_match(filter, |topic, m| {
            if after.is_some_and(|a| topic <= a) || m.is_expired(now) {
                return;
            }
            if heap.len() == keep && heap.peek().is_some_and(|top| topic >= &*top.0.topic) {
                return;
            }
            if !readable(topic) {
                return;
            }
            heap.push(ByTopic(m.clone()));
            if heap.len() > keep {
                heap.pop();
            }
        });
        let revision = self.revision();
        drop(tree);
        let mut items: Vec<Arc<Message>> = heap.into_sorted_vec().into_iter().map(|b| b.0).collect();
        let more = items.len() > limit;
        items.truncate(limit);
        StatePage { items, more, revision }
    }
}
