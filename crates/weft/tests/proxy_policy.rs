//! Issue 5 through real processes: `weft proxy --config DIR` in front of
//! `weft app` endpoints with injected latency and errors. What a user
//! notices: a slow endpoint loses its traffic, a failing one is weighted
//! down and retried around, backups cut the tail, and the budget holds
//! when everything is slow.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use weft_test_support::{HttpClient, TestResponse, wait_until};

/// `n` GETs through `via` with `concurrency` in flight; responses in
/// completion order with their latency.
async fn burst(
    via: SocketAddr,
    host: &str,
    n: usize,
    concurrency: usize,
) -> Vec<(TestResponse, Duration)> {
    let per = n.div_ceil(concurrency);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let host = host.to_string();
        tasks.push(tokio::spawn(async move {
            let client = HttpClient::http1().with_timeout(Duration::from_secs(10));
            let mut out = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                let r = client.get(via, &host, "/").await.unwrap();
                out.push((r, t.elapsed()));
            }
            out
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn by_app(rs: &[(TestResponse, Duration)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (r, _) in rs {
        *m.entry(r.header("x-app-name").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    m
}

fn percentile(rs: &[(TestResponse, Duration)], p: f64) -> Duration {
    let mut v: Vec<Duration> = rs.iter().map(|(_, d)| *d).collect();
    v.sort();
    v[((v.len() as f64 * p / 100.0).ceil() as usize).clamp(1, v.len()) - 1]
}

fn policy(name: &str, target: &str, body: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}}}\nspec:\n  targetRefs: [{{kind: Service, name: {target}}}]\n{body}---\n"
    )
}

#[tokio::test]
async fn a_slow_endpoint_loses_its_traffic_by_default() {
    let fast1 = app("fast1", &["--latency", "2ms"]).await;
    let fast2 = app("fast2", &["--latency", "2ms"]).await;
    let slow = app("slow", &["--latency", "40ms"]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service(
            "catalog",
            "http",
            &[(fast1.addr, 1), (fast2.addr, 1), (slow.addr, 1)],
            None,
        ),
    )]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    // Warm-up: every endpoint answers at least once (P2C explores).
    let _ = burst(p.outbound, "catalog", 60, 6).await;
    let rs = burst(p.outbound, "catalog", 600, 6).await;
    let counts = by_app(&rs);
    let slow_share = counts.get("slow").copied().unwrap_or(0) as f64 / rs.len() as f64;
    assert!(
        rs.iter().all(|(r, _)| r.status == 200),
        "every request succeeds: {counts:?}"
    );
    // Round robin would give it a third.
    assert!(slow_share < 0.08, "slow share {slow_share}: {counts:?}");
    assert!(
        counts.get("fast1").copied().unwrap_or(0) > 100
            && counts.get("fast2").copied().unwrap_or(0) > 100,
        "both fast endpoints share the load: {counts:?}"
    );
}

#[tokio::test]
async fn a_policy_can_ask_for_round_robin() {
    let fast = app("fast", &["--latency", "1ms"]).await;
    let slow = app("slow", &["--latency", "20ms"]).await;
    let dir = config_dir(&[
        (
            "svc.yaml",
            &service("catalog", "http", &[(fast.addr, 1), (slow.addr, 1)], None),
        ),
        (
            "p.yaml",
            &policy("rr", "catalog", "  loadBalancer: {type: RoundRobin}\n"),
        ),
    ]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let rs = burst(p.outbound, "catalog", 200, 4).await;
    let slow_n = by_app(&rs).get("slow").copied().unwrap_or(0);
    assert!((90..=110).contains(&slow_n), "round robin: {slow_n} of 200");
}

#[tokio::test]
async fn an_erroring_endpoint_is_weighted_down_and_retries_hide_it() {
    let good1 = app("good1", &[]).await;
    let good2 = app("good2", &[]).await;
    let bad = app(
        "bad",
        &[
            "--biz-error-share",
            "0.5",
            "--biz-error-header",
            "x-biz-code:5003",
        ],
    )
    .await;
    let dir = config_dir(&[
        (
            "svc.yaml",
            &service(
                "catalog",
                "http",
                &[(good1.addr, 1), (good2.addr, 1), (bad.addr, 1)],
                None,
            ),
        ),
        (
            "p.yaml",
            &policy(
                "biz",
                "catalog",
                "  loadBalancer: {type: RoundRobin}\n  failureCodes:\n    http: [\"5xx\"]\n    header: {name: x-biz-code, values: [\"5003\"]}\n  retry: {maxRetries: 2, backoff: {base: 1ms, max: 5ms}}\n  budget: {percent: 50, minPerSecond: 100}\n",
            ),
        ),
    ]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let bad_label = format!("endpoint=\"{}\"", bad.addr);
    let start = Instant::now();
    // Round robin would keep a third on it; its weight ratio falls instead.
    wait_until(
        "the erroring endpoint is weighted down",
        Duration::from_secs(10),
        || async {
            let _ = burst(p.outbound, "catalog", 30, 3).await;
            let w = p
                .metric(
                    "weft_endpoint_weight_ratio",
                    &["catalog.default", &bad_label],
                )
                .await;
            // 0 when ejected (five failures in a row happen at 50%).
            let listed = p.admin_get("/metrics").await.contains(&format!(
                "weft_endpoint_weight_ratio{{service=\"catalog.default\",{bad_label}}}"
            ));
            (listed && w < 0.2).then_some(())
        },
    )
    .await
    .unwrap();
    let cut_after = start.elapsed();
    let rs = burst(p.outbound, "catalog", 600, 6).await;
    let failed = rs
        .iter()
        .filter(|(r, _)| r.status != 200 || r.header("x-biz-code").is_some())
        .count();
    let counts = by_app(&rs);
    let bad_share = counts.get("bad").copied().unwrap_or(0) as f64 / rs.len() as f64;
    assert!(
        failed <= 1,
        "{failed} of 600 failures reached the client: {counts:?}"
    );
    assert!(bad_share < 0.1, "bad share {bad_share}: {counts:?}");
    assert!(
        p.metric("weft_retries_total", &["catalog.default"]).await > 0.0,
        "retries are counted"
    );
    eprintln!("weighted down after {cut_after:?}; bad share {bad_share:.3}");
}

#[tokio::test]
async fn backups_cut_the_tail_of_a_slow_endpoint() {
    let fast1 = app("fast1", &[]).await;
    let fast2 = app("fast2", &[]).await;
    let slow = app("slow", &["--latency", "300ms"]).await;
    let dir = config_dir(&[
        (
            "svc.yaml",
            &service(
                "catalog",
                "http",
                &[(fast1.addr, 1), (fast2.addr, 1), (slow.addr, 1)],
                None,
            ),
        ),
        (
            "p.yaml",
            &policy(
                "hedge",
                "catalog",
                "  loadBalancer: {type: RoundRobin}\n  hedging: {delay: 20ms, maxAttempts: 2}\n  budget: {percent: 50, minPerSecond: 100}\n",
            ),
        ),
    ]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let rs = burst(p.outbound, "catalog", 90, 3).await;
    let counts = by_app(&rs);
    assert!(rs.iter().all(|(r, _)| r.status == 200), "{counts:?}");
    // Every request the slow endpoint got was answered by a backup instead.
    assert_eq!(counts.get("slow"), None, "{counts:?}");
    let p100 = percentile(&rs, 100.0);
    assert!(p100 < Duration::from_millis(200), "slowest {p100:?}");
    // Every request round robin gave the slow endpoint was won by a backup;
    // the counters are exported on the next 200 ms tick.
    let slow_share = rs.len() as f64 / 3.0;
    wait_until(
        "hedge counters exported",
        Duration::from_secs(5),
        || async {
            let won = p.metric("weft_hedges_total", &["reason=\"won\""]).await;
            (won >= slow_share * 0.6).then_some(())
        },
    )
    .await
    .unwrap();
    let sent = p.metric("weft_hedges_total", &["reason=\"sent\""]).await;
    let won = p.metric("weft_hedges_total", &["reason=\"won\""]).await;
    assert!(sent >= won, "sent {sent}, won {won}");
}

#[tokio::test]
async fn the_budget_bounds_backups_when_everything_is_slow() {
    let a = app("a", &["--latency", "60ms"]).await;
    let b = app("b", &["--latency", "60ms"]).await;
    let dir = config_dir(&[
        (
            "svc.yaml",
            &service("catalog", "http", &[(a.addr, 1), (b.addr, 1)], None),
        ),
        (
            "p.yaml",
            &policy(
                "outage",
                "catalog",
                "  hedging: {delay: 10ms, maxAttempts: 2}\n  budget: {percent: 10, minPerSecond: 1, window: 10s}\n",
            ),
        ),
    ]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let n = 200;
    let started = Instant::now();
    let rs = burst(p.outbound, "catalog", n, 8).await;
    let secs = started.elapsed().as_secs_f64().ceil();
    assert!(rs.iter().all(|(r, _)| r.status == 200));
    let sum = |rs: &[(TestResponse, Duration)]| rs.len() as f64;
    wait_until(
        "hedge counters exported",
        Duration::from_secs(5),
        || async {
            (p.metric("weft_hedges_total", &["reason=\"sent\""]).await > 0.0).then_some(())
        },
    )
    .await
    .unwrap();
    let sent = p.metric("weft_hedges_total", &["reason=\"sent\""]).await;
    // 10% of requests plus 1 a second (the window holds the whole run).
    let allowed = 0.1 * sum(&rs) + secs * 1.0 + 1.0;
    assert!(
        sent <= allowed,
        "{sent} backups for {n} requests over {secs} s (allowed {allowed})"
    );
    let suppressed = p.metric("weft_hedges_suppressed_total", &[]).await;
    assert!(suppressed > 0.0, "the rest were suppressed and counted");
}

/// Requests a test upstream received, and those whose handler was dropped
/// before it answered (the proxy cancelled them).
#[derive(Default)]
struct Seen {
    received: std::sync::atomic::AtomicU64,
    cancelled: std::sync::atomic::AtomicU64,
}

struct Unfinished(std::sync::Arc<Seen>, bool);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0
                .cancelled
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// An upstream answering after `delay`, over HTTP/1.1 and h2c (auto).
async fn counting_upstream(delay: Duration) -> (SocketAddr, std::sync::Arc<Seen>) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        s.received
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let mut guard = Unfinished(s, false);
                        tokio::time::sleep(delay).await;
                        guard.1 = true;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// The losing attempt of a hedged request is cancelled at the upstream:
/// an HTTP/2 stream reset, an HTTP/1.1 connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_losing_attempt_is_cancelled_at_the_upstream() {
    for protocol in ["http", "http2"] {
        let (slow, slow_seen) = counting_upstream(Duration::from_secs(2)).await;
        let (fast, _) = counting_upstream(Duration::ZERO).await;
        let dir = config_dir(&[
            (
                "svc.yaml",
                &service("catalog", protocol, &[(slow, 1), (fast, 1)], None),
            ),
            (
                "p.yaml",
                &policy(
                    "hedge",
                    "catalog",
                    "  loadBalancer: {type: RoundRobin}\n  hedging: {delay: 20ms}\n  budget: {percent: 100, minPerSecond: 100}\n",
                ),
            ),
        ]);
        let p = proxy(dir.path(), "frontend", None, &[]).await;
        let rs = burst(p.outbound, "catalog", 20, 2).await;
        assert!(rs.iter().all(|(r, _)| r.status == 200), "{protocol}");
        assert!(
            percentile(&rs, 100.0) < Duration::from_secs(1),
            "{protocol}: backups answered"
        );
        let received = slow_seen
            .received
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(received >= 5, "{protocol}: round robin sent {received}");
        wait_until(
            &format!("{protocol}: every slow attempt cancelled"),
            Duration::from_secs(5),
            || async {
                let c = slow_seen
                    .cancelled
                    .load(std::sync::atomic::Ordering::Relaxed);
                (c == received).then_some(())
            },
        )
        .await
        .unwrap();
    }
}

/// POST is not sent twice unless the policy says the route is safe to
/// repeat; then its body is replayed intact to the backup.
#[tokio::test]
async fn non_idempotent_requests_are_hedged_only_when_marked_safe() {
    let slow = app("slow", &["--latency", "400ms"]).await;
    let fast = app("fast", &[]).await;
    for (safe, extra) in [(false, ""), (true, ", nonIdempotent: true")] {
        let dir = config_dir(&[
            (
                "svc.yaml",
                &service("catalog", "http", &[(slow.addr, 1), (fast.addr, 1)], None),
            ),
            (
                "p.yaml",
                &policy(
                    "hedge",
                    "catalog",
                    &format!(
                        "  loadBalancer: {{type: RoundRobin}}\n  hedging: {{delay: 20ms{extra}}}\n  budget: {{percent: 100, minPerSecond: 100}}\n"
                    ),
                ),
            ),
        ]);
        let p = proxy(dir.path(), "frontend", None, &[]).await;
        let client = HttpClient::http1();
        let mut slowest = Duration::ZERO;
        for i in 0..6 {
            let body = format!("order-{i}");
            let t = Instant::now();
            let r = client
                .post(p.outbound, "catalog", "/orders", body.clone())
                .await
                .unwrap();
            slowest = slowest.max(t.elapsed());
            assert_eq!(r.status, 200);
            assert_eq!(r.text(), body, "the body arrives intact (replayed: {safe})");
        }
        if safe {
            assert!(slowest < Duration::from_millis(300), "hedged: {slowest:?}");
        } else {
            assert!(
                slowest >= Duration::from_millis(400),
                "not hedged: {slowest:?}"
            );
            wait_until(
                "not-idempotent suppressions counted",
                Duration::from_secs(5),
                || async {
                    let n = p
                        .metric(
                            "weft_hedges_suppressed_total",
                            &["reason=\"not_idempotent\""],
                        )
                        .await;
                    (n >= 6.0).then_some(())
                },
            )
            .await
            .unwrap();
        }
    }
}

/// `--zone` + `loadBalancer.locality`: same-zone endpoints take the traffic
/// while they are healthy.
#[tokio::test]
async fn locality_preference_keeps_traffic_in_the_sidecars_zone() {
    let near = app("near", &[]).await;
    let far = app("far", &[]).await;
    let svc = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: catalog}}\nspec:\n  ports: [{{port: 8080, protocol: http}}]\n  endpoints:\n  - {{address: \"{}\", locality: {{zone: zone-a}}}}\n  - {{address: \"{}\", locality: {{zone: zone-b}}}}\n---\n",
        near.addr, far.addr
    );
    let dir = config_dir(&[
        ("svc.yaml", &svc),
        (
            "p.yaml",
            &policy(
                "zones",
                "catalog",
                "  loadBalancer: {type: LeastRequest, locality: {minHealthyPercent: 70}}\n",
            ),
        ),
    ]);
    let p = proxy(dir.path(), "frontend", None, &["--zone", "zone-a"]).await;
    // One at a time: the local endpoint is never busier than twice the
    // remote one, so nothing spills (under load, spilling is the point).
    let counts = by_app(&burst(p.outbound, "catalog", 100, 1).await);
    assert_eq!(counts.get("near"), Some(&100), "{counts:?}");
    // Without --zone the preference has nothing to compare with.
    let q = proxy(dir.path(), "frontend", None, &[]).await;
    let counts = by_app(&burst(q.outbound, "catalog", 200, 1).await);
    assert!(counts.get("far").copied().unwrap_or(0) > 20, "{counts:?}");
}
