//! The routed message, the per-subscriber delivery that points at it, and the options of a
//! subscription that decide the delivery.
//!
//! A [`Message`] is built once per received PUBLISH and shared by `Arc` with every subscriber
//! queue; its payload is the `Bytes` slice of the publisher's read buffer, never copied.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::memory::{Budget, Charge};
use dataloom_codec::{Properties, QoS, RetainHandling};

/// Identifies a session inside the broker (never reused while the process runs).
pub type SessionId = u64;

/// An application message as routed: topic, payload, QoS and the v5 properties that travel with it.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic name (valid UTF-8, no wildcards).
    pub topic: Arc<str>,
    /// The same topic as bytes, ready to encode (shares the publisher's buffer).
    pub topic_bytes: Bytes,
    /// The application payload (shares the publisher's read buffer).
    pub payload: Bytes,
    /// QoS as published.
    pub qos: QoS,
    /// RETAIN as published.
    pub retain: bool,
    /// Properties forwarded unchanged: payload format, content type, response topic,
    /// correlation data, user properties. Never topic alias or subscription identifiers.
    pub properties: Properties,
    /// When the message expires (v5 Message Expiry Interval), counted from reception.
    pub expires_at: Option<Instant>,
    /// The publishing session, for the v5 No Local option; `None` for will and system messages.
    pub publisher: Option<SessionId>,
    /// This copy's bytes in the broker's memory account (`Charge::default()`: not counted,
    /// e.g. a message that only passes through the store). See [`Message::charged`].
    pub charge: Charge,
    /// When the message became the retained state of its topic; zero for a message that is
    /// not (yet) state.
    pub stamp: Stamp,
}

/// The broker-wide revision of a state change and its wall-clock time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// Broker-wide, durable, strictly increasing per state change (0: not state, or stored
    /// before revisions existed).
    pub revision: u64,
    /// When the state was set, UNIX milliseconds (0: unknown).
    pub unix_ms: u64,
}

/// Bytes a message's struct and bookkeeping take besides its topic, payload and properties.
const MESSAGE_OVERHEAD: usize = std::mem::size_of::<Message>() + 64;

impl Message {
    /// The bytes this message holds in memory: topic (both forms), payload, user properties
    /// and the struct itself.
    pub fn footprint(&self) -> usize {
        let props = &self.properties;
        let user: usize = props.user_properties.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
        let extra = props.content_type.as_ref().map_or(0, |s| s.len())
            + props.response_topic.as_ref().map_or(0, |s| s.len())
            + props.correlation_data.as_ref().map_or(0, |b| b.len());
        MESSAGE_OVERHEAD + self.topic.len() + self.topic_bytes.len() + self.payload.len() + user + extra
    }

    /// The message, charged against `budget` for as long as it lives.
    pub fn charged(mut self, budget: &Arc<Budget>) -> Message {
        self.charge = budget.charge(self.footprint());
        self
    }

    /// True once the message's expiry interval has elapsed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Remaining expiry in whole seconds (at least 1 while not expired), for forwarding.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now).as_secs_f64().ceil();
            (left as u32).max(1)
        })
    }
}

/// One message owed to one session: the shared message plus what the subscription decided.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// Effective QoS: the minimum of the message's and the subscription's.
    pub qos: QoS,
    /// Retain flag to send (retain-as-published, or true for retained-on-subscribe).
    pub retain: bool,
    /// v5 subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
    /// Position in the session's durable queue, when the delivery is stored (persistent
    /// session, QoS 1/2); the store forgets it once the client acknowledges.
    pub seq: Option<u64>,
    /// The shared subscription (`$share/{group}/{filter}`, as written) the delivery was picked
    /// for; `None` for plain subscriptions. Lets the broker hand the message to another member
    /// when this one leaves. Kept in memory only: a delivery restored from the store stays with
    /// its session.
    pub share: Option<Arc<str>>,
    /// A retained message queued by a SUBSCRIBE and counted in its v5 SUBACK (User Property
    /// `retained`): it is sent even if it expires after the count, so exactly the announced
    /// number arrives. Kept in memory only, like `share`.
    pub snapshot: bool,
}

/// Options of one subscription, as granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Maximum QoS granted.
    pub qos: QoS,
    /// v5 No Local: not delivered to its own publisher.
    pub no_local: bool,
    /// v5 Retain As Published.
    pub retain_as_published: bool,
    /// v5 Retain Handling.
    pub retain_handling: RetainHandling,
    /// v5 Subscription Identifier of the SUBSCRIBE.
    pub sub_id: Option<u32>,
}
