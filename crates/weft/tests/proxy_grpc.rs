//! gRPC through two sidecars with grpcio's real client and server (Python):
//! unary and server-streaming calls, trailers and error statuses intact,
//! and counted (metrics, access logs) by the status in the trailers.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

fn python() -> Option<PathBuf> {
    match std::env::var_os("WEFT_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("WEFT_PYTHON must be set in CI (scripts/test.sh sets it)")
        }
        None => {
            eprintln!(
                "skipped: WEFT_PYTHON is not set; run ./scripts/test.sh to get the grpcio venv"
            );
            None
        }
    }
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/grpc/grpc_check.py")
}

#[tokio::test]
async fn grpcio_unary_and_streaming_cross_two_sidecars() {
    let Some(py) = python() else { return };
    let port = weft_test_support::free_port();
    let mut server = tokio::process::Command::new(&py)
        .arg(script())
        .args(["server", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start grpcio server");
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    tokio::time::timeout(READY, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.trim() == "READY" {
                return;
            }
        }
        panic!("grpc server exited before READY");
    })
    .await
    .expect("grpc server READY");
    let app_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let server_dir = config_dir(&[("svc.yaml", &service("echo", "grpc", &[(app_addr, 1)], None))]);
    let logs = weft_test_support::TempDir::new("weft-grpc-logs").unwrap();
    let (server_log, client_log) = (logs.join("server.log"), logs.join("client.log"));
    let server_side = proxy(
        server_dir.path(),
        "echo",
        Some(app_addr),
        &["--access-log", server_log.to_str().unwrap()],
    )
    .await;
    let client_dir = config_dir(&[(
        "svc.yaml",
        &service("echo", "grpc", &[(server_side.inbound, 1)], None),
    )]);
    let spans = weft_test_support::OtlpReceiver::start().await.unwrap();
    let otlp = spans.addr().to_string();
    let client_side = proxy(
        client_dir.path(),
        "frontend",
        None,
        &[
            "--access-log",
            client_log.to_str().unwrap(),
            "--otlp-endpoint",
            &otlp,
        ],
    )
    .await;

    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&py)
            .arg(script())
            .args([
                "client",
                "--target",
                &client_side.outbound.to_string(),
                "--authority",
                "echo",
                "--count",
                "20",
            ])
            .output(),
    )
    .await
    .expect("grpc client finished")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpc checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["ok"], true, "{summary}");
    // 20 unary calls and a stream end OK in their trailers, one call
    // fails RESOURCE_EXHAUSTED (8): counted so on both sides, by caller.
    for (p, side) in [(&client_side, "outbound"), (&server_side, "inbound")] {
        let count = |status: &'static str| {
            let dir = format!("direction=\"{side}\"");
            let status = format!("grpc_status=\"{status}\"");
            async move {
                p.metric(
                    "weft_requests_total",
                    &[&dir, "source=\"frontend.default\"", &status],
                )
                .await
            }
        };
        assert_eq!(count("0").await, 21.0, "{side}");
        assert_eq!(count("8").await, 1.0, "{side}");
    }
    for path in [&client_log, &server_log] {
        let lines: Vec<serde_json::Value> = weft_test_support::wait_until(
            "22 access log lines",
            Duration::from_secs(10),
            || async {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<serde_json::Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
                (lines.len() >= 22).then_some(lines)
            },
        )
        .await
        .unwrap();
        let status = |s: i64| lines.iter().filter(|l| l["grpc_status"] == s).count();
        assert_eq!(
            (lines.len(), status(0), status(8)),
            (22, 21, 1),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .all(|l| l["protocol"] == "HTTP/2" && l["response_end"] == "complete")
        );
    }
    // The request spans carry the status from the trailers.
    let received =
        weft_test_support::wait_until("22 request spans", Duration::from_secs(10), || async {
            let s: Vec<_> = spans
                .spans()
                .into_iter()
                .filter(|s| s.name.starts_with("outbound"))
                .collect();
            (s.len() >= 22).then_some(s)
        })
        .await
        .unwrap();
    let with = |code: &str, error: bool| {
        received
            .iter()
            .filter(|s| s.attr("rpc.grpc.status_code") == Some(code) && s.error == error)
            .count()
    };
    assert_eq!(
        (with("0", false), with("8", true)),
        (21, 1),
        "{received:#?}"
    );

    // A gRPC client calling a Service that doesn't exist gets a gRPC status,
    // not a bare HTTP 404.
    let out = tokio::process::Command::new(&py)
        .arg(script())
        .args([
            "client",
            "--target",
            &client_side.outbound.to_string(),
            "--authority",
            "nothing",
            "--count",
            "1",
        ])
        .output()
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("UNIMPLEMENTED") || text.contains("no Service"),
        "{text}"
    );
    // Its three calls (unary, stream, fail): UNIMPLEMENTED, no route.
    assert_eq!(
        client_side
            .metric(
                "weft_requests_total",
                &["grpc_status=\"12\"", "error=\"no-route\""]
            )
            .await,
        3.0
    );
}
