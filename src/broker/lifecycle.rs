//! A session's life (issues 13, 15): a connection attaches to it (new, resumed or taken over;
//! only by the identity that created it unless `auth.session_takeover = "any_key"`; a takeover
//! waits until the old connection let go), detaches from it (it ends at once, or goes offline:
//! its offline time is stored and its expiry timer set), and expiry ends it. A session that
//! ends publishes a will still waiting for its delay. A session that goes offline or ends
//! hands its shared-subscription messages to another member of their group (`share`). Expiry
//! intervals are capped by `mqtt.persistent_session_expiry`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::session::Session;
use super::share::Leaving;
use super::{Attached, Broker, session_record};
use crate::config::SessionTakeover;
use crate::model::{Kill, KillReason, Message, ReadAccess, SessionOwner};
use crate::store::{Commit, Op};

/// How long [`Broker::attach`] waits for the connection that holds the session to let go
/// before it takes the session regardless (that connection is stuck).
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// What a connection asks of [`Broker::attach`].
#[derive(Debug, Clone)]
pub struct AttachRequest<'a> {
    /// The client id.
    pub client_id: &'a str,
    /// Clean start (3.1.1: clean session): drop any existing session.
    pub clean_start: bool,
    /// The session expiry interval asked for, seconds (`u32::MAX`: never); capped by
    /// `mqtt.persistent_session_expiry`.
    pub expiry: u32,
    /// Who connects.
    pub identity: SessionOwner,
    /// Whether another identity may take the session over.
    pub takeover: SessionTakeover,
    /// What the connection may read (`None`: everything); shared subscriptions pick only
    /// members that may read the message.
    pub read: Option<Arc<dyn ReadAccess>>,
}

/// Why [`Broker::attach`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttachError {
    /// The client id names a session another identity created (`auth.session_takeover =
    /// "same_key"`); the session and its connection are left alone.
    #[error("the session of this client id belongs to {owner}")]
    ForeignSession {
        /// The identity that created the session.
        owner: SessionOwner,
    },
}

/// What one attempt of [`Broker::attach`] found.
enum Attempt {
    Attached(Attached),
    /// A connection holds the session.
    Held(Arc<Session>),
}

/// Wall clock, UNIX milliseconds.
pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Time left of a session with `expiry` seconds that went offline at `since` (UNIX ms):
/// `Some(None)` never expires, `None` has expired.
pub(super) fn time_left(expiry: u32, since: u64, now: u64) -> Option<Option<Duration>> {
    if expiry == u32::MAX {
        return Some(None);
    }
    let total = u64::from(expiry) * 1000;
    let gone = now.saturating_sub(since);
    (gone < total).then(|| Some(Duration::from_millis(total - gone)))
}

impl Broker {
    /// `expiry` limited by `mqtt.persistent_session_expiry`.
    pub fn cap_expiry(&self, expiry: u32) -> u32 {
        self.limits.persistent_session_expiry.map_or(expiry, |cap| expiry.min(cap))
    }

    /// Attaches a connection to the session of `req.client_id`, in the order of MQTT 5 §3.1.4:
    /// a connection that holds the session is told to let go ([`KillReason::TakenOver`]) and
    /// this waits — at most 2 s (`TAKEOVER_WAIT`), then takes the session regardless — until it
    /// has handled what its client already sent (a DISCONNECT among it), decided its will and
    /// detached; then the session is resumed if it continues ([`Session::continues_with`]),
    /// or ended and replaced by a new one.
    ///
    /// # Errors
    /// [`AttachError::ForeignSession`] when the session belongs to another identity and
    /// takeover is `same_key`: nothing changed, its connection was not disturbed.
    pub async fn attach(&self, req: &AttachRequest<'_>, kill: Arc<Kill>) -> Result<Attached, AttachError> {
        let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
        let displaced = KillReason::TakenOver { clean_start: req.clean_start };
        loop {
            let force = tokio::time::Instant::now() >= deadline;
            let held = match self.try_attach(req, &kill, displaced, force)? {
                Attempt::Attached(attached) => return Ok(attached),
                Attempt::Held(held) => held,
            };
            let let_go = held.let_go();
            held.kill(displaced);
            if held.is_held() {
                let _ = tokio::time::timeout_at(deadline, let_go).await;
            }
        }
    }

