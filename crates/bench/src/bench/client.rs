//! The generator's MQTT 3.1.1 client, built on dataloom's codec: connect and subscribe, PUBLISH
//! frame templates (encoded once with `encode_publish`, then only sequence number, timestamp and
//! packet id are patched), the receive loop that decodes with `decode_from_server`, records
//! latency, loss and duplicates, and acks QoS 1 and 2 in one write per read (QoS 2: PUBREC, then
//! PUBCOMP for each PUBREL), and the windowed QoS 1/2 publisher (flows in `acks.rs`).
//!
//! Payload layout (64 bytes): publisher id (u32 LE), sequence number (u32 LE), send time in
//! generator nanoseconds (u64 LE), zero padding. The schema scenario uses a JSON payload
//! instead (`Body::Json`): `{"seq":S,"ts":T,"device":"dev-P","temp":..,"hum":..,"ok":true}`
//! with the numbers padded by spaces to a fixed width, so they can be patched in place too.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dataloom_codec::{
    Connect, Limits, Packet, Properties, ProtocolVersion, Publish, QoS, RetainHandling, Subscribe,
    SubscribeFilter, decode_from_server, encode, encode_publish,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::acks::{AckFrames, AckKind, Arrival, InFlight, Unreleased};
use super::stats::{Histogram, Tracker, now_ns};

/// Every client speaks MQTT 3.1.1.
pub const V: ProtocolVersion = ProtocolVersion::V3_1_1;
pub const PAYLOAD_LEN: usize = 64;
const READ_CHUNK: usize = 64 * 1024;

fn limits() -> Limits {
    Limits { max_packet_size: 16 * 1024 * 1024, ..Limits::default() }
}

