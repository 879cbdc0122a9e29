//! Trace context propagation (issue 7) through real sidecars: the app
//! behind them sees this mesh's spans in `traceparent` (and B3 when the
//! caller used B3), the caller's trace continued, broken headers replaced.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use weft_test_support::HttpClient;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The headers the app received for a `GET /headers` sent to `via`.
async fn seen(via: SocketAddr, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut req = Request::get("/headers").header("host", "a");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::<Bytes>::default()).unwrap();
    let r = HttpClient::http1().send_to(via, req).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_str(&r.text()).unwrap()
}

fn header<'a>(seen: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    seen.get(name).and_then(serde_json::Value::as_str)
}

/// A valid version-00 traceparent, as (trace id, parent id, flags).
fn traceparent(seen: &serde_json::Value) -> (String, String, String) {
    let v = header(seen, "traceparent").unwrap_or_else(|| panic!("no traceparent: {seen}"));
    let f: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && s.bytes().any(|b| b != b'0')
    };
    assert!(
        f.len() == 4
            && f[0] == "00"
            && hex(f[1], 32)
            && hex(f[2], 16)
            && (f[3] == "00" || f[3] == "01"),
        "invalid traceparent {v:?}"
    );
    (f[1].to_string(), f[2].to_string(), f[3].to_string())
}

/// An app behind an outbound sidecar (`edge`, host `a` -> the app) and
/// behind an inbound sidecar (`side`, `--app`).
struct Mesh {
    _app: App,
    edge: Proxy,
    side: Proxy,
    _dir: weft_test_support::TempDir,
}

