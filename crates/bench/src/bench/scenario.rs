//! The scenarios of `make bench` (issue 3), their parameters, what one run of a scenario
//! returns, and helpers they share: connecting many clients, waiting for deliveries to drain,
//! and turning shared receive state into metrics.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use dataloom_codec::QoS;
use tokio::task::{JoinHandle, JoinSet};

use super::brokers::{self, BrokerBin, Kind, Opts, Running};
use super::client::{Client, RxShared, Shared, receive};
use super::stats::{Histogram, Tracker, cpu_seconds, now_ns};

/// One benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    FanInQos0,
    FanInQos1,
    /// Fan-in at QoS 2 (exactly once), the shape of `FanInQos1`.
    FanInQos2,
    FanOut,
    Mesh(usize),
    Rate,
    Idle,
    State,
    /// Issue 4: durable retained updates (dataloom on fjall, fsync and buffered).
    Durable,
    /// Issue 4: restart with many retained topics (`restart-1m`).
    Restart,
    /// Issue 5: fan-in QoS 1 under a JSON Schema, and with 10,000 unrelated schemas.
    Schema,
    /// Issue 6: CONNECT rate with API keys on and off.
    ConnectAuth,
    /// Issue 6: TLS handshake rate and fan-in QoS 0 over TLS beside TCP.
    Tls,
    /// Issue 14 (hostile group): one SUBSCRIBE of 100,000 filters.
    HostileSubscribe,
    /// Issue 14: a subscriber that never reads under a 200 MiB QoS 0 flood.
    HostileSlowSub,
    /// Issue 14: broker RSS per 1,000 subscriptions.
    SubsRss,
    /// Issue 17: HTTP state reads and writes beside MQTT, and history replay.
    StateApi,
}

impl Scenario {
    pub fn key(self) -> String {
        match self {
            Scenario::FanInQos0 => "fanin-qos0".into(),
            Scenario::FanInQos1 => "fanin-qos1".into(),
            Scenario::FanInQos2 => "fanin-qos2".into(),
            Scenario::FanOut => "fanout".into(),
            Scenario::Mesh(n) => format!("mesh-{n}"),
            Scenario::Rate => "rate".into(),
            Scenario::Idle => "idle".into(),
            Scenario::State => "state".into(),
            Scenario::Durable => "durable".into(),
            Scenario::Restart => "restart-1m".into(),
            Scenario::Schema => "schema".into(),
            Scenario::ConnectAuth => "connect-auth".into(),
            Scenario::Tls => "tls".into(),
            Scenario::HostileSubscribe => "hostile-subscribe".into(),
            Scenario::HostileSlowSub => "hostile-slow-sub".into(),
            Scenario::SubsRss => "subs-rss".into(),
            Scenario::StateApi => "state-api".into(),
        }
    }

    /// Scenarios that only make sense on dataloom (the others are not run there).
    pub fn dataloom_only(self) -> bool {
        matches!(self, Scenario::Schema | Scenario::ConnectAuth | Scenario::Tls | Scenario::StateApi)
    }

    /// Scenarios that start (and restart) their brokers themselves.
    pub fn managed(self) -> bool {
        matches!(
            self,
            Scenario::Durable
                | Scenario::Restart
                | Scenario::Schema
                | Scenario::ConnectAuth
                | Scenario::Tls
                | Scenario::StateApi
        )
    }

    /// Longest one run of this scenario may take.
    pub fn timeout(self, p: &Params) -> Duration {
        match self {
            // Publishing the topics, a restart, the sync: sized by the topic count.
            Scenario::Restart => p.run_timeout.max(Duration::from_secs(60 + p.restart as u64 / 4_000)),
            // Several phases on one or two brokers.
            Scenario::Durable
            | Scenario::Schema
            | Scenario::ConnectAuth
            | Scenario::Tls
            | Scenario::StateApi => p.run_timeout.max(Duration::from_secs(150)),
            _ => p.run_timeout,
        }
    }

