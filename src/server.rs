//! Starting and stopping a broker: store, broker, listeners, and graceful shutdown. Used by
//! `main.rs` and by the tests, which start real brokers on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tracing::info;

use crate::broker::{Broker, BrokerLimits};
use crate::config::{Backend, Config};
use crate::model::KillReason;
use crate::session::Ctx;
use crate::store::{FjallStore, MemoryStore, Store, StoreError};

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A bad file in `schemas.dir` with `schemas.strict = true` (exit code 2).
    #[error(transparent)]
    Schemas(#[from] crate::broker::gate::LoadError),
    /// A listener address cannot be bound.
    #[error(transparent)]
    Bind(#[from] std::io::Error),
    /// The store cannot be opened or recovered.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener cannot start (TLS material).
    #[error(transparent)]
    Listen(#[from] crate::net::listener::ListenError),
    /// Anonymous clients would be open to the network (exit code 2).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A stored or seeded API key cannot be used.
    #[error("API keys: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The bootstrap token file cannot be written or deleted in the data directory.
    #[error("bootstrap token file in {dir}: {source}")]
    Bootstrap {
        /// The data directory.
        dir: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A running broker.
#[derive(Debug)]
pub struct Running {
    /// Where the MQTT/TCP listener is bound.
    pub mqtt_addr: SocketAddr,
    /// Where the MQTT/TLS, WebSocket and WebSocket/TLS listeners are bound, when configured.
    pub tls_addr: Option<SocketAddr>,
    /// Bound WebSocket address, when configured.
    pub ws_addr: Option<SocketAddr>,
    /// Bound secure WebSocket address, when configured.
    pub wss_addr: Option<SocketAddr>,
    /// The TLS listeners' certificates, reloaded by [`Running::reload_certs`].
    certs: Vec<Arc<crate::net::tls::Tls>>,
    /// Where the HTTP listener (`/metrics`, `/healthz`, `/readyz`) is bound; `None` when
    /// `http.bind` is empty.
    pub http_addr: Option<SocketAddr>,
    /// The running broker.
    pub broker: Arc<Broker>,
    /// API keys (create, list, revoke while running).
    pub auth: Arc<crate::auth::Auth>,
    permits: Arc<Semaphore>,
    max_connections: usize,
    shutdown: watch::Sender<bool>,
    failed: watch::Receiver<Option<StoreError>>,
}

/// Opens the store, builds the broker and binds the listeners.
///
/// # Errors
/// [`StartError`] naming the address or store that failed.
pub async fn start(cfg: &Config) -> Result<Running, StartError> {
    let store: Arc<dyn Store> = match cfg.storage.backend {
        Backend::Memory => {
            tracing::warn!(
                "storage.backend = \"memory\": retained state and sessions are lost when the broker stops"
            );
            Arc::new(MemoryStore)
        }
        Backend::Fjall => {
            let store = FjallStore::open(&cfg.storage.data_dir, cfg.storage.durability)?;
            store.limit_backlog(cfg.storage.max_write_backlog);
            Arc::new(store)
        }
    };
    let max_memory = memory_budget(cfg);
    let limits = BrokerLimits {
        max_memory,
        max_queued_messages: cfg.mqtt.max_queued_messages,
        max_queued_bytes: cfg.mqtt.max_queued_bytes,
        persistent_session_expiry: cfg
            .mqtt
            .persistent_session_expiry
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX - 1)),
    };
    let broker = Broker::new(limits, store)?;
    broker.enable_history(&cfg.history);
    if let Some(cluster) = &cfg.cluster {
        let data_dir = (cfg.storage.backend == Backend::Fjall).then_some(cfg.storage.data_dir.as_path());
        let node = crate::store::nats::node_id(cluster.node_id.as_deref(), data_dir)?;
        let bus = crate::store::nats::NatsBus::connect(cluster, &node).await?;
        broker.join_cluster(bus, cluster.sync_timeout).await?;
    }
    // What the process held before any client: the binary, the runtime, recovered state's
    // overhead beyond its charged messages. Charged for good, so the budget covers RSS.
    broker.memory().add(resident_bytes().saturating_sub(broker.memory().used()));
    tokio::spawn(sample_resident(Arc::downgrade(&broker)));
    let settings = crate::auth::Settings {
        allow_anonymous: cfg.auth.allow_anonymous,
        anonymous: cfg.auth.anonymous.clone(),
        on_forbidden_publish: cfg.auth.on_forbidden_publish,
        session_takeover: cfg.auth.session_takeover,
    };
    let stored = broker.store().keys()?;
    let auth =
        Arc::new(crate::auth::Auth::new(settings, stored, &cfg.auth.keys, Some(broker.store().clone()))?);
    cfg.check_anonymous_exposure(auth.key_count())?;
    tracing::info!(keys = auth.key_count(), "access: {}", auth.anonymous_rule());
    let data_dir = (cfg.storage.backend == Backend::Fjall).then_some(cfg.storage.data_dir.as_path());
    auth.start_bootstrap(data_dir)
        .map_err(|source| StartError::Bootstrap { dir: cfg.storage.data_dir.clone(), source })?;
    let (shutdown, rx) = watch::channel(false);
    let mut ctx = Ctx::new(broker.clone(), cfg.mqtt.clone());
    ctx.auth = auth.clone();
    ctx.schemas = Arc::new(crate::broker::gate::SchemaGate::start(&cfg.schemas, &broker)?);
    ctx.shutdown = rx.clone();
    let ctx = Arc::new(ctx);
    let bound = crate::net::listener::bind_all(cfg).await?;
    let permits = Arc::new(Semaphore::new(cfg.mqtt.max_connections));
    let (addrs, certs) = bound.spawn(&ctx, &permits, &rx)?;
    let mqtt_addr = addrs.tcp;
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let http_addr = match cfg.http.bind.as_str() {
        "" => None,
        bind => {
            let state = crate::http::HttpState { broker: broker.clone(), ready: ready.clone() };
            let admin = crate::http::Admin {
                auth: auth.clone(),
                allowed_origins: cfg.http.allowed_origins.clone(),
                allowed_hosts: cfg.http.allowed_hosts.clone(),
            };
            let api = crate::http::api::StateApi {
                auth: auth.clone(),
                schemas: ctx.schemas.clone(),
                max_body: cfg.mqtt.max_packet_size as usize,
                max_topic_levels: cfg.mqtt.max_topic_levels,
            };
            Some(crate::http::serve_with(bind, state, Some(admin), Some(api), rx.clone()).await?)
        }
    };
    spawn_retained_purge(broker.clone(), rx.clone());
    crate::sys::spawn(broker.clone(), cfg.mqtt.sys_interval, rx);
    ready.store(true, std::sync::atomic::Ordering::Release);
    let failed = watch_store(broker.clone(), ready.clone());
    if cfg.storage.backend == Backend::Fjall && cfg.storage.min_free_bytes > 0 {
        let (weak, dir, min_free) =
            (Arc::downgrade(&broker), cfg.storage.data_dir.clone(), cfg.storage.min_free_bytes);
        crate::store::disk::watch(dir.clone(), move |free| {
            weak.upgrade().inspect(|b| b.report_free_space(&dir, free, min_free)).is_some()
        });
    }
    let max_connections = cfg.mqtt.max_connections;
    Ok(Running {
        mqtt_addr,
        tls_addr: addrs.tls,
        ws_addr: addrs.ws,
        wss_addr: addrs.wss,
        certs,
        http_addr,
        broker,
        auth,
        permits,
        max_connections,
        shutdown,
        failed,
    })
}

/// Purges expired retained messages once a second until shutdown.
fn spawn_retained_purge(broker: Arc<Broker>, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let purged = broker.purge_expired_retained(std::time::Instant::now());
                    if purged > 0 {
                        tracing::debug!(purged, "expired retained messages removed");
                    }
                }
                r = shutdown.changed() => if r.is_err() || *shutdown.borrow() { return },
            }
        }
    });
}

