//! Encoding of every packet for MQTT 3.1, 3.1.1 and 5.0. Each body is written through a
//! [`Sink`] twice: once into a byte counter to learn the remaining length, once into the output,
//! so nothing is staged in an intermediate buffer. v5-only parts are omitted for 3.x.

use bytes::{BufMut, BytesMut};

use super::packet::{Ack, Packet, ProtocolVersion, Publish, QoS, RetainHandling};
use super::properties::Properties;
use super::reason;

/// Destination of encoded bytes: a length counter or a buffer.
trait Sink {
    fn put(&mut self, b: &[u8]);
    fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    fn u16(&mut self, v: u16) {
        self.put(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.put(&v.to_be_bytes());
    }
    fn varint(&mut self, mut v: u32) {
        debug_assert!(v < 1 << 28, "variable byte integer out of range");
        loop {
            let mut b = (v & 0x7F) as u8;
            v >>= 7;
            if v > 0 {
                b |= 0x80;
            }
            self.u8(b);
            if v == 0 {
                break;
            }
        }
    }
    /// Binary data / UTF-8 string with a two-byte length prefix.
    fn bin(&mut self, b: &[u8]) {
        debug_assert!(b.len() <= usize::from(u16::MAX), "string or binary longer than 65535");
        self.u16(b.len() as u16);
        self.put(b);
    }
}

struct Counter(usize);

impl Sink for Counter {
    fn put(&mut self, b: &[u8]) {
        self.0 += b.len();
    }
}

impl Sink for BytesMut {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn props_body<S: Sink>(p: &Properties, s: &mut S) {
    fn str_prop<S: Sink>(s: &mut S, id: u8, v: &Option<String>) {
        if let Some(v) = v {
            s.u8(id);
            s.bin(v.as_bytes());
        }
    }
    fn byte_prop<S: Sink>(s: &mut S, id: u8, v: Option<u8>) {
        if let Some(v) = v {
            s.u8(id);
            s.u8(v);
        }
    }
    fn u16_prop<S: Sink>(s: &mut S, id: u8, v: Option<u16>) {
        if let Some(v) = v {
            s.u8(id);
            s.u16(v);
        }
    }
    fn u32_prop<S: Sink>(s: &mut S, id: u8, v: Option<u32>) {
        if let Some(v) = v {
            s.u8(id);
            s.u32(v);
        }
    }
    byte_prop(s, 0x01, p.payload_format_indicator);
    u32_prop(s, 0x02, p.message_expiry_interval);
    str_prop(s, 0x03, &p.content_type);
    str_prop(s, 0x08, &p.response_topic);
    if let Some(d) = &p.correlation_data {
        s.u8(0x09);
        s.bin(d);
    }
    for &id in &p.subscription_identifiers {
        s.u8(0x0B);
        s.varint(id);
    }
    u32_prop(s, 0x11, p.session_expiry_interval);
    str_prop(s, 0x12, &p.assigned_client_identifier);
    u16_prop(s, 0x13, p.server_keep_alive);
    str_prop(s, 0x15, &p.authentication_method);
    if let Some(d) = &p.authentication_data {
        s.u8(0x16);
        s.bin(d);
    }
    byte_prop(s, 0x17, p.request_problem_information);
    u32_prop(s, 0x18, p.will_delay_interval);
    byte_prop(s, 0x19, p.request_response_information);
    str_prop(s, 0x1A, &p.response_information);
    str_prop(s, 0x1C, &p.server_reference);
    str_prop(s, 0x1F, &p.reason_string);
    u16_prop(s, 0x21, p.receive_maximum);
    u16_prop(s, 0x22, p.topic_alias_maximum);
    u16_prop(s, 0x23, p.topic_alias);
    byte_prop(s, 0x24, p.maximum_qos);
    byte_prop(s, 0x25, p.retain_available);
    for (k, v) in &p.user_properties {
        s.u8(0x26);
        s.bin(k.as_bytes());
        s.bin(v.as_bytes());
    }
    u32_prop(s, 0x27, p.maximum_packet_size);
    byte_prop(s, 0x28, p.wildcard_subscription_available);
    byte_prop(s, 0x29, p.subscription_identifier_available);
    byte_prop(s, 0x2A, p.shared_subscription_available);
}

/// Property length followed by the properties.
fn props<S: Sink>(p: &Properties, s: &mut S) {
    if p.is_empty() {
        s.u8(0);
        return;
    }
    let mut c = Counter(0);
    props_body(p, &mut c);
    s.varint(c.0 as u32);
    props_body(p, s);
}

fn publish_body<S: Sink>(p: &Publish, v5: bool, s: &mut S) {
    s.bin(&p.topic);
    if p.qos != QoS::AtMostOnce {
        s.u16(p.pkid);
    }
    if v5 {
        props(&p.properties, s);
    }
    s.put(&p.payload);
}

fn publish_byte1(p: &Publish) -> u8 {
    0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain)
}

/// Encodes a PUBLISH with a single reservation and no intermediate buffer (the hot path).
pub fn encode_publish(p: &Publish, version: ProtocolVersion, out: &mut BytesMut) {
    let mut c = Counter(0);
    publish_body(p, version.is_v5(), &mut c);
    out.reserve(1 + varint_len(c.0) + c.0);
    out.put_u8(publish_byte1(p));
    Sink::varint(out, c.0 as u32);
    publish_body(p, version.is_v5(), out);
}

/// A PUBLISH the server sends, borrowed from the routed message: its forwarded properties
/// (Payload Format Indicator, Content Type, Response Topic, Correlation Data, User Properties;
/// any other property in `forwarded` is left out) plus the ones each delivery sets itself. One
/// message goes to many subscribers without a copy of its properties per subscriber.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPublish<'a> {
    /// DUP flag.
    pub dup: bool,
    /// QoS of the delivery.
    pub qos: QoS,
    /// RETAIN flag of the delivery.
    pub retain: bool,
    /// Topic name (empty when `topic_alias` names it).
    pub topic: &'a [u8],
    /// Packet identifier (QoS 1/2).
    pub pkid: u16,
    /// The message's properties as published.
    pub forwarded: &'a Properties,
    /// Subscription Identifiers of the matching subscriptions (v5).
    pub subscription_identifiers: &'a [u32],
    /// Remaining Message Expiry Interval (v5).
    pub message_expiry_interval: Option<u32>,
    /// Topic Alias (v5).
    pub topic_alias: Option<u16>,
    /// Application payload.
    pub payload: &'a [u8],
}

