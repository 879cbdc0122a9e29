//! weft's sidecar data path: listeners, protocol detection, HTTP/1.1, h2c,
//! gRPC and opaque TCP forwarding, config snapshots and reload, the admin
//! port and metrics.
//!
//! Must not depend on control-plane code: the proxy consumes a validated
//! [`weft_model::Config`] (from a directory today, from xDS next) through an
//! immutable [`snapshot::Snapshot`].
//!
//! Request paths: [`outbound`] and [`inbound`] each list their stages in order.

pub mod admin;
pub mod body;
pub mod error;
mod forward;
mod headers;
pub mod inbound;
mod io;
mod listener;
pub mod metrics;
pub mod outbound;
mod reload;
mod route;
pub mod snapshot;
pub mod state;
mod tcp;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::listener::Role;
use crate::snapshot::{BuildOptions, Snapshot};
use crate::state::{App, Limits, Shared};
use crate::upstream::EndpointRegistry;

/// Everything `weft proxy` is told on its command line.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub config_dir: PathBuf,
    /// The Service this sidecar runs beside: `name` or `name.namespace`.
    pub service: String,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    /// The local app; without it there is no inbound listener.
    pub app: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub connect_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub detect_timeout: Duration,
    pub drain_timeout: Duration,
    pub reload_interval: Duration,
}

impl ProxyOptions {
    /// Defaults for everything but the config directory and service.
    pub fn new(config_dir: impl Into<PathBuf>, service: impl Into<String>) -> Self {
        Self {
            config_dir: config_dir.into(),
            service: service.into(),
            outbound: ([127, 0, 0, 1], 15001).into(),
            inbound: ([127, 0, 0, 1], 15006).into(),
            app: None,
            admin: ([127, 0, 0, 1], 15000).into(),
            connect_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            detect_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            reload_interval: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] weft_model::ConfigErrors),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started proxy.
pub struct RunningProxy {
    shared: Arc<Shared>,
    outbound: SocketAddr,
    inbound: Option<SocketAddr>,
    admin: SocketAddr,
    stop: watch::Sender<bool>,
    listeners: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Loads the config, binds every listener and starts serving.
pub async fn start(opts: ProxyOptions) -> Result<RunningProxy, StartError> {
    let config = weft_model::load_dir(&opts.config_dir)?;
    let (name, namespace) = match opts.service.split_once('.') {
        Some((n, ns)) => (n.to_string(), ns.to_string()),
        None => (
            opts.service.clone(),
            weft_model::DEFAULT_NAMESPACE.to_string(),
        ),
    };
    if config.service(&namespace, &name).is_none() {
        tracing::warn!(service = %opts.service, "the local service is not in the config; outbound still works");
    }
    let build = BuildOptions {
        connect_timeout: opts.connect_timeout,
        local_namespace: namespace.clone(),
    };
    let registry = EndpointRegistry::default();
    let metrics = metrics::ProxyMetrics::new();
    let snapshot = Snapshot::build(Arc::new(config), 1, &build, &registry, &metrics);
    let local_service: Arc<str> = format!("{name}.{namespace}").into();
    let app = opts.app.map(|addr| App {
        addr,
        h1: Arc::new(upstream::EndpointClient::new(
            addr,
            false,
            opts.connect_timeout,
        )),
        h2: Arc::new(upstream::EndpointClient::new(
            addr,
            true,
            opts.connect_timeout,
        )),
    });
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        inbound_stats: metrics.route_stats(
            metrics::Direction::Inbound,
            local_service.clone(),
            "inbound".into(),
        ),
        metrics,
        local_service,
        app,
        registry,
        limits: Limits {
            connect_timeout: opts.connect_timeout,
            header_read_timeout: opts.header_read_timeout,
            max_header_bytes: opts.max_header_bytes,
            detect_timeout: opts.detect_timeout,
        },
        draining: AtomicBool::new(false),
        listeners: Default::default(),
        last_error: Default::default(),
    });
    shared.metrics.config_generation.set(1);

