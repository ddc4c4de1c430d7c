//! The checker run (issue 13): rounds of QoS 1 publishers (retained and not), persistent
//! sessions online (taken over mid-stream) and offline, each round ended by kill -9 of the real
//! binary at a seeded moment (one round in four by SIGTERM, a graceful stop, instead); after
//! every restart `common/checker.rs` checks that every
//! acknowledged retained update and every acknowledged copy owed to a persistent session is
//! still there (its header says exactly what that means). Both durability modes, `fsync` and
//! `buffered`, promise it.
//!
//! `make test` runs a few rounds per mode; `make soak` runs it for minutes and prints the figures.
//! Environment: `CHECKER_SEED` (decimal; printed, and again on failure), `CHECKER_ROUNDS` (rounds
//! per mode, default 3), `CHECKER_SECS` (rounds until that many seconds have passed; with
//! `CHECKER_ROUNDS` too, whichever ends first).
mod common;
mod v5_util;

#[path = "common/checker.rs"]
mod checker;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::{
    Ended, Ledger, SILENCE, SessionSpec, Until, check, connect_session, dropped, payload, queue_topic,
    receive, retained_topic, setup,
};
use common::WAIT;
use common::binary::{START, Site};
use common::flows::{Publisher, Rng};
use dataloom::codec::{ProtocolVersion, QoS};
use tokio::sync::{Notify, RwLock};
use v5_util::{connect_with, disconnect, publish, send_publish};

/// Default seed.
const SEED: u64 = 0x00c4_ec4e_5eed_0013;

/// Publishers, each the only writer of its retained topics and of one non-retained topic.
const WRITERS: usize = 4;
const RETAINED_PER_WRITER: usize = 8;
/// Messages in flight per publisher (the broker's Receive Maximum is 20).
const WINDOW: usize = 20;

const SESSIONS: [SessionSpec; 3] = [
    SessionSpec { id: "chk-online-v5", version: ProtocolVersion::V5, online: true },
    SessionSpec { id: "chk-online-v311", version: ProtocolVersion::V3_1_1, online: true },
    SessionSpec { id: "chk-offline-v5", version: ProtocolVersion::V5, online: false },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsync_loses_nothing_acknowledged_to_kill_9() {
    run("fsync").await;
}

/// `buffered` acknowledges once the write reached the OS: a killed process loses nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffered_loses_nothing_acknowledged_to_kill_9() {
    run("buffered").await;
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// Names the seed when the run fails, so it can be repeated.
struct SeedOnPanic(&'static str, u64);

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("checker {} failed: repeat with CHECKER_SEED={}", self.0, self.1);
        }
    }
}

/// True while the broker of the round may be connected to; the driver sets it to false (under
/// the write lock) before the kill, so nobody is halfway through a CONNECT when it dies.
type Gate = Arc<RwLock<bool>>;

async fn run(mode: &'static str) {
    let (_, seed) = Rng::from_env("CHECKER_SEED", SEED);
    // One seed for the run; each mode draws its own moments from it.
    let mut rng = Rng::new(seed ^ u64::from(mode == "buffered"));
    let _guard = SeedOnPanic(mode, seed);
    let (rounds, secs) = (env_u64("CHECKER_ROUNDS"), env_u64("CHECKER_SECS"));
    let rounds = if secs.is_some() { rounds.unwrap_or(u64::MAX) } else { rounds.unwrap_or(3) };
    let deadline = secs.map(|s| Instant::now() + Duration::from_secs(s));

    let mut site = Site::new();
    site.env.push(("DATALOOM_STORAGE__DURABILITY".into(), mode.into()));
    // Far above what a run queues, so nothing may be dropped (see common/checker.rs).
    site.env.push(("DATALOOM_MQTT__MAX_QUEUED_MESSAGES".into(), "10000000".into()));
    site.env.push(("DATALOOM_MQTT__MAX_QUEUED_BYTES".into(), "0".into()));
    let ledger = Arc::new(Mutex::new(Ledger::new(&SESSIONS)));
    let started = Instant::now();
    let mut proc = site.start().await;
    setup(proc.addr, &ledger).await;
    write_every_retained_topic(proc.addr, &ledger).await;

    let mut round = 0;
    while round < rounds && deadline.is_none_or(|d| Instant::now() < d) {
        let delay = Duration::from_millis(rng.range(30, 800));
        let gate: Gate = Arc::new(RwLock::new(true));
        let fire = Arc::new(Notify::new());
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                tokio::spawn(writer(proc.addr, w, rng.next(), ledger.clone(), gate.clone(), fire.clone()))
            })
            .collect();
        let online: Vec<_> = (0..SESSIONS.len())
            .filter(|&i| SESSIONS[i].online)
            .map(|i| tokio::spawn(online_session(proc.addr, i, rng.next(), ledger.clone(), gate.clone())))
            .collect();
        tokio::time::timeout(WAIT, fire.notified()).await.expect("a first acknowledgement in time");
        // The fault: kill -9 (or SIGTERM) at a moment drawn from the seed.
        tokio::time::sleep(delay).await;
        let dropped_before = dropped(proc.http_addr().await).await;
        // One round in four ends with a graceful stop (SIGTERM) mid-stream instead.
        let graceful = rng.next().is_multiple_of(4);
        *gate.write().await = false;
        if graceful {
            proc.stop().await;
        } else {
            proc.kill_9().await;
        }
        for t in writers {
            tokio::time::timeout(START, t).await.expect("writer ends").expect("writer");
        }
        let mut takeovers = 0;
        for t in online {
            takeovers += tokio::time::timeout(START, t).await.expect("session ends").expect("session");
        }

        proc = site.start().await;
        check(proc.addr, proc.http_addr().await, &ledger, round, dropped_before).await;
        let mut l = ledger.lock().expect("ledger");
        l.figures.rounds += 1;
        if graceful {
            l.figures.stops += 1;
        } else {
            l.figures.kills += 1;
        }
        l.figures.takeovers += takeovers;
        let how = if graceful { "SIGTERM" } else { "kill -9" };
        eprintln!(
            "checker {mode} round {round}: {how} after {delay:?}, {takeovers} takeovers; so far {}",
            l.figures
        );
        drop(l);
        round += 1;
    }
    proc.stop().await;
    let figures = ledger.lock().expect("ledger").figures.clone();
    eprintln!("checker {mode} (CHECKER_SEED={seed}) in {:.1?}: {figures}", started.elapsed());
    assert_eq!(figures.lost, 0);
}

