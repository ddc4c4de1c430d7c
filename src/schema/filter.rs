//! Names of schemas: the `$schema/<encoded filter>` topic a schema lives on, and the file under
//! `schemas/` it can be loaded from, both mapped to the topic filter it governs.
//!
//! MQTT forbids `+` and `#` in a topic name, so wildcard levels are percent-encoded in the
//! `$schema/` topic: `+` is `%2B`, `#` is `%23` and a literal `%` is `%25` (either case of the
//! hex digits). Any other `%` sequence is refused, and so is a decoded filter that is not a
//! valid MQTT topic filter or that starts with `$` (schemas govern application topics, not
//! `$SYS/`, `$schema/` or `$dead/`).
//!
//! On disk each directory level and the file stem (the name without `.json`) is one filter
//! level, decoded the same way; a raw `+` or `#` in a file name is accepted too:
//!
//! | file under `schemas/`             | filter                  |
//! |-----------------------------------|-------------------------|
//! | `sensors/+/temperature.json`      | `sensors/+/temperature` |
//! | `sensors/%2B/temperature.json`    | `sensors/+/temperature` |
//! | `devices/%23.json` (or `#.json`)  | `devices/#`             |
//! | `%23.json`                        | `#` (every topic)       |
//! | `rates/100%25.json`               | `rates/100%`            |

use std::path::Path;

use dataloom_codec::topic;

/// Topic prefix of the schema tree.
pub const SCHEMA_PREFIX: &str = "$schema/";

/// Why a `$schema/` topic or a schema file name does not name a usable filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // variant fields are the named parts of each `#[error]` message
pub enum FilterError {
    /// A `%` not followed by `2B`, `23` or `25`.
    #[error("bad percent-encoding {0:?}: only %2B (+), %23 (#) and %25 (%) are allowed")]
    BadEscape(String),
    /// The decoded filter breaks an MQTT topic filter rule.
    #[error("{filter:?} is not a valid topic filter: {source}")]
    Invalid { filter: String, source: topic::TopicError },
    /// The filter starts with `$`.
    #[error("{0:?}: schemas cannot govern `$` topics")]
    Reserved(String),
    /// A file path that is not `<levels>/<name>.json` under the schema directory.
    #[error("not a `.json` file name that maps to a filter")]
    BadPath,
}

/// The filter a `$schema/...` topic governs, or `None` when `topic` is not under `$schema/`.
///
/// # Errors
/// [`FilterError`] when the remainder is not a well-encoded, valid, non-`$` filter.
pub fn filter_of_topic(topic: &str) -> Option<Result<String, FilterError>> {
    let encoded = topic.strip_prefix(SCHEMA_PREFIX)?;
    Some(decode(encoded).and_then(checked))
}

/// The `$schema/` topic of `filter` (the inverse of [`filter_of_topic`]).
pub fn topic_of_filter(filter: &str) -> String {
    let mut out = String::with_capacity(SCHEMA_PREFIX.len() + filter.len() + 8);
    out.push_str(SCHEMA_PREFIX);
    for c in filter.chars() {
        match c {
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

/// The filter a schema file at `rel` (relative to the schema directory) registers.
///
/// # Errors
/// [`FilterError`] when a level is badly encoded, the name does not end in `.json`, or the
/// filter is not valid.
pub fn filter_of_path(rel: &Path) -> Result<String, FilterError> {
    let mut levels = Vec::new();
    for part in rel.components() {
        let std::path::Component::Normal(part) = part else {
            return Err(FilterError::BadPath);
        };
        levels.push(part.to_str().ok_or(FilterError::BadPath)?);
    }
    let last = levels.pop().ok_or(FilterError::BadPath)?;
    let stem = last.strip_suffix(".json").filter(|s| !s.is_empty()).ok_or(FilterError::BadPath)?;
    levels.push(stem);
    let mut filter = String::new();
    for (i, level) in levels.iter().enumerate() {
        if i > 0 {
            filter.push('/');
        }
        filter.push_str(&decode(level)?);
    }
    checked(filter)
}

/// Decodes `%2B`, `%23` and `%25`; raw characters pass through (validation comes after).
fn decode(s: &str) -> Result<String, FilterError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3).unwrap_or(&rest[i..]);
        match esc.to_ascii_uppercase().as_str() {
            "%2B" => out.push('+'),
            "%23" => out.push('#'),
            "%25" => out.push('%'),
            _ => return Err(FilterError::BadEscape(esc.to_string())),
        }
        rest = &rest[i + esc.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

fn checked(filter: String) -> Result<String, FilterError> {
    if let Err(source) = topic::validate_filter(&filter, 0) {
        return Err(FilterError::Invalid { filter, source });
    }
    if filter.starts_with('$') {
        return Err(FilterError::Reserved(filter));
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_decode() {
        let f = |t| filter_of_topic(t).expect("under $schema/");
        assert_eq!(f("$schema/sensors/%2B/temperature"), Ok("sensors/+/temperature".into()));
        assert_eq!(f("$schema/sensors/%2b/x/%23"), Ok("sensors/+/x/#".into()));
        assert_eq!(f("$schema/rates/100%25"), Ok("rates/100%".into()));
        assert_eq!(f("$schema/a/b"), Ok("a/b".into()));
        assert!(filter_of_topic("sensors/x").is_none());
    }

    #[test]
    fn bad_topics_refused() {
        let f = |t| filter_of_topic(t).expect("under $schema/");
        assert!(matches!(f("$schema/a/%41"), Err(FilterError::BadEscape(_))));
        assert!(matches!(f("$schema/a/%2"), Err(FilterError::BadEscape(_))));
        assert!(matches!(f("$schema/a/%"), Err(FilterError::BadEscape(_))));
        assert!(matches!(f("$schema/a%2B"), Err(FilterError::Invalid { .. })));
        assert!(matches!(f("$schema/%23/a"), Err(FilterError::Invalid { .. })));
        assert!(matches!(f("$schema/"), Err(FilterError::Invalid { .. })));
        assert!(matches!(f("$schema/$SYS/%23"), Err(FilterError::Reserved(_))));
    }

    #[test]
    fn topic_round_trip() {
        for f in ["sensors/+/temperature", "#", "a/100%/#", "x"] {
            assert_eq!(filter_of_topic(&topic_of_filter(f)), Some(Ok(f.to_string())));
        }
    }

    #[test]
    fn paths_map_to_filters() {
        let f = |p: &str| filter_of_path(Path::new(p));
        assert_eq!(f("sensors/+/temperature.json"), Ok("sensors/+/temperature".into()));
        assert_eq!(f("sensors/%2B/temperature.json"), Ok("sensors/+/temperature".into()));
        assert_eq!(f("devices/%23.json"), Ok("devices/#".into()));
        assert_eq!(f("devices/#.json"), Ok("devices/#".into()));
        assert_eq!(f("%23.json"), Ok("#".into()));
        assert_eq!(f("rates/100%25.json"), Ok("rates/100%".into()));
        assert_eq!(f("readme.txt"), Err(FilterError::BadPath));
        assert_eq!(f(".json"), Err(FilterError::BadPath));
        assert!(f("%23/x.json").is_err());
    }
}
