//! A data directory that is almost full: messages that would be stored are refused (v5 PUBACK
//! 0x97, 3.1.1 connection closed) and the retained state stays as it was, while reads and
//! messages that need no storage go on.
mod common;
mod v5_util;

use std::time::Duration;

use common::{TestBroker, WAIT};
use dataloom::codec::{ProtocolVersion, QoS};
use v5_util::*;

/// Publishes a retained QoS 1 message and returns the PUBACK code.
async fn retain1(c: &mut common::RawClient, pkid: u16, topic: &str, payload: &[u8]) -> u8 {
    let mut p = publish(topic, QoS::AtLeastOnce, pkid, payload);
    p.retain = true;
    send_publish(c, p).await
}

async fn fjall_broker(dir: &tempfile::TempDir, min_free: u64) -> TestBroker {
    let data = dir.path().join("data");
    TestBroker::start_with(move |c| {
        c.storage.backend = dataloom::config::Backend::Fjall;
        c.storage.data_dir = data;
        c.storage.min_free_bytes = min_free;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_stored_messages_and_keeps_the_old_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = fjall_broker(&dir, 0).await;
    let broker = b.running.as_ref().expect("running").broker.clone();
    let mut v5 = connect(&b, "pub5").await;
    assert_eq!(retain1(&mut v5, 1, "state/a", b"v1").await, 0x10, "stored while there is space");

    broker.set_disk_full(true);
    assert_eq!(retain1(&mut v5, 2, "state/a", b"v2").await, 0x97, "retained update refused");
    let mut sub = connect(&b, "reader").await;
    subscribe(&mut sub, 9, "state/#", QoS::AtLeastOnce).await;
    assert_eq!(&recv_publish(&mut sub).await.payload[..], b"v1", "the old state stays");
    // A live message that needs no storage still flows.
    assert_eq!(pub1(&mut v5, 3, "state/b", b"live").await, 0);
    assert_eq!(&recv_publish(&mut sub).await.payload[..], b"live");

    let mut v3 = connect_ok(&b, "pub3", |c| c.protocol = ProtocolVersion::V3_1_1).await;
    let mut p = publish("state/a", QoS::AtLeastOnce, 1, b"v3");
    p.retain = true;
    v3.send_packet(&dataloom::codec::Packet::Publish(p)).await;
    assert!(v3.until_closed().await.is_empty(), "3.1.1 has no negative ack: closed");

    broker.set_disk_full(false);
    assert_eq!(retain1(&mut v5, 4, "state/a", b"v4").await, 0, "accepted again");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_space_watcher_marks_the_disk_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = fjall_broker(&dir, u64::MAX).await;
    let broker = b.running.as_ref().expect("running").broker.clone();
    // The watcher runs on a timer; nothing signals its first check, so poll (bounded).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !broker.disk_full() {
        assert!(tokio::time::Instant::now() < deadline, "watcher noticed the minimum within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut v5 = connect(&b, "w").await;
    assert_eq!(retain1(&mut v5, 1, "x", b"y").await, 0x97);
    b.stop().await;
}
