//! The shared broker: sessions by client id, the subscription trie and fan-out, retained
//! messages, session expiry and delayed wills.
//!
//! Publishers only take the subscription trie's read lock (they never block each other) and
//! push into subscriber mailboxes; nothing here waits on a socket.

pub mod mailbox;
pub mod message;
pub mod retained_tree;
pub mod session;
pub mod subtree;
pub mod topic;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::codec::{QoS, RetainHandling};
use crate::store::{Store, StoreError};
use mailbox::Dropped;
use message::{Delivery, Message, SessionId};
use retained_tree::RetainedTree;
use session::{Kill, KillReason, Session, SubOptions};
use subtree::SubscriptionTree;

/// A subscription as the trie stores it: the session to deliver to and the options.
#[derive(Debug, Clone)]
pub struct SubEntry {
    pub session: Arc<Session>,
    pub opts: SubOptions,
}

/// Counters the broker keeps for `$SYS` and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub messages_received: AtomicU64,
    pub messages_routed: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_offline_qos0: AtomicU64,
    pub dropped_no_subscribers: AtomicU64,
}

/// Limits the broker applies to sessions.
#[derive(Debug, Clone)]
pub struct BrokerLimits {
    pub max_queued_messages: usize,
}

/// Result of connecting a client to its session.
#[derive(Debug)]
pub struct Attached {
    pub session: Arc<Session>,
    /// True when an existing session was resumed (CONNACK session present).
    pub present: bool,
    /// Ownership generation; pass it back to [`Broker::detach`].
    pub generation: u64,
}

/// The broker's shared state.
#[derive(Debug)]
pub struct Broker {
    limits: BrokerLimits,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    subs: RwLock<SubscriptionTree<SessionId, SubEntry>>,
    retained: RwLock<RetainedTree<Arc<Message>>>,
    next_session: AtomicU64,
    store: Arc<dyn Store>,
    pub stats: Stats,
}