pub fn proto_err(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A connected client before it is split into reader and writer.
pub struct Client {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
}

impl Client {
    /// Opens a TCP connection, sends CONNECT (clean session, keep-alive 600 s) and waits for a
    /// successful CONNACK.
    pub async fn connect(addr: SocketAddr, client_id: &str) -> io::Result<Client> {
        Client::connect_as(addr, client_id, None).await
    }

    /// [`Client::connect`] with a username and password.
    pub async fn connect_as(
        addr: SocketAddr,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> io::Result<Client> {
        Client::connect_with(addr, client_id, login, true).await
    }

    /// [`Client::connect`] asking for a persistent session (clean session 0).
    pub async fn connect_persistent(addr: SocketAddr, client_id: &str) -> io::Result<Client> {
        Client::connect_with(addr, client_id, None, false).await
    }

    async fn connect_with(
        addr: SocketAddr,
        client_id: &str,
        login: Option<(&str, &str)>,
        clean: bool,
    ) -> io::Result<Client> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut rbuf = BytesMut::with_capacity(4096);
        mqtt_connect_session(&mut stream, &mut rbuf, client_id, login, clean).await?;
        Ok(Client { stream, rbuf })
    }

    pub async fn send(&mut self, p: &Packet) -> io::Result<()> {
        send(&mut self.stream, p).await
    }

    /// Reads until one whole packet is decoded.
    pub async fn next_packet(&mut self) -> io::Result<Packet> {
        next_packet(&mut self.stream, &mut self.rbuf).await
    }

    /// Sends SUBSCRIBE (packet id 1) without waiting for SUBACK.
    pub async fn send_subscribe(&mut self, filter: &str, qos: QoS) -> io::Result<()> {
        self.send(&subscribe_packet(1, [filter.to_string()], qos)).await
    }

    /// Subscribes to all of `filters` in one SUBSCRIBE with packet id `pkid` and returns the
    /// SUBACK's return codes (one per filter; a code >= 0x80 is a refusal).
    pub async fn subscribe_many(&mut self, pkid: u16, filters: &[String], qos: QoS) -> io::Result<Vec<u8>> {
        self.send(&subscribe_packet(pkid, filters.iter().cloned(), qos)).await?;
        self.read_suback(pkid, filters.len()).await
    }

    /// Waits for the SUBACK of SUBSCRIBE `pkid` of `n` filters and returns its return codes.
    pub async fn read_suback(&mut self, pkid: u16, n: usize) -> io::Result<Vec<u8>> {
        match self.next_packet().await? {
            Packet::SubAck(a) if a.pkid == pkid && a.codes.len() == n => Ok(a.codes),
            Packet::SubAck(a) => Err(proto_err(format!(
                "SUBACK {} with {} codes for SUBSCRIBE {pkid} of {n} filters",
                a.pkid,
                a.codes.len()
            ))),
            p => Err(proto_err(format!("expected SUBACK, got {}", p.name()))),
        }
    }

    /// Subscribes and waits for a SUBACK that grants the subscription at `qos` (a broker that
    /// grants less is an error: the scenario would not measure what it says).
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> io::Result<()> {
        self.send_subscribe(filter, qos).await?;
        match self.next_packet().await? {
            Packet::SubAck(a) if a.codes.first().is_some_and(|&c| c == qos as u8) => Ok(()),
            Packet::SubAck(a) => {
                Err(proto_err(format!("SUBACK for {filter} at QoS {}: granted {:?}", qos as u8, a.codes)))
            }
            p => Err(proto_err(format!("expected SUBACK, got {}", p.name()))),
        }
    }
}

/// A SUBSCRIBE of `filters`, all at `qos`.
pub fn subscribe_packet(pkid: u16, filters: impl IntoIterator<Item = String>, qos: QoS) -> Packet {
    let filters = filters
        .into_iter()
        .map(|filter| SubscribeFilter {
            filter,
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        })
        .collect();
    Packet::Subscribe(Subscribe { pkid, filters, properties: Properties::default() })
}

/// Encodes and writes one packet.
pub async fn send<S: AsyncWrite + Unpin>(s: &mut S, p: &Packet) -> io::Result<()> {
    send_as(s, p, V).await
}

/// [`send`] in protocol `version` (MQTT 5 for properties).
pub async fn send_as<S: AsyncWrite + Unpin>(
    s: &mut S,
    p: &Packet,
    version: ProtocolVersion,
) -> io::Result<()> {
    let mut out = BytesMut::new();
    encode(p, version, &mut out);
    s.write_all(&out).await?;
    s.flush().await
}

/// Reads from `s` until one whole packet is decoded from `rbuf`.
pub async fn next_packet<S: AsyncRead + Unpin>(s: &mut S, rbuf: &mut BytesMut) -> io::Result<Packet> {
    next_packet_as(s, rbuf, V).await
}

/// [`next_packet`] in protocol `version`.
pub async fn next_packet_as<S: AsyncRead + Unpin>(
    s: &mut S,
    rbuf: &mut BytesMut,
    version: ProtocolVersion,
) -> io::Result<Packet> {
    loop {
        if let Some(p) = decode_from_server(rbuf, version, &limits()).map_err(proto_err)? {
            return Ok(p);
        }
        rbuf.reserve(4096);
        if s.read_buf(rbuf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "broker closed the connection"));
        }
    }
}

/// Sends CONNECT (clean session, keep-alive 600 s, optional username/password) on any stream
/// (TCP or TLS) and waits for a successful CONNACK.
pub async fn mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    rbuf: &mut BytesMut,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> io::Result<()> {
    mqtt_connect_session(s, rbuf, client_id, login, true).await
}

/// [`mqtt_connect`] with the clean session flag: `false` asks for a persistent session (MQTT
/// 3.1.1 has no session expiry; it lasts until a clean CONNECT with the same client id).
pub async fn mqtt_connect_session<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    rbuf: &mut BytesMut,
    client_id: &str,
    login: Option<(&str, &str)>,
    clean: bool,
) -> io::Result<()> {
    let connect = Connect {
        protocol: V,
        clean_start: clean,
        keep_alive: 600,
        client_id: client_id.to_string(),
        will: None,
        username: login.map(|(u, _)| u.to_string()),
        password: login.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
        properties: Properties::default(),
    };
    send(s, &Packet::Connect(Box::new(connect))).await?;
    match next_packet(s, rbuf).await? {
        Packet::ConnAck(a) if a.code == 0 => Ok(()),
        Packet::ConnAck(a) => Err(proto_err(format!("CONNACK refused, code {:#x}", a.code))),
        p => Err(proto_err(format!("expected CONNACK, got {}", p.name()))),
    }
}

/// Builds a 64-byte payload for publisher `pub_id`.
pub fn payload(pub_id: u32, seq: u32, ts: u64) -> Bytes {
    payload_sized(pub_id, seq, ts, PAYLOAD_LEN)
}

