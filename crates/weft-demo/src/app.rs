//! The sample upstream app: a small HTTP server with injectable latency and
//! errors, used by the demo mesh, the proxy benchmark and integration tests.
//!
//! One port serves HTTP/1.1 (keep-alive, upgrades) and h2c with prior
//! knowledge. For every request it:
//!
//! 1. waits `latency` (or, for a random `slow_share` of requests,
//!    `slow_latency`) plus a uniform `0..jitter`;
//! 2. with probability `error_rate` answers `error_status` with body
//!    `injected error from NAME`;
//! 3. makes each configured [`Call`] in order; if one answers non-2xx or
//!    fails, answers `502` with a body naming the call;
//! 4. answers by route, and for a random `biz_error_share` of the requests
//!    not failed in 2 or 3 adds `biz_error_header` (a business failure
//!    behind a `200`, e.g. `x-biz-code: 5003`) (`POST`/`PUT` on any path echo first; other methods
//!    are treated alike):
//!    - `POST`/`PUT`: the request body streamed back, trailers included;
//!    - `/status/NNN`: status `NNN`;
//!    - `/delay/MS`: `200` after `MS` more milliseconds;
//!    - `/headers`: a JSON object of the request headers (lowercase names,
//!      `:authority` shown as `host`), plus response header
//!      `x-request-version` (`HTTP/1.1`, `HTTP/2.0`);
//!    - `/stream/N`: `N` chunks `chunk-<i>\n`, each flushed on its own;
//!    - anything else: `200` with `body_size` bytes of `x`.
//!
//! Every response carries `x-app-name: NAME` and `content-type: text/plain`
//! (`application/json` for `/headers`); when the app made calls,
//! `x-downstream` lists the `x-app-name` of each answer, comma-separated.
//!
//! A `GET` with no latency, no error and no calls is answered without a
//! task, a box or a body allocation: the app must outrun the proxies it is
//! the upstream of in the benchmark.
//!
//! Paths under `/_weft/` are the app's own, not traffic: `/_weft/fault`
//! shows and changes the faults at runtime (`POST` with query parameters or
//! JSON, `DELETE` to reset; see `fault_api`), `/_weft/stats` the counters.
//! A benchmark uses them to make one endpoint go bad mid-run, then heal.

mod body;
mod downstream;
mod fault;
mod fault_api;
mod service;
#[cfg(test)]
mod tests;
mod timer;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

pub use downstream::{Call, ParseCallError};
pub use fault::{BizErrorHeader, ParseBizErrorHeaderError};
use service::{AppService, Shared};

/// Response header naming the app that answered.
pub const APP_NAME_HEADER: &str = "x-app-name";
/// Response header listing the `x-app-name` of each downstream call's answer.
pub const DOWNSTREAM_HEADER: &str = "x-downstream";
/// `/headers` response header: the HTTP version the request arrived with.
pub const REQUEST_VERSION_HEADER: &str = "x-request-version";

/// How long [`RunningApp::shutdown`] lets in-flight requests finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How one sample app behaves.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// Sent back in `x-app-name`, so tests and the demo see who answered.
    pub name: String,
    /// Where to listen; port 0 picks a free port (see [`RunningApp::local_addr`]).
    pub listen: SocketAddr,
    /// Fixed delay added to every request.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..jitter` per request.
    pub jitter: Duration,
    /// Share of requests answered with `error_status`, within `0.0..=1.0`.
    pub error_rate: f64,
    /// Share of requests (drawn per request) that wait `slow_latency`
    /// instead of `latency`: a long tail. Within `0.0..=1.0`.
    pub slow_share: f64,
    /// The delay of the slow share.
    pub slow_latency: Duration,
    /// Share of requests answered as usual but with `biz_error_header`
    /// set, within `0.0..=1.0`.
    pub biz_error_share: f64,
    /// The header that marks a business error.
    pub biz_error_header: BizErrorHeader,
    /// Status of injected errors.
    pub error_status: u16,
    /// Size of the default `200` body.
    pub body_size: usize,
    /// Downstream `GET`s made, in order, for every request.
    pub calls: Vec<Call>,
    /// A one-time stall: every response that would be sent within the
    /// window is held until it ends (a GC pause, a failover), to check that
    /// a load generator sees it.
    pub stall: Option<Stall>,
}

/// A window, relative to the app's start, during which no response leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// When the stall begins, after the app started.
    pub after: Duration,
    /// How long it lasts.
    pub length: Duration,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            name: "app".to_owned(),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
            slow_share: 0.0,
            slow_latency: Duration::ZERO,
            biz_error_share: 0.0,
            biz_error_header: BizErrorHeader::default(),
            error_status: 503,
            body_size: 16,
            calls: Vec::new(),
            stall: None,
        }
    }
}

/// Counters of a running app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppStats {
    /// Requests received.
    pub requests: u64,
    /// Requests answered with an injected error or a `502` for a failed
    /// downstream call (not the statuses asked for with `/status/NNN`).
    pub errors: u64,
    /// Requests answered with the business-error header.
    pub biz_errors: u64,
    /// Requests that waited the slow latency.
    pub slow: u64,
    /// The `x-weft-deadline-ms` of the last request that carried one.
    pub last_deadline_ms: Option<u64>,
}

/// A sample app serving on its own tokio task.
///
/// Dropping it also stops it; in-flight requests then drain in the background.
pub struct RunningApp {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl RunningApp {
    /// The address it listens on (the real port when configured with 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Requests and errors so far.
    pub fn stats(&self) -> AppStats {
        self.shared.stats()
    }

    /// Admin endpoints (`/ready`, `/metrics`) for this app, named `name`.
    pub fn admin(&self, name: &str) -> crate::admin::AppAdmin {
        let shared = self.shared.clone();
        crate::admin::AppAdmin {
            name: name.to_string(),
            stats: Box::new(move || shared.stats()),
        }
    }

    /// Stops accepting connections, lets in-flight requests finish (at most
    /// 5 s, then cuts them off) and returns once the port is closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.server.await {
            tracing::warn!(error = %e, "sample app server task failed");
        }
    }
}

/// Binds `cfg.listen` and starts serving.
pub async fn start(cfg: AppConfig) -> anyhow::Result<RunningApp> {
    let shared = Arc::new(Shared::new(&cfg)?);
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("app {}: binding {}", cfg.name, cfg.listen))?;
    let local_addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(serve(listener, Arc::clone(&shared), stopped));
    tracing::info!(app = %cfg.name, %local_addr, "sample app listening");
    Ok(RunningApp {
        local_addr,
        shared,
        stop,
        server,
    })
}

/// Accepts until told to stop (or the [`RunningApp`] is dropped), then drains.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let service = AppService::new(Arc::clone(&shared));
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let connection = graceful.watch(connection);
                    connections.spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "sample app connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "sample app accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = connections.len(),
            "sample app: connections still busy after {DRAIN_TIMEOUT:?}, closing them"
        );
    }
    connections.shutdown().await;
}
