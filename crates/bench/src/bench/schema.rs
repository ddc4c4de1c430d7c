//! Issue 5's scenario (`schema`, dataloom only): fan-in QoS 1 (the shape of `fanin-qos1`) with
//! JSON payloads on the topics `sjson/N`, five times without a schema and five times
//! governed by a typical 6-field object schema on `sjson/+`, alternating (the schema is registered before
//! and removed after each governed phase); then `p.schemas` schemas registered on unrelated
//! filters and the plain fan-in QoS 1 (binary payloads) measured again. One broker (memory
//! storage, like `fanin-qos1`); each phase uses its own client ids.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dataloom_codec::{Packet, Properties, Publish, QoS, encode_publish};

use super::brokers::{Opts, Running};
use super::client::{Body, Client, V, windowed};
use super::flow::{FlowOpts, fan_in_with};
use super::scenario::{Env, Outcome, Params, memory_metrics};
use super::stats::now_ns;

/// The schema of the JSON payloads (`client::json_payload`): six required fields, nothing else.
pub const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "sensor reading",
  "type": "object",
  "required": ["seq", "ts", "device", "temp", "hum", "ok"],
  "additionalProperties": false,
  "properties": {
    "seq": {"type": "integer", "minimum": 0},
    "ts": {"type": "integer", "minimum": 0},
    "device": {"type": "string", "pattern": "^dev-[0-9]+$", "maxLength": 32},
    "temp": {"type": "number", "minimum": -50, "maximum": 150},
    "hum": {"type": "number", "minimum": 0, "maximum": 100},
    "ok": {"type": "boolean"}
  }
}"#;

/// Client-id prefixes of the (no schema, schema) phase pairs.
const PAIRS: [(&str, &str); 5] = [("b-", "c-"), ("e-", "f-"), ("g-", "h-"), ("i-", "j-"), ("k-", "l-")];

/// Each pair's schema / no-schema throughput ratio, sorted (pairs that measured nothing are
/// left out).
fn pair_ratios(json: &[Measured], governed: &[Measured]) -> Vec<f64> {
    let mut ratios: Vec<f64> =
        json.iter().zip(governed).filter_map(|(j, g)| Some(g.rate? / j.rate?)).collect();
    ratios.sort_by(f64::total_cmp);
    ratios
}

/// One fan-in QoS 1 phase: adds its loss and duplicates to `lost`, prefixes its notes with
/// `name`. Returns its throughput and p99 latency.
async fn phase(
    p: &Params,
    broker: &mut Running,
    deadline_ns: u64,
    (o, lost): (&mut Outcome, &mut f64),
    name: &'static str,
    opts: FlowOpts<'_>,
) -> anyhow::Result<Measured> {
    let r = fan_in_with(p, broker, QoS::AtLeastOnce, deadline_ns, opts).await?;
    let get = |k: &str| r.metrics.iter().find(|(m, _)| *m == k).map(|&(_, v)| v);
    let missing = get("loss").unwrap_or(0.0) + get("backlog").unwrap_or(0.0);
    let dups = get("dups").unwrap_or(0.0);
    *lost += missing;
    if dups > 0.0 {
        o.notes.push(format!("{name}: {dups} duplicates"));
    }
    if missing > 0.0 {
        o.notes.push(format!("{name}: {missing} messages lost or not delivered"));
    }
    o.notes.extend(r.notes.into_iter().map(|n| format!("{name}: {n}")));
    Ok(Measured { rate: get("throughput"), p99: get("p99_ms") })
}

/// Throughput and p99 latency of one phase (`None` when it measured nothing).
#[derive(Clone, Copy)]
struct Measured {
    rate: Option<f64>,
    p99: Option<f64>,
}

/// Sets `rate_key` to the mean throughput of `runs` and `p99_key` to their worst p99;
/// returns the mean, or `None` unless every run measured a throughput.
fn record(
    o: &mut Outcome,
    (rate_key, p99_key): (&'static str, &'static str),
    runs: &[Measured],
) -> Option<f64> {
    let rates: Option<Vec<f64>> = runs.iter().map(|m| m.rate).collect();
    let mean = rates.map(|r| r.iter().sum::<f64>() / r.len() as f64);
    if let Some(v) = mean {
        o.set(rate_key, v);
    }
    if let Some(v) = runs.iter().filter_map(|m| m.p99).reduce(f64::max) {
        o.set(p99_key, v);
    }
    mean
}

/// Publishes one retained QoS 1 message and waits for its PUBACK (a 3.1.1 client: a refused
/// schema closes the connection).
async fn register(addr: std::net::SocketAddr, topic: &str, doc: &str) -> anyhow::Result<()> {
    let mut c = Client::connect(addr, "schema-admin").await?;
    let msg = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        pkid: 1,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(doc.as_bytes()),
    };
    c.send(&Packet::Publish(msg)).await?;
    match tokio::time::timeout(Duration::from_secs(10), c.next_packet()).await {
        Ok(Ok(Packet::PubAck(_))) => Ok(()),
        Ok(Ok(other)) => anyhow::bail!("registering {topic}: expected PUBACK, got {}", other.name()),
        Ok(Err(e)) => anyhow::bail!("registering {topic}: {e}"),
        Err(_) => anyhow::bail!("registering {topic}: no PUBACK within 10 s"),
    }
}

