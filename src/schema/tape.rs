//! The payload representation validation runs on: a flat tape of the JSON document's nodes,
//! parsed by `serde_json` straight from the payload bytes, with strings borrowed from them
//! (owned only where an escape had to be decoded).
//!
//! Validating a `serde_json::Value` costs a heap allocation per key, string and container;
//! on a small sensor object that is most of the cost of enforcing a schema. The tape is one
//! array (on the stack for small documents) and implements `jsonschema`'s custom-representation traits ([`jsonschema::json`]),
//! so the same compiled keywords run on it.
//!
//! Layout: a container's slot records its member count and the index just past its last
//! descendant; an object's members follow it as (key slot, value subtree) pairs in document
//! order. Numbers are `serde_json::Number`s made exactly as `serde_json::Value` makes them.
//! An object with a repeated key is refused by [`Tape::parse`] ([`TapeError::DuplicateKey`]);
//! [`Tape::from_value`] then builds the tape from the `Value` parse, whose last-one-wins rule
//! the validator has always applied.

use std::borrow::Cow;
use std::fmt;

use jsonschema::JsonType;
use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use smallvec::SmallVec;

/// Slots kept inline (on the stack) before the tape spills to the heap: a small object of a
/// few dozen values parses without allocating.
const INLINE_SLOTS: usize = 32;

pub(super) type Slots<'a> = SmallVec<[Slot<'a>; INLINE_SLOTS]>;

/// A members pass beats this many linear-scan lookups per required key (see `required`).
const KEYS_PER_SCAN: usize = 16;

/// One node of the tape.
#[derive(Debug, Clone, PartialEq)]
pub enum Slot<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    /// `len` elements; the subtree ends before `end`.
    Array {
        len: u32,
        end: u32,
    },
    /// `len` (key, value) members; the subtree ends before `end`.
    Object {
        len: u32,
        end: u32,
    },
}

/// Why a payload has no tape.
#[derive(Debug, thiserror::Error)]
pub enum TapeError {
    /// Not JSON (the parser's message).
    #[error("{0}")]
    Syntax(#[from] serde_json::Error),
    /// An object names one key twice.
    #[error("an object repeats a key")]
    DuplicateKey,
}

/// A parsed JSON document.
#[derive(Debug, Default)]
pub struct Tape<'a> {
    slots: Slots<'a>,
}

impl<'a> Tape<'a> {
    /// Parses `bytes` (one JSON document, nothing after it but whitespace) into this tape,
    /// replacing what it held: the fast scanner first (`scan.rs`), `serde_json` when it declines. (In place: a tape is too big to move around cheaply.)
    ///
    /// # Errors
    /// [`TapeError`] when `bytes` is not JSON or repeats a key in an object.
    pub fn parse(&mut self, bytes: &'a [u8]) -> Result<(), TapeError> {
        self.slots.clear();
        if super::scan::scan(bytes, &mut self.slots).is_some() {
            return Ok(());
        }
        self.slots.clear();
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let mut dup = false;
        Build { slots: &mut self.slots, dup: &mut dup }.deserialize(&mut de)?;
        de.end()?;
        if dup {
            return Err(TapeError::DuplicateKey);
        }
        Ok(())
    }

    /// The tape of an already parsed document (strings borrowed from it).
    pub fn from_value(value: &'a Value) -> Tape<'a> {
        let mut tape = Tape::default();
        tape.push_value(value);
        tape
    }

    fn push_value(&mut self, value: &'a Value) {
        match value {
            Value::Null => self.slots.push(Slot::Null),
            Value::Bool(b) => self.slots.push(Slot::Bool(*b)),
            Value::Number(n) => self.slots.push(Slot::Number(n.clone())),
            Value::String(s) => self.slots.push(Slot::String(Cow::Borrowed(s))),
            Value::Array(items) => {
                let at = open(&mut self.slots, Slot::Array { len: 0, end: 0 });
                items.iter().for_each(|v| self.push_value(v));
                close(&mut self.slots, at, items.len());
            }
            Value::Object(members) => {
                let at = open(&mut self.slots, Slot::Object { len: 0, end: 0 });
                for (k, v) in members {
                    self.slots.push(Slot::String(Cow::Borrowed(k)));
                    self.push_value(v);
                }
                close(&mut self.slots, at, members.len());
            }
        }
    }

    /// The document's root node.
    pub fn root(&self) -> TapeNode<'_> {
        TapeNode::At { slots: &self.slots, at: 0 }
    }
}

