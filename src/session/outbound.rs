//! Messages from the broker to the client: draining the mailbox within the in-flight window,
//! packet identifiers, topic aliases towards the client, the client's Maximum Packet Size,
//! message expiry on the way out, the QoS 1/2 acknowledgement flows and DUP resend on resume.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::Ctx;
use super::pending::Pending;
use crate::broker::session::{Inflight, Outgoing, Phase, Session};
use crate::broker::{Broker, PubRecAnswer};
use crate::model::Delivery;
use crate::store::Commit;
use dataloom_codec::{
    Ack, OutgoingPublish, Packet, Properties, ProtocolVersion, QoS, encode, encode_outgoing_publish, reason,
};

/// Deliveries taken from the mailbox per lock.
const BATCH: usize = 64;
/// Stop encoding once this much output is buffered.
const OUT_FULL: usize = 64 * 1024;
/// Stop draining the mailbox while this many packets wait in [`Pending`].
const HELD_FULL: usize = 256;

/// What the client allows us to send (v5 CONNECT properties, capped by our config).
#[derive(Debug, Clone, Copy)]
pub struct OutboundLimits {
    /// Unacknowledged QoS 1/2 messages at once.
    pub window: usize,
    /// Payload and topic bytes of unacknowledged QoS 1/2 messages at once (0: no limit).
    pub window_bytes: usize,
    /// Largest packet the client accepts.
    pub max_packet: usize,
    /// Topic aliases the client accepts from us.
    pub alias_max: u16,
}

impl OutboundLimits {
    /// Limits from the client's CONNECT properties and the broker's `max_inflight_messages`.
    pub fn negotiate(ctx: &Ctx, props: &Properties) -> OutboundLimits {
        let receive_max = props.receive_maximum.unwrap_or(u16::MAX);
        OutboundLimits {
            window: usize::from(receive_max.min(ctx.mqtt.max_inflight_messages)),
            window_bytes: ctx.mqtt.max_inflight_bytes,
            max_packet: props.maximum_packet_size.map_or(usize::MAX, |m| m as usize),
            alias_max: props.topic_alias_maximum.unwrap_or(0),
        }
    }
}

/// Per-connection outbound state (what survives reconnects lives in the session).
pub struct Outbound {
    limits: OutboundLimits,
    aliases: HashMap<Arc<str>, u16>,
    batch: Vec<Delivery>,
    /// Where [`Outbound::fits`] measures a PUBLISH.
    scratch: BytesMut,
    /// Messages not sent because they exceeded the client's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Messages that expired while queued.
    pub dropped_expired: u64,
    /// The connection's permissions when it may not read everything: each delivery's topic
    /// is checked (retained messages on SUBSCRIBE, deny lists inside wider subscriptions,
    /// subscriptions a resumed session made under another key).
    pub read: Option<Arc<crate::auth::Perms>>,
    /// The session generation this connection holds.
    pub generation: u64,
    /// Stored deliveries numbered below this were queued before the connection attached:
    /// those it may not read are withheld for the session ([`Broker::withhold`]), not dropped.
    pub queued_before: u64,
}

impl Outbound {
    pub fn new(limits: OutboundLimits) -> Outbound {
        Outbound {
            limits,
            aliases: HashMap::new(),
            batch: Vec::new(),
            scratch: BytesMut::new(),
            dropped_too_large: 0,
            dropped_expired: 0,
            read: None,
            generation: 0,
            queued_before: 0,
        }
    }

    /// The largest packet the client accepts (its v5 Maximum Packet Size).
    pub fn max_packet(&self) -> usize {
        self.limits.max_packet
    }

    /// True while another QoS 1/2 message may be sent.
    pub fn has_window(&self, session: &Session) -> bool {
        !self.window_full(&session.outgoing())
    }

    /// True when the window holds `mqtt.max_inflight_messages` (or the client's Receive
    /// Maximum) or `mqtt.max_inflight_bytes`.
    fn window_full(&self, st: &Outgoing<'_>) -> bool {
        st.len() >= self.limits.window
            || (self.limits.window_bytes > 0 && st.bytes() >= self.limits.window_bytes)
    }

