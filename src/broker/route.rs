//! Routing one message: retained state, matching subscriptions (merged per session, one member
//! per shared group as `share` picks it), the durable copies owed to persistent sessions, then
//! the subscriber mailboxes.
//!
//! The store ops of a message (retained state, queued copies, the publisher's QoS 2 id) go
//! to the store in one submission *before* any subscriber can see the message, so an
//! acknowledgement from a subscriber is always stored after the copy it removes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::mailbox::{Dropped, Refused};
use super::session::Session;
use super::subtree::Hit;
use super::{Broker, SubEntry, share};
use crate::metrics::reasons::{DropReason, ShedAction};
use crate::model::SubOptions;
use crate::model::{Delivery, Message, Pressure, SessionId, Stamp};
use crate::store::{Commit, Op, StoreError};
use dataloom_codec::QoS;

/// What routing a message did.
#[derive(Debug)]
pub struct Published {
    /// Sessions (and shared groups) whose subscriptions matched.
    pub matched: usize,
    /// Sessions the message was queued for.
    pub routed: usize,
    /// Resolves once every durable effect is on disk (QoS 1/2 acks wait for it).
    pub commit: Commit,
    /// Deliveries whose subscriber queue was full while its client drains it: the publisher
    /// waits for room and offers them again ([`Broker::offer_blocked`]) before it reads more.
    pub blocked: Vec<(Arc<Session>, Delivery)>,
    /// The state revision the message took (a retained change), else 0.
    pub revision: u64,
}

impl Broker {
    /// Routes a message: updates retained state when `msg.retain`, stores copies for
    /// persistent sessions (QoS 1/2), queues it for every matching subscription. `extra` ops
    /// (e.g. the publisher's QoS 2 receive state) join the same store submission.
    ///
    /// # Errors
    /// [`StoreError`] when the store refuses writes (poisoned); nothing was routed.
    pub fn publish(&self, msg: Arc<Message>, extra: Vec<Op>) -> Result<Published, StoreError> {
        self.route(msg, extra, false, Origin::Local)
    }

    /// As [`Broker::publish`], but deliveries to full queues of clients that are draining them
    /// come back in [`Published::blocked`] instead of being dropped: the caller (a client's
    /// connection task) stops reading until they fit. This is how a fast publisher is pushed
    /// back instead of losing messages.
    ///
    /// # Errors
    /// As [`Broker::publish`].
    pub fn publish_with_backpressure(
        &self,
        msg: Arc<Message>,
        extra: Vec<Op>,
    ) -> Result<Published, StoreError> {
        self.route(msg, extra, true, Origin::Local)
    }

