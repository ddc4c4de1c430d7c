//! The schema gate: the broker's side of the `$schema/` registry. A client PUBLISH and a will
//! pass it before routing: a `$schema/...` topic is a registration (or removal), any other
//! topic is checked against its governing schema (the pure [`crate::schema`] layer decides). A
//! refused message is never routed and never becomes state; the session layer answers the
//! [`Refusal`] (v5 ack reason code, or the `schemas.on_invalid` policy) and optionally it goes
//! to `$dead/`. Registrations are routed and stored here ([`install`]), and the registry is
//! rebuilt at start from the store and `schemas.dir` ([`load`]). The last refusals are kept
//! for the web console ([`recent`]).

mod install;
mod load;
pub mod recent;
#[cfg(test)]
mod tests;

use std::ops::Deref;
use std::sync::Arc;

use crate::broker::{Broker, Published};
use crate::config::Schemas;
use crate::model::Message;
use crate::schema::document::{self, Rejection};
use crate::schema::filter::{self, SCHEMA_PREFIX};
use crate::schema::{Memo, Registry};
use crate::store::{Op, StoreError};
use dataloom_codec::reason;

/// Topic prefix of dead letters (`schemas.dead_letter = true`).
pub const DEAD_PREFIX: &str = "$dead/";

/// Why a PUBLISH or will was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The v5 reason code: 0x99 (payload or schema document invalid), 0x83 (a `$schema/`
    /// publish that is not a registration: not retained, bad filter), 0x87 (not allowed).
    pub code: u8,
    /// The reason string, e.g. `schema sensors/+/temperature v2: /celsius: "hot" is not of type "number"`.
    pub reason: String,
}

/// A PUBLISH the schema step let through.
#[derive(Debug)]
pub struct Routed {
    /// The broker's routing of the message (or its store failure).
    pub published: Result<Published, StoreError>,
    /// Text for the ack's reason string (registrations: version and refused retained values).
    pub note: Option<String>,
}

/// Whether `client_id` may register or remove schemas. The session's authorization step
/// (`auth::Perms::may_publish`) already refused every `$schema/` PUBLISH of a connection
/// without the `admin` role (v5 PUBACK 0x87) before the registry sees it, so this hook has
/// nothing left to refuse.
pub fn may_write_schema(client_id: &str) -> bool {
    let _ = client_id;
    true
}

pub use load::LoadError;

/// The registry with the broker's effects of registering, refusing and dead-lettering.
#[derive(Debug)]
pub struct SchemaGate {
    registry: Registry,
    recent: recent::RecentRejections,
}

impl Deref for SchemaGate {
    type Target = Registry;

    fn deref(&self) -> &Registry {
        &self.registry
    }
}

impl SchemaGate {
    /// An empty gate with the `[schemas]` policy (no schema in force).
    pub fn new(cfg: &Schemas) -> SchemaGate {
        SchemaGate { registry: Registry::new(cfg), recent: Default::default() }
    }

    /// A gate around `registry` (unit tests use an unmetered one).
    pub fn with_registry(registry: Registry) -> SchemaGate {
        SchemaGate { registry, recent: Default::default() }
    }

    /// Runs a client PUBLISH through the schema step and routes it (with `extra` store ops)
    /// when accepted; `memo` is the connection's (see [`Registry::check_memo`]).
    ///
    /// # Errors
    /// [`Refusal`] when the message must not be routed; nothing was stored.
    pub fn publish(
        &self,
        broker: &Broker,
        msg: Arc<Message>,
        extra: Vec<Op>,
        (client_id, memo): (&str, &mut Memo),
    ) -> Result<Routed, Refusal> {
        if let Some(filter) = filter::filter_of_topic(&msg.topic) {
            return self.register(broker, &msg, filter, extra, client_id);
        }
        // An empty retained payload deletes the topic's state: it carries no document, so
        // there is nothing to validate (else governed state could never be deleted).
        let deletes = msg.retain && msg.payload.is_empty();
        if let Err(r) = if deletes { Ok(()) } else { self.check_memo(&msg.topic, &msg.payload, memo) } {
            self.refused(broker, &msg, &r, client_id);
            return Err(Refusal { code: reason::PAYLOAD_FORMAT_INVALID, reason: r.to_string() });
        }
        Ok(Routed { published: broker.publish_with_backpressure(msg, extra), note: None })
    }

    /// Checks a will at CONNECT: its payload against its topic's schema; a will on
    /// `$schema/` is refused (schemas are registered by PUBLISH only).
    ///
    /// # Errors
    /// [`Refusal`] with code 0x99.
    pub fn check_will(&self, topic: &str, payload: &[u8]) -> Result<(), Refusal> {
        if topic.starts_with(SCHEMA_PREFIX) {
            let reason = format!("{topic}: a will cannot register a schema");
            return Err(Refusal { code: reason::PAYLOAD_FORMAT_INVALID, reason });
        }
        self.check(topic, payload)
            .map_err(|r| Refusal { code: reason::PAYLOAD_FORMAT_INVALID, reason: format!("will: {r}") })
    }

