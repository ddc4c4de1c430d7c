//! A session as the broker keeps it: identity, mailbox, the state that survives reconnects
//! (subscriptions, in-flight messages, unreleased QoS 2 ids) and which connection owns it.
//!
//! A connection owns a session by generation number; a newer connection (takeover) bumps the
//! generation and fires the old connection's [`Kill`] switch, so a stale connection can tell it
//! must not touch the session any more.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::mailbox::Mailbox;
use crate::model::{Delivery, Kill, KillReason, SessionId, SubOptions};

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The part of a session that outlives its network connections.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Subscriptions by the filter as the client wrote it (including `$share/g/`).
    pub subscriptions: HashMap<String, SubOptions>,
    /// Outgoing QoS 1/2 messages in send order.
    pub outgoing: VecDeque<Inflight>,
    /// Incoming QoS 2 packet ids received but not yet released by PUBREL.
    pub incoming_qos2: HashSet<u16>,
    /// Last packet id used for an outgoing message.
    pub last_pkid: u16,
    /// Session expiry interval in seconds (0: ends with the connection, `u32::MAX`: never).
    pub expiry_interval: u32,
}

impl SessionState {
    /// Next free packet identifier (1..=65535, skipping those in flight), or `None` if all are used.
    pub fn next_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            let id = self.last_pkid;
            if !self.outgoing.iter().any(|i| i.pkid == id) {
                return Some(id);
            }
        }
        None
    }
}

/// The connection that currently owns a session.
#[derive(Debug, Default)]
struct Owner {
    kill: Option<Arc<Kill>>,
}

/// A client session shared between the broker (routing) and its connection task.
#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub client_id: Arc<str>,
    pub mailbox: Mailbox,
    pub state: Mutex<SessionState>,
    generation: AtomicU64,
    owner: Mutex<Owner>,
    /// Session expiry > 0: its state and QoS 1/2 queue are stored durably.
    persistent: AtomicBool,
}

impl Session {
    pub(crate) fn new(id: SessionId, client_id: Arc<str>, queue_limit: usize, queue_bytes: usize) -> Session {
        Session {
            id,
            client_id,
            mailbox: Mailbox::new(queue_limit, queue_bytes),
            state: Mutex::new(SessionState::default()),
            generation: AtomicU64::new(0),
            owner: Mutex::new(Owner::default()),
            persistent: AtomicBool::new(false),
        }
    }

    /// Makes `kill` the owner, firing the previous owner's switch; returns the new generation.
    pub(crate) fn take_ownership(&self, kill: Arc<Kill>) -> u64 {
        let mut o = self.owner.lock();
        if let Some(old) = o.kill.replace(kill) {
            old.fire(KillReason::TakenOver);
        }
        let g = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        drop(o);
        self.mailbox.set_online(true);
        g
    }

    /// True while the connection with this generation still owns the session.
    pub fn is_owner(&self, generation: u64) -> bool {
        self.generation.load(Ordering::SeqCst) == generation
    }

    /// Releases ownership if `generation` still holds it; returns whether it did.
    pub(crate) fn release(&self, generation: u64) -> bool {
        let mut o = self.owner.lock();
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

    /// Sets the session expiry interval (and so whether the session is persistent).
    pub fn set_expiry(&self, secs: u32) {
        self.state.lock().expiry_interval = secs;
        self.persistent.store(secs > 0, Ordering::Relaxed);
    }

    /// Fires the owner's kill switch, if connected.
    pub fn kill(&self, reason: KillReason) {
        if let Some(k) = &self.owner.lock().kill {
            k.fire(reason);
        }
    }
}
