//! The shared broker: sessions by client id, subscriptions, session expiry and delayed wills.
//! Attaching, detaching and ending sessions live in `lifecycle`, their timers in `timers`,
//! routing and retained state in `route`, which member of a shared subscription gets a message
//! in `share`, reading state in topic order (the HTTP state API) in `state`, the QoS 1/2 flows of a session in `flows`, the schema gate in `gate`, restoring
//! from the store in `recovery`, subscribers without a connection (the web console) in `watch`,
//! the session listing in `clients`, this node's part of a cluster in `cluster`.
//!
//! Every durable effect (persistent session records, subscriptions) is submitted to the
//! [`Store`] and the returned [`Commit`] tells the caller when it may acknowledge.

pub(crate) mod mailbox;

mod clients;
mod cluster;
mod expiry;
mod flows;
pub(crate) mod gate;
mod history;
mod lifecycle;
mod prune;
mod recovery;
pub(crate) mod replay;
pub(crate) mod retained_tree;
mod route;
pub(crate) mod session;
mod share;
mod state;
pub(crate) mod subtree;
mod timers;
mod watch;
mod window;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::model::{Budget, Delivery, KillReason, Message, Pressure, SessionId, SubOptions};
use crate::store::{Commit, Op, SessionRecord, Store, StoreError};
use dataloom_codec::RetainHandling;
use retained_tree::RetainedTree;
use session::Session;
use subtree::SubscriptionTree;

pub use clients::ClientInfo;
pub use flows::{PubRecAnswer, Qos2Arrival};
pub use lifecycle::{AttachError, AttachRequest};
pub use replay::{Replay, ReplayFrom};
pub use route::Published;
pub use state::StatePage;
pub use watch::Watch;

/// A subscription as the trie stores it: the session to deliver to and the options.
#[derive(Debug, Clone)]
pub struct SubEntry {
    /// The subscribing session.
    pub session: Arc<Session>,
    /// The options it was granted.
    pub opts: SubOptions,
    /// For a shared subscription, the filter as written (`$share/{group}/{filter}`); its
    /// deliveries carry it ([`crate::model::Delivery::share`]).
    pub share: Option<Arc<str>>,
    /// While the subscription replays history: holds back live messages that keep history.
    pub replay: Option<Arc<replay::ReplayGate>>,
}

/// Messages this broker dropped (only on the drop path, never per routed message); the
/// metrics show them through [`Broker::metrics_snapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages dropped because their session was offline.
    pub dropped_offline_qos0: AtomicU64,
}

/// One subscription of a SUBSCRIBE, validated: the filter as written, its share group and
/// plain filter as parsed, the options granted.
#[derive(Debug, Clone, Copy)]
pub struct NewSubscription<'a> {
    /// The filter as the client wrote it (including `$share/g/`).
    pub filter: &'a str,
    /// The share group of a `$share/` filter.
    pub group: Option<&'a str>,
    /// The filter without the share prefix.
    pub plain: &'a str,
    /// The options granted.
    pub opts: SubOptions,
    /// History to replay first (MQTT 5 User Property `replay`); ignored for a `$share/`
    /// filter and without `[[history]]`.
    pub replay: Option<ReplayFrom>,
}

/// What [`Broker::subscribe`] did.
#[derive(Debug)]
pub struct Subscribed {
    /// Resolves when the session record is durable; SUBACK waits for it.
    pub commit: Commit,
    /// Per subscription, in order: the retained messages queued for it (the v5 SUBACK's
    /// User Property `retained`).
    pub retained: Vec<usize>,
    /// Replays to start ([`Broker::start_replays`]) once the SUBACK is queued.
    pub replays: Vec<Replay>,
}

/// Limits the broker applies to sessions.
#[derive(Debug, Clone)]
pub struct BrokerLimits {
    /// Messages queued per session (`mqtt.max_queued_messages`).
    pub max_queued_messages: usize,
    /// Payload and topic bytes queued per session (0: no limit).
    pub max_queued_bytes: usize,
    /// Longest session expiry, seconds (`mqtt.persistent_session_expiry`; `None`: no cap).
    pub persistent_session_expiry: Option<u32>,
    /// The memory budget in bytes (`limits.max_memory`; 0: no limit, usage still counted).
    pub max_memory: usize,
}