/// Appends a container's slot (its count and end set by [`close`]); returns its index.
pub(super) fn open<'a>(slots: &mut Slots<'a>, container: Slot<'a>) -> usize {
    slots.push(container);
    slots.len() - 1
}

/// Sets the member count and end of the container opened at `at`.
pub(super) fn close(slots: &mut [Slot<'_>], at: usize, count: usize) {
    let (len, end) = (to_u32(count), to_u32(slots.len()));
    match &mut slots[at] {
        Slot::Array { len: l, end: e } | Slot::Object { len: l, end: e } => (*l, *e) = (len, end),
        _ => {}
    }
}

/// Tape indices fit in `u32`: a payload is at most 256 MiB and a slot takes at least a byte.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Appends one parsed value (and its subtree) to the tape.
struct Build<'t, 'a> {
    slots: &'t mut Slots<'a>,
    dup: &'t mut bool,
}

impl<'de> Build<'_, 'de> {
    /// A builder appending to the same tape (for a container's members).
    fn child(&mut self) -> Build<'_, 'de> {
        Build { slots: &mut *self.slots, dup: &mut *self.dup }
    }
}

impl<'de> DeserializeSeed<'de> for Build<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Build<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.slots.push(Slot::Bool(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.slots.push(Slot::Number(v.into()));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.slots.push(Slot::Number(v.into()));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        // As `serde_json::Value` does: a non-finite float is null.
        self.slots.push(Number::from_f64(v).map_or(Slot::Null, Slot::Number));
        Ok(())
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        self.slots.push(Slot::String(Cow::Borrowed(v)));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.slots.push(Slot::String(Cow::Owned(v.to_owned())));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.slots.push(Slot::Null);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        let at = open(self.slots, Slot::Array { len: 0, end: 0 });
        let mut count = 0;
        while seq.next_element_seed(self.child())?.is_some() {
            count += 1;
        }
        close(self.slots, at, count);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        let at = open(self.slots, Slot::Object { len: 0, end: 0 });
        let mut count = 0;
        while map.next_key_seed(self.child())?.is_some() {
            map.next_value_seed(self.child())?;
            count += 1;
        }
        close(self.slots, at, count);
        *self.dup |= repeats_key(self.slots, at);
        Ok(())
    }
}

/// True when two members of the (closed) object at `at` have the same name. A 64-bit
/// filter of (length, first and last byte) clears most objects without comparing names.
pub(super) fn repeats_key(slots: &[Slot<'_>], at: usize) -> bool {
    let Some(members) = (TapeNode::At { slots, at: to_u32(at) }).container(true) else { return false };
    let mut filter = KeyFilter::default();
    MembersIter(members).for_each(|(name, _)| filter.add(name));
    filter.maybe_repeated && names_repeat(slots, at)
}

/// The names of the (closed) object at `at` compared exactly: true when one repeats.
pub(super) fn names_repeat(slots: &[Slot<'_>], at: usize) -> bool {
    let Some(members) = (TapeNode::At { slots, at: to_u32(at) }).container(true) else { return false };
    let mut names = std::collections::HashSet::with_capacity(members.len);
    !MembersIter(members).all(|(name, _)| names.insert(name))
}

/// A 64-bit filter of an object's member names by (length, first and last byte): a name
/// that repeats always sets [`KeyFilter::maybe_repeated`]; distinct names rarely do.
#[derive(Debug, Default)]
pub(super) struct KeyFilter {
    seen: u64,
    pub(super) maybe_repeated: bool,
}

impl KeyFilter {
    pub(super) fn add(&mut self, name: &str) {
        let b = name.as_bytes();
        let (first, last) = (b.first().copied().unwrap_or(0), b.last().copied().unwrap_or(0));
        let bit = 1u64 << ((b.len() * 7 + usize::from(first) * 3 + usize::from(last)) % 64);
        self.maybe_repeated |= self.seen & bit != 0;
        self.seen |= bit;
    }
}

/// The tape as a `jsonschema` instance representation.
pub struct TapeJson;

/// A node: a slot of a tape, or a property name (`propertyNames`).
#[derive(Debug, Clone, Copy)]
pub enum TapeNode<'a> {
    At { slots: &'a [Slot<'a>], at: u32 },
    Name(&'a str),
}

impl Json for TapeJson {
    type Node<'a> = TapeNode<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();
    const KEYS_PER_LOOKUP: usize = KEYS_PER_SCAN;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(TapeNode<'_>) -> T) -> T {
        f(TapeNode::Name(string))
    }
}

/// The index just past the subtree at `at`.
fn end_of(slots: &[Slot<'_>], at: usize) -> usize {
    match slots[at] {
        Slot::Array { end, .. } | Slot::Object { end, .. } => end as usize,
        _ => at + 1,
    }
}

impl<'a> TapeNode<'a> {
    fn slot(&self) -> Option<&'a Slot<'a>> {
        match *self {
            TapeNode::At { slots, at } => slots.get(at as usize),
            TapeNode::Name(_) => None,
        }
    }

    fn container(&self, want_object: bool) -> Option<Members<'a>> {
        let TapeNode::At { slots, at } = *self else { return None };
        match (&slots[at as usize], want_object) {
            (Slot::Object { len, end }, true) | (Slot::Array { len, end }, false) => {
                Some(Members { slots, next: at as usize + 1, end: *end as usize, len: *len as usize })
            }
            _ => None,
        }
    }
}

/// The members of an object or the elements of an array.
#[derive(Debug, Clone, Copy)]
pub struct Members<'a> {
    slots: &'a [Slot<'a>],
    next: usize,
    end: usize,
    len: usize,
}

