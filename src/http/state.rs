//! `/v1/state`: list the state under a filter a page at a time, read one topic, and write or
//! clear one topic. A write is a retained QoS 1 PUBLISH through the same path as MQTT (the key's
//! publish permission, the schema gate, routing to subscribers), answered once it is durable,
//! as a PUBACK would be.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::BytesRejection;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Uri, header};
use base64::Engine;
use bytes::Bytes;
use serde_json::{Value, json};

use super::api::{Api, ApiError, Caller, Json, path_param, query_param};
use crate::broker::Broker;
use crate::broker::session::Session;
use crate::metrics::reasons::ShedAction;
use crate::model::{Delivery, Message, Pressure, Stamp};
use crate::schema::Memo;
use crate::store::StoreError;
use dataloom_codec::{Properties, QoS, reason, topic};

/// Items per page unless `limit` says otherwise, and the most it may say.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// How long a write waits for room in full subscriber queues before dropping for them.
const BLOCKED_PATIENCE: Duration = Duration::from_secs(1);

/// `GET /v1/state?filter=&limit=&cursor=`.
pub(super) async fn list(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    let query = uri.query();
    let filter = s.read_filter(&caller, query)?;
    let limit = match query_param(query, "limit")? {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| ApiError::BadRequest(format!("limit must be 1 to {MAX_LIMIT}")))?,
    };
    let after = query_param(query, "cursor")?.map(|c| decode_cursor(&c)).transpose()?;
    let readable = |t: &str| caller.perms.may_read(t);
    cluster_sync(&s.broker).await;
    let page = s.broker.state_page(&filter, after.as_deref(), limit, &readable);
    let next = page.more.then(|| page.items.last().map(|m| encode_cursor(&m.topic))).flatten();
    let items: Vec<Value> = page.items.iter().map(|m| item_of(&s, m)).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next, "revision": page.revision })))
}

/// `GET /v1/state/{topic}`.
pub(super) async fn get_one(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    topic: Result<Path<String>, PathRejection>,
) -> Result<Json, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    let topic = path_param(topic)?;
    valid_topic(&s, &topic)?;
    if !caller.perms.may_read(&topic) {
        crate::auth::count_denial(crate::auth::action::SUBSCRIBE);
        return Err(ApiError::Forbidden(format!("this key may not read {topic}")));
    }
    cluster_sync(&s.broker).await;
    match s.broker.state_of(&topic) {
        (Some(m), _) => Ok(Json(item_of(&s, &m))),
        (None, _) => Err(ApiError::NotFound(format!("{topic} has no state"))),
    }
}

/// `PUT /v1/state/{topic}`: the body is the payload, `Content-Type` its content type.
pub(super) async fn put(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    topic: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    let topic = path_param(topic)?;
    let body = body.map_err(|e| match e.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::TooLarge(format!("the body is over mqtt.max_packet_size ({} bytes)", s.api.max_body))
        }
        _ => ApiError::BadRequest(format!("body: {e}")),
    })?;
    if body.is_empty() {
        return Err(ApiError::BadRequest("an empty value clears the state: use DELETE".into()));
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
    write(&s, &caller, &topic, body, content_type).await
}

/// `DELETE /v1/state/{topic}`: an empty retained PUBLISH.
pub(super) async fn delete(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    topic: Result<Path<String>, PathRejection>,
) -> Result<Json, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    let topic = path_param(topic)?;
    write(&s, &caller, &topic, Bytes::new(), None).await
}

