//! Persistence behind one interface: what the broker must keep across restarts and crashes.
//!
//! The broker describes every durable effect as an [`Op`] and submits the ops of one message
//! together; the store applies them in submission order, in batches (group commit), and a
//! [`Commit`] resolves once they are on disk. Acknowledgements wait for it. At start the broker
//! reads everything back with [`Store::recover`]. `memory` keeps nothing; `fjall` is the
//! embedded LSM store. Nothing outside this module touches fjall.

pub(crate) mod backlog;
pub mod bus;
pub(crate) mod disk;
pub(crate) mod fjall;
pub(crate) mod history;
pub(crate) mod memory;
pub mod nats;
pub(crate) mod progress;
pub(crate) mod record;

use std::sync::Arc;

use crate::model::{Delivery, Message};
use crate::model::{SessionOwner, SubOptions};

pub use self::fjall::FjallStore;
pub use backlog::Backlog;
pub use history::{HistoryChunk, Pruned, Retention};
pub use memory::MemoryStore;

/// A storage failure; the message names the path or operation and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[allow(missing_docs)] // variant fields are the named parts of each `#[error]` message
pub enum StoreError {
    /// A read or write failed.
    #[error("store I/O on {path}: {message}")]
    Io { path: String, message: String },
    /// Another process holds the data directory.
    #[error("data directory {path} is locked by another dataloom process; stop it or use another --data-dir")]
    Locked { path: String },
    /// A record cannot be decoded.
    #[error("data directory {path} is corrupt or unreadable: {message}; restore a backup or move it away")]
    Corrupt { path: String, message: String },
    #[error(
        "data directory {path} has format version {found}, this build reads up to {supported}; upgrade dataloom"
    )]
    /// Written by a newer dataloom.
    NewerFormat { path: String, found: u32, supported: u32 },
    /// Below `storage.min_free_bytes`.
    #[error("store is out of space: {0}")]
    DiskFull(String),
    /// The cluster (NATS) refused or could not take a change, or cannot be reached.
    #[error("cluster: {0}")]
    Cluster(String),
    /// A write or fsync failed earlier.
    #[error("store failed an fsync and stopped accepting writes: {0}; restart the broker")]
    Poisoned(String),
}

/// The durable part of a session: who it is, how long it lives, what it subscribes to.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// The client id.
    pub client_id: Arc<str>,
    /// Session expiry interval, seconds (`u32::MAX` never expires).
    pub expiry: u32,
    /// Subscriptions by the filter as the client wrote it (including `$share/g/`).
    pub subscriptions: Vec<(String, SubOptions)>,
    /// The identity that created the session; `None` in records written before owners were
    /// kept (record v1): the next identity to resume it claims it.
    pub owner: Option<SessionOwner>,
    /// When the session went offline, wall clock UNIX milliseconds; `None` while a connection
    /// holds it (or in a v1 record): after a restart its expiry then counts from the start.
    pub offline_since: Option<u64>,
}

/// One durable effect.
#[derive(Debug, Clone)]
pub enum Op {
    /// Sets the retained state of the message's topic.
    PutRetained(Arc<Message>),
    /// Deletes the retained state of a topic.
    DeleteRetained(Arc<str>),
    /// Creates or replaces a session record (not its queue).
    PutSession(SessionRecord),
    /// Deletes a session and everything under it (queue, in-flight, QoS 2 ids).
    DeleteSession(Arc<str>),
    /// A message queued for a persistent session, in `seq` order.
    /// A message queued for a persistent session, in `seq` order.
    Enqueue {
        /// The session's client id.
        client_id: Arc<str>,
        /// Position in the session's queue.
        seq: u64,
        /// The delivery owed.
        delivery: Delivery,
    },
    /// The message with `seq` was acknowledged (or dropped) and leaves the queue.
    Dequeue {
        /// The session's client id.
        client_id: Arc<str>,
        /// Position in the session's queue.
        seq: u64,
    },
    /// The message with `seq` was sent with packet id `pkid`; `released` once PUBREL was sent.
    SetInflight {
        /// The session's client id.
        client_id: Arc<str>,
        /// Position in the session's queue.
        seq: u64,
        /// The packet id it was sent with.
        pkid: u16,
        /// PUBREL was sent (QoS 2, PUBREC received).
        released: bool,
    },
    /// An incoming QoS 2 packet id was received (PUBREC owed, duplicates suppressed).
    PutIncomingQos2 {
        /// The session's client id.
        client_id: Arc<str>,
        /// The publisher's packet id.
        pkid: u16,
    },
    /// An incoming QoS 2 packet id was released by PUBREL.
    DeleteIncomingQos2 {
        /// The session's client id.
        client_id: Arc<str>,
        /// The publisher's packet id.
        pkid: u16,
    },
    /// Creates or replaces an API key record (bytes as `auth` encoded them: id, secret hash and
    /// permissions, never the secret).
    PutKey {
        /// The key id.
        id: Arc<str>,
        /// The record bytes as `auth` encoded them.
        record: Vec<u8>,
    },
    /// Deletes an API key (revocation).
    DeleteKey(Arc<str>),
    /// Appends a message to its topic's history; its stamp holds the revision and time.
    AppendHistory(Arc<Message>),
    /// Removes one history entry (retention).
    DeleteHistory {
        /// The entry's topic.
        topic: Arc<str>,
        /// The entry's revision.
        revision: u64,
    },
    /// The broker-wide state revision reached this value (stored with a deleted state, which
    /// leaves no record to carry it); [`Recovered::revision`] reads it back.
    Revision(u64),
    /// The cluster's state log was applied up to this position (stored with the changes it
    /// applied, so a restart resumes after them); [`Recovered::cluster_seq`] reads it back.
    ClusterSeq(u64),
}

