//! A small HTTP client for tests: HTTP/1.1 or h2c with prior knowledge, with
//! the whole response (trailers included) collected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How long one request (connect, send, read the whole body) may take
/// unless [`HttpClient::with_timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A response read to its end.
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Trailers, if the response carried any.
    pub trailers: Option<HeaderMap>,
}

impl TestResponse {
    /// A header's value as text; `None` if absent or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as (lossy) UTF-8, for messages and text assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A reusable client that keeps connections open between requests.
///
/// HTTP/1.1 goes through hyper-util's pooled legacy client. h2c uses one
/// multiplexed HTTP/2 connection per address, so that a request sent with
/// [`send_to`](Self::send_to) carries its service host in `:authority`
/// while the TCP connection goes to a proxy's address (the legacy client
/// can only connect to the URI's own authority).
#[derive(Clone)]
pub struct HttpClient {
    protocol: Protocol,
    timeout: Duration,
}

#[derive(Clone)]
enum Protocol {
    Http1(Box<Client<HttpConnector, Full<Bytes>>>),
    H2c(Arc<Mutex<HashMap<SocketAddr, http2::SendRequest<Full<Bytes>>>>>),
}

impl HttpClient {
    /// HTTP/1.1 when `h2c` is false, else HTTP/2 over cleartext with prior
    /// knowledge.
    pub fn new(h2c: bool) -> Self {
        if h2c { Self::h2c() } else { Self::http1() }
    }

    /// HTTP/1.1 with keep-alive.
    pub fn http1() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        HttpClient {
            protocol: Protocol::Http1(Box::new(client)),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// HTTP/2 over cleartext TCP, prior knowledge (no upgrade dance).
    pub fn h2c() -> Self {
        HttpClient {
            protocol: Protocol::H2c(Arc::default()),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Bounds each request (connect, send, read the whole body).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `req`, whose URI must be absolute (`http://127.0.0.1:8080/x`),
    /// to the URI's authority.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> anyhow::Result<TestResponse> {
        let authority = req
            .uri()
            .authority()
            .with_context(|| format!("request URI `{}` has no authority", req.uri()))?;
        let addr = tokio::net::lookup_host(authority.as_str())
            .await?
            .next()
            .with_context(|| format!("`{authority}` resolves to no address"))?;
        self.send_to(addr, req).await
    }

    /// Sends `req` over a connection to `addr` (an upstream or a proxy).
    ///
    /// The service host is the URI's authority if it has one, else the `host`
    /// header, else `addr`. Over HTTP/1.1 it goes in `Host`; over h2c in
    /// `:authority` (a `host` header is moved there when the URI had none).
    pub async fn send_to(
        &self,
        addr: SocketAddr,
        req: Request<Full<Bytes>>,
    ) -> anyhow::Result<TestResponse> {
        let what = format!("{} {} via {addr}", req.method(), req.uri());
        let exchange = async {
            let response = match &self.protocol {
                Protocol::Http1(client) => client.request(for_http1(addr, req)?).await?,
                Protocol::H2c(conns) => {
                    let mut sender = h2_sender(conns, addr).await?;
                    sender.send_request(for_h2(addr, req)?).await?
                }
            };
            collect(response).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .with_context(|| format!("{what}: no complete response within {:?}", self.timeout))?
            .with_context(|| what)
    }

    /// `GET path` with `Host: host`, over a connection to `addr`.
    pub async fn get(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> anyhow::Result<TestResponse> {
        let req = Request::get(path)
            .header(HOST, host)
            .body(Full::default())?;
        self.send_to(addr, req).await
    }

    /// `POST path` with `Host: host` and `body`, over a connection to `addr`.
    pub async fn post(
        &self,
        addr: SocketAddr,
        host: &str,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<TestResponse> {
        let req = Request::post(path)
            .header(HOST, host)
            .body(Full::new(body.into()))?;
        self.send_to(addr, req).await
    }
}

/// One `GET` over a fresh HTTP/1.1 connection: status, headers and body.
pub async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
    let response = HttpClient::http1().get(addr, host, path).await?;
    Ok((response.status, response.headers, response.body))
}

/// Points the URI at `addr` and keeps the service host in `Host`.
fn for_http1(addr: SocketAddr, req: Request<Full<Bytes>>) -> anyhow::Result<Request<Full<Bytes>>> {
    let (mut parts, body) = req.into_parts();
    if let Some(authority) = parts.uri.authority()
        && !parts.headers.contains_key(HOST)
    {
        parts.headers.insert(HOST, authority.as_str().parse()?);
    }
    parts.uri = with_authority(&parts.uri, addr.to_string().parse()?)?;
    Ok(Request::from_parts(parts, body))
}

/// Puts the service host in the URI, which hyper sends as `:authority`.
fn for_h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> anyhow::Result<Request<Full<Bytes>>> {
    let (mut parts, body) = req.into_parts();
    if parts.uri.authority().is_none() {
        let authority = match parts.headers.remove(HOST) {
            Some(host) => host.to_str()?.parse()?,
            None => addr.to_string().parse()?,
        };
        parts.uri = with_authority(&parts.uri, authority)?;
    }
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, body))
}

fn with_authority(uri: &Uri, authority: Authority) -> anyhow::Result<Uri> {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Ok(Uri::builder()
        .scheme(uri.scheme().cloned().unwrap_or(Scheme::HTTP))
        .authority(authority)
        .path_and_query(path)
        .build()?)
}

/// The open h2c connection to `addr`, or a new one.
async fn h2_sender(
    conns: &Mutex<HashMap<SocketAddr, http2::SendRequest<Full<Bytes>>>>,
    addr: SocketAddr,
) -> anyhow::Result<http2::SendRequest<Full<Bytes>>> {
    let cached = conns.lock().unwrap().get(&addr).cloned();
    if let Some(mut sender) = cached
        && sender.ready().await.is_ok()
    {
        return Ok(sender);
    }
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) =
        http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // The connection's end is seen by the next request as a closed sender.
        let _ = connection.await;
    });
    sender.ready().await?;
    conns.lock().unwrap().insert(addr, sender.clone());
    Ok(sender)
}

