//! The recent schema rejections (the web console's list): a ring of the last
//! [`RECENT_REJECTIONS`] messages the gate refused, each with the schema, the JSON Pointer of
//! the failing field, what failed, the topic and the client. Bounded in items and in the bytes
//! of each item; the oldest entry leaves first. Every entry has a sequence number so a reader
//! can ask for what came after the last one it saw.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::schema::document::Rejection;

/// Entries kept.
pub const RECENT_REJECTIONS: usize = 100;
/// Longest `what` and `client_id` kept (longer ones are cut at a character boundary).
const MAX_TEXT: usize = 512;

/// One refused message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentRejection {
    /// Increasing from 1 over the broker's life.
    pub seq: u64,
    /// When, UNIX milliseconds.
    pub unix_ms: u64,
    /// The governing schema's filter and version.
    pub filter: Arc<str>,
    pub version: u64,
    /// JSON Pointer of the failing value (empty: the whole payload).
    pub pointer: String,
    /// What failed.
    pub what: String,
    /// The topic the message was published to.
    pub topic: Arc<str>,
    /// The publisher's client id (`$http` for the state API, the session's for a will).
    pub client_id: String,
}

/// The ring.
#[derive(Debug, Default)]
pub struct RecentRejections {
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    items: VecDeque<RecentRejection>,
    last_seq: u64,
}

impl RecentRejections {
    /// Records `r` of a message to `topic` from `client_id`, dropping the oldest entry when full.
    pub fn record(&self, r: &Rejection, topic: &Arc<str>, client_id: &str) {
        let mut ring = self.ring.lock();
        ring.last_seq += 1;
        let entry = RecentRejection {
            seq: ring.last_seq,
            unix_ms: crate::broker::lifecycle::unix_ms(),
            filter: r.filter.clone(),
            version: r.version,
            pointer: cut(&r.pointer),
            what: cut(&r.what),
            topic: topic.clone(),
            client_id: cut(client_id),
        };
        if ring.items.len() == RECENT_REJECTIONS {
            ring.items.pop_front();
        }
        ring.items.push_back(entry);
    }

    /// The entries after sequence number `after` (0: all kept) that `readable` accepts by
    /// topic, oldest first.
    pub fn since(&self, after: u64, readable: &dyn Fn(&str) -> bool) -> Vec<RecentRejection> {
        let ring = self.ring.lock();
        ring.items.iter().filter(|e| e.seq > after && readable(&e.topic)).cloned().collect()
    }

    /// The sequence number of the latest entry (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().last_seq
    }
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(pointer: &str) -> Rejection {
        Rejection {
            filter: Arc::from("a/+"),
            version: 2,
            pointer: pointer.into(),
            what: "x".repeat(2000),
            not_json: false,
        }
    }

    #[test]
    fn keeps_the_last_entries_in_order_and_filters_by_topic() {
        let log = RecentRejections::default();
        for i in 0..(RECENT_REJECTIONS + 5) {
            let topic: Arc<str> = Arc::from(if i % 2 == 0 { "a/even" } else { "a/odd" });
            log.record(&rejection(&format!("/{i}")), &topic, "c1");
        }
        let all = log.since(0, &|_| true);
        assert_eq!(all.len(), RECENT_REJECTIONS);
        assert_eq!(all.first().map(|e| e.seq), Some(6));
        assert_eq!(all.last().map(|e| e.seq), Some(log.last_seq()));
        assert!(all.iter().all(|e| e.what.len() <= MAX_TEXT + '…'.len_utf8()));
        let even = log.since(100, &|t| t == "a/even");
        assert!(even.iter().all(|e| e.topic.as_ref() == "a/even" && e.seq > 100));
        assert_eq!(even.len(), 3);
    }
}
