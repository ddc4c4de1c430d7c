//! The admin HTTP API against web pages (issue 13): `Content-Type` other than JSON refused
//! (415), a foreign `Origin` or `Host` refused (403), the first admin key only with the
//! one-time bootstrap token from the data directory (mode 0600, deleted once used), listing
//! and revoking never without an admin key, the allow lists letting a listed page through,
//! and the same `Origin` rule on the WebSocket listener (a page is never loopback-trusted).
mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{TestBroker, WAIT, from_hex};
use dataloom::config::{Backend, Config};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// MQTT 3.1.1 CONNECT, client id `c`, no credentials; CONNACK accepted / not authorized.
const CONNECT: &str = "10 0d 00 04 4d 51 54 54 04 02 00 3c 00 01 63";
const CONNACK_OK: &str = "20 02 00 00";
const CONNACK_NOT_AUTHORIZED: &str = "20 02 00 05";

/// A broker on a fjall store in `dir` (so it has a bootstrap token file), with `edit`.
async fn broker(dir: &Path, edit: impl FnOnce(&mut Config)) -> (TestBroker, SocketAddr) {
    let data = dir.to_path_buf();
    let b = TestBroker::start_with(move |c| {
        c.storage.backend = Backend::Fjall;
        c.storage.data_dir = data;
        edit(c);
    })
    .await;
    let http = b.running.as_ref().and_then(|r| r.http_addr).expect("HTTP listener bound");
    (b, http)
}

fn token_file(dir: &Path) -> PathBuf {
    dir.join("bootstrap-token")
}

fn token(dir: &Path) -> String {
    std::fs::read_to_string(token_file(dir)).expect("bootstrap token file").trim().to_string()
}

/// Sends `head` (request line and headers, CRLF-separated, without the blank line) and
/// `body`; returns the status code and the body.
async fn send(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("tcp");
    let req = format!("{head}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await.expect("answer in time").expect("read");
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("HTTP status");
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// `POST /admin/keys` creating admin key `name`, with `extra` header lines.
async fn create(addr: SocketAddr, name: &str, extra: &[String]) -> (u16, String) {
    let mut head = format!("POST /admin/keys HTTP/1.1\r\nHost: {addr}");
    for h in extra {
        head.push_str(&format!("\r\n{h}"));
    }
    send(addr, &head, &format!("{{\"name\":\"{name}\",\"admin\":true}}")).await
}

fn bootstrap(token: &str) -> String {
    format!("Authorization: Bootstrap {token}")
}

const JSON: &str = "Content-Type: application/json";

#[tokio::test]
async fn simple_requests_from_web_pages_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, http) = broker(dir.path(), |_| {}).await;
    let t = token(dir.path());
    let auth = bootstrap(&t);

    let (status, body) = create(http, "a", &[auth.clone(), "Content-Type: text/plain".into()]).await;
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("\"error\"") && body.contains("application/json"), "{body}");
    let (status, body) = create(http, "a", std::slice::from_ref(&auth)).await;
    assert_eq!(status, 415, "no Content-Type: {body}");

    let evil = "Origin: http://evil.example".to_string();
    let (status, body) = create(http, "a", &[auth.clone(), JSON.into(), evil.clone()]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Origin") && body.contains("http.allowed_origins"), "{body}");
    let (status, _) = create(http, "a", &[auth.clone(), "Content-Type: text/plain".into(), evil]).await;
    assert_eq!(status, 403, "the cross-site simple request of the issue");

    // DNS rebinding: the page's own name, pointing at the broker.
    let body = r#"{"name":"a","admin":true}"#;
    let head = format!("POST /admin/keys HTTP/1.1\r\nHost: evil.example\r\n{JSON}\r\n{auth}");
    let (status, text) = send(http, &head, body).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("Host") && text.contains("http.allowed_hosts"), "{text}");
    let head = format!("POST /admin/keys HTTP/1.1\r\nHost: evil.example:{}\r\n{JSON}\r\n{auth}", http.port());
    assert_eq!(send(http, &head, body).await.0, 403);
    // HTTP/1.0 without Host.
    let head = format!("POST /admin/keys HTTP/1.0\r\n{JSON}\r\n{auth}");
    assert_eq!(send(http, &head, body).await.0, 403, "missing Host");
    let head = "GET /admin/keys HTTP/1.1\r\nHost: evil.example".to_string();
    assert_eq!(send(http, &head, "").await.0, 403, "GET is guarded too");

    // None of that used the token; `localhost` with the port is a default allowed host.
    let head = format!("POST /admin/keys HTTP/1.1\r\nHost: localhost:{}\r\n{JSON}\r\n{auth}", http.port());
    let (status, text) = send(http, &head, body).await;
    assert_eq!(status, 201, "{text}");
    // /metrics is not guarded (scrapers use any name).
    assert_eq!(send(http, "GET /healthz HTTP/1.1\r\nHost: prometheus.lan", "").await.0, 200);
    b.stop().await;
}

