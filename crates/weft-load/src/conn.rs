//! One connection to the target and the requests sent on it.
//!
//! HTTP/1.1 on the tool's own lean client ([`crate::h1`]); HTTP/2 and gRPC
//! on the `h2` crate directly (hyper's client connection adds a dispatch
//! task and channel per request: 205k req/s against h2load's 255-322k on
//! one core). Each worker owns its connection, reconnects when it breaks,
//! and never retries a request (a load generator that retries hides
//! failures).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, TE};
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::grpc;
use crate::h1::{H1Conn, H1Request};
use crate::outcome::{ErrorKind, Failure, Outcome};
use crate::spec::{LoadSpec, Protocol};

/// Everything needed to build the same request again and again.
#[derive(Debug)]
pub(crate) struct RequestTemplate {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    grpc: bool,
    http2: bool,
    timeout: Duration,
    /// HTTP/1.1: the request, serialized once.
    h1: Option<H1Request>,
    pub(crate) addr: SocketAddr,
}

impl RequestTemplate {
    pub(crate) fn new(spec: &LoadSpec, addr: SocketAddr) -> Self {
        let mut headers = HeaderMap::new();
        // A `Host` given with --header names the authority (a mesh routes
        // by it) while the connection still goes to the target's address.
        let authority = spec
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(&spec.target.authority)
            .to_owned();
        let (method, uri, version, body, grpc, http2) = match &spec.protocol {
            Protocol::Http1 => {
                headers.insert(
                    HOST,
                    HeaderValue::from_str(&authority)
                        .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
                );
                let uri: Uri = spec
                    .target
                    .path_and_query
                    .parse()
                    .unwrap_or_else(|_| Uri::from_static("/"));
                (
                    spec.method.clone(),
                    uri,
                    Version::HTTP_11,
                    spec.body.clone(),
                    false,
                    false,
                )
            }
            Protocol::Http2 => (
                spec.method.clone(),
                absolute(&authority, &spec.target.path_and_query),
                Version::HTTP_2,
                spec.body.clone(),
                false,
                true,
            ),
            Protocol::Grpc { method } => {
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                headers.insert(TE, HeaderValue::from_static("trailers"));
                if let Ok(v) = HeaderValue::from_str(&grpc::timeout_header(spec.timeout)) {
                    headers.insert("grpc-timeout", v);
                }
                let path = format!("/{}", method.trim_start_matches('/'));
                (
                    Method::POST,
                    absolute(&authority, &path),
                    Version::HTTP_2,
                    grpc::frame(&spec.body),
                    true,
                    true,
                )
            }
        };
        for (name, value) in &spec.headers {
            if name != HOST {
                headers.append(name.clone(), value.clone());
            }
        }
        let h1 =
            (!http2).then(|| H1Request::new(&method, &spec.target.path_and_query, &headers, &body));
        RequestTemplate {
            h1,
            method,
            uri,
            version,
            headers,
            body,
            grpc,
            http2,
            timeout: spec.timeout,
            addr,
        }
    }

    fn request(&self) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }

    pub(crate) fn is_multiplexed(&self) -> bool {
        self.http2
    }
}

fn absolute(authority: &str, path: &str) -> Uri {
    format!("http://{authority}{path}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
}

/// An open connection.
#[derive(Debug)]
pub(crate) struct Conn {
    /// `None` while an HTTP/1 request is out with the sender.
    sender: Option<Sender>,
    /// HTTP/2: the task driving the connection.
    driver: Option<JoinHandle<()>>,
}

/// The handle requests are sent with: an HTTP/1 one is lent to one request
/// at a time and given back; an HTTP/2 one is cloned for every stream.
#[derive(Debug)]
pub(crate) enum Sender {
    H1(H1Conn),
    H2(h2::client::SendRequest<Bytes>),
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A connection given up on (timeout, error) must not linger.
        if let Some(d) = &self.driver {
            d.abort();
        }
    }
}

impl Conn {
    pub(crate) async fn open(t: &RequestTemplate) -> Result<Conn, Failure> {
        let addr = t.addr.to_string();
        let stream = match tokio::time::timeout(t.timeout, TcpStream::connect(t.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Failure::connect(&e, &addr)),
            Err(_) => {
                return Err(Failure::new(
                    ErrorKind::ConnectTimeout,
                    format!("connect to {addr}: no answer within {:?}", t.timeout),
                ));
            }
        };
        let _ = stream.set_nodelay(true);
        if !t.http2 {
            return Ok(Conn {
                sender: Some(Sender::H1(H1Conn::new(stream))),
                driver: None,
            });
        }
        let handshake = async {
            let (sender, conn) = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(4 << 20)
                .handshake::<_, Bytes>(stream)
                .await?;
            let driver = tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, h2::Error>(Conn {
                sender: Some(Sender::H2(sender)),
                driver: Some(driver),
            })
        };
        match tokio::time::timeout(t.timeout, handshake).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(Failure::new(
                ErrorKind::ConnectError,
                format!(
                    "HTTP/2 handshake with {addr}: {}",
                    crate::outcome::error_chain(&e)
                ),
            )),
            Err(_) => Err(Failure::new(
                ErrorKind::ConnectTimeout,
                format!("handshake with {addr}: no answer within {:?}", t.timeout),
            )),
        }
    }

    /// Whether a new request can go on this connection (after waiting for
    /// an HTTP/1 connection to finish its previous exchange).
    pub(crate) async fn usable(&mut self) -> bool {
        match &mut self.sender {
            Some(Sender::H1(_)) => true,
            // Never wait here (the worker would stop reaping responses):
            // the stream waits for capacity itself. The connection is gone
            // when its task has ended.
            Some(Sender::H2(_)) => !self.driver.as_ref().is_some_and(JoinHandle::is_finished),
            None => false,
        }
    }

    /// The sender for one request: HTTP/1's is lent (give it back with
    /// [`Conn::give_back`]), HTTP/2's cloned.
    pub(crate) fn take_sender(&mut self) -> Option<Sender> {
        match &self.sender {
            Some(Sender::H2(s)) => Some(Sender::H2(s.clone())),
            Some(Sender::H1(_)) => self.sender.take(),
            None => None,
        }
    }

    pub(crate) fn give_back(&mut self, sender: Sender) {
        if let Sender::H1(_) = sender {
            self.sender = Some(sender);
        }
    }
}

