//! Issue 17's scenario (`state-api`, dataloom only: the other brokers have no such
//! interfaces). One broker on fjall with `durability = "fsync"` and `[[history]]` on `hist/#`:
//! - `p.state` retained topics (`st/N`, 64 B) read over HTTP (`GET /v1/state`, pages of
//!   1,000) and then by a fresh MQTT subscriber to `st/#`: the time to read them all;
//! - retained writes for `p.duration` from [`WRITERS`] clients each, one at a time per client:
//!   `PUT /v1/state/...` (200 once fsync'ed) and MQTT QoS 1 (PUBACK once fsync'ed);
//! - `p.state` history entries replayed to a fresh MQTT 5 subscriber (`replay` = `last:N`):
//!   the time to the first and to the last replayed message.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use dataloom_codec::{
    Connect, Packet, Properties, ProtocolVersion, Publish, QoS, RetainHandling, Subscribe, SubscribeFilter,
    encode_publish,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::brokers::{Opts, Running};
use super::client::{AckStats, Client, V, next_packet_as, payload_sized, send_as, windowed};
use super::flow::join_publishers;
use super::scenario::{Env, Outcome, Params, memory_metrics};
use super::stats::now_ns;

/// Concurrent writers of the write-rate phases.
pub const WRITERS: usize = 8;
/// Publishers that load the retained topics and the history.
const LOADERS: usize = 10;
/// The replaying subscriber speaks MQTT 5 (the `replay` User Property).
const V5: ProtocolVersion = ProtocolVersion::V5;
/// Items per `GET /v1/state` page.
const PAGE: usize = 1000;

/// Runs the scenario on its own broker.
pub async fn state_api(p: &Params, env: &Env<'_>, deadline_ns: u64) -> anyhow::Result<Outcome> {
    let opts = Opts {
        data_dir: Some(env.data_dir("state-api")?),
        toml: "[storage]\ndurability = \"fsync\"\n\n[[history]]\nfilter = \"hist/#\"\nkeep = 10000000\n"
            .into(),
        name: Some("dataloom-state-api".into()),
        ..Opts::default()
    };
    let broker = env.start(&opts).await?;
    let mut o = Outcome::default();
    let r = measure(p, &broker, deadline_ns, &mut o).await;
    memory_metrics(&mut o, &broker);
    broker.stop().await;
    r.map(|()| o)
}

async fn measure(p: &Params, broker: &Running, deadline_ns: u64, o: &mut Outcome) -> anyhow::Result<()> {
    let http = broker.http_addr.ok_or_else(|| anyhow::anyhow!("dataloom printed no HTTP address"))?;
    let n = p.state;
    load(broker.addr, "st", n, true, deadline_ns, o).await?;

    let t0 = now_ns();
    let read = read_pages(http, n).await?;
    o.set("http_read_s", secs_since(t0));
    o.set("http_items", read as f64);
    let t0 = now_ns();
    let got = subscriber_count(broker.addr, n).await?;
    o.set("mqtt_read_s", secs_since(t0));
    o.set("mqtt_items", got as f64);

    o.set("put_per_s", put_rate(http, p).await?);
    let qos1 = qos1_rate(broker.addr, p, deadline_ns, o).await?;
    o.set("qos1_per_s", qos1);

    load(broker.addr, "hist", n, false, deadline_ns, o).await?;
    let (first, last, count) = replay(broker.addr, n).await?;
    o.set("replay_first_ms", first * 1e3);
    o.set("replay_last_s", last);
    o.set("replay_items", count as f64);
    Ok(())
}

fn secs_since(t0: u64) -> f64 {
    now_ns().saturating_sub(t0) as f64 / 1e9
}

/// Publishes `n` messages (QoS 1, 64 B) from [`LOADERS`] clients, 100 in flight each: with
/// `retain`, one per topic `{prefix}/N`; otherwise all of loader `i` to `{prefix}/i`.
async fn load(
    addr: SocketAddr,
    prefix: &'static str,
    n: usize,
    retain: bool,
    deadline_ns: u64,
    o: &mut Outcome,
) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for i in 0..LOADERS {
        let c = Client::connect(addr, &format!("load-{prefix}-{i}")).await?;
        let topic_of = move |seq: u32| {
            let k = i + seq as usize * LOADERS;
            if retain { format!("{prefix}/{k}") } else { format!("{prefix}/{i}") }
        };
        let frame = move |out: &mut BytesMut, seq: u32, ts: u64, pkid: u16| {
            let p = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain,
                topic: Bytes::from(topic_of(seq)),
                pkid,
                properties: Properties::default(),
                payload: payload_sized(i as u32, seq, ts, 64),
            };
            encode_publish(&p, V, out);
        };
        let done = move |seq: u32| i + seq as usize * LOADERS >= n;
        let stats = Some(Rc::new(RefCell::new(AckStats::default())));
        handles.push(tokio::task::spawn_local(windowed(
            c,
            QoS::AtLeastOnce,
            frame,
            100,
            done,
            Rc::new(Cell::new(0)),
            stats,
        )));
    }
    join_publishers(handles, deadline_ns, o).await;
    Ok(())
}

