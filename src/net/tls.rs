//! TLS for the `tls` and `wss` listeners: loading the certificate, key and client CA from PEM
//! files into a rustls server configuration (TLS 1.2 and 1.3, `ring` crypto), optional client
//! certificates verified against `cafile`, the client certificate's CN as the CONNECT username,
//! and reloading the files (on SIGHUP) without touching live connections.
//!
//! [`Tls`] holds the current configuration behind a lock; every new handshake takes a clone
//! of it, so a reload only changes what later handshakes see.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tracing::info;

use crate::config::{TlsKeys, TlsListenerConfig, WssListenerConfig};

/// Why a TLS listener's files could not be loaded. Each message names the config key and file.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are the named parts of each `#[error]` message
pub enum TlsError {
    /// A file cannot be read.
    #[error("{key} {path}: cannot read: {source}")]
    Read { key: String, path: PathBuf, source: io::Error },
    /// A file holds no usable PEM.
    #[error("{key} {path}: {message}")]
    Pem { key: String, path: PathBuf, message: String },
    /// rustls refuses the certificate or key.
    #[error("{section}: certificate or key unusable: {source} (does keyfile belong to certfile?)")]
    Config { section: &'static str, source: rustls::Error },
    /// The client CA is unusable.
    #[error("{section}.cafile: cannot verify client certificates: {message}")]
    ClientCa { section: &'static str, message: String },
}

/// The TLS part of a listener's configuration.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The config section, `listeners.tls` or `listeners.wss`; names the files in errors.
    pub section: &'static str,
    /// PEM certificate chain.
    pub certfile: PathBuf,
    /// PEM private key.
    pub keyfile: PathBuf,
    /// Client certificates are asked for (and verified) only when this is set.
    pub cafile: Option<PathBuf>,
    /// Refuse clients without a valid certificate.
    pub require_certificate: bool,
    /// Use the client certificate's CN as the username.
    pub use_identity_as_username: bool,
}

fn non_empty(p: &Path) -> Option<PathBuf> {
    (!p.as_os_str().is_empty()).then(|| p.to_path_buf())
}

impl From<TlsKeys<'_>> for TlsSettings {
    fn from(c: TlsKeys<'_>) -> Self {
        TlsSettings {
            section: c.section,
            certfile: c.certfile.to_path_buf(),
            keyfile: c.keyfile.to_path_buf(),
            cafile: non_empty(c.cafile),
            require_certificate: c.require_certificate,
            use_identity_as_username: c.use_identity_as_username,
        }
    }
}

impl From<&TlsListenerConfig> for TlsSettings {
    fn from(c: &TlsListenerConfig) -> Self {
        c.tls_keys().into()
    }
}

impl From<&WssListenerConfig> for TlsSettings {
    fn from(c: &WssListenerConfig) -> Self {
        c.tls_keys().into()
    }
}

/// A TLS listener's reloadable server configuration.
pub struct Tls {
    settings: TlsSettings,
    current: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the certificate, key and client CA named by `settings`.
    ///
    /// # Errors
    /// [`TlsError`] naming the config key and file that could not be used.
    pub fn load(settings: TlsSettings) -> Result<Tls, TlsError> {
        let acceptor = build(&settings)?;
        Ok(Tls { settings, current: RwLock::new(acceptor) })
    }

    /// Reads the files again; later handshakes use the new certificate, live connections keep
    /// theirs. On error the previous configuration stays in force.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that could not be used.
    pub fn reload(&self) -> Result<(), TlsError> {
        let acceptor = build(&self.settings)?;
        *self.current.write() = acceptor;
        info!(listener = self.settings.section, "TLS certificates reloaded");
        Ok(())
    }

    /// The config section this listener comes from.
    pub fn section(&self) -> &'static str {
        self.settings.section
    }

    /// Runs the server side of a TLS handshake on `stream` with the current configuration.
    /// Returns the TLS stream and, with `use_identity_as_username`, the client certificate's CN.
    ///
    /// # Errors
    /// The handshake's I/O or TLS error (garbage, plaintext, a rejected client certificate).
    pub async fn accept<S>(&self, stream: S) -> io::Result<(TlsStream<S>, Option<String>)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = self.current.read().clone();
        let tls = acceptor.accept(stream).await?;
        let identity = if self.settings.use_identity_as_username {
            let (_, conn) = tls.get_ref();
            conn.peer_certificates().and_then(|c| c.first()).and_then(|c| common_name(c))
        } else {
            None
        };
        Ok((tls, identity))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read(key: String, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { key, path: path.to_path_buf(), source })
}

