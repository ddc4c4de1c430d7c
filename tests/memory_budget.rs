//! The broker-wide memory budget (issue 14, `limits.max_memory`), against the real binary:
//! usage is a byte account checked against the process's RSS; above 95 % of the budget new
//! stored messages are refused (v5 0x97, 3.1.1 close, retained QoS 0 dropped) while deletes
//! still pass; at 100 % CONNECT is refused (0x89) and `/readyz` says 503; everything lifts by
//! itself when usage falls. The memory store keeps the account free of the disk engine's
//! buffers, so every step is exact.
mod common;
mod v5_util;

use std::net::SocketAddr;

use common::binary::{Proc, Site};
use common::{RawClient, http_get};
use dataloom::codec::{Packet, ProtocolVersion, Publish, QoS};
use tokio::io::AsyncWriteExt;
use v5_util::{connect_with, publish, send_publish};

const MIB: usize = 1 << 20;
const PAYLOAD: usize = 64 * 1024;

/// A sample `name` (with its label set, e.g. `{action="publish_refused"}`) from `/metrics`.
async fn metric(http: SocketAddr, name: &str) -> f64 {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Resident set size of the broker process, bytes.
fn rss(p: &Proc) -> usize {
    common::rss_of(&p.child.id().expect("broker running").to_string())
}

fn site(budget: Option<usize>) -> Site {
    let mut s = Site::new();
    s.args.extend(["--storage".into(), "memory".into()]);
    // No $SYS topics: the retained count is the test's own.
    s.env.push(("DATALOOM_MQTT__SYS_INTERVAL".into(), "0s".into()));
    if let Some(b) = budget {
        s.env.push(("DATALOOM_LIMITS__MAX_MEMORY".into(), b.to_string()));
    }
    s
}

fn retained(topic: &str, pkid: u16, payload: &[u8]) -> Publish {
    Publish { retain: true, ..publish(topic, QoS::AtLeastOnce, pkid, payload) }
}

async fn connack(addr: SocketAddr, id: &str) -> u8 {
    connect_with(addr, id, |_| {}).await.1.code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shedding_follows_its_order_and_lifts_when_usage_falls() {
    // What the broker holds with no client: its baseline account.
    let probe = site(Some(1 << 30)).start().await;
    let http = probe.http_addr().await;
    let baseline = metric(http, "dataloom_memory_used_bytes").await as usize;
    assert_eq!(metric(http, "dataloom_memory_budget_bytes").await as usize, 1 << 30);
    probe.stop().await;

    let budget = baseline + 16 * MIB;
    let b = site(Some(budget)).start().await;
    let http = b.http_addr().await;
    let used = || async { metric(http, "dataloom_memory_used_bytes").await as usize };
    assert!(used().await < budget * 9 / 10, "starts below the shedding mark");

    // 1. Retained 64 KiB values (QoS 1) are accepted until the account reaches 95 %; the next
    //    is refused with 0x97 and a reason string, and nothing accepted is lost.
    let (mut p, _) = connect_with(b.addr, "filler", |_| {}).await;
    let payload = vec![b'x'; PAYLOAD];
    let mut accepted = 0u16;
    let refused = loop {
        let code = send_publish(&mut p, retained(&format!("fill/{accepted}"), accepted + 1, &payload)).await;
        // 0x10: accepted, no subscriber matched (the value is state all the same).
        if code != 0x10 {
            break code;
        }
        accepted += 1;
        assert!(usize::from(accepted) * PAYLOAD < 2 * budget, "never refused");
    };
    assert_eq!(refused, 0x97, "QoS 1 PUBLISH at 95 % is refused with Quota exceeded");
    let at_refusal = used().await;
    assert!(at_refusal * 100 >= budget * 95, "refused at {at_refusal} of {budget}");
    assert!(usize::from(accepted) * PAYLOAD >= 8 * MIB, "only {accepted} values fit in 16 MiB of room");
    assert_eq!(metric(http, "dataloom_load_shed_total{action=\"publish_refused\"}").await, 1.0);
    assert_eq!(metric(http, "dataloom_retained_messages").await as u16, accepted);

    // The account follows what the process really holds.
    let resident = rss(&b);
    eprintln!(
        "budget {} KiB (baseline {} KiB + 16 MiB): {accepted} values accepted, refused at {} KiB; RSS {} KiB",
        budget >> 10,
        baseline >> 10,
        at_refusal >> 10,
        resident >> 10
    );
    assert!(
        at_refusal <= resident * 2 && resident <= at_refusal * 2,
        "account {at_refusal} bytes vs RSS {resident} bytes"
    );

    // 2. At 95 %: a retained QoS 0 value is dropped (counted); a 3.1.1 QoS 1 PUBLISH closes its
    //    connection (3.1.1 has no negative ack); a CONNECT is still accepted.
    send_publish(&mut p, Publish { retain: true, ..publish("fill/q0", QoS::AtMostOnce, 0, &payload) }).await;
    let (mut old, ack) = connect_with(b.addr, "v311", |c| c.protocol = ProtocolVersion::V3_1_1).await;
    assert_eq!(ack.code, 0, "CONNECT is accepted below 100 %");
    old.send_packet(&Packet::Publish(retained("fill/v311", 1, &payload))).await;
    assert!(old.until_closed().await.is_empty(), "3.1.1 QoS 1 at 95 %: closed without a PUBACK");
    assert_eq!(metric(http, "dataloom_load_shed_total{action=\"retained_dropped\"}").await, 1.0);

    // 3. At 100 %: connections holding half of a 1 MiB PUBLISH fill their read buffers until a
    //    CONNECT is refused with 0x89 Server busy and /readyz answers 503.
    let mut partial = Vec::new();
    let refused_connect = loop {
        let (mut c, _) = connect_with(b.addr, &format!("half{}", partial.len()), |_| {}).await;
        // PUBLISH QoS 0, remaining length 1 MiB - 16 (0xF0 0xFF 0x3F), then half of it.
        let mut head = vec![0x30, 0xF0, 0xFF, 0x3F, 0x00, 0x01, b'h', 0x00];
        head.resize(MIB / 2, b'h');
        c.stream.write_all(&head).await.expect("write half a packet");
        partial.push(c);
        let code = connack(b.addr, "probe").await;
        if code != 0 {
            break code;
        }
        assert!(partial.len() < 64, "CONNECT never refused at {} of {budget}", used().await);
    };
    assert_eq!(refused_connect, 0x89, "CONNECT at 100 % gets Server busy");
    let (status, body) = http_get(http, "/readyz").await;
    assert_eq!(status, 503, "/readyz at 100 %: {body}");
    assert!(metric(http, "dataloom_load_shed_total{action=\"connect_refused\"}").await >= 1.0);

    // 4. Usage falls, the levels lift by themselves: CONNECT and /readyz first ...
    drop(partial);
    let mut lifted = false;
    for _ in 0..100 {
        if connack(b.addr, "probe").await == 0 {
            lifted = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(lifted, "CONNECT still refused after the half packets closed");
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    // ... then deleting the state (an empty retained payload is never refused) brings stored
    // messages back.
    for i in 0..accepted {
        assert_eq!(
            send_publish(&mut p, retained(&format!("fill/{i}"), i + 1, b"")).await,
            0x10,
            "delete {i}"
        );
    }
    assert_eq!(metric(http, "dataloom_retained_messages").await, 0.0);
    assert!(used().await < budget * 9 / 10, "account back below 90 % after the deletes");
    assert_eq!(send_publish(&mut p, retained("fill/again", 1, &payload)).await, 0x10);
    b.stop().await;
}

/// A client whose socket buffer is small (an IoT device) and that never reads after SUBACK.
async fn stalled_subscriber(addr: SocketAddr, id: usize) -> RawClient {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = sock.connect(addr).await.expect("connect");
    let mut c = RawClient { stream, buf: bytes::BytesMut::new(), version: ProtocolVersion::V5 };
    subscribed(&mut c, &format!("stalled{id}")).await;
    c
}

/// Sends CONNECT and SUBSCRIBE `flood/#` (QoS 0) and waits for CONNACK and SUBACK.
async fn subscribed(c: &mut RawClient, id: &str) {
    c.send_packet(&Packet::Connect(Box::new(v5_util::connect_packet(id)))).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.code == 0), "CONNACK for {id}");
    let sub = dataloom::codec::Subscribe {
        pkid: 1,
        filters: vec![v5_util::filter("flood/#", QoS::AtMostOnce)],
        properties: Default::default(),
    };
    c.send_packet(&Packet::Subscribe(sub)).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))), "SUBACK for {id}");
}

