//! API keys: authentication at CONNECT, per-connection permissions, key management (create,
//! list, revoke) and the live connections of each key, so a revocation closes them at once.
//!
//! Modes, decided at each CONNECT:
//! - **No key exists** (development, the secure default): loopback clients are unrestricted
//!   whatever credentials they send, unless `[auth.anonymous]` is configured: then they get
//!   those permissions (what an operator wrote down always applies). Others need
//!   `auth.allow_anonymous` and get `[auth.anonymous]`. A WebSocket client whose upgrade
//!   carried an `Origin` header (a web page, even of a listed origin) never counts as loopback:
//!   a page the operator opens must not inherit the host's trust.
//! - **Keys exist**: a username must name a key and the password must be its secret (or the
//!   TLS client certificate named it, `use_identity_as_username`); clients without a username
//!   are anonymous, allowed only with `auth.allow_anonymous`, with `[auth.anonymous]`.
//!
//! Keys live in the store (`keys` keyspace) and in memory behind one `RwLock`, read once per
//! CONNECT; the publish and delivery paths only see the connection's compiled [`Perms`].

pub(crate) mod admin;
pub mod bootstrap;
pub mod cli;
pub(crate) mod key;
pub(crate) mod perms;
pub(crate) mod throttle;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

pub use crate::config::{AnonymousConfig, KeyRecord, OnForbidden, SessionTakeover};
use crate::model::{Kill, KillReason, SessionOwner};
use crate::store::{Op, Store, StoreError, StoredKey};
use dataloom_codec::reason;
pub use key::Key;
pub use perms::{Lists, Perms};
use throttle::Throttle;

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key record or spec is unusable; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A key with this id exists.
    #[error("key {0:?} already exists; revoke it first or choose another name")]
    Exists(String),
    /// No key with this id.
    #[error("no key named {0:?}")]
    NotFound(String),
    /// A stored key record cannot be read back.
    #[error("a stored API key is corrupt: {0}; restore a backup of the data directory")]
    Corrupt(String),
    /// The store refused the change.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The auth settings of `[auth]` the broker uses at run time.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `auth.allow_anonymous`: anonymous clients on non-loopback listeners too.
    pub allow_anonymous: bool,
    /// `[auth.anonymous]`: what anonymous clients may do; `None` when not configured (then
    /// loopback clients are unrestricted while no key exists, and other anonymous clients get
    /// [`AnonymousConfig::default`]).
    pub anonymous: Option<AnonymousConfig>,
    /// `auth.on_forbidden_publish`.
    pub on_forbidden_publish: OnForbidden,
    /// `auth.session_takeover`: may another identity use an existing session's client id.
    pub session_takeover: SessionTakeover,
}

/// Who a connection is.
#[derive(Debug, Clone)]
pub enum Principal {
    /// No key exists, `[auth.anonymous]` is not configured and the client is local:
    /// everything allowed.
    Unrestricted,
    /// No credentials; `[auth.anonymous]` applies.
    Anonymous,
    /// An API key (the CONNECT username).
    Key(Arc<Key>),
}

impl Principal {
    /// The identity a session made by this principal belongs to.
    pub fn identity(&self) -> SessionOwner {
        match self {
            Principal::Unrestricted => SessionOwner::Unrestricted,
            Principal::Anonymous => SessionOwner::Anonymous,
            Principal::Key(k) => SessionOwner::Key(Arc::from(k.record.id.as_str())),
        }
    }
}

/// A refused CONNECT: the v5 CONNACK code and how long to wait before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The CONNACK reason code (v5; mapped to a 3.1.1 return code).
    pub code: u8,
    /// How long to wait before answering (brute-force throttle).
    pub delay: Duration,
}

/// Metric label indices of `dataloom_auth_failures_total` (see `metrics::reasons`).
mod failure {
    pub const UNKNOWN_KEY: usize = 0;
    pub const BAD_SECRET: usize = 1;
    pub const REVOKED: usize = 2;
    pub const ANONYMOUS: usize = 3;
    pub const EXPIRED: usize = 4;
    pub const CLIENT_ID: usize = 5;
    pub const SESSION_OWNER: usize = 6;
}

