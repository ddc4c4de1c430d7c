//! Which topics keep history and the order of their entries (issue 17). The `[[history]]`
//! rules sit in a [`FilterTrie`], the schema registry's, so the most specific filter governs
//! a topic as it does for schemas. A publish on a governed topic takes the next broker-wide
//! revision and a time that never goes backwards, and submits its history entry to the store,
//! all under [`History::order`]: entries reach the store in revision order, which is what
//! lets a replay switch from the store to the live stream without a gap (see `replay`).
//! Pruning beyond `keep` and `max_age` runs in a background task (`prune`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::config::HistoryRule;
use crate::schema::trie::FilterTrie;
use crate::store::Retention;

/// Longest topic that keeps history: the store's keys hold at most 65,535 bytes, and a
/// history key is the topic plus 9.
pub const MAX_TOPIC_LEN: usize = 65_000;

/// How long one rule keeps a topic's entries.
#[derive(Debug, Clone, Copy)]
struct Rule {
    keep: u64,
    max_age: Option<Duration>,
}

/// The last history revision given out and its time.
#[derive(Debug, Default)]
pub(super) struct Clock {
    /// The revision of the last entry submitted (0: none since start).
    pub last: u64,
    /// Its time, UNIX milliseconds: the next entry's time is never earlier.
    pub last_ms: u64,
}

impl Clock {
    /// The time of a new entry: now, or the last entry's time if the wall clock went back.
    pub fn time(&mut self, now_ms: u64) -> u64 {
        self.last_ms = self.last_ms.max(now_ms);
        self.last_ms
    }
}

/// The history policy of a broker with `[[history]]` rules.
#[derive(Debug)]
pub struct History {
    rules: FilterTrie<Rule>,
    /// Held from taking a history revision through its store submission.
    order: Mutex<Clock>,
    /// Topics that got entries since the pruner last looked at them.
    dirty: Mutex<HashSet<Arc<str>>>,
}

impl History {
    /// The policy of `rules` (validated by the config).
    pub fn new(rules: &[HistoryRule]) -> History {
        let mut trie = FilterTrie::default();
        for r in rules {
            trie.insert(&r.filter, Rule { keep: r.keep.unwrap_or(u64::MAX), max_age: r.max_age });
        }
        History { rules: trie, order: Mutex::new(Clock::default()), dirty: Mutex::default() }
    }

    /// True when `topic` keeps history. A topic too long for a history key (over
    /// [`MAX_TOPIC_LEN`] bytes) keeps none, so its entry can never be refused by the store
    /// after it took a revision.
    pub fn keeps(&self, topic: &str) -> bool {
        topic.len() <= MAX_TOPIC_LEN && self.rules.lookup(topic).is_some()
    }

    /// The retention of `topic` at `now_ms`, `None` when no rule governs it.
    pub fn retention(&self, topic: &str, now_ms: u64) -> Option<Retention> {
        self.rules.lookup(topic).map(|r| Retention {
            keep: r.keep,
            not_before_ms: r
                .max_age
                .map_or(0, |a| now_ms.saturating_sub(u64::try_from(a.as_millis()).unwrap_or(u64::MAX))),
        })
    }

    /// Takes the order lock (see the module header).
    pub(super) fn order(&self) -> MutexGuard<'_, Clock> {
        self.order.lock()
    }

    /// Notes that `topic` got an entry (the pruner checks its `keep`).
    pub(super) fn touched(&self, topic: &Arc<str>) {
        let mut d = self.dirty.lock();
        if !d.contains(&**topic) {
            d.insert(topic.clone());
        }
    }

    /// The topics touched since the last call.
    pub(super) fn take_touched(&self) -> HashSet<Arc<str>> {
        std::mem::take(&mut *self.dirty.lock())
    }
}
