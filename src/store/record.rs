//! The versioned binary encoding of what the fjall store keeps: messages, deliveries, queued
//! deliveries (with their in-flight state) and session records.
//!
//! Every record starts with one version byte ([`RECORD_V1`]); a reader refuses a version it does
//! not know. Lengths and counts are LEB128 varints, fixed-size numbers are big-endian. Message
//! expiry is stored as wall-clock UNIX milliseconds (an [`Instant`] means nothing after a
//! restart) and converted through a [`Clock`] snapshot. Decoding never panics: garbage yields a
//! [`RecordError`].
//!
//! Layouts (v1):
//! - message body: `flags` (bits 0-1 QoS, 2 retain, 3 expiry, 4 payload format, 5 content type,
//!   6 response topic, 7 correlation data), `[expiry u64]`, `[payload format u8]`, topic,
//!   `[content type]`, `[response topic]`, `[correlation data]`, user property count + pairs,
//!   payload. Strings and byte strings are varint length + bytes.
//! - retained record: `v2`, revision varint, update time varint (UNIX milliseconds), message body.
//!   A `v1` retained record (written before issue 17) is the message body alone and still
//!   reads, with revision and time 0.
//! - delivery body: `qos | retain << 2`, sub id count + varints, message body.
//! - delivery record: `v1`, delivery body. A delivery's `seq` is not encoded: it is the
//!   queue key, and decoders leave it `None` for the caller to fill in.
//! - queued record: `v1`, `inflight flags` (bit 0 in flight, bit 1 PUBREL sent), `pkid u16`,
//!   delivery body. The in-flight part sits at a fixed offset so [`set_queued_inflight`] patches
//!   it without decoding the message.
//! - session record: `v2`, `expiry u32`, `offline since u64` (UNIX milliseconds, 0: online), owner
//!   (`u8` tag: 0 none, 1 unrestricted, 2 anonymous, 3 key followed by the key id), subscription
//!   count, then per subscription the filter, an options byte (bits 0-1 QoS, 2 no local,
//!   3 retain as published, 4-5 retain handling, 6 has subscription id) and `[sub id varint]`.
//!   The client id is the record's key. A `v1` session record (written before issue 13) is the
//!   same without the offline time and the owner, and still reads: no owner, not offline.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};

use super::SessionRecord;
use crate::model::{Delivery, Message, Stamp};
use crate::model::{SessionOwner, SubOptions};
use dataloom_codec::{Properties, QoS, RetainHandling};

/// The first record version (every record kind).
pub const RECORD_V1: u8 = 1;
/// The second session record version: adds the offline time and the owner.
pub const SESSION_V2: u8 = 2;
/// The second retained record version: adds the state's revision and time.
pub const RETAINED_V2: u8 = 2;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("record truncated while reading {0}")]
    Truncated(&'static str),
    #[error("invalid {0} in record")]
    Invalid(&'static str),
    #[error("{0} in record is not UTF-8")]
    Utf8(&'static str),
    #[error("{0} unexpected trailing bytes in record")]
    Trailing(usize),
}

/// One reading of both clocks, to convert expiry between [`Instant`] and UNIX milliseconds
/// consistently across many records.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub instant: Instant,
    pub unix_ms: u64,
}

impl Clock {
    /// Reads both clocks now.
    pub fn now() -> Clock {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Clock { instant: Instant::now(), unix_ms }
    }

    /// The wall-clock time of `at`, UNIX milliseconds.
    pub fn to_unix_ms(self, at: Instant) -> u64 {
        if at >= self.instant {
            let ahead = u64::try_from(at.duration_since(self.instant).as_millis()).unwrap_or(u64::MAX);
            self.unix_ms.saturating_add(ahead)
        } else {
            let behind = u64::try_from(self.instant.duration_since(at).as_millis()).unwrap_or(u64::MAX);
            self.unix_ms.saturating_sub(behind)
        }
    }

    /// The monotonic time of `unix_ms`; a time already past maps to an instant not after
    /// `self.instant`, so [`Message::is_expired`] holds for it.
    pub fn to_instant(self, unix_ms: u64) -> Instant {
        if unix_ms > self.unix_ms {
            let ahead = Duration::from_millis(unix_ms - self.unix_ms);
            self.instant.checked_add(ahead).unwrap_or(self.instant + Duration::from_secs(100 * 365 * 86_400))
        } else {
            let behind = Duration::from_millis(self.unix_ms - unix_ms);
            self.instant.checked_sub(behind).unwrap_or(self.instant)
        }
    }
}

// ---- encoding -------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.put_slice(b);
}