/// [`payload`] of `len` bytes (at least 16).
pub fn payload_sized(pub_id: u32, seq: u32, ts: u64, len: usize) -> Bytes {
    let mut p = vec![0u8; len.max(16)];
    p[0..4].copy_from_slice(&pub_id.to_le_bytes());
    p[4..8].copy_from_slice(&seq.to_le_bytes());
    p[8..16].copy_from_slice(&ts.to_le_bytes());
    Bytes::from(p)
}

/// Payload encodings of the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// 64 bytes: publisher id, sequence number, timestamp (binary), zero padding.
    Binary,
    /// The binary layout padded with zeros to this many bytes (at least 16).
    Sized(usize),
    /// A JSON object of 6 fields (schema scenario), see [`json_payload`].
    Json,
}

const JSON_SEQ: &str = "{\"seq\":";
const JSON_TS: &str = ",\"ts\":";
const JSON_DEV: &str = ",\"device\":\"dev-";
/// Width of the space-padded sequence number and timestamp in the JSON payload.
const SEQ_W: usize = 10;
const TS_W: usize = 20;

/// The JSON payload of publisher `pub_id`: a typical 6-field sensor reading whose sequence
/// number and timestamp sit at fixed offsets (padded with spaces, valid JSON whitespace).
pub fn json_payload(pub_id: u32, seq: u32, ts: u64) -> Bytes {
    let mut s = format!("{JSON_SEQ}{seq:<SEQ_W$}{JSON_TS}{ts:<TS_W$}{JSON_DEV}{pub_id}\"");
    let temp = 15.0 + f64::from(pub_id % 20);
    s.push_str(&format!(",\"temp\":{temp:.2},\"hum\":48.25,\"ok\":true}}"));
    Bytes::from(s)
}

/// Writes `v` left-aligned and space-padded into `out` (exactly `out.len()` bytes).
fn put_padded(out: &mut [u8], v: u64) {
    let digits = v.to_string();
    out.fill(b' ');
    out[..digits.len()].copy_from_slice(digits.as_bytes());
}

fn parse_digits(p: &[u8]) -> Option<u64> {
    let end = p.iter().position(|b| !b.is_ascii_digit()).unwrap_or(p.len());
    std::str::from_utf8(&p[..end]).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &str) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle.as_bytes()).map(|i| i + needle.len())
}

/// Reads (publisher id, sequence number, timestamp) from a JSON payload.
fn parse_json_payload(p: &[u8]) -> Option<(u32, u32, u64)> {
    let seq = parse_digits(p.get(JSON_SEQ.len()..)?)?;
    let ts_at = JSON_SEQ.len() + SEQ_W + JSON_TS.len();
    let ts = parse_digits(p.get(ts_at..)?)?;
    let dev = parse_digits(&p[find(p, JSON_DEV)?..])?;
    Some((u32::try_from(dev).ok()?, u32::try_from(seq).ok()?, ts))
}

/// Reads (publisher id, sequence number, timestamp) from a payload.
fn parse_payload(p: &[u8]) -> Option<(u32, u32, u64)> {
    if p.starts_with(JSON_SEQ.as_bytes()) {
        return parse_json_payload(p);
    }
    if p.len() < 16 {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(p[i..i + 4].try_into().expect("4 bytes"));
    Some((u32_at(0), u32_at(4), u64::from_le_bytes(p[8..16].try_into().expect("8 bytes"))))
}

/// One PUBLISH encoded by the codec once; `put` copies it and patches seq, timestamp, packet id.
pub struct Template {
    frame: Vec<u8>,
    payload_at: usize,
    body: Body,
}

impl Template {
    pub fn new(topic: &str, qos: QoS, retain: bool, pub_id: u32) -> Self {
        Template::with_body(topic, qos, retain, pub_id, Body::Binary)
    }

    pub fn with_body(topic: &str, qos: QoS, retain: bool, pub_id: u32, body: Body) -> Self {
        let payload = match body {
            Body::Binary => payload(pub_id, 0, 0),
            Body::Sized(len) => payload_sized(pub_id, 0, 0, len),
            Body::Json => json_payload(pub_id, 0, 0),
        };
        let len = payload.len();
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            pkid: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: Properties::default(),
            payload,
        };
        let mut out = BytesMut::new();
        encode_publish(&p, V, &mut out);
        let payload_at = out.len() - len;
        Template { frame: out.to_vec(), payload_at, body }
    }

    pub fn len(&self) -> usize {
        self.frame.len()
    }

    /// Appends the frame with sequence number `seq`, timestamp `ts` and (QoS > 0) packet id.
    pub fn put(&self, out: &mut BytesMut, seq: u32, ts: u64, pkid: u16) {
        let start = out.len();
        out.extend_from_slice(&self.frame);
        let f = &mut out[start..];
        let p = self.payload_at;
        match self.body {
            Body::Binary | Body::Sized(_) => {
                f[p + 4..p + 8].copy_from_slice(&seq.to_le_bytes());
                f[p + 8..p + 16].copy_from_slice(&ts.to_le_bytes());
            }
            Body::Json => {
                let s = p + JSON_SEQ.len();
                put_padded(&mut f[s..s + SEQ_W], u64::from(seq));
                let t = s + SEQ_W + JSON_TS.len();
                put_padded(&mut f[t..t + TS_W], ts);
            }
        }
        if pkid != 0 {
            f[p - 2..p].copy_from_slice(&pkid.to_be_bytes());
        }
    }
}

