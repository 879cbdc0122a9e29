//! The end of a request, the same for both directions: the response (or
//! the proxy's own answer) is counted in the request metrics, the span
//! ends and the access log gets its line.
//!
//! Most of it happens when the response head goes back. What needs the
//! end of the body waits for it in a [`Watched`] body: a gRPC response
//! whose status comes in the trailers (its `grpc_status` label and span),
//! and an access log line (bytes sent, duration, how the body ended). A
//! plain HTTP response without an access log goes back unwrapped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Response};

use crate::access_log::{Begun, Entry};
use crate::body::{BodyEnd, OnEnd, ProxyBody, Watched};
use crate::error::{ProxyError, grpc_from_http};
use crate::metrics::{GRPC_CANCELLED, GRPC_INTERNAL, RouteStats, grpc_status_label};
use crate::span::RequestSpan;
use crate::state::Shared;

/// What a request's end needs besides its result.
pub struct Finishing {
    pub grpc: bool,
    pub start: Instant,
    pub span: Option<RequestSpan>,
    pub log: Option<Begun>,
    /// Where the request went when the response does not say (inbound:
    /// the app).
    pub upstream: Option<Arc<str>>,
}

impl Finishing {
    pub fn new(grpc: bool, start: Instant) -> Self {
        Self {
            grpc,
            start,
            span: None,
            log: None,
            upstream: None,
        }
    }
}

impl Shared {
    /// Turns a forwarding result into the downstream response and records
    /// it (now, or when the body ends; see the module docs).
    pub fn finish(
        self: &Arc<Self>,
        stats: &RouteStats,
        result: Result<Response<ProxyBody>, ProxyError>,
        f: Finishing,
    ) -> Response<ProxyBody> {
        let headers_after = f.start.elapsed();
        stats.observe(headers_after);
        let mut span = f.span;
        if let Some(s) = &mut span {
            s.head(&result);
        }
        let (resp, code, error) = match result {
            Ok(resp) => {
                let code = resp.status().as_u16();
                (resp, code, "")
            }
            Err(err) => {
                tracing::debug!(error = %err, "request failed");
                if matches!(err, ProxyError::DeadlineExceeded { .. }) {
                    self.metrics.deadline_exceeded.inc();
                }
                (err.to_response(f.grpc), err.status().as_u16(), err.code())
            }
        };
        let in_head = f.grpc.then(|| {
            resp.headers()
                .get("grpc-status")
                .map(|v| grpc_status_label(v.to_str().unwrap_or("")))
        });
        let grpc_status = match in_head {
            None => Some(""),
            Some(Some(s)) => Some(s),
            // A gRPC response without a status in its head: in the
            // trailers when it is a 200, else the client maps the HTTP
            // status.
            Some(None) if code == 200 && error.is_empty() => None,
            Some(None) => Some(grpc_status_label(&grpc_from_http(code).to_string())),
        };
        let log = f.log.filter(|_| self.access_log.is_some());
        if let Some(g) = grpc_status {
            stats.count(&self.metrics, code, g, error);
            if let Some(s) = span.take() {
                s.end(None);
            }
            if log.is_none() {
                return resp;
            }
        }
        let upstream = f.upstream.or_else(|| match resp.body() {
            ProxyBody::Tracked(t) => t.watcher().and_then(|t| t.endpoint()),
            _ => None,
        });
        let completion = Completion {
            shared: self.clone(),
            stats: stats.clone(),
            span,
            log,
            code,
            error,
            grpc_status,
            upstream,
            start: f.start,
            headers_after,
            bytes: 0,
        };
        resp.map(|inner| ProxyBody::Completed(Box::new(Watched::new(inner, completion))))
    }
}

/// What is left to record when the response body ends.
pub struct Completion {
    shared: Arc<Shared>,
    stats: RouteStats,
    span: Option<RequestSpan>,
    log: Option<Begun>,
    code: u16,
    error: &'static str,
    /// Known (and counted) at the head; `None`: in the trailers, counted
    /// at the end.
    grpc_status: Option<&'static str>,
    upstream: Option<Arc<str>>,
    start: Instant,
    headers_after: Duration,
    bytes: u64,
}

impl OnEnd for Completion {
    fn data(&mut self, len: usize) {
        self.bytes += len as u64;
    }

    fn end(self, end: BodyEnd, trailers: Option<&HeaderMap>) {
        let grpc_status = match self.grpc_status {
            Some(known) => known,
            None => {
                let status = match trailers.and_then(|t| t.get("grpc-status")) {
                    Some(v) => grpc_status_label(v.to_str().unwrap_or("")),
                    None if end == BodyEnd::DownstreamCancelled => GRPC_CANCELLED,
                    // gRPC clients report a stream that ends without a
                    // status (or breaks) as INTERNAL.
                    None => GRPC_INTERNAL,
                };
                self.stats
                    .count(&self.shared.metrics, self.code, status, self.error);
                if let Some(span) = self.span {
                    span.end(status.parse().ok());
                }
                status
            }
        };
        if let (Some(begun), Some(log)) = (self.log, &self.shared.access_log) {
            log.log(Entry {
                begun,
                labels: self.stats.labels(self.code, grpc_status, self.error),
                end,
                upstream: self.upstream,
                bytes_sent: self.bytes,
                headers_after: self.headers_after,
                duration: self.start.elapsed(),
            });
        }
    }
}
