//! Issue 15, item 5: a SUBSCRIBE is not overtaken by a later PUBLISH from another connection.
//! In a test binary of its own: the race is about how the broker's runtime schedules two
//! connection tasks, and tests running beside it in the same binary (other brokers, other
//! clients) load the two cores and make the broker lose it more often than it does alone.
mod common;
mod v5_util;

use common::RawClient;
use common::binary::Site;
use dataloom::codec::{Packet, QoS};
use v5_util::*;

/// Paho's v5 request/response pattern: B sends SUBSCRIBE and, without waiting for the SUBACK,
/// A publishes to the topic. MQTT does not order packets across connections, but clients rely
/// on a broker applying them in the order they arrived. Runs the real binary, whose runtime is
/// the one that schedules connection tasks, for many rounds bounded in time. With the
/// runtime's LIFO slot on, the task woken last ran first and A overtook B in a fifth to a
/// quarter of the rounds on the 2-core test machine (consistently in Paho's run); with it
/// off, B runs first, but two workers may still run the two tasks in parallel. Measured on
/// main after the merges of 2026-12-07, alone on an idle 2-core host: 25, 32 and a few of 300
/// rounds lost; with the slot on, 51-80. So this is a measurement, not a guarantee yet (issue
/// 15 item 5 stays open): it runs with `cargo test --test ordering -- --ignored --nocapture`
/// and fails only when it gets worse than one round in five.
#[ignore = "measures a scheduling race that is not yet closed (issue 15, item 5)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_takes_effect_before_a_publish_that_arrives_after_it() {
    let p = Site::new().start().await;
    let (mut a, _) = connect_with(p.addr, "requester", |_| {}).await;
    let (mut b, _) = connect_with(p.addr, "responder", |_| {}).await;
    let (rounds, deadline) = (300u16, tokio::time::Instant::now() + std::time::Duration::from_secs(30));
    let mut missed = Vec::new();
    let mut played = 0;
    for i in 1..=rounds {
        if tokio::time::Instant::now() > deadline {
            break;
        }
        let topic = format!("reply/{i}");
        let sub = encode(
            &b,
            &Packet::Subscribe(dataloom::codec::Subscribe {
                pkid: i,
                filters: vec![filter(&topic, QoS::AtMostOnce)],
                properties: Default::default(),
            }),
        );
        let first = encode(&a, &Packet::Publish(publish(&topic, QoS::AtMostOnce, 0, b"first")));
        b.send(&sub).await;
        a.send(&first).await;
        match b.recv().await {
            Some(Packet::SubAck(s)) => assert_eq!((s.pkid, s.codes), (i, vec![0])),
            other => panic!("expected SUBACK, got {other:?}"),
        }
        // Sent after the SUBACK, so certainly delivered: B's next message tells whether
        // `first` came before it.
        a.send_packet(&Packet::Publish(publish(&topic, QoS::AtMostOnce, 0, b"marker"))).await;
        if text(&recv_publish(&mut b).await) == "first" {
            assert_eq!(text(&recv_publish(&mut b).await), "marker");
        } else {
            missed.push(i);
        }
        played += 1;
    }
    assert!(played >= 50, "only {played} rounds in 30 s");
    eprintln!("{} of {played} rounds lost the PUBLISH", missed.len());
    assert!(missed.len() * 5 <= played, "{} of {played} rounds lost the PUBLISH: {missed:?}", missed.len());
    p.stop().await;
}

fn encode(c: &RawClient, p: &Packet) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    dataloom::codec::encode(p, c.version, &mut out);
    out.to_vec()
}