    /// Encodes queued deliveries into `out` until the mailbox is empty, the window is full or
    /// the output buffer is.
    pub fn drain_mailbox(
        &mut self,
        broker: &Broker,
        session: &Session,
        version: ProtocolVersion,
        pending: &mut Pending,
        out: &mut BytesMut,
    ) {
        let now = Instant::now();
        while out.len() < OUT_FULL && pending.len() < HELD_FULL {
            let mut st = session.outgoing();
            if self.window_full(&st) {
                return;
            }
            self.batch.clear();
            let room = self.limits.window - st.len();
            if session.mailbox.drain_into(&mut self.batch, BATCH, room) == 0 {
                return;
            }
            let mut batch = std::mem::take(&mut self.batch);
            let mut rest = batch.drain(..);
            // Checked per message, not per batch: a batch of large messages encoded at once
            // would hold many times OUT_FULL per connection (1,000 stalled subscribers of
            // 64 KiB messages held 4 MiB each).
            let mut over = None;
            for d in rest.by_ref() {
                if out.len() >= OUT_FULL {
                    over = Some(d);
                    break;
                }
                // A snapshot delivery was counted in its SUBACK when it had not expired.
                if !d.snapshot && d.msg.is_expired(now) {
                    self.dropped_expired += 1;
                    crate::metrics::get().dropped(crate::metrics::reasons::DropReason::Expired);
                    broker.forget(session, d.seq);
                    continue;
                }
                if let Some(p) = &self.read
                    && !p.may_read(&d.msg.topic)
                {
                    if d.seq.is_some_and(|seq| seq < self.queued_before) {
                        broker.withhold(&mut st, session, self.generation, d);
                    } else {
                        broker.drop_unreadable(session, d.seq);
                    }
                    continue;
                }
                // A stored QoS 2 delivery leaves once its packet id is on disk (see
                // `Broker::mark_inflight`); what follows it waits behind it, in order.
                let durable = d.qos == QoS::ExactlyOnce && d.seq.is_some();
                let direct = !durable && pending.is_empty();
                let mut held = BytesMut::new();
                if d.qos == QoS::AtMostOnce {
                    self.encode(&d, 0, false, version, now, if direct { &mut *out } else { &mut held });
                    if !direct {
                        pending.hold(Commit::done(), held, out);
                    }
                    continue;
                }
                let Some(pkid) = st.next_pkid() else { break };
                let phase = if d.qos == QoS::AtLeastOnce { Phase::AwaitAck } else { Phase::AwaitRec };
                if self.encode(&d, pkid, false, version, now, if direct { &mut *out } else { &mut held }) {
                    let commit = broker.mark_inflight(session, d.seq, pkid, false, durable);
                    if !direct {
                        pending.hold(commit, held, out);
                    }
                    st.push(Inflight { pkid, delivery: d, phase });
                } else {
                    broker.forget(session, d.seq);
                }
                if self.window_full(&st) {
                    break;
                }
            }
            let unsent: Vec<Delivery> = over.into_iter().chain(rest).collect();
            session.mailbox.push_front_all(unsent);
            self.batch = batch;
        }
    }

    /// Re-sends everything in flight after a session resumes: PUBLISH with DUP, or PUBREL.
    /// What the connection may not read is withheld for the session.
    pub fn resend_inflight(
        &mut self,
        broker: &Broker,
        session: &Session,
        version: ProtocolVersion,
        out: &mut BytesMut,
    ) {
        let now = Instant::now();
        let read = self.read.clone();
        let readable = |topic: &str| read.as_ref().is_none_or(|p| p.may_read(topic));
        broker.resend_inflight(session, self.generation, readable, |i| match i.phase {
            Phase::AwaitComp => {
                write_pubrel(i.pkid, reason::SUCCESS, version, out);
                true
            }
            _ => self.encode(&i.delivery, i.pkid, true, version, now, out),
        });
    }

