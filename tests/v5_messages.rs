//! MQTT 5.0 black-box tests, part 2: what travels with a message — Message Expiry Interval,
//! properties passed through unchanged, request/response, subscription identifiers and options
//! (no local, retain as published, retain handling) and shared subscriptions.
mod common;
mod v5_util;

use std::time::Duration;

use bytes::Bytes;
use common::{TestBroker, WAIT};
use dataloom::codec::{Packet, Properties, QoS, RetainHandling};
use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use v5_util::*;

/// Subscribes `c` to `topic_filter` at QoS 1 in a session that outlives the connection, then
/// disconnects normally; returns when the broker has closed the connection.
async fn offline_subscriber(b: &TestBroker, id: &str, topic_filter: &str) {
    let mut c = connect_ok(b, id, |p| p.properties.session_expiry_interval = Some(60)).await;
    subscribe(&mut c, 1, topic_filter, QoS::AtLeastOnce).await;
    disconnect(c, 0, Properties::default()).await;
}

async fn resume(b: &TestBroker, id: &str) -> common::RawClient {
    let (c, ack) = connect_with(b.addr, id, |p| {
        p.clean_start = false;
        p.properties.session_expiry_interval = Some(60);
    })
    .await;
    assert_eq!(ack.code, 0);
    assert!(ack.session_present, "session of {id} resumed");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_is_forwarded_decremented() {
    let b = TestBroker::start().await;
    offline_subscriber(&b, "v5-exp-off", "v5/exp/t").await;
    let mut live = connect(&b, "v5-exp-live").await;
    subscribe(&mut live, 1, "v5/exp/t", QoS::AtLeastOnce).await;
    let mut p = connect(&b, "v5-exp-pub").await;
    let mut m = publish("v5/exp/t", QoS::AtLeastOnce, 1, b"e");
    m.properties.message_expiry_interval = Some(10);
    assert_eq!(send_publish(&mut p, m).await, 0);

    let got = recv_publish(&mut live).await;
    let left = got.properties.message_expiry_interval.expect("expiry forwarded");
    assert!((1..=10).contains(&left), "live expiry {left}");

    // Time spent queued is subtracted.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = resume(&b, "v5-exp-off").await;
    let got = recv_publish(&mut c).await;
    assert_eq!(text(&got), "e");
    let left = got.properties.message_expiry_interval.expect("expiry forwarded");
    assert!((1..=9).contains(&left), "expiry after 1.1 s queued: {left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_message_is_never_delivered() {
    let b = TestBroker::start().await;
    offline_subscriber(&b, "v5-expd-off", "v5/expd/t").await;
    let mut p = connect(&b, "v5-expd-pub").await;
    let mut m = publish("v5/expd/t", QoS::AtLeastOnce, 1, b"stale");
    m.properties.message_expiry_interval = Some(1);
    assert_eq!(send_publish(&mut p, m).await, 0, "queued for the offline session");
    assert_eq!(pub1(&mut p, 2, "v5/expd/t", b"fresh").await, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = resume(&b, "v5-expd-off").await;
    let got = recv_publish(&mut c).await;
    assert_eq!(text(&got), "fresh", "the expired message was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_retained_message_is_not_sent_on_subscribe() {
    let b = TestBroker::start().await;
    let mut p = connect(&b, "v5-rexp-pub").await;
    let mut m = publish("v5/rexp/short", QoS::AtLeastOnce, 1, b"short");
    m.retain = true;
    m.properties.message_expiry_interval = Some(1);
    send_publish(&mut p, m).await;
    let mut m = publish("v5/rexp/long", QoS::AtLeastOnce, 2, b"long");
    m.retain = true;
    send_publish(&mut p, m).await;

    // While it lives, it is sent (with its remaining expiry).
    let mut s1 = connect(&b, "v5-rexp-s1").await;
    subscribe(&mut s1, 1, "v5/rexp/#", QoS::AtMostOnce).await;
    let mut got: Vec<(String, Option<u32>)> = until_pingresp(&mut s1)
        .await
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) => (text(&p), p.properties.message_expiry_interval),
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect();
    got.sort();
    assert_eq!(got, vec![("long".into(), None), ("short".into(), Some(1))]);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut s2 = connect(&b, "v5-rexp-s2").await;
    subscribe(&mut s2, 1, "v5/rexp/#", QoS::AtMostOnce).await;
    let got = until_pingresp(&mut s2).await;
    assert_eq!(got.len(), 1, "only the unexpired retained message: {got:?}");
    assert!(matches!(&got[0], Packet::Publish(p) if text(p) == "long" && p.retain));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_pass_through_unchanged() {
    let b = TestBroker::start().await;
    let mut s = connect(&b, "v5-props-sub").await;
    subscribe(&mut s, 1, "v5/props/t", QoS::AtLeastOnce).await;
    let mut p = connect(&b, "v5-props-pub").await;
    let props = Properties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json; charset=utf-8".into()),
        response_topic: Some("v5/props/reply/é".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 0xFF, 0x80, 7])),
        user_properties: vec![
            ("z".into(), "1".into()),
            ("a".into(), "2".into()),
            ("z".into(), "3".into()),
            ("".into(), "".into()),
            ("k".into(), "v with spaces".into()),
        ],
        ..Properties::default()
    };
    let mut m = publish("v5/props/t", QoS::AtLeastOnce, 1, br#"{"x":1}"#);
    m.properties = props.clone();
    assert_eq!(send_publish(&mut p, m).await, 0);
    let got = recv_publish(&mut s).await;
    assert_eq!(got.properties, props);
    assert_eq!(&got.payload[..], br#"{"x":1}"#);
    // A message without properties gets none added.
    assert_eq!(pub1(&mut p, 2, "v5/props/t", b"plain").await, 0);
    send_ack(&mut s, Packet::PubAck, got.pkid).await;
    let got = recv_publish(&mut s).await;
    assert_eq!(got.properties, Properties::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_flow() {
    let b = TestBroker::start().await;
    let (responder, mut rev) =
        AsyncClient::new(MqttOptions::new("v5-rr-responder", "127.0.0.1", b.port()), 10);
    responder.subscribe("v5/rr/requests", RQoS::AtLeastOnce).await.unwrap();
    rumqttc_suback(&mut rev).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let serve = tokio::spawn(async move {
        loop {
            let Ok(ev) = rev.poll().await else { return };
            if let Event::Incoming(RPacket::Publish(req)) = ev {
                let props = req.properties.clone().unwrap_or_default();
                let reply_to = props.response_topic.clone().expect("response topic");
                let reply = PublishProperties {
                    correlation_data: props.correlation_data.clone(),
                    ..Default::default()
                };
                let mut body = b"re:".to_vec();
                body.extend_from_slice(&req.payload);
                responder
                    .publish_with_properties(reply_to, RQoS::AtLeastOnce, false, body, reply)
                    .await
                    .unwrap();
                let _ = seen_tx.send(props);
            }
        }
    });

    let (requester, mut qev) =
        AsyncClient::new(MqttOptions::new("v5-rr-requester", "127.0.0.1", b.port()), 10);
    requester.subscribe("v5/rr/responses/v5-rr-requester", RQoS::AtLeastOnce).await.unwrap();
    rumqttc_suback(&mut qev).await;
    for (n, corr) in [&b"id-1"[..], &b"\x00\x01\x02"[..]].into_iter().enumerate() {
        let props = PublishProperties {
            response_topic: Some("v5/rr/responses/v5-rr-requester".into()),
            correlation_data: Some(Bytes::copy_from_slice(corr)),
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        let body = format!("q{n}");
        requester
            .publish_with_properties("v5/rr/requests", RQoS::AtLeastOnce, false, body.clone(), props)
            .await
            .unwrap();
        let reply =
            rumqttc_until(&mut qev, "reply", |p| if let RPacket::Publish(p) = p { Some(p) } else { None })
                .await;
        assert_eq!(&reply.topic[..], b"v5/rr/responses/v5-rr-requester");
        assert_eq!(reply.payload, format!("re:{body}").into_bytes());
        let rprops = reply.properties.expect("reply properties");
        assert_eq!(rprops.correlation_data.as_deref(), Some(corr));
        let seen = tokio::time::timeout(WAIT, seen_rx.recv()).await.unwrap().unwrap();
        assert_eq!(seen.content_type.as_deref(), Some("text/plain"));
        assert_eq!(seen.correlation_data.as_deref(), Some(corr));
    }
    serve.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_subscriptions_deliver_once_with_every_identifier() {
    let b = TestBroker::start().await;
    let mut s = connect(&b, "v5-sid-sub").await;
    subscribe_many(&mut s, 1, vec![filter("v5/sid/+", QoS::AtMostOnce)], Some(7)).await;
    subscribe_many(&mut s, 2, vec![filter("v5/sid/x", QoS::AtLeastOnce)], Some(9)).await;
    let mut p = connect(&b, "v5-sid-pub").await;
    assert_eq!(pub1(&mut p, 1, "v5/sid/x", b"both").await, 0);
    assert_eq!(pub1(&mut p, 2, "v5/sid/y", b"only7").await, 0);

    let m = recv_publish(&mut s).await;
    assert_eq!(text(&m), "both");
    assert_eq!(m.qos, QoS::AtLeastOnce, "highest granted QoS of the matching subscriptions");
    let mut ids = m.properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, vec![7, 9]);
    send_ack(&mut s, Packet::PubAck, m.pkid).await;
    let m = recv_publish(&mut s).await;
    assert_eq!(text(&m), "only7", "the first message was delivered twice");
    assert_eq!(m.qos, QoS::AtMostOnce);
    assert_eq!(m.properties.subscription_identifiers, vec![7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_suppresses_own_messages() {
    let b = TestBroker::start().await;
    let mut a = connect(&b, "v5-nl-a").await;
    let mut f = filter("v5/nl/t", QoS::AtMostOnce);
    f.no_local = true;
    subscribe_many(&mut a, 1, vec![f], None).await;
    subscribe(&mut a, 2, "v5/nl/own", QoS::AtMostOnce).await;
    let mut other = connect(&b, "v5-nl-other").await;
    subscribe(&mut other, 1, "v5/nl/t", QoS::AtMostOnce).await;

    assert_eq!(pub1(&mut a, 10, "v5/nl/t", b"mine").await, 0);
    assert_eq!(text(&recv_publish(&mut other).await), "mine", "others still get it");
    assert_eq!(pub1(&mut other, 1, "v5/nl/t", b"theirs").await, 0);
    assert_eq!(text(&recv_publish(&mut a).await), "theirs", "own message came back despite no local");
    // Without no local a client gets its own messages.
    assert_eq!(pub1(&mut a, 11, "v5/nl/own", b"echo").await, 0);
    assert_eq!(text(&recv_publish(&mut a).await), "echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_as_published_keeps_retain_flag_of_live_messages() {
    let b = TestBroker::start().await;
    let mut keep = connect(&b, "v5-rap-keep").await;
    let mut f = filter("v5/rap/t", QoS::AtMostOnce);
    f.retain_as_published = true;
    subscribe_many(&mut keep, 1, vec![f], None).await;
    let mut clear = connect(&b, "v5-rap-clear").await;
    subscribe(&mut clear, 1, "v5/rap/t", QoS::AtMostOnce).await;

    let mut p = connect(&b, "v5-rap-pub").await;
    let mut m = publish("v5/rap/t", QoS::AtLeastOnce, 1, b"r");
    m.retain = true;
    assert_eq!(send_publish(&mut p, m).await, 0);
    assert_eq!(pub1(&mut p, 2, "v5/rap/t", b"n").await, 0);

    let (k1, k2) = (recv_publish(&mut keep).await, recv_publish(&mut keep).await);
    assert_eq!((text(&k1), k1.retain), ("r".into(), true));
    assert_eq!((text(&k2), k2.retain), ("n".into(), false));
    let (c1, c2) = (recv_publish(&mut clear).await, recv_publish(&mut clear).await);
    assert_eq!((text(&c1), c1.retain), ("r".into(), false));
    assert_eq!((text(&c2), c2.retain), ("n".into(), false));
}

/// Subscribes with `rh` and returns the retained payloads sent for it.
async fn retained_on_subscribe(c: &mut common::RawClient, pkid: u16, rh: RetainHandling) -> Vec<String> {
    let mut f = filter("v5/rh/t", QoS::AtMostOnce);
    f.retain_handling = rh;
    subscribe_many(c, pkid, vec![f], None).await;
    until_pingresp(c)
        .await
        .into_iter()
        .map(|p| match p {
            Packet::Publish(p) if p.retain => text(&p),
            other => panic!("expected a retained PUBLISH, got {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_0_1_2() {
    let b = TestBroker::start().await;
    let mut p = connect(&b, "v5-rh-pub").await;
    let mut m = publish("v5/rh/t", QoS::AtLeastOnce, 1, b"state");
    m.retain = true;
    assert_eq!(send_publish(&mut p, m).await, 0x10);

    let mut c0 = connect(&b, "v5-rh-0").await;
    assert_eq!(retained_on_subscribe(&mut c0, 1, RetainHandling::OnSubscribe).await, vec!["state"]);
    assert_eq!(retained_on_subscribe(&mut c0, 2, RetainHandling::OnSubscribe).await, vec!["state"]);

    let mut c1 = connect(&b, "v5-rh-1").await;
    assert_eq!(retained_on_subscribe(&mut c1, 1, RetainHandling::OnNewSubscribe).await, vec!["state"]);
    assert!(retained_on_subscribe(&mut c1, 2, RetainHandling::OnNewSubscribe).await.is_empty());

    let mut c2 = connect(&b, "v5-rh-2").await;
    assert!(retained_on_subscribe(&mut c2, 1, RetainHandling::Never).await.is_empty());
    // Live messages still arrive.
    assert_eq!(pub1(&mut p, 2, "v5/rh/t", b"live").await, 0);
    assert_eq!(text(&recv_publish(&mut c2).await), "live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_splits_messages_and_plain_subscriber_gets_all() {
    let b = TestBroker::start().await;
    let mut p = connect(&b, "v5-share-pub").await;
    let mut m = publish("v5/share/t", QoS::AtLeastOnce, 1, b"retained");
    m.retain = true;
    send_publish(&mut p, m).await;

    let mut members = Vec::new();
    for i in 0..3 {
        let mut c = connect(&b, &format!("v5-share-m{i}")).await;
        subscribe(&mut c, 1, "$share/g/v5/share/t", QoS::AtMostOnce).await;
        assert!(until_pingresp(&mut c).await.is_empty(), "no retained message for a shared subscription");
        members.push(c);
    }
    let mut plain = connect(&b, "v5-share-plain").await;
    subscribe(&mut plain, 1, "v5/share/t", QoS::AtMostOnce).await;
    let got = recv_publish(&mut plain).await;
    assert!(got.retain && text(&got) == "retained");

    for i in 0..30u16 {
        assert_eq!(pub1(&mut p, i + 2, "v5/share/t", format!("{i}").as_bytes()).await, 0);
    }
    for i in 0..30 {
        assert_eq!(text(&recv_publish(&mut plain).await), format!("{i}"));
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let readers: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(Packet::Publish(p)) = c.recv().await {
                    let _ = tx.send((i, text(&p)));
                }
            })
        })
        .collect();
    let mut per_member = [0usize; 3];
    let mut payloads = Vec::new();
    for _ in 0..30 {
        let (i, payload) =
            tokio::time::timeout(WAIT, rx.recv()).await.expect("30 shared deliveries").unwrap();
        per_member[i] += 1;
        payloads.push(payload.parse::<u32>().unwrap());
    }
    payloads.sort_unstable();
    assert_eq!(payloads, (0..30).collect::<Vec<_>>(), "each message exactly once");
    assert!(per_member.iter().all(|&n| n > 0), "every member got some: {per_member:?}");
    assert!(tokio::time::timeout(QUIET, rx.recv()).await.is_err(), "more than 30 shared deliveries");
    for r in readers {
        r.abort();
    }
}
