//! Shared subscriptions deliver to members that can take the message (issue 13): an online
//! member that may read the topic is picked over an offline one and over one whose key may
//! not read it; with nobody online QoS 1 waits in a persistent member's session and QoS 0 is
//! dropped and counted; a member that leaves hands its unacknowledged and queued messages to
//! another online member, and a QoS 2 message already sent stays with its client.
//! Its own test binary: the drop counters are process-wide.
mod common;
mod v5_util;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use common::binary::Site;
use common::{RawClient, TestBroker};
use dataloom::auth::KeySpec;
use dataloom::codec::{Connect, Packet, Properties, QoS};
use v5_util::*;

/// A CONNECT editor for a session that outlives its connection.
fn persistent(p: &mut Connect) {
    p.properties.session_expiry_interval = Some(3600);
}

/// Resumes the persistent session of `id` (session present).
async fn resume(b: &TestBroker, id: &str) -> RawClient {
    let (c, ack) = connect_with(b.addr, id, |p| {
        p.clean_start = false;
        persistent(p);
    })
    .await;
    assert_eq!((ack.code, ack.session_present), (0, true), "session of {id} resumed");
    c
}

/// A persistent member of `filter` at `qos` that then goes offline.
async fn offline_member(b: &TestBroker, id: &str, filter: &str, qos: QoS) {
    let mut c = connect_ok(b, id, persistent).await;
    subscribe(&mut c, 1, filter, qos).await;
    disconnect(c, 0, Properties::default()).await;
}

/// Receives `n` PUBLISH packets, acknowledging QoS 1; returns their payloads.
async fn receive(c: &mut RawClient, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let p = recv_publish(c).await;
        if p.qos == QoS::AtLeastOnce {
            send_ack(c, Packet::PubAck, p.pkid).await;
        }
        got.push(text(&p));
    }
    got
}

/// Publishes `topic` = "0".."n-1" at QoS 1, each acknowledged (then routed to every queue).
async fn publish_n(c: &mut RawClient, topic: &str, n: u16) {
    for i in 0..n {
        assert_eq!(pub1(c, i + 1, topic, i.to_string().as_bytes()).await, 0, "PUBACK {i}");
    }
}

fn numbers(n: u16) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort_by_key(|s| s.parse::<u32>().unwrap_or(u32::MAX));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_member_gets_everything_while_the_other_is_offline() {
    let b = TestBroker::start().await;
    offline_member(&b, "sa-off", "$share/g/sa/#", QoS::AtLeastOnce).await;
    let mut on = connect(&b, "sa-on").await;
    subscribe(&mut on, 1, "$share/g/sa/#", QoS::AtLeastOnce).await;

    let mut p = connect(&b, "sa-pub").await;
    publish_n(&mut p, "sa/x", 20).await;
    assert_eq!(sorted(receive(&mut on, 20).await), numbers(20), "every message to the online member");

    let mut off = resume(&b, "sa-off").await;
    assert!(until_pingresp(&mut off).await.is_empty(), "nothing was queued for the offline member");
    b.stop().await;
}

const ALL: &str = "key-all-secret-0123456789abcdef012345678";
const DENY: &str = "key-deny-secret-0123456789abcdef01234567";

fn spec(name: &str, secret: &str, deny_subscribe: &[&str]) -> KeySpec {
    KeySpec {
        name: name.into(),
        secret: secret.into(),
        publish: vec!["#".into()],
        subscribe: vec!["#".into()],
        deny_subscribe: deny_subscribe.iter().map(|s| s.to_string()).collect(),
        ..KeySpec::default()
    }
}