/// Checks that an invalid payload on a governed topic is refused: a 3.1.1 client is
/// disconnected (`schemas.on_invalid = "disconnect"`, the default) instead of acknowledged.
async fn enforced(addr: std::net::SocketAddr, topic: &str) -> anyhow::Result<bool> {
    let mut c = Client::connect(addr, "schema-probe").await?;
    let msg = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        pkid: 1,
        properties: Properties::default(),
        payload: Bytes::from_static(br#"{"seq":"not a number"}"#),
    };
    c.send(&Packet::Publish(msg)).await?;
    Ok(!matches!(
        tokio::time::timeout(Duration::from_secs(5), c.next_packet()).await,
        Ok(Ok(Packet::PubAck(_)))
    ))
}

pub async fn schema(p: &Params, env: &Env<'_>, deadline_ns: u64) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let mut broker = env.start(&Opts::default()).await?;
    let r = phases(p, &mut broker, deadline_ns, &mut o).await;
    memory_metrics(&mut o, &broker);
    if let Some(d) = broker.died() {
        o.notes.push(d);
    }
    broker.stop().await;
    r.map(|()| o)
}

async fn phases(p: &Params, broker: &mut Running, deadline_ns: u64, o: &mut Outcome) -> anyhow::Result<()> {
    let addr = broker.addr;
    let mut lost = 0.0;
    let opts = FlowOpts { topic: "plain", clients: "a-", ..FlowOpts::default() };
    let plain = phase(p, broker, deadline_ns, (o, &mut lost), "plain", opts).await?;
    let plain = record(o, ("plain_per_s", "plain_p99_ms"), &[plain]);
    // Unvalidated and validated phases alternate (the schema is removed in between), so a
    // drift of the broker's state over the run does not land on one side only; the ratio is
    // the median of the adjacent pairs' ratios, which a slow phase on this shared machine
    // moves less than a ratio of means.
    let mut json = Vec::new();
    let mut governed = Vec::new();
    for (i, (plain_ids, schema_ids)) in PAIRS.into_iter().enumerate() {
        let opts = FlowOpts { topic: "sjson", clients: plain_ids, body: Body::Json };
        json.push(phase(p, broker, deadline_ns, (o, &mut lost), "json", opts).await?);
        register(addr, "$schema/sjson/%2B", SCHEMA).await?;
        let opts = FlowOpts { topic: "sjson", clients: schema_ids, body: Body::Json };
        governed.push(phase(p, broker, deadline_ns, (o, &mut lost), "schema", opts).await?);
        if i == 0 && !enforced(addr, "sjson/0").await? {
            o.notes.push("an invalid payload on sjson/0 was acknowledged: the schema is not enforced".into());
        }
        register(addr, "$schema/sjson/%2B", "").await?;
    }
    let ratios = pair_ratios(&json, &governed);
    if let Some(&r) = ratios.get(ratios.len() / 2) {
        o.set("schema_ratio", r);
    }
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    o.notes.push(format!("schema / no schema by pair: {}", shown.join(", ")));
    record(o, ("json_per_s", "json_p99_ms"), &json);
    let governed = record(o, ("schema_per_s", "schema_p99_ms"), &governed);
    // Unrelated schemas: `other/{i}/+/reading`, one publisher, 100 in flight.
    let n = p.schemas as u32;
    let c = Client::connect(addr, "schema-many").await?;
    let frame = |out: &mut BytesMut, seq: u32, _ts: u64, pkid: u16| {
        let doc = format!(
            r#"{{"type":"object","required":["v{seq}"],"properties":{{"v{seq}":{{"type":"number"}},"unit":{{"type":"string"}}}}}}"#
        );
        let msg = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: Bytes::from(format!("$schema/other/{seq}/%2B/reading")),
            pkid,
            properties: Properties::default(),
            payload: Bytes::from(doc),
        };
        encode_publish(&msg, V, out);
    };
    let t0 = now_ns();
    let sent = Rc::new(Cell::new(0));
    let left = Duration::from_nanos(deadline_ns.saturating_sub(now_ns()));
    let registering = windowed(c, QoS::AtLeastOnce, frame, 100, move |seq| seq >= n, sent.clone(), None);
    match tokio::time::timeout(left, registering).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => anyhow::bail!("registering {n} schemas: {e} ({} sent)", sent.get()),
        Err(_) => anyhow::bail!("registering {n} schemas: not acked before the time limit"),
    }
    o.set("schemas_per_s", f64::from(n) / ((now_ns() - t0) as f64 / 1e9));
    let opts = FlowOpts { topic: "plain", clients: "d-", ..FlowOpts::default() };
    let after = phase(p, broker, deadline_ns, (o, &mut lost), "after", opts).await?;
    let after = record(o, ("after_per_s", "after_p99_ms"), &[after]);
    o.set("loss", lost);
    if let (Some(g), Some(pl)) = (governed, plain) {
        o.set("schema_vs_plain", g / pl);
    }
    if let (Some(a), Some(pl)) = (after, plain) {
        o.set("after_ratio", a / pl);
    }
    Ok(())
}
