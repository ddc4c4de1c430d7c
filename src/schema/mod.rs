//! The `$schema/` registry: JSON Schemas registered over MQTT, compiled once, looked up by
//! topic, enforced on every PUBLISH and will. This layer is pure (filters, trie, compile,
//! validate, look up); routing, storing and dead-lettering are the broker's (`broker::gate`).
//!
//! **Schemas are retained messages.** A retained PUBLISH of a JSON Schema to
//! `$schema/<encoded filter>` registers it (or replaces it; an empty retained payload
//! removes it). Wildcard levels are percent-encoded: `+` = `%2B`, `#` = `%23`, `%` = `%25`
//! ([`filter`]), so `$schema/sensors/%2B/temperature` governs `sensors/+/temperature`. The
//! broker stores the accepted document as the retained state of that topic, carrying user
//! properties `filter` (decoded) and `version` (1, 2, ... per filter; an identical document
//! keeps its version, a removed filter starts again at 1). So schemas persist through the
//! normal store, and subscribing to `$schema/#` lists them (a root `#` never matches `$`
//! topics). At start the registry is rebuilt from those retained messages, then
//! `schemas.dir` is loaded (both by the broker's schema gate, `broker::gate`).
//!
//! **Precedence.** Several filters may match a topic; the most specific one governs, compared
//! level by level from the left: a literal level beats `+`, `+` beats `#`. With
//! `sensors/#`, `sensors/+/temperature` and `sensors/kitchen/temperature` registered:
//!
//! | topic                          | governed by                   |
//! |--------------------------------|-------------------------------|
//! | `sensors/kitchen/temperature`  | `sensors/kitchen/temperature` |
//! | `sensors/hall/temperature`     | `sensors/+/temperature`       |
//! | `sensors/hall/humidity`        | `sensors/#`                   |
//! | `sensors`                      | `sensors/#`                   |
//!
//! and with `a/+/c` and `a/b/#`, `a/b/c` is governed by `a/b/#` (level 2 decides). Only one
//! schema applies to a message; they do not combine.
//!
//! **Enforcement** (decided here, applied by `broker::gate`): the payload must be UTF-8 JSON valid under the governing
//! schema, else the message is refused with `schema <filter> v<N>: <json pointer>: <what>`
//! (the root pointer is written `(root)`), is never delivered and never becomes state. The
//! session layer answers: v5 QoS 1/2 PUBACK/PUBREC 0x99 with that reason string, otherwise
//! `schemas.on_invalid` (disconnect, v5 with DISCONNECT 0x99; or drop). A will is checked at
//! CONNECT (v5 CONNACK 0x99, 3.1.1 return code 5) and again when it is published.
//!
//! **Cost.** Lookup walks a trie of filters ([`trie`]) once per topic level, whatever the
//! number of schemas; a schema is compiled once per registration and shared by `Arc`; the
//! publish path takes only the trie's read lock, and no lock at all while no schema exists or
//! when the connection's [`Memo`] already holds the topic's schema.
//! Counters: `dataloom_schema_validations_total{filter,result}` and
//! `dataloom_messages_dropped_total{reason="schema_invalid"}`.

mod digits;
pub(crate) mod document;
pub(crate) mod filter;
pub(crate) mod registry;
mod scan;
mod tape;
pub(crate) mod trie;

#[cfg(test)]
mod tests;

pub use document::{Rejection, Schema, SchemaError};
pub use filter::{FilterError, SCHEMA_PREFIX};
pub use registry::{FILTER_PROPERTY, Memo, Registry, VERSION_PROPERTY};

use std::path::Path;

/// `dataloom schema check SCHEMA [PAYLOAD]`: compiles the schema file and validates the
/// payload file, if given. The filter in messages is the path after the last `schemas`
/// directory (as the broker would load it), else the file name, else `-`.
/// Returns the line to print: `ok: ...` on success, the same messages as the broker on failure.
///
/// # Errors
/// The message to print when the schema or the payload is refused.
pub fn check_files(schema: &Path, payload: Option<&Path>) -> Result<String, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let filter = cli_filter(schema);
    let compiled = document::compile(&read(schema)?)
        .map_err(|e| format!("schema {filter} ({}): {e}", schema.display()))?;
    let schema = Schema::new(&filter, 1, compiled, false);
    match payload {
        None => Ok(format!("ok: schema {filter} is a valid JSON Schema")),
        Some(p) => match schema.validate(&read(p)?) {
            Ok(()) => Ok(format!("ok: {} is valid under schema {filter}", p.display())),
            Err(r) => Err(r.to_string()),
        },
    }
}

fn cli_filter(schema: &Path) -> String {
    let parts: Vec<_> = schema.iter().collect();
    let start = parts.iter().rposition(|p| *p == "schemas").map_or(parts.len().saturating_sub(1), |i| i + 1);
    let rel: std::path::PathBuf = parts[start.min(parts.len())..].iter().collect();
    filter::filter_of_path(&rel).unwrap_or_else(|_| "-".into())
}
