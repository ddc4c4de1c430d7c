//! The connection task: reads bytes, decodes packets, runs them through the protocol steps,
//! drains the session's mailbox and writes everything queued with as few syscalls as it can.
//!
//! One `select!` loop per connection: read (paused while the output buffer is over its
//! high-water mark, which pushes back on a client that does not read), write, mailbox
//! wake-ups, the liveness clocks (keep alive, packet deadline) and the kill switch (takeover,
//! shutdown).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{Instrument, debug, info};

use super::connect::{self, Accepted, WillSpec};
use super::ending;
use super::liveness::Liveness;
use super::outbound::{Outbound, OutboundLimits};
use super::pending::Pending;
use super::{Close, Ctx};
use crate::broker::Attached;
use crate::broker::session::Session;
use crate::model::Delivery;
use crate::model::{Kill, KillReason};
use dataloom_codec::{self as codec, Packet, ProtocolVersion, reason};

/// Stop reading from a client while this much output waits for it.
const OUT_HIGH_WATER: usize = 256 * 1024;
/// First read buffer of a connection: enough for a CONNECT, small for idle connections.
const READ_START: usize = 256;
/// Read buffer growth step while data flows, and the size above which an emptied buffer is
/// released (an idle connection keeps no large buffers).
const READ_CHUNK: usize = 8 * 1024;
const RELEASE_ABOVE: usize = 64 * 1024;
/// Stop reading from a client while this many responses wait for the store.
const MAX_PENDING: usize = 1024;
/// Bytes charged to the memory account per connection besides its buffers: its task, state
/// and session (an estimate; `dataloom-bench`'s idle scenario measures the real figure).
const CONN_BYTES: usize = std::mem::size_of::<Conn>() + 3072;

/// A connected client after a successful CONNECT.
pub struct Conn {
    pub(super) ctx: Arc<Ctx>,
    pub(super) version: ProtocolVersion,
    pub(super) session: Arc<Session>,
    pub(super) generation: u64,
    pub(super) keep_alive: Duration,
    pub(super) will: Option<Box<WillSpec>>,
    /// Topic aliases the client set up (v5), alias -> topic.
    pub(super) aliases_in: HashMap<u16, Bytes>,
    pub(super) out: Outbound,
    /// Responses waiting for the store, in request order.
    pub(super) pending: Pending,
    pub(super) wbuf: BytesMut,
    /// v5 Request Problem Information: reason strings may go on acks (false when the client sent 0).
    pub(super) problem_info: bool,
    /// Reason string of the closing DISCONNECT when it must say more than the `Close` does
    /// (a schema refusal names the schema, the field and what failed).
    pub(super) close_reason: Option<String>,
    /// What this connection may publish, subscribe to and read (compiled at CONNECT).
    pub(super) perms: Arc<crate::auth::Perms>,
    /// Deliveries of this client's last PUBLISH still waiting for room in a subscriber's
    /// queue; nothing more is read or decoded until they fit (backpressure).
    pub(super) blocked: Vec<(Arc<Session>, Delivery)>,
    /// This client's last PUBLISH found the store writer over `storage.max_write_backlog`:
    /// nothing more is read until it catches up (backpressure).
    pub(super) awaiting_store: bool,
    /// The schema governing this connection's last PUBLISH topic.
    pub(super) schema_memo: crate::schema::Memo,
    /// A SUBSCRIBE waiting for this node to catch up with the cluster's state
    /// (`Broker::cluster_sync`); nothing more is read or decoded until it is served.
    pub(super) deferred: Option<(dataloom_codec::Subscribe, futures_util::future::BoxFuture<'static, ()>)>,
    /// This connection's share of the memory account: its state and both buffers.
    mem: crate::model::Charge,
}

impl Conn {
    pub(super) fn new(
        ctx: Arc<Ctx>,
        version: ProtocolVersion,
        attached: Attached,
        keep_alive: Duration,
        will: Option<Box<WillSpec>>,
        limits: OutboundLimits,
    ) -> Conn {
        let mut out = Outbound::new(limits);
        out.generation = attached.generation;
        out.queued_before = attached.queued_before;
        Conn {
            ctx,
            version,
            session: attached.session,
            generation: attached.generation,
            keep_alive,
            will,
            aliases_in: HashMap::new(),
            out,
            pending: Pending::default(),
            wbuf: BytesMut::new(),
            problem_info: true,
            close_reason: None,
            perms: Arc::new(crate::auth::Perms::default()),
            blocked: Vec::new(),
            awaiting_store: false,
            schema_memo: crate::schema::Memo::default(),
            deferred: None,
            mem: crate::model::Charge::default(),
        }
    }

