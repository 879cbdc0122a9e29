//! `weft ratelimit`: the service on its own, for a config directory watched
//! like `weft control` watches it, with an admin port (`/ready`, `/metrics`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_model::DirWatch;

use crate::{Limits, RateLimitServer, StoreError};

/// Everything `weft ratelimit` is told on its command line.
#[derive(Debug, Clone)]
pub struct RateLimitOptions {
    pub config_dir: PathBuf,
    /// gRPC (plaintext HTTP/2): `RateLimitService`.
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    /// Counters in this Redis (`redis://host:port`); in memory when `None`.
    pub redis: Option<String>,
    pub reload_interval: Duration,
}

impl RateLimitOptions {
    pub fn new(config_dir: impl Into<PathBuf>) -> Self {
        RateLimitOptions {
            config_dir: config_dir.into(),
            listen: ([127, 0, 0, 1], 15013).into(),
            admin: ([127, 0, 0, 1], 15014).into(),
            redis: None,
            reload_interval: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] weft_model::ConfigErrors),
    #[error("rate-limit store: {0}")]
    Store(StoreError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started rate-limit service.
pub struct RunningRateLimit {
    server: RateLimitServer,
    admin_state: Arc<AdminState>,
    listen: SocketAddr,
    admin: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

struct AdminState {
    server: RateLimitServer,
    config_dir: PathBuf,
    draining: AtomicBool,
    /// Why the newest config on disk was rejected, while it is.
    last_error: Mutex<Option<String>>,
}

impl AdminState {
    fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl weft_admin::AdminEndpoints for AdminState {
    fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        self.server.encode_metrics(&mut out);
        out.push_str("# EOF\n");
        out
    }

    fn route(&self, path: &str, _query: Option<&str>) -> Option<weft_admin::AdminResponse> {
        (path == "/status").then(|| {
            let mut limits: Vec<_> = self
                .server
                .limits()
                .iter()
                .map(|l| {
                    serde_json::json!({
                        "descriptor": l.descriptor,
                        "requestsPerUnit": l.requests_per_unit,
                        "unit": l.unit.as_str(),
                        "failureMode": l.failure_mode.as_str(),
                    })
                })
                .collect();
            limits.sort_by_key(|l| l["descriptor"].to_string());
            let status = serde_json::json!({
                "config_dir": self.config_dir.display().to_string(),
                "store": self.server.store_description(),
                "store_up": self.server.store_up(),
                "last_error": self.last_error(),
                "limits": limits,
            });
            weft_admin::AdminResponse::json(
                serde_json::to_string_pretty(&status).expect("JSON values always serialize") + "\n",
            )
        })
    }

    fn paths(&self) -> &'static [&'static str] {
        &["/status"]
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Loads the config, opens the store, binds both ports and starts serving.
pub async fn start(opts: RateLimitOptions) -> Result<RunningRateLimit, StartError> {
    let config = weft_model::load_dir(&opts.config_dir)?;
    let store = crate::store_for(opts.redis.as_deref()).map_err(StartError::Store)?;
    let server = RateLimitServer::new(Limits::from_config(&config), store);
    let grpc_l = bind("rate-limit service", opts.listen).await?;
    let admin_l = bind("admin", opts.admin).await?;
    let listen = grpc_l.local_addr().expect("bound socket has an address");
    let admin = admin_l.local_addr().expect("bound socket has an address");

    let (stop, stop_rx) = watch::channel(false);
    let service = server.clone().into_service();
    let mut grpc_stop = stop_rx.clone();
    let grpc_task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc_l);
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_stop.changed().await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "rate-limit gRPC server failed");
        }
    });
    let admin_state = Arc::new(AdminState {
        server: server.clone(),
        config_dir: opts.config_dir.clone(),
        draining: AtomicBool::new(false),
        last_error: Mutex::new(None),
    });
    let admin_task = tokio::spawn(weft_admin::serve(
        admin_l,
        admin_state.clone(),
        stop_rx.clone(),
    ));
    let watch_task = tokio::spawn(watch_config(
        admin_state.clone(),
        opts.reload_interval,
        stop_rx,
    ));
    tracing::info!(
        %listen,
        %admin,
        store = %server.store_description(),
        limits = server.limits().len(),
        dir = %opts.config_dir.display(),
        "rate-limit service started"
    );
    Ok(RunningRateLimit {
        server,
        admin_state,
        listen,
        admin,
        stop,
        tasks: vec![grpc_task, admin_task, watch_task],
    })
}

impl RunningRateLimit {
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn server(&self) -> &RateLimitServer {
        &self.server
    }

    /// Why the newest config on disk was rejected, while it is.
    pub fn last_error(&self) -> Option<String> {
        self.admin_state.last_error()
    }

    /// Stops serving: `/ready` turns 503, in-flight calls get a moment to
    /// finish, then the listeners close.
    pub async fn shutdown(self) {
        self.admin_state.draining.store(true, Ordering::Relaxed);
        self.stop.send_replace(true);
        weft_admin::stop_tasks(self.tasks, Duration::from_secs(2)).await;
        tracing::info!("rate-limit service stopped");
    }
}

/// Reloads the limits whenever the directory changes; an invalid directory
/// keeps the last good limits (and says why).
async fn watch_config(state: Arc<AdminState>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let (server, dir) = (&state.server, &state.config_dir);
    let mut watch = DirWatch::new(dir);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if !watch.poll() {
            continue;
        }
        match weft_model::load_dir(dir) {
            Ok(config) => {
                state.set_last_error(None);
                let limits = Limits::from_config(&config);
                if *server.limits() != limits {
                    tracing::info!(limits = limits.len(), "rate limits reloaded");
                    server.update_limits(limits);
                }
            }
            Err(errors) => {
                for e in errors.iter() {
                    tracing::error!(error = %e, "config change rejected; the last good limits stay in force");
                }
                state.set_last_error(Some(errors.to_string()));
            }
        }
    }
}
