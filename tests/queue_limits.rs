//! Per-session queue limits for offline persistent sessions: `mqtt.max_queued_messages` and
//! `mqtt.max_queued_bytes` bound what waits for a client; the rest is dropped and counted.
mod common;
mod v5_util;

use common::TestBroker;
use dataloom::codec::{Connect, Packet, ProtocolVersion, QoS};
use v5_util::*;

/// A 3.1.1 CONNECT editor: clean session as given.
fn v311(clean: bool) -> impl FnOnce(&mut Connect) {
    move |c| {
        c.protocol = ProtocolVersion::V3_1_1;
        c.clean_start = clean;
    }
}

/// Queues `n` QoS 1 messages of `size` bytes for an offline persistent subscriber and returns
/// how many it receives when it comes back.
async fn delivered_after_reconnect(b: &TestBroker, n: u16, size: usize) -> usize {
    let mut sub = connect_ok(b, "keeper", v311(false)).await;
    subscribe(&mut sub, 1, "q/#", QoS::AtLeastOnce).await;
    sub.send_packet(&Packet::Disconnect(dataloom::codec::Disconnect {
        code: 0,
        properties: Default::default(),
    }))
    .await;
    assert!(sub.until_closed().await.is_empty());

    let mut publisher = connect_ok(b, "filler", v311(true)).await;
    for pkid in 1..=n {
        // The PUBACK comes after routing: the message is queued for "keeper" by then.
        send_publish(&mut publisher, publish("q/x", QoS::AtLeastOnce, pkid, &vec![b'x'; size])).await;
    }
    let mut back = connect_ok(b, "keeper", v311(false)).await;
    // A marker published now queues behind everything stored (the client is online and reads,
    // so it is never dropped): the queued messages are those that arrive before it.
    send_publish(&mut publisher, publish("q/end", QoS::AtLeastOnce, n + 1, b"end")).await;
    let mut got = 0;
    loop {
        let p = recv_publish(&mut back).await;
        send_ack(&mut back, Packet::PubAck, p.pkid).await;
        if &p.topic[..] == b"q/end" {
            return got;
        }
        got += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queued_bytes_bounds_an_offline_session() {
    let b = TestBroker::start_with(|c| c.mqtt.max_queued_bytes = 3000).await;
    // 1,000-byte payloads plus the 3-byte topic: two fit in 3,000 bytes, the third does not.
    assert_eq!(delivered_after_reconnect(&b, 10, 1000).await, 2);
    let stats = &b.running.as_ref().expect("running").broker.stats;
    let dropped = stats.dropped_queue_full.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(dropped, 8, "the rest is dropped and counted");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queued_messages_bounds_an_offline_session() {
    let b = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 3).await;
    assert_eq!(delivered_after_reconnect(&b, 10, 10).await, 3);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_max_queued_bytes_is_finite() {
    // Issue 14: 16 MiB per session by default, so a subscriber that never comes back (or never
    // reads) holds a bounded amount. 1,000,000-byte payloads: 16 fit in 16 MiB, 4 are dropped.
    let b = TestBroker::start().await;
    assert_eq!(delivered_after_reconnect(&b, 20, 1_000_000).await, 16);
    b.stop().await;
}

/// `mqtt.max_inflight_bytes` bounds the outgoing window by bytes: with 1,000 bytes, 303-byte
/// messages (300 of payload, 3 of topic) go out four at a time (the fourth starts below the
/// limit), each PUBACK lets one more out, and a message larger than the whole limit still goes
/// out alone when nothing is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_bytes_bounds_the_outgoing_window() {
    let b = TestBroker::start_with(|c| c.mqtt.max_inflight_bytes = 1000).await;
    let mut sub = connect_ok(&b, "window", v311(true)).await;
    subscribe(&mut sub, 1, "w/#", QoS::AtLeastOnce).await;
    let mut publisher = connect_ok(&b, "pusher", v311(true)).await;
    for pkid in 1..=10 {
        // Each PUBACK comes after routing: all ten are queued for "window" after the loop.
        send_publish(&mut publisher, publish("w/t", QoS::AtLeastOnce, pkid, &[b'x'; 300])).await;
    }
    let mut sent = Vec::new();
    for _ in 0..4 {
        sent.push(recv_publish(&mut sub).await.pkid);
    }
    let quiet = |got: Vec<Packet>| got.iter().filter(|p| matches!(p, Packet::Publish(_))).count();
    assert_eq!(quiet(until_pingresp(&mut sub).await), 0, "1,000 bytes let four 303-byte messages out");
    send_ack(&mut sub, Packet::PubAck, sent[0]).await;
    recv_publish(&mut sub).await;
    assert_eq!(quiet(until_pingresp(&mut sub).await), 0, "one PUBACK lets one more out");

    let mut big = connect_ok(&b, "big", v311(true)).await;
    subscribe(&mut big, 1, "big/#", QoS::AtLeastOnce).await;
    for pkid in 11..=12 {
        send_publish(&mut publisher, publish("big/t", QoS::AtLeastOnce, pkid, &[b'y'; 2000])).await;
    }
    let first = recv_publish(&mut big).await;
    assert_eq!(first.payload.len(), 2000, "a message over the limit goes out alone");
    assert_eq!(quiet(until_pingresp(&mut big).await), 0, "and nothing beside it");
    send_ack(&mut big, Packet::PubAck, first.pkid).await;
    recv_publish(&mut big).await;
    b.stop().await;
}
