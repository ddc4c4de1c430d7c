//! The bounded queue of deliveries owed to one session, filled by publishers and drained by the
//! session's connection task.
//!
//! A full queue whose client is draining it (it took messages within the last
//! [`STALL_AFTER`]) hands the delivery back, so the publisher can stop reading its socket
//! until there is room: backpressure instead of loss. A full queue that nobody drains (a
//! subscriber that stopped reading) drops and counts, so it never holds publishers up. QoS 0 is
//! dropped while the session is offline, as Mosquitto does by default. The connection task is
//! woken through a `Notify`, whose stored permit means no wake-up is lost.
//!
//! Under memory pressure (`limits.max_memory`, see `model::Budget`, from
//! [`Pressure::ShedQos0`] on) a QoS 0 delivery to a queue that already holds a backlog and
//! whose client stopped draining it is shed: the slowest sessions lose first, clients that
//! keep reading keep receiving (a full queue still pushes their publishers back). Each queued
//! delivery's bookkeeping is charged to the budget (its message is charged once, by itself).

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::model::{Budget, Delivery, Pressure};
use dataloom_codec::QoS;

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The queue held `max_queued_messages` already.
    QueueFull,
    /// QoS 0 for a session whose client is not connected.
    Offline,
    /// QoS 0 to a backlogged queue while memory is short.
    Shed,
}

/// A full queue not drained for this long belongs to a stalled client: it drops instead of
/// pushing back.
pub const STALL_AFTER: Duration = Duration::from_millis(200);

/// Why [`Mailbox::offer`] did not queue a delivery.
#[derive(Debug)]
pub enum Refused {
    /// Full, but the client is draining: the publisher may wait for room and offer it again.
    Full(Delivery),
    /// Dropped for good.
    Dropped(Dropped),
}

/// The deliveries and how many payload and topic bytes they hold.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
}

/// Bytes one queued delivery's bookkeeping takes (its message is charged by itself).
const ITEM_BYTES: usize = std::mem::size_of::<Delivery>() + 16;

/// Bytes a delivery counts against `max_queued_bytes`.
fn weight(d: &Delivery) -> usize {
    d.msg.payload.len() + d.msg.topic_bytes.len()
}

impl Queue {
    /// Full for one more delivery of `w` bytes (a lone delivery always fits).
    fn full(&self, limit: usize, byte_limit: usize, w: usize) -> bool {
        self.items.len() >= limit || (byte_limit > 0 && !self.items.is_empty() && self.bytes + w > byte_limit)
    }
}

