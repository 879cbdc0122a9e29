//! weft's control plane: watches a config directory, validates it, turns it
//! into per-node-group xDS snapshots and serves them over ADS (state of the
//! world and delta) to weft proxies, Envoy and proxyless gRPC clients. The
//! same port serves the global rate-limit service (`weft-ratelimit`) for the
//! config's `rateLimit.global` limits, counting in memory or in a shared Redis.
//! The admin port shows the push metrics (`weft_xds_*`, including config
//! change -> ACK latency) and lists every announced metrics target for
//! Prometheus (`/sd/prometheus`), and a traffic view of golden metrics per
//! Service and edge (`/traffic`), from the proxies or from a Prometheus.
//!
//! Must not depend on proxy internals. Protobuf stays inside `weft-xds`.

mod admin;
mod cache;
mod metrics;
pub mod promql;
pub mod traffic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_model::DirWatch;
use weft_ratelimit::{Limits, RateLimitServer};
use weft_xds::server::{AdsServer, ServerStatus};
use weft_xds::translate::TranslateOptions;

pub use cache::{SnapshotCache, UpdateStats};

/// Everything `weft control` is told on its command line.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    pub config_dir: PathBuf,
    /// ADS (gRPC, plaintext HTTP/2).
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    pub reload_interval: Duration,
    pub translate: TranslateOptions,
    /// Rate-limit counters in this Redis (`redis://host:port`), shared by
    /// every control-plane replica pointed at it; in memory when `None`.
    pub redis: Option<String>,
    /// How often every weft proxy's `/metrics` is read for `/traffic`
    /// (`weft stat`).
    pub traffic_interval: Duration,
    /// Read `/traffic`'s numbers from this Prometheus (which scrapes the
    /// proxies through `/sd/prometheus`); direct scraping goes on beside
    /// it and answers while it fails.
    pub prometheus: Option<promql::PrometheusUrl>,
}

impl ControlOptions {
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        Self {
            config_dir: config_dir.into(),
            xds: ([127, 0, 0, 1], 15010).into(),
            admin: ([127, 0, 0, 1], 15011).into(),
            reload_interval: Duration::from_millis(200),
            translate: TranslateOptions::default(),
            redis: None,
            traffic_interval: Duration::from_secs(5),
            prometheus: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] weft_model::ConfigErrors),
    #[error("rate-limit store: {0}")]
    RateLimitStore(weft_ratelimit::StoreError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// State the admin port and the reloader share.
pub(crate) struct Control {
    pub cache: Arc<SnapshotCache>,
    pub status: Arc<ServerStatus>,
    pub metrics: metrics::ControlMetrics,
    pub ratelimit: RateLimitServer,
    pub config_dir: PathBuf,
    /// Why the newest config on disk was rejected, while it is.
    pub last_error: Mutex<Option<String>>,
    pub draining: std::sync::atomic::AtomicBool,
    /// This control plane's own admin address as `/sd/prometheus` lists it.
    pub admin_target: String,
    /// Golden metrics per Service and edge, from the proxies (`/traffic`).
    pub traffic: Arc<traffic::TrafficView>,
    /// `--prometheus`, whether it answers, and the `weft_traffic_*` metrics.
    pub prometheus: promql::PrometheusSource,
}

/// A started control plane.
pub struct RunningControl {
    control: Arc<Control>,
    xds: SocketAddr,
    admin: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Loads the config, binds the xDS and admin ports and starts serving.
pub async fn start(opts: ControlOptions) -> Result<RunningControl, StartError> {
    let config = weft_model::load_dir(&opts.config_dir)?;
    for w in config.not_yet_enforced() {
        tracing::warn!("{w}");
    }
    let ratelimit = RateLimitServer::new(
        Limits::from_config(&config),
        weft_ratelimit::store_for(opts.redis.as_deref()).map_err(StartError::RateLimitStore)?,
    );
    let xds_l = bind("xds", opts.xds).await?;
    let admin_l = bind("admin", opts.admin).await?;
    let xds = xds_l.local_addr().expect("bound socket has an address");
    let admin = admin_l.local_addr().expect("bound socket has an address");

    // Envoy nodes reach the rate-limit service (served on the xDS port) at
    // the address they reach xDS at; a wildcard bind needs it spelled out.
    let mut translate = opts.translate.clone();
    if translate.ratelimit_service.is_none() && !xds.ip().is_unspecified() {
        translate.ratelimit_service = Some(xds);
    }
    let cache = Arc::new(SnapshotCache::new(config, translate));
    let status = Arc::new(ServerStatus::new());
    let control = Arc::new(Control {
        cache: cache.clone(),
        status: status.clone(),
        metrics: metrics::ControlMetrics::new(),
        ratelimit: ratelimit.clone(),
        config_dir: opts.config_dir.clone(),
        last_error: Mutex::new(None),
        draining: Default::default(),
        admin_target: own_admin_target(admin).await,
        traffic: Arc::default(),
        prometheus: promql::PrometheusSource::new(opts.prometheus.clone()),
    });
    control.metrics.config_generation.set(1);
    control.metrics.config_published_at.set(unix_now());

    let (stop, stop_rx) = watch::channel(false);
    let ads = AdsServer::new(cache, status).into_service();
    let rls = ratelimit.clone().into_service();
    let mut xds_stop = stop_rx.clone();
    let xds_task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(xds_l);
        let result = tonic::transport::Server::builder()
            .add_service(ads)
            .add_service(rls)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = xds_stop.changed().await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "xDS server failed");
        }
    });
    let admin_task = tokio::spawn(weft_admin::serve(admin_l, control.clone(), stop_rx.clone()));
    let traffic_task = tokio::spawn(traffic::scrape_loop(
        control.traffic.clone(),
        control.status.clone(),
        opts.traffic_interval,
        stop_rx.clone(),
    ));
    let reload_task = tokio::spawn(watch_config(control.clone(), opts.reload_interval, stop_rx));
    tracing::info!(
        %xds,
        %admin,
        dir = %opts.config_dir.display(),
        ratelimit_store = %ratelimit.store_description(),
        traffic_source = %opts.prometheus.as_ref().map_or("proxies".to_string(), |p| format!("Prometheus {p}")),
        "control plane started"
    );
    Ok(RunningControl {
        control,
        xds,
        admin,
        stop,
        tasks: vec![xds_task, admin_task, reload_task, traffic_task],
    })
}

