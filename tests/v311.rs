//! MQTT 3.1.1 (and 3.1) behaviour of the broker, seen from real clients (rumqttc v4) and from
//! raw bytes where the wire itself is the point: CONNECT/CONNACK, keep alive, QoS flows,
//! persistent sessions, topic filters, retained messages, wills and the connection limits.
mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{RawClient, TestBroker, WAIT};
use dataloom::codec::{self, Packet, ProtocolVersion};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, QoS, SubscribeReasonCode};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// How long a test waits to show that something does NOT happen.
const QUIET: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------------------------
// rumqttc client whose event loop runs in its own task and forwards incoming packets.

/// A rumqttc v4 client; `rx` yields every incoming packet, then one `Err` when the connection ends.
struct Mq {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Result<Incoming, String>>,
    /// Publishes seen while waiting for an ack, handed out by [`Mq::next_publish`] first.
    pending: VecDeque<rumqttc::Publish>,
    session_present: bool,
}

async fn mq(b: &TestBroker, id: &str, clean: bool) -> Mq {
    mq_with(b, id, |o| {
        o.set_clean_session(clean);
    })
    .await
}

async fn mq_with(b: &TestBroker, id: &str, edit: impl FnOnce(&mut MqttOptions)) -> Mq {
    let mut o = MqttOptions::new(id, "127.0.0.1", b.port());
    o.set_max_packet_size(64 * 1024, 64 * 1024);
    edit(&mut o);
    let (client, mut el) = AsyncClient::new(o, 1000);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(i)) => {
                    if tx.send(Ok(i)).is_err() {
                        return;
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    // Stop here: polling again would reconnect.
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    let mut m = Mq { client, rx, pending: VecDeque::new(), session_present: false };
    match m.next().await {
        Incoming::ConnAck(a) => {
            assert_eq!(a.code, ConnectReturnCode::Success, "{id}: CONNACK code");
            m.session_present = a.session_present;
        }
        other => panic!("{id}: expected CONNACK, got {other:?}"),
    }
    m
}

impl Mq {
    /// The next incoming packet; panics if the connection ended or nothing came within [`WAIT`].
    async fn next(&mut self) -> Incoming {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(Ok(i))) => i,
            Ok(Some(Err(e))) => panic!("connection ended: {e}"),
            Ok(None) => panic!("event loop ended"),
            Err(_) => panic!("no packet from the broker within {WAIT:?}"),
        }
    }

    /// The next PUBLISH delivered to this client.
    async fn next_publish(&mut self) -> rumqttc::Publish {
        if let Some(p) = self.pending.pop_front() {
            return p;
        }
        loop {
            if let Incoming::Publish(p) = self.next().await {
                return p;
            }
        }
    }

    /// Asserts no PUBLISH arrives within [`QUIET`].
    async fn no_publish(&mut self) {
        assert!(self.pending.is_empty(), "unexpected PUBLISH {:?}", self.pending);
        let deadline = tokio::time::Instant::now() + QUIET;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return,
                Ok(Some(Ok(Incoming::Publish(p)))) => panic!("unexpected PUBLISH {p:?}"),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => panic!("connection ended: {e}"),
                Ok(None) => panic!("event loop ended"),
            }
        }
    }

    /// Waits for an incoming packet `want` accepts, keeping publishes seen on the way.
    async fn wait_for(&mut self, what: &str, want: impl Fn(&Incoming) -> bool) -> Incoming {
        loop {
            let i = self.next().await;
            if want(&i) {
                return i;
            }
            match i {
                Incoming::Publish(p) => self.pending.push_back(p),
                Incoming::PingResp | Incoming::PubRel(_) => {}
                other => panic!("waiting for {what}, got {other:?}"),
            }
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe queued");
        match self.wait_for("SUBACK", |i| matches!(i, Incoming::SubAck(_))).await {
            Incoming::SubAck(s) => {
                assert_eq!(s.return_codes, vec![SubscribeReasonCode::Success(qos)], "{filter}")
            }
            _ => unreachable!(),
        }
    }

    async fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).await.expect("unsubscribe queued");
        self.wait_for("UNSUBACK", |i| matches!(i, Incoming::UnsubAck(_))).await;
    }

    /// Publishes and, for QoS 1/2, waits for the broker's PUBACK / PUBREC + PUBCOMP.
    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, qos, retain, payload.into()).await.expect("publish queued");
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |i| matches!(i, Incoming::PubAck(_))).await;
            }
            QoS::ExactlyOnce => {
                self.wait_for("PUBREC", |i| matches!(i, Incoming::PubRec(_))).await;
                self.wait_for("PUBCOMP", |i| matches!(i, Incoming::PubComp(_))).await;
            }
        }
    }

    /// Sends DISCONNECT and waits until the broker has closed the connection.
    async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect queued");
        self.closed().await;
    }

    /// Waits until the connection ends.
    async fn closed(&mut self) {
        loop {
            match tokio::time::timeout(WAIT, self.rx.recv()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => return,
                Err(_) => panic!("connection still open after {WAIT:?}"),
            }
        }
    }
}

