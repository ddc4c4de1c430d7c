//! The cluster seam: what the broker asks of the engine that links the nodes of a cluster, in
//! the broker's vocabulary (messages, sequence numbers, commits). `nats` implements it on NATS
//! JetStream; nothing else names NATS.
//!
//! Two channels with different guarantees: **messages** (live fan-out to the other nodes, at
//! most once, in the order one node sent them) and **state** (retained changes on a replicated
//! log: [`Bus::put_state`]'s commit resolves once a quorum stored the change; every node reads
//! the log in one order and applies it to its own store).

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::{Commit, StoreError};
use crate::model::Message;

/// One retained-state change read from the cluster's log, in log order.
#[derive(Debug)]
pub struct StateChange {
    /// The change's position in the log (increasing, with gaps where older changes of a topic
    /// were superseded).
    pub seq: u64,
    /// The new state of `message.topic` (an empty payload deletes it); `None` for an entry
    /// that is not a change this build can read (logged), which only advances the position.
    pub message: Option<Message>,
}

/// The messages of other nodes, in the order each node sent them.
pub type Messages = BoxStream<'static, Message>;
/// The cluster's state log from a position on; an error ends the feed (read it again from the
/// last applied position).
pub type States = BoxStream<'static, Result<StateChange, StoreError>>;

/// The link between this node and the rest of its cluster.
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// This node's name in the cluster.
    fn node_id(&self) -> &str;

    /// Whether `topic` can cross the bus (its encoded name fits the engine's limits).
    ///
    /// # Errors
    /// [`StoreError::Cluster`] naming the topic's problem.
    fn check_topic(&self, topic: &str) -> Result<(), StoreError>;

    /// Sends a message to every other node (fire and forget, in call order). A message that
    /// cannot be queued is dropped and counted.
    fn fan_out(&self, msg: &Message);

    /// Messages [`Bus::fan_out`] dropped so far because they could not be queued.
    fn dropped(&self) -> u64;

    /// Appends a retained change (an empty payload deletes) to the state log; the commit
    /// resolves once a quorum of replicas stored it, or fails.
    fn put_state(&self, msg: &Message) -> Commit;

    /// The position of the last change in the state log now (0 when empty).
    fn last_seq(&self) -> BoxFuture<'static, Result<u64, StoreError>>;

    /// Sends everything queued so far and waits (at most `limit`) until the engine has it:
    /// graceful shutdown.
    fn flush(&self, limit: std::time::Duration) -> BoxFuture<'static, ()>;

    /// Subscribes to the messages of other nodes (this node's own are left out).
    fn messages(&self) -> BoxFuture<'static, Result<Messages, StoreError>>;

    /// Reads the state log from position `from` on (every change with `seq >= from` that is
    /// still the latest of its topic), then follows it.
    fn states(&self, from: u64) -> BoxFuture<'static, Result<States, StoreError>>;
}
