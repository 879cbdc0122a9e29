//! Access logs (issue 7): one JSON object per line for each request the
//! proxy handled, written off the request path.
//!
//! The request path only captures what it already holds (method, URI and a
//! few header values are reference-counted, no copies) and, when the
//! response ends, hands an [`Entry`] to a bounded queue without waiting.
//! A thread of its own drains the queue every 50 ms (it never sleeps on
//! the queue, so a request never has to wake it), formats the lines and
//! writes them in batches (one `write` per batch). When the queue is full (the disk or the terminal
//! is slower than the traffic) the line is dropped and counted in
//! `weft_access_log_dropped_total{reason="queue_full"}`; a failed write
//! drops its batch as `write_failed` and is logged at most every 10 s.
//!
//! Which requests: a share (`--access-log-sampling`) of the successful
//! ones and every failed one (5xx, a gRPC status other than OK, the
//! proxy's own answers), decided when the outcome is known. `SIGUSR1`
//! reopens the file (after logrotate moved it), as Envoy does.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use weft_policy::rng::{Random as _, ThreadRng};

use crate::body::BodyEnd;
use crate::metrics::RequestLabels;

/// Lines waiting for the writer; beyond this they are dropped (a tick's
/// worth of lines at 300,000 requests/s).
const QUEUE: usize = 16_384;
/// A batch is written once it holds this many bytes (or the queue is empty).
const BATCH_BYTES: usize = 64 * 1024;
/// How often the writer drains the queue.
const TICK: Duration = Duration::from_millis(50);

/// A field of an access log line, by its JSON name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    StartTime,
    Direction,
    Source,
    Service,
    Route,
    Method,
    Authority,
    Path,
    Protocol,
    ResponseCode,
    GrpcStatus,
    Error,
    ResponseEnd,
    UpstreamHost,
    DownstreamRemoteAddress,
    BytesSent,
    HeadersMs,
    DurationMs,
    TraceId,
    RequestId,
    UserAgent,
}

impl Field {
    /// Every field, in the order a line shows them.
    pub const ALL: [Field; 21] = [
        Field::StartTime,
        Field::Direction,
        Field::Source,
        Field::Service,
        Field::Route,
        Field::Method,
        Field::Authority,
        Field::Path,
        Field::Protocol,
        Field::ResponseCode,
        Field::GrpcStatus,
        Field::Error,
        Field::ResponseEnd,
        Field::UpstreamHost,
        Field::DownstreamRemoteAddress,
        Field::BytesSent,
        Field::HeadersMs,
        Field::DurationMs,
        Field::TraceId,
        Field::RequestId,
        Field::UserAgent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::StartTime => "start_time",
            Field::Direction => "direction",
            Field::Source => "source",
            Field::Service => "service",
            Field::Route => "route",
            Field::Method => "method",
            Field::Authority => "authority",
            Field::Path => "path",
            Field::Protocol => "protocol",
            Field::ResponseCode => "response_code",
            Field::GrpcStatus => "grpc_status",
            Field::Error => "error",
            Field::ResponseEnd => "response_end",
            Field::UpstreamHost => "upstream_host",
            Field::DownstreamRemoteAddress => "downstream_remote_address",
            Field::BytesSent => "bytes_sent",
            Field::HeadersMs => "headers_ms",
            Field::DurationMs => "duration_ms",
            Field::TraceId => "trace_id",
            Field::RequestId => "request_id",
            Field::UserAgent => "user_agent",
        }
    }

    /// A comma-separated list of field names (`--access-log-fields`), in
    /// the order given; an unknown or repeated name is an error naming it.
    pub fn parse_list(list: &str) -> Result<Vec<Field>, String> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim) {
            if name.is_empty() {
                return Err(format!("an empty field name in {list:?}"));
            }
            let f = Field::ALL
                .iter()
                .copied()
                .find(|f| f.name() == name)
                .ok_or_else(|| {
                    let known: Vec<_> = Field::ALL.iter().map(|f| f.name()).collect();
                    format!("unknown field {name:?} (known: {})", known.join(", "))
                })?;
            if out.contains(&f) {
                return Err(format!("field {name:?} is listed twice"));
            }
            out.push(f);
        }
        Ok(out)
    }
}

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