const CONNECTIONS: usize = 10_000;
const STALLED: usize = 1_000;
const GOOD: usize = 10;
const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 300;
const FLOOD_BUDGET: usize = 320 * MIB;

/// Opens `n` connections (CONNECT answered) from `first`, 100 at a time.
async fn idle_clients(addr: SocketAddr, first: usize, n: usize) -> Vec<RawClient> {
    let mut all = Vec::with_capacity(n);
    for chunk in (first..first + n).collect::<Vec<_>>().chunks(100) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            set.spawn(async move { connect_with(addr, &format!("idle{i}"), |_| {}).await });
        }
        while let Some(r) = set.join_next().await {
            let (c, ack) = r.expect("connect task");
            assert_eq!(ack.code, 0);
            all.push(c);
        }
    }
    all
}

/// Reads `flood/#` until every publisher's last message arrived; returns (messages, longest
/// gap between two of them). Panics (fails the test) when nothing arrives for `common::WAIT`.
async fn good_subscriber(mut c: RawClient) -> (usize, std::time::Duration) {
    let (mut got, mut gap, mut last, mut ends) = (0, std::time::Duration::ZERO, std::time::Instant::now(), 0);
    while ends < PUBLISHERS {
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                got += 1;
                gap = gap.max(last.elapsed());
                last = std::time::Instant::now();
                ends += usize::from(p.payload.first() == Some(&b'E'));
            }
            other => panic!("good subscriber got {other:?}"),
        }
    }
    (got, gap)
}

