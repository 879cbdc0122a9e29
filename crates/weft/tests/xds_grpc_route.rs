//! A Gateway API `GRPCRoute` followed by grpcio's proxyless `xds:///`
//! client: `weft control` translates the route's method match and weighted
//! backends into the routes gRPC applies, so one method is split between two
//! backends and the others go where their rule says.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use weft_test_support::wait_until;

const ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-split}
spec:
  parentRefs: [{kind: Service, name: echo}]
  rules:
  - matches: [{method: {service: weft.test.Echo, method: Unary}}]
    backendRefs: [{name: echo-a, weight: 3}, {name: echo-b, weight: 1}]
  - matches: [{method: {service: weft.test.Echo}}]
    backendRefs: [{name: echo-b}]
"#;

/// A grpc_check.py echo server answering with `x-server-name: name`.
async fn named_server(py: &Path, name: &str) -> (tokio::process::Child, SocketAddr) {
    grpc_echo_server(py, Some(name)).await
}

/// Which server answered `count` calls of `method` made through
/// `xds:///echo`, as grpc_check.py's `who` mode reports it.
async fn who(
    py: &Path,
    bootstrap: &serde_json::Value,
    method: &str,
    count: usize,
) -> Result<BTreeMap<String, u64>, String> {
    let run = tokio::process::Command::new(py)
        .arg(grpc_check_script())
        .args(["who", "--target", "xds:///echo", "--method", method])
        .args(["--count", &count.to_string()])
        .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.to_string())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let report = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let v: serde_json::Value = serde_json::from_str(report.trim()).map_err(|e| e.to_string())?;
    serde_json::from_value(v["counts"].clone()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn grpcio_follows_a_grpc_route_splitting_one_method() {
    let Some(py) = external_tool("WEFT_PYTHON", "the venv with grpcio") else {
        return;
    };
    let (_a, a) = named_server(&py, "echo-a").await;
    let (_b, b) = named_server(&py, "echo-b").await;
    let services = format!(
        "{}{}{}",
        service("echo", "grpc", &[], None),
        service("echo-a", "grpc", &[(a, 1)], None),
        service("echo-b", "grpc", &[(b, 1)], None)
    );
    let dir = config_dir(&[("services.yaml", &services), ("route.yaml", ROUTE)]);
    let cp = control_plane(dir.path()).await;
    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": cp.xds.to_string(), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": "grpc-client-1", "cluster": "frontend", "locality": {}},
    });

    // Unary is split 3:1 between the two backends: 750/250 of 1000 within
    // 5 points (gRPC picks a weighted cluster at random per call).
    let counts = who(&py, &bootstrap, "Unary", 1000).await.unwrap();
    let total: u64 = counts.values().sum();
    assert_eq!(total, 1000, "{counts:?}");
    let share_a = *counts.get("echo-a").unwrap_or(&0) as f64 / 1000.0;
    eprintln!("GRPCRoute split of Unary over 1000 calls: {counts:?}");
    assert!((share_a - 0.75).abs() <= 0.05, "{counts:?}");

    // Every other method of the service goes to echo-b only.
    let counts = who(&py, &bootstrap, "Stream", 20).await.unwrap();
    assert_eq!(counts, BTreeMap::from([("echo-b".to_string(), 20)]));

    // A route change reaches the client: Unary all to echo-b now.
    replace_file(
        dir.path(),
        "route.yaml",
        &ROUTE.replace("weight: 3}", "weight: 0}"),
    );
    wait_until(
        "grpc client follows the route change",
        Duration::from_secs(30),
        || async {
            let c = who(&py, &bootstrap, "Unary", 20).await.ok()?;
            (c == BTreeMap::from([("echo-b".to_string(), 20)])).then_some(())
        },
    )
    .await
    .unwrap();
}
