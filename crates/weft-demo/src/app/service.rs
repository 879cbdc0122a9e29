//! Answering one request: faults, downstream calls, then the route (or,
//! under `/_weft/`, the app's own control paths).

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::Service;

use super::body::{AppBody, Chunks};
use super::downstream::Downstream;
use super::fault::{BizErrorHeader, Draw, FaultCell, FaultView, Faults, SplitMix64};
use super::fault_api;
use super::{APP_NAME_HEADER, AppConfig, AppStats, DOWNSTREAM_HEADER, REQUEST_VERSION_HEADER};

/// The remaining time a weft sidecar gives the app (milliseconds).
const DEADLINE_HEADER: &str = "x-weft-deadline-ms";

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Everything the connections of one app share, built once at start.
#[derive(Debug)]
pub(super) struct Shared {
    name: HeaderValue,
    // Preallocated so the hot path only clones (a reference count bump).
    body: Bytes,
    error_status: StatusCode,
    error_body: Bytes,
    faults: FaultCell,
    downstream: Option<Downstream>,
    /// Start and end of the one-time stall.
    stall: Option<(tokio::time::Instant, tokio::time::Instant)>,
    requests: AtomicU64,
    errors: AtomicU64,
    biz_errors: AtomicU64,
    slow: AtomicU64,
    /// `x-weft-deadline-ms` of the last request with one; `u64::MAX`: none yet.
    last_deadline_ms: AtomicU64,
}

impl Shared {
    pub(super) fn new(cfg: &AppConfig) -> anyhow::Result<Self> {
        let faults = Faults {
            latency: cfg.latency,
            jitter: cfg.jitter,
            error_rate: cfg.error_rate,
            slow_share: cfg.slow_share,
            slow_latency: cfg.slow_latency,
            biz_error_share: cfg.biz_error_share,
            biz_error_header: cfg.biz_error_header.clone(),
        };
        faults
            .check()
            .map_err(|e| anyhow::anyhow!("app {}: {e}", cfg.name))?;
        let error_status = StatusCode::from_u16(cfg.error_status)
            .with_context(|| format!("app {}: error_status {}", cfg.name, cfg.error_status))?;
        let name = HeaderValue::from_str(&cfg.name)
            .with_context(|| format!("app name `{}` is not a valid header value", cfg.name))?;
        Ok(Shared {
            name,
            body: Bytes::from(vec![b'x'; cfg.body_size]),
            error_status,
            error_body: Bytes::from(format!("injected error from {}", cfg.name)),
            faults: FaultCell::new(faults),
            downstream: Downstream::new(&cfg.calls)
                .with_context(|| format!("app {}: calls", cfg.name))?,
            stall: cfg.stall.map(|s| {
                let start = tokio::time::Instant::now() + s.after;
                (start, start + s.length)
            }),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            biz_errors: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            last_deadline_ms: AtomicU64::new(u64::MAX),
        })
    }

    pub(super) fn stats(&self) -> AppStats {
        AppStats {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            biz_errors: self.biz_errors.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
            last_deadline_ms: Some(self.last_deadline_ms.load(Ordering::Relaxed))
                .filter(|&v| v != u64::MAX),
        }
    }

    pub(super) fn name(&self) -> &str {
        // Built from the configured name, a `String`.
        self.name.to_str().unwrap_or("app")
    }

    pub(super) fn faults(&self) -> &FaultCell {
        &self.faults
    }

    pub(super) fn response(&self, status: StatusCode, body: AppBody) -> Response<AppBody> {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(APP_NAME_HEADER, self.name.clone());
        headers.insert(CONTENT_TYPE, TEXT_PLAIN);
        response
    }

    fn injected_error(&self) -> Response<AppBody> {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.response(
            self.error_status,
            AppBody::Full(Some(self.error_body.clone())),
        )
    }

    /// The answer once faults and downstream calls are behind us, marked as
    /// a business error when `biz_error` says so.
    fn answer(
        &self,
        route: Route,
        req: Request<Incoming>,
        biz_error: Option<BizErrorHeader>,
    ) -> Response<AppBody> {
        let mut response = self.route(route, req);
        if let Some(header) = biz_error {
            self.biz_errors.fetch_add(1, Ordering::Relaxed);
            response.headers_mut().insert(header.name, header.value);
        }
        response
    }

