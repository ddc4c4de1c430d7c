//! A session's outgoing window: the QoS 1/2 messages sent and awaiting their acks, in send
//! order, and which packet ids they hold.
//!
//! Finding a free packet id must not cost a scan of the window per message once the window is
//! large (`mqtt.max_inflight_messages` in the thousands): above [`INDEXED_FROM`] messages the
//! window keeps a bit per packet id (8 KiB), dropped again when it empties, so idle and
//! lightly loaded sessions pay nothing for it.

use std::collections::VecDeque;

use super::session::Inflight;

/// From this many messages in flight on, packet ids are looked up in a bitmap.
const INDEXED_FROM: usize = 32;
/// Words of the bitmap: one bit for each packet id 0..=65535.
const WORDS: usize = 65536 / 64;

/// Messages in flight, in send order, with their packet ids.
#[derive(Debug, Default)]
pub(super) struct Window {
    sent: VecDeque<Inflight>,
    /// Payload and topic bytes of the messages in flight (`mqtt.max_inflight_bytes`).
    bytes: usize,
    /// One bit per packet id in use, while the window holds [`INDEXED_FROM`] or more.
    ids: Option<Box<[u64; WORDS]>>,
}

impl Window {
    /// Messages in flight.
    pub(super) fn len(&self) -> usize {
        self.sent.len()
    }

    /// Payload and topic bytes in flight.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when nothing is in flight.
    pub(super) fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// The messages in send order.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Inflight> {
        self.sent.iter()
    }

    /// True when a message in flight holds `pkid`.
    pub(super) fn holds(&self, pkid: u16) -> bool {
        match &self.ids {
            Some(bits) => bits[usize::from(pkid) / 64] & (1 << (pkid % 64)) != 0,
            None => self.sent.iter().any(|i| i.pkid == pkid),
        }
    }

    /// Appends a message just sent.
    pub(super) fn push_back(&mut self, i: Inflight) {
        self.mark(i.pkid, true);
        self.bytes += weight(&i);
        self.sent.push_back(i);
        self.index_if_large();
    }

    /// Puts a message back at the front (sent before everything in the window).
    pub(super) fn push_front(&mut self, i: Inflight) {
        self.mark(i.pkid, true);
        self.bytes += weight(&i);
        self.sent.push_front(i);
        self.index_if_large();
    }

    /// The position of the first message `pick` accepts.
    pub(super) fn position(&self, pick: impl FnMut(&Inflight) -> bool) -> Option<usize> {
        self.sent.iter().position(pick)
    }

    /// The message at `pos`, to change its phase (never its packet id).
    pub(super) fn phase_mut(&mut self, pos: usize) -> Option<&mut Inflight> {
        self.sent.get_mut(pos)
    }

    /// Takes the message at `pos` out of the window.
    pub(super) fn remove(&mut self, pos: usize) -> Option<Inflight> {
        let i = self.sent.remove(pos)?;
        self.mark(i.pkid, false);
        self.bytes -= weight(&i);
        self.unindex_if_empty();
        Some(i)
    }

    /// Keeps only the messages `keep` accepts.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Inflight) -> bool) {
        let mut freed = Vec::new();
        self.sent.retain(|i| {
            let kept = keep(i);
            if !kept {
                freed.push((i.pkid, weight(i)));
            }
            kept
        });
        for (pkid, w) in freed {
            self.mark(pkid, false);
            self.bytes -= w;
        }
        self.unindex_if_empty();
    }

    /// Takes everything, in send order.
    pub(super) fn take_all(&mut self) -> Vec<Inflight> {
        self.ids = None;
        self.bytes = 0;
        self.sent.drain(..).collect()
    }

    fn mark(&mut self, pkid: u16, used: bool) {
        if let Some(bits) = &mut self.ids {
            let (word, bit) = (usize::from(pkid) / 64, 1u64 << (pkid % 64));
            if used {
                bits[word] |= bit;
            } else {
                bits[word] &= !bit;
            }
        }
    }

    fn index_if_large(&mut self) {
        if self.ids.is_none() && self.sent.len() >= INDEXED_FROM {
            let mut bits = Box::new([0u64; WORDS]);
            for i in &self.sent {
                bits[usize::from(i.pkid) / 64] |= 1 << (i.pkid % 64);
            }
            self.ids = Some(bits);
        }
    }

    fn unindex_if_empty(&mut self) {
        if self.sent.is_empty() {
            self.ids = None;
        }
    }
}

/// Bytes a message in flight counts against `mqtt.max_inflight_bytes`.
fn weight(i: &Inflight) -> usize {
    i.delivery.msg.payload.len() + i.delivery.msg.topic_bytes.len()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::broker::session::Phase;
    use crate::model::{Delivery, Message};
    use dataloom_codec::QoS;

    fn sent(pkid: u16) -> Inflight {
        let msg = Arc::new(Message {
            topic: Arc::from("t"),
            topic_bytes: bytes::Bytes::from_static(b"t"),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
            charge: Default::default(),
            stamp: Default::default(),
        });
        let delivery = Delivery {
            msg,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            seq: None,
            share: None,
            snapshot: false,
        };
        Inflight { pkid, delivery, phase: Phase::AwaitAck }
    }

    #[test]
    fn ids_are_known_below_and_above_the_index_threshold() {
        let mut w = Window::default();
        for pkid in 1..=100 {
            w.push_back(sent(pkid));
            assert!(w.holds(pkid));
            assert!(!w.holds(pkid + 1));
        }
        assert!(w.ids.is_some(), "indexed once large");
        let pos = w.position(|i| i.pkid == 50).expect("in the window");
        assert_eq!(w.remove(pos).map(|i| i.pkid), Some(50));
        assert!(!w.holds(50) && w.holds(51));
        w.retain(|i| i.pkid % 2 == 0);
        assert!(!w.holds(51) && w.holds(52));
        w.push_front(sent(7));
        assert!(w.holds(7));
        assert_eq!(w.iter().next().map(|i| i.pkid), Some(7));
        assert_eq!(w.bytes(), 50, "one byte of topic each");
        let all = w.take_all();
        assert_eq!(all.len(), 50);
        assert!(w.is_empty() && w.ids.is_none() && !w.holds(52) && w.bytes() == 0);
    }

    #[test]
    fn the_index_is_dropped_when_the_window_empties() {
        let mut w = Window::default();
        for pkid in 1..=40 {
            w.push_back(sent(pkid));
        }
        while let Some(pos) = w.position(|_| true) {
            w.remove(pos);
        }
        assert!(w.ids.is_none());
        assert!(!w.holds(1));
    }
}
