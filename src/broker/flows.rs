//! The QoS 1/2 flows of a session as the broker keeps them: each verb changes the session's
//! state and returns what to store (as a [`Commit`] to wait for) and what to send; the session
//! layer does the I/O. Incoming QoS 2 ids (exactly once for the publisher), outgoing in-flight
//! messages (PUBACK, PUBREC, PUBCOMP) and their stored copies, and the stored deliveries a
//! connection may not read, which are withheld for the session instead of sent.

use super::Broker;
use super::session::{Inflight, Outgoing, Phase, PubRecOutcome, Session, Withheld};
use crate::metrics::reasons::DropReason;
use crate::model::Delivery;
use crate::store::{Commit, Op};

/// What an incoming QoS 2 PUBLISH is to the session.
#[derive(Debug)]
pub enum Qos2Arrival {
    /// Its packet id is still unreleased: a resend, answer PUBREC again and route nothing.
    Duplicate,
    /// More unreleased ids than the connection's Receive Maximum.
    TooMany,
    /// A new message: route it with these store ops (its id, for a persistent session).
    New(Vec<Op>),
}

/// What the session answers to a PUBREC.
#[derive(Debug)]
pub enum PubRecAnswer {
    /// No QoS 2 message awaits it: PUBREL 0x92 (Packet Identifier not found).
    Unknown,
    /// The client refused the message; nothing to send.
    Ended,
    /// PUBREL, once this commit resolves.
    Release(Commit),
}

impl Broker {
    /// An incoming QoS 2 PUBLISH with `pkid`; `limit` is the Receive Maximum to enforce (v5).
    pub fn qos2_arrived(&self, session: &Session, pkid: u16, limit: Option<usize>) -> Qos2Arrival {
        let mut st = session.state.lock();
        if st.incoming_qos2.contains(&pkid) {
            return Qos2Arrival::Duplicate;
        }
        if limit.is_some_and(|max| st.incoming_qos2.len() >= max) {
            return Qos2Arrival::TooMany;
        }
        st.incoming_qos2.insert(pkid);
        drop(st);
        let mut ops = Vec::new();
        if session.is_persistent() {
            ops.push(Op::PutIncomingQos2 { client_id: session.client_id.clone(), pkid });
        }
        Qos2Arrival::New(ops)
    }

    /// Incoming QoS 2 ids not yet released by PUBREL (they count against Receive Maximum).
    pub fn qos2_unreleased(&self, session: &Session) -> usize {
        session.state.lock().incoming_qos2.len()
    }

    /// PUBREL for the incoming QoS 2 id `pkid`: `None` when it is unknown, else the commit
    /// PUBCOMP waits for.
    pub fn qos2_released(&self, session: &Session, pkid: u16) -> Option<Commit> {
        if !session.state.lock().incoming_qos2.remove(&pkid) {
            return None;
        }
        if !session.is_persistent() {
            return Some(Commit::done());
        }
        let op = Op::DeleteIncomingQos2 { client_id: session.client_id.clone(), pkid };
        Some(self.submit(vec![op], true))
    }

    /// PUBACK (`phase` [`Phase::AwaitAck`]) or PUBCOMP ([`Phase::AwaitComp`]) for the outgoing
    /// message `pkid`: it leaves the window and its stored copy leaves the store.
    pub fn outgoing_completed(&self, session: &Session, pkid: u16, phase: Phase) {
        if let Some(done) = session.complete_outgoing(pkid, phase) {
            self.forget(session, done.delivery.seq);
        }
    }

    /// PUBREC for the outgoing message `pkid` with reason `code`.
    pub fn outgoing_received(&self, session: &Session, pkid: u16, code: u8) -> PubRecAnswer {
        match session.outgoing_received(pkid, code >= 0x80) {
            PubRecOutcome::Unknown => PubRecAnswer::Unknown,
            PubRecOutcome::Ended(done) => {
                self.forget(session, done.delivery.seq);
                PubRecAnswer::Ended
            }
            // PUBREL leaves once "PUBREC received" is on disk: after a restart the message
            // must never be sent again once the client may have completed it.
            PubRecOutcome::Release { seq, pkid } => {
                PubRecAnswer::Release(self.mark_inflight(session, seq, pkid, true, true))
            }
        }
    }

    /// Takes everything in flight to resend after a resume of `generation`. A message awaiting
    /// PUBACK or PUBREC whose topic the connection may not read (`readable`) is withheld (see
    /// [`Broker::withhold`]); `send` resends the others and says whether it could (else the
    /// stored copy is forgotten).
    pub fn resend_inflight(
        &self,
        session: &Session,
        generation: u64,
        readable: impl Fn(&str) -> bool,
        mut send: impl FnMut(&Inflight) -> bool,
    ) {
        let mut out = session.outgoing();
        for i in out.take_all() {
            if i.phase != Phase::AwaitComp && !readable(&i.delivery.msg.topic) && session.is_owner(generation)
            {
                if let Some(refused) = out.withhold(Withheld::InFlight(i), self.limits.max_queued_messages) {
                    self.drop_unreadable(session, withheld_seq(&refused));
                }
                continue;
            }
            if send(&i) {
                out.push(i);
            } else {
                self.forget(session, i.delivery.seq);
            }
        }
    }

    /// A delivery stored before the connection of `generation` attached, which it may not
    /// read: kept for the session (sent to a later connection that may read it, checked again
    /// when one attaches), never sent here and never deleted. Dropped and counted
    /// (`not_authorized`) only beyond `mqtt.max_queued_messages` withheld deliveries or when
    /// it was never stored. `out` is the session's window, locked by the caller.
    pub fn withhold(&self, out: &mut Outgoing<'_>, session: &Session, generation: u64, d: Delivery) {
        if d.seq.is_none() {
            self.drop_unreadable(session, None);
        } else if !session.is_owner(generation) {
            // Taken over meanwhile: the new connection decides.
            session.mailbox.push_front_all(vec![d]);
        } else if let Some(refused) = out.withhold(Withheld::Queued(d), self.limits.max_queued_messages) {
            self.drop_unreadable(session, withheld_seq(&refused));
        }
    }

    /// Drops (counts, forgets) a delivery the connection may not read.
    pub fn drop_unreadable(&self, session: &Session, seq: Option<u64>) {
        crate::metrics::get().dropped(DropReason::NotAuthorized);
        self.forget(session, seq);
    }

    /// The acknowledged (or dropped) stored delivery `seq` of `session` leaves the store.
    pub fn forget(&self, session: &Session, seq: Option<u64>) {
        if let Some(seq) = seq {
            let _ = self.submit(vec![Op::Dequeue { client_id: session.client_id.clone(), seq }], false);
        }
    }

    /// Records that stored delivery `seq` was sent as `pkid` (and whether PUBREL was sent).
    /// With `durable` the commit resolves once that is on disk: a QoS 2 PUBLISH or PUBREL must
    /// wait for it, or after `kill -9` the message could go out again (as a new PUBLISH, or
    /// under another packet id) although the client has it, and be delivered twice.
    pub fn mark_inflight(
        &self,
        session: &Session,
        seq: Option<u64>,
        pkid: u16,
        released: bool,
        durable: bool,
    ) -> Commit {
        match seq {
            Some(seq) => {
                let op = Op::SetInflight { client_id: session.client_id.clone(), seq, pkid, released };
                self.submit(vec![op], durable)
            }
            None => Commit::done(),
        }
    }
}

fn withheld_seq(w: &Withheld) -> Option<u64> {
    match w {
        Withheld::Queued(d) => d.seq,
        Withheld::InFlight(i) => i.delivery.seq,
    }
}
