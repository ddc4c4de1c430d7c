//! Reason strings the broker writes are bounded (issue 14): never longer than a UTF-8 string
//! may be on the wire (65,535 bytes), and left out when the ack would exceed the client's
//! Maximum Packet Size [MQTT-3.4.2-2]. A refused PUBLISH to a maximal topic is the way to
//! make the broker's own text long.
mod common;
mod v5_util;

use common::TestBroker;
use dataloom::codec::{Packet, QoS};
use v5_util::{connect_ok, publish};

/// Anonymous clients that may publish nothing (a key exists, so loopback is not unrestricted).
async fn deny_all() -> TestBroker {
    TestBroker::start_with(|c| {
        c.auth.keys = vec![dataloom::config::KeyRecord {
            id: "someone".into(),
            secret_sha256: "00".repeat(32),
            ..Default::default()
        }];
        c.auth.allow_anonymous = true;
        c.auth.anonymous.get_or_insert_default().deny_publish = vec!["#".into()];
    })
    .await
}

async fn puback_of(c: &mut common::RawClient, topic: &str) -> dataloom::codec::Ack {
    c.send_packet(&Packet::Publish(publish(topic, QoS::AtLeastOnce, 1, b"x"))).await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => a,
        other => panic!("PUBACK expected (a well-formed packet), got {other:?}"),
    }
}

#[tokio::test]
async fn a_reason_string_about_a_maximal_topic_stays_a_valid_utf8_string() {
    let b = deny_all().await;
    let mut c = connect_ok(&b, "long", |_| {}).await;
    let topic = "é".repeat(32_767) + "a"; // 65,535 bytes, the longest topic name
    let ack = puback_of(&mut c, &topic).await;
    assert_eq!(ack.code, 0x87);
    let why = ack.properties.reason_string.expect("a reason string");
    assert!(why.len() <= 65_535 && why.starts_with("not authorized to publish to "), "{} bytes", why.len());
    // The connection is still usable: a second refusal is answered too.
    assert_eq!(puback_of(&mut c, "short").await.code, 0x87);
    b.stop().await;
}

#[tokio::test]
async fn no_reason_string_beyond_the_clients_maximum_packet_size() {
    let b = deny_all().await;
    let mut c = connect_ok(&b, "small", |p| p.properties.maximum_packet_size = Some(64)).await;
    let ack = puback_of(&mut c, &"t".repeat(200)).await;
    assert_eq!(ack.code, 0x87, "the refusal is still said by its code");
    assert_eq!(ack.properties.reason_string, None, "the text would not fit in 64 bytes");
    let ack = puback_of(&mut c, "t").await;
    assert_eq!(ack.properties.reason_string.as_deref(), Some("not authorized to publish to t"));
    b.stop().await;
}
