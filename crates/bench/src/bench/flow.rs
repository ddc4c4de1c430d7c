//! Sustained-flow scenarios: fan-in (QoS 0, and QoS 1 and QoS 2 with 100 in flight per
//! publisher), fan-out, and the fixed-rate test. Publishers run open loop for the measurement
//! window (QoS 0 as fast as the socket takes it, QoS 1 and 2 limited by the in-flight window). After the window the
//! run waits for deliveries still on their way (at most 3 s at QoS 0). Throughput is all
//! deliveries divided by the time from the first publish to the last delivery; the rate within
//! the window alone is reported too.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use dataloom_codec::QoS;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use super::brokers::Running;
use super::client::{Body, Template, blast, receive, windowed};
use super::scenario::{
    CpuMeter, Outcome, Params, connect_many, delivery_metrics, drain, new_shared, qos2_metrics,
    start_receivers,
};
use super::stats::{Tracker, now_ns};

/// Frames per write of a QoS 0 publisher.
const BATCH: usize = 64;
/// In-flight window of a QoS 1 or 2 publisher.
const WINDOW: u32 = 100;
/// A flow ends when nothing was delivered for this long after the publishers stopped.
const STALL: Duration = Duration::from_secs(1);
/// Longest wait for QoS 0 deliveries still queued after the window (what is not delivered by
/// then counts as lost, with a note).
const DRAIN_QOS0: Duration = Duration::from_secs(3);

/// Counts identical error messages: "3 x subscriber: broker closed the connection".
pub fn summarize_errors(errors: &[String]) -> Vec<String> {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for e in errors {
        *m.entry(e.as_str()).or_default() += 1;
    }
    m.into_iter().map(|(e, n)| if n == 1 { e.to_string() } else { format!("{n} x {e}") }).collect()
}

/// Waits for publisher tasks until `deadline_ns`; their errors become notes. Returns what they
/// return (connections to keep open until the end of the run).
pub async fn join_publishers<T>(
    handles: Vec<JoinHandle<std::io::Result<T>>>,
    deadline_ns: u64,
    o: &mut Outcome,
) -> Vec<T> {
    let mut kept = Vec::new();
    let mut errors = Vec::new();
    for h in handles {
        let left = Duration::from_nanos(deadline_ns.saturating_sub(now_ns()));
        let abort = h.abort_handle();
        match tokio::time::timeout(left, h).await {
            Ok(Ok(Ok(t))) => kept.push(t),
            Ok(Ok(Err(e))) => errors.push(format!("publisher: {e}")),
            Ok(Err(e)) => errors.push(format!("publisher task: {e}")),
            Err(_) => {
                abort.abort();
                errors.push("publisher: blocked until the time limit".to_string());
            }
        }
    }
    o.notes.extend(summarize_errors(&errors));
    kept
}

/// Topics, client ids and payload of a flow.
#[derive(Debug, Clone, Copy)]
pub struct FlowOpts<'a> {
    /// Publishers publish to `{topic}/{i}`, subscribers subscribe to `{topic}/#`.
    pub topic: &'a str,
    /// Client ids are `{clients}sub-{i}` and `{clients}pub-{i}`.
    pub clients: &'a str,
    pub body: Body,
}

impl Default for FlowOpts<'_> {
    fn default() -> Self {
        FlowOpts { topic: "bench", clients: "", body: Body::Binary }
    }
}

/// Fan-in: 10 publishers on `bench/{i}` -> 1 subscriber on `bench/#`, at `qos`.
pub async fn fan_in(p: &Params, broker: &mut Running, qos: QoS, deadline_ns: u64) -> anyhow::Result<Outcome> {
    flow(p, broker, 10, 1, qos, deadline_ns, FlowOpts::default()).await
}

/// [`fan_in`] on other topics, client ids or payloads.
pub async fn fan_in_with(
    p: &Params,
    broker: &mut Running,
    qos: QoS,
    deadline_ns: u64,
    opts: FlowOpts<'_>,
) -> anyhow::Result<Outcome> {
    flow(p, broker, 10, 1, qos, deadline_ns, opts).await
}

/// Fan-out: 1 publisher -> 100 subscribers on `bench/#`, QoS 0.
pub async fn fan_out(p: &Params, broker: &mut Running, deadline_ns: u64) -> anyhow::Result<Outcome> {
    flow(p, broker, 1, 100, QoS::AtMostOnce, deadline_ns, FlowOpts::default()).await
}

