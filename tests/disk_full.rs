//! A data directory that is almost full: messages that would be stored are refused (v5 PUBACK
//! 0x97, 3.1.1 connection closed) and the retained state stays as it was, while reads and
//! messages that need no storage go on.
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{RawClient, TestBroker, WAIT};
use dataloom::codec::{
    Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscribeFilter,
};

fn connect(version: ProtocolVersion, id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

async fn client(b: &TestBroker, version: ProtocolVersion, id: &str) -> RawClient {
    let mut c = RawClient::connect(b.addr).await;
    c.version = version;
    c.send_packet(&connect(version, id)).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.code == 0), "{id} connected");
    c
}

fn publish(topic: &str, payload: &str, retain: bool, pkid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: Bytes::from(topic.to_string()),
        pkid,
        properties: Properties::default(),
        payload: Bytes::from(payload.to_string()),
    })
}

async fn puback(c: &mut RawClient, p: Packet) -> u8 {
    c.send_packet(&p).await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => a.code,
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

async fn subscribe(c: &mut RawClient, filter: &str) {
    let f = SubscribeFilter {
        filter: filter.into(),
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: Default::default(),
    };
    c.send_packet(&Packet::Subscribe(Subscribe {
        pkid: 9,
        filters: vec![f],
        properties: Properties::default(),
    }))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))));
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
    let mut v5 = client(&b, ProtocolVersion::V5, "pub5").await;
    assert_eq!(puback(&mut v5, publish("state/a", "v1", true, 1)).await, 0x10, "stored while there is space");

    broker.set_disk_full(true);
    assert_eq!(puback(&mut v5, publish("state/a", "v2", true, 2)).await, 0x97, "retained update refused");
    let mut sub = client(&b, ProtocolVersion::V5, "reader").await;
    subscribe(&mut sub, "state/#").await;
    match sub.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"v1", "the old state stays"),
        other => panic!("expected the retained state, got {other:?}"),
    }
    // A live message that needs no storage still flows.
    assert_eq!(puback(&mut v5, publish("state/b", "live", false, 3)).await, 0);
    match sub.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"live"),
        other => panic!("expected the live message, got {other:?}"),
    }

    let mut v3 = client(&b, ProtocolVersion::V3_1_1, "pub3").await;
    v3.send_packet(&publish("state/a", "v3", true, 1)).await;
    assert!(v3.until_closed().await.is_empty(), "3.1.1 has no negative ack: closed");

    broker.set_disk_full(false);
    assert_eq!(puback(&mut v5, publish("state/a", "v4", true, 4)).await, 0, "accepted again");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_free_space_watcher_marks_the_disk_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = fjall_broker(&dir, u64::MAX).await;
    let broker = b.running.as_ref().expect("running").broker.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !broker.disk_full() {
        assert!(tokio::time::Instant::now() < deadline, "watcher noticed the minimum within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut v5 = client(&b, ProtocolVersion::V5, "w").await;
    assert_eq!(puback(&mut v5, publish("x", "y", true, 1)).await, 0x97);
    b.stop().await;
}