    /// Routes `msg` once here. A `Local` message (accepted by this node) in a cluster also
    /// goes to the other nodes, and a retained one to the cluster's state log instead of the
    /// local index (which follows the log: `broker/cluster.rs`); a `Remote` one (from another
    /// node) only reaches this node's subscribers.
    pub(super) fn route(
        &self,
        msg: Arc<Message>,
        mut extra: Vec<Op>,
        may_wait: bool,
        origin: Origin,
    ) -> Result<Published, StoreError> {
        if let Some(e) = self.store.poisoned() {
            return Err(e);
        }
        let bus = match origin {
            Origin::Local => self.cluster_bus(&msg.topic),
            Origin::Remote => None,
        };
        if let Some(bus) = bus {
            bus.check_topic(&msg.topic)?;
        }
        // $SYS state is regenerated every interval; storing it would only cost writes.
        let stores_state = msg.retain && !msg.topic.starts_with("$SYS/");
        let history = self.history.get().filter(|h| h.keeps(&msg.topic));
        let disk_full = self.disk_full();
        let refused =
            |topic: &str| StoreError::DiskFull(format!("{topic} refused: the data directory is almost full"));
        if disk_full && (stores_state || history.is_some() || !extra.is_empty()) {
            return Err(refused(&msg.topic));
        }
        // Retained state first, then fan-out: a client subscribing meanwhile gets the new
        // state, the live message, or both, never neither.
        // Held through the submission below: the index and the store see updates of one
        // topic in the same order.
        let _order = msg.retain.then(|| self.retained_order(&msg.topic).lock());
        // Held through the submission too: history entries reach the store in revision order.
        let mut clock = history.map(|h| h.order());
        let mut msg = msg;
        let mut stamp = None;
        if let (Some(clock), Some(h)) = (clock.as_mut(), history) {
            let taken = Stamp {
                revision: self.revision.fetch_add(1, Ordering::Relaxed) + 1,
                unix_ms: clock.time(super::lifecycle::unix_ms()),
            };
            clock.last = taken.revision;
            msg = Arc::new(Message { stamp: taken, ..Message::clone(&msg) });
            extra.push(Op::AppendHistory(msg.clone()));
            h.touched(&msg.topic);
            stamp = Some(taken);
        }
        let mut revision = 0;
        let mut state = Commit::done();
        match (msg.retain, origin, bus) {
            (false, ..) | (true, Origin::Remote, _) => {}
            (true, Origin::Local, Some(bus)) => state = bus.put_state(&stamped(&msg)),
            (true, Origin::Local, None) => {
                let (ops, taken) = self.set_retained(&msg, stores_state, stamp, super::lifecycle::unix_ms());
                extra.extend(ops);
                revision = taken;
            }
        }
        if let Some(s) = stamp {
            revision = s.revision;
        }
        let (mut targets, unfit) = self.fan_out(&msg);
        if disk_full && targets.iter().any(|(s, d)| d.qos != QoS::AtMostOnce && s.is_persistent()) {
            // Only a $SYS retained update can have taken effect: refuse rather than accept a
            // copy for a persistent session that cannot be stored.
            return Err(refused(&msg.topic));
        }
        for (session, d) in &mut targets {
            if d.qos != QoS::AtMostOnce
                && session.is_persistent()
                && session.mailbox.len() < self.limits.max_queued_messages
            {
                let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
                d.seq = Some(seq);
                extra.push(Op::Enqueue { client_id: session.client_id.clone(), seq, delivery: d.clone() });
            }
        }
        let commit = self.submit(extra, msg.qos != QoS::AtMostOnce).and(state);
        drop(clock);
        if let Some(bus) = bus {
            bus.fan_out(&msg);
        }
        drop(_order);
        // A group nobody in it may read matched (its drop is counted as not authorized). A
        // message sent to the other nodes may match there: this node cannot say 0x10.
        let (matched, mut routed) = (targets.len() + unfit + usize::from(bus.is_some()), 0);
        let mut blocked = Vec::new();
        let pressure = self.pressure();
        for (session, d) in targets {
            match self.enqueue(&session, d, may_wait, pressure) {
                Ok(queued) => routed += usize::from(queued),
                Err(d) => {
                    routed += 1;
                    blocked.push((session, d));
                }
            }
        }
        Ok(Published { matched, routed, commit, blocked, revision })
    }

    /// Offers blocked deliveries again: those that fit (or are dropped because their client
    /// stalled, or because `give_up`) leave `blocked`; the rest stay for the next try.
    pub fn offer_blocked(&self, blocked: &mut Vec<(Arc<Session>, Delivery)>, give_up: bool) {
        let mut rest = Vec::new();
        let pressure = self.pressure();
        for (session, d) in blocked.drain(..) {
            match self.enqueue(&session, d, !give_up, pressure) {
                Ok(_) => {}
                Err(d) => rest.push((session, d)),
            }
        }
        *blocked = rest;
    }

