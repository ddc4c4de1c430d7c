//! What the store answers about message history (issue 17): entries in revision order, one
//! topic's entries, where a time or the last N entries start, and which entries a retention
//! policy prunes. The broker decides which topics keep history and when to prune; the store
//! only reads and writes entries ([`super::Op::AppendHistory`], [`super::Op::DeleteHistory`]).
//!
//! An entry is an [`Arc<Message>`] whose [`crate::model::Stamp`] carries its broker-wide
//! revision and its time. Every read is bounded: a call returns at most `limit` entries and
//! examines at most [`MAX_SCAN`] records, and says where to go on ([`HistoryChunk::next`]), so
//! reading a million entries holds one chunk in memory, never all of them.

use std::sync::Arc;

use crate::model::Message;

/// Most records one read examines (matching or not) before it returns.
pub const MAX_SCAN: usize = 20_000;

/// A bounded piece of history.
#[derive(Debug, Default)]
pub struct HistoryChunk {
    /// Entries in revision order.
    pub entries: Vec<Arc<Message>>,
    /// The revision to read on from, when the range may hold more; `None`: the range is done.
    pub next: Option<u64>,
}

/// The retention of one topic: newest entries kept, and the oldest time kept (UNIX ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Entries kept per topic (`u64::MAX`: no bound).
    pub keep: u64,
    /// Entries older than this time, UNIX milliseconds, are pruned (0: no bound).
    pub not_before_ms: u64,
}

/// An entry to prune: its topic and revision.
pub type Pruned = (Arc<str>, u64);
