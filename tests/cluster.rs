//! The cluster (issue 19, first slice): real dataloom binaries joined through a real 3-server
//! NATS JetStream cluster (tests/common/nats.rs). Live messages cross nodes in order at the
//! granted QoS; a retained PUBLISH acknowledged on one node is in the snapshot of a SUBSCRIBE
//! on another right after the PUBACK; deletes propagate; a restarted node keeps its state and
//! catches up with what changed while it was down.
mod common;
mod v5_util;

use std::net::SocketAddr;
use std::time::Duration;

use common::binary::{Proc, Site};
use common::nats::NatsCluster;
use common::{RawClient, WAIT};
use dataloom::codec::{Packet, QoS};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions};
use v5_util::*;

/// A dataloom site whose `cluster.toml` joins `nats` (URLs starting with server `first`);
/// `extra` lines go into `[cluster]`.
fn node(nats: &NatsCluster, first: usize, extra: &str) -> Site {
    let mut site = Site::new();
    let urls: Vec<String> = nats.urls_from(first).iter().map(|u| format!("{u:?}")).collect();
    let conf = site.tmp.path().join("cluster.toml");
    std::fs::write(&conf, format!("[cluster]\nnats_urls = [{}]\nreplicas = 3\n{extra}\n", urls.join(", ")))
        .expect("write cluster.toml");
    site.args = vec!["--config".into(), conf.display().to_string()];
    site
}

/// Connects a v5 raw client to a node.
async fn raw(addr: SocketAddr, id: &str) -> RawClient {
    let (c, ack) = connect_with(addr, id, |_| {}).await;
    assert_eq!(ack.code, 0, "CONNACK for {id}");
    c
}

/// Publishes a retained QoS 1 message and waits for the PUBACK (0, or 0x10 with no subscriber).
async fn retain(c: &mut RawClient, pkid: u16, topic: &str, payload: &[u8]) {
    let mut p = publish(topic, QoS::AtLeastOnce, pkid, payload);
    p.retain = true;
    let code = send_publish(c, p).await;
    assert!(code == 0 || code == 0x10, "retained publish to {topic} acknowledged with {code:#x}");
}

/// A fresh client on `addr` subscribes to `filter`: the retained snapshot as (topic, payload),
/// exactly the number its v5 SUBACK announced.
async fn snapshot(addr: SocketAddr, id: &str, filter_: &str) -> Vec<(String, String)> {
    let mut c = raw(addr, id).await;
    let ack = subscribe_many(&mut c, 1, vec![filter(filter_, QoS::AtMostOnce)], None).await;
    let n: usize = ack
        .properties
        .user_properties
        .iter()
        .find(|(k, _)| k == "retained")
        .and_then(|(_, v)| v.parse().ok())
        .expect("SUBACK carries the retained count");
    let mut got = Vec::new();
    for _ in 0..n {
        let p = recv_publish(&mut c).await;
        assert!(p.retain, "snapshot message has RETAIN=1");
        got.push((String::from_utf8_lossy(&p.topic).into_owned(), text(&p)));
    }
    got.sort();
    got
}

/// A rumqttc (MQTT 3.1.1) client on `addr`.
fn rumqttc_client(addr: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30)).set_inflight(100);
    AsyncClient::new(o, 2_000)
}

