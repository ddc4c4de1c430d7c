//! The key-management endpoint of the HTTP listener, which `dataloom key ...` uses while the
//! broker runs (the broker holds the store lock):
//!
//! - `GET /admin/keys` → JSON list (no secrets, no hashes)
//! - `POST /admin/keys` with a JSON [`KeySpec`] → `201 {"key": ..., "secret": "..."}`
//! - `DELETE /admin/keys/{name}` → `{"revoked": name, "closed": n}`; its connections close now
//!
//! Authorization: `Authorization: Bearer <key id>:<secret>` of a key with the `admin` role.
//! Bootstrap: while no admin key exists, requests from a loopback address need no credential
//! (so the first admin key can be created on a running broker from the same host). Failed
//! credentials are slowed down like failed CONNECTs.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};

use super::{Auth, AuthError, KeySpec};

/// Largest accepted request body.
const MAX_BODY: usize = 64 * 1024;

/// The admin routes over `auth`.
pub fn routes(auth: Arc<Auth>) -> Router {
    Router::new()
        .route("/admin/keys", get(list).post(create))
        .route("/admin/keys/{name}", delete(revoke))
        .with_state(auth)
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], format!("{v}\n")).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    json(status, &serde_json::json!({ "error": message }))
}

/// The peer address, when the listener records it.
fn peer(req_ext: &axum::http::Extensions) -> Option<SocketAddr> {
    req_ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// Checks the request's credential; `Err` is the response to send.
async fn authorize(auth: &Auth, headers: &HeaderMap, peer: Option<SocketAddr>) -> Result<(), Response> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let local = peer.is_some_and(|p| p.ip().is_loopback());
    match bearer {
        None if local && !auth.has_admin_key() => Ok(()),
        None => Err(unauthorized("an admin key is required: Authorization: Bearer ID:SECRET")),
        Some(cred) => {
            let (id, secret) = cred.trim().split_once(':').unwrap_or((cred, ""));
            if auth.verify_admin(id, secret) {
                return Ok(());
            }
            if let Some(p) = peer {
                tokio::time::sleep(auth.throttle.failed(p.ip())).await;
            }
            Err(unauthorized("not an admin key (unknown key, wrong secret, expired or not admin)"))
        }
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    r
}

async fn list(State(auth): State<Arc<Auth>>, req: Request) -> Response {
    if let Err(r) = authorize(&auth, req.headers(), peer(req.extensions())).await {
        return r;
    }
    json(StatusCode::OK, &serde_json::json!(auth.list()))
}

async fn create(State(auth): State<Arc<Auth>>, req: Request) -> Response {
    if let Err(r) = authorize(&auth, req.headers(), peer(req.extensions())).await {
        return r;
    }
    let body: Bytes = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let spec: KeySpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad key spec: {e}")),
    };
    match auth.create(spec).await {
        Ok((key, secret)) => json(StatusCode::CREATED, &serde_json::json!({ "key": key, "secret": secret })),
        Err(e) => failure(&e),
    }
}

async fn revoke(State(auth): State<Arc<Auth>>, Path(name): Path<String>, req: Request) -> Response {
    if let Err(r) = authorize(&auth, req.headers(), peer(req.extensions())).await {
        return r;
    }
    match auth.revoke(&name).await {
        Ok(closed) => json(StatusCode::OK, &serde_json::json!({ "revoked": name, "closed": closed })),
        Err(e) => failure(&e),
    }
}

fn failure(e: &AuthError) -> Response {
    let status = match e {
        AuthError::Invalid(_) => StatusCode::BAD_REQUEST,
        AuthError::Exists(_) => StatusCode::CONFLICT,
        AuthError::NotFound(_) => StatusCode::NOT_FOUND,
        AuthError::Store(_) | AuthError::Corrupt(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, &e.to_string())
}
