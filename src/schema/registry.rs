//! The registry: every registered [`Schema`] in a [`FilterTrie`], read on each PUBLISH and
//! changed only by registrations. Pure: what a registration stores and routes is decided by
//! the broker's schema gate (`broker::gate`), which calls [`Registry::put`] and
//! [`Registry::remove`] under [`Registry::lock_registrations`].
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

use parking_lot::{Mutex, MutexGuard, RwLock};

use super::document::{Compiled, Rejection, Schema};
use super::trie::FilterTrie;
use crate::config::{OnInvalid, Schemas};

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
    on_invalid: OnInvalid,
    dead_letter: bool,
    /// Resolve per-filter Prometheus counters (off for `dataloom schema check` and unit tests).
    metered: bool,
}

/// One connection's last schema lookup (see [`Registry::check_memo`]); an empty memo has no
/// topic, so its first use looks up.
#[derive(Debug, Default)]
pub struct Memo {
    generation: u64,
    topic: Option<Arc<str>>,
    schema: Option<Arc<Schema>>,
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

    /// The registry without per-filter Prometheus counters (unit tests).
    pub fn unmetered(mut self) -> Registry {
        self.metered = false;
        self
    }

    /// True when refused messages go to `$dead/` (`schemas.dead_letter`).
    pub fn dead_letter(&self) -> bool {
        self.dead_letter
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
    pub fn lock_registrations(&self) -> MutexGuard<'_, ()> {
        self.registering.lock()
    }

    /// Puts `compiled` in force for `filter` at `version`, without publishing anything.
    pub fn put(&self, filter: &str, version: u64, compiled: Compiled) {
        self.insert(Schema::new(filter, version, compiled, self.metered));
    }

    fn insert(&self, schema: Schema) {
        let filter = schema.filter.clone();
        let old = self.trie.write().insert(&filter, Arc::new(schema));
        self.generation.fetch_add(1, Ordering::Release);
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the schema of `filter` out of force; returns it.
    pub fn remove(&self, filter: &str) -> Option<Arc<Schema>> {
        let old = self.trie.write().remove(filter);
        self.generation.fetch_add(1, Ordering::Release);
        if old.is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        old
    }
}
