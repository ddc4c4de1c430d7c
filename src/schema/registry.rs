//! The registry: every registered [`Schema`] in a [`FilterTrie`], read on each PUBLISH and
//! changed only by registrations.
//!
//! The hot path ([`Registry::check_memo`]) skips everything while no schema exists (one
//! atomic load). Otherwise a connection's [`Memo`] answers when the topic is the one of its
//! previous PUBLISH and no registration happened since (a generation counter): devices
//! publish to the same few topics, so most PUBLISHes take no lock and clone no `Arc`. On a
//! miss it takes the trie's read lock for one lookup and keeps the answer. Registrations are
//! serialised by their own mutex, hold the write lock only to swap one entry, then bump the
//! generation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard, RwLock};

use super::document::{Compiled, Rejection, Schema};
use super::filter::topic_of_filter;
use super::trie::FilterTrie;
use crate::broker::{Broker, Published};
use crate::config::{OnInvalid, Schemas};
use crate::model::Message;
use crate::store::{Op, StoreError};
use dataloom_codec::{Properties, QoS};

/// User property naming the decoded filter on a `$schema/...` message.
pub const FILTER_PROPERTY: &str = "filter";
/// User property carrying the version on a `$schema/...` message.
pub const VERSION_PROPERTY: &str = "version";

/// The schemas in force and the `[schemas]` policy.
#[derive(Debug)]
pub struct Registry {
    trie: RwLock<FilterTrie<Arc<Schema>>>,
    count: AtomicUsize,
    /// Bumped after every change of the trie; a [`Memo`] of an older generation is stale.
    generation: AtomicU64,
    registering: Mutex<()>,
    pub(super) on_invalid: OnInvalid,
    pub(super) dead_letter: bool,
    /// Resolve per-filter Prometheus counters (off for `dataloom schema check`).
    pub(super) metered: bool,
}

/// One connection's last schema lookup (see [`Registry::check_memo`]); an empty memo has no
/// topic, so its first use looks up.
#[derive(Debug, Default)]
pub struct Memo {
    generation: u64,
    topic: Option<Arc<str>>,
    schema: Option<Arc<Schema>>,
}

/// What installing a schema did.
#[derive(Debug)]
pub struct Installed {
    pub version: u64,
    /// The document equals the one in force (the version was kept).
    pub unchanged: bool,
    /// Retained values under the filter, governed by this schema, that do not validate.
    pub invalid_retained: usize,
    /// The routing of the `$schema/` message.
    pub published: Published,
}

impl Registry {
    /// An empty registry with the `[schemas]` policy.
    pub fn new(cfg: &Schemas) -> Registry {
        Registry {
            trie: RwLock::new(FilterTrie::default()),
            count: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            registering: Mutex::new(()),
            on_invalid: cfg.on_invalid,
            dead_letter: cfg.dead_letter,
            metered: true,
        }
    }

    /// Number of schemas in force.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// True when no schema is in force.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What to do with a refusal that has no negative ack.
    pub fn on_invalid(&self) -> OnInvalid {
        self.on_invalid
    }

    /// The schema registered for exactly `filter`.
    pub fn get(&self, filter: &str) -> Option<Arc<Schema>> {
        self.trie.read().get(filter).cloned()
    }

    /// The schema governing `topic`: the most specific matching filter.
    pub fn lookup(&self, topic: &str) -> Option<Arc<Schema>> {
        if self.is_empty() {
            return None;
        }
        self.trie.read().lookup(topic).cloned()
    }

    /// Every schema in force.
    pub fn all(&self) -> Vec<Arc<Schema>> {
        self.trie.read().values().into_iter().cloned().collect()
    }

    /// Checks a payload published to `topic` against the schema governing it (if any).
    ///
    /// # Errors
    /// The [`Rejection`] of the governing schema.
    pub fn check(&self, topic: &str, payload: &[u8]) -> Result<(), Box<Rejection>> {
        match self.lookup(topic) {
            Some(schema) => schema.validate(payload),
            None => Ok(()),
        }
    }