impl<'a> Members<'a> {
    fn node(&self, at: usize) -> TapeNode<'a> {
        TapeNode::At { slots: self.slots, at: to_u32(at) }
    }

    fn key(&self, at: usize) -> &'a str {
        match &self.slots[at] {
            Slot::String(s) => s,
            _ => "",
        }
    }
}

/// Iterates an object's (name, value) members.
pub struct MembersIter<'a>(Members<'a>);

impl<'a> Iterator for MembersIter<'a> {
    type Item = (&'a str, TapeNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let m = &mut self.0;
        if m.next >= m.end {
            return None;
        }
        let (key, value) = (m.key(m.next), m.node(m.next + 1));
        m.next = end_of(m.slots, m.next + 1);
        Some((key, value))
    }
}

/// Iterates an array's elements.
pub struct ElementsIter<'a>(Members<'a>);

impl<'a> Iterator for ElementsIter<'a> {
    type Item = TapeNode<'a>;

    fn next(&mut self) -> Option<TapeNode<'a>> {
        let m = &mut self.0;
        if m.next >= m.end {
            return None;
        }
        let node = m.node(m.next);
        m.next = end_of(m.slots, m.next);
        Some(node)
    }
}

impl<'a> Object<'a, TapeJson> for Members<'a> {
    type Node = TapeNode<'a>;
    type MemberName = &'a str;
    type MembersIter = MembersIter<'a>;

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, key: &Box<str>) -> Option<TapeNode<'a>> {
        MembersIter(*self).find(|(name, _)| *name == &**key).map(|(_, v)| v)
    }

    fn members(&self) -> MembersIter<'a> {
        MembersIter(*self)
    }
}

impl<'a> Array<'a, TapeJson> for Members<'a> {
    type Node = TapeNode<'a>;
    type ElementsIter = ElementsIter<'a>;

    fn len(&self) -> usize {
        self.len
    }

    fn elements(&self) -> ElementsIter<'a> {
        ElementsIter(*self)
    }
}

