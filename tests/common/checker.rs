//! The checker (issue 13): a [`Ledger`] of every acknowledgement the clients got, and [`check`],
//! which after a fault (kill -9 or SIGTERM and a restart, session takeovers) proves that everything
//! acknowledged is still there. `tests/checker.rs` drives it; it needs `crate::v5_util`, so a test
//! includes it with `#[path = "common/checker.rs"] mod checker;` next to `mod common; mod v5_util;`.
//!
//! What is checked, exactly:
//! - **Retained state.** Every retained topic `chk/r/W/K` has one writer `W`, whose sequence
//!   numbers only rise; every topic is written (and acknowledged) once before the first fault.
//!   After a restart the topic holds its writer's last acknowledged value or a later value that
//!   writer sent (an update in flight at the kill may or may not be stored): never an older value,
//!   never one that was not sent. What survived is the baseline for the next round.
//! - **Copies owed to persistent sessions.** Every session subscribes to `chk/#` at QoS 1 before
//!   the first fault and keeps the subscription, so every QoS 1 PUBLISH acknowledged to a publisher
//!   (retained or not) is owed to every session. After a restart each session reconnects (clean
//!   start 0) and receives and acknowledges its queue up to a marker published after everything
//!   else. An owed copy counts as delivered if the session got it at any time: online during the
//!   round, on a connection a takeover replaced, or in that drain. More deliveries of one message
//!   are duplicates (QoS 1 allows them) and are counted; an owed copy never delivered is lost, and
//!   the check fails. Every delivered message must have been sent.
//! - **Drops.** The broker may drop a copy for a documented limit (`max_queued_messages`, message
//!   expiry, ...) and count it in `dataloom_messages_dropped_total`. The checker's broker has its
//!   limits far above what a run queues and sets no message expiry, so it requires the counter to
//!   stay zero (every reason but `no_subscribers`); since the counter restarts at zero with the
//!   process, the driver reads it just before each kill ([`dropped`]) and [`check`] after the drain.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::BytesMut;
use dataloom::codec::{self, Ack, Packet, Properties, ProtocolVersion, Publish, QoS};
use tokio::io::AsyncWriteExt;

use crate::common::{RawClient, http_get};
use crate::v5_util::{connect_with, disconnect, pub1, subscribe};

/// Session expiry the persistent v5 sessions ask for.
pub const LONG: u32 = 3600;

/// What every persistent session subscribes to.
pub const FILTER: &str = "chk/#";

/// Where the marker that ends a drain goes (matches [`FILTER`], is no writer's message).
const MARKER_TOPIC: &str = "chk/marker";

/// A message: (writer, sequence number). The payload is `w{writer}-{seq}`.
pub type Msg = (usize, u64);

pub fn payload(m: Msg) -> String {
    format!("w{}-{}", m.0, m.1)
}

fn parse(p: &Publish) -> Option<Msg> {
    let s = std::str::from_utf8(&p.payload).ok()?.strip_prefix('w')?;
    let (w, seq) = s.split_once('-')?;
    Some((w.parse().ok()?, seq.parse().ok()?))
}

/// The retained topic `k` of writer `w`.
pub fn retained_topic(w: usize, k: usize) -> String {
    format!("chk/r/{w}/{k}")
}

/// The non-retained topic of writer `w`.
pub fn queue_topic(w: usize) -> String {
    format!("chk/q/{w}")
}

/// A persistent session of the run.
#[derive(Debug, Clone, Copy)]
pub struct SessionSpec {
    pub id: &'static str,
    /// v5 (clean start 0, expiry [`LONG`]) or 3.1.1 (clean session 0).
    pub version: ProtocolVersion,
    /// Connected (and taken over) while the publishers run, or offline until the check.
    pub online: bool,
}

/// Connects the persistent session `s` with clean start 0; asserts success and returns whether
/// the broker still had the session.
pub async fn connect_session(addr: SocketAddr, s: SessionSpec) -> (RawClient, bool) {
    let (c, ack) = connect_with(addr, s.id, |p| {
        p.protocol = s.version;
        p.clean_start = false;
        if s.version.is_v5() {
            p.properties.session_expiry_interval = Some(LONG);
        }
    })
    .await;
    assert_eq!(ack.code, 0, "CONNACK for {}: {ack:?}", s.id);
    (c, ack.session_present)
}

