//! History reads of the fjall store: the `history` keyspace (revision → entry) in revision
//! order, the `history_index` keyspace (topic, 0x00, revision → time) per topic, the binary
//! search from a time to a revision, and the entries a retention policy prunes. Every read
//! examines at most [`MAX_SCAN`] records and returns at most its `limit`.

use std::sync::Arc;

use ::fjall::Keyspace;
use bytes::Bytes;

use super::{FjallStore, corrupt};
use crate::model::Message;
use crate::store::StoreError;
use crate::store::history::{HistoryChunk, MAX_SCAN, Pruned, Retention};
use crate::store::record::{self, Clock, RecordError};

/// The `history_index` key of `topic`'s entry at `revision`.
pub(super) fn index_key(topic: &str, revision: u64) -> Vec<u8> {
    let mut k = super::client_prefix(topic);
    k.extend_from_slice(&revision.to_be_bytes());
    k
}

/// The highest revision in the `history` keyspace (0 when empty).
pub(super) fn last_revision(history: &Keyspace) -> Result<u64, ::fjall::Error> {
    match history.last_key_value() {
        None => Ok(0),
        Some(kv) => Ok(revision_of(&kv.key()?).unwrap_or(0)),
    }
}

fn revision_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn u64_of(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

impl FjallStore {
    fn entry(&self, key: &[u8], value: &[u8], clock: &Clock) -> Result<Arc<Message>, StoreError> {
        let m = record::decode_message(Bytes::copy_from_slice(value), clock)
            .map_err(|e| corrupt(&self.path, "history", key, &e))?;
        Ok(Arc::new(m))
    }

    fn bad_key(&self, keyspace: &str, key: &[u8]) -> StoreError {
        corrupt(&self.path, keyspace, key, &RecordError::Invalid("key"))
    }

    /// See [`crate::store::Store::history_scan`].
    pub(super) fn scan_history(
        &self,
        from: u64,
        until: u64,
        limit: usize,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<HistoryChunk, StoreError> {
        let clock = Clock::now();
        let mut out = HistoryChunk::default();
        if from > until {
            return Ok(out);
        }
        for (scanned, kv) in self.ks.history.range(from.to_be_bytes()..=until.to_be_bytes()).enumerate() {
            let (k, v) = kv.into_inner().map_err(|e| self.read_error(e))?;
            let rev = revision_of(&k).ok_or_else(|| self.bad_key("history", &k))?;
            if out.entries.len() == limit || scanned == MAX_SCAN {
                out.next = Some(rev);
                return Ok(out);
            }
            let m = self.entry(&k, &v, &clock)?;
            if want(&m.topic) {
                out.entries.push(m);
            }
        }
        Ok(out)
    }

    /// See [`crate::store::Store::history_of`].
    pub(super) fn topic_history(
        &self,
        topic: &str,
        from: u64,
        until: u64,
        limit: usize,
    ) -> Result<HistoryChunk, StoreError> {
        let clock = Clock::now();
        let mut out = HistoryChunk::default();
        if from > until {
            return Ok(out);
        }
        let range = index_key(topic, from)..=index_key(topic, until);
        for kv in self.ks.history_index.range(range) {
            let k = kv.key().map_err(|e| self.read_error(e))?;
            let rev = k
                .len()
                .checked_sub(8)
                .and_then(|at| revision_of(&k[at..]))
                .ok_or_else(|| self.bad_key("history_index", &k))?;
            if out.entries.len() == limit {
                out.next = Some(rev);
                return Ok(out);
            }
            // An index entry whose record is gone was pruned between the two reads.
            if let Some(v) = self.ks.history.get(rev.to_be_bytes()).map_err(|e| self.read_error(e))? {
                out.entries.push(self.entry(&rev.to_be_bytes(), &v, &clock)?);
            }
        }
        Ok(out)
    }

    /// The time of the first entry at or after revision `at`, with its revision.
    fn time_from(&self, at: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let Some(kv) = self.ks.history.range(at.to_be_bytes()..).next() else {
            return Ok(None);
        };
        let (k, v) = kv.into_inner().map_err(|e| self.read_error(e))?;
        let rev = revision_of(&k).ok_or_else(|| self.bad_key("history", &k))?;
        let stamp = record::decode_stamp(&v).map_err(|e| corrupt(&self.path, "history", &k, &e))?;
        Ok(Some((rev, stamp.unix_ms)))
    }

    /// See [`crate::store::Store::history_start_at`]: a binary search over revisions, one
    /// seek per step.
    pub(super) fn history_time_search(&self, unix_ms: u64) -> Result<u64, StoreError> {
        let last = last_revision(&self.ks.history).map_err(|e| self.read_error(e))?;
        let (mut lo, mut hi) = (0u64, last.saturating_add(1));
        let mut best = hi;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.time_from(mid)? {
                Some((rev, _)) if rev >= hi => hi = mid,
                None => hi = mid,
                Some((rev, time)) if time >= unix_ms => {
                    best = rev;
                    hi = mid;
                }
                Some((rev, _)) => lo = rev + 1,
            }
        }
        Ok(best)
    }

    /// See [`crate::store::Store::history_last`].
    pub(super) fn last_history(
        &self,
        n: usize,
        topic: Option<&str>,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<u64, StoreError> {
        if n == 0 {
            return Ok(u64::MAX);
        }
        let mut seen = 0;
        if let Some(topic) = topic {
            for kv in self.ks.history_index.prefix(super::client_prefix(topic)).rev() {
                let k = kv.key().map_err(|e| self.read_error(e))?;
                if k.len() != topic.len() + 9 {
                    continue;
                }
                seen += 1;
                if seen == n {
                    return revision_of(&k[topic.len() + 1..])
                        .ok_or_else(|| self.bad_key("history_index", &k));
                }
            }
            return Ok(0);
        }
        let clock = Clock::now();
        for kv in self.ks.history.iter().rev() {
            let (k, v) = kv.into_inner().map_err(|e| self.read_error(e))?;
            let m = self.entry(&k, &v, &clock)?;
            if want(&m.topic) {
                seen += 1;
                if seen == n {
                    return Ok(m.stamp.revision);
                }
            }
        }
        Ok(0)
    }

    /// See [`crate::store::Store::history_prunable`]: the index read newest first, topic by
    /// topic, counting each topic's entries.
    pub(super) fn prunable_history(
        &self,
        topic: Option<&str>,
        retention: &dyn Fn(&str) -> Option<Retention>,
        max: usize,
    ) -> Result<Vec<Pruned>, StoreError> {
        let iter = match topic {
            Some(t) => self.ks.history_index.prefix(super::client_prefix(t)),
            None => self.ks.history_index.iter(),
        };
        let mut out = Vec::new();
        // The topic being counted, its retention and how many of its entries were seen.
        let mut current: Option<(Arc<str>, Option<Retention>, u64)> = None;
        for kv in iter.rev() {
            let (k, v) = kv.into_inner().map_err(|e| self.read_error(e))?;
            let (name, rev) = super::split_key::<8>(&k).ok_or_else(|| self.bad_key("history_index", &k))?;
            if topic.is_some_and(|t| t != name) {
                continue;
            }
            let time = u64_of(&v).ok_or_else(|| self.bad_key("history_index", &k))?;
            if current.as_ref().is_none_or(|(t, _, _)| &**t != name) {
                current = Some((Arc::from(name), retention(name), 0));
            }
            let Some((t, rule, seen)) = current.as_mut() else { continue };
            *seen += 1;
            let keep = rule.is_some_and(|r| *seen <= r.keep && time >= r.not_before_ms);
            if !keep {
                out.push((t.clone(), u64::from_be_bytes(rev)));
                if out.len() == max {
                    break;
                }
            }
        }
        Ok(out)
    }
}
