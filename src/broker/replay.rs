//! MQTT 5 replay (issue 17): a subscription that asks for history (`replay` = `last:<N>` or
//! `since:<RFC 3339>`) gets the matching entries from the store in revision order, then the
//! live stream, with no gap and no duplicate at the seam.
//!
//! The subscription enters the trie with a [`ReplayGate`] that holds back every live message
//! that keeps history; those are all in the store, so the replay task reads them from there.
//! It streams the store a chunk at a time, waiting for the subscriber's queue to drain below
//! half its limit before each chunk, so replaying a million entries holds one chunk, not the
//! million. Once it has read everything the store had, it takes the history order lock (no
//! entry can take a revision meanwhile), checks that every revision given out is readable,
//! queues the last few entries and opens the gate at that revision: from then on live
//! messages with a later revision pass, and every earlier one came from the store.
//!
//! Replayed messages have RETAIN=0 and the User Property `replayed` = the entry's time
//! (RFC 3339). Only topics the session may read are replayed. A replay is not stored: if the
//! client goes away meanwhile, it stops and the subscription goes live.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use super::Broker;
use super::session::Session;
use crate::model::{Delivery, Message, SubOptions};
use crate::store::{HistoryChunk, StoreError};
use dataloom_codec::topic;

/// Entries read from the store and queued at once.
const CHUNK: usize = 256;

/// The User Property a replayed message carries, with the entry's time.
pub const REPLAYED_PROPERTY: &str = "replayed";

/// Holds back live history messages of a replaying subscription (see the module header).
#[derive(Debug)]
pub struct ReplayGate {
    /// Live messages with a higher revision pass; `u64::MAX` while replaying.
    live_after: AtomicU64,
}

impl ReplayGate {
    fn new() -> Arc<ReplayGate> {
        Arc::new(ReplayGate { live_after: AtomicU64::new(u64::MAX) })
    }

    /// True when a live message with `revision` (0: it keeps no history) is delivered.
    pub fn passes(&self, revision: u64) -> bool {
        revision == 0 || revision > self.live_after.load(Ordering::Acquire)
    }

    fn open(&self, after: u64) {
        self.live_after.store(after, Ordering::Release);
    }

    fn is_open(&self) -> bool {
        self.live_after.load(Ordering::Acquire) != u64::MAX
    }
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The newest N matching entries.
    Last(usize),
    /// Entries from this time on, UNIX milliseconds.
    Since(u64),
}

impl ReplayFrom {
    /// Parses the value of the User Property `replay`: `last:<N>` or `since:<RFC 3339>`.
    ///
    /// # Errors
    /// What is expected, for the SUBACK's reason string.
    pub fn parse(v: &str) -> Result<ReplayFrom, String> {
        if let Some(n) = v.strip_prefix("last:") {
            return n
                .trim()
                .parse()
                .map(ReplayFrom::Last)
                .map_err(|_| format!("replay {v:?}: N must be a number"));
        }
        if let Some(t) = v.strip_prefix("since:") {
            let at = crate::config::parse_time(t.trim())?;
            let ms =
                at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            return Ok(ReplayFrom::Since(ms));
        }
        Err(format!("replay {v:?}: expected last:<N> or since:<RFC 3339 time>"))
    }
}

/// A replay to start once the SUBSCRIBE is answered.
#[derive(Debug)]
pub struct Replay {
    session: Arc<Session>,
    filter: Arc<str>,
    opts: SubOptions,
    gate: Arc<ReplayGate>,
    from: ReplayFrom,
}

impl Replay {
    /// A replay of `filter` for `session`, and the gate its subscription enters the trie with.
    pub(super) fn new(session: &Arc<Session>, filter: &str, opts: SubOptions, from: ReplayFrom) -> Replay {
        Replay { session: session.clone(), filter: filter.into(), opts, gate: ReplayGate::new(), from }
    }

    pub(super) fn gate(&self) -> Arc<ReplayGate> {
        self.gate.clone()
    }
}

/// The entry's time as RFC 3339 with milliseconds.
pub fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