/// Result of connecting a client to its session.
#[derive(Debug)]
pub struct Attached {
    /// The session, new or resumed.
    pub session: Arc<Session>,
    /// True when an existing session was resumed (CONNACK session present).
    pub present: bool,
    /// Ownership generation; pass it back to [`Broker::detach`].
    pub generation: u64,
    /// Resolves when the session record is durable; CONNACK waits for it.
    pub commit: Commit,
    /// The session expiry interval granted (capped by `mqtt.persistent_session_expiry`).
    pub expiry: u32,
    /// Stored deliveries numbered below this were queued before this connection attached:
    /// those it may not read are withheld for the session, not dropped (see `withhold`).
    pub queued_before: u64,
}

/// Stripes of [`Broker::retained_order`].
const RETAINED_STRIPES: usize = 64;

/// The broker's shared state.
#[derive(Debug)]
pub struct Broker {
    limits: BrokerLimits,
    /// Drop counters, read by the metrics.
    pub stats: Stats,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    subs: RwLock<SubscriptionTree<SessionId, SubEntry>>,
    retained: RwLock<RetainedTree<Arc<Message>>>,
    /// Retained messages that expire, earliest first (see `expiry`).
    expiring: Mutex<expiry::ExpiryHeap>,
    /// Striped by topic: held from a retained update through its store submission, so two
    /// publishers racing on one topic reach memory and disk in the same order.
    retained_order: [Mutex<()>; RETAINED_STRIPES],
    next_session: AtomicU64,
    /// Registered sessions with expiry > 0 (kept at each change, so a scrape walks nothing).
    persistent: std::sync::atomic::AtomicUsize,
    /// Next position in the durable per-session queues (shared counter, strictly increasing).
    next_seq: AtomicU64,
    /// Expiry and delayed-will timers of offline sessions, run by one task.
    timers: Arc<timers::Timers>,
    store: Arc<dyn Store>,
    /// Set while the data directory's file system is below `storage.min_free_bytes`.
    disk_full: std::sync::atomic::AtomicBool,
    /// The memory account every message, queue and connection buffer is charged to.
    memory: Arc<Budget>,
    /// The last state revision taken (see `route::set_retained`); restored from the store.
    revision: AtomicU64,
    /// Topics that keep history (`[[history]]`); unset: none, and no cost when publishing.
    history: std::sync::OnceLock<history::History>,
    /// The cluster this node joined (`Broker::join_cluster`); unset for a single node.
    cluster: std::sync::OnceLock<cluster::Link>,
    /// The position of the cluster's state log applied last; restored from the store.
    cluster_applied: tokio::sync::watch::Sender<u64>,
}

