//! Listeners and the accept loop: connection limit (a semaphore permit taken before `accept`),
//! socket options, one task per connection, and stopping on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use crate::session::{Ctx, serve_connection};

/// Accepts MQTT/TCP connections until `shutdown` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
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
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, %peer, "cannot set TCP_NODELAY");
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer.to_string(), ctx).await;
            drop(permit);
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
