//! `[cluster]`: the NATS JetStream cluster this node shares state and traffic with. Absent
//! (the default), the broker is one node on its embedded store and never talks to NATS.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// `[cluster]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// NATS servers to connect to (`nats://host:port` or `tls://host:port`); at least one.
    pub nats_urls: Vec<String>,
    /// This node's name in the cluster (`[A-Za-z0-9_-]`, at most 64 bytes). Default: the
    /// host name plus a random suffix, generated once and kept in the data directory
    /// (`node-id`), so two nodes on one host never share a name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Replicas of the state stream (1 to 5, default 3): a retained PUBLISH is acknowledged
    /// once a majority of them stored it.
    pub replicas: usize,
    /// How long a SUBSCRIBE waits for this node to catch up with the cluster's state before
    /// it is served from the local view (default 5s).
    #[serde(with = "humantime_serde")]
    pub sync_timeout: Duration,
    /// Subject prefix and stream name stem, one NATS token (`[A-Za-z0-9_-]`, default
    /// `dataloom`): several dataloom clusters can share one NATS cluster under different ones.
    pub prefix: String,
    /// NATS user name (with `password`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// NATS password (with `user`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// NATS credentials file (JWT and NKey seed), instead of `user`/`password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// CA certificate (PEM) that signs the NATS servers' certificates; setting it requires
    /// TLS to NATS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster {
            nats_urls: Vec::new(),
            node_id: None,
            replicas: 3,
            sync_timeout: Duration::from_secs(5),
            prefix: "dataloom".into(),
            user: None,
            password: None,
            creds_file: None,
            ca_file: None,
        }
    }
}

/// True for a non-empty token of `[A-Za-z0-9_-]` of at most 64 bytes.
pub fn is_node_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Cluster {
    /// Checks the section; each error names its key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for the first offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nats_urls.is_empty() {
            return Err(invalid(
                "cluster.nats_urls",
                "must list at least one NATS server (e.g. [\"nats://127.0.0.1:4222\"])",
            ));
        }
        for url in &self.nats_urls {
            let rest = ["nats://", "tls://"].iter().find_map(|s| url.strip_prefix(s));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(invalid(
                    "cluster.nats_urls",
                    format!("{url:?} is not a NATS URL (nats://host:port or tls://host:port)"),
                ));
            }
        }
        if let Some(id) = &self.node_id
            && !is_node_token(id)
        {
            return Err(invalid("cluster.node_id", format!("{id:?}: use 1 to 64 of A-Z a-z 0-9 _ -")));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(invalid("cluster.replicas", "must be between 1 and 5 (JetStream's limit)"));
        }
        if self.sync_timeout.is_zero() {
            return Err(invalid("cluster.sync_timeout", "must be longer than 0s (e.g. \"5s\")"));
        }
        if !is_node_token(&self.prefix) {
            return Err(invalid(
                "cluster.prefix",
                format!("{:?}: use 1 to 64 of A-Z a-z 0-9 _ -", self.prefix),
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(invalid("cluster.user / cluster.password", "set both or neither"));
        }
        if self.user.is_some() && self.creds_file.is_some() {
            return Err(invalid("cluster.creds_file", "use either creds_file or user/password, not both"));
        }
        for (key, path) in [("cluster.creds_file", &self.creds_file), ("cluster.ca_file", &self.ca_file)] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(invalid(key, format!("{} is not a readable file", p.display())));
            }
        }
        Ok(())
    }
}
