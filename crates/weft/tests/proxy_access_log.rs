//! Access logs (`--access-log`, issue 7) and the caller label of inbound
//! metrics, with the real binary: a frontend sidecar calling catalog
//! through catalog's sidecar, and a pricing app that fails.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use weft_test_support::{HttpClient, TempDir, WeftProcess, wait_until};

/// The JSON lines of an access log (none while the file is missing).
fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Polls until `path` holds `n` lines (bounded), then returns them.
async fn wait_lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let what = format!("{n} lines in {}", path.display());
    wait_until(&what, Duration::from_secs(10), || async {
        let got = log_lines(path);
        (got.len() >= n).then_some(got)
    })
    .await
    .unwrap()
}

/// A latency histogram's series matching every part: cumulative buckets
/// (upper bound, count) in order, `_count` and `_sum`.
async fn histogram(p: &Proxy, parts: &[&str]) -> (Vec<(f64, f64)>, f64, f64) {
    let text = p.admin_get("/metrics").await;
    let name = "weft_request_duration_seconds";
    let matching = |suffix: &str| {
        let prefix = format!("{name}{suffix}{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix) && parts.iter().all(|p| l.contains(p)))
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    let value = |l: &str| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    let mut buckets: Vec<(f64, f64)> = matching("_bucket")
        .iter()
        .map(|l| {
            let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, value(l))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let one = |suffix: &str| {
        let m = matching(suffix);
        assert_eq!(m.len(), 1, "{suffix}: {m:?}");
        value(&m[0])
    };
    (buckets, one("_count"), one("_sum"))
}

/// The histogram of `parts` counted `n` requests, consistently: buckets
/// cumulative, the last (+Inf) and `_count` both `n`, the sum within the
/// slowest bucket's bound.
async fn assert_histogram_counts(p: &Proxy, parts: &[&str], n: f64) {
    let (buckets, count, sum) = histogram(p, parts).await;
    assert!(buckets.len() > 10, "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "not cumulative: {buckets:?}"
    );
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, n), "{parts:?}");
    assert_eq!(count, n, "{parts:?}");
    assert!(sum > 0.0 && sum < n * 1.0, "sum {sum} of {n} requests");
}

struct Mesh {
    _dirs: (TempDir, TempDir),
    _apps: (App, App),
    catalog_app: std::net::SocketAddr,
    catalog: Proxy,
    frontend: Proxy,
}

/// catalog's app behind its sidecar (`catalog_extra`), pricing's app that
/// answers 503, and a frontend sidecar (`frontend_extra`) that calls both.
async fn mesh(catalog_extra: &[&str], frontend_extra: &[&str]) -> Mesh {
    let catalog_app = app("catalog", &[]).await;
    let pricing_app = app("pricing", &["--error-rate", "1", "--error-status", "503"]).await;
    let catalog_dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(catalog_app.addr, 1)], None),
    )]);
    let catalog = proxy(
        catalog_dir.path(),
        "catalog",
        Some(catalog_app.addr),
        catalog_extra,
    )
    .await;
    let frontend_dir = config_dir(&[(
        "svc.yaml",
        &(service("catalog", "http", &[(catalog.inbound, 1)], None)
            + &service("pricing", "http", &[(pricing_app.addr, 1)], None)),
    )]);
    let frontend = proxy(frontend_dir.path(), "frontend", None, frontend_extra).await;
    Mesh {
        catalog_app: catalog_app.addr,
        _dirs: (catalog_dir, frontend_dir),
        _apps: (catalog_app, pricing_app),
        catalog,
        frontend,
    }
}

async fn get(via: std::net::SocketAddr, host: &str, request_id: &str) -> u16 {
    let req = http::Request::get("/items?x=1")
        .header("host", host)
        .header("x-request-id", request_id)
        .header("user-agent", "access-log-test")
        .body(http_body_util::Full::default())
        .unwrap();
    HttpClient::http1()
        .send_to(via, req)
        .await
        .unwrap()
        .status
        .as_u16()
}

