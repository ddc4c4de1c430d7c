//! The v5 SUBACK's User Property `retained` (issue 17, item 1): per filter, in SUBSCRIBE order,
//! the number of RETAIN=1 messages that follow, counted after permissions, expiry and the
//! client's Maximum Packet Size; 0 for refused, shared, Retain Handling 2 and Retain Handling 1
//! on an existing subscription; left out when it would not fit the client's Maximum Packet Size.
mod common;
mod v5_util;

use std::time::Duration;

use common::{RawClient, TestBroker};
use dataloom::auth::KeySpec;
use dataloom::codec::{Packet, Publish, QoS, RetainHandling, SubAck, SubscribeFilter};
use v5_util::*;

/// Stores `payload` as the retained state of `topic` (QoS 1, waits for the PUBACK).
async fn retain(c: &mut RawClient, pkid: u16, topic: &str, payload: &[u8]) {
    let mut p = publish(topic, QoS::AtLeastOnce, pkid, payload);
    p.retain = true;
    let code = send_publish(c, p).await;
    assert!(code == 0 || code == 0x10, "retained publish to {topic} accepted: {code:#x}");
}

/// The SUBACK's `retained` value, if it carries one.
fn retained(ack: &SubAck) -> Option<&str> {
    let mut found = ack.properties.user_properties.iter().filter(|(k, _)| k == "retained");
    let value = found.next().map(|(_, v)| v.as_str());
    assert!(found.next().is_none(), "one `retained` property at most: {ack:?}");
    value
}

fn with_rh(f: &str, rh: RetainHandling) -> SubscribeFilter {
    SubscribeFilter { retain_handling: rh, ..filter(f, QoS::AtLeastOnce) }
}