impl Target {
    /// `-` is standard output, anything else a file path (appended to).
    pub fn parse(s: &str) -> Target {
        if s == "-" {
            Target::Stdout
        } else {
            Target::File(s.into())
        }
    }
}

/// `--access-log`, `--access-log-fields`, `--access-log-sampling`.
#[derive(Debug, Clone)]
pub struct AccessLogOptions {
    pub target: Target,
    pub fields: Vec<Field>,
    /// The share of successful requests logged (`0.0..=1.0`); failed ones
    /// always are.
    pub sampling: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("--access-log {path}: cannot open for appending: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("--access-log-sampling: {0} is not a ratio between 0.0 and 1.0")]
    Sampling(f64),
    #[error("--access-log-fields: no fields")]
    NoFields,
    #[error("cannot start the access log writer thread: {0}")]
    Thread(std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// The access log as the request path sees it: cheap to ask, never blocks.
pub struct AccessLog {
    tx: SyncSender<Entry>,
    sampling: f64,
    queued: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    dropped: Family<DropLabels, Counter>,
    reopen: Arc<AtomicBool>,
    is_file: bool,
}

impl AccessLog {
    /// Opens the target (an error names it) and starts the writer thread.
    pub fn start(
        opts: &AccessLogOptions,
        registry: &mut Registry,
    ) -> Result<AccessLog, AccessLogError> {
        if !(0.0..=1.0).contains(&opts.sampling) || opts.sampling.is_nan() {
            return Err(AccessLogError::Sampling(opts.sampling));
        }
        if opts.fields.is_empty() {
            return Err(AccessLogError::NoFields);
        }
        let out = Output::open(&opts.target)?;
        let written = Counter::default();
        registry.register(
            "access_log_lines",
            "Access log lines written",
            written.clone(),
        );
        let dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "access_log_dropped",
            "Access log lines dropped: queue_full (the writer fell behind), write_failed",
            dropped.clone(),
        );
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            rx,
            out,
            target: opts.target.clone(),
            fields: opts.fields.clone(),
            reopen: reopen.clone(),
            written,
            dropped: dropped.clone(),
            done: done.clone(),
            last_warning: None,
        };
        std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || {
                crate::background_priority("weft-access-log");
                writer.run()
            })
            .map_err(AccessLogError::Thread)?;
        Ok(AccessLog {
            tx,
            sampling: opts.sampling,
            queued: Arc::new(AtomicU64::new(0)),
            done,
            dropped,
            reopen,
            is_file: matches!(opts.target, Target::File(_)),
        })
    }

    /// What a line needs from the request, taken before the request is
    /// forwarded. Whether a success is logged is drawn here.
    pub fn begin(&self, parts: (&Method, &Uri, &HeaderMap, Version), peer: SocketAddr) -> Begun {
        let (method, uri, headers, version) = parts;
        let header = |name: &str| headers.get(name).cloned();
        Begun {
            start: SystemTime::now(),
            sampled: self.sampling >= 1.0
                || (self.sampling > 0.0 && ThreadRng.next_f64() < self.sampling),
            method: method.clone(),
            uri: uri.clone(),
            authority: uri
                .authority()
                .map(|a| HeaderValue::from_str(a.as_str()).ok())
                .unwrap_or_else(|| header("host")),
            version,
            user_agent: header("user-agent"),
            request_id: header("x-request-id"),
            peer,
            trace_id: None,
        }
    }

