//! MQTT topic names, topic filters and shared subscriptions.
//!
//! Implements the rules of MQTT 3.1.1 section 4.7 and MQTT 5.0 sections 4.7
//! (topic names and filters) and 4.8.2 (shared subscriptions):
//!
//! * names and filters are at least one character long [MQTT-4.7.3-1], contain
//!   no U+0000 [MQTT-4.7.3-2] and encode to at most 65535 bytes [MQTT-4.7.3-3];
//! * topic names contain no wildcard [MQTT-4.7.1-1];
//! * `#` occupies a whole level and is the last level [MQTT-4.7.1-2];
//! * `+` occupies a whole level [MQTT-4.7.1-3];
//! * filters starting with a wildcard do not match names starting with `$`
//!   [MQTT-4.7.2-1];
//! * `$share/{ShareName}/{filter}`: the share name is non-empty and contains no
//!   `/`, `+` or `#`, and the filter is a valid, non-empty filter [MQTT-4.8.2-1],
//!   [MQTT-4.8.2-2].
//!
//! Empty levels are real levels: `a//b` has three levels and `/a` has two.
//! A `max_levels` of 0 disables the level-count limit (a broker policy, not an
//! MQTT rule). A name or filter over that limit is well-formed: the decoder
//! accepts it and the server refuses it with a reason code (a SUBACK or PUBACK
//! refusal), so a client learns why and keeps its connection.

/// Maximum encoded length of a topic name or filter [MQTT-4.7.3-3].
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Prefix of a shared subscription filter (MQTT 5.0 section 4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// Why a topic name, topic filter or shared subscription is invalid.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    /// Zero-length name or filter.
    #[error("topic must be at least one character long [MQTT-4.7.3-1]")]
    Empty,
    /// `+` or `#` inside a topic name.
    #[error("wildcards '+' and '#' are not allowed in a topic name [MQTT-4.7.1-1]")]
    WildcardInName,
    /// U+0000 inside a name or filter.
    #[error("topic must not contain the null character U+0000 [MQTT-4.7.3-2]")]
    NullChar,
    /// `#` followed by more levels, e.g. `a/#/b`.
    #[error("multi-level wildcard '#' must be the last level of a filter [MQTT-4.7.1-2]")]
    MultiLevelNotLast,
    /// A wildcard sharing a level with other characters, e.g. `a+` or `a/b#`.
    #[error("wildcards must occupy an entire filter level [MQTT-4.7.1-2], [MQTT-4.7.1-3]")]
    WildcardNotWholeLevel,
    /// More levels than the broker allows.
    #[error("topic has more than {max} levels (broker limit mqtt.max_topic_levels)")]
    TooManyLevels {
        /// The configured maximum number of levels.
        max: usize,
    },
    /// `$share/group` or `$share/group/` without a topic filter.
    #[error("shared subscription has no topic filter after the share name [MQTT-4.8.2-2]")]
    SharedMissingFilter,
    /// Empty share name, or a share name containing `+` or `#`.
    #[error("share name must be non-empty and must not contain '/', '+' or '#' [MQTT-4.8.2-1]")]
    SharedGroupInvalid,
    /// More than 65535 bytes.
    #[error("topic must not exceed 65535 bytes [MQTT-4.7.3-3]")]
    TooLong,
    /// A topic name in the `$share/` namespace, which names shared subscriptions: no
    /// subscription can match it, and `$` topics are the server's [MQTT 5 §4.7.2, §4.8.2].
    #[error("'$share/' is reserved for shared subscriptions and is not a topic name [MQTT 5 §4.7.2, §4.8.2]")]
    SharedName,
}

/// A parsed `$share/{group}/{filter}` subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name (group).
    pub group: &'a str,
    /// The topic filter after the share name.
    pub filter: &'a str,
}

/// Checks the rules common to names and filters (length, null, level count).
fn check_common(s: &str, max_levels: usize) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::NullChar);
    }
    check_levels(s, max_levels)
}

