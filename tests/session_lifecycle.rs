//! How sessions end and connections close, where a client sees it (issue 15): a session with
//! expiry 0 ends with its connection even when a takeover ends that connection, a DISCONNECT
//! the client already sent counts on a fast reconnect, a takeover publishes the old
//! connection's will unless the session continues, an MQTT 3.1 CONNACK keeps its reserved byte
//! 0, and a close that carries a reason lets the client read it. The races run many rounds.
mod common;
mod v5_util;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{RawClient, TestBroker, WAIT};
use dataloom::codec::{self, Connect, Disconnect, Packet, Properties, ProtocolVersion, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use v5_util::*;

/// Rounds of each race.
const ROUNDS: usize = 50;

fn v311(p: &mut Connect) {
    p.protocol = ProtocolVersion::V3_1_1;
}

fn expiry(secs: u32) -> impl Fn(&mut Connect) {
    move |p: &mut Connect| p.properties.session_expiry_interval = Some(secs)
}

/// A CONNECT with clean start 0 (and the edits of `edit`).
fn resume(edit: impl Fn(&mut Connect)) -> impl FnOnce(&mut Connect) {
    move |p: &mut Connect| {
        edit(p);
        p.clean_start = false;
    }
}

fn subscriptions(b: &TestBroker) -> usize {
    b.running.as_ref().expect("running").broker.subscription_count()
}

/// A subscriber to `topic` that sees wills.
async fn watcher(b: &TestBroker, id: &str, topic: &str) -> RawClient {
    let mut w = connect(b, id).await;
    subscribe(&mut w, 1, topic, QoS::AtMostOnce).await;
    w
}

/// Item 1: a session with expiry 0 (3.1.1 clean session, v5 Session Expiry 0) ends when its
/// connection ends, and a takeover ends that connection: a clean start 0 CONNECT that arrives
/// while the old connection is open finds no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_does_not_resume_a_session_that_ends_with_its_connection() {
    expiry_zero_rounds(false).await;
}

/// Item 1: the same right after the old connection closed its socket (no DISCONNECT), before
/// or while the broker notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ends_with_its_connection_is_gone_right_after_the_close() {
    expiry_zero_rounds(true).await;
}

/// [`ROUNDS`] rounds per protocol version: a session with expiry 0 and a subscription, its
/// socket closed first when `close_first`, then a clean start 0 CONNECT of its client id must
/// find no session and no subscription.
async fn expiry_zero_rounds(close_first: bool) {
    let b = TestBroker::start().await;
    for (version, edit) in [("3.1.1", v311 as fn(&mut Connect)), ("5", |_: &mut Connect| {})] {
        for i in 0..ROUNDS {
            let id = format!("lc-{close_first}-{version}-{i}");
            let mut first = connect_ok(&b, &id, edit).await;
            subscribe(&mut first, 1, "lc/zero", QoS::AtLeastOnce).await;
            let old = (!close_first).then_some(first);
            let again = resume(move |p| {
                edit(p);
                p.properties.session_expiry_interval = Some(60);
            });
            let (_new, ack) = connect_with(b.addr, &id, again).await;
            let round = format!("MQTT {version}, round {i}, closed first: {close_first}");
            assert_eq!(ack.code, 0);
            assert!(!ack.session_present, "{round}: the old connection's session was resumed");
            assert_eq!(subscriptions(&b), 0, "{round}: the old subscription survived");
            if let Some(mut old) = old.filter(|_| version == "5") {
                assert_eq!(recv_disconnect(&mut old).await.code, 0x8E, "Session taken over");
            }
        }
    }
}

/// Item 2: a v5 client sends DISCONNECT with Session Expiry 0, closes and reconnects at once
/// with clean start 0: the DISCONNECT was sent first, so the session is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_already_sent_ends_the_session_before_a_fast_reconnect() {
    let b = TestBroker::start().await;
    let mut resumed = Vec::new();
    for i in 0..ROUNDS * 10 {
        let id = format!("lc-fast-{i}");
        let mut old = connect_ok(&b, &id, expiry(60)).await;
        subscribe(&mut old, 1, "lc/fast", QoS::AtLeastOnce).await;
        let zero = Properties { session_expiry_interval: Some(0), ..Properties::default() };
        old.send_packet(&Packet::Disconnect(Disconnect { code: 0, properties: zero })).await;
        drop(old);
        let (_new, ack) = connect_with(b.addr, &id, resume(expiry(60))).await;
        if ack.session_present {
            resumed.push(i);
        }
    }
    assert!(resumed.is_empty(), "sessions ended by DISCONNECT were resumed in rounds {resumed:?}");
}

