//! Durability black-box tests (issue 4): the real `dataloom` binary, real `kill -9` (SIGKILL) and
//! SIGTERM, restarts on the same data directory. What the broker acknowledged must survive.
//!
//! Kill points are pseudo-random from a seed (`DURABILITY_SEED`, default [`SEED`]), printed so a
//! failing run can be repeated. Run with `--nocapture` to see what each round measured.
mod common;
mod v5_util;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::RawClient;
use common::binary::{START, Site, Started};
use common::flows::{Closed, Publisher, Rng};
use dataloom::codec::{self, Ack, ConnAck, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use v5_util::{connect_packet, filter, publish, subscribe_many};

/// Default seed of the kill points.
const SEED: u64 = 0x00da_7a10_0e5e_ed04;

/// Session expiry the persistent test sessions ask for (v5).
const LONG: u32 = 3600;

// ---------------------------------------------------------------------------------------------
// Clients.

/// Connects `client_id` with the given protocol, clean start and (v5) session expiry; asserts
/// success.
async fn connect(
    addr: SocketAddr,
    client_id: &str,
    version: ProtocolVersion,
    clean: bool,
    expiry: Option<u32>,
) -> (RawClient, ConnAck) {
    let mut c = RawClient::connect(addr).await;
    c.version = version;
    let mut p = connect_packet(client_id);
    p.protocol = version;
    p.clean_start = clean;
    if version.is_v5() {
        p.properties.session_expiry_interval = expiry;
    }
    c.send_packet(&Packet::Connect(Box::new(p))).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.code, 0, "CONNACK for {client_id}: {a:?}");
            (c, a)
        }
        other => panic!("expected CONNACK for {client_id}, got {other:?}"),
    }
}

/// A v5 client with clean start and no session expiry.
async fn connect_clean(addr: SocketAddr, client_id: &str) -> RawClient {
    connect(addr, client_id, ProtocolVersion::V5, true, None).await.0
}

/// Subscribes to one filter and asserts it was granted.
async fn subscribe(c: &mut RawClient, f: &str, qos: QoS) {
    let ack = subscribe_many(c, 1, vec![filter(f, qos)], None).await;
    assert_eq!(ack.codes, vec![qos as u8], "SUBACK for {f}");
}

/// Sends DISCONNECT (normal) and waits until the server closes the connection.
async fn disconnect(mut c: RawClient) {
    c.send_packet(&Packet::Disconnect(Disconnect { code: 0, properties: Properties::default() })).await;
    let rest = c.until_closed().await;
    assert!(rest.is_empty(), "unexpected packets after DISCONNECT: {rest:?}");
}

async fn send_ack(c: &mut RawClient, kind: fn(Ack) -> Packet, pkid: u16) {
    c.send_packet(&kind(Ack { pkid, code: 0, properties: Properties::default() })).await;
}

fn text(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// Publishes one message from `c` (packet id 1) and completes its flow; asserts success and
/// returns the reason code of the PUBACK/PUBREC (0x10: no matching subscribers).
async fn publish_one(
    c: &mut RawClient,
    topic: &str,
    payload: &str,
    qos: QoS,
    retain: bool,
    expiry: Option<u32>,
) -> u8 {
    let mut p = publish(topic, qos, 1, payload.as_bytes());
    p.retain = retain;
    p.properties.message_expiry_interval = expiry;
    c.send_packet(&Packet::Publish(p)).await;
    match (qos, c.recv().await) {
        (QoS::AtMostOnce, _) => panic!("publish_one is for QoS 1 and 2"),
        (QoS::AtLeastOnce, Some(Packet::PubAck(a))) if a.pkid == 1 && a.code < 0x80 => a.code,
        (QoS::ExactlyOnce, Some(Packet::PubRec(a))) if a.pkid == 1 && a.code < 0x80 => {
            send_ack(c, Packet::PubRel, 1).await;
            match c.recv().await {
                Some(Packet::PubComp(b)) if b.pkid == 1 && b.code == 0 => a.code,
                other => panic!("expected PUBCOMP for {topic}, got {other:?}"),
            }
        }
        (_, other) => panic!("expected the ack of {topic} {payload:?}, got {other:?}"),
    }
}

/// What a subscriber received.
#[derive(Debug, Clone)]
struct Got {
    payload: String,
    qos: QoS,
    dup: bool,
    pkid: u16,
}

/// Reads until the PUBLISH with payload `marker`, acknowledging like a client (PUBACK; PUBREC,
/// and PUBCOMP for each PUBREL) and finishing the QoS 2 flows still open then. Returns every
/// other PUBLISH and the packet ids of the PUBRELs.
async fn receive_until(c: &mut RawClient, marker: &str, limit: usize) -> (Vec<Got>, Vec<u16>) {
    let mut got = Vec::new();
    let mut rels = Vec::new();
    let mut awaiting_rel = HashSet::new();
    let mut seen_marker = false;
    for _ in 0..limit {
        if seen_marker && awaiting_rel.is_empty() {
            return (got, rels);
        }
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => send_ack(c, Packet::PubAck, p.pkid).await,
                    QoS::ExactlyOnce => {
                        awaiting_rel.insert(p.pkid);
                        send_ack(c, Packet::PubRec, p.pkid).await;
                    }
                }
                let payload = text(&p);
                assert!(!seen_marker, "PUBLISH {payload:?} after {marker:?}");
                if payload == marker {
                    seen_marker = true;
                } else {
                    got.push(Got { payload, qos: p.qos, dup: p.dup, pkid: p.pkid });
                }
            }
            Some(Packet::PubRel(a)) => {
                awaiting_rel.remove(&a.pkid);
                rels.push(a.pkid);
                send_ack(c, Packet::PubComp, a.pkid).await;
            }
            other => panic!("expected PUBLISH or PUBREL before {marker:?}, got {other:?}"),
        }
    }
    panic!("no {marker:?} (and the end of open QoS 2 flows) within {limit} packets")
}

