//! Process-wide Prometheus metrics: one [`Metrics`] (reached through [`get`]) that owns the
//! registry served at `/metrics` and every counter, gauge and histogram of the broker.
//!
//! Label values are resolved once, at start, into plain fields (arrays indexed by packet type,
//! QoS, close reason, ...), so the publish path never hashes a label or takes a lock: counting
//! is one relaxed atomic add, the publish latency one histogram observation. Gauges that
//! describe broker state (sessions, subscriptions, retained messages, store size) are set
//! from a [`Snapshot`] when scraped ([`Metrics::render`]); this module knows nothing of the
//! broker or the sessions (issue 12: metrics is a leaf).
//!
//! Naming follows Prometheus: prefix `dataloom_`, counters end in `_total`, base units
//! (`_seconds`, `_bytes`), labels from closed sets only ([`reasons`]). Process CPU, memory and
//! file descriptors are the standard `process_*` metrics of the `prometheus` crate.

mod io;
pub(crate) mod reasons;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

use dataloom_codec::{Packet, QoS};
pub use io::Counted;
pub use reasons::pt;
use reasons::{
    AUTH_FAILURE_REASONS, AUTHZ_ACTIONS, CLOSE_REASONS, DROP_REASONS, DropReason, FROM_CLIENT, FROM_SERVER,
    PACKET_TYPES, REJECT_REASONS, SCHEMA_RESULTS, SESSION_PROTOCOL_KINDS, SHED_ACTIONS, ShedAction,
};

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics, created on first use.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::build().unwrap_or_else(|e| panic!("metric definitions are valid: {e}")))
}

/// Why the metrics could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Prometheus encoder failed.
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] prometheus::Error),
}

/// How clients reach a listener; the `listener` and `transport` labels of connection metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS.
    Tls,
    /// WebSocket.
    Ws,
    /// Secure WebSocket.
    Wss,
}

impl Transport {
    /// The label value (`"tcp"`, `"tls"`, `"ws"`, `"wss"`), also the listener's config name.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// Connection metrics of one listener, resolved when it binds.
#[derive(Debug)]
pub struct ListenerMetrics {
    /// `dataloom_connections`: open network connections.
    pub connections: IntGauge,
    /// `dataloom_connections_opened_total`: accepted network connections.
    pub opened: IntCounter,
    closed: [IntCounter; CLOSE_REASONS.len()],
    rejected: [IntCounter; REJECT_REASONS.len()],
}

impl ListenerMetrics {
    /// Counts an accepted connection; the guard counts its end (also if the task is dropped).
    pub fn accepted(&'static self) -> ConnectionGuard {
        self.opened.inc();
        self.connections.inc();
        ConnectionGuard { listener: self, ended: false }
    }
}

/// An open connection as the metrics see it; see [`ListenerMetrics::accepted`].
#[derive(Debug)]
pub struct ConnectionGuard {
    listener: &'static ListenerMetrics,
    ended: bool,
}

impl ConnectionGuard {
    /// Counts how the connection ended (the session layer classifies its close).
    pub fn ended(mut self, ending: reasons::Ending) {
        let l = self.listener;
        l.closed[ending.close as usize].inc();
        if let Some(r) = ending.rejected {
            l.rejected[r as usize].inc();
        }
        if let Some(kind) = ending.protocol_error {
            get().protocol_error(kind);
        }
        l.connections.dec();
        self.ended = true;
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if !self.ended {
            self.listener.closed[reasons::CloseReason::ServerError as usize].inc();
            self.listener.connections.dec();
        }
    }
}

/// A client with a session, counted in `dataloom_sessions{state="online"}` while it lives.
#[derive(Debug)]
pub struct OnlineGuard(&'static IntGauge);

impl Drop for OnlineGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Times one PUBLISH from decoded to routed into `dataloom_publish_latency_seconds`.
#[derive(Debug)]
pub struct PublishTimer {
    start: Option<Instant>,
    histogram: &'static Histogram,
}

impl Drop for PublishTimer {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            self.histogram.observe(start.elapsed().as_secs_f64());
        }
    }
}