    /// Checks a will again when it is about to be published (the schema may have changed
    /// since CONNECT); a refused will is logged, counted and dead-lettered, never published.
    pub fn admit_will(&self, broker: &Broker, msg: &Message, client_id: &str) -> bool {
        if msg.topic.starts_with(SCHEMA_PREFIX) {
            return false;
        }
        match self.check(&msg.topic, &msg.payload) {
            Ok(()) => true,
            Err(r) => {
                tracing::info!(reason = %r, "will refused by its schema");
                self.refused(broker, msg, &r, client_id);
                false
            }
        }
    }

    /// The last messages the gate refused (see [`recent`]).
    pub fn recent(&self) -> &recent::RecentRejections {
        &self.recent
    }

    /// Retained values under `filter` that its schema governs and refuses, among the topics
    /// `readable` accepts (0 when no schema is registered for exactly `filter`). Walks the
    /// state under `filter`: its cost grows with the number of topics there.
    pub fn invalid_retained(&self, broker: &Broker, filter: &str, readable: &dyn Fn(&str) -> bool) -> usize {
        self.count_invalid(broker, filter, readable)
    }

    /// Counts a refused message, keeps it among the recent ones, and dead-letters it when
    /// configured.
    fn refused(&self, broker: &Broker, msg: &Message, r: &Rejection, client_id: &str) {
        crate::metrics::get().dropped(crate::metrics::reasons::DropReason::SchemaInvalid);
        self.recent.record(r, &msg.topic, client_id);
        if !self.dead_letter() || msg.topic.len() + DEAD_PREFIX.len() > dataloom_codec::topic::MAX_TOPIC_LEN {
            return;
        }
        let topic = format!("{DEAD_PREFIX}{}", msg.topic);
        let mut properties = msg.properties.clone();
        properties.user_properties.extend([
            ("schema".to_string(), r.filter.to_string()),
            ("version".to_string(), r.version.to_string()),
            ("error".to_string(), r.detail()),
            ("client_id".to_string(), client_id.to_string()),
        ]);
        let dead = Message {
            topic: Arc::from(topic.as_str()),
            topic_bytes: topic.into(),
            retain: false,
            properties,
            publisher: None,
            charge: Default::default(),
            ..msg.clone()
        };
        if let Err(e) = broker.publish(Arc::new(dead), Vec::new()) {
            tracing::warn!(error = %e, "dead letter not stored");
        }
    }

    /// A PUBLISH to `$schema/<encoded filter>`: register, replace or (empty payload) remove.
    fn register(
        &self,
        broker: &Broker,
        msg: &Message,
        filter: Result<String, filter::FilterError>,
        extra: Vec<Op>,
        client_id: &str,
    ) -> Result<Routed, Refusal> {
        let refuse = |code, reason: String| {
            tracing::info!(topic = %msg.topic, %reason, "schema registration refused");
            Err(Refusal { code, reason })
        };
        if !may_write_schema(client_id) {
            return refuse(reason::NOT_AUTHORIZED, format!("{}: not allowed to write schemas", msg.topic));
        }
        let filter = match filter {
            Ok(f) => f,
            Err(e) => return refuse(reason::IMPLEMENTATION_SPECIFIC_ERROR, format!("{}: {e}", msg.topic)),
        };
        if !msg.retain {
            let why = format!("schema {filter}: a registration must be a retained PUBLISH");
            return refuse(reason::IMPLEMENTATION_SPECIFIC_ERROR, why);
        }
        let _serial = self.lock_registrations();
        let kept = || self.get(&filter).map_or(String::new(), |s| format!("; v{} stays", s.version));
        if msg.payload.is_empty() {
            let removal = Message { topic: filter::topic_of_filter(&filter).into(), ..msg.clone() };
            let published = broker.publish(Arc::new(removal), extra);
            let note = match published.is_ok().then(|| self.remove(&filter)).flatten() {
                Some(old) => format!("schema {filter} v{} removed", old.version),
                None => format!("schema {filter}: none registered"),
            };
            tracing::info!(%note, "schema removal");
            return Ok(Routed { published, note: Some(note) });
        }
        let compiled = match document::compile(&msg.payload) {
            Ok(c) => c,
            Err(e) => {
                return refuse(reason::PAYLOAD_FORMAT_INVALID, format!("schema {filter}: {e}{}", kept()));
            }
        };
        let payload = msg.payload.clone();
        match self.install(broker, &filter, compiled, payload, Some(msg), extra) {
            Ok(done) => {
                let note = registered_note(&filter, done.version, done.unchanged, done.invalid_retained);
                tracing::info!(%note, "schema registration");
                Ok(Routed { published: Ok(done.published), note: Some(note) })
            }
            Err(e) => Ok(Routed { published: Err(e), note: None }),
        }
    }
}

/// `schema <filter> v<N> registered[ (unchanged)][; <k> retained values do not validate]`.
pub fn registered_note(filter: &str, version: u64, unchanged: bool, invalid: usize) -> String {
    let mut s = format!("schema {filter} v{version} registered");
    if unchanged {
        s.push_str(" (unchanged)");
    }
    if invalid > 0 {
        let values = if invalid == 1 { "value does" } else { "values do" };
        s.push_str(&format!("; {invalid} retained {values} not validate"));
    }
    s
}
