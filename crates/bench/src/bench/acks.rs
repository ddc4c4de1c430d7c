//! The QoS 1 and QoS 2 acknowledgement flows of the generator's client: the four ack frames
//! (PUBACK, PUBREC, PUBREL, PUBCOMP) encoded once by dataloom's codec and patched with the
//! packet id; a publisher's in-flight table (QoS 1: PUBLISH -> PUBACK; QoS 2: PUBLISH -> PUBREC,
//! answered with PUBREL -> PUBCOMP frees the slot); and a subscriber's QoS 2 messages received
//! but not yet released (PUBLISH -> PUBREC, then PUBREL -> PUBCOMP), which tells a new message
//! from a resend and from a packet id reused before its PUBREL.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;

use bytes::BytesMut;
use dataloom_codec::{Ack, Packet, Properties, QoS, encode};

use super::client::{V, proto_err};

/// The four publish acknowledgements, named by what they say about the PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// PUBACK (QoS 1).
    Acked,
    /// PUBREC (QoS 2, first step).
    Received,
    /// PUBREL (QoS 2, the publisher's answer to PUBREC).
    Release,
    /// PUBCOMP (QoS 2, last step).
    Complete,
}

/// The ack frames, each encoded once; [`AckFrames::put`] copies one and patches its packet id
/// (the last two bytes in MQTT 3.1.1).
pub struct AckFrames([Vec<u8>; 4]);

impl AckFrames {
    pub fn new() -> Self {
        let frame = |kind| {
            let ack = Ack { pkid: 1, code: 0, properties: Properties::default() };
            let p = match kind {
                AckKind::Acked => Packet::PubAck(ack),
                AckKind::Received => Packet::PubRec(ack),
                AckKind::Release => Packet::PubRel(ack),
                AckKind::Complete => Packet::PubComp(ack),
            };
            let mut b = BytesMut::new();
            encode(&p, V, &mut b);
            b.to_vec()
        };
        use AckKind::*;
        AckFrames([frame(Acked), frame(Received), frame(Release), frame(Complete)])
    }

    /// Appends the `kind` ack of packet id `pkid` to `out`.
    pub fn put(&self, out: &mut BytesMut, kind: AckKind, pkid: u16) {
        let frame = &self.0[kind as usize];
        out.extend_from_slice(frame);
        let end = out.len();
        out[end - 2..].copy_from_slice(&pkid.to_be_bytes());
    }
}

impl Default for AckFrames {
    fn default() -> Self {
        AckFrames::new()
    }
}

/// Where one packet id of a publisher stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Free,
    /// PUBLISH sent, PUBACK (QoS 1) or PUBREC (QoS 2) awaited.
    Published,
    /// QoS 2: PUBREC received and PUBREL sent, PUBCOMP awaited.
    Released,
}

/// A publisher's packet ids in flight at one QoS (1 or 2), with their send times if timed.
pub struct InFlight {
    qos: QoS,
    stage: Vec<Stage>,
    sent_at: Vec<u64>,
    len: u32,
    frames: AckFrames,
}

impl InFlight {
    /// `timed`: keep each message's send time (for [`InFlight::sent_at`]).
    pub fn new(qos: QoS, timed: bool) -> Self {
        let sent_at = if timed { vec![0; 65_536] } else { Vec::new() };
        InFlight { qos, stage: vec![Stage::Free; 65_536], sent_at, len: 0, frames: AckFrames::new() }
    }

    /// Messages whose exchange is not complete (the in-flight window they fill).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Records PUBLISH `pkid`, sent at `ts`.
    pub fn publish(&mut self, pkid: u16, ts: u64) {
        let i = usize::from(pkid);
        debug_assert_eq!(self.stage[i], Stage::Free, "packet id {pkid} reused while in flight");
        self.stage[i] = Stage::Published;
        if let Some(t) = self.sent_at.get_mut(i) {
            *t = ts;
        }
        self.len += 1;
    }