async fn collect(response: http::Response<Incoming>) -> anyhow::Result<TestResponse> {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.context("reading the response body")?;
    let trailers = collected.trailers().cloned();
    Ok(TestResponse {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use hyper::service::service_fn;
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;

    /// Answers with what it saw (`x-seen-host`: the host header, else the
    /// `:authority`), the request body, and a trailer.
    async fn mirror_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        let seen_host = match req.headers().get(HOST) {
                            Some(h) => format!("header {}", h.to_str().unwrap()),
                            None => format!("authority {}", req.uri().authority().unwrap()),
                        };
                        let body = req.into_body().collect().await?.to_bytes();
                        let mut trailers = HeaderMap::new();
                        trailers.insert("x-trailer", HeaderValue::from_static("done"));
                        let body = Full::new(body).with_trailers(async { Some(Ok(trailers)) });
                        let mut response = http::Response::new(body);
                        response
                            .headers_mut()
                            .insert("x-seen-host", seen_host.parse().unwrap());
                        Ok::<_, hyper::Error>(response)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn http1_sends_host_header_and_reads_body() {
        let addr = mirror_server().await;
        let client = HttpClient::http1();
        let response = client
            .post(addr, "catalog.shop", "/items", "payload")
            .await
            .unwrap();
        assert_eq!(response.version, Version::HTTP_11);
        assert_eq!(response.header("x-seen-host"), Some("header catalog.shop"));
        assert_eq!(response.body, "payload");
    }

    #[tokio::test]
    async fn h2c_sends_host_as_authority_and_keeps_trailers() {
        let addr = mirror_server().await;
        let client = HttpClient::h2c();
        for _ in 0..2 {
            let response = client
                .post(addr, "catalog.shop", "/items", "payload")
                .await
                .unwrap();
            assert_eq!(response.version, Version::HTTP_2);
            assert_eq!(
                response.header("x-seen-host"),
                Some("authority catalog.shop")
            );
            assert_eq!(response.body, "payload");
            let trailers = response.trailers.expect("h2 response trailers");
            assert_eq!(trailers["x-trailer"], "done");
        }
    }

    #[tokio::test]
    async fn send_uses_the_absolute_uri() {
        let addr = mirror_server().await;
        let req = Request::get(format!("http://{addr}/x"))
            .body(Full::default())
            .unwrap();
        let response = HttpClient::new(false).send(req).await.unwrap();
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(
            response.header("x-seen-host"),
            Some(format!("header {addr}").as_str())
        );
    }

    #[tokio::test]
    async fn refused_connection_names_the_request() {
        let addr = crate::free_addr();
        let err = HttpClient::h2c()
            .get(addr, "svc", "/nowhere")
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("/nowhere"), "{err:#}");
    }
}