fn outgoing_props_body<S: Sink>(p: &OutgoingPublish<'_>, s: &mut S) {
    let f = p.forwarded;
    if let Some(v) = f.payload_format_indicator {
        s.u8(0x01);
        s.u8(v);
    }
    if let Some(v) = p.message_expiry_interval {
        s.u8(0x02);
        s.u32(v);
    }
    if let Some(v) = &f.content_type {
        s.u8(0x03);
        s.bin(v.as_bytes());
    }
    if let Some(v) = &f.response_topic {
        s.u8(0x08);
        s.bin(v.as_bytes());
    }
    if let Some(d) = &f.correlation_data {
        s.u8(0x09);
        s.bin(d);
    }
    for &id in p.subscription_identifiers {
        s.u8(0x0B);
        s.varint(id);
    }
    if let Some(v) = p.topic_alias {
        s.u8(0x23);
        s.u16(v);
    }
    for (k, v) in &f.user_properties {
        s.u8(0x26);
        s.bin(k.as_bytes());
        s.bin(v.as_bytes());
    }
}

fn outgoing_body<S: Sink>(p: &OutgoingPublish<'_>, v5: bool, s: &mut S) {
    s.bin(p.topic);
    if p.qos != QoS::AtMostOnce {
        s.u16(p.pkid);
    }
    if v5 {
        let mut c = Counter(0);
        outgoing_props_body(p, &mut c);
        s.varint(c.0 as u32);
        outgoing_props_body(p, s);
    }
    s.put(p.payload);
}

/// Encodes an [`OutgoingPublish`] with a single reservation (the delivery hot path); for 3.x
/// the properties are left out.
pub fn encode_outgoing_publish(p: &OutgoingPublish<'_>, version: ProtocolVersion, out: &mut BytesMut) {
    let v5 = version.is_v5();
    let mut c = Counter(0);
    outgoing_body(p, v5, &mut c);
    out.reserve(1 + varint_len(c.0) + c.0);
    out.put_u8(0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain));
    Sink::varint(out, c.0 as u32);
    outgoing_body(p, v5, out);
}

/// v5 acks: reason code and properties only when needed (3.4.2.1).
fn ack_body<S: Sink>(a: &Ack, v5: bool, s: &mut S) {
    s.u16(a.pkid);
    if v5 && (a.code != reason::SUCCESS || !a.properties.is_empty()) {
        s.u8(a.code);
        if !a.properties.is_empty() {
            props(&a.properties, s);
        }
    }
}