/// Item 3: a takeover that does not continue the session (expiry 0, or clean start) publishes
/// the old connection's will at once, whatever its delay: the session ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_that_ends_the_session_publishes_the_will() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "lc-will-w", "lc/will").await;
    // (old session expiry, old will delay, new clean start)
    let cases = [(0, 0, false), (0, 0, true), (60, 0, true), (60, 30, true), (0, 30, false)];
    for (i, (old_expiry, delay, clean)) in cases.into_iter().enumerate() {
        let id = format!("lc-will-{i}");
        let mut old = connect_ok(&b, &id, |p| {
            let mut will = will("lc/will", &format!("gone {i}"));
            will.properties.will_delay_interval = Some(delay);
            p.will = Some(will);
            p.properties.session_expiry_interval = Some(old_expiry);
        })
        .await;
        let started = Instant::now();
        let (_new, ack) = connect_with(b.addr, &id, |p| {
            p.clean_start = clean;
            p.properties.session_expiry_interval = Some(60);
        })
        .await;
        assert!(!ack.session_present);
        assert_eq!(recv_disconnect(&mut old).await.code, 0x8E);
        let got = recv_publish(&mut w).await;
        assert_eq!(
            text(&got),
            format!("gone {i}"),
            "case {i}: expiry {old_expiry}, delay {delay}, clean {clean}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "case {i}: the will waited for its delay");
    }
}

/// Item 3 for MQTT 3.1.1 [MQTT-3.1.2-8]: a clean session taken over publishes its will; a
/// persistent session resumed by the new connection does not (the session continues).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_311_takeover_publishes_the_will_unless_the_session_continues() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "lc-will311-w", "lc/will311").await;
    let with_will = |clean: bool, payload: &'static str| {
        move |p: &mut Connect| {
            v311(p);
            p.clean_start = clean;
            p.will = Some(will("lc/will311", payload));
        }
    };
    let _old = connect_ok(&b, "lc-will311", with_will(true, "clean")).await;
    let (_new, ack) = connect_with(b.addr, "lc-will311", with_will(false, "second")).await;
    assert!(!ack.session_present);
    assert_eq!(text(&recv_publish(&mut w).await), "clean", "the clean session's will");
    // The second connection's session is persistent: a third one continues it, no will.
    let (_third, ack) = connect_with(b.addr, "lc-will311", resume(v311)).await;
    assert!(ack.session_present);
    let mut p = connect(&b, "lc-will311-marker").await;
    assert_eq!(pub1(&mut p, 1, "lc/will311", b"marker").await, 0);
    assert_eq!(text(&recv_publish(&mut w).await), "marker", "a will was published as the session continued");
}

/// Item 3: an offline session whose will waits for its delay ends when a clean start takes its
/// client id: the will goes out then, not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_start_publishes_the_delayed_will_of_the_session_it_ends() {
    let b = TestBroker::start().await;
    let mut w = watcher(&b, "lc-delayed-w", "lc/delayed").await;
    let old = connect_ok(&b, "lc-delayed", |p| {
        let mut will = will("lc/delayed", "gone");
        will.properties.will_delay_interval = Some(30);
        p.will = Some(will);
        p.properties.session_expiry_interval = Some(60);
    })
    .await;
    drop(old); // abnormal close: the will waits 30 s
    wait_timers(&b, 2).await; // the delayed will and the session expiry
    let (_new, ack) = connect_with(b.addr, "lc-delayed", |_| {}).await;
    assert!(!ack.session_present);
    assert_eq!(text(&recv_publish(&mut w).await), "gone");
}

