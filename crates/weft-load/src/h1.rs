//! A minimal HTTP/1.1 client for the load generator's hot path: the request
//! is serialized once, each exchange is one `write` and as few `read`s as
//! the response needs, parsed in place with `httparse` (the parser hyper
//! uses). No connection task, no channel, no allocation per request: with
//! hyper's client connection the tool spent a third more CPU per request
//! than wrk, and an open-loop tool that saturates before the server measures
//! itself.
//!
//! Handles what a server may answer: `content-length`, `chunked` (with
//! trailers), bodies delimited by the connection's close, `1xx` interim
//! responses, bodiless statuses and `HEAD`, and `connection: close`.

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::outcome::{ErrorKind, Failure};

/// A request serialized once, sent on every exchange.
#[derive(Debug, Clone)]
pub(crate) struct H1Request {
    pub(crate) bytes: Bytes,
    pub(crate) head: bool,
}

impl H1Request {
    pub(crate) fn new(
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Self {
        let mut b = Vec::with_capacity(128 + body.len());
        b.extend_from_slice(method.as_str().as_bytes());
        b.push(b' ');
        b.extend_from_slice(path.as_bytes());
        b.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            b.extend_from_slice(name.as_str().as_bytes());
            b.extend_from_slice(b": ");
            b.extend_from_slice(value.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        let expects_body = !matches!(
            *method,
            http::Method::GET | http::Method::HEAD | http::Method::DELETE | http::Method::OPTIONS
        );
        if !body.is_empty() || expects_body {
            b.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        b.extend_from_slice(b"\r\n");
        b.extend_from_slice(body);
        H1Request {
            bytes: b.into(),
            head: *method == http::Method::HEAD,
        }
    }
}

/// One keep-alive connection.
#[derive(Debug)]
pub(crate) struct H1Conn {
    stream: TcpStream,
    buf: BytesMut,
}

/// How the response body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

const READ_CHUNK: usize = 16 * 1024;

impl H1Conn {
    pub(crate) fn new(stream: TcpStream) -> Self {
        H1Conn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    /// Sends the request and reads the whole response. Returns the status
    /// and whether the connection can carry another request.
    pub(crate) async fn exchange(&mut self, req: &H1Request) -> Result<(u16, bool), Failure> {
        self.stream
            .write_all(&req.bytes)
            .await
            .map_err(|e| io_failure(&e, "sending the request"))?;
        self.buf.clear();
        let mut got_any = false;
        let (status, framing, close) = loop {
            let parsed = {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        Some((n, status, framing_of(&resp, status, req.head)?))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(e) => {
                        return Err(Failure::new(
                            ErrorKind::Protocol,
                            format!("invalid HTTP/1.1 response: {e}"),
                        ));
                    }
                }
            };
            match parsed {
                // Interim responses (100 Continue, 103 Early Hints): the
                // real one follows.
                Some((n, status, _)) if (100..200).contains(&status) && status != 101 => {
                    self.buf.advance(n);
                }
                Some((n, status, (framing, close))) => {
                    self.buf.advance(n);
                    break (status, framing, close);
                }
                None => {
                    if !self.fill().await? {
                        let what = if got_any || !self.buf.is_empty() {
                            "the server closed the connection in the middle of the response head"
                        } else {
                            "the server closed the connection before answering"
                        };
                        return Err(Failure::new(ErrorKind::ClosedMidResponse, what));
                    }
                    got_any = true;
                }
            }
        };
        let reusable = match framing {
            Framing::None => true,
            Framing::Length(n) => {
                self.skip(n).await?;
                true
            }
            Framing::Chunked => {
                self.skip_chunked().await?;
                true
            }
            Framing::UntilClose => {
                while self.fill().await? {
                    self.buf.clear();
                }
                false
            }
        };
        Ok((status, reusable && !close))
    }

    /// Reads more; `false` at end of stream.
    async fn fill(&mut self) -> Result<bool, Failure> {
        self.buf.reserve(READ_CHUNK);
        let n = self
            .stream
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| io_failure(&e, "reading the response"))?;
        Ok(n > 0)
    }

    async fn skip(&mut self, mut remaining: u64) -> Result<(), Failure> {
        loop {
            let have = (self.buf.len() as u64).min(remaining);
            self.buf.advance(have as usize);
            remaining -= have;
            if remaining == 0 {
                return Ok(());
            }
            if !self.fill().await? {
                return Err(closed_mid_body());
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn line(&mut self) -> Result<Bytes, Failure> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(i).freeze();
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(Failure::new(
                    ErrorKind::Protocol,
                    "chunked body: a line over 64 KiB",
                ));
            }
            if !self.fill().await? {
                return Err(closed_mid_body());
            }
        }
    }

    async fn skip_chunked(&mut self) -> Result<(), Failure> {
        loop {
            let line = self.line().await?;
            let size_text = line.split(|b| *b == b';').next().unwrap_or(&[]);
            let size = std::str::from_utf8(size_text)
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .ok_or_else(|| {
                    Failure::new(
                        ErrorKind::Protocol,
                        format!(
                            "chunked body: invalid chunk size {:?}",
                            String::from_utf8_lossy(&line)
                        ),
                    )
                })?;
            if size == 0 {
                // Trailers, up to an empty line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.skip(size).await?;
            if !self.line().await?.is_empty() {
                return Err(Failure::new(
                    ErrorKind::Protocol,
                    "chunked body: no CRLF after a chunk",
                ));
            }
        }
    }
}

fn framing_of(
    resp: &httparse::Response<'_, '_>,
    status: u16,
    head: bool,
) -> Result<(Framing, bool), Failure> {
    let mut length = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Failure::new(ErrorKind::Protocol, "invalid content-length"))?;
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = h.value;
            if v.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                close = true;
            } else if v
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"keep-alive"))
            {
                close = false;
            }
        }
    }
    let framing = if head || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        if n == 0 {
            Framing::None
        } else {
            Framing::Length(n)
        }
    } else {
        Framing::UntilClose
    };
    Ok((framing, close))
}

