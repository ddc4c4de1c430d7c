//! The [`Bus`] on NATS JetStream: one client connection per node, core subjects for the live
//! fan-out, one replicated stream for retained state.
//!
//! Subjects (prefix `cluster.prefix`, default `dataloom`; topics encoded by `subject`):
//! - `{prefix}.m.{topic}`: every message a node accepted, for the other nodes' subscribers.
//!   Core NATS: at most once, in the order the sending connection wrote them.
//! - `{prefix}.s.{topic}`: retained changes, captured by the stream `{prefix}-state`
//!   (`cluster.replicas` replicas, file storage, one message kept per subject).
//!
//! A NATS message's payload is the message record of `store/record.rs` (the bytes fjall keeps
//! for a retained message: flags, expiry as wall-clock time, properties, topic, payload), and
//! its header `Dl-Node` names the node that sent it. The connection is opened with `no_echo`
//! and the header is checked too, so a node never routes its own message twice (`wire`).
//! `node` names the node, `subject` maps topics to subjects.

mod node;
pub mod subject;
mod wire;

pub use node::node_id;
use wire::{NODE_HEADER, decode, state_change};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::bus::{Bus, Messages, States};
use super::{Commit, StoreError};
use crate::config::Cluster;
use crate::model::Message;

/// Messages waiting for the connection task; beyond, live messages are dropped (counted) and
/// state changes fail their commit.
const QUEUE: usize = 16_384;
/// Bytes (records and subjects) that may wait for the connection task, with the same effect.
const QUEUE_BYTES: usize = 64 << 20;

/// One write to NATS, in the order the broker asked for it.
#[derive(Debug)]
struct Outgoing {
    subject: String,
    record: Bytes,
    /// `Some` for a state change: its commit, resolved by the stream's ack.
    ack: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// What the connection task does next.
#[derive(Debug)]
enum Job {
    Write(Outgoing),
    /// Every earlier write reached the server (a ping answered after them): graceful shutdown.
    Flush(oneshot::Sender<Result<(), async_nats::client::FlushError>>),
}

impl Outgoing {
    /// What it counts against [`QUEUE_BYTES`].
    fn bytes(&self) -> usize {
        self.subject.len() + self.record.len()
    }
}

/// The cluster link on NATS JetStream.
#[derive(Debug)]
pub struct NatsBus {
    node: Arc<str>,
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    /// `{prefix}.m` and `{prefix}.s`.
    live_prefix: String,
    state_prefix: String,
    tx: mpsc::Sender<Job>,
    /// Live messages dropped because the queue to NATS was full.
    dropped: Arc<AtomicU64>,
    /// Bytes queued for the connection task (at most [`QUEUE_BYTES`]).
    queued: Arc<AtomicUsize>,
}

fn cluster_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Cluster(format!("{what}: {e}"))
}

