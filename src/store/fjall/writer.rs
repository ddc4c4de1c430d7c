//! The group-commit thread: the only writer of the fjall database after open.
//!
//! It blocks for one submission, then takes everything else already queued (up to
//! [`MAX_GROUP`] submissions), folds all their ops in order into one change set (last write per
//! key wins, so a batch never holds two writes of one key), commits that as one atomic fjall
//! write batch and, if any submission waits for durability under `fsync`, calls `fdatasync`
//! once. Then it answers every waiter. Unsynced commits (buffered mode, non-durable
//! submissions) are synced at most [`SYNC_INTERVAL`] after the first of them, also when idle.
//! A failed commit or sync poisons the store: fjall refuses further writes after a journal
//! failure (including a full disk), so every waiter from then on gets the same error.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use ::fjall::{Keyspace, OwnedWriteBatch as WriteBatch, PersistMode, UserKey, UserValue};

use super::{Keyspaces, Msg, Shared, client_prefix, fjall_error, qos2_key, queue_key};
use crate::config::Durability;
use crate::store::record::{self, Clock};
use crate::store::{Op, StoreError};

/// Most submissions folded into one group commit.
pub const MAX_GROUP: usize = 4096;

/// Longest time an unsynced commit stays unsynced (the buffered-mode loss window on power
/// loss or a kernel crash, plus the time of the sync itself).
pub const SYNC_INTERVAL: Duration = Duration::from_millis(100);

type Waiter = tokio::sync::oneshot::Sender<Result<(), StoreError>>;

/// Pending changes of one keyspace in arrival order, one entry per key (a later write of a key
/// replaces the earlier one in place): key → new value, or `None` to delete. The writer keeps
/// one set and clears it after each group, so its allocations are reused; keys of up to 20
/// bytes (most topics) are stored inline by fjall's `Slice`.
#[derive(Default)]
struct Changes {
    items: Vec<(UserKey, Option<UserValue>)>,
    index: HashMap<UserKey, usize, foldhash::fast::RandomState>,
}

impl Changes {
    fn set(&mut self, key: &[u8], value: Option<UserValue>) {
        if let Some(&i) = self.index.get(key) {
            self.items[i].1 = value;
            return;
        }
        let key = UserKey::new(key);
        self.index.insert(key.clone(), self.items.len());
        self.items.push((key, value));
    }

    fn get(&self, key: &[u8]) -> Option<&Option<UserValue>> {
        self.index.get(key).map(|&i| &self.items[i].1)
    }

    fn clear(&mut self) {
        self.items.clear();
        self.index.clear();
    }

    /// Moves every change into `wb` against `ks`, leaving the set empty.
    fn drain_into(&mut self, wb: &mut WriteBatch, ks: &Keyspace) {
        for (k, v) in self.items.drain(..) {
            match v {
                Some(v) => wb.insert(ks, k, v),
                None => wb.remove(ks, k),
            }
        }
        self.index.clear();
    }
}

/// The change set of one group commit.
#[derive(Default)]
struct Batch {
    retained: Changes,
    sessions: Changes,
    queue: Changes,
    qos2: Changes,
    keys: Changes,
    meta: Changes,
    history: Changes,
    history_index: Changes,
    /// The highest history revision appended in this batch (0: none).
    history_max: u64,
    /// Scratch buffer records are encoded into before they are copied into a `UserValue`.
    scratch: Vec<u8>,
}

impl Batch {
    fn parts(&mut self) -> [&mut Changes; 8] {
        [
            &mut self.retained,
            &mut self.sessions,
            &mut self.queue,
            &mut self.qos2,
            &mut self.keys,
            &mut self.meta,
            &mut self.history,
            &mut self.history_index,
        ]
    }

