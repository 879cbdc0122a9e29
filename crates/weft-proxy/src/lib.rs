//! weft's sidecar data path: listeners, protocol detection, HTTP/1.1, h2c,
//! gRPC and opaque TCP forwarding, config snapshots and reload, the admin
//! port and metrics.
//!
//! Must not depend on control-plane code. Config arrives as xDS resources,
//! from a control plane (`--xds`, [`weft_xds::client`]) or translated
//! in-process from a directory (`--config`), and becomes an immutable
//! [`snapshot::Snapshot`] through one builder.
//!
//! Request paths: [`outbound`] and [`inbound`] each list their stages in order.

pub mod access_log;
pub mod admin;
mod admission;
pub mod body;
mod clock;
pub mod complete;
pub mod deadline;
pub mod error;
mod forward;
pub mod global_limit;
pub mod governed;
mod headers;
pub mod inbound;
mod io;
mod listener;
pub mod metrics;
pub mod observe;
pub mod otlp;
pub mod outbound;
pub mod policy;
mod reload;
mod route;
pub mod snapshot;
pub mod span;
pub mod state;
mod tcp;
mod trace;
pub mod upstream;
mod xds;

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
use weft_xds::client::{ClientOptions, ClientStatus};

/// How the proxy reaches a control plane (`--xds`).
pub use weft_xds::client::ClientOptions as XdsClientOptions;

use crate::listener::Role;
use crate::snapshot::{BuildError, BuildOptions, Snapshot, SnapshotBuilder, standalone};
use crate::state::{App, Limits, Shared};
use crate::upstream::EndpointRegistry;

/// Where the proxy's config comes from.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// `--config DIR`: YAML files, watched for changes.
    Dir(PathBuf),
    /// `--xds ADDR`: a control plane over delta ADS.
    Xds(ClientOptions),
}

/// Everything `weft proxy` is told on its command line.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub source: ConfigSource,
    /// The Service this sidecar runs beside: `name` or `name.namespace`.
    pub service: String,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    /// The local app. Without it, the app of the config's inbound listener
    /// (its cluster `inbound|NAME.NAMESPACE`), and no inbound listener when
    /// the config has none.
    pub app: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub connect_timeout: Duration,
    /// This sidecar's zone (`--zone`), for locality preference.
    pub zone: Option<String>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub detect_timeout: Duration,
    pub drain_timeout: Duration,
    pub reload_interval: Duration,
    /// The rate-limit service for `rateLimit.global` (`HOST:PORT` or an
    /// `http://` URI). Default with `--xds`: the control plane (it serves
    /// the service on its xDS port); standalone: none (global limits apply
    /// their failure mode).
    pub ratelimit: Option<String>,
    /// `--otlp-endpoint`: export spans over OTLP/gRPC (`HOST:PORT`);
    /// `None`: no spans are recorded.
    pub otlp_endpoint: Option<String>,
    /// `--trace-sampling`: the share of new traces sampled (`0.0..=1.0`);
    /// a caller's decision is kept.
    pub trace_sampling: f64,
    /// `--access-log` and its fields and sampling; `None`: no access log.
    pub access_log: Option<access_log::AccessLogOptions>,
}

impl ProxyOptions {
    /// Standalone (`--config DIR`), defaults for everything else.
    pub fn new(config_dir: impl Into<PathBuf>, service: impl Into<String>) -> Self {
        Self::with_source(ConfigSource::Dir(config_dir.into()), service.into())
    }

    /// From a control plane; the Service is the node's cluster.
    pub fn xds(client: ClientOptions) -> Self {
        let service = client.cluster.clone();
        Self::with_source(ConfigSource::Xds(client), service)
    }

