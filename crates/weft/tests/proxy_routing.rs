//! The sidecar's HTTP data path, end to end with the real binary: routing by
//! Host and VIP, two hops, h2c, weights and splits, and clean errors.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use weft_test_support::{HttpClient, tcp_echo_server, upgrade_echo_server};

#[tokio::test]
async fn routes_by_every_host_form_and_keeps_bodies_intact() {
    let a = app("catalog-app", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(a.addr, 1)], None),
    )]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let client = HttpClient::http1();
    for host in [
        "catalog",
        "catalog:8080",
        "catalog.default",
        "catalog.default.svc.cluster.local:8080",
    ] {
        let r = client.get(p.outbound, host, "/").await.unwrap();
        assert_eq!(r.status, 200, "host {host}: {}", r.text());
        assert_eq!(r.header("x-app-name"), Some("catalog-app"));
    }
    // A 1 MiB body, streamed both ways, comes back byte-identical.
    let body: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = client
        .post(p.outbound, "catalog", "/echo", body.clone())
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "echoed body differs");
    // The upstream sees the client's Host, not the endpoint address.
    let r = client
        .get(p.outbound, "catalog:8080", "/headers")
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["host"], "catalog:8080", "{seen}");
}

#[tokio::test]
async fn unknown_hosts_get_404_with_a_named_cause() {
    let a = app("a", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(a.addr, 1)], None),
    )]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let r = HttpClient::http1()
        .get(p.outbound, "nope", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.header("weft-error"), Some("no-route"));
    assert!(r.text().contains("nope"), "{}", r.text());
    let r = HttpClient::http1()
        .get(p.outbound, "catalog:9999", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "a port the Service does not have");
    assert!(
        p.metric(
            "weft_requests_total",
            &["code=\"404\"", "error=\"no-route\""]
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn unreachable_endpoints_fail_fast_with_503() {
    // A port nobody listens on: connection refused.
    let dead = weft_test_support::free_addr();
    let dir = config_dir(&[
        ("a.yaml", &service("dead", "http", &[(dead, 1)], None)),
        ("b.yaml", &service("empty", "http", &[], None)),
    ]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let client = HttpClient::http1().with_timeout(Duration::from_secs(5));
    let t = Instant::now();
    let r = client.get(p.outbound, "dead", "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("weft-error"), Some("connect-failed"));
    assert!(t.elapsed() < Duration::from_secs(5));
    let r = client.get(p.outbound, "empty", "/").await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("weft-error"), Some("no-endpoints"));
}

#[tokio::test]
async fn route_timeout_answers_504() {
    let a = app("slow", &[]).await;
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, name: slow}]\n  rules:\n  - backendRefs: [{name: slow}]\n    timeouts: {request: 200ms}\n";
    let dir = config_dir(&[
        ("a.yaml", &service("slow", "http", &[(a.addr, 1)], None)),
        ("r.yaml", route),
    ]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let client = HttpClient::http1();
    let r = client.get(p.outbound, "slow", "/delay/3000").await.unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.header("weft-error"), Some("request-timeout"));
    let r = client.get(p.outbound, "slow", "/delay/10").await.unwrap();
    assert_eq!(r.status, 200, "fast requests are unaffected");
}

#[tokio::test]
async fn two_hops_over_http1_and_h2c() {
    let a = app("catalog-app", &[]).await;
    // Server side: catalog's sidecar in front of the app.
    let dir_placeholder = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(a.addr, 1)], None),
    )]);
    let server = proxy(dir_placeholder.path(), "catalog", Some(a.addr), &[]).await;
    // Client side: endpoints are the server sidecar's inbound listener; one
    // Service over HTTP/1.1, one over h2c.
    let dir = config_dir(&[
        (
            "a.yaml",
            &service("catalog", "http", &[(server.inbound, 1)], None),
        ),
        (
            "b.yaml",
            &service("catalog-h2", "http2", &[(server.inbound, 1)], None),
        ),
    ]);
    let client_side = proxy(dir.path(), "frontend", None, &[]).await;
    let body: Vec<u8> = (0..300_000).map(|i| (i % 239) as u8).collect();
    for (client, host) in [
        (HttpClient::http1(), "catalog"),
        (HttpClient::h2c(), "catalog"),
        (HttpClient::http1(), "catalog-h2"),
        (HttpClient::h2c(), "catalog-h2"),
    ] {
        let r = client
            .post(client_side.outbound, host, "/echo", body.clone())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{host}: {}", r.text());
        assert!(r.body == body, "{host}: body differs");
        assert_eq!(r.header("x-app-name"), Some("catalog-app"));
    }
    // Keep-alive: 50 more requests reuse the pooled connections between the
    // sidecars instead of opening one each.
    let before = server
        .metric("weft_connections_total", &["listener=\"inbound\""])
        .await;
    let client = HttpClient::http1();
    for _ in 0..50 {
        assert_eq!(
            client
                .get(client_side.outbound, "catalog", "/")
                .await
                .unwrap()
                .status,
            200
        );
    }
    let opened = server
        .metric("weft_connections_total", &["listener=\"inbound\""])
        .await
        - before;
    assert!(
        opened <= 1.0,
        "{opened} new connections for 50 sequential requests"
    );
    // Both sidecars counted the requests in their direction.
    assert!(
        client_side
            .metric(
                "weft_requests_total",
                &["direction=\"outbound\"", "code=\"200\""]
            )
            .await
            >= 4.0
    );
    assert!(
        server
            .metric(
                "weft_requests_total",
                &["direction=\"inbound\"", "code=\"200\""]
            )
            .await
            >= 4.0
    );
}

