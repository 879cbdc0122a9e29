//! Tiny upstreams for proxy tests: raw TCP echo and HTTP/1.1 upgrade echo.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The `Upgrade` protocol [`upgrade_echo_server`] switches to.
pub const UPGRADE_PROTOCOL: &str = "weft-test";

/// A TCP server on `127.0.0.1:<free port>` that echoes every byte back, on
/// any number of connections, until the returned task is aborted.
pub async fn tcp_echo_server() -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(echo(stream));
        }
    });
    Ok((addr, task))
}

async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.split();
    if tokio::io::copy(&mut read, &mut write).await.is_ok() {
        // Pass the client's half-close on, so it sees the end of the echo.
        let _ = write.shutdown().await;
    }
}

/// An HTTP/1.1 server on `127.0.0.1:<free port>`. A request with
/// `Connection: upgrade` and `Upgrade: weft-test` gets `101 Switching
/// Protocols` (same `Upgrade`), after which the connection echoes raw bytes;
/// any other request gets `200` with body `plain`.
pub async fn upgrade_echo_server() -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer_upgrade))
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok((addr, task))
}

async fn answer_upgrade(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if !wants_test_upgrade(&req) {
        return Ok(Response::new(Full::new(Bytes::from_static(b"plain"))));
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = TokioIo::new(upgraded);
            let (mut read, mut write) = tokio::io::split(&mut io);
            if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                let _ = write.shutdown().await;
            }
        }
    });
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    Ok(response)
}

fn wants_test_upgrade(req: &Request<Incoming>) -> bool {
    let has_token = |name, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has_token(CONNECTION, "upgrade") && has_token(UPGRADE, UPGRADE_PROTOCOL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn tcp_echo_round_trips_on_concurrent_connections() {
        let (addr, server) = tcp_echo_server().await.unwrap();
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        a.write_all(b"from a").await.unwrap();
        b.write_all(b"from b").await.unwrap();
        let mut buf = [0u8; 6];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"from b");
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"from a");

        // Half-close: the echo ends after the last byte.
        a.write_all(b"bye").await.unwrap();
        a.shutdown().await.unwrap();
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
        server.abort();
    }

    #[tokio::test]
    async fn upgrade_answers_101_then_echoes_raw_bytes() {
        let (addr, server) = upgrade_echo_server().await.unwrap();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                b"GET /tunnel HTTP/1.1\r\nHost: test\r\n\
                  Connection: Upgrade\r\nUpgrade: weft-test\r\n\r\n",
            )
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("upgrade: weft-test"),
            "{head}"
        );

        stream.write_all(b"raw bytes \x00\xff after").await.unwrap();
        let mut buf = [0u8; 18];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"raw bytes \x00\xff after");
        server.abort();
    }

    #[tokio::test]
    async fn ordinary_requests_get_plain() {
        let (addr, server) = upgrade_echo_server().await.unwrap();
        let (status, _, body) = crate::http_get(addr, "test", "/").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "plain");
        server.abort();
    }

    /// Reads a response head byte by byte, so no upgraded byte is consumed.
    async fn read_head(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.unwrap());
        }
        String::from_utf8(head).unwrap()
    }
}
