//! The HTTP/JSON state API under `/v1` (issue 17): its routes, who the caller is
//! (`Authorization: Bearer <key id>:<secret>`, or anonymous) and the errors every route answers
//! with (`{"error", "detail"}`, a 4xx for any bad input). The state routes are in `state`, the
//! schema routes and the OpenAPI document in `schemas`, what the web console shows besides
//! (rejections, clients, counters) in `live`, its event stream in `events`.
//!
//! Every request passes [`guard`]'s Host rule; a write (PUT, DELETE) also its Origin rule, so
//! a web page cannot change state unless `http.allowed_origins` lists its origin. A request
//! with an `Origin` header never gets the loopback trust of a local client without keys.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{DefaultBodyLimit, Path};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::guard;
use crate::auth::{Auth, Cred, Perms};
use crate::broker::Broker;
use crate::broker::gate::SchemaGate;

/// What the state API needs besides the broker.
#[derive(Debug, Clone)]
pub struct StateApi {
    /// API keys and anonymous rules.
    pub auth: Arc<Auth>,
    /// The schema gate a PUT passes, as a client PUBLISH does.
    pub schemas: Arc<SchemaGate>,
    /// Largest request body (`mqtt.max_packet_size`).
    pub max_body: usize,
    /// Most levels in a topic name or filter (`mqtt.max_topic_levels`).
    pub max_topic_levels: usize,
}

/// The handlers' shared state.
#[derive(Debug, Clone)]
pub(super) struct Api {
    pub broker: Arc<Broker>,
    pub api: StateApi,
    /// The open event streams (`/v1/events`) and the shutdown signal that ends them.
    pub streams: super::events::Streams,
}

/// Why a request was refused; each maps to one status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub(super) enum ApiError {
    /// Malformed input: a filter, a topic, a query parameter, a cursor.
    #[error("bad_request")]
    BadRequest(String),
    /// Credentials that are not a key's (or anonymous where it is not allowed).
    #[error("unauthorized")]
    Unauthorized(String),
    /// The route exists, the method does not.
    #[error("method_not_allowed")]
    MethodNotAllowed(String),
    /// A body over `mqtt.max_packet_size`.
    #[error("payload_too_large")]
    TooLarge(String),
    /// The caller may not read or write this.
    #[error("forbidden")]
    Forbidden(String),
    /// No state (or schema) there.
    #[error("not_found")]
    NotFound(String),
    /// The payload is not valid under the topic's schema (MQTT 5: 0x99).
    #[error("schema_violation")]
    Invalid(String),
    /// The store refuses writes (full disk, failed fsync).
    #[error("unavailable")]
    Unavailable(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn detail(&self) -> &str {
        match self {
            ApiError::BadRequest(d)
            | ApiError::Unauthorized(d)
            | ApiError::MethodNotAllowed(d)
            | ApiError::TooLarge(d)
            | ApiError::Forbidden(d)
            | ApiError::NotFound(d)
            | ApiError::Invalid(d)
            | ApiError::Unavailable(d) => d,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status(), &self.to_string(), self.detail())
    }
}

/// The JSON error body every refusal of the API has.
pub(super) fn error_response(status: StatusCode, error: &str, detail: &str) -> Response {
    let body = serde_json::json!({ "error": error, "detail": detail });
    let mut r = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    r
}

/// The `/v1` routes, checked against `rules` ([`guard`]); event streams end when `shutdown`
/// turns true.
pub fn routes(
    broker: Arc<Broker>,
    api: StateApi,
    rules: guard::Rules,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Router {
    let max_body = api.max_body;
    let slots = Arc::new(tokio::sync::Semaphore::new(super::events::MAX_STREAMS));
    let state = Api { broker, api, streams: super::events::Streams { slots, shutdown } };
    let v1 = Router::new()
        .route("/v1/state", get(super::state::list))
        .route(
            "/v1/state/{*topic}",
            get(super::state::get_one).put(super::state::put).delete(super::state::delete),
        )
        .route("/v1/history", get(super::history::list))
        .route("/v1/history/{*topic}", get(super::history::of_topic))
        .route("/v1/schemas", get(super::schemas::list))
        .route("/v1/schemas/{*filter}", get(super::schemas::get_one))
        .route("/v1/openapi.json", get(super::schemas::openapi))
        .route("/v1/rejections", get(super::live::rejections))
        .route("/v1/clients", get(super::live::clients))
        .route("/v1/stats", get(super::live::stats))
        .route("/v1/events", get(super::events::events))
        .route("/v1", axum::routing::any(unknown))
        .route("/v1/{*rest}", axum::routing::any(unknown))
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state);
    guard::protect_api(v1, rules)
}

async fn not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("see /v1/openapi.json for the methods of this route".into())
}

async fn unknown() -> ApiError {
    ApiError::NotFound("no such route; see /v1/openapi.json".into())
}

/// A JSON response body (200 unless paired with a status).
#[derive(Debug)]
pub(super) struct Json(pub serde_json::Value);