#[tokio::test]
async fn the_first_admin_key_needs_the_one_time_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, http) = broker(dir.path(), |_| {}).await;
    let file = token_file(dir.path());
    let mode = std::fs::metadata(&file).expect("token file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only the broker's user reads the token");
    let t = token(dir.path());
    assert_eq!(t.len(), 64);

    let (status, body) = create(http, "root", &[JSON.into()]).await;
    assert_eq!(status, 401, "no credential from loopback: {body}");
    assert!(body.contains("Bootstrap"), "the refusal says how: {body}");
    let (status, _) = create(http, "root", &[JSON.into(), bootstrap(&"0".repeat(64))]).await;
    assert_eq!(status, 401, "wrong token");
    let head = format!("POST /admin/keys HTTP/1.1\r\nHost: {http}\r\n{JSON}\r\n{}", bootstrap(&t));
    let (status, body) = send(http, &head, r#"{"name":"plain"}"#).await;
    assert_eq!(status, 403, "the token makes an admin key only: {body}");

    let (status, body) = create(http, "root", &[JSON.into(), bootstrap(&t)]).await;
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let secret = v["secret"].as_str().expect("secret").to_string();
    assert!(!file.exists(), "the token file is deleted once used");
    let (status, _) = create(http, "again", &[JSON.into(), bootstrap(&t)]).await;
    assert_eq!(status, 401, "the token is consumed");

    let head = format!("GET /admin/keys HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer root:{secret}");
    let (status, list) = send(http, &head, "").await;
    assert_eq!(status, 200, "{list}");
    assert!(list.contains("\"root\"") && !list.contains("\"plain\""), "{list}");
    b.stop().await;
}

#[tokio::test]
async fn any_new_admin_key_voids_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, http) = broker(dir.path(), |_| {}).await;
    let t = token(dir.path());
    let auth = b.running.as_ref().map(|r| r.auth.clone()).expect("running");
    let spec = dataloom::auth::KeySpec { name: "other".into(), admin: true, ..Default::default() };
    auth.create(spec).await.expect("created in process");
    assert!(!token_file(dir.path()).exists(), "the token file is deleted");
    let (status, _) = create(http, "root", &[JSON.into(), bootstrap(&t)]).await;
    assert_eq!(status, 401, "the token is void");
    b.stop().await;
}

#[tokio::test]
async fn listing_and_revoking_always_need_an_admin_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, http) = broker(dir.path(), |_| {}).await;
    let t = token(dir.path());
    let auth = bootstrap(&t);
    for (method, path) in [("GET", "/admin/keys"), ("DELETE", "/admin/keys/somebody")] {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {http}");
        let (status, body) = send(http, &head, "").await;
        assert_eq!(status, 401, "{method} without credential, no admin key yet, loopback: {body}");
        let (status, _) = send(http, &format!("{head}\r\n{auth}"), "").await;
        assert_eq!(status, 401, "{method} with the bootstrap token");
    }
    b.stop().await;
}

#[tokio::test]
async fn listed_origins_and_hosts_are_let_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, http) = broker(dir.path(), |c| {
        c.http.allowed_origins = vec!["https://console.example".into()];
        c.http.allowed_hosts = vec!["broker.lan".into()];
    })
    .await;
    let t = token(dir.path());
    let head = format!(
        "POST /admin/keys HTTP/1.1\r\nHost: broker.lan:{}\r\nOrigin: https://console.example\r\n{JSON}\r\n{}",
        http.port(),
        bootstrap(&t)
    );
    let (status, body) = send(http, &head, r#"{"name":"root","admin":true}"#).await;
    assert_eq!(status, 201, "{body}");
    let head = format!("GET /admin/keys HTTP/1.1\r\nHost: localhost:{}", http.port());
    assert_eq!(send(http, &head, "").await.0, 403, "localhost is no longer listed");
    b.stop().await;
}

fn ws_request(
    addr: SocketAddr,
    origin: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/mqtt").into_client_request().expect("request");
    req.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().expect("header"));
    }
    req
}

/// Upgrades with `origin`, sends CONNECT and returns the CONNACK bytes; `Err(status)` when the
/// upgrade is refused.
async fn ws_connack(addr: SocketAddr, origin: Option<&str>) -> Result<Vec<u8>, u16> {
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let (mut ws, _) = match tokio_tungstenite::client_async(ws_request(addr, origin), tcp).await {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => return Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    };
    ws.send(Message::Binary(from_hex(CONNECT).into())).await.expect("send");
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return b.to_vec(),
                Some(Ok(_)) => {}
                other => panic!("websocket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    Ok(got)
}

#[tokio::test]
async fn websocket_upgrades_from_foreign_pages_are_refused() {
    let b = TestBroker::start_with(|c| {
        c.listeners.ws.bind = "127.0.0.1:0".into();
        c.listeners.ws.allowed_origins = vec!["https://dashboard.example".into()];
    })
    .await;
    let ws = b.running.as_ref().and_then(|r| r.ws_addr).expect("ws bound");
    assert_eq!(ws_connack(ws, Some("http://evil.example")).await, Err(403));
    // No Origin: an MQTT library outside a browser, on loopback with no keys: unrestricted.
    assert_eq!(ws_connack(ws, None).await, Ok(from_hex(CONNACK_OK)));
    // A listed page is let through but not trusted as loopback: anonymous is not allowed.
    let listed = ws_connack(ws, Some("https://dashboard.example")).await;
    assert_eq!(listed, Ok(from_hex(CONNACK_NOT_AUTHORIZED)));
    b.stop().await;
}