    /// PUBREC from the client: answer PUBREL (or end the flow on a v5 error code).
    pub fn on_pubrec(
        &mut self,
        broker: &Broker,
        session: &Session,
        ack: &Ack,
        version: ProtocolVersion,
        pending: &mut Pending,
        out: &mut BytesMut,
    ) {
        match broker.outgoing_received(session, ack.pkid, ack.code) {
            PubRecAnswer::Ended => {}
            PubRecAnswer::Release(commit) => {
                let mut rel = BytesMut::new();
                write_pubrel(ack.pkid, reason::SUCCESS, version, &mut rel);
                pending.hold(commit, rel, out);
            }
            PubRecAnswer::Unknown => {
                write_pubrel(ack.pkid, reason::PACKET_IDENTIFIER_NOT_FOUND, version, out)
            }
        }
    }

    /// True when `d` fits the client's Maximum Packet Size even without a topic alias, so it
    /// is sure to be sent: a SUBACK counts only such retained messages. (An alias only makes
    /// a PUBLISH shorter, and the remaining expiry is a fixed-size property.)
    pub fn fits(&mut self, d: &Delivery, version: ProtocolVersion) -> bool {
        if self.limits.max_packet == usize::MAX {
            return true;
        }
        let p = outgoing(d, &d.msg.topic_bytes, 1, false, version, Instant::now(), None);
        self.scratch.clear();
        encode_outgoing_publish(&p, version, &mut self.scratch);
        self.scratch.len() <= self.limits.max_packet
    }

    /// Encodes one PUBLISH; returns false (and writes nothing) when it exceeds the client's
    /// Maximum Packet Size, in which case the message is dropped as the spec says.
    fn encode(
        &mut self,
        d: &Delivery,
        pkid: u16,
        dup: bool,
        version: ProtocolVersion,
        now: Instant,
        out: &mut BytesMut,
    ) -> bool {
        let mut topic: &[u8] = &d.msg.topic_bytes;
        let mut alias = None;
        let mut new_alias = None;
        if version.is_v5() {
            if let Some(&a) = self.aliases.get(&d.msg.topic) {
                alias = Some(a);
                topic = &[];
            } else if self.aliases.len() < usize::from(self.limits.alias_max) {
                let a = u16::try_from(self.aliases.len() + 1).unwrap_or(u16::MAX);
                alias = Some(a);
                new_alias = Some(a);
            }
        }
        let p = outgoing(d, topic, pkid, dup, version, now, alias);
        let start = out.len();
        encode_outgoing_publish(&p, version, out);
        if out.len() - start > self.limits.max_packet {
            out.truncate(start);
            self.dropped_too_large += 1;
            crate::metrics::get().dropped(crate::metrics::reasons::DropReason::TooLarge);
            return false;
        }
        if let Some(a) = new_alias {
            self.aliases.insert(d.msg.topic.clone(), a);
        }
        crate::metrics::get().publish_sent(d.qos);
        true
    }
}

/// The PUBLISH of delivery `d` with `topic` (empty when `alias` names it), borrowing the
/// message's properties (only v5 encodes them).
fn outgoing<'a>(
    d: &'a Delivery,
    topic: &'a [u8],
    pkid: u16,
    dup: bool,
    version: ProtocolVersion,
    now: Instant,
    alias: Option<u16>,
) -> OutgoingPublish<'a> {
    OutgoingPublish {
        dup,
        qos: d.qos,
        retain: d.retain,
        topic,
        pkid,
        forwarded: &d.msg.properties,
        subscription_identifiers: &d.sub_ids,
        message_expiry_interval: if version.is_v5() { d.msg.remaining_expiry(now) } else { None },
        topic_alias: alias,
        payload: &d.msg.payload,
    }
}

/// Writes PUBACK/PUBREC/PUBREL/PUBCOMP with `code` (codes are dropped for 3.x by the encoder).
/// Writes (and counts) a PUBREL.
fn write_pubrel(pkid: u16, code: u8, version: ProtocolVersion, out: &mut BytesMut) {
    crate::metrics::get().packets_sent[crate::metrics::pt::PUBREL].inc();
    write_ack(Packet::PubRel, pkid, code, version, out);
}

/// Not counted in `dataloom_packets_sent_total` here (a held-back ack is encoded twice); the
/// caller counts it.
pub fn write_ack(kind: fn(Ack) -> Packet, pkid: u16, code: u8, version: ProtocolVersion, out: &mut BytesMut) {
    let ack = Ack { pkid, code, properties: Properties::default() };
    encode(&kind(ack), version, out);
}
