//! Session expiry across restarts and under churn (issue 13): the session record keeps the time
//! the session went offline, so a session whose expiry passed while the broker was down (killed
//! with SIGKILL) does not come back, and one with time left ends when that time is up, not an
//! interval after the restart; one timer per offline session, cancelled on reconnect, so a
//! connect/disconnect loop leaves no task and no timer behind; `mqtt.persistent_session_expiry`
//! caps MQTT 3.1.1 and v5 sessions.
mod common;
mod v5_util;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::binary::Site;
use common::{RawClient, TestBroker, WAIT};
use dataloom::codec::{Connect, ProtocolVersion, QoS};
use v5_util::*;

/// A v5 CONNECT editor: clean start `clean`, session expiry `expiry` seconds.
fn session(clean: bool, expiry: u32) -> impl FnOnce(&mut Connect) {
    move |c| {
        c.clean_start = clean;
        c.properties.session_expiry_interval = Some(expiry);
    }
}

/// Connects; asserts CONNACK success and returns the client and session present.
async fn connect_at(addr: SocketAddr, id: &str, edit: impl FnOnce(&mut Connect)) -> (RawClient, bool) {
    let (c, ack) = connect_with(addr, id, edit).await;
    assert_eq!(ack.code, 0, "CONNACK of {id}: {ack:?}");
    (c, ack.session_present)
}

/// Makes `dev` a persistent session (expiry `secs`) subscribed to `q/#`, leaves it, and queues
/// `n` QoS 1 messages for it. Returns when the client saw the broker close the connection
/// (the session is offline by then) and every message was acknowledged (on disk, and so is the
/// session's offline record, stored before them).
async fn leave_with_queue(addr: SocketAddr, dev: &str, secs: u32, n: u16) -> Instant {
    let (mut c, _) = connect_at(addr, dev, session(true, secs)).await;
    subscribe(&mut c, 1, "q/#", QoS::AtLeastOnce).await;
    disconnect(c, 0, Default::default()).await;
    let offline = Instant::now();
    let (mut p, _) = connect_at(addr, "publisher", |_| {}).await;
    for i in 1..=n {
        assert_eq!(pub1(&mut p, i, &format!("q/{i}"), b"queued").await, 0);
    }
    disconnect(p, 0, Default::default()).await;
    offline
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_expired_while_the_broker_was_down_is_gone_after_restart() {
    let site = Site::new();
    let proc = site.start().await;
    let offline = leave_with_queue(proc.addr, "dev", 2, 3).await;
    proc.kill_9().await;
    // The scenario's own clock: the restart comes after the session's expiry.
    sleep_until(offline + Duration::from_millis(2_500)).await;
    let proc = site.start().await;
    proc.stderr
        .wait_for("recovery line", |l| l.contains("state recovered") && l.contains("expired_sessions=1"))
        .await;
    let (mut c, present) = connect_at(proc.addr, "dev", session(false, 2)).await;
    assert!(!present, "an expired session must not come back");
    subscribe(&mut c, 1, "q/#", QoS::AtLeastOnce).await;
    assert!(until_pingresp(&mut c).await.is_empty(), "its queue is gone");
    proc.kill_9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_time_left_comes_back_after_restart_with_its_messages() {
    let site = Site::new();
    let proc = site.start().await;
    leave_with_queue(proc.addr, "dev", 60, 3).await;
    proc.kill_9().await;
    let proc = site.start().await;
    let (mut c, present) = connect_at(proc.addr, "dev", session(false, 60)).await;
    assert!(present, "60 s have not passed");
    for i in 1..=3u16 {
        let p = recv_publish(&mut c).await;
        assert_eq!(String::from_utf8_lossy(&p.topic), format!("q/{i}"));
        send_ack(&mut c, dataloom::codec::Packet::PubAck, p.pkid).await;
    }
    proc.kill_9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_expiry_counts_from_going_offline_not_from_the_restart() {
    let site = Site::new();
    let proc = site.start().await;
    let offline = leave_with_queue(proc.addr, "dev", 4, 1).await;
    proc.kill_9().await;
    sleep_until(offline + Duration::from_secs(2)).await;
    let proc = site.start().await;
    // Offline at `offline`, 4 s expiry: over at offline + 4 s whenever the restart happened
    // (an expiry counted from the restart would end it 4 s after that, at offline + 6 s or later).
    sleep_until(offline + Duration::from_millis(4_600)).await;
    let (_c, present) = connect_at(proc.addr, "dev", session(false, 4)).await;
    assert!(!present, "the session's time ran out while it was offline");
    proc.kill_9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_expiry_caps_v311_and_v5_sessions() {
    let b = TestBroker::start_with(|c| c.mqtt.persistent_session_expiry = Some(Duration::from_secs(1))).await;
    let v311 = |c: &mut Connect| {
        c.protocol = ProtocolVersion::V3_1_1;
        c.clean_start = false;
    };
    let (mut c, present) = connect_at(b.addr, "old-device", v311).await;
    assert!(!present);
    subscribe(&mut c, 1, "q/#", QoS::AtLeastOnce).await;
    disconnect(c, 0, Default::default()).await;
    // A 3.1.1 session with clean session 0 used to live forever; the cap ends it.
    wait_sessions(&b, 0).await;
    let (_c, present) = connect_at(b.addr, "old-device", v311).await;
    assert!(!present, "the capped 3.1.1 session expired");

    let (c, ack) = connect_with(b.addr, "new-device", session(true, 3600)).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(1), "v5 CONNACK announces the cap");
    disconnect(c, 0, Default::default()).await;
    wait_sessions(&b, 1).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reconnects_leave_no_task_and_no_timer_behind() {
    let b = TestBroker::start().await;
    let broker = b.running.as_ref().expect("running").broker.clone();
    let addr = b.addr;
    let cycle = || async move {
        let (c, _) = connect_at(addr, "churn", |c| {
            c.clean_start = false;
            c.properties.session_expiry_interval = Some(3600);
            let mut w = will("churn/gone", "bye");
            w.properties.will_delay_interval = Some(1800);
            c.will = Some(w);
        })
        .await;
        // Not a normal disconnect: the will stays pending, with its delay.
        disconnect(c, 0x04, Default::default()).await;
    };
    cycle().await;
    let baseline = broker.metrics_snapshot();
    assert_eq!(baseline.session_timers, 2, "one expiry and one delayed will");
    for _ in 0..1_000 {
        cycle().await;
    }
    // Connection tasks end just after their socket closes: wait for the count to settle.
    let deadline = Instant::now() + WAIT;
    loop {
        let now = broker.metrics_snapshot();
        assert_eq!(now.session_timers, 2, "still one timer of each kind");
        if now.runtime_tasks <= baseline.runtime_tasks + 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tasks grew from {} to {} over 1,000 reconnects",
            baseline.runtime_tasks,
            now.runtime_tasks
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.stop().await;
}
