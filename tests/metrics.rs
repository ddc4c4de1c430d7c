//! Observability of a running broker: `/metrics` in valid Prometheus text format (our parser and
//! `promtool check metrics`), counters that move as they should for a connect, a publish at
//! each QoS, a malformed packet and a refused CONNECT, every metric the Grafana dashboard
//! queries, a real Prometheus scraping the broker, `$SYS` topics through `mosquitto_sub`, and
//! `/healthz`, `/readyz`.
//!
//! Metrics are process-wide, so the tests of this file take one lock and compare deltas.
mod common;
mod v5_util;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{RawClient, TestBroker, WAIT, http_get, mosquitto};
use dataloom::codec::{Connect, Packet, Properties, ProtocolVersion};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- HTTP and the text format

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: samples and the declared type of every family.
#[derive(Debug, Default)]
struct Exposition {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the Prometheus text format 0.0.4 strictly enough to catch malformed output.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut helped = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |m: &str| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            match kw {
                "HELP" if !is_name(name) || !helped.insert(name.to_string()) => {
                    return Err(at("bad or repeated HELP"));
                }
                "TYPE" => {
                    let ty = parts.next().unwrap_or("");
                    if !is_name(name)
                        || !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty)
                    {
                        return Err(at("bad TYPE"));
                    }
                    if e.types.insert(name.to_string(), ty.to_string()).is_some() {
                        return Err(at("repeated TYPE"));
                    }
                }
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value"))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(at("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end = loop {
                while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                    chars.next();
                }
                match chars.peek().copied() {
                    Some((i, '}')) => break i + 1,
                    None => return Err(at("unterminated label set")),
                    Some(_) => {}
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                if !is_name(&key) || chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(at("bad label"));
                }
                let mut val = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => val.push('\n'),
                            Some('\\') => val.push('\\'),
                            Some('"') => val.push('"'),
                            _ => return Err(at("bad escape")),
                        },
                        '"' => {
                            closed = true;
                            break;
                        }
                        c => val.push(c),
                    }
                }
                if !closed || labels.insert(key, val).is_some() {
                    return Err(at("unterminated or repeated label"));
                }
            };
            rest = &r[end..];
        }
        let mut fields = rest.split_whitespace();
        let value = match fields.next().ok_or_else(|| at("no value"))? {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| at("bad value"))?,
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp"))?;
        }
        e.samples.push(Sample { name: name.to_string(), labels, value });
    }
    for s in &e.samples {
        let family = family_of(&s.name, &e.types);
        if !e.types.contains_key(&family) {
            return Err(format!("sample {} has no TYPE", s.name));
        }
    }
    Ok(e)
}

/// The family a sample name belongs to (`x_bucket` of histogram `x` is `x`).
fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && matches!(types.get(base).map(String::as_str), Some("histogram" | "summary"))
        {
            return base.to_string();
        }
    }
    name.to_string()
}

impl Exposition {
    /// Sum of the samples named `name` whose labels include `want`.
    fn get(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    fn has_family(&self, name: &str) -> bool {
        self.types.contains_key(name)
    }
}

async fn scrape(addr: SocketAddr) -> (String, Exposition) {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics status; body: {body}");
    let parsed = parse(&body).unwrap_or_else(|e| panic!("/metrics is not valid text format: {e}\n{body}"));
    (body, parsed)
}

// ---------------------------------------------------------------- clients

/// A rumqttc v4 client whose event loop forwards incoming packets.
struct Mq {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Incoming>,
}

async fn mq(addr: SocketAddr, id: &str) -> Mq {
    let o = MqttOptions::new(id, "127.0.0.1", addr.port());
    let (client, mut el) = AsyncClient::new(o, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(ev) = el.poll().await {
            if let Event::Incoming(i) = ev
                && tx.send(i).is_err()
            {
                return;
            }
        }
    });
    let mut m = Mq { client, rx };
    m.wait(|i| matches!(i, Incoming::ConnAck(_))).await;
    m
}

impl Mq {
    async fn wait(&mut self, want: impl Fn(&Incoming) -> bool) -> Incoming {
        loop {
            let i = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .expect("packet from the broker in time")
                .expect("connection alive");
            if want(&i) {
                return i;
            }
        }
    }
}

