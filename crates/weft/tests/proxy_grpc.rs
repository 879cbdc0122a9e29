//! gRPC through two sidecars with grpcio's real client and server (Python):
//! unary and server-streaming calls, trailers and error statuses intact.

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
    let server_side = proxy(server_dir.path(), "echo", Some(app_addr), &[]).await;
    let client_dir = config_dir(&[(
        "svc.yaml",
        &service("echo", "grpc", &[(server_side.inbound, 1)], None),
    )]);
    let client_side = proxy(client_dir.path(), "frontend", None, &[]).await;

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
    assert!(
        server_side
            .metric("weft_requests_total", &["direction=\"inbound\""])
            .await
            >= 22.0
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
}
