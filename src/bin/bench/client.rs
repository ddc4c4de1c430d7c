//! The generator's MQTT 3.1.1 client, built on dataloom's codec: connect and subscribe, PUBLISH
//! frame templates (encoded once with `encode_publish`, then only sequence number, timestamp and
//! packet id are patched), and the receive loop that decodes with `decode_from_server`, records
//! latency, loss and duplicates, and acks QoS 1 in one write per read.
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
use dataloom::codec::{
    Ack, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, RetainHandling, Subscribe,
    SubscribeFilter, decode_from_server, encode, encode_publish,
};
use dataloom::codec::{Limits, Packet::PubAck};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stats::{Histogram, Tracker, now_ns};

/// Every client speaks MQTT 3.1.1.
pub const V: ProtocolVersion = ProtocolVersion::V3_1_1;
pub const PAYLOAD_LEN: usize = 64;
const READ_CHUNK: usize = 64 * 1024;

fn limits() -> Limits {
    Limits { max_packet_size: 16 * 1024 * 1024, ..Limits::default() }
}

fn proto_err(what: impl std::fmt::Display) -> io::Error {
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
        let mut stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut rbuf = BytesMut::with_capacity(4096);
        mqtt_connect(&mut stream, &mut rbuf, client_id, login).await?;
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
        let f = SubscribeFilter {
            filter: filter.to_string(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        };
        let sub = Subscribe { pkid: 1, filters: vec![f], properties: Properties::default() };
        self.send(&Packet::Subscribe(sub)).await
    }

    /// Subscribes and waits for a SUBACK that grants the subscription.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> io::Result<()> {
        self.send_subscribe(filter, qos).await?;
        match self.next_packet().await? {
            Packet::SubAck(a) if a.codes.first().is_some_and(|&c| c < 0x80) => Ok(()),
            Packet::SubAck(a) => Err(proto_err(format!("SUBACK refused {filter}: {:?}", a.codes))),
            p => Err(proto_err(format!("expected SUBACK, got {}", p.name()))),
        }
    }
}

/// Encodes and writes one packet.
pub async fn send<S: AsyncWrite + Unpin>(s: &mut S, p: &Packet) -> io::Result<()> {
    let mut out = BytesMut::new();
    encode(p, V, &mut out);
    s.write_all(&out).await?;
    s.flush().await
}

