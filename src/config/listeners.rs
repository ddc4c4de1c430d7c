//! The `[listeners.*]` sections: TCP, TLS, WebSocket and WebSocket over TLS, their defaults,
//! and their validation (bind addresses, paths, the TLS file combinations).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, invalid};

/// `[listeners]`: the MQTT listeners.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    /// `[listeners.tcp]`: plain MQTT (default `127.0.0.1:1883`).
    pub tcp: TcpListenerConfig,
    /// `[listeners.tls]`: MQTT over TLS (off without a certificate).
    pub tls: TlsListenerConfig,
    /// `[listeners.ws]`: MQTT over WebSocket (off while `bind` is empty).
    pub ws: WsListenerConfig,
    /// `[listeners.wss]`: MQTT over secure WebSocket (off without a certificate).
    pub wss: WssListenerConfig,
}

/// `[listeners.tcp]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TcpListenerConfig {
    /// Address of the plain MQTT listener; port 0 picks a free port.
    pub bind: String,
    /// Simultaneous connections on this listener; 0 = only `mqtt.max_connections` applies.
    pub max_connections: usize,
    /// Connections one IP address may hold open on this listener (0 = no limit, the default).
    /// More are closed at accept, before any byte is read.
    pub max_connections_per_ip: usize,
    /// Time from accept to CONNECT on this listener; unset = `mqtt.connect_timeout`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

/// MQTT over TLS. Runs only when `certfile` and `keyfile` are set (a TLS listener without a
/// certificate cannot start); then `bind` (default `0.0.0.0:8883`) is where it listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListenerConfig {
    /// Address to listen on, `host:port`.
    pub bind: String,
    /// PEM certificate chain of the server, leaf first; empty = listener off.
    pub certfile: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the server; empty = listener off.
    pub keyfile: PathBuf,
    /// PEM CA certificates that client certificates are verified against; empty = no client
    /// certificates are asked for.
    pub cafile: PathBuf,
    /// Refuse clients without a certificate signed by `cafile`.
    pub require_certificate: bool,
    /// The client certificate's subject CN becomes the CONNECT username.
    pub use_identity_as_username: bool,
    /// Simultaneous connections on this listener; 0 = only `mqtt.max_connections` applies.
    pub max_connections: usize,
    /// Connections one IP address may hold open on this listener (0 = no limit, the default).
    /// More are closed at accept, before any byte is read.
    pub max_connections_per_ip: usize,
    /// Time from accept to CONNECT, TLS handshake included; unset = `mqtt.connect_timeout`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

/// MQTT over WebSocket. Runs only when `bind` is set (default empty = off).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WsListenerConfig {
    /// Address to listen on (empty: off).
    pub bind: String,
    /// HTTP path of the WebSocket endpoint; other paths get 404.
    pub path: String,
    /// Web origins (`scheme://host[:port]`) whose pages may connect; an upgrade with any
    /// other `Origin` header gets 403. No `Origin` (clients outside browsers) is allowed.
    pub allowed_origins: Vec<String>,
    /// Simultaneous connections on this listener; 0 = only `mqtt.max_connections` applies.
    pub max_connections: usize,
    /// Connections one IP address may hold open on this listener (0 = no limit, the default).
    /// More are closed at accept, before any byte is read.
    pub max_connections_per_ip: usize,
    /// Time from accept to CONNECT, WebSocket handshake included; unset = `mqtt.connect_timeout`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

/// MQTT over WebSocket over TLS. Runs only when `certfile` and `keyfile` are set; then `bind`
/// (default `0.0.0.0:8084`) is where it listens. The TLS keys mean what they mean in
/// `[listeners.tls]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WssListenerConfig {
    /// Address to listen on.
    pub bind: String,
    /// HTTP path of the WebSocket upgrade.
    pub path: String,
    /// Web origins whose pages may connect (as `[listeners.ws] allowed_origins`).
    pub allowed_origins: Vec<String>,
    /// PEM certificate chain.
    pub certfile: PathBuf,
    /// PEM private key.
    pub keyfile: PathBuf,
    /// PEM CA that signs client certificates (empty: none asked).
    pub cafile: PathBuf,
    /// Refuse clients without a valid certificate.
    pub require_certificate: bool,
    /// Use the client certificate's CN as the username.
    pub use_identity_as_username: bool,
    /// Connection limit of this listener (0: only `mqtt.max_connections`).
    pub max_connections: usize,
    /// Connections one IP address may hold open on this listener (0 = no limit, the default).
    /// More are closed at accept, before any byte is read.
    pub max_connections_per_ip: usize,
    /// Per-listener CONNECT timeout (default: `mqtt.connect_timeout`).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

impl Default for TcpListenerConfig {
    fn default() -> Self {
        TcpListenerConfig {
            bind: "127.0.0.1:1883".into(),
            max_connections: 0,
            max_connections_per_ip: 0,
            connect_timeout: None,
        }
    }
}

impl Default for TlsListenerConfig {
    fn default() -> Self {
        TlsListenerConfig {
            bind: "0.0.0.0:8883".into(),
            certfile: PathBuf::new(),
            keyfile: PathBuf::new(),
            cafile: PathBuf::new(),
            require_certificate: false,
            use_identity_as_username: false,
            max_connections: 0,
            max_connections_per_ip: 0,
            connect_timeout: None,
        }
    }
}

impl Default for WsListenerConfig {
    fn default() -> Self {
        WsListenerConfig {
            bind: String::new(),
            path: "/mqtt".into(),
            allowed_origins: Vec::new(),
            max_connections: 0,
            max_connections_per_ip: 0,
            connect_timeout: None,
        }
    }
}