/// Every request gets a line with what a user looks for; the two hops'
/// lines of one request share its trace id; the inbound side counts
/// requests by the calling Service.
#[tokio::test]
async fn every_request_is_logged_on_both_hops_and_inbound_counts_its_callers() {
    let logs = TempDir::new("weft-access-log").unwrap();
    let (out_log, in_log) = (logs.join("frontend.log"), logs.join("catalog.log"));
    let m = mesh(
        &["--access-log", in_log.to_str().unwrap()],
        &["--access-log", out_log.to_str().unwrap()],
    )
    .await;
    for i in 0..20 {
        assert_eq!(
            get(m.frontend.outbound, "catalog", &format!("ok-{i}")).await,
            200
        );
    }
    for i in 0..5 {
        assert_eq!(
            get(m.frontend.outbound, "pricing", &format!("fail-{i}")).await,
            503
        );
    }
    assert_eq!(get(m.frontend.outbound, "nowhere", "lost").await, 404);

    let out = wait_lines(&out_log, 26).await;
    let inbound = wait_lines(&in_log, 20).await;
    assert_eq!(out.len(), 26, "{out:#?}");
    assert_eq!(inbound.len(), 20, "{inbound:#?}");

    let by_id = |lines: &[serde_json::Value], id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no line for {id}"))
            .clone()
    };
    for i in 0..20 {
        let id = format!("ok-{i}");
        let o = by_id(&out, &id);
        assert_eq!(o["direction"], "outbound");
        assert_eq!(o["source"], "frontend.default");
        assert_eq!(o["service"], "catalog.default");
        assert_eq!(o["method"], "GET");
        assert_eq!(o["path"], "/items?x=1");
        assert_eq!(o["authority"], "catalog");
        assert_eq!(o["protocol"], "HTTP/1.1");
        assert_eq!(o["response_code"], 200);
        assert_eq!(o["grpc_status"], serde_json::Value::Null);
        assert_eq!(o["error"], serde_json::Value::Null);
        assert_eq!(o["response_end"], "complete");
        assert_eq!(o["upstream_host"], m.catalog.inbound.to_string());
        assert_eq!(o["user_agent"], "access-log-test");
        assert!(o["bytes_sent"].as_u64().unwrap() > 0, "{o}");
        let (h, d) = (
            o["headers_ms"].as_f64().unwrap(),
            o["duration_ms"].as_f64().unwrap(),
        );
        assert!(h > 0.0 && d >= h, "{o}");
        let i = by_id(&inbound, &id);
        assert_eq!(i["direction"], "inbound");
        assert_eq!(i["source"], "frontend.default");
        assert_eq!(i["service"], "catalog.default");
        assert_eq!(i["upstream_host"], m.catalog_app.to_string());
        assert_eq!(i["bytes_sent"], o["bytes_sent"]);
        // One trace across the hops.
        assert_eq!(i["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(i["trace_id"], o["trace_id"], "{o}\n{i}");
    }
    for i in 0..5 {
        let o = by_id(&out, &format!("fail-{i}"));
        assert_eq!(o["service"], "pricing.default");
        assert_eq!(o["response_code"], 503);
    }
    let lost = by_id(&out, "lost");
    assert_eq!(lost["response_code"], 404);
    assert_eq!(lost["error"], "no-route");
    assert_eq!(lost["upstream_host"], serde_json::Value::Null);

    // The inbound metrics name the caller; a caller that names itself
    // badly is `unknown`, never a new label value.
    let catalog = &m.catalog;
    let inbound_from = |source: &str| {
        let source = format!("source=\"{source}\"");
        async move {
            catalog
                .metric("weft_requests_total", &["direction=\"inbound\"", &source])
                .await
        }
    };
    assert_eq!(inbound_from("frontend.default").await, 20.0);
    // The latency histograms counted the same requests, on both sides.
    assert_histogram_counts(
        &m.frontend,
        &["direction=\"outbound\"", "service=\"catalog.default\""],
        20.0,
    )
    .await;
    assert_histogram_counts(
        &m.frontend,
        &["direction=\"outbound\"", "service=\"pricing.default\""],
        5.0,
    )
    .await;
    assert_histogram_counts(
        &m.catalog,
        &["direction=\"inbound\"", "source=\"frontend.default\""],
        20.0,
    )
    .await;
    let client = HttpClient::http1();
    for bad in ["Evil<script>", "x y", ""] {
        let req = http::Request::get("/")
            .header("host", "catalog")
            .header("x-weft-source", bad)
            .body(http_body_util::Full::default())
            .unwrap();
        assert_eq!(
            client.send_to(m.catalog.inbound, req).await.unwrap().status,
            200
        );
    }
    assert_eq!(inbound_from("unknown").await, 3.0);
    let metrics = m.catalog.admin_get("/metrics").await;
    assert!(!metrics.contains("Evil"), "{metrics}");
    // And outbound requests carry their source too.
    assert_eq!(
        m.frontend
            .metric(
                "weft_requests_total",
                &[
                    "source=\"frontend.default\"",
                    "service=\"pricing.default\"",
                    "code=\"503\""
                ],
            )
            .await,
        5.0
    );
    // Per endpoint: failures as judged by the Service's failure codes, and
    // the latency the balancer sees (set by its periodic step).
    let pricing_ep = format!("endpoint=\"{}\"", m._apps.1.addr);
    assert_eq!(
        m.frontend
            .metric("weft_endpoint_failures_total", &[&pricing_ep])
            .await,
        5.0
    );
    let catalog_ep = format!("endpoint=\"{}\"", m.catalog.inbound);
    let frontend = &m.frontend;
    let latency = wait_until(
        "catalog's latency estimate",
        Duration::from_secs(10),
        || {
            let catalog_ep = catalog_ep.clone();
            async move {
                let v = frontend
                    .metric("weft_endpoint_latency_seconds", &[&catalog_ep])
                    .await;
                (v > 0.0).then_some(v)
            }
        },
    )
    .await
    .unwrap();
    assert!(latency < 1.0, "{latency}");
    assert_eq!(
        m.frontend
            .metric("weft_endpoint_failures_total", &[&catalog_ep])
            .await,
        0.0
    );
}

/// With sampling, every failure is still logged and about the asked share
/// of successes; only the fields asked for, in their order.
#[tokio::test]
async fn sampling_keeps_every_failure_and_a_share_of_successes() {
    let logs = TempDir::new("weft-access-log").unwrap();
    let path = logs.join("frontend.log");
    let m = mesh(
        &[],
        &[
            "--access-log",
            path.to_str().unwrap(),
            "--access-log-sampling",
            "0.1",
            "--access-log-fields",
            "response_code,service",
        ],
    )
    .await;
    for i in 0..400 {
        get(m.frontend.outbound, "catalog", &i.to_string()).await;
    }
    for i in 0..10 {
        get(m.frontend.outbound, "pricing", &i.to_string()).await;
    }
    // Every failure is there once the last one is (lines keep their order).
    let lines = wait_until(
        "the 10 failures logged",
        Duration::from_secs(10),
        || async {
            let l = log_lines(&path);
            (l.iter().filter(|l| l["response_code"] == 503).count() == 10).then_some(l)
        },
    )
    .await
    .unwrap();
    let ok = lines.iter().filter(|l| l["response_code"] == 200).count();
    // Binomial(400, 0.1): mean 40, sd 6; these bounds are 4 sd out.
    assert!(
        (16..=64).contains(&ok),
        "{ok} of 400 successes logged at 0.1"
    );
    for l in &lines {
        let keys: Vec<_> = l.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["response_code", "service"], "{l}");
    }
    assert_eq!(
        m.frontend.metric("weft_access_log_lines_total", &[]).await,
        lines.len() as f64
    );
}

