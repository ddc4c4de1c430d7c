//! Rebuilding the broker from the store at start: the retained index, and every persistent
//! session with its subscriptions, queued and in-flight messages and QoS 2 receive state.
//! Restored sessions are offline. Their expiry counts from the offline time in their record
//! (capped by `mqtt.persistent_session_expiry`): one whose expiry passed while the broker was
//! down is deleted, the others end after the time they have left. A session that was online
//! when the broker stopped (or whose record predates offline times) went offline at this start;
//! that time is stored, so a crash loop does not keep it alive forever.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::lifecycle::{time_left, unix_ms};
use super::session::{Inflight, Phase};
use super::{Broker, SubEntry, session_record};
use crate::model::Message;
use crate::store::{Op, Recovered, RecoveredSession};
use dataloom_codec::QoS;

impl Broker {
    /// Loads what the store recovered into the (empty) broker.
    pub(super) fn restore(self: &Arc<Self>, rec: Recovered) {
        let started = std::time::Instant::now();
        let retained = rec.retained.len();
        {
            let mut tree = self.retained.write();
            for mut m in rec.retained {
                self.charge_recovered(&mut m);
                let topic = m.topic.clone();
                crate::metrics::get().retained_replaced(0, m.payload.len());
                self.expiring.lock().note(&m);
                tree.set(&topic, m);
            }
        }
        let sessions = rec.sessions.len();
        let mut max_seq = 0;
        let mut expired = 0;
        let now = unix_ms();
        for s in rec.sessions {
            max_seq = max_seq.max(s.queue.iter().map(|m| m.seq).max().unwrap_or(0));
            if !self.restore_session(s, now) {
                expired += 1;
            }
        }
        self.next_seq.store(max_seq + 1, Ordering::Relaxed);
        if retained + sessions > 0 {
            tracing::info!(
                retained,
                sessions = sessions - expired,
                expired_sessions = expired,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "state recovered"
            );
        }
    }

    /// Charges a message read from the store to the memory account (it is not shared yet).
    fn charge_recovered(&self, m: &mut Arc<Message>) {
        if let Some(m) = Arc::get_mut(m) {
            m.charge = self.memory.charge(m.footprint());
        }
    }

    /// Restores one session, or deletes it when its expiry passed at `now` (UNIX ms); returns
    /// whether it was restored.
    fn restore_session(self: &Arc<Self>, rs: RecoveredSession, now: u64) -> bool {
        let expiry = self.cap_expiry(rs.record.expiry);
        let since = rs.record.offline_since.unwrap_or(now);
        let Some(left) = time_left(expiry, since, now) else {
            let _ = self.submit(vec![Op::DeleteSession(rs.record.client_id.clone())], false);
            return false;
        };
        let rewrite = rs.record.offline_since.is_none() || expiry != rs.record.expiry;
        let session = self.new_session(rs.record.client_id.clone());
        self.set_session_expiry(&session, expiry);
        {
            let mut st = session.state.lock();
            st.owner = rs.record.owner.clone();
            st.offline_since = Some(since);
            st.incoming_qos2.extend(rs.incoming_qos2);
            for (filter, opts) in &rs.record.subscriptions {
                st.subscriptions.insert(filter.clone(), *opts);
            }
        }
        {
            let mut subs = self.subs.write();
            for (filter, opts) in rs.record.subscriptions {
                let shared = filter.strip_prefix("$share/").and_then(|r| r.split_once('/'));
                let share = shared.map(|_| Arc::from(filter.as_str()));
                let entry = SubEntry { session: session.clone(), opts, share, replay: None };
                match shared {
                    Some((group, plain)) => subs.insert_shared(group, plain, session.id, entry),
                    None => subs.insert(&filter, session.id, entry),
                };
            }
        }
        let mut queued = Vec::new();
        {
            let mut st = session.state.lock();
            for mut m in rs.queue {
                self.charge_recovered(&mut m.delivery.msg);
                match m.inflight {
                    Some((pkid, released)) => {
                        let phase = match (m.delivery.qos, released) {
                            (_, true) => Phase::AwaitComp,
                            (QoS::ExactlyOnce, false) => Phase::AwaitRec,
                            _ => Phase::AwaitAck,
                        };
                        st.last_pkid = st.last_pkid.max(pkid);
                        st.outgoing.push_back(Inflight { pkid, delivery: m.delivery, phase });
                    }
                    None => queued.push(m.delivery),
                }
            }
        }
        session.mailbox.push_all_unbounded(queued);
        self.sessions.lock().insert(session.client_id.clone(), session.clone());
        if rewrite {
            let _ = self.submit(vec![Op::PutSession(session_record(&session))], false);
        }
        if let Some(left) = left {
            self.expire_in(&session, session.generation(), left);
        }
        true
    }
}
