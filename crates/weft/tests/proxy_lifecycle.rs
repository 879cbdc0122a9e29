//! Config reload, bad input and shutdown, end to end with the real binary.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_test_support::{HttpClient, tcp_echo_server, wait_until};

#[tokio::test]
async fn reload_under_load_moves_traffic_and_loses_no_request() {
    let old = app("old", &["--latency", "2ms"]).await;
    let new = app("new", &["--latency", "2ms"]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(old.addr, 1)], None),
    )]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;

    // Eight clients send back-to-back requests throughout the change.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, from_new) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (stop, ok, failed, from_new) =
            (stop.clone(), ok.clone(), failed.clone(), from_new.clone());
        let client = if i % 2 == 0 {
            HttpClient::http1()
        } else {
            HttpClient::h2c()
        };
        let outbound = p.outbound;
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(outbound, "catalog", "/").await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        if r.header("x-app-name") == Some("new") {
                            from_new.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(r) => {
                        eprintln!(
                            "failed: {} {:?} {}",
                            r.status,
                            r.header("weft-error"),
                            r.text()
                        );
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("failed: {e:#}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    wait_until("traffic flowing", READY, || async {
        ok.load(Ordering::Relaxed) > 100
    })
    .await
    .unwrap();
    replace_file(
        dir.path(),
        "svc.yaml",
        &service("catalog", "http", &[(new.addr, 1)], None),
    );
    wait_until(
        "traffic moved to the new endpoint",
        Duration::from_secs(10),
        || async { from_new.load(Ordering::Relaxed) > 200 },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across the reload"
    );
    assert!(p.metric("weft_config_generation", &[]).await >= 2.0);
    // After the change, nothing goes to the old endpoint any more.
    let counts = app_counts(p.outbound, "catalog", "/", 20).await;
    assert_eq!(counts.get("new"), Some(&20), "{counts:?}");
}

/// Replaced pods: the series of endpoints that left the config go away
/// (they would pile up under churn and show stale values), those that
/// stayed keep their counts.
#[tokio::test]
async fn endpoints_that_leave_the_config_take_their_series_with_them() {
    let (a, b) = (app("a", &[]).await, app("b", &[]).await);
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(a.addr, 1), (b.addr, 1)], None),
    )]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let client = HttpClient::http1();
    for _ in 0..10 {
        let r = client.get(p.outbound, "catalog", "/").await.unwrap();
        assert_eq!(r.status, 200);
    }
    let series_of = |addr: std::net::SocketAddr| {
        let endpoint = format!("endpoint=\"{addr}\"");
        let p = &p;
        async move {
            p.admin_get("/metrics")
                .await
                .lines()
                .filter(|l| l.starts_with("weft_endpoint") && l.contains(&endpoint))
                .count()
        }
    };
    let requests_to = |addr: std::net::SocketAddr| {
        let endpoint = format!("endpoint=\"{addr}\"");
        let p = &p;
        async move { p.metric("weft_endpoint_requests_total", &[&endpoint]).await }
    };
    // Requests, failures and the four gauges of the health step.
    wait_until("a's gauges", Duration::from_secs(10), || async {
        series_of(a.addr).await >= 6
    })
    .await
    .unwrap();
    let b_before = requests_to(b.addr).await;
    assert!(b_before > 0.0);

    // a is replaced by c.
    let c = app("c", &[]).await;
    replace_file(
        dir.path(),
        "svc.yaml",
        &service("catalog", "http", &[(b.addr, 1), (c.addr, 1)], None),
    );
    wait_until("the change is applied", Duration::from_secs(10), || async {
        p.metric("weft_config_generation", &[]).await >= 2.0
    })
    .await
    .unwrap();
    assert_eq!(series_of(a.addr).await, 0, "a's series are gone");
    assert_eq!(requests_to(b.addr).await, b_before, "b keeps its count");
    wait_until("c's gauges", Duration::from_secs(10), || async {
        series_of(c.addr).await >= 6
    })
    .await
    .unwrap();
}

/// A Service deleted from the config takes its request series with it,
/// failures included; the Services that stay keep their counts.
#[tokio::test]
async fn a_deleted_service_takes_its_request_series_with_it() {
    let ok = app("ok", &[]).await;
    let failing = app("failing", &["--error-rate", "1", "--error-status", "503"]).await;
    let both = service("catalog", "http", &[(ok.addr, 1)], None)
        + &service("pricing", "http", &[(failing.addr, 1)], None);
    let dir = config_dir(&[("svc.yaml", &both)]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let client = HttpClient::http1();
    for host in ["catalog", "catalog", "pricing", "pricing", "pricing"] {
        client.get(p.outbound, host, "/").await.unwrap();
    }
    let lines_of = |svc: &'static str| {
        let p = &p;
        async move {
            let needle = format!("service=\"{svc}\"");
            p.admin_get("/metrics")
                .await
                .lines()
                .filter(|l| {
                    l.starts_with("weft_request") && l.contains(&needle) && !l.starts_with('#')
                })
                .count()
        }
    };
    assert!(lines_of("pricing.default").await > 0);
    let catalog_before = p
        .metric("weft_requests_total", &["service=\"catalog.default\""])
        .await;
    assert_eq!(catalog_before, 2.0);
    assert_eq!(
        p.metric(
            "weft_requests_total",
            &["service=\"pricing.default\"", "code=\"503\""]
        )
        .await,
        3.0
    );

    replace_file(
        dir.path(),
        "svc.yaml",
        &service("catalog", "http", &[(ok.addr, 1)], None),
    );
    wait_until("the change is applied", Duration::from_secs(10), || async {
        p.metric("weft_config_generation", &[]).await >= 2.0
    })
    .await
    .unwrap();
    assert_eq!(
        lines_of("pricing.default").await,
        0,
        "pricing's series are gone"
    );
    assert_eq!(
        p.metric("weft_requests_total", &["service=\"catalog.default\""])
            .await,
        catalog_before
    );
}

