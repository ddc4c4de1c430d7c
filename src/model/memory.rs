//! The broker-wide memory account (`limits.max_memory`, issue 14): a byte count of what the
//! broker holds for clients — every routed message once (topic, payload, properties), each
//! queued delivery, each connection's buffers — compared with the budget to give the
//! [`Pressure`] level that decides what to shed.
//!
//! Counting is a relaxed atomic add per change, never a call into the allocator. A [`Charge`]
//! is one holder's share: it adds its bytes when made (or resized) and takes them back when
//! dropped, so a message is counted exactly as long as some queue, window or index holds it.
//! What the account cannot see (allocator overhead and fragmentation) is caught by a floor:
//! the process's resident size, sampled a few times a second by the server
//! ([`Budget::observe_resident`]); the pressure follows the larger of the two.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How close usage is to the budget, in the order shedding escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    /// Below [`SHED_QOS0`] of the budget: nothing is shed.
    Normal,
    /// At or above 90 %: QoS 0 deliveries to sessions that have stopped draining their queue
    /// are dropped.
    ShedQos0,
    /// At or above 95 %: new messages that would be stored (QoS 1/2, retained) are refused
    /// too.
    RefuseStored,
    /// At or above 100 %: new connections are refused too.
    RefuseConnections,
}

/// Fraction of the budget, in per mille, where each [`Pressure`] level starts.
pub const SHED_QOS0: usize = 900;
/// See [`SHED_QOS0`].
pub const REFUSE_STORED: usize = 950;
/// See [`SHED_QOS0`].
pub const REFUSE_CONNECTIONS: usize = 1000;

/// The account: a budget and the bytes charged against it.
#[derive(Debug)]
pub struct Budget {
    /// Bytes allowed (0: unlimited, the pressure is always [`Pressure::Normal`]).
    limit: usize,
    used: AtomicUsize,
    /// The process's resident size at the last sample (0: never sampled).
    resident: AtomicUsize,
}

impl Budget {
    /// An account of `limit` bytes (0: no limit, usage is still counted).
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget { limit, used: AtomicUsize::new(0), resident: AtomicUsize::new(0) })
    }

    /// The budget in bytes (0: unlimited).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Records the process's resident size, the floor under the account.
    pub fn observe_resident(&self, bytes: usize) {
        self.resident.store(bytes, Ordering::Relaxed);
    }

    /// The pressure level for the bytes charged now plus `extra` bytes the caller knows of
    /// (e.g. the store's buffers), or for the last resident size if that is larger.
    pub fn pressure(&self, extra: usize) -> Pressure {
        if self.limit == 0 {
            return Pressure::Normal;
        }
        let used = self.used().saturating_add(extra).max(self.resident.load(Ordering::Relaxed));
        // Per mille without overflow for any realistic size (u128 for the product).
        let permille = (used as u128 * 1000 / self.limit as u128) as usize;
        match permille {
            p if p >= REFUSE_CONNECTIONS => Pressure::RefuseConnections,
            p if p >= REFUSE_STORED => Pressure::RefuseStored,
            p if p >= SHED_QOS0 => Pressure::ShedQos0,
            _ => Pressure::Normal,
        }
    }

    /// Charges `bytes` until the returned [`Charge`] is dropped.
    pub fn charge(self: &Arc<Budget>, bytes: usize) -> Charge {
        self.add(bytes);
        Charge { budget: Some(self.clone()), bytes }
    }

    /// Adds `bytes` to the account; the caller takes them back with [`Budget::release`].
    pub fn add(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Takes back `bytes` added before.
    pub fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One holder's bytes in a [`Budget`], taken back on drop. Cloning charges the same bytes again
/// (a cloned message is a second copy). `Charge::default()` charges nothing.
#[derive(Debug, Default)]
pub struct Charge {
    budget: Option<Arc<Budget>>,
    bytes: usize,
}

impl Charge {
    /// Bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Changes the bytes held to `bytes` (a connection's buffers grew or shrank).
    pub fn set(&mut self, bytes: usize) {
        if let Some(b) = &self.budget
            && bytes != self.bytes
        {
            if bytes > self.bytes {
                b.add(bytes - self.bytes);
            } else {
                b.release(self.bytes - bytes);
            }
            self.bytes = bytes;
        }
    }
}

impl Clone for Charge {
    fn clone(&self) -> Charge {
        match &self.budget {
            Some(b) => b.charge(self.bytes),
            None => Charge::default(),
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_come_back_on_drop_and_clones_count_again() {
        let b = Budget::new(1000);
        let c = b.charge(100);
        let d = c.clone();
        assert_eq!(b.used(), 200);
        drop(c);
        assert_eq!(b.used(), 100);
        let mut e = b.charge(10);
        e.set(50);
        assert_eq!(b.used(), 150);
        e.set(0);
        assert_eq!(b.used(), 100);
        drop((d, e));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn pressure_climbs_in_order_and_falls_back() {
        let b = Budget::new(1000);
        assert_eq!(b.pressure(0), Pressure::Normal);
        let c = b.charge(899);
        assert_eq!(b.pressure(0), Pressure::Normal);
        assert_eq!(b.pressure(1), Pressure::ShedQos0);
        assert_eq!(b.pressure(51), Pressure::RefuseStored);
        assert_eq!(b.pressure(101), Pressure::RefuseConnections);
        drop(c);
        assert_eq!(b.pressure(0), Pressure::Normal);
    }

    #[test]
    fn the_resident_size_is_a_floor_under_the_account() {
        let b = Budget::new(1000);
        b.observe_resident(960);
        assert_eq!(b.pressure(0), Pressure::RefuseStored);
        let _c = b.charge(1000);
        assert_eq!(b.pressure(0), Pressure::RefuseConnections);
        b.observe_resident(0);
        assert_eq!(b.pressure(0), Pressure::RefuseConnections, "the account alone");
    }

    #[test]
    fn no_limit_never_sheds_but_still_counts() {
        let b = Budget::new(0);
        let _c = b.charge(usize::MAX / 2);
        assert_eq!(b.pressure(usize::MAX / 2), Pressure::Normal);
        assert_eq!(b.used(), usize::MAX / 2);
    }
}