/// Reads from `s` until one whole packet is decoded from `rbuf`.
pub async fn next_packet<S: AsyncRead + Unpin>(s: &mut S, rbuf: &mut BytesMut) -> io::Result<Packet> {
    loop {
        if let Some(p) = decode_from_server(rbuf, V, &limits()).map_err(proto_err)? {
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
    let connect = Connect {
        protocol: V,
        clean_start: true,
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
            Body::Binary => {
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
}

pub type Shared = Rc<RefCell<RxShared>>;

/// Receives until the connection fails or the task is aborted: every PUBLISH is tracked, its
/// latency recorded, and QoS 1 acked (all acks of one read in one write; a receiver without a
/// writer refuses QoS 1).
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
    let mut acks = BytesMut::with_capacity(4096);
    let ack_tpl = {
        let mut b = BytesMut::new();
        encode(&PubAck(Ack { pkid: 1, code: 0, properties: Properties::default() }), V, &mut b);
        b.to_vec()
    };
    loop {
        if let Err(e) = process(buf, &limits, &mut acks, &ack_tpl, tracker, shared) {
            return e;
        }
        if !acks.is_empty() {
            let Some(wr) = wr.as_mut() else {
                return proto_err("QoS 1 PUBLISH on a QoS 0 subscription");
            };
            if let Err(e) = wr.write_all(&acks).await {
                return e;
            }
            if let Err(e) = wr.flush().await {
                return e;
            }
            acks.clear();
        }
        buf.reserve(READ_CHUNK);
        match rd.read_buf(buf).await {
            Ok(0) => return io::Error::new(io::ErrorKind::UnexpectedEof, "broker closed the connection"),
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

fn process(
    buf: &mut BytesMut,
    limits: &Limits,
    acks: &mut BytesMut,
    ack_tpl: &[u8],
    tracker: &Rc<RefCell<Tracker>>,
    shared: &Shared,
) -> io::Result<()> {
    let now = now_ns();
    let mut sh = shared.borrow_mut();
    let mut tr = tracker.borrow_mut();
    while let Some(p) = decode_from_server(buf, V, limits).map_err(proto_err)? {
        let Packet::Publish(p) = p else { continue };
        let (pub_id, seq, ts) =
            parse_payload(&p.payload).ok_or_else(|| proto_err("PUBLISH payload shorter than 16 bytes"))?;
        tr.mark(pub_id, seq);
        sh.latency.record(now.saturating_sub(ts));
        sh.received += 1;
        if p.qos != QoS::AtMostOnce {
            if p.qos == QoS::ExactlyOnce {
                return Err(proto_err("QoS 2 PUBLISH received, subscribed at most QoS 1"));
            }
            let at = acks.len();
            acks.extend_from_slice(ack_tpl);
            acks[at + 2..at + 4].copy_from_slice(&p.pkid.to_be_bytes());
        }
    }
    if sh.first_rx_ns == 0 {
        sh.first_rx_ns = now;
    }
    sh.last_rx_ns = now;
    Ok(())
}

/// Publishes QoS 0 as fast as the socket takes it, `batch` frames per write, until `until_ns`.
/// A write the broker does not take by then (it pushes back) is abandoned: `sent` counts the
/// frames written whole. Returns the write half: dropping it would close the sending side.
pub async fn blast<W: AsyncWrite + Unpin>(
    mut wr: W,
    tpl: Template,
    batch: usize,
    until_ns: u64,
    sent: Rc<Cell<u64>>,
) -> io::Result<W> {
    let mut out = BytesMut::with_capacity(batch * tpl.len());
    let mut seq = 0u32;
    while now_ns() < until_ns {
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

/// Publishes QoS 1 keeping `window` messages in flight until `done(seq)` says to stop, then waits
/// for the remaining PUBACKs and returns the still connected client. `frame(out, seq, ts, pkid)`
/// appends message `seq`. Checks that every PUBACK answers an outstanding packet id. With
/// `acks`, records each message's ack latency (send to PUBACK) and counts the acks.
pub async fn windowed(
    mut c: Client,
    frame: impl Fn(&mut BytesMut, u32, u64, u16),
    window: u32,
    done: impl Fn(u32) -> bool,
    sent: Rc<Cell<u64>>,
    acks: Option<Rc<RefCell<AckStats>>>,
) -> io::Result<Client> {
    let limits = limits();
    let mut outstanding = vec![0u64; 65_536 / 64];
    let mut sent_at = if acks.is_some() { vec![0u64; 65_536] } else { Vec::new() };
    let mut out = BytesMut::with_capacity(window as usize * 128);
    let (mut seq, mut inflight) = (0u32, 0u32);
    loop {
        let ts = now_ns();
        while inflight < window && !done(seq) {
            let id = pkid_of(seq);
            outstanding[usize::from(id) / 64] |= 1 << (id % 64);
            if let Some(t) = sent_at.get_mut(usize::from(id)) {
                *t = ts;
            }
            frame(&mut out, seq, ts, id);
            seq += 1;
            inflight += 1;
        }
        if !out.is_empty() {
            c.stream.write_all(&out).await?;
            out.clear();
            sent.set(u64::from(seq));
        }
        if inflight == 0 && done(seq) {
            return Ok(c);
        }
        c.rbuf.reserve(READ_CHUNK);
        if c.stream.read_buf(&mut c.rbuf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "broker closed the connection"));
        }
        let now = now_ns();
        let mut stats = acks.as_ref().map(|a| a.borrow_mut());
        while let Some(p) = decode_from_server(&mut c.rbuf, V, &limits).map_err(proto_err)? {
            if let Packet::PubAck(a) = p {
                let (w, b) = (usize::from(a.pkid) / 64, a.pkid % 64);
                if outstanding[w] & (1 << b) == 0 {
                    return Err(proto_err(format!("PUBACK for packet id {} not in flight", a.pkid)));
                }
                outstanding[w] &= !(1 << b);
                inflight -= 1;
                if let Some(st) = stats.as_mut() {
                    st.latency.record(now.saturating_sub(sent_at[usize::from(a.pkid)]));
                    st.acked += 1;
                    st.last_ns = now;
                }
            }
        }
    }
}

/// PUBACKs counted by [`windowed`] publishers: ack latency and the time of the last one.
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
}