/// SIGUSR1 reopens the file after it was moved (logrotate); SIGTERM
/// writes every line queued before the proxy exits; bad flags are named.
#[tokio::test]
async fn the_file_is_reopened_on_sigusr1_and_flushed_on_sigterm() {
    let logs = TempDir::new("weft-access-log").unwrap();
    let path = logs.join("frontend.log");
    let mut m = mesh(&[], &["--access-log", path.to_str().unwrap()]).await;
    // The writer runs at the lowest CPU priority, never ahead of requests.
    let pid = m.frontend.proc.pid();
    let nice_of_writer = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            (comm.trim() == "weft-access-log").then(|| {
                let stat = std::fs::read_to_string(t.join("stat")).unwrap();
                // Field 19 (nice), counted after the `(comm)` field.
                let after = stat.rsplit_once(") ").unwrap().1;
                after.split(' ').nth(16).unwrap().to_string()
            })
        })
        .next();
    assert_eq!(nice_of_writer.as_deref(), Some("19"));
    get(m.frontend.outbound, "catalog", "before").await;
    wait_lines(&path, 1).await;
    let rotated = logs.join("frontend.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    let kill = std::process::Command::new("kill")
        .args(["-USR1", &m.frontend.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Requests until one lands in the new file: the reopen is asynchronous.
    let mut sent = 0;
    wait_until(
        "a line in the reopened file",
        Duration::from_secs(10),
        || {
            sent += 1;
            let id = format!("after-{sent}");
            let (via, path) = (m.frontend.outbound, path.clone());
            async move {
                get(via, "catalog", &id).await;
                !log_lines(&path).is_empty()
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(log_lines(&rotated)[0]["request_id"], "before");
    // No line lost across the reopen: every request is in one of the files
    // (the writer drains its queue every 50 ms).
    let both = || log_lines(&path).len() + log_lines(&rotated).len();
    wait_until(
        "every line in one file or the other",
        Duration::from_secs(10),
        || std::future::ready(both() == sent + 1),
    )
    .await
    .unwrap();
    let before_term = both();

    // A burst, then SIGTERM right away: every line is written before exit.
    for i in 0..50 {
        get(m.frontend.outbound, "catalog", &format!("burst-{i}")).await;
    }
    m.frontend.proc.sigterm();
    let status = m
        .frontend
        .proc
        .wait_exit(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let after = log_lines(&path).len() + log_lines(&rotated).len();
    assert_eq!(after, before_term + 50);
}

#[tokio::test]
async fn bad_access_log_flags_are_refused_by_name() {
    let dir = config_dir(&[("svc.yaml", &service("catalog", "http", &[], None))]);
    let cases: [(&[&str], &str); 4] = [
        (
            &["--access-log", "-", "--access-log-fields", "path,statuz"],
            "statuz",
        ),
        (
            &["--access-log", "-", "--access-log-sampling", "1.5"],
            "--access-log-sampling",
        ),
        (
            &["--access-log", "/nonexistent-dir/access.log"],
            "/nonexistent-dir/access.log",
        ),
        (&["--access-log-fields", "path"], "--access-log"),
    ];
    for (flags, named) in cases {
        let admin = weft_test_support::free_addr().to_string();
        let mut args = vec![
            "proxy",
            "--config",
            dir.path().to_str().unwrap(),
            "--service",
            "frontend",
            "--admin",
            &admin,
            "--outbound",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(flags);
        let mut p = WeftProcess::spawn(&weft_bin(), &args).unwrap();
        let status = p.wait_exit(Duration::from_secs(20)).await.unwrap();
        assert!(!status.success(), "{flags:?} was accepted");
        let logs = p.logs();
        assert!(logs.contains(named), "{flags:?}: {logs}");
    }
}