    /// When PUBLISH `pkid` was sent (0 when not timed).
    pub fn sent_at(&self, pkid: u16) -> u64 {
        self.sent_at.get(usize::from(pkid)).copied().unwrap_or(0)
    }

    /// Handles one packet from the broker; a PUBREC is answered by appending PUBREL to `out`.
    /// Returns the packet id whose exchange completed (PUBACK, PUBCOMP). An ack the exchange
    /// does not expect, or a PUBREC with a failure reason code (>= 0x80), is an error.
    pub fn on_packet(&mut self, p: &Packet, out: &mut BytesMut) -> io::Result<Option<u16>> {
        let exactly_once = self.qos == QoS::ExactlyOnce;
        match p {
            Packet::PubAck(a) if !exactly_once => self.complete(a.pkid, Stage::Published, "PUBACK"),
            Packet::PubRec(a) if exactly_once => {
                if a.code >= 0x80 {
                    return Err(proto_err(format!(
                        "PUBREC refused packet id {}: reason {:#04x}",
                        a.pkid, a.code
                    )));
                }
                self.expect(a.pkid, Stage::Published, "PUBREC")?;
                self.stage[usize::from(a.pkid)] = Stage::Released;
                self.frames.put(out, AckKind::Release, a.pkid);
                Ok(None)
            }
            Packet::PubComp(a) if exactly_once => self.complete(a.pkid, Stage::Released, "PUBCOMP"),
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {
                Err(proto_err(format!("{} for a QoS {} PUBLISH", p.name(), self.qos as u8)))
            }
            _ => Ok(None),
        }
    }

    fn expect(&self, pkid: u16, stage: Stage, what: &str) -> io::Result<()> {
        if self.stage[usize::from(pkid)] == stage {
            return Ok(());
        }
        Err(proto_err(format!("{what} for packet id {pkid} not awaiting it")))
    }

    fn complete(&mut self, pkid: u16, stage: Stage, what: &str) -> io::Result<Option<u16>> {
        self.expect(pkid, stage, what)?;
        self.stage[usize::from(pkid)] = Stage::Free;
        self.len -= 1;
        Ok(Some(pkid))
    }
}

/// How a QoS 2 PUBLISH relates to the messages awaiting PUBREL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Its packet id awaits no PUBREL: a delivery.
    New,
    /// It resends the message awaiting PUBREL under its packet id: the same delivery.
    Resent,
    /// Its packet id awaits PUBREL for another message: the sender reused the id before the
    /// exchange completed. A receiver must take it as a resend (MQTT 4.3.3), so the message is
    /// not delivered: it counts as lost.
    Reused,
}

/// A subscriber's QoS 2 messages received (PUBREC sent) and not yet released by PUBREL, by
/// packet id, with the (publisher, sequence number) each carried.
#[derive(Default)]
pub struct Unreleased(HashMap<u16, (u32, u32)>);

impl Unreleased {
    /// A QoS 2 PUBLISH `pkid` carrying message `msg` (answered with PUBREC in every case).
    pub fn publish(&mut self, pkid: u16, msg: (u32, u32)) -> Arrival {
        match self.0.entry(pkid) {
            Entry::Vacant(e) => {
                e.insert(msg);
                Arrival::New
            }
            Entry::Occupied(e) if *e.get() == msg => Arrival::Resent,
            Entry::Occupied(_) => Arrival::Reused,
        }
    }