    fn with_source(source: ConfigSource, service: String) -> Self {
        Self {
            source,
            service,
            outbound: ([127, 0, 0, 1], 15001).into(),
            inbound: ([127, 0, 0, 1], 15006).into(),
            app: None,
            admin: ([127, 0, 0, 1], 15000).into(),
            connect_timeout: Duration::from_secs(1),
            zone: None,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            detect_timeout: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            reload_interval: Duration::from_millis(200),
            ratelimit: None,
            otlp_endpoint: None,
            trace_sampling: 1.0,
            access_log: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] weft_model::ConfigErrors),
    #[error("the config cannot be applied: {0}")]
    Build(#[from] BuildError),
    #[error("--trace-sampling: {0}")]
    Sampling(#[from] weft_policy::trace::InvalidRatio),
    #[error("{0}")]
    Otlp(#[from] otlp::InvalidEndpoint),
    #[error("{0}")]
    AccessLog(#[from] access_log::AccessLogError),
    #[error("--service {0:?} cannot be sent in a header")]
    Service(String),
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
    /// Span export, stopped last (in-flight requests' spans are flushed).
    export: Option<otlp::ExportTask>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// `name` or `name.namespace` -> `name.namespace`.
fn qualified(service: &str) -> String {
    match service.split_once('.') {
        Some(_) => service.to_string(),
        None => format!("{service}.{}", weft_model::DEFAULT_NAMESPACE),
    }
}

/// Loads the config (or starts the xDS client), binds every listener and
/// starts serving. In `--xds` mode `/ready` answers 503 until the first
/// config arrived.
pub async fn start(opts: ProxyOptions) -> Result<RunningProxy, StartError> {
    let mut metrics = metrics::ProxyMetrics::new();
    let registry = EndpointRegistry::default();
    let ratelimit = opts.ratelimit.clone().or_else(|| match &opts.source {
        ConfigSource::Xds(c) => Some(c.server.clone()),
        ConfigSource::Dir(_) => None,
    });
    let mut builder = SnapshotBuilder::new(BuildOptions {
        connect_timeout: opts.connect_timeout,
        zone: opts.zone.clone(),
        local_service: qualified(&opts.service).into(),
        global_limits: global_limit::GlobalLimits::new(ratelimit, qualified(&opts.service)),
    });
    let (snapshot, xds) = first_snapshot(&opts, &mut builder, &registry, &mut metrics)?;
    let local_service: Arc<str> = qualified(&opts.service).into();
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
    let sampler = weft_policy::trace::Sampler::new(opts.trace_sampling)?;
    let (exporter, export) = match &opts.otlp_endpoint {
        Some(endpoint) => {
            let (e, task) = otlp::start(endpoint, &local_service, &metrics)?;
            (Some(e), Some(task))
        }
        None => (None, None),
    };
    let access_log = match &opts.access_log {
        Some(o) => Some(Arc::new(access_log::AccessLog::start(
            o,
            &mut metrics.registry,
        )?)),
        None => None,
    };
    let source_header = http::HeaderValue::from_str(&local_service)
        .map_err(|_| StartError::Service(local_service.to_string()))?;
    let generation = snapshot.generation;
    let shared = Arc::new(Shared {
        snapshot: ArcSwap::from_pointee(snapshot),
        inbound_stats: metrics::SourceStats::new(
            &metrics,
            metrics::Direction::Inbound,
            local_service.clone(),
            "inbound".into(),
        ),
        source_header,
        access_log,
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
        listeners_generation: Default::default(),
        listeners: Default::default(),
        last_error: Default::default(),
        xds,
        traces: trace::Traces { sampler, exporter },
    });
    shared.metrics.config_generation.set(generation as i64);

    let (stop, stop_rx) = watch::channel(false);
    let outbound_l = bind("outbound", opts.outbound).await?;
    // With --app the inbound listener is there from the start (and a bind
    // failure stops the proxy); without, it follows the config.
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
    let spawn = |l, name: &str, role, addr, shared: &Arc<Shared>| {
        shared
            .listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), Ok(addr));
        tokio::spawn(listener::serve(
            l,
            name.into(),
            role,
            shared.clone(),
            stop_rx.clone(),
            opts.drain_timeout,
        ))
    };
    listeners.push(spawn(
        outbound_l,
        "outbound",
        Role::Outbound,
        outbound,
        &shared,
    ));
    if let (Some(l), Some(addr)) = (inbound_l, inbound) {
        listeners.push(spawn(l, "inbound", Role::Inbound, addr, &shared));
    }

    let (published, published_rx) = watch::channel(generation);
    let mut background = vec![
        tokio::spawn(weft_admin::serve(admin_l, shared.clone(), stop_rx.clone())),
        tokio::spawn(manage_listeners(
            shared.clone(),
            (opts.app.is_none()).then_some(opts.inbound),
            published_rx,
            stop_rx.clone(),
            opts.drain_timeout,
        )),
        tokio::spawn(health_ticks(shared.clone(), stop_rx.clone())),
        follow_config(&opts, builder, &shared, admin, published, stop_rx.clone()),
    ];
    if let Some(log) = shared.access_log.clone().filter(|l| l.is_file()) {
        background.push(tokio::spawn(reopen_on_sigusr1(log, stop_rx)));
    }
    tracing::info!(%outbound, ?inbound, %admin, service = %shared.local_service, "proxy started");
    Ok(RunningProxy {
        shared,
        outbound,
        inbound,
        admin,
        stop,
        listeners,
        background,
        export,
    })
}

/// Lowers the calling thread's CPU priority to nice 19, for the proxy's
/// background threads (span export, the access log writer): on a sidecar
/// pinned to one core, request work goes first. Starved, they fall behind
/// and drop (counted), which is what their bounded queues are for. Best
/// effort: a failure is only logged.
pub(crate) fn background_priority(what: &str) {
    // On Linux, PRIO_PROCESS with who = 0 (`None`) applies to the calling
    // thread only: the nice value is per thread.
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!(thread = what, error = %e, "cannot lower the thread's priority");
    }
}

/// How often endpoint health is evaluated (ejections, re-admissions,
/// recovery ramps) and the retry/hedge counters are exported.
const HEALTH_TICK: Duration = Duration::from_millis(200);

/// The periodic step of every cluster's health and every rule policy's
/// metrics, on the current snapshot.
async fn health_ticks(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(HEALTH_TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let snapshot = shared.snapshot.load_full();
        let now = clock::now();
        for c in &snapshot.clusters {
            c.tick(now);
        }
        for p in &snapshot.policies {
            p.export(&shared.metrics.policy, now);
        }
    }
}

/// Reopens the access log file on each SIGUSR1 (after logrotate moved it).
async fn reopen_on_sigusr1(log: Arc<access_log::AccessLog>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = match signal(SignalKind::user_defined1()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGUSR1 handler: the access log cannot be reopened");
            return;
        }
    };
    loop {
        tokio::select! {
            Some(()) = usr1.recv() => log.reopen(),
            _ = stop.changed() => return,
        }
    }
}

/// `--config`: the directory's config as generation 1. `--xds`: nothing
/// yet (generation 0), and the client's status, its metrics registered.
fn first_snapshot(
    opts: &ProxyOptions,
    builder: &mut SnapshotBuilder,
    registry: &EndpointRegistry,
    metrics: &mut metrics::ProxyMetrics,
) -> Result<(Snapshot, Option<Arc<ClientStatus>>), StartError> {
    match &opts.source {
        ConfigSource::Dir(dir) => {
            let config = weft_model::load_dir(dir)?;
            for w in config.not_yet_enforced() {
                tracing::warn!("{w}");
            }
            let qualified = qualified(&opts.service);
            let (name, namespace) = qualified.split_once('.').unwrap_or_default();
            if config.service(namespace, name).is_none() {
                tracing::warn!(service = %opts.service, "the local service is not in the config; outbound still works");
            }
            let config = Arc::new(config);
            let snapshot = standalone::build(builder, config, &opts.service, 1, registry, metrics)?;
            Ok((snapshot, None))
        }
        ConfigSource::Xds(client) => {
            let status = Arc::new(ClientStatus::new(client));
            status.register_metrics(&mut metrics.registry);
            Ok((Snapshot::empty(), Some(status)))
        }
    }
}

/// The task that keeps the snapshot current: the directory watcher, or the
/// xDS client. The client announces the bound `admin` address in its node
/// metadata (unless one is set), for the control plane's Prometheus
/// discovery; see [`weft_xds::client::announce_address`] for wildcard binds.
fn follow_config(
    opts: &ProxyOptions,
    builder: SnapshotBuilder,
    shared: &Arc<Shared>,
    admin: SocketAddr,
    published: watch::Sender<u64>,
    stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    match &opts.source {
        ConfigSource::Dir(dir) => tokio::spawn(reload::watch_dir(
            dir.clone(),
            opts.reload_interval,
            builder,
            shared.clone(),
            published,
            stop,
        )),
        ConfigSource::Xds(client) => {
            let status = shared.xds.clone().expect("xDS mode has a client status");
            let sink = xds::XdsSink {
                builder,
                shared: shared.clone(),
                published,
            };
            let mut client = client.clone();
            tokio::spawn(async move {
                if client.admin.is_none() {
                    let announced = weft_xds::client::announce_address(admin, &client.server);
                    client.admin = Some(announced.await);
                }
                weft_xds::client::run(client, sink, status, stop).await
            })
        }
    }
}

/// A listener that comes and goes with the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Dynamic {
    /// A Service's `vip:port`.
    Vip(SocketAddr),
    /// The inbound listener, without `--app`: while the config names an app.
    Inbound(SocketAddr),
}

