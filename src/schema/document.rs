//! One registered schema: its document compiled once into a validator, and the check of a
//! payload against it with the error the broker and `dataloom schema check` report:
//! `schema <filter> v<N>: <json pointer>: <what failed>`.
//!
//! The draft is chosen by the document's `$schema` (drafts 4, 6, 7, 2019-09 and 2020-12;
//! none given means 2020-12). Remote `$ref`s are never fetched: a document must be
//! self-contained. `format` is an annotation, as the 2019-09 and 2020-12 drafts say.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::tape::{Tape, TapeError, TapeJson};
use crate::metrics::SchemaCounters;

/// A compiled schema: the document as registered and its validator (which runs on a
/// [`Tape`] of the payload).
pub type Compiled = (Value, jsonschema::Validator<TapeJson>);

/// Longest reason text kept (reason strings travel in acks; long instances are cut).
const MAX_WHAT: usize = 200;

/// Why a document is not a usable JSON Schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The document is not UTF-8 JSON.
    #[error("not a JSON document: {0}")]
    NotJson(String),
    /// JSON, but not a valid schema (bad keyword value, unknown `$schema`, unresolvable `$ref`).
    #[error("not a valid JSON Schema: {0}")]
    Invalid(String),
}

/// Why a payload was refused by a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The filter the schema governs.
    pub filter: Arc<str>,
    /// Its version (1, 2, ... per filter).
    pub version: u64,
    /// JSON Pointer of the failing value; empty for the whole payload.
    pub pointer: String,
    /// What failed, e.g. `"hot" is not of type "number"`.
    pub what: String,
    /// The payload was not UTF-8 JSON at all.
    pub not_json: bool,
}

impl Rejection {
    /// `<json pointer>: <what>` without the schema name (the `error` user property of a
    /// dead letter). The root pointer is written `(root)`.
    pub fn detail(&self) -> String {
        let pointer = if self.pointer.is_empty() { "(root)" } else { &self.pointer };
        format!("{pointer}: {}", self.what)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "schema {} v{}: {}", self.filter, self.version, self.detail())
    }
}

/// A compiled schema for one filter.
pub struct Schema {
    /// The governing filter.
    pub filter: Arc<str>,
    /// The governing schema's version.
    pub version: u64,
    /// The document as registered (compared to tell a re-registration from a change).
    pub document: Value,
    validator: jsonschema::Validator<TapeJson>,
    counters: Option<SchemaCounters>,
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schema").field("filter", &self.filter).field("version", &self.version).finish()
    }
}

/// Parses a JSON document (a schema or a payload).
///
/// # Errors
/// The parser's message when `bytes` is not UTF-8 JSON.
pub fn parse_json(bytes: &[u8]) -> Result<Value, String> {
    if std::str::from_utf8(bytes).is_err() {
        return Err("payload is not UTF-8".into());
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Compiles `bytes` as a JSON Schema.
///
/// # Errors
/// [`SchemaError`] when the document is not JSON or not a valid schema.
pub fn compile(bytes: &[u8]) -> Result<Compiled, SchemaError> {
    let document = parse_json(bytes).map_err(SchemaError::NotJson)?;
    if !document.is_object() && !document.is_boolean() {
        return Err(SchemaError::Invalid("a schema is a JSON object (or true/false)".into()));
    }
    let validator = jsonschema::options_for::<TapeJson>()
        .build(&document)
        .map_err(|e| SchemaError::Invalid(cut(e.to_string())))?;
    Ok((document, validator))
}

impl Schema {
    /// A schema for `filter` at `version` from a compiled document; `metered` resolves its
    /// `dataloom_schema_validations_total` counters (label: the filter).
    pub fn new(filter: &str, version: u64, compiled: Compiled, metered: bool) -> Schema {
        let (document, validator) = compiled;
        let counters = metered.then(|| crate::metrics::get().schema_validations(filter));
        Schema { filter: Arc::from(filter), version, document, validator, counters }
    }

    /// Checks `payload` and counts the result.
    ///
    /// # Errors
    /// [`Rejection`] naming the first failing value.
    pub fn validate(&self, payload: &[u8]) -> Result<(), Box<Rejection>> {
        let result = self.check(payload);
        if let Some(c) = &self.counters {
            let i = match &result {
                Ok(()) => 0,
                Err(r) if !r.not_json => 1,
                Err(_) => 2,
            };
            c[i].inc();
        }
        result
    }

    /// True when `payload` validates (not counted; for counting retained state).
    pub fn accepts(&self, payload: &[u8]) -> bool {
        self.check(payload).is_ok()
    }

    /// Parses `payload` into a tape and validates it. The boolean check is the fast path;
    /// the error (with its path) is built only for a payload that fails.
    fn check(&self, payload: &[u8]) -> Result<(), Box<Rejection>> {
        let mut tape = Tape::default();
        match tape.parse(payload) {
            Ok(()) => self.check_tape(&tape),
            Err(TapeError::DuplicateKey) => match parse_json(payload) {
                // The last of a repeated key counts, as in `serde_json::Value`.
                Ok(value) => self.check_tape(&Tape::from_value(&value)),
                Err(e) => Err(self.not_json(e)),
            },
            Err(TapeError::Syntax(e)) => {
                Err(self.not_json(parse_json(payload).err().unwrap_or(e.to_string())))
            }
        }
    }

    fn check_tape(&self, tape: &Tape<'_>) -> Result<(), Box<Rejection>> {
        if self.validator.is_valid(tape.root()) {
            return Ok(());
        }
        match self.validator.validate(tape.root()) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.rejection(e.instance_path().to_string(), e.to_string(), false)),
        }
    }

    fn not_json(&self, e: String) -> Box<Rejection> {
        self.rejection(String::new(), format!("payload is not JSON: {e}"), true)
    }

    fn rejection(&self, pointer: String, what: String, not_json: bool) -> Box<Rejection> {
        let (filter, version) = (self.filter.clone(), self.version);
        Box::new(Rejection { filter, version, pointer, what: cut(what), not_json })
    }
}