/// One publish in this many is timed for the latency histogram: two clock reads per message
/// were the largest cost of the metrics on the publish path; quantiles need far fewer samples.
pub const LATENCY_SAMPLE_EVERY: u32 = 16;

fn sample_this_one() -> bool {
    thread_local! {
        static COUNT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    COUNT.with(|c| {
        let n = c.get().wrapping_add(1);
        c.set(n);
        n % LATENCY_SAMPLE_EVERY == 0
    })
}

/// Counters of one registered JSON Schema, indexed like [`SCHEMA_RESULTS`].
pub type SchemaCounters = [IntCounter; SCHEMA_RESULTS.len()];

/// Every metric of the process. Fields are public where a module outside this one feeds them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: IntGaugeVec,
    opened: IntCounterVec,
    closed: IntCounterVec,
    rejected: IntCounterVec,
    listeners: [OnceLock<ListenerMetrics>; 4],
    /// `dataloom_packets_received_total{type}` by packet type code.
    pub packets_received: [IntCounter; 16],
    /// `dataloom_packets_sent_total{type}` by packet type code.
    pub packets_sent: [IntCounter; 16],
    /// `dataloom_messages_received_total{qos}`: PUBLISH from clients.
    pub messages_received: [IntCounter; 3],
    /// `dataloom_messages_sent_total{qos}`: PUBLISH to clients (resends included).
    pub messages_sent: [IntCounter; 3],
    /// `dataloom_bytes_received_total`.
    pub bytes_received: IntCounter,
    /// `dataloom_bytes_sent_total`.
    pub bytes_sent: IntCounter,
    dropped: [IntCounter; DROP_REASONS.len()],
    protocol_errors_vec: IntCounterVec,
    protocol_errors: HashMap<&'static str, IntCounter>,
    publish_latency: Histogram,
    sessions_online: IntGauge,
    sessions_offline: IntGauge,
    sessions_persistent: IntGauge,
    session_timers: IntGauge,
    runtime_tasks: IntGauge,
    subscriptions: IntGauge,
    retained_messages: IntGauge,
    /// `dataloom_retained_payload_bytes`: payload bytes of all retained messages.
    pub retained_payload_bytes: IntGauge,
    /// `dataloom_auth_failures_total{reason}`, indexed like [`AUTH_FAILURE_REASONS`].
    pub auth_failures: [IntCounter; AUTH_FAILURE_REASONS.len()],
    /// `dataloom_authorization_denials_total{action}`, indexed like [`AUTHZ_ACTIONS`].
    pub authz_denials: [IntCounter; AUTHZ_ACTIONS.len()],
    schema_validations: IntCounterVec,
    /// `dataloom_store_write_batch_size`: submissions (messages) per group commit.
    pub store_batch_size: Histogram,
    /// `dataloom_store_write_latency_seconds`: time to apply one batch.
    pub store_write_latency: Histogram,
    /// `dataloom_store_fsync_latency_seconds`: time of one fsync.
    pub store_fsync_latency: Histogram,
    store_disk_bytes: IntGauge,
    store_backlog_bytes: IntGauge,
    tls_cert_expiry: GaugeVec,
    load_shed: [IntCounter; SHED_ACTIONS.len()],
    memory_budget: IntGauge,
    memory_used: IntGauge,
    cluster_applied: IntGauge,
    cluster_dropped: IntCounter,
}