/// Watches the store: once a write or fsync failed it flips `/readyz` and reports the error
/// through the returned channel, so `main` can exit non-zero and a supervisor restart us.
fn watch_store(
    broker: Arc<Broker>,
    ready: Arc<std::sync::atomic::AtomicBool>,
) -> watch::Receiver<Option<StoreError>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            if let Some(e) = broker.store().poisoned() {
                ready.store(false, std::sync::atomic::Ordering::Release);
                tracing::error!(error = %e, "store failed; not accepting messages any more");
                let _ = tx.send(Some(e));
                return;
            }
        }
    });
    rx
}

impl Running {
    /// Reads the TLS listeners' certificate and key files again (SIGHUP): new handshakes use
    /// the new certificates, live connections keep going.
    ///
    /// # Errors
    /// The first file that could not be used; that listener keeps its previous certificate.
    pub fn reload_certs(&self) -> Result<(), crate::net::tls::TlsError> {
        crate::net::listener::reload_certs(&self.certs)
    }

    /// Resolves when the store failed (write or fsync error): the broker must stop.
    pub async fn store_failed(&self) -> StoreError {
        let mut rx = self.failed.clone();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Stops accepting, tells every client the server is shutting down (v5 DISCONNECT 0x8B)
    /// and waits up to `grace` for connections to close.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        self.broker.kill_all(KillReason::Shutdown);
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(grace, self.permits.acquire_many(all)).await;
        self.broker.flush_cluster(grace).await;
        if let Err(e) = self.broker.close_store() {
            tracing::error!(error = %e, "final store sync failed");
        }
        info!("broker stopped");
    }
}

/// `limits.max_memory` in bytes, resolved against the memory this process may use; logs it.
fn memory_budget(cfg: &Config) -> usize {
    let setting = cfg.limits.max_memory;
    let available = crate::config::available_memory();
    let bytes = match (setting, available) {
        (crate::config::MemorySize::Bytes(b), _) => b,
        (p, Some(total)) => p.resolve(total),
        (_, None) => {
            tracing::warn!(%setting, "limits.max_memory: cannot read this machine's memory size; no memory budget");
            return 0;
        }
    };
    tracing::info!(
        %setting,
        budget_mib = bytes >> 20,
        available_mib = available.map(|a| a >> 20),
        "memory budget (limits.max_memory): load is shed above 90 %"
    );
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Every 250 ms: the process's resident size as the floor of the memory account. Near the
/// shedding mark while the account itself is lower, freed memory the allocator kept is handed
/// back first (`malloc_trim`), so shedding follows what is really in use. Ends with the broker.
async fn sample_resident(broker: std::sync::Weak<Broker>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(broker) = broker.upgrade() else { return };
        let budget = broker.memory();
        if budget.limit() == 0 {
            return;
        }
        let mut resident = resident_bytes();
        let account = budget.used() + broker.store().memory_bytes();
        if resident >= budget.limit() / 10 * 8 && account < resident {
            trim_heap();
            resident = resident_bytes();
        }
        budget.observe_resident(resident);
    }
}

/// Hands memory the allocator holds but nobody uses back to the OS (glibc only).
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages of glibc's heaps; it touches no live memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident memory of this process now, from `/proc/self/statm` (0 where unreadable).
fn resident_bytes() -> usize {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()))
        .unwrap_or(0);
    pages * 4096
}