fn connect_packet(client_id: &str, keep_alive: u16) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

/// Polls `check` every 500 ms, 30 times at most; panics with `what` if it never holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut last = String::new();
    for _ in 0..30 {
        match check().await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{what} never happened; last: {last}");
}

fn promtool() -> &'static str {
    for p in ["/usr/bin/promtool", "/usr/local/bin/promtool"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("promtool is missing: run `make test-deps` (installs Debian's prometheus package)");
}

fn prometheus_bin() -> &'static str {
    for p in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("prometheus is missing: run `make test-deps` (installs Debian's prometheus package)");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Metric names in the PromQL of every panel of the dashboard (`dataloom_*` and `process_*`).
fn dashboard_metric_names() -> HashSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/dashboards/dataloom.json");
    let text = std::fs::read_to_string(path).expect("dashboard JSON exists");
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    assert!(exprs.len() >= 10, "dashboard has queries: {exprs:?}");
    let mut names = HashSet::new();
    for e in exprs {
        for prefix in ["dataloom_", "process_"] {
            let mut rest = e.as_str();
            while let Some(i) = rest.find(prefix) {
                let preceded =
                    rest[..i].chars().last().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                let tail = &rest[i..];
                let end = tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
                let name = &tail[..end.unwrap_or(tail.len())];
                if !preceded {
                    names.insert(name.to_string());
                }
                rest = &tail[name.len()..];
            }
        }
    }
    names
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_and_the_world_can_read_them() {
    let _guard = LOCK.lock().await;
    let b = TestBroker::start_with(|c| c.mqtt.sys_interval = Duration::from_secs(1)).await;
    let http = b.running.as_ref().and_then(|r| r.http_addr).expect("HTTP listener bound");
    let (_, m0) = scrape(http).await;
    let tcp = [("listener", "tcp"), ("transport", "tcp")];

    // A connect, a subscription and a publish at each QoS, delivered back at the same QoS.
    let mut c = mq(b.addr, "metrics-client").await;
    c.client.subscribe("m/#", QoS::ExactlyOnce).await.expect("subscribe");
    c.wait(|i| matches!(i, Incoming::SubAck(_))).await;
    for (qos, payload) in [(QoS::AtMostOnce, "q0"), (QoS::AtLeastOnce, "q1"), (QoS::ExactlyOnce, "q2")] {
        c.client.publish("m/t", qos, false, payload).await.expect("publish");
        let got = c.wait(|i| matches!(i, Incoming::Publish(_))).await;
        let Incoming::Publish(p) = got else { unreachable!() };
        assert_eq!(&p.payload[..], payload.as_bytes());
    }
    c.client.publish("m/retained", QoS::AtLeastOnce, true, "hello").await.expect("publish retained");
    c.wait(|i| matches!(i, Incoming::Publish(p) if p.topic == "m/retained")).await;
    c.client.publish("nobody/listens", QoS::AtMostOnce, false, "x").await.expect("publish");

    // A malformed packet after a good CONNECT: reserved packet type 0.
    let mut bad = RawClient::connect(b.addr).await;
    bad.version = ProtocolVersion::V3_1_1;
    bad.send_packet(&connect_packet("metrics-bad", 30)).await;
    assert!(matches!(bad.recv().await, Some(Packet::ConnAck(_))));
    bad.send_hex("00 00").await;
    bad.until_closed().await;
    drop(bad); // as clients do on EOF: the broker's graceful close ends at once

    // A refused CONNECT: 3.1.1 keep alive above mqtt.max_keepalive is refused (return code 2).
    let mut refused = RawClient::connect(b.addr).await;
    refused.version = ProtocolVersion::V3_1_1;
    refused.send_packet(&connect_packet("metrics-refused", u16::MAX)).await;
    let got = refused.until_closed().await;
    assert!(matches!(got.first(), Some(Packet::ConnAck(a)) if a.code != 0), "refused: {got:?}");
    drop(refused);

    // Everything that must have moved, once the connections above are counted as closed.
    let m1 = {
        let mut last = None;
        for _ in 0..30 {
            let (_, m) = scrape(http).await;
            let closed = m.get("dataloom_connections_closed_total", &tcp)
                - m0.get("dataloom_connections_closed_total", &tcp);
            let published = m.get("dataloom_messages_received_total", &[])
                - m0.get("dataloom_messages_received_total", &[]);
            if closed >= 2.0 && published >= 5.0 {
                last = Some(m);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last.expect("connection ends and publishes counted")
    };
    let d = |name: &str, labels: &[(&str, &str)]| m1.get(name, labels) - m0.get(name, labels);
    assert_eq!(d("dataloom_connections_opened_total", &tcp), 3.0);
    assert_eq!(m1.get("dataloom_connections", &tcp), 1.0, "only the rumqttc client is connected");
    assert_eq!(m1.get("dataloom_sessions", &[("state", "online")]), 1.0);
    assert_eq!(d("dataloom_connections_closed_total", &[("reason", "protocol_error")]), 1.0);
    assert_eq!(d("dataloom_connections_closed_total", &[("reason", "rejected")]), 1.0);
    assert_eq!(d("dataloom_connections_rejected_total", &[("reason", "client_id_invalid")]), 1.0);
    assert_eq!(d("dataloom_protocol_errors_total", &[("kind", "reserved_packet_type")]), 1.0);
    assert_eq!(d("dataloom_messages_received_total", &[("qos", "0")]), 2.0);
    assert_eq!(d("dataloom_messages_received_total", &[("qos", "1")]), 2.0);
    assert_eq!(d("dataloom_messages_received_total", &[("qos", "2")]), 1.0);
    assert_eq!(d("dataloom_messages_sent_total", &[("qos", "0")]), 1.0);
    assert_eq!(d("dataloom_messages_sent_total", &[("qos", "1")]), 2.0);
    assert_eq!(d("dataloom_messages_sent_total", &[("qos", "2")]), 1.0);
    assert_eq!(d("dataloom_messages_dropped_total", &[("reason", "no_subscribers")]), 1.0);
    assert_eq!(d("dataloom_packets_received_total", &[("type", "connect")]), 3.0);
    assert_eq!(d("dataloom_packets_received_total", &[("type", "publish")]), 5.0);
    assert_eq!(d("dataloom_packets_received_total", &[("type", "subscribe")]), 1.0);
    assert_eq!(d("dataloom_packets_received_total", &[("type", "pubrel")]), 1.0);
    assert_eq!(d("dataloom_packets_sent_total", &[("type", "connack")]), 3.0);
    assert_eq!(d("dataloom_packets_sent_total", &[("type", "suback")]), 1.0);
    assert_eq!(d("dataloom_packets_sent_total", &[("type", "puback")]), 2.0);
    assert_eq!(d("dataloom_packets_sent_total", &[("type", "pubrec")]), 1.0);
    assert_eq!(d("dataloom_packets_sent_total", &[("type", "pubcomp")]), 1.0);
    assert_eq!(d("dataloom_packets_sent_total", &[("type", "pubrel")]), 1.0);
    assert_eq!(d("dataloom_packets_sent_total", &[("type", "publish")]), 4.0);
    // One publish in 16 per thread is timed (metrics::LATENCY_SAMPLE_EVERY).
    assert!(d("dataloom_publish_latency_seconds_count", &[]) <= 5.0);
    assert!(d("dataloom_bytes_received_total", &[]) > 50.0);
    assert!(d("dataloom_bytes_sent_total", &[]) > 30.0);
    assert!(m1.get("dataloom_subscriptions", &[]) >= 1.0);
    assert!(m1.get("dataloom_retained_messages", &[]) >= 1.0);
    assert!(d("dataloom_retained_payload_bytes", &[]) >= 5.0);
    assert_eq!(m1.get("dataloom_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(m1.get("process_resident_memory_bytes", &[]) > 0.0);
    assert!(m1.get("process_open_fds", &[]) > 0.0);
    for family in [
        "dataloom_auth_failures_total",
        "dataloom_authorization_denials_total",
        "dataloom_store_write_batch_size",
        "dataloom_store_write_latency_seconds",
        "dataloom_store_fsync_latency_seconds",
        "dataloom_store_disk_bytes",
    ] {
        assert!(m1.has_family(family), "{family} registered");
    }

    // promtool's lint agrees it is well-formed and well-named.
    let (body, _) = scrape(http).await;
    let mut child = tokio::process::Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool runs");
    let mut stdin = child.stdin.take().expect("promtool stdin");
    stdin.write_all(body.as_bytes()).await.expect("write to promtool");
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("promtool in time")
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric the Grafana dashboard queries exists. The schema and TLS families get their
    // series when a schema is registered / a TLS listener loads its certificate; resolve one
    // of each here as those features will.
    let _schema = dataloom::metrics::get().schema_validations("sensors/+/temperature");
    dataloom::metrics::get().tls_cert_expiry("tls").set(0.0);
    let (_, m2) = scrape(http).await;
    let wanted = dashboard_metric_names();
    let missing: Vec<_> = wanted.iter().filter(|n| !m2.has_family(&family_of(n, &m2.types))).collect();
    assert!(missing.is_empty(), "dashboard queries metrics /metrics does not have: {missing:?}");

    // $SYS: mosquitto_sub gets a fresh clients/connected that counts itself and the rumqttc
    // client (-R skips the stale retained value published before it connected).
    let port = b.port().to_string();
    let (ok, out) = mosquitto(
        "mosquitto_sub",
        &["-h", "127.0.0.1", "-p", &port, "-t", "$SYS/broker/clients/connected", "-C", "1", "-R", "-W", "8"],
    )
    .await;
    assert!(ok, "mosquitto_sub got a $SYS message: {out}");
    assert_eq!(out.trim(), "2");
    let (ok, out) = mosquitto(
        "mosquitto_sub",
        &["-h", "127.0.0.1", "-p", &port, "-t", "$SYS/broker/version", "-C", "1", "-W", "5"],
    )
    .await;
    assert!(ok && out.starts_with("dataloom version "), "{out}");

    // A real Prometheus scrapes the broker and reports the same value.
    let dir = tempfile::tempdir().expect("tempdir");
    let prom_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dataloom\n    \
         static_configs:\n      - targets: ['{http}']\n"
    );
    let cfg_path = dir.path().join("prometheus.yml");
    std::fs::write(&cfg_path, cfg).expect("write prometheus.yml");
    let _prom = tokio::process::Command::new(prometheus_bin())
        .arg(format!("--config.file={}", cfg_path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus starts");
    let prom: SocketAddr = format!("127.0.0.1:{prom_port}").parse().expect("addr");
    eventually("Prometheus reports the dataloom target up", || async move {
        let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(400), TcpStream::connect(prom)).await
        else {
            return Err("not listening yet".into());
        };
        let (_, body) = http_get(prom, "/api/v1/targets").await;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let up = v["data"]["activeTargets"]
            .as_array()
            .is_some_and(|ts| ts.iter().any(|t| t["health"] == "up" && t["labels"]["job"] == "dataloom"));
        if up { Ok(()) } else { Err(body) }
    })
    .await;
    let want = m1.get("dataloom_messages_received_total", &[("qos", "1")]);
    let query = format!("/api/v1/query?query={}", urlencode(r#"dataloom_messages_received_total{qos="1"}"#));
    eventually("Prometheus has the right dataloom_messages_received_total", || {
        let query = query.clone();
        async move {
            let (_, body) = http_get(prom, &query).await;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let got = v["data"]["result"][0]["value"][1].as_str().and_then(|s| s.parse::<f64>().ok());
            if got == Some(want) { Ok(()) } else { Err(format!("want {want}, got {body}")) }
        }
    })
    .await;

    c.client.disconnect().await.expect("disconnect");
    b.stop().await;
}

#[tokio::test]
async fn health_endpoints() {
    let _guard = LOCK.lock().await;
    let b = TestBroker::start().await;
    let http = b.running.as_ref().and_then(|r| r.http_addr).expect("HTTP listener bound");
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!((status, body.trim()), (200, "ready"));
    assert_eq!(http_get(http, "/nope").await.0, 404);
    b.stop().await;
}

/// A memory store whose writes can be made to fail, as an fsync error would.
#[derive(Debug, Default)]
struct FlakyStore {
    broken: std::sync::atomic::AtomicBool,
}

impl dataloom::store::Store for FlakyStore {
    fn recover(&self) -> Result<dataloom::store::Recovered, dataloom::store::StoreError> {
        Ok(dataloom::store::Recovered::default())
    }

    fn submit(&self, _ops: Vec<dataloom::store::Op>, _durable: bool) -> dataloom::store::Commit {
        dataloom::store::Commit::done()
    }

    fn poisoned(&self) -> Option<dataloom::store::StoreError> {
        self.broken
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| dataloom::store::StoreError::Poisoned("fsync failed: EIO".into()))
    }

    fn close(&self) -> Result<(), dataloom::store::StoreError> {
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        0
    }
}

#[tokio::test]
async fn readyz_follows_listeners_and_store() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let store = Arc::new(FlakyStore::default());
    let limits = dataloom::broker::BrokerLimits {
        max_queued_messages: 10,
        max_queued_bytes: 0,
        persistent_session_expiry: None,
        max_memory: 0,
    };
    let broker = dataloom::broker::Broker::new(limits, store.clone()).expect("broker");
    let ready = Arc::new(AtomicBool::new(false));
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let state = dataloom::http::HttpState { broker, ready: ready.clone() };
    let http = dataloom::http::serve("127.0.0.1:0", state, rx).await.expect("http binds");

    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!(status, 503, "listeners not bound yet: {body}");
    ready.store(true, Ordering::Release);
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    store.broken.store(true, Ordering::Relaxed);
    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("fsync failed"), "{body}");
    assert_eq!(http_get(http, "/healthz").await.0, 200, "alive even when not ready");
}

/// A v5 CONNECT editor setting credentials.
fn creds(user: &str, pass: &str) -> impl FnOnce(&mut Connect) {
    let (user, pass) = (user.to_string(), pass.to_string());
    move |c| {
        c.username = Some(user);
        c.password = Some(bytes::Bytes::from(pass));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_denials_and_schema_rejections_move_their_counters() {
    let _guard = LOCK.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("m")).expect("schema dir");
    std::fs::write(dir.path().join("m/+.json"), r#"{"type":"object","required":["v"]}"#)
        .expect("schema file");
    let schema_dir = dir.path().to_path_buf();
    let b = TestBroker::start_with(move |c| c.schemas.dir = schema_dir).await;
    let http = b.running.as_ref().and_then(|r| r.http_addr).expect("HTTP listener bound");
    let auth = &b.running.as_ref().expect("running").auth;
    let spec = dataloom::auth::KeySpec {
        name: "meter".into(),
        publish: vec!["m/#".into()],
        subscribe: vec!["m/#".into()],
        ..dataloom::auth::KeySpec::default()
    };
    let secret = auth.create(spec).await.expect("key created").1;
    let (_, m0) = scrape(http).await;

    let (_, refused) = v5_util::connect_with(b.addr, "intruder", creds("meter", "not-the-secret")).await;
    assert_eq!(refused.code, 0x86);

    let mut good = v5_util::connect_ok(&b, "meter-1", creds("meter", &secret)).await;
    assert_eq!(v5_util::pub1(&mut good, 1, "other/x", b"{}").await, 0x87, "outside the key's filters");
    assert_eq!(v5_util::pub1(&mut good, 2, "m/1", br#"{"w":1}"#).await, 0x99, "schema requires v");
    assert_eq!(v5_util::pub1(&mut good, 3, "m/1", br#"{"v":1}"#).await, 0x10, "valid, nobody subscribed");

    let (_, m1) = scrape(http).await;
    let d = |name: &str, labels: &[(&str, &str)]| m1.get(name, labels) - m0.get(name, labels);
    assert_eq!(d("dataloom_auth_failures_total", &[("reason", "bad_secret")]), 1.0);
    assert_eq!(d("dataloom_authorization_denials_total", &[("action", "publish")]), 1.0);
    assert_eq!(d("dataloom_messages_dropped_total", &[("reason", "not_authorized")]), 1.0);
    assert_eq!(d("dataloom_schema_validations_total", &[("filter", "m/+"), ("result", "invalid")]), 1.0);
    assert_eq!(d("dataloom_schema_validations_total", &[("filter", "m/+"), ("result", "valid")]), 1.0);
    assert_eq!(d("dataloom_messages_dropped_total", &[("reason", "schema_invalid")]), 1.0);
    b.stop().await;
}