    /// [`Registry::check`] for a connection's PUBLISH: the lookup is answered by `memo` when
    /// it holds this topic at the current generation, and `memo` keeps the answer otherwise.
    ///
    /// # Errors
    /// The [`Rejection`] of the governing schema.
    pub fn check_memo(
        &self,
        topic: &Arc<str>,
        payload: &[u8],
        memo: &mut Memo,
    ) -> Result<(), Box<Rejection>> {
        if self.is_empty() {
            return Ok(());
        }
        // Read before the lookup: a change after it bumps past this value.
        let generation = self.generation.load(Ordering::Acquire);
        if memo.generation != generation || memo.topic.as_deref() != Some(&**topic) {
            memo.schema = self.trie.read().lookup(topic).cloned();
            memo.topic = Some(topic.clone());
            memo.generation = generation;
        }
        match &memo.schema {
            Some(schema) => schema.validate(payload),
            None => Ok(()),
        }
    }

    /// Serialises registrations (versions are read, then written).
    pub(super) fn lock_registrations(&self) -> MutexGuard<'_, ()> {
        self.registering.lock()
    }

    /// Puts a schema in force without publishing anything (start-up recovery).
    pub(super) fn insert(&self, schema: Schema) {
        let filter = schema.filter.clone();
        let old = self.trie.write().insert(&filter, Arc::new(schema));
        self.generation.fetch_add(1, Ordering::Release);
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the schema of `filter` out of force; returns it.
    pub(super) fn remove(&self, filter: &str) -> Option<Arc<Schema>> {
        let old = self.trie.write().remove(filter);
        self.generation.fetch_add(1, Ordering::Release);
        if old.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        old
    }

    /// Registers `compiled` for `filter` (call under [`Registry::lock_registrations`]):
    /// picks the version (kept for an identical document, else the next one), publishes the
    /// retained `$schema/` message with its `filter`/`version` user properties (built from
    /// `template`, the client's PUBLISH, when there is one) together with `extra` ops, puts
    /// the schema in force and counts the retained values it refuses.
    ///
    /// # Errors
    /// [`StoreError`] when the store refuses writes; the previous schema stays.
    pub(super) fn install(
        &self,
        broker: &Broker,
        filter: &str,
        compiled: Compiled,
        payload: Bytes,
        template: Option<&Message>,
        extra: Vec<Op>,
    ) -> Result<Installed, StoreError> {
        let current = self.get(filter);
        let unchanged = current.as_ref().is_some_and(|c| c.document == compiled.0);
        let version = match &current {
            Some(c) if unchanged => c.version,
            Some(c) => c.version + 1,
            None => 1,
        };
        let msg = schema_message(filter, version, payload, template);
        let published = broker.publish(Arc::new(msg), extra)?;
        self.insert(Schema::new(filter, version, compiled, self.metered));
        let invalid_retained = self.count_invalid(broker, filter);
        Ok(Installed { version, unchanged, invalid_retained, published })
    }

    /// Retained values under `filter` that its schema governs and refuses.
    fn count_invalid(&self, broker: &Broker, filter: &str) -> usize {
        let Some(schema) = self.get(filter) else { return 0 };
        broker
            .retained_under(filter)
            .iter()
            .filter(|m| {
                self.lookup(&m.topic).is_some_and(|s| Arc::ptr_eq(&s, &schema)) && !schema.accepts(&m.payload)
            })
            .count()
    }
}

/// The retained `$schema/` message of a registration: canonical topic, QoS 1 unless the
/// client's PUBLISH says otherwise, the client's properties with `filter` and `version` set by
/// the broker, no expiry (a schema stays until removed).
fn schema_message(filter: &str, version: u64, payload: Bytes, template: Option<&Message>) -> Message {
    let topic = topic_of_filter(filter);
    let mut properties = template.map(|m| m.properties.clone()).unwrap_or_else(|| Properties {
        content_type: Some("application/schema+json".into()),
        ..Properties::default()
    });
    properties.user_properties.retain(|(k, _)| k != FILTER_PROPERTY && k != VERSION_PROPERTY);
    properties.user_properties.push((FILTER_PROPERTY.into(), filter.into()));
    properties.user_properties.push((VERSION_PROPERTY.into(), version.to_string()));
    Message {
        topic: Arc::from(topic.as_str()),
        topic_bytes: Bytes::from(topic),
        payload,
        qos: template.map_or(QoS::AtLeastOnce, |m| m.qos),
        retain: true,
        properties,
        expires_at: None,
        publisher: template.and_then(|m| m.publisher),
    }
}