const M_EXPIRY: u8 = 1 << 3;
const M_PFI: u8 = 1 << 4;
const M_CONTENT_TYPE: u8 = 1 << 5;
const M_RESPONSE_TOPIC: u8 = 1 << 6;
const M_CORRELATION: u8 = 1 << 7;

fn put_message_body(out: &mut Vec<u8>, m: &Message, clock: &Clock) {
    let p = &m.properties;
    let mut flags = m.qos as u8 & 0b11;
    if m.retain {
        flags |= 1 << 2;
    }
    if m.expires_at.is_some() {
        flags |= M_EXPIRY;
    }
    if p.payload_format_indicator.is_some() {
        flags |= M_PFI;
    }
    if p.content_type.is_some() {
        flags |= M_CONTENT_TYPE;
    }
    if p.response_topic.is_some() {
        flags |= M_RESPONSE_TOPIC;
    }
    if p.correlation_data.is_some() {
        flags |= M_CORRELATION;
    }
    out.put_u8(flags);
    if let Some(at) = m.expires_at {
        out.put_u64(clock.to_unix_ms(at));
    }
    if let Some(pfi) = p.payload_format_indicator {
        out.put_u8(pfi);
    }
    put_bytes(out, m.topic.as_bytes());
    if let Some(ct) = &p.content_type {
        put_bytes(out, ct.as_bytes());
    }
    if let Some(rt) = &p.response_topic {
        put_bytes(out, rt.as_bytes());
    }
    if let Some(cd) = &p.correlation_data {
        put_bytes(out, cd);
    }
    put_varint(out, p.user_properties.len() as u64);
    for (k, v) in &p.user_properties {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
    put_bytes(out, &m.payload);
}

fn put_delivery_body(out: &mut Vec<u8>, d: &Delivery, clock: &Clock) {
    out.put_u8((d.qos as u8 & 0b11) | (u8::from(d.retain) << 2));
    put_varint(out, d.sub_ids.len() as u64);
    for id in &d.sub_ids {
        put_varint(out, u64::from(*id));
    }
    put_message_body(out, &d.msg, clock);
}

#[cfg(test)]
fn message_size_hint(m: &Message) -> usize {
    64 + m.topic.len() + m.payload.len()
}

/// Encodes a retained (or any standalone) message record.
#[cfg(test)]
pub fn encode_message(m: &Message, clock: &Clock) -> Vec<u8> {
    let mut out = Vec::with_capacity(message_size_hint(m));
    encode_message_into(m, clock, &mut out);
    out
}

/// [`encode_message`] into `out` (cleared first), for a caller that reuses one buffer.
/// Written as [`RETAINED_V2`]: the message's [`Stamp`] comes first.
pub fn encode_message_into(m: &Message, clock: &Clock, out: &mut Vec<u8>) {
    out.clear();
    out.put_u8(RETAINED_V2);
    put_varint(out, m.stamp.revision);
    put_varint(out, m.stamp.unix_ms);
    put_message_body(out, m, clock);
}

/// Encodes a delivery record (message plus what the subscription decided).
#[cfg(test)]
pub fn encode_delivery(d: &Delivery, clock: &Clock) -> Vec<u8> {
    let mut out = Vec::with_capacity(message_size_hint(&d.msg) + 8);
    out.put_u8(RECORD_V1);
    put_delivery_body(&mut out, d, clock);
    out
}

const Q_INFLIGHT: u8 = 1;
const Q_RELEASED: u8 = 2;
/// Length of the queued record's header: version, in-flight flags, packet id.
const QUEUED_HEADER: usize = 4;

fn inflight_header(inflight: Option<(u16, bool)>) -> [u8; 3] {
    match inflight {
        None => [0, 0, 0],
        Some((pkid, released)) => {
            let [hi, lo] = pkid.to_be_bytes();
            let flags = Q_INFLIGHT | if released { Q_RELEASED } else { 0 };
            [flags, hi, lo]
        }
    }
}

/// Encodes a queued delivery with its in-flight state (packet id, PUBREL sent).
#[cfg(test)]
pub fn encode_queued(d: &Delivery, inflight: Option<(u16, bool)>, clock: &Clock) -> Vec<u8> {
    let mut out = Vec::with_capacity(message_size_hint(&d.msg) + 12);
    encode_queued_into(d, inflight, clock, &mut out);
    out
}

/// [`encode_queued`] into `out` (cleared first), for a caller that reuses one buffer.
pub fn encode_queued_into(d: &Delivery, inflight: Option<(u16, bool)>, clock: &Clock, out: &mut Vec<u8>) {
    out.clear();
    out.put_u8(RECORD_V1);
    out.put_slice(&inflight_header(inflight));
    put_delivery_body(out, d, clock);
}

/// Rewrites the in-flight part of an encoded queued record, leaving the delivery untouched.
///
/// # Errors
/// [`RecordError`] when `record` is not a queued record this build reads.
pub fn set_queued_inflight(record: &[u8], inflight: Option<(u16, bool)>) -> Result<Vec<u8>, RecordError> {
    check_version(record)?;
    if record.len() < QUEUED_HEADER {
        return Err(RecordError::Truncated("in-flight state"));
    }
    let mut out = record.to_vec();
    out[1..QUEUED_HEADER].copy_from_slice(&inflight_header(inflight));
    Ok(out)
}

fn options_byte(o: &SubOptions) -> u8 {
    let rh = match o.retain_handling {
        RetainHandling::OnSubscribe => 0,
        RetainHandling::OnNewSubscribe => 1,
        RetainHandling::Never => 2,
    };
    (o.qos as u8 & 0b11)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | (rh << 4)
        | (u8::from(o.sub_id.is_some()) << 6)
}

/// Encodes a session record (the client id is the key, not part of the record), as
/// [`SESSION_V2`].
pub fn encode_session(s: &SessionRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + s.subscriptions.iter().map(|(f, _)| f.len() + 8).sum::<usize>());
    out.put_u8(SESSION_V2);
    out.put_u32(s.expiry);
    out.put_u64(s.offline_since.unwrap_or(0));
    put_owner(&mut out, s.owner.as_ref());
    put_varint(&mut out, s.subscriptions.len() as u64);
    for (filter, opts) in &s.subscriptions {
        put_bytes(&mut out, filter.as_bytes());
        out.put_u8(options_byte(opts));
        if let Some(id) = opts.sub_id {
            put_varint(&mut out, u64::from(id));
        }
    }
    out
}

