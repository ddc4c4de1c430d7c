//! Memory before authentication (issue 14, item 3): CONNECT has its own size limit
//! (`mqtt.max_connect_size`, default 64 KiB), checked from the fixed header before the body is
//! read, so a connection that announces a huge CONNECT holds no more than that; a packet that
//! is begun must be completed in time (`mqtt.packet_timeout`), and bytes of an unfinished
//! packet do not count as keep alive; one address holds at most `max_connections_per_ip`.
mod common;
mod v5_util;

use common::{RawClient, TestBroker, WAIT};
use dataloom::codec::Packet;
use v5_util::{connect_with, will};

/// Makes a v5 CONNECT about `size` bytes long: a will payload and a password (each field is
/// at most 65,535 bytes). Loopback without keys accepts any credentials.
fn bulk(p: &mut dataloom::codec::Connect, size: usize) {
    let half = size / 2;
    p.will = Some(will("w", &"x".repeat(half)));
    p.username = Some("u".into());
    p.password = Some(vec![b'p'; size - half].into());
}

async fn connect_with_will(b: &TestBroker, size: usize) -> Vec<Packet> {
    let mut c = RawClient::connect(b.addr).await;
    let mut p = v5_util::connect_packet("big");
    bulk(&mut p, size);
    c.send_packet(&Packet::Connect(Box::new(p))).await;
    tokio::time::timeout(WAIT, c.until_closed()).await.expect("answered in time")
}

#[tokio::test]
async fn a_connect_over_max_connect_size_is_refused_with_0x95() {
    let b = TestBroker::start().await;
    let got = connect_with_will(&b, 70_000).await;
    match got.as_slice() {
        [Packet::ConnAck(a)] => assert_eq!(a.code, 0x95, "Packet too large"),
        [] => {}
        other => panic!("expected CONNACK 0x95 or a close, got {other:?}"),
    }
    // Below the limit the same CONNECT works.
    let (_c, ack) = connect_with(b.addr, "small", |p| bulk(p, 60_000)).await;
    assert_eq!(ack.code, 0);
    b.stop().await;
}

#[tokio::test]
async fn the_limit_is_checked_from_the_header_before_the_body_arrives() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr).await;
    // CONNECT announcing 1 MiB (remaining length 0x80 0x80 0x40), then only its first bytes:
    // the broker answers at once instead of waiting for (and buffering) the megabyte.
    c.send(&[0x10, 0x80, 0x80, 0x40, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05]).await;
    let got = tokio::time::timeout(WAIT, c.until_closed()).await.expect("closed without the body");
    assert!(
        got.iter().all(|p| matches!(p, Packet::ConnAck(a) if a.code == 0x95)),
        "only a CONNACK 0x95, if anything: {got:?}"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_bigger_max_connect_size_admits_a_bigger_connect() {
    let b = TestBroker::start_with(|c| c.mqtt.max_connect_size = 256 * 1024).await;
    let (_c, ack) = connect_with(b.addr, "big", |p| bulk(p, 70_000)).await;
    assert_eq!(ack.code, 0);
    b.stop().await;
}

/// The metrics text of the broker's process, as `/metrics` serves it.
fn metrics_text(b: &TestBroker) -> String {
    let broker = &b.running.as_ref().expect("running").broker;
    dataloom::metrics::get().render(&broker.metrics_snapshot()).expect("metrics render")
}

/// Reads until the broker closes the socket; true when it closed without sending a byte.
async fn closed_silently(c: &mut RawClient) -> bool {
    let got = tokio::time::timeout(WAIT, c.until_closed()).await.expect("closed in time");
    got.is_empty()
}

#[tokio::test]
async fn one_address_holds_at_most_max_connections_per_ip() {
    let b = TestBroker::start_with(|c| c.listeners.tcp.max_connections_per_ip = 3).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let (c, ack) = connect_with(b.addr, &format!("per-ip-{i}"), |_| {}).await;
        assert_eq!(ack.code, 0);
        held.push(c);
    }
    // The fourth from 127.0.0.1 is closed at accept, before its CONNECT is read.
    let mut fourth = RawClient::connect(b.addr).await;
    fourth.send_packet(&Packet::Connect(Box::new(v5_util::connect_packet("per-ip-3")))).await;
    assert!(closed_silently(&mut fourth).await, "closed without a CONNACK");
    let text = metrics_text(&b);
    let line = text
        .lines()
        .find(|l| l.starts_with("dataloom_connections_rejected_total") && l.contains("too_many_from_address"))
        .expect("the reason has a series");
    assert!(!line.ends_with(" 0"), "the refusal is counted: {line}");
    // A slot comes back when a connection ends (the server notices the close first).
    drop(held.pop());
    let mut admitted = false;
    for attempt in 0..100 {
        let mut c = RawClient::connect(b.addr).await;
        c.send_packet(&Packet::Connect(Box::new(v5_util::connect_packet(&format!("again-{attempt}"))))).await;
        if let Ok(Some(Packet::ConnAck(a))) = tokio::time::timeout(WAIT, c.recv()).await {
            assert_eq!(a.code, 0);
            admitted = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(admitted, "a freed slot admits a new connection");
    b.stop().await;
}

/// Sends the first bytes of a 200-byte v5 PUBLISH, then one more byte every `every`, and
/// returns what the broker sent until it closed the connection.
async fn trickle(c: &mut RawClient, every: std::time::Duration) -> Vec<Packet> {
    c.send(&[0x30, 0xC8, 0x01]).await;
    let mut tick = tokio::time::interval(every);
    for _ in 0..100 {
        tokio::select! {
            p = c.recv() => match p {
                Some(p) => return vec![p],
                None => return Vec::new(),
            },
            _ = tick.tick() => c.send(b"x").await,
        }
    }
    panic!("the trickling client was never closed");
}

#[tokio::test]
async fn a_packet_begun_must_complete_within_packet_timeout() {
    let b = TestBroker::start_with(|c| c.mqtt.packet_timeout = std::time::Duration::from_millis(300)).await;
    // Keep alive 0: only the packet deadline can end this connection.
    let (mut c, ack) = connect_with(b.addr, "slow-packet", |p| p.keep_alive = 0).await;
    assert_eq!(ack.code, 0);
    let started = std::time::Instant::now();
    let got = trickle(&mut c, std::time::Duration::from_millis(50)).await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.code == 0x8D),
        "DISCONNECT 0x8D, got {got:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    b.stop().await;
}

#[tokio::test]
async fn bytes_of_an_unfinished_packet_are_not_keep_alive() {
    let b = TestBroker::start_with(|c| c.mqtt.packet_timeout = std::time::Duration::ZERO).await;
    let (mut c, ack) = connect_with(b.addr, "trickle-ka", |p| p.keep_alive = 1).await;
    assert_eq!(ack.code, 0);
    // A byte every 200 ms never completes a packet: after 1.5 s the keep alive runs out.
    let got = trickle(&mut c, std::time::Duration::from_millis(200)).await;
    assert!(
        matches!(got.as_slice(), [Packet::Disconnect(d)] if d.code == 0x8D),
        "DISCONNECT 0x8D, got {got:?}"
    );
    b.stop().await;
}