    let (stop, stop_rx) = watch::channel(false);
    let outbound_l = bind("outbound", opts.outbound).await?;
    let inbound_l = match opts.app {
        Some(_) => Some(bind("inbound", opts.inbound).await?),
        None => None,
    };
    let admin_l = bind("admin", opts.admin).await?;
    let outbound = outbound_l
        .local_addr()
        .expect("bound socket has an address");
    let inbound = inbound_l
        .as_ref()
        .map(|l| l.local_addr().expect("bound socket has an address"));
    let admin = admin_l.local_addr().expect("bound socket has an address");

    let mut listeners = Vec::new();
    let spawn = |l, name: &str, role, shared: &Arc<Shared>| {
        shared
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Ok(outbound));
        tokio::spawn(listener::serve(
            l,
            name.into(),
            role,
            shared.clone(),
            stop_rx.clone(),
            opts.drain_timeout,
        ))
    };
    listeners.push(spawn(outbound_l, "outbound", Role::Outbound, &shared));
    shared
        .listeners
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert("outbound".into(), Ok(outbound));
    if let (Some(l), Some(addr)) = (inbound_l, inbound) {
        listeners.push(spawn(l, "inbound", Role::Inbound, &shared));
        shared
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert("inbound".into(), Ok(addr));
    } else {
        tracing::info!("no --app given: no inbound listener");
    }

    let (published, published_rx) = watch::channel(1u64);
    let background = vec![
        tokio::spawn(weft_admin::serve(admin_l, shared.clone(), stop_rx.clone())),
        tokio::spawn(reload::watch_dir(
            opts.config_dir.clone(),
            opts.reload_interval,
            build,
            shared.clone(),
            published,
            stop_rx.clone(),
        )),
        tokio::spawn(manage_vips(
            shared.clone(),
            published_rx,
            stop_rx.clone(),
            opts.drain_timeout,
        )),
    ];
    tracing::info!(%outbound, ?inbound, %admin, service = %shared.local_service, "proxy started");
    Ok(RunningProxy {
        shared,
        outbound,
        inbound,
        admin,
        stop,
        listeners,
        background,
    })
}

/// Keeps one listener per `vip:port` of the current snapshot: binds new ones,
/// stops removed ones. A listener decides HTTP vs TCP per connection from the
/// snapshot, so a protocol change needs no rebind.
async fn manage_vips(
    shared: Arc<Shared>,
    mut published: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut running: HashMap<SocketAddr, (watch::Sender<bool>, JoinHandle<()>)> = HashMap::new();
    loop {
        let wanted: Vec<SocketAddr> = shared.snapshot.load().vips.keys().copied().collect();
        running.retain(|addr, (tx, _)| {
            let keep = wanted.contains(addr);
            if !keep {
                tx.send_replace(true);
                shared
                    .listeners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&format!("vip {addr}"));
                tracing::info!(%addr, "virtual address listener removed");
            }
            keep
        });
        for addr in wanted {
            if running.contains_key(&addr) {
                continue;
            }
            let name = format!("vip {addr}");
            let status = match TcpListener::bind(addr).await {
                Ok(l) => {
                    let (tx, rx) = watch::channel(false);
                    let h = tokio::spawn(listener::serve(
                        l,
                        name.clone().into(),
                        Role::Vip(addr),
                        shared.clone(),
                        rx,
                        drain,
                    ));
                    running.insert(addr, (tx, h));
                    tracing::info!(%addr, "virtual address listener started");
                    Ok(addr)
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot listen on a Service's virtual address");
                    Err(format!("cannot listen on {addr}: {e}"))
                }
            };
            shared
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name, status);
        }
        tokio::select! {
            r = published.changed() => if r.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    // Stop, then wait for each VIP listener to drain.
    for (_, (tx, h)) in running {
        tx.send_replace(true);
        let _ = h.await;
    }
}

impl RunningProxy {
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound
    }
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound
    }
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Graceful stop: `/ready` turns 503, listeners stop accepting, in-flight
    /// requests get the drain timeout to finish. Returns when all are done.
    pub async fn shutdown(self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.stop.send_replace(true);
        for h in self.listeners {
            let _ = h.await;
        }
        for h in self.background {
            let _ = h.await;
        }
        tracing::info!("proxy stopped");
    }
}
