//! How far the store writer is behind: the bytes of submissions queued and not yet committed.
//! Submitting never blocks (the broker's locks may be held); instead a connection whose
//! PUBLISH found the backlog over its limit stops reading until the writer catches up, as
//! for a subscriber that does not read. The limit is `storage.max_write_backlog`.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bytes a submission counts besides its payloads and topics (keys, record headers).
pub const OP_OVERHEAD: usize = 64;

/// The writer's queue, measured in bytes.
#[derive(Debug)]
pub struct Backlog {
    queued: AtomicUsize,
    limit: AtomicUsize,
    room: Notify,
}

impl Backlog {
    /// An empty backlog allowed `limit` bytes (0: no limit).
    pub fn new(limit: usize) -> Backlog {
        Backlog { queued: AtomicUsize::new(0), limit: AtomicUsize::new(limit), room: Notify::new() }
    }

    /// Changes the limit (0: no limit).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
        self.room.notify_waiters();
    }

    /// Bytes queued for the writer.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// True while the writer is more than the limit behind.
    pub fn is_full(&self) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        limit > 0 && self.queued() >= limit
    }

    /// Counts `bytes` submitted.
    pub fn add(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` committed (or failed); wakes the waiters once there is room.
    pub fn done(&self, bytes: usize) {
        let before = self.queued.fetch_sub(bytes, Ordering::Relaxed);
        let limit = self.limit.load(Ordering::Relaxed);
        if before >= limit && before - bytes < limit {
            self.room.notify_waiters();
        }
    }

    /// Resolves once the backlog is under its limit.
    pub async fn room(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_full() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_the_writer_catches_up() {
        let b = std::sync::Arc::new(Backlog::new(100));
        b.add(150);
        assert!(b.is_full());
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        b.done(100);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("woken").expect("task");
        assert_eq!(b.queued(), 50);
        assert!(!Backlog::new(0).is_full(), "0 is no limit");
    }
}