impl NatsBus {
    /// Connects to `cfg.nats_urls` as node `node`, creates the state stream when missing and
    /// starts the task that writes to NATS.
    ///
    /// # Errors
    /// [`StoreError::Cluster`] when no server answers, the credentials or CA cannot be used,
    /// or the stream cannot be created (e.g. fewer servers with JetStream than replicas).
    pub async fn connect(cfg: &Cluster, node: &str) -> Result<Arc<NatsBus>, StoreError> {
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("dataloom {node}"))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(cfg.sync_timeout);
        if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if let Some(creds) = &cfg.creds_file {
            opts = opts.credentials_file(creds).await.map_err(|e| cluster_error("cluster.creds_file", e))?;
        }
        if let Some(ca) = &cfg.ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        let urls = cfg.nats_urls.join(",");
        let mut servers = Vec::with_capacity(cfg.nats_urls.len());
        for url in &cfg.nats_urls {
            servers.push(
                url.parse::<async_nats::ServerAddr>()
                    .map_err(|e| cluster_error(&format!("cluster.nats_urls: {url}"), e))?,
            );
        }
        let connecting = opts.connect(servers);
        // retry_on_initial_connect returns at once and connects in the background; wait for
        // the first connection (bounded) so a wrong address fails the start, not later.
        let client = connecting.await.map_err(|e| cluster_error(&format!("connect to {urls}"), e))?;
        wait_connected(&client, cfg.sync_timeout * 2).await?;
        let js = jetstream::new(client.clone());
        let state_prefix = format!("{}.s", cfg.prefix);
        let config = jetstream::stream::Config {
            name: format!("{}-state", cfg.prefix),
            subjects: vec![format!("{state_prefix}.>")],
            max_messages_per_subject: 1,
            num_replicas: cfg.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        let stream = state_stream(&js, config, STREAM_DEADLINE).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_loop(client.clone(), js, Arc::from(node), rx, queued.clone()));
        tracing::info!(node, nats = %urls, replicas = cfg.replicas, "joined the cluster");
        Ok(Arc::new(NatsBus {
            node: Arc::from(node),
            client,
            stream,
            live_prefix: format!("{}.m", cfg.prefix),
            state_prefix,
            tx,
            dropped: Arc::default(),
            queued,
        }))
    }

    fn send(&self, prefix: &str, msg: &Message, ack: Option<oneshot::Sender<Result<(), StoreError>>>) {
        let Some(subject) = subject::encode(prefix, &msg.topic) else {
            if let Some(ack) = ack {
                let _ = ack.send(Err(too_long(&msg.topic)));
            }
            return;
        };
        let out = Outgoing { subject, record: wire::encode(msg), ack };
        let bytes = out.bytes();
        let refused = if self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > QUEUE_BYTES {
            Some(out)
        } else {
            match self.tx.try_send(Job::Write(out)) {
                Ok(()) => None,
                Err(e) => match e.into_inner() {
                    Job::Write(out) => Some(out),
                    Job::Flush(_) => None,
                },
            }
        };
        let Some(out) = refused else { return };
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
        match out.ack {
            Some(ack) => {
                let _ = ack.send(Err(StoreError::Cluster("the queue to NATS is full".into())));
            }
            None => {
                if self.dropped.fetch_add(1, Ordering::Relaxed).is_power_of_two() {
                    tracing::warn!(
                        dropped = self.dropped.load(Ordering::Relaxed),
                        "cluster: the queue to NATS is full; live messages to other nodes dropped"
                    );
                }
            }
        }
    }
}

fn too_long(topic: &str) -> StoreError {
    StoreError::Cluster(format!(
        "topic of {} bytes is too long for a NATS subject (at most {} encoded bytes)",
        topic.len(),
        subject::MAX_SUBJECT
    ))
}

/// How long a start may retry creating the state stream: a NATS cluster that is forming (no
/// meta leader yet, peers not known) answers with errors or not at all for a while.
const STREAM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// The state stream, created when missing; failures are retried until `deadline` has passed.
async fn state_stream(
    js: &jetstream::Context,
    config: jetstream::stream::Config,
    deadline: std::time::Duration,
) -> Result<jetstream::stream::Stream, StoreError> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(e) if tokio::time::Instant::now() < until => {
                tracing::info!(error = %e, stream = %config.name, "cluster: state stream not ready; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) => return Err(cluster_error(&format!("create the state stream {}", config.name), e)),
        }
    }
}

