//! Accept loops. Each listener runs until the stop signal, then stops
//! accepting and gives its open HTTP connections `drain` time to finish their
//! in-flight requests (hyper's graceful shutdown: HTTP/1 closes after the
//! current response, HTTP/2 sends GOAWAY).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::io::{Detected, PrefixedIo, detect};
use crate::metrics::ConnectionGuard;
use crate::outbound::{self, Target};
use crate::snapshot::VipTarget;
use crate::state::{Limits, Shared};
use crate::{inbound, tcp};

/// The HTTP server settings every listener uses.
pub fn http_server(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .adaptive_window(true);
    b
}

/// What a listener does with each connection.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// The shared outbound HTTP listener (routes by Host).
    Outbound,
    /// A Service's virtual address: HTTP or opaque TCP, as the current
    /// snapshot says when the connection arrives.
    Vip(SocketAddr),
    /// In front of the local app, with protocol detection.
    Inbound,
}

pub async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    role: Role,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let server = Arc::new(http_server(&shared.limits));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let guard = ConnectionGuard::new(&shared.metrics, &name);
        let shared = shared.clone();
        let server = server.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _guard = guard;
            match role {
                Role::Outbound => {
                    outbound_http(stream, peer, Target::Host, shared, &server, watcher).await
                }
                Role::Vip(addr) => {
                    let snapshot = shared.snapshot.load_full();
                    match snapshot.vips.get(&addr) {
                        Some(VipTarget::Http(_)) => {
                            outbound_http(stream, peer, Target::Vip(addr), shared, &server, watcher)
                                .await
                        }
                        Some(VipTarget::Tcp(cluster)) => {
                            tcp::forward(stream, bytes::Bytes::new(), cluster, &shared).await
                        }
                        None => {} // removed from config since the listener started
                    }
                }
                Role::Inbound => inbound_connection(stream, peer, shared, &server, watcher).await,
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(listener = %name, "drain timed out; closing remaining connections");
    }
}

async fn outbound_http(
    stream: TcpStream,
    peer: SocketAddr,
    target: Target,
    shared: Arc<Shared>,
    server: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let svc = service_fn(move |req| outbound::handle(shared.clone(), target, peer, req));
    let conn = server.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn inbound_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    server: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let mut prefix = BytesMut::with_capacity(64);
    let detected = tokio::time::timeout(shared.limits.detect_timeout, async {
        loop {
            match stream.read_buf(&mut prefix).await {
                Ok(0) | Err(_) => return None, // closed before saying anything
                Ok(_) => {
                    if let Some(d) = detect(&prefix) {
                        return Some(d);
                    }
                }
            }
        }
    })
    .await
    .unwrap_or(Some(Detected::Opaque));
    let Some(detected) = detected else { return };
    let prefix = prefix.freeze();
    let Some(app) = shared.app_addr() else {
        return;
    };
    match detected {
        Detected::Opaque => tcp::forward_to(stream, prefix, app, &shared).await,
        Detected::Http1 | Detected::Http2 => {
            let io = TokioIo::new(PrefixedIo::new(prefix, stream));
            let shared2 = shared.clone();
            let svc = service_fn(move |req| inbound::handle(shared2.clone(), peer, req));
            let conn = server.serve_connection_with_upgrades(io, svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "inbound connection ended with an error");
            }
        }
    }
}