/// `s` cut to [`MAX_WHAT`] bytes on a character boundary, with `...` when cut.
fn cut(mut s: String) -> String {
    if s.len() > MAX_WHAT {
        let mut end = MAX_WHAT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(doc: &str) -> Schema {
        Schema::new("t/+", 3, compile(doc.as_bytes()).expect("compiles"), false)
    }

    #[test]
    fn reports_pointer_and_reason() {
        let s = schema(r#"{"type":"object","properties":{"c":{"type":"number"}},"required":["c"]}"#);
        assert!(s.validate(br#"{"c": 21.5}"#).is_ok());
        let r = s.validate(br#"{"c": "hot"}"#).expect_err("invalid");
        assert_eq!(r.to_string(), r#"schema t/+ v3: /c: "hot" is not of type "number""#);
        let r = s.validate(b"{}").expect_err("missing");
        assert_eq!(r.to_string(), r#"schema t/+ v3: (root): "c" is a required property"#);
        let r = s.validate(b"{nope").expect_err("not json");
        assert!(r.not_json && r.to_string().starts_with("schema t/+ v3: (root): payload is not JSON"), "{r}");
        let r = s.validate(b"\xff").expect_err("not utf-8");
        assert!(r.to_string().contains("not UTF-8"), "{r}");
    }

    #[test]
    fn a_repeated_key_counts_its_last_value() {
        let s = schema(r#"{"properties":{"c":{"type":"number"}},"additionalProperties":false}"#);
        assert!(s.validate(br#"{"c": "hot", "c": 21.5}"#).is_ok());
        let r = s.validate(br#"{"c": 21.5, "x": [{"c": 1, "c": 2}], "c": "hot"}"#).expect_err("invalid");
        assert!(r.to_string().contains("/c: \"hot\" is not of type \"number\""), "{r}");
        assert!(s.accepts(br#"{"c": 1, "c": 2}"#) && !s.accepts(br#"{"c": 1, "c": "two"}"#));
    }

    #[test]
    fn drafts_by_dollar_schema() {
        // Draft 4: exclusiveMaximum is a boolean.
        let s = schema(
            r#"{"$schema":"http://json-schema.org/draft-04/schema#","maximum":5,"exclusiveMaximum":true}"#,
        );
        assert!(s.validate(b"5").is_err() && s.validate(b"4").is_ok());
        // 2020-12 by default: a boolean exclusiveMaximum is invalid.
        assert!(compile(br#"{"maximum":5,"exclusiveMaximum":true}"#).is_err());
        assert!(matches!(
            compile(br#"{"$schema":"https://example.com/mine"}"#),
            Err(SchemaError::Invalid(_))
        ));
    }

    #[test]
    fn bad_documents() {
        assert!(matches!(compile(b"{"), Err(SchemaError::NotJson(_))));
        assert!(matches!(compile(b"42"), Err(SchemaError::Invalid(_))));
        assert!(matches!(compile(br#"{"type":"nonsense"}"#), Err(SchemaError::Invalid(_))));
        assert!(matches!(compile(br#"{"$ref":"https://example.com/x.json"}"#), Err(SchemaError::Invalid(_))));
    }

    #[test]
    fn long_reasons_are_cut() {
        let s = cut("é".repeat(300));
        assert!(s.len() <= MAX_WHAT + 3 && s.ends_with("..."));
    }
}
