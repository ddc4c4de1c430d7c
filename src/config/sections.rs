//! The plain sections of [`Config`](super::Config): `[http]`, `[storage]`, `[mqtt]`, `[auth]`,
//! `[schemas]` and `[log]`, each with its defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[http]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Address of the HTTP listener (metrics, health); empty disables it.
    pub bind: String,
    /// Web origins (`scheme://host[:port]`) whose pages may call `/admin/*`; a request with
    /// any other `Origin` header is refused (403). Default empty: no web page may.
    pub allowed_origins: Vec<String>,
    /// Names `/admin/*` answers to in the `Host` header besides the bound `ip:port` (a name
    /// matches with any port); others are refused (403), which defeats DNS rebinding.
    pub allowed_hosts: Vec<String>,
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

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// `memory` or `fjall` (default).
    pub backend: Backend,
    /// Data directory of the fjall backend (default `./data`).
    pub data_dir: PathBuf,
    /// `fsync` (default: acks after fsync) or `buffered`.
    pub durability: Durability,
    /// Below this many free bytes on the data directory's file system, messages that would
    /// write to the store are refused (v5 0x97 Quota exceeded) while reads go on; 0 turns the
    /// check off.
    pub min_free_bytes: u64,
    /// Bytes of writes (payloads, topics, records) that may wait for the store writer
    /// (default 64 MiB; 0: no limit). Above it a publishing connection stops being read until
    /// the writer catches up, as for a subscriber that does not read.
    pub max_write_backlog: usize,
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
    /// Time a started packet has to arrive completely once its first byte was read; `"0s"`
    /// turns the deadline off. A client that trickles a packet in (one byte per keep alive)
    /// is closed (v5 DISCONNECT 0x8D): until a packet is complete nothing was received.
    #[serde(with = "humantime_serde")]
    pub packet_timeout: Duration,
    /// Largest keep alive accepted, seconds; v5 clients asking more are told Server Keep Alive.
    pub max_keepalive: u16,
    /// Unacknowledged outgoing QoS 1/2 messages per client (a v5 client's Receive Maximum
    /// lowers it). Default 1,000: with `max_inflight_bytes` the window is bounded by bytes,
    /// not by a small count that caps throughput on every round trip.
    pub max_inflight_messages: u16,
    /// Payload and topic bytes of unacknowledged outgoing QoS 1/2 messages per client (0: no
    /// limit); one message is always allowed. Default 1 MiB.
    pub max_inflight_bytes: usize,
    /// Incoming QoS 1 messages unacknowledged plus QoS 2 unreleased per v5 client (its Receive Maximum).
    pub receive_maximum: u16,
    /// Topic aliases a v5 client may use towards the broker.
    pub topic_alias_maximum: u16,
    /// Messages queued per session beyond the in-flight window; more are dropped and counted.
    pub max_queued_messages: usize,
    /// Payload and topic bytes queued per session; more are dropped and counted (0: no limit).
    /// Default 16 MiB: a subscriber that never reads holds at most that much.
    pub max_queued_bytes: usize,
    /// Largest CONNECT packet, bytes (default 64 KiB): memory before authentication is bounded
    /// by `max_connections` × this, not × `max_packet_size`. A bigger one is refused before it
    /// is read (v5 CONNACK 0x95 Packet too large).
    pub max_connect_size: u32,
    /// Simultaneous client connections.
    pub max_connections: usize,
    /// Levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// User properties in one packet.
    pub max_user_properties: usize,
    /// Subscriptions one session may hold (0: no limit). A filter beyond it gets SUBACK 0x97
    /// Quota exceeded (3.1.1: 0x80 Failure); replacing one it holds is always allowed.
    pub max_subscriptions_per_client: usize,
    /// Topic filters in one SUBSCRIBE or UNSUBSCRIBE (0: no limit). More close the connection
    /// (v5: DISCONNECT 0x97 Quota exceeded).
    pub max_filters_per_subscribe: usize,
    /// Longest session expiry granted to v5 clients, seconds (`u32::MAX` = never expire).
    pub max_session_expiry: u32,
    /// How often the `$SYS/broker/...` topics are published (Mosquitto's `sys_interval`);
    /// `"0s"` turns them off. Default `"10s"`.
    #[serde(with = "humantime_serde")]
    pub sys_interval: Duration,
    /// Longest time a persistent session is kept offline (Mosquitto's
    /// `persistent_client_expiration`), e.g. `"7d"`: caps MQTT 3.1.1 sessions with clean
    /// session 0 (otherwise never expiring) and the v5 Session Expiry Interval. Unset
    /// (default): no cap.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub persistent_session_expiry: Option<Duration>,
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Accept clients without credentials on non-loopback listeners too.
    pub allow_anonymous: bool,
    /// `[auth.anonymous]`: what anonymous clients may do where they are allowed (see
    /// `src/auth/`). When set, it applies to every client without a key, loopback ones
    /// included, even while no key exists; unset, loopback clients are unrestricted while no
    /// key exists and other anonymous clients get [`super::AnonymousConfig::default`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<super::AnonymousConfig>,
    /// A forbidden PUBLISH without a negative ack (3.x, v5 QoS 0): `"drop"` or `"disconnect"`.
    pub on_forbidden_publish: super::OnForbidden,
    /// Keys seeded from config (`[[auth.keys]]`: id, secret_sha256, permissions; hashes only).
    pub keys: Vec<super::KeyRecord>,
    /// Who may resume or take over a session by presenting its client id: `"same_key"`
    /// (default: only the identity that created it) or `"any_key"`.
    pub session_takeover: SessionTakeover,
}

/// `auth.session_takeover`: which identities may use an existing session's client id.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum SessionTakeover {
    /// Only the key (or anonymous/unrestricted identity) that created the session; another
    /// one is refused (v5 CONNACK 0x87, 3.1.1 return code 5).
    #[default]
    SameKey,
    /// Any authenticated identity; it still receives only what it may read.
    AnyKey,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A `RUST_LOG`-style filter: `info`, `dataloom=debug,warn`, ...
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            bind: "127.0.0.1:9883".into(),
            allowed_origins: Vec::new(),
            allowed_hosts: vec!["localhost".into()],
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            backend: Backend::Fjall,
            data_dir: PathBuf::from("./data"),
            durability: Durability::Fsync,
            min_free_bytes: 64 * 1024 * 1024,
            max_write_backlog: 64 * 1024 * 1024,
        }
    }
}

impl Default for Mqtt {
    fn default() -> Self {
        Mqtt {
            max_packet_size: 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            packet_timeout: Duration::from_secs(60),
            max_keepalive: 3600,
            max_inflight_messages: 1000,
            max_inflight_bytes: 1024 * 1024,
            receive_maximum: 20,
            topic_alias_maximum: 10,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_connect_size: 64 * 1024,
            max_connections: 100_000,
            max_topic_levels: 128,
            max_user_properties: 64,
            max_subscriptions_per_client: 10_000,
            max_filters_per_subscribe: 1_000,
            max_session_expiry: u32::MAX,
            sys_interval: Duration::from_secs(10),
            persistent_session_expiry: None,
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
