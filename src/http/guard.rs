//! What a request must look like to reach the admin routes (`/admin/*`), before any
//! credential is looked at. Web pages the operator opens must not be able to drive them:
//!
//! - `Host` must be the listener's bound `ip:port` (the real port when bound to port 0) or a
//!   name of `http.allowed_hosts` (default `localhost`, with any port). A missing `Host`
//!   (HTTP/1.0) is refused too. This defeats DNS rebinding, where a page's own name points at
//!   the broker. → 403
//! - `Origin`, when present, must be listed in `http.allowed_origins` (default none): a
//!   cross-site request from a page carries its origin. → 403
//! - A request with a body (any method but GET, HEAD, DELETE and OPTIONS, or any announced
//!   body) must be `Content-Type: application/json`: forms and `text/plain` are what a page
//!   can send without a CORS preflight. → 415
//!
//! The state API (`/v1`, [`protect_api`]) takes the Host rule on every request and the Origin
//! rule on writes, and no Content-Type rule (a value is stored with its own). For the state
//! API the broker's own origin (`http://` and the `Host` that passed the Host rule) is allowed
//! too: it is the web console's, served by this listener; a write from it still needs an API
//! key, since a request with an `Origin` never gets the trust of a local client.
//!
//! `/metrics`, `/healthz` and `/readyz` are not guarded: they change nothing, and scrapers and
//! probes reach them under whatever name the network gives the broker.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::config::{host_allowed, origin_allowed};

/// The rules of one HTTP listener.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The address the listener is bound to (the real port).
    pub bound: SocketAddr,
    /// `http.allowed_origins`.
    pub allowed_origins: Vec<String>,
    /// `http.allowed_hosts`.
    pub allowed_hosts: Vec<String>,
}

/// `routes` with every request checked against `rules` first.
pub fn protect(routes: Router, rules: Rules) -> Router {
    routes.layer(middleware::from_fn_with_state(Arc::new(rules), check))
}

async fn check(State(rules): State<Arc<Rules>>, req: Request, next: Next) -> Response {
    match refusal(&rules, req.method(), req.headers()) {
        Some((status, message)) => {
            tracing::debug!(%status, message, path = %req.uri().path(), "admin request refused");
            error(status, &message)
        }
        None => next.run(req).await,
    }
}

/// Why the request is refused, or `None` when it may go on.
fn refusal(rules: &Rules, method: &Method, headers: &HeaderMap) -> Option<(StatusCode, String)> {
    if let Some(r) = host_refusal(rules, headers).or_else(|| origin_refusal(rules, headers)) {
        return Some(r);
    }
    if has_body(method, headers) && !is_json(headers) {
        return Some((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the admin API takes Content-Type: application/json".into(),
        ));
    }
    None
}

/// `routes` (the state API, `/v1`) with the Host rule on every request and the Origin rule on
/// every write (any method but GET, HEAD and OPTIONS). Bodies keep their own content type: a
/// state value is whatever the client stores. Refusals are `{"error", "detail"}`.
pub fn protect_api(routes: Router, rules: Rules) -> Router {
    routes.layer(middleware::from_fn_with_state(Arc::new(rules), check_api))
}

async fn check_api(State(rules): State<Arc<Rules>>, req: Request, next: Next) -> Response {
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS].contains(req.method());
    let refused = host_refusal(&rules, req.headers()).or_else(|| {
        if safe || same_origin(req.headers()) { None } else { origin_refusal(&rules, req.headers()) }
    });
    match refused {
        Some((status, detail)) => {
            tracing::debug!(%status, detail, path = %req.uri().path(), "state API request refused");
            let body = serde_json::json!({ "error": "forbidden", "detail": detail });
            (status, [(header::CONTENT_TYPE, "application/json")], format!("{body}\n")).into_response()
        }
        None => next.run(req).await,
    }
}

/// The Host rule: the bound address or a name of `http.allowed_hosts`.
fn host_refusal(rules: &Rules, headers: &HeaderMap) -> Option<(StatusCode, String)> {
    let forbidden = |m: String| Some((StatusCode::FORBIDDEN, m));
    match headers.get(header::HOST).map(|h| h.to_str().unwrap_or("")) {
        None => forbidden("a Host header is required".into()),
        Some(h) if !host_allowed(&rules.allowed_hosts, rules.bound, h) => {
            forbidden(format!("Host {h:?} is not this broker ({}) nor in http.allowed_hosts", rules.bound))
        }
        Some(_) => None,
    }
}

/// The Origin rule: absent, or listed in `http.allowed_origins`.
fn origin_refusal(rules: &Rules, headers: &HeaderMap) -> Option<(StatusCode, String)> {
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("");
    (!origin_allowed(&rules.allowed_origins, origin))
        .then(|| (StatusCode::FORBIDDEN, format!("Origin {origin:?} is not in http.allowed_origins")))
}

/// `Origin` is `http://` and the request's own `Host`: a page this listener served.
fn same_origin(headers: &HeaderMap) -> bool {
    let value = |name| headers.get(name).and_then(|v: &header::HeaderValue| v.to_str().ok());
    match (value(header::ORIGIN), value(header::HOST)) {
        (Some(origin), Some(host)) => {
            origin.strip_prefix("http://").is_some_and(|o| o.eq_ignore_ascii_case(host))
        }
        _ => false,
    }
}

fn has_body(method: &Method, headers: &HeaderMap) -> bool {
    let bodiless = [Method::GET, Method::HEAD, Method::DELETE, Method::OPTIONS].contains(method);
    let announced = headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() != "0");
    !bodiless || announced
}

/// `application/json`, parameters (`; charset=utf-8`) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message });
    (status, [(header::CONTENT_TYPE, "application/json")], format!("{body}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn rules() -> Rules {
        Rules {
            bound: "127.0.0.1:9883".parse().expect("addr"),
            allowed_origins: vec!["https://app.example".into()],
            allowed_hosts: vec!["localhost".into()],
        }
    }

    type Pair = (&'static str, &'static str);

    fn status(method: Method, pairs: &[Pair]) -> Option<StatusCode> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(header::HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        refusal(&rules(), &method, &h).map(|r| r.0)
    }

    #[test]
    fn host_origin_and_content_type() {
        let host = ("host", "127.0.0.1:9883");
        let json = ("content-type", "application/json; charset=utf-8");
        assert_eq!(status(Method::GET, &[host]), None);
        assert_eq!(status(Method::GET, &[]), Some(StatusCode::FORBIDDEN));
        assert_eq!(status(Method::GET, &[("host", "evil.example")]), Some(StatusCode::FORBIDDEN));
        assert_eq!(status(Method::GET, &[("host", "localhost:9883")]), None);
        let evil = ("origin", "http://evil.example");
        assert_eq!(status(Method::POST, &[host, json, evil]), Some(StatusCode::FORBIDDEN));
        let app = ("origin", "https://app.example");
        assert_eq!(status(Method::POST, &[host, json, app]), None);
        let text = ("content-type", "text/plain");
        assert_eq!(status(Method::POST, &[host, text]), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(status(Method::POST, &[host]), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
        assert_eq!(status(Method::DELETE, &[host]), None);
        let body = ("content-length", "5");
        assert_eq!(status(Method::DELETE, &[host, body]), Some(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }

    #[test]
    fn the_listeners_own_origin_is_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9883"));
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9883"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://127.0.0.1:9883"));
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9884"));
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
    }
}
