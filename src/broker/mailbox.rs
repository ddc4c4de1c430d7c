//! The bounded queue of deliveries owed to one session, filled by publishers and drained by the
//! session's connection task.
//!
//! Publishers never wait here: a full queue drops the delivery and counts it (QoS 0 is also
//! dropped while the session is offline, as Mosquitto does by default). The connection task is
//! woken through a `Notify`, whose stored permit means no wake-up is lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::message::Delivery;
use crate::codec::QoS;

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The queue held `max_queued_messages` already.
    QueueFull,
    /// QoS 0 for a session whose client is not connected.
    Offline,
}

/// A session's queue of undelivered messages.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Delivery>>,
    notify: Notify,
    online: AtomicBool,
    limit: usize,
    dropped: AtomicU64,
}

impl Mailbox {
    /// An empty mailbox holding at most `limit` deliveries from publishers.
    pub fn new(limit: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            online: AtomicBool::new(false),
            limit,
            dropped: AtomicU64::new(0),
        }
    }

    /// Queues a live delivery, or drops it when the queue is full or QoS 0 finds no client.
    ///
    /// # Errors
    /// [`Dropped`] says why the delivery was discarded; the caller counts it.
    pub fn push(&self, d: Delivery) -> Result<(), Dropped> {
        if d.qos == QoS::AtMostOnce && !self.online.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(Dropped::Offline);
        }
        {
            let mut q = self.queue.lock();
            if q.len() >= self.limit {
                drop(q);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(Dropped::QueueFull);
            }
            q.push_back(d);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Queues deliveries that bypass the limit: retained messages sent on SUBSCRIBE, which the
    /// client asked for and which must all arrive however many there are.
    pub fn push_all_unbounded(&self, ds: impl IntoIterator<Item = Delivery>) {
        self.queue.lock().extend(ds);
        self.notify.notify_one();
    }

    /// Puts deliveries back at the front (in order), e.g. the unsent rest of a drained batch.
    pub fn push_front_all(&self, ds: Vec<Delivery>) {
        if ds.is_empty() {
            return;
        }
        let mut q = self.queue.lock();
        for d in ds.into_iter().rev() {
            q.push_front(d);
        }
    }

    /// Moves up to `max` deliveries into `out`; returns how many.
    pub fn drain_into(&self, out: &mut Vec<Delivery>, max: usize) -> usize {
        let mut q = self.queue.lock();
        let n = q.len().min(max);
        out.extend(q.drain(..n));
        n
    }

    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until something was pushed since the last wait (or a permit is stored).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Wakes whoever waits, e.g. the next connection after a takeover.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Marks the client connected or not (QoS 0 is dropped while offline).
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
    }

    /// Deliveries dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
