//! Answering a PUBLISH the schema step refused or annotated: MQTT 5 QoS 1/2 get a PUBACK or
//! PUBREC with the refusal's reason code and reason string; MQTT 5 QoS 0 and MQTT 3.x, which
//! have no negative ack, follow `schemas.on_invalid` (close, with DISCONNECT 0x99 and the
//! reason in v5; or drop, still acknowledging a 3.x QoS 1/2 message so it is not resent).

use tracing::{debug, info};

use super::Close;
use super::conn::Conn;
use crate::broker::gate::Refusal;
use crate::config::OnInvalid;
use crate::store::Commit;
use dataloom_codec::{Ack, Packet, Properties, QoS, encode, reason};

impl Conn {
    /// Answers a refused PUBLISH (`qos`, `pkid`); an `Err` ends the connection.
    pub(super) fn refuse_publish(&mut self, qos: QoS, pkid: u16, r: Refusal) -> Result<(), Close> {
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
                info!(reason = %r.reason, "PUBLISH refused; closing the connection (schemas.on_invalid)");
                self.session.qos2_abandon(pkid);
                self.close_reason = Some(r.reason);
                Err(Close::Server(r.code, "PUBLISH refused by the topic's JSON Schema"))
            }
        }
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
        crate::metrics::get().packet_sent(&kind(Ack { pkid, code, properties: Properties::default() }));
        self.pending.respond(commit, &mut self.wbuf, code, fail, move |c, out| {
            let reason_string = note.clone().filter(|_| c == code);
            let properties = Properties { reason_string, ..Properties::default() };
            encode(&kind(Ack { pkid, code: c, properties }), version, out);
        });
    }
}

fn ack_kind(qos: QoS) -> fn(Ack) -> Packet {
    if qos == QoS::ExactlyOnce { Packet::PubRec } else { Packet::PubAck }
}