    /// Charges this connection's state and current buffer capacities to the memory account.
    fn charge_buffers(&mut self, rbuf: &BytesMut) {
        if self.mem.bytes() == 0 {
            self.mem = self.ctx.broker.memory().charge(CONN_BYTES);
        }
        self.mem.set(CONN_BYTES + rbuf.capacity() + self.wbuf.capacity());
    }
}

/// What the listener knows about a connection before MQTT starts.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The peer's address, for logs.
    pub peer: String,
    /// The listener's name: `tcp`, `tls`, `ws` or `wss`.
    pub listener: &'static str,
    /// The TLS client certificate's CN when the listener has `use_identity_as_username`; it
    /// replaces the CONNECT username.
    pub identity: Option<String>,
    /// When the CONNECT must have arrived: accept time plus the listener's connect timeout
    /// (TLS and WebSocket handshakes count against it).
    pub deadline: tokio::time::Instant,
    /// The WebSocket upgrade carried an `Origin` header: a web page, never loopback-trusted.
    pub browser: bool,
}

/// Serves one client connection from its first byte to its close. Never panics on input.
/// Returns why it ended: `Ok` after a session, `Err` when it ended before one (CONNECT
/// refused, malformed or late, or the peer left); the accept loop counts it.
///
/// Not an `async fn` itself: a connection's future is as large as its largest state for as
/// long as the connection lives, and a wrapper around the instrumented future would keep a
/// second copy of the stream and `info` (docs/architecture.md, "What an idle connection costs").
pub fn serve_connection<S>(
    stream: S,
    info: ConnInfo,
    ctx: Arc<Ctx>,
) -> impl Future<Output = Result<Close, Close>> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let span = tracing::info_span!(
        "conn",
        peer = %info.peer,
        listener = info.listener,
        client_id = tracing::field::Empty
    );
    serve_in_span(stream, Box::new(info), ctx).instrument(span)
}

/// [`serve_connection`] inside its span; `info` is boxed because an async fn keeps its
/// arguments for its whole life, and the connection needs it only until CONNECT.
async fn serve_in_span<S>(stream: S, info: Box<ConnInfo>, ctx: Arc<Ctx>) -> Result<Close, Close>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut rbuf = BytesMut::with_capacity(READ_START);
    let kill = Arc::new(Kill::default());
    // Boxed: the CONNECT's state is large and needed only until the session runs, so it
    // should not stay part of every connection's future.
    let mut conn = match Box::pin(handshake(&ctx, &info, &mut rd, &mut wr, &mut rbuf, kill.clone())).await {
        Ok(conn) => conn,
        Err(close) => {
            match close {
                Close::Refused(code) => info!(code = format_args!("0x{code:02X}"), "CONNECT refused"),
                _ => debug!(%close, "connection closed before session"),
            }
            return Err(close);
        }
    };
    let _online = crate::metrics::get().session_online();
    tracing::Span::current().record("client_id", &*conn.session.client_id);
    info!(protocol = ?conn.version, keep_alive = conn.keep_alive.as_secs(), "client connected");
    let close = conn.run(&mut rd, &mut wr, &mut rbuf, &kill).await;
    conn.finish(&close, &mut rd, &mut wr).await;
    info!(protocol = ?conn.version, reason = %close, "client disconnected");
    Ok(close)
}