/// Reason code and properties of DISCONNECT/AUTH, omitted when success without properties.
fn code_props_body<S: Sink>(code: u8, p: &Properties, s: &mut S) {
    if code != reason::SUCCESS || !p.is_empty() {
        s.u8(code);
        if !p.is_empty() {
            props(p, s);
        }
    }
}

fn retain_handling(r: RetainHandling) -> u8 {
    match r {
        RetainHandling::OnSubscribe => 0,
        RetainHandling::OnNewSubscribe => 1,
        RetainHandling::Never => 2,
    }
}

fn body<S: Sink>(packet: &Packet, version: ProtocolVersion, s: &mut S) {
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => {
            match c.protocol {
                ProtocolVersion::V3_1 => {
                    s.bin(b"MQIsdp");
                    s.u8(3);
                }
                ProtocolVersion::V3_1_1 => {
                    s.bin(b"MQTT");
                    s.u8(4);
                }
                ProtocolVersion::V5 => {
                    s.bin(b"MQTT");
                    s.u8(5);
                }
            }
            let v5 = c.protocol.is_v5();
            let mut flags = u8::from(c.clean_start) << 1;
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
            }
            flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
            s.u8(flags);
            s.u16(c.keep_alive);
            if v5 {
                props(&c.properties, s);
            }
            s.bin(c.client_id.as_bytes());
            if let Some(w) = &c.will {
                if v5 {
                    props(&w.properties, s);
                }
                s.bin(&w.topic);
                s.bin(&w.payload);
            }
            if let Some(u) = &c.username {
                s.bin(u.as_bytes());
            }
            if let Some(p) = &c.password {
                s.bin(p);
            }
        }
        Packet::ConnAck(c) => {
            // MQTT 3.1 has no Session Present: its first CONNACK byte is reserved, 0.
            s.u8(u8::from(c.session_present && version != ProtocolVersion::V3_1));
            if v5 {
                s.u8(c.code);
                props(&c.properties, s);
            } else {
                s.u8(reason::connack_v5_to_v3(c.code));
            }
        }
        Packet::Publish(p) => publish_body(p, v5, s),
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => ack_body(a, v5, s),
        Packet::Subscribe(sub) => {
            s.u16(sub.pkid);
            if v5 {
                props(&sub.properties, s);
            }
            for f in &sub.filters {
                s.bin(f.filter.as_bytes());
                let mut opts = f.qos as u8;
                if v5 {
                    opts |= u8::from(f.no_local) << 2
                        | u8::from(f.retain_as_published) << 3
                        | retain_handling(f.retain_handling) << 4;
                }
                s.u8(opts);
            }
        }
        Packet::SubAck(a) => {
            s.u16(a.pkid);
            if v5 {
                props(&a.properties, s);
                s.put(&a.codes);
            } else {
                for &c in &a.codes {
                    s.u8(if c >= 0x80 { reason::v3::SUBACK_FAILURE } else { c });
                }
            }
        }
        Packet::Unsubscribe(u) => {
            s.u16(u.pkid);
            if v5 {
                props(&u.properties, s);
            }
            for f in &u.filters {
                s.bin(f.as_bytes());
            }
        }
        Packet::UnsubAck(a) => {
            s.u16(a.pkid);
            if v5 {
                props(&a.properties, s);
                s.put(&a.codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                code_props_body(d.code, &d.properties, s);
            }
        }
        Packet::Auth(a) => code_props_body(a.code, &a.properties, s),
    }
}

fn byte1(packet: &Packet) -> u8 {
    match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => publish_byte1(p),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) => 0xF0,
    }
}

/// Appends `packet` encoded for `version` to `out`. AUTH exists only in MQTT 5: for 3.x it is
/// a caller bug (debug assertion) and nothing is written.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    if let Packet::Publish(p) = packet {
        return encode_publish(p, version, out);
    }
    if let Packet::Auth(_) = packet
        && !version.is_v5()
    {
        debug_assert!(false, "AUTH cannot be encoded for MQTT 3.x");
        return;
    }
    let mut c = Counter(0);
    body(packet, version, &mut c);
    out.reserve(1 + varint_len(c.0) + c.0);
    out.put_u8(byte1(packet));
    Sink::varint(out, c.0 as u32);
    body(packet, version, out);
}
