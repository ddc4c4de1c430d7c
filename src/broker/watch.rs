//! Watching state changes from outside MQTT (the web console's event stream, `/v1/events`):
//! a [`Watch`] is a subscriber without a connection. It has a session of its own that is not
//! in the session table (no client id a client could take, not listed, never stored), QoS 0
//! subscriptions to the filters it was made for, and a reader (the caller's permissions)
//! that every delivery passes when it is taken out, as a connection's does.
//!
//! Its mailbox is an ordinary one: bounded by `mqtt.max_queued_messages` and
//! `mqtt.max_queued_bytes`, charged to `limits.max_memory`, and a reader that stops draining
//! loses messages (counted in [`Watch::dropped`]) instead of holding publishers up. Dropping
//! the [`Watch`] removes its subscriptions.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::session::Session;
use super::{Broker, SubEntry, remove_sub};
use crate::model::{Delivery, ReadAccess, SubOptions};
use dataloom_codec::{QoS, RetainHandling};

/// A live subscription of the broker's own, for a reader outside MQTT.
#[derive(Debug)]
pub struct Watch {
    broker: Arc<Broker>,
    session: Arc<Session>,
    filters: Vec<String>,
}

impl Broker {
    /// Subscribes a new [`Watch`] to `filters` (valid, non-shared filters) at QoS 0; messages
    /// it may not `read` are never queued for it. No retained message is queued: the reader
    /// takes the current state with [`Broker::state_page`] after this returns.
    pub fn watch(self: &Arc<Self>, filters: &[String], read: Arc<dyn ReadAccess>) -> Watch {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let client_id: Arc<str> = Arc::from(format!("$watch/{id}"));
        let session = Arc::new(Session::new(
            id,
            client_id,
            self.limits.max_queued_messages,
            self.limits.max_queued_bytes,
            self.memory.clone(),
        ));
        session.set_reader(Some(read));
        session.mailbox.set_online(true);
        let opts = SubOptions {
            qos: QoS::AtMostOnce,
            no_local: false,
            retain_as_published: true,
            retain_handling: RetainHandling::Never,
            sub_id: None,
        };
        {
            let mut trie = self.subs.write();
            for f in filters {
                trie.insert(f, session.id, SubEntry { session: session.clone(), opts, share: None });
            }
        }
        Watch { broker: self.clone(), session, filters: filters.to_vec() }
    }
}

impl Watch {
    /// Moves up to `max` queued deliveries into `out`, leaving out those the reader may not
    /// read (routing does not ask; every delivery is checked here, as a connection checks its
    /// own); returns how many were taken from the queue.
    pub fn drain_into(&self, out: &mut Vec<Delivery>, max: usize) -> usize {
        let mut taken = Vec::new();
        // Every delivery is QoS 0 (the subscriptions are): no window limits what is taken.
        let n = self.session.mailbox.drain_into(&mut taken, max, max);
        taken.retain(|d| self.session.may_read(&d.msg.topic));
        out.append(&mut taken);
        n
    }

    /// Resolves when a delivery arrives in an empty queue (a stored permit counts).
    pub async fn arrived(&self) {
        self.session.mailbox.notified().await;
    }

    /// Deliveries lost so far because the queue was full (the reader fell behind).
    pub fn dropped(&self) -> u64 {
        self.session.mailbox.dropped()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.session.mailbox.set_online(false);
        let mut trie = self.broker.subs.write();
        for f in &self.filters {
            remove_sub(&mut trie, f, self.session.id);
        }
    }
}
