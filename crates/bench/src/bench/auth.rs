//! Issue 6's scenarios (dataloom only). `connect-auth`: `p.connects` CONNECTs, 32 at a time,
//! each TCP connect, CONNECT, CONNACK, DISCONNECT, close; anonymous (no keys) against a key
//! created with `dataloom key create` on the stopped broker's data directory; both on fjall.
//! `tls`: the same churn over TCP and over TLS (full handshakes, no resumption) on one broker
//! with a `[listeners.tls]` listener whose certificates are made here with the openssl CLI,
//! then fan-in QoS 0 (10 publishers -> 1 subscriber) over TCP and over TLS.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use dataloom_codec::{Disconnect, Packet, Properties, QoS};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};

use super::brokers::{Opts, Running};
use super::client::{Template, blast, mqtt_connect, next_packet, receive, send};
use super::flow::{FlowOpts, fan_in_with, join_publishers, summarize_errors};
use super::scenario::{
    CpuMeter, Env, Outcome, Params, delivery_metrics, drain, latency_metrics, memory_metrics, new_shared,
};
use super::stats::{Histogram, Tracker, now_ns};

/// Connections opened at a time.
const PARALLEL: usize = 32;

/// How the churn connects: plain TCP or TLS.
#[derive(Clone)]
enum Transport {
    Tcp,
    Tls(TlsConnector),
}

/// A TCP or TLS connection to the broker.
async fn open(addr: SocketAddr, t: &Transport) -> io::Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(match t {
        Transport::Tcp => Box::new(tcp),
        Transport::Tls(c) => {
            let name = ServerName::IpAddress(addr.ip().into());
            Box::new(c.connect(name, tcp).await?)
        }
    })
}

trait Stream: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Stream for T {}

/// Rate and latency of `n` connect-CONNECT-DISCONNECT cycles, `PARALLEL` at a time.
struct Churn {
    per_s: f64,
    lat: Histogram,
    errors: Vec<String>,
}

async fn churn(addr: SocketAddr, n: usize, t: &Transport, login: Option<(&str, &str)>, tag: &str) -> Churn {
    let login = login.map(|(u, p)| (u.to_string(), p.to_string()));
    let mut set = JoinSet::new();
    let mut lat = Histogram::default();
    let mut errors = Vec::new();
    let t0 = now_ns();
    let mut next = 0;
    while next < n || !set.is_empty() {
        while next < n && set.len() < PARALLEL {
            let (t, login, id) = (t.clone(), login.clone(), format!("{tag}-{next}"));
            set.spawn_local(async move {
                let start = now_ns();
                let mut s = open(addr, &t).await?;
                let mut rbuf = BytesMut::with_capacity(256);
                let login = login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
                mqtt_connect(&mut s, &mut rbuf, &id, login).await?;
                let took = now_ns() - start;
                let bye = Packet::Disconnect(Disconnect { code: 0, properties: Properties::default() });
                send(&mut s, &bye).await?;
                let _ = s.shutdown().await;
                Ok::<_, io::Error>(took)
            });
            next += 1;
        }
        match set.join_next().await.expect("set is not empty") {
            Ok(Ok(took)) => lat.record(took),
            Ok(Err(e)) => errors.push(format!("{tag}: {e}")),
            Err(e) => errors.push(format!("{tag} task: {e}")),
        }
    }
    let secs = (now_ns() - t0) as f64 / 1e9;
    Churn { per_s: (n - errors.len()) as f64 / secs, lat, errors }
}

