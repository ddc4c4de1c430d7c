//! The `fjall` backend: everything durable lives in one embedded LSM database in the data
//! directory, written by one group-commit thread.
//!
//! Keyspaces:
//! - `meta`: `format_version` → u32 big-endian ([`FORMAT_VERSION`]); a newer one is refused.
//! - `retained`: topic → message record.
//! - `sessions`: client id → session record.
//! - `queue`: client id, `0x00`, seq (u64 big-endian) → queued delivery record with its
//!   in-flight state (packet id, PUBREL sent).
//! - `qos2`: client id, `0x00`, packet id (u16 big-endian) → empty (incoming QoS 2 ids).
//! - `keys`: API key id → key record, bytes as `auth` encodes them (JSON: id, SHA-256 of the
//!   secret, permissions); the store does not read them.
//! - `schemas`: reserved for later use, created empty.
//! - `history`: revision (u64 big-endian) → history entry (a retained-format record: revision,
//!   time, message), so entries of every topic read back in revision order.
//! - `history_index`: topic, `0x00`, revision (u64 big-endian) → time (u64 big-endian UNIX
//!   ms): one topic's entries in revision order, and what retention needs without the records.
//!
//! Records are encoded by [`super::record`]. Writes go through the writer thread ([`writer`]):
//! [`Store::submit`] only sends the ops down a channel, the thread drains everything queued,
//! applies it as one atomic fjall write batch (written to the OS at once, so a crash of the
//! process loses nothing committed) and then, under `durability = "fsync"`, calls `fdatasync`
//! once for the whole batch before answering every waiter. Under `durability = "buffered"`
//! every commit resolves at once and the journal is synced at most [`writer::SYNC_INTERVAL`]
//! after the first unsynced write: a power loss or kernel crash can lose that window, a
//! process crash loses nothing. fjall locks the directory itself (a `lock` file held for the
//! database's lifetime): a second open fails with [`StoreError::Locked`].

mod history;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use ::fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use bytes::Bytes;
use parking_lot::Mutex;

use super::record::{self, Clock, RecordError};
use super::{Commit, Op, Recovered, RecoveredMessage, RecoveredSession, Store, StoreError, StoredKey};
use crate::config::Durability;

/// The data format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// Key of the format version in the `meta` keyspace.
const FORMAT_KEY: &[u8] = b"format_version";

/// Key of the highest state revision in the `meta` keyspace (u64 big-endian; see
/// [`Op::Revision`]).
pub(crate) const REVISION_KEY: &[u8] = b"revision";
/// Key of the cluster state log position applied last in the `meta` keyspace (u64
/// big-endian; see [`Op::ClusterSeq`]).
pub(crate) const CLUSTER_SEQ_KEY: &[u8] = b"cluster_seq";

/// Largest key fjall stores (its keys carry a 16-bit length).
const MAX_KEY_LEN: usize = u16::MAX as usize;

/// The writer's queue bound until [`FjallStore::limit_backlog`] sets another (64 MiB, the
/// default of `storage.max_write_backlog`).
pub const DEFAULT_BACKLOG: usize = 64 * 1024 * 1024;

/// The database and its keyspaces (cheap to clone: all handles are reference counted).
#[derive(Clone)]
struct Keyspaces {
    db: Database,
    meta: Keyspace,
    retained: Keyspace,
    sessions: Keyspace,
    queue: Keyspace,
    qos2: Keyspace,
    /// Reserved: registered JSON Schemas (later issue).
    #[allow(dead_code)]
    schemas: Keyspace,
    /// API keys: id → JSON key record.
    keys: Keyspace,
    /// History entries by revision.
    history: Keyspace,
    /// History entries by topic and revision → time.
    history_index: Keyspace,
}