/// What a run measured; the soak prints it.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    pub rounds: u64,
    pub kills: u64,
    /// Rounds ended by SIGTERM (a graceful stop) instead of kill -9.
    pub stops: u64,
    pub takeovers: u64,
    /// Retained updates acknowledged to their writer.
    pub retained_acked: u64,
    /// Topic checks after restarts, and how many held a later, unacknowledged value.
    pub retained_checked: u64,
    pub retained_ahead: u64,
    /// Acknowledged messages times the sessions they were owed to.
    pub copies_owed: u64,
    /// Owed copies that were delivered (the rest are lost).
    pub copies_delivered: u64,
    /// PUBLISH packets the sessions received, and those beyond the first of a message.
    pub deliveries: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// `dataloom_messages_dropped_total` (all reasons but `no_subscribers`), summed over scrapes.
    pub dropped: u64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rounds {}, kills {}, graceful stops {}, takeovers {}; retained: {} updates acknowledged, {} topic checks \
             ({} held a later unacknowledged value); queued: {} copies owed, {} survived, {} \
             deliveries, {} duplicates, {} lost, {} dropped",
            self.rounds,
            self.kills,
            self.stops,
            self.takeovers,
            self.retained_acked,
            self.retained_checked,
            self.retained_ahead,
            self.copies_owed,
            self.copies_delivered,
            self.deliveries,
            self.duplicates,
            self.lost,
            self.dropped
        )
    }
}

/// A retained topic's two bounds.
#[derive(Debug, Default, Clone, Copy)]
struct Topic {
    /// The last acknowledged sequence number (or what survived the last check, if later).
    acked: u64,
    /// The highest sequence number sent.
    sent: u64,
}

/// Every acknowledgement of a run, and every delivery to its persistent sessions.
pub struct Ledger {
    sessions: Vec<SessionSpec>,
    retained: BTreeMap<String, Topic>,
    /// Highest sequence number sent per writer.
    sent: HashMap<usize, u64>,
    /// Sent and not (yet) acknowledged: the retained topic, if any.
    in_flight: HashMap<Msg, Option<String>>,
    /// Acknowledged since the last check: owed to every session.
    unchecked: Vec<Msg>,
    /// Per session and writer: how often each sequence number was delivered (saturating; dense,
    /// as a writer's sequence numbers are, so a soak of millions of messages stays small).
    received: Vec<HashMap<usize, Vec<u8>>>,
    pub figures: Figures,
}

impl Ledger {
    pub fn new(sessions: &[SessionSpec]) -> Ledger {
        Ledger {
            sessions: sessions.to_vec(),
            retained: BTreeMap::new(),
            sent: HashMap::new(),
            in_flight: HashMap::new(),
            unchecked: Vec::new(),
            received: vec![HashMap::new(); sessions.len()],
            figures: Figures::default(),
        }
    }

    /// The next sequence number of writer `w` (above everything it sent in earlier rounds).
    pub fn next_seq(&self, w: usize) -> u64 {
        self.sent.get(&w).map_or(1, |s| s + 1)
    }

    /// Writer `w` sent `m` (retained on `topic`, if given).
    pub fn sent(&mut self, m: Msg, retained: Option<&str>) {
        let s = self.sent.entry(m.0).or_insert(0);
        *s = (*s).max(m.1);
        if let Some(t) = retained {
            let e = self.retained.entry(t.to_string()).or_default();
            e.sent = e.sent.max(m.1);
        }
        self.in_flight.insert(m, retained.map(str::to_string));
    }

    /// The broker acknowledged `m` (a PUBACK with a success code).
    pub fn acked(&mut self, m: Msg) {
        let retained = self.in_flight.remove(&m).expect("acknowledged message was sent");
        self.unchecked.push(m);
        if let Some(t) = retained {
            let e = self.retained.get_mut(&t).expect("retained topic was sent to");
            e.acked = e.acked.max(m.1);
            self.figures.retained_acked += 1;
        }
    }

    /// Session `s` received `p`. Returns whether it is the marker `marker`.
    fn delivered(&mut self, s: usize, p: &Publish, marker: Option<&str>) -> bool {
        if &p.topic[..] == MARKER_TOPIC.as_bytes() {
            return marker.is_some_and(|m| &p.payload[..] == m.as_bytes());
        }
        let m = parse(p).unwrap_or_else(|| panic!("{}: unexpected PUBLISH {p:?}", self.sessions[s].id));
        assert!(
            m.1 <= self.sent.get(&m.0).copied().unwrap_or(0),
            "{}: got {} which was never sent",
            self.sessions[s].id,
            payload(m)
        );
        self.figures.deliveries += 1;
        let counts = self.received[s].entry(m.0).or_default();
        let i = usize::try_from(m.1).expect("sequence number fits");
        if counts.len() <= i {
            counts.resize(i + 1, 0);
        }
        counts[i] = counts[i].saturating_add(1);
        if counts[i] > 1 {
            self.figures.duplicates += 1;
        }
        false
    }