/// Polls `ev` until `n` PUBLISHes arrived (bounded); returns (topic, payload, qos).
async fn receive(ev: &mut EventLoop, n: usize) -> Vec<(String, String, rumqttc::QoS)> {
    let mut got = Vec::with_capacity(n);
    tokio::time::timeout(WAIT * 4, async {
        while got.len() < n {
            if let Event::Incoming(rumqttc::Packet::Publish(p)) =
                ev.poll().await.expect("subscriber connection")
            {
                got.push((p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned(), p.qos));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} messages arrived in time", got.len()));
    got
}

/// Waits (bounded) until `sub` receives a probe that `publisher` keeps sending to `topic`:
/// the NATS interest of the subscriber's node reached the publisher's NATS server.
async fn until_linked(publisher: &mut RawClient, sub: &mut RawClient, topic: &str) {
    let linked = tokio::time::timeout(WAIT * 2, async {
        loop {
            send_publish(publisher, publish(topic, QoS::AtMostOnce, 0, b"probe")).await;
            let got = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await;
            if let Ok(Some(Packet::Publish(p))) = got {
                assert_eq!(&p.topic[..], topic.as_bytes());
                return;
            }
        }
    })
    .await;
    linked.expect("a probe crossed the cluster");
}

async fn start(site: &Site) -> Proc {
    let p = site.start().await;
    p.stderr.wait_for("joined the cluster", |l| l.contains("joined the cluster")).await;
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_cross_nodes_in_order_at_the_granted_qos() {
    let nats = NatsCluster::start(3).await;
    let (site_a, site_b) = (node(&nats, 0, "node_id = \"a\""), node(&nats, 1, ""));
    let (a, b) = (start(&site_a).await, start(&site_b).await);

    // Link check with raw clients, and v5 properties and hostile topic characters across.
    let mut pub_a = raw(a.addr, "pub-a").await;
    let mut sub_b = raw(b.addr, "sub-b").await;
    subscribe(&mut sub_b, 1, "#", QoS::AtLeastOnce).await;
    until_linked(&mut pub_a, &mut sub_b, "probe").await;
    let odd = "a.b/ c/*/>/$x//_5F";
    let mut p = publish(odd, QoS::AtLeastOnce, 7, b"odd");
    p.properties.content_type = Some("text/plain".into());
    p.properties.user_properties.push(("k".into(), "v\u{e9}".into()));
    p.properties.correlation_data = Some(bytes::Bytes::from_static(b"\x00\x01"));
    assert_eq!(send_publish(&mut pub_a, p).await, 0);
    let got = loop {
        let p = recv_publish(&mut sub_b).await;
        if &p.topic[..] != b"probe" {
            break p;
        }
    };
    assert_eq!((&got.topic[..], &got.payload[..], got.qos), (odd.as_bytes(), &b"odd"[..], QoS::AtLeastOnce));
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.properties.user_properties, vec![("k".to_string(), "v\u{e9}".to_string())]);
    assert_eq!(got.properties.correlation_data.as_deref(), Some(&b"\x00\x01"[..]));
    send_ack(&mut sub_b, Packet::PubAck, got.pkid).await;

    // 1,000 messages at QoS 1 and 1,000 at QoS 0 from rumqttc on A to rumqttc on B, in order;
    // a QoS 0 subscription downgrades QoS 1 messages.
    let (sub, mut sub_ev) = rumqttc_client(b.addr, "rq-sub-b");
    sub.subscribe("live/q1", rumqttc::QoS::AtLeastOnce).await.expect("subscribe");
    sub.subscribe("live/q0", rumqttc::QoS::AtMostOnce).await.expect("subscribe");
    tokio::time::timeout(WAIT, async {
        let mut acks = 0;
        while acks < 2 {
            if let Event::Incoming(rumqttc::Packet::SubAck(_)) = sub_ev.poll().await.expect("poll") {
                acks += 1;
            }
        }
    })
    .await
    .expect("two SUBACKs");
    let (publisher, mut pub_ev) = rumqttc_client(a.addr, "rq-pub-a");
    const N: usize = 1_000;
    let sending = tokio::spawn(async move {
        for i in 0..N {
            publisher
                .publish("live/q1", rumqttc::QoS::AtLeastOnce, false, format!("{i}"))
                .await
                .expect("queue");
            publisher
                .publish("live/q0", rumqttc::QoS::AtLeastOnce, false, format!("{i}"))
                .await
                .expect("queue");
        }
        publisher
    });
    let acked = tokio::spawn(async move {
        let mut acks = 0;
        while acks < 2 * N {
            if let Event::Incoming(rumqttc::Packet::PubAck(_)) = pub_ev.poll().await.expect("publisher poll")
            {
                acks += 1;
            }
        }
        pub_ev
    });
    let started = std::time::Instant::now();
    let got = receive(&mut sub_ev, 2 * N).await;
    eprintln!("{} messages from A to B in {:?}", 2 * N, started.elapsed());
    let _publisher = sending.await.expect("publisher task");
    let _ = tokio::time::timeout(WAIT * 4, acked).await.expect("every PUBACK").expect("acks task");
    for (topic, qos) in [("live/q1", rumqttc::QoS::AtLeastOnce), ("live/q0", rumqttc::QoS::AtMostOnce)] {
        let seq: Vec<usize> = got
            .iter()
            .filter(|(t, ..)| t == topic)
            .map(|(_, p, q)| {
                assert_eq!(*q, qos, "{topic} at the granted QoS");
                p.parse().expect("a number")
            })
            .collect();
        assert_eq!(seq, (0..N).collect::<Vec<_>>(), "{topic}: every message once, in order");
    }
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_state_acknowledged_on_one_node_is_read_on_another() {
    let nats = NatsCluster::start(3).await;
    let (site_a, site_b) = (node(&nats, 0, ""), node(&nats, 2, ""));
    let (a, b) = (start(&site_a).await, start(&site_b).await);
    let mut pub_a = raw(a.addr, "state-pub").await;
    // Right after each PUBACK, no waiting: the SUBSCRIBE on B catches up first.
    let mut acks = Vec::new();
    for round in 0..20u16 {
        let value = format!("v{round}");
        let sent = std::time::Instant::now();
        retain(&mut pub_a, round + 1, "state/x", value.as_bytes()).await;
        acks.push(sent.elapsed());
        let got = snapshot(b.addr, &format!("reader-{round}"), "state/#").await;
        assert_eq!(got, vec![("state/x".to_string(), value)], "round {round}");
    }
    acks.sort();
    eprintln!("retained PUBACK with replicas 3: median {:?}, max {:?} (20 rounds)", acks[10], acks[19]);
    retain(&mut pub_a, 100, "state/y", b"y").await;
    retain(&mut pub_a, 101, "state/x", b"").await;
    let got = snapshot(b.addr, "reader-deleted", "state/#").await;
    assert_eq!(got, vec![("state/y".to_string(), "y".to_string())], "the delete reached B");
    // And back: B's writes are A's state too, and A's own index follows the log.
    let mut pub_b = raw(b.addr, "state-pub-b").await;
    retain(&mut pub_b, 1, "state/z", b"from b").await;
    let got = snapshot(a.addr, "reader-a", "state/#").await;
    let want = [("state/y", "y"), ("state/z", "from b")].map(|(t, v)| (t.to_string(), v.to_string()));
    assert_eq!(got, want);
    // Ten SUBSCRIBEs at once right after an ack share the catch-up rounds, and all see it.
    retain(&mut pub_a, 102, "state/y", b"y2").await;
    let ids: Vec<String> = (0..10).map(|i| format!("burst-{i}")).collect();
    let burst = futures_util::future::join_all(ids.iter().map(|id| snapshot(b.addr, id, "state/y"))).await;
    for got in burst {
        assert_eq!(got, vec![("state/y".to_string(), "y2".to_string())]);
    }
    // The same with the mosquitto clients: mosquitto_pub returns after the PUBACK.
    let (a_port, b_port) = (a.addr.port().to_string(), b.addr.port().to_string());
    let (ok, _) = common::mosquitto(
        "mosquitto_pub",
        &["-h", "127.0.0.1", "-p", &a_port, "-t", "state/m", "-m", "hello", "-r", "-q", "1"],
    )
    .await;
    assert!(ok, "mosquitto_pub on A");
    let (ok, out) = common::mosquitto(
        "mosquitto_sub",
        &["-h", "127.0.0.1", "-p", &b_port, "-t", "state/m", "-C", "1", "-W", "5"],
    )
    .await;
    assert!(ok, "mosquitto_sub on B got the retained message");
    assert_eq!(out.trim(), "hello");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_topic_leave_every_node_in_the_same_state() {
    let nats = NatsCluster::start(3).await;
    let (site_a, site_b) = (node(&nats, 0, ""), node(&nats, 1, ""));
    let (a, b) = (start(&site_a).await, start(&site_b).await);
    let writer = |addr: SocketAddr, name: &'static str| async move {
        let mut c = raw(addr, name).await;
        // 15 retained QoS 1 publishes in flight at once (receive maximum 20), then every PUBACK.
        for i in 1..=15u16 {
            let mut p = publish("race/t", QoS::AtLeastOnce, i, format!("{name}-{i}").as_bytes());
            p.retain = true;
            c.send_packet(&Packet::Publish(p)).await;
        }
        for _ in 1..=15 {
            match c.recv().await {
                Some(Packet::PubAck(ack)) => assert!(ack.code == 0 || ack.code == 0x10, "{ack:?}"),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    };
    tokio::join!(writer(a.addr, "a"), writer(b.addr, "b"));
    let on_a = snapshot(a.addr, "check-a", "race/#").await;
    let on_b = snapshot(b.addr, "check-b", "race/#").await;
    assert_eq!(on_a.len(), 1, "{on_a:?}");
    assert_eq!(on_a, on_b, "both nodes applied the stream's one order");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_state_and_catches_up() {
    let nats = NatsCluster::start(3).await;
    let site_a = node(&nats, 0, "");
    // B is configured through the environment alone.
    let mut site_b = Site::new();
    site_b.env.push(("DATALOOM_CLUSTER__NATS_URLS".into(), nats.urls_from(1).join(",")));
    let a = start(&site_a).await;
    let b = start(&site_b).await;
    let mut pub_a = raw(a.addr, "restart-pub").await;
    retain(&mut pub_a, 1, "r/kept", b"1").await;
    retain(&mut pub_a, 2, "r/changed", b"old").await;
    retain(&mut pub_a, 3, "r/deleted", b"doomed").await;
    assert_eq!(snapshot(b.addr, "before", "r/#").await.len(), 3);
    let node_id = std::fs::read_to_string(site_b.data_dir().join("node-id")).expect("generated node id kept");
    b.stop().await;

    retain(&mut pub_a, 4, "r/changed", b"new").await;
    retain(&mut pub_a, 5, "r/deleted", b"").await;
    retain(&mut pub_a, 6, "r/added", b"+").await;
    let b = start(&site_b).await;
    // Its own store had the three topics: they were recovered before it read the log.
    b.stderr.wait_for("state recovered", |l| l.contains("state recovered") && l.contains("retained=3")).await;
    let got = snapshot(b.addr, "after", "r/#").await;
    let want = [("r/added", "+"), ("r/changed", "new"), ("r/kept", "1")]
        .map(|(t, v)| (t.to_string(), v.to_string()));
    assert_eq!(got, want, "B caught up with what changed while it was down");
    assert_eq!(
        std::fs::read_to_string(site_b.data_dir().join("node-id")).expect("node id"),
        node_id,
        "the generated node id survives restarts"
    );
    let (status, metrics) = common::http_get(b.http_addr().await, "/metrics").await;
    assert_eq!(status, 200);
    let applied: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dataloom_cluster_state_applied_sequence "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the applied position is a metric");
    assert!(applied >= 6, "six changes were acknowledged, B applied up to {applied}");
    drop(a);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_nats_refuses_to_start_with_a_clear_error() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut site = Site::new();
    let conf = site.tmp.path().join("cluster.toml");
    std::fs::write(
        &conf,
        format!(
            "[cluster]\nnats_urls = [\"nats://127.0.0.1:{port}\"]\nreplicas = 1\nsync_timeout = \"1s\"\n"
        ),
    )
    .expect("write");
    site.args = vec!["--config".into(), conf.display().to_string()];
    match site.try_start().await {
        common::binary::Started::Exited { status, stderr } => {
            assert!(!status.success());
            assert!(stderr.iter().any(|l| l.contains("cluster") && l.contains("NATS")), "{stderr:?}");
        }
        common::binary::Started::Up(_) => panic!("started without NATS"),
    }
}
