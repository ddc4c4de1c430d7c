//! This node's part of a cluster: the other nodes' messages routed to local subscribers, the
//! cluster's state log applied to the local retained index and store, and the wait that lets
//! a SUBSCRIBE see every retained change acknowledged anywhere before it.
//!
//! The engine behind it is a [`Bus`] (`store/nats`); this module never sees NATS. Topics
//! under `$SYS/` (per node) and `$schema/` (schemas stay per node for now) never cross it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::Broker;
use super::route::Origin;
use crate::model::Message;
use crate::store::bus::{Bus, Messages, StateChange};
use crate::store::{Op, StoreError};

/// The cluster link as the broker holds it.
#[derive(Debug)]
pub(super) struct Link {
    bus: Arc<dyn Bus>,
    sync_timeout: Duration,
    /// Waiters for the state log's last position, answered in rounds (`last_seq_rounds`).
    rounds: mpsc::Sender<LastSeqWaiter>,
}

/// Where one reader of the state log's last position gets its answer.
type LastSeqWaiter = oneshot::Sender<Result<u64, StoreError>>;

/// Readers of the last position that may wait for a round; beyond, each asks on its own.
const MAX_ROUND_WAITERS: usize = 65_536;

impl Link {
    /// Messages the bus dropped so far (queue to the other nodes full).
    pub(super) fn dropped(&self) -> u64 {
        self.bus.dropped()
    }
}

/// Pause before reading a feed again after it failed.
const RETRY: Duration = Duration::from_millis(500);

impl Broker {
    /// Joins the cluster behind `bus`: from now on local messages also go to the other
    /// nodes, retained changes go to the cluster's state log, and two tasks (ending with the
    /// broker) route the other nodes' messages here and apply the state log from where this
    /// node's store left off. A SUBSCRIBE waits up to `sync_timeout` for the log
    /// ([`Broker::cluster_sync`]). Call once, before clients connect: it returns once the
    /// subscription to the other nodes' messages is in place.
    ///
    /// # Errors
    /// [`StoreError::Cluster`] when the subscription fails or the broker joined already.
    pub async fn join_cluster(
        self: &Arc<Self>,
        bus: Arc<dyn Bus>,
        sync_timeout: Duration,
    ) -> Result<(), StoreError> {
        let feed = bus.messages().await?;
        let (rounds, waiters) = mpsc::channel(MAX_ROUND_WAITERS);
        if self.cluster.set(Link { bus: bus.clone(), sync_timeout, rounds }).is_err() {
            return Err(StoreError::Cluster("this broker joined a cluster already".into()));
        }
        tokio::spawn(last_seq_rounds(bus.clone(), waiters));
        tokio::spawn(remote_messages(Arc::downgrade(self), bus.clone(), Some(feed)));
        tokio::spawn(follow_state(Arc::downgrade(self), bus));
        Ok(())
    }

    /// Hands what waits for the other nodes to NATS (at most `limit`): graceful shutdown,
    /// after the clients are gone. Nothing to do outside a cluster.
    pub async fn flush_cluster(&self, limit: Duration) {
        if let Some(link) = self.cluster.get() {
            link.bus.flush(limit).await;
        }
    }

    /// The bus a local message on `topic` crosses, when in a cluster and the topic is shared.
    pub(super) fn cluster_bus(&self, topic: &str) -> Option<&Arc<dyn Bus>> {
        let link = self.cluster.get()?;
        shared_topic(topic).then_some(&link.bus)
    }

    /// The position of the cluster's state log this node applied last (0 outside a cluster).
    pub fn cluster_applied(&self) -> u64 {
        *self.cluster_applied.borrow()
    }

