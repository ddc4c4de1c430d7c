//! MQTT 5.0 black-box tests, part 3: how connections and sessions end — wills (and their delay),
//! session takeover, session expiry, the client's Maximum Packet Size and server shutdown.
mod common;
mod v5_util;

use std::time::{Duration, Instant};

use common::{RawClient, TestBroker, WAIT};
use dataloom::codec::{Connect, Packet, Properties, QoS};
use rumqttc::v5::mqttbytes::QoS as RQoS;
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, LastWill, LastWillProperties, Packet as RPacket};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
use v5_util::*;

/// A subscriber to `topic` (QoS 0) that sees wills and markers.
async fn watcher(b: &TestBroker, id: &str, topic: &str) -> RawClient {
    let mut w = connect(b, id).await;
    subscribe(&mut w, 1, topic, QoS::AtMostOnce).await;
    w
}

/// Publishes a marker to `topic` from a fresh client and asserts it is the next thing `w`
/// receives: anything published to `topic` before (e.g. a will that must not exist) would
/// have been queued ahead of it.
async fn expect_marker_next(b: &TestBroker, w: &mut RawClient, topic: &str) {
    let id = format!("marker-{}", topic.replace('/', "-"));
    let mut p = connect(b, &id).await;
    assert_eq!(pub1(&mut p, 1, topic, b"marker").await, 0);
    let got = recv_publish(w).await;
    assert_eq!(text(&got), "marker", "something was published before the marker: {got:?}");
}