fn closed_mid_body() -> Failure {
    Failure::new(
        ErrorKind::ClosedMidResponse,
        "the server closed the connection before the end of the response body",
    )
}

fn io_failure(e: &std::io::Error, doing: &str) -> Failure {
    let kind = match e.kind() {
        std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted
        | std::io::ErrorKind::BrokenPipe => ErrorKind::Reset,
        std::io::ErrorKind::UnexpectedEof => ErrorKind::ClosedMidResponse,
        _ => ErrorKind::Other,
    };
    Failure::new(kind, format!("{doing}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request with the next canned response.
    async fn canned(responses: Vec<&'static [u8]>) -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let nothing = responses.is_empty();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            for r in responses {
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                // Dribble the response out in small pieces.
                for piece in r.chunks(7) {
                    s.write_all(piece).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::task::yield_now().await;
                }
            }
            if nothing {
                // Take the request before closing, so the close is a FIN
                // rather than a reset for unread data.
                let _ = s.read(&mut buf).await;
            }
        });
        addr
    }

    fn get() -> H1Request {
        H1Request::new(&http::Method::GET, "/", &http::HeaderMap::new(), b"")
    }

    #[tokio::test]
    async fn parses_lengths_chunks_interim_responses_and_keeps_alive() {
        let addr = canned(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        ])
        .await;
        let mut c = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        assert_eq!(c.exchange(&get()).await.unwrap(), (200, true));
        assert_eq!(c.exchange(&get()).await.unwrap(), (201, true));
        assert_eq!(c.exchange(&get()).await.unwrap(), (204, true));
        assert_eq!(c.exchange(&get()).await.unwrap(), (503, false));
    }

    #[tokio::test]
    async fn a_body_until_close_ends_the_connection() {
        let addr = canned(vec![b"HTTP/1.0 200 OK\r\n\r\nall of it"]).await;
        let mut c = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        assert_eq!(c.exchange(&get()).await.unwrap(), (200, false));
    }

    #[tokio::test]
    async fn truncated_and_invalid_responses_are_classified() {
        let addr = canned(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nshort"]).await;
        let mut c = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        let e = c.exchange(&get()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::ClosedMidResponse, "{e:?}");

        let addr = canned(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ])
        .await;
        let mut c = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        let e = c.exchange(&get()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol, "{e:?}");

        let addr = canned(vec![b"SSH-2.0-OpenSSH\r\n\r\n"]).await;
        let mut c = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        let e = c.exchange(&get()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol, "{e:?}");

        let addr = canned(vec![]).await;
        let mut c = H1Conn::new(TcpStream::connect(addr).await.unwrap());
        let e = c.exchange(&get()).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::ClosedMidResponse, "{e:?}");
        assert!(e.message.contains("before answering"), "{e:?}");
    }

    #[test]
    fn requests_are_serialized_once_with_host_headers_and_body_length() {
        let mut h = http::HeaderMap::new();
        h.insert("host", "svc:80".parse().unwrap());
        let r = H1Request::new(&http::Method::POST, "/x?y=1", &h, b"abc");
        assert_eq!(
            &r.bytes[..],
            b"POST /x?y=1 HTTP/1.1\r\nhost: svc:80\r\ncontent-length: 3\r\n\r\nabc"
        );
        let r = H1Request::new(&http::Method::GET, "/", &http::HeaderMap::new(), b"");
        assert_eq!(&r.bytes[..], b"GET / HTTP/1.1\r\n\r\n");
    }
}