const OWNER_NONE: u8 = 0;
const OWNER_UNRESTRICTED: u8 = 1;
const OWNER_ANONYMOUS: u8 = 2;
const OWNER_KEY: u8 = 3;

fn put_owner(out: &mut Vec<u8>, owner: Option<&SessionOwner>) {
    match owner {
        None => out.put_u8(OWNER_NONE),
        Some(SessionOwner::Unrestricted) => out.put_u8(OWNER_UNRESTRICTED),
        Some(SessionOwner::Anonymous) => out.put_u8(OWNER_ANONYMOUS),
        Some(SessionOwner::Key(id)) => {
            out.put_u8(OWNER_KEY);
            put_bytes(out, id.as_bytes());
        }
    }
}

// ---- decoding -------------------------------------------------------------------------------

/// A cursor over a record that refuses to read past its end.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn u8(&mut self, what: &'static str) -> Result<u8, RecordError> {
        if self.buf.has_remaining() { Ok(self.buf.get_u8()) } else { Err(RecordError::Truncated(what)) }
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, RecordError> {
        if self.buf.remaining() >= 2 { Ok(self.buf.get_u16()) } else { Err(RecordError::Truncated(what)) }
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, RecordError> {
        if self.buf.remaining() >= 4 { Ok(self.buf.get_u32()) } else { Err(RecordError::Truncated(what)) }
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, RecordError> {
        if self.buf.remaining() >= 8 { Ok(self.buf.get_u64()) } else { Err(RecordError::Truncated(what)) }
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, RecordError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            let part = u64::from(b & 0x7f);
            if shift == 63 && part > 1 {
                return Err(RecordError::Invalid(what));
            }
            v |= part << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RecordError::Invalid(what))
    }

    fn varint_u32(&mut self, what: &'static str) -> Result<u32, RecordError> {
        u32::try_from(self.varint(what)?).map_err(|_| RecordError::Invalid(what))
    }

    /// A count of items that each take at least `min_item` bytes (bounds the allocation).
    fn count(&mut self, what: &'static str, min_item: usize) -> Result<usize, RecordError> {
        let n = self.varint(what)?;
        let n = usize::try_from(n).map_err(|_| RecordError::Invalid(what))?;
        if n.saturating_mul(min_item) > self.buf.remaining() {
            return Err(RecordError::Truncated(what));
        }
        Ok(n)
    }

    fn bytes(&mut self, what: &'static str) -> Result<Bytes, RecordError> {
        let len = self.varint(what)?;
        let len = usize::try_from(len).map_err(|_| RecordError::Truncated(what))?;
        if len > self.buf.remaining() {
            return Err(RecordError::Truncated(what));
        }
        Ok(self.buf.split_to(len))
    }

    fn string(&mut self, what: &'static str) -> Result<String, RecordError> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| RecordError::Utf8(what))
    }

    fn finish(&self) -> Result<(), RecordError> {
        match self.buf.remaining() {
            0 => Ok(()),
            n => Err(RecordError::Trailing(n)),
        }
    }
}