/// Metric label indices of `dataloom_authorization_denials_total`.
pub mod action {
    /// `action="publish"`.
    pub const PUBLISH: usize = 0;
    /// `action="subscribe"`.
    pub const SUBSCRIBE: usize = 1;
}

/// Counts an authorization denial of `action` (see [`action`]).
pub fn count_denial(action: usize) {
    if let Some(c) = crate::metrics::get().authz_denials.get(action) {
        c.inc();
    }
}

/// Counts a CONNECT refused because its client id's session belongs to another identity
/// (`reason="session_owner"`).
pub fn count_session_owner_refusal() {
    count_failure(failure::SESSION_OWNER);
}

fn count_failure(reason: usize) {
    if let Some(c) = crate::metrics::get().auth_failures.get(reason) {
        c.inc();
    }
}

/// Keys, settings, the brute-force table and the live connections of each key.
#[derive(Debug, Default)]
pub struct Auth {
    settings: Settings,
    keys: RwLock<HashMap<Arc<str>, Arc<Key>>>,
    live: Mutex<HashMap<Arc<str>, Vec<Weak<Kill>>>>,
    /// Failed attempts per client address.
    pub throttle: Throttle,
    /// The one-time token that creates the first admin key over HTTP.
    pub bootstrap: bootstrap::Bootstrap,
    store: Option<Arc<dyn Store>>,
}

/// A key as `key list` shows it (no secret, no hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key id.
    pub id: String,
    /// Filters it may publish to.
    pub publish: Vec<String>,
    /// Filters it may subscribe to.
    pub subscribe: Vec<String>,
    /// Filters it may never publish to.
    pub deny_publish: Vec<String>,
    /// Filters it may never read.
    pub deny_subscribe: Vec<String>,
    /// Has the admin role.
    pub admin: bool,
    /// Client-id pattern (empty: any).
    pub client_id: String,
    /// Expiry, RFC 3339 (empty: never).
    pub expires: String,
    /// Creation time, RFC 3339.
    pub created: String,
    /// `config` when seeded from `[[auth.keys]]`, else `store`.
    pub source: String,
}

impl KeyInfo {
    /// What may be shown of `k` (no hash).
    pub fn of(k: &Key) -> KeyInfo {
        let r = &k.record;
        KeyInfo {
            id: r.id.clone(),
            publish: r.publish.clone(),
            subscribe: r.subscribe.clone(),
            deny_publish: r.deny_publish.clone(),
            deny_subscribe: r.deny_subscribe.clone(),
            admin: r.admin,
            client_id: r.client_id.clone(),
            expires: r.expires.clone(),
            created: r.created.clone(),
            source: if k.from_config { "config" } else { "store" }.into(),
        }
    }
}

/// What `key create` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KeySpec {
    /// The key id (the MQTT username).
    pub name: String,
    /// Filters it may publish to (`%c` client id, `%u` key id).
    pub publish: Vec<String>,
    /// Filters it may subscribe to.
    pub subscribe: Vec<String>,
    /// Filters it may never publish to (deny wins).
    pub deny_publish: Vec<String>,
    /// Filters it may never read (deny wins).
    pub deny_subscribe: Vec<String>,
    /// Role admin: `$schema/`, `$SYS/`, `$dead/`, key management.
    pub admin: bool,
    /// Client ids it may connect with (glob; empty: any).
    pub client_id: String,
    /// Expiry, RFC 3339 (empty: never).
    pub expires: String,
    /// An imported secret (at least 32 characters); empty = generate one.
    pub secret: String,
}