fn with_will(
    topic: &'static str,
    delay: Option<u32>,
    session_expiry: Option<u32>,
) -> impl FnOnce(&mut Connect) {
    move |p: &mut Connect| {
        let mut w = will(topic, "gone");
        w.properties.will_delay_interval = delay;
        w.properties.content_type = Some("text/plain".into());
        w.properties.user_properties = vec![("why".into(), "test".into())];
        p.will = Some(w);
        p.properties.session_expiry_interval = session_expiry;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_abnormal_close() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "v5-will-abn-w", "v5/will/abn").await;
    let c = connect_ok(&b, "v5-will-abn", with_will("v5/will/abn", None, None)).await;
    drop(c);
    let got = recv_publish(&mut w).await;
    assert_eq!(text(&got), "gone");
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.properties.user_properties, vec![("why".to_string(), "test".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_rumqttc_client_vanishes() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "v5-will-rq-w", "v5/will/rq").await;
    let mut opts = MqttOptions::new("v5-will-rq", "127.0.0.1", b.port());
    let props = LastWillProperties {
        delay_interval: None,
        payload_format_indicator: Some(1),
        message_expiry_interval: None,
        content_type: Some("text/plain".into()),
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
    };
    opts.set_last_will(LastWill::new("v5/will/rq", "bye", RQoS::AtLeastOnce, false, Some(props)));
    let (client, mut ev) = AsyncClient::new(opts, 10);
    rumqttc_connack(&mut ev).await;
    drop(ev); // the socket goes away without DISCONNECT
    drop(client);
    let got = recv_publish(&mut w).await;
    assert_eq!(text(&got), "bye");
    assert_eq!(got.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.properties.payload_format_indicator, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_not_published_on_normal_disconnect() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "v5-will-norm-w", "v5/will/norm").await;
    let c = connect_ok(&b, "v5-will-norm", with_will("v5/will/norm", None, None)).await;
    disconnect(c, 0x00, Properties::default()).await;
    wait_sessions(&b, 1).await; // the will decision is taken before the session ends
    expect_marker_next(&b, &mut w, "v5/will/norm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_on_disconnect_with_will_message() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "v5-will-04-w", "v5/will/04").await;
    let c = connect_ok(&b, "v5-will-04", with_will("v5/will/04", None, None)).await;
    disconnect(c, 0x04, Properties::default()).await;
    assert_eq!(text(&recv_publish(&mut w).await), "gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_is_cancelled_by_reconnect() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "v5-will-delay-w", "v5/will/delay").await;
    let c = connect_ok(&b, "v5-will-delay", with_will("v5/will/delay", Some(2), Some(60))).await;
    // 0x04 asks for the will; the delay holds it back.
    disconnect(c, 0x04, Properties::default()).await;
    let (_c, ack) = connect_with(b.addr, "v5-will-delay", |p| {
        p.clean_start = false;
        p.properties.session_expiry_interval = Some(60);
    })
    .await;
    assert!(ack.session_present);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    expect_marker_next(&b, &mut w, "v5/will/delay").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_publishes_after_the_delay() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "v5-will-late-w", "v5/will/late").await;
    let c = connect_ok(&b, "v5-will-late", with_will("v5/will/late", Some(1), Some(10))).await;
    let dropped = Instant::now();
    drop(c);
    let got = recv_publish(&mut w).await;
    let after = dropped.elapsed();
    assert_eq!(text(&got), "gone");
    assert!(after >= Duration::from_millis(800), "will arrived after {after:?}, before its delay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_is_capped_by_session_expiry() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "v5-will-cap-w", "v5/will/cap").await;
    // Will delay 30 s but the session ends with the connection: the will goes out at once.
    let c = connect_ok(&b, "v5-will-cap", with_will("v5/will/cap", Some(30), None)).await;
    drop(c);
    assert_eq!(text(&recv_publish(&mut w).await), "gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_takeover_sends_0x8e_and_suppresses_will() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "v5-takeover-w", "v5/takeover").await;
    let mut old = connect_ok(&b, "v5-takeover", with_will("v5/takeover", None, Some(60))).await;
    let (_new, ack) = connect_with(b.addr, "v5-takeover", |p| {
        p.clean_start = false;
        p.properties.session_expiry_interval = Some(60);
    })
    .await;
    assert_eq!(ack.code, 0);
    assert!(ack.session_present);
    assert_eq!(recv_disconnect(&mut old).await.code, 0x8E);
    expect_marker_next(&b, &mut w, "v5/takeover").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_message_is_resent_with_dup_on_resume() {
    let b = TestBroker::start().await;
    let mut s = connect_ok(&b, "v5-dup", |p| p.properties.session_expiry_interval = Some(60)).await;
    subscribe(&mut s, 1, "v5/dup/t", QoS::AtLeastOnce).await;
    let mut p = connect(&b, "v5-dup-pub").await;
    assert_eq!(pub1(&mut p, 1, "v5/dup/t", b"again").await, 0);
    let first = recv_publish(&mut s).await;
    assert!(!first.dup);
    drop(s); // no PUBACK
    let (mut s, ack) = connect_with(b.addr, "v5-dup", |p| {
        p.clean_start = false;
        p.properties.session_expiry_interval = Some(60);
    })
    .await;
    assert!(ack.session_present);
    let again = recv_publish(&mut s).await;
    assert_eq!(
        (text(&again), again.pkid, again.dup, again.qos),
        ("again".into(), first.pkid, true, QoS::AtLeastOnce)
    );
    send_ack(&mut s, Packet::PubAck, again.pkid).await;
    assert!(until_pingresp(&mut s).await.is_empty(), "acknowledged message sent once more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expires_after_its_interval() {
    let b = TestBroker::start().await;
    let mut c = connect_ok(&b, "v5-sexp", |p| p.properties.session_expiry_interval = Some(1)).await;
    subscribe(&mut c, 1, "v5/sexp/t", QoS::AtLeastOnce).await;
    disconnect(c, 0, Properties::default()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut c, ack) = connect_with(b.addr, "v5-sexp", |p| {
        p.clean_start = false;
        p.properties.session_expiry_interval = Some(1);
    })
    .await;
    assert!(!ack.session_present, "session with expiry 1 s still present after 1.5 s");
    // Its subscription is gone too.
    let mut p = connect(&b, "v5-sexp-pub").await;
    assert_eq!(pub1(&mut p, 1, "v5/sexp/t", b"x").await, 0x10);
    assert!(until_pingresp(&mut c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_with_session_expiry_zero_ends_the_session() {
    let b = TestBroker::start().await;
    let c = connect_ok(&b, "v5-sexp-end", |p| p.properties.session_expiry_interval = Some(60)).await;
    disconnect(c, 0, Properties { session_expiry_interval: Some(0), ..Properties::default() }).await;
    wait_sessions(&b, 0).await;
    let (_c, ack) = connect_with(b.addr, "v5-sexp-end", |p| {
        p.clean_start = false;
        p.properties.session_expiry_interval = Some(60);
    })
    .await;
    assert!(!ack.session_present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_setting_session_expiry_after_zero_is_0x82() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "v5-sexp-zero").await;
    let props = Properties { session_expiry_interval: Some(30), ..Properties::default() };
    c.send_packet(&Packet::Disconnect(dataloom::codec::Disconnect { code: 0, properties: props })).await;
    assert_eq!(recv_disconnect(&mut c).await.code, 0x82);
    // And the session did not survive.
    wait_sessions(&b, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_maximum_packet_size_is_respected() {
    let b = TestBroker::start().await;
    let mut s = connect_ok(&b, "v5-mps", |p| p.properties.maximum_packet_size = Some(100)).await;
    subscribe(&mut s, 1, "v5/mps/t", QoS::AtLeastOnce).await;
    let mut p = connect(&b, "v5-mps-pub").await;
    assert_eq!(pub1(&mut p, 1, "v5/mps/t", &[b'x'; 200]).await, 0);
    // 100 bytes of payload plus header and topic: just over the limit.
    assert_eq!(pub1(&mut p, 2, "v5/mps/t", &[b'y'; 90]).await, 0);
    assert_eq!(pub1(&mut p, 3, "v5/mps/t", b"small").await, 0);
    let got = recv_publish(&mut s).await;
    assert_eq!(text(&got), "small", "a PUBLISH over the client's Maximum Packet Size was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_0x8b_to_v5_clients() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "v5-shutdown").await;
    let (_rq, mut ev) = AsyncClient::new(MqttOptions::new("v5-shutdown-rq", "127.0.0.1", b.port()), 10);
    rumqttc_connack(&mut ev).await;
    wait_sessions(&b, 2).await;
    let stop = tokio::spawn(b.stop());
    assert_eq!(recv_disconnect(&mut c).await.code, 0x8B);
    // rumqttc reports a server DISCONNECT as the error that ends its event loop.
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(RPacket::Disconnect(d))) => return d.reason_code,
                Ok(_) => {}
                Err(ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. })) => {
                    return reason_code;
                }
                Err(e) => panic!("connection ended without DISCONNECT: {e}"),
            }
        }
    })
    .await
    .expect("DISCONNECT in time");
    assert_eq!(code, DisconnectReasonCode::ServerShuttingDown);
    stop.await.unwrap();
}

/// `dataloom_sessions{state="persistent"}` is a counter the broker keeps at each change (issue
/// 14: a scrape walks no sessions): it follows connect, expiry changes, takeover and the end.
#[tokio::test]
async fn the_persistent_session_count_follows_every_change() {
    let b = TestBroker::start().await;
    let broker = b.running.as_ref().expect("running").broker.clone();
    let count = || broker.persistent_session_count();
    let long = |p: &mut Connect| p.properties.session_expiry_interval = Some(3600);
    let a = connect_ok(&b, "p-a", long).await;
    let c = connect_ok(&b, "p-b", |_| {}).await;
    assert_eq!(count(), 1, "one persistent, one that ends with its connection");
    // A clean start takes over p-a: its old persistent session is gone, the new one is not.
    let a2 = connect_ok(&b, "p-a", |_| {}).await;
    assert_eq!(count(), 0);
    drop(a);
    // Persistent again by CONNECT, then ended by DISCONNECT with Session Expiry 0.
    disconnect(a2, 0, Properties::default()).await;
    let a3 = connect_ok(&b, "p-a", long).await;
    assert_eq!(count(), 1);
    let zero = Properties { session_expiry_interval: Some(0), ..Properties::default() };
    disconnect(a3, 0, zero).await;
    wait_sessions(&b, 1).await;
    assert_eq!(count(), 0, "expiry 0 on DISCONNECT ends it");
    disconnect(c, 0, Properties::default()).await;
    wait_sessions(&b, 0).await;
    assert_eq!(count(), 0);
    b.stop().await;
}
