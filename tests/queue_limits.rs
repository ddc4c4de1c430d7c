//! Per-session queue limits for offline persistent sessions: `mqtt.max_queued_messages` and
//! `mqtt.max_queued_bytes` bound what waits for a client; the rest is dropped and counted.
mod common;

use bytes::Bytes;
use common::{RawClient, TestBroker};
use dataloom::codec::{
    Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscribeFilter,
};

fn connect(id: &str, clean: bool) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: clean,
        keep_alive: 60,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

async fn client(b: &TestBroker, id: &str, clean: bool) -> RawClient {
    let mut c = RawClient::connect(b.addr).await;
    c.version = ProtocolVersion::V3_1_1;
    c.send_packet(&connect(id, clean)).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.code == 0));
    c
}

/// Queues `n` QoS 1 messages of `size` bytes for an offline persistent subscriber and returns
/// how many it receives when it comes back.
async fn delivered_after_reconnect(b: &TestBroker, n: u16, size: usize) -> usize {
    let mut sub = client(b, "keeper", false).await;
    let f = SubscribeFilter {
        filter: "q/#".into(),
        qos: QoS::AtLeastOnce,
        no_local: false,
        retain_as_published: false,
        retain_handling: Default::default(),
    };
    sub.send_packet(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![f],
        properties: Properties::default(),
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::SubAck(_))));
    sub.send_hex("e0 00").await; // DISCONNECT
    assert!(sub.until_closed().await.is_empty());

    let mut publisher = client(b, "filler", true).await;
    for pkid in 1..=n {
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Bytes::from_static(b"q/x"),
            pkid,
            properties: Properties::default(),
            payload: Bytes::from(vec![b'x'; size]),
        };
        publisher.send_packet(&Packet::Publish(p)).await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(a)) if a.pkid == pkid));
    }
    // The publisher's acks came after routing: everything owed to "keeper" is queued by now.
    let mut back = client(b, "keeper", false).await;
    back.send_hex("c0 00").await; // PINGREQ: its PINGRESP follows the queued messages
    let mut got = 0;
    loop {
        match back.recv().await {
            Some(Packet::Publish(_)) => got += 1,
            Some(Packet::PingResp) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queued_bytes_bounds_an_offline_session() {
    let b = TestBroker::start_with(|c| c.mqtt.max_queued_bytes = 3000).await;
    // 1,000-byte payloads plus the 3-byte topic: two fit in 3,000 bytes, the third does not.
    assert_eq!(delivered_after_reconnect(&b, 10, 1000).await, 2);
    let dropped = b
        .running
        .as_ref()
        .expect("running")
        .broker
        .stats
        .dropped_queue_full
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 8, "the rest is dropped and counted");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queued_messages_bounds_an_offline_session() {
    let b = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 3).await;
    assert_eq!(delivered_after_reconnect(&b, 10, 10).await, 3);
    b.stop().await;
}
