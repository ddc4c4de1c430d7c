//! MQTT over WebSocket for the `ws` and `wss` listeners: the HTTP upgrade (path check, the
//! `Origin` rule, `Sec-WebSocket-Protocol: mqtt`) and [`WsStream`], which turns binary WebSocket messages
//! back into the byte stream the session reads, so the session never knows it is there.
//!
//! Message boundaries are not packet boundaries: a packet may span messages and a message may
//! hold several packets; the session's decoder sees only bytes. Text messages are refused
//! (close 1003); pings are answered by tungstenite; a close ends the stream like EOF.
//!
//! Origin: an upgrade whose `Origin` header is present and not in the listener's
//! `allowed_origins` gets `403` before MQTT starts, so a web page the operator opens cannot
//! talk to the broker. No `Origin` (MQTT libraries outside browsers) is allowed. [`accept`]
//! reports whether an `Origin` was present: such a client is never loopback-trusted by auth.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

/// Subprotocol names accepted, preferred first: MQTT 3.1.1/5.0 say `mqtt`; MQTT 3.1 clients
/// (older Paho JS) offer `mqttv3.1`.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Settings of a WebSocket listener.
#[derive(Debug, Clone)]
pub struct WsSettings {
    /// The HTTP path clients upgrade on; other paths get `404`.
    pub path: String,
    /// Largest WebSocket message or frame accepted, bytes.
    pub max_message_size: usize,
    /// Web origins whose pages may connect (`allowed_origins`).
    pub allowed_origins: Vec<String>,
}

impl WsSettings {
    /// Settings for `path`; messages may hold up to two of the largest packets (at least 64 KiB).
    pub fn new(path: &str, max_packet_size: u32) -> WsSettings {
        let packet = usize::try_from(max_packet_size).unwrap_or(usize::MAX);
        WsSettings {
            path: path.to_string(),
            max_message_size: packet.saturating_mul(2).max(64 * 1024),
            allowed_origins: Vec::new(),
        }
    }

    /// These settings with `origins` as the allowed web origins.
    pub fn with_origins(mut self, origins: &[String]) -> WsSettings {
        self.allowed_origins = origins.to_vec();
        self
    }
}

/// Runs the server side of the WebSocket upgrade on `stream`; also says whether the request
/// carried an `Origin` header (a web page).
///
/// # Errors
/// The handshake's error: not an HTTP upgrade request, wrong path, foreign origin, I/O.
#[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
pub async fn accept<S>(stream: S, settings: &WsSettings) -> Result<(WsStream<S>, bool), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut browser = false;
    let callback = |req: &Request, resp: Response| {
        browser = req.headers().contains_key("Origin");
        check_request(settings, req, resp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    Ok((WsStream::new(ws), browser))
}

/// Checks the path and the origin, and picks the subprotocol: answers `mqtt` when the client
/// offers it. A client that offers no subprotocol is accepted (some embedded clients send
/// none); one that offers only others is accepted without a subprotocol, and its WebSocket
/// library decides.
#[allow(clippy::result_large_err)] // the signature tungstenite's callback requires
fn check_request(
    settings: &WsSettings,
    req: &Request,
    mut resp: Response,
) -> Result<Response, ErrorResponse> {
    let path = &settings.path;
    if req.uri().path() != path {
        let mut err = ErrorResponse::new(Some(format!("no MQTT WebSocket endpoint here; use {path}\n")));
        *err.status_mut() = StatusCode::NOT_FOUND;
        return Err(err);
    }
    if let Some(origin) = req.headers().get("Origin") {
        let origin = origin.to_str().unwrap_or("");
        if !crate::config::origin_allowed(&settings.allowed_origins, origin) {
            let text = format!("Origin {origin:?} is not in this listener's allowed_origins\n");
            let mut err = ErrorResponse::new(Some(text));
            *err.status_mut() = StatusCode::FORBIDDEN;
            return Err(err);
        }
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
        resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
    }
    Ok(resp)
}

/// A WebSocket connection as a byte stream: reads return the payloads of binary messages,
/// writes send binary messages.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    /// Written messages not yet flushed to the socket.
    unflushed: bool,
    /// The peer closed, or sent a text message (then our close carries 1003).
    read_done: bool,
    close_frame: Option<CloseFrame>,
}

impl<S> std::fmt::Debug for WsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsStream").field("pending", &self.pending.len()).finish_non_exhaustive()
    }
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "WebSocket closed")
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S> WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps an upgraded WebSocket.
    pub fn new(inner: WebSocketStream<S>) -> WsStream<S> {
        WsStream { inner, pending: Bytes::new(), unflushed: false, read_done: false, close_frame: None }
    }

    /// Pushes buffered messages towards the socket; `Pending` leaves them for later calls.
    fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed {
            ready!(Pin::new(&mut self.inner).poll_flush(cx)).map_err(to_io)?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S> AsyncRead for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // The session polls reads far more often than writes: use the chance to finish a
        // flush an earlier write left pending (its error shows up on the next write).
        if let Poll::Ready(Err(_)) = this.poll_push(cx) {
            this.unflushed = false;
        }
        loop {
            if !this.pending.is_empty() {
                let n = buf.remaining().min(this.pending.len());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None | Some(Ok(Message::Close(_))) => {
                    this.read_done = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(Message::Binary(b))) => this.pending = b,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    this.read_done = true;
                    let frame = CloseFrame {
                        code: CloseCode::Unsupported,
                        reason: "MQTT needs binary frames".into(),
                    };
                    // Send the close now: the session may drop the stream without shutting it
                    // down (before CONNECT). If the socket is busy, poll_shutdown sends it.
                    match Pin::new(&mut this.inner).poll_ready(cx) {
                        Poll::Ready(Ok(())) => {
                            if Pin::new(&mut this.inner).start_send(Message::Close(Some(frame))).is_ok() {
                                let _ = Pin::new(&mut this.inner).poll_flush(cx);
                            }
                        }
                        _ => this.close_frame = Some(frame),
                    }
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message (MQTT needs binary frames)",
                    )));
                }
            }
        }
    }
}

impl<S> AsyncWrite for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_push(cx))?;
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut this.inner).start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(to_io)?;
        this.unflushed = true;
        // Try to send it now; if the socket is full, the next read or write finishes it.
        if let Poll::Ready(r) = this.poll_push(cx) {
            r?;
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.inner).poll_flush(cx)).map_err(to_io)?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(frame) = this.close_frame.take() {
            ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(to_io)?;
            // An error here means the connection is already closing; poll_close finishes it.
            let _ = Pin::new(&mut this.inner).start_send(Message::Close(Some(frame)));
        }
        match ready!(Pin::new(&mut this.inner).poll_close(cx)) {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}
