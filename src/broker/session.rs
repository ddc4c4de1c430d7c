//! A session as the broker keeps it: identity, mailbox, the state that survives reconnects
//! (subscriptions, in-flight messages, unreleased QoS 2 ids) and which connection owns it.
//!
//! A connection owns a session by generation number; a newer connection (takeover) bumps the
//! generation and fires the old connection's [`Kill`] switch, so a stale connection can tell it
//! must not touch the session any more.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard, RwLock};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use super::mailbox::Mailbox;
use super::window::Window;
use crate::model::{Budget, Delivery, Kill, KillReason, ReadAccess, SessionId, SessionOwner, SubOptions};

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // named after the ack each phase awaits
pub enum Phase {
    /// QoS 1 sent, PUBACK awaited.
    AwaitAck,
    /// QoS 2 sent, PUBREC awaited.
    AwaitRec,
    /// PUBREL sent, PUBCOMP awaited.
    AwaitComp,
}

/// One unacknowledged outgoing message.
#[derive(Debug, Clone)]
pub struct Inflight {
    pub pkid: u16,
    pub delivery: Delivery,
    pub phase: Phase,
}

/// The part of a session that outlives its network connections; private to the broker,
/// changed through the verbs of [`Session`], [`Outgoing`] and the broker's QoS flows.
#[derive(Debug, Default)]
pub(super) struct SessionState {
    /// Subscriptions by the filter as the client wrote it (including `$share/g/`).
    pub(super) subscriptions: HashMap<String, SubOptions>,
    /// Outgoing QoS 1/2 messages in send order.
    pub(super) outgoing: Window,
    /// Incoming QoS 2 packet ids received but not yet released by PUBREL.
    pub(super) incoming_qos2: HashSet<u16>,
    /// Last packet id used for an outgoing message.
    pub(super) last_pkid: u16,
    /// Session expiry interval in seconds (0: ends with the connection, `u32::MAX`: never).
    pub(super) expiry_interval: u32,
    /// The identity that created the session; `None` when restored from a record older than
    /// owners (the next identity to resume it claims it).
    pub(super) owner: Option<SessionOwner>,
    /// When the session went offline (wall clock, UNIX milliseconds); `None` while online.
    pub(super) offline_since: Option<u64>,
    /// Stored deliveries a connection may not read, kept (not sent, not deleted) for the
    /// next connection, which is checked again (see `Broker::withhold`).
    pub(super) withheld: Vec<Withheld>,
}

/// A stored delivery set aside because the connection may not read its topic.
#[derive(Debug)]
pub(super) enum Withheld {
    /// It was queued.
    Queued(Delivery),
    /// It was in flight (sent to an earlier connection, not acknowledged): its packet id
    /// stays taken.
    InFlight(Inflight),
}

/// The in-flight window of a session, locked for one connection's send loop
/// ([`Session::outgoing`]): packet ids and the messages awaiting their acks.
#[derive(Debug)]
pub struct Outgoing<'a>(MutexGuard<'a, SessionState>);

impl Outgoing<'_> {
    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.0.outgoing.len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.0.outgoing.is_empty()
    }

    /// Payload and topic bytes in flight.
    pub fn bytes(&self) -> usize {
        self.0.outgoing.bytes()
    }

    /// Next free packet identifier (1..=65535, skipping those in flight), or `None` if all
    /// are used.
    pub fn next_pkid(&mut self) -> Option<u16> {
        self.0.next_pkid()
    }

    /// A message was sent and awaits its ack.
    pub fn push(&mut self, inflight: Inflight) {
        self.0.outgoing.push_back(inflight);
    }

    /// Takes everything in flight, in send order (to resend it after a resume).
    pub fn take_all(&mut self) -> Vec<Inflight> {
        self.0.outgoing.take_all()
    }

    /// Sets `w` aside for the session; gives it back when `cap` deliveries are withheld already.
    pub(super) fn withhold(&mut self, w: Withheld, cap: usize) -> Option<Withheld> {
        if self.0.withheld.len() >= cap {
            return Some(w);
        }
        self.0.withheld.push(w);
        None
    }
}