    /// Whether session `s` got `m` at least once.
    fn got(&self, s: usize, m: Msg) -> bool {
        let i = usize::try_from(m.1).expect("sequence number fits");
        self.received[s].get(&m.0).and_then(|c| c.get(i)).is_some_and(|n| *n > 0)
    }
}

/// When [`receive`] stops.
pub enum Until<'a> {
    /// After this many PUBLISHes.
    Count(u64),
    /// At the marker with this payload.
    Marker(&'a str),
    /// When the server closes the connection (the PUBLISHes are recorded, not acknowledged).
    Closed,
}

/// Why [`receive`] stopped early.
#[derive(Debug)]
pub enum Ended {
    /// The connection closed (the broker was killed).
    Closed,
    /// Nothing arrived for [`SILENCE`].
    Silent,
}

/// How long [`receive`] waits for a packet (shorter than [`crate::common::WAIT`], the client's own bound, so the
/// caller can say what is missing).
pub const SILENCE: Duration = Duration::from_millis(2500);

/// Receives on session `s`'s connection, recording each PUBLISH in the ledger and (unless
/// `until` is [`Until::Closed`]) acknowledging it, until `until`. A v5 DISCONNECT (a takeover)
/// is read past.
pub async fn receive(
    c: &mut RawClient,
    ledger: &Mutex<Ledger>,
    s: usize,
    until: Until<'_>,
) -> Result<(), Ended> {
    let mut got = 0;
    let marker = if let Until::Marker(m) = until { Some(m) } else { None };
    loop {
        if matches!(until, Until::Count(n) if got >= n) {
            return Ok(());
        }
        let Ok(next) = tokio::time::timeout(SILENCE, c.recv()).await else { return Err(Ended::Silent) };
        match next {
            None => return if matches!(until, Until::Closed) { Ok(()) } else { Err(Ended::Closed) },
            Some(Packet::Publish(p)) => {
                assert_eq!(p.qos, QoS::AtLeastOnce, "delivered at the subscription's QoS 1: {p:?}");
                let is_marker = ledger.lock().expect("ledger").delivered(s, &p, marker);
                if !matches!(until, Until::Closed) && !puback(c, p.pkid).await {
                    return Err(Ended::Closed);
                }
                got += 1;
                if is_marker {
                    return Ok(());
                }
            }
            Some(Packet::Disconnect(_)) => {}
            Some(other) => panic!("session {s} got {other:?}"),
        }
    }
}

/// Sends PUBACK; false if the connection is gone (the broker may be killed at any moment).
async fn puback(c: &mut RawClient, pkid: u16) -> bool {
    let mut out = BytesMut::new();
    let ack = Ack { pkid, code: 0, properties: Properties::default() };
    codec::encode(&Packet::PubAck(ack), c.version, &mut out);
    c.stream.write_all(&out).await.is_ok()
}

/// Reads `dataloom_messages_dropped_total` (every reason but `no_subscribers`) from `/metrics`.
pub async fn dropped(http: SocketAddr) -> u64 {
    let (status, body) = http_get(http, "/metrics").await;
    assert_eq!(status, 200, "/metrics: {body}");
    body.lines()
        .filter(|l| l.starts_with("dataloom_messages_dropped_total{") && !l.contains("no_subscribers"))
        .map(|l| {
            let v = l.rsplit(' ').next().expect("sample value");
            v.parse::<f64>().unwrap_or_else(|_| panic!("sample value in {l:?}")) as u64
        })
        .sum()
}

/// Subscribes every session to [`FILTER`] and leaves it offline; before the first round.
pub async fn setup(addr: SocketAddr, ledger: &Mutex<Ledger>) {
    let sessions = ledger.lock().expect("ledger").sessions.clone();
    for s in sessions {
        let (mut c, _) = connect_session(addr, s).await;
        subscribe(&mut c, 1, FILTER, QoS::AtLeastOnce).await;
        disconnect(c, 0, Default::default()).await;
    }
}

