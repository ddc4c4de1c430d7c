//! History and replay (issue 17, item 3) against real brokers: entries kept per `[[history]]`
//! rule and read back over HTTP in revision order with paging, permissions as for
//! `/v1/state`, background pruning to `keep`, survival of `kill -9`, and MQTT 5 replay
//! (`last:N`, `since:`) followed by the live stream without a gap or a duplicate at the seam.
mod common;
mod v5_util;

use std::net::SocketAddr;

use common::binary::Site;
use common::{RawClient, TestBroker, WAIT, http_json as http};
use dataloom::auth::KeySpec;
use dataloom::codec::{Packet, Properties, Publish, QoS, Subscribe};
use dataloom::config::{Backend, Config, Durability, HistoryRule};
use serde_json::Value;
use v5_util::*;

/// A broker on a fjall store in `dir` keeping history of `sensors/#` (newest `keep`).
async fn broker(dir: &tempfile::TempDir, keep: u64, edit: impl FnOnce(&mut Config)) -> TestBroker {
    let path = dir.path().to_path_buf();
    TestBroker::start_with(move |c| {
        c.storage.backend = Backend::Fjall;
        c.storage.data_dir = path;
        c.history = vec![HistoryRule { filter: "sensors/#".into(), keep: Some(keep), max_age: None }];
        edit(c);
    })
    .await
}

fn http_addr(b: &TestBroker) -> SocketAddr {
    b.running.as_ref().expect("running").http_addr.expect("http listener")
}

async fn get(b: &TestBroker, path: &str) -> Value {
    let (code, v) = http(http_addr(b), "GET", path, &[], b"").await;
    assert_eq!(code, 200, "GET {path}: {v}");
    v
}

fn field<'a>(v: &'a Value, name: &str) -> Vec<&'a Value> {
    v["items"].as_array().expect("items").iter().map(|i| &i[name]).collect()
}

fn values(v: &Value) -> Vec<String> {
    field(v, "value").iter().map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned)).collect()
}