/// Reads the CONNECT within the connect timeout, answers it and attaches the session.
async fn handshake<R, W>(
    ctx: &Arc<Ctx>,
    info: &ConnInfo,
    rd: &mut R,
    wr: &mut W,
    rbuf: &mut BytesMut,
    kill: Arc<Kill>,
) -> Result<Box<Conn>, Close>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // The version the CONNECT claims, read before decoding: a failed decode consumes the bytes.
    let mut sniffed = None;
    let read = tokio::time::timeout_at(info.deadline, read_connect(ctx, rd, rbuf, &mut sniffed)).await;
    let connect = match read {
        Err(_) => return Err(Close::Server(reason::MAXIMUM_CONNECT_TIME, "no CONNECT in time")),
        Ok(Err(Close::Decode(e))) => {
            if let Some((version, code)) = connect::refusal_for(&e, sniffed) {
                let mut out = BytesMut::new();
                connect::write_refusal(version, code, &mut out);
                ending::say_last(ctx, rd, wr, &out).await;
            }
            debug!(error = %e, rule = e.kind(), "bad CONNECT");
            return Err(Close::Decode(e));
        }
        Ok(Err(close)) => return Err(close),
        Ok(Ok(mut c)) => {
            if let Some(identity) = &info.identity {
                c.username = Some(identity.clone());
            }
            c
        }
    };
    let principal = match authenticate(ctx, info, &connect, &kill) {
        Ok(p) => p,
        Err(refused) => {
            // Bad credentials are answered late (growing per peer address): brute force slows down.
            tokio::time::sleep(refused.delay).await;
            let mut out = BytesMut::new();
            connect::write_refusal(connect.protocol, refused.code, &mut out);
            ending::say_last(ctx, rd, wr, &out).await;
            return Err(Close::Refused(refused.code));
        }
    };
    let mut out = BytesMut::new();
    let version = connect.protocol;
    match connect::accept(ctx, connect, kill, principal, &mut out).await {
        Accepted::Yes(conn, commit) => {
            if let Err(e) = commit.wait().await {
                tracing::error!(error = %e, "cannot store the session; refusing CONNECT");
                ctx.broker.detach(&conn.session, conn.generation);
                out.clear();
                connect::write_refusal(version, reason::UNSPECIFIED_ERROR, &mut out);
                ending::say_last(ctx, rd, wr, &out).await;
                return Err(Close::Refused(reason::UNSPECIFIED_ERROR));
            }
            let _ = wr.write_all(&out).await;
            Ok(conn)
        }
        Accepted::No(code) => {
            ending::say_last(ctx, rd, wr, &out).await;
            Err(Close::Refused(code))
        }
    }
}

/// Checks the CONNECT's credentials (the TLS identity, when set, replaced the username).
fn authenticate(
    ctx: &Ctx,
    info: &ConnInfo,
    c: &codec::Connect,
    kill: &Arc<Kill>,
) -> Result<crate::auth::Principal, crate::auth::Refused> {
    let cred = crate::auth::Cred {
        username: c.username.as_deref(),
        password: c.password.as_deref(),
        client_id: &c.client_id,
        cert_identity: info.identity.is_some(),
        peer: info.peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()),
        browser: info.browser,
    };
    ctx.auth.authenticate(&cred, kill)
}

async fn read_connect<R: AsyncRead + Unpin>(
    ctx: &Ctx,
    rd: &mut R,
    rbuf: &mut BytesMut,
    sniffed: &mut Option<ProtocolVersion>,
) -> Result<codec::Connect, Close> {
    // CONNECT has its own, smaller limit (`mqtt.max_connect_size`): before authentication a
    // connection may hold no more than that.
    let limits = codec::Limits {
        max_packet_size: ctx.decode_limits.max_packet_size.min(ctx.mqtt.max_connect_size),
        ..ctx.decode_limits.clone()
    };
    loop {
        *sniffed = connect::sniff_version(rbuf);
        match codec::decode(rbuf, None, &limits) {
            Ok(Some(Packet::Connect(c))) => {
                crate::metrics::get().packets_received[crate::metrics::pt::CONNECT].inc();
                return Ok(*c);
            }
            Ok(Some(_)) => return Err(Close::Decode(codec::DecodeError::FirstPacketNotConnect)),
            Ok(None) => {}
            Err(e) => return Err(Close::Decode(e)),
        }
        match read_more(rd, rbuf, &mut false).await {
            Ok(0) => return Err(Close::Io("closed before CONNECT".into())),
            Ok(_) => {}
            Err(e) => return Err(Close::Io(e.to_string())),
        }
    }
}

