//! Starting and stopping a broker: store, broker, listeners, and graceful shutdown. Used by
//! `main.rs` and by the tests, which start real brokers on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tracing::info;

use crate::broker::session::KillReason;
use crate::broker::{Broker, BrokerLimits};
use crate::config::{Backend, Config};
use crate::session::Ctx;
use crate::store::{MemoryStore, Store, StoreError};

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Bind(#[from] std::io::Error),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("storage backend {0:?} is not available in this build")]
    Backend(Backend),
}

/// A running broker.
#[derive(Debug)]
pub struct Running {
    /// Where the MQTT/TCP listener is bound.
    pub mqtt_addr: SocketAddr,
    pub broker: Arc<Broker>,
    permits: Arc<Semaphore>,
    max_connections: usize,
    shutdown: watch::Sender<bool>,
}

/// Opens the store, builds the broker and binds the listeners.
///
/// # Errors
/// [`StartError`] naming the address or store that failed.
pub async fn start(cfg: &Config) -> Result<Running, StartError> {
    let store: Arc<dyn Store> = match cfg.storage.backend {
        Backend::Memory => Arc::new(MemoryStore),
        other => return Err(StartError::Backend(other)),
    };
    let limits = BrokerLimits { max_queued_messages: cfg.mqtt.max_queued_messages };
    let broker = Broker::new(limits, store)?;
    let ctx = Arc::new(Ctx::new(broker.clone(), cfg.mqtt.clone()));
    let (listener, mqtt_addr) = crate::net::bind(&cfg.listeners.tcp.bind).await?;
    let permits = Arc::new(Semaphore::new(cfg.mqtt.max_connections));
    let (shutdown, rx) = watch::channel(false);
    tokio::spawn(crate::net::accept_loop(listener, ctx, permits.clone(), rx));
    info!(addr = %mqtt_addr, "MQTT listener ready");
    Ok(Running { mqtt_addr, broker, permits, max_connections: cfg.mqtt.max_connections, shutdown })
}

impl Running {
    /// Stops accepting, tells every client the server is shutting down (v5 DISCONNECT 0x8B)
    /// and waits up to `grace` for connections to close.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        self.broker.kill_all(KillReason::Shutdown);
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(grace, self.permits.acquire_many(all)).await;
        info!("broker stopped");
    }
}