impl<'a> Node<'a, TapeJson> for TapeNode<'a> {
    type Object = Members<'a>;
    type Array = Members<'a>;
    type Number = &'a Number;

    fn as_object(&self) -> Option<Members<'a>> {
        self.container(true)
    }

    fn as_array(&self) -> Option<Members<'a>> {
        self.container(false)
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match (self, self.slot()) {
            (TapeNode::Name(s), _) => Some(Cow::Borrowed(s)),
            (_, Some(Slot::String(s))) => Some(Cow::Borrowed(s)),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self.slot() {
            Some(Slot::Number(n)) => Some(n),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.slot() {
            Some(Slot::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.slot(), Some(Slot::Null))
    }

    fn json_type(&self) -> JsonType {
        match self.slot() {
            None | Some(Slot::String(_)) => JsonType::String,
            Some(Slot::Null) => JsonType::Null,
            Some(Slot::Bool(_)) => JsonType::Boolean,
            Some(Slot::Number(_)) => JsonType::Number,
            Some(Slot::Array { .. }) => JsonType::Array,
            Some(Slot::Object { .. }) => JsonType::Object,
        }
    }

    fn string_length_within(&self, min: u64, max: u64) -> Option<bool> {
        let s = self.as_string()?;
        // A code point takes one to four bytes: the byte length often decides alone.
        let bytes = s.len() as u64;
        if bytes < min || bytes.div_ceil(4) > max {
            return Some(false);
        }
        if min <= bytes.div_ceil(4) && bytes <= max {
            return Some(true);
        }
        Some((min..=max).contains(&(s.chars().count() as u64)))
    }

    fn equals_value(&self, expected: &Value) -> bool {
        match (self.slot(), expected) {
            (None | Some(Slot::String(_)), Value::String(e)) => {
                self.as_string().is_some_and(|s| s == e.as_str())
            }
            (None | Some(Slot::String(_)), _) => false,
            (Some(Slot::Null), e) => e.is_null(),
            (Some(Slot::Bool(b)), e) => e.as_bool() == Some(*b),
            _ => jsonschema::json::cmp::equal(&self.to_value(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(match *self {
            TapeNode::Name(s) => Value::String(s.to_owned()),
            TapeNode::At { slots, at } => to_value(slots, at as usize),
        })
    }

    fn identity(&self) -> Option<NodeIdentity> {
        self.slot().map(|s| NodeIdentity::new(std::ptr::from_ref(s) as usize))
    }
}

/// The `serde_json::Value` of the subtree at `at` (error reports, `const`/`enum` on
/// containers, `uniqueItems`).
fn to_value(slots: &[Slot<'_>], at: usize) -> Value {
    let node = TapeNode::At { slots, at: to_u32(at) };
    match &slots[at] {
        Slot::Null => Value::Null,
        Slot::Bool(b) => Value::Bool(*b),
        Slot::Number(n) => Value::Number(n.clone()),
        Slot::String(s) => Value::String(s.to_string()),
        Slot::Array { .. } => Value::Array(
            node.container(false)
                .map(ElementsIter)
                .into_iter()
                .flatten()
                .map(|n| n.to_value().into_owned())
                .collect(),
        ),
        Slot::Object { .. } => {
            let members = node.container(true).map(MembersIter).into_iter().flatten();
            Value::Object(
                members.map(|(k, v)| (k.to_owned(), v.to_value().into_owned())).collect::<Map<_, _>>(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tape_value(doc: &str) -> Value {
        let mut tape = Tape::default();
        tape.parse(doc.as_bytes()).expect("parses");
        tape.root().to_value().into_owned()
    }

    #[test]
    fn parses_what_serde_json_parses() {
        for doc in [
            r#"{"a":1,"b":[true,false,null,{"c":"d"}],"e":{},"f":[]}"#,
            r#"[-1, 18446744073709551615, -9223372036854775808, 1.5e300, 0.1, -0.0, 1e2]"#,
            r#"{"esc":"quote \" slash \\ \u00e9 \ud83d\ude00 tab\t","k\u0041":"x"}"#,
            r#"  "just a string"  "#,
            "42",
            r#"[[[[[[["deep"]]]]]]]"#,
            r#"{"z":1,"a":2,"m":{"y":[1,2,{"x":null}]}}"#,
        ] {
            let want: Value = serde_json::from_str(doc).expect("serde parses");
            assert_eq!(tape_value(doc), want, "{doc}");
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        let docs: [&[u8]; 7] = [b"{", b"[1,]", br#"{"a":1} x"#, br#""\x""#, b"nul", b"", b"[\"\xff\"]"];
        for doc in docs {
            let mut tape = Tape::default();
            assert!(matches!(tape.parse(doc), Err(TapeError::Syntax(_))), "{doc:?}");
        }
    }

    #[test]
    fn repeated_keys_are_reported_at_any_depth() {
        for doc in [r#"{"a":1,"a":2}"#, r#"{"x":[{"k":1,"j":2,"k":3}]}"#] {
            let mut tape = Tape::default();
            assert!(matches!(tape.parse(doc.as_bytes()), Err(TapeError::DuplicateKey)), "{doc}");
        }
        // Names that share length and first and last byte are not repeats.
        let many: Vec<String> = (0..40).map(|i| format!("\"k{i:02}k\":{i}")).collect();
        let doc = format!("{{{}}}", many.join(","));
        assert_eq!(tape_value(&doc), serde_json::from_str::<Value>(&doc).expect("parses"));
    }

    #[test]
    fn from_value_matches_parse() {
        let v = json!({"a": [1, "two", {"three": 3.5}], "b": null});
        assert_eq!(Tape::from_value(&v).root().to_value().into_owned(), v);
    }

    #[test]
    fn meets_the_jsonschema_representation_contract() {
        let doc = serde_json::to_string(&jsonschema::json::conformance::document()).expect("encodes");
        let mut tape = Tape::default();
        tape.parse(doc.as_bytes()).expect("parses");
        jsonschema::json::conformance::assert_conformance::<TapeJson>(&tape.root());
    }

    /// The same verdict as validating a `serde_json::Value`, over keywords that read the
    /// representation in different ways.
    #[test]
    fn validates_like_serde_json_values() {
        let cases = [
            (json!({"type": "integer"}), vec!["1", "1.0", "1.5", "\"1\"", "-3"]),
            (
                json!({"enum": ["a", 1, null, {"k": [1]}]}),
                vec!["\"a\"", "1.0", "null", "{\"k\":[1]}", "{\"k\":[2]}", "2"],
            ),
            (json!({"const": {"a": [1, 2]}}), vec!["{\"a\":[1,2]}", "{\"a\":[1.0,2]}", "{\"a\":[2,1]}"]),
            (json!({"uniqueItems": true}), vec!["[1,2,3]", "[1,1.0]", "[{\"a\":1},{\"a\":1}]", "[]"]),
            (json!({"minLength": 2, "maxLength": 3}), vec!["\"é\"", "\"éé\"", "\"😀😀😀\"", "\"abcd\""]),
            (json!({"propertyNames": {"pattern": "^[a-z]+$"}}), vec!["{\"ok\":1}", "{\"Bad\":1}", "{}"]),
            (
                json!({"patternProperties": {"^n_": {"type": "number"}}, "additionalProperties": false}),
                vec!["{\"n_a\":1}", "{\"n_a\":\"x\"}", "{\"other\":1}"],
            ),
            (
                json!({"minProperties": 2, "maxProperties": 2}),
                vec!["{\"a\":1}", "{\"a\":1,\"b\":2}", "{\"a\":1,\"b\":2,\"c\":3}"],
            ),
            (
                json!({"$defs": {"t": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/t"}}}}}, "$ref": "#/$defs/t"}),
                vec!["{\"kids\":[{\"kids\":[]}]}", "{\"kids\":[{\"kids\":[1]}]}"],
            ),
            (
                json!({"type": "object", "required": ["a", "b"], "properties": {"a": {"minimum": 0}, "b": {"type": "boolean"}}, "additionalProperties": false}),
                vec![
                    "{\"a\":1,\"b\":true}",
                    "{\"b\":true,\"a\":-1}",
                    "{\"a\":1}",
                    "{\"a\":1,\"b\":true,\"c\":0}",
                ],
            ),
            (
                json!({"items": {"type": "string"}, "minItems": 1, "contains": {"const": "x"}}),
                vec!["[\"x\"]", "[\"y\"]", "[]", "[\"x\",1]"],
            ),
        ];
        for (schema, instances) in cases {
            let tape_v = jsonschema::options_for::<TapeJson>().build(&schema).expect("compiles");
            let value_v = jsonschema::validator_for(&schema).expect("compiles");
            for doc in instances {
                let value: Value = serde_json::from_str(doc).expect("parses");
                let mut tape = Tape::default();
                tape.parse(doc.as_bytes()).expect("parses");
                assert_eq!(tape_v.is_valid(tape.root()), value_v.is_valid(&value), "{schema} on {doc}");
            }
        }
    }
}
