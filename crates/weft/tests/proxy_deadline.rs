//! Deadline propagation across three hops (issue 6): each sidecar hands on
//! what is left of the caller's budget, the sample app carries it into its
//! own calls, and a request whose time is spent never reaches the next hop.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use weft_test_support::{HttpClient, wait_until};

async fn app_stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let r = HttpClient::http1()
        .get(addr, "app", "/_weft/stats")
        .await
        .unwrap();
    serde_json::from_str(&r.text()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_shrinks_hop_by_hop_and_an_expired_request_stops() {
    // hop 3
    let c = app("c", &[]).await;
    let dir_c = config_dir(&[("c.yaml", &service("c", "http", &[(c.addr, 1)], None))]);
    let p_b = proxy(dir_c.path(), "b", None, &[]).await;
    // hop 2: 200 ms of work, then a call to c through its sidecar
    let call_c = format!("c/@{}", p_b.outbound);
    let b = app("b", &["--latency", "200ms", "--call", &call_c]).await;
    let dir_b = config_dir(&[("b.yaml", &service("b", "http", &[(b.addr, 1)], None))]);
    let p_a = proxy(dir_b.path(), "a", None, &[]).await;
    // hop 1: 40 ms of work, then a call to b
    let call_b = format!("b/@{}", p_a.outbound);
    let a = app("a", &["--latency", "40ms", "--call", &call_b]).await;
    let dir_a = config_dir(&[("a.yaml", &service("a", "http", &[(a.addr, 1)], None))]);
    let edge = proxy(dir_a.path(), "edge", None, &[]).await;

    // 100 ms at the edge.
    let req = Request::get("/")
        .header("host", "a")
        .header("x-weft-deadline-ms", "100")
        .body(Full::<Bytes>::default())
        .unwrap();
    let t = Instant::now();
    let r = HttpClient::http1()
        .send_to(edge.outbound, req)
        .await
        .unwrap();
    let took = t.elapsed();
    // Without propagation the chain would answer 200 after ~110 ms. With it,
    // hop 1's call to hop 2 times out with hop 1's remaining budget (hop 1
    // answers 502) or the edge's own budget ends first (504).
    assert!(
        r.status == 502 || r.status == 504,
        "{} {}",
        r.status,
        r.text()
    );
    assert!(
        took < Duration::from_secs(5),
        "answered within the budget's order of magnitude, not the route's 15 s: {took:?}"
    );

    // Hop 2's app saw what hop 1 left: at most 100 - 40 = 60 ms.
    let seen = app_stats(b.addr).await["last_deadline_ms"].as_u64();
    let seen = seen.expect("hop 2 got a deadline");
    assert!((1..=60).contains(&seen), "hop 2 saw {seen} ms");
    // Hop 1's budget for its call ends before hop 2's work does: hop 1's
    // sidecar answers 504 and drops the request, so hop 2 never calls on.
    wait_until(
        "hop 1's sidecar times its call out",
        Duration::from_secs(5),
        || async {
            (p_a.metric("weft_requests_total", &["code=\"504\""]).await >= 1.0).then_some(())
        },
    )
    .await
    .unwrap();
    // Hop 2 would have called hop 3 200 ms after it got the request; wait
    // past that (an absence can only be seen by waiting) and check.
    tokio::time::sleep_until((t + Duration::from_millis(400)).into()).await;
    assert_eq!(
        app_stats(c.addr).await["requests"].as_u64(),
        Some(0),
        "an expired request never reaches hop 3"
    );
    assert_eq!(app_stats(b.addr).await["requests"].as_u64(), Some(1));
}

#[tokio::test]
async fn malformed_deadlines_are_ignored_and_counted() {
    let a = app("a", &[]).await;
    let dir = config_dir(&[("a.yaml", &service("a", "http", &[(a.addr, 1)], None))]);
    let p = proxy(dir.path(), "edge", None, &[]).await;
    for (name, value) in [
        ("grpc-timeout", "123456789S"),
        ("grpc-timeout", "10x"),
        ("x-weft-deadline-ms", "-5"),
    ] {
        let req = Request::get("/headers")
            .header("host", "a")
            .header(name, value)
            .body(Full::<Bytes>::default())
            .unwrap();
        let r = HttpClient::http1().send_to(p.outbound, req).await.unwrap();
        assert_eq!(r.status, 200, "{name}: {value}");
        // The app's view of the headers it got (other headers, such as a
        // random traceparent, may contain the same characters).
        let seen: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
        assert_ne!(
            seen[name].as_str(),
            Some(value),
            "the malformed value is not passed on: {}",
            r.text()
        );
    }
    assert_eq!(
        p.metric("weft_deadline_headers_malformed_total", &[]).await,
        3.0
    );
    // An already spent deadline is answered at once.
    let req = Request::get("/")
        .header("host", "a")
        .header("x-weft-deadline-ms", "0")
        .body(Full::<Bytes>::default())
        .unwrap();
    let r = HttpClient::http1().send_to(p.outbound, req).await.unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.header("weft-error"), Some("deadline-exceeded"));
    assert_eq!(app_stats(a.addr).await["requests"].as_u64(), Some(3));
}

/// A policy's `deadline` section: a larger margin per hop, or no
/// propagation at all (the caller's headers pass through untouched).
#[tokio::test]
async fn a_policy_sets_the_margin_or_turns_propagation_off() {
    let a = app("a", &[]).await;
    for (section, want) in [("{margin: 30ms}", 1000 - 30), ("{propagate: false}", 1000)] {
        let policy = format!(
            "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: d}}\nspec:\n  targetRefs: [{{kind: Service, name: a}}]\n  deadline: {section}\n"
        );
        let dir = config_dir(&[
            ("a.yaml", &service("a", "http", &[(a.addr, 1)], None)),
            ("p.yaml", &policy),
        ]);
        let p = proxy(dir.path(), "edge", None, &[]).await;
        let req = Request::get("/")
            .header("host", "a")
            .header("x-weft-deadline-ms", "1000")
            .body(Full::<Bytes>::default())
            .unwrap();
        let r = HttpClient::http1().send_to(p.outbound, req).await.unwrap();
        assert_eq!(r.status, 200);
        let seen = app_stats(a.addr).await["last_deadline_ms"]
            .as_u64()
            .unwrap();
        if section.contains("propagate") {
            assert_eq!(seen, want, "untouched");
        } else {
            // What is left after the margin, less the hop's own time.
            assert!(seen <= want && seen + 100 > want, "{section}: saw {seen}");
        }
    }
}