fn certs(key: String, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key.clone(), path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { key: key.clone(), path: path.to_path_buf(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            key,
            path: path.to_path_buf(),
            message: "no \"BEGIN CERTIFICATE\" block found".into(),
        });
    }
    Ok(certs)
}

fn build(s: &TlsSettings) -> Result<TlsAcceptor, TlsError> {
    let chain = certs(format!("{}.certfile", s.section), &s.certfile)?;
    let key_pem = read(format!("{}.keyfile", s.section), &s.keyfile)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        key: format!("{}.keyfile", s.section),
        path: s.keyfile.clone(),
        message: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })?;
    let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|source| TlsError::Config { section: s.section, source })?;
    let builder = match &s.cafile {
        None => builder.with_no_client_auth(),
        Some(cafile) => {
            let mut roots = RootCertStore::empty();
            for ca in certs(format!("{}.cafile", s.section), cafile)? {
                roots
                    .add(ca)
                    .map_err(|e| TlsError::ClientCa { section: s.section, message: e.to_string() })?;
            }
            let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            if !s.require_certificate {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::ClientCa { section: s.section, message: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let leaf = chain.first().map(|c| c.as_ref().to_vec());
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Config { section: s.section, source })?;
    if let Some(expiry) = leaf.as_deref().and_then(not_after) {
        let gauge = crate::metrics::get().tls_cert_expiry(s.section.trim_start_matches("listeners."));
        gauge.set(expiry.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0));
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// One DER element at the front of `d`: (tag, contents, the rest).
fn tlv(d: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, d) = d.split_first()?;
    let (&first, mut d) = d.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = d.split_at_checked(n)?;
        d = rest;
        bytes.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (body, rest) = d.split_at_checked(len)?;
    Some((tag, body, rest))
}

/// The TBSCertificate fields issuer, validity and subject of a DER certificate.
fn tbs_fields(cert: &[u8]) -> Option<[&[u8]; 3]> {
    let (_, cert, _) = tlv(cert)?;
    let (_, tbs, _) = tlv(cert)?;
    let (tag, _, after_version) = tlv(tbs)?;
    let rest = if tag == 0xA0 { after_version } else { tbs };
    let (_, _serial, rest) = tlv(rest)?;
    let (_, _signature, rest) = tlv(rest)?;
    let (_, issuer, rest) = tlv(rest)?;
    let (_, validity, rest) = tlv(rest)?;
    let (_, subject, _) = tlv(rest)?;
    Some([issuer, validity, subject])
}

/// The first common name (OID 2.5.4.3) in the subject of a DER certificate.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let [_, _, mut rdns] = tbs_fields(cert)?;
    while !rdns.is_empty() {
        let (_, set, rest) = tlv(rdns)?;
        rdns = rest;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (_, atv, rest) = tlv(atvs)?;
            atvs = rest;
            let (tag, oid, value) = tlv(atv)?;
            if tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                let (kind, value, _) = tlv(value)?;
                return match kind {
                    // UTF8String, PrintableString, IA5String, TeletexString (treated as Latin-1).
                    0x0c | 0x13 | 0x16 => String::from_utf8(value.to_vec()).ok(),
                    0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
                    // BMPString: UTF-16 big endian.
                    0x1e => {
                        let units: Vec<u16> =
                            value.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect();
                        String::from_utf16(&units).ok()
                    }
                    _ => None,
                };
            }
        }
    }
    None
}

/// The end of a DER certificate's validity period.
pub fn not_after(cert: &[u8]) -> Option<SystemTime> {
    let [_, validity, _] = tbs_fields(cert)?;
    let (_, _not_before, rest) = tlv(validity)?;
    let (tag, time, _) = tlv(rest)?;
    let text = std::str::from_utf8(time).ok()?.strip_suffix('Z')?;
    let digits = |s: &str| -> Option<i64> { s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok())? };
    let (year, rest) = match tag {
        0x17 => {
            let yy = digits(text.get(..2)?)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (digits(text.get(..4)?)?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { digits(rest.get(i..i + 2)?) };
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(secs).ok().map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2038, 1, 19), 24_855);
    }

    #[test]
    fn truncated_der_is_none() {
        assert_eq!(common_name(&[0x30, 0x82, 0x01]), None);
        assert_eq!(common_name(&[]), None);
        assert_eq!(not_after(&[0x30, 0x03, 0x30, 0x01]), None);
    }
}
