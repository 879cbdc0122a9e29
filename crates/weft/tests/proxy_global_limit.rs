//! Issue 6, global rate limits: the control plane serves Envoy's
//! RateLimitService on its xDS port; weft proxies lease quota from it in
//! batches, Envoy asks per request, and together they stay within the
//! limit.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use weft_test_support::{HttpClient, free_addr, wait_until};

fn global_policy(limit: u32, failure_mode: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: shared}}\nspec:\n  targetRefs: [{{kind: Service, name: catalog}}]\n  rateLimit: {{global: {{requestsPerUnit: {limit}, unit: second, failureMode: {failure_mode}}}}}\n"
    )
}

/// Waits for the start of the next whole second (the service's windows
/// are aligned to unix seconds): a wait for the clock, not for state.
async fn next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_nanos(u64::from(now.subsec_nanos()));
    tokio::time::sleep(Duration::from_secs(1) - into + Duration::from_millis(5)).await;
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    limited: AtomicU64,
    other: AtomicU64,
}

/// Sends GETs to `catalog` through `via` at `rate` per second for `secs`
/// whole seconds, open loop (a request every 1/rate, not waiting for the
/// previous one).
async fn drive(via: SocketAddr, rate: u32, secs: u64, tally: Arc<Tally>) {
    let client = HttpClient::http1();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = tokio::task::JoinSet::new();
    for _ in 0..(u64::from(rate) * secs) {
        tick.tick().await;
        let (client, tally) = (client.clone(), tally.clone());
        inflight.spawn(async move {
            let counter = match client.get(via, "catalog", "/").await {
                Ok(r) if r.status == 200 => &tally.ok,
                Ok(r) if r.status == 429 => &tally.limited,
                _ => &tally.other,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
    while inflight.join_next().await.is_some() {}
}

#[tokio::test]
async fn three_proxies_at_three_times_a_global_limit_admit_the_limit() {
    const LIMIT: u32 = 100;
    const SECS: u64 = 5;
    let a = app("a", &[]).await;
    let dir = config_dir(&[
        (
            "svc.yaml",
            &service("catalog", "http", &[(a.addr, 1)], None),
        ),
        ("p.yaml", &global_policy(LIMIT, "open")),
    ]);
    let cp = control_plane(dir.path()).await;
    let rls = cp.xds.to_string();
    let mut proxies = Vec::new();
    for name in ["frontend", "checkout", "search"] {
        proxies.push(proxy(dir.path(), name, None, &["--ratelimit", &rls]).await);
    }
    // Warm up (connections, first leases), then whole windows only.
    for p in &proxies {
        let r = HttpClient::http1()
            .get(p.outbound, "catalog", "/")
            .await
            .unwrap();
        assert!(r.status == 200 || r.status == 429, "{}", r.status);
    }
    next_second().await;
    let tallies: Vec<Arc<Tally>> = (0..3).map(|_| Arc::default()).collect();
    let mut runs = tokio::task::JoinSet::new();
    for (p, t) in proxies.iter().zip(&tallies) {
        runs.spawn(drive(p.outbound, LIMIT, SECS, t.clone()));
    }
    while runs.join_next().await.is_some() {}

    let ok: Vec<u64> = tallies
        .iter()
        .map(|t| t.ok.load(Ordering::Relaxed))
        .collect();
    let limited: u64 = tallies
        .iter()
        .map(|t| t.limited.load(Ordering::Relaxed))
        .sum();
    let other: u64 = tallies
        .iter()
        .map(|t| t.other.load(Ordering::Relaxed))
        .sum();
    let admitted: u64 = ok.iter().sum();
    let want = u64::from(LIMIT) * SECS;
    eprintln!(
        "admitted {admitted} (per proxy {ok:?}) of {} sent, limited {limited}, other {other}; limit {want}",
        want * 3
    );
    assert_eq!(other, 0, "only 200 and 429 answers");
    // Within 5% of the limit over whole windows (the last requests may
    // spill into the next window, which is why the bound is two-sided).
    let err = (admitted as f64 - want as f64).abs() / want as f64;
    assert!(
        err <= 0.05,
        "admitted {admitted}, limit {want}: off by {:.1}%",
        err * 100.0
    );
    for (i, n) in ok.iter().enumerate() {
        assert!(
            *n >= want / 10,
            "proxy {i} got {n} of {admitted}: the limit is shared"
        );
    }
    // Leases, not a call per request: far fewer batches than requests.
    let mut batches = 0.0;
    let mut leased = 0.0;
    for p in &proxies {
        batches += p
            .metric(
                "weft_global_rate_limit_events_total",
                &["outcome=\"batches\""],
            )
            .await;
        leased += p
            .metric(
                "weft_global_rate_limit_events_total",
                &["outcome=\"leased\""],
            )
            .await;
    }
    assert!(
        batches * 4.0 < (admitted + limited) as f64,
        "{batches} batches for {} requests",
        admitted + limited
    );
    assert!(
        leased >= admitted as f64,
        "leased {leased}, admitted {admitted}"
    );
    // The refusal tells the caller about the limit: ask until the window
    // is spent (at most one window's worth and a few more).
    let client = HttpClient::http1();
    let mut refused = None;
    for _ in 0..(LIMIT + 20) {
        let r = client
            .get(proxies[0].outbound, "catalog", "/")
            .await
            .unwrap();
        if r.status == 429 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a spent window refuses");
    assert_eq!(r.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(r.header("weft-error"), Some("rate-limited"));
    assert_eq!(r.header("retry-after"), Some("1"), "a 1 s window");
}

#[tokio::test]
async fn an_unreachable_service_fails_open_or_closed_as_configured() {
    let a = app("a", &[]).await;
    // Nothing listens here.
    let nowhere = free_addr().to_string();
    let mut results = BTreeMap::new();
    for mode in ["open", "closed"] {
        let dir = config_dir(&[
            (
                "svc.yaml",
                &service("catalog", "http", &[(a.addr, 1)], None),
            ),
            ("p.yaml", &global_policy(1000, mode)),
        ]);
        let p = proxy(dir.path(), "frontend", None, &["--ratelimit", &nowhere]).await;
        let client = HttpClient::http1();
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(
                client
                    .get(p.outbound, "catalog", "/")
                    .await
                    .unwrap()
                    .status
                    .as_u16(),
            );
        }
        let counted = p
            .metric(
                "weft_global_rate_limit_events_total",
                &[&format!("outcome=\"failed_{mode}\"")],
            )
            .await;
        let errors = p
            .metric(
                "weft_global_rate_limit_events_total",
                &["outcome=\"service_errors\""],
            )
            .await;
        assert!(errors >= 1.0, "{mode}: the failed call is counted");
        // One call per second at most while the service is down.
        assert!(errors <= 2.0, "{mode}: {errors} calls for 20 requests");
        assert_eq!(
            counted, 20.0,
            "{mode}: every request decided by the failure mode"
        );
        results.insert(mode, statuses);
    }
    assert!(
        results["open"].iter().all(|s| *s == 200),
        "{:?}",
        results["open"]
    );
    assert!(
        results["closed"].iter().all(|s| *s == 429),
        "{:?}",
        results["closed"]
    );
}

#[tokio::test]
async fn envoy_asks_the_control_plane_and_shares_the_limit_with_weft() {
    let Some(bin) = external_tool("WEFT_ENVOY", "an Envoy binary") else {
        return;
    };
    let a = app("a", &[]).await;
    // A minute's limit: the whole test fits in one window or two.
    let policy = "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: shared}\nspec:\n  targetRefs: [{kind: Service, name: catalog}]\n  rateLimit: {global: {requestsPerUnit: 40, unit: minute}}\n";
    let dir = config_dir(&[
        (
            "svc.yaml",
            &service("catalog", "http", &[(a.addr, 1)], None),
        ),
        ("p.yaml", policy),
    ]);
    let cp = control_plane(dir.path()).await;
    let envoy = ads_envoy(&bin, "envoy-rl", "frontend", cp.xds, true).await;
    let outbound: SocketAddr = format!("127.0.0.1:{}", cp.outbound_port).parse().unwrap();
    let client = HttpClient::http1();
    // The first admitted request is the readiness probe below.
    let minute = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
    };
    let started = minute();
    wait_until("envoy routes catalog", READY, || async {
        client
            .get(outbound, "catalog", "/")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await
    .unwrap();
    let w = proxy(
        dir.path(),
        "checkout",
        None,
        &["--ratelimit", &cp.xds.to_string()],
    )
    .await;
    // Alternate Envoy and weft until both are refused.
    let (mut ok, mut envoy_429, mut weft_429) = (1u32, 0u32, 0u32);
    for _ in 0..60 {
        for (via, refused) in [(outbound, &mut envoy_429), (w.outbound, &mut weft_429)] {
            let r = client.get(via, "catalog", "/").await.unwrap();
            match r.status.as_u16() {
                200 => ok += 1,
                429 => *refused += 1,
                s => panic!("unexpected {s}"),
            }
        }
    }
    eprintln!("ok {ok}, envoy refused {envoy_429}, weft refused {weft_429}");
    // 40 a minute between them (a minute boundary during the test adds at
    // most one more window's worth).
    if minute() == started {
        assert_eq!(ok, 40, "one window");
    } else {
        assert!((40..=80).contains(&ok), "admitted {ok}");
    }
    assert!(envoy_429 > 0 && weft_429 > 0, "both are limited");
    assert!(envoy.stat("ratelimit.over_limit").await >= 1.0);
    let r = client.get(outbound, "catalog", "/").await.unwrap();
    assert_eq!(r.status, 429);
    assert!(
        r.header("x-ratelimit-limit").is_some(),
        "Envoy adds the draft headers"
    );
}

#[tokio::test]
async fn a_per_source_limit_gives_each_calling_service_its_own_budget() {
    let a = app("a", &[]).await;
    let policy = "apiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: each}\nspec:\n  targetRefs: [{kind: Service, name: catalog}]\n  rateLimit: {global: {requestsPerUnit: 6, unit: minute, perSource: true}}\n";
    let dir = config_dir(&[
        (
            "svc.yaml",
            &service("catalog", "http", &[(a.addr, 1)], None),
        ),
        ("p.yaml", policy),
    ]);
    let cp = control_plane(dir.path()).await;
    let rls = cp.xds.to_string();
    // Two instances of frontend share frontend's budget; checkout has its own.
    let f1 = proxy(dir.path(), "frontend", None, &["--ratelimit", &rls]).await;
    let f2 = proxy(dir.path(), "frontend", None, &["--ratelimit", &rls]).await;
    let c = proxy(dir.path(), "checkout", None, &["--ratelimit", &rls]).await;
    let minute = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
    };
    let started = minute();
    let client = HttpClient::http1();
    let (mut frontend, mut checkout) = (0, 0);
    for _ in 0..10 {
        for (p, is_frontend) in [(&f1, true), (&f2, true), (&c, false)] {
            let r = client.get(p.outbound, "catalog", "/").await.unwrap();
            assert!(r.status == 200 || r.status == 429, "{}", r.status);
            let n = if is_frontend {
                &mut frontend
            } else {
                &mut checkout
            };
            *n += u32::from(r.status == 200);
        }
    }
    eprintln!("frontend (2 instances) {frontend} of 20, checkout {checkout} of 10");
    if minute() == started {
        assert_eq!((frontend, checkout), (6, 6));
    } else {
        // A minute boundary passed: at most one more window each.
        assert!((6..=12).contains(&frontend) && (6..=12).contains(&checkout));
    }
}