/// Packet id for sequence number `seq` (never 0).
pub fn pkid_of(seq: u32) -> u16 {
    (seq % 65_535) as u16 + 1
}

/// What all receivers of one scenario share (single-threaded: `Rc<RefCell<_>>`).
#[derive(Default)]
pub struct RxShared {
    pub latency: Histogram,
    pub received: u64,
    pub first_rx_ns: u64,
    pub last_rx_ns: u64,
    pub errors: Vec<String>,
    /// QoS 2 PUBLISHes under a packet id still awaiting PUBREL for another message (lost).
    pub qos2_reused_ids: u64,
    /// PUBRELs for a packet id with no message awaiting release (answered with PUBCOMP).
    pub unknown_pubrels: u64,
}

pub type Shared = Rc<RefCell<RxShared>>;

/// Receives until the connection fails or the task is aborted: every PUBLISH is tracked, its
/// latency recorded, and acked: PUBACK at QoS 1; PUBREC at QoS 2, then PUBCOMP for its PUBREL
/// (all acks of one read in one write; a receiver without a writer refuses QoS 1 and 2).
pub async fn receive<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut rd: R,
    mut wr: Option<W>,
    mut buf: BytesMut,
    tracker: Rc<RefCell<Tracker>>,
    shared: Shared,
) {
    let err = receive_inner(&mut rd, &mut wr, &mut buf, &tracker, &shared).await;
    shared.borrow_mut().errors.push(format!("subscriber: {err}"));
}