fn qos_n(q: QoS) -> u8 {
    q as u8
}

fn qos_of(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-built MQTT 3.1.1 packets for the raw client (independent of the broker's own encoder).

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u16::try_from(s.len()).expect("short string").to_be_bytes());
    out.extend_from_slice(s);
}

struct Will<'a> {
    topic: &'a str,
    payload: &'a [u8],
    qos: u8,
    retain: bool,
}

/// CONNECT; `level` 4 = 3.1.1 ("MQTT"), 3 = 3.1 ("MQIsdp").
fn connect_pkt(level: u8, id: &str, clean: bool, keep_alive: u16, will: Option<&Will>) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, if level == 3 { b"MQIsdp" } else { b"MQTT" });
    body.push(level);
    let mut flags = if clean { 0x02 } else { 0 };
    if let Some(w) = will {
        flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    put_str(&mut body, id.as_bytes());
    if let Some(w) = will {
        put_str(&mut body, w.topic.as_bytes());
        put_str(&mut body, w.payload);
    }
    packet(0x10, &body)
}

fn subscribe_pkt(pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    for (f, q) in filters {
        put_str(&mut body, f.as_bytes());
        body.push(*q);
    }
    packet(0x82, &body)
}

fn publish_pkt(topic: &str, payload: &[u8], qos: u8, pkid: u16, retain: bool, dup: bool) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    let header = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    packet(header, &body)
}

fn puback_pkt(pkid: u16) -> Vec<u8> {
    packet(0x40, &pkid.to_be_bytes())
}

fn pubrel_pkt(pkid: u16) -> Vec<u8> {
    packet(0x62, &pkid.to_be_bytes())
}

const PINGREQ: [u8; 2] = [0xc0, 0x00];
const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// A raw 3.1.1 client after a successful CONNECT; returns it with the session present flag.
async fn raw_connect(
    b: &TestBroker,
    id: &str,
    clean: bool,
    keep_alive: u16,
    will: Option<&Will<'_>>,
) -> (RawClient, bool) {
    let mut c = RawClient::connect(b.addr).await;
    c.version = ProtocolVersion::V3_1_1;
    c.send(&connect_pkt(4, id, clean, keep_alive, will)).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => {
            assert_eq!(a.code, 0, "{id}: CONNACK return code");
            (c, a.session_present)
        }
        other => panic!("{id}: expected CONNACK, got {other:?}"),
    }
}

