//! CONNECT handling: client identifier rules, keep alive, session expiry, will, the negotiated
//! v5 limits, attaching to the broker's session and the CONNACK that says what was granted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::Ctx;
use super::conn::Conn;
use super::outbound::OutboundLimits;
use crate::broker::{AttachError, AttachRequest};
use crate::model::Kill;
use crate::model::Message;
use crate::store::Commit;
use dataloom_codec::{ConnAck, Connect, DecodeError, LastWill, Packet, Properties, ProtocolVersion, encode};
use dataloom_codec::{reason, topic};

/// The outcome of a CONNECT: a connection ready to run, or the code it was refused with.
pub enum Accepted {
    /// Accepted: the CONNACK may be sent once the commit (session record) is durable.
    Yes(Box<Conn>, Commit),
    No(u8),
}

/// Writes the CONNACK refusing a CONNECT with v5 reason `code` (mapped for 3.x).
pub fn write_refusal(version: ProtocolVersion, code: u8, out: &mut BytesMut) {
    let ack = ConnAck { session_present: false, code, properties: Properties::default() };
    encode(&Packet::ConnAck(ack), version, out);
    crate::metrics::get().packets_sent[crate::metrics::pt::CONNACK].inc();
}

/// The CONNACK (and its protocol version) owed for a CONNECT that failed to decode, if any:
/// an unsupported protocol level gets 3.1.1 return code 1, an empty client id without clean
/// session gets "identifier rejected", and a v5 CONNECT gets its reason code.
pub fn refusal_for(err: &DecodeError, sniffed: Option<ProtocolVersion>) -> Option<(ProtocolVersion, u8)> {
    match err {
        DecodeError::UnsupportedProtocolLevel { level: 5 } => {
            Some((ProtocolVersion::V5, reason::UNSUPPORTED_PROTOCOL_VERSION))
        }
        DecodeError::UnsupportedProtocolLevel { .. } => {
            Some((ProtocolVersion::V3_1_1, reason::UNSUPPORTED_PROTOCOL_VERSION))
        }
        DecodeError::EmptyClientIdWithoutCleanSession => {
            Some((sniffed.unwrap_or(ProtocolVersion::V3_1_1), reason::CLIENT_IDENTIFIER_NOT_VALID))
        }
        DecodeError::PacketTooLarge { .. } if sniffed == Some(ProtocolVersion::V5) => {
            Some((ProtocolVersion::V5, reason::PACKET_TOO_LARGE))
        }
        _ if sniffed == Some(ProtocolVersion::V5) => Some((ProtocolVersion::V5, err.reason_code())),
        _ => None,
    }
}

/// Reads the protocol level of a CONNECT at the front of `buf` without decoding it, so a
/// refusal can be sent in the client's own protocol version.
pub fn sniff_version(buf: &[u8]) -> Option<ProtocolVersion> {
    if *buf.first()? >> 4 != 1 {
        return None; // not a CONNECT: no version to answer in
    }
    let mut i = 1;
    while *buf.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let name_len = usize::from(u16::from_be_bytes([*buf.get(i + 1)?, *buf.get(i + 2)?]));
    match buf.get(i + 3 + name_len)? {
        3 => Some(ProtocolVersion::V3_1),
        4 => Some(ProtocolVersion::V3_1_1),
        5 => Some(ProtocolVersion::V5),
        _ => None,
    }
}

