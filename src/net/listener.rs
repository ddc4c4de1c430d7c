//! The four kinds of listener (`tcp`, `tls`, `ws`, `wss`) and what each does with an accepted
//! connection before MQTT starts: nothing, a TLS handshake, a WebSocket upgrade, or both, all
//! within the listener's connect deadline. Also binds the listeners the config turns on.
//!
//! A failed or late handshake (garbage or plaintext on a TLS port, an HTTP request without
//! upgrade, a client certificate from another CA) closes that connection, is logged at debug
//! and counted in [`handshake_failures`]; nothing else notices.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, info};

use super::per_ip::PerIp;
use super::tls::{Tls, TlsError, TlsSettings};
use super::ws::{self, WsSettings};
use crate::config::Config;
use crate::metrics::{Counted, Transport};
use crate::session::{Close, ConnInfo, Ctx, serve_connection};
use dataloom_codec::reason;

/// Handshakes that failed or timed out, per [`Transport`] (index `Transport as usize`).
static HANDSHAKE_FAILURES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// TLS and WebSocket handshakes that failed or timed out on listeners of kind `t` since start.
pub fn handshake_failures(t: Transport) -> u64 {
    HANDSHAKE_FAILURES[t as usize].load(Ordering::Relaxed)
}

/// What a listener does with a connection before MQTT starts.
#[derive(Debug, Clone)]
pub enum Upgrade {
    /// Plain MQTT.
    Tcp,
    /// MQTT over TLS.
    Tls(Arc<Tls>),
    /// MQTT over WebSocket.
    Ws(WsSettings),
    /// MQTT over secure WebSocket.
    Wss(Arc<Tls>, WsSettings),
}

/// One listener's behaviour and limits.
#[derive(Debug)]
pub struct Listener {
    /// How an accepted socket becomes an MQTT byte stream.
    pub upgrade: Upgrade,
    /// From accept to CONNECT, handshakes included.
    pub connect_timeout: Duration,
    /// This listener's own connection limit (beside the broker-wide one), if it has one.
    pub permits: Option<Arc<Semaphore>>,
    /// Connections per peer address (`max_connections_per_ip`), if limited.
    pub per_ip: Option<Arc<PerIp>>,
}

/// The limits of one `[listeners.*]` section.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_connections` (0 = no own limit).
    pub max_connections: usize,
    /// `max_connections_per_ip` (0 = no limit).
    pub max_connections_per_ip: usize,
    /// From accept to CONNECT, handshakes included.
    pub connect_timeout: Duration,
}

impl Listener {
    /// A listener doing `upgrade` within `limits`.
    pub fn new(upgrade: Upgrade, limits: Limits) -> Listener {
        let max = limits.max_connections;
        let permits = (max > 0).then(|| Arc::new(Semaphore::new(max)));
        let per_ip = PerIp::new(limits.max_connections_per_ip);
        Listener { upgrade, connect_timeout: limits.connect_timeout, permits, per_ip }
    }

    /// The transport this listener speaks.
    pub fn transport(&self) -> Transport {
        match self.upgrade {
            Upgrade::Tcp => Transport::Tcp,
            Upgrade::Tls(_) => Transport::Tls,
            Upgrade::Ws(_) => Transport::Ws,
            Upgrade::Wss(..) => Transport::Wss,
        }
    }

    /// Runs the handshakes by the deadline, then the MQTT connection; returns how it ended
    /// (as [`serve_connection`] does; a failed handshake is an `Err`).
    pub async fn serve(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        accepted: Instant,
        ctx: Arc<Ctx>,
    ) -> Result<Close, Close> {
        let deadline = accepted + self.connect_timeout;
        let t = self.transport();
        let info = |identity, browser| ConnInfo {
            peer: peer.to_string(),
            listener: t.label(),
            identity,
            deadline,
            browser,
        };
        // The TLS and WebSocket states are boxed: a future is as large as its largest
        // variant, and a plain TCP connection should not carry a TLS session's worth of memory.
        match &self.upgrade {
            Upgrade::Tcp => serve_connection(Counted::new(stream), info(None, false), ctx).await,
            Upgrade::Tls(tls) => {
                Box::pin(async {
                    let (s, identity) = handshake(t, peer, deadline, "TLS", tls.accept(stream)).await?;
                    serve_connection(Counted::new(s), info(identity, false), ctx).await
                })
                .await
            }
            Upgrade::Ws(settings) => {
                Box::pin(async {
                    let (s, browser) =
                        handshake(t, peer, deadline, "WebSocket", ws::accept(stream, settings)).await?;
                    serve_connection(Counted::new(s), info(None, browser), ctx).await
                })
                .await
            }
            Upgrade::Wss(tls, settings) => {
                Box::pin(async {
                    let (s, identity) = handshake(t, peer, deadline, "TLS", tls.accept(stream)).await?;
                    let (s, browser) =
                        handshake(t, peer, deadline, "WebSocket", ws::accept(s, settings)).await?;
                    serve_connection(Counted::new(s), info(identity, browser), ctx).await
                })
                .await
            }
        }
    }
}