/// Validates a topic name as used in PUBLISH (and in the will topic).
///
/// Rejects empty names, names longer than 65535 bytes, U+0000, wildcards and
/// names with more than `max_levels` levels (0 = unlimited).
pub fn validate_topic_name(name: &str, max_levels: usize) -> Result<(), TopicError> {
    check_common(name, max_levels)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// The server's rules for the topic name of a client PUBLISH (and will) beyond what the
/// decoder enforces (UTF-8, no U+0000, no wildcard): at most `max_levels` levels (0 =
/// unlimited) and not in the `$share/` namespace. The name is well-formed either way, so the
/// answer to a failure is MQTT 5 reason code 0x90 Topic Name invalid, not a closed connection.
pub fn check_publish_name(name: &str, max_levels: usize) -> Result<(), TopicError> {
    if name.starts_with(SHARE_PREFIX) {
        return Err(TopicError::SharedName);
    }
    check_levels(name, max_levels)
}

fn check_levels(s: &str, max_levels: usize) -> Result<(), TopicError> {
    if max_levels != 0 && s.bytes().filter(|&b| b == b'/').count() >= max_levels {
        return Err(TopicError::TooManyLevels { max: max_levels });
    }
    Ok(())
}

/// Validates a non-shared topic filter (a `$share/...` string is validated as a
/// plain filter here; use [`parse_subscription`] for SUBSCRIBE filters).
pub fn validate_filter(filter: &str, max_levels: usize) -> Result<(), TopicError> {
    check_common(filter, max_levels)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') {
            if level != "#" {
                return Err(TopicError::WildcardNotWholeLevel);
            }
            if levels.peek().is_some() {
                return Err(TopicError::MultiLevelNotLast);
            }
        } else if level.contains('+') && level != "+" {
            return Err(TopicError::WildcardNotWholeLevel);
        }
    }
    Ok(())
}

/// Recognises and validates a shared subscription.
///
/// Returns `Ok(None)` if `filter` does not start with `$share/` (the filter
/// itself is not validated then), `Ok(Some(..))` for a valid shared
/// subscription. The whole string must be at most 65535 bytes and free of
/// U+0000; `max_levels` applies to the filter part.
pub fn parse_shared(filter: &str, max_levels: usize) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    if filter.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let (group, inner) = match rest.split_once('/') {
        Some((g, f)) => (g, f),
        None => (rest, ""),
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::SharedGroupInvalid);
    }
    if group.contains('\0') {
        return Err(TopicError::NullChar);
    }
    if inner.is_empty() {
        return Err(TopicError::SharedMissingFilter);
    }
    validate_filter(inner, max_levels)?;
    Ok(Some(SharedFilter { group, filter: inner }))
}

/// Validates a SUBSCRIBE/UNSUBSCRIBE filter, recognising `$share/{group}/{filter}`.
///
/// Returns `(Some(group), filter)` for a shared subscription and
/// `(None, filter)` for a plain one (then `filter` is the input).
pub fn parse_subscription(filter: &str, max_levels: usize) -> Result<(Option<&str>, &str), TopicError> {
    match parse_shared(filter, max_levels)? {
        Some(shared) => Ok((Some(shared.group), shared.filter)),
        None => {
            validate_filter(filter, max_levels)?;
            Ok((None, filter))
        }
    }
}