#[tokio::test]
async fn endpoint_weights_and_route_splits_are_respected() {
    let v1a = app("v1a", &[]).await;
    let v1b = app("v1b", &[]).await;
    let v2 = app("v2", &[]).await;
    let canary = app("canary", &[]).await;
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split}\nspec:\n  parentRefs: [{kind: Service, name: catalog}]\n  rules:\n  - backendRefs: [{name: catalog, weight: 90}, {name: catalog-v2, weight: 10}]\n  - matches: [{headers: [{name: x-canary, value: \"yes\"}]}, {path: {type: Exact, value: /canary}}]\n    backendRefs: [{name: canary}]\n";
    let dir = config_dir(&[
        (
            "a.yaml",
            &service("catalog", "http", &[(v1a.addr, 3), (v1b.addr, 1)], None),
        ),
        (
            "b.yaml",
            &service("catalog-v2", "http", &[(v2.addr, 1)], None),
        ),
        (
            "c.yaml",
            &service("canary", "http", &[(canary.addr, 1)], None),
        ),
        ("r.yaml", route),
    ]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let counts = app_counts(p.outbound, "catalog", "/items", 400).await;
    let get = |k: &str| counts.get(k).copied().unwrap_or(0) as f64;
    // 90/10 between Services, then 3:1 between v1 endpoints.
    assert!((get("v2") - 40.0).abs() <= 4.0, "{counts:?}");
    assert!((get("v1a") - 270.0).abs() <= 10.0, "{counts:?}");
    assert!((get("v1b") - 90.0).abs() <= 10.0, "{counts:?}");
    // Header and exact-path matches take precedence over the catch-all rule.
    let client = HttpClient::http1();
    let req = Request::get("/items")
        .header("host", "catalog")
        .header("x-canary", "yes")
        .body(Full::<Bytes>::default())
        .unwrap();
    let r = client.send_to(p.outbound, req).await.unwrap();
    assert_eq!(r.header("x-app-name"), Some("canary"));
    let r = client.get(p.outbound, "catalog", "/canary").await.unwrap();
    assert_eq!(r.header("x-app-name"), Some("canary"));
    assert!(
        p.metric(
            "weft_endpoint_requests_total",
            &[&format!("endpoint=\"{}\"", v2.addr)]
        )
        .await
            >= 40.0
    );
}

#[tokio::test]
async fn virtual_addresses_forward_http_and_tcp_whatever_the_host() {
    let a = app("vip-app", &[]).await;
    let (echo, _task) = tcp_echo_server().await.unwrap();
    // A VIP unlikely to clash with other tests: 127.77.x.y from the pid.
    let pid = std::process::id();
    let vip_http = format!("127.77.{}.{}", (pid >> 8) & 0xff, pid & 0xff);
    let vip_tcp = format!("127.78.{}.{}", (pid >> 8) & 0xff, pid & 0xff);
    let dir = config_dir(&[
        (
            "a.yaml",
            &service("web", "http", &[(a.addr, 1)], Some(&vip_http)),
        ),
        (
            "b.yaml",
            &service("db", "tcp", &[(echo, 1)], Some(&vip_tcp)),
        ),
    ]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let http_addr: std::net::SocketAddr = format!("{vip_http}:8080").parse().unwrap();
    let r = HttpClient::http1()
        .get(http_addr, "whatever.example", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-app-name"), Some("vip-app"));
    let tcp_addr: std::net::SocketAddr = format!("{vip_tcp}:8080").parse().unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(tcp_addr).await.unwrap();
    s.write_all(b"ping over tcp").await.unwrap();
    let mut buf = [0u8; 13];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping over tcp");
    let dump: serde_json::Value = serde_json::from_str(&p.admin_get("/config_dump").await).unwrap();
    assert_eq!(
        dump["listeners"][format!("vip {http_addr}")]["state"],
        "bound",
        "{dump}"
    );
}

#[tokio::test]
async fn http1_upgrades_are_passed_through() {
    let (up, _task) = upgrade_echo_server().await.unwrap();
    let dir = config_dir(&[("a.yaml", &service("ws", "http", &[(up, 1)], None))]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: weft-test\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: weft-test"), "{head}");
    s.write_all(b"raw bytes after upgrade").await.unwrap();
    let mut buf = [0u8; 23];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"raw bytes after upgrade");
}

#[tokio::test]
async fn chunked_bodies_stream_both_ways() {
    let a = app("chunky", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(a.addr, 1)], None),
    )]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    // A chunked response (the app flushes each chunk).
    let r = HttpClient::http1()
        .get(p.outbound, "catalog", "/stream/5")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "chunk-0\nchunk-1\nchunk-2\nchunk-3\nchunk-4\n");
    // A chunked request, written by hand, echoed back.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: catalog\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    // The body may come back chunked or with a length; either way it holds the text.
    assert!(body.contains("hello") && body.contains(", world"), "{out}");
}
