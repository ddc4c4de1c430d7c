//! The web console at `/` (issue 16): one page, its script and its style sheet, compiled into
//! the binary (`src/http/console/`), so it works offline and fetches nothing from elsewhere.
//! The page reads through the `/v1` API and its event stream (`/v1/events`) with the
//! browser's own requests; it writes with the API key the user types in, which it keeps in
//! the tab's `sessionStorage` only.
//!
//! The routes take the Host rule of [`super::guard`] (a DNS-rebinding page cannot load the
//! console under its own name). Every answer forbids framing and loading anything from
//! another origin (`Content-Security-Policy`).

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::guard;

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// Only this origin's scripts, styles and requests; no frames, no plug-ins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes, behind the Host rule of `rules`.
pub fn routes(rules: guard::Rules) -> Router {
    let r = Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }));
    guard::protect_api(r, rules)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