    /// A PUBREL for `pkid` (answered with PUBCOMP in every case): `false` when no message
    /// awaited it.
    pub fn release(&mut self, pkid: u16) -> bool {
        self.0.remove(&pkid).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataloom_codec::{Limits, decode, decode_from_server};

    /// Decodes one packet sent by the broker.
    fn from_broker(bytes: &[u8]) -> Packet {
        let mut b = BytesMut::from(bytes);
        decode_from_server(&mut b, V, &Limits::default()).expect("valid").expect("whole packet")
    }

    #[test]
    fn ack_frames_encode_each_kind_with_its_packet_id() {
        let frames = AckFrames::new();
        let mut out = BytesMut::new();
        frames.put(&mut out, AckKind::Release, 0x1234);
        frames.put(&mut out, AckKind::Complete, 7);
        frames.put(&mut out, AckKind::Received, 65_535);
        assert_eq!(&out[..], &[0x62, 2, 0x12, 0x34, 0x70, 2, 0, 7, 0x50, 2, 0xff, 0xff]);
        // The broker's decoder reads them back as sent.
        let mut got = Vec::new();
        while let Some(p) = decode(&mut out, Some(V), &Limits::default()).expect("valid") {
            got.push(p);
        }
        assert!(matches!(&got[0], Packet::PubRel(a) if a.pkid == 0x1234));
        assert!(matches!(&got[1], Packet::PubComp(a) if a.pkid == 7));
        assert!(matches!(&got[2], Packet::PubRec(a) if a.pkid == 65_535));
    }

    #[test]
    fn qos2_publisher_releases_on_pubrec_and_frees_on_pubcomp() {
        let mut f = InFlight::new(QoS::ExactlyOnce, true);
        let mut out = BytesMut::new();
        f.publish(5, 1_000);
        f.publish(6, 2_000);
        assert_eq!(f.on_packet(&from_broker(&[0x50, 2, 0, 5]), &mut out).unwrap(), None);
        assert_eq!(&out[..], &[0x62, 2, 0, 5], "PUBREC answered with PUBREL");
        assert_eq!(f.len(), 2, "a released message still fills its slot");
        assert_eq!(f.on_packet(&from_broker(&[0x70, 2, 0, 5]), &mut out).unwrap(), Some(5));
        assert_eq!((f.len(), f.sent_at(5)), (1, 1_000));
        // PUBCOMP before PUBREC, a second PUBCOMP, PUBACK at QoS 2: protocol errors.
        assert!(f.on_packet(&from_broker(&[0x70, 2, 0, 6]), &mut out).is_err());
        assert!(f.on_packet(&from_broker(&[0x70, 2, 0, 5]), &mut out).is_err());
        assert!(f.on_packet(&from_broker(&[0x40, 2, 0, 6]), &mut out).is_err());
        assert_eq!(out.len(), 4, "no PUBREL for the rejected acks");
    }

    #[test]
    fn refused_pubrec_is_an_error() {
        let mut f = InFlight::new(QoS::ExactlyOnce, false);
        f.publish(9, 0);
        let refused = Packet::PubRec(Ack { pkid: 9, code: 0x97, properties: Properties::default() });
        let err = f.on_packet(&refused, &mut BytesMut::new()).unwrap_err();
        assert!(err.to_string().contains("0x97"), "{err}");
    }

    #[test]
    fn qos1_publisher_frees_on_puback_only() {
        let mut f = InFlight::new(QoS::AtLeastOnce, false);
        let mut out = BytesMut::new();
        f.publish(3, 0);
        assert!(f.on_packet(&from_broker(&[0x50, 2, 0, 3]), &mut out).is_err(), "PUBREC at QoS 1");
        assert_eq!(f.on_packet(&from_broker(&[0x40, 2, 0, 3]), &mut out).unwrap(), Some(3));
        assert_eq!(f.len(), 0);
        assert!(f.on_packet(&from_broker(&[0x40, 2, 0, 3]), &mut out).is_err(), "PUBACK twice");
    }

    #[test]
    fn unreleased_tells_new_messages_from_resends_and_reused_ids() {
        let mut u = Unreleased::default();
        assert_eq!(u.publish(1, (0, 10)), Arrival::New);
        assert_eq!(u.publish(1, (0, 10)), Arrival::Resent, "resend before PUBREL");
        assert_eq!(u.publish(1, (0, 11)), Arrival::Reused, "packet id reused before PUBREL");
        assert!(u.release(1));
        assert!(!u.release(1), "PUBREL twice");
        // After PUBREL a new delivery, even of the same message (the tracker counts it twice).
        assert_eq!(u.publish(1, (0, 10)), Arrival::New);
    }
}