    /// One attempt of [`Broker::attach`]; unless `force`, a session a connection holds is
    /// left as it is. A connection that still holds it is told `displaced`.
    fn try_attach(
        &self,
        req: &AttachRequest<'_>,
        kill: &Arc<Kill>,
        displaced: KillReason,
        force: bool,
    ) -> Result<Attempt, AttachError> {
        let expiry = self.cap_expiry(req.expiry);
        let mut ops = Vec::new();
        let mut map = self.sessions.lock();
        let existing = map.get(req.client_id).cloned();
        if let Some(s) = &existing {
            if req.takeover == SessionTakeover::SameKey
                && let Some(owner) = s.owner().filter(|o| *o != req.identity)
            {
                return Err(AttachError::ForeignSession { owner });
            }
            if !force && s.is_held() {
                return Ok(Attempt::Held(s.clone()));
            }
        }
        let mut replaced = None;
        let (session, present) = match existing {
            Some(s) if s.continues_with(req.clean_start) => (s, true),
            other => {
                if let Some(old) = other {
                    // Its connection (if it still holds it) is told why; timers and a late
                    // detach see the new generation and leave it alone.
                    old.take_ownership(Arc::new(Kill::default()), displaced);
                    map.remove(req.client_id);
                    let will = self.timers.cancel(old.id);
                    if old.is_persistent() {
                        self.note_persistence(true, false);
                        ops.push(Op::DeleteSession(old.client_id.clone()));
                    }
                    self.drop_subscriptions(&old);
                    replaced = Some((old, will));
                }
                let s = self.new_session(Arc::from(req.client_id));
                map.insert(s.client_id.clone(), s.clone());
                (s, false)
            }
        };
        session.set_reader(req.read.clone());
        // Under the map lock: an expiry timer firing now sees the new generation and leaves
        // the session alone (see `end_expired`).
        let generation = session.take_ownership(kill.clone(), displaced);
        drop(map);
        if let Some((old, will)) = replaced {
            // The old session ended: a will still waiting for its delay goes out now
            // [MQTT 5 §3.1.3.2.2].
            if let Some(will) = will {
                let _ = self.publish(will, Vec::new());
            }
            // Submitted before the old session's deletion: its shared messages are stored
            // with their new holders first.
            self.hand_over_shared(&old, Leaving::Ending);
        }
        // Resumed before its will's delay or its expiry: both are cancelled.
        let _ = self.timers.cancel(session.id);
        session.resume(&req.identity);
        let was_persistent = self.set_session_expiry(&session, expiry);
        if expiry > 0 {
            ops.push(Op::PutSession(session_record(&session)));
        } else if was_persistent {
            ops.push(Op::DeleteSession(session.client_id.clone()));
        }
        let commit = self.submit(ops, true);
        let queued_before = self.next_seq.load(std::sync::atomic::Ordering::Relaxed);
        Ok(Attempt::Attached(Attached { session, present, generation, commit, expiry, queued_before }))
    }

    /// Records a new session expiry interval (v5 DISCONNECT may change it), capped by
    /// `mqtt.persistent_session_expiry`.
    pub fn set_expiry(&self, session: &Session, expiry: u32) -> Commit {
        let expiry = self.cap_expiry(expiry);
        let was = self.set_session_expiry(session, expiry);
        let op = match (was, expiry > 0) {
            (_, true) => Op::PutSession(session_record(session)),
            (true, false) => Op::DeleteSession(session.client_id.clone()),
            (false, false) => return Commit::done(),
        };
        self.submit(vec![op], true)
    }