/// Waits until the client is connected, at most `limit`.
async fn wait_connected(client: &async_nats::Client, limit: std::time::Duration) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + limit;
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Cluster(format!("no NATS server answered within {limit:?}")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Writes queued messages to NATS in order; a state change's ack is awaited on a task of its
/// own so the next write does not wait for the quorum.
async fn write_loop(
    client: async_nats::Client,
    js: jetstream::Context,
    node: Arc<str>,
    mut rx: mpsc::Receiver<Job>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(job) = rx.recv().await {
        let out = match job {
            Job::Write(out) => out,
            Job::Flush(done) => {
                let _ = done.send(client.flush().await);
                continue;
            }
        };
        queued.fetch_sub(out.bytes(), Ordering::Relaxed);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(NODE_HEADER, &*node);
        match out.ack {
            None => {
                if let Err(e) = client.publish_with_headers(out.subject, headers, out.record).await {
                    tracing::debug!(error = %e, "cluster: live message not sent");
                }
            }
            Some(ack) => match js.publish_with_headers(out.subject, headers, out.record).await {
                Ok(pending) => {
                    tokio::spawn(async move {
                        let r = pending.await.map(|_| ()).map_err(|e| cluster_error("state not stored", e));
                        let _ = ack.send(r);
                    });
                }
                Err(e) => {
                    let _ = ack.send(Err(cluster_error("state not sent", e)));
                }
            },
        }
    }
}

impl Bus for NatsBus {
    fn node_id(&self) -> &str {
        &self.node
    }

    fn check_topic(&self, topic: &str) -> Result<(), StoreError> {
        subject::encode(&self.state_prefix, topic).map(|_| ()).ok_or_else(|| too_long(topic))
    }

    fn fan_out(&self, msg: &Message) {
        self.send(&self.live_prefix, msg, None);
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn put_state(&self, msg: &Message) -> Commit {
        let (tx, rx) = oneshot::channel();
        self.send(&self.state_prefix, msg, Some(tx));
        Commit::pending(rx)
    }

    fn last_seq(&self) -> BoxFuture<'static, Result<u64, StoreError>> {
        let stream = self.stream.clone();
        Box::pin(async move {
            let info = stream.get_info().await.map_err(|e| cluster_error("read the state stream", e))?;
            Ok(info.state.last_sequence)
        })
    }

    fn flush(&self, limit: std::time::Duration) -> BoxFuture<'static, ()> {
        let tx = self.tx.clone();
        Box::pin(async move {
            let (done, flushed) = oneshot::channel();
            let drained = async {
                // Queued behind every earlier write.
                tx.send(Job::Flush(done)).await.map_err(|_| "the connection task stopped".to_string())?;
                match flushed.await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("the connection task stopped".to_string()),
                }
            };
            match tokio::time::timeout(limit, drained).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cluster: messages to other nodes not flushed"),
                Err(_) => tracing::warn!(?limit, "cluster: messages to other nodes not flushed in time"),
            }
        })
    }

    fn messages(&self) -> BoxFuture<'static, Result<Messages, StoreError>> {
        let (client, prefix, node) = (self.client.clone(), self.live_prefix.clone(), self.node.clone());
        Box::pin(async move {
            let sub = client
                .subscribe(format!("{prefix}.>"))
                .await
                .map_err(|e| cluster_error("subscribe to the live messages", e))?;
            // The server has the subscription once it answered a ping after it.
            client.flush().await.map_err(|e| cluster_error("subscribe to the live messages", e))?;
            let stream = sub.filter_map(move |m| {
                let decoded = decode(&prefix, &node, &m.subject, m.headers.as_ref(), m.payload);
                std::future::ready(
                    decoded
                        .map_err(|e| tracing::debug!(error = %e, "cluster: bad live message"))
                        .ok()
                        .flatten(),
                )
            });
            Ok(stream.boxed())
        })
    }

    fn states(&self, from: u64) -> BoxFuture<'static, Result<States, StoreError>> {
        let (stream, prefix) = (self.stream.clone(), self.state_prefix.clone());
        Box::pin(async move {
            let deliver_policy = if from <= 1 {
                jetstream::consumer::DeliverPolicy::All
            } else {
                jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: from }
            };
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::OrderedConfig {
                    deliver_policy,
                    ..Default::default()
                })
                .await
                .map_err(|e| cluster_error("read the state stream", e))?;
            let messages =
                consumer.messages().await.map_err(|e| cluster_error("read the state stream", e))?;
            let feed = messages.map(move |m| match m {
                Err(e) => Err(cluster_error("state stream", e)),
                Ok(m) => state_change(&prefix, m),
            });
            Ok(feed.boxed())
        })
    }
}
