//! Hostile SUBSCRIBEs (issue 14, item 1): a persistent session with 100,000 subscriptions is
//! built with one store write per SUBSCRIBE packet (linear cost) while other clients keep
//! connecting; the per-client subscription limit and the per-packet filter limit answer with
//! the spec's codes.
mod common;
mod v5_util;

use std::time::{Duration, Instant};

use common::{TestBroker, WAIT};
use dataloom::codec::{Packet, Properties, ProtocolVersion, QoS, Subscribe};
use v5_util::{connect_ok, connect_with, filter, recv_disconnect, subscribe_many};

const LONG: u32 = 3600;

fn persistent(c: &mut dataloom::codec::Connect) {
    c.properties.session_expiry_interval = Some(LONG);
}

/// Connects fresh clients back to back until `stop` resolves; returns the slowest CONNACK.
async fn connect_loop(
    addr: std::net::SocketAddr,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (Duration, u32) {
    let (mut worst, mut n) = (Duration::ZERO, 0u32);
    loop {
        if stop.try_recv().is_ok() {
            return (worst, n);
        }
        let t = Instant::now();
        let (c, ack) = connect_with(addr, &format!("probe-{n}"), |_| {}).await;
        assert_eq!(ack.code, 0);
        worst = worst.max(t.elapsed());
        n += 1;
        drop(c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_subscriptions_build_in_linear_time_and_connects_go_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let b = TestBroker::start_with(|c| {
        c.storage.backend = dataloom::config::Backend::Fjall;
        c.storage.data_dir = data;
        c.mqtt.max_subscriptions_per_client = 100_000;
    })
    .await;
    let mut c = connect_ok(&b, "many", persistent).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let probe = tokio::spawn(connect_loop(b.addr, stop_rx));
    let started = Instant::now();
    // 100 packets of 1,000 filters, all written before any SUBACK is read.
    for p in 0..100u16 {
        let filters = (0..1000).map(|i| filter(&format!("dev/{p}/{i}/+"), QoS::AtLeastOnce)).collect();
        let s = Subscribe { pkid: p + 1, filters, properties: Properties::default() };
        c.send_packet(&Packet::Subscribe(s)).await;
    }
    for p in 0..100u16 {
        match c.recv().await {
            Some(Packet::SubAck(s)) => {
                assert_eq!(s.pkid, p + 1);
                assert_eq!(s.codes, vec![1u8; 1000], "every filter granted QoS 1");
            }
            other => panic!("SUBACK {} expected, got {other:?}", p + 1),
        }
    }
    let built = started.elapsed();
    stop_tx.send(()).expect("probe runs");
    let (worst, probes) = probe.await.expect("probe");
    println!("100,000 subscriptions in {built:?}; {probes} CONNECTs meanwhile, slowest CONNACK {worst:?}");
    assert!(probes > 0, "other clients connected while the subscriptions were built");
    assert!(worst < Duration::from_secs(1), "a CONNECT waited {worst:?} behind the SUBSCRIBE flood");

    // The session record holds them all: resume it and receive on one of the filters.
    drop(c);
    let mut c = loop {
        let (c, ack) = connect_with(b.addr, "many", |p| {
            p.clean_start = false;
            persistent(p);
        })
        .await;
        if ack.code == 0 {
            assert!(ack.session_present, "the session with 100,000 subscriptions resumes");
            break c;
        }
    };
    let mut pubr = connect_ok(&b, "pub", |_| {}).await;
    assert_eq!(v5_util::pub1(&mut pubr, 1, "dev/99/999/x", b"hi").await, 0, "a subscriber matched");
    assert_eq!(v5_util::recv_publish(&mut c).await.payload.as_ref(), b"hi");
    b.stop().await;
}

#[tokio::test]
async fn the_per_client_limit_refuses_filters_beyond_it_with_0x97_and_0x80() {
    let b = TestBroker::start_with(|c| c.mqtt.max_subscriptions_per_client = 2).await;
    let mut c = connect_ok(&b, "v5", |_| {}).await;
    let fs = vec![filter("a", QoS::AtLeastOnce), filter("b", QoS::AtMostOnce), filter("c", QoS::AtLeastOnce)];
    let ack = subscribe_many(&mut c, 1, fs, None).await;
    assert_eq!(ack.codes, vec![1, 0, 0x97], "the third filter is over the limit (Quota exceeded)");
    // Replacing a subscription it has is no new one.
    let ack =
        subscribe_many(&mut c, 2, vec![filter("a", QoS::AtMostOnce), filter("d", QoS::AtMostOnce)], None)
            .await;
    assert_eq!(ack.codes, vec![0, 0x97]);

    let (mut old, ack) = connect_with(b.addr, "v311", |p| p.protocol = ProtocolVersion::V3_1_1).await;
    assert_eq!(ack.code, 0);
    let fs =
        vec![filter("a", QoS::AtLeastOnce), filter("b", QoS::AtLeastOnce), filter("c", QoS::AtLeastOnce)];
    old.send_packet(&Packet::Subscribe(Subscribe {
        pkid: 3,
        filters: fs,
        properties: Properties::default(),
    }))
    .await;
    match old.recv().await {
        Some(Packet::SubAck(s)) => assert_eq!(s.codes, vec![1, 1, 0x80], "3.1.1 has only Failure (0x80)"),
        other => panic!("SUBACK expected, got {other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn too_many_filters_in_one_subscribe_closes_the_connection() {
    let b = TestBroker::start_with(|c| c.mqtt.max_filters_per_subscribe = 3).await;
    let mut c = connect_ok(&b, "v5", |_| {}).await;
    let fs = (0..4).map(|i| filter(&format!("t/{i}"), QoS::AtMostOnce)).collect();
    c.send_packet(&Packet::Subscribe(Subscribe { pkid: 1, filters: fs, properties: Properties::default() }))
        .await;
    assert_eq!(recv_disconnect(&mut c).await.code, 0x97, "DISCONNECT Quota exceeded");

    let (mut old, ack) = connect_with(b.addr, "v311", |p| p.protocol = ProtocolVersion::V3_1_1).await;
    assert_eq!(ack.code, 0);
    let fs = (0..4).map(|i| filter(&format!("t/{i}"), QoS::AtMostOnce)).collect();
    old.send_packet(&Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: fs,
        properties: Properties::default(),
    }))
    .await;
    let got = tokio::time::timeout(WAIT, old.until_closed()).await.expect("closed in time");
    assert!(got.iter().all(|p| !matches!(p, Packet::SubAck(_))), "3.1.1 is closed without SUBACK: {got:?}");

    // Exactly at the limit is fine.
    let mut c = connect_ok(&b, "ok", |_| {}).await;
    let fs = (0..3).map(|i| filter(&format!("t/{i}"), QoS::AtMostOnce)).collect();
    assert_eq!(subscribe_many(&mut c, 1, fs, None).await.codes, vec![0, 0, 0]);
    b.stop().await;
}
