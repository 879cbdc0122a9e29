//! The admin port every long-running weft command serves (proxy, control
//! plane, sample app, demo): `/ready`, `/live`, `/metrics` (Prometheus /
//! OpenMetrics text), and whatever JSON views the command adds
//! (`/config_dump`, `/status`, ...). HTTP/1.1, on its own listener, never on
//! the data path.
//!
//! Must not depend on any other weft crate: commands implement
//! [`AdminEndpoints`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A response from one of a command's own admin paths.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl AdminResponse {
    pub fn json(body: String) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/json",
            body,
        }
    }
    pub fn bad_request(why: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            content_type: "text/plain",
            body: why.into(),
        }
    }
    pub fn not_found(why: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            content_type: "text/plain",
            body: why.into() + "\n",
        }
    }
}

/// What a command shows on its admin port.
pub trait AdminEndpoints: Send + Sync + 'static {
    /// `/ready`: 200 when true, 503 when false (starting or draining).
    fn ready(&self) -> bool;
    /// `/metrics`: Prometheus / OpenMetrics text.
    fn metrics(&self) -> String;
    /// Any other path (`/config_dump`, `/status`, ...), with the raw query
    /// string; `None` means 404.
    fn route(&self, path: &str, query: Option<&str>) -> Option<AdminResponse> {
        let _ = (path, query);
        None
    }
    /// The paths `route` knows, listed in the 404 page.
    fn paths(&self) -> &'static [&'static str] {
        &[]
    }
}

/// An admin server running on its own task; stops when dropped.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    _stop: watch::Sender<bool>,
}

impl AdminServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Binds `addr` and serves `endpoints` there until the returned handle drops.
pub async fn start<A: AdminEndpoints>(
    addr: SocketAddr,
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

/// Serves the admin endpoints on `listener` until `stop` changes.
pub async fn serve<A: AdminEndpoints>(
    listener: TcpListener,
    endpoints: Arc<A>,
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
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(endpoints.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

async fn handle<A: AdminEndpoints>(
    endpoints: Arc<A>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n",
        ));
    }
    Ok(match req.uri().path() {
        "/live" => respond(StatusCode::OK, "text/plain", "live\n"),
        "/ready" if endpoints.ready() => respond(StatusCode::OK, "text/plain", "ready\n"),
        "/ready" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        "/metrics" => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            endpoints.metrics(),
        ),
        path => match endpoints.route(path, req.uri().query()) {
            Some(r) => respond(r.status, r.content_type, r.body),
            None => {
                let mut known = vec!["/ready", "/live", "/metrics"];
                known.extend_from_slice(endpoints.paths());
                respond(
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    format!("not found; try {}\n", known.join(", ")),
                )
            }
        },
    })
}

/// Waits up to `grace` for each of a command's tasks to finish after its
/// stop signal, then aborts what is left (long-lived streams would
/// otherwise hold the shutdown open).
pub async fn stop_tasks(tasks: Vec<tokio::task::JoinHandle<()>>, grace: std::time::Duration) {
    for mut t in tasks {
        if tokio::time::timeout(grace, &mut t).await.is_err() {
            t.abort();
        }
    }
}

/// `t` as RFC 3339 UTC with milliseconds: `2026-11-27T03:04:05.678Z`
/// (status pages, access logs).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let since = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 -> (year, month, day) (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use weft_test_support::HttpClient;

    struct Fake(AtomicBool);
    impl AdminEndpoints for Fake {
        fn ready(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
        fn metrics(&self) -> String {
            "# TYPE x counter\nx_total 1\n# EOF\n".into()
        }
        fn route(&self, path: &str, query: Option<&str>) -> Option<AdminResponse> {
            (path == "/status")
                .then(|| AdminResponse::json(format!("{{\"query\":\"{}\"}}", query.unwrap_or(""))))
        }
        fn paths(&self) -> &'static [&'static str] {
            &["/status"]
        }
    }

    #[tokio::test]
    async fn serves_ready_metrics_and_command_paths() {
        let fake = Arc::new(Fake(AtomicBool::new(false)));
        let server = start("127.0.0.1:0".parse().unwrap(), fake.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        let c = HttpClient::http1();
        assert_eq!(c.get(addr, "a", "/ready").await.unwrap().status, 503);
        fake.0.store(true, Ordering::Relaxed);
        assert_eq!(c.get(addr, "a", "/ready").await.unwrap().status, 200);
        let m = c.get(addr, "a", "/metrics").await.unwrap();
        assert!(m.text().contains("x_total 1"));
        assert!(
            m.header("content-type")
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        assert_eq!(
            c.get(addr, "a", "/status?node=n1").await.unwrap().text(),
            "{\"query\":\"node=n1\"}"
        );
        let missing = c.get(addr, "a", "/nope").await.unwrap();
        assert_eq!(missing.status, 404);
        assert!(
            missing.text().contains("/status"),
            "the 404 lists the paths"
        );
        drop(server);
    }

    #[test]
    fn rfc3339_formats_utc_with_millis() {
        use std::time::{Duration, UNIX_EPOCH};
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2024-02-29 (a leap day) 12:34:56.789
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        assert_eq!(civil(20_419), (2025, 11, 27));
        assert_eq!(civil(-1), (1969, 12, 31));
    }
}
