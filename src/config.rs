//! Typed configuration: built-in defaults < TOML file < `DATALOOM_<SECTION>__<KEY>` environment
//! variables < command-line flags, layered with the `config` crate, then validated.
//!
//! Every key has a default, so an empty file (or none) is a valid configuration. A bad value is
//! a [`ConfigError`] whose message names the key and what is allowed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration. Field names are the stable config keys of DESIGN.md.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listeners: Listeners,
    pub http: Http,
    pub storage: Storage,
    pub mqtt: Mqtt,
    pub auth: Auth,
    pub schemas: Schemas,
    pub log: Log,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Listeners {
    pub tcp: TcpListenerConfig,
    pub tls: TlsListenerConfig,
    pub ws: WsListenerConfig,
    pub wss: WssListenerConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TcpListenerConfig {
    /// Address of the plain MQTT listener; port 0 picks a free port.
    pub bind: String,
    /// Simultaneous connections on this listener; 0 = only `mqtt.max_connections` applies.
    pub max_connections: usize,
    /// Time from accept to CONNECT on this listener; unset = `mqtt.connect_timeout`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

/// MQTT over TLS. Runs only when `certfile` and `keyfile` are set (a TLS listener without a
/// certificate cannot start); then `bind` (default `0.0.0.0:8883`) is where it listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListenerConfig {
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
    /// Time from accept to CONNECT, TLS handshake included; unset = `mqtt.connect_timeout`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

/// MQTT over WebSocket. Runs only when `bind` is set (default empty = off).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WsListenerConfig {
    pub bind: String,
    /// HTTP path of the WebSocket endpoint; other paths get 404.
    pub path: String,
    /// Simultaneous connections on this listener; 0 = only `mqtt.max_connections` applies.
    pub max_connections: usize,
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
    pub bind: String,
    pub path: String,
    pub certfile: PathBuf,
    pub keyfile: PathBuf,
    pub cafile: PathBuf,
    pub require_certificate: bool,
    pub use_identity_as_username: bool,
    pub max_connections: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address of the HTTP listener (metrics, health); empty disables it.
    pub bind: String,
}

/// Where state lives.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The embedded LSM store in `data_dir`.
    Fjall,
    /// Nothing is kept across restarts.
    Memory,
}

/// When an acknowledged write is on disk.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acks wait for fsync.
    Fsync,
    /// Acks do not wait; data is flushed periodically.
    Buffered,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub durability: Durability,
}

/// Protocol limits. Durations are written like `"10s"` or `"1m 30s"`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    /// Largest packet accepted or sent, bytes (fixed header included).
    pub max_packet_size: u32,
    /// Time a new connection has to send CONNECT.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest keep alive accepted, seconds; v5 clients asking more are told Server Keep Alive.
    pub max_keepalive: u16,
    /// Unacknowledged outgoing QoS 1/2 messages per client.
    pub max_inflight_messages: u16,
    /// Incoming QoS 2 messages a client may have unreleased (v5 Receive Maximum).
    pub receive_maximum: u16,
    /// Topic aliases a v5 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Messages queued per session beyond the in-flight window; more are dropped and counted.
    pub max_queued_messages: usize,
    /// Simultaneous client connections.
    pub max_connections: usize,
    /// Levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// User properties in one packet.
    pub max_user_properties: usize,
    /// Longest session expiry granted to v5 clients, seconds (`u32::MAX` = never expire).
    pub max_session_expiry: u32,
    /// How often the `$SYS/broker/...` topics are published (Mosquitto's `sys_interval`);
    /// `"0s"` turns them off. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub sys_interval: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Accept clients without credentials on non-loopback listeners too.
    pub allow_anonymous: bool,
    /// What anonymous clients may do where they are allowed (see `src/auth/`).
    pub anonymous: crate::auth::AnonymousConfig,
    /// A forbidden PUBLISH without a negative ack (3.x, v5 QoS 0): `"drop"` or `"disconnect"`.
    pub on_forbidden_publish: crate::auth::OnForbidden,
    /// Keys seeded from config (`[[auth.keys]]`: id, secret_sha256, permissions; hashes only).
    pub keys: Vec<crate::auth::KeyRecord>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `RUST_LOG`-style filter: `info`, `dataloom=debug,warn`, ...
    pub level: String,
    pub format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listeners: Listeners::default(),
            http: Http { bind: "127.0.0.1:9883".into() },
            storage: Storage::default(),
            mqtt: Mqtt::default(),
            auth: Auth::default(),
            schemas: Schemas::default(),
            log: Log { level: "info".into(), format: LogFormat::Text },
        }
    }
}