async fn handshake<T, E: std::fmt::Display>(
    t: Transport,
    peer: SocketAddr,
    deadline: Instant,
    what: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, Close> {
    let failed = |close: Close| {
        HANDSHAKE_FAILURES[t as usize].fetch_add(1, Ordering::Relaxed);
        debug!(%peer, listener = t.label(), reason = %close, "handshake failed; connection closed");
        Err(close)
    };
    match tokio::time::timeout_at(deadline, fut).await {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => failed(Close::Io(format!("{what} handshake failed: {e}"))),
        Err(_) => failed(Close::Server(reason::MAXIMUM_CONNECT_TIME, "no handshake in time")),
    }
}

/// Every listener the configuration turns on, bound and ready to accept.
#[derive(Debug)]
pub struct Bound {
    /// The TCP listener and its settings.
    pub tcp: (TcpListener, Arc<Listener>),
    /// The TLS listener, when configured.
    pub tls: Option<(TcpListener, Arc<Listener>)>,
    /// The WebSocket listener, when configured.
    pub ws: Option<(TcpListener, Arc<Listener>)>,
    /// The secure WebSocket listener, when configured.
    pub wss: Option<(TcpListener, Arc<Listener>)>,
    /// The certificates of the TLS listeners, for [`reload_certs`].
    pub certs: Vec<Arc<Tls>>,
}

/// Why the listeners could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// An address cannot be bound.
    #[error("{0}")]
    Bind(#[from] std::io::Error),
    /// A certificate or key is unusable.
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// Loads the certificates and binds every listener `cfg` turns on (the TCP one always).
///
/// # Errors
/// [`ListenError`] naming the address or certificate file that failed.
pub async fn bind_all(cfg: &Config) -> Result<Bound, ListenError> {
    let l = &cfg.listeners;
    let limits = |max_connections, max_connections_per_ip, t: Option<Duration>| Limits {
        max_connections,
        max_connections_per_ip,
        connect_timeout: t.unwrap_or(cfg.mqtt.connect_timeout),
    };
    let ws_settings = |path: &str, origins: &[String]| {
        WsSettings::new(path, cfg.mqtt.max_packet_size).with_origins(origins)
    };
    let mut certs = Vec::new();
    let tcp = Listener::new(
        Upgrade::Tcp,
        limits(l.tcp.max_connections, l.tcp.max_connections_per_ip, l.tcp.connect_timeout),
    );
    let tcp = (super::bind(&l.tcp.bind).await?.0, Arc::new(tcp));
    let tls = if l.tls.enabled() {
        let tls = Arc::new(Tls::load(TlsSettings::from(&l.tls))?);
        certs.push(tls.clone());
        let listener = Listener::new(
            Upgrade::Tls(tls),
            limits(l.tls.max_connections, l.tls.max_connections_per_ip, l.tls.connect_timeout),
        );
        Some((super::bind(&l.tls.bind).await?.0, Arc::new(listener)))
    } else {
        None
    };
    let ws = if l.ws.enabled() {
        let upgrade = Upgrade::Ws(ws_settings(&l.ws.path, &l.ws.allowed_origins));
        let listener = Listener::new(
            upgrade,
            limits(l.ws.max_connections, l.ws.max_connections_per_ip, l.ws.connect_timeout),
        );
        Some((super::bind(&l.ws.bind).await?.0, Arc::new(listener)))
    } else {
        None
    };
    let wss = if l.wss.enabled() {
        let tls = Arc::new(Tls::load(TlsSettings::from(&l.wss))?);
        certs.push(tls.clone());
        let upgrade = Upgrade::Wss(tls, ws_settings(&l.wss.path, &l.wss.allowed_origins));
        let listener = Listener::new(
            upgrade,
            limits(l.wss.max_connections, l.wss.max_connections_per_ip, l.wss.connect_timeout),
        );
        Some((super::bind(&l.wss.bind).await?.0, Arc::new(listener)))
    } else {
        None
    };
    Ok(Bound { tcp, tls, ws, wss, certs })
}

/// Where the listeners of a [`Bound`] are, once spawned.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// Bound TCP address.
    pub tcp: SocketAddr,
    /// Bound TLS address.
    pub tls: Option<SocketAddr>,
    /// Bound WebSocket address.
    pub ws: Option<SocketAddr>,
    /// Bound secure WebSocket address.
    pub wss: Option<SocketAddr>,
}

impl Bound {
    /// Spawns an accept loop per listener; each stops when `shutdown` turns true.
    ///
    /// # Errors
    /// The I/O error of reading a listener's local address.
    pub fn spawn(
        self,
        ctx: &Arc<Ctx>,
        permits: &Arc<Semaphore>,
        shutdown: &watch::Receiver<bool>,
    ) -> std::io::Result<(Addrs, Vec<Arc<Tls>>)> {
        let run = |(listener, kind): (TcpListener, Arc<Listener>)| -> std::io::Result<SocketAddr> {
            let addr = listener.local_addr()?;
            info!(%addr, listener = kind.transport().label(), "MQTT listener ready");
            tokio::spawn(super::accept_loop(listener, kind, ctx.clone(), permits.clone(), shutdown.clone()));
            Ok(addr)
        };
        let addrs = Addrs {
            tcp: run(self.tcp)?,
            tls: self.tls.map(run).transpose()?,
            ws: self.ws.map(run).transpose()?,
            wss: self.wss.map(run).transpose()?,
        };
        Ok((addrs, self.certs))
    }
}

/// Reloads every TLS listener's certificate files; later handshakes use the new ones.
///
/// # Errors
/// The first [`TlsError`]; the listeners that failed keep their previous certificates.
pub fn reload_certs(certs: &[Arc<Tls>]) -> Result<(), TlsError> {
    let mut first = None;
    for tls in certs {
        if let Err(e) = tls.reload() {
            tracing::warn!(error = %e, listener = tls.section(), "certificate reload failed; keeping the old one");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}
