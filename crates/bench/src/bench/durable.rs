//! Issue 4's scenarios: durable retained updates (`durable`: 100 QoS 1 publishers cycling over
//! their own retained topics, acknowledged updates/s and ack latency; dataloom on fjall with
//! `durability = "fsync"` and again with `"buffered"`) and restart with many retained topics
//! (`restart-1m`: publish, broker RSS, SIGTERM, restart on the same data directory, time to
//! ready, then a fresh subscriber to `#` counts them all).

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dataloom_codec::{Properties, Publish, QoS, encode_publish};

use super::brokers::{Kind, Opts, Running};
use super::burst::RetainedSync;
use super::client::{AckStats, Template, V, payload_sized, windowed};
use super::flow::join_publishers;
use super::scenario::{CpuMeter, Env, Outcome, Params, connect_many, memory_metrics};
use super::stats::now_ns;

/// Publishers of `durable`.
pub const PUBLISHERS: usize = 100;
/// Retained topics each `durable` publisher cycles over.
pub const TOPICS_PER_PUB: usize = 100;
/// In-flight window of every QoS 1 publisher here.
const WINDOW: u32 = 100;
/// Publishers of the retained topics in `restart-1m`.
const RESTART_PUBS: usize = 20;
/// Payload of the retained topics in `restart-1m`.
const RESTART_PAYLOAD: usize = 100;

const MIB: f64 = 1024.0 * 1024.0;

/// `durable`: on dataloom two brokers one after the other (fsync, then buffered), elsewhere one.
pub async fn durable(p: &Params, env: &Env<'_>, deadline_ns: u64) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    if env.kind() != Kind::Dataloom {
        let mut broker = env.start(&Opts::default()).await?;
        let r = updates(p, &mut broker, deadline_ns, &mut o, false).await;
        memory_metrics(&mut o, &broker);
        broker.stop().await;
        return r.map(|()| o);
    }
    for (name, buffered) in [("fsync", false), ("buffered", true)] {
        let opts = Opts {
            data_dir: Some(env.data_dir(name)?),
            toml: format!("[storage]\ndurability = \"{name}\"\n"),
            name: Some(format!("dataloom-{name}")),
            ..Opts::default()
        };
        let mut broker = env.start(&opts).await?;
        let r = updates(p, &mut broker, deadline_ns, &mut o, buffered).await;
        if !buffered {
            memory_metrics(&mut o, &broker);
        }
        if let Some(d) = broker.died() {
            o.notes.push(format!("{name}: {d}"));
        }
        broker.stop().await;
        r?;
    }
    Ok(o)
}

/// 100 publishers with 100 in flight each publish retained QoS 1 updates, each over its own
/// topics, for the window; then the last acks are awaited.
async fn updates(
    p: &Params,
    broker: &mut Running,
    deadline_ns: u64,
    o: &mut Outcome,
    buffered: bool,
) -> anyhow::Result<()> {
    let clients = connect_many(broker.addr, "dur", PUBLISHERS, 32, None).await?;
    let stats = Rc::new(RefCell::new(AckStats::default()));
    let cpu = CpuMeter::start(broker);
    let t0 = now_ns();
    let until = t0 + p.duration.as_nanos() as u64;
    let sent: Vec<Rc<Cell<u64>>> = (0..PUBLISHERS).map(|_| Rc::new(Cell::new(0))).collect();
    let mut handles = Vec::new();
    for (i, (c, _)) in clients.into_iter().enumerate() {
        let tpls: Vec<Template> = (0..TOPICS_PER_PUB)
            .map(|k| Template::new(&format!("dur/{i}/{k}"), QoS::AtLeastOnce, true, i as u32))
            .collect();
        let frame = move |out: &mut BytesMut, seq: u32, ts, pkid| {
            tpls[seq as usize % TOPICS_PER_PUB].put(out, seq, ts, pkid);
        };
        handles.push(tokio::task::spawn_local(windowed(
            c,
            QoS::AtLeastOnce,
            frame,
            WINDOW,
            move |_| now_ns() >= until,
            sent[i].clone(),
            Some(stats.clone()),
        )));
    }
    tokio::time::sleep(Duration::from_nanos(until.saturating_sub(now_ns()))).await;
    let in_window = stats.borrow().acked;
    let kept = join_publishers(handles, deadline_ns, o).await;
    let mut tmp = Outcome::default();
    cpu.finish(broker, &mut tmp);
    let st = stats.borrow();
    let total_sent: u64 = sent.iter().map(|s| s.get()).sum();
    let secs = st.last_ns.saturating_sub(t0) as f64 / 1e9;
    let (rate_key, p50_key, p99_key) = if buffered {
        ("buffered_acked_per_s", "buffered_ack_p50_ms", "buffered_ack_p99_ms")
    } else {
        ("acked_per_s", "ack_p50_ms", "ack_p99_ms")
    };
    if secs > 0.0 {
        o.set(rate_key, st.acked as f64 / secs);
    }
    if let (Some(p50), Some(p99)) = (st.latency.quantile(0.5), st.latency.quantile(0.99)) {
        o.set(p50_key, p50 as f64 / 1e6);
        o.set(p99_key, p99 as f64 / 1e6);
    }
    if !buffered {
        o.set("acked_in_window_per_s", in_window as f64 / p.duration.as_secs_f64());
        o.metrics.extend(tmp.metrics);
    }
    if st.acked != total_sent {
        o.notes.push(format!(
            "{}: {} of {} updates acknowledged",
            if buffered { "buffered" } else { "main" },
            st.acked,
            total_sent
        ));
    }
    drop(kept);
    Ok(())
}