/// Every PUBLISH before the PINGRESP, as (topic, retain), sorted; QoS 1 ones are acknowledged
/// afterwards, so callers expect fewer than the in-flight window (20).
async fn publishes_until_ping(c: &mut RawClient) -> Vec<(String, bool)> {
    let mut got = Vec::new();
    for p in until_pingresp(c).await {
        match p {
            Packet::Publish(Publish { topic, retain, qos, pkid, .. }) => {
                if qos == QoS::AtLeastOnce {
                    send_ack(c, Packet::PubAck, pkid).await;
                }
                got.push((String::from_utf8_lossy(&topic).into_owned(), retain));
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_counts_the_retained_messages_of_each_filter_in_order() {
    let b = TestBroker::start().await;
    let mut p = connect(&b, "snap-pub").await;
    retain(&mut p, 1, "a/1", b"1").await;
    retain(&mut p, 2, "a/2", b"2").await;
    retain(&mut p, 3, "b/1", b"3").await;
    retain(&mut p, 4, "a/3", b"gone").await;
    retain(&mut p, 5, "a/3", b"").await;

    let mut s = connect(&b, "snap-sub").await;
    let filters = vec![
        filter("a/#", QoS::AtLeastOnce),
        filter("none/#", QoS::AtMostOnce),
        filter("b/+", QoS::AtMostOnce),
    ];
    let ack = subscribe_many(&mut s, 1, filters, None).await;
    assert_eq!(ack.codes, vec![1, 0, 0]);
    assert_eq!(retained(&ack), Some("2,0,1"));
    let got = publishes_until_ping(&mut s).await;
    let want = [("a/1", true), ("a/2", true), ("b/1", true)].map(|(t, r)| (t.to_string(), r));
    assert_eq!(got, want, "exactly the announced messages, all RETAIN=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_shared_and_retain_handling_filters_count_zero_and_unreadable_topics_are_not_counted() {
    let b = TestBroker::start_with(|c| {
        c.auth.allow_anonymous = true;
        c.auth.anonymous.get_or_insert_default().subscribe = vec!["s/#".into(), "$share/+/s/#".into()];
        c.auth.anonymous.get_or_insert_default().deny_subscribe = vec!["s/secret/#".into()];
    })
    .await;
    // With a key in the store, a client without credentials gets `[auth.anonymous]`.
    let auth = &b.running.as_ref().expect("running").auth;
    auth.create(KeySpec { name: "someone".into(), ..KeySpec::default() }).await.expect("key");
    let mut p = connect(&b, "snap-anon-pub").await;
    for (i, t) in ["s/1", "s/2", "s/secret/x", "s/secret/y"].iter().enumerate() {
        retain(&mut p, 1 + i as u16, t, b"v").await;
    }

    let mut s = connect(&b, "snap-anon-sub").await;
    let filters = vec![
        with_rh("s/#", RetainHandling::OnSubscribe),
        with_rh("x/#", RetainHandling::OnSubscribe),
        with_rh("$share/g/s/#", RetainHandling::OnSubscribe),
        with_rh("s/+", RetainHandling::Never),
    ];
    let ack = subscribe_many(&mut s, 1, filters, None).await;
    assert_eq!(ack.codes, vec![1, 0x87, 1, 1]);
    assert_eq!(retained(&ack), Some("2,0,0,0"), "s/secret/* may not be read, so is not counted");
    let got = publishes_until_ping(&mut s).await;
    assert_eq!(got, [("s/1".to_string(), true), ("s/2".to_string(), true)]);

    // Retain Handling 1: only a subscription that did not exist yet gets the state.
    let filters =
        vec![with_rh("s/#", RetainHandling::OnNewSubscribe), with_rh("s/1", RetainHandling::OnNewSubscribe)];
    let ack = subscribe_many(&mut s, 2, filters, None).await;
    assert_eq!(retained(&ack), Some("0,1"));
    assert_eq!(publishes_until_ping(&mut s).await, [("s/1".to_string(), true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_retained_messages_are_neither_counted_nor_sent() {
    let b = TestBroker::start().await;
    let mut p = connect(&b, "snap-exp-pub").await;
    let mut short = publish("e/short", QoS::AtLeastOnce, 1, b"soon gone");
    short.retain = true;
    short.properties.message_expiry_interval = Some(1);
    send_publish(&mut p, short).await;
    retain(&mut p, 2, "e/kept", b"stays").await;
    let mut s = connect(&b, "snap-exp-sub").await;
    let ack = subscribe_many(&mut s, 1, vec![filter("e/#", QoS::AtLeastOnce)], None).await;
    assert_eq!(retained(&ack), Some("2"), "both live before the expiry");
    assert_eq!(publishes_until_ping(&mut s).await.len(), 2);

    // The expiry is a time, not an event: wait it out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut late = connect(&b, "snap-exp-late").await;
    let ack = subscribe_many(&mut late, 1, vec![filter("e/#", QoS::AtLeastOnce)], None).await;
    assert_eq!(retained(&ack), Some("1"));
    assert_eq!(publishes_until_ping(&mut late).await, [("e/kept".to_string(), true)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_maximum_packet_size_bounds_both_the_count_and_the_property() {
    let b = TestBroker::start().await;
    let mut p = connect(&b, "snap-max-pub").await;
    retain(&mut p, 1, "m/small", b"x").await;
    retain(&mut p, 2, "m/big", &[b'y'; 300]).await;

    let mut s = connect_ok(&b, "snap-max-sub", |c| c.properties.maximum_packet_size = Some(100)).await;
    let ack = subscribe_many(&mut s, 1, vec![filter("m/#", QoS::AtMostOnce)], None).await;
    assert_eq!(retained(&ack), Some("1"), "a message the client cannot take is not announced");
    assert_eq!(publishes_until_ping(&mut s).await, [("m/small".to_string(), true)]);

    // 20 filters: the SUBACK with `retained=0,0,...` (77 bytes) would exceed 60 bytes.
    let mut tight = connect_ok(&b, "snap-max-tight", |c| c.properties.maximum_packet_size = Some(60)).await;
    let filters = (0..20).map(|i| filter(&format!("none/{i}"), QoS::AtMostOnce)).collect();
    let ack = subscribe_many(&mut tight, 1, filters, None).await;
    assert_eq!(ack.codes, vec![0; 20]);
    assert_eq!(retained(&ack), None, "left out rather than exceed the Maximum Packet Size");
    let ack = subscribe_many(&mut tight, 2, vec![filter("m/small", QoS::AtMostOnce)], None).await;
    assert_eq!(retained(&ack), Some("1"), "a SUBACK that fits keeps it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_reads_the_count_and_then_exactly_that_many_retained_messages() {
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::mqttbytes::v5::Packet as RPacket;
    use rumqttc::v5::{AsyncClient, MqttOptions};

    let b = TestBroker::start().await;
    let mut p = connect(&b, "snap-rq-pub").await;
    for i in 0..12u16 {
        retain(&mut p, i + 1, &format!("fleet/{i}/state"), b"on").await;
    }
    let (client, mut events) = AsyncClient::new(MqttOptions::new("snap-rq", "127.0.0.1", b.port()), 10);
    client.subscribe("fleet/+/state", RQoS::AtLeastOnce).await.expect("queued");
    let ack =
        rumqttc_until(&mut events, "SUBACK", |p| if let RPacket::SubAck(a) = p { Some(a) } else { None })
            .await;
    let props = ack.properties.expect("SUBACK properties");
    let count: usize = props
        .user_properties
        .iter()
        .find(|(k, _)| k == "retained")
        .and_then(|(_, v)| v.parse().ok())
        .expect("a numeric `retained` property");
    assert_eq!(count, 12);
    for n in 0..count {
        let publish = rumqttc_until(&mut events, "retained PUBLISH", |p| {
            if let RPacket::Publish(x) = p { Some(x) } else { None }
        })
        .await;
        assert!(publish.retain, "message {n} of the snapshot is RETAIN=1");
    }
    // The snapshot is complete: the next message is live (RETAIN=0).
    retain(&mut p, 100, "fleet/0/state", b"off").await;
    let next =
        rumqttc_until(
            &mut events,
            "live PUBLISH",
            |p| if let RPacket::Publish(x) = p { Some(x) } else { None },
        )
        .await;
    assert!(!next.retain);
    assert_eq!(&next.payload[..], b"off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_sessions_suback_waits_for_the_store_and_the_snapshot_still_follows_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let b = TestBroker::start_with(move |c| {
        c.storage.backend = dataloom::config::Backend::Fjall;
        c.storage.data_dir = data;
    })
    .await;
    let mut p = connect(&b, "snap-fj-pub").await;
    for i in 0..50u16 {
        retain(&mut p, i + 1, &format!("fj/{i}"), b"v").await;
    }
    let mut s = connect_ok(&b, "snap-fj-sub", |c| c.properties.session_expiry_interval = Some(600)).await;
    // The SUBACK of a persistent session is sent once its record is on disk; the retained
    // messages queued by the same SUBSCRIBE must not overtake it.
    let ack = subscribe_many(&mut s, 1, vec![filter("fj/#", QoS::AtMostOnce)], None).await;
    assert_eq!(retained(&ack), Some("50"));
    assert_eq!(publishes_until_ping(&mut s).await.len(), 50);
    b.stop().await;
}
