//! `dataloom key create|list|revoke`: on a stopped broker's store (opened directly), or, when
//! the broker runs (the data directory is locked, or `--url` is given), through its HTTP admin
//! endpoint ([`super::admin`]) with an admin key (`--admin-key ID:SECRET` or
//! `DATALOOM_ADMIN_KEY`). Without an admin key, `create --admin` sends the broker's one-time
//! bootstrap token instead (`Authorization: Bootstrap`), read from `bootstrap-token` in the
//! data directory (`--data-dir` or `storage.data_dir`): the first admin key on a running
//! broker, from the same host.
//!
//! `create` prints the secret alone on stdout (once; scripts capture it) and what it did on
//! stderr.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::{Auth, AuthError, KeyInfo, KeySpec, Settings};
use crate::config::{Backend, Config};
use crate::store::{FjallStore, Store, StoreError};

/// One key command.
#[derive(Debug, Clone)]
pub enum Action {
    /// Create a key from this spec (prints its secret once).
    Create(KeySpec),
    /// List the keys (never secrets): an aligned table, or JSON when `json`.
    List {
        /// One JSON array instead of the table.
        json: bool,
    },
    /// Revoke the key with this id.
    Revoke(String),
}

/// Where the command goes.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The broker's HTTP address (`http://127.0.0.1:9883`); default from `http.bind`.
    pub url: Option<String>,
    /// `ID:SECRET` of an admin key (HTTP only).
    pub admin_key: Option<String>,
}

/// Why a key command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The key operation itself failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The running broker's HTTP admin endpoint failed or refused.
    #[error("{0}")]
    Http(String),
    /// The command line or environment is unusable.
    #[error("{0}")]
    Usage(String),
}

/// What a command printed: stdout text and stderr text.
#[derive(Debug, Default)]
pub struct Output {
    /// Text for standard output.
    pub stdout: String,
    /// Text for standard error.
    pub stderr: String,
}

/// Runs `action` against the store of `cfg` or the running broker.
///
/// # Errors
/// [`CliError`] saying what failed and what to do.
pub fn run(cfg: &Config, action: Action, target: &Target) -> Result<Output, CliError> {
    if target.url.is_none() && cfg.storage.backend == Backend::Fjall {
        match FjallStore::open(&cfg.storage.data_dir, cfg.storage.durability) {
            Ok(store) => return offline(cfg, Arc::new(store), action),
            Err(StoreError::Locked { .. }) => {}
            Err(e) => return Err(AuthError::Store(e).into()),
        }
    }
    let url = match &target.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None if cfg.http.bind.is_empty() => {
            return Err(CliError::Usage(
                "the broker runs but http.bind is empty: no admin endpoint to reach; stop the broker or \
                 enable [http]"
                    .into(),
            ));
        }
        None => format!("http://{}", cfg.http.bind.replace("0.0.0.0", "127.0.0.1")),
    };
    let cred = match (&target.admin_key, &action) {
        (Some(key), _) => Some(Credential::Bearer(key.clone())),
        (None, Action::Create(spec)) if spec.admin => read_bootstrap(cfg).map(Credential::Bootstrap),
        (None, _) => None,
    };
    online(&url, cred.as_ref(), action)
}

/// What the CLI presents to the admin endpoint.
#[derive(Debug, Clone)]
enum Credential {
    /// `ID:SECRET` of an admin key.
    Bearer(String),
    /// The broker's bootstrap token.
    Bootstrap(String),
}

impl Credential {
    fn header(&self) -> String {
        match self {
            Credential::Bearer(k) => format!("Authorization: Bearer {k}\r\n"),
            Credential::Bootstrap(t) => format!("Authorization: Bootstrap {t}\r\n"),
        }
    }
}

/// The bootstrap token the running broker left in its data directory, if any.
fn read_bootstrap(cfg: &Config) -> Option<String> {
    let text = std::fs::read_to_string(super::bootstrap::token_file(&cfg.storage.data_dir)).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty())
}

/// `key create --print-config`: a `[[auth.keys]]` block on stdout (hash only) to seed the
/// key from config; the generated secret goes to stderr, once. Touches no store.
///
/// # Errors
/// [`CliError::Auth`] for an invalid spec.
pub fn print_config(spec: KeySpec) -> Result<Output, CliError> {
    let imported = !spec.secret.is_empty();
    let (key, secret) = spec.into_record()?;
    #[derive(serde::Serialize)]
    struct Seed<'a> {
        auth: SeedKeys<'a>,
    }
    #[derive(serde::Serialize)]
    struct SeedKeys<'a> {
        keys: [&'a super::KeyRecord; 1],
    }
    let toml = toml::to_string(&Seed { auth: SeedKeys { keys: [&key.record] } })
        .map_err(|e| CliError::Usage(format!("cannot write TOML: {e}")))?;
    let stderr = if imported {
        format!("key {}: [[auth.keys]] block printed (hash of the imported secret)", key.record.id)
    } else {
        format!("key {} secret (shown once, not in the block): {secret}", key.record.id)
    };
    Ok(Output { stdout: toml, stderr })
}

fn offline(cfg: &Config, store: Arc<FjallStore>, action: Action) -> Result<Output, CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start a runtime: {e}")))?;
    let keys = store.keys().map_err(AuthError::Store)?;
    let dyn_store: Arc<dyn Store> = store.clone();
    let auth = Auth::new(Settings::default(), keys, &cfg.auth.keys, Some(dyn_store))?;
    let out = rt.block_on(async { apply(&auth, action).await });
    drop(auth);
    store.close().map_err(AuthError::Store)?;
    out
}