async fn raw_subscribe(c: &mut RawClient, pkid: u16, filter: &str, qos: u8) {
    c.send(&subscribe_pkt(pkid, &[(filter, qos)])).await;
    match c.recv().await {
        Some(Packet::SubAck(s)) => {
            assert_eq!(s.pkid, pkid);
            assert_eq!(s.codes, vec![qos]);
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

async fn raw_publish_in(c: &mut RawClient) -> codec::Publish {
    match c.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Reads exactly `n` bytes from the raw socket (for exact wire checks).
async fn raw_bytes(c: &mut RawClient, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    tokio::time::timeout(WAIT, c.stream.read_exact(&mut got))
        .await
        .expect("bytes in time")
        .expect("bytes before close");
    got
}

/// Asserts the server closes `c` (EOF or reset) within [`WAIT`] without sending anything more.
async fn raw_closed_silently(c: &mut RawClient) {
    let mut b = [0u8; 64];
    match tokio::time::timeout(WAIT, c.stream.read(&mut b)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("expected close, got bytes {:02x?}", &b[..n]),
        Err(_) => panic!("connection still open after {WAIT:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// CONNECT / CONNACK

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_session_present_follows_clean_session() {
    let b = TestBroker::start().await;
    let c = mq(&b, "sp-client", false).await;
    assert!(!c.session_present, "a new session is not present");
    c.disconnect().await;

    let c = mq(&b, "sp-client", false).await;
    assert!(c.session_present, "resuming a persistent session");
    c.disconnect().await;

    let c = mq(&b, "sp-client", true).await;
    assert!(!c.session_present, "clean session never reports a present session");
    c.disconnect().await;

    // The clean session discarded the old state, and its own state ended with it.
    let c = mq(&b, "sp-client", false).await;
    assert!(!c.session_present, "state discarded by the clean session");
    c.disconnect().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_length_client_id_with_clean_session_gets_a_unique_id() {
    let b = TestBroker::start().await;
    let mut one = mq(&b, "", true).await;
    let mut two = mq(&b, "", true).await;
    one.subscribe("zid/t", QoS::AtLeastOnce).await;
    two.publish("zid/t", QoS::AtLeastOnce, false, "hello").await;
    let p = one.next_publish().await;
    assert_eq!(p.topic, "zid/t");
    assert_eq!(&p.payload[..], b"hello");
    // Neither took over the other: both still answer.
    two.subscribe("zid/u", QoS::AtMostOnce).await;
    one.publish("zid/u", QoS::AtMostOnce, false, "back").await;
    assert_eq!(&two.next_publish().await.payload[..], b"back");
    b.stop().await;
}

#[tokio::test]
async fn zero_length_client_id_without_clean_session_is_refused_with_code_2() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr).await;
    c.send(&connect_pkt(4, "", false, 60, None)).await;
    assert_eq!(raw_bytes(&mut c, 4).await, vec![0x20, 0x02, 0x00, 0x02], "CONNACK identifier rejected");
    raw_closed_silently(&mut c).await;
    b.stop().await;
}

#[tokio::test]
async fn v31_connect_subscribe_publish_and_empty_id_refused() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr).await;
    c.version = ProtocolVersion::V3_1;
    c.send(&connect_pkt(3, "v31-client", true, 60, None)).await;
    assert_eq!(raw_bytes(&mut c, 4).await, vec![0x20, 0x02, 0x00, 0x00], "3.1 CONNACK accepted");
    raw_subscribe(&mut c, 1, "v31/t", 1).await;
    c.send(&publish_pkt("v31/t", b"x31", 1, 5, false, false)).await;
    let mut got_ack = false;
    let mut got_pub = None;
    while !got_ack || got_pub.is_none() {
        match c.recv().await {
            Some(Packet::PubAck(a)) => {
                assert_eq!(a.pkid, 5);
                got_ack = true;
            }
            Some(Packet::Publish(p)) => got_pub = Some(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    let p = got_pub.expect("delivered");
    assert_eq!(&p.payload[..], b"x31");
    assert_eq!(p.qos, codec::QoS::AtLeastOnce);

    // MQTT 3.1 requires a client identifier of 1 to 23 characters.
    let mut e = RawClient::connect(b.addr).await;
    e.send(&connect_pkt(3, "", true, 60, None)).await;
    assert_eq!(raw_bytes(&mut e, 4).await, vec![0x20, 0x02, 0x00, 0x02], "3.1 empty id rejected");
    raw_closed_silently(&mut e).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_takeover_closes_old_connection_and_new_one_works() {
    let b = TestBroker::start().await;
    let (mut old, _) = raw_connect(&b, "takeover", true, 60, None).await;
    let mut new = mq(&b, "takeover", true).await;
    // 3.1.1 has no server DISCONNECT: the old connection is simply closed.
    let got = old.until_closed().await;
    assert!(got.is_empty(), "old connection got {got:?}");
    new.subscribe("tk/t", QoS::AtLeastOnce).await;
    new.publish("tk/t", QoS::AtLeastOnce, false, "mine").await;
    assert_eq!(&new.next_publish().await.payload[..], b"mine");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_is_enforced_at_one_and_a_half_times_and_publishes_will() {
    let b = TestBroker::start().await;
    let mut watcher = mq(&b, "ka-watch", true).await;
    watcher.subscribe("ka/will", QoS::AtLeastOnce).await;
    let will = Will { topic: "ka/will", payload: b"timed out", qos: 1, retain: false };
    let (mut c, _) = raw_connect(&b, "ka-silent", true, 1, Some(&will)).await;
    let start = Instant::now();
    let got = c.until_closed().await;
    let took = start.elapsed();
    assert!(got.is_empty(), "got {got:?}");
    assert!(took >= Duration::from_millis(1400), "closed after {took:?}, before 1.5 x keep alive");
    assert!(took < Duration::from_secs(3), "closed only after {took:?}");
    let p = watcher.next_publish().await;
    assert_eq!(&p.payload[..], b"timed out", "keep alive timeout publishes the will");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pings_keep_the_connection_up() {
    let b = TestBroker::start().await;
    let (mut c, _) = raw_connect(&b, "ka-pinger", true, 1, None).await;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    for _ in 0..6 {
        tick.tick().await; // pacing of the client's pings, not synchronisation
        c.send(&PINGREQ).await;
        assert_eq!(c.recv().await, Some(Packet::PingResp));
    }
    assert!(start.elapsed() >= Duration::from_secs(3));
    // Still usable after 3 s with keep alive 1 s.
    raw_subscribe(&mut c, 1, "ka/alive", 0).await;
    b.stop().await;
}

#[tokio::test]
async fn connect_deadline_closes_a_silent_socket() {
    let b = TestBroker::start_with(|c| c.mqtt.connect_timeout = Duration::from_secs(1)).await;
    let mut c = RawClient::connect(b.addr).await;
    let start = Instant::now();
    raw_closed_silently(&mut c).await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}, before the deadline");
    assert!(took < Duration::from_secs(3), "closed only after {took:?}");
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// PUBLISH and QoS

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_matrix_delivers_at_the_minimum_of_publish_and_subscription() {
    let b = TestBroker::start().await;
    let mut subs = Vec::new();
    for sq in 0..3u8 {
        let mut s = mq(&b, &format!("qm-sub{sq}"), true).await;
        s.subscribe("qm/t", qos_of(sq)).await;
        subs.push(s);
    }
    let mut publisher = mq(&b, "qm-pub", true).await;
    for pq in 0..3u8 {
        // publish() waits for PUBACK (QoS 1) or PUBREC then PUBCOMP (QoS 2).
        publisher.publish("qm/t", qos_of(pq), false, format!("p{pq}")).await;
    }
    for (sq, s) in subs.iter_mut().enumerate() {
        for pq in 0..3u8 {
            let p = s.next_publish().await;
            assert_eq!(&p.payload[..], format!("p{pq}").as_bytes(), "sub {sq}");
            assert_eq!(qos_n(p.qos), pq.min(sq as u8), "pub QoS {pq}, sub QoS {sq}");
            assert!(!p.retain && !p.dup);
            if p.qos != QoS::AtMostOnce {
                assert_ne!(p.pkid, 0);
            }
            if p.qos == QoS::ExactlyOnce {
                // The broker answers the client's PUBREC with PUBREL.
                s.wait_for("PUBREL", |i| matches!(i, Incoming::PubRel(r) if r.pkid == p.pkid)).await;
            }
        }
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_from_the_subscriber_free_the_inflight_window() {
    // With a window of 20, 60 messages only all arrive if PUBACK / PUBCOMP free slots.
    let b = TestBroker::start_with(|c| c.mqtt.max_inflight_messages = 20).await;
    let mut s1 = mq(&b, "win-sub1", true).await;
    s1.subscribe("win/t", QoS::AtLeastOnce).await;
    let mut s2 = mq(&b, "win-sub2", true).await;
    s2.subscribe("win/t", QoS::ExactlyOnce).await;
    let mut publisher = mq(&b, "win-pub", true).await;
    for i in 0..60 {
        publisher.publish("win/t", QoS::ExactlyOnce, false, format!("{i}")).await;
    }
    for s in [&mut s1, &mut s2] {
        for i in 0..60 {
            assert_eq!(s.next_publish().await.payload, Bytes::from(format!("{i}")));
        }
    }
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_duplicate_publish_before_pubrel_is_delivered_once() {
    let b = TestBroker::start().await;
    let mut sub = mq(&b, "eo-sub", true).await;
    sub.subscribe("eo/t", QoS::ExactlyOnce).await;
    let (mut c, _) = raw_connect(&b, "eo-pub", true, 60, None).await;
    c.send(&publish_pkt("eo/t", b"once", 2, 10, false, false)).await;
    assert!(matches!(c.recv().await, Some(Packet::PubRec(a)) if a.pkid == 10));
    c.send(&publish_pkt("eo/t", b"once", 2, 10, false, true)).await;
    assert!(matches!(c.recv().await, Some(Packet::PubRec(a)) if a.pkid == 10), "PUBREC again for the DUP");
    c.send(&pubrel_pkt(10)).await;
    assert!(matches!(c.recv().await, Some(Packet::PubComp(a)) if a.pkid == 10));
    // After PUBREL the identifier is free: the same id is a new message.
    c.send(&publish_pkt("eo/t", b"again", 2, 10, false, false)).await;
    assert!(matches!(c.recv().await, Some(Packet::PubRec(a)) if a.pkid == 10));
    c.send(&pubrel_pkt(10)).await;
    assert!(matches!(c.recv().await, Some(Packet::PubComp(a)) if a.pkid == 10));

    assert_eq!(&sub.next_publish().await.payload[..], b"once");
    assert_eq!(&sub.next_publish().await.payload[..], b"again", "the duplicate was delivered twice");
    b.stop().await;
}

/// 3.1.1 has no Receive Maximum: a client with more unreleased QoS 2 messages than the v5
/// limit keeps its connection, and every message is delivered once after its PUBREL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_unreleased_beyond_the_v5_receive_maximum_keeps_a_311_connection() {
    let b = TestBroker::start_with(|c| c.mqtt.receive_maximum = 3).await;
    let mut sub = mq(&b, "rm-sub", true).await;
    sub.subscribe("rm/t", QoS::ExactlyOnce).await;
    let (mut c, _) = raw_connect(&b, "rm-pub", true, 60, None).await;
    for pkid in 1..=10u16 {
        c.send(&publish_pkt("rm/t", pkid.to_string().as_bytes(), 2, pkid, false, false)).await;
        assert!(matches!(c.recv().await, Some(Packet::PubRec(a)) if a.pkid == pkid), "PUBREC {pkid}");
    }
    for pkid in 1..=10u16 {
        c.send(&pubrel_pkt(pkid)).await;
        assert!(matches!(c.recv().await, Some(Packet::PubComp(a)) if a.pkid == pkid), "PUBCOMP {pkid}");
    }
    for pkid in 1..=10u16 {
        assert_eq!(sub.next_publish().await.payload, Bytes::from(pkid.to_string()));
    }
    sub.no_publish().await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Persistent sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_receives_messages_published_while_offline() {
    let b = TestBroker::start().await;
    let mut sub = mq(&b, "ps-sub", false).await;
    sub.subscribe("ps/t", QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publisher = mq(&b, "ps-pub", true).await;
    publisher.publish("ps/t", QoS::AtLeastOnce, false, "m0").await;
    publisher.publish("ps/t", QoS::ExactlyOnce, false, "m1").await;
    publisher.publish("ps/t", QoS::AtLeastOnce, false, "m2").await;

    let mut sub = mq(&b, "ps-sub", false).await;
    assert!(sub.session_present);
    for (i, q) in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce].into_iter().enumerate() {
        let p = sub.next_publish().await;
        assert_eq!(p.payload, Bytes::from(format!("m{i}")));
        assert_eq!(p.qos, q);
    }
    // The subscription itself survived too: no new SUBSCRIBE needed.
    publisher.publish("ps/t", QoS::AtLeastOnce, false, "live").await;
    assert_eq!(&sub.next_publish().await.payload[..], b"live");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_qos1_is_resent_with_dup_on_resume() {
    let b = TestBroker::start().await;
    let (mut c, present) = raw_connect(&b, "dup-sub", false, 60, None).await;
    assert!(!present);
    raw_subscribe(&mut c, 1, "dup/t", 1).await;
    let mut publisher = mq(&b, "dup-pub", true).await;
    publisher.publish("dup/t", QoS::AtLeastOnce, false, "m1").await;
    let first = raw_publish_in(&mut c).await;
    assert!(!first.dup);
    assert_eq!(first.qos, codec::QoS::AtLeastOnce);
    assert_eq!(&first.payload[..], b"m1");
    drop(c); // never acked

    let (mut c, present) = raw_connect(&b, "dup-sub", false, 60, None).await;
    assert!(present);
    let again = raw_publish_in(&mut c).await;
    assert!(again.dup, "re-sent with DUP=1");
    assert_eq!(again.pkid, first.pkid, "same packet identifier");
    assert_eq!(again.qos, codec::QoS::AtLeastOnce);
    assert_eq!(&again.payload[..], b"m1");
    assert_eq!(&again.topic[..], b"dup/t");
    c.send(&puback_pkt(again.pkid)).await;

    publisher.publish("dup/t", QoS::AtLeastOnce, false, "m2").await;
    let next = raw_publish_in(&mut c).await;
    assert_eq!(&next.payload[..], b"m2", "m1 was acknowledged and not sent again");
    assert!(!next.dup);
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE and topic filters

/// Publishes every topic then `end`, and returns the topics `sub` received before `end`.
async fn delivered(publisher: &mut Mq, sub: &mut Mq, topics: &[&str], end: &str) -> Vec<(String, u8)> {
    for t in topics {
        publisher.publish(t, QoS::AtLeastOnce, false, "x").await;
    }
    publisher.publish(end, QoS::AtLeastOnce, false, "end").await;
    let mut got = Vec::new();
    loop {
        let p = sub.next_publish().await;
        if p.topic == end {
            return got;
        }
        got.push((p.topic, qos_n(p.qos)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_per_spec() {
    let b = TestBroker::start().await;
    let mut sub = mq(&b, "wc-sub", true).await;
    sub.subscribe("wc/a/#", QoS::AtLeastOnce).await;
    sub.subscribe("wc/+/c", QoS::AtLeastOnce).await;
    sub.subscribe("wc/+", QoS::AtLeastOnce).await;
    sub.subscribe("wc/end", QoS::AtLeastOnce).await;
    sub.subscribe("wcp/#", QoS::AtLeastOnce).await;
    let mut publisher = mq(&b, "wc-pub", true).await;
    let topics = [
        "wc/a", "wc/a/b", "wc/a/b/c", "wc/ab", "wc/x/c", "wc/x/y/c", "wc/x/c/d", "wc/", "wc", "wc/x/", "wcp",
        "wcpp", "wcp/q",
    ];
    let got = delivered(&mut publisher, &mut sub, &topics, "wc/end").await;
    let want: Vec<(String, u8)> = ["wc/a", "wc/a/b", "wc/a/b/c", "wc/ab", "wc/x/c", "wc/", "wcp", "wcp/q"]
        .iter()
        .map(|t| ((*t).to_string(), 1))
        .collect();
    // "wcp" matches wcp/# (the parent level); "wc/a" matches wc/a/# and wc/+ yet arrives once.
    assert_eq!(got, want);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let b = TestBroker::start().await;
    let mut sub = mq(&b, "dl-sub", true).await;
    sub.subscribe("#", QoS::AtLeastOnce).await;
    sub.subscribe("+/x", QoS::AtLeastOnce).await;
    sub.subscribe("+/+", QoS::AtLeastOnce).await;
    let mut explicit = mq(&b, "dl-explicit", true).await;
    explicit.subscribe("$foo/#", QoS::AtLeastOnce).await;
    let mut publisher = mq(&b, "dl-pub", true).await;
    let got = delivered(&mut publisher, &mut sub, &["$SYS/x", "$foo/x", "foo/x"], "end").await;
    assert_eq!(got, vec![("foo/x".to_string(), 1)], "$ topics matched by # or +/x");
    let p = explicit.next_publish().await;
    assert_eq!(p.topic, "$foo/x", "an explicit $foo filter matches");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let b = TestBroker::start().await;
    let mut sub = mq(&b, "ov-sub", true).await;
    sub.subscribe("ov/+", QoS::AtMostOnce).await;
    sub.subscribe("ov/#", QoS::ExactlyOnce).await;
    sub.subscribe("ov/a", QoS::AtLeastOnce).await;
    let mut publisher = mq(&b, "ov-pub", true).await;
    publisher.publish("ov/a", QoS::ExactlyOnce, false, "x").await;
    publisher.publish("ov/b", QoS::AtLeastOnce, false, "y").await;
    publisher.publish("ov/end", QoS::AtMostOnce, false, "end").await;
    let p = sub.next_publish().await;
    assert_eq!((p.topic.as_str(), p.qos), ("ov/a", QoS::ExactlyOnce));
    let p = sub.next_publish().await;
    assert_eq!((p.topic.as_str(), p.qos), ("ov/b", QoS::AtLeastOnce), "one copy per message");
    let p = sub.next_publish().await;
    assert_eq!((p.topic.as_str(), p.qos), ("ov/end", QoS::AtMostOnce));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let b = TestBroker::start().await;
    let mut sub = mq(&b, "us-sub", true).await;
    sub.subscribe("us/+", QoS::AtLeastOnce).await;
    sub.subscribe("us/end", QoS::AtLeastOnce).await;
    let mut publisher = mq(&b, "us-pub", true).await;
    assert_eq!(delivered(&mut publisher, &mut sub, &["us/a"], "us/end").await, vec![("us/a".into(), 1)]);
    sub.unsubscribe("us/+").await;
    assert_eq!(delivered(&mut publisher, &mut sub, &["us/a", "us/b"], "us/end").await, vec![]);
    // Unsubscribing a filter that does not exist still gets UNSUBACK.
    sub.unsubscribe("us/never").await;
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Retained messages

/// Subscribes a fresh client to `filter` then to `marker` (which holds a retained message) and
/// returns the retained messages delivered for `filter`.
async fn retained_for(b: &TestBroker, id: &str, filter: &str, marker: &str) -> Vec<rumqttc::Publish> {
    let mut c = mq(b, id, true).await;
    c.subscribe(filter, QoS::AtLeastOnce).await;
    c.subscribe(marker, QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    loop {
        let p = c.next_publish().await;
        if p.topic == marker {
            assert!(p.retain);
            return got;
        }
        got.push(p);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_replace_delete_and_live_retain_flag() {
    let b = TestBroker::start().await;
    let mut publisher = mq(&b, "rt-pub", true).await;
    publisher.publish("rt/marker", QoS::AtLeastOnce, true, "m").await;
    publisher.publish("rt/a", QoS::AtLeastOnce, true, "v1").await;

    let mut live = mq(&b, "rt-live", true).await;
    live.subscribe("rt/a", QoS::AtLeastOnce).await;
    let p = live.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"v1"[..], true), "retained on subscribe has retain=1");

    publisher.publish("rt/a", QoS::AtLeastOnce, true, "v2").await;
    let p = live.next_publish().await;
    assert_eq!(
        (&p.payload[..], p.retain),
        (&b"v2"[..], false),
        "live message to an existing subscriber has retain=0"
    );

    let got = retained_for(&b, "rt-new1", "rt/a", "rt/marker").await;
    assert_eq!(got.len(), 1, "replaced, not added: {got:?}");
    assert_eq!((&got[0].payload[..], got[0].retain), (&b"v2"[..], true));
    assert_eq!(got[0].qos, QoS::AtLeastOnce);

    // A QoS 0 retained message is delivered at QoS 0 to a QoS 1 subscriber.
    publisher.publish("rt/b", QoS::AtMostOnce, true, "zero").await;
    publisher.publish("rt/marker", QoS::AtLeastOnce, true, "m").await;
    let got = retained_for(&b, "rt-new2", "rt/b", "rt/marker").await;
    assert_eq!(got.len(), 1);
    assert_eq!((&got[0].payload[..], got[0].qos), (&b"zero"[..], QoS::AtMostOnce));

    // An empty retained payload deletes the state, and is itself forwarded to live subscribers.
    publisher.publish("rt/a", QoS::AtLeastOnce, true, "").await;
    let p = live.next_publish().await;
    assert!(p.payload.is_empty() && !p.retain);
    let got = retained_for(&b, "rt-new3", "rt/a", "rt/marker").await;
    assert!(got.is_empty(), "deleted retained message still delivered: {got:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_delivered_for_wildcard_subscriptions() {
    let b = TestBroker::start().await;
    let mut publisher = mq(&b, "rw-pub", true).await;
    for t in ["rw/a", "rw/b/c", "rw", "other/a"] {
        publisher.publish(t, QoS::AtLeastOnce, true, t).await;
    }
    publisher.publish("zz/marker", QoS::AtLeastOnce, true, "m").await;
    let got = retained_for(&b, "rw-sub", "rw/#", "zz/marker").await;
    let mut topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    topics.sort_unstable();
    assert_eq!(topics, vec!["rw", "rw/a", "rw/b/c"]);
    assert!(got.iter().all(|p| p.retain && p.payload[..] == *p.topic.as_bytes()));
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Wills

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_abnormal_close() {
    let b = TestBroker::start().await;
    let mut watcher = mq(&b, "wa-watch", true).await;
    watcher.subscribe("wa/will", QoS::ExactlyOnce).await;
    let will = Will { topic: "wa/will", payload: b"gone", qos: 1, retain: false };
    let (c, _) = raw_connect(&b, "wa-client", true, 60, Some(&will)).await;
    drop(c);
    let p = watcher.next_publish().await;
    assert_eq!(p.topic, "wa/will");
    assert_eq!(&p.payload[..], b"gone");
    assert_eq!(p.qos, QoS::AtLeastOnce, "will QoS 1, subscription QoS 2");
    assert!(!p.retain);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_not_published_after_disconnect() {
    let b = TestBroker::start().await;
    let mut watcher = mq(&b, "wd-watch", true).await;
    watcher.subscribe("wd/will", QoS::AtLeastOnce).await;
    let will = Will { topic: "wd/will", payload: b"gone", qos: 1, retain: true };
    let (mut c, _) = raw_connect(&b, "wd-client", true, 60, Some(&will)).await;
    c.send(&DISCONNECT).await;
    let got = c.until_closed().await;
    assert!(got.is_empty(), "got {got:?}");
    watcher.no_publish().await;
    // Nor was it retained.
    let mut publisher = mq(&b, "wd-pub", true).await;
    publisher.publish("wd/marker", QoS::AtLeastOnce, true, "m").await;
    let got = retained_for(&b, "wd-late", "wd/will", "wd/marker").await;
    assert!(got.is_empty(), "{got:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_retain_sets_retained_state() {
    let b = TestBroker::start().await;
    let mut watcher = mq(&b, "wr-watch", true).await;
    watcher.subscribe("wr/will", QoS::AtLeastOnce).await;
    let will = Will { topic: "wr/will", payload: b"offline", qos: 1, retain: true };
    let (c, _) = raw_connect(&b, "wr-client", true, 60, Some(&will)).await;
    drop(c);
    let p = watcher.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"offline"[..], false), "live copy has retain=0");

    let mut late = mq(&b, "wr-late", true).await;
    late.subscribe("wr/will", QoS::AtLeastOnce).await;
    let p = late.next_publish().await;
    assert_eq!((&p.payload[..], p.retain), (&b"offline"[..], true), "the will became the retained state");
    b.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Limits

/// A raw subscriber that subscribes to `filter` and then never reads again.
async fn stalled_subscriber(b: &TestBroker, id: &str, filter: &str, qos: u8) -> RawClient {
    let (mut c, _) = raw_connect(b, id, true, 0, None).await;
    raw_subscribe(&mut c, 1, filter, qos).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_does_not_delay_others() {
    const N: u32 = 20_000;
    let b = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 2 * N as usize).await;
    let _stalled = stalled_subscriber(&b, "slow-stalled", "slow/t", 0).await;
    let mut healthy = mq(&b, "slow-healthy", true).await;
    healthy.subscribe("slow/t", QoS::AtMostOnce).await;
    let publisher = mq(&b, "slow-pub", true).await;
    let client = publisher.client.clone();
    tokio::spawn(async move {
        for i in 0..N {
            let mut payload = vec![b'.'; 1024];
            payload[..4].copy_from_slice(&i.to_be_bytes());
            client.publish("slow/t", QoS::AtMostOnce, false, payload).await.expect("publish queued");
        }
    });
    let start = Instant::now();
    for i in 0..N {
        let p = tokio::time::timeout(
            Duration::from_secs(12).saturating_sub(start.elapsed()),
            healthy.next_publish(),
        )
        .await
        .unwrap_or_else(|_| panic!("healthy subscriber got only {i} of {N} messages"));
        assert_eq!(p.payload.len(), 1024);
        assert_eq!(&p.payload[..4], &i.to_be_bytes(), "in order, none lost");
    }
    drop(publisher);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_max_queued_messages_keeps_the_broker_up() {
    const N: usize = 3_000;
    let b = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 10).await;
    let _stalled0 = stalled_subscriber(&b, "mq-stalled0", "mq/t", 0).await;
    let _stalled1 = stalled_subscriber(&b, "mq-stalled1", "mq/t", 1).await;
    let mut publisher = mq(&b, "mq-pub", true).await;
    let client = publisher.client.clone();
    tokio::spawn(async move {
        for _ in 0..N {
            client.publish("mq/t", QoS::AtLeastOnce, false, vec![b'x'; 1024]).await.expect("publish queued");
        }
    });
    for i in 0..N {
        publisher.wait_for(&format!("PUBACK {i}"), |p| matches!(p, Incoming::PubAck(_))).await;
    }
    // The broker still serves new clients.
    let mut fresh = mq(&b, "mq-fresh", true).await;
    fresh.subscribe("mq/fresh", QoS::AtLeastOnce).await;
    publisher.publish("mq/fresh", QoS::AtLeastOnce, false, "ok").await;
    assert_eq!(&fresh.next_publish().await.payload[..], b"ok");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_publish_closes_only_that_connection() {
    let b = TestBroker::start_with(|c| c.mqtt.max_packet_size = 1024).await;
    let mut bystander = mq(&b, "mp-bystander", true).await;
    bystander.subscribe("mp/t", QoS::AtLeastOnce).await;

    // Exactly at the limit: 1 + 2 (remaining length) + 2 + 4 (topic) + 1015 = 1024 bytes.
    let (mut ok, _) = raw_connect(&b, "mp-ok", true, 60, None).await;
    let at_limit = publish_pkt("mp/t", &[b'a'; 1015], 0, 0, false, false);
    assert_eq!(at_limit.len(), 1024);
    ok.send(&at_limit).await;
    let p = bystander.next_publish().await;
    assert_eq!(p.payload.len(), 1015);

    let (mut big, _) = raw_connect(&b, "mp-big", true, 60, None).await;
    let over = publish_pkt("mp/t", &[b'b'; 1016], 0, 0, false, false);
    assert_eq!(over.len(), 1025);
    big.send(&over).await;
    raw_closed_silently(&mut big).await;

    // Others are unaffected: the at-limit client still publishes, the bystander still receives,
    // and it never saw the oversized message.
    ok.send(&publish_pkt("mp/t", b"after", 1, 3, false, false)).await;
    assert!(matches!(ok.recv().await, Some(Packet::PubAck(a)) if a.pkid == 3));
    assert_eq!(&bystander.next_publish().await.payload[..], b"after");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_back_the_extra_client_until_one_closes() {
    let b = TestBroker::start_with(|c| c.mqtt.max_connections = 2).await;
    let (first, _) = raw_connect(&b, "mc-1", true, 60, None).await;
    let (mut second, _) = raw_connect(&b, "mc-2", true, 60, None).await;
    let mut third = RawClient::connect(b.addr).await;
    third.version = ProtocolVersion::V3_1_1;
    third.send(&connect_pkt(4, "mc-3", true, 60, None)).await;
    assert!(
        tokio::time::timeout(QUIET, third.recv()).await.is_err(),
        "a third connection was served with max_connections = 2"
    );
    drop(first);
    match third.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, 0),
        other => panic!("expected CONNACK once a slot freed, got {other:?}"),
    }
    // The second connection was never disturbed.
    second.send(&PINGREQ).await;
    assert_eq!(second.recv().await, Some(Packet::PingResp));
    b.stop().await;
}