// ---------------------------------------------------------------------------------------------
// Crash test: retained state.

const TOPICS: usize = 50;
const PUBLISHERS: usize = 5;
/// Messages in flight per publisher (the broker's Receive Maximum is 20).
const WINDOW: usize = 20;

fn crash_topic(t: usize) -> String {
    format!("dur/crash/{t}")
}

/// What the crash test knows about each topic across rounds.
#[derive(Default)]
struct Ledger {
    /// Highest value acknowledged per topic.
    acked: HashMap<usize, u64>,
    /// Highest value ever sent per topic (the next round continues above it).
    sent: HashMap<usize, u64>,
}

/// What the publishers of one crash round share.
struct Round {
    /// Highest value acknowledged per topic in this round.
    acked: Mutex<HashMap<usize, u64>>,
    /// Acknowledgements so far.
    hits: AtomicUsize,
    /// Notified at the `target`th acknowledgement.
    target: usize,
    fire: Notify,
}

/// One publisher of the crash test: retained QoS 1 counters on `topics` (from `next`), round
/// robin, until the broker dies. Returns the highest value sent per topic.
async fn counter_publisher(
    addr: SocketAddr,
    id: String,
    topics: Vec<usize>,
    mut next: HashMap<usize, u64>,
    round: Arc<Round>,
) -> HashMap<usize, u64> {
    let mut p = Publisher::new(connect_clean(addr, &id).await, WINDOW);
    let mut sent = HashMap::new();
    let mut k = 0;
    p.run_until_closed(
        || {
            let t = topics[k % topics.len()];
            k += 1;
            let v = next.get(&t).copied().unwrap_or(1);
            next.insert(t, v + 1);
            sent.insert(t, v);
            let mut m = publish(&crash_topic(t), QoS::AtLeastOnce, 0, v.to_string().as_bytes());
            m.retain = true;
            Some(((t, v), m))
        },
        |(t, v)| {
            let mut a = round.acked.lock().expect("acked");
            let e = a.entry(t).or_insert(0);
            *e = (*e).max(v);
            drop(a);
            if round.hits.fetch_add(1, Ordering::SeqCst) + 1 == round.target {
                round.fire.notify_one();
            }
        },
    )
    .await;
    sent
}

/// Reads the retained state under `dur/crash/#` from a fresh subscriber: topic index -> value.
async fn read_crash_state(addr: SocketAddr, id: &str) -> HashMap<usize, u64> {
    let mut c = connect_clean(addr, id).await;
    subscribe(&mut c, "dur/crash/#", QoS::AtMostOnce).await;
    let mut state = HashMap::new();
    for _ in 0..TOPICS * 4 {
        if state.len() == TOPICS {
            break;
        }
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                assert!(p.retain, "retained message without retain flag: {p:?}");
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let t: usize =
                    topic.strip_prefix("dur/crash/").and_then(|s| s.parse().ok()).expect("crash topic");
                let v: u64 = text(&p).parse().expect("counter payload");
                assert!(state.insert(t, v).is_none(), "retained {topic} sent twice");
            }
            other => panic!("expected retained PUBLISH, got {other:?} after {} topics", state.len()),
        }
    }
    assert_eq!(state.len(), TOPICS, "retained topics after restart");
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_keeps_every_acknowledged_retained_update() {
    crash_retained(Site::new(), 6).await;
}

/// Under `storage.durability = "buffered"` an ack waits for the write to reach the OS (not for
/// the fsync): kill -9 of the process loses nothing acknowledged either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffered_durability_loses_nothing_acknowledged_to_kill_9() {
    let mut site = Site::new();
    site.env.push(("DATALOOM_STORAGE__DURABILITY".into(), "buffered".into()));
    crash_retained(site, 4).await;
}