/// An API key record read back: its id (the store's key) and the bytes `auth` encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The key id (the store's key).
    pub id: Vec<u8>,
    /// The record bytes as `auth` encoded them.
    pub record: Vec<u8>,
}

/// A queued message of a recovered session.
#[derive(Debug, Clone)]
pub struct RecoveredMessage {
    /// Position in the session's queue.
    pub seq: u64,
    /// The queued delivery.
    pub delivery: Delivery,
    /// Packet id and whether PUBREL was sent, if it was in flight.
    pub inflight: Option<(u16, bool)>,
}

/// A session read back at start.
#[derive(Debug, Clone)]
pub struct RecoveredSession {
    /// Identity, expiry, subscriptions.
    pub record: SessionRecord,
    /// Queued and in-flight messages in `seq` order.
    pub queue: Vec<RecoveredMessage>,
    /// Incoming QoS 2 ids not yet released.
    pub incoming_qos2: Vec<u16>,
}

/// Everything a store holds, read back at start. Expired messages are already left out.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Retained messages.
    pub retained: Vec<Arc<Message>>,
    /// Sessions with their queues.
    pub sessions: Vec<RecoveredSession>,
    /// The highest state revision stored (0 when none): the next change gets a higher one.
    pub revision: u64,
    /// The position in the cluster's state log applied last (0: none, or no cluster).
    pub cluster_seq: u64,
}

/// Resolves when submitted ops are durable (or at once when nobody needs to wait).
#[derive(Debug)]
pub struct Commit(Option<tokio::sync::oneshot::Receiver<Result<(), StoreError>>>);

impl Commit {
    /// A commit that is already complete.
    pub fn done() -> Commit {
        Commit(None)
    }

    /// A commit completed through `rx`.
    pub fn pending(rx: tokio::sync::oneshot::Receiver<Result<(), StoreError>>) -> Commit {
        Commit(Some(rx))
    }

    /// A commit that resolves once both `self` and `other` did (the first failure wins).
    /// Costs a task only when both are still pending.
    pub fn and(self, other: Commit) -> Commit {
        match (self.0, other.0) {
            (None, b) => Commit(b),
            (a, None) => Commit(a),
            (Some(a), Some(b)) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let r = match Commit(Some(a)).wait().await {
                        Ok(()) => Commit(Some(b)).wait().await,
                        Err(e) => Err(e),
                    };
                    let _ = tx.send(r);
                });
                Commit(Some(rx))
            }
        }
    }

    /// True when there is nothing to wait for.
    pub fn is_done(&self) -> bool {
        self.0.is_none()
    }

    /// Waits until the ops are on disk without consuming the commit (usable in `select!`);
    /// afterwards the commit is done.
    ///
    /// # Errors
    /// As [`Commit::wait`].
    pub async fn wait_mut(&mut self) -> Result<(), StoreError> {
        let r = match self.0.as_mut() {
            None => return Ok(()),
            Some(rx) => rx.await.unwrap_or_else(|_| Err(StoreError::Poisoned("store writer stopped".into()))),
        };
        self.0 = None;
        r
    }

    /// The result if the commit completed already, without waiting.
    pub fn try_result(&mut self) -> Option<Result<(), StoreError>> {
        let r = match self.0.as_mut() {
            None => return Some(Ok(())),
            Some(rx) => match rx.try_recv() {
                Ok(r) => r,
                Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return None,
                Err(_) => Err(StoreError::Poisoned("store writer stopped".into())),
            },
        };
        self.0 = None;
        Some(r)
    }

    /// Waits until the ops are on disk.
    ///
    /// # Errors
    /// The [`StoreError`] that made the batch fail; the message must not be acknowledged.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or_else(|_| Err(StoreError::Poisoned("store writer stopped".into()))),
        }
    }
}

