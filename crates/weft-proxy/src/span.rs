//! The spans this proxy records (issue 7): one per proxied request and,
//! on routes with retries or hedging, one per attempt under it. Recorded
//! only for sampled traces and only with an exporter (`--otlp-endpoint`);
//! a finished span is handed to [`crate::otlp`] without waiting.
//!
//! - Request span: `outbound <service>` (kind CLIENT, the caller's span as
//!   parent) or `inbound <local service>` (kind SERVER). It ends when the
//!   response head is returned, or, for a gRPC response whose status comes
//!   in the trailers, when the trailers have passed (`rpc.grpc.status_code`
//!   from them; a stream that ends without one is INTERNAL, one the caller
//!   dropped CANCELLED).
//! - Attempt span: `attempt <service>` (kind CLIENT), a child of the request
//!   span; its id is the parent the upstream sees in `traceparent`. An
//!   attempt still in flight when the request ends (a losing original or
//!   backup, or the deadline) is recorded when dropped, as cancelled.
//!
//! Attributes follow OpenTelemetry's HTTP conventions where they fit
//! (`http.request.method`, `url.path`, `server.address`,
//! `http.response.status_code`, `rpc.grpc.status_code`) plus `weft.route`,
//! `weft.error` (the proxy answered itself: its error code),
//! `weft.deadline.remaining_ms`, `weft.attempt`, `weft.hedge` and
//! `weft.hedge.outcome` (`won` | `cancelled`).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Method, Response, Uri};
use weft_policy::rng::ThreadRng;
use weft_policy::trace::{TraceContext, new_span_id};

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::otlp::Exporter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

/// A finished span, as handed to the exporter (converted to OTLP there,
/// off the request path).
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub kind: Kind,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    /// Status ERROR with this message; `None`: status unset.
    pub error: Option<String>,
}

impl SpanRecord {
    fn new(ctx: &TraceContext, kind: Kind, name: String) -> Self {
        Self {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent_span_id: ctx.parent_span_id,
            kind,
            name,
            start: SystemTime::now(),
            end: SystemTime::UNIX_EPOCH,
            attributes: Vec::with_capacity(8),
            error: None,
        }
    }

    fn set(&mut self, key: &'static str, v: Value) {
        self.attributes.push((key, v));
    }

    /// The outcome: status code (and gRPC status when in the head), or the
    /// proxy's own error; status ERROR for 5xx and proxy errors.
    fn outcome(&mut self, result: &Result<Response<ProxyBody>, ProxyError>) {
        match result {
            Ok(resp) => {
                let code = resp.status().as_u16();
                self.set("http.response.status_code", Value::Int(code.into()));
                self.grpc_status(resp.headers());
                if code >= 500 {
                    self.error = Some(format!("HTTP {code}"));
                }
            }
            Err(e) => {
                self.set(
                    "http.response.status_code",
                    Value::Int(e.status().as_u16().into()),
                );
                self.set("weft.error", Value::Str(e.code().into()));
                self.error = Some(e.to_string());
            }
        }
    }

    fn grpc_status(&mut self, headers: &HeaderMap) {
        if let Some(s) = headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
        {
            self.set("rpc.grpc.status_code", Value::Int(s));
            if s != 0 && self.error.is_none() {
                self.error = Some(format!("gRPC status {s}"));
            }
        }
    }
}

/// The span of one proxied request, open until [`RequestSpan::finish`].
pub struct RequestSpan {
    exporter: Exporter,
    ctx: TraceContext,
    record: SpanRecord,
}

impl RequestSpan {
    /// A span for this hop's context `ctx`, when it is sampled and spans
    /// are exported.
    pub fn start(
        exporter: Option<&Exporter>,
        ctx: &TraceContext,
        kind: Kind,
        name: impl FnOnce() -> String,
        (method, uri, headers): (&Method, &Uri, &HeaderMap),
    ) -> Option<Self> {
        let exporter = exporter.filter(|_| ctx.sampled)?;
        let mut record = SpanRecord::new(ctx, kind, name());
        record.set("http.request.method", Value::Str(method.as_str().into()));
        record.set("url.path", Value::Str(uri.path().into()));
        let authority = uri.authority().map(|a| a.as_str()).or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        if let Some(a) = authority {
            record.set("server.address", Value::Str(a.into()));
        }
        Some(Self {
            exporter: exporter.clone(),
            ctx: *ctx,
            record,
        })
    }

    pub fn route(&mut self, route: &str) {
        self.record.set("weft.route", Value::Str(route.into()));
    }

    /// The time left of the request's deadline, when it has one.
    pub fn deadline(&mut self, remaining: Option<Duration>) {
        if let Some(d) = remaining {
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            self.record
                .set("weft.deadline.remaining_ms", Value::Int(ms));
        }
    }

    /// Opens the span of attempt `n` (1..) to `endpoint`; returns it and
    /// the context to write on the attempt's request.
    pub fn attempt(&self, n: u32, endpoint: &str, backup: bool) -> (AttemptSpan, TraceContext) {
        let ctx = TraceContext {
            span_id: new_span_id(&mut ThreadRng),
            parent_span_id: Some(self.ctx.span_id),
            ..self.ctx
        };
        let name = match self.record.name.split_once(' ') {
            Some((_, service)) => format!("attempt {service}"),
            None => "attempt".into(),
        };
        let mut record = SpanRecord::new(&ctx, Kind::Client, name);
        record.set("weft.attempt", Value::Int(n.into()));
        record.set("server.address", Value::Str(endpoint.into()));
        if backup {
            record.set("weft.hedge", Value::Bool(true));
        }
        let span = AttemptSpan {
            exporter: self.exporter.clone(),
            record: Some(record),
        };
        (span, ctx)
    }

    /// Records the response head (or the proxy's error); [`end`](Self::end)
    /// follows.
    pub fn head(&mut self, result: &Result<Response<ProxyBody>, ProxyError>) {
        self.record.outcome(result);
    }

    /// Ends and exports the span; `grpc_status`: the status from the
    /// trailers (not in the head), an error unless OK.
    pub fn end(mut self, grpc_status: Option<i64>) {
        if let Some(code) = grpc_status {
            self.record.set("rpc.grpc.status_code", Value::Int(code));
            if code != 0 && self.record.error.is_none() {
                self.record.error = Some(format!("gRPC status {code}"));
            }
        }
        self.record.end = SystemTime::now();
        self.exporter.record(self.record);
    }
}

/// One attempt's span: recorded by [`AttemptSpan::finish`], or as
/// cancelled when dropped unfinished (the attempt's future was dropped).
pub struct AttemptSpan {
    exporter: Exporter,
    record: Option<SpanRecord>,
}

impl AttemptSpan {
    /// The attempt answered. `won`: it was a hedged request's answer.
    pub fn finish(mut self, result: &Result<Response<ProxyBody>, ProxyError>, won: bool) {
        if let Some(mut r) = self.record.take() {
            r.outcome(result);
            if won {
                r.set("weft.hedge.outcome", Value::Str("won".into()));
            }
            r.end = SystemTime::now();
            self.exporter.record(r);
        }
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if let Some(mut r) = self.record.take() {
            r.set("weft.hedge.outcome", Value::Str("cancelled".into()));
            r.end = SystemTime::now();
            self.exporter.record(r);
        }
    }
}
