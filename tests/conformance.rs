//! Where dataloom meets what external conformance suites (Paho's interoperability tests,
//! Mosquitto's raw-packet broker tests) expect of a mature broker (issue 15): configured
//! anonymous permissions apply on loopback too, nobody writes `$SYS/`, `$share/` is not a topic
//! name, a well-formed name or filter over `mqtt.max_topic_levels` is refused with a reason code
//! instead of a closed connection, and a SUBSCRIBE takes effect before a PUBLISH that reached
//! the broker after it on another connection.
mod common;
mod v5_util;

use common::binary::Site;
use common::{RawClient, TestBroker};
use dataloom::codec::{Packet, ProtocolVersion, QoS};
use v5_util::*;

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

fn v311(c: &mut dataloom::codec::Connect) {
    c.protocol = V311;
}

/// A topic name (or filter) of `n` levels.
fn levels(n: usize) -> String {
    vec!["l"; n].join("/")
}

/// Asserts that `c`'s connection is still up and answering.
async fn alive(c: &mut RawClient) {
    let before = until_pingresp(c).await;
    assert!(before.is_empty(), "nothing else was owed: {before:?}");
}

// ---- Item 7: configured anonymous permissions ----

#[tokio::test]
async fn configured_anonymous_permissions_apply_on_loopback_while_no_key_exists() {
    let b = TestBroker::start_with(|c| {
        c.auth.anonymous.get_or_insert_default().deny_subscribe = vec!["test/nosubscribe".into()];
    })
    .await;
    let mut c = connect(&b, "anon5").await;
    let ack = subscribe_many(
        &mut c,
        1,
        vec![filter("test/nosubscribe", QoS::ExactlyOnce), filter("test/ok", QoS::ExactlyOnce)],
        None,
    )
    .await;
    assert_eq!(ack.codes, vec![0x87, 2], "deny_subscribe applies, the default subscribe [\"#\"] too");
    let ack = subscribe_many(&mut c, 2, vec![filter("$SYS/#", QoS::AtMostOnce)], None).await;
    assert_eq!(ack.codes, vec![0x87], "an anonymous client is not the unrestricted local user");
    let mut c = connect_ok(&b, "anon3", v311).await;
    let ack = subscribe_many(&mut c, 1, vec![filter("test/nosubscribe", QoS::AtLeastOnce)], None).await;
    assert_eq!(ack.codes, vec![0x80]);
}

#[tokio::test]
async fn without_an_anonymous_section_loopback_stays_unrestricted_while_no_key_exists() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "local").await;
    let ack = subscribe_many(
        &mut c,
        1,
        vec![filter("test/nosubscribe", QoS::ExactlyOnce), filter("$SYS/#", QoS::AtMostOnce)],
        None,
    )
    .await;
    assert_eq!(ack.codes, vec![2, 0]);
}

#[tokio::test]
async fn the_start_up_log_says_which_anonymous_rule_is_in_force() {
    for (config, expect) in [
        ("", "loopback clients are unrestricted"),
        (
            "[auth.anonymous]\ndeny_subscribe = [\"test/nosubscribe\"]\n",
            "get the [auth.anonymous] permissions",
        ),
    ] {
        let mut site = Site::new();
        let file = site.tmp.path().join("dataloom.toml");
        std::fs::write(&file, config).expect("write the config file");
        site.args = vec!["--config".into(), file.display().to_string()];
        let p = site.start().await;
        let line = p.stderr.wait_for("access:", |l| l.contains("access:")).await;
        assert!(line.contains(expect), "config {config:?}: {line}");
        p.stop().await;
    }
}

// ---- Item 8: `$SYS/` and `$share/` as topic names ----

#[tokio::test]
async fn nobody_publishes_to_sys() {
    let b = TestBroker::start().await;
    let mut sub = connect(&b, "sys-reader").await;
    subscribe(&mut sub, 1, "$SYS/conformance/#", QoS::AtLeastOnce).await;
    subscribe(&mut sub, 2, "control", QoS::AtLeastOnce).await;
    let mut v5 = connect(&b, "sys-writer5").await;
    assert_eq!(pub1(&mut v5, 1, "$SYS/conformance/x", b"forged").await, 0x87, "unrestricted too");
    assert_eq!(send_publish(&mut v5, publish("$SYS/conformance/y", QoS::ExactlyOnce, 2, b"f")).await, 0x87);
    let mut v3 = connect_ok(&b, "sys-writer3", v311).await;
    assert_eq!(pub1(&mut v3, 1, "$SYS/conformance/z", b"forged").await, 0, "3.1.1: acknowledged, dropped");
    // The subscriber reads $SYS (unrestricted), yet its next message is the control one.
    assert_eq!(pub1(&mut v3, 2, "control", b"after").await, 0);
    let p = recv_publish(&mut sub).await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b"control"[..], &b"after"[..]));
    alive(&mut v5).await;
}