    fn route(&self, route: Route, req: Request<Incoming>) -> Response<AppBody> {
        match route {
            Route::Body | Route::Delay(_) => {
                self.response(StatusCode::OK, AppBody::Full(Some(self.body.clone())))
            }
            Route::Status(status) => self.response(status, AppBody::Full(Some(self.body.clone()))),
            Route::Echo => self.response(StatusCode::OK, AppBody::Echo(req.into_body())),
            Route::Stream(count) => {
                self.response(StatusCode::OK, AppBody::Chunks(Chunks::new(count)))
            }
            Route::Headers => {
                let version = format!("{:?}", req.version());
                let mut response = self.response(StatusCode::OK, AppBody::full(headers_json(&req)));
                let headers = response.headers_mut();
                headers.insert(CONTENT_TYPE, APPLICATION_JSON);
                if let Ok(version) = HeaderValue::try_from(version) {
                    headers.insert(REQUEST_VERSION_HEADER, version);
                }
                response
            }
            Route::BadRequest(why) => self.response(StatusCode::BAD_REQUEST, AppBody::full(why)),
        }
    }

    /// The slow path: anything that waits.
    /// Inside the stall window: wait for its end.
    async fn hold_during_stall(&self) {
        if let Some((from, until)) = self.stall {
            let now = tokio::time::Instant::now();
            if now >= from && now < until {
                tokio::time::sleep_until(until).await;
            }
        }
    }

    async fn answer_later(
        self: Arc<Self>,
        draw: Draw,
        biz_error: Option<BizErrorHeader>,
        route: Route,
        req: Request<Incoming>,
    ) -> Response<AppBody> {
        // The remaining time the caller's sidecar handed us: our own calls
        // carry what is left of it (the app's part of deadline propagation).
        let received = std::time::Instant::now();
        let deadline = req
            .headers()
            .get(DEADLINE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let deadline = deadline.map(|ms| (std::time::Duration::from_millis(ms), received));
        if !draw.delay.is_zero() {
            super::timer::sleep(draw.delay).await;
        }
        if draw.error {
            self.hold_during_stall().await;
            return self.injected_error();
        }
        let mut downstream_names = None;
        if let Some(downstream) = &self.downstream {
            // The trace context, forwarded on our calls (traceparent,
            // tracestate, b3, x-b3-*).
            let trace: Vec<(http::HeaderName, HeaderValue)> = req
                .headers()
                .iter()
                .filter(|(n, _)| {
                    let n = n.as_str();
                    n == "traceparent" || n == "tracestate" || n == "b3" || n.starts_with("x-b3-")
                })
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect();
            let outcome = downstream.call_all(deadline, &trace).await;
            if let Some(failure) = outcome.failure {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut response = self.response(StatusCode::BAD_GATEWAY, AppBody::full(failure));
                response
                    .headers_mut()
                    .insert(DOWNSTREAM_HEADER, outcome.names);
                return response;
            }
            downstream_names = Some(outcome.names);
        }
        if let Route::Delay(wait) = route {
            super::timer::sleep(wait).await;
        }
        self.hold_during_stall().await;
        let mut response = self.answer(route, req, biz_error);
        if let Some(names) = downstream_names {
            response.headers_mut().insert(DOWNSTREAM_HEADER, names);
        }
        response
    }
}

/// What a request asks for, decided from its method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The configured body.
    Body,
    /// `POST`/`PUT`: the request body back.
    Echo,
    /// `/status/NNN`.
    Status(StatusCode),
    /// `/delay/MS`.
    Delay(Duration),
    /// `/headers`: the request headers as JSON.
    Headers,
    /// `/stream/N`.
    Stream(usize),
    BadRequest(&'static str),
}

impl Route {
    fn of(req: &Request<Incoming>) -> Route {
        if req.method() == Method::POST || req.method() == Method::PUT {
            return Route::Echo;
        }
        let path = req.uri().path();
        if let Some(code) = path.strip_prefix("/status/") {
            match code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
                Some(status) => Route::Status(status),
                None => Route::BadRequest("/status/NNN wants a status code from 100 to 999"),
            }
        } else if let Some(ms) = path.strip_prefix("/delay/") {
            match ms.parse() {
                Ok(ms) => Route::Delay(Duration::from_millis(ms)),
                Err(_) => Route::BadRequest("/delay/MS wants a whole number of milliseconds"),
            }
        } else if let Some(count) = path.strip_prefix("/stream/") {
            match count.parse() {
                Ok(count) => Route::Stream(count),
                Err(_) => Route::BadRequest("/stream/N wants a whole number of chunks"),
            }
        } else if path == "/headers" {
            Route::Headers
        } else {
            Route::Body
        }
    }
}