/// Waits (bounded) until the broker has `n` session timers pending.
async fn wait_timers(b: &TestBroker, n: usize) {
    let broker = &b.running.as_ref().expect("running").broker;
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.metrics_snapshot().session_timers != n {
        assert!(tokio::time::Instant::now() < deadline, "never {n} session timers");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Item 4: in MQTT 3.1 the first byte of CONNACK is reserved (0); only 3.1.1 and 5 have
/// Session Present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_31_connack_never_sets_the_reserved_byte() {
    let b = TestBroker::start().await;
    for round in 0..2 {
        let mut c = RawClient::connect(b.addr).await;
        let mut p = connect_packet("lc-mqisdp");
        p.protocol = ProtocolVersion::V3_1;
        p.clean_start = false;
        let mut out = BytesMut::new();
        codec::encode(&Packet::Connect(Box::new(p)), ProtocolVersion::V3_1, &mut out);
        c.send(&out).await;
        let mut ack = [0u8; 4];
        tokio::time::timeout(WAIT, c.stream.read_exact(&mut ack))
            .await
            .expect("CONNACK in time")
            .expect("CONNACK");
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "round {round} (the second resumes the session)");
    }
}

/// A QoS 0 PUBLISH of about 1 KiB, raw.
fn filler() -> Vec<u8> {
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::Publish(publish("lc/flood", QoS::AtMostOnce, 0, &[b'x'; 1000])),
        ProtocolVersion::V5,
        &mut out,
    );
    out.to_vec()
}

/// Writes `n` filler packets, one every `gap`; the first write error ends it.
async fn flood(c: &mut RawClient, n: usize, gap: Duration) -> std::io::Result<()> {
    let packet = filler();
    for _ in 0..n {
        c.stream.write_all(&packet).await?;
        tokio::time::sleep(gap).await;
    }
    Ok(())
}

/// 21 QoS 2 PUBLISH without PUBREL: one over the broker's Receive Maximum (20).
fn over_receive_maximum() -> Vec<u8> {
    let mut out = BytesMut::new();
    for pkid in 1..=21 {
        let p = publish("lc/rm", QoS::ExactlyOnce, pkid, b"x");
        codec::encode(&Packet::Publish(p), ProtocolVersion::V5, &mut out);
    }
    out.to_vec()
}

/// Item 6: after a DISCONNECT with a reason the broker keeps reading (and discarding) for a
/// while, so a client still writing does not get a reset and then reads the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_writing_after_a_violation_still_reads_the_disconnect_reason() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "lc-graceful").await;
    c.send(&over_receive_maximum()).await;
    // About 100 KB over 300 ms: the broker has long closed its side by the end.
    flood(&mut c, 100, Duration::from_millis(3)).await.expect("writes after the violation do not fail");
    let got = c.until_closed().await;
    match got.as_slice() {
        [acks @ .., Packet::Disconnect(d)] => {
            assert_eq!(d.code, 0x93, "Receive Maximum exceeded");
            assert!(acks.iter().all(|p| matches!(p, Packet::PubRec(_))), "{acks:?}");
        }
        other => panic!("expected PUBRECs and DISCONNECT 0x93, got {other:?}"),
    }
}

/// Item 6: a refusing CONNACK is a reason too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_writing_after_a_refused_connect_still_reads_the_connack() {
    let b = TestBroker::start().await;
    let mut c = RawClient::connect(b.addr).await;
    let mut p = connect_packet("lc-refused");
    p.properties.authentication_method = Some("SCRAM-SHA-1".into());
    c.send_packet(&Packet::Connect(Box::new(p))).await;
    flood(&mut c, 100, Duration::from_millis(3)).await.expect("writes after the refusal do not fail");
    match c.until_closed().await.as_slice() {
        [Packet::ConnAck(a)] => assert_eq!(a.code, 0x8C, "Bad authentication method"),
        other => panic!("expected CONNACK 0x8C, got {other:?}"),
    }
}

/// Item 6: the linger is bounded in time: a client that keeps writing after the DISCONNECT
/// and never closes is cut off within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_writing_after_the_reason_is_cut_off() {
    let b = TestBroker::start().await;
    let mut c = connect(&b, "lc-linger").await;
    c.send(&over_receive_maximum()).await;
    let started = Instant::now();
    // 1 KB every 10 ms for up to 10 s: slow enough never to reach the byte bound.
    let ended =
        tokio::time::timeout(Duration::from_secs(10), flood(&mut c, 1000, Duration::from_millis(10))).await;
    let took = started.elapsed();
    assert!(matches!(ended, Ok(Err(_))), "the broker never closed: {ended:?} after {took:?}");
    assert!(took < Duration::from_secs(5), "the broker read for {took:?}");
}