    pub fn describe(self, p: &Params) -> String {
        let secs = p.duration.as_secs_f64();
        match self {
            Scenario::FanInQos0 => {
                format!("fan-in QoS 0: 10 publishers -> 1 subscriber on bench/#, 64 B payload, {secs} s")
            }
            Scenario::FanInQos1 => format!(
                "fan-in QoS 1: 10 publishers (100 in flight each) -> 1 subscriber on bench/#, 64 B, {secs} s"
            ),
            Scenario::FanInQos2 => format!(
                "fan-in QoS 2: 10 publishers (100 in flight each) -> 1 subscriber on bench/# at QoS 2, 64 B, {secs} s"
            ),
            Scenario::FanOut => {
                format!("fan-out QoS 0: 1 publisher -> 100 subscribers on bench/#, 64 B, {secs} s")
            }
            Scenario::Mesh(n) => {
                format!("mesh {n}: {n} clients on mesh/#, each publishes one message ({} deliveries)", n * n)
            }
            Scenario::Rate => format!(
                "fixed rate: 20 clients x {} msg/s over 4 topics, all subscribed to all ({} deliveries/s), {secs} s",
                p.rate,
                20 * 20 * p.rate
            ),
            Scenario::Idle => format!("{} idle connections: broker memory per connection", p.idle),
            Scenario::State => {
                format!("state sync: {} retained topics, then a fresh subscriber to # counts them", p.state)
            }
            Scenario::StateApi => format!(
                "state API (fjall, fsync): {n} retained topics read by GET /v1/state (pages of 1,000) and by a \
                 fresh subscriber; PUT /v1/state vs MQTT QoS 1 retained, {w} clients one at a time, {secs} s; \
                 replay of {n} history entries (last:{n}) to a fresh MQTT 5 subscriber",
                n = p.state,
                w = super::stateapi::WRITERS
            ),
            Scenario::Durable => format!(
                "durable retained updates: {} publishers x 100 in flight, QoS 1, retained, {} topics each, \
                 64 B, {secs} s; dataloom on fjall (fsync; buffered in extra rows), others in memory",
                super::durable::PUBLISHERS,
                super::durable::TOPICS_PER_PUB
            ),
            Scenario::Restart => format!(
                "{} retained topics of 100 B (QoS 1), RSS, SIGTERM and restart on the same data dir (dataloom), \
                 then a fresh subscriber to # counts them",
                p.restart
            ),
            Scenario::Schema => format!(
                "fan-in QoS 1 (10 pubs -> 1 sub, 100 in flight) with a 6-field JSON Schema vs without, \
                 then plain fan-in with {} unrelated schemas registered, {secs} s each",
                p.schemas
            ),
            Scenario::ConnectAuth => format!(
                "{} CONNECTs (32 at a time, each CONNECT/CONNACK/DISCONNECT) with an API key vs anonymous, fjall store",
                p.connects
            ),
            Scenario::Tls => format!(
                "{} TLS connections (handshake + CONNECT, 32 at a time), then fan-in QoS 0 over TCP and TLS, {secs} s each",
                p.connects
            ),
            Scenario::HostileSubscribe => format!(
                "hostile: one SUBSCRIBE of {} distinct filters (just under 1 MiB, 3.1.1, clean session 0), \
                 good clients CONNECT every 5 ms meanwhile",
                super::hostile::HOSTILE_FILTERS
            ),
            Scenario::HostileSlowSub => format!(
                "hostile: a QoS 0 subscriber that never reads; {} MiB of {} KiB QoS 0 messages to its topic, \
                 good clients CONNECT every 5 ms meanwhile",
                (super::hostile::FLOOD_MESSAGES as usize * super::hostile::FLOOD_PAYLOAD) >> 20,
                super::hostile::FLOOD_PAYLOAD >> 10
            ),
            Scenario::SubsRss => format!(
                "{} clients x {} distinct subscriptions ({} filters per SUBSCRIBE): broker RSS per 1,000",
                super::hostile::SUBS_CLIENTS,
                super::hostile::SUBS_PER_CLIENT,
                super::hostile::SUBS_BATCH
            ),
        }
    }
}