impl KeySpec {
    /// The record and the secret (generated unless imported).
    ///
    /// # Errors
    /// [`AuthError::Invalid`] naming the bad field.
    pub fn into_record(self) -> Result<(Key, String), AuthError> {
        let secret = if self.secret.is_empty() {
            key::new_secret()
        } else {
            key::check_secret(&self.secret)?;
            self.secret
        };
        let record = KeyRecord {
            id: self.name,
            secret_sha256: key::hash_hex(&secret),
            publish: self.publish,
            subscribe: self.subscribe,
            deny_publish: self.deny_publish,
            deny_subscribe: self.deny_subscribe,
            admin: self.admin,
            client_id: self.client_id,
            expires: self.expires,
            created: key::format_time(SystemTime::now()),
        };
        Ok((Key::new(record, false)?, secret))
    }
}

impl Auth {
    /// The auth state from `settings`, the keys of the store and the keys seeded in config
    /// (config wins on a clash).
    ///
    /// # Errors
    /// [`AuthError::Invalid`] for a bad seeded or stored key, naming it.
    pub fn new(
        settings: Settings,
        stored: Vec<StoredKey>,
        seeded: &[KeyRecord],
        store: Option<Arc<dyn Store>>,
    ) -> Result<Auth, AuthError> {
        let mut keys = HashMap::new();
        for r in &stored {
            let k = Key::new(key::decode_record(r)?, false)?;
            keys.insert(Arc::from(k.record.id.as_str()), Arc::new(k));
        }
        for r in seeded {
            let k =
                Key::new(r.clone(), true).map_err(|e| AuthError::Invalid(format!("[[auth.keys]]: {e}")))?;
            keys.insert(Arc::from(k.record.id.as_str()), Arc::new(k));
        }
        Ok(Auth { settings, keys: RwLock::new(keys), store, ..Auth::default() })
    }

    /// The `[auth]` settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Number of keys.
    pub fn key_count(&self) -> usize {
        self.keys.read().len()
    }

