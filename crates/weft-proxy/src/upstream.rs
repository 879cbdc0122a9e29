//! Connections to endpoints: one pooled hyper client per endpoint (HTTP/1.1
//! keep-alive pool, or one multiplexed HTTP/2 connection), reused across
//! config reloads so a reload never drops warm connections.
//!
//! A client per endpoint (rather than one client keyed by URI) lets the
//! request keep its original authority (`:authority` / `Host`) while the
//! connector dials the endpoint's address.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Dials one fixed address whatever the request URI says.
#[derive(Clone)]
pub struct EndpointConnector {
    addr: SocketAddr,
    timeout: Duration,
}

impl tower_service::Service<Uri> for EndpointConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let (addr, timeout) = (self.addr, self.timeout);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect timed out after {} ms", timeout.as_millis()),
                    )
                })??;
            stream.set_nodelay(true)?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A pooled client for one endpoint.
pub struct EndpointClient {
    pub addr: SocketAddr,
    /// `IP:PORT` as a metric label and in error messages.
    pub label: Arc<str>,
    pub http2: bool,
    client: Client<EndpointConnector, ProxyBody>,
}

impl EndpointClient {
    pub fn new(addr: SocketAddr, http2: bool, connect_timeout: Duration) -> Self {
        let connector = EndpointConnector {
            addr,
            timeout: connect_timeout,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http2_only(http2);
        if http2 {
            builder
                .http2_adaptive_window(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .http2_keep_alive_while_idle(false);
        }
        Self {
            addr,
            label: addr.to_string().into(),
            http2,
            client: builder.build(connector),
        }
    }

    /// Sends a request whose URI is already absolute (`http://authority/path`).
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, ProxyError> {
        self.client.request(req).await.map_err(|e| {
            let reason = error_chain(&e);
            if e.is_connect() {
                ProxyError::ConnectFailed {
                    endpoint: self.label.to_string(),
                    reason,
                }
            } else {
                ProxyError::Upstream {
                    endpoint: self.label.to_string(),
                    reason,
                }
            }
        })
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
