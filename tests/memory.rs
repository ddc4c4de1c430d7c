//! Memory held for what the broker keeps (issue 14, item 2): a small message queued for an
//! offline session must not keep alive the large read buffer it was decoded from. RSS is read
//! from /proc (the broker runs in this test's process).
mod common;
mod v5_util;

use bytes::BytesMut;
use common::TestBroker;
use dataloom::codec::{Packet, ProtocolVersion, QoS, encode};
use v5_util::*;

/// Resident set size of this process, bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

const ROUNDS: u16 = 60;
const BIG: usize = 1024 * 1024 - 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_queued_messages_do_not_pin_large_read_buffers() {
    let b = TestBroker::start_with(|c| c.mqtt.max_packet_size = 2 * 1024 * 1024).await;
    let persistent = |p: &mut dataloom::codec::Connect| p.properties.session_expiry_interval = Some(600);
    let mut sub = connect_ok(&b, "pin-sub", persistent).await;
    subscribe(&mut sub, 1, "pin/small", QoS::AtLeastOnce).await;
    disconnect(sub, 0, Default::default()).await;
    wait_sessions(&b, 1).await;

    let mut p = connect(&b, "pin-pub").await;
    let big = vec![b'b'; BIG];
    let before = rss();
    for round in 1..=ROUNDS {
        // One write: a 1 MiB message nobody keeps, then a 10-byte one queued for the session,
        // decoded from the same grown read buffer.
        let mut out = BytesMut::new();
        encode(
            &Packet::Publish(publish("pin/nobody", QoS::AtMostOnce, 0, &big)),
            ProtocolVersion::V5,
            &mut out,
        );
        encode(
            &Packet::Publish(publish("pin/small", QoS::AtLeastOnce, round, b"0123456789")),
            ProtocolVersion::V5,
            &mut out,
        );
        p.send(&out).await;
        assert!(matches!(p.recv().await, Some(Packet::PubAck(a)) if a.pkid == round));
    }
    let grown = rss().saturating_sub(before);
    eprintln!("RSS grew {} KiB for {ROUNDS} queued 10-byte messages", grown / 1024);
    assert!(grown < 16 * 1024 * 1024, "{ROUNDS} small queued messages hold {grown} bytes");
    // The messages are all there.
    let mut sub = connect_ok(&b, "pin-sub", |c| {
        persistent(c);
        c.clean_start = false;
    })
    .await;
    for _ in 0..ROUNDS {
        let m = recv_publish(&mut sub).await;
        assert_eq!(text(&m), "0123456789");
        send_ack(&mut sub, Packet::PubAck, m.pkid).await;
    }
    b.stop().await;
}
