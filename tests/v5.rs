//! MQTT 5.0 black-box tests, part 1: CONNACK properties, QoS 1/2 reason codes, Receive Maximum
//! both ways and topic aliases both ways. Parts 2 and 3 are `v5_messages.rs` and `v5_session.rs`.
mod common;
mod v5_util;

use bytes::BytesMut;
use common::TestBroker;
use dataloom::codec::{Packet, ProtocolVersion, Publish, QoS, encode};
use rumqttc::v5::{AsyncClient, MqttOptions};
use v5_util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_assigns_client_identifier_for_empty_id() {
    let b = TestBroker::start().await;
    let (_c, ack) = connect_with(b.addr, "", |_| {}).await;
    assert_eq!(ack.code, 0);
    let id = ack.properties.assigned_client_identifier.expect("Assigned Client Identifier");
    assert!(!id.is_empty());
    // A client that names itself is not assigned anything.
    let (_d, ack) = connect_with(b.addr, "v5-named", |_| {}).await;
    assert_eq!(ack.properties.assigned_client_identifier, None);
    // Two anonymous clients get different identifiers (they are different sessions).
    let (_e, ack2) = connect_with(b.addr, "", |_| {}).await;
    assert_ne!(ack2.properties.assigned_client_identifier.as_deref(), Some(id.as_str()));
    wait_sessions(&b, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_server_keep_alive_caps_keep_alive() {
    let b = TestBroker::start_with(|c| c.mqtt.max_keepalive = 30).await;
    let (_c, ack) = connect_with(b.addr, "v5-ka-high", |p| p.keep_alive = 120).await;
    assert_eq!(ack.code, 0);
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let (_d, ack) = connect_with(b.addr, "v5-ka-ok", |p| p.keep_alive = 20).await;
    assert_eq!(ack.code, 0);
    assert_eq!(ack.properties.server_keep_alive, None, "keep alive within the limit is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_is_enforced() {
    let b = TestBroker::start_with(|c| c.mqtt.max_keepalive = 1).await;
    let (mut c, ack) = connect_with(b.addr, "v5-ka-enforced", |p| p.keep_alive = 60).await;
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    let since = std::time::Instant::now();
    // Silent for longer than 1.5 x the Server Keep Alive, not the 60 s asked for.
    assert_eq!(recv_disconnect(&mut c).await.code, 0x8D);
    assert!(since.elapsed() >= std::time::Duration::from_millis(900), "cut off early: {:?}", since.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_announces_configured_limits() {
    let b = TestBroker::start_with(|c| {
        c.mqtt.receive_maximum = 7;
        c.mqtt.max_packet_size = 4321;
        c.mqtt.topic_alias_maximum = 3;
    })
    .await;
    let mut opts = MqttOptions::new("v5-limits", "127.0.0.1", b.port());
    opts.set_keep_alive(std::time::Duration::from_secs(30));
    let (_client, mut ev) = AsyncClient::new(opts, 10);
    let ack = rumqttc_connack(&mut ev).await;
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.receive_max, Some(7));
    assert_eq!(props.max_packet_size, Some(4321));
    assert_eq!(props.topic_alias_max, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_session_present_on_resume() {
    let b = TestBroker::start().await;
    let expiry = |p: &mut dataloom::codec::Connect| {
        p.properties.session_expiry_interval = Some(60);
    };
    let (c, ack) = connect_with(b.addr, "v5-resume", expiry).await;
    assert!(!ack.session_present, "a new session is not present");
    disconnect(c, 0, Default::default()).await;
    let (c, ack) = connect_with(b.addr, "v5-resume", |p| {
        expiry(p);
        p.clean_start = false;
    })
    .await;
    assert!(ack.session_present, "the session with expiry 60 is resumed");
    disconnect(c, 0, Default::default()).await;
    // Clean start discards it.
    let (_c, ack) = connect_with(b.addr, "v5-resume", expiry).await;
    assert!(!ack.session_present);

    // Without session expiry the session ends with the connection.
    let (c, _) = connect_with(b.addr, "v5-no-expiry", |_| {}).await;
    disconnect(c, 0, Default::default()).await;
    wait_sessions(&b, 1).await;
    let (_c, ack) = connect_with(b.addr, "v5-no-expiry", |p| p.clean_start = false).await;
    assert!(!ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_authentication_method_is_refused_0x8c() {
    let b = TestBroker::start().await;
    let (mut c, ack) = connect_with(b.addr, "v5-auth", |p| {
        p.properties.authentication_method = Some("SCRAM-SHA-1".into());
    })
    .await;
    assert_eq!(ack.code, 0x8C);
    assert!(c.until_closed().await.is_empty(), "connection closes after the refusal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_duplicate_publish_before_pubrel_is_delivered_once() {
    let b = TestBroker::start().await;
    let mut sub = connect(&b, "v5-q2-sub").await;
    subscribe(&mut sub, 1, "v5/q2/t", QoS::ExactlyOnce).await;
    let mut p = connect(&b, "v5-q2-pub").await;
    let msg = publish("v5/q2/t", QoS::ExactlyOnce, 5, b"once");
    assert_eq!(send_publish(&mut p, msg.clone()).await, 0);
    let mut again = msg;
    again.dup = true;
    assert_eq!(send_publish(&mut p, again).await, 0, "duplicate answered with PUBREC");
    send_ack(&mut p, Packet::PubRel, 5).await;
    match p.recv().await {
        Some(Packet::PubComp(a)) => assert_eq!((a.pkid, a.code), (5, 0)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // After the release the id is free again: a new message with id 5 is a new message.
    assert_eq!(send_publish(&mut p, publish("v5/q2/t", QoS::ExactlyOnce, 5, b"next")).await, 0);

    let first = recv_publish(&mut sub).await;
    assert_eq!((text(&first), first.qos), ("once".into(), QoS::ExactlyOnce));
    let second = recv_publish(&mut sub).await;
    assert_eq!(text(&second), "next", "the duplicate was delivered a second time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_0x10_when_no_matching_subscribers() {
    let b = TestBroker::start().await;
    let mut p = connect(&b, "v5-nomatch-pub").await;
    assert_eq!(pub1(&mut p, 1, "v5/nomatch/t", b"x").await, 0x10);
    // QoS 2: PUBREC carries it as well.
    assert_eq!(send_publish(&mut p, publish("v5/nomatch/t", QoS::ExactlyOnce, 2, b"x")).await, 0x10);
    let mut s = connect(&b, "v5-nomatch-sub").await;
    subscribe(&mut s, 1, "v5/nomatch/#", QoS::AtMostOnce).await;
    assert_eq!(pub1(&mut p, 3, "v5/nomatch/t", b"y").await, 0x00);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsuback_0x11_for_unknown_filter() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "v5-unsub").await;
    subscribe(&mut c, 1, "v5/unsub/a", QoS::AtLeastOnce).await;
    c.send_packet(&Packet::Unsubscribe(dataloom::codec::Unsubscribe {
        pkid: 2,
        filters: vec!["v5/unsub/a".into(), "v5/unsub/never".into(), "v5/unsub/a".into()],
        properties: Default::default(),
    }))
    .await;
    match c.recv().await {
        Some(Packet::UnsubAck(a)) => {
            assert_eq!(a.pkid, 2);
            assert_eq!(a.codes, vec![0x00, 0x11, 0x11]);
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubrel_for_unknown_id_gets_pubcomp_0x92() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "v5-pubrel").await;
    send_ack(&mut c, Packet::PubRel, 77).await;
    match c.recv().await {
        Some(Packet::PubComp(a)) => assert_eq!((a.pkid, a.code), (77, 0x92)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // The connection stays usable.
    assert!(until_pingresp(&mut c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_respects_client_receive_maximum() {
    let b = TestBroker::start().await;
    let mut sub = connect_ok(&b, "v5-rm-sub", |p| p.properties.receive_maximum = Some(2)).await;
    subscribe(&mut sub, 1, "v5/rm/t", QoS::AtLeastOnce).await;
    let mut p = connect(&b, "v5-rm-pub").await;
    for i in 0..5u16 {
        assert_eq!(pub1(&mut p, i + 1, "v5/rm/t", format!("m{i}").as_bytes()).await, 0);
    }
    // All five are queued for the subscriber now; only two may be in flight.
    let a = recv_publish(&mut sub).await;
    let b2 = recv_publish(&mut sub).await;
    assert_eq!((text(&a), text(&b2)), ("m0".into(), "m1".into()));
    expect_silence(&mut sub).await;
    // Each PUBACK opens room for exactly one more.
    send_ack(&mut sub, Packet::PubAck, a.pkid).await;
    let c = recv_publish(&mut sub).await;
    assert_eq!(text(&c), "m2");
    expect_silence(&mut sub).await;
    send_ack(&mut sub, Packet::PubAck, b2.pkid).await;
    send_ack(&mut sub, Packet::PubAck, c.pkid).await;
    let d = recv_publish(&mut sub).await;
    let e = recv_publish(&mut sub).await;
    assert_eq!((text(&d), text(&e)), ("m3".into(), "m4".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_counts_qos2_until_pubcomp() {
    let b = TestBroker::start().await;
    let mut sub = connect_ok(&b, "v5-rm2-sub", |p| p.properties.receive_maximum = Some(1)).await;
    subscribe(&mut sub, 1, "v5/rm2/t", QoS::ExactlyOnce).await;
    let mut p = connect(&b, "v5-rm2-pub").await;
    for i in 0..2u16 {
        assert_eq!(
            send_publish(&mut p, publish("v5/rm2/t", QoS::ExactlyOnce, i + 1, format!("m{i}").as_bytes()))
                .await,
            0
        );
    }
    let first = recv_publish(&mut sub).await;
    assert_eq!(text(&first), "m0");
    send_ack(&mut sub, Packet::PubRec, first.pkid).await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(a)) if a.pkid == first.pkid && a.code == 0));
    expect_silence(&mut sub).await; // still in flight until PUBCOMP
    send_ack(&mut sub, Packet::PubComp, first.pkid).await;
    assert_eq!(text(&recv_publish(&mut sub).await), "m1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_exceeding_server_receive_maximum_gets_0x93() {
    let b = TestBroker::start_with(|c| c.mqtt.receive_maximum = 2).await;
    let (mut c, ack) = connect_with(b.addr, "v5-rm-in", |_| {}).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for id in 1..=2 {
        assert_eq!(send_publish(&mut c, publish("v5/rmin/t", QoS::ExactlyOnce, id, b"x")).await, 0x10);
    }
    // Released ids no longer count: release one, send another, still within the quota.
    send_ack(&mut c, Packet::PubRel, 1).await;
    assert!(matches!(c.recv().await, Some(Packet::PubComp(a)) if a.pkid == 1 && a.code == 0));
    assert_eq!(send_publish(&mut c, publish("v5/rmin/t", QoS::ExactlyOnce, 3, b"x")).await, 0x10);
    // A third unreleased QoS 2 message exceeds Receive Maximum 2.
    c.send_packet(&Packet::Publish(publish("v5/rmin/t", QoS::ExactlyOnce, 4, b"x"))).await;
    assert_eq!(recv_disconnect(&mut c).await.code, 0x93);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_topic_alias_resolves_to_full_topic() {
    let b = TestBroker::start().await;
    let mut sub = connect(&b, "v5-alias-sub").await;
    subscribe(&mut sub, 1, "v5/alias/in/#", QoS::AtMostOnce).await;
    let mut p = connect(&b, "v5-alias-pub").await;
    let mut first = publish("v5/alias/in/long/topic", QoS::AtLeastOnce, 1, b"a");
    first.properties.topic_alias = Some(1);
    assert_eq!(send_publish(&mut p, first).await, 0);
    let mut second = publish("", QoS::AtLeastOnce, 2, b"b");
    second.properties.topic_alias = Some(1);
    assert_eq!(send_publish(&mut p, second).await, 0);
    // Re-mapping the alias to another topic is allowed.
    let mut third = publish("v5/alias/in/other", QoS::AtLeastOnce, 3, b"c");
    third.properties.topic_alias = Some(1);
    assert_eq!(send_publish(&mut p, third).await, 0);
    let mut fourth = publish("", QoS::AtLeastOnce, 4, b"d");
    fourth.properties.topic_alias = Some(1);
    assert_eq!(send_publish(&mut p, fourth).await, 0);

    let want = [
        ("v5/alias/in/long/topic", "a"),
        ("v5/alias/in/long/topic", "b"),
        ("v5/alias/in/other", "c"),
        ("v5/alias/in/other", "d"),
    ];
    for (topic, payload) in want {
        let m = recv_publish(&mut sub).await;
        assert_eq!(&m.topic[..], topic.as_bytes());
        assert_eq!(text(&m), payload);
        assert_eq!(m.properties.topic_alias, None, "subscriber did not allow aliases");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_zero_or_above_maximum_disconnects_0x94() {
    let b = TestBroker::start_with(|c| c.mqtt.topic_alias_maximum = 3).await;
    for (n, alias) in [0u16, 4, 65535].into_iter().enumerate() {
        let mut c = connect(&b, &format!("v5-alias-bad-{n}")).await;
        let mut p = publish("v5/alias/bad", QoS::AtMostOnce, 0, b"x");
        p.properties.topic_alias = Some(alias);
        c.send_packet(&Packet::Publish(p)).await;
        assert_eq!(recv_disconnect(&mut c).await.code, 0x94, "alias {alias}");
    }
    // The maximum itself is fine.
    let mut c = connect(&b, "v5-alias-max").await;
    let mut p = publish("v5/alias/bad", QoS::AtLeastOnce, 1, b"x");
    p.properties.topic_alias = Some(3);
    assert_eq!(send_publish(&mut c, p).await, 0x10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_topic_alias_with_empty_topic_disconnects_0x82() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "v5-alias-unknown").await;
    let mut p = publish("", QoS::AtMostOnce, 0, b"x");
    p.properties.topic_alias = Some(2);
    c.send_packet(&Packet::Publish(p)).await;
    assert_eq!(recv_disconnect(&mut c).await.code, 0x82);

    // Aliases are per connection: one set on another connection is unknown here.
    let mut c1 = connect(&b, "v5-alias-owner").await;
    let mut p = publish("v5/alias/x", QoS::AtLeastOnce, 1, b"x");
    p.properties.topic_alias = Some(1);
    assert_eq!(send_publish(&mut c1, p).await, 0x10);
    let mut c2 = connect(&b, "v5-alias-other").await;
    let mut p = publish("", QoS::AtMostOnce, 0, b"x");
    p.properties.topic_alias = Some(1);
    c2.send_packet(&Packet::Publish(p)).await;
    assert_eq!(recv_disconnect(&mut c2).await.code, 0x82);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_uses_topic_alias_towards_client() {
    let b = TestBroker::start().await;
    let mut sub = connect_ok(&b, "v5-alias-out", |p| p.properties.topic_alias_maximum = Some(5)).await;
    subscribe(&mut sub, 1, "v5/alias/out/#", QoS::AtMostOnce).await;
    let mut p = connect(&b, "v5-alias-out-pub").await;
    for (i, topic) in
        ["v5/alias/out/a", "v5/alias/out/a", "v5/alias/out/b", "v5/alias/out/a"].iter().enumerate()
    {
        assert_eq!(pub1(&mut p, i as u16 + 1, topic, format!("{i}").as_bytes()).await, 0);
    }
    let m0 = recv_publish(&mut sub).await;
    assert_eq!(&m0.topic[..], b"v5/alias/out/a");
    let alias_a = m0.properties.topic_alias.expect("server assigns an alias");
    assert!((1..=5).contains(&alias_a));
    let m1 = recv_publish(&mut sub).await;
    assert!(m1.topic.is_empty(), "second message uses the alias alone: {m1:?}");
    assert_eq!(m1.properties.topic_alias, Some(alias_a));
    assert_eq!(text(&m1), "1");
    let m2 = recv_publish(&mut sub).await;
    assert_eq!(&m2.topic[..], b"v5/alias/out/b");
    let alias_b = m2.properties.topic_alias.expect("alias for the second topic");
    assert!((1..=5).contains(&alias_b) && alias_b != alias_a);
    let m3 = recv_publish(&mut sub).await;
    assert!(m3.topic.is_empty());
    assert_eq!(m3.properties.topic_alias, Some(alias_a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreleased_qos2_ids_leave_no_room_for_qos1() {
    let b = TestBroker::start_with(|c| c.mqtt.receive_maximum = 2).await;
    let (mut c, _) = connect_with(b.addr, "v5-rm-mixed", |_| {}).await;
    for id in 1..=2 {
        assert_eq!(send_publish(&mut c, publish("v5/rmmix/t", QoS::ExactlyOnce, id, b"x")).await, 0x10);
    }
    // QoS 1 counts against the same quota [MQTT 5 §3.3.4]: two QoS 2 ids are unreleased.
    c.send_packet(&Packet::Publish(publish("v5/rmmix/t", QoS::AtLeastOnce, 3, b"x"))).await;
    assert_eq!(recv_disconnect(&mut c).await.code, 0x93);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_messages_waiting_for_their_puback_count_against_receive_maximum() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let b = TestBroker::start_with(|c| {
        c.storage.backend = dataloom::config::Backend::Fjall;
        c.storage.data_dir = data;
        c.mqtt.receive_maximum = 2;
    })
    .await;
    // Retained QoS 1 messages are acknowledged only once fsync'ed, so a burst written in one
    // go finds the first PUBACKs still held back.
    let (mut ok, _) = connect_with(b.addr, "v5-rm-q1-ok", |_| {}).await;
    let retained = |id| Publish { retain: true, ..publish("v5/rmq1/t", QoS::AtLeastOnce, id, b"x") };
    let mut burst = BytesMut::new();
    for id in 1..=2 {
        encode(&Packet::Publish(retained(id)), ProtocolVersion::V5, &mut burst);
    }
    ok.send(&burst).await;
    for id in 1..=2 {
        assert!(matches!(ok.recv().await, Some(Packet::PubAck(a)) if a.pkid == id && a.code < 0x80));
    }
    let (mut over, _) = connect_with(b.addr, "v5-rm-q1-over", |_| {}).await;
    burst.clear();
    for id in 1..=3 {
        encode(&Packet::Publish(retained(id)), ProtocolVersion::V5, &mut burst);
    }
    over.send(&burst).await;
    let seen = over.until_closed().await;
    assert!(
        seen.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.code == 0x93)),
        "a third unacknowledged QoS 1 message exceeds Receive Maximum 2: {seen:?}"
    );
}
