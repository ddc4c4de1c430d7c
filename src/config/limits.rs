//! `[limits]`: broker-wide resource limits. `max_memory` is the memory budget the broker sheds
//! load to stay inside (issue 14): a byte count (`536870912`, `"512MiB"`, `"2GiB"`) or a share
//! of the memory this process may use (`"80%"`, the default: of the cgroup limit when there is
//! one, else of the machine's memory).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The memory budget (default `"80%"`). See [`MemorySize`].
    pub max_memory: MemorySize,
}

/// A memory size: bytes, or a percentage of the memory available to the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySize {
    /// Exactly this many bytes.
    Bytes(u64),
    /// This percentage (1-100) of the cgroup limit, or of the machine's memory.
    Percent(u8),
}

impl Default for MemorySize {
    fn default() -> MemorySize {
        MemorySize::Percent(80)
    }
}

impl MemorySize {
    /// Reads `536870912`, `"512MiB"`, `"512 MB"`, `"2GiB"`, `"80%"`; `None` if it is none of these.
    pub fn parse(s: &str) -> Option<MemorySize> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let p: u8 = p.trim().parse().ok()?;
            return (1..=100).contains(&p).then_some(MemorySize::Percent(p));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => return None,
        };
        n.checked_mul(mult).map(MemorySize::Bytes)
    }

    /// The size in bytes, given the memory available to the process (`total`).
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            MemorySize::Bytes(b) => b,
            MemorySize::Percent(p) => total / 100 * u64::from(p),
        }
    }
}

impl fmt::Display for MemorySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemorySize::Bytes(b) => write!(f, "{b}"),
            MemorySize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for MemorySize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MemorySize::Bytes(b) => s.serialize_u64(*b),
            MemorySize::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for MemorySize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MemorySize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        let bad = |v: &dyn fmt::Display| {
            serde::de::Error::custom(format!(
                "{v} is not a memory size: use bytes (536870912), a unit (\"512MiB\", \"2GiB\") or a share (\"80%\")"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Int(0) => Err(bad(&0)),
            Raw::Int(b) => Ok(MemorySize::Bytes(b)),
            Raw::Text(t) => match MemorySize::parse(&t) {
                Some(MemorySize::Bytes(0)) | None => Err(bad(&t)),
                Some(m) => Ok(m),
            },
        }
    }
}

/// Memory this process may use: the cgroup v2 (or v1) limit when one is set, else the
/// machine's total memory from `/proc/meminfo`; `None` when neither can be read.
pub fn available_memory() -> Option<u64> {
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|s| s.trim().parse::<u64>().ok());
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    // A cgroup v1 "no limit" is a huge number: the smaller of the two is the real bound.
    match (cgroup, meminfo) {
        (Some(c), Some(m)) => Some(c.min(m)),
        (c, m) => c.or(m),
    }
}

#[cfg(test)]
mod tests {
    use super::MemorySize;

    #[test]
    fn sizes_parse_with_units_and_shares() {
        assert_eq!(MemorySize::parse("536870912"), Some(MemorySize::Bytes(536_870_912)));
        assert_eq!(MemorySize::parse("512MiB"), Some(MemorySize::Bytes(512 << 20)));
        assert_eq!(MemorySize::parse("512 MB"), Some(MemorySize::Bytes(512_000_000)));
        assert_eq!(MemorySize::parse("2GiB"), Some(MemorySize::Bytes(2 << 30)));
        assert_eq!(MemorySize::parse("80%"), Some(MemorySize::Percent(80)));
        assert_eq!(MemorySize::parse("0%"), None);
        assert_eq!(MemorySize::parse("101%"), None);
        assert_eq!(MemorySize::parse("12 parsecs"), None);
        assert_eq!(MemorySize::Percent(50).resolve(1000), 500);
    }
}