/// Bytes of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// `restart-1m`: `p.restart` retained topics `r/{pub}/{seq}` of 100 bytes from 20 QoS 1
/// publishers; broker RSS; on dataloom SIGTERM and a restart on the same data directory (time
/// to the listening line and to the first CONNACK); then a fresh subscriber to `#` counts them.
pub async fn restart(p: &Params, env: &Env<'_>, deadline_ns: u64) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let dataloom = env.kind() == Kind::Dataloom;
    let opts = Opts {
        data_dir: if dataloom { Some(env.data_dir("restart")?) } else { None },
        start_timeout: Some(Duration::from_secs(60)),
        ..Opts::default()
    };
    let mut broker = env.start(&opts).await?;
    let n = p.restart;
    let per_pub = n.div_ceil(RESTART_PUBS);
    let clients = connect_many(broker.addr, "fill", RESTART_PUBS, 32, None).await?;
    let t0 = now_ns();
    let sent: Vec<Rc<Cell<u64>>> = (0..RESTART_PUBS).map(|_| Rc::new(Cell::new(0))).collect();
    let mut handles = Vec::new();
    let mut total = 0u64;
    for (i, (c, _)) in clients.into_iter().enumerate() {
        let count = per_pub.min(n.saturating_sub(i * per_pub)) as u32;
        total += u64::from(count);
        let frame = move |out: &mut BytesMut, seq: u32, ts: u64, pkid: u16| {
            let msg = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: Bytes::from(format!("r/{i}/{seq}")),
                pkid,
                properties: Properties::default(),
                payload: payload_sized(i as u32, seq, ts, RESTART_PAYLOAD),
            };
            encode_publish(&msg, V, out);
        };
        handles.push(tokio::task::spawn_local(windowed(
            c,
            QoS::AtLeastOnce,
            frame,
            WINDOW,
            move |seq| seq >= count,
            sent[i].clone(),
            None,
        )));
    }
    let kept = join_publishers(handles, deadline_ns, &mut o).await;
    let acked: u64 = sent.iter().map(|s| s.get()).sum();
    if kept.len() != RESTART_PUBS {
        anyhow::bail!("retained publishing failed ({acked} of {total} sent): {}", o.notes.join("; "));
    }
    o.set("fill_per_s", total as f64 / ((now_ns() - t0) as f64 / 1e9));
    drop(kept);
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Some((rss, _)) = broker.rss() {
        o.set("state_rss_mib", rss as f64 / MIB);
    }
    if let Some(d) = &opts.data_dir {
        o.set("disk_mib", dir_size(d) as f64 / MIB);
        let (took, status) = broker.terminate(Duration::from_secs(60)).await?;
        o.set("shutdown_s", took.as_secs_f64());
        if !status.success() {
            o.notes.push(format!("SIGTERM: broker exited with {status}"));
        }
        let again = Opts { name: Some("dataloom-restarted".into()), ..opts.clone() };
        broker = env.start(&again).await?;
        if let Some(l) = broker.listening_after {
            o.set("restart_listen_s", l.as_secs_f64());
        }
        o.set("restart_ready_s", broker.ready_after.as_secs_f64());
        if let Some((rss, _)) = broker.rss() {
            o.set("restart_rss_mib", rss as f64 / MIB);
        }
    }
    let r = sync_all(&mut broker, total, p.state_qos, deadline_ns, &mut o).await;
    memory_metrics(&mut o, &broker);
    broker.stop().await;
    r.map(|()| o)
}

/// A fresh subscriber to `#` counts the retained messages of the `RESTART_PUBS` publishers.
/// Time runs from sending SUBSCRIBE to the last message received.
async fn sync_all(
    broker: &mut Running,
    n: u64,
    qos: QoS,
    deadline_ns: u64,
    o: &mut Outcome,
) -> anyhow::Result<()> {
    let sync = RetainedSync { client_id: "sync-sub", qos, n, publishers: RESTART_PUBS };
    sync.run(broker, Duration::from_secs(3), deadline_ns, o).await
}
