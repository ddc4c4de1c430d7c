//! Answering a PUBLISH the schema step refused or annotated: MQTT 5 QoS 1/2 get a PUBACK or
//! PUBREC with the refusal's reason code and reason string; MQTT 5 QoS 0 and MQTT 3.x, which
//! have no negative ack, follow `schemas.on_invalid` (close, with DISCONNECT 0x99 and the
//! reason in v5; or drop, still acknowledging a 3.x QoS 1/2 message so it is not resent).
//! A close is logged at warn with the topic, the refusal (schema, version, JSON Pointer of the
//! field, what failed) and how to change the behaviour (decision 10 in docs/decisions.md).
//! Also a PUBLISH whose well-formed topic name the server does not accept (0x90).

use tracing::{debug, warn};

use super::conn::Conn;
use super::{Close, Violation};
use crate::broker::gate::Refusal;
use crate::config::OnInvalid;
use crate::metrics::reasons::DropReason;
use crate::store::Commit;
use dataloom_codec::topic::TopicError;
use dataloom_codec::{Ack, Packet, Properties, ProtocolVersion, QoS, encode, reason};

impl Conn {
    /// Answers a refused PUBLISH to `topic` (`qos`, `pkid`); an `Err` ends the connection.
    pub(super) fn refuse_publish(
        &mut self,
        topic: &str,
        qos: QoS,
        pkid: u16,
        r: Refusal,
    ) -> Result<(), Close> {
        let v5 = self.version.is_v5();
        if v5 && qos != QoS::AtMostOnce {
            debug!(code = r.code, reason = %r.reason, "PUBLISH refused");
            self.session.qos2_abandon(pkid);
            self.ack_noted(ack_kind(qos), pkid, Commit::done(), r.code, Some(r.reason));
            return Ok(());
        }
        match self.ctx.schemas.on_invalid() {
            OnInvalid::Drop => {
                debug!(reason = %r.reason, "PUBLISH refused and dropped");
                if qos != QoS::AtMostOnce {
                    // 3.x: acknowledge so the client does not resend; the QoS 2 id stays
                    // known so its PUBREL completes.
                    self.ack_noted(ack_kind(qos), pkid, Commit::done(), reason::SUCCESS, None);
                }
                Ok(())
            }
            OnInvalid::Disconnect => {
                let (no_nack, told) = match self.version {
                    ProtocolVersion::V5 => (
                        "MQTT 5 QoS 0 has no acknowledgement",
                        "the client got DISCONNECT 0x99 with this reason",
                    ),
                    ProtocolVersion::V3_1 => {
                        ("MQTT 3.1 has no negative acknowledgement", "the client sees the connection closed")
                    }
                    ProtocolVersion::V3_1_1 => (
                        "MQTT 3.1.1 has no negative acknowledgement",
                        "the client sees the connection closed",
                    ),
                };
                warn!(
                    "PUBLISH to {topic} refused: {}; closing the connection: {no_nack} and \
                     schemas.on_invalid = \"disconnect\" ({told}). Set schemas.on_invalid = \"drop\" \
                     (DATALOOM_SCHEMAS__ON_INVALID=drop) to drop such messages and keep the connection, \
                     or publish with MQTT 5 at QoS 1 to get PUBACK 0x99 with this reason",
                    r.reason
                );
                self.session.qos2_abandon(pkid);
                self.close_reason = Some(r.reason);
                Err(Close::Server(r.code, "PUBLISH refused by the topic's JSON Schema"))
            }
        }
    }

    /// Answers a PUBLISH whose topic name the server does not accept (over
    /// `mqtt.max_topic_levels`, or in `$share/`): v5 QoS 1/2 get PUBACK/PUBREC 0x90 Topic Name
    /// invalid with the reason and the connection stays; a PUBLISH no ack can refuse (v5 QoS 0,
    /// 3.x) closes it (v5: DISCONNECT 0x90), as the name was not malformed but cannot be taken.
    /// Called before anything of the message (its QoS 2 id included) is recorded.
    pub(super) fn refuse_topic_name(&mut self, qos: QoS, pkid: u16, e: TopicError) -> Result<(), Close> {
        crate::metrics::get().dropped(DropReason::TopicInvalid);
        debug!(error = %e, "PUBLISH refused: topic name not accepted");
        if self.version.is_v5() && qos != QoS::AtMostOnce {
            let note = Some(e.to_string());
            self.ack_noted(ack_kind(qos), pkid, Commit::done(), reason::TOPIC_NAME_INVALID, note);
            return Ok(());
        }
        Err(Close::Protocol(Violation::TopicNameNotAccepted(e)))
    }

    /// Sends an ack with `code` once `commit` is durable, with `note` as its v5 reason string
    /// unless the client asked for no problem information (a failed commit is answered like
    /// [`Conn::ack`](super::conn::Conn) does: 0x80 in v5, close in 3.x).
    pub(super) fn ack_noted(
        &mut self,
        kind: fn(Ack) -> Packet,
        pkid: u16,
        commit: Commit,
        code: u8,
        note: Option<String>,
    ) {
        let version = self.version;
        let fail = version.is_v5().then_some(reason::UNSPECIFIED_ERROR);
        let note = note.filter(|_| self.problem_info && version.is_v5());
        let note = note.and_then(|n| fitting_reason(n, self.out.max_packet()));
        crate::metrics::get().packet_sent(&kind(Ack { pkid, code, properties: Properties::default() }));
        self.pending.respond(commit, &mut self.wbuf, code, fail, move |c, out| {
            let reason_string = note.clone().filter(|_| c == code);
            let properties = Properties { reason_string, ..Properties::default() };
            encode(&kind(Ack { pkid, code: c, properties }), version, out);
        });
    }
}

/// Room an ack needs besides its reason string: fixed header (up to 5 bytes), packet id,
/// reason code, property length (up to 4) and the property's id and length prefix.
const ACK_OVERHEAD: usize = 5 + 2 + 1 + 4 + 3;

/// A reason string the broker may send: cut to the 65,535 bytes of a UTF-8 string (at a
/// character boundary) [MQTT-1.5.4-1], and left out when the ack would exceed the client's
/// Maximum Packet Size [MQTT-3.4.2-2].
pub(super) fn fitting_reason(mut note: String, max_packet: usize) -> Option<String> {
    if note.len() > usize::from(u16::MAX) {
        let mut end = usize::from(u16::MAX);
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    (note.len() + ACK_OVERHEAD <= max_packet).then_some(note)
}

fn ack_kind(qos: QoS) -> fn(Ack) -> Packet {
    if qos == QoS::ExactlyOnce { Packet::PubRec } else { Packet::PubAck }
}

#[cfg(test)]
mod tests {
    use super::fitting_reason;

    #[test]
    fn reason_strings_fit_the_wire_and_the_client() {
        let long = "é".repeat(40_000);
        let cut = fitting_reason(long, usize::MAX).expect("kept");
        assert!(cut.len() <= 65_535 && cut.len() >= 65_534, "{}", cut.len());
        assert!(fitting_reason("x".repeat(100), 50).is_none(), "over the client's Maximum Packet Size");
        assert_eq!(fitting_reason("ok".into(), 100).as_deref(), Some("ok"));
    }
}
