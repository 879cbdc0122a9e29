//! The admin port: `/ready`, `/live`, `/metrics` (Prometheus text) and
//! `/config_dump` (JSON). HTTP/1.1, off the data path's listeners.
//!
//! Every long-running weft command serves one: the proxy, and through
//! [`AdminEndpoints`] the sample app and the demo.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::ProxyBody;
use crate::state::Shared;

/// What a command shows on its admin port.
pub trait AdminEndpoints: Send + Sync + 'static {
    /// `/ready`: 200 when true, 503 when false (starting or draining).
    fn ready(&self) -> bool;
    /// `/metrics`: Prometheus / OpenMetrics text.
    fn metrics(&self) -> String;
    /// `/config_dump`: JSON, when the command has a config.
    fn config_dump(&self) -> Option<String> {
        None
    }
}

impl AdminEndpoints for Shared {
    fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }
    fn metrics(&self) -> String {
        self.metrics.encode()
    }
    fn config_dump(&self) -> Option<String> {
        Some(config_dump(self))
    }
}

/// An admin server running on its own task; stops when dropped.
pub struct AdminServer {
    addr: std::net::SocketAddr,
    _stop: watch::Sender<bool>,
}

impl AdminServer {
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

/// Binds `addr` and serves `endpoints` there until the returned handle drops.
pub async fn start<A: AdminEndpoints>(
    addr: std::net::SocketAddr,
    endpoints: Arc<A>,
) -> std::io::Result<AdminServer> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on the admin address {addr}: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(serve(listener, endpoints, stopped));
    Ok(AdminServer { addr, _stop: stop })
}

/// Serves the admin endpoints until `stop` changes.
pub async fn serve<A: AdminEndpoints>(
    listener: TcpListener,
    shared: Arc<A>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<bytes::Bytes>,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle<A: AdminEndpoints>(
    shared: Arc<A>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n",
        ));
    }
    Ok(match req.uri().path() {
        "/live" => text(StatusCode::OK, "text/plain", "live\n"),
        "/ready" => {
            if shared.ready() {
                text(StatusCode::OK, "text/plain", "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n")
            }
        }
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics(),
        ),
        "/config_dump" => match shared.config_dump() {
            Some(dump) => text(StatusCode::OK, "application/json", dump),
            None => text(
                StatusCode::NOT_FOUND,
                "text/plain",
                "this command has no config\n",
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /ready, /live, /metrics, /config_dump\n",
        ),
    })
}

/// The config in use, where it listens, and the last rejected change.
pub fn config_dump(shared: &Shared) -> String {
    let snap = shared.snapshot.load_full();
    let listeners: serde_json::Map<String, serde_json::Value> = shared
        .listeners
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(addr) => serde_json::json!({"state": "bound", "address": addr.to_string()}),
                Err(e) => serde_json::json!({"state": "error", "error": e}),
            };
            (name.clone(), v)
        })
        .collect();
    let dump = serde_json::json!({
        "service": &*shared.local_service,
        "generation": snap.generation,
        "last_error": *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()),
        "listeners": listeners,
        "app": shared.app.as_ref().map(|a| a.addr.to_string()),
        "config": &*snap.source,
    });
    serde_json::to_string_pretty(&dump).expect("JSON values always serialize") + "\n"
}
