//! Span export over OTLP/gRPC (issue 7) through real sidecars and an OTLP
//! receiver built from the official OpenTelemetry definitions: request
//! spans joined across two sidecars, hedge attempts as their own spans
//! (the upstream's span their child), sampling 0 exporting nothing while
//! headers still propagate, and a collector that is down costing nothing
//! but counted drops.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use weft_test_support::{HttpClient, OtlpReceiver, ReceivedSpan, free_addr, wait_until};

const CLIENT: i32 = 3;
const SERVER: i32 = 2;
const EXPORTED: Duration = Duration::from_secs(10);

/// `GET /headers` to `via` with host `a`: the status and the headers the
/// app received.
async fn get(via: SocketAddr, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut req = Request::get("/headers").header("host", "a");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::<Bytes>::default()).unwrap();
    let r = HttpClient::http1()
        .with_timeout(Duration::from_secs(10))
        .send_to(via, req)
        .await
        .unwrap();
    let seen = serde_json::from_str(&r.text()).unwrap_or_default();
    (r.status.as_u16(), seen)
}

/// (trace id, parent span id, flags) of the `traceparent` the app saw.
fn traceparent(seen: &serde_json::Value) -> (String, String, String) {
    let v = seen["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("{seen}"));
    let f: Vec<&str> = v.split('-').collect();
    (f[1].into(), f[2].into(), f[3].into())
}

/// Waits until the receiver holds spans of `trace` with each of `names`.
/// A proxy records a request's attempt spans before the request span, and
/// exports in order, so once the request span is there its attempts are.
async fn spans_of(rx: &OtlpReceiver, trace: &str, names: &[&str]) -> Vec<ReceivedSpan> {
    wait_until(&format!("spans {names:?} of {trace}"), EXPORTED, || async {
        let s: Vec<_> = rx
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect();
        names
            .iter()
            .all(|n| s.iter().any(|x| x.name == *n))
            .then_some(s)
    })
    .await
    .unwrap()
}

const OUT: &str = "outbound a.default";
const IN: &str = "inbound a.default";

fn one<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name}: {spans:#?}");
    found[0]
}