fn check_version(record: &[u8]) -> Result<(), RecordError> {
    match record.first() {
        None => Err(RecordError::Empty),
        Some(&RECORD_V1) => Ok(()),
        Some(&v) => Err(RecordError::Version(v)),
    }
}

/// Checks the version byte and returns a reader positioned after it.
fn open(record: Bytes) -> Result<Reader, RecordError> {
    check_version(&record)?;
    let mut r = Reader { buf: record };
    r.buf.advance(1);
    Ok(r)
}

fn qos(bits: u8, what: &'static str) -> Result<QoS, RecordError> {
    QoS::from_u8(bits & 0b11).ok_or(RecordError::Invalid(what))
}

fn read_message_body(r: &mut Reader, clock: &Clock) -> Result<Message, RecordError> {
    let flags = r.u8("message flags")?;
    let qos = qos(flags, "message QoS")?;
    let retain = flags & (1 << 2) != 0;
    let expires_at = if flags & M_EXPIRY != 0 { Some(clock.to_instant(r.u64("expiry")?)) } else { None };
    let mut properties = Properties::default();
    if flags & M_PFI != 0 {
        properties.payload_format_indicator = Some(r.u8("payload format")?);
    }
    let topic_bytes = r.bytes("topic")?;
    let topic: Arc<str> = std::str::from_utf8(&topic_bytes).map_err(|_| RecordError::Utf8("topic"))?.into();
    if flags & M_CONTENT_TYPE != 0 {
        properties.content_type = Some(r.string("content type")?);
    }
    if flags & M_RESPONSE_TOPIC != 0 {
        properties.response_topic = Some(r.string("response topic")?);
    }
    if flags & M_CORRELATION != 0 {
        properties.correlation_data = Some(r.bytes("correlation data")?);
    }
    let n = r.count("user properties", 2)?;
    properties.user_properties.reserve_exact(n);
    for _ in 0..n {
        let k = r.string("user property name")?;
        let v = r.string("user property value")?;
        properties.user_properties.push((k, v));
    }
    let payload = r.bytes("payload")?;
    let mut message = Message {
        topic,
        topic_bytes,
        payload,
        qos,
        retain,
        properties,
        expires_at,
        publisher: None,
        charge: Default::default(),
        stamp: Stamp::default(),
    };
    // As if just received: the interval left, which outbound recomputes when forwarding.
    message.properties.message_expiry_interval = message.remaining_expiry(clock.instant);
    Ok(message)
}

fn read_delivery_body(r: &mut Reader, clock: &Clock) -> Result<Delivery, RecordError> {
    let b = r.u8("delivery flags")?;
    if b & !0b111 != 0 {
        return Err(RecordError::Invalid("delivery flags"));
    }
    let qos = qos(b, "delivery QoS")?;
    let retain = b & (1 << 2) != 0;
    let n = r.count("subscription identifiers", 1)?;
    let mut sub_ids = Vec::with_capacity(n);
    for _ in 0..n {
        sub_ids.push(r.varint_u32("subscription identifier")?);
    }
    let msg = Arc::new(read_message_body(r, clock)?);
    Ok(Delivery { msg, qos, retain, sub_ids, seq: None, share: None, snapshot: false })
}

/// Decodes a record made by [`encode_message`]. An expired message decodes with an
/// `expires_at` not after `clock.instant`.
///
/// A [`RECORD_V1`] record (written before revisions existed) has a zero [`Stamp`].
///
/// # Errors
/// [`RecordError`] when the record is not a v1 or v2 retained record.
pub fn decode_message(record: Bytes, clock: &Clock) -> Result<Message, RecordError> {
    let v2 = record.first() == Some(&RETAINED_V2);
    let mut r = if v2 { Reader { buf: record.slice(1..) } } else { open(record)? };
    let stamp = if v2 {
        Stamp { revision: r.varint("revision")?, unix_ms: r.varint("update time")? }
    } else {
        Stamp::default()
    };
    let mut m = read_message_body(&mut r, clock)?;
    r.finish()?;
    m.stamp = stamp;
    Ok(m)
}

