//! The hostile group (issue 14): what one misbehaving client costs a broker on its shipped
//! defaults, and what a subscription costs in memory. Every broker gets the same MQTT 3.1.1
//! traffic (rumqttd 0.20 serves v4 here), the hostile clients with clean session 0.
//!
//! - `hostile-subscribe`: one SUBSCRIBE of 100,000 short distinct filters, just under 1 MiB;
//!   time to its SUBACK (or to the broker closing the connection, or 30 s), broker RSS growth,
//!   and meanwhile a good client's CONNECT latency ([`Prober`]).
//! - `hostile-slow-sub`: a subscriber that never reads its socket while a publisher floods its
//!   topic with 200 MiB of 64 KiB QoS 0 messages: broker peak and held RSS growth, and whether
//!   good clients still connect.
//! - `subs-rss`: 10 clients x 10,000 subscriptions (SUBSCRIBEs of 1,000 filters, within
//!   dataloom's default limits): broker RSS per 1,000 subscriptions.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use dataloom_codec::{QoS, encode};
use tokio::io::AsyncWriteExt;
use tokio::task::{JoinHandle, JoinSet};

use super::brokers::{Kind, Running};
use super::client::{Body, Client, Template, V, blast_n, subscribe_packet};
use super::flow::summarize_errors;
use super::scenario::{Outcome, connect_many, latency_metrics};
use super::stats::{Histogram, now_ns, rss_bytes};

/// Filters in the hostile SUBSCRIBE: `h/00000` .. `h/99999`, 10 bytes each on the wire.
pub const HOSTILE_FILTERS: usize = 100_000;
/// Longest wait for the hostile SUBSCRIBE's SUBACK.
const SUBACK_LIMIT: Duration = Duration::from_secs(30);
/// Payload of one flood message.
pub const FLOOD_PAYLOAD: usize = 64 * 1024;
/// Flood messages: 3,200 x 64 KiB = 200 MiB.
pub const FLOOD_MESSAGES: u32 = 3_200;
/// Flood messages per write.
const FLOOD_BATCH: usize = 4;
/// Longest the flood may take.
const FLOOD_LIMIT: Duration = Duration::from_secs(45);
/// Clients and subscriptions of `subs-rss`.
pub const SUBS_CLIENTS: usize = 10;
pub const SUBS_PER_CLIENT: usize = 10_000;
/// Filters per SUBSCRIBE of `subs-rss` (dataloom's default `mqtt.max_filters_per_subscribe`).
pub const SUBS_BATCH: usize = 1_000;
/// A good client starts a CONNECT this often, whether or not the previous one is answered.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// At least this many good CONNECTs per measurement.
const PROBE_MIN: usize = 200;
/// A good CONNECT without CONNACK for this long counts as failed.
const PROBE_LIMIT: Duration = Duration::from_secs(10);

const MIB: f64 = 1024.0 * 1024.0;

/// What the good client saw: CONNECT latencies and failures.
struct Probe {
    lat: Histogram,
    errors: Vec<String>,
}

/// A good client that opens a connection every [`PROBE_EVERY`] (open loop: a stalled broker
/// gets more and more of them at once) and measures TCP connect to CONNACK, until stopped and
/// at least [`PROBE_MIN`] were started.
struct Prober {
    stop: Rc<Cell<bool>>,
    task: JoinHandle<Probe>,
}

impl Prober {
    fn start(addr: SocketAddr, tag: &'static str) -> Prober {
        let stop = Rc::new(Cell::new(false));
        let task = tokio::task::spawn_local(probe(addr, tag, stop.clone()));
        Prober { stop, task }
    }

    /// Stops starting CONNECTs (once [`PROBE_MIN`] were started), waits for those still open
    /// and sets `good_connect_p50_ms`, `_p99_ms`, `_max_ms`, `probe_connects`,
    /// `probe_failed`, with a note per kind of failure.
    async fn finish(self, o: &mut Outcome) {
        self.stop.set(true);
        let probe = match self.task.await {
            Ok(p) => p,
            Err(e) => Probe { lat: Histogram::default(), errors: vec![format!("good client task: {e}")] },
        };
        latency_metrics(o, &probe.lat, ["good_connect_p50_ms", "good_connect_p99_ms"]);
        if let Some(max) = probe.lat.quantile(1.0) {
            o.set("good_connect_max_ms", max as f64 / 1e6);
        }
        o.set("probe_connects", probe.lat.count() as f64);
        o.set("probe_failed", probe.errors.len() as f64);
        o.notes.extend(summarize_errors(&probe.errors));
    }
}

