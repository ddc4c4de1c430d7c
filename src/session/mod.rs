//! One task per client connection: the MQTT protocol state machine between the codec and the
//! broker — CONNECT and session attach, keep alive, QoS 1/2 flows both ways, flow control,
//! topic aliases, wills, and the reason a connection ends.
//!
//! `conn` owns the I/O loop and `ending` how it ends (a takeover's last reads, the will,
//! detaching, the graceful close); `connect`, `inbound` and `outbound` are the protocol steps
//! and never touch a socket: they read packets and write encoded bytes into the connection's
//! output buffer.

mod close;
mod conn;
mod connect;
mod ending;
mod inbound;
mod liveness;
mod outbound;
mod pending;
mod refuse;
mod shed;
mod violation;

use std::sync::Arc;

use crate::broker::Broker;
use crate::broker::gate::SchemaGate;
use crate::config::Mqtt;
use dataloom_codec::Limits;

pub use close::{Close, ending};
pub use conn::{ConnInfo, serve_connection};
pub use violation::Violation;

/// What every connection task shares: the broker and the protocol limits.
#[derive(Debug)]
pub struct Ctx {
    /// The broker every connection talks to.
    pub broker: Arc<Broker>,
    /// The `[mqtt]` limits.
    pub mqtt: Mqtt,
    /// The decoder's limits, from `[mqtt]`.
    pub decode_limits: Limits,
    /// The `$schema/` registry every PUBLISH and will goes through (empty unless replaced).
    pub schemas: Arc<SchemaGate>,
    /// API keys and anonymous access (no keys, defaults, unless replaced).
    pub auth: Arc<crate::auth::Auth>,
    /// Turns true when the broker shuts down: connections closing gracefully stop lingering
    /// (never, unless replaced).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Ctx {
    /// A context for connections of `broker` under the `[mqtt]` limits.
    pub fn new(broker: Arc<Broker>, mqtt: Mqtt) -> Ctx {
        let decode_limits =
            Limits { max_packet_size: mqtt.max_packet_size, max_user_properties: mqtt.max_user_properties };
        let schemas = Arc::new(SchemaGate::new(&crate::config::Schemas::default()));
        let auth = Arc::new(crate::auth::Auth::default());
        let shutdown = tokio::sync::watch::channel(false).1;
        Ctx { broker, mqtt, decode_limits, schemas, auth, shutdown }
    }
}
