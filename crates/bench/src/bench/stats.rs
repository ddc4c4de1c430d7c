//! Measurement primitives of the load generator: the generator's clock, a log-linear latency
//! histogram, per-publisher sequence trackers (loss and duplicates), and `/proc` readers for the
//! memory and CPU time of a process.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the generator started: the clock of the timestamps put in payloads.
pub fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Sub-buckets per power of two (precision about 1.6 %).
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values below this are counted exactly.
const LINEAR: usize = 2 * SUB;
const BUCKETS: usize = LINEAR + (64 - SUB_BITS as usize - 1) * SUB;

/// Log-linear histogram of nanosecond values (HDR-like, fixed 1.6 % precision, 30 KiB).
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; BUCKETS], total: 0, max: 0 }
    }
}

fn bucket(v: u64) -> usize {
    if v < LINEAR as u64 {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let sub = ((v >> (e - SUB_BITS)) as usize) & (SUB - 1);
    LINEAR + (e - SUB_BITS - 1) as usize * SUB + sub
}

/// Lower bound of bucket `i`.
fn bucket_value(i: usize) -> u64 {
    if i < LINEAR {
        return i as u64;
    }
    let e = ((i - LINEAR) / SUB) as u32 + SUB_BITS + 1;
    let sub = ((i - LINEAR) % SUB) as u64;
    (1u64 << e) | (sub << (e - SUB_BITS))
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(i).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// Which messages one subscriber has seen: a bitset of sequence numbers per publisher, or one
/// flat bitset indexed by `pub_id * stride + seq` when every publisher sends few messages.
pub struct Tracker {
    per_pub: Vec<Vec<u64>>,
    stride: Option<u32>,
    /// Distinct messages received.
    pub unique: u64,
    /// Messages received more than once (each extra copy counts).
    pub dups: u64,
}

impl Tracker {
    pub fn new(publishers: usize) -> Self {
        Tracker { per_pub: vec![Vec::new(); publishers], stride: None, unique: 0, dups: 0 }
    }

    /// A tracker for publishers that send at most `stride` messages each.
    pub fn flat(stride: u32) -> Self {
        Tracker { per_pub: vec![Vec::new()], stride: Some(stride), unique: 0, dups: 0 }
    }

    /// Records message `seq` of publisher `pub_id`.
    pub fn mark(&mut self, pub_id: u32, seq: u32) {
        let (p, seq) = match self.stride {
            Some(stride) => (0, pub_id * stride + seq.min(stride - 1)),
            None => (pub_id as usize, seq),
        };
        if p >= self.per_pub.len() {
            self.per_pub.resize(p + 1, Vec::new());
        }
        let bits = &mut self.per_pub[p];
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= bits.len() {
            bits.resize((w + 1).next_power_of_two(), 0);
        }
        if bits[w] & (1 << b) != 0 {
            self.dups += 1;
        } else {
            bits[w] |= 1 << b;
            self.unique += 1;
        }
    }
}

/// Resident memory of a process from `/proc/PID/status`, in bytes: (VmRSS, VmHWM = peak).
pub fn rss_bytes(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used so far, in seconds (`/proc/PID/stat`).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ is 100 on Linux
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5).unwrap() as f64;
        let p99 = h.quantile(0.99).unwrap() as f64;
        assert!((p50 / 50_000_000.0 - 1.0).abs() < 0.02, "{p50}");
        assert!((p99 / 99_000_000.0 - 1.0).abs() < 0.02, "{p99}");
        assert_eq!(h.quantile(1.0), Some(100_000_000));
        for v in [0u64, 1, 127, 128, 129, 1 << 20, u64::MAX >> 1] {
            assert!(bucket_value(bucket(v)) <= v);
        }
    }

    #[test]
    fn tracker_counts_dups() {
        let mut t = Tracker::new(2);
        for s in [0, 1, 2, 1, 500] {
            t.mark(1, s);
        }
        t.mark(7, 0);
        assert_eq!((t.unique, t.dups), (5, 1));
        let mut f = Tracker::flat(1);
        for p in [3, 1000, 3] {
            f.mark(p, 0);
        }
        assert_eq!((f.unique, f.dups), (2, 1));
    }
}