impl Default for TcpListenerConfig {
    fn default() -> Self {
        TcpListenerConfig { bind: "127.0.0.1:1883".into(), max_connections: 0, connect_timeout: None }
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
            connect_timeout: None,
        }
    }
}

impl Default for WsListenerConfig {
    fn default() -> Self {
        WsListenerConfig {
            bind: String::new(),
            path: "/mqtt".into(),
            max_connections: 0,
            connect_timeout: None,
        }
    }
}

impl Default for WssListenerConfig {
    fn default() -> Self {
        WssListenerConfig {
            bind: "0.0.0.0:8084".into(),
            path: "/mqtt".into(),
            certfile: PathBuf::new(),
            keyfile: PathBuf::new(),
            cafile: PathBuf::new(),
            require_certificate: false,
            use_identity_as_username: false,
            max_connections: 0,
            connect_timeout: None,
        }
    }
}

impl TlsListenerConfig {
    /// True when the listener runs: both `certfile` and `keyfile` are set.
    pub fn enabled(&self) -> bool {
        !self.certfile.as_os_str().is_empty() && !self.keyfile.as_os_str().is_empty()
    }
}

impl WsListenerConfig {
    /// True when the listener runs: `bind` is set.
    pub fn enabled(&self) -> bool {
        !self.bind.is_empty()
    }
}

impl WssListenerConfig {
    /// True when the listener runs: both `certfile` and `keyfile` are set.
    pub fn enabled(&self) -> bool {
        !self.certfile.as_os_str().is_empty() && !self.keyfile.as_os_str().is_empty()
    }
}

impl Default for Http {
    fn default() -> Self {
        Http { bind: "127.0.0.1:9883".into() }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage { backend: Backend::Fjall, data_dir: PathBuf::from("./data"), durability: Durability::Fsync }
    }
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            max_keepalive: 3600,
            max_inflight_messages: 20,
            receive_maximum: 20,
            topic_alias_maximum: 10,
            max_queued_messages: 1000,
            max_connections: 100_000,
            max_topic_levels: 128,
            max_user_properties: 64,
            max_session_expiry: u32::MAX,
            sys_interval: Duration::from_secs(10),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log { level: "info".into(), format: LogFormat::Text }
    }
}

/// What happens to a PUBLISH refused by a JSON Schema when no negative ack can say so
/// (MQTT 3.1.1, and MQTT 5 at QoS 0). MQTT 5 QoS 1/2 always get PUBACK/PUBREC 0x99.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnInvalid {
    /// Close the connection (MQTT 5: DISCONNECT 0x99 with the reason), so a misbehaving
    /// device is visible.
    Disconnect,
    /// Drop the message, count it, keep the connection.
    Drop,
}

/// `[schemas]`: the `$schema/` registry (see `src/schema/`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Schemas {
    /// Directory of schema files loaded at start (`sensors/+/temperature.json` registers
    /// `sensors/+/temperature`); empty: none. A missing directory is not an error.
    pub dir: PathBuf,
    /// Refused messages without a negative ack: `"disconnect"` (default) or `"drop"`.
    pub on_invalid: OnInvalid,
    /// Republish refused messages to `$dead/<original topic>` with the reason as user properties.
    pub dead_letter: bool,
    /// Refuse to start (exit code 2) when a file in `dir` is not a valid schema.
    pub strict: bool,
}

impl Default for Schemas {
    fn default() -> Self {
        Schemas {
            dir: PathBuf::from("./schemas"),
            on_invalid: OnInvalid::Disconnect,
            dead_letter: false,
            strict: false,
        }
    }
}

/// Why a configuration was refused. Each message names the key and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    File { path: PathBuf, source: config::ConfigError },
    #[error("config: {0}")]
    Layer(#[from] config::ConfigError),
    #[error("config key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// Command-line values that override every other layer (`None` = not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub bind: Option<String>,
    pub http_bind: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub storage: Option<Backend>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
}

