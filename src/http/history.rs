//! `/v1/history`: the history of one topic, or of every topic under a filter in revision
//! order, a page at a time (issue 17). Reading takes the key's subscribe permission, as for
//! `/v1/state`; entries of topics the key may not read are never listed. `since` and `until`
//! take a revision or an RFC 3339 time; `cursor` is the `next_cursor` of the previous page.
//! The store examines a bounded number of entries per page (see `store::history`), so a page
//! may hold fewer than `limit` items and still have a `next_cursor`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Uri};
use serde_json::{Value, json};

use super::api::{Api, ApiError, Json, path_param, query_param};
use super::state::{item_value, rfc3339};
use crate::model::Message;
use crate::store::{HistoryChunk, Store, StoreError};
use dataloom_codec::topic;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The revision range and page size a request asks for.
struct Range {
    from: u64,
    until: u64,
    limit: usize,
}

/// `GET /v1/history?filter=&since=&until=&limit=&cursor=`: entries of every readable topic
/// under `filter`, in revision order.
pub(super) async fn list(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    let query = query_owned(uri.query());
    let filter = s.read_filter(&caller, query.as_deref())?;
    let store = s.broker.store().clone();
    let perms = caller.perms;
    let chunk = read(move || {
        let r = range(&*store, query)?;
        let want = |t: &str| topic::matches(&filter, t) && perms.may_read(t);
        Ok(store.history_scan(r.from, r.until, r.limit, &want)?)
    })
    .await?;
    Ok(page(&chunk))
}

/// `GET /v1/history/{topic}?since=&until=&limit=&cursor=`.
pub(super) async fn of_topic(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    topic: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    let name = path_param(topic)?;
    topic::validate_topic_name(&name, s.api.max_topic_levels)
        .map_err(|e| ApiError::BadRequest(format!("topic {name:?}: {e}")))?;
    if !caller.perms.may_read(&name) {
        crate::auth::count_denial(crate::auth::action::SUBSCRIBE);
        return Err(ApiError::Forbidden(format!("this key may not read {name}")));
    }
    let store = s.broker.store().clone();
    let query = query_owned(uri.query());
    let chunk = read(move || {
        let r = range(&*store, query)?;
        Ok(store.history_of(&name, r.from, r.until, r.limit)?)
    })
    .await?;
    Ok(page(&chunk))
}

fn query_owned(q: Option<&str>) -> Option<String> {
    q.map(str::to_owned)
}

/// Runs a store read off the async threads.
async fn read(
    f: impl FnOnce() -> Result<HistoryChunk, ApiError> + Send + 'static,
) -> Result<HistoryChunk, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(ApiError::Unavailable("history read failed".into())))
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::Unavailable(e.to_string())
    }
}

/// `since`, `until`, `limit` and `cursor` as a revision range.
fn range(store: &dyn Store, query: Option<String>) -> Result<Range, ApiError> {
    let q = query.as_deref();
    let limit = match query_param(q, "limit")? {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_LIMIT}")))?,
    };
    let mut from = match query_param(q, "since")? {
        None => 0,
        Some(v) => match bound(&v, "since")? {
            Bound::Revision(r) => r,
            Bound::Time(ms) => store.history_start_at(ms)?,
        },
    };
    let until = match query_param(q, "until")? {
        None => u64::MAX,
        Some(v) => match bound(&v, "until")? {
            Bound::Revision(r) => r,
            Bound::Time(ms) => store.history_start_at(ms.saturating_add(1))?.saturating_sub(1),
        },
    };
    if let Some(c) = query_param(q, "cursor")? {
        let c = c
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest("cursor is not one this API returned".into()))?;
        from = from.max(c);
    }
    Ok(Range { from, until, limit })
}

enum Bound {
    Revision(u64),
    Time(u64),
}

/// A revision (digits) or an RFC 3339 time.
fn bound(v: &str, name: &str) -> Result<Bound, ApiError> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v
            .parse()
            .map(Bound::Revision)
            .map_err(|_| ApiError::BadRequest(format!("{name}: revision out of range")));
    }
    let t = crate::config::parse_time(v).map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))?;
    let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Ok(Bound::Time(ms))
}

fn page(chunk: &HistoryChunk) -> Json {
    let items: Vec<Value> = chunk.entries.iter().map(entry).collect();
    let next = chunk.next.map(|n| n.to_string());
    Json(json!({ "items": items, "next_cursor": next }))
}

/// One entry as JSON: as a state item, with the entry's `time`.
fn entry(m: &Arc<Message>) -> Value {
    let (value, encoding) = item_value(&m.payload);
    let mut v = json!({
        "topic": &*m.topic,
        "value": value,
        "encoding": encoding,
        "time": rfc3339(m.stamp.unix_ms),
        "revision": m.stamp.revision,
        "retain": m.retain,
    });
    if let Some(ct) = &m.properties.content_type {
        v["content_type"] = Value::String(ct.clone());
    }
    v
}
