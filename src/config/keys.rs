//! The option types of `[auth]` and their validation: an API key record as stored and as
//! written in `[[auth.keys]]`, what anonymous clients may do, what a forbidden PUBLISH gets.
//! Pure data and checks (no hashing of secrets, no connections): `auth` builds on them.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// An API key as stored (fjall `keys` keyspace, JSON) and as written in `[[auth.keys]]`.
/// Holds the hash of the secret, never the secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyRecord {
    /// The key id: the CONNECT username.
    pub id: String,
    /// SHA-256 of the secret (with the domain prefix), 64 lowercase hex characters.
    pub secret_sha256: String,
    /// Topic filters the key may publish to (`%c` client id, `%u` key id).
    pub publish: Vec<String>,
    /// Topic filters the key may subscribe to.
    pub subscribe: Vec<String>,
    /// Filters the key may never publish to (deny wins).
    pub deny_publish: Vec<String>,
    /// Filters the key may never read (deny wins, also inside a wider subscription).
    pub deny_subscribe: Vec<String>,
    /// Role `admin`: may write `$schema/`, read `$SYS/` and `$dead/`, manage keys over HTTP.
    pub admin: bool,
    /// Client ids the key may connect with: a glob (`*`, `?`, `%u`); empty = any.
    pub client_id: String,
    /// Expiry time, RFC 3339 (`2030-01-01T00:00:00Z`); empty = never.
    pub expires: String,
    /// Creation time, RFC 3339 (informational).
    pub created: String,
}

impl KeyRecord {
    /// Checks every field: id, hash format, topic filters, expiry.
    ///
    /// # Errors
    /// One line naming the key and the field at fault.
    pub fn check(&self) -> Result<(), String> {
        let invalid = |message: &str| format!("key {:?}: {message}", self.id);
        check_id(&self.id)?;
        if parse_hash(&self.secret_sha256).is_none() {
            return Err(invalid("secret_sha256 must be 64 hex characters"));
        }
        let lists = [&self.publish, &self.subscribe, &self.deny_publish, &self.deny_subscribe];
        for f in lists.into_iter().flatten() {
            check_filter(f).map_err(|e| invalid(&format!("topic filter {f:?}: {e}")))?;
        }
        if !self.expires.is_empty() {
            parse_time(&self.expires).map_err(|e| invalid(&e))?;
        }
        Ok(())
    }
}

/// `[auth.anonymous]`: what clients without credentials may do where they are allowed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AnonymousConfig {
    /// Filters anonymous clients may publish to.
    pub publish: Vec<String>,
    /// Filters anonymous clients may subscribe to.
    pub subscribe: Vec<String>,
    /// Filters anonymous clients may never publish to.
    pub deny_publish: Vec<String>,
    /// Filters anonymous clients may never read.
    pub deny_subscribe: Vec<String>,
}

impl Default for AnonymousConfig {
    fn default() -> Self {
        AnonymousConfig {
            publish: vec!["#".into()],
            subscribe: vec!["#".into()],
            deny_publish: Vec::new(),
            deny_subscribe: Vec::new(),
        }
    }
}

/// `auth.on_forbidden_publish`: a forbidden PUBLISH that no negative ack can answer (MQTT
/// 3.x, and v5 QoS 0), per [MQTT-3.3.5-2].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnForbidden {
    /// Acknowledge as usual and drop it (counted), like Mosquitto.
    #[default]
    Drop,
    /// Close the connection (v5: DISCONNECT 0x87).
    Disconnect,
}

/// Key ids: 1 to 128 characters of `A-Z a-z 0-9 . _ - @ :`.
///
/// # Errors
/// What is wrong, in one line.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_@:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("key name {id:?}: use 1 to 128 characters of A-Z a-z 0-9 . _ - @ :"))
    }
}

/// Checks the syntax of a permission filter (as a subscription filter; placeholders allowed).
///
/// # Errors
/// What is wrong with it.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("empty".into());
    }
    let n = filter.split('/').count();
    for (i, l) in filter.split('/').enumerate() {
        if l == "#" && i + 1 != n {
            return Err("# must be the last level".into());
        }
        if l.len() > 1 && (l.contains('+') || l.contains('#')) {
            return Err("+ and # must fill a whole level".into());
        }
    }
    if filter.contains('\0') {
        return Err("contains U+0000".into());
    }
    Ok(())
}

/// The 32 bytes of a 64-hex-character hash, or `None`.
pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses an RFC 3339 time (`2030-01-01T00:00:00Z`, offsets allowed).
///
/// # Errors
/// A message saying what is expected.
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .or_else(|_| parse_offset(s).ok_or(()))
        .map_err(|()| format!("{s:?} is not an RFC 3339 time (e.g. 2030-01-01T00:00:00Z)"))
}

/// RFC 3339 with a numeric offset (`+02:00`), which humantime does not read.
fn parse_offset(s: &str) -> Option<SystemTime> {
    let (at, sign) = s.rfind('+').map(|i| (i, 1i64)).or_else(|| s.rfind('-').map(|i| (i, -1)))?;
    let (base, off) = s.split_at(at);
    let off = off.get(1..)?;
    let (h, m) = off.split_once(':')?;
    let secs = sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60);
    if !base.contains('T') || off.len() != 5 {
        return None;
    }
    let t = humantime::parse_rfc3339_weak(base).ok()?;
    let shift = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 { t.checked_sub(shift) } else { t.checked_add(shift) }
}