impl Broker {
    /// A broker over `store`, restored from what the store holds. Must run inside a tokio
    /// runtime (expiry timers of restored sessions are spawned).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub fn new(limits: BrokerLimits, store: Arc<dyn Store>) -> Result<Arc<Broker>, StoreError> {
        let recovered = store.recover()?;
        let max_memory = limits.max_memory;
        let broker = Arc::new(Broker {
            limits,
            stats: Stats::default(),
            sessions: Mutex::new(HashMap::new()),
            subs: RwLock::new(SubscriptionTree::new()),
            retained: RwLock::new(RetainedTree::new()),
            expiring: Mutex::new(expiry::ExpiryHeap::default()),
            retained_order: std::array::from_fn(|_| Mutex::new(())),
            next_session: AtomicU64::new(1),
            persistent: std::sync::atomic::AtomicUsize::new(0),
            next_seq: AtomicU64::new(1),
            timers: Arc::default(),
            store,
            disk_full: std::sync::atomic::AtomicBool::new(false),
            memory: Budget::new(max_memory),
            revision: AtomicU64::new(recovered.revision),
            history: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            cluster_applied: tokio::sync::watch::Sender::new(recovered.cluster_seq),
        });
        broker.restore(recovered);
        tokio::spawn(timers::run(Arc::downgrade(&broker), broker.timers.clone()));
        Ok(broker)
    }

    /// Marks the store's disk as (not) full: while full, messages that would write to the
    /// store are refused with [`StoreError::DiskFull`]; everything else goes on.
    pub fn set_disk_full(&self, full: bool) {
        self.disk_full.store(full, Ordering::Relaxed);
    }

    /// Takes a free-space reading of the data directory `dir`: below `min_free` bytes the disk
    /// counts as full ([`Broker::set_disk_full`]). Logs each change once.
    pub fn report_free_space(&self, dir: &std::path::Path, free: u64, min_free: u64) {
        let full = free < min_free;
        if full == self.disk_full() {
            return;
        }
        if full {
            tracing::warn!(dir = %dir.display(), free, min_free = min_free,
                "data directory almost full: refusing messages that would be stored (0x97) until space is freed");
        } else {
            tracing::info!(dir = %dir.display(), free, "data directory has space again: accepting messages");
        }
        self.set_disk_full(full);
    }

    /// True while the store's disk is below its free-space minimum.
    pub fn disk_full(&self) -> bool {
        self.disk_full.load(Ordering::Relaxed)
    }

    /// The state the `/metrics` gauges show.
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        crate::metrics::Snapshot {
            sessions: self.session_count(),
            persistent_sessions: self.persistent_session_count(),
            subscriptions: self.subscription_count(),
            retained_messages: self.retained_count(),
            store_disk_bytes: self.store.disk_bytes(),
            store_backlog_bytes: self.store.backlog().map_or(0, crate::store::Backlog::queued),
            dropped_queue_full: self.stats.dropped_queue_full.load(Ordering::Relaxed),
            dropped_offline_qos0: self.stats.dropped_offline_qos0.load(Ordering::Relaxed),
            session_timers: self.timers.len(),
            runtime_tasks: tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks()),
            memory_budget: self.memory.limit(),
            memory_used: self.memory.used() + self.store.memory_bytes(),
            cluster_applied: self.cluster_applied(),
            cluster_dropped: self.cluster.get().map_or(0, cluster::Link::dropped),
        }
    }

    /// The memory account: messages, queued deliveries and connection buffers are charged to
    /// it (see `model::Budget`).
    pub fn memory(&self) -> &Arc<Budget> {
        &self.memory
    }

    /// How close memory use (the account plus the store's buffers) is to `limits.max_memory`.
    pub fn pressure(&self) -> Pressure {
        self.memory.pressure(self.store.memory_bytes())
    }

    /// The lock that orders retained updates of `topic` with their store submissions.
    fn retained_order(&self, topic: &str) -> &Mutex<()> {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::with_seed(0).hash_one(topic);
        &self.retained_order[(h as usize) % RETAINED_STRIPES]
    }

    /// The store behind the broker.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn new_session(&self, client_id: Arc<str>) -> Arc<Session> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        Arc::new(Session::new(
            id,
            client_id,
            self.limits.max_queued_messages,
            self.limits.max_queued_bytes,
            self.memory.clone(),
        ))
    }

    fn drop_subscriptions(&self, session: &Session) {
        let filters: Vec<String> = session.state.lock().subscriptions.drain().map(|(f, _)| f).collect();
        let mut subs = self.subs.write();
        for f in filters {
            remove_sub(&mut subs, &f, session.id);
        }
    }

    /// Number of sessions (connected or not).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Number of persistent sessions (expiry > 0), for metrics; a counter, no walk.
    pub fn persistent_session_count(&self) -> usize {
        self.persistent.load(Ordering::Relaxed)
    }

    /// Sets a registered session's expiry and counts the change of persistence; returns
    /// whether it was persistent before.
    pub(super) fn set_session_expiry(&self, session: &Session, expiry: u32) -> bool {
        let was = session.set_expiry(expiry);
        self.note_persistence(was, expiry > 0);
        was
    }

    fn note_persistence(&self, was: bool, now: bool) {
        match (was, now) {
            (false, true) => self.persistent.fetch_add(1, Ordering::Relaxed),
            (true, false) => self.persistent.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// Number of subscriptions (shared memberships included), for metrics and `$SYS`.
    pub fn subscription_count(&self) -> usize {
        self.subs.read().len()
    }

    /// Adds or replaces the subscriptions of one SUBSCRIBE (`filter` as written, `group` and
    /// `plain` as parsed and validated) under one lock of the trie, queues the retained
    /// messages they ask for (those the session may read, not expired, and that `admit`
    /// accepts), and stores the session record once: the cost is linear in the filters.
    /// Returns the commit of the updated session record and how many retained messages were
    /// queued for each subscription, in order.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        subs: &[NewSubscription<'_>],
        admit: &mut dyn FnMut(&Delivery) -> bool,
    ) -> Subscribed {
        let mut existed = Vec::with_capacity(subs.len());
        let mut replays = Vec::new();
        {
            let mut trie = self.subs.write();
            for s in subs {
                let share = s.group.map(|_| Arc::from(s.filter));
                let replay = match s.replay {
                    Some(from) if s.group.is_none() && self.history.get().is_some() => {
                        replays.push(Replay::new(session, s.plain, s.opts, from));
                        replays.last().map(Replay::gate)
                    }
                    _ => None,
                };
                let entry = SubEntry { session: session.clone(), opts: s.opts, share, replay };
                existed.push(match s.group {
                    Some(g) => trie.insert_shared(g, s.plain, session.id, entry).is_some(),
                    None => trie.insert(s.plain, session.id, entry).is_some(),
                });
            }
        }
        {
            let mut st = session.state.lock();
            for s in subs {
                st.subscriptions.insert(s.filter.to_string(), s.opts);
            }
        }
        let mut retained = Vec::with_capacity(subs.len());
        for (s, existed) in subs.iter().zip(existed) {
            let send_retained = s.group.is_none()
                && match s.opts.retain_handling {
                    RetainHandling::OnSubscribe => true,
                    RetainHandling::OnNewSubscribe => !existed,
                    RetainHandling::Never => false,
                };
            let found = if send_retained {
                self.retained_matching(session, s.plain, s.opts, admit)
            } else {
                Vec::new()
            };
            retained.push(found.len());
            if !found.is_empty() {
                session.mailbox.push_all_unbounded(found);
            }
        }
        let commit = if subs.is_empty() { Commit::done() } else { self.persist_session(session) };
        Subscribed { commit, retained, replays }
    }

    /// Removes the subscriptions of one UNSUBSCRIBE; returns, per filter, whether it existed,
    /// and the commit of the session record (stored once).
    pub fn unsubscribe(&self, session: &Session, filters: &[String]) -> (Vec<bool>, Commit) {
        let existed: Vec<bool> = {
            let mut st = session.state.lock();
            filters.iter().map(|f| st.subscriptions.remove(f).is_some()).collect()
        };
        if !existed.contains(&true) {
            return (existed, Commit::done());
        }
        {
            let mut trie = self.subs.write();
            for (f, _) in filters.iter().zip(&existed).filter(|(_, e)| **e) {
                remove_sub(&mut trie, f, session.id);
            }
        }
        (existed, self.persist_session(session))
    }

    /// How many subscriptions `session` holds, and whether `filter` is one of them.
    pub fn subscription_status(&self, session: &Session, filter: &str) -> (usize, bool) {
        let st = session.state.lock();
        (st.subscriptions.len(), st.subscriptions.contains_key(filter))
    }

    fn persist_session(&self, session: &Session) -> Commit {
        if !session.is_persistent() {
            return Commit::done();
        }
        self.submit(vec![Op::PutSession(session_record(session))], true)
    }

    /// Fires every connected session's kill switch (shutdown).
    pub fn kill_all(&self, reason: KillReason) {
        for s in self.sessions.lock().values() {
            s.kill(reason);
        }
    }

    /// Submits `ops` to the store (nothing when empty).
    pub fn submit(&self, ops: Vec<Op>, durable: bool) -> Commit {
        if ops.is_empty() {
            return Commit::done();
        }
        self.store.submit(ops, durable)
    }

    /// Closes the store after a final sync.
    ///
    /// # Errors
    /// The store's final [`StoreError`].
    pub fn close_store(&self) -> Result<(), StoreError> {
        self.store.close()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.timers.close();
    }
}

/// The durable record of a session's identity, owner, expiry, offline time and subscriptions.
fn session_record(session: &Session) -> SessionRecord {
    let st = session.state.lock();
    SessionRecord {
        client_id: session.client_id.clone(),
        expiry: st.expiry_interval,
        subscriptions: st.subscriptions.iter().map(|(f, o)| (f.clone(), *o)).collect(),
        owner: st.owner.clone(),
        offline_since: st.offline_since,
    }
}

fn remove_sub(subs: &mut SubscriptionTree<SessionId, SubEntry>, filter: &str, id: SessionId) {
    match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((group, plain)) => subs.remove_shared(group, plain, id),
        None => subs.remove(filter, id),
    };
}
