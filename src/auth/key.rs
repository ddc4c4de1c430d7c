//! API keys: the stored record (id, SHA-256 of the secret, permissions, roles, expiry), new
//! random secrets, hashing and the constant-time check of a presented secret.
//!
//! A secret is 256 random bits written as 64 hex characters and is shown once, at creation.
//! Only `SHA-256("dataloom-api-key-v1\0" ‖ secret)` is kept (docs/decisions.md explains why no
//! slow KDF and no pepper). Neither the secret nor the hash is ever logged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AuthError;
use super::perms::Glob;
pub use crate::config::{KeyRecord, parse_hash, parse_time};
use crate::store::StoredKey;

/// Domain separation of the secret hash (a hash of this format means nothing elsewhere).
const HASH_DOMAIN: &[u8] = b"dataloom-api-key-v1\0";

/// Shortest secret `--secret-stdin` accepts.
pub const MIN_SECRET_LEN: usize = 32;

/// The stored form of a record (JSON, the format of the fjall `keys` keyspace).
pub fn encode_record(record: &KeyRecord) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

/// Reads a stored record back; its id must be the one it is stored under.
///
/// # Errors
/// [`AuthError::Corrupt`] naming the record.
pub fn decode_record(stored: &StoredKey) -> Result<KeyRecord, AuthError> {
    let corrupt =
        |what: &str| AuthError::Corrupt(format!("record keys/\"{}\": {what}", stored.id.escape_ascii()));
    let record: KeyRecord =
        serde_json::from_slice(&stored.record).map_err(|_| corrupt("invalid key record"))?;
    if record.id.as_bytes() != stored.id.as_slice() {
        return Err(corrupt("invalid key id (differs from key)"));
    }
    Ok(record)
}

/// A key ready for CONNECT: the record with its parsed hash, expiry and client-id pattern.
#[derive(Debug)]
pub struct Key {
    /// The record as stored.
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
        record.check().map_err(AuthError::Invalid)?;
        let hash = parse_hash(&record.secret_sha256).ok_or_else(|| {
            AuthError::Invalid(format!("key {:?}: secret_sha256 must be 64 hex characters", record.id))
        })?;
        let expires_at = match record.expires.as_str() {
            "" => None,
            s => Some(parse_time(s).map_err(AuthError::Invalid)?),
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