/// Checks a decoded CONNECT of an authenticated `principal`, attaches the session (waiting for
/// a connection that holds it to let go, see [`crate::broker::Broker::attach`]) and writes the
/// CONNACK into `out`.
pub async fn accept(
    ctx: &Arc<Ctx>,
    c: Connect,
    kill: Arc<Kill>,
    principal: crate::auth::Principal,
    out: &mut BytesMut,
) -> Accepted {
    let v5 = c.protocol.is_v5();
    let mut props = Properties::default();
    if let Some(code) = refuse_reason(ctx, &c) {
        write_refusal(c.protocol, code, out);
        return Accepted::No(code);
    }
    if let Some(code) = refuse_will(ctx, &c, out) {
        return Accepted::No(code);
    }
    let client_id = if c.client_id.is_empty() {
        let id = generated_client_id();
        props.assigned_client_identifier = v5.then(|| id.clone());
        id
    } else {
        c.client_id.clone()
    };
    let perms = Arc::new(ctx.auth.perms(&principal, &client_id));
    if let Some(w) = &c.will
        && !perms.may_publish(&String::from_utf8_lossy(&w.topic))
    {
        tracing::info!("CONNECT refused: will topic not allowed for this key");
        crate::auth::count_denial(crate::auth::action::PUBLISH);
        write_refusal(c.protocol, reason::NOT_AUTHORIZED, out);
        return Accepted::No(reason::NOT_AUTHORIZED);
    }
    let keep_alive = if v5 && (c.keep_alive > ctx.mqtt.max_keepalive || c.keep_alive == 0) {
        props.server_keep_alive = Some(ctx.mqtt.max_keepalive);
        ctx.mqtt.max_keepalive
    } else {
        c.keep_alive
    };
    let asked = session_expiry(ctx, &c);
    let req = AttachRequest {
        client_id: &client_id,
        clean_start: c.clean_start,
        expiry: asked,
        identity: principal.identity(),
        takeover: ctx.auth.settings().session_takeover,
        read: (!perms.is_unrestricted()).then(|| perms.clone() as Arc<dyn crate::model::ReadAccess>),
    };
    let mut attached = match ctx.broker.attach(&req, kill).await {
        Ok(a) => a,
        Err(AttachError::ForeignSession { owner }) => {
            tracing::warn!(client_id = %client_id, identity = %req.identity, owner = %owner,
                "CONNECT refused: the session of this client id belongs to another identity \
                 (auth.session_takeover = \"same_key\"); it is left untouched");
            crate::auth::count_session_owner_refusal();
            write_refusal(c.protocol, reason::NOT_AUTHORIZED, out);
            return Accepted::No(reason::NOT_AUTHORIZED);
        }
    };
    if v5 && c.properties.session_expiry_interval.unwrap_or(0) != attached.expiry {
        props.session_expiry_interval = Some(attached.expiry);
    }
    let will = c.will.as_ref().map(|w| Box::new(will_message(w, attached.expiry)));
    let commit = std::mem::replace(&mut attached.commit, Commit::done());
    if v5 {
        props.receive_maximum = Some(ctx.mqtt.receive_maximum);
        props.maximum_packet_size = Some(ctx.mqtt.max_packet_size);
        props.topic_alias_maximum = Some(ctx.mqtt.topic_alias_maximum);
    }
    let ack = ConnAck { session_present: attached.present, code: reason::SUCCESS, properties: props };
    encode(&Packet::ConnAck(ack), c.protocol, out);
    crate::metrics::get().packets_sent[crate::metrics::pt::CONNACK].inc();
    let limits = OutboundLimits::negotiate(ctx, &c.properties);
    let mut conn = Conn::new(
        ctx.clone(),
        c.protocol,
        attached,
        Duration::from_secs(u64::from(keep_alive)),
        will,
        limits,
    );
    conn.problem_info = c.properties.request_problem_information != Some(0);
    conn.out.read = (!perms.is_unrestricted()).then(|| perms.clone());
    conn.perms = perms;
    Accepted::Yes(Box::new(conn), commit)
}

/// Refuses a CONNECT whose will its topic's JSON Schema refuses (or that targets `$schema/`):
/// v5 CONNACK 0x99 with the reason string; 3.x return code 5 (not authorized, as Mosquitto
/// answers a will it does not accept). Writes the CONNACK and returns the code.
fn refuse_will(ctx: &Ctx, c: &Connect, out: &mut BytesMut) -> Option<u8> {
    let w = c.will.as_ref()?;
    let refusal = ctx.schemas.check_will(&String::from_utf8_lossy(&w.topic), &w.payload).err()?;
    tracing::info!(reason = %refusal.reason, "CONNECT refused: will message");
    let code = if c.protocol.is_v5() { refusal.code } else { reason::NOT_AUTHORIZED };
    let properties = Properties { reason_string: Some(refusal.reason), ..Properties::default() };
    encode(&Packet::ConnAck(ConnAck { session_present: false, code, properties }), c.protocol, out);
    crate::metrics::get().packets_sent[crate::metrics::pt::CONNACK].inc();
    Some(code)
}

