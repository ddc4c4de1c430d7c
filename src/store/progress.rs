//! Progress of long start-up work (recovering millions of retained topics or queued
//! messages): one log line every few seconds with the count so far and the rate, so an operator
//! watching `journalctl` sees a broker that works, not one that hangs.

use std::time::{Duration, Instant};

/// How often a progress line is written.
const EVERY: Duration = Duration::from_secs(3);

/// Counts items of one phase and logs now and then.
#[derive(Debug)]
pub struct Progress {
    what: &'static str,
    started: Instant,
    next: Instant,
    count: u64,
}

impl Progress {
    /// Starts counting `what` (e.g. "retained topics").
    pub fn new(what: &'static str) -> Progress {
        let now = Instant::now();
        Progress { what, started: now, next: now + EVERY, count: 0 }
    }

    /// Counts one item; logs when a few seconds passed since the last line. The clock is read
    /// once every 4,096 items.
    pub fn tick(&mut self) {
        self.count += 1;
        if self.count.is_multiple_of(4096) {
            let now = Instant::now();
            if now >= self.next {
                self.next = now + EVERY;
                tracing::info!(
                    phase = self.what,
                    done = self.count,
                    per_second = self.rate(now),
                    "recovering: {} {} read",
                    self.count,
                    self.what
                );
            }
        }
    }

    fn rate(&self, now: Instant) -> u64 {
        let secs = now.duration_since(self.started).as_secs_f64();
        if secs > 0.0 { (self.count as f64 / secs) as u64 } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_logs_only_when_due() {
        let mut p = Progress::new("retained topics");
        p.next = Instant::now(); // due at once
        for _ in 0..4096 {
            p.tick();
        }
        assert_eq!(p.count, 4096);
        assert!(p.next > Instant::now(), "a line was written and the next one scheduled");
    }
}