impl Conn {
    /// The main loop; returns why the connection ends.
    async fn run<R, W>(&mut self, rd: &mut R, wr: &mut W, rbuf: &mut BytesMut, kill: &Kill) -> Close
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.out.resend_inflight(&self.ctx.broker, &self.session, self.version, &mut self.wbuf);
        let mut live = Liveness::new(self.keep_alive, self.ctx.mqtt.packet_timeout, Instant::now());
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(live.deadline().map_or_else(far, Into::into));
        tokio::pin!(timer);
        // Long-lived wake-up futures: registered once, not once per loop iteration.
        let session = self.session.clone();
        // Set while reads fill the buffer: then reads get READ_CHUNK of room each.
        let mut busy = false;
        let killed = kill.fired();
        tokio::pin!(killed);
        let mail = session.mailbox.notified();
        tokio::pin!(mail);
        loop {
            // Under memory pressure each connection buffers less output: 1,000 subscribers that
            // stopped reading would otherwise hold 256 KiB each.
            let high = if self.ctx.broker.pressure() >= crate::model::Pressure::ShedQos0 {
                OUT_HIGH_WATER / 8
            } else {
                OUT_HIGH_WATER
            };
            if self.wbuf.len() < high {
                self.out.drain_mailbox(
                    &self.ctx.broker,
                    &self.session,
                    self.version,
                    &mut self.pending,
                    &mut self.wbuf,
                );
            }
            // After the drain: a stalled client's loop may not turn again for a long time.
            self.charge_buffers(rbuf);
            let want_mail = self.wbuf.len() < high && self.out.has_window(&self.session);
            let want_read = self.wbuf.len() < high
                && self.pending.len() < MAX_PENDING
                && self.blocked.is_empty()
                && !self.awaiting_store
                && self.deferred.is_none();
            tokio::select! {
                biased;
                r = &mut killed => return self.killed(r, rd, rbuf),
                w = wr.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    if let Err(e) = w {
                        return Close::Io(e.to_string());
                    }
                    if self.wbuf.is_empty() && self.wbuf.capacity() > RELEASE_ABOVE {
                        self.wbuf = BytesMut::new();
                    }
                }
                r = read_more(rd, rbuf, &mut busy), if want_read => {
                    match r {
                        Ok(0) => return Close::Io("closed by peer".into()),
                        Ok(_) => {}
                        Err(e) => return Close::Io(e.to_string()),
                    }
                    match self.handle_input(rbuf) {
                        Ok(decoded) => live.on_input(decoded, rbuf.len(), Instant::now()),
                        Err(close) => return close,
                    }
                    // A packet begun may run out before the timer as it stands.
                    if let Some(d) = live.deadline().map(tokio::time::Instant::from)
                        && d < timer.deadline()
                    {
                        timer.as_mut().reset(d);
                    }
                }
                r = self.pending.next_ready(), if !self.pending.is_empty() => {
                    if let Err(e) = self.pending.complete_front(r, &mut self.wbuf) {
                        tracing::error!(error = %e, "store failed; closing connection");
                        return Close::Server(reason::UNSPECIFIED_ERROR, "store failure");
                    }
                }
                _ = &mut mail, if want_mail => {
                    mail.set(session.mailbox.notified());
                }
                _ = rare(!self.blocked.is_empty(), || wait_for_room(&self.blocked)), if !self.blocked.is_empty() => {
                    self.ctx.broker.offer_blocked(&mut self.blocked, false);
                    if self.blocked.is_empty() {
                        match self.handle_input(rbuf) {
                            Ok(decoded) => live.on_input(decoded, rbuf.len(), Instant::now()),
                            Err(close) => return close,
                        }
                    }
                }
                _ = rare(self.awaiting_store, || store_room(&self.ctx)), if self.awaiting_store => {
                    self.awaiting_store = false;
                    match self.handle_input(rbuf) {
                        Ok(decoded) => live.on_input(decoded, rbuf.len(), Instant::now()),
                        Err(close) => return close,
                    }
                }
                () = cluster_synced(&mut self.deferred), if self.deferred.is_some() => {
                    if let Some((s, _)) = self.deferred.take()
                        && let Err(close) = self.subscribe_now(s)
                    {
                        return close;
                    }
                    match self.handle_input(rbuf) {
                        Ok(decoded) => live.on_input(decoded, rbuf.len(), Instant::now()),
                        Err(close) => return close,
                    }
                }
                _ = &mut timer, if live.deadline().is_some() => {
                    let now = Instant::now();
                    if !want_read {
                        // Not reading is our choice, not the client's silence.
                        live.excuse(now);
                    }
                    if let Some(why) = live.expired(now) {
                        return Close::Server(reason::KEEP_ALIVE_TIMEOUT, why);
                    }
                    timer.as_mut().reset(live.deadline().map_or_else(far, Into::into));
                }
            }
            if !self.session.is_owner(self.generation) {
                // Taken by force (this connection did not let go in time): the kill fired first.
                let r = kill.reason().unwrap_or(KillReason::TakenOver { clean_start: true });
                return self.killed(r, rd, rbuf);
            }
        }
    }

    /// Decodes and handles every complete packet in `rbuf`; returns how many there were.
    pub(super) fn handle_input(&mut self, rbuf: &mut BytesMut) -> Result<usize, Close> {
        let mut decoded = 0;
        // A buffer grown for a large packet: small messages decoded from it are copied out, or
        // one queued 10-byte message would keep the whole allocation alive.
        let large = rbuf.capacity() > RELEASE_ABOVE;
        loop {
            if !self.blocked.is_empty() || self.awaiting_store || self.deferred.is_some() {
                return Ok(decoded);
            }
            match codec::decode(rbuf, Some(self.version), &self.ctx.decode_limits) {
                Ok(Some(mut p)) => {
                    if large {
                        unpin_small(&mut p);
                    }
                    decoded += 1;
                    crate::metrics::get().packet_received(&p);
                    self.handle_packet(p)?;
                }
                Ok(None) => return Ok(decoded),
                Err(e) => return Err(Close::Decode(e)),
            }
        }
    }
}

