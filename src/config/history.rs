//! `[[history]]`: which topics keep a history of their messages and how much of it
//! (issue 17). Each entry names a topic filter and a bound: the newest `keep` entries per
//! topic, entries younger than `max_age`, or both. When several filters match a topic, the
//! most specific one governs, with the schema precedence (per level: a literal beats `+`,
//! `+` beats `#`). No entry (the default): no history, and publishing costs nothing more.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// One `[[history]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    /// The topic filter whose topics keep history (`"sensors/#"`); not a `$` topic.
    pub filter: String,
    /// Entries kept per topic (the newest); unset: no count bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u64>,
    /// Entries older than this are pruned (`"7d"`); unset: no age bound.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
}

/// Checks every entry: a valid filter outside `$` topics, given once, with at least one bound.
///
/// # Errors
/// [`ConfigError::Invalid`] naming `history` and the filter at fault.
pub(super) fn check_rules(rules: &[HistoryRule]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for r in rules {
        let f = &r.filter;
        dataloom_codec::topic::validate_filter(f, usize::MAX)
            .map_err(|e| invalid("history.filter", format!("{f:?}: {e}")))?;
        if f.starts_with('$') {
            return Err(invalid("history.filter", format!("{f:?}: history cannot keep `$` topics")));
        }
        if !seen.insert(f.as_str()) {
            return Err(invalid("history.filter", format!("{f:?} is given more than once")));
        }
        if r.keep.is_none() && r.max_age.is_none() {
            return Err(invalid(
                "history",
                format!("{f:?} needs keep (entries per topic) or max_age (e.g. \"7d\"), or both"),
            ));
        }
        if r.keep == Some(0) || r.max_age.is_some_and(|d| d.is_zero()) {
            return Err(invalid("history", format!("{f:?}: keep and max_age must be above 0")));
        }
    }
    Ok(())
}