/// Durable state of the broker.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads back everything stored, dropping what expired.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when a record cannot be decoded.
    fn recover(&self) -> Result<Recovered, StoreError>;

    /// Queues `ops` for the next group commit, applied after every earlier submission.
    /// With `durable`, the returned [`Commit`] resolves once they are fsync'ed (under
    /// `storage.durability = "buffered"`: once they are written to the OS, which a crash of
    /// the process cannot lose); without, it is already done.
    fn submit(&self, ops: Vec<Op>, durable: bool) -> Commit;

    /// Set once a write or fsync failed: the broker must stop acknowledging and exit.
    fn poisoned(&self) -> Option<StoreError>;

    /// Flushes everything submitted and syncs it (graceful shutdown).
    ///
    /// # Errors
    /// [`StoreError`] when the final sync fails.
    fn close(&self) -> Result<(), StoreError>;

    /// The writer's queue, when the store has one (the memory store writes nothing).
    fn backlog(&self) -> Option<&Backlog> {
        None
    }

    /// Bytes the store uses on disk (0 for memory).
    fn disk_bytes(&self) -> u64;

    /// Bytes of memory the store holds now: writes waiting for the writer, the engine's
    /// memtables and its block cache (at its capacity). Read on every routed message, so it is
    /// a few atomic loads. 0 for the memory store (its state is the broker's own).
    fn memory_bytes(&self) -> usize {
        0
    }

    /// The stored API key records (read at start; the memory store has none); `auth` decodes them.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the keyspace cannot be read.
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        Ok(Vec::new())
    }

    /// History in revision order: entries with a revision in `from..=until` whose topic
    /// `want` accepts, at most `limit` of them (see [`history`] for the bounds).
    ///
    /// # Errors
    /// [`StoreError`] when the history cannot be read or decoded.
    fn history_scan(
        &self,
        _from: u64,
        _until: u64,
        _limit: usize,
        _want: &dyn Fn(&str) -> bool,
    ) -> Result<HistoryChunk, StoreError> {
        Ok(HistoryChunk::default())
    }

    /// The history of one topic, revisions `from..=until`, at most `limit` entries.
    ///
    /// # Errors
    /// As [`Store::history_scan`].
    fn history_of(
        &self,
        _topic: &str,
        _from: u64,
        _until: u64,
        _limit: usize,
    ) -> Result<HistoryChunk, StoreError> {
        Ok(HistoryChunk::default())
    }

    /// The first revision whose entry is not older than `unix_ms` (entry times never go
    /// backwards with the revision); one past the last entry when every entry is older.
    ///
    /// # Errors
    /// As [`Store::history_scan`].
    fn history_start_at(&self, _unix_ms: u64) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// The revision where the newest `n` entries `want` accepts start (of `topic` only, when
    /// given: a faster path for a filter without wildcards); 0 when there are fewer.
    ///
    /// # Errors
    /// As [`Store::history_scan`].
    fn history_last(
        &self,
        _n: usize,
        _topic: Option<&str>,
        _want: &dyn Fn(&str) -> bool,
    ) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Up to `max` entries (of `topic` only, when given) that `retention` no longer keeps:
    /// beyond a topic's newest `keep`, older than its time bound, or of a topic with no
    /// retention (`None`: it keeps no history any more).
    ///
    /// # Errors
    /// As [`Store::history_scan`].
    fn history_prunable(
        &self,
        _topic: Option<&str>,
        _retention: &dyn Fn(&str) -> Option<Retention>,
        _max: usize,
    ) -> Result<Vec<Pruned>, StoreError> {
        Ok(Vec::new())
    }

    /// The highest history revision written (readable), watched; `None` for a store without
    /// history.
    fn history_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}