    fn len(&self) -> usize {
        [
            &self.retained,
            &self.sessions,
            &self.queue,
            &self.qos2,
            &self.keys,
            &self.meta,
            &self.history,
            &self.history_index,
        ]
        .iter()
        .map(|c| c.items.len())
        .sum()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn clear(&mut self) {
        self.parts().into_iter().for_each(Changes::clear);
        self.history_max = 0;
    }
}

/// Deletes every key of `ks` (committed or pending) that is `prefix` plus `suffix_len` bytes.
fn delete_range(
    ks: &Keyspace,
    pending: &mut Changes,
    prefix: &[u8],
    suffix_len: usize,
) -> Result<(), ::fjall::Error> {
    let len = prefix.len() + suffix_len;
    // The exact length keeps client "a" from matching the keys of client "a\0b…".
    let matches = |k: &[u8]| k.len() == len && k.starts_with(prefix);
    for kv in ks.prefix(prefix) {
        let k = kv.key()?;
        if matches(&k) {
            pending.set(&k, None);
        }
    }
    for (_, v) in pending.items.iter_mut().filter(|(k, _)| matches(k)) {
        *v = None;
    }
    Ok(())
}

/// The writer thread's state.
pub struct Writer {
    ks: Keyspaces,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    /// Durable submissions wait for `fdatasync`.
    fsync: bool,
    path: String,
    /// When the oldest commit not yet synced was made.
    dirty_since: Option<Instant>,
}

/// Poisons the store if the writer thread unwinds, so nobody acknowledges after that.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.set_poison(StoreError::Poisoned("store writer thread panicked".into()));
        }
    }
}

impl Writer {
    pub(super) fn new(
        ks: Keyspaces,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Msg>,
        durability: Durability,
        path: String,
    ) -> Writer {
        Writer { ks, shared, rx, fsync: durability == Durability::Fsync, path, dirty_since: None }
    }