async fn receive_inner<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    wr: &mut Option<W>,
    buf: &mut BytesMut,
    tracker: &Rc<RefCell<Tracker>>,
    shared: &Shared,
) -> io::Error {
    let limits = limits();
    let mut acks = RxAcks::default();
    loop {
        if let Err(e) = process(buf, &limits, &mut acks, tracker, shared) {
            return e;
        }
        if !acks.out.is_empty() {
            let Some(wr) = wr.as_mut() else {
                return proto_err("QoS 1 or 2 PUBLISH on a QoS 0 subscription");
            };
            if let Err(e) = wr.write_all(&acks.out).await {
                return e;
            }
            if let Err(e) = wr.flush().await {
                return e;
            }
            acks.out.clear();
        }
        buf.reserve(READ_CHUNK);
        match rd.read_buf(buf).await {
            Ok(0) => return io::Error::new(io::ErrorKind::UnexpectedEof, "broker closed the connection"),
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

/// Decodes what `buf` holds: PUBLISHes are tracked and acked, PUBRELs answered.
fn process(
    buf: &mut BytesMut,
    limits: &Limits,
    acks: &mut RxAcks,
    tracker: &Rc<RefCell<Tracker>>,
    shared: &Shared,
) -> io::Result<()> {
    let now = now_ns();
    let mut sh = shared.borrow_mut();
    let mut tr = tracker.borrow_mut();
    let mut delivered = false;
    while let Some(p) = decode_from_server(buf, V, limits).map_err(proto_err)? {
        match p {
            Packet::Publish(p) => match acks.on_publish(&p)? {
                ((pub_id, seq, ts), Arrival::New) => {
                    tr.mark(pub_id, seq);
                    sh.latency.record(now.saturating_sub(ts));
                    sh.received += 1;
                    delivered = true;
                }
                (_, Arrival::Resent) => {}
                (_, Arrival::Reused) => sh.qos2_reused_ids += 1,
            },
            Packet::PubRel(r) => sh.unknown_pubrels += u64::from(!acks.on_pubrel(r.pkid)),
            _ => {}
        }
    }
    if delivered {
        if sh.first_rx_ns == 0 {
            sh.first_rx_ns = now;
        }
        sh.last_rx_ns = now;
    }
    Ok(())
}

/// A receiver's acks to write and its QoS 2 messages awaiting PUBREL.
#[derive(Default)]
struct RxAcks {
    out: BytesMut,
    frames: AckFrames,
    unreleased: Unreleased,
}

impl RxAcks {
    /// Acks `p` (PUBACK at QoS 1, PUBREC at QoS 2) and returns its (publisher, sequence number,
    /// timestamp) and whether it is a delivery: at QoS 2 not when its packet id awaits PUBREL
    /// (see [`Arrival`]; a second delivery under a new packet id is a duplicate).
    fn on_publish(&mut self, p: &Publish) -> io::Result<((u32, u32, u64), Arrival)> {
        let msg =
            parse_payload(&p.payload).ok_or_else(|| proto_err("PUBLISH payload shorter than 16 bytes"))?;
        let arrival = match p.qos {
            QoS::AtMostOnce => Arrival::New,
            QoS::AtLeastOnce => {
                self.frames.put(&mut self.out, AckKind::Acked, p.pkid);
                Arrival::New
            }
            QoS::ExactlyOnce => {
                self.frames.put(&mut self.out, AckKind::Received, p.pkid);
                self.unreleased.publish(p.pkid, (msg.0, msg.1))
            }
        };
        Ok((msg, arrival))
    }

    /// Answers PUBREL with PUBCOMP (always, MQTT 4.3.3); `false` when no message awaited it.
    fn on_pubrel(&mut self, pkid: u16) -> bool {
        self.frames.put(&mut self.out, AckKind::Complete, pkid);
        self.unreleased.release(pkid)
    }
}

/// Publishes QoS 0 as fast as the socket takes it, `batch` frames per write, until `until_ns`.
/// A write the broker does not take by then (it pushes back) is abandoned: `sent` counts the
/// frames written whole. Returns the write half: dropping it would close the sending side.
pub async fn blast<W: AsyncWrite + Unpin>(
    wr: W,
    tpl: Template,
    batch: usize,
    until_ns: u64,
    sent: Rc<Cell<u64>>,
) -> io::Result<W> {
    blast_n(wr, tpl, batch, u32::MAX, until_ns, sent).await
}

/// [`blast`] that stops after `limit` frames (a multiple of `batch`, rounded up).
pub async fn blast_n<W: AsyncWrite + Unpin>(
    mut wr: W,
    tpl: Template,
    batch: usize,
    limit: u32,
    until_ns: u64,
    sent: Rc<Cell<u64>>,
) -> io::Result<W> {
    let mut out = BytesMut::with_capacity(batch * tpl.len());
    let mut seq = 0u32;
    while now_ns() < until_ns && seq < limit {
        let ts = now_ns();
        for _ in 0..batch {
            tpl.put(&mut out, seq, ts, 0);
            seq += 1;
        }
        let mut written = 0;
        while written < out.len() {
            let left = Duration::from_nanos(until_ns.saturating_sub(now_ns()));
            match tokio::time::timeout(left, wr.write(&out[written..])).await {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    let whole = (written / tpl.len()) as u32;
                    sent.set(u64::from(seq - batch as u32 + whole));
                    return Ok(wr);
                }
            }
        }
        out.clear();
        sent.set(u64::from(seq));
        // A TLS stream buffers: push the records out (a no-op on TCP).
        let left = Duration::from_nanos(until_ns.saturating_sub(now_ns()));
        if tokio::time::timeout(left, wr.flush()).await.is_err() {
            return Ok(wr);
        }
    }
    Ok(wr)
}

/// Publishes at `qos` (1 or 2) keeping `window` messages in flight until `done(seq)` says to
/// stop, then waits for the exchanges still open and returns the still connected client.
/// `frame(out, seq, ts, pkid)` appends message `seq`. A message leaves the window at PUBACK
/// (QoS 1) or PUBCOMP (QoS 2; each PUBREC is answered with PUBREL, in the next write); acks
/// the exchange does not expect are errors (see [`InFlight`]). With `acks`, records each
/// message's ack latency (send to PUBACK or PUBCOMP) and counts the acks.
pub async fn windowed(
    mut c: Client,
    qos: QoS,
    frame: impl Fn(&mut BytesMut, u32, u64, u16),
    window: u32,
    done: impl Fn(u32) -> bool,
    sent: Rc<Cell<u64>>,
    acks: Option<Rc<RefCell<AckStats>>>,
) -> io::Result<Client> {
    let limits = limits();
    let mut flight = InFlight::new(qos, acks.is_some());
    let mut out = BytesMut::with_capacity(window as usize * 128);
    let mut seq = 0u32;
    loop {
        let ts = now_ns();
        while flight.len() < window && !done(seq) {
            let id = pkid_of(seq);
            flight.publish(id, ts);
            frame(&mut out, seq, ts, id);
            seq += 1;
        }
        if !out.is_empty() {
            c.stream.write_all(&out).await?;
            out.clear();
            sent.set(u64::from(seq));
        }
        if flight.len() == 0 && done(seq) {
            return Ok(c);
        }
        c.rbuf.reserve(READ_CHUNK);
        if c.stream.read_buf(&mut c.rbuf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "broker closed the connection"));
        }
        let now = now_ns();
        let mut stats = acks.as_ref().map(|a| a.borrow_mut());
        while let Some(p) = decode_from_server(&mut c.rbuf, V, &limits).map_err(proto_err)? {
            if let (Some(id), Some(st)) = (flight.on_packet(&p, &mut out)?, stats.as_mut()) {
                st.latency.record(now.saturating_sub(flight.sent_at(id)));
                st.acked += 1;
                st.last_ns = now;
            }
        }
    }
}