/// Issue 14's flood: 10,000 connections, 1,000 of them subscribers that never read, publishers
/// flooding 64 KiB QoS 0 messages. The broker stays under its budget (RSS sampled from /proc),
/// the well-behaved subscribers keep receiving to the end, `/readyz` stays 200, and a good
/// client connecting every 100 ms meanwhile gets its CONNACK within 50 ms (p99).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_to_stalled_subscribers_stays_inside_the_budget() {
    let b = site(Some(FLOOD_BUDGET)).start().await;
    let http = b.http_addr().await;
    let idle = idle_clients(b.addr, 0, CONNECTIONS - STALLED - GOOD - PUBLISHERS).await;
    let mut stalled = Vec::with_capacity(STALLED);
    for i in 0..STALLED {
        stalled.push(stalled_subscriber(b.addr, i).await);
    }
    let (done_tx, done) = tokio::sync::watch::channel(false);
    let mut good = tokio::task::JoinSet::new();
    for i in 0..GOOD {
        let mut c = RawClient::connect(b.addr).await;
        subscribed(&mut c, &format!("good{i}")).await;
        good.spawn(good_subscriber(c));
    }
    let baseline = rss(&b);

    // Sample the broker's RSS and /readyz while the flood runs.
    let pid = b.child.id().expect("running").to_string();
    let sampler = tokio::spawn({
        let done = done.clone();
        async move {
            let (mut peak, mut unready, mut account) = (0usize, 0usize, 0usize);
            while !*done.borrow() {
                peak = peak.max(common::rss_of(&pid));
                unready += usize::from(http_get(http, "/readyz").await.0 != 200);
                account = account.max(metric(http, "dataloom_memory_used_bytes").await as usize);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            (peak, unready, account)
        }
    });
    // A well-behaved client connecting every 100 ms while the flood runs: CONNECT to CONNACK.
    let prober = tokio::spawn({
        let done = done.clone();
        let addr = b.addr;
        async move {
            let mut took = Vec::new();
            while !*done.borrow() {
                let t = std::time::Instant::now();
                let (c, ack) = connect_with(addr, &format!("probe{}", took.len()), |_| {}).await;
                assert_eq!(ack.code, 0, "a good client's CONNECT during the flood");
                took.push(t.elapsed());
                drop(c);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            took.sort();
            took
        }
    });
    let started = std::time::Instant::now();
    let mut pubs = tokio::task::JoinSet::new();
    for i in 0..PUBLISHERS {
        let (mut c, _) = connect_with(b.addr, &format!("pub{i}"), |_| {}).await;
        pubs.spawn(async move {
            for n in 0..PER_PUBLISHER {
                let mut payload = vec![b'x'; PAYLOAD];
                payload[0] = if n + 1 == PER_PUBLISHER { b'E' } else { b'x' };
                send_publish(&mut c, publish(&format!("flood/{i}"), QoS::AtMostOnce, 0, &payload)).await;
            }
            // A QoS 1 round trip: everything before it was read and routed.
            assert_eq!(send_publish(&mut c, publish("flood-done", QoS::AtLeastOnce, 1, b"")).await, 0x10);
            c
        });
    }
    let mut publishers = Vec::new();
    while let Some(r) = pubs.join_next().await {
        publishers.push(r.expect("publisher"));
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let mut received = Vec::new();
    let got = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(r) = good.join_next().await {
            received.push(r.expect("good subscriber"));
        }
    })
    .await;
    done_tx.send_replace(true);
    let (peak, unready, account) = sampler.await.expect("sampler");
    let connects = prober.await.expect("prober");
    let p99 = connects[(connects.len() * 99 / 100).min(connects.len() - 1)];
    let shed = metric(http, "dataloom_load_shed_total{action=\"qos0_delivery\"}").await;
    let dropped = metric(http, "dataloom_messages_dropped_total{reason=\"queue_full\"}").await;
    eprintln!(
        "flood: {} connections, {} MiB published in {flood_secs:.1} s; broker RSS {} MiB before, peak {} MiB \
         (account peak {} MiB, budget {} MiB); good subscribers got {:?}; shed {shed}, queue_full drops {dropped}; \
         {} good CONNECTs, p99 {p99:?}",
        idle.len() + stalled.len() + GOOD + PUBLISHERS,
        PUBLISHERS * PER_PUBLISHER * PAYLOAD / MIB,
        baseline / MIB,
        peak / MIB,
        account / MIB,
        FLOOD_BUDGET / MIB,
        received,
        connects.len(),
    );
    assert!(got.is_ok(), "good subscribers stopped receiving: {received:?}");
    assert!(peak < FLOOD_BUDGET, "peak RSS {peak} over the budget {FLOOD_BUDGET}");
    assert_eq!(unready, 0, "/readyz answered other than 200 during the flood");
    assert!(p99 < std::time::Duration::from_millis(50), "good CONNECT p99 {p99:?} during the flood");
    for (n, gap) in &received {
        assert!(*n >= PUBLISHERS, "a good subscriber got only {n} messages");
        assert!(*gap < std::time::Duration::from_secs(10), "a good subscriber waited {gap:?} for a message");
    }
    drop((idle, stalled, publishers));
    b.stop().await;
}