async fn mesh() -> Mesh {
    let app = app("a", &[]).await;
    let dir = config_dir(&[("a.yaml", &service("a", "http", &[(app.addr, 1)], None))]);
    let edge = proxy(dir.path(), "edge", None, &[]).await;
    let side = proxy(dir.path(), "a", Some(app.addr), &[]).await;
    Mesh {
        _app: app,
        edge,
        side,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_start_continue_and_replace_broken_headers() {
    let m = mesh().await;
    for (via, p) in [(m.edge.outbound, &m.edge), (m.side.inbound, &m.side)] {
        // No context: a fresh trace, sampled (ratio 1.0 by default).
        let a = traceparent(&seen(via, &[]).await);
        let b = traceparent(&seen(via, &[]).await);
        assert_ne!(a.0, b.0, "each request starts its own trace");
        assert_eq!(a.2, "01");

        // A valid context: same trace, the proxy's span as parent, the
        // caller's tracestate and sampling decision kept.
        for flags in ["00", "01"] {
            let tp = format!("00-{TRACE}-{CALLER_SPAN}-{flags}");
            let s = seen(
                via,
                &[("traceparent", &tp), ("tracestate", "rojo=1,congo=t61")],
            )
            .await;
            let (trace, parent, f) = traceparent(&s);
            assert_eq!((trace.as_str(), f.as_str()), (TRACE, flags));
            assert_ne!(parent, CALLER_SPAN, "the proxy's span is the app's parent");
            assert_eq!(header(&s, "tracestate"), Some("rojo=1,congo=t61"));
        }

        // Malformed: replaced by a fresh valid context, never forwarded.
        let malformed = [
            format!("00-{}-{CALLER_SPAN}-01", TRACE.to_uppercase()),
            format!("00-{}-{CALLER_SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{CALLER_SPAN}-1"),
        ];
        for bad in &malformed {
            let s = seen(via, &[("traceparent", bad), ("tracestate", "rojo=1")]).await;
            let (trace, _, flags) = traceparent(&s);
            assert_ne!(trace, TRACE, "{bad}: a new trace");
            assert_eq!(flags, "01");
            assert_eq!(
                header(&s, "tracestate"),
                None,
                "{bad}: its tracestate dropped"
            );
        }
        let counted = p
            .metric(
                "weft_trace_headers_malformed_total",
                &["header=\"traceparent\""],
            )
            .await;
        assert_eq!(counted, malformed.len() as f64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b3_is_continued_and_converted_to_traceparent() {
    let m = mesh().await;
    let via = m.edge.outbound;
    // Multi-header, 64-bit trace id, not sampled.
    let s = seen(
        via,
        &[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", CALLER_SPAN),
            ("x-b3-parentspanid", "0000000000000001"),
            ("x-b3-sampled", "0"),
        ],
    )
    .await;
    assert_eq!(header(&s, "x-b3-traceid"), Some("a3ce929d0e0e4736"));
    assert_eq!(header(&s, "x-b3-parentspanid"), Some(CALLER_SPAN));
    assert_eq!(header(&s, "x-b3-sampled"), Some("0"));
    let span = header(&s, "x-b3-spanid").unwrap();
    assert_ne!(span, CALLER_SPAN);
    let (trace, parent, flags) = traceparent(&s);
    assert_eq!(trace, "0000000000000000a3ce929d0e0e4736");
    assert_eq!((parent.as_str(), flags.as_str()), (span, "00"));

    // Single header, 128-bit, sampled.
    let s = seen(via, &[("b3", &format!("{TRACE}-{CALLER_SPAN}-1"))]).await;
    let b3 = header(&s, "b3").unwrap();
    let f: Vec<&str> = b3.split('-').collect();
    assert_eq!((f[0], f[2], f[3]), (TRACE, "1", CALLER_SPAN), "{b3}");
    let (trace, parent, flags) = traceparent(&s);
    assert_eq!(
        (trace.as_str(), parent.as_str(), flags.as_str()),
        (TRACE, f[1], "01")
    );

    // `b3: 0`: a new trace that keeps the caller's "not sampled".
    let s = seen(via, &[("b3", "0")]).await;
    assert_eq!(traceparent(&s).2, "00");
    assert!(header(&s, "b3").is_some_and(|v| v.ends_with("-0")));

    // A broken B3 header is replaced and counted.
    let s = seen(via, &[("b3", "not-a-b3-value")]).await;
    traceparent(&s);
    assert_eq!(header(&s, "b3"), None);
    assert_eq!(
        m.edge
            .metric("weft_trace_headers_malformed_total", &["header=\"b3\""])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_two_sidecars_with_a_span_per_hop() {
    // client -> outbound of `edge` -> inbound of `side` -> app
    let app = app("a", &[]).await;
    let dir_side = config_dir(&[("a.yaml", &service("a", "http", &[(app.addr, 1)], None))]);
    let side = proxy(dir_side.path(), "a", Some(app.addr), &[]).await;
    let dir_edge = config_dir(&[("a.yaml", &service("a", "http", &[(side.inbound, 1)], None))]);
    let edge = proxy(dir_edge.path(), "edge", None, &[]).await;

    // W3C: the trace id survives both hops, the app's parent is neither the
    // caller's span.
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (trace, parent, _) = traceparent(&seen(edge.outbound, &[("traceparent", &tp)]).await);
    assert_eq!(trace, TRACE);
    assert_ne!(parent, CALLER_SPAN);

    // B3 shows both hops: the app's parent span is the edge's span, its
    // span the inbound sidecar's; all three differ.
    let s = seen(
        edge.outbound,
        &[("x-b3-traceid", TRACE), ("x-b3-spanid", CALLER_SPAN)],
    )
    .await;
    let edge_span = header(&s, "x-b3-parentspanid").unwrap();
    let side_span = header(&s, "x-b3-spanid").unwrap();
    assert_eq!(header(&s, "x-b3-traceid"), Some(TRACE));
    assert!(
        edge_span != CALLER_SPAN && side_span != CALLER_SPAN && edge_span != side_span,
        "caller {CALLER_SPAN}, edge {edge_span}, side {side_span}"
    );
    let (trace, parent, flags) = traceparent(&s);
    assert_eq!((trace.as_str(), parent.as_str()), (TRACE, side_span));
    assert_eq!(
        flags, "01",
        "a deferred B3 decision is sampled at ratio 1.0"
    );

    // Nothing malformed anywhere.
    for p in [&edge, &side] {
        assert_eq!(
            p.metric("weft_trace_headers_malformed_total", &[]).await,
            0.0
        );
    }
}
