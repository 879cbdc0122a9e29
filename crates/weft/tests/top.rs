//! `weft top`: the control plane's traffic view, refreshed every interval.
//! Frames (not on a terminal) follow one another separated by a blank
//! line; a control plane that is down or answers garbage is shown and
//! retried, never fatal; signals end it cleanly.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use weft_test_support::{HttpClient, WeftProcess, free_addr, wait_until};

/// `weft top ARGS` run to its end: exit status and output.
async fn top(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut all = vec!["top"];
    all.extend_from_slice(args);
    let mut p = WeftProcess::spawn(&weft_bin(), &all).unwrap();
    let status = p.wait_exit(Duration::from_secs(20)).await.unwrap();
    (status, p.logs())
}

/// The frames in `out`: blocks headed by top's status line.
fn frames(out: &str) -> Vec<&str> {
    out.split("\n\n")
        .filter(|f| f.starts_with("weft top  control plane"))
        .collect()
}

/// The columns of the row named `name` (a Service, or `caller -> callee`)
/// after its name: REQUESTS, RPS, SUCCESS, P50, P90, P99.
fn row<'a>(frame: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let line = frame
        .lines()
        .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(' ')))?;
    Some(line[name.len()..].split_whitespace().collect())
}

#[tokio::test]
async fn top_refreshes_the_services_and_edges_with_what_was_sent() {
    let app = app("catalog", &[]).await;
    let dir = config_dir(&[(
        "mesh.yaml",
        &(service("catalog", "http", &[(app.addr, 1)], None)
            + &service("frontend", "http", &[], None)
            + &service("checkout", "http", &[], None)),
    )]);
    let control = control_plane_with(dir.path(), &["--traffic-interval", "200ms"]).await;
    let (xds, admin) = (control.xds, control.admin);
    let frontend = xds_sidecar(xds, "frontend-1", "frontend").await;
    let checkout = xds_sidecar(xds, "checkout-1", "checkout").await;
    let client = HttpClient::http1();
    for (proxy, path, n, status) in [
        (&frontend, "/", 30, 200),
        (&frontend, "/status/500", 10, 500),
        (&checkout, "/", 5, 200),
    ] {
        for _ in 0..n {
            let r = client.get(proxy.outbound, "catalog", path).await.unwrap();
            assert_eq!(r.status, status);
        }
    }

    let admin_s = admin.to_string();
    let args = [
        "--control",
        &admin_s,
        "--iterations",
        "3",
        "--interval",
        "300ms",
        "--window",
        "60s",
    ];
    let last = std::sync::Mutex::new(String::new());
    // 45 requests to catalog in the 60 s window: 40 from frontend (10
    // failed), 5 from checkout. Polled until the control plane's scrapes
    // have them all.
    let counted = wait_until("top shows what was sent", READY, || async {
        let (status, out) = top(&args).await;
        *last.lock().unwrap() = out.clone();
        let newest = *frames(&out).last()?;
        let counts = |name: &str| row(newest, name).map(|r| r[0].to_owned());
        (status.success()
            && counts("catalog.default")? == "45"
            && counts("frontend.default -> catalog.default")? == "40"
            && counts("checkout.default -> catalog.default")? == "5")
            .then_some(())
    })
    .await;
    let out = last.lock().unwrap().clone();
    assert!(counted.is_ok(), "{out}");

    // Three frames, one after another (not a terminal: no control codes).
    let shown = frames(&out);
    assert_eq!(shown.len(), 3, "{out}");
    assert!(!out.contains('\x1b'), "{out:?}");
    let newest = shown[2];
    let status_line = newest.lines().next().unwrap();
    assert!(
        status_line.contains(&format!("control plane {admin}"))
            && status_line.contains("window 60s")
            && status_line.contains("1 services, 2 edges"),
        "{newest}"
    );
    // RPS is the window's requests over its 60 s; success 35 of 45.
    assert_eq!(
        row(newest, "catalog.default").unwrap()[..3],
        ["45", "0.75", "77.78%"],
        "{newest}"
    );
    assert_eq!(
        row(newest, "frontend.default -> catalog.default").unwrap()[..3],
        ["40", "0.67", "75.00%"],
        "{newest}"
    );
    assert_eq!(
        row(newest, "checkout.default -> catalog.default").unwrap()[..3],
        ["5", "0.08", "100.00%"],
        "{newest}"
    );
    // Edges busiest first.
    let at = |needle: &str| newest.find(needle).unwrap();
    assert!(at("frontend.default -> catalog") < at("checkout.default -> catalog"));
    let p99: f64 = row(newest, "catalog.default").unwrap()[5].parse().unwrap();
    assert!(p99 > 0.0 && p99 < 1000.0, "p99 {p99} ms: {newest}");

    // A Service named narrows the view; its callers stay.
    let (status, out) = top(&["catalog", "--control", &admin_s, "--iterations", "1"]).await;
    assert!(status.success(), "{out}");
    assert!(
        row(frames(&out)[0], "frontend.default -> catalog.default").is_some(),
        "{out}"
    );
}

