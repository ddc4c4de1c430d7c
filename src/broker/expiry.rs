//! Retained messages that expire (v5 Message Expiry Interval) leave the index while the broker
//! runs, not only when a subscriber would have been sent them: a min-heap of (expiry, topic)
//! is filled when such a message becomes retained (published or recovered) and drained by
//! [`Broker::purge_expired_retained`], which the server calls once a second. An entry whose
//! topic has been replaced since is skipped; the heap is rebuilt when stale entries pile up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

use super::Broker;
use crate::model::Message;
use crate::store::Op;

/// Expiry times of retained messages, earliest first.
#[derive(Debug, Default)]
pub(super) struct ExpiryHeap {
    heap: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
}

impl ExpiryHeap {
    /// Notes that `msg`, now retained, expires (if it has an expiry).
    pub(super) fn note(&mut self, msg: &Message) {
        if let Some(at) = msg.expires_at {
            self.heap.push(Reverse((at, msg.topic.clone())));
        }
    }

    /// Takes the topics whose noted expiry is at or before `now`.
    fn due(&mut self, now: Instant) -> Vec<(Instant, Arc<str>)> {
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            if let Some(Reverse(e)) = self.heap.pop() {
                out.push(e);
            }
        }
        out
    }
}

impl Broker {
    /// Removes every retained message whose expiry has passed (memory and store) and returns
    /// how many went.
    pub fn purge_expired_retained(&self, now: Instant) -> usize {
        let due = self.expiring.lock().due(now);
        if due.is_empty() {
            return 0;
        }
        let mut purged = 0;
        for (at, topic) in due {
            // In order with the publishers of this topic: a newer value submitted meanwhile
            // must not be deleted on disk by this purge.
            let _order = self.retained_order(&topic).lock();
            let mut tree = self.retained.write();
            // Replaced since (by a message with another expiry, or none): not this one's turn.
            if tree.get(&topic).is_none_or(|m| m.expires_at != Some(at)) {
                continue;
            }
            if let Some(old) = tree.remove(&topic) {
                crate::metrics::get().retained_replaced(old.payload.len(), 0);
            }
            drop(tree);
            purged += 1;
            if !topic.starts_with("$SYS/") {
                // Not waited for: at start, recovery leaves expired messages out anyway.
                drop(self.store.submit(vec![Op::DeleteRetained(topic)], false));
            }
        }
        self.compact_expiry_heap();
        purged
    }

    /// Rebuilds the heap from the index when replaced topics left it more than twice as
    /// large as the number of retained messages.
    fn compact_expiry_heap(&self) {
        let retained = self.retained_count();
        let mut heap = self.expiring.lock();
        if heap.heap.len() <= 2 * retained + 1024 {
            return;
        }
        let mut fresh = ExpiryHeap::default();
        self.retained.read().for_each_match("#", |_, m| fresh.note(m));
        *heap = fresh;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn msg(topic: &str, expires_at: Option<Instant>) -> Message {
        Message {
            topic: Arc::from(topic),
            topic_bytes: bytes::Bytes::copy_from_slice(topic.as_bytes()),
            payload: bytes::Bytes::from_static(b"v"),
            qos: dataloom_codec::QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            expires_at,
            publisher: None,
            charge: Default::default(),
            stamp: crate::model::Stamp::default(),
        }
    }

    #[test]
    fn due_entries_come_out_earliest_first() {
        let now = Instant::now();
        let mut h = ExpiryHeap::default();
        h.note(&msg("b", Some(now + Duration::from_secs(2))));
        h.note(&msg("a", Some(now + Duration::from_secs(1))));
        h.note(&msg("never", None));
        assert!(h.due(now).is_empty());
        let due = h.due(now + Duration::from_secs(5));
        let topics: Vec<&str> = due.iter().map(|(_, t)| &**t).collect();
        assert_eq!(topics, ["a", "b"]);
        assert!(h.heap.is_empty(), "messages without expiry are not noted");
    }
}
