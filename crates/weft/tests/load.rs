//! `weft load` and `weft capacity` as a user runs them: the real binary
//! against a `weft app` (and a grpcio server), JSON output, bad flags,
//! SIGTERM, the admin port.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use weft_test_support::{HttpClient, TempDir, free_addr, free_port, wait_until};

fn weft(args: &[&str]) -> Output {
    Command::new(weft_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run weft")
}

fn json(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weft failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn f(v: &serde_json::Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {path} in {v}"))
}

#[tokio::test]
async fn json_output_has_the_documented_fields_and_counts_every_request() {
    let a = app("loaded", &["--latency", "2ms"]).await;
    let url = format!("http://{}/", a.addr);
    let out = weft(&[
        "load",
        &url,
        "--rate",
        "300",
        "--duration",
        "2s",
        "--warmup",
        "200ms",
        "-c",
        "4",
        "--json",
    ]);
    let r = json(&out);
    assert_eq!(f(&r, "/requests"), 600.0);
    assert_eq!(f(&r, "/errors"), 0.0);
    assert_eq!(f(&r, "/status_counts/200"), 600.0);
    assert!((f(&r, "/achieved_rate") - 300.0).abs() < 10.0, "{r}");
    for h in ["latency_ms", "service_time_ms"] {
        for p in ["p50", "p90", "p99", "p999", "max"] {
            let v = f(&r, &format!("/{h}/{p}"));
            assert!((2.0..100.0).contains(&v), "{h}.{p} = {v}");
        }
    }
    assert_eq!(r["protocol"], "http1");
    assert_eq!(r["client"]["saturated"], false);
    // The progress line went to stderr, not into the JSON.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("offered"), "no progress line: {stderr}");
}

#[tokio::test]
async fn the_human_table_shows_percentiles_and_steps() {
    let a = app("steps", &[]).await;
    let url = format!("http://{}/", a.addr);
    let out = weft(&[
        "load",
        &url,
        "--rate",
        "100,200",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "-q",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in ["p99.9", "service time", "requested", "300 requests"] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
}

#[tokio::test]
async fn bad_flags_are_named_and_nothing_runs() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["load", "http://127.0.0.1:1/", "--rate", "0"],
            "greater than 0",
        ),
        (
            &["load", "http://127.0.0.1:1/", "--rate", "-10"],
            "greater than 0",
        ),
        (
            &["load", "http://127.0.0.1:1/", "--rate", "lots"],
            "not a number",
        ),
        (
            &["load", "http://127.0.0.1:1/", "--duration", "-1s"],
            "invalid value '-1s' for '--duration",
        ),
        (
            &["load", "http://127.0.0.1:1/", "--duration", "0s"],
            "greater than 0",
        ),
        (&["load", "http://127.0.0.1:1/", "-c", "0"], "0"),
        (&["load", "https://127.0.0.1:1/"], "https is not supported"),
        (
            &["load", "http://127.0.0.1:1/", "--http2", "--grpc", "a.B/C"],
            "cannot be used with",
        ),
        (
            &["load", "http://127.0.0.1:1/", "--proto", "x.proto"],
            "only apply with --grpc",
        ),
        (
            &["load", "http://127.0.0.1:1/", "-H", "novalue"],
            "Name: value",
        ),
        (
            &["capacity", "http://127.0.0.1:1/", "--slo", "p99<"],
            "p99<",
        ),
    ];
    for (args, needle) in cases {
        let out = weft(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(needle),
            "{args:?}: `{needle}` not in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn an_unreachable_target_fails_fast_with_its_address() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/");
    let started = std::time::Instant::now();
    let out = weft(&["load", &url, "--duration", "5s", "-q"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("refused"),
        "{stderr}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_run_and_prints_what_ran() {
    let a = app("long", &[]).await;
    let url = format!("http://{}/", a.addr);
    let admin = free_addr();
    let child = tokio::process::Command::new(weft_bin())
        .args([
            "load",
            &url,
            "--rate",
            "200",
            "--duration",
            "60s",
            "--warmup",
            "0s",
            "--json",
        ])
        .args(["--admin", &admin.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    // The admin port is ready while it sends, and counts.
    wait_ready("weft load admin", admin, READY).await;
    let client = HttpClient::http1();
    wait_until("requests counted on /metrics", READY, || async {
        let m = client.get(admin, "admin", "/metrics").await?;
        let line = m
            .text()
            .lines()
            .find(|l| l.starts_with("weft_load_requests_completed_total"))
            .map(str::to_owned)
            .unwrap_or_default();
        let n: f64 = line
            .rsplit(' ')
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0.0);
        anyhow::ensure!(n >= 200.0, "completed {n}");
        Ok(())
    })
    .await
    .unwrap();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("exits within 10 s of SIGTERM")
        .unwrap();
    let r = json(&out);
    assert_eq!(r["interrupted"], true);
    assert!(f(&r, "/requests") >= 200.0);
    assert_eq!(f(&r, "/errors"), 0.0);
    assert!(f(&r, "/duration_s") < 30.0);
}

fn python() -> Option<std::path::PathBuf> {
    external_tool("WEFT_PYTHON", "the venv with grpcio")
}

async fn grpc_server(py: &Path) -> (tokio::process::Child, SocketAddr) {
    grpc_echo_server(py, None).await
}

#[tokio::test]
async fn grpc_unary_calls_are_counted_by_status() {
    let Some(py) = python() else { return };
    let (_server, addr) = grpc_server(&py).await;
    let dir = TempDir::new("weft-load-grpc").unwrap();
    let body = dir.join("msg.bin");
    std::fs::write(&body, b"\x0a\x04weft").unwrap();
    let url = format!("http://{addr}");
    let body = body.to_string_lossy().into_owned();
    let ok = json(&weft(&[
        "load",
        &url,
        "--grpc",
        "weft.test.Echo/Unary",
        "--body-file",
        &body,
        "--rate",
        "200",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "-c",
        "2",
        "--json",
        "-q",
    ]));
    assert_eq!(ok["grpc_method"], "weft.test.Echo/Unary");
    assert_eq!(f(&ok, "/grpc_status_counts/OK"), 200.0, "{ok}");
    assert_eq!(f(&ok, "/errors"), 0.0);
    // A method answering RESOURCE_EXHAUSTED: errors, by status.
    let fail = json(&weft(&[
        "load",
        &url,
        "--grpc",
        "weft.test.Echo/Fail",
        "--rate",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--json",
        "-q",
    ]));
    assert_eq!(
        f(&fail, "/grpc_status_counts/RESOURCE_EXHAUSTED"),
        100.0,
        "{fail}"
    );
    assert_eq!(f(&fail, "/errors"), 100.0);
    assert!(
        fail["error_examples"]["grpc_status"]
            .as_str()
            .unwrap()
            .contains("quota gone")
    );
}

#[tokio::test]
async fn a_grpc_method_that_does_not_exist_is_named_before_the_run() {
    let Some(py) = python() else { return };
    let (_server, addr) = grpc_server(&py).await;
    let url = format!("http://{addr}");
    let out = weft(&[
        "load",
        &url,
        "--grpc",
        "weft.test.Echo/Nope",
        "--body-format",
        "binary",
        "-q",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("weft.test.Echo/Nope") && stderr.contains("UNIMPLEMENTED"),
        "{stderr}"
    );
}

#[tokio::test]
async fn capacity_finds_the_knee_of_a_connection_bound_server_and_draws_it() {
    // Two HTTP/1.1 connections to an app answering in 10 ms carry at most
    // ~200 req/s: above that the queue grows and p99 passes 50 ms.
    let a = app("bounded", &["--latency", "10ms"]).await;
    let url = format!("http://{}/", a.addr);
    let dir = TempDir::new("weft-capacity").unwrap();
    let chart = dir.join("knee.svg");
    let chart_s = chart.to_string_lossy().into_owned();
    let out = weft(&[
        "capacity",
        &url,
        "--slo",
        "p99<50ms,errors<1%",
        "-c",
        "2",
        "--start-rate",
        "50",
        "--step-duration",
        "1s",
        "--step-warmup",
        "200ms",
        "--max-time",
        "40s",
        "--precision",
        "0.1",
        "--chart",
        &chart_s,
        "--json",
    ]);
    let r = json(&out);
    let knee = f(&r, "/knee_rate");
    assert!(
        (120.0..=200.0).contains(&knee),
        "knee {knee} req/s for a ~195 req/s server: {r}"
    );
    let failing = f(&r, "/first_failing_rate");
    assert!(
        failing > knee && failing <= knee * 1.1 + 1.0,
        "{knee} .. {failing}"
    );
    assert_eq!(r["stop_reason"], "converged", "{r}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..80.min(svg.len())]
    );
    assert!(svg.contains("p99"));
}
