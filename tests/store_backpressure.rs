//! The store writer's queue is bounded (issue 14, item 2): `storage.max_write_backlog` bytes
//! may wait for the writer; a publishing connection that finds it fuller stops being read
//! until the writer catches up. Nothing is dropped: every retained update arrives.
mod common;
mod v5_util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use common::{TestBroker, WAIT};
use dataloom::codec::{Packet, ProtocolVersion, Publish, QoS, encode};
use v5_util::{connect_with, publish};

const LIMIT: usize = 256 * 1024;
const PUBLISHERS: usize = 4;
const PER_PUBLISHER: usize = 400;
const PAYLOAD: usize = 16 * 1024;

/// Floods `PER_PUBLISHER` QoS 0 retained updates to distinct topics, then one QoS 1 update
/// whose PUBACK (in order behind the others) says every earlier one was written.
async fn flood(b: std::net::SocketAddr, i: usize) {
    let (mut c, _) = connect_with(b, &format!("bp-pub-{i}"), |_| {}).await;
    let body = vec![b'x'; PAYLOAD];
    let mut out = BytesMut::new();
    for n in 0..PER_PUBLISHER {
        let p = Publish { retain: true, ..publish(&format!("bp/{i}/{n}"), QoS::AtMostOnce, 0, &body) };
        encode(&Packet::Publish(p), ProtocolVersion::V5, &mut out);
        if out.len() > 256 * 1024 {
            c.send(&out).await;
            out.clear();
        }
    }
    let last = Publish { retain: true, ..publish(&format!("bp/{i}/last"), QoS::AtLeastOnce, 1, b"end") };
    encode(&Packet::Publish(last), ProtocolVersion::V5, &mut out);
    c.send(&out).await;
    let ack = tokio::time::timeout(WAIT * 6, c.recv()).await.expect("PUBACK in time");
    assert!(matches!(&ack, Some(Packet::PubAck(a)) if a.pkid == 1 && a.code < 0x80), "got {ack:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_flood_waits_for_the_writer_instead_of_queueing_without_bound() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let b = TestBroker::start_with(|c| {
        c.storage.backend = dataloom::config::Backend::Fjall;
        c.storage.data_dir = data;
        c.storage.durability = dataloom::config::Durability::Buffered;
        c.storage.max_write_backlog = LIMIT;
    })
    .await;
    let broker = b.running.as_ref().expect("running").broker.clone();
    let (peak, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let sampler = tokio::spawn({
        let (broker, peak, stop) = (broker.clone(), peak.clone(), stop.clone());
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let queued = broker.store().backlog().map_or(0, |q| q.queued());
                peak.fetch_max(queued, Ordering::Relaxed);
            }
        }
    });
    let floods: Vec<_> = (0..PUBLISHERS).map(|i| tokio::spawn(flood(b.addr, i))).collect();
    for f in floods {
        f.await.expect("publisher");
    }
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    let total = PUBLISHERS * PER_PUBLISHER * PAYLOAD;
    eprintln!("write backlog peak {peak} bytes (limit {LIMIT}) while {total} bytes were flooded");
    // Each publisher may overshoot by the one message that found the queue full.
    assert!(peak <= LIMIT + PUBLISHERS * (PAYLOAD + 1024), "backlog peak {peak} over {LIMIT}");
    assert_eq!(broker.retained_under("bp/#").len(), PUBLISHERS * (PER_PUBLISHER + 1), "nothing dropped");
    b.stop().await;
}
