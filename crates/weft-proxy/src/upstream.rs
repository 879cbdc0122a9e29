//! Connections to endpoints, one pool per endpoint, on hyper's connection
//! API: HTTP/1.1 keeps a LIFO stack of idle keep-alive connections, HTTP/2
//! one multiplexed connection. Clients are shared through a registry so a
//! config reload keeps warm connections.
//!
//! Why not hyper-util's legacy `Client`: it keys pools by URI authority
//! (we want the client's `:authority` kept while dialing the endpoint), and
//! its generic pool (hash map, checkout futures, an extra task per returned
//! connection) cost about a tenth of the proxy's CPU per request in the
//! benchmark. Here a connection goes back to its pool when the response body
//! is finished, with no extra task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Set on a response whose request opened a new connection: how long the
/// connect (and handshake) took, so the balancer's latency sample can leave
/// it out (one slow TCP connect would otherwise make the endpoint look slow
/// for as long as the estimate remembers a peak).
#[derive(Debug, Clone, Copy)]
pub struct Connected(pub Duration);

/// A pooled client for one endpoint.
pub struct EndpointClient {
    pub addr: SocketAddr,
    /// `IP:PORT` as a metric label and in error messages.
    pub label: Arc<str>,
    pub http2: bool,
    connect_timeout: Duration,
    idle: Mutex<Vec<http1::SendRequest<ProxyBody>>>,
    shared_h2: Mutex<Option<http2::SendRequest<ProxyBody>>>,
    /// Serializes HTTP/2 connects so a burst opens one connection, not many.
    h2_connecting: tokio::sync::Mutex<()>,
}

impl EndpointClient {
    pub fn new(addr: SocketAddr, http2: bool, connect_timeout: Duration) -> Self {
        Self {
            addr,
            label: addr.to_string().into(),
            http2,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            shared_h2: Mutex::new(None),
            h2_connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends a request: HTTP/1.1 requests carry an origin-form URI and a
    /// `Host`; HTTP/2 requests an absolute URI.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if self.http2 {
            self.send_h2(req).await
        } else {
            self.send_h1(req).await
        }
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, ProxyError> {
        let failed = |reason: String| ProxyError::ConnectFailed {
            endpoint: self.label.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| {
                failed(format!(
                    "timed out after {} ms",
                    self.connect_timeout.as_millis()
                ))
            })?
            .map_err(|e| failed(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    fn upstream_error(&self, e: &hyper::Error) -> ProxyError {
        ProxyError::Upstream {
            endpoint: self.label.to_string(),
            reason: error_chain(e),
        }
    }

    /// An idle connection from the pool, or a new one (with how long
    /// opening it took).
    async fn checkout_h1(
        &self,
    ) -> Result<(http1::SendRequest<ProxyBody>, Option<Duration>), ProxyError> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let Some(mut sender) = idle else { break };
            if sender.is_ready() {
                return Ok((sender, None));
            }
            // Returned a moment ago: the connection task may still be
            // finishing the previous response. Closed ones fail here.
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok((sender, None));
            }
        }
        let started = std::time::Instant::now();
        let io = self.connect().await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| self.upstream_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream HTTP/1.1 connection ended with an error");
            }
        });
        Ok((sender, Some(started.elapsed())))
    }

    fn checkin_h1(&self, sender: http1::SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(sender);
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // A pooled connection the server closed meanwhile gives the request
        // back unsent: then one retry on a fresh connection is safe.
        for attempt in 0..2 {
            let (mut sender, connected) = self.checkout_h1().await?;
            match sender.try_send_request(req).await {
                Ok(mut resp) => {
                    if let Some(d) = connected {
                        resp.extensions_mut().insert(Connected(d));
                    }
                    return Ok(resp.map(|body| {
                        ProxyBody::Pooled(PooledBody {
                            body,
                            home: Some((sender, self.clone())),
                        })
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if attempt == 0 => req = unsent,
                    _ => return Err(self.upstream_error(e.error())),
                },
            }
        }
        unreachable!("the second attempt returns")
    }

    /// The shared HTTP/2 connection, or a new one (with how long opening it
    /// took, for the request that opened it).
    async fn h2_sender(
        &self,
    ) -> Result<(http2::SendRequest<ProxyBody>, Option<Duration>), ProxyError> {
        let current = || {
            self.shared_h2
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .filter(|s| !s.is_closed())
                .cloned()
        };
        if let Some(s) = current() {
            return Ok((s, None));
        }
        let started = std::time::Instant::now();
        let _connecting = self.h2_connecting.lock().await;
        if let Some(s) = current() {
            return Ok((s, None));
        }
        let io = self.connect().await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .adaptive_window(true)
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(io)
            .await
            .map_err(|e| self.upstream_error(&e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        *self.shared_h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok((sender, Some(started.elapsed())))
    }

    async fn send_h2(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        for attempt in 0..2 {
            let (mut sender, connected) = self.h2_sender().await?;
            match sender.try_send_request(req).await {
                Ok(mut resp) => {
                    if let Some(d) = connected {
                        resp.extensions_mut().insert(Connected(d));
                    }
                    return Ok(resp.map(ProxyBody::Streamed));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if attempt == 0 => req = unsent,
                    _ => return Err(self.upstream_error(e.error())),
                },
            }
        }
        unreachable!("the second attempt returns")
    }
}

/// A response body from a pooled HTTP/1.1 connection: once it has been read
/// to the end, the connection goes back to its endpoint's pool. Dropped
/// early, the connection is closed (its unread rest cannot be reused).
pub struct PooledBody {
    body: Incoming,
    home: Option<(http1::SendRequest<ProxyBody>, Arc<EndpointClient>)>,
}

impl PooledBody {
    fn give_back(&mut self) {
        if let Some((sender, client)) = self.home.take() {
            client.checkin_h1(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) {
            self.give_back();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // The server side often stops polling once `is_end_stream` is true.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Every endpoint client the proxy has, keyed by address and protocol, so a
/// new config snapshot reuses the clients (and their warm pools) of the old.
#[derive(Default)]
pub struct EndpointRegistry {
    clients: Mutex<HashMap<(SocketAddr, bool), Arc<EndpointClient>>>,
}

impl EndpointRegistry {
    /// The client for this endpoint, created on first use.
    pub fn get(
        &self,
        addr: SocketAddr,
        http2: bool,
        connect_timeout: Duration,
    ) -> Arc<EndpointClient> {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((addr, http2))
            .or_insert_with(|| Arc::new(EndpointClient::new(addr, http2, connect_timeout)))
            .clone()
    }

    /// Forgets clients that no snapshot uses any more (their pools close once
    /// in-flight requests holding them finish).
    pub fn retain_used(&self) {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, c| Arc::strong_count(c) > 1);
    }
}
