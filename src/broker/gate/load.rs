//! Building the registry at start: first the `$schema/...` retained messages the broker
//! recovered from the store (what was registered over MQTT before the restart), then the
//! files of `schemas.dir`, which create or replace schemas (an identical document keeps its
//! version and publishes nothing). A bad file is one `error` log line naming it and what is
//! wrong; with `schemas.strict = true` any bad file stops the start.

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::SchemaGate;
use crate::broker::Broker;
use crate::config::Schemas;
use crate::schema::VERSION_PROPERTY;
use crate::schema::document;
use crate::schema::filter::{self, SCHEMA_PREFIX};

/// Why the registry could not be built (`schemas.strict = true`).
#[derive(Debug, thiserror::Error)]
#[error("{count} bad schema file(s) in {dir} and schemas.strict = true; fix or remove them (first: {first})")]
pub struct LoadError {
    pub dir: PathBuf,
    pub count: usize,
    pub first: String,
}

impl SchemaGate {
    /// The registry for a broker that just recovered its state: stored schemas, then `cfg.dir`.
    ///
    /// # Errors
    /// [`LoadError`] when `cfg.strict` and a file in `cfg.dir` is bad.
    pub fn start(cfg: &Schemas, broker: &Broker) -> Result<SchemaGate, LoadError> {
        let registry = SchemaGate::new(cfg);
        registry.recover(broker);
        if !cfg.dir.as_os_str().is_empty() {
            let errors = registry.load_dir(broker, &cfg.dir);
            for e in &errors {
                tracing::error!("{e}");
            }
            if let (true, Some(first)) = (cfg.strict, errors.first()) {
                return Err(LoadError { dir: cfg.dir.clone(), count: errors.len(), first: first.clone() });
            }
        }
        tracing::info!(schemas = registry.len(), "schema registry ready");
        Ok(registry)
    }

    /// Puts the stored `$schema/...` retained messages in force, with their `version`.
    fn recover(&self, broker: &Broker) {
        for msg in broker.retained_under(&format!("{SCHEMA_PREFIX}#")) {
            let Some(Ok(filter)) = filter::filter_of_topic(&msg.topic) else {
                tracing::error!(topic = %msg.topic, "stored schema has a bad topic; ignored");
                continue;
            };
            let version = msg
                .properties
                .user_properties
                .iter()
                .find(|(k, _)| k == VERSION_PROPERTY)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(1);
            match document::compile(&msg.payload) {
                Ok(c) => self.put(&filter, version, c),
                Err(e) => {
                    tracing::error!(topic = %msg.topic, "stored schema {filter} v{version}: {e}; not enforced")
                }
            }
        }
    }

    /// Registers every `*.json` under `dir` (hidden entries and other files are skipped);
    /// returns one message per bad file. A missing directory is no error.
    pub fn load_dir(&self, broker: &Broker, dir: &Path) -> Vec<String> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        if !dir.is_dir() {
            tracing::info!(dir = %dir.display(), "no schema directory; none loaded from files");
            return errors;
        }
        walk(dir, &mut files, &mut errors);
        files.sort();
        let mut seen: Vec<(String, PathBuf)> = Vec::new();
        for path in files {
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            let bad = |what: String| format!("schema file {}: {what}", path.display());
            let filter = match filter::filter_of_path(rel) {
                Ok(f) => f,
                Err(e) => {
                    errors.push(bad(e.to_string()));
                    continue;
                }
            };
            if let Some((_, other)) = seen.iter().find(|(f, _)| *f == filter) {
                errors.push(bad(format!("filter {filter} is also defined by {}", other.display())));
                continue;
            }
            seen.push((filter.clone(), path.clone()));
            match std::fs::read(&path) {
                Err(e) => errors.push(bad(e.to_string())),
                Ok(bytes) => {
                    if let Err(e) = self.load_one(broker, &filter, bytes) {
                        errors.push(bad(e));
                    }
                }
            }
        }
        errors
    }

    fn load_one(&self, broker: &Broker, filter: &str, bytes: Vec<u8>) -> Result<(), String> {
        let compiled = document::compile(&bytes).map_err(|e| e.to_string())?;
        let _serial = self.lock_registrations();
        if self.get(filter).is_some_and(|s| s.document == compiled.0) {
            return Ok(());
        }
        let done = self
            .install(broker, filter, compiled, Bytes::from(bytes), None, Vec::new())
            .map_err(|e| format!("cannot store it: {e}"))?;
        let note = super::registered_note(filter, done.version, done.unchanged, done.invalid_retained);
        tracing::info!(%note, "schema loaded from file");
        Ok(())
    }
}

/// Collects the `.json` files under `dir`, skipping hidden entries.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<String>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(format!("schema directory {}: {e}", dir.display()));
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, files, errors);
        } else if path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
}