/// What a PUBREC did to the outgoing message with its packet id.
#[derive(Debug)]
pub enum PubRecOutcome {
    /// No QoS 2 message awaits a PUBREC with this id.
    Unknown,
    /// The client refused the message (v5 reason code ≥ 0x80): the flow ended.
    Ended(Inflight),
    /// The message now awaits PUBCOMP: send PUBREL (stored delivery `seq`, if any).
    Release { seq: Option<u64>, pkid: u16 },
}

impl SessionState {
    /// Next free packet identifier (1..=65535, skipping those in flight), or `None` if all are used.
    fn next_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let id = self.last_pkid;
            let withheld = |w: &Withheld| matches!(w, Withheld::InFlight(i) if i.pkid == id);
            if !self.outgoing.holds(id) && !self.withheld.iter().any(withheld) {
                return Some(id);
            }
        }
        None
    }
}

/// The connection that currently holds a session.
#[derive(Debug, Default)]
struct Holder {
    kill: Option<Arc<Kill>>,
}

/// A client session shared between the broker (routing) and its connection task.
#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub client_id: Arc<str>,
    pub mailbox: Mailbox,
    pub(super) state: Mutex<SessionState>,
    generation: AtomicU64,
    holder: Mutex<Holder>,
    /// Woken when a connection lets go of the session (see `Broker::detach`).
    let_go: Notify,
    /// Session expiry > 0: its state and QoS 1/2 queue are stored durably.
    persistent: AtomicBool,
    /// What the session's latest connection may read (`None`: everything, or not known for a
    /// session restored from the store). Kept while offline: shared subscriptions ask it.
    reader: RwLock<Option<Arc<dyn ReadAccess>>>,
}

impl Session {
    pub(crate) fn new(
        id: SessionId,
        client_id: Arc<str>,
        queue_limit: usize,
        queue_bytes: usize,
        memory: Arc<Budget>,
    ) -> Session {
        Session {
            id,
            client_id,
            mailbox: Mailbox::new(queue_limit, queue_bytes, memory),
            state: Mutex::new(SessionState::default()),
            generation: AtomicU64::new(0),
            holder: Mutex::new(Holder::default()),
            let_go: Notify::new(),
            persistent: AtomicBool::new(false),
            reader: RwLock::new(None),
        }
    }

    /// Sets what the session's connection may read (`None`: everything).
    pub(super) fn set_reader(&self, reader: Option<Arc<dyn ReadAccess>>) {
        *self.reader.write() = reader;
    }

    /// True when the session's latest connection may read `topic` (always, when not known).
    pub fn may_read(&self, topic: &str) -> bool {
        self.reader.read().as_ref().is_none_or(|r| r.may_read(topic))
    }

    /// True while a connection holds the session.
    pub fn is_online(&self) -> bool {
        self.mailbox.is_online()
    }

    /// The identity that created the session (`None`: not known, from an old record).
    pub fn owner(&self) -> Option<SessionOwner> {
        self.state.lock().owner.clone()
    }

    /// A connection of `identity` resumes the session: an unowned session (old record) becomes
    /// its own, the session is online, and what earlier connections withheld is queued again
    /// (in flight ones back in the window), to be checked against this connection's rights.
    pub(super) fn resume(&self, identity: &SessionOwner) {
        let mut st = self.state.lock();
        if st.owner.is_none() {
            st.owner = Some(identity.clone());
        }
        st.offline_since = None;
        let mut queued = Vec::new();
        let mut sent = Vec::new();
        for w in st.withheld.drain(..) {
            match w {
                Withheld::Queued(d) => queued.push(d),
                Withheld::InFlight(i) => sent.push(i),
            }
        }
        for i in sent.into_iter().rev() {
            st.outgoing.push_front(i);
        }
        drop(st);
        self.mailbox.push_front_all(queued);
    }

    /// Makes `kill` the owner, firing the previous owner's switch with `displaced`; returns
    /// the new generation.
    pub(crate) fn take_ownership(&self, kill: Arc<Kill>, displaced: KillReason) -> u64 {
        let mut o = self.holder.lock();
        if let Some(old) = o.kill.replace(kill) {
            old.fire(displaced);
        }
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        drop(o);
        self.mailbox.set_online(true);
        g
    }