impl Config {
    /// Loads defaults, then `file` (if any), then `DATALOOM_*` environment variables, then
    /// `overrides`, and validates the result.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or key at fault.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let defaults = config::Config::try_from(&Config::default())?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                source: config::ConfigError::Message(e.to_string()),
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        // DATALOOM_ADMIN_KEY is the `dataloom key` CLI's credential, not a config key.
        let env: config::Map<String, String> =
            std::env::vars().filter(|(k, _)| k != "DATALOOM_ADMIN_KEY").collect();
        builder = builder.add_source(
            config::Environment::with_prefix("DATALOOM")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let layered = builder.build()?;
        let mut cfg: Config = layered.try_deserialize().map_err(|e| match file {
            Some(path) => ConfigError::File { path: path.to_path_buf(), source: e },
            None => ConfigError::Layer(e),
        })?;
        cfg.apply(overrides);
        // The anonymous-exposure rule needs the stored keys: `server::start` checks it.
        cfg.validate_settings()?;
        Ok(cfg)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(b) = &o.bind {
            self.listeners.tcp.bind = b.clone();
        }
        if let Some(b) = &o.http_bind {
            self.http.bind = b.clone();
        }
        if let Some(d) = &o.data_dir {
            self.storage.data_dir = d.clone();
        }
        if let Some(s) = o.storage {
            self.storage.backend = s;
        }
        if let Some(l) = &o.log_level {
            self.log.level = l.clone();
        }
        if let Some(f) = o.log_format {
            self.log.format = f;
        }
    }

    /// [`Config::validate_settings`], then [`Config::check_anonymous_exposure`] counting only
    /// the keys seeded in `[[auth.keys]]` (the store's keys are not known here).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_settings()?;
        self.check_anonymous_exposure(self.auth.keys.len())
    }

    /// Checks ranges and combinations the types cannot express.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for the first offending key.
    pub fn validate_settings(&self) -> Result<(), ConfigError> {
        self.validate_listeners()?;
        if !self.http.bind.is_empty() {
            parse_addr("http.bind", &self.http.bind)?;
        }
        let m = &self.mqtt;
        if !(64..=268_435_460).contains(&m.max_packet_size) {
            return Err(invalid("mqtt.max_packet_size", "must be between 64 and 268435460 bytes"));
        }
        if m.connect_timeout.is_zero() {
            return Err(invalid("mqtt.connect_timeout", "must be longer than 0s (e.g. \"10s\")"));
        }
        if m.max_inflight_messages == 0 || m.receive_maximum == 0 {
            return Err(invalid(
                "mqtt.max_inflight_messages / mqtt.receive_maximum",
                "must be between 1 and 65535",
            ));
        }
        if m.max_connections == 0 || m.max_queued_messages == 0 {
            return Err(invalid("mqtt.max_connections / mqtt.max_queued_messages", "must be at least 1"));
        }
        if m.max_topic_levels == 0 {
            return Err(invalid("mqtt.max_topic_levels", "must be at least 1"));
        }
        if self.storage.backend == Backend::Fjall && self.storage.data_dir.as_os_str().is_empty() {
            return Err(invalid(
                "storage.data_dir",
                "must name a directory when storage.backend = \"fjall\"",
            ));
        }
        for k in &self.auth.keys {
            crate::auth::Key::new(k.clone(), true).map_err(|e| {
                invalid(
                    "auth.keys",
                    format!("{e} (secret_sha256 comes from `dataloom key create --print-config`)"),
                )
            })?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", format!("{e} (e.g. \"info\" or \"dataloom=debug\")")))?;
        Ok(())
    }

    /// The refusal to start when a listener on a non-loopback address would take anonymous
    /// clients: no API key exists (`keys` counts the store's and the seeded ones) and
    /// `auth.allow_anonymous` is off. Checked at start, once the store is open.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the listener.
    pub fn check_anonymous_exposure(&self, keys: usize) -> Result<(), ConfigError> {
        if keys > 0 || self.auth.allow_anonymous {
            return Ok(());
        }
        for (key, addr) in self.validate_listeners()? {
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    key,
                    format!(
                        "{addr} is not a loopback address and no API keys exist: anonymous clients \
                         would be open to the network; create a key (dataloom key create), set \
                         auth.allow_anonymous = true, or bind to 127.0.0.1"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The default configuration as a commented-free TOML document.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).unwrap_or_default()
    }
}