impl IntoResponse for Json {
    fn into_response(self) -> Response {
        let mut body = self.0.to_string();
        body.push('\n');
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// Who is asking, with the permissions MQTT would give the same credentials.
pub(super) struct Caller {
    pub perms: Perms,
}

impl Api {
    /// The `filter` query parameter of a read (default `#`): a valid filter, not `$share/`,
    /// that `caller` may subscribe to.
    ///
    /// # Errors
    /// [`ApiError::BadRequest`] for a shared or invalid filter, [`ApiError::Forbidden`] when
    /// the caller's key may not subscribe to it (counted as a denial).
    pub fn read_filter(&self, caller: &Caller, query: Option<&str>) -> Result<String, ApiError> {
        let filter = query_param(query, "filter")?.unwrap_or_else(|| "#".into());
        if filter.starts_with("$share/") {
            return Err(ApiError::BadRequest("a $share/ filter reads nothing: use the plain filter".into()));
        }
        dataloom_codec::topic::validate_filter(&filter, self.api.max_topic_levels)
            .map_err(|e| ApiError::BadRequest(format!("filter {filter:?}: {e}")))?;
        if !caller.perms.may_subscribe(&filter) {
            crate::auth::count_denial(crate::auth::action::SUBSCRIBE);
            return Err(ApiError::Forbidden(format!("this key may not subscribe to {filter}")));
        }
        Ok(filter)
    }

    /// The caller of a request from `peer` with `headers`. Refused credentials are answered
    /// after the brute-force throttle's delay for `peer`, as a CONNECT is.
    ///
    /// # Errors
    /// [`ApiError::Unauthorized`] for a malformed `Authorization` or refused credentials.
    pub async fn caller(&self, peer: SocketAddr, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let bearer = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(parse_bearer(v.to_str().unwrap_or(""))?),
        };
        let (username, password) = bearer.map_or((None, None), |(id, secret)| (Some(id), Some(secret)));
        let cred = Cred {
            username,
            password: password.map(str::as_bytes),
            // `%c` in a key's filters means the key id over HTTP, which has no client id.
            client_id: username.unwrap_or(""),
            cert_identity: false,
            peer: Some(peer.ip()),
            browser: headers.contains_key(header::ORIGIN),
        };
        let principal = match self.api.auth.authenticate_request(&cred) {
            Ok(p) => p,
            Err(refused) => {
                tokio::time::sleep(refused.delay).await;
                let detail = "unknown key, wrong secret, or anonymous access not allowed";
                return Err(ApiError::Unauthorized(detail.into()));
            }
        };
        Ok(Caller { perms: self.api.auth.perms(&principal, cred.client_id) })
    }
}

/// The `{*topic}` or `{*filter}` of a path, percent-decoded.
///
/// # Errors
/// [`ApiError::BadRequest`] when it is not UTF-8 after decoding.
pub(super) fn path_param(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    p.map(|Path(s)| s).map_err(|e| ApiError::BadRequest(format!("path: {e}")))
}

/// `Bearer <key id>:<secret>`.
fn parse_bearer(value: &str) -> Result<(&str, &str), ApiError> {
    let bad = || ApiError::Unauthorized("Authorization must be `Bearer <key id>:<secret>`".into());
    let (scheme, rest) = value.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(bad());
    }
    let (id, secret) = rest.trim().split_once(':').ok_or_else(bad)?;
    if id.is_empty() {
        return Err(bad());
    }
    Ok((id, secret))
}

/// The value of query parameter `name` (percent-decoded; `+` is kept, it is a filter level),
/// or `None`; a parameter given twice or not UTF-8 after decoding is refused.
///
/// # Errors
/// [`ApiError::BadRequest`] naming the parameter.
pub(super) fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != name {
            continue;
        }
        let v = percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .map_err(|_| ApiError::BadRequest(format!("{name} is not UTF-8 after percent-decoding")))?;
        if found.replace(v.into_owned()).is_some() {
            return Err(ApiError::BadRequest(format!("{name} is given more than once")));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_query_parsing() {
        assert_eq!(parse_bearer("Bearer k1:s:e").ok(), Some(("k1", "s:e")));
        assert_eq!(parse_bearer("bearer k1:").ok(), Some(("k1", "")));
        assert!(parse_bearer("Basic azE6cw==").is_err());
        assert!(parse_bearer("Bearer k1").is_err());
        assert!(parse_bearer("Bearer :secret").is_err());
        let q = Some("filter=a/%2B/%23&limit=5&x");
        assert_eq!(query_param(q, "filter").ok().flatten().as_deref(), Some("a/+/#"));
        assert_eq!(query_param(Some("filter=a/+/b"), "filter").ok().flatten().as_deref(), Some("a/+/b"));
        assert_eq!(query_param(q, "cursor").ok().flatten(), None);
        assert!(query_param(Some("limit=1&limit=2"), "limit").is_err());
        assert!(query_param(Some("filter=%ff"), "filter").is_err());
    }
}
