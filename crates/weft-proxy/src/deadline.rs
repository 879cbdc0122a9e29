//! Deadline propagation (issue 6): the caller's remaining time, read from
//! `grpc-timeout`, `x-weft-deadline-ms` or Envoy's
//! `x-envoy-expected-rq-timeout-ms`, bounds the request together with the
//! route timeout; every attempt sent on (upstream, or to the local app) carries
//! what is left minus a margin, in `grpc-timeout` for gRPC and
//! `x-weft-deadline-ms` otherwise, so the next hop and the app's own calls
//! see a shrinking budget. When nothing is left the proxy answers at once
//! (504 / DEADLINE_EXCEEDED, `weft-error: deadline-exceeded`) instead of
//! sending work that cannot finish. A malformed header is ignored, counted
//! (`weft_deadline_headers_malformed_total`) and logged, never propagated.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use weft_policy::deadline::{
    CallerDeadline, DEFAULT_MARGIN, Deadline, DeadlineHeader, ENVOY_EXPECTED_RQ_TIMEOUT_MS,
    GRPC_TIMEOUT, WEFT_DEADLINE_MS, format_deadline_ms, format_grpc_timeout,
};

use crate::clock;
use crate::error::ProxyError;
use crate::metrics::ProxyMetrics;

/// One request's deadline, as this proxy enforces and forwards it.
#[derive(Debug, Clone, Copy)]
pub struct RequestDeadline {
    deadline: Option<Deadline>,
    /// Write it upstream: the caller sent one, or the route set a timeout
    /// (Envoy's implicit 15 s is enforced but not announced).
    announce: bool,
    /// The request carried deadline headers (valid or not) to take off.
    present: bool,
    margin: Duration,
    grpc: bool,
}

impl RequestDeadline {
    /// Reads the caller's deadline from `headers` (malformed values are
    /// counted and ignored) and combines it with `route_timeout`; fails
    /// when the caller's time is already spent.
    pub fn read(
        headers: &HeaderMap,
        route_timeout: Option<Duration>,
        route_timeout_set: bool,
        start: Instant,
        grpc: bool,
        metrics: &ProxyMetrics,
    ) -> Result<Self, ProxyError> {
        Self::read_with(
            headers,
            route_timeout,
            route_timeout_set,
            start,
            grpc,
            metrics,
            (true, DEFAULT_MARGIN),
        )
    }

    /// [`read`](Self::read) with a policy's `deadline` section: `propagate:
    /// false` leaves the caller's headers alone (neither read nor
    /// rewritten; the route timeout still bounds the wait); `margin` is taken
    /// off on each hop.
    pub fn read_with(
        headers: &HeaderMap,
        route_timeout: Option<Duration>,
        route_timeout_set: bool,
        start: Instant,
        grpc: bool,
        metrics: &ProxyMetrics,
        (propagate, margin): (bool, Duration),
    ) -> Result<Self, ProxyError> {
        if !propagate {
            return Ok(Self {
                deadline: Deadline::effective(clock::at(start), route_timeout, None),
                announce: false,
                present: false,
                margin,
                grpc,
            });
        }
        // Pre-parsed names: a `&str` lookup would parse and hash the name
        // three times per request.
        static NAMES: [HeaderName; 3] = [
            HeaderName::from_static(GRPC_TIMEOUT),
            HeaderName::from_static(WEFT_DEADLINE_MS),
            HeaderName::from_static(ENVOY_EXPECTED_RQ_TIMEOUT_MS),
        ];
        let read = CallerDeadline::read(|name| {
            let n = NAMES.iter().find(|n| n.as_str() == name)?;
            headers.get(n).map(HeaderValue::as_bytes)
        });
        for e in &read.malformed {
            tracing::debug!(error = %e, "ignored a malformed deadline header");
            metrics.deadline_malformed(e.header.name());
        }
        let d = Self {
            deadline: Deadline::effective(clock::at(start), route_timeout, read.deadline),
            announce: read.deadline.is_some() || (route_timeout_set && route_timeout.is_some()),
            present: read.deadline.is_some() || !read.malformed.is_empty(),
            margin,
            grpc,
        };
        if read.deadline.is_some_and(|c| c.remaining <= d.margin) {
            return Err(d.exceeded());
        }
        Ok(d)
    }

    /// How long the proxy may still wait for this request.
    pub fn timeout(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.remaining(clock::now()).unwrap_or(Duration::ZERO))
    }

    /// Replaces the caller's deadline headers in an attempt's `headers` with
    /// what is left now minus the margin; fails when nothing is left (the
    /// attempt must not be sent).
    pub fn stamp(&self, headers: &mut HeaderMap) -> Result<(), ProxyError> {
        if self.present {
            for h in DeadlineHeader::ALL {
                headers.remove(h.name());
            }
        }
        let Some(d) = self.deadline.filter(|_| self.announce) else {
            return Ok(());
        };
        let left = d
            .for_attempt(clock::now(), self.margin)
            .map_err(|_| self.exceeded())?;
        let (name, value) = if self.grpc {
            (GRPC_TIMEOUT, format_grpc_timeout(left))
        } else {
            (WEFT_DEADLINE_MS, format_deadline_ms(left))
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
        Ok(())
    }

    fn exceeded(&self) -> ProxyError {
        ProxyError::DeadlineExceeded {
            budget_ms: self.deadline.map_or(0, |d| d.budget().as_millis() as u64),
        }
    }
}
