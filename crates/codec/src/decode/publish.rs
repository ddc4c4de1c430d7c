//! PUBLISH (3.3) and the four publish acknowledgements PUBACK, PUBREC, PUBREL, PUBCOMP (3.4-3.7).

use super::props::{PropCtx, decode_properties};
use super::reader::Reader;
use super::{Limits, read_topic};
use crate::error::DecodeError;
use crate::packet::{Ack, ProtocolVersion, Publish, QoS};
use crate::properties::Properties;
use crate::reason;

/// Body of a PUBLISH; `byte1` carries DUP, QoS and RETAIN.
pub(crate) fn decode_publish(
    r: &mut Reader,
    byte1: u8,
    version: ProtocolVersion,
    limits: &Limits,
    from_client: bool,
) -> Result<Publish, DecodeError> {
    let dup = byte1 & 0x08 != 0;
    let retain = byte1 & 0x01 != 0;
    let qos = QoS::from_u8((byte1 >> 1) & 0x03).ok_or(DecodeError::InvalidQoS)?;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Qos0WithDup);
    }
    let topic = read_topic(r)?;
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        match r.u16()? {
            0 => return Err(DecodeError::PacketIdZero),
            id => id,
        }
    };
    let properties = if version.is_v5() {
        decode_properties(r, PropCtx::Publish { from_client }, limits)?
    } else {
        Properties::default()
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopic);
    }
    Ok(Publish { dup, qos, retain, topic, pkid, properties, payload: r.rest() })
}

/// Body of PUBACK/PUBREC/PUBREL/PUBCOMP. In v5 the reason code and properties may be omitted
/// (remaining length 2 means success, 3 means no properties).
pub(crate) fn decode_ack(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &Limits,
    packet: &'static str,
) -> Result<Ack, DecodeError> {
    let pkid = r.u16()?;
    if pkid == 0 {
        return Err(DecodeError::PacketIdZero);
    }
    let mut ack = Ack { pkid, code: reason::SUCCESS, properties: Properties::default() };
    if !version.is_v5() || r.is_empty() {
        return Ok(ack);
    }
    ack.code = r.u8()?;
    let valid = match packet {
        "PUBACK" | "PUBREC" => reason::valid_puback(ack.code),
        _ => reason::valid_pubrel(ack.code),
    };
    if !valid {
        return Err(DecodeError::InvalidReasonCode { code: ack.code, packet });
    }
    if !r.is_empty() {
        ack.properties = decode_properties(r, PropCtx::Ack(packet), limits)?;
    }
    Ok(ack)
}