/// The [`Stamp`] of a record made by [`encode_message`], without decoding the message.
///
/// # Errors
/// [`RecordError`] when the record is not a v2 retained record.
pub fn decode_stamp(record: &[u8]) -> Result<Stamp, RecordError> {
    match record.first() {
        None => return Err(RecordError::Empty),
        Some(&RETAINED_V2) => {}
        Some(&v) => return Err(RecordError::Version(v)),
    }
    let mut r = Reader { buf: Bytes::copy_from_slice(&record[1..record.len().min(21)]) };
    Ok(Stamp { revision: r.varint("revision")?, unix_ms: r.varint("update time")? })
}

/// Decodes a record made by [`encode_delivery`].
///
/// # Errors
/// [`RecordError`] when the record is not a v1 delivery record.
#[cfg(test)]
pub fn decode_delivery(record: Bytes, clock: &Clock) -> Result<Delivery, RecordError> {
    let mut r = open(record)?;
    let d = read_delivery_body(&mut r, clock)?;
    r.finish()?;
    Ok(d)
}

/// A queued delivery with its in-flight state: packet id and whether PUBREL was sent.
pub type Queued = (Delivery, Option<(u16, bool)>);

/// Decodes a record made by [`encode_queued`].
///
/// # Errors
/// [`RecordError`] when the record is not a v1 queued record.
pub fn decode_queued(record: Bytes, clock: &Clock) -> Result<Queued, RecordError> {
    let mut r = open(record)?;
    let flags = r.u8("in-flight flags")?;
    let pkid = r.u16("packet id")?;
    let inflight = match flags {
        0 => None,
        Q_INFLIGHT => Some((pkid, false)),
        f if f == Q_INFLIGHT | Q_RELEASED => Some((pkid, true)),
        _ => return Err(RecordError::Invalid("in-flight flags")),
    };
    let d = read_delivery_body(&mut r, clock)?;
    r.finish()?;
    Ok((d, inflight))
}

/// Decodes a record made by [`encode_session`] (v2) or by a build before issue 13 (v1) for
/// the session keyed `client_id`.
///
/// # Errors
/// [`RecordError`] when the record is not a v1 or v2 session record.
pub fn decode_session(client_id: Arc<str>, record: Bytes) -> Result<SessionRecord, RecordError> {
    let version = *record.first().ok_or(RecordError::Empty)?;
    if version != RECORD_V1 && version != SESSION_V2 {
        return Err(RecordError::Version(version));
    }
    let mut r = Reader { buf: record };
    r.buf.advance(1);
    let expiry = r.u32("session expiry")?;
    let (offline_since, owner) = if version == SESSION_V2 {
        let at = r.u64("offline time")?;
        ((at > 0).then_some(at), read_owner(&mut r)?)
    } else {
        (None, None)
    };
    let n = r.count("subscriptions", 2)?;
    let mut subscriptions = Vec::with_capacity(n);
    for _ in 0..n {
        let filter = r.string("topic filter")?;
        let b = r.u8("subscription options")?;
        subscriptions.push((filter, read_sub_options(&mut r, b)?));
    }
    r.finish()?;
    Ok(SessionRecord { client_id, expiry, subscriptions, owner, offline_since })
}

fn read_owner(r: &mut Reader) -> Result<Option<SessionOwner>, RecordError> {
    Ok(match r.u8("session owner")? {
        OWNER_NONE => None,
        OWNER_UNRESTRICTED => Some(SessionOwner::Unrestricted),
        OWNER_ANONYMOUS => Some(SessionOwner::Anonymous),
        OWNER_KEY => Some(SessionOwner::Key(r.string("owner key id")?.into())),
        _ => return Err(RecordError::Invalid("session owner")),
    })
}

fn read_sub_options(r: &mut Reader, b: u8) -> Result<SubOptions, RecordError> {
    if b & 0x80 != 0 {
        return Err(RecordError::Invalid("subscription options"));
    }
    let retain_handling = match (b >> 4) & 0b11 {
        0 => RetainHandling::OnSubscribe,
        1 => RetainHandling::OnNewSubscribe,
        2 => RetainHandling::Never,
        _ => return Err(RecordError::Invalid("retain handling")),
    };
    let sub_id = if b & (1 << 6) != 0 { Some(r.varint_u32("subscription identifier")?) } else { None };
    Ok(SubOptions {
        qos: qos(b, "subscription QoS")?,
        no_local: b & (1 << 2) != 0,
        retain_as_published: b & (1 << 3) != 0,
        retain_handling,
        sub_id,
    })
}

#[cfg(test)]
mod tests;