    /// Detaches the connection of `generation`; the session ends now when its expiry is 0, or
    /// goes offline: the time is stored and it ends after that many seconds (`u32::MAX`:
    /// never) unless a connection takes it first.
    pub fn detach(&self, session: &Arc<Session>, generation: u64) {
        if !session.release(generation) {
            return;
        }
        self.leave(session, generation);
        // A connection waiting in `attach` finds the session ended or offline, not between.
        session.notify_let_go();
    }

    /// The part of [`Broker::detach`] after the release.
    fn leave(&self, session: &Arc<Session>, generation: u64) {
        let secs = session.expiry();
        if secs == 0 {
            self.end_session(session);
            return;
        }
        {
            // Under the state lock and only while still released by this generation: a
            // connection that takes the session stores its record after this one.
            let mut st = session.state.lock();
            if session.generation() != generation {
                return;
            }
            st.offline_since = Some(unix_ms());
            drop(st);
            let _ = self.submit(vec![Op::PutSession(session_record(session))], false);
        }
        self.hand_over_shared(session, Leaving::Offline);
        if secs != u32::MAX {
            self.expire_in(session, generation, Duration::from_secs(u64::from(secs)));
        }
    }

    /// Sets the expiry timer of the offline `session`.
    pub(super) fn expire_in(&self, session: &Arc<Session>, generation: u64, left: Duration) {
        if let Some(at) = Instant::now().checked_add(left) {
            self.timers.expire_at(session, generation, at);
        }
    }

    /// Publishes `will` after `delay` unless a connection takes the session first.
    pub fn schedule_will(
        &self,
        session: &Arc<Session>,
        generation: u64,
        will: Arc<Message>,
        delay: Duration,
    ) {
        if delay.is_zero() {
            let _ = self.publish(will, Vec::new());
            return;
        }
        if let Some(at) = Instant::now().checked_add(delay) {
            self.timers.will_at(session, generation, will, at);
        }
    }

    /// The expiry timer of `session` (set when `generation` left it) fired: ends it unless a
    /// connection took it since.
    pub(super) fn end_expired(&self, session: &Arc<Session>, generation: u64) {
        self.end_session_of(session, Some(generation));
    }

    /// Removes a session, its subscriptions, its timers and its stored state, if it is still
    /// the one registered.
    pub(super) fn end_session(&self, session: &Arc<Session>) {
        self.end_session_of(session, None);
    }

    /// [`Broker::end_session`], only while `generation` (when given) is still the session's:
    /// checked under the sessions lock, under which [`Broker::attach`] takes sessions.
    fn end_session_of(&self, session: &Arc<Session>, generation: Option<u64>) {
        let mut map = self.sessions.lock();
        if generation.is_some_and(|g| g != session.generation()) {
            return;
        }
        if map.get(&session.client_id).is_some_and(|s| Arc::ptr_eq(s, session)) {
            map.remove(&session.client_id);
            if session.is_persistent() {
                self.note_persistence(true, false);
            }
        }
        // Under the map lock, as `attach` replaces a session: a connection that attaches next
        // finds no subscription of it left, and nothing is routed to it from here on.
        self.drop_subscriptions(session);
        drop(map);
        // A will still waiting for its delay goes out when the session ends [MQTT 5 §3.1.3.2.2].
        if let Some(will) = self.timers.cancel(session.id) {
            let _ = self.publish(will, Vec::new());
        }
        self.hand_over_shared(session, Leaving::Ending);
        if session.is_persistent() {
            let _ = self.submit(vec![Op::DeleteSession(session.client_id.clone())], false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_counts_from_the_offline_time() {
        assert_eq!(time_left(u32::MAX, 0, u64::MAX), Some(None), "never expires");
        assert_eq!(time_left(2, 1_000, 1_500), Some(Some(Duration::from_millis(1_500))));
        assert_eq!(time_left(2, 1_000, 3_000), None, "expired exactly at the deadline");
        assert_eq!(time_left(2, 1_000, 900_000), None);
        assert_eq!(time_left(60, 5_000, 1_000), Some(Some(Duration::from_secs(60))), "clock went back");
    }
}