/// After a restart: the retained state (`topics` retained topics) and every session's queue
/// against the ledger, as the module header defines; `dropped_before_kill` is what
/// [`dropped`] read before the kill. Panics on the first thing lost.
pub async fn check(
    addr: SocketAddr,
    http: SocketAddr,
    ledger: &Mutex<Ledger>,
    round: u64,
    dropped_before_kill: u64,
) {
    // Retained state, from a fresh subscriber.
    let topics = ledger.lock().expect("ledger").retained.len();
    let (mut r, _) = connect_with(addr, &format!("chk-read-{round}"), |_| {}).await;
    subscribe(&mut r, 1, "chk/r/#", QoS::AtMostOnce).await;
    let mut state = BTreeMap::new();
    while state.len() < topics {
        let Ok(next) = tokio::time::timeout(SILENCE, r.recv()).await else {
            let l = ledger.lock().expect("ledger");
            let missing: Vec<(&String, u64)> = l
                .retained
                .iter()
                .filter(|(t, _)| !state.contains_key(*t))
                .map(|(t, v)| (t, v.acked))
                .collect();
            panic!(
                "round {round}: retained topics gone after kill -9 (topic, acknowledged value): {missing:?}"
            )
        };
        match next {
            Some(Packet::Publish(p)) => {
                assert!(p.retain, "round {round}: retained message without the retain flag: {p:?}");
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let m = parse(&p).unwrap_or_else(|| panic!("round {round}: retained {topic} holds {p:?}"));
                assert!(
                    state.insert(topic.clone(), m).is_none(),
                    "round {round}: retained {topic} sent twice"
                );
            }
            other => panic!("round {round}: expected retained PUBLISH, got {other:?} after {}", state.len()),
        }
    }
    disconnect(r, 0, Default::default()).await;
    {
        let mut l = ledger.lock().expect("ledger");
        let l = &mut *l;
        for (topic, t) in l.retained.iter_mut() {
            let Some(&(w, v)) = state.get(topic) else {
                panic!("round {round}: retained {topic} is gone after kill -9 ({} was acknowledged)", t.acked)
            };
            assert!(
                topic.starts_with(&format!("chk/r/{w}/")),
                "round {round}: {topic} holds writer {w}'s value"
            );
            assert!(
                v >= t.acked,
                "round {round}: {topic} holds {v} after kill -9, but {} was acknowledged",
                t.acked
            );
            assert!(v <= t.sent, "round {round}: {topic} holds {v}, never sent");
            l.figures.retained_checked += 1;
            l.figures.retained_ahead += u64::from(v > t.acked);
            t.acked = v;
        }
    }

    // Queues: a marker behind everything owed, then each session drains up to it.
    let marker = format!("marker-{round}");
    let (mut m, _) = connect_with(addr, &format!("chk-marker-{round}"), |_| {}).await;
    let code = pub1(&mut m, 1, MARKER_TOPIC, marker.as_bytes()).await;
    assert!(code < 0x80, "marker refused: {code:#x}");
    disconnect(m, 0, Default::default()).await;
    let sessions = ledger.lock().expect("ledger").sessions.clone();
    for (i, s) in sessions.iter().enumerate() {
        let (mut c, present) = connect_session(addr, *s).await;
        assert!(present, "round {round}: {}'s persistent session survived kill -9", s.id);
        if let Err(e) = receive(&mut c, ledger, i, Until::Marker(&marker)).await {
            let dropped_now = dropped(http).await;
            panic!(
                "round {round}: {}: the drain ended before the marker ({e:?}); \
                 {dropped_before_kill} dropped before the kill, {dropped_now} after the restart",
                s.id
            )
        }
        disconnect(c, 0, Default::default()).await;
    }
    let dropped_now = dropped(http).await;
    let mut l = ledger.lock().expect("ledger");
    let l = &mut *l;
    l.figures.dropped += dropped_before_kill + dropped_now;
    for (i, s) in l.sessions.iter().enumerate() {
        let mut lost: Vec<String> =
            l.unchecked.iter().filter(|m| !l.got(i, **m)).map(|m| payload(*m)).collect();
        l.figures.copies_owed += l.unchecked.len() as u64;
        l.figures.copies_delivered += (l.unchecked.len() - lost.len()) as u64;
        l.figures.lost += lost.len() as u64;
        lost.truncate(20);
        assert!(
            lost.is_empty(),
            "round {round}: {}: acknowledged messages never delivered (first 20): {lost:?}; \
             {dropped_before_kill} dropped before the kill, {dropped_now} after the restart",
            s.id
        );
    }
    assert_eq!(
        (dropped_before_kill, dropped_now),
        (0, 0),
        "round {round}: the broker dropped messages (before the kill, after the restart) although its limits are far above the run"
    );
    l.unchecked.clear();
    // What was in flight at the kill is never acknowledged (the publishers start clean).
    l.in_flight.clear();
}
