//! Decoding of the MQTT 5 property block (2.2.2): length, per-packet allowed identifiers,
//! duplicates, value ranges and the user property limit.

use super::reader::Reader;
use crate::decode::Limits;
use crate::error::DecodeError;
use crate::properties::Properties;

/// Where a property block appears; decides which identifiers are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropCtx {
    Connect,
    ConnAck,
    /// PUBLISH; `from_client` forbids subscription identifiers [MQTT-3.3.4-6].
    Publish {
        from_client: bool,
    },
    Will,
    Ack(&'static str),
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropCtx {
    fn name(self) -> &'static str {
        match self {
            PropCtx::Connect => "CONNECT",
            PropCtx::ConnAck => "CONNACK",
            PropCtx::Publish { .. } => "PUBLISH",
            PropCtx::Will => "will properties",
            PropCtx::Ack(name) => name,
            PropCtx::Subscribe => "SUBSCRIBE",
            PropCtx::SubAck => "SUBACK",
            PropCtx::Unsubscribe => "UNSUBSCRIBE",
            PropCtx::UnsubAck => "UNSUBACK",
            PropCtx::Disconnect => "DISCONNECT",
            PropCtx::Auth => "AUTH",
        }
    }

    /// Table 2-4 of MQTT 5.0: which packet may carry which property.
    fn allows(self, id: u8) -> bool {
        use PropCtx::*;
        match id {
            0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(self, Publish { .. } | Will),
            0x0B => matches!(self, Publish { .. } | Subscribe),
            0x11 => matches!(self, Connect | ConnAck | Disconnect),
            0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => self == ConnAck,
            0x15 | 0x16 => matches!(self, Connect | ConnAck | Auth),
            0x17 | 0x19 => self == Connect,
            0x18 => self == Will,
            0x1C => matches!(self, ConnAck | Disconnect),
            0x1F => matches!(self, ConnAck | Ack(_) | SubAck | UnsubAck | Disconnect | Auth),
            0x21 | 0x22 | 0x27 => matches!(self, Connect | ConnAck),
            0x23 => matches!(self, Publish { .. }),
            0x26 => true,
            _ => false,
        }
    }
}

fn known(id: u8) -> bool {
    matches!(
        id,
        0x01..=0x03 | 0x08 | 0x09 | 0x0B | 0x11..=0x13 | 0x15..=0x19 | 0x1A | 0x1C | 0x1F | 0x21..=0x2A
    )
}

fn set_once<T>(slot: &mut Option<T>, id: u8, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty { id });
    }
    *slot = Some(v);
    Ok(())
}

fn bool_byte(r: &mut Reader, id: u8) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::InvalidPropertyValue { id });
    }
    Ok(v)
}

fn nonzero_u16(r: &mut Reader, id: u8) -> Result<u16, DecodeError> {
    let v = r.u16()?;
    if v == 0 {
        return Err(DecodeError::InvalidPropertyValue { id });
    }
    Ok(v)
}

/// Reads the property length and the properties that follow it.
pub(crate) fn decode_properties(
    r: &mut Reader,
    ctx: PropCtx,
    limits: &Limits,
) -> Result<Properties, DecodeError> {
    let len = r.varint()? as usize;
    let mut r = Reader::new(r.take(len)?);
    let mut p = Properties::default();
    while !r.is_empty() {
        // Identifiers are variable byte integers; all defined ones fit in one byte.
        let raw = r.varint()?;
        let id = u8::try_from(raw).unwrap_or(0xFF);
        if raw > 0x7F || !known(id) {
            return Err(DecodeError::UnknownProperty { id });
        }
        if !ctx.allows(id) {
            return Err(DecodeError::PropertyNotAllowed { id, packet: ctx.name() });
        }
        match id {
            0x01 => set_once(&mut p.payload_format_indicator, id, bool_byte(&mut r, id)?)?,
            0x02 => set_once(&mut p.message_expiry_interval, id, r.u32()?)?,
            0x03 => set_once(&mut p.content_type, id, r.string()?)?,
            0x08 => {
                let topic = r.string()?;
                // Response Topic is a Topic Name [MQTT-3.1.3-11, 3.3.2-14].
                if topic.is_empty() || topic.contains(['+', '#']) {
                    return Err(DecodeError::InvalidPropertyValue { id });
                }
                set_once(&mut p.response_topic, id, topic)?
            }
            0x09 => set_once(&mut p.correlation_data, id, r.binary()?)?,
            0x0B => {
                if ctx == (PropCtx::Publish { from_client: true }) {
                    return Err(DecodeError::SubscriptionIdInPublish);
                }
                let v = r.varint()?;
                if v == 0 {
                    return Err(DecodeError::InvalidPropertyValue { id });
                }
                if ctx == PropCtx::Subscribe && !p.subscription_identifiers.is_empty() {
                    return Err(DecodeError::DuplicateProperty { id });
                }
                p.subscription_identifiers.push(v);
            }
            0x11 => set_once(&mut p.session_expiry_interval, id, r.u32()?)?,
            0x12 => set_once(&mut p.assigned_client_identifier, id, r.string()?)?,
            0x13 => set_once(&mut p.server_keep_alive, id, r.u16()?)?,
            0x15 => set_once(&mut p.authentication_method, id, r.string()?)?,
            0x16 => set_once(&mut p.authentication_data, id, r.binary()?)?,
            0x17 => set_once(&mut p.request_problem_information, id, bool_byte(&mut r, id)?)?,
            0x18 => set_once(&mut p.will_delay_interval, id, r.u32()?)?,
            0x19 => set_once(&mut p.request_response_information, id, bool_byte(&mut r, id)?)?,
            0x1A => set_once(&mut p.response_information, id, r.string()?)?,
            0x1C => set_once(&mut p.server_reference, id, r.string()?)?,
            0x1F => set_once(&mut p.reason_string, id, r.string()?)?,
            0x21 => set_once(&mut p.receive_maximum, id, nonzero_u16(&mut r, id)?)?,
            0x22 => set_once(&mut p.topic_alias_maximum, id, r.u16()?)?,
            0x23 => {
                let v = r.u16()?;
                if v == 0 {
                    return Err(DecodeError::TopicAliasZero);
                }
                set_once(&mut p.topic_alias, id, v)?
            }
            0x24 => set_once(&mut p.maximum_qos, id, bool_byte(&mut r, id)?)?,
            0x25 => set_once(&mut p.retain_available, id, bool_byte(&mut r, id)?)?,
            0x26 => {
                if p.user_properties.len() >= limits.max_user_properties {
                    return Err(DecodeError::TooManyUserProperties);
                }
                let k = r.string()?;
                let v = r.string()?;
                p.user_properties.push((k, v));
            }
            0x27 => {
                let v = r.u32()?;
                if v == 0 {
                    return Err(DecodeError::InvalidPropertyValue { id });
                }
                set_once(&mut p.maximum_packet_size, id, v)?
            }
            0x28 => set_once(&mut p.wildcard_subscription_available, id, bool_byte(&mut r, id)?)?,
            0x29 => set_once(&mut p.subscription_identifier_available, id, bool_byte(&mut r, id)?)?,
            0x2A => set_once(&mut p.shared_subscription_available, id, bool_byte(&mut r, id)?)?,
            _ => return Err(DecodeError::UnknownProperty { id }),
        }
    }
    // Authentication Data without Authentication Method is a Protocol Error (3.1.2.11.10).
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(DecodeError::InvalidPropertyValue { id: 0x16 });
    }
    Ok(p)
}