const LATENCY_BUCKETS: [f64; 16] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
];
const STORE_BUCKETS: [f64; 14] =
    [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
const BATCH_BUCKETS: [f64; 12] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    register(r, IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    register(r, IntGauge::new(name, help)?)
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
    register(r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?)
}

/// One series of `vec` per label value, in order.
fn resolve<const N: usize>(vec: &IntCounterVec, values: [&str; N]) -> [IntCounter; N] {
    values.map(|v| vec.with_label_values(&[v]))
}

/// Series for the packet types in `allowed`; the others get a counter that is never exported.
fn per_packet(vec: &IntCounterVec, allowed: u16) -> prometheus::Result<[IntCounter; 16]> {
    let mut out = Vec::with_capacity(16);
    for (i, name) in PACKET_TYPES.iter().enumerate() {
        out.push(if allowed & (1 << i) != 0 {
            vec.with_label_values(&[name])
        } else {
            IntCounter::new("dataloom_unexported", "never registered")?
        });
    }
    out.try_into().map_err(|_| prometheus::Error::Msg("16 packet types".into()))
}

impl Metrics {
    fn build() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;

        let info = register(
            &r,
            IntGaugeVec::new(
                Opts::new("dataloom_build_info", "Build of the running broker (always 1)."),
                &["version"],
            )?,
        )?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let conn_labels = ["listener", "transport"];
        let connections = register(
            &r,
            IntGaugeVec::new(Opts::new("dataloom_connections", "Open network connections."), &conn_labels)?,
        )?;
        let opened = counter_vec(
            &r,
            "dataloom_connections_opened_total",
            "Network connections accepted.",
            &conn_labels,
        )?;
        let closed = counter_vec(
            &r,
            "dataloom_connections_closed_total",
            "Network connections closed, by reason (rejected: ended before a session).",
            &["listener", "transport", "reason"],
        )?;
        let rejected = counter_vec(
            &r,
            "dataloom_connections_rejected_total",
            "Connections that got no session (CONNECT refused, malformed or late), by reason.",
            &["listener", "transport", "reason"],
        )?;

        let pkt_in =
            counter_vec(&r, "dataloom_packets_received_total", "MQTT packets received, by type.", &["type"])?;
        let pkt_out =
            counter_vec(&r, "dataloom_packets_sent_total", "MQTT packets sent, by type.", &["type"])?;
        let msg_in = counter_vec(
            &r,
            "dataloom_messages_received_total",
            "PUBLISH messages received from clients.",
            &["qos"],
        )?;
        let msg_out = counter_vec(
            &r,
            "dataloom_messages_sent_total",
            "PUBLISH messages sent to clients (resends included).",
            &["qos"],
        )?;
        let dropped = counter_vec(
            &r,
            "dataloom_messages_dropped_total",
            "Messages not delivered to a subscriber or not accepted, by reason.",
            &["reason"],
        )?;
        let protocol_errors_vec = counter_vec(
            &r,
            "dataloom_protocol_errors_total",
            "Connections closed for breaking an MQTT rule, by rule.",
            &["kind"],
        )?;
        let mut protocol_errors = HashMap::new();
        for kind in reasons::decode_error_kinds().into_iter().chain(SESSION_PROTOCOL_KINDS) {
            protocol_errors.insert(kind, protocol_errors_vec.with_label_values(&[kind]));
        }

        let sessions = register(
            &r,
            IntGaugeVec::new(
                Opts::new("dataloom_sessions", "Client sessions by state (online: a client is connected)."),
                &["state"],
            )?,
        )?;
        let auth = counter_vec(
            &r,
            "dataloom_auth_failures_total",
            "CONNECTs whose credentials were refused, by reason.",
            &["reason"],
        )?;
        let authz = counter_vec(
            &r,
            "dataloom_authorization_denials_total",
            "PUBLISH or SUBSCRIBE refused by a key's permissions, by action.",
            &["action"],
        )?;
        let schema_validations = counter_vec(
            &r,
            "dataloom_schema_validations_total",
            "Messages checked against a JSON Schema, by schema filter and result.",
            &["filter", "result"],
        )?;
        let tls_cert_expiry = register(
            &r,
            GaugeVec::new(
                Opts::new(
                    "dataloom_tls_certificate_expiry_timestamp_seconds",
                    "When the listener's TLS certificate expires (Unix time).",
                ),
                &["listener"],
            )?,
        )?;

        Ok(Metrics {
            connections,
            opened,
            closed,
            rejected,
            listeners: Default::default(),
            packets_received: per_packet(&pkt_in, FROM_CLIENT)?,
            packets_sent: per_packet(&pkt_out, FROM_SERVER)?,
            messages_received: resolve(&msg_in, ["0", "1", "2"]),
            messages_sent: resolve(&msg_out, ["0", "1", "2"]),
            bytes_received: register(
                &r,
                IntCounter::new("dataloom_bytes_received_total", "Bytes read from client connections.")?,
            )?,
            bytes_sent: register(
                &r,
                IntCounter::new("dataloom_bytes_sent_total", "Bytes written to client connections.")?,
            )?,
            dropped: resolve(&dropped, DROP_REASONS),
            protocol_errors_vec,
            protocol_errors,
            publish_latency: histogram(
                &r,
                "dataloom_publish_latency_seconds",
                "Time from a decoded PUBLISH to routed to every subscriber queue (one publish in 16 is timed).",
                &LATENCY_BUCKETS,
            )?,
            sessions_online: sessions.with_label_values(&["online"]),
            sessions_offline: sessions.with_label_values(&["offline"]),
            sessions_persistent: gauge(
                &r,
                "dataloom_sessions_persistent",
                "Sessions that outlive their connection (session expiry > 0).",
            )?,
            session_timers: gauge(
                &r,
                "dataloom_session_timers",
                "Pending timers of offline sessions (session expiry, delayed will).",
            )?,
            runtime_tasks: gauge(
                &r,
                "dataloom_runtime_tasks",
                "Tasks alive in the async runtime (connections, listeners, timers).",
            )?,
            subscriptions: gauge(
                &r,
                "dataloom_subscriptions",
                "Subscriptions (shared memberships included).",
            )?,
            retained_messages: gauge(&r, "dataloom_retained_messages", "Topics with retained state.")?,
            retained_payload_bytes: gauge(
                &r,
                "dataloom_retained_payload_bytes",
                "Payload bytes of all retained messages.",
            )?,
            auth_failures: resolve(&auth, AUTH_FAILURE_REASONS),
            authz_denials: resolve(&authz, AUTHZ_ACTIONS),
            schema_validations,
            store_batch_size: histogram(
                &r,
                "dataloom_store_write_batch_size",
                "Submissions (one per message or session change) per store group commit.",
                &BATCH_BUCKETS,
            )?,
            store_write_latency: histogram(
                &r,
                "dataloom_store_write_latency_seconds",
                "Time to write one group-commit batch.",
                &STORE_BUCKETS,
            )?,
            store_fsync_latency: histogram(
                &r,
                "dataloom_store_fsync_latency_seconds",
                "Time of one store fsync.",
                &STORE_BUCKETS,
            )?,
            store_disk_bytes: gauge(&r, "dataloom_store_disk_bytes", "Bytes the store uses on disk.")?,
            store_backlog_bytes: gauge(
                &r,
                "dataloom_store_write_backlog_bytes",
                "Bytes of writes waiting for the store writer (bounded by storage.max_write_backlog).",
            )?,
            tls_cert_expiry,
            load_shed: resolve(
                &counter_vec(
                    &r,
                    "dataloom_load_shed_total",
                    "Work refused or dropped because memory use neared limits.max_memory, by action.",
                    &["action"],
                )?,
                SHED_ACTIONS,
            ),
            memory_budget: gauge(
                &r,
                "dataloom_memory_budget_bytes",
                "The memory budget (limits.max_memory).",
            )?,
            memory_used: gauge(
                &r,
                "dataloom_memory_used_bytes",
                "Bytes in the broker's memory account (start-up baseline, store backlog reserve, messages, queues, connection buffers).",
            )?,
            cluster_applied: gauge(
                &r,
                "dataloom_cluster_state_applied_sequence",
                "Position in the cluster's state stream this node applied last (0 outside a cluster).",
            )?,
            cluster_dropped: register(
                &r,
                IntCounter::new(
                    "dataloom_cluster_messages_dropped_total",
                    "Messages not sent to the other nodes because the queue to NATS was full.",
                )?,
            )?,
            registry: r,
        })
    }

    /// Connection metrics of a listener; resolved on first use (when it binds).
    pub fn listener(&self, t: Transport) -> &ListenerMetrics {
        self.listeners[t as usize].get_or_init(|| {
            let l = [t.label(), t.label()];
            let with = |v: &IntCounterVec, reason: &str| v.with_label_values(&[l[0], l[1], reason]);
            ListenerMetrics {
                connections: self.connections.with_label_values(&l),
                opened: self.opened.with_label_values(&l),
                closed: CLOSE_REASONS.map(|r| with(&self.closed, r)),
                rejected: REJECT_REASONS.map(|r| with(&self.rejected, r)),
            }
        })
    }

    /// Counts one packet read from a client.
    #[inline]
    pub fn packet_received(&self, p: &Packet) {
        self.packets_received[reasons::packet_type(p)].inc();
    }

    /// Counts one packet written to a client.
    #[inline]
    pub fn packet_sent(&self, p: &Packet) {
        self.packets_sent[reasons::packet_type(p)].inc();
    }

    /// Counts a PUBLISH sent to a client at `qos`.
    #[inline]
    pub fn publish_sent(&self, qos: QoS) {
        self.packets_sent[pt::PUBLISH].inc();
        self.messages_sent[qos as usize].inc();
    }

    /// Counts a PUBLISH received at `qos`; the timer records the publish latency when dropped.
    #[inline]
    pub fn publish_received(&'static self, qos: QoS) -> PublishTimer {
        self.messages_received[qos as usize].inc();
        let start = sample_this_one().then(Instant::now);
        PublishTimer { start, histogram: &self.publish_latency }
    }

    /// Counts one thing shed under memory pressure.
    pub fn load_shed(&self, action: ShedAction) {
        self.load_shed[action as usize].inc();
    }

    /// `dataloom_load_shed_total{action}` so far.
    pub fn load_shed_count(&self, action: ShedAction) -> u64 {
        self.load_shed[action as usize].get()
    }

    /// Counts a message that was not delivered or not accepted.
    #[inline]
    pub fn dropped(&self, why: DropReason) {
        self.dropped[why as usize].inc();
    }

    /// A retained payload of `old` bytes was replaced by one of `new` bytes (0: none).
    #[inline]
    pub fn retained_replaced(&self, old: usize, new: usize) {
        if old != new {
            self.retained_payload_bytes.add(to_i64(new) - to_i64(old));
        }
    }

    /// Counts a client PUBLISH no subscription matched; a retained one is not a drop (it
    /// became state).
    #[inline]
    pub fn no_subscribers(&self, retained: bool) {
        if !retained {
            self.dropped(DropReason::NoSubscribers);
        }
    }

    /// Counts a protocol violation of `kind` (a [`dataloom_codec::DecodeError::kind`] or a
    /// session-level kind). Not on the hot path: it ends a connection.
    pub fn protocol_error(&self, kind: &'static str) {
        match self.protocol_errors.get(kind) {
            Some(c) => c.inc(),
            None => self.protocol_errors_vec.with_label_values(&[kind]).inc(),
        }
    }

    /// A client got a session; it counts as online until the guard drops.
    pub fn session_online(&'static self) -> OnlineGuard {
        self.sessions_online.inc();
        OnlineGuard(&self.sessions_online)
    }

    /// Resolves the counters of one schema filter, once, when the schema is registered.
    pub fn schema_validations(&self, filter: &str) -> SchemaCounters {
        SCHEMA_RESULTS.map(|r| self.schema_validations.with_label_values(&[filter, r]))
    }

    /// The expiry gauge of a TLS listener's certificate, set when it is loaded.
    pub fn tls_cert_expiry(&self, listener: &str) -> Gauge {
        self.tls_cert_expiry.with_label_values(&[listener])
    }

    /// Current value of a drop counter (for `$SYS` and tests).
    pub fn dropped_count(&self, why: DropReason) -> u64 {
        self.dropped[why as usize].get()
    }

    /// Connections accepted so far on every listener.
    pub fn connections_opened(&self) -> u64 {
        self.listeners.iter().filter_map(OnceLock::get).map(|l| l.opened.get()).sum()
    }

    /// Clients online (with a session) in this process.
    pub fn online(&self) -> i64 {
        self.sessions_online.get()
    }

    /// Sets the gauges of broker state from `state` and encodes everything in the Prometheus
    /// text format (version 0.0.4).
    ///
    /// # Errors
    /// [`MetricsError::Encode`] if a metric cannot be encoded (a bug).
    pub fn render(&self, state: &Snapshot) -> Result<String, MetricsError> {
        self.refresh(state);
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn refresh(&self, s: &Snapshot) {
        let total = to_i64(s.sessions);
        self.sessions_offline.set(total.saturating_sub(self.sessions_online.get()).max(0));
        self.sessions_persistent.set(to_i64(s.persistent_sessions));
        self.session_timers.set(to_i64(s.session_timers));
        self.runtime_tasks.set(to_i64(s.runtime_tasks));
        self.subscriptions.set(to_i64(s.subscriptions));
        self.retained_messages.set(to_i64(s.retained_messages));
        self.store_disk_bytes.set(i64::try_from(s.store_disk_bytes).unwrap_or(i64::MAX));
        self.store_backlog_bytes.set(to_i64(s.store_backlog_bytes));
        self.memory_budget.set(to_i64(s.memory_budget));
        self.memory_used.set(to_i64(s.memory_used));
        self.cluster_applied.set(i64::try_from(s.cluster_applied).unwrap_or(i64::MAX));
        follow(&self.cluster_dropped, s.cluster_dropped);
        follow(&self.dropped[DropReason::QueueFull as usize], s.dropped_queue_full);
        follow(&self.dropped[DropReason::OfflineQos0 as usize], s.dropped_offline_qos0);
    }
}

/// The broker state the gauges show, read by whoever serves `/metrics` when it is scraped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Sessions, online and offline.
    pub sessions: usize,
    /// Sessions whose state is stored (expiry > 0).
    pub persistent_sessions: usize,
    /// Subscriptions of every session.
    pub subscriptions: usize,
    /// Retained messages (topics with state).
    pub retained_messages: usize,
    /// Bytes the store uses on disk.
    pub store_disk_bytes: u64,
    /// Bytes of writes waiting for the store writer.
    pub store_backlog_bytes: usize,
    /// Messages dropped so far because a session's queue was full.
    pub dropped_queue_full: u64,
    /// QoS 0 messages dropped so far because their session was offline.
    pub dropped_offline_qos0: u64,
    /// Pending session expiry and delayed-will timers (at most two per offline session).
    pub session_timers: usize,
    /// Tasks alive in the broker's async runtime (connections, listeners, timers, ...).
    pub runtime_tasks: usize,
    /// `limits.max_memory` in bytes (0: no limit).
    pub memory_budget: usize,
    /// Bytes in the memory account.
    pub memory_used: usize,
    /// Position in the cluster's state stream applied last (0 outside a cluster).
    pub cluster_applied: u64,
    /// Messages not sent to the other nodes because the queue to NATS was full, so far.
    pub cluster_dropped: u64,
}

