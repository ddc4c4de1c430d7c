//! Typed configuration: built-in defaults < TOML file < `DATALOOM_<SECTION>__<KEY>` environment
//! variables < command-line flags, layered with the `config` crate, then validated.
//!
//! Every key has a default, so an empty file (or none) is a valid configuration. A bad value is
//! a [`ConfigError`] whose message names the key and what is allowed.

mod cluster;
mod history;
mod keys;
mod limits;
mod listeners;
mod origins;
mod sections;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cluster::{Cluster, is_node_token};
pub use history::HistoryRule;
pub use keys::{AnonymousConfig, KeyRecord, OnForbidden, check_filter, check_id, parse_hash, parse_time};
pub use limits::{Limits, MemorySize, available_memory};
use listeners::parse_addr;
pub use listeners::{
    Listeners, TcpListenerConfig, TlsKeys, TlsListenerConfig, WsListenerConfig, WssListenerConfig,
};
pub use origins::{host_allowed, origin_allowed};
pub use sections::{
    Auth, Backend, Durability, Http, Log, LogFormat, Mqtt, OnInvalid, Schemas, SessionTakeover, Storage,
};

/// The whole configuration. Field names are the stable config keys of DESIGN.md.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[listeners.*]`: MQTT listeners.
    pub listeners: Listeners,
    /// `[http]`: metrics, health and admin endpoint.
    pub http: Http,
    /// `[storage]`: backend, data directory, durability.
    pub storage: Storage,
    /// `[mqtt]`: protocol limits.
    pub mqtt: Mqtt,
    /// `[auth]`: API keys and anonymous access.
    pub auth: Auth,
    /// `[schemas]`: the schema directory and policy.
    pub schemas: Schemas,
    /// `[log]`: level and format.
    pub log: Log,
    /// `[limits]`: the broker-wide memory budget.
    pub limits: Limits,
    /// `[[history]]`: topics that keep a history of their messages (none by default).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryRule>,
    /// `[cluster]`: the NATS JetStream cluster this node joins; absent, the broker runs alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Cluster>,
}

/// Why a configuration was refused. Each message names the key and what is allowed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // variant fields are the named parts of each `#[error]` message
pub enum ConfigError {
    /// The config file cannot be read or parsed.
    #[error("config file {path}: {source}")]
    File { path: PathBuf, source: config::ConfigError },
    /// A layer (environment, flags) cannot be merged.
    #[error("config: {0}")]
    Layer(#[from] config::ConfigError),
    /// A value is out of range; names the key.
    #[error("config key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// Command-line values that override every other layer (`None` = not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--bind`: `listeners.tcp.bind`.
    pub bind: Option<String>,
    /// `--http-bind`: `http.bind`.
    pub http_bind: Option<String>,
    /// `--data-dir`: `storage.data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `--storage`: `storage.backend`.
    pub storage: Option<Backend>,
    /// `--log-level`: `log.level`.
    pub log_level: Option<String>,
    /// `--log-format`: `log.format`.
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
                // DATALOOM_CLUSTER__NATS_URLS=nats://a:4222,nats://b:4222 (only this key is a list).
                .list_separator(",")
                .with_list_parse_key("cluster.nats_urls")
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
        origins::check_origins("http.allowed_origins", &self.http.allowed_origins)?;
        origins::check_hosts("http.allowed_hosts", &self.http.allowed_hosts)?;
        let m = &self.mqtt;
        if m.max_connect_size < 64 {
            return Err(invalid("mqtt.max_connect_size", "must be at least 64 bytes"));
        }
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
        if let Some(d) = m.persistent_session_expiry
            && (d < std::time::Duration::from_secs(1) || d.as_secs() >= u64::from(u32::MAX))
        {
            return Err(invalid(
                "mqtt.persistent_session_expiry",
                "must be between 1s and 136 years (e.g. \"7d\"); leave it unset for no limit",
            ));
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
            k.check().map_err(|e| {
                invalid(
                    "auth.keys",
                    format!("{e} (secret_sha256 comes from `dataloom key create --print-config`)"),
                )
            })?;
        }
        history::check_rules(&self.history)?;
        if !self.history.is_empty() && self.storage.backend == Backend::Memory {
            return Err(invalid(
                "history",
                "needs storage.backend = \"fjall\" (the memory store keeps no history); \
                 remove [[history]] or give the broker a data directory",
            ));
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
            if !self.history.is_empty() {
                return Err(invalid(
                    "history",
                    "is not kept by a cluster yet: the nodes would each keep their own; remove \
                     [[history]] or [cluster]",
                ));
            }
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
