//! Sessions belong to the identity that made them (issue 13): another API key presenting the
//! same client id is refused (v5 CONNACK 0x87, 3.1.1 return code 5), counted and logged, and
//! the session with its queued messages is left for its owner; the same key takes its session
//! over as before; with `auth.session_takeover = "any_key"` another key may resume it but is
//! sent nothing it may not read, and what it may not read stays queued for the owner; the owner
//! survives SIGKILL and a restart of the real binary.
mod common;
mod v5_util;

use common::binary::Site;
use common::{RawClient, TestBroker, WAIT};
use dataloom::auth::KeySpec;
use dataloom::codec::{Connect, Packet, ProtocolVersion, QoS};
use v5_util::*;

const A: &str = "key-a-secret-0123456789abcdef0123456789";
const B: &str = "key-b-secret-0123456789abcdef0123456789";
const P: &str = "key-p-secret-0123456789abcdef0123456789";

fn spec(name: &str, secret: &str, publish: &[&str], subscribe: &[&str]) -> KeySpec {
    KeySpec {
        name: name.into(),
        secret: secret.into(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        ..KeySpec::default()
    }
}

/// The three keys: `key-a` reads `a/#` and `shared/#`, `key-b` only `shared/#` and `b/#`, the
/// publisher `key-p` writes everything.
fn keys() -> Vec<KeySpec> {
    vec![
        spec("key-a", A, &["a/#"], &["a/#", "shared/#"]),
        spec("key-b", B, &["b/#"], &["b/#", "shared/#"]),
        spec("key-p", P, &["#"], &[]),
    ]
}

async fn broker_with(edit: impl FnOnce(&mut dataloom::config::Config)) -> TestBroker {
    let b = TestBroker::start_with(edit).await;
    let auth = &b.running.as_ref().expect("running").auth;
    for k in keys() {
        auth.create(k).await.expect("key created");
    }
    b
}

/// A CONNECT editor: credentials, protocol version, clean start and (v5) session expiry.
fn login(user: &str, pass: &str, v: ProtocolVersion, clean: bool) -> impl FnOnce(&mut Connect) {
    let (user, pass) = (user.to_string(), pass.to_string());
    move |c| {
        c.protocol = v;
        c.username = Some(user);
        c.password = Some(bytes::Bytes::from(pass));
        c.clean_start = clean;
        if v.is_v5() {
            c.properties.session_expiry_interval = Some(3600);
        }
    }
}

/// Connects; returns the client, the CONNACK code as on the wire (the 3.1.1 return code for
/// 3.1.1) and session present.
async fn try_connect(
    addr: std::net::SocketAddr,
    id: &str,
    edit: impl FnOnce(&mut Connect),
) -> (RawClient, u8, bool) {
    let mut c = RawClient::connect(addr).await;
    let mut p = v5_util::connect_packet(id);
    edit(&mut p);
    c.version = p.protocol;
    c.send_packet(&Packet::Connect(Box::new(p))).await;
    if c.version.is_v5() {
        return match c.recv().await {
            Some(Packet::ConnAck(a)) => (c, a.code, a.session_present),
            other => panic!("expected CONNACK, got {other:?}"),
        };
    }
    use tokio::io::AsyncReadExt;
    let mut raw = [0u8; 4];
    tokio::time::timeout(WAIT, c.stream.read_exact(&mut raw))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(&raw[..2], &[0x20, 0x02], "a CONNACK");
    (c, raw[3], raw[2] & 1 == 1)
}

async fn connect_as(
    addr: std::net::SocketAddr,
    id: &str,
    edit: impl FnOnce(&mut Connect),
    present: bool,
) -> RawClient {
    let (c, code, got) = try_connect(addr, id, edit).await;
    assert_eq!((code, got), (0, present), "CONNACK of {id}: code, session present");
    c
}

/// Publishes `topic`=`payload` at QoS 1 as `key-p` (PUBACK: queued for every subscriber).
async fn publish_all(addr: std::net::SocketAddr, msgs: &[(&str, &str)]) {
    let mut p = connect_as(addr, "publisher", login("key-p", P, ProtocolVersion::V5, true), false).await;
    for (i, (topic, payload)) in msgs.iter().enumerate() {
        let pkid = u16::try_from(i + 1).expect("few");
        assert_eq!(pub1(&mut p, pkid, topic, payload.as_bytes()).await, 0, "PUBACK for {topic}");
    }
    disconnect(p, 0, Default::default()).await;
}

/// Receives `n` PUBLISH packets, acknowledging QoS 1; returns (topic, payload, dup).
async fn receive(c: &mut RawClient, n: usize) -> Vec<(String, String, bool)> {
    let mut got = Vec::new();
    while got.len() < n {
        let p = recv_publish(c).await;
        if p.qos == QoS::AtLeastOnce {
            send_ack(c, Packet::PubAck, p.pkid).await;
        }
        got.push((String::from_utf8_lossy(&p.topic).into_owned(), text(&p), p.dup));
    }
    got
}

fn topics(got: &[(String, String, bool)]) -> Vec<&str> {
    got.iter().map(|(t, _, _)| t.as_str()).collect()
}

/// `dataloom_auth_failures_total{reason="session_owner"}` as `/metrics` shows it.
fn session_owner_failures(b: &TestBroker) -> u64 {
    let broker = &b.running.as_ref().expect("running").broker;
    let text = dataloom::metrics::get().render(&broker.metrics_snapshot()).expect("render");
    let line = text
        .lines()
        .find(|l| l.starts_with("dataloom_auth_failures_total{reason=\"session_owner\"}"))
        .unwrap_or_else(|| panic!("no session_owner series in:\n{text}"));
    line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("a count")
}

/// A leaves `dev-a` offline with 5 messages queued; B is refused with and without clean
/// start, and later A gets all 5.
async fn foreign_key_is_refused(v: ProtocolVersion, refused: u8) {
    let b = broker_with(|_| {}).await;
    let mut a = connect_as(b.addr, "dev-a", login("key-a", A, v, false), false).await;
    subscribe(&mut a, 1, "a/#", QoS::AtLeastOnce).await;
    disconnect(a, 0, Default::default()).await;
    let msgs: Vec<(String, String)> = (1..=5).map(|i| (format!("a/{i}"), format!("m{i}"))).collect();
    publish_all(b.addr, &msgs.iter().map(|(t, p)| (t.as_str(), p.as_str())).collect::<Vec<_>>()).await;

    let before = session_owner_failures(&b);
    for clean in [false, true] {
        let (mut c, code, present) = try_connect(b.addr, "dev-a", login("key-b", B, v, clean)).await;
        assert_eq!((code, present), (refused, false), "key B as dev-a, clean {clean}");
        assert!(c.until_closed().await.is_empty(), "nothing after the refusal");
    }
    assert!(session_owner_failures(&b) >= before + 2, "counted as session_owner");

    let mut a = connect_as(b.addr, "dev-a", login("key-a", A, v, false), true).await;
    let got = receive(&mut a, 5).await;
    assert_eq!(topics(&got), ["a/1", "a/2", "a/3", "a/4", "a/5"]);
    assert!(got.iter().all(|(_, _, dup)| !dup));

    // Refused while the owner is connected too, and the owner keeps its connection.
    let (_c, code, _) = try_connect(b.addr, "dev-a", login("key-b", B, v, false)).await;
    assert_eq!(code, refused, "key B while key A is connected");
    publish_all(b.addr, &[("a/6", "m6")]).await;
    assert_eq!(topics(&receive(&mut a, 1).await), ["a/6"], "A is still connected");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_is_refused_0x87_and_the_owner_gets_its_messages_v5() {
    foreign_key_is_refused(ProtocolVersion::V5, 0x87).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_is_refused_rc5_and_the_owner_gets_its_messages_v311() {
    foreign_key_is_refused(ProtocolVersion::V3_1_1, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_takes_over_its_own_session() {
    let b = broker_with(|_| {}).await;
    let v = ProtocolVersion::V5;
    let mut first = connect_as(b.addr, "dev-a", login("key-a", A, v, false), false).await;
    subscribe(&mut first, 1, "a/#", QoS::AtLeastOnce).await;
    let mut second = connect_as(b.addr, "dev-a", login("key-a", A, v, false), true).await;
    assert_eq!(recv_disconnect(&mut first).await.code, 0x8E, "Session taken over");
    publish_all(b.addr, &[("a/1", "m1")]).await;
    assert_eq!(topics(&receive(&mut second, 1).await), ["a/1"], "the subscription came along");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_key_takeover_withholds_what_the_new_key_may_not_read() {
    let b = broker_with(|c| c.auth.session_takeover = dataloom::config::SessionTakeover::AnyKey).await;
    let v = ProtocolVersion::V5;
    let mut a = connect_as(b.addr, "dev-a", login("key-a", A, v, false), false).await;
    subscribe(&mut a, 1, "a/#", QoS::AtLeastOnce).await;
    subscribe(&mut a, 2, "shared/#", QoS::AtLeastOnce).await;
    // a/0 reaches A and stays unacknowledged (in flight) when A leaves.
    publish_all(b.addr, &[("a/0", "m0")]).await;
    assert_eq!(text(&recv_publish(&mut a).await), "m0");
    disconnect(a, 0, Default::default()).await;
    publish_all(b.addr, &[("a/1", "m1"), ("shared/1", "s1"), ("a/2", "m2")]).await;

    // B may resume the session but receives only what it may read.
    let mut bee = connect_as(b.addr, "dev-a", login("key-b", B, v, false), true).await;
    let got = receive(&mut bee, 1).await;
    assert_eq!(topics(&got), ["shared/1"]);
    assert!(until_pingresp(&mut bee).await.is_empty(), "nothing B may not read");
    disconnect(bee, 0, Default::default()).await;

    // Nothing was deleted: the owner gets the rest, the in-flight one as a resend.
    let mut a = connect_as(b.addr, "dev-a", login("key-a", A, v, false), true).await;
    let got = receive(&mut a, 3).await;
    assert_eq!(topics(&got), ["a/0", "a/1", "a/2"]);
    assert_eq!(got.iter().map(|(_, _, d)| *d).collect::<Vec<_>>(), [true, false, false]);
    assert!(until_pingresp(&mut a).await.is_empty(), "shared/1 went to B once, and only once");
    b.stop().await;
}

/// `[[auth.keys]]` entries for the config file of the real binary.
fn keys_toml() -> String {
    let mut out = String::new();
    for k in keys() {
        let (key, _) = k.into_record().expect("valid key");
        let r = &key.record;
        let list = |v: &[String]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        out.push_str(&format!(
            "[[auth.keys]]\nid = {:?}\nsecret_sha256 = {:?}\npublish = [{}]\nsubscribe = [{}]\n\n",
            r.id,
            r.secret_sha256,
            list(&r.publish),
            list(&r.subscribe)
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_survives_sigkill_and_restart() {
    let mut site = Site::new();
    let config = site.tmp.path().join("dataloom.toml");
    std::fs::write(&config, keys_toml()).expect("write config");
    site.args = vec!["--config".into(), config.display().to_string()];
    let proc = site.start().await;
    let v = ProtocolVersion::V3_1_1;
    let mut a = connect_as(proc.addr, "dev-a", login("key-a", A, v, false), false).await;
    subscribe(&mut a, 1, "a/#", QoS::AtLeastOnce).await;
    disconnect(a, 0, Default::default()).await;
    publish_all(proc.addr, &[("a/1", "m1"), ("a/2", "m2")]).await;
    proc.kill_9().await;

    let proc = site.start().await;
    for clean in [false, true] {
        let (_c, code, _) = try_connect(proc.addr, "dev-a", login("key-b", B, v, clean)).await;
        assert_eq!(code, 5, "key B refused after the restart, clean {clean}");
    }
    proc.stderr
        .wait_for("the refusal logged", |l| {
            l.contains("CONNECT refused") && l.contains("another identity") && l.contains("key key-a")
        })
        .await;
    let mut a = connect_as(proc.addr, "dev-a", login("key-a", A, v, false), true).await;
    assert_eq!(topics(&receive(&mut a, 2).await), ["a/1", "a/2"]);
    proc.kill_9().await;
}