impl RunningControl {
    pub fn xds_addr(&self) -> SocketAddr {
        self.xds
    }
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }
    pub fn cache(&self) -> &Arc<SnapshotCache> {
        &self.control.cache
    }

    /// The connected ADS streams and the `weft_xds_*` counters.
    pub fn status(&self) -> &Arc<ServerStatus> {
        &self.control.status
    }

    /// The rate-limit service served on the xDS port.
    pub fn ratelimit(&self) -> &RateLimitServer {
        &self.control.ratelimit
    }

    /// Why the newest config on disk was rejected, while it is.
    pub fn last_error(&self) -> Option<String> {
        self.control
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops serving: `/ready` turns 503, streams are closed (clients keep
    /// their last config and reconnect elsewhere or later).
    pub async fn shutdown(self) {
        self.control
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.stop.send_replace(true);
        // ADS streams are long-lived: tonic's graceful shutdown would wait
        // for every client to hang up. Give them a moment, then cut them
        // (clients keep their last config and reconnect with backoff).
        weft_admin::stop_tasks(self.tasks, Duration::from_secs(2)).await;
        tracing::info!("control plane stopped");
    }
}

async fn watch_config(control: Arc<Control>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut watch = DirWatch::new(&control.config_dir);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if watch.poll() {
            reload(&control);
        }
    }
}

/// Loads the directory now and publishes it when valid.
fn reload(control: &Control) {
    let m = &control.metrics;
    match weft_model::load_dir(&control.config_dir) {
        Ok(config) => {
            for w in config.not_yet_enforced() {
                tracing::warn!("{w}");
            }
            *control.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            m.config_last_error.set(0);
            control
                .ratelimit
                .update_limits(Limits::from_config(&config));
            let started = std::time::Instant::now();
            let started_unix = unix_now();
            if let Some(stats) = control.cache.update(config) {
                let generation = control.cache.generation();
                m.config_generation.set(generation as i64);
                m.config_reloads.inc();
                m.translate_seconds.observe(started.elapsed().as_secs_f64());
                m.config_published_at.set(started_unix);
                tracing::info!(
                    generation,
                    groups_changed = stats.groups_changed,
                    groups = stats.groups,
                    "config published"
                );
            }
        }
        Err(errors) => {
            m.config_errors.inc();
            m.config_last_error.set(1);
            for e in errors.iter() {
                tracing::error!(error = %e, "config change rejected; the last good config keeps being served");
            }
            *control.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(errors.to_string());
        }
    }
}

/// The control plane's admin address for Prometheus discovery. A wildcard
/// bind lists the address of the interface with the default route (the one
/// a Prometheus elsewhere most likely reaches it at), else loopback.
async fn own_admin_target(admin: SocketAddr) -> String {
    // Documentation-range addresses (RFC 5737, RFC 3849): only the route to
    // them is looked up, nothing is sent.
    let toward = if admin.is_ipv6() {
        "[2001:db8::1]:9"
    } else {
        "192.0.2.1:9"
    };
    weft_xds::client::announce_address(admin, toward).await
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