/// State shared by the store handle and its writer thread.
#[derive(Debug)]
struct Shared {
    /// Fast check for [`Shared::poison`].
    is_poisoned: AtomicBool,
    poison: Mutex<Option<StoreError>>,
    batches: AtomicU64,
    /// Bytes submitted and not yet committed.
    backlog: crate::store::Backlog,
    /// The highest history revision committed (readable).
    history_written: tokio::sync::watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            is_poisoned: AtomicBool::new(false),
            poison: Mutex::new(None),
            batches: AtomicU64::new(0),
            backlog: crate::store::Backlog::new(DEFAULT_BACKLOG),
            history_written: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Shared {
    fn poisoned(&self) -> Option<StoreError> {
        if self.is_poisoned.load(Ordering::Acquire) { self.poison.lock().clone() } else { None }
    }

    /// Records the first fatal error; later ones keep the first.
    fn set_poison(&self, e: StoreError) -> StoreError {
        let mut p = self.poison.lock();
        let e = p.get_or_insert(e).clone();
        self.is_poisoned.store(true, Ordering::Release);
        e
    }
}

/// A message to the writer thread.
enum Msg {
    Submit {
        ops: Vec<Op>,
        /// What the ops count in the backlog, given back once they are committed.
        bytes: usize,
        done: Option<tokio::sync::oneshot::Sender<Result<(), StoreError>>>,
    },
    /// Commit everything before this, sync and stop.
    Close,
}

/// The fjall-backed [`Store`]. Dropping it closes it (drains the writer, syncs, releases the
/// directory lock).
pub struct FjallStore {
    path: String,
    ks: Keyspaces,
    durability: Durability,
    tx: mpsc::Sender<Msg>,
    writer: Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .field("poisoned", &self.shared.poisoned())
            .finish_non_exhaustive()
    }
}

/// Maps an I/O error, telling a full disk apart.
fn io_error(e: &std::io::Error, path: &str) -> StoreError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        StoreError::DiskFull(format!("{path}: {e}; free space on the device"))
    } else {
        StoreError::Io { path: path.to_owned(), message: e.to_string() }
    }
}

/// Maps a fjall error to the store's vocabulary.
fn fjall_error(e: ::fjall::Error, path: &str) -> StoreError {
    use ::fjall::Error as E;
    match e {
        E::Locked => StoreError::Locked { path: path.to_owned() },
        E::Io(io) | E::Storage(::fjall::LsmError::Io(io)) => io_error(&io, path),
        E::Poisoned => StoreError::Poisoned(format!(
            "the storage engine in {path} refused writes after an earlier failure"
        )),
        E::InvalidVersion(v) => StoreError::Corrupt {
            path: path.to_owned(),
            message: format!("unsupported storage engine format version {v:?}"),
        },
        other => {
            StoreError::Corrupt { path: path.to_owned(), message: format!("storage engine error: {other:?}") }
        }
    }
}

fn corrupt(path: &str, keyspace: &str, key: &[u8], e: &RecordError) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        message: format!("record {keyspace}/\"{}\": {e}", key.escape_ascii()),
    }
}

/// `client id, 0x00`: the prefix of a session's `queue` and `qos2` keys.
fn client_prefix(client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(client_id.len() + 9);
    k.extend_from_slice(client_id.as_bytes());
    k.push(0);
    k
}

