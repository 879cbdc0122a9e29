//! The long-running commands besides the proxy: each has an admin port with
//! /ready and /metrics and stops cleanly on SIGTERM.

mod common;

use std::time::Duration;

use common::*;
use weft_test_support::{HttpClient, WeftProcess, free_addr, wait_until};

#[tokio::test]
async fn app_admin_counts_requests_and_errors() {
    let admin = free_addr();
    let a = app(
        "counted",
        &[
            "--admin",
            &admin.to_string(),
            "--error-rate",
            "1.0",
            "--error-status",
            "500",
        ],
    )
    .await;
    let client = HttpClient::http1();
    for _ in 0..5 {
        let r = client.get(a.addr, "x", "/").await.unwrap();
        assert_eq!(r.status, 500);
    }
    let ready = client.get(admin, "admin", "/ready").await.unwrap();
    assert_eq!(ready.status, 200);
    let m = client.get(admin, "admin", "/metrics").await.unwrap().text();
    assert_eq!(sample(&m, "weft_app_requests_total"), 5.0, "{m}");
    assert_eq!(sample(&m, "weft_app_errors_total"), 5.0, "{m}");
}

#[tokio::test]
async fn demo_serves_traffic_and_stops_on_sigterm() {
    // A loopback range of its own, so it can run beside other tests.
    let base = 150 + (std::process::id() % 50) as u8;
    let admin = free_addr();
    let mut demo = WeftProcess::spawn(
        &weft_bin(),
        &[
            "demo",
            "--plain",
            "--rate",
            "100",
            "--ip-base",
            &base.to_string(),
            "--admin",
            &admin.to_string(),
        ],
    )
    .unwrap();
    let client = HttpClient::http1();
    wait_until("demo traffic flowing", Duration::from_secs(30), || async {
        let m = client.get(admin, "admin", "/metrics").await.ok()?.text();
        (sample(&m, "weft_demo_requests_ok_total") >= 100.0).then_some(())
    })
    .await
    .unwrap();
    let m = client.get(admin, "admin", "/metrics").await.unwrap().text();
    let (sent, ok) = (
        sample(&m, "weft_demo_requests_sent_total"),
        sample(&m, "weft_demo_requests_ok_total"),
    );
    assert!(ok / sent > 0.9, "success {ok}/{sent}");
    // The deadline chain runs beside it, its deadline met until the script
    // slows payments down (at 48 s).
    wait_until(
        "deadline chain traffic",
        Duration::from_secs(30),
        || async {
            let m = client.get(admin, "admin", "/metrics").await.ok()?.text();
            (sample(&m, "weft_demo_chain_requests_ok_total") >= 10.0).then_some(())
        },
    )
    .await
    .unwrap();
    // The frontend pod's sidecar is up too, with the split visible in its view.
    let frontend_admin: std::net::SocketAddr = format!("127.{base}.1.1:15000").parse().unwrap();
    assert_eq!(
        client
            .get(frontend_admin, "admin", "/ready")
            .await
            .unwrap()
            .status,
        200
    );

    demo.sigterm();
    let status = demo.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", demo.logs());
    assert!(demo.logs().contains("final summary"), "{}", demo.logs());
    assert!(
        tokio::net::TcpStream::connect(frontend_admin)
            .await
            .is_err(),
        "sidecars stopped"
    );
}

#[tokio::test]
async fn ratelimit_serves_its_limits_and_stops_on_sigterm() {
    let dir = config_dir(&[(
        "p.yaml",
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: catalog}\nspec:\n  ports: [{port: 8080, protocol: http}]\n---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {name: shared}\nspec:\n  targetRefs: [{kind: Service, name: catalog}]\n  rateLimit: {global: {requestsPerUnit: 5, unit: minute}}\n",
    )]);
    let (listen, admin) = (free_addr(), free_addr());
    let mut rl = WeftProcess::spawn(
        &weft_bin(),
        &[
            "ratelimit",
            "--config",
            dir.path().to_str().unwrap(),
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ],
    )
    .unwrap();
    wait_ready("weft ratelimit ready", admin, READY).await;
    let client = HttpClient::http1();
    let status = client.get(admin, "admin", "/status").await.unwrap().text();
    assert!(status.contains("default/shared"), "{status}");
    let m = client.get(admin, "admin", "/metrics").await.unwrap().text();
    assert!(m.contains("weft_ratelimit_store_up 1"), "{m}");
    rl.sigterm();
    let exit = rl.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(exit.success(), "{exit:?}\n{}", rl.logs());

    // A Redis URL that cannot be one is refused at start, by name.
    let mut bad = WeftProcess::spawn(
        &weft_bin(),
        &[
            "ratelimit",
            "--config",
            dir.path().to_str().unwrap(),
            "--listen",
            &free_addr().to_string(),
            "--admin",
            &free_addr().to_string(),
            "--redis",
            "http://nope",
        ],
    )
    .unwrap();
    let exit = bad.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(!exit.success());
    assert!(bad.logs().contains("invalid Redis URL"), "{}", bad.logs());
}