    /// Runs until [`Msg::Close`] or until every sender is gone; ends with a final sync.
    pub(super) fn run(mut self) -> Result<(), StoreError> {
        let _guard = PanicGuard(Arc::clone(&self.shared));
        let mut group: Vec<(Vec<Op>, Option<Waiter>)> = Vec::new();
        // The change set, reused from group to group.
        let mut batch = Batch::default();
        // Backlog bytes of the group being collected.
        let mut group_bytes = 0;
        loop {
            let first = match self.dirty_since {
                Some(t) => {
                    match self.rx.recv_timeout((t + SYNC_INTERVAL).saturating_duration_since(Instant::now()))
                    {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => {
                            self.sync();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            let mut closing = false;
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    Msg::Submit { ops, done, bytes } => {
                        group_bytes += bytes;
                        group.push((ops, done));
                    }
                    Msg::Close => {
                        closing = true;
                        break;
                    }
                }
                next = if group.len() < MAX_GROUP { self.rx.try_recv().ok() } else { None };
            }
            if !group.is_empty() {
                batch.clear();
                self.commit_group(&mut group, &mut batch);
            }
            self.shared.backlog.done(std::mem::take(&mut group_bytes));
            if closing {
                break;
            }
            if self.dirty_since.is_some_and(|t| t.elapsed() >= SYNC_INTERVAL) {
                self.sync();
            }
        }
        self.final_sync()
    }

    /// Applies (into `batch`, empty on entry), commits and (if needed) syncs one group, then
    /// answers its waiters.
    fn commit_group(&mut self, group: &mut Vec<(Vec<Op>, Option<Waiter>)>, batch: &mut Batch) {
        if let Some(e) = self.shared.poisoned() {
            answer_all(group, &e);
            return;
        }
        let clock = Clock::now();
        let mut outcomes: Vec<Option<StoreError>> = Vec::with_capacity(group.len());
        let mut wants_sync = false;
        let mut fatal = None;
        'group: for (ops, done) in group.iter_mut() {
            wants_sync |= done.is_some();
            let mut outcome = None;
            for op in ops.drain(..) {
                match self.apply(batch, op, &clock) {
                    Ok(()) => {}
                    Err(Failure::Submission(e)) => outcome = Some(e),
                    Err(Failure::Fatal(e)) => {
                        fatal = Some(e);
                        break 'group;
                    }
                }
            }
            outcomes.push(outcome);
        }
        if let Some(e) = fatal {
            let e = self.poison(e);
            answer_all(group, &e);
            return;
        }

        if !batch.is_empty() {
            let m = crate::metrics::get();
            m.store_batch_size.observe(group.len() as f64);
            let started = Instant::now();
            let written = self.write(batch);
            m.store_write_latency.observe(started.elapsed().as_secs_f64());
            if let Err(e) = written {
                let e = self.poison(e);
                answer_all(group, &e);
                return;
            }
            self.dirty_since.get_or_insert_with(Instant::now);
        }
        self.shared.batches.fetch_add(1, Ordering::Relaxed);

        if wants_sync && self.fsync && self.dirty_since.is_some() && !self.sync() {
            let e = self.shared.poisoned().unwrap_or_else(|| StoreError::Poisoned("sync failed".into()));
            answer_all(group, &e);
            return;
        }
        for ((_, done), outcome) in group.drain(..).zip(outcomes) {
            if let Some(tx) = done {
                let _ = tx.send(outcome.map_or(Ok(()), Err));
            }
        }
    }

    /// Folds one op into the change set.
    fn apply(&self, b: &mut Batch, op: Op, clock: &Clock) -> Result<(), Failure> {
        match op {
            Op::PutRetained(m) => {
                record::encode_message_into(&m, clock, &mut b.scratch);
                b.retained.set(m.topic.as_bytes(), Some(UserValue::new(&b.scratch)));
            }
            Op::DeleteRetained(topic) => b.retained.set(topic.as_bytes(), None),
            Op::PutSession(s) => {
                b.sessions.set(s.client_id.as_bytes(), Some(record::encode_session(&s).into()));
            }
            Op::DeleteSession(client_id) => {
                b.sessions.set(client_id.as_bytes(), None);
                let prefix = client_prefix(&client_id);
                let fatal = |e| Failure::Fatal(fjall_error(e, &self.path));
                delete_range(&self.ks.queue, &mut b.queue, &prefix, 8).map_err(fatal)?;
                delete_range(&self.ks.qos2, &mut b.qos2, &prefix, 2).map_err(fatal)?;
            }
            Op::Enqueue { client_id, seq, delivery } => {
                record::encode_queued_into(&delivery, None, clock, &mut b.scratch);
                b.queue.set(&queue_key(&client_id, seq), Some(UserValue::new(&b.scratch)));
            }
            Op::Dequeue { client_id, seq } => b.queue.set(&queue_key(&client_id, seq), None),
            Op::SetInflight { client_id, seq, pkid, released } => {
                self.set_inflight(b, &queue_key(&client_id, seq), (pkid, released))?;
            }
            Op::PutIncomingQos2 { client_id, pkid } => {
                b.qos2.set(&qos2_key(&client_id, pkid), Some(UserValue::empty()));
            }
            Op::DeleteIncomingQos2 { client_id, pkid } => b.qos2.set(&qos2_key(&client_id, pkid), None),
            Op::PutKey { id, record } => b.keys.set(id.as_bytes(), Some(record.into())),
            Op::DeleteKey(id) => b.keys.set(id.as_bytes(), None),
            Op::Revision(n) => {
                // Never lowered: a late submission may carry an older revision.
                let stored = match b.meta.get(super::REVISION_KEY) {
                    Some(pending) => pending.clone(),
                    None => self
                        .ks
                        .meta
                        .get(super::REVISION_KEY)
                        .map_err(|e| Failure::Fatal(fjall_error(e, &self.path)))?,
                };
                let stored = stored.and_then(|v| <[u8; 8]>::try_from(&*v).ok()).map_or(0, u64::from_be_bytes);
                let n = n.max(stored);
                b.meta.set(super::REVISION_KEY, Some(UserValue::new(&n.to_be_bytes())));
            }
            Op::AppendHistory(m) => {
                record::encode_message_into(&m, clock, &mut b.scratch);
                let rev = m.stamp.revision;
                b.history.set(&rev.to_be_bytes(), Some(UserValue::new(&b.scratch)));
                let time = UserValue::new(&m.stamp.unix_ms.to_be_bytes());
                b.history_index.set(&super::history::index_key(&m.topic, rev), Some(time));
                b.history_max = b.history_max.max(rev);
            }
            Op::DeleteHistory { topic, revision } => {
                b.history.set(&revision.to_be_bytes(), None);
                b.history_index.set(&super::history::index_key(&topic, revision), None);
            }
            Op::ClusterSeq(n) => b.meta.set(super::CLUSTER_SEQ_KEY, Some(UserValue::new(&n.to_be_bytes()))),
        }
        Ok(())
    }

    /// Rewrites the in-flight state of the queued record at `key` (pending or committed).
    fn set_inflight(&self, b: &mut Batch, key: &[u8], inflight: (u16, bool)) -> Result<(), Failure> {
        let current = match b.queue.get(key) {
            Some(pending) => pending.clone(),
            None => self.ks.queue.get(key).map_err(|e| Failure::Fatal(fjall_error(e, &self.path)))?,
        };
        // A message already dequeued (or never queued) has no in-flight state to keep.
        if let Some(current) = current {
            let updated = record::set_queued_inflight(&current, Some(inflight))
                .map_err(|e| Failure::Submission(super::corrupt(&self.path, "queue", key, &e)))?;
            b.queue.set(key, Some(updated.into()));
        }
        Ok(())
    }

    /// Commits the change set as one atomic batch (flushed to the OS, not yet synced) and
    /// leaves it empty.
    fn write(&self, b: &mut Batch) -> Result<(), StoreError> {
        // As `Database::batch` makes it (written to the OS at commit), with room for every item.
        let mut wb =
            WriteBatch::with_capacity(self.ks.db.clone(), b.len()).durability(Some(PersistMode::Buffer));
        let ks = &self.ks;
        let history_max = b.history_max;
        let keyspaces = [
            &ks.retained,
            &ks.sessions,
            &ks.queue,
            &ks.qos2,
            &ks.keys,
            &ks.meta,
            &ks.history,
            &ks.history_index,
        ];
        for (changes, keyspace) in b.parts().into_iter().zip(keyspaces) {
            changes.drain_into(&mut wb, keyspace);
        }
        wb.commit().map_err(|e| fjall_error(e, &self.path))?;
        if history_max > 0 {
            self.shared.history_written.send_if_modified(|v| {
                let raise = history_max > *v;
                *v = (*v).max(history_max);
                raise
            });
        }
        Ok(())
    }

    /// Syncs the journal (`fdatasync`); false (and poisoned) when that failed.
    fn sync(&mut self) -> bool {
        // Either way there is nothing left to retry: after a failure the store is poisoned.
        self.dirty_since = None;
        if self.shared.poisoned().is_some() {
            return false;
        }
        let started = Instant::now();
        match self.ks.db.persist(PersistMode::SyncData) {
            Ok(()) => {
                crate::metrics::get().store_fsync_latency.observe(started.elapsed().as_secs_f64());
                true
            }
            Err(e) => {
                self.poison(fjall_error(e, &self.path));
                false
            }
        }
    }

    fn final_sync(mut self) -> Result<(), StoreError> {
        if let Some(e) = self.shared.poisoned() {
            return Err(e);
        }
        // Nothing of this process may be left unsynced, whatever `dirty_since` says.
        self.dirty_since = Some(Instant::now());
        if self.sync() {
            Ok(())
        } else {
            Err(self.shared.poisoned().unwrap_or_else(|| StoreError::Poisoned("final sync failed".into())))
        }
    }

    /// Poisons the store with `e`: fjall stops accepting writes after a failed journal write or
    /// sync (a full disk included), so the broker must stop acknowledging.
    fn poison(&self, e: StoreError) -> StoreError {
        let e = match e {
            StoreError::Poisoned(_) => e,
            StoreError::DiskFull(m) => StoreError::Poisoned(format!("no space left on device: {m}")),
            other => StoreError::Poisoned(other.to_string()),
        };
        self.shared.set_poison(e)
    }
}

/// Why an op could not be applied.
enum Failure {
    /// Only this submission fails (e.g. its in-flight update hits an undecodable record).
    Submission(StoreError),
    /// Reading the database failed: nothing can be trusted any more.
    Fatal(StoreError),
}

fn answer_all(group: &mut Vec<(Vec<Op>, Option<Waiter>)>, e: &StoreError) {
    for (_, done) in group.drain(..) {
        if let Some(tx) = done {
            let _ = tx.send(Err(e.clone()));
        }
    }
}