    /// Updates the in-memory retained index and returns the store ops for it when `durable`
    /// (not for `$SYS/`). A durable change takes the next state revision under the index's
    /// write lock, so a reader holding the read lock sees exactly the changes up to
    /// [`Broker::revision`]; a deletion stores the revision it took ([`Op::Revision`]).
    /// Returns the ops and the revision taken (0 for none).
    /// A message that keeps history comes with the stamp it `taken`, and the state takes it
    /// too; otherwise the state takes the next revision at `unix_ms`.
    pub(super) fn set_retained(
        &self,
        msg: &Arc<Message>,
        durable: bool,
        taken: Option<Stamp>,
        unix_ms: u64,
    ) -> (Vec<Op>, u64) {
        let next = |current: &AtomicU64| match taken {
            Some(s) => s.revision,
            None if durable => current.fetch_add(1, Ordering::Relaxed) + 1,
            None => 0,
        };
        if msg.payload.is_empty() {
            let mut tree = self.retained.write();
            let old = tree.remove(&msg.topic);
            let revision = old.as_ref().map(|_| next(&self.revision));
            drop(tree);
            crate::metrics::get().retained_replaced(old.map_or(0, |m| m.payload.len()), 0);
            if !durable {
                return (Vec::new(), 0);
            }
            let mut ops = vec![Op::DeleteRetained(msg.topic.clone())];
            ops.extend(revision.map(Op::Revision));
            (ops, revision.unwrap_or(0))
        } else {
            let mut tree = self.retained.write();
            // The retained copy owns its bytes: a slice of the publisher's read buffer would
            // keep the whole buffer (and every other message in it) alive as long as the state.
            let kept = Arc::new(Message {
                topic_bytes: bytes::Bytes::copy_from_slice(&msg.topic_bytes),
                payload: bytes::Bytes::copy_from_slice(&msg.payload),
                stamp: Stamp {
                    revision: next(&self.revision),
                    unix_ms: taken.map_or(unix_ms, |s| s.unix_ms),
                },
                ..Message::clone(msg)
            });
            let old = tree.set(&msg.topic, kept.clone());
            drop(tree);
            self.expiring.lock().note(&kept);
            crate::metrics::get().retained_replaced(old.map_or(0, |m| m.payload.len()), msg.payload.len());
            let revision = kept.stamp.revision;
            if durable { (vec![Op::PutRetained(kept)], revision) } else { (Vec::new(), 0) }
        }
    }