/// Acks (PUBACK, or PUBCOMP at QoS 2) counted by [`windowed`] publishers: ack latency and the time of the last one.
#[derive(Default)]
pub struct AckStats {
    pub latency: Histogram,
    pub acked: u64,
    pub last_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_payload_round_trips_and_is_json() {
        let tpl = Template::with_body("t", QoS::AtLeastOnce, false, 42, Body::Json);
        let mut out = BytesMut::new();
        tpl.put(&mut out, 123_456, u64::MAX / 3, 7);
        let p = &out[tpl.payload_at..];
        let v: serde_json::Value = serde_json::from_slice(p).expect("valid JSON");
        assert_eq!(v["seq"], 123_456);
        assert_eq!(v["device"], "dev-42");
        assert_eq!(v.as_object().map(|o| o.len()), Some(6));
        assert_eq!(parse_payload(p), Some((42, 123_456, u64::MAX / 3)));
        assert_eq!(parse_payload(&payload(123, 5, 9)), Some((123, 5, 9)));
    }

    #[test]
    fn qos2_receiver_acks_each_step_and_catches_a_second_delivery() {
        let (tpl, frames) = (Template::new("bench/3", QoS::ExactlyOnce, false, 3), AckFrames::new());
        let mut buf = BytesMut::new();
        tpl.put(&mut buf, 7, 0, 10);
        tpl.put(&mut buf, 7, 0, 10); // resent before PUBREL: the same delivery
        tpl.put(&mut buf, 8, 0, 10); // id 10 reused before PUBREL: taken as a resend, lost
        frames.put(&mut buf, AckKind::Release, 10);
        tpl.put(&mut buf, 7, 0, 11); // the same message again under a new id: a duplicate
        frames.put(&mut buf, AckKind::Release, 10); // nothing awaits it: PUBCOMP anyway
        let tracker = Rc::new(RefCell::new(Tracker::new(4)));
        let shared: Shared = Rc::default();
        let mut acks = RxAcks::default();
        process(&mut buf, &limits(), &mut acks, &tracker, &shared).unwrap();
        assert!(buf.is_empty());
        let rec = |id| [0x50, 2, 0, id];
        let comp = [0x70, 2, 0, 10];
        let want = [rec(10), rec(10), rec(10), comp, rec(11), comp].concat();
        assert_eq!(&acks.out[..], &want[..]);
        assert_eq!((tracker.borrow().unique, tracker.borrow().dups), (1, 1));
        let sh = shared.borrow();
        assert_eq!((sh.received, sh.qos2_reused_ids, sh.unknown_pubrels), (2, 1, 1));
    }
}