impl Broker {
    /// Starts `replays` (each in its own task).
    pub fn start_replays(self: &Arc<Self>, replays: Vec<Replay>) {
        for r in replays {
            let broker = self.clone();
            tokio::spawn(async move {
                if let Err(e) = broker.replay(&r).await {
                    tracing::warn!(filter = %r.filter, error = %e, "replay stopped");
                }
                if !r.gate.is_open() {
                    let last = broker.history.get().map_or(0, |h| h.order().last);
                    r.gate.open(last);
                }
            });
        }
    }

    async fn replay(self: &Arc<Self>, r: &Replay) -> Result<(), StoreError> {
        let Some(mut written) = self.store.history_watch() else { return Ok(()) };
        let want = readable(r);
        let mut from = {
            let (store, want, from) = (self.store.clone(), want.clone(), r.from);
            let literal = (!r.filter.contains(['+', '#'])).then(|| r.filter.clone());
            blocking(move || match from {
                ReplayFrom::Last(n) => store.history_last(n, literal.as_deref(), &*want),
                ReplayFrom::Since(ms) => store.history_start_at(ms),
            })
            .await?
        };
        loop {
            if !r.session.mailbox.is_online() {
                return Ok(());
            }
            let upto = *written.borrow_and_update();
            while from <= upto {
                let (store, want) = (self.store.clone(), want.clone());
                let chunk = blocking(move || store.history_scan(from, upto, CHUNK, &*want)).await?;
                from = chunk.next.unwrap_or(upto + 1);
                if !self.queue_paced(r, chunk).await {
                    return Ok(());
                }
            }
            if self.switch_to_live(r, from, &*want)? {
                return Ok(());
            }
            // Entries were given revisions that are not readable yet: wait for the writer.
            let _ = tokio::time::timeout(Duration::from_secs(1), written.changed()).await;
        }
    }

    /// Under the history order lock: when every revision given out is readable, queues the
    /// entries from `from` on and opens the gate. False when some are not written yet.
    fn switch_to_live(&self, r: &Replay, from: u64, want: &dyn Fn(&str) -> bool) -> Result<bool, StoreError> {
        let Some(history) = self.history.get() else { return Ok(true) };
        let clock = history.order();
        let last = clock.last;
        let readable = self.store.history_watch().is_some_and(|w| *w.borrow() >= last);
        if !readable {
            return Ok(false);
        }
        let mut from = from;
        while from <= last {
            let chunk = self.store.history_scan(from, last, CHUNK, want)?;
            from = chunk.next.unwrap_or(last.saturating_add(1));
            let ds: Vec<Delivery> = chunk.entries.iter().map(|m| self.replayed(m, r.opts)).collect();
            r.session.mailbox.push_all_unbounded(ds);
        }
        r.gate.open(last);
        drop(clock);
        Ok(true)
    }

    /// Queues `chunk` once the subscriber's queue is below half its limit; false when the
    /// client went away.
    async fn queue_paced(&self, r: &Replay, chunk: HistoryChunk) -> bool {
        let half = (self.limits.max_queued_messages / 2).max(1);
        while r.session.mailbox.len() >= half {
            if !r.session.mailbox.is_online() {
                return false;
            }
            r.session.mailbox.below(half, Duration::from_millis(100)).await;
        }
        let ds: Vec<Delivery> = chunk.entries.iter().map(|m| self.replayed(m, r.opts)).collect();
        r.session.mailbox.push_all_unbounded(ds);
        true
    }

    /// The delivery of a replayed entry: RETAIN=0, User Property `replayed` = its time.
    fn replayed(&self, m: &Arc<Message>, opts: SubOptions) -> Delivery {
        let mut msg = Message::clone(m);
        msg.retain = false;
        msg.properties.user_properties.push((REPLAYED_PROPERTY.into(), rfc3339(m.stamp.unix_ms)));
        Delivery {
            qos: m.qos.min(opts.qos),
            msg: Arc::new(msg.charged(&self.memory)),
            retain: false,
            sub_ids: opts.sub_id.into_iter().collect(),
            seq: None,
            share: None,
            snapshot: false,
        }
    }
}

/// The topics a replay sends: matching its filter and readable by its session.
fn readable(r: &Replay) -> Arc<dyn Fn(&str) -> bool + Send + Sync> {
    let (filter, session) = (r.filter.clone(), r.session.clone());
    Arc::new(move |t: &str| topic::matches(&filter, t) && session.may_read(t))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(StoreError::Poisoned("history read task panicked".into())))
}
