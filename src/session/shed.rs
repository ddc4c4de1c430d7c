//! Load shedding at the connection (`limits.max_memory`, issue 14): what a client sees when the
//! broker's memory account nears its budget. At [`Pressure::RefuseStored`] (95 %) a PUBLISH
//! that would be stored — QoS 1/2, or retained — is refused: v5 PUBACK/PUBREC 0x97 Quota
//! exceeded with a reason string, MQTT 3.x (no negative ack) by closing the connection, and a
//! retained QoS 0 message is dropped. An empty retained payload (a delete) always goes through. At [`Pressure::RefuseConnections`] (100 %) a CONNECT is
//! refused (see `connect.rs`). Nothing accepted before is touched: an acknowledged message is
//! never shed.

use tracing::debug;

use super::Close;
use super::conn::Conn;
use crate::metrics::reasons::ShedAction;
use crate::model::Pressure;
use crate::store::Commit;
use dataloom_codec::{Packet, Publish, QoS, reason};

/// The reason string of a refused PUBLISH.
const REFUSED: &str = "server memory is nearly full (limits.max_memory): message not accepted, retry later";

impl Conn {
    /// Answers a PUBLISH the broker sheds under memory pressure; `None` when it goes on as
    /// usual. An empty payload (a retained delete, which frees memory) is never shed.
    pub(super) fn shed_publish(&mut self, p: &Publish) -> Option<Result<(), Close>> {
        let (qos, pkid) = (p.qos, p.pkid);
        let stored = !p.payload.is_empty() && (qos != QoS::AtMostOnce || p.retain);
        if !stored || self.ctx.broker.pressure() < Pressure::RefuseStored {
            return None;
        }
        let m = crate::metrics::get();
        if qos == QoS::AtMostOnce {
            m.load_shed(ShedAction::RetainedDropped);
            debug!("retained QoS 0 PUBLISH dropped: memory nearly full");
            return Some(Ok(()));
        }
        m.load_shed(ShedAction::PublishRefused);
        self.session.qos2_abandon(pkid);
        if !self.version.is_v5() {
            debug!("PUBLISH refused, closing the 3.x connection: memory nearly full");
            return Some(Err(Close::Server(reason::QUOTA_EXCEEDED, "memory nearly full")));
        }
        debug!("PUBLISH refused with 0x97: memory nearly full");
        let kind = if qos == QoS::ExactlyOnce { Packet::PubRec } else { Packet::PubAck };
        self.ack_noted(kind, pkid, Commit::done(), reason::QUOTA_EXCEEDED, Some(REFUSED.into()));
        Some(Ok(()))
    }
}

/// True when a CONNECT must be refused because memory is full; counts it.
pub(super) fn refuse_connect(pressure: Pressure) -> bool {
    let full = pressure >= Pressure::RefuseConnections;
    if full {
        crate::metrics::get().load_shed(ShedAction::ConnectRefused);
        debug!("CONNECT refused with Server busy: memory full (limits.max_memory)");
    }
    full
}
