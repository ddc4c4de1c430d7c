//! Memory before authentication (issue 14, item 3): CONNECT has its own size limit
//! (`mqtt.max_connect_size`, default 64 KiB), checked from the fixed header before the body is
//! read, so a connection that announces a huge CONNECT holds no more than that.
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