impl Config {
    /// Checks the `[listeners.*]` sections and returns the bind address of every listener that
    /// runs, with its config key, for the anonymous-access check.
    fn validate_listeners(&self) -> Result<Vec<(&'static str, SocketAddr)>, ConfigError> {
        let l = &self.listeners;
        let mut binds = vec![("listeners.tcp.bind", parse_addr("listeners.tcp.bind", &l.tcp.bind)?)];
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
        let tls = TlsKeys {
            section: "listeners.tls",
            certfile: &l.tls.certfile,
            keyfile: &l.tls.keyfile,
            cafile: &l.tls.cafile,
            require_certificate: l.tls.require_certificate,
            use_identity_as_username: l.tls.use_identity_as_username,
        };
        if tls.check()? {
            binds.push(("listeners.tls.bind", parse_addr("listeners.tls.bind", &l.tls.bind)?));
        }
        if l.ws.enabled() {
            check_path("listeners.ws.path", &l.ws.path)?;
            binds.push(("listeners.ws.bind", parse_addr("listeners.ws.bind", &l.ws.bind)?));
        }
        let wss = TlsKeys {
            section: "listeners.wss",
            certfile: &l.wss.certfile,
            keyfile: &l.wss.keyfile,
            cafile: &l.wss.cafile,
            require_certificate: l.wss.require_certificate,
            use_identity_as_username: l.wss.use_identity_as_username,
        };
        if wss.check()? {
            check_path("listeners.wss.path", &l.wss.path)?;
            binds.push(("listeners.wss.bind", parse_addr("listeners.wss.bind", &l.wss.bind)?));
        }
        Ok(binds)
    }
}

/// The TLS keys of `[listeners.tls]` or `[listeners.wss]`, for validation.
struct TlsKeys<'a> {
    section: &'static str,
    certfile: &'a Path,
    keyfile: &'a Path,
    cafile: &'a Path,
    require_certificate: bool,
    use_identity_as_username: bool,
}

impl TlsKeys<'_> {
    /// Ok(true) when the listener runs, Ok(false) when it is off, Err for a half-set section.
    fn check(&self) -> Result<bool, ConfigError> {
        let (cert, key) = (!self.certfile.as_os_str().is_empty(), !self.keyfile.as_os_str().is_empty());
        let client_certs = self.require_certificate || self.use_identity_as_username;
        if cert != key || (!cert && client_certs) {
            return Err(ConfigError::Invalid {
                key: self.section,
                message:
                    "certfile and keyfile must both be set to run this listener (or neither to turn it off)"
                        .into(),
            });
        }
        if client_certs && self.cafile.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: self.section,
                message: "require_certificate and use_identity_as_username need cafile (the CA that signs \
                          client certificates)"
                    .into(),
            });
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

fn parse_addr(key: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(key, format!("{value:?} is not HOST:PORT with a numeric IP (e.g. 127.0.0.1:1883)"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().expect("defaults validate");
    }

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[mqtt]\nmax_packet_size = 2048\nconnect_timeout = \"3s\"\n").expect("write");
        let o = Overrides { bind: Some("127.0.0.1:0".into()), ..Overrides::default() };
        let c = Config::load(Some(&path), &o).expect("load");
        assert_eq!(c.mqtt.max_packet_size, 2048);
        assert_eq!(c.mqtt.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.listeners.tcp.bind, "127.0.0.1:0");
    }

    #[test]
    fn bad_value_names_the_key() {
        let mut c = Config::default();
        c.mqtt.max_packet_size = 1;
        let e = c.validate().expect_err("must fail").to_string();
        assert!(e.contains("mqtt.max_packet_size"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[mqtt]\nmax_pakcet_size = 2048\n").expect("write");
        let e = Config::load(Some(&path), &Overrides::default()).expect_err("must fail");
        assert!(e.to_string().contains("max_pakcet_size"), "{e}");
    }

    #[test]
    fn anonymous_on_network_needs_opt_in() {
        let mut c = Config::default();
        c.listeners.tcp.bind = "0.0.0.0:1883".into();
        c.validate_settings().expect("checked at start, when the keys are known");
        assert!(c.validate().is_err());
        assert!(c.check_anonymous_exposure(0).is_err());
        c.check_anonymous_exposure(1).expect("keys exist");
        c.auth.allow_anonymous = true;
        c.check_anonymous_exposure(0).expect("explicit opt-in");
    }
}