/// Publishes `payload` to `topic` as a retained QoS 1 message and waits until it is durable.
async fn write(
    s: &Api,
    caller: &Caller,
    topic: &str,
    payload: Bytes,
    content_type: Option<String>,
) -> Result<Json, ApiError> {
    valid_topic(s, topic)?;
    if !caller.perms.may_publish(topic) {
        crate::auth::count_denial(crate::auth::action::PUBLISH);
        return Err(ApiError::Forbidden(format!("this key may not publish to {topic}")));
    }
    let msg = Message {
        topic: Arc::from(topic),
        topic_bytes: Bytes::copy_from_slice(topic.as_bytes()),
        payload,
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties { content_type, ..Properties::default() },
        expires_at: None,
        publisher: None,
        charge: Default::default(),
        stamp: Stamp::default(),
    };
    // As a client PUBLISH: near the memory budget, new state is refused; a delete passes.
    if !msg.payload.is_empty() && s.broker.pressure() >= Pressure::RefuseStored {
        crate::metrics::get().load_shed(ShedAction::PublishRefused);
        return Err(ApiError::Unavailable("memory nearly full (limits.max_memory): try again later".into()));
    }
    let msg = Arc::new(msg.charged(s.broker.memory()));
    let routed =
        s.api.schemas.publish(&s.broker, msg, Vec::new(), ("$http", &mut Memo::default())).map_err(|r| {
            match r.code {
                reason::PAYLOAD_FORMAT_INVALID => ApiError::Invalid(r.reason),
                reason::NOT_AUTHORIZED => ApiError::Forbidden(r.reason),
                _ => ApiError::BadRequest(r.reason),
            }
        })?;
    let published = routed.published.map_err(store_error)?;
    offer_until_room(&s.broker, published.blocked).await;
    published.commit.wait().await.map_err(store_error)?;
    let revision = if published.revision == 0 { s.broker.revision() } else { published.revision };
    Ok(Json(json!({ "topic": topic, "revision": revision, "note": routed.note })))
}

/// Offers the deliveries that met full subscriber queues again as room appears, for up to
/// [`BLOCKED_PATIENCE`]; what still does not fit is then dropped and counted, as for a
/// stalled subscriber.
/// In a cluster, waits until this node applied every retained change acknowledged anywhere
/// before the request (at most `cluster.sync_timeout`), as a SUBSCRIBE does.
async fn cluster_sync(broker: &Broker) {
    if let Some(wait) = broker.cluster_sync() {
        wait.await;
    }
}

async fn offer_until_room(broker: &Broker, mut blocked: Vec<(Arc<Session>, Delivery)>) {
    let deadline = tokio::time::Instant::now() + BLOCKED_PATIENCE;
    while let Some((session, _)) = blocked.first() {
        let give_up = tokio::time::Instant::now() >= deadline;
        if !give_up {
            session.mailbox.space(Duration::from_millis(50)).await;
        }
        broker.offer_blocked(&mut blocked, give_up);
    }
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::Unavailable(e.to_string())
}

fn valid_topic(s: &Api, topic: &str) -> Result<(), ApiError> {
    topic::validate_topic_name(topic, s.api.max_topic_levels)
        .map_err(|e| ApiError::BadRequest(format!("topic {topic:?}: {e}")))
}

/// One state as JSON ([`item`]) with the schema that governs its topic, if any
/// (`"schema": {"filter", "version"}`: the console's badge).
pub(super) fn item_of(s: &Api, m: &Message) -> Value {
    let mut v = item(m);
    if let Some(schema) = s.api.schemas.lookup(&m.topic) {
        v["schema"] = json!({ "filter": &*schema.filter, "version": schema.version });
    }
    v
}

/// One state as JSON: `value` is the JSON document when the payload is one, else the text
/// (UTF-8) or base64, as `encoding` says.
fn item(m: &Message) -> Value {
    let (value, encoding) = item_value(&m.payload);
    let mut v = json!({
        "topic": &*m.topic,
        "value": value,
        "encoding": encoding,
        "updated_at": rfc3339(m.stamp.unix_ms),
        "revision": m.stamp.revision,
    });
    if let Some(ct) = &m.properties.content_type {
        v["content_type"] = Value::String(ct.clone());
    }
    v
}

/// A payload as a JSON `value` and its `encoding`: the document, the text, or base64.
pub(super) fn item_value(payload: &[u8]) -> (Value, &'static str) {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v) => (v, "json"),
        Err(_) => match std::str::from_utf8(payload) {
            Ok(t) => (Value::String(t.into()), "utf-8"),
            Err(_) => (Value::String(base64::engine::general_purpose::STANDARD.encode(payload)), "base64"),
        },
    }
}

/// UNIX milliseconds as RFC 3339 (`null` when unknown: state stored before revisions).
pub(super) fn rfc3339(unix_ms: u64) -> Value {
    /// 9999-12-31T23:59:59Z, the last time RFC 3339's four-digit year can write.
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    if unix_ms == 0 {
        return Value::Null;
    }
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms).min(LAST);
    Value::String(humantime::format_rfc3339_millis(t).to_string())
}

/// The cursor after `topic`: its bytes, base64url (opaque to clients).
fn encode_cursor(topic: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topic)
}

fn decode_cursor(c: &str) -> Result<String, ApiError> {
    let bad = || ApiError::BadRequest("cursor is not one this API returned".into());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    String::from_utf8(bytes).map_err(|_| bad())
}
