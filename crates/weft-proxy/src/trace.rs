//! Trace context propagation (issue 7), both directions: read the caller's
//! W3C or B3 context, make this hop's span (a child of the caller's, or the
//! root of a new trace) and write it on the request sent on, so the next hop
//! (an upstream sidecar, or the local app) sees this proxy as its parent.
//!
//! - No context, or only a malformed one: a new trace starts. Malformed
//!   headers are removed (never forwarded broken), counted in
//!   `weft_trace_headers_malformed_total{header}` and logged at debug.
//! - Sampling: the caller's decision is kept; a new trace (or a B3 context
//!   that deferred the decision) is sampled with `--trace-sampling`
//!   (default 1.0).
//! - `traceparent` is always written; B3 headers too, in the caller's style,
//!   when it sent B3. A valid `tracestate` is left as it is; any other trace
//!   header present is removed (B3 of another trace, a tracestate without a
//!   valid traceparent).
//!
//! The headers are stamped once on the request's parts. When spans are
//! exported ([`crate::span`]), each retry and backup attempt of a sampled
//! request gets its own child span and [`restamp`] writes that span's id on
//! the attempt's request; otherwise every attempt carries the hop's span.
//!
//! Cost: one pass over the request's header names (cheaper than eight
//! hashed lookups for the usual handful of headers), and when the request
//! carries no trace headers, one inserted value (the `traceparent`,
//! formatted on the stack, marked sensitive so HTTP/2 never puts a value
//! that is new on every request into its HPACK table).

use http::{HeaderMap, HeaderName, HeaderValue};
use weft_policy::rng::ThreadRng;
use weft_policy::trace::{self, Sampler, TraceContext, TraceHeader};

use crate::metrics::ProxyMetrics;
use crate::otlp::Exporter;

/// The proxy's tracing settings.
pub struct Traces {
    /// Decides new traces (`--trace-sampling`); the caller's decision wins.
    pub sampler: Sampler,
    /// `--otlp-endpoint`: where finished spans go; `None`: no spans.
    pub exporter: Option<Exporter>,
}

impl Default for Traces {
    fn default() -> Self {
        Self {
            sampler: Sampler::ALWAYS,
            exporter: None,
        }
    }
}

/// Pre-parsed names, indexed by [`TraceHeader::index`].
static NAMES: [HeaderName; 8] = [
    HeaderName::from_static(trace::TRACEPARENT),
    HeaderName::from_static(trace::TRACESTATE),
    HeaderName::from_static(trace::B3),
    HeaderName::from_static(trace::X_B3_TRACEID),
    HeaderName::from_static(trace::X_B3_SPANID),
    HeaderName::from_static(trace::X_B3_PARENTSPANID),
    HeaderName::from_static(trace::X_B3_SAMPLED),
    HeaderName::from_static(trace::X_B3_FLAGS),
];

/// Replaces the caller's trace headers in `headers` with this hop's span and
/// returns its context (trace id, span, parent: the span to record).
pub fn propagate(
    headers: &mut HeaderMap,
    metrics: &ProxyMetrics,
    sampler: Sampler,
) -> TraceContext {
    let mut found: [Option<&[u8]>; 8] = [None; 8];
    for (name, value) in headers.iter() {
        if let Some(h) = TraceHeader::from_name(name.as_str())
            && found[h.index()].is_none()
        {
            found[h.index()] = Some(value.as_bytes());
        }
    }
    let read = trace::extract(|h| found[h.index()]);
    for h in read.malformed.iter() {
        tracing::debug!(header = h.name(), "replaced a malformed trace header");
        metrics.trace_malformed(h.name());
    }
    let ctx = read.child(sampler, &mut ThreadRng);
    let mut keep = trace::written(ctx.format, &ctx);
    if read.tracestate.is_some() {
        keep.insert(TraceHeader::Tracestate);
    }
    let present = read.present;
    for h in present.iter().filter(|h| !keep.contains(*h)) {
        headers.remove(&NAMES[h.index()]);
    }
    restamp(headers, &ctx);
    ctx
}

/// Writes `ctx` on headers [`propagate`] already cleaned (an attempt's own
/// span over the hop's; the same headers, so each is replaced).
pub fn restamp(headers: &mut HeaderMap, ctx: &TraceContext) {
    trace::inject(ctx, |h, v| {
        // Only ASCII hex digits and dashes: always a valid value.
        if let Ok(mut v) = HeaderValue::from_bytes(v) {
            // New on every request: not worth an HPACK table entry.
            v.set_sensitive(true);
            headers.insert(&NAMES[h.index()], v);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn starts_a_trace_and_replaces_malformed_headers() {
        let m = ProxyMetrics::new();
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("00-zz"));
        h.insert("tracestate", HeaderValue::from_static("a=1"));
        h.insert("x-b3-spanid", HeaderValue::from_static("00f067aa0ba902b7"));
        let ctx = propagate(&mut h, &m, Sampler::ALWAYS);
        assert_eq!(names(&h), ["traceparent"]);
        assert_eq!(
            h["traceparent"].as_bytes(),
            trace::format_traceparent(&ctx).as_bytes()
        );
        assert!(ctx.sampled && ctx.parent_span_id.is_none());
        let text = m.encode();
        for header in ["traceparent", "x-b3-traceid"] {
            assert!(
                text.contains(&format!(
                    "weft_trace_headers_malformed_total{{header=\"{header}\"}} 1"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn continues_b3_multi_as_b3_and_w3c() {
        let m = ProxyMetrics::new();
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("a3ce929d0e0e4736"));
        h.insert("x-b3-spanid", HeaderValue::from_static("00f067aa0ba902b7"));
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        h.insert("tracestate", HeaderValue::from_static("a=1"));
        let ctx = propagate(&mut h, &m, Sampler::ALWAYS);
        assert_eq!(
            names(&h),
            [
                "traceparent",
                "x-b3-parentspanid",
                "x-b3-sampled",
                "x-b3-spanid",
                "x-b3-traceid"
            ]
        );
        assert_eq!(h["x-b3-traceid"], "a3ce929d0e0e4736");
        assert_eq!(h["x-b3-parentspanid"], "00f067aa0ba902b7");
        assert_eq!(h["x-b3-sampled"], "0");
        assert!(!ctx.sampled);
        let tp = h["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-0000000000000000a3ce929d0e0e4736-") && tp.ends_with("-00"),
            "{tp}"
        );
    }
}
