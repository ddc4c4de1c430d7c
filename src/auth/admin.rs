//! The key-management endpoint of the HTTP listener, which `dataloom key ...` uses while the
//! broker runs (the broker holds the store lock):
//!
//! - `GET /admin/keys` → JSON list (no secrets, no hashes)
//! - `POST /admin/keys` with a JSON [`KeySpec`] → `201 {"key": ..., "secret": "..."}`
//! - `DELETE /admin/keys/{name}` → `{"revoked": name, "closed": n}`; its connections close now
//!
//! Authorization: `Authorization: Bearer <key id>:<secret>` of a key with the `admin` role,
//! on every route, even while no admin key exists. Bootstrap: the first admin key is created
//! with `Authorization: Bootstrap <token>` instead, from a loopback address, where the token
//! is the one-time one of [`super::bootstrap`] (`<data_dir>/bootstrap-token`); it creates
//! one admin key and is consumed. Failed credentials are slowed down like failed CONNECTs.
//!
//! The HTTP listener puts `crate::http::guard` (Host, Origin, Content-Type) in front.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};

use super::bootstrap::Ticket;
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

/// What a request's credential allows.
enum Grant<'a> {
    /// An admin key.
    Admin,
    /// The bootstrap token: one admin key may be created.
    Bootstrap(Ticket<'a>),
}

/// Checks the request's credential; `Err` is the response to send. The bootstrap token is
/// looked at only where `bootstrap` (the create route).
async fn authorize<'a>(
    auth: &'a Auth,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    bootstrap: bool,
) -> Result<Grant<'a>, Response> {
    let cred = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::trim);
    let Some((scheme, value)) = cred.and_then(|c| c.split_once(' ')) else {
        return Err(unauthorized(if auth.has_admin_key() {
            "an admin key is required: Authorization: Bearer ID:SECRET"
        } else {
            "an admin key is required: Authorization: Bearer ID:SECRET (no admin key exists yet: \
             create the first one with Authorization: Bootstrap TOKEN, the token in the data \
             directory's bootstrap-token file; `dataloom key create --admin` does this)"
        }));
    };
    let value = value.trim();
    let refused = match scheme {
        "Bearer" => {
            let (id, secret) = value.split_once(':').unwrap_or((value, ""));
            if auth.verify_admin(id, secret) {
                return Ok(Grant::Admin);
            }
            "not an admin key (unknown key, wrong secret, expired or not admin)"
        }
        "Bootstrap" if bootstrap => match take_bootstrap(auth, value, peer) {
            Ok(ticket) => return Ok(Grant::Bootstrap(ticket)),
            Err(why) => why,
        },
        _ => "unsupported credential: use Authorization: Bearer ID:SECRET",
    };
    if let Some(p) = peer {
        tokio::time::sleep(auth.throttle.failed(p.ip())).await;
    }
    Err(unauthorized(refused))
}

fn take_bootstrap<'a>(
    auth: &'a Auth,
    token: &str,
    peer: Option<SocketAddr>,
) -> Result<Ticket<'a>, &'static str> {
    if auth.has_admin_key() {
        return Err("the bootstrap token is void: an admin key exists; use it (Bearer ID:SECRET)");
    }
    if !peer.is_some_and(|p| super::is_local(p.ip())) {
        return Err("the bootstrap token works from the broker's own host (loopback) only");
    }
    auth.bootstrap.take(token).ok_or("wrong or used bootstrap token")
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    r
}

async fn list(State(auth): State<Arc<Auth>>, req: Request) -> Response {
    if let Err(r) = authorize(&auth, req.headers(), peer(req.extensions()), false).await {
        return r;
    }
    json(StatusCode::OK, &serde_json::json!(auth.list()))
}

async fn create(State(auth): State<Arc<Auth>>, req: Request) -> Response {
    let grant = match authorize(&auth, req.headers(), peer(req.extensions()), true).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let body: Bytes = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let spec: KeySpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad key spec: {e}")),
    };
    if matches!(grant, Grant::Bootstrap(_)) && !spec.admin {
        return error(
            StatusCode::FORBIDDEN,
            "the bootstrap token creates an admin key only (\"admin\": true)",
        );
    }
    match auth.create(spec).await {
        Ok((key, secret)) => {
            if let Grant::Bootstrap(ticket) = grant {
                ticket.consume();
            }
            json(StatusCode::CREATED, &serde_json::json!({ "key": key, "secret": secret }))
        }
        Err(e) => failure(&e),
    }
}

async fn revoke(State(auth): State<Arc<Auth>>, Path(name): Path<String>, req: Request) -> Response {
    if let Err(r) = authorize(&auth, req.headers(), peer(req.extensions()), false).await {
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
