//! When a connected client counts as gone silent: keep alive (no complete packet for one and
//! a half times the interval [MQTT-3.1.2-24]) and the per-packet deadline
//! (`mqtt.packet_timeout`: a packet whose first byte arrived must be complete in time, so a
//! client trickling in one byte per keep alive cannot hold a connection and its buffer).
//! Bytes of an unfinished packet are not a packet: they do not count as life.

use std::time::{Duration, Instant};

/// The clocks of one connection.
#[derive(Debug)]
pub(super) struct Liveness {
    /// 1.5 × keep alive, when keep alive is on.
    grace: Option<Duration>,
    /// `mqtt.packet_timeout`, when on.
    packet_timeout: Option<Duration>,
    last_packet: Instant,
    /// When the unfinished packet in the read buffer started.
    partial_since: Option<Instant>,
}

impl Liveness {
    pub(super) fn new(keep_alive: Duration, packet_timeout: Duration, now: Instant) -> Liveness {
        Liveness {
            grace: (!keep_alive.is_zero()).then(|| keep_alive + keep_alive / 2),
            packet_timeout: (!packet_timeout.is_zero()).then_some(packet_timeout),
            last_packet: now,
            partial_since: None,
        }
    }

    /// After reading: `decoded` packets were complete and `left` bytes (a packet begun) remain.
    pub(super) fn on_input(&mut self, decoded: usize, left: usize, now: Instant) {
        if decoded > 0 {
            self.last_packet = now;
            self.partial_since = (left > 0).then_some(now);
        } else if left > 0 {
            self.partial_since.get_or_insert(now);
        } else {
            self.partial_since = None;
        }
    }

    /// The broker chose not to read (backpressure): the wait is not the client's silence.
    pub(super) fn excuse(&mut self, now: Instant) {
        self.last_packet = now;
        if self.partial_since.is_some() {
            self.partial_since = Some(now);
        }
    }

    /// The next moment one of the clocks runs out, if any runs.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let keep_alive = self.grace.map(|g| self.last_packet + g);
        let packet = self.partial_since.zip(self.packet_timeout).map(|(t, d)| t + d);
        match (keep_alive, packet) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Why the connection must close at `now`, if a clock ran out.
    pub(super) fn expired(&self, now: Instant) -> Option<&'static str> {
        if self.grace.is_some_and(|g| now >= self.last_packet + g) {
            return Some("keep alive timeout");
        }
        if self.partial_since.zip(self.packet_timeout).is_some_and(|(t, d)| now >= t + d) {
            return Some("packet not completed within mqtt.packet_timeout");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn bytes_of_an_unfinished_packet_do_not_count_as_life() {
        let t0 = Instant::now();
        let mut l = Liveness::new(10 * S, 30 * S, t0);
        assert_eq!(l.deadline(), Some(t0 + 15 * S));
        l.on_input(0, 1, t0 + 5 * S);
        l.on_input(0, 2, t0 + 14 * S);
        assert_eq!(l.expired(t0 + 15 * S), Some("keep alive timeout"));
        l.on_input(1, 0, t0 + 15 * S);
        assert_eq!(l.expired(t0 + 16 * S), None);
    }

    #[test]
    fn a_started_packet_must_complete_in_time_without_keep_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Duration::ZERO, 30 * S, t0);
        assert_eq!(l.deadline(), None, "nothing runs while idle");
        l.on_input(0, 1, t0 + S);
        l.on_input(0, 2, t0 + 20 * S);
        assert_eq!(l.deadline(), Some(t0 + 31 * S));
        assert!(l.expired(t0 + 31 * S).is_some());
        l.excuse(t0 + 31 * S);
        assert!(l.expired(t0 + 32 * S).is_none(), "our backpressure is not the client's fault");
        l.on_input(1, 0, t0 + 33 * S);
        assert_eq!(l.deadline(), None);
    }
}
