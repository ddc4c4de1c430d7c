//! Slowing down failed CONNECTs per peer address: the n-th bad credential from one address
//! (within [`WINDOW`]) is answered after `25 ms × 2^(n−1)`, at most [`MAX_DELAY`]. Good
//! credentials are checked first and answered at once, so a good client is never slowed, not
//! even behind the same NAT address. The table is bounded ([`MAX_ENTRIES`]): when full, idle
//! entries go first, then the oldest. IPv6 peers are tracked per /64 (one host usually owns
//! a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Failures older than this are forgotten.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Longest delay of one answer.
pub const MAX_DELAY: Duration = Duration::from_secs(5);
/// Delay of the first failure; each further one doubles it.
pub const BASE_DELAY: Duration = Duration::from_millis(25);
/// Addresses tracked at once.
pub const MAX_ENTRIES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
}

/// The failure table.
#[derive(Debug)]
pub struct Throttle {
    table: Mutex<HashMap<IpAddr, Entry>>,
    cap: usize,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(MAX_ENTRIES)
    }
}

/// The table key of a peer: IPv4 as is, IPv6 by its /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// The delay of the `n`-th failure (n ≥ 1).
pub fn delay_for(n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    BASE_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

impl Throttle {
    /// A table of at most `cap` addresses.
    pub fn new(cap: usize) -> Throttle {
        Throttle { table: Mutex::new(HashMap::new()), cap: cap.max(1) }
    }

    /// Records a failure from `ip`; returns how long to wait before answering it.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let now = Instant::now();
        let key = bucket(ip);
        let mut t = self.table.lock();
        if !t.contains_key(&key) && t.len() >= self.cap {
            t.retain(|_, e| now.duration_since(e.last) < WINDOW);
            if t.len() >= self.cap
                && let Some(oldest) = t.iter().min_by_key(|(_, e)| e.last).map(|(k, _)| *k)
            {
                t.remove(&oldest);
            }
        }
        let e = t.entry(key).or_insert(Entry { failures: 0, last: now });
        if now.duration_since(e.last) >= WINDOW {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        delay_for(e.failures)
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.table.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        assert_eq!(delay_for(1), Duration::from_millis(25));
        assert_eq!(delay_for(4), Duration::from_millis(200));
        assert_eq!(delay_for(20), MAX_DELAY);
        assert_eq!(delay_for(100), MAX_DELAY);
    }

    #[test]
    fn per_address_and_bounded() {
        let t = Throttle::new(3);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        assert_eq!(t.failed(a), Duration::from_millis(25));
        assert_eq!(t.failed(a), Duration::from_millis(50));
        for i in 2..10u8 {
            t.failed(IpAddr::from([10, 0, 0, i]));
        }
        assert!(t.len() <= 3);
    }

    #[test]
    fn ipv6_by_prefix() {
        let t = Throttle::new(10);
        t.failed("2001:db8::1".parse().expect("ip"));
        let d = t.failed("2001:db8::2".parse().expect("ip"));
        assert_eq!(d, Duration::from_millis(50));
    }
}
