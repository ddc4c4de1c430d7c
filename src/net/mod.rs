//! Listeners and the accept loop: connection limits (semaphore permits taken before `accept`:
//! the broker-wide one and the listener's own; per peer address in [`per_ip`]), socket options, one task per connection, and
//! stopping on shutdown. [`listener`] says what each kind of listener (TCP, TLS, WebSocket,
//! WebSocket over TLS) does before MQTT starts; [`tls`] and [`ws`] are those handshakes.

pub mod fds;
pub mod listener;
pub mod per_ip;
pub mod tls;
pub(crate) mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use crate::metrics::reasons::{Ending, RejectReason};
use crate::session::Ctx;
pub use listener::Listener;

/// Accepts connections on `listener` until `shutdown` turns true; `kind` handles each.
pub async fn accept_loop(
    listener: TcpListener,
    kind: Arc<Listener>,
    ctx: Arc<Ctx>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    let metrics = crate::metrics::get().listener(kind.transport());
    loop {
        let own = match &kind.permits {
            None => None,
            Some(own) => tokio::select! {
                p = own.clone().acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
                _ = shutdown.changed() => return,
            },
        };
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let counted = metrics.accepted();
        let slot = match &kind.per_ip {
            None => None,
            Some(per_ip) => match per_ip.admit(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    debug!(%peer, "connection refused: max_connections_per_ip reached for this address");
                    counted.ended(Ending::refused(RejectReason::TooManyFromAddress));
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, %peer, "cannot set TCP_NODELAY");
        }
        let accepted = tokio::time::Instant::now();
        let ctx = ctx.clone();
        let kind = kind.clone();
        tokio::spawn(async move {
            let ended = kind.serve(stream, peer, accepted, ctx).await;
            counted.ended(crate::session::ending(&ended));
            drop((permit, own, slot));
        });
    }
}

/// Binds a TCP listener, naming the address in the error.
///
/// # Errors
/// The I/O error of `bind`, with the address.
pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    let local = l.local_addr()?;
    Ok((l, local))
}
