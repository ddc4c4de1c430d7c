//! The HTTP listener (`http.bind`): `/metrics` (Prometheus text format), `/healthz` (the
//! process answers) and `/readyz` (listeners bound and the store accepting writes), and the
//! key-management routes `/admin/*` behind [`guard`] (Host, Origin and Content-Type rules),
//! the HTTP/JSON state API under `/v1` ([`api`]: `state`, `schemas`, `/v1/openapi.json`, and
//! the console's `rejections`, `clients`, `stats` and `events`), and the web console at `/`
//! (`console`).

pub mod api;
mod console;
mod events;
pub mod guard;
mod live;
mod schemas;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::Broker;

/// What the handlers look at.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The broker whose state `/metrics` shows.
    pub broker: Arc<Broker>,
    /// Set once every listener is bound.
    pub ready: Arc<AtomicBool>,
}

/// The routes of the HTTP listener.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Binds `addr` and serves [`router`] until `shutdown` turns true; returns the bound address.
///
/// # Errors
/// The I/O error of `bind`, naming the address.
pub async fn serve(
    addr: &str,
    state: HttpState,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    serve_with(addr, state, None, None, shutdown).await
}

/// The key-management routes to serve and who may reach them.
#[derive(Debug, Clone)]
pub struct Admin {
    /// The keys the routes manage.
    pub auth: Arc<crate::auth::Auth>,
    /// `http.allowed_origins`.
    pub allowed_origins: Vec<String>,
    /// `http.allowed_hosts`.
    pub allowed_hosts: Vec<String>,
}

/// [`serve`], plus the key-management routes (`/admin/keys`, see `auth::admin`) and the state
/// API (`/v1`, see [`api`]) behind [`guard`], which checks `Host` against the bound address.
///
/// # Errors
/// The I/O error of `bind`, naming the address.
pub async fn serve_with(
    addr: &str,
    state: HttpState,
    admin: Option<Admin>,
    api: Option<api::StateApi>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr} (http.bind): {e}")))?;
    let local = listener.local_addr()?;
    let broker = state.broker.clone();
    let mut app = router(state);
    if let Some(admin) = admin {
        let rules = guard::Rules {
            bound: local,
            allowed_origins: admin.allowed_origins,
            allowed_hosts: admin.allowed_hosts,
        };
        app = app.merge(guard::protect(crate::auth::admin::routes(admin.auth), rules.clone()));
        if let Some(api) = api {
            app = app.merge(api::routes(broker, api, rules.clone(), shutdown.clone()));
            app = app.merge(console::routes(rules));
        }
    }
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let stop = async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        };
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stop).await {
            warn!(error = %e, "HTTP listener failed");
        }
    });
    info!(addr = %local, "HTTP listener ready (/metrics, /healthz, /readyz, /v1 state API, / web console)");
    Ok(local)
}

async fn metrics(State(s): State<HttpState>) -> Response {
    match crate::metrics::get().render(&s.broker.metrics_snapshot()) {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<HttpState>) -> Response {
    if !s.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: listeners are starting\n").into_response();
    }
    if let Some(e) = s.broker.store().poisoned() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response();
    }
    if s.broker.pressure() >= crate::model::Pressure::RefuseConnections {
        let msg = "not ready: memory full (limits.max_memory), new connections are refused\n";
        return (StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    }
    "ready\n".into_response()
}