/// Before the first fault: every retained topic gets a first, acknowledged value, so the check
/// knows how many retained messages to expect.
async fn write_every_retained_topic(addr: SocketAddr, ledger: &Mutex<Ledger>) {
    let (mut c, _) = connect_with(addr, "chk-first", |_| {}).await;
    for w in 0..WRITERS {
        for k in 0..RETAINED_PER_WRITER {
            let topic = retained_topic(w, k);
            let m = (w, ledger.lock().expect("ledger").next_seq(w));
            ledger.lock().expect("ledger").sent(m, Some(&topic));
            let mut p = publish(&topic, QoS::AtLeastOnce, 1, payload(m).as_bytes());
            p.retain = true;
            let code = send_publish(&mut c, p).await;
            assert!(code < 0x80, "{topic} refused: {code:#x}");
            ledger.lock().expect("ledger").acked(m);
        }
    }
    disconnect(c, 0, Default::default()).await;
}

/// Publisher `w`: QoS 1 messages with its window full, each retained on one of its topics or not
/// (drawn from `seed`), until the broker dies; records what it sent and what was acknowledged.
async fn writer(
    addr: SocketAddr,
    w: usize,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    gate: Gate,
    fire: Arc<Notify>,
) {
    let mut rng = Rng::new(seed);
    let c = {
        let open = gate.read().await;
        if !*open {
            return;
        }
        connect_with(addr, &format!("chk-writer-{w}"), |_| {}).await.0
    };
    let mut p = Publisher::new(c, WINDOW);
    let mut next = ledger.lock().expect("ledger").next_seq(w);
    p.run_until_closed(
        || {
            let retained = rng.next().is_multiple_of(2);
            let k = usize::try_from(rng.range(0, RETAINED_PER_WRITER as u64)).expect("small");
            let topic = if retained { retained_topic(w, k) } else { queue_topic(w) };
            let msg = (w, next);
            next += 1;
            ledger.lock().expect("ledger").sent(msg, retained.then_some(&topic));
            let mut m = publish(&topic, QoS::AtLeastOnce, 0, payload(msg).as_bytes());
            m.retain = retained;
            Some((msg, m))
        },
        |msg| {
            ledger.lock().expect("ledger").acked(msg);
            fire.notify_one();
        },
    )
    .await;
}

/// An online persistent session: receives and acknowledges; after a number of messages drawn
/// from `seed` the same client id (same identity) connects again and takes the session over,
/// and what the replaced connection still had is read (unacknowledged) until the broker closes
/// it. Runs until the broker dies; returns the takeovers.
async fn online_session(
    addr: SocketAddr,
    i: usize,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    gate: Gate,
) -> u64 {
    let s = SESSIONS[i];
    let mut rng = Rng::new(seed);
    let mut c = {
        let open = gate.read().await;
        if !*open {
            return 0;
        }
        let (c, present) = connect_session(addr, s).await;
        assert!(present, "{}: the session is present", s.id);
        c
    };
    let mut takeovers = 0;
    loop {
        let n = rng.range(50, 2000);
        match receive(&mut c, &ledger, i, Until::Count(n)).await {
            Ok(()) => {}
            Err(Ended::Closed) => return takeovers,
            Err(Ended::Silent) => panic!("{}: no delivery within {SILENCE:?} while the publishers run", s.id),
        }
        let next = {
            let open = gate.read().await;
            if !*open {
                return takeovers;
            }
            let (next, present) = connect_session(addr, s).await;
            assert!(present, "{}: takeover found the session", s.id);
            next
        };
        takeovers += 1;
        let mut old = std::mem::replace(&mut c, next);
        receive(&mut old, &ledger, i, Until::Closed).await.expect("Until::Closed ends at the close");
    }
}