/// Sizes of the scenarios (smaller with `--quick`).
#[derive(Debug, Clone)]
pub struct Params {
    /// Measurement window of the throughput and rate scenarios.
    pub duration: Duration,
    /// Messages per second of each fixed-rate client.
    pub rate: u64,
    pub idle: usize,
    pub state: usize,
    /// QoS of the state-sync subscriber.
    pub state_qos: QoS,
    /// Longest one run may take before it is abandoned.
    pub run_timeout: Duration,
    /// Retained topics of `restart-1m`.
    pub restart: usize,
    /// Unrelated schemas registered in `schema`.
    pub schemas: usize,
    /// CONNECTs per variant in `connect-auth` and TLS handshakes in `tls`.
    pub connects: usize,
}

/// What a managed scenario needs to start its own brokers.
pub struct Env<'a> {
    pub bin: &'a BrokerBin,
    /// The run directory (logs, configuration, data directories).
    pub dir: &'a Path,
    pub cpu: Option<&'a str>,
}

impl Env<'_> {
    pub fn kind(&self) -> Kind {
        self.bin.kind
    }

    /// A fresh (emptied) data directory `data-{name}` in the run directory.
    pub fn data_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.dir.join(format!("data-{name}"));
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        Ok(d)
    }

    pub async fn start(&self, opts: &Opts) -> anyhow::Result<Running> {
        brokers::start_with(self.bin, self.dir, self.cpu, opts).await
    }

    /// Removes the data directories of the run (they can be large).
    pub fn cleanup(&self) {
        if let Ok(entries) = std::fs::read_dir(self.dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("data-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// What one run of a scenario measured: metric keys (see `report::METRICS`) and notes.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub metrics: Vec<(&'static str, f64)>,
    pub notes: Vec<String>,
}

impl Outcome {
    pub fn set(&mut self, key: &'static str, v: f64) {
        self.metrics.push((key, v));
    }
}

/// Connects `n` clients named `{prefix}-{i}`, `parallel` at a time, each subscribing to `sub`
/// if given. Returns them in order with the connect latency (TCP connect to CONNACK) in ns.
pub async fn connect_many(
    addr: SocketAddr,
    prefix: &str,
    n: usize,
    parallel: usize,
    sub: Option<(&str, QoS)>,
) -> anyhow::Result<Vec<(Client, u64)>> {
    let mut set = JoinSet::new();
    let mut out: Vec<Option<(Client, u64)>> = (0..n).map(|_| None).collect();
    let mut next = 0;
    let sub = sub.map(|(f, q)| (f.to_string(), q));
    while next < n || !set.is_empty() {
        while next < n && set.len() < parallel {
            let (id, sub, i) = (format!("{prefix}-{next}"), sub.clone(), next);
            set.spawn_local(async move {
                let t = now_ns();
                let mut c = Client::connect(addr, &id).await?;
                let lat = now_ns() - t;
                if let Some((f, q)) = sub {
                    c.subscribe(&f, q).await?;
                }
                Ok::<_, std::io::Error>((i, c, lat))
            });
            next += 1;
        }
        let joined = set.join_next().await.expect("set is not empty");
        let (i, c, lat) = joined?.map_err(|e| anyhow::anyhow!("client {prefix}: {e}"))?;
        out[i] = Some((c, lat));
    }
    Ok(out.into_iter().map(|c| c.expect("every client joined")).collect())
}

/// Splits `clients` and starts a receiver for each, with its own tracker.
pub fn start_receivers(
    clients: Vec<Client>,
    tracker: impl Fn() -> Tracker,
    shared: &Shared,
) -> (Vec<JoinHandle<()>>, Vec<Rc<RefCell<Tracker>>>) {
    let mut handles = Vec::new();
    let mut trackers = Vec::new();
    for c in clients {
        let (rd, wr) = c.stream.into_split();
        let t = Rc::new(RefCell::new(tracker()));
        trackers.push(t.clone());
        handles.push(tokio::task::spawn_local(receive(rd, Some(wr), c.rbuf, t, shared.clone())));
    }
    (handles, trackers)
}

pub fn new_shared() -> Shared {
    Rc::new(RefCell::new(RxShared::default()))
}

/// How waiting for deliveries ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// Everything expected arrived.
    Done,
    /// Nothing arrived for the stall time: what is missing was lost.
    Stalled(String),
    /// Deliveries were still going on at the deadline: what is missing was still on its way.
    CutOff(String),
}

impl Drained {
    pub fn note(&self) -> Option<String> {
        match self {
            Drained::Done => None,
            Drained::Stalled(n) | Drained::CutOff(n) => Some(n.clone()),
        }
    }
}

/// Waits until `done()`, no delivery for `stall`, `deadline_ns`, or the broker died.
pub async fn drain(
    shared: &Shared,
    broker: &mut Running,
    done: impl Fn(&RxShared) -> bool,
    stall: Duration,
    deadline_ns: u64,
) -> Drained {
    let mut last = (shared.borrow().received, now_ns());
    loop {
        {
            let sh = shared.borrow();
            if done(&sh) {
                return Drained::Done;
            }
            let now = now_ns();
            if sh.received != last.0 {
                last = (sh.received, now);
            } else if now - last.1 > stall.as_nanos() as u64 {
                return Drained::Stalled(format!("deliveries stopped ({} received)", sh.received));
            }
            if now > deadline_ns {
                return Drained::CutOff(format!(
                    "stopped waiting while deliveries went on ({} received; the rest is reported as backlog)",
                    sh.received
                ));
            }
        }
        if let Some(d) = broker.died() {
            return Drained::Stalled(d);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// CPU use of the generator and the broker over one run.
pub struct CpuMeter {
    gen_start: f64,
    broker_start: f64,
    wall_start: u64,
}

impl CpuMeter {
    pub fn start(broker: &Running) -> Self {
        CpuMeter {
            gen_start: cpu_seconds("self").unwrap_or(0.0),
            broker_start: broker.cpu_seconds(),
            wall_start: now_ns(),
        }
    }

    pub fn finish(&self, broker: &Running, o: &mut Outcome) {
        let wall = (now_ns() - self.wall_start) as f64 / 1e9;
        if wall > 0.0 {
            let g = cpu_seconds("self").unwrap_or(0.0) - self.gen_start;
            o.set("broker_cpu_pct", 100.0 * (broker.cpu_seconds() - self.broker_start) / wall);
            o.set("gen_cpu_pct", 100.0 * g / wall);
        }
    }
}

/// Latency percentiles, loss (or backlog, when the wait was cut off) and duplicates from
/// receivers that expected `expected` messages.
pub fn delivery_metrics(
    o: &mut Outcome,
    lat: &Histogram,
    trackers: &[Rc<RefCell<Tracker>>],
    expected: u64,
    drained: Drained,
) {
    let (unique, dups) =
        trackers.iter().fold((0, 0), |(u, d), t| (u + t.borrow().unique, d + t.borrow().dups));
    latency_metrics(o, lat, ["p50_ms", "p99_ms"]);
    o.set("sent", expected as f64);
    let missing = expected.saturating_sub(unique) as f64;
    if let Drained::CutOff(_) = drained {
        o.set("backlog", missing);
    } else {
        o.set("loss", missing);
        o.set("loss_pct", if expected == 0 { 0.0 } else { 100.0 * missing / expected as f64 });
    }
    o.set("dups", dups as f64);
    o.notes.extend(drained.note());
}

/// The QoS 2 subscribers' protocol anomalies (see `acks::Arrival`): PUBLISHes under a packet id
/// still awaiting PUBREL for another message (counted as lost), PUBRELs for no message.
pub fn qos2_metrics(o: &mut Outcome, sh: &RxShared) {
    o.set("qos2_reused_ids", sh.qos2_reused_ids as f64);
    o.set("unknown_pubrels", sh.unknown_pubrels as f64);
    if sh.qos2_reused_ids > 0 {
        o.notes.push(format!(
            "{} QoS 2 PUBLISHes reused a packet id still awaiting PUBREL: a receiver must take them \
             as resends, so they count as lost (their payloads did arrive)",
            sh.qos2_reused_ids
        ));
    }
    if sh.unknown_pubrels > 0 {
        o.notes.push(format!("{} PUBRELs for a packet id awaiting none", sh.unknown_pubrels));
    }
}

/// p50 and p99 of `lat` in milliseconds under the keys `[p50, p99]` (nothing when empty).
pub fn latency_metrics(o: &mut Outcome, lat: &Histogram, keys: [&'static str; 2]) {
    if let (Some(p50), Some(p99)) = (lat.quantile(0.5), lat.quantile(0.99)) {
        o.set(keys[0], p50 as f64 / 1e6);
        o.set(keys[1], p99 as f64 / 1e6);
    }
}

/// Broker memory at the end of a run.
pub fn memory_metrics(o: &mut Outcome, broker: &Running) {
    if let Some((_, hwm)) = broker.rss() {
        o.set("peak_rss_mib", hwm as f64 / (1024.0 * 1024.0));
    }
}

/// Runs one managed scenario: it starts and stops its brokers itself.
pub async fn run_managed(s: Scenario, p: &Params, env: &Env<'_>) -> anyhow::Result<Outcome> {
    let deadline_ns = now_ns() + s.timeout(p).as_nanos() as u64;
    match s {
        Scenario::Durable => super::durable::durable(p, env, deadline_ns).await,
        Scenario::Restart => super::durable::restart(p, env, deadline_ns).await,
        Scenario::Schema => super::schema::schema(p, env, deadline_ns).await,
        Scenario::ConnectAuth => super::auth::connect_auth(p, env, deadline_ns).await,
        Scenario::Tls => super::auth::tls(p, env, deadline_ns).await,
        Scenario::StateApi => super::stateapi::state_api(p, env, deadline_ns).await,
        _ => anyhow::bail!("{} is not a managed scenario", s.key()),
    }
}

/// Runs one scenario against a started broker.
pub async fn run(s: Scenario, p: &Params, broker: &mut Running) -> anyhow::Result<Outcome> {
    let deadline_ns = now_ns() + p.run_timeout.as_nanos() as u64;
    let mut o = match s {
        Scenario::FanInQos0 => super::flow::fan_in(p, broker, QoS::AtMostOnce, deadline_ns).await?,
        Scenario::FanInQos1 => super::flow::fan_in(p, broker, QoS::AtLeastOnce, deadline_ns).await?,
        Scenario::FanInQos2 => super::flow::fan_in(p, broker, QoS::ExactlyOnce, deadline_ns).await?,
        Scenario::FanOut => super::flow::fan_out(p, broker, deadline_ns).await?,
        Scenario::Rate => super::flow::fixed_rate(p, broker, deadline_ns).await?,
        Scenario::Mesh(n) => super::burst::mesh(n, broker, deadline_ns).await?,
        Scenario::Idle => super::burst::idle(p, broker).await?,
        Scenario::State => super::burst::state(p, broker, deadline_ns).await?,
        Scenario::HostileSubscribe => super::hostile::hostile_subscribe(broker).await?,
        Scenario::HostileSlowSub => super::hostile::hostile_slow_sub(broker).await?,
        Scenario::SubsRss => super::hostile::subs_rss(broker).await?,
        _ => anyhow::bail!("{} starts its own brokers", s.key()),
    };
    memory_metrics(&mut o, broker);
    Ok(o)
}
