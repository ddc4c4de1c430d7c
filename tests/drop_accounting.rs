//! A dropped message is counted once, under the reason it was dropped for (issue 13): a
//! message whose only subscriber's queue is full is `queue_full`, not also `no_subscribers`.
//! Its own test binary: the drop counters are process-wide.
mod common;
mod v5_util;

use common::TestBroker;
use dataloom::codec::QoS;
use v5_util::*;

fn dropped(b: &TestBroker, reason: &str) -> u64 {
    let broker = &b.running.as_ref().expect("running").broker;
    let text = dataloom::metrics::get().render(&broker.metrics_snapshot()).expect("render");
    let series = format!("dataloom_messages_dropped_total{{reason=\"{reason}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drop_is_not_also_counted_as_no_subscribers() {
    let b = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 3).await;
    let persistent = |p: &mut dataloom::codec::Connect| p.properties.session_expiry_interval = Some(600);
    let mut keeper = connect_ok(&b, "drop-keeper", persistent).await;
    subscribe(&mut keeper, 1, "drop/x", QoS::AtLeastOnce).await;
    disconnect(keeper, 0, Default::default()).await;
    wait_sessions(&b, 1).await;

    let mut p = connect(&b, "drop-pub").await;
    for pkid in 1..=10 {
        // A subscription matched every one: never "No matching subscribers" (0x10).
        assert_eq!(pub1(&mut p, pkid, "drop/x", b"m").await, 0, "message {pkid}");
    }
    assert_eq!(dropped(&b, "queue_full"), 7);
    assert_eq!(dropped(&b, "no_subscribers"), 0, "the same drops counted twice");
    b.stop().await;
}
