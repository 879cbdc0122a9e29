//! The service through its gRPC API, counting in memory: the standalone
//! `weft_ratelimit::start` (config directory, admin port) and the protocol
//! cases a client sees.

mod support;

use std::time::Duration;

use support::*;
use weft_ratelimit::proto::Code;
use weft_ratelimit::{RateLimitOptions, RunningRateLimit};
use weft_test_support::{TempDir, http_get, wait_until};

const SERVICE: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  endpoints: [{address: "127.0.0.1:9001"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: inventory}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  endpoints: [{address: "127.0.0.1:9002"}]
"#;

fn policy(name: &str, target: &str, global: &str) -> String {
    format!(
        "---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}}}\nspec:\n  targetRefs: [{{kind: Service, name: {target}}}]\n  rateLimit: {{global: {global}}}\n"
    )
}

fn write_config(dir: &TempDir, policies: &str) {
    std::fs::write(dir.join("mesh.yaml"), format!("{SERVICE}{policies}")).unwrap();
}

async fn start(dir: &TempDir) -> RunningRateLimit {
    let mut opts = RateLimitOptions::new(dir.path());
    opts.listen = "127.0.0.1:0".parse().unwrap();
    opts.admin = "127.0.0.1:0".parse().unwrap();
    opts.reload_interval = Duration::from_millis(50);
    weft_ratelimit::start(opts).await.unwrap()
}

fn two_limits() -> String {
    policy(
        "per-second",
        "catalog",
        "{requestsPerUnit: 10, unit: second, failureMode: open}",
    ) + &policy(
        "lease",
        "inventory",
        "{requestsPerUnit: 10, unit: minute, failureMode: closed}",
    )
}

#[tokio::test]
async fn fifteen_single_hits_in_one_second_admit_exactly_ten() {
    let dir = TempDir::new("weft-rl").unwrap();
    write_config(&dir, &two_limits());
    let running = start(&dir).await;
    let client = client(running.listen_addr()).await;

    let codes = in_one_window(1, Duration::from_millis(700), || {
        let mut client = client.clone();
        async move {
            let mut codes = Vec::new();
            for _ in 0..15 {
                codes.push(ask(&mut client, request("default/per-second", 1)).await);
            }
            codes
        }
    })
    .await;
    let ok = codes.iter().filter(|r| is_ok(r)).count();
    assert_eq!(ok, 10, "{codes:#?}");
    // The first ten pass, the rest are refused with a retry-after.
    assert!(codes[..10].iter().all(is_ok));
    for r in &codes[10..] {
        assert_eq!(r.statuses[0].code, Code::OverLimit as i32);
        assert_eq!(header(r, "retry-after"), Some("1"));
        let limit = r.statuses[0].current_limit.as_ref().unwrap();
        assert_eq!(limit.name, "default/per-second");
        assert_eq!(limit.requests_per_unit, 10);
    }

    // Admin: ready, and the decisions counted.
    let (status, _, _) = http_get(running.admin_addr(), "admin", "/ready")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (_, _, body) = http_get(running.admin_addr(), "admin", "/metrics")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        metric(
            &text,
            "weft_ratelimit_decisions_total{descriptor=\"default/per-second\",decision=\"over_limit\"}"
        )
        .is_some_and(|n| n >= 5.0),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
    running.shutdown().await;
}

#[tokio::test]
async fn a_lease_of_eight_then_eight_gets_eight_then_two() {
    let dir = TempDir::new("weft-rl").unwrap();
    write_config(&dir, &two_limits());
    let running = start(&dir).await;
    let client = client(running.listen_addr()).await;

    let (first, second) = in_one_window(60, Duration::from_secs(2), || {
        let mut client = client.clone();
        async move {
            let first = ask(&mut client, request("default/lease", 8)).await;
            let second = ask(&mut client, request("default/lease", 8)).await;
            (first, second)
        }
    })
    .await;
    assert!(is_ok(&first));
    assert_eq!(granted(&first), 8);
    assert_eq!(first.statuses[0].limit_remaining, 2);
    assert_eq!(second.statuses[0].code, Code::OverLimit as i32);
    assert_eq!(granted(&second), 2, "the partial grant rides on OVER_LIMIT");
    assert_eq!(
        second.statuses[0].quota.as_ref().unwrap().id,
        "default/lease"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn unknown_descriptors_pass_and_an_empty_domain_is_invalid() {
    let dir = TempDir::new("weft-rl").unwrap();
    write_config(&dir, &two_limits());
    let running = start(&dir).await;
    let mut client = client(running.listen_addr()).await;

    for _ in 0..20 {
        let r = ask(&mut client, request("default/no-such-policy", 5)).await;
        assert!(is_ok(&r));
        assert!(r.statuses[0].current_limit.is_none());
    }
    let mut empty = request("default/lease", 1);
    empty.domain.clear();
    let status = client.should_rate_limit(empty).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("domain"), "{}", status.message());
    running.shutdown().await;
}

#[tokio::test]
async fn config_changes_apply_and_a_broken_config_keeps_the_last_good_limits() {
    let dir = TempDir::new("weft-rl").unwrap();
    write_config(&dir, &two_limits());
    let running = start(&dir).await;
    let mut client = client(running.listen_addr()).await;
    let limit_of = |r: &weft_ratelimit::proto::RateLimitResponse| {
        r.statuses[0]
            .current_limit
            .as_ref()
            .map(|l| l.requests_per_unit)
    };

    // Raise the lease limit: the next answers carry it.
    write_config(
        &dir,
        &policy(
            "lease",
            "inventory",
            "{requestsPerUnit: 500, unit: hour, failureMode: closed}",
        ),
    );
    wait_until("the new limit", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { limit_of(&ask(&mut client, request("default/lease", 1)).await) == Some(500) }
    })
    .await
    .unwrap();
    let gone = ask(&mut client, request("default/per-second", 1)).await;
    assert_eq!(limit_of(&gone), None, "a removed limit no longer limits");

    // A broken directory: the last good limits stay, and /status says why.
    std::fs::write(dir.join("broken.yaml"), "kind: TrafficPolicy\nspec: [").unwrap();
    wait_until(
        "the broken file to be rejected",
        Duration::from_secs(10),
        || std::future::ready(running.last_error()),
    )
    .await
    .unwrap();
    assert_eq!(running.server().limits().len(), 1);
    assert_eq!(
        limit_of(&ask(&mut client, request("default/lease", 1)).await),
        Some(500)
    );
    let (_, _, body) = http_get(running.admin_addr(), "admin", "/status")
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("broken.yaml"),
        "{status}"
    );
    assert_eq!(status["limits"][0]["descriptor"], "default/lease");
    assert_eq!(status["store"], "in memory");

    // Fixed: the error clears.
    std::fs::remove_file(dir.join("broken.yaml")).unwrap();
    wait_until("the error to clear", Duration::from_secs(10), || {
        std::future::ready(running.last_error().is_none())
    })
    .await
    .unwrap();
    running.shutdown().await;
}
