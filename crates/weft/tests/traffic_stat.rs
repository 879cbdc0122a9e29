//! The control plane's traffic view (issue 7): golden metrics per Service
//! and per caller -> callee edge, aggregated from the proxies' own
//! /metrics, served as SMI TrafficMetrics JSON and printed by `weft stat`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use weft_test_support::{HttpClient, WeftProcess, free_addr, wait_until};

fn metric(item: &Value, name: &str) -> f64 {
    item["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["value"].as_f64())
        .unwrap_or(-1.0)
}

/// `weft stat ARGS`: exit status and stdout.
async fn stat(args: &[&str]) -> (bool, String) {
    let mut all = vec!["stat"];
    all.extend_from_slice(args);
    let mut p = WeftProcess::spawn(&weft_bin(), &all).unwrap();
    let status = p.wait_exit(Duration::from_secs(10)).await.unwrap();
    (status.success(), p.logs())
}

#[tokio::test]
async fn stat_shows_each_service_and_its_callers_as_the_proxies_counted() {
    let app = app("catalog", &[]).await;
    let dir = config_dir(&[(
        "mesh.yaml",
        &(service("catalog", "http", &[(app.addr, 1)], None)
            + &service("frontend", "http", &[], None)
            + &service("checkout", "http", &[], None)),
    )]);
    let control = control_plane_with(dir.path(), &["--traffic-interval", "200ms"]).await;
    let (xds, admin) = (control.xds, control.admin);
    let f1 = xds_sidecar(xds, "frontend-1", "frontend").await;
    let f2 = xds_sidecar(xds, "frontend-2", "frontend").await;
    let c = xds_sidecar(xds, "checkout-1", "checkout").await;
    let client = HttpClient::http1();
    // Every proxy scraped once before the traffic: the window counts it all.
    wait_until("first scrapes", READY, || async {
        let (ok, out) = stat(&["--control", &admin.to_string(), "--json"]).await;
        let v: Value = serde_json::from_str(out.trim()).ok()?;
        (ok && v["kind"] == "TrafficMetricsList").then_some(())
    })
    .await
    .unwrap();
    for (proxy, path, n, status) in [
        (&f1, "/", 30, 200),
        (&f1, "/status/500", 10, 500),
        (&f2, "/", 20, 200),
        (&c, "/", 5, 200),
    ] {
        for _ in 0..n {
            let r = client.get(proxy.outbound, "catalog", path).await.unwrap();
            assert_eq!(r.status, status);
        }
    }

    let admin_s = admin.to_string();
    let want = |v: &Value| {
        let items = v["items"].as_array()?;
        let find = |caller: Option<&str>| {
            items.iter().find(|i| {
                i["resource"]["name"] == "catalog"
                    && match caller {
                        None => i["edge"].is_null(),
                        Some(c) => i["edge"]["resource"]["name"] == c,
                    }
            })
        };
        let all = find(None)?;
        let frontend = find(Some("frontend"))?;
        let checkout = find(Some("checkout"))?;
        let got = [
            (metric(all, "success_count"), metric(all, "failure_count")),
            (
                metric(frontend, "success_count"),
                metric(frontend, "failure_count"),
            ),
            (
                metric(checkout, "success_count"),
                metric(checkout, "failure_count"),
            ),
        ];
        (got == [(55.0, 10.0), (50.0, 10.0), (5.0, 0.0)]).then_some(())
    };
    let last = std::sync::Mutex::new(String::new());
    let seen = wait_until("the traffic view counts what was sent", READY, || async {
        let (_, out) = stat(&[
            "catalog",
            "--control",
            &admin_s,
            "--json",
            "--window",
            "60s",
        ])
        .await;
        *last.lock().unwrap() = out.clone();
        want(&serde_json::from_str(out.trim()).ok()?)
    })
    .await;
    assert!(seen.is_ok(), "{}", last.lock().unwrap());
    let v: Value = serde_json::from_str(last.lock().unwrap().trim()).unwrap();
    let all = &v["items"][0];
    assert_eq!(v["apiVersion"], "metrics.smi-spec.io/v1alpha1");
    assert_eq!(all["window"], "60s");
    let p99 = metric(all, "p99_response_latency");
    assert!(p99 > 0.0 && p99 < 1000.0, "p99 {p99} ms");
    assert!((metric(all, "success_rate") - 55.0 / 65.0).abs() < 1e-9);

    // The table a user reads.
    let (ok, table) = stat(&["catalog", "--control", &admin_s, "--window", "60s"]).await;
    assert!(ok, "{table}");
    assert!(table.contains("catalog.default"), "{table}");
    assert!(
        table.contains("frontend.default -> catalog.default"),
        "{table}"
    );
    assert!(
        table.contains("checkout.default -> catalog.default"),
        "{table}"
    );
    assert!(
        table.contains("source: proxies (direct scraping)"),
        "{table}"
    );
    assert!(table.contains("84.62%"), "55 of 65: {table}");

    // A bad window is named; an unreachable control plane too.
    let (ok, out) = stat(&["--control", &admin_s, "--window", "10m"]).await;
    assert!(!ok && out.contains("window"), "{out}");
    let (ok, out) = stat(&["--control", &free_addr().to_string()]).await;
    assert!(!ok && out.contains("control plane admin"), "{out}");
}