/// The v5 reason code to refuse this CONNECT with, if it must be refused.
fn refuse_reason(ctx: &Ctx, c: &Connect) -> Option<u8> {
    if super::shed::refuse_connect(ctx.broker.pressure()) {
        return Some(reason::SERVER_BUSY);
    }
    if c.properties.authentication_method.is_some() {
        return Some(reason::BAD_AUTHENTICATION_METHOD);
    }
    if c.client_id.is_empty() && c.protocol == ProtocolVersion::V3_1 {
        return Some(reason::CLIENT_IDENTIFIER_NOT_VALID);
    }
    // A will topic the server would refuse in a PUBLISH (over mqtt.max_topic_levels, $share/):
    // v5 0x90, 3.x return code 5 (as for a will topic not allowed).
    let will_topic = c.will.as_ref().map(|w| String::from_utf8_lossy(&w.topic));
    if let Some(Err(e)) = will_topic.map(|t| topic::check_publish_name(&t, ctx.mqtt.max_topic_levels)) {
        tracing::info!(error = %e, "CONNECT refused: will topic not accepted");
        return Some(if c.protocol.is_v5() { reason::TOPIC_NAME_INVALID } else { reason::NOT_AUTHORIZED });
    }
    if !c.protocol.is_v5() && c.keep_alive > ctx.mqtt.max_keepalive {
        // 3.x has no Server Keep Alive: refuse (return code 2, as Mosquitto does) rather
        // than cut the client off later.
        return Some(reason::CLIENT_IDENTIFIER_NOT_VALID);
    }
    None
}

/// Session expiry in seconds before the broker's `mqtt.persistent_session_expiry` cap: v5 from
/// the property (limited by `mqtt.max_session_expiry`), 3.x from the clean session flag (0 =
/// ends with the connection, never otherwise). A v5 CONNACK announces the granted value when it
/// differs from the one asked for.
fn session_expiry(ctx: &Ctx, c: &Connect) -> u32 {
    if !c.protocol.is_v5() {
        return if c.clean_start { 0 } else { u32::MAX };
    }
    c.properties.session_expiry_interval.unwrap_or(0).min(ctx.mqtt.max_session_expiry)
}

/// A will waiting for the connection to end.
#[derive(Debug)]
pub struct WillSpec {
    pub msg: Message,
    /// Will Delay Interval, never longer than the session.
    pub delay: Duration,
    /// Message Expiry Interval, counted from publication.
    pub expiry: Option<u32>,
}

impl WillSpec {
    /// The message to publish now, its expiry counted from `now` plus the delay.
    pub fn message(&self, now: Instant) -> Arc<Message> {
        let mut m = self.msg.clone();
        m.expires_at = self.expiry.map(|s| now + self.delay + Duration::from_secs(u64::from(s)));
        Arc::new(m)
    }
}

fn will_message(w: &LastWill, session_expiry: u32) -> WillSpec {
    let delay = w.properties.will_delay_interval.unwrap_or(0).min(session_expiry);
    let topic = String::from_utf8_lossy(&w.topic);
    let msg = Message {
        topic: Arc::from(topic.as_ref()),
        topic_bytes: w.topic.clone(),
        payload: w.payload.clone(),
        qos: w.qos,
        retain: w.retain,
        properties: super::inbound::forwarded_properties(&w.properties),
        expires_at: None,
        publisher: None,
        charge: Default::default(),
        stamp: crate::model::Stamp::default(),
    };
    WillSpec {
        msg,
        delay: Duration::from_secs(u64::from(delay)),
        expiry: w.properties.message_expiry_interval,
    }
}

fn generated_client_id() -> String {
    format!("dataloom-{:016x}", rand::random::<u64>())
}
