//! Trace context propagation (issue 7), both directions: read the caller's
//! W3C or B3 context, make this hop's span (a child of the caller's, or the
//! root of a new trace) and write it on the request sent on, so the next hop
//! (an upstream sidecar, or the local app) sees this proxy as its parent.
//!
//! - No context, or only a malformed one: a new trace starts. Malformed
//!   headers are removed (never forwarded broken), counted in
//!   `weft_trace_headers_malformed_total{header}` and logged at debug.
//! - Sampling: the caller's decision is kept; a new trace (or a B3 context
//!   that deferred the decision) is sampled with ratio 1.0 until the export
//!   slice adds `--trace-sampling`.
//! - `traceparent` is always written; B3 headers too, in the caller's style,
//!   when it sent B3. A valid `tracestate` is left as it is; any other trace
//!   header present is removed (B3 of another trace, a tracestate without a
//!   valid traceparent).
//!
//! The headers are stamped once on the request's parts, so every retry and
//! backup attempt of one request carries the same span for now; the export
//! slice gives each attempt its own child span.
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
/// returns its context (for the export slice: trace id, span, parent).
pub fn propagate(headers: &mut HeaderMap, metrics: &ProxyMetrics) -> TraceContext {
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
    let ctx = read.child(Sampler::ALWAYS, &mut ThreadRng);
    let mut keep = trace::written(ctx.format, &ctx);
    if read.tracestate.is_some() {
        keep.insert(TraceHeader::Tracestate);
    }
    let present = read.present;
    for h in present.iter().filter(|h| !keep.contains(*h)) {
        headers.remove(&NAMES[h.index()]);
    }
    trace::inject(&ctx, |h, v| {
        // Only ASCII hex digits and dashes: always a valid value.
        if let Ok(mut v) = HeaderValue::from_bytes(v) {
            // New on every request: not worth an HPACK table entry.
            v.set_sensitive(true);
            headers.insert(&NAMES[h.index()], v);
        }
    });
    ctx
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
        let ctx = propagate(&mut h, &m);
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
        let ctx = propagate(&mut h, &m);
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