async fn probe(addr: SocketAddr, tag: &'static str, stop: Rc<Cell<bool>>) -> Probe {
    let mut set = JoinSet::new();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut started = 0;
    while started < PROBE_MIN || !stop.get() {
        tick.tick().await;
        let id = format!("{tag}-{started}");
        set.spawn_local(async move {
            let t = now_ns();
            match tokio::time::timeout(PROBE_LIMIT, Client::connect(addr, &id)).await {
                Ok(Ok(_)) => Ok(now_ns() - t),
                Ok(Err(e)) => Err(format!("good client: {e}")),
                Err(_) => Err(format!("good client: no CONNACK within {} s", PROBE_LIMIT.as_secs())),
            }
        });
        started += 1;
    }
    let mut p = Probe { lat: Histogram::default(), errors: Vec::new() };
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(ns)) => p.lat.record(ns),
            Ok(Err(e)) => p.errors.push(e),
            Err(e) => p.errors.push(format!("good client task: {e}")),
        }
    }
    p
}

/// Broker VmRSS now, in bytes (0 when unreadable).
fn rss_now(broker: &Running) -> u64 {
    broker.rss().map_or(0, |r| r.0)
}

/// The broker's highest RSS while it runs: sampled every 10 ms, and its VmHWM (the kernel's
/// high-water mark) when that rose after the start, so a peak between samples is not missed.
struct PeakRss {
    stop: Rc<Cell<bool>>,
    task: JoinHandle<u64>,
    hwm_before: u64,
    pid: u32,
}

impl PeakRss {
    fn start(broker: &Running) -> PeakRss {
        let (stop, pid) = (Rc::new(Cell::new(false)), broker.pid);
        let flag = stop.clone();
        let task = tokio::task::spawn_local(async move {
            let mut peak = 0;
            while !flag.get() {
                peak = peak.max(rss_bytes(pid).map_or(0, |r| r.0));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            peak
        });
        PeakRss { stop, task, hwm_before: broker.rss().map_or(0, |r| r.1), pid }
    }

    async fn finish(self) -> u64 {
        self.stop.set(true);
        let sampled = self.task.await.unwrap_or(0);
        let hwm = rss_bytes(self.pid).map_or(0, |r| r.1);
        if hwm > self.hwm_before { sampled.max(hwm) } else { sampled }
    }
}

/// `rss_growth_mib` (now minus `before`) and `peak_rss_growth_mib`.
fn growth_metrics(o: &mut Outcome, before: u64, now: u64, peak: u64) {
    o.set("rss_growth_mib", (now as f64 - before as f64) / MIB);
    o.set("peak_rss_growth_mib", (peak.max(now) as f64 - before as f64) / MIB);
}

/// How the hostile SUBSCRIBE ended.
enum SubEnd {
    Acked(Vec<u8>),
    Closed(io::Error),
    TimedOut,
}

/// The hostile SUBSCRIBE (packet id 1), encoded: [`HOSTILE_FILTERS`] filters `h/00000`...
fn hostile_frame() -> BytesMut {
    let filters = (0..HOSTILE_FILTERS).map(|i| format!("h/{i:05}"));
    let mut frame = BytesMut::new();
    encode(&subscribe_packet(1, filters, QoS::AtMostOnce), V, &mut frame);
    frame
}

/// `hostile-subscribe`: see the module header.
pub async fn hostile_subscribe(broker: &mut Running) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let frame = hostile_frame();
    let mut c = Client::connect_persistent(broker.addr, "hostile-subscribe").await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_now(broker);
    let peak = PeakRss::start(broker);
    let prober = Prober::start(broker.addr, "good");
    let t0 = now_ns();
    let exchange = async {
        c.stream.write_all(&frame).await?;
        c.read_suback(1, HOSTILE_FILTERS).await
    };
    let end = match tokio::time::timeout(SUBACK_LIMIT, exchange).await {
        Ok(Ok(codes)) => SubEnd::Acked(codes),
        Ok(Err(e)) => SubEnd::Closed(e),
        Err(_) => SubEnd::TimedOut,
    };
    let secs = (now_ns() - t0) as f64 / 1e9;
    prober.finish(&mut o).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    growth_metrics(&mut o, before, rss_now(broker), peak.finish().await);
    o.set("subscribe_bytes", frame.len() as f64);
    o.set("filters_sent", HOSTILE_FILTERS as f64);
    o.set("sub_time_s", secs);
    let granted = match &end {
        SubEnd::Acked(codes) => codes.iter().filter(|&&c| c < 0x80).count(),
        _ => 0,
    };
    o.set("filters_granted", granted as f64);
    o.notes.push(describe_end(&end, secs, broker.kind));
    if let Some(d) = broker.died() {
        o.notes.push(d);
    }
    Ok(o)
}

fn describe_end(end: &SubEnd, secs: f64, kind: Kind) -> String {
    match end {
        SubEnd::Acked(codes) => {
            let refused = codes.iter().filter(|&&c| c >= 0x80).count();
            format!("SUBACK after {secs:.3} s: {} granted, {refused} refused", codes.len() - refused)
        }
        // The shipped default: more filters than this in one SUBSCRIBE close the connection
        // (3.1.1 has no DISCONNECT from the server, so the client only sees the close).
        SubEnd::Closed(e) if kind == Kind::Dataloom => format!(
            "closed (limit) after {secs:.3} s without SUBACK ({e}): dataloom's default \
             mqtt.max_filters_per_subscribe = 1000"
        ),
        SubEnd::Closed(e) => format!("closed after {secs:.3} s without SUBACK: {e}"),
        SubEnd::TimedOut => format!("no SUBACK within {} s", SUBACK_LIMIT.as_secs()),
    }
}