async fn flow(
    p: &Params,
    broker: &mut Running,
    pubs: usize,
    subs: usize,
    qos: QoS,
    deadline_ns: u64,
    opts: FlowOpts<'_>,
) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let addr = broker.addr;
    let filter = format!("{}/#", opts.topic);
    let sub_prefix = format!("{}sub", opts.clients);
    let sub_clients = connect_many(addr, &sub_prefix, subs, 32, Some((&filter, qos))).await?;
    let shared = new_shared();
    let (receivers, trackers) =
        start_receivers(sub_clients.into_iter().map(|(c, _)| c).collect(), || Tracker::new(pubs), &shared);
    let pub_clients = connect_many(addr, &format!("{}pub", opts.clients), pubs, 32, None).await?;
    let cpu = CpuMeter::start(broker);
    let t0 = now_ns();
    let until = t0 + p.duration.as_nanos() as u64;
    let sent: Vec<Rc<Cell<u64>>> = (0..pubs).map(|_| Rc::new(Cell::new(0))).collect();
    let mut read_halves = Vec::new();
    let mut keep_qos0 = Vec::new();
    let mut handles_acked = Vec::new();
    for (i, (c, _)) in pub_clients.into_iter().enumerate() {
        let tpl = Template::with_body(&format!("{}/{i}", opts.topic), qos, false, i as u32, opts.body);
        let sent = sent[i].clone();
        if qos == QoS::AtMostOnce {
            let (rd, wr) = c.stream.into_split();
            read_halves.push(rd);
            keep_qos0.push(tokio::task::spawn_local(blast(wr, tpl, BATCH, until, sent)));
        } else {
            let frame = move |out: &mut BytesMut, seq, ts, pkid| tpl.put(out, seq, ts, pkid);
            handles_acked.push(tokio::task::spawn_local(windowed(
                c,
                qos,
                frame,
                WINDOW,
                move |_| now_ns() >= until,
                sent,
                None,
            )));
        }
    }
    tokio::time::sleep(Duration::from_nanos(until.saturating_sub(now_ns()))).await;
    let (in_window, window_end) = (shared.borrow().received, now_ns());
    let _kept0 = join_publishers(keep_qos0, deadline_ns, &mut o).await;
    let _kept1 = join_publishers(handles_acked, deadline_ns, &mut o).await;
    let total_sent: u64 = sent.iter().map(|s| s.get()).sum();
    let expected = total_sent * subs as u64;
    // QoS 1 and 2 must all arrive; QoS 0 a broker may drop, or queue for longer than is worth waiting.
    let drain_limit = if qos == QoS::AtMostOnce { DRAIN_QOS0 } else { p.run_timeout };
    let drain_deadline = deadline_ns.min(now_ns() + drain_limit.as_nanos() as u64);
    let drained = drain(&shared, broker, |sh| sh.received >= expected, STALL, drain_deadline).await;
    cpu.finish(broker, &mut o);
    receivers.iter().for_each(JoinHandle::abort);
    let sh = shared.borrow();
    let secs = sh.last_rx_ns.saturating_sub(t0) as f64 / 1e9;
    if secs > 0.0 {
        o.set("throughput", sh.received as f64 / secs);
    }
    o.set("window_throughput", in_window as f64 / ((window_end - t0) as f64 / 1e9));
    o.set("published_per_s", total_sent as f64 / p.duration.as_secs_f64());
    delivery_metrics(&mut o, &sh.latency, &trackers, expected, drained);
    if qos == QoS::ExactlyOnce {
        qos2_metrics(&mut o, &sh);
    }
    o.notes.extend(summarize_errors(&sh.errors));
    Ok(o)
}

/// Fixed rate: 20 clients publish `rate` msg/s each to `rate/{i % 4}` and all subscribe to
/// `rate/#`. One pacer task writes every client's due messages each millisecond, the clients'
/// send times spread evenly over the period.
pub async fn fixed_rate(p: &Params, broker: &mut Running, deadline_ns: u64) -> anyhow::Result<Outcome> {
    const CLIENTS: usize = 20;
    let mut o = Outcome::default();
    let clients = connect_many(broker.addr, "rate", CLIENTS, 32, Some(("rate/#", QoS::AtMostOnce))).await?;
    let shared = new_shared();
    let mut writers = Vec::new();
    let mut receivers = Vec::new();
    let mut trackers = Vec::new();
    for (c, _) in clients {
        let (rd, wr) = c.stream.into_split();
        writers.push(wr);
        let t = Rc::new(std::cell::RefCell::new(Tracker::new(CLIENTS)));
        trackers.push(t.clone());
        receivers.push(tokio::task::spawn_local(receive(
            rd,
            None::<tokio::io::Sink>,
            c.rbuf,
            t,
            shared.clone(),
        )));
    }
    let cpu = CpuMeter::start(broker);
    let t0 = now_ns();
    let window = p.duration.as_nanos() as u64;
    let period = 1_000_000_000 / p.rate;
    let total_per_client = p.duration.as_secs_f64() * p.rate as f64;
    let tpls: Vec<Template> = (0..CLIENTS)
        .map(|i| Template::new(&format!("rate/{}", i % 4), QoS::AtMostOnce, false, i as u32))
        .collect();
    let mut sent = [0u64; CLIENTS];
    let mut out = BytesMut::with_capacity(4096);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut late_writes = 0u64;
    'pace: loop {
        tick.tick().await;
        let elapsed = now_ns() - t0;
        for i in 0..CLIENTS {
            let offset = period * i as u64 / CLIENTS as u64;
            let due = (((elapsed + offset) / period) as f64).min(total_per_client) as u64;
            if due <= sent[i] {
                continue;
            }
            let ts = now_ns();
            for seq in sent[i]..due {
                tpls[i].put(&mut out, seq as u32, ts, 0);
            }
            late_writes += due - sent[i] - 1;
            sent[i] = due;
            let write = tokio::time::timeout(Duration::from_secs(5), writers[i].write_all(&out));
            if !matches!(write.await, Ok(Ok(()))) {
                o.notes.push(format!("publisher {i}: write failed or blocked for 5 s"));
                break 'pace;
            }
            out.clear();
        }
        if elapsed >= window + period || now_ns() > deadline_ns {
            break;
        }
    }
    let total_sent: u64 = sent.iter().sum();
    let expected = total_sent * CLIENTS as u64;
    let drained = drain(&shared, broker, |sh| sh.received >= expected, STALL, deadline_ns).await;
    cpu.finish(broker, &mut o);
    receivers.iter().for_each(JoinHandle::abort);
    let sh = shared.borrow();
    let secs = sh.last_rx_ns.saturating_sub(t0) as f64 / 1e9;
    if secs > 0.0 {
        o.set("throughput", sh.received as f64 / secs);
    }
    o.set("published_per_s", total_sent as f64 / p.duration.as_secs_f64());
    o.set("late_sends", late_writes as f64);
    delivery_metrics(&mut o, &sh.latency, &trackers, expected, drained);
    o.notes.extend(summarize_errors(&sh.errors));
    drop(writers);
    Ok(o)
}