    /// True while a connection holds the session (between attach and detach).
    pub(super) fn is_held(&self) -> bool {
        self.holder.lock().kill.is_some()
    }

    /// Resolves once the connection holding the session has let go of it and the broker has
    /// settled what that means (the session ended or went offline); create it before checking
    /// [`Session::is_held`], or the wake-up may be missed.
    pub(super) fn let_go(&self) -> Notified<'_> {
        self.let_go.notified()
    }

    /// Wakes everyone waiting in [`Session::let_go`].
    pub(super) fn notify_let_go(&self) {
        self.let_go.notify_waiters();
    }

    /// True when a connection with this Clean Start continues the session: it asks to, and the
    /// session outlives its connections (expiry > 0) — a session with expiry 0 ends with the
    /// connection that holds it, a takeover included [MQTT-3.1.2-4, MQTT 5 §3.1.2.11.2].
    pub fn continues_with(&self, clean_start: bool) -> bool {
        !clean_start && self.expiry() > 0
    }

    /// True while the connection with this generation still owns the session.
    pub fn is_owner(&self, generation: u64) -> bool {
        self.generation.load(Ordering::SeqCst) == generation
    }

    /// Releases ownership if `generation` still holds it; returns whether it did.
    pub(crate) fn release(&self, generation: u64) -> bool {
        let mut o = self.holder.lock();
        if self.generation.load(Ordering::SeqCst) != generation {
            return false;
        }
        o.kill = None;
        self.mailbox.set_online(false);
        true
    }

    /// Current generation (changes whenever a connection takes the session).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// True when the session outlives its connection and is stored durably.
    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    /// Session expiry interval in seconds.
    pub fn expiry(&self) -> u32 {
        self.state.lock().expiry_interval
    }

    /// Sets the session expiry interval (and so whether the session is persistent); returns
    /// whether it was persistent before. Only the broker calls it: it counts persistent sessions.
    pub(super) fn set_expiry(&self, secs: u32) -> bool {
        self.state.lock().expiry_interval = secs;
        self.persistent.swap(secs > 0, Ordering::Relaxed)
    }

    /// The in-flight window, locked until the returned guard drops.
    pub fn outgoing(&self) -> Outgoing<'_> {
        Outgoing(self.state.lock())
    }

    /// The outgoing message `pkid` in `phase` was acknowledged (PUBACK, PUBCOMP) and leaves
    /// the window; returns it.
    pub(super) fn complete_outgoing(&self, pkid: u16, phase: Phase) -> Option<Inflight> {
        let mut st = self.state.lock();
        let pos = st.outgoing.position(|i| i.pkid == pkid && i.phase == phase)?;
        st.outgoing.remove(pos)
    }

    /// PUBREC for the outgoing message `pkid`; `failed` when its reason code is ≥ 0x80.
    pub(super) fn outgoing_received(&self, pkid: u16, failed: bool) -> PubRecOutcome {
        let mut st = self.state.lock();
        let Some(pos) = st.outgoing.position(|i| i.pkid == pkid && i.phase != Phase::AwaitAck) else {
            return PubRecOutcome::Unknown;
        };
        if failed {
            return st.outgoing.remove(pos).map_or(PubRecOutcome::Unknown, PubRecOutcome::Ended);
        }
        let Some(i) = st.outgoing.phase_mut(pos) else {
            return PubRecOutcome::Unknown;
        };
        i.phase = Phase::AwaitComp;
        PubRecOutcome::Release { seq: i.delivery.seq, pkid: i.pkid }
    }

    /// Forgets an incoming QoS 2 id whose PUBLISH was refused before anything was stored (the
    /// client may send it again as a new message).
    pub fn qos2_abandon(&self, pkid: u16) {
        self.state.lock().incoming_qos2.remove(&pkid);
    }

    /// Fires the owner's kill switch, if connected.
    pub fn kill(&self, reason: KillReason) {
        if let Some(k) = &self.holder.lock().kill {
            k.fire(reason);
        }
    }
}