/// Rounds of concurrent retained updates, each ended by kill -9 at a seeded moment; after
/// every restart each topic holds at least its last acknowledged value.
async fn crash_retained(site: Site, rounds: usize) {
    let started = Instant::now();
    let mut rng = Rng::from_env("DURABILITY_SEED", SEED).0;
    let mut ledger = Ledger::default();
    let mut proc = site.start().await;
    for round in 0..rounds {
        let target = usize::try_from(rng.range(2000, 8000)).expect("small");
        let jitter = Duration::from_micros(rng.range(0, 3000));
        let shared = Arc::new(Round {
            acked: Mutex::new(HashMap::new()),
            hits: AtomicUsize::new(0),
            target,
            fire: Notify::new(),
        });
        let mut tasks = Vec::new();
        for i in 0..PUBLISHERS {
            let topics: Vec<usize> = (i..TOPICS).step_by(PUBLISHERS).collect();
            let next = topics.iter().map(|t| (*t, ledger.sent.get(t).map_or(1, |v| v + 1))).collect();
            tasks.push(tokio::spawn(counter_publisher(
                proc.addr,
                format!("dur-crash-pub-{round}-{i}"),
                topics,
                next,
                shared.clone(),
            )));
        }
        tokio::time::timeout(Duration::from_secs(15), shared.fire.notified())
            .await
            .unwrap_or_else(|_| panic!("round {round}: {target} acks within 15 s"));
        // A random offset from the ack that reached the target: kill mid group commit too.
        tokio::time::sleep(jitter).await;
        let at_kill = shared.hits.load(Ordering::SeqCst);
        proc.kill_9().await;
        for t in tasks {
            let sent = tokio::time::timeout(START, t).await.expect("publisher ends").expect("publisher");
            for (topic, v) in sent {
                let e = ledger.sent.entry(topic).or_insert(0);
                *e = (*e).max(v);
            }
        }
        let acked = std::mem::take(&mut *shared.acked.lock().expect("acked"));
        for (t, v) in &acked {
            let e = ledger.acked.entry(*t).or_insert(0);
            *e = (*e).max(*v);
        }

        proc = site.start().await;
        let state = read_crash_state(proc.addr, &format!("dur-crash-check-{round}")).await;
        let mut ahead = 0;
        for t in 0..TOPICS {
            let last_acked = ledger.acked.get(&t).copied().unwrap_or(0);
            let stored = state[&t];
            assert!(
                stored >= last_acked,
                "round {round}: {} holds {stored} after kill -9, but {last_acked} was acknowledged",
                crash_topic(t)
            );
            assert!(
                stored <= ledger.sent[&t],
                "round {round}: {} holds {stored}, never sent",
                crash_topic(t)
            );
            ahead += usize::from(stored > last_acked);
            // What survived is the new baseline: a later value only replaces it once acked.
            ledger.acked.insert(t, stored);
        }
        eprintln!(
            "crash round {round}: kill -9 at {at_kill} acked updates (target {target}, +{jitter:?}), \
             {} acked in all, {ahead}/{TOPICS} topics hold a later unacknowledged value",
            shared.hits.load(Ordering::SeqCst),
        );
    }
    proc.stop().await;
    eprintln!("crash test: {rounds} kill -9 rounds in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Crash test: persistent sessions.

/// Messages per round of the persistent-session crash test (half QoS 1, half QoS 2).
const SESSION_MSGS: usize = 1500;

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

/// Persistent subscribers of one round: name, protocol, granted QoS.
const SESSION_SUBS: [(&str, ProtocolVersion, QoS); 3] =
    [("q1", V5, QoS::AtLeastOnce), ("q2", V5, QoS::ExactlyOnce), ("q2v311", V311, QoS::ExactlyOnce)];

/// Even messages of the persistent-session crash test are QoS 2, odd ones QoS 1.
fn session_qos(i: usize) -> QoS {
    if i.is_multiple_of(2) { QoS::ExactlyOnce } else { QoS::AtLeastOnce }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_keeps_every_message_owed_to_offline_persistent_sessions() {
    let started = Instant::now();
    let mut rng = Rng::from_env("DURABILITY_SEED", SEED).0;
    let mut site = Site::new();
    // Every message must be owed, none dropped for the queue limit (default 1000).
    site.env.push(("DATALOOM_MQTT__MAX_QUEUED_MESSAGES".into(), "100000".into()));
    let mut proc = site.start().await;
    for round in 0..2 {
        let prefix = format!("dur/sess{round}");
        for (name, version, qos) in SESSION_SUBS {
            // 3.1.1: clean session 0 from the start; v5: clean start with a long expiry.
            let (mut c, _) =
                connect(proc.addr, &format!("dur-sess{round}-{name}"), version, version.is_v5(), Some(LONG))
                    .await;
            subscribe(&mut c, &format!("{prefix}/#"), qos).await;
            disconnect(c).await;
        }

        // A persistent publisher, so after the restart it can finish its flows as a client
        // would: DUP PUBLISH for what was not acknowledged, PUBREL for what was received.
        let pub_id = format!("dur-sess{round}-pub");
        let (c, _) = connect(proc.addr, &pub_id, V5, true, Some(LONG)).await;
        let p = Publisher::new(c, WINDOW);
        let target = usize::try_from(rng.range(200, 1400)).expect("small");
        let jitter = Duration::from_micros(rng.range(0, 3000));
        // The publisher keeps the window full until the kill, which comes at a random moment
        // after `target` acknowledgements.
        let fire = Arc::new(Notify::new());
        let topics = prefix.clone();
        let streaming = tokio::spawn(stream_until_killed(p, 0, target, fire.clone(), move |i| {
            (i < SESSION_MSGS).then(|| {
                publish(&format!("{topics}/{}", i % 8), session_qos(i), 0, format!("s{round}-{i}").as_bytes())
            })
        }));
        tokio::time::timeout(Duration::from_secs(15), fire.notified())
            .await
            .unwrap_or_else(|_| panic!("round {round}: {target} acks within 15 s"));
        tokio::time::sleep(jitter).await;
        proc.kill_9().await;
        let (mut p, sent, acked) =
            tokio::time::timeout(START, streaming).await.expect("publisher ends").expect("publisher");
        let acked_before_kill: HashSet<usize> = acked.into_iter().collect();
        let in_flight = p.inflight.len();

        proc = site.start().await;
        let (c, ack) = connect(proc.addr, &pub_id, V5, false, Some(LONG)).await;
        assert!(ack.session_present, "the publisher's persistent session survived kill -9");
        p.resume(c);
        let late = p.settle().await.len();
        disconnect(p.c).await;

        // Queued behind everything owed: once a subscriber has the marker, it has the rest.
        let marker = format!("marker-{round}");
        let mut m = connect_clean(proc.addr, &format!("dur-sess{round}-marker")).await;
        publish_one(&mut m, &format!("{prefix}/marker"), &marker, QoS::AtLeastOnce, false, None).await;
        disconnect(m).await;

        for (name, version, qos) in SESSION_SUBS {
            let id = format!("dur-sess{round}-{name}");
            let (mut c, ack) = connect(proc.addr, &id, version, false, Some(LONG)).await;
            assert!(ack.session_present, "{id}: persistent session survived kill -9");
            let (got, rels) = receive_until(&mut c, &marker, SESSION_MSGS * 3).await;
            let qos2_pkids: HashSet<u16> =
                got.iter().filter(|g| g.qos == QoS::ExactlyOnce).map(|g| g.pkid).collect();
            assert!(rels.iter().all(|r| qos2_pkids.contains(r)), "{id}: PUBREL without a QoS 2 PUBLISH");
            let mut count: HashMap<usize, usize> = HashMap::new();
            for g in &got {
                let i: usize = g
                    .payload
                    .strip_prefix(&format!("s{round}-"))
                    .and_then(|s| s.parse().ok())
                    .expect("payload");
                *count.entry(i).or_insert(0) += 1;
                if g.qos == QoS::ExactlyOnce {
                    assert_eq!(session_qos(i), QoS::ExactlyOnce, "{id}: {} delivered at QoS 2", g.payload);
                }
            }
            let mut lost: Vec<usize> =
                acked_before_kill.iter().filter(|i| !count.contains_key(i)).copied().collect();
            lost.sort_unstable();
            assert!(
                lost.is_empty(),
                "{id}: {} of {} messages acknowledged before kill -9 never delivered: {lost:?}",
                lost.len(),
                acked_before_kill.len()
            );
            let missing: Vec<usize> = (0..sent).filter(|i| !count.contains_key(i)).collect();
            assert!(missing.is_empty(), "{id}: messages acknowledged after the restart missing: {missing:?}");
            let twice: Vec<usize> = count
                .iter()
                .filter(|&(i, n)| *n > 1 && session_qos(*i) == QoS::ExactlyOnce && qos == QoS::ExactlyOnce)
                .map(|(i, _)| *i)
                .collect();
            assert!(twice.is_empty(), "{id}: QoS 2 messages delivered more than once: {twice:?}");
            let dups = count.values().filter(|n| **n > 1).count();
            eprintln!(
                "session round {round} {id}: {} deliveries, all {} sent messages present, {dups} delivered twice (QoS 1)",
                got.len(),
                sent
            );
            disconnect(c).await;
        }
        eprintln!(
            "session round {round}: kill -9 at {} acked of {} sent (target {target}, +{jitter:?}), \
             {in_flight} in flight, {late} acknowledged after the restart",
            acked_before_kill.len(),
            sent
        );
    }
    proc.stop().await;
    eprintln!("session crash test in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_redelivers_messages_in_flight_to_online_persistent_sessions() {
    let site = Site::new();
    let proc = site.start().await;
    let (mut s1, _) = connect(proc.addr, "dur-online-q1", V5, true, Some(LONG)).await;
    subscribe(&mut s1, "dur/online/q1", QoS::AtLeastOnce).await;
    let (mut s2, _) = connect(proc.addr, "dur-online-q2", V5, true, Some(LONG)).await;
    subscribe(&mut s2, "dur/online/q2", QoS::ExactlyOnce).await;
    let mut pubc = connect_clean(proc.addr, "dur-online-pub").await;
    for i in 0..10 {
        publish_one(&mut pubc, "dur/online/q1", &format!("one-{i}"), QoS::AtLeastOnce, false, None).await;
        publish_one(&mut pubc, "dur/online/q2", &format!("two-{i}"), QoS::ExactlyOnce, false, None).await;
    }
    // Received and never acknowledged.
    let mut sent1 = Vec::new();
    for _ in 0..10 {
        let p = v5_util::recv_publish(&mut s1).await;
        assert!(!p.dup && p.qos == QoS::AtLeastOnce, "{p:?}");
        sent1.push((p.pkid, text(&p)));
    }
    // The first five received (PUBREC, PUBREL came back), the rest not even that.
    let mut sent2 = Vec::new();
    for _ in 0..10 {
        let p = v5_util::recv_publish(&mut s2).await;
        assert!(!p.dup && p.qos == QoS::ExactlyOnce, "{p:?}");
        sent2.push((p.pkid, text(&p)));
    }
    for (pkid, _) in &sent2[..5] {
        send_ack(&mut s2, Packet::PubRec, *pkid).await;
    }
    for (pkid, _) in &sent2[..5] {
        match s2.recv().await {
            Some(Packet::PubRel(a)) => assert_eq!(a.pkid, *pkid),
            other => panic!("expected PUBREL {pkid}, got {other:?}"),
        }
    }
    // Barrier: a retained QoS 1 update is a durable commit submitted after every in-flight
    // mark above, so once it is acknowledged those are on disk too.
    publish_one(&mut pubc, "dur/online/barrier", "b", QoS::AtLeastOnce, true, None).await;
    proc.kill_9().await;
    drop((s1, s2, pubc));

    let proc = site.start().await;
    let (mut s1, a1) = connect(proc.addr, "dur-online-q1", V5, false, Some(LONG)).await;
    let (mut s2, a2) = connect(proc.addr, "dur-online-q2", V5, false, Some(LONG)).await;
    assert!(a1.session_present && a2.session_present, "sessions survived kill -9");
    let mut m = connect_clean(proc.addr, "dur-online-marker").await;
    publish_one(&mut m, "dur/online/q1", "marker", QoS::AtLeastOnce, false, None).await;
    publish_one(&mut m, "dur/online/q2", "marker", QoS::ExactlyOnce, false, None).await;

    let (got1, rels1) = receive_until(&mut s1, "marker", 100).await;
    assert!(rels1.is_empty());
    let again1: Vec<(u16, String)> = got1.iter().map(|g| (g.pkid, g.payload.clone())).collect();
    assert_eq!(again1, sent1, "QoS 1 in flight redelivered with the same packet ids, in order");
    assert!(got1.iter().all(|g| g.dup), "redelivered QoS 1 messages carry DUP: {got1:?}");

    let (got2, rels2) = receive_until(&mut s2, "marker", 100).await;
    let released: Vec<u16> = sent2[..5].iter().map(|(p, _)| *p).collect();
    assert_eq!(rels2[..5], released[..], "PUBREL resent for the messages the client had received");
    let again2: Vec<(u16, String)> = got2.iter().map(|g| (g.pkid, g.payload.clone())).collect();
    assert_eq!(
        again2,
        sent2[5..],
        "only the QoS 2 messages without PUBREC are sent again (same packet ids): none twice"
    );
    assert!(got2.iter().all(|g| g.dup && g.qos == QoS::ExactlyOnce), "{got2:?}");
    eprintln!(
        "online in flight: 10 QoS 1 redelivered with DUP, 5 PUBREL + 5 DUP PUBLISH at QoS 2 after kill -9"
    );
    proc.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Graceful restarts, expiry, locking, the memory backend.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_persistent_subscriptions_and_drops_what_expired() {
    let site = Site::new();
    let proc = site.start().await;
    let addr = proc.addr;
    let keepers = [("dur-keep-v5", V5), ("dur-keep-v311", V311)];
    for (id, version) in keepers {
        let (mut c, _) = connect(addr, id, version, version.is_v5(), Some(LONG)).await;
        subscribe(&mut c, "dur/keep", QoS::AtLeastOnce).await;
        disconnect(c).await;
    }
    // Sessions with a 1 s expiry: `a` expires while the broker runs and is checked there,
    // `c` expires while it runs and must stay gone after the restart.
    for id in ["dur-exp-a", "dur-exp-c"] {
        let (mut c, _) = connect(addr, id, V5, true, Some(1)).await;
        subscribe(&mut c, "dur/exp", QoS::AtLeastOnce).await;
        disconnect(c).await;
    }
    // Messages with a 1 s Message Expiry Interval: one queued for an offline session, one
    // retained; each followed by one that does not expire.
    let (mut m, _) = connect(addr, "dur-mexp", V5, true, Some(LONG)).await;
    subscribe(&mut m, "dur/mexp/#", QoS::AtLeastOnce).await;
    disconnect(m).await;
    let mut pubc = connect_clean(addr, "dur-keep-pub").await;
    let published = tokio::time::Instant::now();
    publish_one(&mut pubc, "dur/mexp/q", "short", QoS::AtLeastOnce, false, Some(1)).await;
    publish_one(&mut pubc, "dur/mexp/q", "long", QoS::AtLeastOnce, false, None).await;
    publish_one(&mut pubc, "dur/mexp/r", "short-retained", QoS::AtLeastOnce, true, Some(1)).await;
    publish_one(&mut pubc, "dur/mexp/kept", "kept-retained", QoS::AtLeastOnce, true, None).await;
    disconnect(pubc).await;

    // Expiry is time: wait past it.
    tokio::time::sleep_until(published + Duration::from_secs(2)).await;
    let (c, ack) = connect(addr, "dur-exp-a", V5, false, None).await;
    assert!(!ack.session_present, "a session 2 s after a 1 s expiry is gone");
    disconnect(c).await;
    // `b` is restored at the restart with its expiry counting from then.
    let (mut b, _) = connect(addr, "dur-exp-b", V5, true, Some(1)).await;
    subscribe(&mut b, "dur/exp", QoS::AtLeastOnce).await;
    disconnect(b).await;
    proc.stop().await;

    let proc = site.start().await;
    let restarted = tokio::time::Instant::now();
    let addr = proc.addr;
    let mut pubc = connect_clean(addr, "dur-keep-pub").await;
    let code = publish_one(&mut pubc, "dur/keep", "while-offline", QoS::AtLeastOnce, false, None).await;
    assert_eq!(code, 0, "the restored subscriptions match (not 0x10 no matching subscribers)");
    let mut keep = Vec::new();
    for (id, version) in keepers {
        let (c, ack) = connect(addr, id, version, false, Some(LONG)).await;
        assert!(ack.session_present, "{id}: session restored after a restart");
        keep.push((id, c));
    }
    publish_one(&mut pubc, "dur/keep", "live", QoS::AtLeastOnce, false, None).await;
    for (id, mut c) in keep {
        let (got, _) = receive_until(&mut c, "live", 10).await;
        let got: Vec<&str> = got.iter().map(|g| g.payload.as_str()).collect();
        assert_eq!(got, ["while-offline"], "{id}: queued message, then the live one, without re-subscribing");
        disconnect(c).await;
    }

    let (c, ack) = connect(addr, "dur-exp-c", V5, false, None).await;
    assert!(!ack.session_present, "a session that expired before the restart stays gone");
    disconnect(c).await;

    let (mut m, ack) = connect(addr, "dur-mexp", V5, false, Some(LONG)).await;
    assert!(ack.session_present);
    publish_one(&mut pubc, "dur/mexp/q", "m-marker", QoS::AtLeastOnce, false, None).await;
    let (got, _) = receive_until(&mut m, "m-marker", 10).await;
    let got: Vec<&str> = got.iter().map(|g| g.payload.as_str()).collect();
    assert_eq!(
        got,
        ["long", "kept-retained"],
        "the queued messages whose expiry passed are not delivered after the restart"
    );
    disconnect(m).await;

    let mut fresh = connect_clean(addr, "dur-mexp-fresh").await;
    subscribe(&mut fresh, "dur/mexp/#", QoS::AtLeastOnce).await;
    publish_one(&mut pubc, "dur/mexp/q", "r-marker", QoS::AtLeastOnce, false, None).await;
    let (got, _) = receive_until(&mut fresh, "r-marker", 10).await;
    let got: Vec<&str> = got.iter().map(|g| g.payload.as_str()).collect();
    assert_eq!(got, ["kept-retained"], "the expired retained message is gone after the restart");
    disconnect(fresh).await;
    disconnect(pubc).await;

    tokio::time::sleep_until(restarted + Duration::from_secs(2)).await;
    let (c, ack) = connect(addr, "dur-exp-b", V5, false, None).await;
    assert!(!ack.session_present, "a restored session expires (counted from the restart)");
    disconnect(c).await;
    proc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_broker_on_a_locked_data_dir_exits_with_one_clear_line() {
    let site = Site::new();
    let first = site.start().await;
    match site.try_start().await {
        Started::Up(p) => {
            p.kill_9().await;
            panic!("a second broker started on a data directory in use");
        }
        Started::Exited { status, stderr } => {
            assert!(status.code().is_some_and(|c| c != 0), "exit status {status}");
            let lines: Vec<&String> = stderr.iter().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "one line on stderr, got:\n{}", stderr.join("\n"));
            let dir = site.data_dir().display().to_string();
            assert!(lines[0].contains(&dir) && lines[0].contains("locked"), "stderr: {}", lines[0]);
            eprintln!("second broker: {status}, {}", lines[0]);
        }
    }
    // The first one is untouched.
    let mut c = connect_clean(first.addr, "dur-lock-check").await;
    publish_one(&mut c, "dur/lock", "still", QoS::AtLeastOnce, true, None).await;
    disconnect(c).await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_storage_keeps_nothing_and_says_so() {
    let mut site = Site::new();
    site.args = vec!["--storage".into(), "memory".into()];
    let is_warning = |l: &str| l.contains("WARN") && l.contains("memory");
    let proc = site.start().await;
    proc.stderr.wait_for("warning about the memory backend", is_warning).await;
    let (mut s, _) = connect(proc.addr, "dur-mem-sub", V5, true, Some(LONG)).await;
    subscribe(&mut s, "dur/mem/#", QoS::AtLeastOnce).await;
    disconnect(s).await;
    let mut c = connect_clean(proc.addr, "dur-mem-pub").await;
    publish_one(&mut c, "dur/mem/r", "retained", QoS::AtLeastOnce, true, None).await;
    publish_one(&mut c, "dur/mem/q", "queued", QoS::ExactlyOnce, false, None).await;
    disconnect(c).await;
    proc.stop().await;
    let dir = site.data_dir();
    assert!(
        !dir.exists() || std::fs::read_dir(&dir).expect("read data dir").next().is_none(),
        "--storage memory wrote to {}",
        dir.display()
    );

    let proc = site.start().await;
    proc.stderr.wait_for("warning about the memory backend", is_warning).await;
    let (s, ack) = connect(proc.addr, "dur-mem-sub", V5, false, Some(LONG)).await;
    assert!(!ack.session_present, "memory storage: no session after a restart");
    disconnect(s).await;
    let mut fresh = connect_clean(proc.addr, "dur-mem-fresh").await;
    subscribe(&mut fresh, "dur/mem/#", QoS::AtLeastOnce).await;
    let mut c = connect_clean(proc.addr, "dur-mem-pub").await;
    publish_one(&mut c, "dur/mem/q", "marker", QoS::AtLeastOnce, false, None).await;
    let (got, _) = receive_until(&mut fresh, "marker", 10).await;
    assert!(got.is_empty(), "memory storage: nothing retained after a restart, got {got:?}");
    disconnect(fresh).await;
    disconnect(c).await;
    proc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_graceful_and_keeps_what_was_written_before() {
    let site = Site::new();
    let proc = site.start().await;
    let (mut live, _) = connect(proc.addr, "dur-term-live", V5, true, Some(LONG)).await;
    subscribe(&mut live, "dur/term/live", QoS::AtLeastOnce).await;
    let mut c = connect_clean(proc.addr, "dur-term-pub").await;
    // QoS 0 retained is written without waiting for the disk: the graceful stop must flush it.
    // It is routed before the next PUBLISH on the same connection, acknowledged below.
    let mut p0 = publish("dur/term/q0", QoS::AtMostOnce, 0, b"zero");
    p0.retain = true;
    c.send_packet(&Packet::Publish(p0)).await;
    publish_one(&mut c, "dur/term/q1", "one", QoS::AtLeastOnce, true, None).await;
    publish_one(&mut c, "dur/term/q2", "two", QoS::ExactlyOnce, true, None).await;

    let log = proc.stderr.clone();
    let status = proc.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGTERM exit status {status}; stderr:\n{}", log.lines().join("\n"));
    for (who, mut cl) in [("subscriber", live), ("publisher", c)] {
        let got = cl.until_closed().await;
        match got.as_slice() {
            [Packet::Disconnect(d)] => {
                assert_eq!(d.code, dataloom::codec::reason::SERVER_SHUTTING_DOWN, "{who}: {d:?}")
            }
            other => panic!("{who}: expected DISCONNECT 0x8B at shutdown, got {other:?}"),
        }
    }

    let proc = site.start().await;
    let mut fresh = connect_clean(proc.addr, "dur-term-check").await;
    subscribe(&mut fresh, "dur/term/#", QoS::AtMostOnce).await;
    let mut state = HashMap::new();
    while state.len() < 3 {
        let p = v5_util::recv_publish(&mut fresh).await;
        state.insert(String::from_utf8_lossy(&p.topic).into_owned(), text(&p));
    }
    let want: HashMap<String, String> =
        [("dur/term/q0", "zero"), ("dur/term/q1", "one"), ("dur/term/q2", "two")]
            .into_iter()
            .map(|(t, v)| (t.to_string(), v.to_string()))
            .collect();
    assert_eq!(state, want, "retained state written before SIGTERM survives");
    disconnect(fresh).await;
    let (c, ack) = connect(proc.addr, "dur-term-live", V5, false, Some(LONG)).await;
    assert!(ack.session_present, "the connected persistent session survives a graceful stop");
    disconnect(c).await;
    proc.stop().await;
}

/// The receiving side of a client session as the spec has it (MQTT 5 section 4.3.3, method B):
/// a QoS 2 message is delivered to the application when its PUBLISH first arrives, and a PUBLISH
/// with a packet id still held (PUBREC sent, no PUBREL yet) is the same message again. The test
/// client keeps this state across reconnects of its persistent session.
#[derive(Default)]
struct Receiver {
    /// Packet ids awaiting PUBREL, with the payload they carried.
    held: HashMap<u16, String>,
    /// Deliveries to the application, per payload.
    delivered: HashMap<String, usize>,
    /// PUBLISHes that arrived with DUP.
    dups: usize,
}

impl Receiver {
    /// Receives and acknowledges until the connection closes, or once `marker` was delivered and
    /// no QoS 2 flow is open.
    async fn run(&mut self, c: &mut RawClient, marker: Option<&str>, limit: usize) -> Result<(), Closed> {
        for _ in 0..limit {
            if marker.is_some_and(|m| self.delivered.contains_key(m)) && self.held.is_empty() {
                return Ok(());
            }
            let mut out = BytesMut::new();
            match c.recv().await {
                None => return Err(Closed),
                Some(Packet::Publish(p)) => {
                    assert_eq!(p.qos, QoS::ExactlyOnce, "{p:?}");
                    self.dups += usize::from(p.dup);
                    let payload = text(&p);
                    match self.held.get(&p.pkid) {
                        Some(held) => assert_eq!(held, &payload, "packet id {} reused while held", p.pkid),
                        None => {
                            *self.delivered.entry(payload.clone()).or_insert(0) += 1;
                            self.held.insert(p.pkid, payload);
                        }
                    }
                    let rec = Ack { pkid: p.pkid, code: 0, properties: Properties::default() };
                    codec::encode(&Packet::PubRec(rec), c.version, &mut out);
                }
                Some(Packet::PubRel(a)) => {
                    self.held.remove(&a.pkid);
                    let comp = Ack { pkid: a.pkid, code: 0, properties: Properties::default() };
                    codec::encode(&Packet::PubComp(comp), c.version, &mut out);
                }
                Some(other) => panic!("QoS 2 receiver got {other:?}"),
            }
            if c.stream.write_all(&out).await.is_err() {
                return Err(Closed);
            }
        }
        panic!("receiver did not finish within {limit} packets")
    }
}

/// Publishes message `make(n)` for n = `sent`, `sent + 1`, ... (until `None`) with the window
/// full, until the connection dies; notifies `fire` at the `target`th acknowledgement. Returns
/// the publisher (to resume its flows), the next n and what was acknowledged.
async fn stream_until_killed(
    mut p: Publisher,
    mut sent: usize,
    target: usize,
    fire: Arc<Notify>,
    make: impl Fn(usize) -> Option<Publish>,
) -> (Publisher, usize, Vec<usize>) {
    let mut acked = Vec::new();
    p.run_until_closed(
        || {
            let m = make(sent)?;
            sent += 1;
            Some(((sent - 1, 0), m))
        },
        |(i, _)| {
            acked.push(i);
            if acked.len() == target {
                fire.notify_one();
            }
        },
    )
    .await;
    (p, sent, acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_during_a_live_qos2_stream_delivers_each_message_once() {
    let started = Instant::now();
    let mut rng = Rng::from_env("DURABILITY_SEED", SEED).0;
    let site = Site::new();
    let mut proc = site.start().await;
    let sub_id = "dur-live-sub";
    let (mut s, _) = connect(proc.addr, sub_id, V5, true, Some(LONG)).await;
    subscribe(&mut s, "dur/live/#", QoS::ExactlyOnce).await;
    let mut receiver = Receiver::default();
    let mut acked = HashSet::new();
    let mut sent = 0;
    let rounds = 4;
    for round in 0..rounds {
        let target = usize::try_from(rng.range(100, 600)).expect("small");
        let jitter = Duration::from_micros(rng.range(0, 3000));
        let pub_id = format!("dur-live-pub-{round}");
        let (c, _) = connect(proc.addr, &pub_id, V5, true, Some(LONG)).await;
        let p = Publisher::new(c, WINDOW);
        let sub = tokio::spawn(async move {
            let r = receiver.run(&mut s, None, 1_000_000).await;
            assert!(r.is_err(), "the receiver runs until the kill");
            receiver
        });
        // The publisher keeps streaming until the kill, which comes at a random moment after
        // `target` acknowledgements: messages are then in every stage of both flows.
        let fire = Arc::new(Notify::new());
        let streaming = tokio::spawn(stream_until_killed(p, sent, target, fire.clone(), |n| {
            let topic = format!("dur/live/{}", n % 4);
            Some(publish(&topic, QoS::ExactlyOnce, 0, format!("l-{n}").as_bytes()))
        }));
        tokio::time::timeout(Duration::from_secs(15), fire.notified())
            .await
            .unwrap_or_else(|_| panic!("round {round}: {target} acks within 15 s"));
        tokio::time::sleep(jitter).await;
        proc.kill_9().await;
        let (mut p, now_sent, acked_now) =
            tokio::time::timeout(START, streaming).await.expect("publisher ends").expect("publisher");
        let hits = acked_now.len();
        sent = now_sent;
        acked.extend(acked_now);
        receiver = tokio::time::timeout(START, sub).await.expect("receiver ends").expect("receiver");
        let before = receiver.delivered.len();

        proc = site.start().await;
        let (c, ack) = connect(proc.addr, &pub_id, V5, false, Some(LONG)).await;
        assert!(ack.session_present);
        p.resume(c);
        acked.extend(p.settle().await.into_iter().map(|(i, _)| i));
        disconnect(p.c).await;
        let (c, ack) = connect(proc.addr, sub_id, V5, false, Some(LONG)).await;
        assert!(ack.session_present, "the subscriber's session survived kill -9");
        s = c;
        eprintln!(
            "live round {round}: kill -9 at {hits} acked (+{jitter:?}), {before} delivered before the kill, \
             {} packet ids held",
            receiver.held.len()
        );
    }
    // Everything owed is queued before the marker.
    let mut m = connect_clean(proc.addr, "dur-live-marker").await;
    publish_one(&mut m, "dur/live/marker", "marker", QoS::ExactlyOnce, false, None).await;
    disconnect(m).await;
    receiver.run(&mut s, Some("marker"), 1_000_000).await.expect("broker alive");
    disconnect(s).await;

    let twice: Vec<(&String, &usize)> = receiver.delivered.iter().filter(|(_, n)| **n > 1).collect();
    let lost: Vec<usize> =
        (0..sent).filter(|i| !receiver.delivered.contains_key(&format!("l-{i}"))).collect();
    eprintln!(
        "live QoS 2 stream: {sent} sent, {} acknowledged, {} delivered, {} with DUP, in {:?}",
        acked.len(),
        receiver.delivered.len(),
        receiver.dups,
        started.elapsed()
    );
    assert!(lost.is_empty(), "messages never delivered: {lost:?}");
    assert!(twice.is_empty(), "QoS 2 messages delivered twice: {twice:?}");
    proc.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Racing writers: the retained index and the store see the updates of one topic in one order.

const RACE_TOPICS: usize = 3;
const RACE_WRITERS: usize = 6;
const RACE_UPDATES: u16 = 120;

/// One writer of a race round: QoS 1 retained updates round robin over the race topics, 20 in
/// flight (the broker's Receive Maximum), every PUBACK awaited.
async fn race_writer(addr: SocketAddr, round: usize, w: usize) {
    let mut c = connect_clean(addr, &format!("race-{round}-{w}")).await;
    for batch in (1..=RACE_UPDATES).collect::<Vec<_>>().chunks(20) {
        let mut out = BytesMut::new();
        for &n in batch {
            let topic = format!("race/{}", usize::from(n) % RACE_TOPICS);
            let mut m = publish(&topic, QoS::AtLeastOnce, n, format!("r{round}-w{w}-{n}").as_bytes());
            m.retain = true;
            codec::encode(&Packet::Publish(m), ProtocolVersion::V5, &mut out);
        }
        c.send(&out).await;
        for _ in batch {
            match c.recv().await {
                Some(Packet::PubAck(a)) if a.code < 0x80 => {}
                other => panic!("race writer {w}: expected PUBACK, got {other:?}"),
            }
        }
    }
}

/// The retained state under `race/#` as a fresh subscriber sees it: topic -> payload.
async fn read_race_state(addr: SocketAddr, id: &str) -> BTreeMap<String, String> {
    let mut c = connect_clean(addr, id).await;
    subscribe(&mut c, "race/#", QoS::AtMostOnce).await;
    let mut state = BTreeMap::new();
    while state.len() < RACE_TOPICS {
        match c.recv().await {
            Some(Packet::Publish(p)) => {
                state.insert(String::from_utf8_lossy(&p.topic).into_owned(), text(&p));
            }
            other => panic!("expected retained PUBLISH, got {other:?}"),
        }
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_on_one_topic_leave_memory_and_disk_alike() {
    let site = Site::new();
    let mut proc = site.start().await;
    for round in 0..6 {
        let writers: Vec<_> =
            (0..RACE_WRITERS).map(|w| tokio::spawn(race_writer(proc.addr, round, w))).collect();
        for w in writers {
            w.await.expect("race writer");
        }
        // Every update was acknowledged: what the broker serves now must be what it stored.
        let served = read_race_state(proc.addr, &format!("race-read-{round}")).await;
        proc.kill_9().await;
        proc = site.start().await;
        let stored = read_race_state(proc.addr, &format!("race-check-{round}")).await;
        assert_eq!(served, stored, "round {round}: memory and disk disagree after kill -9");
    }
    proc.stop().await;
}