fn login(user: &'static str, pass: &'static str) -> impl FnOnce(&mut Connect) {
    move |c| {
        c.username = Some(user.into());
        c.password = Some(bytes::Bytes::from_static(pass.as_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_may_not_read_the_topic_is_never_picked() {
    let b = TestBroker::start().await;
    let auth = &b.running.as_ref().expect("running").auth;
    auth.create(spec("key-all", ALL, &[])).await.expect("key created");
    auth.create(spec("key-deny", DENY, &["sb/secret/#"])).await.expect("key created");

    // The deny list only overlaps `$share/g/sb/#`: the subscription is granted.
    let mut denied = connect_ok(&b, "sb-denied", login("key-deny", DENY)).await;
    subscribe(&mut denied, 1, "$share/g/sb/#", QoS::AtLeastOnce).await;
    let mut reader = connect_ok(&b, "sb-reader", login("key-all", ALL)).await;
    subscribe(&mut reader, 1, "$share/g/sb/#", QoS::AtLeastOnce).await;

    let mut p = connect_ok(&b, "sb-pub", login("key-all", ALL)).await;
    publish_n(&mut p, "sb/secret/x", 20).await;
    assert_eq!(sorted(receive(&mut reader, 20).await), numbers(20), "the group lost none");
    assert!(until_pingresp(&mut denied).await.is_empty(), "the denied member got none");

    // Topics both may read are still shared between them.
    for i in 0..20u16 {
        assert_eq!(pub1(&mut p, 100 + i, "sb/open/x", i.to_string().as_bytes()).await, 0);
    }
    let to_reader = until_pingresp(&mut reader).await.len();
    let to_denied = until_pingresp(&mut denied).await.len();
    assert_eq!((to_reader + to_denied, to_reader.min(to_denied)), (20, 10), "round robin on open topics");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_member_offline_qos1_waits_and_qos0_is_dropped_and_counted() {
    let b = TestBroker::start().await;
    let broker = b.running.as_ref().expect("running").broker.clone();
    // One member keeps QoS 1 for later; the other subscribed at QoS 0, so it keeps nothing.
    offline_member(&b, "sc-keeps", "$share/g/sc/#", QoS::AtLeastOnce).await;
    offline_member(&b, "sc-qos0", "$share/g/sc/#", QoS::AtMostOnce).await;

    let mut p = connect(&b, "sc-pub").await;
    publish_n(&mut p, "sc/x", 10).await;
    let before = broker.stats.dropped_offline_qos0.load(Ordering::Relaxed);
    for i in 0..5u16 {
        send_publish(&mut p, publish("sc/x", QoS::AtMostOnce, 0, format!("q0-{i}").as_bytes())).await;
    }
    // A QoS 1 PUBACK from the same connection: everything it sent before has been routed.
    assert_eq!(pub1(&mut p, 1, "sc-barrier", b"").await, 0x10, "the barrier matches nobody");
    let dropped = broker.stats.dropped_offline_qos0.load(Ordering::Relaxed) - before;
    assert_eq!(dropped, 5, "5 QoS 0 messages dropped and counted");

    let mut keeps = resume(&b, "sc-keeps").await;
    assert_eq!(
        receive(&mut keeps, 10).await,
        numbers(10),
        "QoS 1 kept, in order, for the member that stores it"
    );
    assert!(until_pingresp(&mut keeps).await.is_empty(), "no QoS 0 message was kept");
    let mut qos0 = resume(&b, "sc-qos0").await;
    assert!(until_pingresp(&mut qos0).await.is_empty(), "nothing for the QoS 0 member");
    assert_eq!(broker.stats.dropped_offline_qos0.load(Ordering::Relaxed) - before, 5);
    b.stop().await;
}

/// Connects `id` with a persistent session and a Receive Maximum of `window`.
async fn member_with_window(b: &TestBroker, id: &str, window: u16) -> RawClient {
    connect_ok(b, id, |p| {
        persistent(p);
        p.properties.receive_maximum = Some(window);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_member_hands_unacknowledged_and_queued_messages_to_another() {
    let b = TestBroker::start().await;
    let mut a = member_with_window(&b, "sd-a", 3).await;
    subscribe(&mut a, 1, "$share/g/sd/#", QoS::AtLeastOnce).await;
    let mut p = connect(&b, "sd-pub").await;
    publish_n(&mut p, "sd/x", 8).await;
    // Three in flight, never acknowledged; five still queued behind A's window.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(text(&recv_publish(&mut a).await));
    }
    assert_eq!(got, numbers(3));

    let mut bm = member_with_window(&b, "sd-b", 20).await;
    subscribe(&mut bm, 1, "$share/g/sd/#", QoS::AtLeastOnce).await;
    disconnect(a, 0, Properties::default()).await;
    assert_eq!(sorted(receive(&mut bm, 8).await), numbers(8), "A's messages went to B");

    let mut a = resume(&b, "sd-a").await;
    assert!(until_pingresp(&mut a).await.is_empty(), "A is owed nothing any more");
    assert!(until_pingresp(&mut bm).await.is_empty(), "each message once");
    b.stop().await;
}

/// Connects `id` to the broker at `addr` with a persistent session (resumed unless `clean`)
/// and a Receive Maximum of `window`.
async fn member_at(addr: SocketAddr, id: &str, clean: bool, window: u16) -> RawClient {
    let (c, ack) = connect_with(addr, id, |p| {
        p.clean_start = clean;
        persistent(p);
        p.properties.receive_maximum = Some(window);
    })
    .await;
    assert_eq!((ack.code, ack.session_present), (0, !clean), "CONNACK of {id}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handed_over_messages_survive_kill_9_with_their_new_holder() {
    let site = Site::new();
    let proc = site.start().await;
    let addr = proc.addr;
    let mut a = member_at(addr, "se-a", true, 2).await;
    subscribe(&mut a, 1, "$share/g/se/#", QoS::AtLeastOnce).await;
    let mut b = member_at(addr, "se-b", true, 20).await;
    subscribe(&mut b, 1, "$share/g/se/#", QoS::AtLeastOnce).await;
    disconnect(b, 0, Properties::default()).await;
    let (mut p, _) = connect_with(addr, "se-pub", |_| {}).await;
    publish_n(&mut p, "se/x", 6).await;
    // Only A was online: two in flight, four queued behind its window.
    for want in numbers(2) {
        assert_eq!(text(&recv_publish(&mut a).await), want);
    }
    let mut c = member_at(addr, "se-c", true, 20).await;
    subscribe(&mut c, 1, "$share/g/se/#", QoS::AtLeastOnce).await;
    disconnect(a, 0, Properties::default()).await;
    // C takes all six (B is offline) and acknowledges none.
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(text(&recv_publish(&mut c).await));
    }
    assert_eq!(sorted(got), numbers(6));
    // A persistent SUBACK waits for an fsync, which covers every write before it.
    subscribe(&mut c, 2, "se-barrier", QoS::AtLeastOnce).await;
    proc.kill_9().await;

    let proc = site.start().await;
    let addr = proc.addr;
    let mut a = member_at(addr, "se-a", false, 20).await;
    assert!(until_pingresp(&mut a).await.is_empty(), "A's stored copies left with the messages");
    let mut b = member_at(addr, "se-b", false, 20).await;
    assert!(until_pingresp(&mut b).await.is_empty(), "nothing for the member that was offline");
    let mut c = member_at(addr, "se-c", false, 20).await;
    let mut again = Vec::new();
    for _ in 0..6 {
        let p = recv_publish(&mut c).await;
        assert!(p.dup, "resent after the restart");
        send_ack(&mut c, Packet::PubAck, p.pkid).await;
        again.push(text(&p));
    }
    assert_eq!(sorted(again), numbers(6), "C's copies survived kill -9");
    assert!(until_pingresp(&mut c).await.is_empty());
    proc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos2_message_already_sent_stays_with_its_member() {
    let b = TestBroker::start().await;
    let mut a = member_with_window(&b, "sf-a", 20).await;
    subscribe(&mut a, 1, "$share/g/sf/#", QoS::ExactlyOnce).await;
    let mut p = connect(&b, "sf-pub").await;
    for (pkid, payload) in [(1u16, "rec"), (2, "comp")] {
        let code = send_publish(&mut p, publish("sf/x", QoS::ExactlyOnce, pkid, payload.as_bytes())).await;
        assert_eq!(code, 0);
        send_ack(&mut p, Packet::PubRel, pkid).await;
        assert!(matches!(p.recv().await, Some(Packet::PubComp(_))));
    }
    let first = recv_publish(&mut a).await;
    let second = recv_publish(&mut a).await;
    assert_eq!((text(&first), text(&second)), ("rec".into(), "comp".into()));
    // The second reaches PUBREC (the client has it); the first awaits PUBREC.
    send_ack(&mut a, Packet::PubRec, second.pkid).await;
    assert!(matches!(a.recv().await, Some(Packet::PubRel(r)) if r.pkid == second.pkid));

    let mut bm = member_with_window(&b, "sf-b", 20).await;
    subscribe(&mut bm, 1, "$share/g/sf/#", QoS::ExactlyOnce).await;
    disconnect(a, 0, Properties::default()).await;
    assert!(until_pingresp(&mut bm).await.is_empty(), "no QoS 2 message in flight moves (MQTT-4.8.2-4)");

    let mut a = resume(&b, "sf-a").await;
    let resent = until_pingresp(&mut a).await;
    let dup = resent.iter().any(|p| matches!(p, Packet::Publish(x) if x.dup && x.pkid == first.pkid));
    let rel = resent.iter().any(|p| matches!(p, Packet::PubRel(r) if r.pkid == second.pkid));
    assert!(dup && rel, "A completes both: {resent:?}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_member_that_drops_its_connection_hands_its_messages_over() {
    let b = TestBroker::start().await;
    let mut a = connect_ok(&b, "sg-a", |p| p.properties.receive_maximum = Some(2)).await;
    subscribe(&mut a, 1, "$share/g/sg/#", QoS::AtLeastOnce).await;
    let mut p = connect(&b, "sg-pub").await;
    publish_n(&mut p, "sg/x", 5).await;
    for want in numbers(2) {
        assert_eq!(text(&recv_publish(&mut a).await), want);
    }
    let mut bm = connect(&b, "sg-b").await;
    subscribe(&mut bm, 1, "$share/g/sg/#", QoS::AtLeastOnce).await;
    // No DISCONNECT: the broker notices the closed socket and the session ends.
    drop(a);
    assert_eq!(sorted(receive(&mut bm, 5).await), numbers(5), "the ended session's messages went to B");
    assert!(until_pingresp(&mut bm).await.is_empty(), "each message once");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_member_hands_what_it_kept_to_a_member_online_now() {
    let b = TestBroker::start().await;
    let mut a = connect_ok(&b, "sh-a", |p| p.properties.session_expiry_interval = Some(1)).await;
    subscribe(&mut a, 1, "$share/g/sh/#", QoS::AtLeastOnce).await;
    disconnect(a, 0, Properties::default()).await;
    let mut p = connect(&b, "sh-pub").await;
    // Nobody online: A's session keeps them.
    publish_n(&mut p, "sh/x", 3).await;
    let mut bm = connect(&b, "sh-b").await;
    subscribe(&mut bm, 1, "$share/g/sh/#", QoS::AtLeastOnce).await;
    // A's session expires after 1 s and hands them to B.
    assert_eq!(sorted(receive(&mut bm, 3).await), numbers(3));
    wait_sessions(&b, 2).await;
    b.stop().await;
}
