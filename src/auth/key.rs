//! API keys: the stored record (id, SHA-256 of the secret, permissions, roles, expiry), new
//! random secrets, hashing and the constant-time check of a presented secret.
//!
//! A secret is 256 random bits written as 64 hex characters and is shown once, at creation.
//! Only `SHA-256("dataloom-api-key-v1\0" ‖ secret)` is kept (docs/decisions.md explains why no
//! slow KDF and no pepper). Neither the secret nor the hash is ever logged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;
use super::perms::{Glob, check_filter};

/// Domain separation of the secret hash (a hash of this format means nothing elsewhere).
const HASH_DOMAIN: &[u8] = b"dataloom-api-key-v1\0";

/// Shortest secret `--secret-stdin` accepts.
pub const MIN_SECRET_LEN: usize = 32;

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

/// A key ready for CONNECT: the record with its parsed hash, expiry and client-id pattern.
#[derive(Debug)]
pub struct Key {
    pub record: KeyRecord,
    hash: [u8; 32],
    expires_at: Option<SystemTime>,
    client_pattern: Option<Glob>,
    /// Seeded from `[[auth.keys]]` (not in the store).
    pub from_config: bool,
}

impl Key {
    /// Checks and parses a record.
    ///
    /// # Errors
    /// [`AuthError::Invalid`] naming the field at fault.
    pub fn new(record: KeyRecord, from_config: bool) -> Result<Key, AuthError> {
        check_id(&record.id)?;
        let hash = parse_hash(&record.secret_sha256)
            .ok_or_else(|| invalid(&record.id, "secret_sha256 must be 64 hex characters"))?;
        let lists = [&record.publish, &record.subscribe, &record.deny_publish, &record.deny_subscribe];
        for f in lists.into_iter().flatten() {
            check_filter(f).map_err(|e| invalid(&record.id, &format!("topic filter {f:?}: {e}")))?;
        }
        let expires_at = match record.expires.as_str() {
            "" => None,
            s => Some(parse_time(s).map_err(|e| invalid(&record.id, &e))?),
        };
        let client_pattern = (!record.client_id.is_empty()).then(|| Glob::new(&record.client_id));
        Ok(Key { record, hash, expires_at, client_pattern, from_config })
    }

    /// Constant-time comparison of `secret`'s hash with the stored one.
    pub fn verify(&self, secret: &[u8]) -> bool {
        hash_secret(secret).ct_eq(&self.hash).into()
    }

    /// True when the key has expired at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// True when the key may connect with `client_id`.
    pub fn allows_client_id(&self, client_id: &str) -> bool {
        self.client_pattern.as_ref().is_none_or(|g| g.matches(client_id, &self.record.id))
    }
}

fn invalid(id: &str, message: &str) -> AuthError {
    AuthError::Invalid(format!("key {id:?}: {message}"))
}

/// Key ids: 1 to 128 characters of `A-Z a-z 0-9 . _ - @ :`.
///
/// # Errors
/// [`AuthError::Invalid`].
pub fn check_id(id: &str) -> Result<(), AuthError> {
    let ok = (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b".-_@:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!("key name {id:?}: use 1 to 128 characters of A-Z a-z 0-9 . _ - @ :")))
    }
}

/// `SHA-256(domain ‖ secret)`.
pub fn hash_secret(secret: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(secret);
    h.finalize().into()
}

/// The stored (hex) form of a secret's hash.
pub fn hash_hex(secret: &str) -> String {
    to_hex(&hash_secret(secret.as_bytes()))
}

/// A new secret: 256 random bits as 64 hex characters.
pub fn new_secret() -> String {
    to_hex(&rand::random::<[u8; 32]>())
}

/// Checks an imported secret (`--secret-stdin`).
///
/// # Errors
/// [`AuthError::Invalid`] when shorter than [`MIN_SECRET_LEN`] or not printable ASCII.
pub fn check_secret(secret: &str) -> Result<(), AuthError> {
    if secret.len() < MIN_SECRET_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(AuthError::Invalid(format!(
            "the secret must be at least {MIN_SECRET_LEN} printable ASCII characters without spaces"
        )));
    }
    Ok(())
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
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

/// Formats a time as RFC 3339 (UTC, seconds).
pub fn format_time(t: SystemTime) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(secret: &str) -> KeyRecord {
        KeyRecord { id: "k1".into(), secret_sha256: hash_hex(secret), ..KeyRecord::default() }
    }

    #[test]
    fn verify_and_reject() {
        let s = new_secret();
        assert_eq!(s.len(), 64);
        let k = Key::new(record(&s), false).expect("valid");
        assert!(k.verify(s.as_bytes()));
        assert!(!k.verify(b"wrong"));
        assert!(!k.verify(b""));
    }

    #[test]
    fn expiry_parses() {
        let mut r = record("x");
        r.expires = "2001-01-01T00:00:00Z".into();
        let k = Key::new(r.clone(), false).expect("valid");
        assert!(k.expired(SystemTime::now()));
        r.expires = "2999-01-01T00:00:00+02:00".into();
        assert!(!Key::new(r.clone(), false).expect("valid").expired(SystemTime::now()));
        r.expires = "tomorrow".into();
        assert!(Key::new(r, false).is_err());
    }

    #[test]
    fn bad_records_are_refused() {
        let mut r = record("x");
        r.secret_sha256 = "abc".into();
        assert!(Key::new(r, false).is_err());
        let mut r = record("x");
        r.publish = vec!["a/#/b".into()];
        assert!(Key::new(r, false).is_err());
        let mut r = record("x");
        r.id = "has space".into();
        assert!(Key::new(r, false).is_err());
        assert!(check_secret("short").is_err());
        assert!(check_secret(&"x".repeat(32)).is_ok());
    }

    #[test]
    fn client_id_pattern() {
        let mut r = record("x");
        r.client_id = "%u-*".into();
        let k = Key::new(r, false).expect("valid");
        assert!(k.allows_client_id("k1-a"));
        assert!(!k.allows_client_id("k2-a"));
    }
}
