//! `GET /v1/events`: the web console's live feed as server-sent events, under the caller's
//! permissions. The stream subscribes a [`Watch`] to `filter` (default `#`) and to
//! `$schema/#` (when the caller may read them) and sends:
//!
//! - `ready` first, once the watch is in place: the client then reads the current state
//!   (`/v1/state`), so no change falls between the snapshot and the stream;
//! - `state`: a topic's current state (an `Item`, with its schema badge) or
//!   `{"topic", "deleted": true, "revision"}`; changes that come together are merged per topic;
//! - `schema`: `{"topic"}` of a registration or removal (the client reads `/v1/schemas`);
//! - `rejection`: each new recent schema rejection whose topic the caller may read;
//! - `stats`: every [`TICK`], the counters of `/v1/stats` and message rates per second;
//! - `resync`: the watch's bounded queue overflowed (the client fell behind) and changes
//!   were lost: read the state again.
//!
//! Bounds: the watch's queue is a session mailbox (`mqtt.max_queued_messages`, charged to
//! `limits.max_memory`), the stream holds at most one drained batch ([`BATCH`]), and at most
//! [`MAX_STREAMS`] streams are open at once (then 503). Streams end when the broker shuts down.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::api::{Api, ApiError};
use super::live::{Counters, counters, rejection};
use super::state::item_of;
use crate::auth::Perms;
use crate::broker::Watch;
use crate::schema::filter::SCHEMA_PREFIX;

/// Streams open at once, over all callers.
pub const MAX_STREAMS: usize = 32;
/// Deliveries taken from the watch per step.
const BATCH: usize = 256;
/// How often `stats` (and new rejections) are sent.
const TICK: Duration = Duration::from_secs(1);

/// What the stream handler needs besides the API state.
#[derive(Debug, Clone)]
pub(super) struct Streams {
    pub slots: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
}

/// `GET /v1/events?filter=`.
pub(super) async fn events(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    let filter = s.read_filter(&caller, uri.query())?;
    let streams = s.streams.clone();
    let permit = streams.slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(format!("{MAX_STREAMS} event streams are open already: try again later"))
    })?;
    let mut filters = vec![filter];
    let schemas = format!("{SCHEMA_PREFIX}#");
    if caller.perms.may_subscribe(&schemas) && !filters.contains(&schemas) {
        filters.push(schemas);
    }
    let perms = Arc::new(caller.perms);
    let watch = s.broker.watch(&filters, perms.clone());
    let feed = Feed::new(s, watch, perms, streams.shutdown, permit);
    let stream = futures_util::stream::unfold(feed, Feed::next);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// One open stream.
struct Feed {
    api: Api,
    watch: Watch,
    perms: Arc<Perms>,
    shutdown: watch::Receiver<bool>,
    pending: VecDeque<Event>,
    tick: tokio::time::Interval,
    last_rejection: u64,
    last_dropped: u64,
    last: (Counters, Instant),
    _slot: OwnedSemaphorePermit,
}

enum Wake {
    Arrived,
    Tick,
    Shutdown,
}

impl Feed {
    fn new(
        api: Api,
        watch: Watch,
        perms: Arc<Perms>,
        shutdown: watch::Receiver<bool>,
        slot: OwnedSemaphorePermit,
    ) -> Feed {
        let now = counters(&api);
        let ready = json!({ "revision": now.revision, "rejections": now.rejections });
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Feed {
            last_rejection: api.api.schemas.recent().last_seq(),
            last_dropped: watch.dropped(),
            last: (now, Instant::now()),
            pending: VecDeque::from([event("ready", &ready)]),
            api,
            watch,
            perms,
            shutdown,
            tick,
            _slot: slot,
        }
    }

    /// The next event, or `None` once the broker shuts down.
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Feed)> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some((Ok(e), self));
            }
            if *self.shutdown.borrow() {
                return None;
            }
            self.take_changes();
            if !self.pending.is_empty() {
                continue;
            }
            let wake = tokio::select! {
                () = self.watch.arrived() => Wake::Arrived,
                _ = self.tick.tick() => Wake::Tick,
                r = self.shutdown.changed() => if r.is_err() { Wake::Shutdown } else { continue },
            };
            match wake {
                Wake::Arrived => {}
                Wake::Tick => self.on_tick(),
                Wake::Shutdown => return None,
            }
        }
    }

    /// Drains one batch of deliveries into `state` / `schema` events, one per topic, and a
    /// `resync` when the watch lost deliveries since the last look.
    fn take_changes(&mut self) {
        let mut batch = Vec::new();
        self.watch.drain_into(&mut batch, BATCH);
        let dropped = self.watch.dropped();
        if dropped != self.last_dropped {
            self.last_dropped = dropped;
            self.pending.push_back(event("resync", &json!({ "lost": dropped })));
        }
        let mut seen = HashSet::new();
        for d in batch.iter().filter(|d| d.retain) {
            let topic = d.msg.topic.clone();
            if !seen.insert(topic.clone()) {
                continue;
            }
            if topic.starts_with(SCHEMA_PREFIX) {
                self.pending.push_back(event("schema", &json!({ "topic": &*topic })));
                continue;
            }
            let body = match self.api.broker.state_of(&topic) {
                (Some(m), _) => item_of(&self.api, &m),
                (None, revision) => json!({ "topic": &*topic, "deleted": true, "revision": revision }),
            };
            self.pending.push_back(event("state", &body));
        }
    }

    /// New rejections the caller may read, then the counters and rates.
    fn on_tick(&mut self) {
        let perms = self.perms.clone();
        let log = self.api.api.schemas.recent();
        let last = log.last_seq();
        let recent = log.since(self.last_rejection, &|t| perms.may_read(t));
        self.last_rejection = last.max(self.last_rejection);
        for r in recent.iter().filter(|r| r.seq <= last) {
            self.pending.push_back(event("rejection", &rejection(r)));
        }
        let now = (counters(&self.api), Instant::now());
        let secs = now.1.duration_since(self.last.1).as_secs_f64().max(0.001);
        let rate = |a: u64, b: u64| ((a.saturating_sub(b)) as f64 / secs * 10.0).round() / 10.0;
        let mut body = now.0.to_json();
        body["rates"] = json!({
            "messages_received": rate(now.0.messages_received, self.last.0.messages_received),
            "messages_sent": rate(now.0.messages_sent, self.last.0.messages_sent),
        });
        self.last = now;
        self.pending.push_back(event("stats", &body));
    }
}

fn event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}