/// `hostile-slow-sub`: see the module header.
pub async fn hostile_slow_sub(broker: &mut Running) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let topic = "slow/t";
    let mut slow = Client::connect_persistent(broker.addr, "slow-sub").await?;
    slow.subscribe(topic, QoS::AtMostOnce).await?;
    // From here on `slow` is never read.
    let publisher = Client::connect(broker.addr, "flood-pub").await?;
    let (rd, wr) = publisher.stream.into_split();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_now(broker);
    let peak = PeakRss::start(broker);
    let prober = Prober::start(broker.addr, "good");
    let tpl = Template::with_body(topic, QoS::AtMostOnce, false, 0, Body::Sized(FLOOD_PAYLOAD));
    let sent = Rc::new(Cell::new(0));
    let t0 = now_ns();
    let until = t0 + FLOOD_LIMIT.as_nanos() as u64;
    let flood = blast_n(wr, tpl, FLOOD_BATCH, FLOOD_MESSAGES, until, sent.clone()).await;
    let secs = (now_ns() - t0) as f64 / 1e9;
    // Let the broker settle with the flood taken, good clients still connecting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    prober.finish(&mut o).await;
    growth_metrics(&mut o, before, rss_now(broker), peak.finish().await);
    let mib = sent.get() as f64 * FLOOD_PAYLOAD as f64 / MIB;
    o.set("flood_mib", mib);
    o.set("flood_s", secs);
    o.set("flood_mib_per_s", mib / secs);
    match flood {
        Ok(_) if sent.get() < u64::from(FLOOD_MESSAGES) => o.notes.push(format!(
            "the broker took {} of {FLOOD_MESSAGES} messages within {} s",
            sent.get(),
            FLOOD_LIMIT.as_secs()
        )),
        Ok(_) => {}
        Err(e) => o.notes.push(format!("publisher: {e} after {} messages", sent.get())),
    }
    if let Some(d) = broker.died() {
        o.notes.push(d);
    }
    drop((slow, rd));
    Ok(o)
}

/// `subs-rss`: see the module header. Filters are `subs/{client}/{i}`, all distinct.
pub async fn subs_rss(broker: &mut Running) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let clients = connect_many(broker.addr, "subs", SUBS_CLIENTS, SUBS_CLIENTS, None).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_now(broker);
    let t0 = now_ns();
    let mut tasks = Vec::new();
    for (n, (c, _)) in clients.into_iter().enumerate() {
        tasks.push(tokio::task::spawn_local(subscribe_all(c, n)));
    }
    let (mut granted, mut refused, mut kept) = (0, 0, Vec::new());
    for t in tasks {
        let (c, g, r) = t.await??;
        (granted, refused) = (granted + g, refused + r);
        kept.push(c);
    }
    let secs = (now_ns() - t0) as f64 / 1e9;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let grown = rss_now(broker) as f64 - before as f64;
    o.set("subscriptions", granted as f64);
    o.set("subscribe_per_s", granted as f64 / secs);
    if granted > 0 {
        o.set("rss_per_1k_subs_kib", grown / granted as f64 * 1000.0 / 1024.0);
    }
    o.set("rss_growth_mib", grown / MIB);
    if refused > 0 {
        o.notes.push(format!("{refused} filters refused in SUBACKs"));
    }
    drop(kept);
    Ok(o)
}

/// Subscribes client `n` to its [`SUBS_PER_CLIENT`] filters, [`SUBS_BATCH`] per SUBSCRIBE;
/// returns the client with the filters granted and refused.
async fn subscribe_all(mut c: Client, n: usize) -> io::Result<(Client, usize, usize)> {
    let (mut granted, mut refused) = (0, 0);
    for (batch, first) in (0..SUBS_PER_CLIENT).step_by(SUBS_BATCH).enumerate() {
        let filters: Vec<String> =
            (first..(first + SUBS_BATCH).min(SUBS_PER_CLIENT)).map(|i| format!("subs/{n}/{i}")).collect();
        let codes = c.subscribe_many(batch as u16 + 1, &filters, QoS::AtMostOnce).await?;
        let ok = codes.iter().filter(|&&c| c < 0x80).count();
        (granted, refused) = (granted + ok, refused + codes.len() - ok);
    }
    Ok((c, granted, refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_subscribe_is_just_under_one_mib() {
        let frame = hostile_frame();
        assert_eq!(frame.len(), 1_000_006);
        assert!(frame.len() < 1024 * 1024);
    }
}