    /// Queues a finished request's line (failures always, successes when
    /// drawn); never waits.
    pub fn log(&self, entry: Entry) {
        if !entry.begun.sampled && !entry.failed() {
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.done.fetch_add(1, Ordering::Relaxed);
                self.dropped
                    .get_or_create(&DropLabels {
                        reason: "queue_full",
                    })
                    .inc();
            }
        }
    }

    /// Asks the writer to reopen the file before its next batch.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    pub fn is_file(&self) -> bool {
        self.is_file
    }

    /// Waits (bounded) until every queued line is written or dropped: at
    /// shutdown, after the last request ended.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.done.load(Ordering::Relaxed) < self.queued.load(Ordering::Relaxed) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

/// The request's part of a line.
#[derive(Debug)]
pub struct Begun {
    start: SystemTime,
    sampled: bool,
    method: Method,
    uri: Uri,
    authority: Option<HeaderValue>,
    version: Version,
    user_agent: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    peer: SocketAddr,
    trace_id: Option<[u8; 16]>,
}

impl Begun {
    pub fn trace_id(&mut self, id: [u8; 16]) {
        self.trace_id = Some(id);
    }
}

impl BodyEnd {
    fn name(self) -> &'static str {
        match self {
            BodyEnd::Complete => "complete",
            BodyEnd::UpstreamReset => "upstream_reset",
            BodyEnd::DownstreamCancelled => "downstream_cancelled",
        }
    }
}

/// One finished request.
#[derive(Debug)]
pub struct Entry {
    pub begun: Begun,
    /// What the request metrics counted it under: direction, source,
    /// service, route, code, gRPC status, the proxy's own error.
    pub labels: RequestLabels,
    /// How the response body ended (`response_end`).
    pub end: BodyEnd,
    pub upstream: Option<Arc<str>>,
    pub bytes_sent: u64,
    pub headers_after: Duration,
    pub duration: Duration,
}

impl Entry {
    /// Logged whatever the sampling.
    fn failed(&self) -> bool {
        let l = &self.labels;
        l.code >= 500
            || !l.error.is_empty()
            || !matches!(l.grpc_status, "" | "0")
            || self.end == BodyEnd::UpstreamReset
    }

    /// One JSON object (no newline) with `fields`, in their order.
    pub fn write_json(&self, fields: &[Field], out: &mut String) {
        out.push('{');
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('"');
            out.push_str(f.name());
            out.push_str("\":");
            self.write_value(*f, out);
        }
        out.push('}');
    }

    fn write_value(&self, f: Field, out: &mut String) {
        let (b, l) = (&self.begun, &self.labels);
        match f {
            Field::StartTime => string(out, &weft_admin::rfc3339(b.start)),
            Field::Direction => string(out, l.direction.as_str()),
            Field::Source => string(out, &l.source),
            Field::Service => string(out, &l.service),
            Field::Route => string(out, &l.route),
            Field::Method => string(out, b.method.as_str()),
            Field::Authority => header(out, b.authority.as_ref()),
            Field::Path => string(out, b.uri.path_and_query().map_or("/", |p| p.as_str())),
            Field::Protocol => string(
                out,
                match b.version {
                    Version::HTTP_2 => "HTTP/2",
                    Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                },
            ),
            Field::ResponseCode => {
                let _ = write!(out, "{}", l.code);
            }
            Field::GrpcStatus => match l.grpc_status {
                "" => out.push_str("null"),
                s => out.push_str(s),
            },
            Field::Error => match l.error {
                "" => out.push_str("null"),
                e => string(out, e),
            },
            Field::ResponseEnd => string(out, self.end.name()),
            Field::UpstreamHost => match &self.upstream {
                Some(u) => string(out, u),
                None => out.push_str("null"),
            },
            Field::DownstreamRemoteAddress => string(out, &b.peer.to_string()),
            Field::BytesSent => {
                let _ = write!(out, "{}", self.bytes_sent);
            }
            Field::HeadersMs => millis(out, self.headers_after),
            Field::DurationMs => millis(out, self.duration),
            Field::TraceId => match b.trace_id {
                Some(id) => {
                    out.push('"');
                    for byte in id {
                        let _ = write!(out, "{byte:02x}");
                    }
                    out.push('"');
                }
                None => out.push_str("null"),
            },
            Field::RequestId => header(out, b.request_id.as_ref()),
            Field::UserAgent => header(out, b.user_agent.as_ref()),
        }
    }
}