/// Returns true if the topic name `topic` matches the filter `filter`.
///
/// `+` matches exactly one level, `#` matches its own level and every level
/// below, including the parent (`a/#` matches `a`). Filters starting with a
/// wildcard never match topics starting with `$` [MQTT-4.7.2-1]. Both inputs
/// are assumed valid; invalid input gives an unspecified result, never a panic.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) => {
                if fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(validate_topic_name("a/b/c", 0), Ok(()));
        assert_eq!(validate_topic_name("/", 0), Ok(()));
        assert_eq!(validate_topic_name("a//b", 0), Ok(()));
        assert_eq!(validate_topic_name("$SYS/x", 0), Ok(()));
        assert_eq!(validate_topic_name("", 0), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+", 0), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a#", 0), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0b", 0), Err(TopicError::NullChar));
        let long = "x".repeat(MAX_TOPIC_LEN + 1);
        assert_eq!(validate_topic_name(&long, 0), Err(TopicError::TooLong));
        assert_eq!(validate_topic_name(&long[1..], 0), Ok(()));
    }

    #[test]
    fn level_limit() {
        assert_eq!(validate_topic_name("a/b/c", 3), Ok(()));
        assert_eq!(validate_topic_name("a/b/c/d", 3), Err(TopicError::TooManyLevels { max: 3 }));
        assert_eq!(validate_filter("a//c/", 3), Err(TopicError::TooManyLevels { max: 3 }));
        assert_eq!(validate_filter("a/+/#", 3), Ok(()));
    }

    #[test]
    fn publish_names() {
        assert_eq!(check_publish_name("a/b/c", 3), Ok(()));
        assert_eq!(check_publish_name("a/b/c/d", 3), Err(TopicError::TooManyLevels { max: 3 }));
        assert_eq!(check_publish_name(&["a"; 200].join("/"), 0), Ok(()));
        assert_eq!(check_publish_name("$share/g/t", 0), Err(TopicError::SharedName));
        assert_eq!(check_publish_name("$share", 0), Ok(()), "only the '$share/' namespace");
        assert_eq!(check_publish_name("$shared/x", 0), Ok(()));
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "+/+", "/+", "a/+/b/#", "$SYS/#", "a//b", "sport/tennis/+"] {
            assert_eq!(validate_filter(ok, 0), Ok(()), "{ok}");
        }
        assert_eq!(validate_filter("", 0), Err(TopicError::Empty));
        assert_eq!(validate_filter("a/#/b", 0), Err(TopicError::MultiLevelNotLast));
        assert_eq!(validate_filter("#/", 0), Err(TopicError::MultiLevelNotLast));
        assert_eq!(validate_filter("a+", 0), Err(TopicError::WildcardNotWholeLevel));
        assert_eq!(validate_filter("a/b#", 0), Err(TopicError::WildcardNotWholeLevel));
        assert_eq!(validate_filter("a/++", 0), Err(TopicError::WildcardNotWholeLevel));
        assert_eq!(validate_filter("a\0", 0), Err(TopicError::NullChar));
    }

    #[test]
    fn shared() {
        assert_eq!(parse_subscription("$share/g/a/+", 0), Ok((Some("g"), "a/+")));
        assert_eq!(parse_subscription("$share/g/#", 0), Ok((Some("g"), "#")));
        assert_eq!(parse_subscription("a/b", 0), Ok((None, "a/b")));
        assert_eq!(parse_subscription("$share", 0), Ok((None, "$share")));
        assert_eq!(parse_subscription("$share/g", 0), Err(TopicError::SharedMissingFilter));
        assert_eq!(parse_subscription("$share/g/", 0), Err(TopicError::SharedMissingFilter));
        assert_eq!(parse_subscription("$share/", 0), Err(TopicError::SharedGroupInvalid));
        assert_eq!(parse_subscription("$share//a", 0), Err(TopicError::SharedGroupInvalid));
        assert_eq!(parse_subscription("$share/g+/a", 0), Err(TopicError::SharedGroupInvalid));
        assert_eq!(parse_subscription("$share/#/a", 0), Err(TopicError::SharedGroupInvalid));
        assert_eq!(parse_subscription("$share/g/a#", 0), Err(TopicError::WildcardNotWholeLevel));
        assert_eq!(parse_shared("$share/grp/x/y", 0), Ok(Some(SharedFilter { group: "grp", filter: "x/y" })));
        assert_eq!(parse_shared("a", 0), Ok(None));
    }

    #[test]
    fn matching() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/c"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/+", "a"));
        assert!(matches("a/+", "a/"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(!matches("a/#", "ab"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/a"));
        assert!(matches("+", ""));
        assert!(!matches("+", "/a"));
        assert!(matches("a//b", "a//b"));
        assert!(matches("a/+/b", "a//b"));
        assert!(matches("sport/+/player1", "sport/tennis/player1"));
    }

    #[test]
    fn dollar_rule() {
        assert!(!matches("#", "$SYS/uptime"));
        assert!(!matches("+/uptime", "$SYS/uptime"));
        assert!(matches("$SYS/#", "$SYS/uptime"));
        assert!(matches("$SYS/+", "$SYS/uptime"));
        assert!(matches("a/#", "a/$x"));
    }

    #[test]
    fn messages_cite_rules() {
        assert!(TopicError::MultiLevelNotLast.to_string().contains("MQTT-4.7.1-2"));
        assert!(TopicError::TooManyLevels { max: 7 }.to_string().contains('7'));
    }
}