impl Broker {
    /// A broker over `store`, with the retained messages the store holds.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub fn new(limits: BrokerLimits, store: Arc<dyn Store>) -> Result<Arc<Broker>, StoreError> {
        let mut retained = RetainedTree::new();
        for m in store.load_retained()? {
            let topic = m.topic.clone();
            retained.set(&topic, m);
        }
        Ok(Arc::new(Broker {
            limits,
            sessions: Mutex::new(HashMap::new()),
            subs: RwLock::new(SubscriptionTree::new()),
            retained: RwLock::new(retained),
            next_session: AtomicU64::new(1),
            store,
            stats: Stats::default(),
        }))
    }

    /// Attaches a connection to the session of `client_id`: resumes it unless `clean_start`,
    /// and takes it over from any connection that holds it (that one is told [`KillReason::TakenOver`]).
    pub fn attach(&self, client_id: &str, clean_start: bool, kill: Arc<Kill>) -> Attached {
        let mut map = self.sessions.lock();
        if let Some(existing) = map.get(client_id).cloned() {
            if !clean_start {
                let generation = existing.take_ownership(kill);
                return Attached { session: existing, present: true, generation };
            }
            existing.kill(KillReason::TakenOver);
            existing.take_ownership(Arc::new(Kill::default()));
            map.remove(client_id);
            self.drop_subscriptions(&existing);
        }
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let cid: Arc<str> = Arc::from(client_id);
        let session = Arc::new(Session::new(id, cid.clone(), self.limits.max_queued_messages));
        let generation = session.take_ownership(kill);
        map.insert(cid, session.clone());
        Attached { session, present: false, generation }
    }

    /// Detaches the connection of `generation`; the session ends now when `expiry` is 0, or
    /// after `expiry` seconds offline (`u32::MAX`: never).
    pub fn detach(self: &Arc<Self>, session: &Arc<Session>, generation: u64, expiry: u32) {
        if !session.release(generation) {
            return;
        }
        match expiry {
            0 => self.end_session(session),
            u32::MAX => {}
            secs => {
                let broker = Arc::downgrade(self);
                let session = session.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
                    if let Some(b) = broker.upgrade()
                        && session.generation() == generation
                    {
                        b.end_session(&session);
                    }
                });
            }
        }
    }

    /// Removes a session and its subscriptions if it is still the one registered.
    fn end_session(&self, session: &Arc<Session>) {
        let mut map = self.sessions.lock();
        if map.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            map.remove(&session.client_id);
        }
        drop(map);
        self.drop_subscriptions(session);
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

    /// Adds or replaces a subscription (filter already validated) and queues the retained
    /// messages it asks for. Returns whether the subscription existed before.
    pub fn subscribe(&self, session: &Arc<Session>, filter: &str, group: Option<&str>, plain: &str, opts: SubOptions) -> bool {
        let entry = SubEntry { session: session.clone(), opts };
        let existed = {
            let mut subs = self.subs.write();
            match group {
                Some(g) => subs.insert_shared(g, plain, session.id, entry).is_some(),
                None => subs.insert(plain, session.id, entry).is_some(),
            }
        };
        session.state.lock().subscriptions.insert(filter.to_string(), opts);
        let send_retained = group.is_none()
            && match opts.retain_handling {
                RetainHandling::OnSubscribe => true,
                RetainHandling::OnNewSubscribe => !existed,
                RetainHandling::Never => false,
            };
        if send_retained {
            let found = self.retained_matching(plain, opts);
            session.mailbox.push_all_unbounded(found);
        }
        existed
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, session: &Session, filter: &str) -> bool {
        if session.state.lock().subscriptions.remove(filter).is_none() {
            return false;
        }
        remove_sub(&mut self.subs.write(), filter, session.id);
        true
    }

    fn retained_matching(&self, filter: &str, opts: SubOptions) -> Vec<Delivery> {
        let now = Instant::now();
        let mut out = Vec::new();
        self.retained.read().for_each_match(filter, |_, m| {
            if !m.is_expired(now) {
                out.push(Delivery {
                    msg: m.clone(),
                    qos: m.qos.min(opts.qos),
                    retain: true,
                    sub_ids: opts.sub_id.into_iter().collect(),
                });
            }
        });
        out
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// Routes a message: updates retained state when `msg.retain`, then queues it for every
    /// matching subscription. Returns the number of sessions it was queued for.
    ///
    /// # Errors
    /// [`StoreError`] when the retained state could not be stored; nothing was routed.
    pub fn publish(&self, msg: Arc<Message>) -> Result<usize, StoreError> {
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        if msg.retain {
            self.set_retained(&msg)?;
        }
        let routed = self.fan_out(&msg);
        if routed == 0 {
            self.stats.dropped_no_subscribers.fetch_add(1, Ordering::Relaxed);
        }
        Ok(routed)
    }

    fn set_retained(&self, msg: &Arc<Message>) -> Result<(), StoreError> {
        if msg.payload.is_empty() {
            self.store.delete_retained(&msg.topic)?;
            self.retained.write().remove(&msg.topic);
        } else {
            self.store.put_retained(msg)?;
            self.retained.write().set(&msg.topic, msg.clone());
        }
        Ok(())
    }

    fn fan_out(&self, msg: &Arc<Message>) -> usize {
        let subs = self.subs.read();
        let mut plain: Vec<(SessionId, &SubEntry)> = Vec::new();
        let mut routed = 0;
        subs.for_each_match(
            &msg.topic,
            |_| true,
            |key, entry, group| {
                if group.is_some() {
                    routed += usize::from(self.deliver(msg, entry, &[entry]));
                } else if !(entry.opts.no_local && msg.publisher == Some(key)) {
                    plain.push((key, entry));
                }
            },
        );
        plain.sort_unstable_by_key(|(k, _)| *k);
        for group in plain.chunk_by(|a, b| a.0 == b.0) {
            let entries: Vec<&SubEntry> = group.iter().map(|(_, e)| *e).collect();
            routed += usize::from(self.deliver(msg, entries[0], &entries));
        }
        routed
    }

    /// Queues one delivery for the session of `first`, merging overlapping subscriptions:
    /// highest QoS, every subscription identifier, retain if any asks to retain-as-published.
    fn deliver(&self, msg: &Arc<Message>, first: &SubEntry, entries: &[&SubEntry]) -> bool {
        let granted = entries.iter().map(|e| e.opts.qos).max().unwrap_or(QoS::AtMostOnce);
        let d = Delivery {
            msg: msg.clone(),
            qos: msg.qos.min(granted),
            retain: msg.retain && entries.iter().any(|e| e.opts.retain_as_published),
            sub_ids: entries.iter().filter_map(|e| e.opts.sub_id).collect(),
        };
        match first.session.mailbox.push(d) {
            Ok(()) => {
                self.stats.messages_routed.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(Dropped::QueueFull) => {
                self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(Dropped::Offline) => {
                self.stats.dropped_offline_qos0.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Publishes `will` after `delay` unless the session was resumed (generation changed) first.
    pub fn schedule_will(self: &Arc<Self>, session: &Arc<Session>, generation: u64, will: Arc<Message>, delay: Duration) {
        if delay.is_zero() {
            let _ = self.publish(will);
            return;
        }
        let broker = Arc::downgrade(self);
        let session = session.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(b) = broker.upgrade()
                && session.generation() == generation
            {
                let _ = b.publish(will);
            }
        });
    }

    /// Fires every connected session's kill switch (shutdown).
    pub fn kill_all(&self, reason: KillReason) {
        for s in self.sessions.lock().values() {
            s.kill(reason);
        }
    }
}

fn remove_sub(subs: &mut SubscriptionTree<SessionId, SubEntry>, filter: &str, id: SessionId) {
    match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((group, plain)) => subs.remove_shared(group, plain, id),
        None => subs.remove(filter, id),
    };
}