#[tokio::test]
async fn top_keeps_refreshing_while_the_control_plane_is_down_or_answers_garbage() {
    // Nothing listens there.
    let down = free_addr().to_string();
    let (status, out) = top(&[
        "--control",
        &down,
        "--iterations",
        "3",
        "--interval",
        "100ms",
    ])
    .await;
    assert!(status.success(), "{status:?}: {out}");
    let shown = frames(&out);
    assert_eq!(shown.len(), 3, "{out}");
    for f in &shown {
        assert!(
            f.starts_with(&format!("weft top  control plane {down} unreachable: "))
                && f.contains("(retrying)"),
            "{f}"
        );
    }

    // An app, not a control plane: it answers, but not a traffic view.
    let not_control = app("impostor", &[]).await;
    let (status, out) = top(&[
        "--control",
        &not_control.addr.to_string(),
        "--iterations",
        "2",
        "--interval",
        "100ms",
    ])
    .await;
    assert!(status.success(), "{status:?}: {out}");
    let shown = frames(&out);
    assert_eq!(shown.len(), 2, "{out}");
    assert!(
        shown
            .iter()
            .all(|f| f.contains("answered something that is not JSON") && f.contains("(retrying)")),
        "{out}"
    );
}

/// Sends `signal` (`TERM`, `INT`) to `p`.
fn kill(p: &WeftProcess, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &p.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {}", p.pid());
}

#[tokio::test]
async fn top_runs_until_a_signal_and_then_exits_cleanly() {
    for signal in ["TERM", "INT"] {
        let admin: SocketAddr = free_addr();
        let mut p = WeftProcess::spawn(
            &weft_bin(),
            &[
                "top",
                "--control",
                &free_addr().to_string(),
                "--interval",
                "100ms",
                "--admin",
                &admin.to_string(),
            ],
        )
        .unwrap();
        // Ready once a first frame is drawn; its counters follow the frames.
        p.wait_admin_ready(admin, READY).await.unwrap();
        let client = HttpClient::http1();
        wait_until("a few refreshes counted", READY, || async {
            let m = client.get(admin, "admin", "/metrics").await.ok()?.text();
            let (refreshes, errors) = (
                sample(&m, "weft_top_refreshes_total"),
                sample(&m, "weft_top_fetch_errors_total"),
            );
            (refreshes >= 3.0 && errors >= 3.0).then_some(())
        })
        .await
        .unwrap();
        kill(&p, signal);
        let status = p.wait_exit(Duration::from_secs(10)).await.unwrap();
        assert!(status.success(), "SIG{signal}: {status:?}\n{}", p.logs());
        assert!(frames(&p.logs()).len() >= 3, "{}", p.logs());
    }
    // SIGTERM through the harness too.
    let mut p = WeftProcess::spawn(
        &weft_bin(),
        &[
            "top",
            "--control",
            &free_addr().to_string(),
            "--interval",
            "1s",
        ],
    )
    .unwrap();
    p.wait_for_log("weft top  control plane", READY)
        .await
        .unwrap();
    p.sigterm();
    let status = p.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", p.logs());
}

#[tokio::test]
async fn bad_flags_are_named() {
    for (args, flag) in [
        (&["--interval", "0s"][..], "--interval"),
        (&["--interval", "soon"], "--interval"),
        (&["--window", "0s"], "--window"),
        (&["--window", "301s"], "--window"),
        (&["--window", "10m"], "--window"),
        (&["--window", "1500ms"], "--window"),
        (&["--window", "often"], "--window"),
        (&["--iterations", "0"], "--iterations"),
        (&["--control", "nowhere"], "--control"),
    ] {
        let (status, out) = top(args).await;
        assert!(!status.success(), "{args:?} accepted: {out}");
        assert!(out.contains(flag), "{args:?} does not name {flag}: {out}");
    }
}
