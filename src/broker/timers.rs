//! The timers of offline sessions (issue 13): session expiry and delayed wills. One task for
//! the whole broker sleeps until the earliest deadline; each session has at most one timer of
//! each kind, keyed by its id, and a reconnect cancels them. So a connect/disconnect loop
//! leaves nothing behind: no task per disconnect, no entry per disconnect.
//!
//! A timer still checks the session's ownership generation when it fires: a connection that
//! took the session between the deadline and the firing keeps it. Cancelling hands back a
//! pending will: a session that ends before the will's delay publishes it then.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::Broker;
use super::session::Session;
use crate::model::{Message, SessionId};

/// What a timer does when it fires. A will sorts before the expiry of the same instant: a
/// will whose delay equals the session expiry is published before the session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Will,
    Expiry,
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    session: Arc<Session>,
    generation: u64,
    will: Option<Arc<Message>>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<(SessionId, Kind), Entry>,
    order: BTreeSet<(Instant, SessionId, Kind)>,
    closed: bool,
}

/// The pending timers and the wake-up of the task that runs them.
#[derive(Debug, Default)]
pub(super) struct Timers {
    inner: Mutex<Inner>,
    wake: Notify,
}

/// A timer that fired.
enum Due {
    Will(Arc<Session>, u64, Arc<Message>),
    Expiry(Arc<Session>, u64),
}

impl Timers {
    fn set(&self, kind: Kind, entry: Entry) {
        let key = (entry.session.id, kind);
        let mut inner = self.inner.lock();
        inner.order.insert((entry.at, key.0, kind));
        if let Some(old) = inner.entries.insert(key, entry) {
            inner.order.remove(&(old.at, key.0, kind));
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// Ends `session` at `at` unless a connection takes it (generation) first.
    pub(super) fn expire_at(&self, session: &Arc<Session>, generation: u64, at: Instant) {
        let entry = Entry { at, session: session.clone(), generation, will: None };
        self.set(Kind::Expiry, entry);
    }

    /// Publishes `will` at `at` unless a connection takes the session first.
    pub(super) fn will_at(&self, session: &Arc<Session>, generation: u64, will: Arc<Message>, at: Instant) {
        let entry = Entry { at, session: session.clone(), generation, will: Some(will) };
        self.set(Kind::Will, entry);
    }

    /// Cancels every timer of `session` (it is online again, or gone); returns the will that
    /// was waiting for its delay, if any (a session that ends publishes it now).
    #[must_use = "a session that ends publishes its pending will"]
    pub(super) fn cancel(&self, session: SessionId) -> Option<Arc<Message>> {
        let mut inner = self.inner.lock();
        let mut will = None;
        for kind in [Kind::Will, Kind::Expiry] {
            if let Some(old) = inner.entries.remove(&(session, kind)) {
                inner.order.remove(&(old.at, session, kind));
                will = will.or(old.will);
            }
        }
        will
    }

    /// Timers pending (for metrics).
    pub(super) fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// Stops the task (the broker is dropped).
    pub(super) fn close(&self) {
        self.inner.lock().closed = true;
        self.wake.notify_one();
    }

    /// Removes and returns the timers due at `now`, earliest first.
    fn take_due(&self, now: Instant) -> Vec<Due> {
        let mut inner = self.inner.lock();
        let mut due = Vec::new();
        while let Some(&(at, id, kind)) = inner.order.first() {
            if at > now {
                break;
            }
            inner.order.pop_first();
            if let Some(e) = inner.entries.remove(&(id, kind)) {
                due.push(match (kind, e.will) {
                    (Kind::Will, Some(w)) => Due::Will(e.session, e.generation, w),
                    _ => Due::Expiry(e.session, e.generation),
                });
            }
        }
        due
    }

    /// The earliest deadline, or `None` when nothing waits; `Err` once closed.
    fn next(&self) -> Result<Option<Instant>, ()> {
        let inner = self.inner.lock();
        if inner.closed {
            return Err(());
        }
        Ok(inner.order.first().map(|(at, _, _)| *at))
    }
}

/// The timer task of `broker`: runs until the broker is dropped.
pub(super) async fn run(broker: Weak<Broker>, timers: Arc<Timers>) {
    loop {
        let Ok(next) = timers.next() else { return };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = timers.wake.notified() => {}
                }
            }
            None => timers.wake.notified().await,
        }
        let due = timers.take_due(Instant::now());
        if due.is_empty() {
            continue;
        }
        let Some(b) = broker.upgrade() else { return };
        for d in due {
            match d {
                Due::Will(session, generation, will) if session.generation() == generation => {
                    let _ = b.publish(will, Vec::new());
                }
                Due::Expiry(session, generation) => b.end_expired(&session, generation),
                Due::Will(..) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn session(id: u64) -> Arc<Session> {
        Arc::new(Session::new(id, Arc::from(format!("c{id}")), 10, 0, crate::model::Budget::new(0)))
    }

    #[test]
    fn one_timer_per_session_and_kind_and_cancel_removes_both() {
        let t = Timers::default();
        let (a, b) = (session(1), session(2));
        let now = Instant::now();
        for i in 0..100 {
            t.expire_at(&a, i, now + Duration::from_secs(60 + i));
        }
        t.expire_at(&b, 1, now + Duration::from_secs(5));
        t.will_at(&a, 1, Arc::new(test_message()), now + Duration::from_secs(1));
        assert_eq!(t.len(), 3, "a re-set timer replaces the old one");
        assert_eq!(t.inner.lock().order.len(), 3);
        assert!(t.cancel(a.id).is_some(), "the pending will comes back");
        assert_eq!(t.len(), 1);
        assert!(t.cancel(a.id).is_none());
        assert!(t.take_due(now + Duration::from_secs(4)).is_empty());
        let due = t.take_due(now + Duration::from_secs(5));
        assert!(matches!(due.as_slice(), [Due::Expiry(s, 1)] if s.id == b.id));
        assert_eq!((t.len(), t.inner.lock().order.len()), (0, 0));
    }

    #[test]
    fn a_will_fires_before_the_expiry_of_the_same_instant() {
        let t = Timers::default();
        let a = session(1);
        let at = Instant::now();
        t.expire_at(&a, 1, at);
        t.will_at(&a, 1, Arc::new(test_message()), at);
        let due = t.take_due(at);
        assert!(matches!(due.as_slice(), [Due::Will(..), Due::Expiry(..)]));
    }

    fn test_message() -> Message {
        Message {
            topic: Arc::from("w"),
            topic_bytes: bytes::Bytes::from_static(b"w"),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: dataloom_codec::QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
            charge: Default::default(),
            stamp: crate::model::Stamp::default(),
        }
    }
}
