//! What the web console shows besides state and schemas, under `/v1`: the recent schema
//! rejections (`/v1/rejections`, those whose topic the caller may read), the sessions
//! (`/v1/clients`, admin only: client ids and key ids are not everyone's to see) and the
//! message counters (`/v1/stats`). The live stream of all of it is in `events`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use serde_json::{Value, json};

use super::api::{Api, ApiError, Json, query_param};
use super::state::rfc3339;
use crate::broker::ClientInfo;
use crate::broker::gate::recent::RecentRejection;

/// Most sessions one `/v1/clients` answer lists, and its default.
const MAX_CLIENTS: usize = 1000;
const DEFAULT_CLIENTS: usize = 100;

/// `GET /v1/rejections?after=`.
pub(super) async fn rejections(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    let after = match query_param(uri.query(), "after")? {
        None => 0,
        Some(a) => {
            a.parse::<u64>().map_err(|_| ApiError::BadRequest("after must be an integer ≥ 0".into()))?
        }
    };
    let recent = s.api.schemas.recent();
    let last = recent.last_seq();
    let items: Vec<Value> =
        recent.since(after, &|t| caller.perms.may_read(t)).iter().map(rejection).collect();
    Ok(Json(json!({ "items": items, "last": last })))
}

/// `GET /v1/clients?limit=`.
pub(super) async fn clients(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    if !caller.perms.is_admin() {
        return Err(ApiError::Forbidden("listing clients needs the admin role".into()));
    }
    let limit = match query_param(uri.query(), "limit")? {
        None => DEFAULT_CLIENTS,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_CLIENTS).contains(n))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_CLIENTS}")))?,
    };
    let (items, total) = s.broker.clients(limit);
    let items: Vec<Value> = items.iter().map(client).collect();
    Ok(Json(json!({ "items": items, "total": total })))
}

/// `GET /v1/stats`.
pub(super) async fn stats(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json, ApiError> {
    s.caller(peer, &headers).await?;
    Ok(Json(counters(&s).to_json()))
}

/// The broker-wide counters and gauges of `/v1/stats` (no topic, no client id).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    pub messages_received: u64,
    pub messages_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub connections: i64,
    pub sessions: usize,
    pub subscriptions: usize,
    pub retained: usize,
    pub schemas: usize,
    pub rejections: u64,
    pub revision: u64,
}

impl Counters {
    pub fn to_json(self) -> Value {
        json!({
            "messages_received": self.messages_received,
            "messages_sent": self.messages_sent,
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "connections": self.connections.max(0),
            "sessions": self.sessions,
            "subscriptions": self.subscriptions,
            "retained": self.retained,
            "schemas": self.schemas,
            "rejections": self.rejections,
            "revision": self.revision,
        })
    }
}

pub(super) fn counters(s: &Api) -> Counters {
    let m = crate::metrics::get();
    let sum = |c: &[prometheus::IntCounter; 3]| c.iter().map(prometheus::IntCounter::get).sum::<u64>();
    Counters {
        messages_received: sum(&m.messages_received),
        messages_sent: sum(&m.messages_sent),
        bytes_received: m.bytes_received.get(),
        bytes_sent: m.bytes_sent.get(),
        connections: m.online(),
        sessions: s.broker.session_count(),
        subscriptions: s.broker.subscription_count(),
        retained: s.broker.retained_count(),
        schemas: s.api.schemas.len(),
        rejections: s.api.schemas.recent().last_seq(),
        revision: s.broker.revision(),
    }
}

pub(super) fn rejection(r: &RecentRejection) -> Value {
    json!({
        "seq": r.seq,
        "at": rfc3339(r.unix_ms),
        "schema": &*r.filter,
        "version": r.version,
        "pointer": r.pointer,
        "error": r.what,
        "topic": &*r.topic,
        "client_id": r.client_id,
    })
}

fn client(c: &ClientInfo) -> Value {
    json!({
        "client_id": c.client_id,
        "online": c.online,
        "persistent": c.persistent,
        "subscriptions": c.subscriptions,
        "queued": c.queued,
        "owner": c.owner,
    })
}
