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
    let n = common::rss_of("self");
    assert!(n > 0, "VmRSS of this process");
    n
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_retained_messages_are_purged_while_running() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let b = TestBroker::start_with(move |c| {
        c.storage.backend = dataloom::config::Backend::Fjall;
        c.storage.data_dir = data;
    })
    .await;
    let broker = b.running.as_ref().expect("running").broker.clone();
    let mut p = connect(&b, "exp-pub").await;
    for i in 0..100u16 {
        let mut m = publish(&format!("exp/{i}"), QoS::AtLeastOnce, i + 1, b"short-lived");
        m.retain = true;
        m.properties.message_expiry_interval = Some(1);
        assert!(send_publish(&mut p, m).await < 0x80);
    }
    let mut keep = publish("exp/keep", QoS::AtLeastOnce, 200, b"stays");
    keep.retain = true;
    assert!(send_publish(&mut p, keep).await < 0x80);
    assert_eq!(broker.retained_under("exp/#").len(), 101);
    let with_expiring = broker.metrics_snapshot().retained_messages;
    // The purge runs once a second: within a few seconds of expiry only the one without an
    // expiry interval is left, and the gauge says so.
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = broker.retained_under("exp/#").len();
        if left == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 1, "expired retained messages still held");
    assert_eq!(broker.metrics_snapshot().retained_messages, with_expiring - 100);
    b.stop().await;
}
