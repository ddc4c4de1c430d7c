//! Connections per peer address on one listener (`listeners.*.max_connections_per_ip`): a
//! count per IP address, taken at accept and given back when the connection ends. One host
//! opening thousands of sockets cannot take every slot of `max_connections`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Open connections per address, bounded by `max`.
#[derive(Debug)]
pub struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's slot; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    /// A limit of `max` connections per address; `None` when `max` is 0 (no limit).
    pub fn new(max: usize) -> Option<Arc<PerIp>> {
        (max > 0).then(|| Arc::new(PerIp { max, open: Mutex::new(HashMap::new()) }))
    }

    /// A slot for a connection from `ip`, or `None` when `ip` already holds `max`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = canonical(ip);
        let mut open = self.open.lock();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot { owner: self.clone(), ip })
    }

    /// Connections open from `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open.lock().get(&canonical(ip)).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// An IPv4 peer on a dual-stack socket arrives as `::ffff:a.b.c.d`; it counts as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_given_back() {
        let limit = PerIp::new(2).expect("a limit");
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let s1 = limit.admit(a).expect("first");
        let s2 = limit.admit(mapped).expect("second, the same host");
        assert!(limit.admit(a).is_none(), "a third from the same host is refused");
        let _other = limit.admit(b).expect("another host is not affected");
        drop(s1);
        assert_eq!(limit.open(a), 1);
        let _s3 = limit.admit(a).expect("a slot came back");
        drop(s2);
        assert!(PerIp::new(0).is_none(), "0 is no limit");
    }
}
