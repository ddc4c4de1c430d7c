//! The publishing side of QoS 1/2 flows for crash tests: a [`Publisher`] that keeps a window of
//! messages in flight, tells which were acknowledged, and resumes its flows on a new connection
//! after a restart; and [`Rng`], the seeded generator of kill points.

use std::collections::BTreeMap;

use bytes::BytesMut;
use dataloom::codec::{self, Ack, Packet, Properties, Publish, QoS};
use tokio::io::AsyncWriteExt;

use super::RawClient;

/// A message the test publishes: a tag it is known by, e.g. (topic index, value).
pub type Tag = (usize, u64);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 sent, PUBACK awaited.
    Ack,
    /// QoS 2 sent, PUBREC awaited.
    Rec,
    /// PUBREL sent, PUBCOMP awaited.
    Comp,
}

/// The connection died (the broker was killed).
#[derive(Debug)]
pub struct Closed;

/// The sender side of the QoS 1/2 flows with up to `window` messages in flight, resumable on a
/// new connection after a restart (DUP PUBLISH for what was not acknowledged, PUBREL for what
/// was received).
pub struct Publisher {
    pub c: RawClient,
    pub window: usize,
    pub inflight: BTreeMap<u16, (Tag, Publish, Stage)>,
    last_pkid: u16,
    wbuf: BytesMut,
}

impl Publisher {
    pub fn new(c: RawClient, window: usize) -> Publisher {
        Publisher { c, window, inflight: BTreeMap::new(), last_pkid: 0, wbuf: BytesMut::new() }
    }

    pub fn has_room(&self) -> bool {
        self.inflight.len() < self.window
    }

    /// Encodes `p` (QoS 1 or 2) with a free packet id into the send buffer.
    pub fn queue(&mut self, tag: Tag, mut p: Publish) {
        assert!(self.has_room());
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&self.last_pkid) {
                break;
            }
        }
        p.pkid = self.last_pkid;
        codec::encode(&Packet::Publish(p.clone()), self.c.version, &mut self.wbuf);
        let stage = if p.qos == QoS::ExactlyOnce { Stage::Rec } else { Stage::Ack };
        self.inflight.insert(p.pkid, (tag, p, stage));
    }

    /// Writes what is buffered; false when the connection is gone.
    pub async fn flush(&mut self) -> bool {
        if self.wbuf.is_empty() {
            return true;
        }
        let ok = self.c.stream.write_all(&self.wbuf).await.is_ok();
        self.wbuf.clear();
        ok
    }

    /// Handles the next packet: `Some(tag)` when that message was just acknowledged (PUBACK
    /// or PUBREC with a success code: the broker promised it is on disk); `Closed` when the
    /// connection closed or the server sent DISCONNECT.
    pub async fn step(&mut self) -> Result<Option<Tag>, Closed> {
        let Some(p) = self.c.recv().await else { return Err(Closed) };
        match p {
            Packet::PubAck(a) => match self.inflight.remove(&a.pkid) {
                Some((tag, _, Stage::Ack)) => {
                    assert!(a.code < 0x80, "publish {tag:?} refused: {a:?}");
                    Ok(Some(tag))
                }
                other => panic!("PUBACK {} for {other:?}", a.pkid),
            },
            Packet::PubRec(a) => {
                let Some((tag, _, stage)) = self.inflight.get_mut(&a.pkid) else {
                    panic!("PUBREC for unknown packet id {}", a.pkid)
                };
                assert!(a.code < 0x80, "publish {tag:?} refused: {a:?}");
                let acked = match *stage {
                    Stage::Rec => Some(*tag),
                    Stage::Comp => None,
                    Stage::Ack => panic!("PUBREC for QoS 1 message {tag:?}"),
                };
                *stage = Stage::Comp;
                let rel = Ack { pkid: a.pkid, code: 0, properties: Properties::default() };
                codec::encode(&Packet::PubRel(rel), self.c.version, &mut self.wbuf);
                Ok(acked)
            }
            Packet::PubComp(a) => match self.inflight.remove(&a.pkid) {
                Some((_, _, Stage::Comp)) => Ok(None),
                other => panic!("PUBCOMP {} for {other:?}", a.pkid),
            },
            // A graceful shutdown: v5 DISCONNECT 0x8B, then the close.
            Packet::Disconnect(_) => Err(Closed),
            other => panic!("publisher got {other:?}"),
        }
    }

    /// Keeps the window full with what `next` makes (until it returns `None`) and reports each
    /// acknowledged message to `acked`, until the connection dies (the broker was killed).
    pub async fn run_until_closed(
        &mut self,
        mut next: impl FnMut() -> Option<(Tag, Publish)>,
        mut acked: impl FnMut(Tag),
    ) {
        // Bounded: crash tests kill the broker long before.
        for _ in 0..100_000_000 {
            while self.has_room()
                && let Some((tag, m)) = next()
            {
                self.queue(tag, m);
            }
            if !self.flush().await {
                return;
            }
            match self.step().await {
                Err(Closed) => return,
                Ok(Some(tag)) => acked(tag),
                Ok(None) => {}
            }
        }
        panic!("the publisher's connection outlived 100,000,000 packets");
    }

    /// Continues the flows on `c`, a connection to the resumed session.
    pub fn resume(&mut self, c: RawClient) {
        self.c = c;
        self.wbuf.clear();
        for (&pkid, (_, p, stage)) in &self.inflight {
            if *stage == Stage::Comp {
                let rel = Ack { pkid, code: 0, properties: Properties::default() };
                codec::encode(&Packet::PubRel(rel), self.c.version, &mut self.wbuf);
            } else {
                let mut p = p.clone();
                p.dup = true;
                codec::encode(&Packet::Publish(p), self.c.version, &mut self.wbuf);
            }
        }
    }

    /// Runs the flows until nothing is in flight; returns what was acknowledged meanwhile.
    pub async fn settle(&mut self) -> Vec<Tag> {
        let mut acked = Vec::new();
        while !self.inflight.is_empty() {
            assert!(self.flush().await, "connection lost while settling");
            if let Some(t) = self.step().await.expect("connection lost while settling") {
                acked.push(t);
            }
        }
        assert!(self.flush().await, "connection lost while settling");
        acked
    }
}

/// splitmix64: fault points reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The seed in the environment variable `var` (decimal), else `default`; printed so a
    /// failing run can be repeated.
    pub fn from_env(var: &str, default: u64) -> (Rng, u64) {
        let seed = std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
        eprintln!("{var}={seed} (set it to repeat this run)");
        (Rng(seed), seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}