fn set_churn(o: &mut Outcome, c: &Churn, keys: [&'static str; 3]) {
    o.set(keys[0], c.per_s);
    latency_metrics(o, &c.lat, [keys[1], keys[2]]);
    o.notes.extend(summarize_errors(&c.errors));
}

/// The broker's and the generator's CPU since `cpu` started, under the given keys.
fn cpu_as(cpu: &CpuMeter, broker: &Running, o: &mut Outcome, keys: [&'static str; 2]) {
    let mut m = Outcome::default();
    cpu.finish(broker, &mut m);
    for (k, v) in m.metrics {
        o.set(if k == "broker_cpu_pct" { keys[0] } else { keys[1] }, v);
    }
}

/// Creates the key `bench` on a stopped broker's data directory; returns its secret.
fn create_key(dataloom: &Path, data_dir: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new(dataloom)
        .args(["key", "create", "--name", "bench", "--publish", "#", "--subscribe", "#", "--data-dir"])
        .arg(data_dir)
        .output()
        .context("cannot run dataloom key create")?;
    if !out.status.success() {
        bail!("dataloom key create failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let secret = String::from_utf8(out.stdout)?.trim().to_string();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        bail!("dataloom key create printed {secret:?}, not a secret");
    }
    Ok(secret)
}

/// The CONNACK code of one CONNECT (0 accepted).
async fn connack_code(addr: SocketAddr, login: Option<(&str, &str)>) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let mut rbuf = BytesMut::new();
    let r =
        tokio::time::timeout(Duration::from_secs(10), mqtt_connect(&mut s, &mut rbuf, "probe", login)).await;
    Ok(match r {
        Ok(Ok(())) => "accepted".into(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 10 s".into(),
    })
}

pub async fn connect_auth(p: &Params, env: &Env<'_>, _deadline_ns: u64) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    // Anonymous: a fresh store without keys (loopback clients may connect).
    let opts = Opts {
        data_dir: Some(env.data_dir("anonymous")?),
        name: Some("dataloom-anon".into()),
        ..Opts::default()
    };
    let broker = env.start(&opts).await?;
    let cpu = CpuMeter::start(&broker);
    let anon = churn(broker.addr, p.connects, &Transport::Tcp, None, "anon");
    let anon = anon.await;
    cpu_as(&cpu, &broker, &mut o, ["anon_broker_cpu_pct", "anon_gen_cpu_pct"]);
    broker.stop().await;
    set_churn(&mut o, &anon, ["anon_connects_per_s", "anon_connect_p50_ms", "anon_connect_p99_ms"]);
    // With a key, created on the stopped broker's data directory.
    let data = env.data_dir("auth")?;
    std::fs::create_dir_all(&data)?;
    let secret = create_key(&env.bin.path, &data)?;
    let opts = Opts {
        data_dir: Some(data),
        name: Some("dataloom-auth".into()),
        login: Some(("bench".into(), secret.clone())),
        ..Opts::default()
    };
    let broker = env.start(&opts).await?;
    let cpu = CpuMeter::start(&broker);
    let auth = churn(broker.addr, p.connects, &Transport::Tcp, Some(("bench", &secret)), "auth").await;
    cpu_as(&cpu, &broker, &mut o, ["auth_broker_cpu_pct", "auth_gen_cpu_pct"]);
    set_churn(&mut o, &auth, ["auth_connects_per_s", "auth_connect_p50_ms", "auth_connect_p99_ms"]);
    // Auth must really be on: a wrong secret and an anonymous client are refused.
    let wrong = connack_code(broker.addr, Some(("bench", "0000"))).await?;
    let anonymous = connack_code(broker.addr, None).await?;
    if wrong == "accepted" || anonymous == "accepted" {
        o.notes.push(format!("auth not enforced: wrong secret {wrong}, anonymous {anonymous}"));
    } else {
        o.notes.push(format!("checked: wrong secret -> {wrong}; anonymous -> {anonymous}"));
    }
    broker.stop().await;
    o.set("auth_ratio", auth.per_s / anon.per_s);
    o.set("connections", p.connects as f64);
    Ok(o)
}

/// A CA and a server certificate for 127.0.0.1/localhost (ECDSA P-256) in `dir`, made with
/// the openssl CLI like `certs/gen.sh`. Returns (CA, server certificate, server key).
fn make_certs(dir: &Path) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("cannot run openssl (apt-get install openssl)")?;
        if !out.status.success() {
            bail!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut a = vec!["req", "-x509", "-days", "2", "-subj", "/CN=dataloom-bench CA", "-keyout", "ca.key"];
    a.extend(ec);
    a.extend(["-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE"]);
    a.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    run(&a)?;
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    let mut a = vec!["req", "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr"];
    a.extend(ec);
    run(&a)?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ])?;
    Ok((dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key")))
}

fn connector(ca: &Path) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

pub async fn tls(p: &Params, env: &Env<'_>, deadline_ns: u64) -> anyhow::Result<Outcome> {
    let mut o = Outcome::default();
    let (ca, cert, key) = make_certs(&env.dir.join("tls"))?;
    let tls = Transport::Tls(connector(&ca)?);
    let opts = Opts {
        toml: format!(
            "[listeners.tls]\nbind = \"127.0.0.1:0\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        tls: true,
        ..Opts::default()
    };
    let mut broker = env.start(&opts).await?;
    let tls_addr = broker.tls_addr.context("no mqtts:// listener")?;
    let r = async {
        let tcp = churn(broker.addr, p.connects, &Transport::Tcp, None, "tcp").await;
        set_churn(&mut o, &tcp, ["tcp_connects_per_s", "tcp_connect_p50_ms", "tcp_connect_p99_ms"]);
        let cpu = CpuMeter::start(&broker);
        let t = churn(tls_addr, p.connects, &tls, None, "tls").await;
        cpu_as(&cpu, &broker, &mut o, ["tls_broker_cpu_pct", "tls_gen_cpu_pct"]);
        set_churn(&mut o, &t, ["tls_connects_per_s", "tls_connect_p50_ms", "tls_connect_p99_ms"]);
        o.set("tls_connect_ratio", t.per_s / tcp.per_s);
        let plain = fan_in_with(
            p,
            &mut broker,
            QoS::AtMostOnce,
            deadline_ns,
            FlowOpts { topic: "tcp", clients: "t-", ..FlowOpts::default() },
        )
        .await?;
        let get = |o: &Outcome, k: &str| o.metrics.iter().find(|(m, _)| *m == k).map(|&(_, v)| v);
        if let Some(v) = get(&plain, "throughput") {
            o.set("tcp_fanin_per_s", v);
        }
        if let Some(v) = get(&plain, "gen_cpu_pct") {
            o.set("tcp_gen_cpu_pct", v);
        }
        o.notes.extend(plain.notes.iter().map(|n| format!("tcp fan-in: {n}")));
        let f = tls_fan_in(p, &mut broker, tls_addr, &tls, deadline_ns).await?;
        for (k, v) in &f.metrics {
            match *k {
                "throughput" => o.set("tls_fanin_per_s", *v),
                "gen_cpu_pct" => o.set("tls_fanin_gen_cpu_pct", *v),
                "broker_cpu_pct" => o.set("tls_fanin_broker_cpu_pct", *v),
                "loss" => o.set("loss", *v),
                _ => {}
            }
        }
        o.notes.extend(f.notes.iter().map(|n| format!("tls fan-in: {n}")));
        if let (Some(a), Some(b)) = (get(&f, "throughput"), get(&plain, "throughput")) {
            o.set("tls_fanin_ratio", a / b);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    memory_metrics(&mut o, &broker);
    if let Some(d) = broker.died() {
        o.notes.push(d);
    }
    broker.stop().await;
    r.map(|()| o)
}

/// Fan-in QoS 0 over TLS: 10 publishers on `tls/{i}` -> 1 subscriber on `tls/#`, the shape of
/// `fanin-qos0` (64 frames per write, open loop for the window, at most 3 s of drain).
async fn tls_fan_in(
    p: &Params,
    broker: &mut Running,
    addr: SocketAddr,
    t: &Transport,
    deadline_ns: u64,
) -> anyhow::Result<Outcome> {
    const PUBS: usize = 10;
    let mut o = Outcome::default();
    let mut sub = open(addr, t).await?;
    let mut rbuf = BytesMut::with_capacity(4096);
    mqtt_connect(&mut sub, &mut rbuf, "tls-sub", None).await?;
    let f = dataloom_codec::SubscribeFilter {
        filter: "tls/#".into(),
        qos: QoS::AtMostOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: dataloom_codec::RetainHandling::OnSubscribe,
    };
    let subscribe =
        dataloom_codec::Subscribe { pkid: 1, filters: vec![f], properties: Properties::default() };
    send(&mut sub, &Packet::Subscribe(subscribe)).await?;
    match next_packet(&mut sub, &mut rbuf).await? {
        Packet::SubAck(a) if a.codes.first().is_some_and(|&c| c < 0x80) => {}
        other => bail!("TLS subscriber: expected a granting SUBACK, got {}", other.name()),
    }
    let shared = new_shared();
    let tracker = Rc::new(RefCell::new(Tracker::new(PUBS)));
    let (rd, wr) = tokio::io::split(sub);
    let receiver = tokio::task::spawn_local(receive(rd, Some(wr), rbuf, tracker.clone(), shared.clone()));
    let mut writers = Vec::new();
    for i in 0..PUBS {
        let mut s = open(addr, t).await?;
        let mut rbuf = BytesMut::new();
        mqtt_connect(&mut s, &mut rbuf, &format!("tls-pub-{i}"), None).await?;
        writers.push(s);
    }
    let cpu = CpuMeter::start(broker);
    let t0 = now_ns();
    let until = t0 + p.duration.as_nanos() as u64;
    let sent: Vec<Rc<Cell<u64>>> = (0..PUBS).map(|_| Rc::new(Cell::new(0))).collect();
    let handles: Vec<JoinHandle<io::Result<_>>> = writers
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let tpl = Template::new(&format!("tls/{i}"), QoS::AtMostOnce, false, i as u32);
            tokio::task::spawn_local(blast(s, tpl, 64, until, sent[i].clone()))
        })
        .collect();
    tokio::time::sleep(Duration::from_nanos(until.saturating_sub(now_ns()))).await;
    let mut kept = join_publishers(handles, deadline_ns, &mut o).await;
    // What a publisher wrote is in the TLS buffer: push it out, as the kernel would on TCP.
    for w in &mut kept {
        let _ = tokio::time::timeout(Duration::from_secs(2), w.flush()).await;
    }
    let expected: u64 = sent.iter().map(|s| s.get()).sum();
    let drain_deadline = deadline_ns.min(now_ns() + 3_000_000_000);
    let drained =
        drain(&shared, broker, |sh| sh.received >= expected, Duration::from_secs(1), drain_deadline).await;
    cpu.finish(broker, &mut o);
    receiver.abort();
    let sh = shared.borrow();
    let secs = sh.last_rx_ns.saturating_sub(t0) as f64 / 1e9;
    if secs > 0.0 {
        o.set("throughput", sh.received as f64 / secs);
    }
    delivery_metrics(&mut o, &sh.latency, &[tracker], expected, drained);
    o.notes.extend(summarize_errors(&sh.errors));
    Ok(o)
}