/// Sends one request and reads the whole response. Returns the outcome and
/// the sender, to be given back when the exchange completed (an HTTP/1
/// connection whose request timed out is not reusable).
pub(crate) async fn exchange(sender: Sender, t: &RequestTemplate) -> (Outcome, Option<Sender>) {
    match (sender, &t.h1) {
        (Sender::H1(conn), Some(req)) => exchange_h1(conn, req, t.timeout).await,
        (Sender::H2(s), _) => exchange_h2(s, t).await,
        (Sender::H1(_), None) => (
            Outcome::failed(
                Failure::new(ErrorKind::Other, "HTTP/1 connection for an HTTP/2 request"),
                None,
            ),
            None,
        ),
    }
}

async fn exchange_h1(
    mut conn: H1Conn,
    req: &H1Request,
    timeout: Duration,
) -> (Outcome, Option<Sender>) {
    let sent = Instant::now();
    let result = tokio::time::timeout(timeout, conn.exchange(req)).await;
    let service = Some(sent.elapsed());
    match result {
        Ok(Ok((status, reusable))) => {
            let failure = (!(200..400).contains(&status))
                .then(|| Failure::new(ErrorKind::HttpStatus, format!("HTTP status {status}")));
            let o = Outcome {
                status: Some(status),
                grpc: None,
                failure,
                service,
            };
            (o, reusable.then_some(Sender::H1(conn)))
        }
        Ok(Err(f)) => (Outcome::failed(f, service), None),
        Err(_) => (
            Outcome::failed(
                Failure::new(
                    ErrorKind::Timeout,
                    format!("no complete response within {timeout:?}"),
                ),
                service,
            ),
            None,
        ),
    }
}

async fn exchange_h2(
    sender: h2::client::SendRequest<Bytes>,
    t: &RequestTemplate,
) -> (Outcome, Option<Sender>) {
    let sent = Instant::now();
    let give_back = sender.clone();
    let result = tokio::time::timeout(t.timeout, async {
        match h2_round_trip(sender, t).await {
            Ok(o) => o,
            Err(e) => Outcome::failed(Failure::h2(&e), None),
        }
    })
    .await;
    let elapsed = sent.elapsed();
    match result {
        Ok(mut o) => {
            o.service = Some(elapsed);
            (o, Some(Sender::H2(give_back)))
        }
        // Dropping the stream resets it (RST_STREAM CANCEL); the connection
        // stays usable.
        Err(_) => (
            Outcome::failed(
                Failure::new(
                    ErrorKind::Timeout,
                    format!("no complete response within {:?}", t.timeout),
                ),
                Some(elapsed),
            ),
            Some(Sender::H2(give_back)),
        ),
    }
}

async fn h2_round_trip(
    sender: h2::client::SendRequest<Bytes>,
    t: &RequestTemplate,
) -> Result<Outcome, h2::Error> {
    // Waits while the server's concurrent-stream limit is reached.
    let mut sender = sender.ready().await?;
    let end = t.body.is_empty();
    let (response, mut stream) = sender.send_request(t.request(), end)?;
    if !end {
        stream.send_data(t.body.clone(), true)?;
    }
    let resp = response.await?;
    let (parts, mut body) = resp.into_parts();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        // Hand the window back, or a large response stalls the connection.
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await?;
    Ok(judge(
        parts.status.as_u16(),
        &parts.headers,
        trailers.as_ref(),
        t.grpc,
    ))
}

/// The outcome of a complete HTTP/2 response.
fn judge(status: u16, headers: &HeaderMap, trailers: Option<&HeaderMap>, is_grpc: bool) -> Outcome {
    let mut o = Outcome {
        status: Some(status),
        grpc: None,
        failure: None,
        service: None,
    };
    if is_grpc {
        if status != 200 {
            o.failure = Some(Failure::new(
                ErrorKind::HttpStatus,
                format!("gRPC call answered with HTTP status {status}"),
            ));
            return o;
        }
        match grpc::status(headers, trailers) {
            Some((0, _)) => o.grpc = Some(0),
            Some((code, message)) => {
                o.grpc = Some(code);
                o.failure = Some(Failure::new(
                    ErrorKind::GrpcStatus,
                    format!("{}: {message}", grpc::status_name(code)),
                ));
            }
            None => {
                o.failure = Some(Failure::new(
                    ErrorKind::Protocol,
                    "gRPC response without a grpc-status",
                ));
            }
        }
    } else if !(200..400).contains(&status) {
        o.failure = Some(Failure::new(
            ErrorKind::HttpStatus,
            format!("HTTP status {status}"),
        ));
    }
    o
}