    /// The rule clients without a key are under now, in one sentence for the start-up log.
    pub fn anonymous_rule(&self) -> &'static str {
        let s = &self.settings;
        match (self.key_count() > 0, s.anonymous.is_some(), s.allow_anonymous) {
            (false, false, _) => {
                "no API key and no [auth.anonymous]: loopback clients are unrestricted until the \
                 first key is created; others need auth.allow_anonymous"
            }
            (false, true, _) => {
                "no API key: clients without a key, loopback ones included, get the \
                 [auth.anonymous] permissions; others need auth.allow_anonymous"
            }
            (true, _, false) => {
                "API keys exist: clients without a key are refused (auth.allow_anonymous = false)"
            }
            (true, true, true) => {
                "API keys exist: clients without a key get the [auth.anonymous] permissions"
            }
            (true, false, true) => {
                "API keys exist: clients without a key get the default anonymous permissions \
                 (publish and subscribe #; [auth.anonymous] is not configured)"
            }
        }
    }

    /// True when some key has the admin role.
    pub fn has_admin_key(&self) -> bool {
        self.keys.read().values().any(|k| k.record.admin)
    }

    /// At start: while no admin key exists, makes the bootstrap token and writes it to
    /// `data_dir` (see [`bootstrap`]), logging the file's path (never the token). Without a
    /// data directory (memory store) bootstrap over HTTP stays off. Once an admin key exists,
    /// a token file left behind is deleted.
    ///
    /// # Errors
    /// The I/O error of writing or deleting the token file.
    pub fn start_bootstrap(&self, data_dir: Option<&std::path::Path>) -> std::io::Result<()> {
        match data_dir {
            Some(dir) if self.has_admin_key() => bootstrap::Bootstrap::remove_stale(dir),
            Some(dir) => {
                let file = self.bootstrap.arm(dir)?;
                tracing::info!(
                    file = %file.display(),
                    "no admin key yet: the bootstrap token to create the first one is in this file \
                     (dataloom key create --admin reads it)"
                );
                Ok(())
            }
            None if self.has_admin_key() => Ok(()),
            None => {
                tracing::info!(
                    "no admin key and no data directory (memory store): bootstrap over HTTP is off; \
                     seed an admin key in [[auth.keys]] (dataloom key create --admin --print-config)"
                );
                Ok(())
            }
        }
    }

    /// Authenticates a CONNECT. `cert_identity` says the username came from a verified TLS
    /// client certificate (no secret needed). On success the connection's `kill` switch is
    /// registered under its key, so a revocation reaches it.
    ///
    /// # Errors
    /// [`Refused`] with the v5 CONNACK code: 0x86 bad credentials (delayed per peer), 0x87
    /// not allowed (anonymous where not allowed, expired key, client id not allowed).
    pub fn authenticate(&self, c: &Cred<'_>, kill: &Arc<Kill>) -> Result<Principal, Refused> {
        let keys = self.keys.read();
        let principal = self.principal(&keys, c)?;
        if let Principal::Key(key) = &principal {
            // Registered while the read lock is held: a revocation (write lock) either ran
            // before (the key is gone) or runs after and finds this connection.
            let mut live = self.live.lock();
            let list = live.entry(Arc::from(key.record.id.as_str())).or_default();
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(kill));
        }
        Ok(principal)
    }

    /// Authenticates one HTTP request (state API) by the rules of [`Auth::authenticate`]:
    /// `Authorization: Bearer <key id>:<secret>` as username and password. A request lives
    /// for one answer, so nothing is registered for revocation: the next request after a
    /// revocation is refused.
    ///
    /// # Errors
    /// As [`Auth::authenticate`].
    pub fn authenticate_request(&self, c: &Cred<'_>) -> Result<Principal, Refused> {
        self.principal(&self.keys.read(), c)
    }

    fn principal(&self, keys: &HashMap<Arc<str>, Arc<Key>>, c: &Cred<'_>) -> Result<Principal, Refused> {
        let local = !c.browser && c.peer.is_some_and(is_local);
        if keys.is_empty() && local {
            return Ok(match self.settings.anonymous {
                None => Principal::Unrestricted,
                Some(_) => Principal::Anonymous,
            });
        }
        let not_authorized = Refused { code: reason::NOT_AUTHORIZED, delay: Duration::ZERO };
        let Some(id) = c.username.filter(|_| !keys.is_empty()) else {
            if c.password.is_some() && !keys.is_empty() {
                return Err(self.bad_credentials(failure::UNKNOWN_KEY, c.peer));
            }
            if self.settings.allow_anonymous {
                return Ok(Principal::Anonymous);
            }
            count_failure(failure::ANONYMOUS);
            return Err(not_authorized);
        };
        let Some(key) = keys.get(id).cloned() else {
            // Same work as a known key, so timing does not tell which ids exist.
            let _ = key::hash_secret(c.password.unwrap_or_default());
            return Err(self.bad_credentials(failure::UNKNOWN_KEY, c.peer));
        };
        if !c.cert_identity && !c.password.is_some_and(|p| key.verify(p)) {
            return Err(self.bad_credentials(failure::BAD_SECRET, c.peer));
        }
        if key.expired(SystemTime::now()) {
            count_failure(failure::EXPIRED);
            return Err(not_authorized);
        }
        if !key.allows_client_id(c.client_id) {
            count_failure(failure::CLIENT_ID);
            return Err(not_authorized);
        }
        Ok(Principal::Key(key))
    }

    fn bad_credentials(&self, reason: usize, peer: Option<IpAddr>) -> Refused {
        count_failure(reason);
        let delay = peer.map_or(Duration::ZERO, |ip| self.throttle.failed(ip));
        Refused { code: reason::BAD_USER_NAME_OR_PASSWORD, delay }
    }

    /// The compiled permissions of `principal` connected as `client_id`.
    pub fn perms(&self, principal: &Principal, client_id: &str) -> Perms {
        match principal {
            Principal::Unrestricted => Perms::unrestricted(),
            Principal::Anonymous => {
                let default;
                let a = match &self.settings.anonymous {
                    Some(a) => a,
                    None => {
                        default = AnonymousConfig::default();
                        &default
                    }
                };
                let lists = Lists {
                    publish: &a.publish,
                    subscribe: &a.subscribe,
                    deny_publish: &a.deny_publish,
                    deny_subscribe: &a.deny_subscribe,
                    admin: false,
                };
                Perms::compile(lists, client_id, None)
            }
            Principal::Key(k) => {
                let r = &k.record;
                let lists = Lists {
                    publish: &r.publish,
                    subscribe: &r.subscribe,
                    deny_publish: &r.deny_publish,
                    deny_subscribe: &r.deny_subscribe,
                    admin: r.admin,
                };
                Perms::compile(lists, client_id, Some(&r.id))
            }
        }
    }

    /// Checks an admin credential `id:secret` (HTTP admin endpoint).
    pub fn verify_admin(&self, id: &str, secret: &str) -> bool {
        let keys = self.keys.read();
        let Some(k) = keys.get(id) else {
            let _ = key::hash_secret(secret.as_bytes());
            return false;
        };
        k.verify(secret.as_bytes()) && k.record.admin && !k.expired(SystemTime::now())
    }

    /// Every key, sorted by id.
    pub fn list(&self) -> Vec<KeyInfo> {
        let mut v: Vec<KeyInfo> = self.keys.read().values().map(|k| KeyInfo::of(k)).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Creates a key, durably; returns its secret (shown once).
    ///
    /// # Errors
    /// [`AuthError`]: invalid spec, existing name, store failure.
    pub async fn create(&self, spec: KeySpec) -> Result<(KeyInfo, String), AuthError> {
        let (key, secret) = spec.into_record()?;
        let id: Arc<str> = Arc::from(key.record.id.as_str());
        if self.keys.read().contains_key(&id) {
            return Err(AuthError::Exists(key.record.id.clone()));
        }
        if let Some(store) = &self.store {
            store
                .submit(
                    vec![Op::PutKey {
                        id: Arc::from(key.record.id.as_str()),
                        record: key::encode_record(&key.record),
                    }],
                    true,
                )
                .wait()
                .await?;
        }
        let info = KeyInfo::of(&key);
        let mut keys = self.keys.write();
        if keys.contains_key(&id) {
            return Err(AuthError::Exists(info.id));
        }
        keys.insert(id, Arc::new(key));
        drop(keys);
        tracing::info!(key = %info.id, admin = info.admin, "API key created");
        if info.admin {
            self.bootstrap.consume();
        }
        Ok((info, secret))
    }

    /// Revokes a key: later CONNECTs are refused and its live connections are closed now
    /// (v5 DISCONNECT 0x98 Administrative action). Returns how many were closed.
    ///
    /// # Errors
    /// [`AuthError::NotFound`], or the store failure (the key stays revoked in memory).
    pub async fn revoke(&self, id: &str) -> Result<usize, AuthError> {
        let removed = self.keys.write().remove(id);
        let Some(key) = removed else {
            return Err(AuthError::NotFound(id.to_string()));
        };
        let kills = self.live.lock().remove(id).unwrap_or_default();
        let mut closed = 0;
        for k in kills.iter().filter_map(Weak::upgrade) {
            k.fire(KillReason::Revoked);
            count_failure(failure::REVOKED);
            closed += 1;
        }
        tracing::info!(key = %id, closed, "API key revoked");
        if key.from_config {
            tracing::warn!(key = %id, "key was seeded from [[auth.keys]]; remove it there or it returns at restart");
        } else if let Some(store) = &self.store {
            store.submit(vec![Op::DeleteKey(Arc::from(id))], true).wait().await?;
        }
        Ok(closed)
    }
}

/// What a CONNECT presents.
#[derive(Debug, Clone, Copy)]
pub struct Cred<'a> {
    /// CONNECT username.
    pub username: Option<&'a str>,
    /// CONNECT password.
    pub password: Option<&'a [u8]>,
    /// CONNECT client id.
    pub client_id: &'a str,
    /// The username is the CN of a verified TLS client certificate.
    pub cert_identity: bool,
    /// The client's address (for the throttle and the loopback rule).
    pub peer: Option<IpAddr>,
    /// A web page: the WebSocket upgrade carried an `Origin` header. Never loopback-trusted.
    pub browser: bool,
}

/// A loopback address, IPv4-mapped IPv6 ones included.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || is_mapped_loopback(ip)
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests;