fn revisions(v: &Value) -> Vec<u64> {
    field(v, "revision").iter().map(|r| r.as_u64().expect("revision")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_publish_on_a_history_topic_is_kept_and_read_back_in_revision_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker(&dir, 1000, |_| {}).await;
    let mut c = connect(&b, "hist-pub").await;
    assert!(pub1(&mut c, 1, "sensors/a", b"a1").await < 0x80);
    send_publish(&mut c, publish("sensors/b", QoS::AtMostOnce, 0, b"b1")).await;
    let mut retained = publish("sensors/a", QoS::AtLeastOnce, 2, b"a2");
    retained.retain = true;
    assert!(send_publish(&mut c, retained).await < 0x80);
    assert!(pub1(&mut c, 3, "other/x", b"no history").await < 0x80);
    assert!(pub1(&mut c, 4, "sensors/b", b"b2").await < 0x80);

    let a = get(&b, "/v1/history/sensors/a").await;
    assert_eq!(values(&a), ["a1", "a2"]);
    assert_eq!(field(&a, "retain"), [&Value::Bool(false), &Value::Bool(true)]);
    assert!(field(&a, "time").iter().all(|t| t.as_str().is_some_and(|t| t.ends_with('Z'))), "{a}");
    let state = get(&b, "/v1/state/sensors/a").await;
    assert_eq!(state["revision"], a["items"][1]["revision"], "a retained publish keeps one revision");

    let all = get(&b, "/v1/history?filter=sensors/%23").await;
    assert_eq!(values(&all), ["a1", "b1", "a2", "b2"], "every topic, in revision order");
    let revs = revisions(&all);
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    assert_eq!(values(&get(&b, "/v1/history/other/x").await), Vec::<String>::new());

    let page1 = get(&b, "/v1/history?filter=sensors/%23&limit=3").await;
    assert_eq!(values(&page1), ["a1", "b1", "a2"]);
    let cursor = page1["next_cursor"].as_str().expect("a next page");
    let page2 = get(&b, &format!("/v1/history?filter=sensors/%23&limit=3&cursor={cursor}")).await;
    assert_eq!((values(&page2), &page2["next_cursor"]), (vec!["b2".to_string()], &Value::Null));

    let since = get(&b, &format!("/v1/history/sensors/b?since={}", revs[2])).await;
    assert_eq!(values(&since), ["b2"]);
    let until = get(&b, &format!("/v1/history?filter=sensors/%23&until={}", revs[1])).await;
    assert_eq!(values(&until), ["a1", "b1"]);
    let future = get(&b, "/v1/history/sensors/a?since=2999-01-01T00:00:00Z").await;
    assert_eq!(values(&future), Vec::<String>::new());
    let past = get(&b, "/v1/history/sensors/a?since=2000-01-01T00:00:00%2B02:00").await;
    assert_eq!(values(&past), ["a1", "a2"]);
    for bad in ["/v1/history/sensors/a?since=yesterday", "/v1/history?limit=0", "/v1/history/a/%23"] {
        let (code, v) = http(http_addr(&b), "GET", bad, &[], b"").await;
        assert_eq!((code, v["error"].as_str()), (400, Some("bad_request")), "{bad}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_reads_need_the_keys_subscribe_permission() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker(&dir, 1000, |_| {}).await;
    let auth = &b.running.as_ref().expect("running").auth;
    let spec = KeySpec {
        name: "reader".into(),
        subscribe: vec!["sensors/#".into()],
        deny_subscribe: vec!["sensors/secret".into()],
        publish: vec!["sensors/#".into()],
        ..KeySpec::default()
    };
    let (info, secret) = auth.create(spec).await.expect("key");
    let bearer = format!("Bearer {}:{secret}", info.id);
    let me = [("Authorization", bearer.as_str())];
    let a = http_addr(&b);
    for (topic, body) in [("sensors/open", "1"), ("sensors/secret", "2")] {
        assert_eq!(http(a, "PUT", &format!("/v1/state/{topic}"), &me, body.as_bytes()).await.0, 200);
    }
    let (code, list) = http(a, "GET", "/v1/history?filter=sensors/%23", &me, b"").await;
    assert_eq!((code, values(&list)), (200, vec!["1".to_string()]), "a topic it may not read is left out");
    assert_eq!(http(a, "GET", "/v1/history/sensors/secret", &me, b"").await.0, 403);
    assert_eq!(http(a, "GET", "/v1/history?filter=%23", &me, b"").await.0, 403);
    assert_eq!(http(a, "GET", "/v1/history/sensors/open", &[], b"").await.0, 401);

    // Over MQTT: a key that may not subscribe gets SUBACK 0x87 and nothing replayed.
    let (mut c, _) = connect_with(b.addr, "replayer", |p| {
        p.username = Some(info.id.clone());
        p.password = Some(secret.clone().into_bytes().into());
    })
    .await;
    let ack = subscribe_replay(&mut c, 1, "other/#", "last:10").await;
    assert_eq!(ack, vec![0x87]);
    let ack = subscribe_replay(&mut c, 2, "sensors/+", "last:10").await;
    assert_eq!(ack, vec![1]);
    let got = recv_publish(&mut c).await;
    assert_eq!((&got.topic[..], &got.payload[..]), (&b"sensors/open"[..], &b"1"[..]));
    expect_silence(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_beyond_keep_are_pruned_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker(&dir, 3, |_| {}).await;
    let mut c = connect(&b, "prune-pub").await;
    for i in 0..10u16 {
        assert!(pub1(&mut c, i + 1, "sensors/p", format!("{i}").as_bytes()).await < 0x80);
    }
    let broker = b.running.as_ref().expect("running").broker.clone();
    // The pruner runs every 2 s; run it now rather than wait.
    let pruned = broker.prune_history(Some("sensors/p".into())).await.expect("prune");
    assert!(pruned >= 7 || values(&get(&b, "/v1/history/sensors/p").await).len() == 3, "{pruned}");
    assert_eq!(values(&get(&b, "/v1/history/sensors/p").await), ["7", "8", "9"]);
}

/// SUBSCRIBE at QoS 1 with User Property `replay`; returns the SUBACK codes.
async fn subscribe_replay(c: &mut RawClient, pkid: u16, f: &str, replay: &str) -> Vec<u8> {
    let mut properties = Properties::default();
    properties.user_properties.push(("replay".into(), replay.into()));
    // No retained burst: only the replay and the live stream.
    let mut f = filter(f, QoS::AtLeastOnce);
    f.retain_handling = dataloom::codec::RetainHandling::Never;
    let filters = vec![f];
    c.send_packet(&Packet::Subscribe(Subscribe { pkid, filters, properties })).await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => s.codes,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

/// The next PUBLISH, acknowledged when QoS 1.
async fn recv_acked(c: &mut RawClient) -> Publish {
    let p = recv_publish(c).await;
    if p.qos == QoS::AtLeastOnce {
        send_ack(c, Packet::PubAck, p.pkid).await;
    }
    p
}

fn replayed(p: &Publish) -> Option<&str> {
    p.properties.user_properties.iter().find(|(k, _)| k == "replayed").map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_last_n_then_since_then_the_live_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker(&dir, 1000, |_| {}).await;
    let mut p = connect(&b, "replay-pub").await;
    for i in 1..=5u16 {
        let mut m = publish("sensors/r", QoS::AtLeastOnce, i, format!("{i}").as_bytes());
        m.retain = i == 5;
        assert!(send_publish(&mut p, m).await < 0x80);
    }
    let mut s = connect(&b, "replay-sub").await;
    let mut properties = Properties::default();
    properties.user_properties.push(("replay".into(), "last:3".into()));
    let mut f = filter("sensors/#", QoS::AtLeastOnce);
    f.retain_handling = dataloom::codec::RetainHandling::Never;
    s.send_packet(&Packet::Subscribe(Subscribe { pkid: 1, filters: vec![f], properties })).await;
    assert!(matches!(s.recv().await, Some(Packet::SubAck(a)) if a.codes == [1]));
    for want in ["3", "4", "5"] {
        let got = recv_acked(&mut s).await;
        assert_eq!(&got.payload[..], want.as_bytes());
        assert!(!got.retain, "replayed messages have RETAIN=0");
        assert!(replayed(&got).is_some_and(|t| t.ends_with('Z')), "{:?}", got.properties);
    }
    assert!(pub1(&mut p, 6, "sensors/r", b"6").await < 0x80);
    let live = recv_acked(&mut s).await;
    assert_eq!((&live.payload[..], replayed(&live)), (&b"6"[..], None));

    let mut t = connect(&b, "since-sub").await;
    assert_eq!(subscribe_replay(&mut t, 1, "sensors/r", "since:2000-01-01T00:00:00Z").await, [1]);
    let mut got = Vec::new();
    while got.len() < 6 {
        let m = recv_acked(&mut t).await;
        got.push((String::from_utf8_lossy(&m.payload).into_owned(), m.retain));
    }
    let want: Vec<(String, bool)> = (1..=6).map(|i| (i.to_string(), false)).collect();
    assert_eq!(got, want, "the whole history, RETAIN=0");
    let mut u = connect(&b, "bad-replay").await;
    assert_eq!(subscribe_replay(&mut u, 1, "sensors/r", "first:3").await, [0x83]);
}

/// The seam: a publisher publishes numbered messages without pause while clients start
/// replays of the whole history at different moments; each must see 1..=N exactly once, in
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_meets_the_live_stream_without_gap_or_duplicate() {
    const N: u32 = 1500;
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker(&dir, 100_000, |c| c.storage.durability = Durability::Buffered).await;
    let (count_tx, count_rx) = tokio::sync::watch::channel(0u32);
    let mut p = connect(&b, "seam-pub").await;
    let publisher = tokio::spawn(async move {
        for i in 1..=N {
            let pkid = u16::try_from(i % 60_000 + 1).expect("pkid");
            assert!(pub1(&mut p, pkid, "sensors/seq", i.to_string().as_bytes()).await < 0x80);
            count_tx.send_replace(i);
        }
    });
    let mut readers = Vec::new();
    for (k, start_at) in [100u32, 600, 1100].into_iter().enumerate() {
        let mut rx = count_rx.clone();
        let addr = b.addr;
        readers.push(tokio::spawn(async move {
            tokio::time::timeout(WAIT * 6, rx.wait_for(|n| *n >= start_at))
                .await
                .expect("in time")
                .expect("count");
            let (mut c, _) = connect_with(addr, &format!("seam-{k}"), |_| {}).await;
            assert_eq!(subscribe_replay(&mut c, 1, "sensors/seq", "last:1000000").await, [1]);
            let mut next = 1u32;
            while next <= N {
                let m = tokio::time::timeout(WAIT * 6, recv_acked(&mut c)).await.expect("next message");
                let n: u32 = String::from_utf8_lossy(&m.payload).parse().expect("a number");
                assert_eq!(n, next, "client {k} (started at {start_at}): expected {next}, got {n}");
                next += 1;
            }
            expect_silence(&mut c).await;
        }));
    }
    publisher.await.expect("publisher");
    for r in readers {
        r.await.expect("reader saw 1..=N once each, in order");
    }
}

/// `kill -9` after the acks: every acknowledged entry comes back, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_history_survives_kill_9() {
    let mut site = Site::new();
    let cfg = site.tmp.path().join("dataloom.toml");
    std::fs::write(&cfg, "[[history]]\nfilter = \"sensors/#\"\nkeep = 1000\nmax_age = \"7d\"\n")
        .expect("config");
    site.args = vec!["--config".into(), cfg.display().to_string()];
    let proc = site.start().await;
    let (mut c, _) = connect_with(proc.addr, "k9", |_| {}).await;
    for i in 1..=200u16 {
        assert!(pub1(&mut c, i, "sensors/k", i.to_string().as_bytes()).await < 0x80);
    }
    proc.kill_9().await;
    let proc = site.start().await;
    let http_at = proc.http_addr().await;
    let mut seen = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let (code, page) =
            http(http_at, "GET", &format!("/v1/history/sensors/k?limit=50{cursor}"), &[], b"").await;
        assert_eq!(code, 200, "{page}");
        seen.extend(values(&page));
        match page["next_cursor"].as_str() {
            Some(n) => cursor = format!("&cursor={n}"),
            None => break,
        }
    }
    let want: Vec<String> = (1..=200).map(|i: u32| i.to_string()).collect();
    assert_eq!(seen, want);
    // New entries continue the revisions after the restart.
    let (mut c, _) = connect_with(proc.addr, "k9-again", |_| {}).await;
    assert!(pub1(&mut c, 1, "sensors/k", b"201").await < 0x80);
    let (_, page) = http(http_at, "GET", "/v1/history/sensors/k?since=0&limit=1000", &[], b"").await;
    let revs = revisions(&page);
    assert_eq!(revs.len(), 201);
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    proc.stop().await;
}

#[tokio::test]
async fn the_memory_store_refuses_history_with_a_clear_error() {
    let mut c = Config::default();
    c.storage.backend = Backend::Memory;
    c.history = vec![HistoryRule { filter: "a/#".into(), keep: Some(1), max_age: None }];
    let e = c.validate().expect_err("refused").to_string();
    assert!(e.contains("history") && e.contains("fjall"), "{e}");
    c.storage.backend = Backend::Fjall;
    c.history[0].keep = None;
    assert!(c.validate().expect_err("needs a bound").to_string().contains("keep"));
    c.history[0] = HistoryRule { filter: "$SYS/#".into(), keep: Some(1), max_age: None };
    assert!(c.validate().is_err());
}

/// The README's mosquitto_sub replay example, run as written (plus the port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_mosquitto_sub_replay_example_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker(&dir, 1000, |_| {}).await;
    let port = b.port().to_string();
    for c in [21, 22, 23] {
        let body = format!("{{\"celsius\":{c}}}");
        let args = ["-p", &port, "-q", "1", "-t", "sensors/kitchen/temp", "-m", &body];
        assert!(common::mosquitto("mosquitto_pub", &args).await.0);
    }
    let args = [
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-t",
        "sensors/#",
        "-D",
        "subscribe",
        "user-property",
        "replay",
        "last:2",
        "-F",
        "%t %p %P",
        "-C",
        "2",
    ];
    let (ok, out) = common::mosquitto("mosquitto_sub", &args).await;
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, c) in lines.iter().zip([22, 23]) {
        let want = format!("sensors/kitchen/temp {{\"celsius\":{c}}} replayed:");
        assert!(line.starts_with(&want) && line.ends_with('Z'), "{line}");
    }
}