#[tokio::test]
async fn a_bad_change_is_rejected_and_the_last_good_config_stays() {
    let a = app("good", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(a.addr, 1)], None),
    )]);
    let p = proxy(dir.path(), "frontend", None, &[]).await;
    let bad =
        service("catalog", "http", &[(a.addr, 1)], None).replace("protocol: http", "protocol: htp");
    replace_file(dir.path(), "svc.yaml", &bad);
    wait_until(
        "the rejection is counted",
        Duration::from_secs(10),
        || async { p.metric("weft_config_errors_total", &[]).await >= 1.0 },
    )
    .await
    .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&p.admin_get("/config_dump").await).unwrap();
    let err = dump["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("svc.yaml") && err.contains("spec.ports[0].protocol"),
        "{dump}"
    );
    assert_eq!(dump["generation"], 1);
    // Still serving the last good config.
    let r = HttpClient::http1()
        .get(p.outbound, "catalog", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        p.proc.logs().contains("config change rejected"),
        "the rejection is logged"
    );
    // Fixing the file clears the error.
    replace_file(
        dir.path(),
        "svc.yaml",
        &service("catalog2", "http", &[(a.addr, 1)], None),
    );
    wait_until("the fix is applied", Duration::from_secs(10), || async {
        p.metric("weft_config_generation", &[]).await >= 2.0
    })
    .await
    .unwrap();
    assert_eq!(p.metric("weft_config_last_error", &[]).await, 0.0);
}

#[tokio::test]
async fn bad_requests_get_clean_http_errors() {
    let a = app("a", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(a.addr, 1)], None),
    )]);
    let p = proxy(
        dir.path(),
        "frontend",
        None,
        &[
            "--header-read-timeout",
            "500ms",
            "--max-header-bytes",
            "8192",
        ],
    )
    .await;

    // Malformed request line.
    let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    s.write_all(b"GARBAGE\x01\x02 nonsense\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");

    // Oversized headers.
    let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    let big = "x".repeat(20_000);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: catalog\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431"), "{out:?}");

    // A client that never finishes its headers is disconnected.
    let mut s = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: cata").await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "slow client still connected after 5 s");

    // The proxy still serves normal requests.
    let r = HttpClient::http1()
        .get(p.outbound, "catalog", "/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let a = app("slow", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(a.addr, 1)], None),
    )]);
    let mut p = proxy(dir.path(), "frontend", None, &[]).await;
    let outbound = p.outbound;
    let in_flight = tokio::spawn(async move {
        HttpClient::http1()
            .get(outbound, "catalog", "/delay/700")
            .await
    });
    // Make sure the slow request reached the app before SIGTERM.
    wait_until("request in flight", READY, || async {
        p.metric("weft_endpoint_requests_total", &[]).await >= 1.0
    })
    .await
    .unwrap();
    p.proc.sigterm();
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight request finished: {}",
        r.text()
    );
    let status = p.proc.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        tokio::net::TcpStream::connect(outbound).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn inbound_detects_opaque_tcp() {
    let (echo, _task) = tcp_echo_server().await.unwrap();
    let dir = config_dir(&[("svc.yaml", &service("db", "tcp", &[(echo, 1)], None))]);
    let p = proxy(dir.path(), "db", Some(echo), &[]).await;
    for payload in [&b"\x16\x03\x01 not http at all"[..], b"hello"] {
        let mut s = tokio::net::TcpStream::connect(p.inbound).await.unwrap();
        s.write_all(payload).await.unwrap();
        let mut buf = vec![0; payload.len()];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, payload);
    }
    // A server-first protocol: the client says nothing; after the detection
    // timeout the connection is forwarded as TCP anyway.
    let mut s = tokio::net::TcpStream::connect(p.inbound).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await; // longer than --detect-timeout (1s): the behaviour under test
    s.write_all(b"late").await.unwrap();
    let mut buf = [0; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"late");
}

#[tokio::test]
async fn validate_names_every_problem() {
    let dir = config_dir(&[
        (
            "a.yaml",
            &service("catalog", "http", &[], None).replace("protocol: http", "protocol: htp"),
        ),
        (
            "b.yaml",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, name: nothing}]\n  rules: [{backendRefs: [{name: nothing}]}]\n",
        ),
    ]);
    let out = std::process::Command::new(weft_bin())
        .args(["validate", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("a.yaml: document 1 (Service/default/catalog): spec.ports[0].protocol"),
        "{text}"
    );
    assert!(text.contains("b.yaml: document 1 (HTTPRoute/default/r): spec.parentRefs[0].name: Service default/nothing does not exist"), "{text}");
    let good = config_dir(&[("a.yaml", &service("catalog", "http", &[], None))]);
    let out = std::process::Command::new(weft_bin())
        .args(["validate", good.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    // The proxy refuses to start on a bad config and says why.
    let out = std::process::Command::new(weft_bin())
        .args([
            "proxy",
            "--config",
            dir.path().to_str().unwrap(),
            "--service",
            "x",
            "--admin",
            "127.0.0.1:0",
            "--outbound",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.ports[0].protocol"));
}
