//! One-shot scenarios: mesh (N clients on `mesh/#` each publish one message, N*N deliveries),
//! idle connections (broker memory per connection, connect latency) and state sync (retained
//! topics delivered to a fresh subscriber of `#`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dataloom_codec::{Properties, Publish, QoS, encode_publish};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::brokers::Running;
use super::client::{Client, RxShared, Template, V, payload, receive, windowed};
use super::flow::summarize_errors;
use super::scenario::{
    CpuMeter, Outcome, Params, connect_many, delivery_metrics, drain, latency_metrics, new_shared,
    start_receivers,
};
use super::stats::{Histogram, Tracker, now_ns};

/// Mesh: time from the first publish to the last of the N*N deliveries.
pub async fn mesh(n: usize, broker: &mut Running, deadline_ns: u64) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let clients = connect_many(broker.addr, "mesh", n, 64, Some(("mesh/#", QoS::AtMostOnce))).await?;
    let shared = new_shared();
    let mut frames = Vec::new();
    let mut writers = Vec::new();
    let mut receivers = Vec::new();
    let mut trackers = Vec::new();
    for (i, (c, _)) in clients.into_iter().enumerate() {
        let (rd, wr) = c.stream.into_split();
        writers.push(wr);
        let t = Rc::new(RefCell::new(Tracker::flat(1)));
        trackers.push(t.clone());
        receivers.push(tokio::task::spawn_local(receive(
            rd,
            None::<tokio::io::Sink>,
            c.rbuf,
            t,
            shared.clone(),
        )));
        let mut f = BytesMut::new();
        Template::new(&format!("mesh/{i}"), QoS::AtMostOnce, false, i as u32).put(&mut f, 0, 0, 0);
        frames.push(f);
    }
    let cpu = CpuMeter::start(broker);
    let t0 = now_ns();
    for (f, w) in frames.iter_mut().zip(writers.iter_mut()) {
        let ts = now_ns().to_le_bytes();
        let at = f.len() - super::client::PAYLOAD_LEN + 8;
        f[at..at + 8].copy_from_slice(&ts);
        w.write_all(f).await?;
    }
    let expected = (n * n) as u64;
    let drained =
        drain(&shared, broker, |sh| sh.received >= expected, Duration::from_secs(3), deadline_ns).await;
    cpu.finish(broker, &mut o);
    receivers.iter().for_each(JoinHandle::abort);
    let sh = shared.borrow();
    let secs = sh.last_rx_ns.saturating_sub(t0) as f64 / 1e9;
    o.set("time_s", secs);
    if secs > 0.0 {
        o.set("throughput", sh.received as f64 / secs);
    }
    delivery_metrics(&mut o, &sh.latency, &trackers, expected, drained);
    o.notes.extend(summarize_errors(&sh.errors));
    drop(writers);
    Ok(o)
}

/// Idle connections: broker VmRSS before and after `p.idle` clients connected (32 connecting
/// at a time), and the connect latency (TCP connect to CONNACK).
pub async fn idle(p: &Params, broker: &mut Running) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = broker.rss().map(|r| r.0).unwrap_or(0);
    let cpu = CpuMeter::start(broker);
    let t0 = now_ns();
    let clients = connect_many(broker.addr, "idle", p.idle, 32, None).await?;
    let connect_secs = (now_ns() - t0) as f64 / 1e9;
    let mut lat = Histogram::default();
    let streams: Vec<_> = clients
        .into_iter()
        .map(|(c, l)| {
            lat.record(l);
            c.stream
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = broker.rss().map(|r| r.0).unwrap_or(0);
    cpu.finish(broker, &mut o);
    if let Some(d) = broker.died() {
        o.notes.push(d);
    }
    o.set("connections", streams.len() as f64);
    o.set("rss_per_conn_kib", after.saturating_sub(before) as f64 / streams.len() as f64 / 1024.0);
    o.set("connects_per_s", streams.len() as f64 / connect_secs);
    latency_metrics(&mut o, &lat, ["connect_p50_ms", "connect_p99_ms"]);
    drop(streams);
    Ok(o)
}

/// State sync: one client publishes `p.state` retained messages on `state/{i}` (QoS 1, 100 in
/// flight, all acked), then a fresh client subscribes to `#` and counts what it receives.
/// Time runs from sending SUBSCRIBE to the last retained message received.
pub async fn state(p: &Params, broker: &mut Running, deadline_ns: u64) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let n = p.state as u32;
    let publisher = Client::connect(broker.addr, "state-pub").await?;
    let frame = |out: &mut BytesMut, seq: u32, ts: u64, pkid: u16| {
        let msg = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: Bytes::from(format!("state/{seq}")),
            pkid,
            properties: Properties::default(),
            payload: payload(0, seq, ts),
        };
        encode_publish(&msg, V, out);
    };
    let left = Duration::from_nanos(deadline_ns.saturating_sub(now_ns()));
    let sent = Rc::new(Cell::new(0));
    let publishing =
        windowed(publisher, QoS::AtLeastOnce, frame, 100, move |seq| seq >= n, sent.clone(), None);
    let publisher = match tokio::time::timeout(left, publishing).await {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("retained publishing not acked before the time limit ({} sent)", sent.get()),
    };
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sync = RetainedSync { client_id: "state-sub", qos: p.state_qos, n: u64::from(n), publishers: 1 };
    sync.run(broker, Duration::from_secs(2), deadline_ns, &mut o).await?;
    Ok(o)
}

/// A fresh client subscribes to `#` and counts the retained messages it receives: `n` of them,
/// from `publishers` publishers (ids `0..publishers` in the payloads). Sets `time_s` (from
/// sending SUBSCRIBE to the last message received), `count`, `throughput` and the loss
/// metrics; `grace` is how long deliveries may pause before the count is final.
pub struct RetainedSync<'a> {
    pub client_id: &'a str,
    pub qos: QoS,
    pub n: u64,
    pub publishers: usize,
}

impl RetainedSync<'_> {
    pub async fn run(
        &self,
        broker: &mut Running,
        grace: Duration,
        deadline_ns: u64,
        o: &mut Outcome,
    ) -> anyhow::Result<()> {
        let mut sub = Client::connect(broker.addr, self.client_id).await?;
        let shared = new_shared();
        let cpu = CpuMeter::start(broker);
        let t0 = now_ns();
        sub.send_subscribe("#", self.qos).await?;
        let (receivers, trackers) = start_receivers(vec![sub], || Tracker::new(self.publishers), &shared);
        let done = |_: &RxShared| trackers[0].borrow().unique >= self.n;
        let drained = drain(&shared, broker, done, grace, deadline_ns).await;
        cpu.finish(broker, o);
        receivers.iter().for_each(JoinHandle::abort);
        let sh = shared.borrow();
        let secs = sh.last_rx_ns.saturating_sub(t0) as f64 / 1e9;
        o.set("time_s", secs);
        o.set("count", trackers[0].borrow().unique as f64);
        if secs > 0.0 {
            o.set("throughput", sh.received as f64 / secs);
        }
        // Retained messages are old by design: their latency is not measured.
        delivery_metrics(o, &Histogram::default(), &trackers, self.n, drained);
        o.notes.extend(summarize_errors(&sh.errors));
        Ok(())
    }
}