/// `app` behind a sidecar for Service `a` (inbound, `--app`); returns it
/// and its config dir.
async fn sidecar_a(app: &App, extra: &[&str]) -> (Proxy, weft_test_support::TempDir) {
    let dir = config_dir(&[("a.yaml", &service("a", "http", &[(app.addr, 1)], None))]);
    let p = proxy(dir.path(), "a", Some(app.addr), extra).await;
    (p, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_join_across_two_sidecars() {
    let rx = OtlpReceiver::start().await.unwrap();
    let otlp = rx.addr().to_string();
    let app = app("a", &[]).await;
    let (side, _d1) = sidecar_a(&app, &["--otlp-endpoint", &otlp]).await;
    let dir = config_dir(&[("a.yaml", &service("a", "http", &[(side.inbound, 1)], None))]);
    let edge = proxy(dir.path(), "frontend", None, &["--otlp-endpoint", &otlp]).await;

    let (status, seen) = get(edge.outbound, &[]).await;
    assert_eq!(status, 200);
    let (trace, app_parent, flags) = traceparent(&seen);
    assert_eq!(flags, "01");
    let spans = spans_of(&rx, &trace, &[OUT, IN]).await;
    let out = one(&spans, OUT);
    let inb = one(&spans, IN);
    assert_eq!((out.kind, inb.kind), (CLIENT, SERVER));
    assert_eq!(out.service, "frontend.default");
    assert_eq!(inb.service, "a.default");
    assert_eq!(out.parent_span_id, "", "a new trace starts at the edge");
    assert_eq!(inb.parent_span_id, out.span_id, "{spans:#?}");
    assert_eq!(
        app_parent, inb.span_id,
        "the app's parent is the inbound span"
    );
    assert_eq!(out.attr("http.request.method"), Some("GET"));
    assert_eq!(out.attr("url.path"), Some("/headers"));
    assert_eq!(out.attr("server.address"), Some("a"));
    assert_eq!(out.attr("http.response.status_code"), Some("200"));
    assert_eq!(out.attr("weft.route"), Some("default"));
    assert_eq!(inb.attr("weft.route"), Some("inbound"));
    assert!(!out.error && !inb.error);

    // A caller's trace is continued: the edge's span is its child.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, seen) = get(edge.outbound, &[("traceparent", caller)]).await;
    let (trace, _, _) = traceparent(&seen);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    let spans = spans_of(&rx, &trace, &[OUT, IN]).await;
    assert_eq!(one(&spans, OUT).parent_span_id, "00f067aa0ba902b7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_attempt_is_its_own_span_and_the_upstreams_parent() {
    let rx = OtlpReceiver::start().await.unwrap();
    let otlp = rx.addr().to_string();
    let slow = app("slow", &["--latency", "400ms"]).await;
    let fast = app("fast", &[]).await;
    let (side, _d1) = sidecar_a(&fast, &["--otlp-endpoint", &otlp]).await;
    let policy = "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: hedge}\nspec:\n  targetRefs: [{kind: Service, name: a}]\n  loadBalancer: {type: RoundRobin}\n  hedging: {delay: 20ms, maxAttempts: 2}\n  budget: {percent: 100, minPerSecond: 100}\n---\n";
    let dir = config_dir(&[
        (
            "a.yaml",
            &service("a", "http", &[(slow.addr, 1), (side.inbound, 1)], None),
        ),
        ("p.yaml", policy),
    ]);
    let edge = proxy(dir.path(), "frontend", None, &["--otlp-endpoint", &otlp]).await;

    // Round robin sends one of two first attempts to the slow endpoint;
    // its backup goes to the sidecar.
    let mut hedged = None;
    for _ in 0..4 {
        let (status, seen) = get(edge.outbound, &[]).await;
        assert_eq!(status, 200);
        let (trace, parent, _) = traceparent(&seen);
        let spans = spans_of(&rx, &trace, &[OUT, IN]).await;
        if spans.iter().any(|s| s.attr("weft.hedge") == Some("true")) {
            hedged = Some((trace, parent));
            break;
        }
    }
    let (trace, app_parent) = hedged.expect("a request was hedged");
    let spans = spans_of(&rx, &trace, &[OUT, IN]).await;
    let req = one(&spans, OUT);
    let attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "attempt a.default")
        .collect();
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    let backup = attempts
        .iter()
        .find(|s| s.attr("weft.hedge") == Some("true"))
        .unwrap();
    let first = attempts
        .iter()
        .find(|s| s.attr("weft.hedge").is_none())
        .unwrap();
    for a in &attempts {
        assert_eq!(a.parent_span_id, req.span_id, "{spans:#?}");
        assert_eq!(a.kind, CLIENT);
    }
    assert_eq!(first.attr("weft.attempt"), Some("1"));
    assert_eq!(
        first.attr("server.address"),
        Some(slow.addr.to_string().as_str())
    );
    assert_eq!(first.attr("weft.hedge.outcome"), Some("cancelled"));
    assert_eq!(backup.attr("weft.attempt"), Some("2"));
    assert_eq!(
        backup.attr("server.address"),
        Some(side.inbound.to_string().as_str())
    );
    assert_eq!(backup.attr("weft.hedge.outcome"), Some("won"));
    assert_eq!(backup.attr("http.response.status_code"), Some("200"));
    let inb = one(&spans, "inbound a.default");
    assert_eq!(
        inb.parent_span_id, backup.span_id,
        "the upstream is the attempt's child"
    );
    assert_eq!(app_parent, inb.span_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_zero_exports_nothing_but_headers_still_propagate() {
    let rx = OtlpReceiver::start().await.unwrap();
    let otlp = rx.addr().to_string();
    let app = app("a", &[]).await;
    let dir = config_dir(&[("a.yaml", &service("a", "http", &[(app.addr, 1)], None))]);
    let args = ["--otlp-endpoint", otlp.as_str(), "--trace-sampling", "0"];
    let edge = proxy(dir.path(), "frontend", None, &args).await;
    for _ in 0..10 {
        let (status, seen) = get(edge.outbound, &[]).await;
        assert_eq!(status, 200);
        assert_eq!(traceparent(&seen).2, "00", "not sampled, still propagated");
    }
    // A caller's decision wins: this one is exported, and (exported after
    // the others were decided) bounds the wait for any stray span.
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (_, seen) = get(edge.outbound, &[("traceparent", caller)]).await;
    assert_eq!(traceparent(&seen).2, "01");
    spans_of(&rx, "4bf92f3577b34da6a3ce929d0e0e4736", &[OUT]).await;
    let all = rx.spans();
    assert_eq!(all.len(), 1, "{all:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_drops_spans_and_requests_succeed() {
    let down = free_addr().to_string();
    let app = app("a", &[]).await;
    let dir = config_dir(&[("a.yaml", &service("a", "http", &[(app.addr, 1)], None))]);
    let edge = proxy(dir.path(), "frontend", None, &["--otlp-endpoint", &down]).await;
    for _ in 0..20 {
        let (status, _) = get(edge.outbound, &[]).await;
        assert_eq!(status, 200);
    }
    wait_until("20 spans counted as dropped", EXPORTED, || async {
        let d = edge
            .metric(
                "weft_trace_spans_dropped_total",
                &["reason=\"export_failed\""],
            )
            .await;
        (d == 20.0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        edge.metric("weft_trace_spans_exported_total", &[]).await,
        0.0
    );
}

#[tokio::test]
async fn a_bad_sampling_ratio_is_refused_clearly() {
    let out = std::process::Command::new(weft_bin())
        .args([
            "proxy",
            "--config",
            ".",
            "--service",
            "a",
            "--trace-sampling",
            "1.5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a ratio from 0.0 to 1.0"), "{err}");
}

/// An app that forwards the trace headers it received (as `weft app
/// --call` does) joins its own outbound call to the request's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_forwards_trace_headers_joins_its_calls_to_the_trace() {
    let rx = OtlpReceiver::start().await.unwrap();
    let otlp = rx.addr().to_string();
    let b = app("b", &[]).await;
    let dir_b = config_dir(&[("b.yaml", &service("b", "http", &[(b.addr, 1)], None))]);
    let a_side = proxy(dir_b.path(), "a", None, &["--otlp-endpoint", &otlp]).await;
    let call = format!("b/headers@{}", a_side.outbound);
    let a = app("a", &["--call", &call]).await;
    let dir = config_dir(&[("a.yaml", &service("a", "http", &[(a.addr, 1)], None))]);
    let edge = proxy(dir.path(), "frontend", None, &["--otlp-endpoint", &otlp]).await;

    let r = HttpClient::http1()
        .get(edge.outbound, "a", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let joined = wait_until("a's call joined the edge's trace", EXPORTED, || async {
        let spans = rx.spans();
        let call = spans.iter().find(|s| s.name == "outbound b.default")?;
        let edge = spans
            .iter()
            .find(|s| s.name == "outbound a.default" && s.trace_id == call.trace_id)?;
        Some((
            edge.span_id.clone(),
            call.parent_span_id.clone(),
            call.service.clone(),
        ))
    })
    .await
    .unwrap();
    assert_eq!(
        joined.0, joined.1,
        "the app's call is a child of the edge's span"
    );
    assert_eq!(joined.2, "a.default");
}
