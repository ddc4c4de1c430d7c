//! CONNECT (3.1) and CONNACK (3.2) for MQTT 3.1 (`MQIsdp`/3), 3.1.1 (`MQTT`/4) and 5.0 (`MQTT`/5).

use super::props::{PropCtx, decode_properties};
use super::reader::Reader;
use super::{Limits, read_topic};
use crate::error::DecodeError;
use crate::packet::{ConnAck, Connect, LastWill, Packet, ProtocolVersion, QoS};
use crate::properties::Properties;
use crate::reason;

/// Body of a CONNECT. Name and level are checked first so that an unsupported protocol level
/// is reported as such even when the rest would not parse.
pub(crate) fn decode_connect(r: &mut Reader, limits: &Limits) -> Result<Packet, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp" | b"MQTT", level) => {
            return Err(DecodeError::UnsupportedProtocolLevel { level });
        }
        _ => return Err(DecodeError::InvalidProtocolName),
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::ConnectReservedFlagSet);
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::WillFlagsWithoutWill);
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::WillQos3)?;
    if has_password && !has_username && !protocol.is_v5() {
        return Err(DecodeError::PasswordWithoutUsername);
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        decode_properties(r, PropCtx::Connect, limits)?
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    if client_id.is_empty() && !clean_start && !protocol.is_v5() {
        return Err(DecodeError::EmptyClientIdWithoutCleanSession);
    }
    let will = if will_flag {
        let properties = if protocol.is_v5() {
            decode_properties(r, PropCtx::Will, limits)?
        } else {
            Properties::default()
        };
        let topic = read_topic(r)?;
        if topic.is_empty() {
            return Err(DecodeError::EmptyTopic);
        }
        let payload = r.binary()?;
        Some(LastWill { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if has_username { Some(r.string()?) } else { None };
    let password = if has_password { Some(r.binary()?) } else { None };
    Ok(Packet::Connect(Box::new(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })))
}

/// Body of a CONNACK; a 3.x return code is mapped to its v5 reason code.
pub(crate) fn decode_connack(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<Packet, DecodeError> {
    let flags = r.u8()?;
    // Bits 7-1 are reserved; in MQTT 3.1 bit 0 too (no Session Present).
    let reserved = if version == ProtocolVersion::V3_1 { 0xFF } else { 0xFE };
    if flags & reserved != 0 {
        return Err(DecodeError::ConnAckReservedFlagSet);
    }
    let raw = r.u8()?;
    let invalid = DecodeError::InvalidReasonCode { code: raw, packet: "CONNACK" };
    let (code, properties) = if version.is_v5() {
        if !reason::valid_connack(raw) {
            return Err(invalid);
        }
        (raw, decode_properties(r, PropCtx::ConnAck, limits)?)
    } else {
        (reason::connack_v3_to_v5(raw).ok_or(invalid)?, Properties::default())
    };
    Ok(Packet::ConnAck(ConnAck { session_present: flags & 0x01 != 0, code, properties }))
}
