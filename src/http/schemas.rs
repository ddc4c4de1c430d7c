//! `/v1/schemas`: the JSON Schemas in force, as the `$schema/` tree holds them (document,
//! version, filter), each visible to a caller that may read its `$schema/` topic; and
//! `/v1/openapi.json`, the API's OpenAPI 3.1 document (`docs/openapi.json`).

use std::net::SocketAddr;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::api::{Api, ApiError, Json, path_param, query_param};
use crate::model::Message;
use crate::schema::filter::{SCHEMA_PREFIX, topic_of_filter};

/// The API's OpenAPI document, kept in the repository.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// `GET /v1/schemas?count_invalid=`: with `count_invalid=true` each item also says how many
/// retained values its schema governs and refuses (`invalid_retained`), counted over the
/// state under its filter that the caller may read.
pub(super) async fn list(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Json, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    let count = match query_param(uri.query(), "count_invalid")?.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::BadRequest("count_invalid must be true or false".into())),
    };
    let mut found = s.broker.retained_under(&format!("{SCHEMA_PREFIX}#"));
    found.retain(|m| caller.perms.may_read(&m.topic));
    found.sort_by(|a, b| a.topic.cmp(&b.topic));
    let mut items: Vec<Value> = found.iter().map(|m| schema(m)).collect();
    if count {
        for item in &mut items {
            let filter = item["filter"].as_str().unwrap_or_default().to_string();
            let readable = |t: &str| caller.perms.may_read(t);
            item["invalid_retained"] = json!(s.api.schemas.invalid_retained(&s.broker, &filter, &readable));
        }
    }
    Ok(Json(json!({ "items": items, "revision": s.broker.revision() })))
}

/// `GET /v1/schemas/{filter}`: the filter percent-encoded in the path (`sensors/%2B/temp`).
pub(super) async fn get_one(
    State(s): State<Api>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    filter: Result<Path<String>, PathRejection>,
) -> Result<Json, ApiError> {
    let caller = s.caller(peer, &headers).await?;
    let filter = path_param(filter)?;
    dataloom_codec::topic::validate_filter(&filter, s.api.max_topic_levels)
        .map_err(|e| ApiError::BadRequest(format!("filter {filter:?}: {e}")))?;
    let topic = topic_of_filter(&filter);
    if !caller.perms.may_read(&topic) {
        return Err(ApiError::Forbidden(format!("this key may not read {topic}")));
    }
    match s.broker.state_of(&topic) {
        (Some(m), _) => Ok(Json(schema(&m))),
        (None, _) => Err(ApiError::NotFound(format!("no schema governs {filter}"))),
    }
}

/// `GET /v1/openapi.json`.
pub(super) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

fn schema(m: &Message) -> Value {
    let prop = |k: &str| m.properties.user_properties.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let document = serde_json::from_slice::<Value>(&m.payload).unwrap_or(Value::Null);
    json!({
        "filter": prop("filter"),
        "version": prop("version").and_then(|v| v.parse::<u64>().ok()),
        "document": document,
        "revision": m.stamp.revision,
    })
}