    /// Outside a cluster `None`; in one, a future that resolves once this node applied the
    /// state log up to its end as of now (so every retained change acknowledged anywhere
    /// before the call is in the local index), or after `cluster.sync_timeout`, when the local
    /// view is served as it is (logged).
    pub fn cluster_sync(&self) -> Option<BoxFuture<'static, ()>> {
        let link = self.cluster.get()?;
        // Registered now, so the round that answers asks the stream after this call.
        let (tx, rx) = oneshot::channel();
        let last: BoxFuture<'static, Result<u64, StoreError>> = match link.rounds.try_send(tx) {
            Ok(()) => Box::pin(async move {
                rx.await.unwrap_or_else(|_| Err(StoreError::Cluster("the cluster link stopped".into())))
            }),
            Err(_) => link.bus.last_seq(),
        };
        let limit = link.sync_timeout;
        let mut applied = self.cluster_applied.subscribe();
        Some(Box::pin(async move {
            let caught_up = async {
                let last = last.await?;
                applied
                    .wait_for(|a| *a >= last)
                    .await
                    .map(|_| ())
                    .map_err(|_| StoreError::Cluster("stopped".into()))
            };
            match tokio::time::timeout(limit, caught_up).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cluster: serving retained state from the local view")
                }
                Err(_) => tracing::warn!(
                    timeout = ?limit,
                    "cluster: state log not caught up within cluster.sync_timeout; serving the local view"
                ),
            }
        }))
    }

    /// Applies one change of the state log: the retained index and the store (with the log
    /// position, in the same write, so a restart resumes right after it).
    fn apply_state(&self, change: StateChange) {
        let mut ops = Vec::new();
        if let Some(m) = change.message.filter(|m| shared_topic(&m.topic)) {
            let at = m.stamp.unix_ms;
            let msg = Arc::new(m.charged(&self.memory));
            let _order = self.retained_order(&msg.topic).lock();
            ops = self.set_retained(&msg, true, None, at).0;
        }
        ops.push(Op::ClusterSeq(change.seq));
        drop(self.submit(ops, false));
        self.cluster_applied.send_replace(change.seq);
    }

    /// Routes another node's message to this node's subscribers, waiting while a subscriber
    /// that drains its queue has no room (as a publishing client would).
    async fn route_remote(&self, msg: Message) {
        let msg = Arc::new(msg.charged(&self.memory));
        let mut blocked = match self.route(msg, Vec::new(), true, Origin::Remote) {
            Ok(published) => published.blocked,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: message from another node not routed");
                return;
            }
        };
        while let Some((session, _)) = blocked.first() {
            session.mailbox.space(Duration::from_millis(5)).await;
            self.offer_blocked(&mut blocked, false);
        }
    }
}

/// Answers readers of the state log's last position in rounds: every reader waiting when a
/// round starts shares its one request to the stream, sent after they all registered; those
/// arriving meanwhile wait for the next round. However many SUBSCRIBEs arrive at once, a node
/// has one such request in flight. Ends with the link.
async fn last_seq_rounds(bus: Arc<dyn Bus>, mut waiters: mpsc::Receiver<LastSeqWaiter>) {
    let mut round = Vec::new();
    while waiters.recv_many(&mut round, MAX_ROUND_WAITERS).await > 0 {
        let last = bus.last_seq().await;
        for w in round.drain(..) {
            let _ = w.send(last.clone());
        }
    }
}

/// Topics that cross the cluster: all but `$SYS/` and `$schema/`.
fn shared_topic(topic: &str) -> bool {
    !(topic.starts_with("$SYS/") || topic.starts_with("$schema/"))
}

/// Routes the other nodes' messages here until the broker is gone.
async fn remote_messages(broker: std::sync::Weak<Broker>, bus: Arc<dyn Bus>, mut first: Option<Messages>) {
    loop {
        let feed = match first.take() {
            Some(feed) => Ok(feed),
            None => bus.messages().await,
        };
        match feed {
            Ok(mut feed) => {
                while let Some(msg) = feed.next().await {
                    let Some(b) = broker.upgrade() else { return };
                    b.route_remote(msg).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster: cannot receive other nodes' messages"),
        }
        if broker.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Applies the cluster's state log from this node's last applied position on, until the
/// broker is gone; a failed feed is read again from where it stopped.
async fn follow_state(broker: std::sync::Weak<Broker>, bus: Arc<dyn Bus>) {
    loop {
        let Some(applied) = broker.upgrade().map(|b| b.cluster_applied()) else { return };
        if let Ok(last) = bus.last_seq().await
            && last < applied
        {
            // The stream is younger than this node's store (recreated): read it all again.
            tracing::warn!(
                applied,
                last,
                "cluster: state log is behind this node's store; reading it from the start"
            );
            if let Some(b) = broker.upgrade() {
                b.cluster_applied.send_replace(0);
            }
            continue;
        }
        match bus.states(applied + 1).await {
            Ok(mut feed) => {
                while let Some(change) = feed.next().await {
                    let Some(b) = broker.upgrade() else { return };
                    match change {
                        Ok(c) => b.apply_state(c),
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster: state log feed failed; reading it again");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cluster: cannot read the state log"),
        }
        if broker.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(RETRY).await;
    }
}
