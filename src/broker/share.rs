//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 section 4.8.2; issue 13): which
//! member of a group gets a message, and where a leaving member's messages go.
//!
//! A publish goes to a member that is online and whose connection may read the topic,
//! round-robin among those. Only when there is none does it go to an offline persistent member
//! that keeps QoS 1/2 for later; a QoS 0 message then finds an offline member and is dropped
//! and counted there (`offline_qos0`), as for a plain offline subscriber. A member whose key may
//! not read the topic is never picked; a group with no member that may read it drops the
//! message and counts it (`not_authorized`).
//!
//! When a member goes offline or its session ends, the shared messages it still owes (queued
//! and not sent, or sent at QoS 1 and not acknowledged) go to another online member of the same
//! group that may read them; a session that ends also hands them to an offline persistent
//! member. A QoS 2 message already sent stays with its client: its delivery completes there or
//! not at all (MQTT-4.8.2-4, MQTT-4.8.2-5). A stored copy moves in one store submission (the
//! new copy and the removal of the old), so `kill -9` leaves one of them, never neither; while
//! the member only went offline, a stored copy moves only to a member that stores it too, or
//! it stays.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::session::{Phase, Session};
use super::subtree::Fit;
use super::{Broker, SubEntry, route};
use crate::model::{Delivery, Message};
use crate::store::Op;
use dataloom_codec::QoS;

/// How a member leaves its group's deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leaving {
    /// Its client went offline; the session stays and keeps what no one else takes.
    Offline,
    /// Its session ends; what no one takes is gone with it.
    Ending,
}

/// How well the member `entry` can take `msg` now ([`Fit`]).
pub(super) fn fit(entry: &SubEntry, msg: &Message) -> Fit {
    let s = &entry.session;
    if !s.may_read(&msg.topic) {
        Fit::Never
    } else if s.is_online() {
        Fit::Now
    } else if s.is_persistent() && msg.qos.min(entry.opts.qos) != QoS::AtMostOnce {
        Fit::Later
    } else {
        Fit::Lossy
    }
}

/// The plain filter and group of a shared subscription as written.
fn parse(share: &str) -> Option<(&str, &str)> {
    share.strip_prefix("$share/")?.split_once('/')
}

/// A delivery moving from one member to another: where to, the new delivery, the old copy.
struct Move {
    to: Arc<Session>,
    delivery: Delivery,
}

impl Broker {
    /// Hands the shared deliveries `session` still owes to other members of their groups (see
    /// the module header); what no member takes stays with `session`. Call it once the
    /// session's connection released it; nothing happens if a connection holds it again
    /// (`Leaving::Offline`).
    pub(super) fn hand_over_shared(&self, session: &Session, leaving: Leaving) {
        let mut st = session.state.lock();
        if leaving == Leaving::Offline && session.is_online() {
            return;
        }
        let has_sent = st.outgoing.iter().any(|i| i.delivery.share.is_some() && i.phase == Phase::AwaitAck);
        if !has_sent && session.mailbox.is_empty() {
            return;
        }
        let mut ops = Vec::new();
        let mut moves = Vec::new();
        // Queued deliveries leave the mailbox first and the unmoved come back to its front:
        // no other mailbox is locked while this one is.
        let queued = session.mailbox.take_where(|d| d.share.is_some());
        let mut kept = Vec::new();
        {
            let subs = self.subs.read();
            let mut target = |d: &Delivery| -> Option<Move> {
                let (group, filter) = parse(d.share.as_deref()?)?;
                let (_, entry) = subs.pick_shared(group, filter, |k, e| {
                    if k == session.id {
                        return Fit::Never;
                    }
                    self.takes_over(e, d, leaving)
                })?;
                Some(self.moved(session, entry, d, &mut ops))
            };
            st.outgoing.retain(|i| {
                if i.phase != Phase::AwaitAck || i.delivery.share.is_none() {
                    return true;
                }
                target(&i.delivery).map(|m| moves.push(m)).is_none()
            });
            for d in queued {
                match target(&d) {
                    Some(m) => moves.push(m),
                    None => kept.push(d),
                }
            }
        }
        session.mailbox.push_front_all(kept);
        drop(st);
        if moves.is_empty() {
            return;
        }
        tracing::debug!(client_id = %session.client_id, moved = moves.len(), ?leaving,
            "shared-subscription messages handed to other members");
        // One submission: the new copies and the removal of the old ones are stored together,
        // before any new holder can see (and acknowledge) its copy.
        let _ = self.submit(ops, false);
        for m in moves {
            m.to.mailbox.push_all_unbounded([m.delivery]);
        }
    }

    /// The fit of member `e` to take over `d` from a member `leaving`: only one that can take
    /// it now, or (when the old session ends) keep it for later; a stored copy leaves a session
    /// that stays only for one that stores it; never a member whose queue is full.
    fn takes_over(&self, e: &SubEntry, d: &Delivery, leaving: Leaving) -> Fit {
        let f = fit(e, &d.msg);
        let stores = e.session.is_persistent() && d.msg.qos.min(e.opts.qos) != QoS::AtMostOnce;
        let ok = match leaving {
            Leaving::Offline => f == Fit::Now && (d.seq.is_none() || stores),
            Leaving::Ending => f >= Fit::Later,
        };
        if ok && e.session.mailbox.len() < self.limits.max_queued_messages { f } else { Fit::Never }
    }

    /// The delivery of `d` for member `to` (its options, a stored copy if it is persistent),
    /// with the store ops that move it from `from`.
    fn moved(&self, from: &Session, to: &SubEntry, d: &Delivery, ops: &mut Vec<Op>) -> Move {
        let mut nd = route::delivery(&d.msg, std::iter::once(to));
        nd.share = d.share.clone();
        if nd.qos != QoS::AtMostOnce && to.session.is_persistent() {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            nd.seq = Some(seq);
            ops.push(Op::Enqueue { client_id: to.session.client_id.clone(), seq, delivery: nd.clone() });
        }
        if let Some(seq) = d.seq {
            ops.push(Op::Dequeue { client_id: from.client_id.clone(), seq });
        }
        Move { to: to.session.clone(), delivery: nd }
    }
}