/// A session's queue of undelivered messages.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Queue>,
    notify: Notify,
    /// Woken when the connection task takes messages out (publishers waiting for room).
    space: Notify,
    /// Waiters in [`Mailbox::below`]: while there are any, every drain wakes `space`, not only
    /// a drain of a full queue.
    low_waiters: std::sync::atomic::AtomicUsize,
    online: AtomicBool,
    limit: usize,
    /// Most payload + topic bytes queued (0: no limit).
    byte_limit: usize,
    dropped: AtomicU64,
    /// When the queue was last drained, in milliseconds since [`epoch`].
    last_drain_ms: AtomicU64,
    /// The broker's memory account, charged [`ITEM_BYTES`] per queued delivery.
    memory: std::sync::Arc<Budget>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Mailbox {
    /// An empty mailbox holding at most `limit` deliveries (and `byte_limit` payload and topic
    /// bytes, 0 for no limit) from publishers, charging its bookkeeping to `memory`.
    pub fn new(limit: usize, byte_limit: usize, memory: std::sync::Arc<Budget>) -> Mailbox {
        Mailbox {
            memory,
            queue: Mutex::new(Queue::default()),
            byte_limit,
            notify: Notify::new(),
            space: Notify::new(),
            low_waiters: std::sync::atomic::AtomicUsize::new(0),
            online: AtomicBool::new(false),
            limit,
            dropped: AtomicU64::new(0),
            last_drain_ms: AtomicU64::new(0),
        }
    }

    /// Queues a live delivery, or drops it when the queue is full or QoS 0 finds no client.
    ///
    /// # Errors
    /// [`Dropped`] says why the delivery was discarded; the caller counts it.
    pub fn push(&self, d: Delivery) -> Result<(), Dropped> {
        match self.offer(d, Pressure::Normal) {
            Ok(()) => Ok(()),
            Err(Refused::Dropped(why)) => Err(why),
            Err(Refused::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                Err(Dropped::QueueFull)
            }
        }
    }

    /// Queues a live delivery; a full queue whose client is draining hands it back
    /// ([`Refused::Full`]) so the publisher can wait for room. `pressure` is the broker's
    /// memory pressure, read once per routed message.
    ///
    /// # Errors
    /// [`Refused`]: full (try again after [`Mailbox::space`]) or dropped (counted here).
    pub fn offer(&self, d: Delivery, pressure: Pressure) -> Result<(), Refused> {
        if d.qos == QoS::AtMostOnce && !self.online.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Dropped(Dropped::Offline));
        }
        {
            let mut q = self.queue.lock();
            let w = weight(&d);
            if d.qos == QoS::AtMostOnce && !q.items.is_empty() && self.sheds(pressure) {
                drop(q);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Dropped(Dropped::Shed));
            }
            if q.full(self.limit, self.byte_limit, w) {
                drop(q);
                if self.online.load(Ordering::Relaxed) && self.is_draining() {
                    return Err(Refused::Full(d));
                }
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::Dropped(Dropped::QueueFull));
            }
            let was_empty = q.items.is_empty();
            q.bytes += w;
            q.items.push_back(d);
            self.memory.add(ITEM_BYTES);
            if !was_empty {
                // The connection task was woken for the first one and drains everything
                // queued before it sleeps again (or wakes on an ack or a write), so one
                // wake-up per batch is enough.
                return Ok(());
            }
        }
        self.notify.notify_one();
        Ok(())
    }

    /// True when a QoS 0 delivery to this (backlogged) queue is shed at `pressure`: from
    /// [`Pressure::ShedQos0`] on, if the client stopped draining it.
    fn sheds(&self, pressure: Pressure) -> bool {
        pressure >= Pressure::ShedQos0 && !self.is_draining()
    }

    /// True while the client took messages within [`STALL_AFTER`].
    pub fn is_draining(&self) -> bool {
        now_ms().saturating_sub(self.last_drain_ms.load(Ordering::Relaxed)) < STALL_AFTER.as_millis() as u64
    }

    /// Resolves when the connection task next takes messages out (or after `max`).
    pub async fn space(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.space.notified()).await;
    }

    /// Resolves once fewer than `n` deliveries are queued (checked after registering for the
    /// wake-up, so a drain in between is not missed), or after `max`.
    pub async fn below(&self, n: usize, max: Duration) {
        let woken = self.space.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // Counted before the check: a drain after it sees the waiter and wakes it.
        self.low_waiters.fetch_add(1, Ordering::SeqCst);
        if self.len() >= n {
            let _ = tokio::time::timeout(max, woken).await;
        }
        self.low_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Counts a delivery the publisher gave up waiting for.
    pub fn count_dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Queues deliveries that bypass the limit: retained messages sent on SUBSCRIBE, which the
    /// client asked for and which must all arrive however many there are.
    pub fn push_all_unbounded(&self, ds: impl IntoIterator<Item = Delivery>) {
        let mut q = self.queue.lock();
        let before = q.items.len();
        for d in ds {
            q.bytes += weight(&d);
            q.items.push_back(d);
        }
        self.memory.add((q.items.len() - before) * ITEM_BYTES);
        drop(q);
        self.notify.notify_one();
    }

    /// Puts deliveries back at the front (in order), e.g. the unsent rest of a drained batch.
    pub fn push_front_all(&self, ds: Vec<Delivery>) {
        if ds.is_empty() {
            return;
        }
        let mut q = self.queue.lock();
        self.memory.add(ds.len() * ITEM_BYTES);
        for d in ds.into_iter().rev() {
            q.bytes += weight(&d);
            q.items.push_front(d);
        }
    }

    /// Moves up to `max` deliveries into `out`, of which at most `max_acked` QoS 1/2 ones (the
    /// room left in the client's window: taking more would only put them back); returns how
    /// many.
    pub fn drain_into(&self, out: &mut Vec<Delivery>, max: usize, max_acked: usize) -> usize {
        let mut q = self.queue.lock();
        let mut acked = 0;
        let n = q
            .items
            .iter()
            .take(max)
            .take_while(|d| {
                acked += usize::from(d.qos != QoS::AtMostOnce);
                acked <= max_acked
            })
            .count();
        let was_full = q.full(self.limit, self.byte_limit, 0);
        let start = out.len();
        out.extend(q.items.drain(..n));
        q.bytes -= out[start..].iter().map(weight).sum::<usize>();
        drop(q);
        self.memory.release(n * ITEM_BYTES);
        self.last_drain_ms.store(now_ms(), Ordering::Relaxed);
        if n > 0 && (was_full || self.low_waiters.load(Ordering::Relaxed) > 0) {
            self.space.notify_waiters();
        }
        n
    }

    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when something was pushed into an empty queue since the last wait (or a
    /// permit is stored). Keep one future alive across loop iterations: its registration
    /// then costs nothing per iteration.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Wakes whoever waits, e.g. the next connection after a takeover.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Marks the client connected or not (QoS 0 is dropped while offline).
    pub fn set_online(&self, online: bool) {
        if online {
            self.last_drain_ms.store(now_ms(), Ordering::Relaxed);
        }
        self.online.store(online, Ordering::Relaxed);
    }

    /// True while the session's client is connected.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    /// Takes every queued delivery `pick` selects, in queue order; the rest stay in order.
    pub fn take_where(&self, pick: impl Fn(&Delivery) -> bool) -> Vec<Delivery> {
        let mut q = self.queue.lock();
        if !q.items.iter().any(&pick) {
            return Vec::new();
        }
        let (taken, kept): (VecDeque<Delivery>, VecDeque<Delivery>) =
            q.items.drain(..).partition(|d| pick(d));
        q.items = kept;
        q.bytes -= taken.iter().map(weight).sum::<usize>();
        self.memory.release(taken.len() * ITEM_BYTES);
        taken.into()
    }

    /// Deliveries dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        self.memory.release(self.queue.get_mut().items.len() * ITEM_BYTES);
    }
}