/// Brings a counter up to a total kept elsewhere (never down: a counter only grows).
fn follow(c: &IntCounter, total: u64) {
    let cur = c.get();
    if total > cur {
        c.inc_by(total - cur);
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_publish_in_sixteen_is_timed() {
        let m = get();
        let before = m.publish_latency.get_sample_count();
        // A fresh thread: its sampling counter starts at zero.
        std::thread::spawn(move || {
            for _ in 0..(2 * LATENCY_SAMPLE_EVERY) {
                drop(m.publish_received(QoS::AtMostOnce));
            }
        })
        .join()
        .expect("thread");
        assert!(m.publish_latency.get_sample_count() >= before + 2);
        assert!(m.messages_received[0].get() >= u64::from(2 * LATENCY_SAMPLE_EVERY));
    }

    #[test]
    fn builds_and_lists_the_families() {
        let m = get();
        m.listener(Transport::Tcp).opened.inc();
        let names: Vec<String> = m.registry.gather().iter().map(|f| f.name().to_string()).collect();
        for n in [
            "dataloom_build_info",
            "dataloom_connections_opened_total",
            "dataloom_packets_received_total",
            "dataloom_messages_dropped_total",
            "dataloom_protocol_errors_total",
            "dataloom_publish_latency_seconds",
            "dataloom_store_fsync_latency_seconds",
            "dataloom_auth_failures_total",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn unknown_protocol_kind_still_counts() {
        let m = get();
        m.protocol_error("some_new_rule");
        let v = m.protocol_errors_vec.with_label_values(&["some_new_rule"]).get();
        assert!(v >= 1);
    }
}