    /// The broker-wide state revision: the number of the last retained-state change.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Relaxed)
    }

    /// One delivery per matching session (overlaps merged) and one per matching shared group
    /// (to the member `share::fit` rates best), and how many groups had no member that may
    /// read the message (dropped and counted here).
    fn fan_out(&self, msg: &Arc<Message>) -> (Vec<(Arc<Session>, Delivery)>, usize) {
        let subs = self.subs.read();
        // Sized for a typical fan-out: growing a vector from empty cost more than the match.
        let mut plain: Vec<(SessionId, &SubEntry)> = Vec::with_capacity(16);
        let mut shared = Vec::new();
        let mut unfit = 0;
        subs.for_each_match(
            &msg.topic,
            |_, entry| share::fit(entry, msg),
            |hit| match hit {
                Hit::Shared(Some((_, entry))) => {
                    let mut d = delivery(msg, std::iter::once(entry));
                    d.share = entry.share.clone();
                    shared.push((entry.session.clone(), d));
                }
                Hit::Shared(None) => unfit += 1,
                Hit::Plain(key, entry) => {
                    // A replaying subscription gets this message from the store (`replay`).
                    let held = entry.replay.as_ref().is_some_and(|g| !g.passes(msg.stamp.revision));
                    let own = entry.opts.no_local && msg.publisher == Some(key);
                    if !(held || own) {
                        plain.push((key, entry));
                    }
                }
            },
        );
        plain.sort_unstable_by_key(|(k, _)| *k);
        let mut out = Vec::with_capacity(plain.len() + shared.len());
        out.append(&mut shared);
        for group in plain.chunk_by(|a, b| a.0 == b.0) {
            let Some((_, first)) = group.first() else { continue };
            out.push((first.session.clone(), delivery(msg, group.iter().map(|(_, e)| *e))));
        }
        for _ in 0..unfit {
            crate::metrics::get().dropped(DropReason::NotAuthorized);
        }
        (out, unfit)
    }

    /// Queues a delivery: `Ok(true)` queued, `Ok(false)` dropped (a stored copy is removed
    /// from the store again), `Err` handed back because the queue is full and `may_wait`.
    fn enqueue(
        &self,
        session: &Session,
        d: Delivery,
        may_wait: bool,
        pressure: Pressure,
    ) -> Result<bool, Delivery> {
        let seq = d.seq;
        let why = match session.mailbox.offer(d, pressure) {
            Ok(()) => return Ok(true),
            Err(Refused::Full(d)) if may_wait => return Err(d),
            Err(Refused::Full(_)) => {
                session.mailbox.count_dropped();
                Dropped::QueueFull
            }
            Err(Refused::Dropped(why)) => why,
        };
        match why {
            Dropped::QueueFull => self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed),
            Dropped::Offline => self.stats.dropped_offline_qos0.fetch_add(1, Ordering::Relaxed),
            Dropped::Shed => {
                let m = crate::metrics::get();
                m.dropped(DropReason::LoadShed);
                m.load_shed(ShedAction::Qos0Delivery);
                0
            }
        };
        self.forget(session, seq);
        Ok(false)
    }

    /// The retained messages matching `filter` that `session` may read, not expired, and that
    /// `admit` accepts (the connection's Maximum Packet Size), as deliveries for a new
    /// subscription: one snapshot under one read lock, so their number is exactly what is sent.
    pub(super) fn retained_matching(
        &self,
        session: &Session,
        filter: &str,
        opts: SubOptions,
        admit: &mut dyn FnMut(&Delivery) -> bool,
    ) -> Vec<Delivery> {
        let now = Instant::now();
        let mut out = Vec::new();
        self.retained.read().for_each_match(filter, |topic, m| {
            if m.is_expired(now) || !session.may_read(topic) {
                return;
            }
            let d = Delivery {
                msg: m.clone(),
                qos: m.qos.min(opts.qos),
                retain: true,
                sub_ids: opts.sub_id.into_iter().collect(),
                seq: None,
                share: None,
                snapshot: true,
            };
            if admit(&d) {
                out.push(d);
            }
        });
        out
    }

    /// Number of retained messages.
    pub fn retained_count(&self) -> usize {
        self.retained.read().len()
    }

    /// The retained messages whose topic matches `filter` (a valid, non-shared filter),
    /// expired ones included. Used by the schema registry (`$schema/#` at start, and the
    /// state under a filter when its schema changes).
    pub fn retained_under(&self, filter: &str) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        self.retained.read().for_each_match(filter, |_, m| out.push(m.clone()));
        out
    }
}

/// Where a routed message comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// Accepted by this node (a client, a will, the state API, `$SYS`).
    Local,
    /// Sent by another node of the cluster.
    Remote,
}

/// `msg` with its update time set now (the state log carries it to every node).
fn stamped(msg: &Message) -> Message {
    Message { stamp: Stamp { revision: 0, unix_ms: super::lifecycle::unix_ms() }, ..msg.clone() }
}

/// The delivery for one session from its matching subscriptions: highest QoS, every
/// subscription identifier, retain kept if any subscription asks for retain-as-published.
pub(super) fn delivery<'a>(
    msg: &Arc<Message>,
    entries: impl Iterator<Item = &'a SubEntry> + Clone,
) -> Delivery {
    let granted = entries.clone().map(|e| e.opts.qos).max().unwrap_or(QoS::AtMostOnce);
    Delivery {
        msg: msg.clone(),
        qos: msg.qos.min(granted),
        retain: msg.retain && entries.clone().any(|e| e.opts.retain_as_published),
        sub_ids: entries.filter_map(|e| e.opts.sub_id).collect(),
        seq: None,
        share: None,
        snapshot: false,
    }
}