fn millis(out: &mut String, d: Duration) {
    let _ = write!(out, "{:.3}", d.as_secs_f64() * 1000.0);
}

fn header(out: &mut String, v: Option<&HeaderValue>) {
    match v {
        Some(v) => string(out, &String::from_utf8_lossy(v.as_bytes())),
        None => out.push_str("null"),
    }
}

/// A JSON string literal.
fn string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

enum Output {
    Stdout,
    File(File),
}

impl Output {
    fn open(target: &Target) -> Result<Output, AccessLogError> {
        match target {
            Target::Stdout => Ok(Output::Stdout),
            Target::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Output::File)
                .map_err(|source| AccessLogError::Open {
                    path: path.display().to_string(),
                    source,
                }),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Output::File(f) => f.write_all(bytes),
        }
    }
}

struct Writer {
    rx: Receiver<Entry>,
    out: Output,
    target: Target,
    fields: Vec<Field>,
    reopen: Arc<AtomicBool>,
    written: Counter,
    dropped: Family<DropLabels, Counter>,
    done: Arc<AtomicU64>,
    last_warning: Option<Instant>,
}

impl Writer {
    /// Drains the queue every [`TICK`] rather than waiting on it: a
    /// writer blocked in `recv` must be woken (a futex call) by every send,
    /// which cost the request path about 10 us per line; polling, senders
    /// only push. Lines reach the file up to a tick late.
    fn run(mut self) {
        let mut batch = String::with_capacity(BATCH_BYTES + 4096);
        loop {
            self.maybe_reopen();
            let mut lines = 0u64;
            let ended = loop {
                match self.rx.try_recv() {
                    Ok(e) => {
                        e.write_json(&self.fields, &mut batch);
                        batch.push('\n');
                        lines += 1;
                        if batch.len() >= BATCH_BYTES {
                            self.write(&mut batch, std::mem::take(&mut lines));
                        }
                    }
                    Err(TryRecvError::Empty) => break false,
                    // Every sender is gone and the queue is empty.
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            self.write(&mut batch, lines);
            if ended {
                return;
            }
            std::thread::sleep(TICK);
        }
    }

    /// Writes `batch` (`lines` lines) in one call and empties it.
    fn write(&mut self, batch: &mut String, lines: u64) {
        if lines == 0 {
            return;
        }
        // A reopen asked before these lines were queued applies to them.
        self.maybe_reopen();
        match self.out.write_all(batch.as_bytes()) {
            Ok(()) => {
                self.written.inc_by(lines);
            }
            Err(e) => {
                self.dropped
                    .get_or_create(&DropLabels {
                        reason: "write_failed",
                    })
                    .inc_by(lines);
                self.warn(format_args!("access log write failed: {e}"));
            }
        }
        self.done.fetch_add(lines, Ordering::Relaxed);
        batch.clear();
    }

    fn maybe_reopen(&mut self) {
        if !self.reopen.swap(false, Ordering::Relaxed) {
            return;
        }
        match Output::open(&self.target) {
            Ok(out) => {
                self.out = out;
                tracing::info!(target = ?self.target, "access log reopened");
            }
            Err(e) => self.warn(format_args!(
                "access log not reopened (kept the old file): {e}"
            )),
        }
    }

    /// At most one warning every 10 s.
    fn warn(&mut self, msg: std::fmt::Arguments<'_>) {
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
        {
            self.last_warning = Some(Instant::now());
            tracing::warn!("{msg}");
        }
    }
}

#[cfg(test)]
mod tests;
