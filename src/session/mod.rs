//! One task per client connection: the MQTT protocol state machine between the codec and the
//! broker — CONNECT and session attach, keep alive, QoS 1/2 flows both ways, flow control,
//! topic aliases, wills, and the reason a connection ends.
//!
//! `conn` owns the I/O loop; `connect`, `inbound` and `outbound` are the protocol steps and
//! never touch a socket: they read packets and write encoded bytes into the connection's
//! output buffer.

mod conn;
mod connect;
mod inbound;
mod outbound;
mod pending;
mod refuse;

use std::sync::Arc;

use crate::broker::Broker;
use crate::broker::gate::SchemaGate;
use crate::config::Mqtt;
use dataloom_codec::{DecodeError, Limits};

pub use conn::{ConnInfo, serve_connection};

/// What every connection task shares: the broker and the protocol limits.
#[derive(Debug)]
pub struct Ctx {
    pub broker: Arc<Broker>,
    pub mqtt: Mqtt,
    pub decode_limits: Limits,
    /// The `$schema/` registry every PUBLISH and will goes through (empty unless replaced).
    pub schemas: Arc<SchemaGate>,
    /// API keys and anonymous access (no keys, defaults, unless replaced).
    pub auth: Arc<crate::auth::Auth>,
}

impl Ctx {
    /// A context for connections of `broker` under the `[mqtt]` limits.
    pub fn new(broker: Arc<Broker>, mqtt: Mqtt) -> Ctx {
        let decode_limits = Limits {
            max_packet_size: mqtt.max_packet_size,
            max_user_properties: mqtt.max_user_properties,
            max_topic_levels: mqtt.max_topic_levels,
        };
        let schemas = Arc::new(SchemaGate::new(&crate::config::Schemas::default()));
        let auth = Arc::new(crate::auth::Auth::default());
        Ctx { broker, mqtt, decode_limits, schemas, auth }
    }
}

/// Why a connection ends; decides the DISCONNECT sent (v5) and whether the will is published.
#[derive(Debug)]
pub enum Close {
    /// The client sent DISCONNECT with this reason code (0x04 asks for the will).
    ClientDisconnect(u8),
    /// The peer closed the socket or it failed.
    Io(String),
    /// A packet broke a rule of the protocol.
    Decode(DecodeError),
    /// The server ends the connection with this v5 reason code and reason.
    Server(u8, &'static str),
    /// The CONNECT was refused (CONNACK already sent).
    Refused(u8),
}

impl Close {
    /// True when the will message must be published.
    fn publishes_will(&self) -> bool {
        // A revoked key's will is not published: the key lost its rights.
        !matches!(
            self,
            Close::ClientDisconnect(0x00)
                | Close::Refused(_)
                | Close::Server(dataloom_codec::reason::ADMINISTRATIVE_ACTION, _)
        )
    }

    /// The v5 DISCONNECT reason code the server sends, if any.
    fn server_code(&self) -> Option<u8> {
        match self {
            Close::Decode(e) => Some(e.reason_code()),
            Close::Server(code, _) => Some(*code),
            _ => None,
        }
    }
}

impl std::fmt::Display for Close {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Close::ClientDisconnect(code) => write!(f, "client disconnected (reason 0x{code:02X})"),
            Close::Io(e) => write!(f, "connection lost: {e}"),
            Close::Decode(e) => write!(f, "protocol violation: {e}"),
            Close::Server(code, why) => write!(f, "closed by server (0x{code:02X}): {why}"),
            Close::Refused(code) => write!(f, "CONNECT refused (0x{code:02X})"),
        }
    }
}