impl Default for WssListenerConfig {
    fn default() -> Self {
        WssListenerConfig {
            bind: "0.0.0.0:8084".into(),
            path: "/mqtt".into(),
            allowed_origins: Vec::new(),
            certfile: PathBuf::new(),
            keyfile: PathBuf::new(),
            cafile: PathBuf::new(),
            require_certificate: false,
            use_identity_as_username: false,
            max_connections: 0,
            max_connections_per_ip: 0,
            connect_timeout: None,
        }
    }
}

impl TlsListenerConfig {
    /// The TLS keys of this section.
    pub fn tls_keys(&self) -> TlsKeys<'_> {
        TlsKeys {
            section: "listeners.tls",
            certfile: &self.certfile,
            keyfile: &self.keyfile,
            cafile: &self.cafile,
            require_certificate: self.require_certificate,
            use_identity_as_username: self.use_identity_as_username,
        }
    }

    /// True when the listener runs: both `certfile` and `keyfile` are set.
    pub fn enabled(&self) -> bool {
        self.tls_keys().enabled()
    }
}

impl WsListenerConfig {
    /// True when the listener runs: `bind` is set.
    pub fn enabled(&self) -> bool {
        !self.bind.is_empty()
    }
}

impl WssListenerConfig {
    /// The TLS keys of this section (they mean what they mean in `[listeners.tls]`).
    pub fn tls_keys(&self) -> TlsKeys<'_> {
        TlsKeys {
            section: "listeners.wss",
            certfile: &self.certfile,
            keyfile: &self.keyfile,
            cafile: &self.cafile,
            require_certificate: self.require_certificate,
            use_identity_as_username: self.use_identity_as_username,
        }
    }

    /// True when the listener runs: both `certfile` and `keyfile` are set.
    pub fn enabled(&self) -> bool {
        self.tls_keys().enabled()
    }
}

impl Config {
    /// Checks the `[listeners.*]` sections and returns the bind address of every listener that
    /// runs, with its config key, for the anonymous-access check.
    pub(super) fn validate_listeners(&self) -> Result<Vec<(&'static str, SocketAddr)>, ConfigError> {
        let l = &self.listeners;
        let bind = |key: &'static str, value: &str| parse_addr(key, value).map(|addr| (key, addr));
        let mut binds = vec![bind("listeners.tcp.bind", &l.tcp.bind)?];
        let timeouts = [
            ("listeners.tcp.connect_timeout", l.tcp.connect_timeout),
            ("listeners.tls.connect_timeout", l.tls.connect_timeout),
            ("listeners.ws.connect_timeout", l.ws.connect_timeout),
            ("listeners.wss.connect_timeout", l.wss.connect_timeout),
        ];
        for (key, t) in timeouts {
            if t.is_some_and(|t| t.is_zero()) {
                return Err(invalid(key, "must be longer than 0s (e.g. \"10s\")"));
            }
        }
        super::origins::check_origins("listeners.ws.allowed_origins", &l.ws.allowed_origins)?;
        super::origins::check_origins("listeners.wss.allowed_origins", &l.wss.allowed_origins)?;
        if l.tls.tls_keys().check()? {
            binds.push(bind("listeners.tls.bind", &l.tls.bind)?);
        }
        if l.ws.enabled() {
            check_path("listeners.ws.path", &l.ws.path)?;
            binds.push(bind("listeners.ws.bind", &l.ws.bind)?);
        }
        if l.wss.tls_keys().check()? {
            check_path("listeners.wss.path", &l.wss.path)?;
            binds.push(bind("listeners.wss.bind", &l.wss.bind)?);
        }
        Ok(binds)
    }
}

/// The TLS keys of `[listeners.tls]` or `[listeners.wss]`: what validation and the TLS loader
/// (`net::tls::TlsSettings`) read from either section.
#[derive(Debug, Clone, Copy)]
pub struct TlsKeys<'a> {
    /// The config section, `listeners.tls` or `listeners.wss`.
    pub section: &'static str,
    /// PEM certificate chain.
    pub certfile: &'a Path,
    /// PEM private key.
    pub keyfile: &'a Path,
    /// PEM client CA (empty: none).
    pub cafile: &'a Path,
    /// Refuse clients without a valid certificate.
    pub require_certificate: bool,
    /// Use the client certificate's CN as the username.
    pub use_identity_as_username: bool,
}

impl TlsKeys<'_> {
    /// True when the listener runs: both `certfile` and `keyfile` are set.
    pub fn enabled(&self) -> bool {
        !self.certfile.as_os_str().is_empty() && !self.keyfile.as_os_str().is_empty()
    }

    /// Ok(true) when the listener runs, Ok(false) when it is off, Err for a half-set section.
    fn check(&self) -> Result<bool, ConfigError> {
        let (cert, key) = (!self.certfile.as_os_str().is_empty(), !self.keyfile.as_os_str().is_empty());
        let client_certs = self.require_certificate || self.use_identity_as_username;
        if cert != key || (!cert && client_certs) {
            return Err(invalid(
                self.section,
                "certfile and keyfile must both be set to run this listener (or neither to turn it off)",
            ));
        }
        if client_certs && self.cafile.as_os_str().is_empty() {
            return Err(invalid(
                self.section,
                "require_certificate and use_identity_as_username need cafile (the CA that signs \
                 client certificates)",
            ));
        }
        Ok(cert)
    }
}

fn check_path(key: &'static str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') {
        return Err(invalid(key, format!("{path:?} must be an HTTP path starting with / (e.g. \"/mqtt\")")));
    }
    Ok(())
}

pub(super) fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(key, format!("{value:?} is not HOST:PORT with a numeric IP (e.g. 127.0.0.1:1883)"))
    })
}