impl Dynamic {
    fn name(&self) -> String {
        match self {
            Dynamic::Vip(addr) => format!("vip {addr}"),
            Dynamic::Inbound(_) => "inbound".into(),
        }
    }
}

/// Keeps one listener per `vip:port` of the current snapshot (and, when
/// `inbound` is given, the inbound listener while the snapshot has an app):
/// binds new ones, stops removed ones. A VIP listener decides HTTP vs TCP
/// per connection from the snapshot, so a protocol change needs no rebind,
/// and an endpoint change touches no listener.
async fn manage_listeners(
    shared: Arc<Shared>,
    inbound: Option<SocketAddr>,
    mut published: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let mut running: HashMap<Dynamic, (watch::Sender<bool>, JoinHandle<()>)> = HashMap::new();
    loop {
        let (generation, wanted): (u64, Vec<Dynamic>) = {
            let snapshot = shared.snapshot.load();
            let vips = snapshot.vips.keys().map(|a| Dynamic::Vip(*a));
            let app = inbound.filter(|_| snapshot.inbound.is_some());
            (
                snapshot.generation,
                vips.chain(app.map(Dynamic::Inbound)).collect(),
            )
        };
        running.retain(|l, (tx, _)| {
            let keep = wanted.contains(l);
            if !keep {
                tx.send_replace(true);
                shared
                    .listeners
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&l.name());
                tracing::info!(listener = %l.name(), "listener removed");
            }
            keep
        });
        for l in wanted {
            if running.contains_key(&l) {
                continue;
            }
            let (addr, role) = match l {
                Dynamic::Vip(addr) => (addr, Role::Vip(addr)),
                Dynamic::Inbound(addr) => (addr, Role::Inbound),
            };
            let name = l.name();
            let status = match TcpListener::bind(addr).await {
                Ok(listener) => {
                    let bound = listener.local_addr().unwrap_or(addr);
                    let (tx, rx) = watch::channel(false);
                    let h = tokio::spawn(listener::serve(
                        listener,
                        name.clone().into(),
                        role,
                        shared.clone(),
                        rx,
                        drain,
                    ));
                    running.insert(l, (tx, h));
                    tracing::info!(listener = %name, %bound, "listener started");
                    Ok(bound)
                }
                Err(e) => {
                    tracing::error!(listener = %name, %addr, error = %e, "cannot listen");
                    Err(format!("cannot listen on {addr}: {e}"))
                }
            };
            shared
                .listeners
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name, status);
        }
        shared
            .listeners_generation
            .store(generation, Ordering::Relaxed);
        tokio::select! {
            r = published.changed() => if r.is_err() { break },
            _ = stop.changed() => break,
        }
    }
    // Stop, then wait for each listener to drain.
    for (_, (tx, h)) in running {
        tx.send_replace(true);
        let _ = h.await;
    }
}

impl RunningProxy {
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound
    }
    /// The inbound listener started with `--app` (a config-driven one is
    /// in the admin `/config_dump`).
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
        if let Some(export) = self.export {
            export.finish().await;
        }
        if let Some(log) = self.shared.access_log.clone() {
            // Every request has ended: their lines are queued.
            let _ = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(2))).await;
        }
        tracing::info!("proxy stopped");
    }
}
