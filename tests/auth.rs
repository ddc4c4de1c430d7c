//! API keys seen by real clients: every CONNACK, SUBACK and PUBACK code of authentication and
//! authorization on MQTT 3.1.1 and 5.0, `%c`/`%u`, deny lists, client-id patterns, expiry,
//! retained state hidden from keys that may not read it, revocation of live connections, the
//! brute-force slowdown, and mosquitto_pub/sub with `-u/-P`.
mod common;
mod v5_util;

use std::time::{Duration, Instant};

use common::{RawClient, TestBroker, WAIT, mosquitto};
use dataloom::auth::KeySpec;
use dataloom::codec::{Packet, ProtocolVersion, QoS};
use v5_util::*;

/// Creates a key on the running broker; returns its secret.
async fn key(b: &TestBroker, spec: KeySpec) -> String {
    let auth = &b.running.as_ref().expect("running").auth;
    auth.create(spec).await.expect("key created").1
}

fn spec(name: &str, publish: &[&str], subscribe: &[&str]) -> KeySpec {
    KeySpec {
        name: name.into(),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        ..KeySpec::default()
    }
}

/// A CONNECT editor setting credentials (and the protocol version).
fn creds(user: &str, pass: &str, v: ProtocolVersion) -> impl FnOnce(&mut dataloom::codec::Connect) {
    let (user, pass) = (user.to_string(), pass.to_string());
    move |c| {
        c.protocol = v;
        c.username = Some(user);
        c.password = Some(bytes::Bytes::from(pass));
    }
}