fn queue_key(client_id: &str, seq: u64) -> Vec<u8> {
    let mut k = client_prefix(client_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn qos2_key(client_id: &str, pkid: u16) -> Vec<u8> {
    let mut k = client_prefix(client_id);
    k.extend_from_slice(&pkid.to_be_bytes());
    k
}

/// Splits a key made of `client id, 0x00, suffix` with a suffix of `N` bytes.
fn split_key<const N: usize>(key: &[u8]) -> Option<(&str, [u8; N])> {
    let at = key.len().checked_sub(N + 1)?;
    let (head, tail) = key.split_at(at);
    let (zero, suffix) = tail.split_first()?;
    if *zero != 0 {
        return None;
    }
    let client = std::str::from_utf8(head).ok()?;
    Some((client, suffix.try_into().ok()?))
}

/// The longest key an op writes, to refuse what fjall cannot store before it reaches the batch.
fn op_key_len(op: &Op) -> usize {
    match op {
        Op::PutRetained(m) => m.topic.len(),
        Op::DeleteRetained(t) => t.len(),
        Op::PutSession(s) => s.client_id.len() + 9,
        Op::DeleteSession(c)
        | Op::Enqueue { client_id: c, .. }
        | Op::Dequeue { client_id: c, .. }
        | Op::SetInflight { client_id: c, .. }
        | Op::PutIncomingQos2 { client_id: c, .. }
        | Op::DeleteIncomingQos2 { client_id: c, .. } => c.len() + 9,
        Op::PutKey { id, .. } => id.len(),
        Op::DeleteKey(id) => id.len(),
        Op::Revision(_) => REVISION_KEY.len(),
        Op::AppendHistory(m) => m.topic.len() + 9,
        Op::DeleteHistory { topic, .. } => topic.len() + 9,
        Op::ClusterSeq(_) => CLUSTER_SEQ_KEY.len(),
    }
}

/// What `op` counts in the writer's [`Backlog`]: its payload and topic bytes, and the rest.
fn op_bytes(op: &Op) -> usize {
    let body = match op {
        Op::PutRetained(m) | Op::AppendHistory(m) => m.topic.len() + m.payload.len(),
        Op::Enqueue { delivery, .. } => delivery.msg.topic.len() + delivery.msg.payload.len(),
        Op::PutSession(s) => s.subscriptions.iter().map(|(f, _)| f.len() + 8).sum(),
        Op::PutKey { record, .. } => record.len(),
        _ => 0,
    };
    body + crate::store::backlog::OP_OVERHEAD
}

fn failed(e: StoreError) -> Commit {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let _ = tx.send(Err(e));
    Commit::pending(rx)
}

impl FjallStore {
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process (or another open store) holds `dir`;
    /// [`StoreError::NewerFormat`] when a newer dataloom wrote it; [`StoreError::Corrupt`] when
    /// it cannot be read; [`StoreError::Io`] / [`StoreError::DiskFull`] on I/O failures.
    pub fn open(dir: &Path, durability: Durability) -> Result<FjallStore, StoreError> {
        let path = dir.display().to_string();
        std::fs::create_dir_all(dir).map_err(|e| io_error(&e, &path))?;
        let db = Database::builder(dir).open().map_err(|e| fjall_error(e, &path))?;
        let open_ks =
            |name: &str| db.keyspace(name, KeyspaceCreateOptions::default).map_err(|e| fjall_error(e, &path));
        let ks = Keyspaces {
            meta: open_ks("meta")?,
            retained: open_ks("retained")?,
            sessions: open_ks("sessions")?,
            queue: open_ks("queue")?,
            qos2: open_ks("qos2")?,
            schemas: open_ks("schemas")?,
            keys: open_ks("keys")?,
            history: open_ks("history")?,
            history_index: open_ks("history_index")?,
            db: db.clone(),
        };
        check_format(&ks, &path)?;

        let shared = Arc::new(Shared::default());
        shared
            .history_written
            .send_replace(history::last_revision(&ks.history).map_err(|e| fjall_error(e, &path))?);
        let (tx, rx) = mpsc::channel();
        let w = writer::Writer::new(ks.clone(), Arc::clone(&shared), rx, durability, path.clone());
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run())
            .map_err(|e| io_error(&e, &path))?;
        Ok(FjallStore { path, ks, durability, tx, writer: Mutex::new(Some(handle)), shared })
    }

    /// Bounds the writer's queue to `bytes` (`storage.max_write_backlog`; 0: no bound).
    pub fn limit_backlog(&self, bytes: usize) {
        self.shared.backlog.set_limit(bytes);
    }

    /// Group commits done so far (one write batch each, at most one fsync each).
    pub fn batches_committed(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    /// The u64 stored under `key` in `meta` ([`Op::Revision`], [`Op::ClusterSeq`]; 0 when none).
    fn stored_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        let Some(v) = self.ks.meta.get(key).map_err(|e| self.read_error(e))? else {
            return Ok(0);
        };
        let bytes: [u8; 8] = (*v)
            .try_into()
            .map_err(|_| corrupt(&self.path, "meta", key, &RecordError::Invalid("u64 length")))?;
        Ok(u64::from_be_bytes(bytes))
    }

    fn read_error(&self, e: ::fjall::Error) -> StoreError {
        fjall_error(e, &self.path)
    }
}

/// Writes the format version into a fresh store, refuses a newer one.
fn check_format(ks: &Keyspaces, path: &str) -> Result<(), StoreError> {
    let found = ks.meta.get(FORMAT_KEY).map_err(|e| fjall_error(e, path))?;
    match found {
        Some(v) => {
            let bytes: [u8; 4] = (*v).try_into().map_err(|_| StoreError::Corrupt {
                path: path.to_owned(),
                message: format!("format version record has {} bytes, expected 4", v.len()),
            })?;
            let found = u32::from_be_bytes(bytes);
            if found > FORMAT_VERSION {
                return Err(StoreError::NewerFormat {
                    path: path.to_owned(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            if found == 0 {
                return Err(StoreError::Corrupt {
                    path: path.to_owned(),
                    message: "format version 0".into(),
                });
            }
            Ok(())
        }
        None => {
            let has_data = [&ks.retained, &ks.sessions, &ks.queue, &ks.qos2]
                .iter()
                .any(|k| k.first_key_value().is_some());
            if has_data {
                return Err(StoreError::Corrupt {
                    path: path.to_owned(),
                    message: "data without a format version".into(),
                });
            }
            ks.meta.insert(FORMAT_KEY, FORMAT_VERSION.to_be_bytes()).map_err(|e| fjall_error(e, path))?;
            ks.db.persist(PersistMode::SyncAll).map_err(|e| fjall_error(e, path))
        }
    }
}

impl Store for FjallStore {
    fn recover(&self) -> Result<Recovered, StoreError> {
        let clock = Clock::now();
        let mut out = Recovered::default();
        let mut cleanup = Vec::new();

        let mut progress = super::progress::Progress::new("retained topics");
        for kv in self.ks.retained.iter() {
            progress.tick();
            let (k, v) = kv.into_inner().map_err(|e| self.read_error(e))?;
            let m = record::decode_message(Bytes::copy_from_slice(&v), &clock)
                .map_err(|e| corrupt(&self.path, "retained", &k, &e))?;
            if m.topic.as_bytes() != &*k {
                return Err(corrupt(
                    &self.path,
                    "retained",
                    &k,
                    &RecordError::Invalid("topic (differs from key)"),
                ));
            }
            out.revision = out.revision.max(m.stamp.revision);
            if m.is_expired(clock.instant) {
                cleanup.push(Op::DeleteRetained(m.topic));
            } else {
                out.retained.push(Arc::new(m));
            }
        }

        let mut index = std::collections::HashMap::new();
        for kv in self.ks.sessions.iter() {
            let (k, v) = kv.into_inner().map_err(|e| self.read_error(e))?;
            let client_id: Arc<str> = std::str::from_utf8(&k)
                .map_err(|_| corrupt(&self.path, "sessions", &k, &RecordError::Utf8("client id")))?
                .into();
            let record = record::decode_session(Arc::clone(&client_id), Bytes::copy_from_slice(&v))
                .map_err(|e| corrupt(&self.path, "sessions", &k, &e))?;
            index.insert(client_id, out.sessions.len());
            out.sessions.push(RecoveredSession { record, queue: Vec::new(), incoming_qos2: Vec::new() });
        }

        let mut progress = super::progress::Progress::new("queued messages");
        for kv in self.ks.queue.iter() {
            progress.tick();
            let (k, v) = kv.into_inner().map_err(|e| self.read_error(e))?;
            let (client, seq) = split_key::<8>(&k)
                .ok_or_else(|| corrupt(&self.path, "queue", &k, &RecordError::Invalid("key")))?;
            let seq = u64::from_be_bytes(seq);
            let Some(&i) = index.get(client) else {
                // A queue without its session is unreachable: drop it.
                cleanup.push(Op::Dequeue { client_id: client.into(), seq });
                continue;
            };
            let (mut delivery, inflight) = record::decode_queued(Bytes::copy_from_slice(&v), &clock)
                .map_err(|e| corrupt(&self.path, "queue", &k, &e))?;
            if delivery.msg.is_expired(clock.instant) {
                cleanup.push(Op::Dequeue { client_id: client.into(), seq });
                continue;
            }
            delivery.seq = Some(seq);
            if let Some(s) = out.sessions.get_mut(i) {
                s.queue.push(RecoveredMessage { seq, delivery, inflight });
            }
        }

        for kv in self.ks.qos2.iter() {
            let k = kv.key().map_err(|e| self.read_error(e))?;
            let (client, pkid) = split_key::<2>(&k)
                .ok_or_else(|| corrupt(&self.path, "qos2", &k, &RecordError::Invalid("key")))?;
            let pkid = u16::from_be_bytes(pkid);
            match index.get(client).and_then(|&i| out.sessions.get_mut(i)) {
                Some(s) => s.incoming_qos2.push(pkid),
                None => cleanup.push(Op::DeleteIncomingQos2 { client_id: client.into(), pkid }),
            }
        }

        for s in &mut out.sessions {
            // Keys sort by client id first, so a client id that extends another with a NUL
            // could interleave; seq order within one client is what matters.
            if !s.queue.is_sorted_by_key(|m| m.seq) {
                s.queue.sort_by_key(|m| m.seq);
            }
        }

        out.revision = out.revision.max(self.stored_u64(REVISION_KEY)?);
        let last_history = history::last_revision(&self.ks.history).map_err(|e| self.read_error(e))?;
        out.revision = out.revision.max(last_history);
        out.cluster_seq = self.stored_u64(CLUSTER_SEQ_KEY)?;
        if !cleanup.is_empty() {
            drop(self.submit(cleanup, false));
        }
        Ok(out)
    }

    fn submit(&self, ops: Vec<Op>, durable: bool) -> Commit {
        // Buffered durability waits too, for the write to the OS (not for the fsync).
        let wait = durable;
        if let Some(e) = self.shared.poisoned() {
            return if wait { failed(e) } else { Commit::done() };
        }
        if let Some(op) = ops.iter().find(|op| op_key_len(op) > MAX_KEY_LEN) {
            let e = StoreError::Io {
                path: self.path.clone(),
                message: format!(
                    "key of {op:?} is longer than {MAX_KEY_LEN} bytes; nothing of this submission was written"
                ),
            };
            return if wait { failed(e) } else { Commit::done() };
        }
        if ops.is_empty() {
            return Commit::done();
        }
        let (done, commit) = if wait {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Commit::pending(rx))
        } else {
            (None, Commit::done())
        };
        // When the writer is gone, `done` is dropped with the message and `commit` resolves
        // to an error.
        let bytes = ops.iter().map(op_bytes).sum();
        self.shared.backlog.add(bytes);
        if self.tx.send(Msg::Submit { ops, done, bytes }).is_err() {
            self.shared.backlog.done(bytes);
        }
        commit
    }

    fn poisoned(&self) -> Option<StoreError> {
        self.shared.poisoned()
    }

    fn backlog(&self) -> Option<&crate::store::Backlog> {
        Some(&self.shared.backlog)
    }

    fn close(&self) -> Result<(), StoreError> {
        let Some(handle) = self.writer.lock().take() else {
            return self.shared.poisoned().map_or(Ok(()), Err);
        };
        let _ = self.tx.send(Msg::Close);
        match handle.join() {
            Ok(r) => r,
            Err(_) => {
                Err(self.shared.set_poison(StoreError::Poisoned("store writer thread panicked".into())))
            }
        }
    }

    fn disk_bytes(&self) -> u64 {
        self.ks.db.disk_space().unwrap_or(0)
    }

    fn memory_bytes(&self) -> usize {
        // `write_buffer_size` (active and sealed memtables) is an atomic read; fjall marks it
        // experimental, see docs/decisions.md.
        let engine = self.ks.db.write_buffer_size().saturating_add(self.ks.db.cache_capacity());
        usize::try_from(engine).unwrap_or(usize::MAX).saturating_add(self.shared.backlog.queued())
    }

    fn history_scan(
        &self,
        from: u64,
        until: u64,
        limit: usize,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<super::HistoryChunk, StoreError> {
        self.scan_history(from, until, limit, want)
    }

    fn history_of(
        &self,
        topic: &str,
        from: u64,
        until: u64,
        limit: usize,
    ) -> Result<super::HistoryChunk, StoreError> {
        self.topic_history(topic, from, until, limit)
    }

    fn history_start_at(&self, unix_ms: u64) -> Result<u64, StoreError> {
        self.history_time_search(unix_ms)
    }

    fn history_last(
        &self,
        n: usize,
        topic: Option<&str>,
        want: &dyn Fn(&str) -> bool,
    ) -> Result<u64, StoreError> {
        self.last_history(n, topic, want)
    }

    fn history_prunable(
        &self,
        topic: Option<&str>,
        retention: &dyn Fn(&str) -> Option<super::Retention>,
        max: usize,
    ) -> Result<Vec<super::Pruned>, StoreError> {
        self.prunable_history(topic, retention, max)
    }

    fn history_watch(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.shared.history_written.subscribe())
    }

    fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let mut out = Vec::new();
        for kv in self.ks.keys.iter() {
            let (k, v) = kv.into_inner().map_err(|e| self.read_error(e))?;
            out.push(StoredKey { id: k.to_vec(), record: v.to_vec() });
        }
        Ok(out)
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

#[cfg(test)]
mod tests;