#[tokio::test]
async fn a_will_on_sys_is_refused() {
    let b = TestBroker::start().await;
    let (_, ack) = connect_with(b.addr, "will-sys", |c| c.will = Some(will("$SYS/x", "w"))).await;
    assert_eq!(ack.code, 0x87);
}

#[tokio::test]
async fn share_is_not_a_topic_name() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "share-pub").await;
    assert_eq!(pub1(&mut c, 1, "$share/g/t", b"x").await, 0x90, "QoS 1: PUBACK 0x90");
    assert_eq!(send_publish(&mut c, publish("$share/g/t", QoS::ExactlyOnce, 2, b"x")).await, 0x90);
    alive(&mut c).await;
    c.send_packet(&Packet::Publish(publish("$share/g/t", QoS::AtMostOnce, 0, b"x"))).await;
    assert_eq!(recv_disconnect(&mut c).await.code, 0x90, "QoS 0: nothing else can refuse it");
    let mut c = connect_ok(&b, "share-pub3", v311).await;
    c.send_packet(&Packet::Publish(publish("$share/g/t", QoS::AtLeastOnce, 1, b"x"))).await;
    assert!(c.until_closed().await.is_empty(), "3.1.1 has no negative ack: closed");
}

// ---- Item 9: over mqtt.max_topic_levels (128) but well-formed ----

#[tokio::test]
async fn a_filter_over_the_level_limit_is_refused_in_the_suback_and_the_connection_stays() {
    let b = TestBroker::start().await;
    let deep = levels(129);
    for (id, version, refused) in [("deep5", ProtocolVersion::V5, 0x8F), ("deep3", V311, 0x80)] {
        let mut c = connect_ok(&b, id, |c| c.protocol = version).await;
        let filters = vec![filter(&deep, QoS::AtLeastOnce), filter(&levels(128), QoS::AtLeastOnce)];
        let ack = subscribe_many(&mut c, 1, filters, None).await;
        assert_eq!(ack.codes, vec![refused, 1], "{id}: 129 levels refused, 128 (the limit) granted");
        assert_eq!(pub1(&mut c, 2, &levels(128), b"x").await, 0, "{id}: still connected");
        assert_eq!(recv_publish(&mut c).await.topic, levels(128).as_bytes());
    }
}

#[tokio::test]
async fn a_publish_over_the_level_limit_is_refused_with_0x90_and_the_connection_stays() {
    let b = TestBroker::start().await;
    let deep = levels(129);
    let mut c = connect(&b, "deep-pub").await;
    c.send_packet(&Packet::Publish(publish(&deep, QoS::AtLeastOnce, 1, b"x"))).await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => {
            assert_eq!((a.pkid, a.code), (1, 0x90));
            let why = a.properties.reason_string.unwrap_or_default();
            assert!(why.contains("128 levels"), "the reason says what the limit is: {why}");
        }
        other => panic!("expected PUBACK 0x90, got {other:?}"),
    }
    assert_eq!(send_publish(&mut c, publish(&deep, QoS::ExactlyOnce, 2, b"x")).await, 0x90);
    alive(&mut c).await;
    c.send_packet(&Packet::Publish(publish(&deep, QoS::AtMostOnce, 0, b"x"))).await;
    assert_eq!(recv_disconnect(&mut c).await.code, 0x90, "QoS 0: nothing else can refuse it");
}

#[tokio::test]
async fn a_will_over_the_level_limit_or_in_share_is_refused_at_connect() {
    let b = TestBroker::start().await;
    let (_, ack) = connect_with(b.addr, "deep-will5", |c| c.will = Some(will(&levels(129), "w"))).await;
    assert_eq!(ack.code, 0x90);
    let (_, ack) = connect_with(b.addr, "deep-will3", |c| {
        v311(c);
        c.will = Some(will(&levels(129), "w"));
    })
    .await;
    assert_eq!(ack.code, 0x87, "3.1.1 return code 5");
    let (_, ack) = connect_with(b.addr, "share-will", |c| c.will = Some(will("$share/g/t", "w"))).await;
    assert_eq!(ack.code, 0x90, "$share/ is not a topic name for a will either");
}