/// Connects raw in version `v` and returns the CONNACK code as the client sees it on the
/// wire: v5 reason code, or the 3.1.1 return code (raw bytes).
async fn connack(
    b: &TestBroker,
    v: ProtocolVersion,
    id: &str,
    edit: impl FnOnce(&mut dataloom::codec::Connect),
) -> u8 {
    let mut c = RawClient::connect(b.addr).await;
    c.version = v;
    let mut p = connect_packet(id);
    p.protocol = v;
    edit(&mut p);
    c.send_packet(&Packet::Connect(Box::new(p))).await;
    if v.is_v5() {
        match c.recv().await {
            Some(Packet::ConnAck(a)) => a.code,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    } else {
        use tokio::io::AsyncReadExt;
        let mut raw = [0u8; 4];
        tokio::time::timeout(WAIT, c.stream.read_exact(&mut raw)).await.expect("in time").expect("CONNACK");
        assert_eq!(&raw[..2], &[0x20, 0x02]);
        raw[3]
    }
}

/// A raw client logged in with a key, in version `v`.
async fn login(b: &TestBroker, v: ProtocolVersion, id: &str, user: &str, pass: &str) -> RawClient {
    let mut c = RawClient::connect(b.addr).await;
    c.version = v;
    let mut p = connect_packet(id);
    creds(user, pass, v)(&mut p);
    c.send_packet(&Packet::Connect(Box::new(p))).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, 0, "{user} logs in: {a:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c
}

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_codes_on_both_versions() {
    let b = TestBroker::start().await;
    let good = key(&b, spec("good", &["a/#"], &["a/#"])).await;
    let old = key(&b, KeySpec { expires: "2001-01-01T00:00:00Z".into(), ..spec("old", &["#"], &[]) }).await;
    let pinned = key(&b, KeySpec { client_id: "dev-*".into(), ..spec("pinned", &["#"], &[]) }).await;
    for (v, bad_creds, not_auth) in [(V5, 0x86, 0x87), (V311, 4, 5)] {
        assert_eq!(connack(&b, v, "c1", creds("good", &good, v)).await, 0);
        assert_eq!(connack(&b, v, "c1", creds("nobody", &good, v)).await, bad_creds, "unknown key");
        assert_eq!(connack(&b, v, "c1", creds("good", "wrong", v)).await, bad_creds, "wrong secret");
        assert_eq!(connack(&b, v, "c1", creds("old", &old, v)).await, not_auth, "expired");
        assert_eq!(connack(&b, v, "x-1", creds("pinned", &pinned, v)).await, not_auth, "client id");
        assert_eq!(connack(&b, v, "dev-1", creds("pinned", &pinned, v)).await, 0, "client id matches");
        assert_eq!(connack(&b, v, "c1", |_| {}).await, not_auth, "anonymous once keys exist");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_allowed_by_config_gets_its_own_permissions() {
    let b = TestBroker::start_with(|c| {
        c.auth.allow_anonymous = true;
        c.auth.anonymous.get_or_insert_default().publish = vec!["public/#".into()];
        c.auth.anonymous.get_or_insert_default().subscribe = vec!["public/#".into()];
    })
    .await;
    key(&b, spec("someone", &["#"], &["#"])).await;
    let mut c = connect(&b, "anon").await;
    assert_eq!(pub1(&mut c, 1, "public/x", b"1").await, 0x10);
    assert_eq!(pub1(&mut c, 2, "private/x", b"1").await, 0x87);
    let ack = subscribe_many(
        &mut c,
        3,
        vec![filter("public/#", QoS::AtMostOnce), filter("#", QoS::AtMostOnce)],
        None,
    )
    .await;
    assert_eq!(ack.codes, vec![0, 0x87]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_codes_v5_and_deny_wins() {
    let b = TestBroker::start().await;
    let s = key(&b, KeySpec { deny_publish: vec!["a/secret/#".into()], ..spec("p", &["a/#"], &[]) }).await;
    let denials = dataloom::metrics::get().authz_denials[0].get();
    let mut c = login(&b, V5, "p1", "p", &s).await;
    assert_eq!(pub1(&mut c, 1, "a/x", b"1").await, 0x10, "allowed (no subscribers)");
    assert_eq!(pub1(&mut c, 2, "b/x", b"1").await, 0x87);
    assert_eq!(pub1(&mut c, 3, "a/secret/x", b"1").await, 0x87, "deny wins");
    assert_eq!(send_publish(&mut c, publish("b/x", QoS::ExactlyOnce, 4, b"1")).await, 0x87, "PUBREC");
    let mut schema = publish("$schema/a/x", QoS::AtLeastOnce, 5, br#"{"type":"object"}"#);
    schema.retain = true;
    assert_eq!(send_publish(&mut c, schema.clone()).await, 0x87, "$schema/ needs admin");
    assert!(dataloom::metrics::get().authz_denials[0].get() >= denials + 4);
    // The connection stays usable.
    assert_eq!(pub1(&mut c, 6, "a/y", b"1").await, 0x10);
    let a = key(&b, KeySpec { admin: true, ..spec("root", &[], &[]) }).await;
    let mut admin = login(&b, V5, "adm", "root", &a).await;
    assert!(matches!(send_publish(&mut admin, schema).await, 0 | 0x10), "admins register schemas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_publish_v311_is_acked_and_dropped_or_closes() {
    for disconnect in [false, true] {
        let b = TestBroker::start_with(|c| {
            if disconnect {
                c.auth.on_forbidden_publish = dataloom::auth::OnForbidden::Disconnect;
            }
        })
        .await;
        let w = key(&b, spec("w", &["ok/#"], &[])).await;
        let r = key(&b, spec("r", &[], &["#"])).await;
        let mut reader = login(&b, V5, "r1", "r", &r).await;
        subscribe(&mut reader, 1, "#", QoS::AtLeastOnce).await;
        let mut c = login(&b, V311, "w1", "w", &w).await;
        c.send_packet(&Packet::Publish(publish("no/x", QoS::AtLeastOnce, 7, b"x"))).await;
        if disconnect {
            assert!(c.until_closed().await.is_empty(), "3.1.1: closed without an ack");
        } else {
            match c.recv().await {
                Some(Packet::PubAck(a)) => assert_eq!((a.pkid, a.code), (7, 0)),
                other => panic!("expected PUBACK, got {other:?}"),
            }
            assert_eq!(pub1(&mut c, 8, "ok/x", b"fine").await, 0);
            assert_eq!(text(&recv_publish(&mut reader).await), "fine", "the forbidden one never arrived");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_codes_on_both_versions() {
    let b = TestBroker::start().await;
    let s = key(&b, KeySpec { deny_subscribe: vec!["s/private/#".into()], ..spec("s", &[], &["s/#"]) }).await;
    for (v, no) in [(V5, 0x87), (V311, 0x80)] {
        let mut c = login(&b, v, "s1", "s", &s).await;
        let filters = ["s/+", "x/y", "s/private/a", "$SYS/#", "#", "$share/g/s/a"];
        let filters = filters.iter().map(|f| filter(f, QoS::AtLeastOnce)).collect();
        let ack = subscribe_many(&mut c, 1, filters, None).await;
        assert_eq!(ack.codes, vec![1, no, no, no, no, 1], "{v:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_and_will_topics() {
    let b = TestBroker::start().await;
    let s = key(&b, spec("dev", &["d/%u/%c/#"], &["cmd/%c/#"])).await;
    let mut c = login(&b, V5, "cid", "dev", &s).await;
    assert_eq!(pub1(&mut c, 1, "d/dev/cid/t", b"1").await, 0x10);
    assert_eq!(pub1(&mut c, 2, "d/dev/other/t", b"1").await, 0x87);
    assert_eq!(pub1(&mut c, 3, "d/other/cid/t", b"1").await, 0x87);
    let ack = subscribe_many(
        &mut c,
        4,
        vec![filter("cmd/cid/#", QoS::AtMostOnce), filter("cmd/+/#", QoS::AtMostOnce)],
        None,
    )
    .await;
    assert_eq!(ack.codes, vec![0, 0x87]);
    for (v, no) in [(V5, 0x87), (V311, 5)] {
        let bad_will = |c: &mut dataloom::codec::Connect| {
            creds("dev", &s, v)(c);
            c.will = Some(will("elsewhere/x", "bye"));
        };
        assert_eq!(connack(&b, v, "w1", bad_will).await, no, "will topic not allowed");
        let good_will = |c: &mut dataloom::codec::Connect| {
            creds("dev", &s, v)(c);
            c.will = Some(will("d/dev/w2/status", "bye"));
        };
        assert_eq!(connack(&b, v, "w2", good_will).await, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_state_is_hidden_through_wildcards() {
    let b = TestBroker::start().await;
    let w = key(&b, spec("writer", &["#"], &[])).await;
    let r = key(&b, KeySpec { deny_subscribe: vec!["s/private/#".into()], ..spec("reader", &[], &["s/#"]) })
        .await;
    let mut writer = login(&b, V5, "w", "writer", &w).await;
    for (i, t) in ["s/public/a", "s/private/b", "s/private/c/d", "s/public/e"].iter().enumerate() {
        let mut p = publish(t, QoS::AtLeastOnce, i as u16 + 1, t.as_bytes());
        p.retain = true;
        send_publish(&mut writer, p).await;
    }
    for v in [V5, V311] {
        let mut c = login(&b, v, "rd", "reader", &r).await;
        subscribe(&mut c, 1, "s/#", QoS::AtMostOnce).await;
        let got: Vec<String> = until_pingresp(&mut c)
            .await
            .iter()
            .filter_map(|p| if let Packet::Publish(p) = p { Some(text(p)) } else { None })
            .collect();
        let mut got = got;
        got.sort();
        assert_eq!(got, vec!["s/public/a", "s/public/e"], "{v:?}");
        // Live messages under the denied subtree are not delivered either.
        assert_eq!(pub1(&mut writer, 10, "s/private/live", b"no").await, 0);
        assert_eq!(pub1(&mut writer, 11, "s/public/live", b"yes").await, 0);
        assert_eq!(text(&recv_publish(&mut c).await), "yes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_live_connections_and_refuses_later() {
    let b = TestBroker::start().await;
    key(&b, spec("keeper", &[], &[])).await;
    let s = key(&b, spec("victim", &["#"], &["#"])).await;
    let mut v5 = login(&b, V5, "v5", "victim", &s).await;
    let mut v3 = login(&b, V311, "v3", "victim", &s).await;
    let auth = &b.running.as_ref().expect("running").auth;
    assert_eq!(auth.revoke("victim").await.expect("revoked"), 2);
    let d = recv_disconnect(&mut v5).await;
    assert_eq!(d.code, 0x98, "Administrative action");
    assert!(v3.until_closed().await.is_empty(), "3.1.1 is just closed");
    assert_eq!(connack(&b, V5, "v5", creds("victim", &s, V5)).await, 0x86);
    assert_eq!(connack(&b, V311, "v3", creds("victim", &s, V311)).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_slow_down_but_good_clients_do_not() {
    let b = TestBroker::start().await;
    let s = key(&b, spec("good", &["#"], &["#"])).await;
    let before = dataloom::metrics::get().auth_failures[1].get();
    let mut took = Vec::new();
    for _ in 0..6 {
        let t = Instant::now();
        assert_eq!(connack(&b, V5, "bad", creds("good", "guess", V5)).await, 0x86);
        took.push(t.elapsed());
    }
    assert!(took[5] >= took[0] + Duration::from_millis(200), "no slowdown: {took:?}");
    assert!(dataloom::metrics::get().auth_failures[1].get() >= before + 6);
    // While the address is penalized (a bad attempt in flight), a good client is fast.
    let addr = b.addr;
    let slow = tokio::spawn(async move {
        let mut c = RawClient::connect(addr).await;
        let mut p = connect_packet("bad");
        creds("good", "guess", V5)(&mut p);
        c.send_packet(&Packet::Connect(Box::new(p))).await;
        c.recv().await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    login(&b, V5, "fine", "good", &s).await;
    assert!(t.elapsed() < Duration::from_millis(300), "good client slowed: {:?}", t.elapsed());
    assert!(!slow.is_finished(), "the bad attempt is still waiting");
    slow.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_with_credentials() {
    let b = TestBroker::start().await;
    let s = key(&b, spec("mq", &["m/#"], &["m/#"])).await;
    let port = b.port().to_string();
    for v in ["mqttv311", "mqttv5"] {
        let base = ["-h", "127.0.0.1", "-p", &port, "-V", v, "-u", "mq"];
        let args = [&base[..], &["-P", &s, "-t", "m/x", "-m", v, "-r", "-q", "1"]].concat();
        assert!(mosquitto("mosquitto_pub", &args).await.0, "{v}: good key publishes");
        let args = [&base[..], &["-P", &s, "-t", "m/#", "-C", "1", "-W", "5"]].concat();
        let (ok, out) = mosquitto("mosquitto_sub", &args).await;
        assert!(ok && out.trim() == v, "{v}: {out:?}");
        let args = [&base[..], &["-P", "not-the-secret", "-t", "m/x", "-m", "x"]].concat();
        assert!(!mosquitto("mosquitto_pub", &args).await.0, "{v}: wrong secret refused");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_read_sys_and_others_do_not() {
    let b = TestBroker::start_with(|c| c.mqtt.sys_interval = Duration::from_millis(200)).await;
    let a = key(&b, KeySpec { admin: true, ..spec("adm", &[], &[]) }).await;
    let u = key(&b, spec("user", &[], &["#"])).await;
    let mut admin = login(&b, V5, "a", "adm", &a).await;
    subscribe(&mut admin, 1, "$SYS/#", QoS::AtMostOnce).await;
    assert!(recv_publish(&mut admin).await.topic.starts_with(b"$SYS/"));
    let mut user = login(&b, V5, "u", "user", &u).await;
    let ack = subscribe_many(
        &mut user,
        1,
        vec![filter("$SYS/#", QoS::AtMostOnce), filter("$dead/#", QoS::AtMostOnce)],
        None,
    )
    .await;
    assert_eq!(ack.codes, vec![0x87, 0x87]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v4_and_v5_see_the_connack_codes() {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;
    let b = TestBroker::start().await;
    let s = key(&b, spec("rq", &["r/#"], &["r/#"])).await;
    let v4 = |pass: &str| {
        let mut o = rumqttc::MqttOptions::new("rq4", "127.0.0.1", b.port());
        o.set_credentials("rq", pass);
        rumqttc::AsyncClient::new(o, 10).1
    };
    let v4_first = |mut ev: rumqttc::EventLoop| async move {
        tokio::time::timeout(WAIT, ev.poll()).await.expect("answer in time").map(|_| ())
    };
    assert!(v4_first(v4(&s)).await.is_ok());
    match v4_first(v4("wrong")).await {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("expected refusal, got {other:?}"),
    }
    let v5 = |pass: &str| {
        let mut o = rumqttc::v5::MqttOptions::new("rq5", "127.0.0.1", b.port());
        o.set_credentials("rq", pass);
        rumqttc::v5::AsyncClient::new(o, 10).1
    };
    let mut ok = v5(&s);
    assert!(tokio::time::timeout(WAIT, ok.poll()).await.expect("in time").is_ok());
    let mut bad = v5("wrong");
    match tokio::time::timeout(WAIT, bad.poll()).await.expect("in time") {
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, V5Code::BadUserNamePassword)
        }
        other => panic!("expected refusal, got {other:?}"),
    }
}

/// Rough CONNECT rate with and without a key (`cargo test --test auth -- --ignored --nocapture`);
/// the real number comes from `make bench`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing report, not a check"]
async fn connect_rate_with_and_without_auth() {
    const N: usize = 2000;
    let b = TestBroker::start().await;
    let rate = |user: Option<(String, String)>| {
        let addr = b.addr;
        async move {
            let t = Instant::now();
            for i in 0..N {
                let mut c = RawClient::connect(addr).await;
                let mut p = connect_packet(&format!("r{i}"));
                if let Some((u, s)) = &user {
                    creds(u, s, V5)(&mut p);
                }
                c.send_packet(&Packet::Connect(Box::new(p))).await;
                assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.code == 0));
            }
            N as f64 / t.elapsed().as_secs_f64()
        }
    };
    let off = rate(None).await;
    let s = key(&b, spec("bench", &["#"], &["#"])).await;
    let on = rate(Some(("bench".into(), s))).await;
    println!("CONNECT/s: auth off {off:.0}, auth on {on:.0} ({:.0}%)", on / off * 100.0);
}