async fn apply(auth: &Auth, action: Action) -> Result<Output, CliError> {
    Ok(match action {
        Action::Create(spec) => {
            let (info, secret) = auth.create(spec).await?;
            created(&info, &secret)
        }
        Action::List { json } => Output { stdout: format_list(&auth.list(), json), stderr: String::new() },
        Action::Revoke(name) => {
            let closed = auth.revoke(&name).await?;
            Output {
                stdout: String::new(),
                stderr: format!("key {name} revoked ({closed} connections closed)"),
            }
        }
    })
}

fn created(info: &KeyInfo, secret: &str) -> Output {
    Output {
        stdout: format!("{secret}\n"),
        stderr: format!(
            "key {} created; its secret is printed above, once: use it as the MQTT password with \
             username {}",
            info.id, info.id
        ),
    }
}

/// `key list` output: an aligned table with a header (empty lists and values shown as `-`),
/// or the keys as one JSON array (`--json`, the same fields as the admin API).
pub fn format_list(keys: &[KeyInfo], json: bool) -> String {
    if json {
        return serde_json::to_string_pretty(keys).map(|j| j + "\n").unwrap_or_default();
    }
    let dash = |v: String| if v.is_empty() { "-".to_string() } else { v };
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                if k.admin { "admin".into() } else { "-".into() },
                dash(k.publish.join(",")),
                dash(k.subscribe.join(",")),
                dash(k.deny_publish.join(",")),
                dash(k.deny_subscribe.join(",")),
                dash(k.client_id.clone()),
                dash(k.expires.clone()),
                dash(k.created.clone()),
                k.source.clone(),
            ]
        })
        .collect();
    let header = [
        "ID",
        "ROLE",
        "PUBLISH",
        "SUBSCRIBE",
        "DENY_PUBLISH",
        "DENY_SUBSCRIBE",
        "CLIENT_ID",
        "EXPIRES",
        "CREATED",
        "SOURCE",
    ];
    table(&header, &rows)
}

/// Left-aligned columns, two spaces apart, trailing spaces trimmed.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (cell, w) in cells.iter().zip(&width) {
            l.push_str(&format!("{cell:<w$}  "));
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn online(url: &str, cred: Option<&Credential>, action: Action) -> Result<Output, CliError> {
    let (method, path, body) = match &action {
        Action::Create(spec) => {
            ("POST", "/admin/keys".to_string(), serde_json::to_string(spec).unwrap_or_default())
        }
        Action::List { .. } => ("GET", "/admin/keys".to_string(), String::new()),
        Action::Revoke(name) => ("DELETE", format!("/admin/keys/{name}"), String::new()),
    };
    let (status, text) = request(url, method, &path, cred, &body)?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&status) {
        let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or(text.trim());
        return Err(CliError::Http(format!("broker at {url} answered {status}: {msg}")));
    }
    let bad = || CliError::Http(format!("broker at {url} sent an unexpected answer: {text}"));
    Ok(match action {
        Action::Create(_) => {
            let secret = v.get("secret").and_then(|s| s.as_str()).ok_or_else(bad)?;
            let info: KeyInfo =
                serde_json::from_value(v.get("key").cloned().ok_or_else(bad)?).map_err(|_| bad())?;
            created(&info, secret)
        }
        Action::List { json } => {
            let keys: Vec<KeyInfo> = serde_json::from_value(v).map_err(|_| bad())?;
            Output { stdout: format_list(&keys, json), stderr: String::new() }
        }
        Action::Revoke(name) => {
            let closed = v.get("closed").and_then(serde_json::Value::as_u64).unwrap_or(0);
            Output {
                stdout: String::new(),
                stderr: format!("key {name} revoked ({closed} connections closed)"),
            }
        }
    })
}

/// `GET url+path` with `Authorization: Bearer KEY` when `key` is given (`ID:SECRET`); returns
/// status and body. For CLI commands that read a running broker's HTTP API.
///
/// # Errors
/// [`CliError::Http`] when the broker cannot be reached or does not answer HTTP;
/// [`CliError::Usage`] for a URL that is not `http://`.
pub fn http_get(url: &str, path: &str, key: Option<&str>) -> Result<(u16, String), CliError> {
    let cred = key.map(|k| Credential::Bearer(k.to_string()));
    request(url.trim_end_matches('/'), "GET", path, cred.as_ref(), "")
}

/// A minimal HTTP/1.1 request (`Connection: close`); returns status and body.
fn request(
    url: &str,
    method: &str,
    path: &str,
    cred: Option<&Credential>,
    body: &str,
) -> Result<(u16, String), CliError> {
    let host = url
        .strip_prefix("http://")
        .ok_or_else(|| CliError::Usage(format!("{url}: only http:// URLs are supported")))?;
    let host = host.split('/').next().unwrap_or(host);
    let fail = |e: std::io::Error| {
        CliError::Http(format!("cannot reach the broker's HTTP admin endpoint at {url}: {e}"))
    };
    let mut s = TcpStream::connect(host).map_err(fail)?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(fail)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(c) = cred {
        req.push_str(&c.header());
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).map_err(fail)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(fail)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CliError::Http(format!("{url} did not answer HTTP")))?;
    Ok((status, body.to_string()))
}
