//! How a connection ends: a takeover first handles what the client already sent (`drain`),
//! then the will is decided and the session detached — before anything else, since a
//! connection taking the session over waits for it — then the last bytes go out, and a close
//! that carries a reason (v5 DISCONNECT, refusing CONNACK) is graceful (`say_last`).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::conn::{Conn, read_more};
use super::{Close, Ctx};
use crate::model::KillReason;
use dataloom_codec::{self as codec, Disconnect, Packet, Properties, reason};

/// How much a connection taken over still reads, to handle what its client sent first.
const DRAIN_BYTES: usize = 64 * 1024;
/// How long the last bytes of a connection may take to write.
const WRITE_LAST: Duration = Duration::from_secs(1);
/// How long, and how many bytes at most, a connection closing with a reason reads and discards
/// after it (see `say_last`).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

impl Conn {
    /// Why the connection ends when the broker's kill switch fired. A takeover first handles
    /// what the client already sent ([`Conn::drain`]) while the new connection waits: a
    /// DISCONNECT sent before its CONNECT counts, with its Session Expiry and will decision.
    /// A connection whose session was taken by force (it did not let go in time) touches
    /// nothing any more.
    pub(super) fn killed<R: AsyncRead + Unpin>(
        &mut self,
        r: KillReason,
        rd: &mut R,
        rbuf: &mut BytesMut,
    ) -> Close {
        match r {
            KillReason::TakenOver { clean_start } => {
                let drained = self.session.is_owner(self.generation).then(|| self.drain(rd, rbuf)).flatten();
                drained.unwrap_or_else(|| Close::TakenOver {
                    continues: self.session.continues_with(clean_start),
                })
            }
            KillReason::Shutdown => Close::Server(reason::SERVER_SHUTTING_DOWN, "server shutting down"),
            KillReason::Revoked => Close::Server(reason::ADMINISTRATIVE_ACTION, "API key revoked"),
        }
    }

    /// Handles what the client sent before a takeover — the read buffer and what the socket
    /// has ready, at most [`DRAIN_BYTES`], never waiting for more — and returns how that ends
    /// the connection (DISCONNECT, the client's close, a violation), if it does.
    fn drain<R: AsyncRead + Unpin>(&mut self, rd: &mut R, rbuf: &mut BytesMut) -> Option<Close> {
        // Closing anyway: blocked deliveries give up (as `finish` does), and the store backlog
        // does not hold back these few packets.
        self.ctx.broker.offer_blocked(&mut self.blocked, true);
        self.awaiting_store = false;
        let (mut read, mut busy) = (0, false);
        loop {
            if let Err(close) = self.handle_input(rbuf) {
                return Some(close);
            }
            if read >= DRAIN_BYTES || !self.blocked.is_empty() || self.awaiting_store {
                return None;
            }
            match read_more(rd, rbuf, &mut busy).now_or_never()? {
                Ok(0) => return Some(Close::Io("closed by peer".into())),
                Ok(n) => read += n,
                Err(e) => return Some(Close::Io(e.to_string())),
            }
        }
    }

    /// Publishes or schedules the will and detaches the session (first: a connection waiting
    /// to take the session over waits for this only), then sends what is owed and the closing
    /// DISCONNECT (v5) and closes, gracefully when the DISCONNECT carries a reason.
    pub(super) async fn finish<R, W>(&mut self, close: &Close, rd: &mut R, wr: &mut W)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.ctx.broker.offer_blocked(&mut self.blocked, true);
        if let Close::Decode(e) = close {
            debug!(error = %e, rule = e.kind(), "protocol violation");
        }
        if let Some(mut will) = self.will.take()
            && close.publishes_will()
        {
            if close.ends_session_now() {
                will.delay = Duration::ZERO;
            }
            let msg = will.message(Instant::now());
            // The schema may have changed since CONNECT checked the will.
            if self.ctx.schemas.admit_will(&self.ctx.broker, &msg, &self.session.client_id) {
                self.ctx.broker.schedule_will(&self.session, self.generation, msg, will.delay);
            }
        }
        self.session.mailbox.wake();
        self.ctx.broker.detach(&self.session, self.generation);
        while !self.pending.is_empty() {
            let Ok(r) = tokio::time::timeout(Duration::from_secs(1), self.pending.next_ready()).await else {
                break;
            };
            if self.pending.complete_front(r, &mut self.wbuf).is_err() {
                break;
            }
        }
        let code = close.server_code().filter(|_| self.version.is_v5());
        if let Some(code) = code {
            let mut props = Properties::default();
            if let Some(why) = close.server_reason() {
                let why = self.close_reason.take().unwrap_or_else(|| why.to_string());
                props.reason_string = super::refuse::fitting_reason(why, self.out.max_packet());
            }
            let d = Disconnect { code, properties: props };
            codec::encode(&Packet::Disconnect(d), self.version, &mut self.wbuf);
            crate::metrics::get().packets_sent[crate::metrics::pt::DISCONNECT].inc();
        }
        // The socket closes last: a client that sees the close and reconnects at once finds
        // the will published and a clean session already ended.
        if code.is_some() {
            say_last(&self.ctx, rd, wr, &self.wbuf).await;
        } else {
            if !self.wbuf.is_empty() {
                let _ = tokio::time::timeout(WRITE_LAST, wr.write_all(&self.wbuf)).await;
            }
            let _ = wr.shutdown().await;
        }
    }
}

/// Writes the last bytes of a connection that carry the reason it ends (a v5 DISCONNECT, a
/// refusing CONNACK) and closes gracefully: shuts the write side down, then reads and
/// discards until the client closes — at most [`LINGER`] and [`LINGER_BYTES`], and not once
/// the broker shuts down. Closing with unread data would make the kernel answer with a
/// reset: the client's next write would fail ("broken pipe") before it read the reason.
pub(super) async fn say_last<R, W>(ctx: &Ctx, rd: &mut R, wr: &mut W, last: &[u8])
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if tokio::time::timeout(WRITE_LAST, wr.write_all(last)).await.is_err() {
        return; // the client does not read: nothing to be graceful for
    }
    let linger = tokio::time::timeout(LINGER, async {
        let _ = wr.shutdown().await;
        let mut sink = vec![0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match rd.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    });
    let mut shutdown = ctx.shutdown.clone();
    tokio::select! {
        _ = linger => {}
        Ok(_) = shutdown.wait_for(|stop| *stop) => {}
    }
}
