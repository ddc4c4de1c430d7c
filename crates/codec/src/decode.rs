//! Framing and dispatch: parses the fixed header (2.1), enforces the packet size limit before the
//! body arrives, splits the packet off the read buffer and hands the body to the per-family
//! decoders in `decode/` (connect, publish and acks, subscribe family, disconnect/auth).

mod connect;
mod props;
mod publish;
mod reader;
mod subscribe;

use bytes::{Bytes, BytesMut};

use self::reader::Reader;
use super::error::DecodeError;
use super::packet::{Packet, ProtocolVersion};

/// Resource limits applied while decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted packet, fixed header included.
    pub max_packet_size: u32,
    /// Most user properties in one property block.
    pub max_user_properties: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_packet_size: 1024 * 1024, max_user_properties: 64 }
    }
}

/// Who sent the bytes being decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    Client,
    Server,
}

/// Decodes one packet sent by a client, as a server does.
///
/// `version` is `None` until CONNECT was received; then only CONNECT is accepted and it tells
/// the version. Returns `Ok(None)` when `buf` does not yet hold a whole packet (`buf` untouched),
/// otherwise the packet's bytes are split off the front of `buf`. On `Err` the connection must
/// be closed; the state of `buf` is then unspecified.
pub fn decode(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    limits: &Limits,
) -> Result<Option<Packet>, DecodeError> {
    decode_as(buf, version, limits, Sender::Client)
}

/// Decodes one packet sent by a server, as a client does (tests, bench client).
pub fn decode_from_server(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    limits: &Limits,
) -> Result<Option<Packet>, DecodeError> {
    decode_as(buf, Some(version), limits, Sender::Server)
}

const NAMES: [&str; 16] = [
    "RESERVED",
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "PUBACK",
    "PUBREC",
    "PUBREL",
    "PUBCOMP",
    "SUBSCRIBE",
    "SUBACK",
    "UNSUBSCRIBE",
    "UNSUBACK",
    "PINGREQ",
    "PINGRESP",
    "DISCONNECT",
    "AUTH",
];

/// Checks the first byte: packet type allowed in this state and by this sender, flags (2.1.3).
fn check_first_byte(byte1: u8, version: Option<ProtocolVersion>, sender: Sender) -> Result<(), DecodeError> {
    let ptype = byte1 >> 4;
    let flags = byte1 & 0x0F;
    let v5 = version.is_some_and(ProtocolVersion::is_v5);
    if ptype == 0 || (ptype == 15 && version.is_some() && !v5) {
        return Err(DecodeError::ReservedPacketType(ptype));
    }
    let packet = NAMES[usize::from(ptype)];
    match version {
        None if ptype != 1 => return Err(DecodeError::FirstPacketNotConnect),
        Some(_) if ptype == 1 && sender == Sender::Client => {
            return Err(DecodeError::SecondConnect);
        }
        _ => {}
    }
    match (sender, ptype) {
        (Sender::Client, 2 | 9 | 11 | 13) => return Err(DecodeError::ServerOnlyPacket { packet }),
        (Sender::Server, 1 | 8 | 10 | 12) => return Err(DecodeError::ClientOnlyPacket { packet }),
        _ => {}
    }
    let ok = match ptype {
        3 => true,
        6 | 8 | 10 => flags == 0b0010,
        _ => flags == 0,
    };
    if !ok {
        return Err(DecodeError::InvalidFixedHeaderFlags { packet });
    }
    Ok(())
}

fn decode_as(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    limits: &Limits,
    sender: Sender,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&byte1) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(byte1, version, sender)?;
    // Remaining length: at most 4 bytes [MQTT-1.5.5], non-minimal encodings are accepted.
    let mut remaining: u32 = 0;
    let mut header_len = 0;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            header_len = 2 + i;
            break;
        }
    }
    if header_len == 0 {
        return Err(DecodeError::RemainingLengthTooLong);
    }
    let size = header_len as u64 + u64::from(remaining);
    if size > u64::from(limits.max_packet_size) {
        return Err(DecodeError::PacketTooLarge { size, max: limits.max_packet_size });
    }
    let size = size as usize;
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    let body = frame.split_off(header_len);
    decode_body(byte1, body, version, limits, sender).map(Some)
}

fn decode_body(
    byte1: u8,
    body: Bytes,
    version: Option<ProtocolVersion>,
    limits: &Limits,
    sender: Sender,
) -> Result<Packet, DecodeError> {
    let mut r = Reader::new(body);
    let Some(version) = version else {
        return connect::decode_connect(&mut r, limits);
    };
    let from_client = sender == Sender::Client;
    let packet = match byte1 >> 4 {
        1 => connect::decode_connect(&mut r, limits)?,
        2 => connect::decode_connack(&mut r, version, limits)?,
        3 => Packet::Publish(publish::decode_publish(&mut r, byte1, version, limits, from_client)?),
        4 => Packet::PubAck(publish::decode_ack(&mut r, version, limits, "PUBACK")?),
        5 => Packet::PubRec(publish::decode_ack(&mut r, version, limits, "PUBREC")?),
        6 => Packet::PubRel(publish::decode_ack(&mut r, version, limits, "PUBREL")?),
        7 => Packet::PubComp(publish::decode_ack(&mut r, version, limits, "PUBCOMP")?),
        8 => subscribe::decode_subscribe(&mut r, version, limits)?,
        9 => subscribe::decode_suback(&mut r, version, limits)?,
        10 => subscribe::decode_unsubscribe(&mut r, version, limits)?,
        11 => subscribe::decode_unsuback(&mut r, version, limits)?,
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => subscribe::decode_disconnect(&mut r, version, limits)?,
        _ => subscribe::decode_auth(&mut r, limits)?,
    };
    r.finish()?;
    Ok(packet)
}

/// Checks a topic name (PUBLISH, will): no wildcards [MQTT-3.3.2-2]. UTF-8 validity and U+0000
/// were checked when it was read, emptiness is checked by the caller. Limits that a well-formed
/// name may exceed (levels, the `$share/` namespace) are the server's to judge, with a reason
/// code: see [`crate::topic::check_publish_name`].
pub(crate) fn check_topic_name(topic: &[u8]) -> Result<(), DecodeError> {
    if topic.iter().any(|&b| b == b'+' || b == b'#') {
        return Err(DecodeError::TopicNameWildcard);
    }
    Ok(())
}

/// Reads a topic name string; maps U+0000 to `TopicContainsNull`.
pub(crate) fn read_topic(r: &mut Reader) -> Result<Bytes, DecodeError> {
    let topic = r.utf8_bytes().map_err(|e| match e {
        DecodeError::NullCharacter => DecodeError::TopicContainsNull,
        e => e,
    })?;
    check_topic_name(&topic)?;
    Ok(topic)
}