/// A minimal HTTP/1.1 client on one kept-alive connection.
struct Http {
    s: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> anyhow::Result<Http> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Http { s, host: addr.to_string(), buf: Vec::with_capacity(64 * 1024) })
    }

    /// Sends one request and returns the status and the body (the answer has a Content-Length).
    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.s.write_all(&req).await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?.to_owned();
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let len = head
                    .lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| anyhow::anyhow!("HTTP answer without Content-Length"))?;
                while self.buf.len() < end + 4 + len {
                    self.fill().await?;
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Ok((status, body));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.s.read_buf(&mut self.buf).await? == 0 {
            anyhow::bail!("the broker closed the HTTP connection");
        }
        Ok(())
    }
}

/// Reads every state under `st/#` a page at a time; returns how many items came.
async fn read_pages(http: SocketAddr, n: usize) -> anyhow::Result<usize> {
    let mut c = Http::connect(http).await?;
    let mut count = 0;
    let mut cursor: Option<String> = None;
    for _ in 0..=n / PAGE + 1 {
        let mut path = format!("/v1/state?filter=st/%23&limit={PAGE}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = c.request("GET", &path, b"").await?;
        anyhow::ensure!(status == 200, "GET {path}: {status}");
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        count += v["items"].as_array().map_or(0, Vec::len);
        match v["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(count),
        }
    }
    Ok(count)
}

/// A fresh subscriber to `st/#` counts the retained messages until `n` came.
async fn subscriber_count(addr: SocketAddr, n: usize) -> anyhow::Result<usize> {
    let mut c = Client::connect(addr, "state-sub").await?;
    c.subscribe("st/#", QoS::AtMostOnce).await?;
    let mut got = 0;
    while got < n {
        if let Packet::Publish(_) = c.next_packet().await? {
            got += 1;
        }
    }
    Ok(got)
}

/// `PUT /v1/state/put/W/K` from [`WRITERS`] connections for `p.duration`; answers per second.
async fn put_rate(http: SocketAddr, p: &Params) -> anyhow::Result<f64> {
    let until = now_ns() + p.duration.as_nanos() as u64;
    let t0 = now_ns();
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let mut c = Http::connect(http).await?;
        handles.push(tokio::task::spawn_local(async move {
            let mut done = 0u64;
            while now_ns() < until {
                let path = format!("/v1/state/put/{w}/{}", done % 100);
                let (status, _) = c.request("PUT", &path, &[b'x'; 64]).await?;
                anyhow::ensure!(status == 200, "PUT {path}: {status}");
                done += 1;
            }
            Ok(done)
        }));
    }
    let mut total = 0;
    for h in handles {
        total += h.await??;
    }
    Ok(total as f64 / secs_since(t0))
}

/// Retained QoS 1 publishes from [`WRITERS`] clients, one in flight each, for `p.duration`;
/// acknowledged per second.
async fn qos1_rate(addr: SocketAddr, p: &Params, deadline_ns: u64, o: &mut Outcome) -> anyhow::Result<f64> {
    let until = now_ns() + p.duration.as_nanos() as u64;
    let stats = Rc::new(RefCell::new(AckStats::default()));
    let t0 = now_ns();
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let c = Client::connect(addr, &format!("qos1-{w}")).await?;
        let frame = move |out: &mut BytesMut, seq: u32, ts: u64, pkid: u16| {
            let p = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: Bytes::from(format!("mqtt/{w}/{}", seq % 100)),
                pkid,
                properties: Properties::default(),
                payload: payload_sized(w as u32, seq, ts, 64),
            };
            encode_publish(&p, V, out);
        };
        let (sent, acks) = (Rc::new(Cell::new(0)), Some(stats.clone()));
        handles.push(tokio::task::spawn_local(windowed(
            c,
            QoS::AtLeastOnce,
            frame,
            1,
            move |_| now_ns() >= until,
            sent,
            acks,
        )));
    }
    join_publishers(handles, deadline_ns, o).await;
    let st = stats.borrow();
    Ok(st.acked as f64 / (st.last_ns.saturating_sub(t0) as f64 / 1e9).max(1e-9))
}

/// A fresh MQTT 5 subscriber replays the last `n` entries of `hist/#`; returns the seconds to
/// the first and the last replayed message, and how many came.
async fn replay(addr: SocketAddr, n: usize) -> anyhow::Result<(f64, f64, usize)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 600,
        client_id: "replayer".into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    };
    send_as(&mut s, &Packet::Connect(Box::new(connect)), V5).await?;
    match next_packet_as(&mut s, &mut rbuf, V5).await? {
        Packet::ConnAck(a) if a.code == 0 => {}
        other => anyhow::bail!("expected CONNACK, got {}", other.name()),
    }
    let mut properties = Properties::default();
    properties.user_properties.push(("replay".into(), format!("last:{n}")));
    let filter = SubscribeFilter {
        filter: "hist/#".into(),
        qos: QoS::AtMostOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: RetainHandling::Never,
    };
    let t0 = now_ns();
    send_as(&mut s, &Packet::Subscribe(Subscribe { pkid: 1, filters: vec![filter], properties }), V5).await?;
    let (mut first, mut got) = (None, 0);
    while got < n {
        if let Packet::Publish(_) = next_packet_as(&mut s, &mut rbuf, V5).await? {
            first.get_or_insert_with(|| secs_since(t0));
            got += 1;
        }
    }
    Ok((first.unwrap_or(0.0), secs_since(t0), got))
}
