//! Issue 6 on the outbound path: a route's drop ratio (and its dry run),
//! denied callers, and injected faults aimed with a header.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use weft_test_support::{HttpClient, wait_until};

fn policy(body: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: flow}}\nspec:\n  targetRefs: [{{kind: Service, name: catalog}}]\n{body}"
    )
}

async fn statuses(p: &Proxy, n: usize, header: Option<(&str, &str)>) -> Vec<(u16, Option<String>)> {
    let client = HttpClient::http1();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut b = Request::get("/").header("host", "catalog");
        if let Some((k, v)) = header {
            b = b.header(k, v);
        }
        let r = client
            .send_to(p.outbound, b.body(Full::<Bytes>::default()).unwrap())
            .await
            .unwrap();
        out.push((r.status.as_u16(), r.header("weft-error").map(str::to_owned)));
    }
    out
}

#[tokio::test]
async fn a_drop_ratio_drops_its_share_and_dry_run_only_counts() {
    let a = app("a", &[]).await;
    for (dry, extra) in [(false, ""), (true, ", dryRun: true")] {
        let dir = config_dir(&[
            (
                "svc.yaml",
                &service("catalog", "http", &[(a.addr, 1)], None),
            ),
            (
                "p.yaml",
                &policy(&format!("  admission: {{dropRatio: 0.3{extra}}}\n")),
            ),
        ]);
        let p = proxy(dir.path(), "frontend", None, &[]).await;
        let n = 600;
        let rs = statuses(&p, n, None).await;
        let dropped = rs
            .iter()
            .filter(|(s, e)| *s == 503 && e.as_deref() == Some("dropped"))
            .count();
        let reason = if dry { "dropped_dry_run" } else { "dropped" };
        let counted = p
            .metric(
                "weft_admission_refused_total",
                &[&format!("reason=\"{reason}\"")],
            )
            .await as usize;
        if dry {
            assert_eq!(dropped, 0, "dry run drops nothing");
        } else {
            assert_eq!(counted, dropped, "every drop is counted");
            assert_eq!(
                rs.len() - dropped,
                rs.iter().filter(|(s, _)| *s == 200).count()
            );
        }
        // 0.3 of 600 = 180, sd ~11: within 4 sd.
        let share = counted as f64 / n as f64;
        assert!((share - 0.3).abs() < 0.075, "{reason}: {counted} of {n}");
    }
}

#[tokio::test]
async fn a_denied_caller_is_refused_and_others_pass() {
    let a = app("a", &[]).await;
    let dir = config_dir(&[
        (
            "svc.yaml",
            &service("catalog", "http", &[(a.addr, 1)], None),
        ),
        ("p.yaml", &policy("  admission: {deniedSources: [batch]}\n")),
    ]);
    let batch = proxy(dir.path(), "batch", None, &[]).await;
    let web = proxy(dir.path(), "web", None, &[]).await;
    let rs = statuses(&batch, 5, None).await;
    assert!(
        rs.iter()
            .all(|(s, e)| *s == 403 && e.as_deref() == Some("denied")),
        "{rs:?}"
    );
    assert!(statuses(&web, 5, None).await.iter().all(|(s, _)| *s == 200));
}

#[tokio::test]
async fn faults_hit_only_requests_with_the_header() {
    let a = app("a", &[]).await;
    let dir = config_dir(&[
        (
            "svc.yaml",
            &service("catalog", "http", &[(a.addr, 1)], None),
        ),
        (
            "p.yaml",
            &policy(
                "  fault:\n    delay: {fixed: 60ms, percent: 100}\n    abort: {httpStatus: 418, percent: 100}\n    headers: [{name: x-chaos, value: \"on\"}]\n",
            ),
        ),
    ]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    assert!(statuses(&p, 10, None).await.iter().all(|(s, _)| *s == 200));
    let t = Instant::now();
    let rs = statuses(&p, 3, Some(("x-chaos", "on"))).await;
    assert!(
        t.elapsed() >= Duration::from_millis(180),
        "delayed: {:?}",
        t.elapsed()
    );
    assert!(
        rs.iter()
            .all(|(s, e)| *s == 418 && e.as_deref() == Some("fault-injected")),
        "{rs:?}"
    );
    assert!(
        statuses(&p, 3, Some(("x-chaos", "off")))
            .await
            .iter()
            .all(|(s, _)| *s == 200)
    );
    wait_until("faults counted", Duration::from_secs(5), || async {
        let d = p
            .metric("weft_faults_injected_total", &["reason=\"delay\""])
            .await;
        let a = p
            .metric("weft_faults_injected_total", &["reason=\"abort\""])
            .await;
        (d == 3.0 && a == 3.0).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_local_rate_limit_answers_429_with_when_to_come_back() {
    let a = app("a", &[]).await;
    let dir = config_dir(&[
        (
            "svc.yaml",
            &service("catalog", "http", &[(a.addr, 1)], None),
        ),
        (
            "p.yaml",
            &policy("  rateLimit: {local: {requestsPerSecond: 2, burst: 3}}\n"),
        ),
    ]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let client = HttpClient::http1();
    let mut ok = 0;
    let mut limited = Vec::new();
    for _ in 0..10 {
        let r = client.get(p.outbound, "catalog", "/").await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            429 => limited.push(r),
            s => panic!("status {s}"),
        }
    }
    // A burst of 3, then 2/s: ten quick requests get 3 (or 4 if a token
    // came back meanwhile).
    assert!((3..=4).contains(&ok), "{ok} allowed");
    let r = &limited[0];
    assert_eq!(r.header("weft-error"), Some("rate-limited"));
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().unwrap() >= 1)
    );
    assert_eq!(
        p.metric("weft_admission_refused_total", &["reason=\"rate_limited\""])
            .await as usize,
        limited.len()
    );
}
