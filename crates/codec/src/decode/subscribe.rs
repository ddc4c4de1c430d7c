//! SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK (3.8-3.11), DISCONNECT (3.14) and AUTH (3.15).
//! Topic filters are only checked for UTF-8, U+0000 and emptiness; wildcard placement is the
//! broker's job.

use super::Limits;
use super::props::{PropCtx, decode_properties};
use super::reader::Reader;
use crate::error::DecodeError;
use crate::packet::{
    Auth, Disconnect, Packet, ProtocolVersion, QoS, RetainHandling, SubAck, Subscribe, SubscribeFilter,
    UnsubAck, Unsubscribe,
};
use crate::properties::Properties;
use crate::reason;

fn pkid(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::PacketIdZero),
        id => Ok(id),
    }
}

fn props(
    r: &mut Reader,
    version: ProtocolVersion,
    ctx: PropCtx,
    limits: &Limits,
) -> Result<Properties, DecodeError> {
    if version.is_v5() { decode_properties(r, ctx, limits) } else { Ok(Properties::default()) }
}

fn filter(r: &mut Reader) -> Result<String, DecodeError> {
    let f = r.string()?;
    if f.is_empty() {
        return Err(DecodeError::EmptyTopicFilter);
    }
    Ok(f)
}

pub(crate) fn decode_subscribe(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<Packet, DecodeError> {
    let pkid = pkid(r)?;
    let properties = props(r, version, PropCtx::Subscribe, limits)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = filter(r)?;
        let opts = r.u8()?;
        let reserved = if version.is_v5() { 0xC0 } else { 0xFC };
        if opts & reserved != 0 {
            return Err(DecodeError::SubscribeReservedBitsSet);
        }
        let qos = QoS::from_u8(opts & 0x03).ok_or(DecodeError::SubscribeQos3)?;
        let retain_handling = match (opts >> 4) & 0x03 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscribe,
            2 => RetainHandling::Never,
            _ => return Err(DecodeError::InvalidRetainHandling),
        };
        filters.push(SubscribeFilter {
            filter,
            qos,
            no_local: opts & 0x04 != 0,
            retain_as_published: opts & 0x08 != 0,
            retain_handling,
        });
    }
    if filters.is_empty() {
        return Err(DecodeError::SubscribeNoFilters);
    }
    Ok(Packet::Subscribe(Subscribe { pkid, filters, properties }))
}

pub(crate) fn decode_suback(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<Packet, DecodeError> {
    let pkid = pkid(r)?;
    let properties = props(r, version, PropCtx::SubAck, limits)?;
    let codes = r.rest().to_vec();
    for &code in &codes {
        let ok = if version.is_v5() { reason::valid_suback(code) } else { reason::valid_suback_v3(code) };
        if !ok {
            return Err(DecodeError::InvalidReasonCode { code, packet: "SUBACK" });
        }
    }
    Ok(Packet::SubAck(SubAck { pkid, codes, properties }))
}

pub(crate) fn decode_unsubscribe(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<Packet, DecodeError> {
    let pkid = pkid(r)?;
    let properties = props(r, version, PropCtx::Unsubscribe, limits)?;
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(filter(r)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::UnsubscribeNoFilters);
    }
    Ok(Packet::Unsubscribe(Unsubscribe { pkid, filters, properties }))
}

pub(crate) fn decode_unsuback(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<Packet, DecodeError> {
    let pkid = pkid(r)?;
    let properties = props(r, version, PropCtx::UnsubAck, limits)?;
    let codes = if version.is_v5() { r.rest().to_vec() } else { Vec::new() };
    if let Some(&code) = codes.iter().find(|&&c| !reason::valid_unsuback(c)) {
        return Err(DecodeError::InvalidReasonCode { code, packet: "UNSUBACK" });
    }
    Ok(Packet::UnsubAck(UnsubAck { pkid, codes, properties }))
}

/// Reason code and properties of DISCONNECT/AUTH: both may be omitted (3.14.2.1, 3.15.2.1).
fn code_and_props(r: &mut Reader, ctx: PropCtx, limits: &Limits) -> Result<(u8, Properties), DecodeError> {
    if r.is_empty() {
        return Ok((reason::SUCCESS, Properties::default()));
    }
    let code = r.u8()?;
    let properties = if r.is_empty() { Properties::default() } else { decode_properties(r, ctx, limits)? };
    Ok((code, properties))
}

pub(crate) fn decode_disconnect(
    r: &mut Reader,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<Packet, DecodeError> {
    if !version.is_v5() {
        return Ok(Packet::Disconnect(Disconnect { code: 0, properties: Properties::default() }));
    }
    let (code, properties) = code_and_props(r, PropCtx::Disconnect, limits)?;
    if !reason::valid_disconnect(code) {
        return Err(DecodeError::InvalidReasonCode { code, packet: "DISCONNECT" });
    }
    Ok(Packet::Disconnect(Disconnect { code, properties }))
}

pub(crate) fn decode_auth(r: &mut Reader, limits: &Limits) -> Result<Packet, DecodeError> {
    let (code, properties) = code_and_props(r, PropCtx::Auth, limits)?;
    if !reason::valid_auth(code) {
        return Err(DecodeError::InvalidReasonCode { code, packet: "AUTH" });
    }
    Ok(Packet::Auth(Auth { code, properties }))
}