/// `{"name": "value", ...}` with lowercase names; repeated headers are
/// joined with `, `. HTTP/2's `:authority` shows as `host` when the request
/// has no `host` header.
fn headers_json(req: &Request<Incoming>) -> Vec<u8> {
    let headers = req.headers();
    let mut object = serde_json::Map::new();
    for name in headers.keys() {
        let values: Vec<_> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        object.insert(name.as_str().to_owned(), values.join(", ").into());
    }
    if !headers.contains_key(HOST)
        && let Some(authority) = req.uri().authority()
    {
        object.insert(HOST.as_str().to_owned(), authority.as_str().into());
    }
    serde_json::to_vec(&object).unwrap_or_default()
}

/// The service of one connection: shared state plus the connection's own
/// PRNG and copy of the faults (cells, since hyper calls services through
/// `&self`).
pub(super) struct AppService {
    shared: Arc<Shared>,
    rng: Cell<SplitMix64>,
    faults: RefCell<FaultView>,
}

impl AppService {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let faults = RefCell::new(shared.faults.view());
        AppService {
            shared,
            rng: Cell::new(SplitMix64::new(SplitMix64::connection_seed())),
            faults,
        }
    }

    /// This request's draws, from the faults current when it arrived, and
    /// the business-error header when it is to carry one.
    fn draw(&self) -> (Draw, Option<BizErrorHeader>) {
        let mut view = self.faults.borrow_mut();
        let faults = self.shared.faults.refresh(&mut view);
        let mut rng = self.rng.get();
        let draw = faults.draw(&mut rng);
        self.rng.set(rng);
        let biz_error = draw.biz_error.then(|| faults.biz_error_header.clone());
        (draw, biz_error)
    }
}

impl Service<Request<Incoming>> for AppService {
    type Response = Response<AppBody>;
    type Error = Infallible;
    type Future = AppFuture;

    fn call(&self, req: Request<Incoming>) -> AppFuture {
        let shared = &self.shared;
        if req.uri().path().starts_with(fault_api::PREFIX) {
            return AppFuture::Later(Box::pin(fault_api::answer(Arc::clone(shared), req)));
        }
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(ms) = req
            .headers()
            .get(DEADLINE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            shared.last_deadline_ms.store(ms, Ordering::Relaxed);
        }
        let (draw, biz_error) = self.draw();
        if draw.slow {
            shared.slow.fetch_add(1, Ordering::Relaxed);
        }
        let route = Route::of(&req);

        // The benchmark's hot path: answered in place, no task, no box.
        if draw.delay.is_zero()
            && shared.downstream.is_none()
            && shared.stall.is_none()
            && !matches!(route, Route::Delay(_))
        {
            let response = if draw.error {
                shared.injected_error()
            } else {
                shared.answer(route, req, biz_error)
            };
            return AppFuture::Ready(Some(response));
        }
        let later = Arc::clone(shared).answer_later(draw, biz_error, route, req);
        AppFuture::Later(Box::pin(later))
    }
}

/// The response future: ready at once on the hot path, boxed otherwise.
pub(super) enum AppFuture {
    Ready(Option<Response<AppBody>>),
    Later(Pin<Box<dyn Future<Output = Response<AppBody>> + Send>>),
}

impl Future for AppFuture {
    type Output = Result<Response<AppBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            AppFuture::Ready(response) => Poll::Ready(Ok(response
                .take()
                .expect("AppFuture polled after completion"))),
            AppFuture::Later(later) => later.as_mut().poll(cx).map(Ok),
        }
    }
}