/// The future of a `select!` branch that is rarely enabled, boxed and only made when `enabled`:
/// `select!` evaluates every branch's future on every turn, and each one unboxed would be part
/// of every connection's state for its whole life (docs/architecture.md, "What an idle
/// connection costs"). A disabled branch is never polled, so `None` is never awaited.
fn rare<'a, F: Future<Output = ()> + Send + 'a>(
    enabled: bool,
    make: impl FnOnce() -> F,
) -> futures_util::future::OptionFuture<std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>> {
    let boxed = || -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>> { Box::pin(make()) };
    enabled.then(boxed).into()
}

/// Resolves when the first blocked delivery's queue may have room (checked again at least
/// every few milliseconds, so a subscriber that stalls meanwhile is noticed).
async fn wait_for_room(blocked: &[(Arc<Session>, Delivery)]) {
    if let Some((session, _)) = blocked.first() {
        session.mailbox.space(Duration::from_millis(5)).await;
    }
}

/// Resolves when the deferred SUBSCRIBE's cluster sync is done (never when none waits).
async fn cluster_synced(
    deferred: &mut Option<(dataloom_codec::Subscribe, futures_util::future::BoxFuture<'static, ()>)>,
) {
    match deferred {
        Some((_, wait)) => wait.await,
        None => std::future::pending().await,
    }
}

/// Copies the topic and payload of a PUBLISH of at most [`READ_CHUNK`] bytes out of the read
/// buffer they slice.
fn unpin_small(p: &mut Packet) {
    if let Packet::Publish(p) = p
        && p.payload.len() <= READ_CHUNK
    {
        p.payload = Bytes::copy_from_slice(&p.payload);
        p.topic = Bytes::copy_from_slice(&p.topic);
    }
}

/// Resolves once the store writer is under `storage.max_write_backlog` again.
async fn store_room(ctx: &Ctx) {
    if let Some(backlog) = ctx.broker.store().backlog() {
        backlog.room().await;
    }
}

pub(super) async fn read_more<R: AsyncRead + Unpin>(
    rd: &mut R,
    rbuf: &mut BytesMut,
    busy: &mut bool,
) -> std::io::Result<usize> {
    if rbuf.is_empty() && !*busy && rbuf.capacity() > RELEASE_ABOVE {
        *rbuf = BytesMut::with_capacity(READ_START);
    }
    // An idle connection reads into a small buffer; one whose reads fill the buffer (a busy
    // publisher) gets READ_CHUNK of room per read, so it needs few system calls.
    let room = if *busy { READ_CHUNK } else { READ_START };
    if rbuf.capacity() - rbuf.len() < room / 2 {
        rbuf.reserve(room);
    }
    let spare = rbuf.capacity() - rbuf.len();
    let n = rd.read_buf(rbuf).await?;
    *busy = n * 2 >= spare;
    Ok(n)
}
