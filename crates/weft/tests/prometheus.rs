//! Prometheus over the mesh: `weft control` lists every weft proxy on xDS
//! (and itself) at `/sd/prometheus`, and a real Prometheus, discovering its
//! targets there, counts exactly the requests the test sent through two
//! sidecars. `weft control --prometheus` reads its traffic view (`/traffic`,
//! `weft stat`) from that Prometheus, and from the proxies while it fails.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use weft_test_support::{HttpClient, TempDir, WeftProcess, free_addr, wait_until};

/// Control plane, proxies and Prometheus notice each other within this.
const CONVERGE: Duration = Duration::from_secs(30);

fn mesh(app: SocketAddr) -> String {
    service("catalog", "http", &[(app, 1)], None) + &service("frontend", "http", &[], None)
}

/// What `/sd/prometheus` lists now.
async fn discovered(control: &ControlPlane) -> Vec<Value> {
    discovered_at(control.admin).await
}

/// What `/sd/prometheus` on the control plane at `admin` lists now.
async fn discovered_at(admin: SocketAddr) -> Vec<Value> {
    let r = HttpClient::http1()
        .get(admin, "admin", "/sd/prometheus")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_str(&r.text()).unwrap();
    v.as_array().expect("a JSON array of target groups").clone()
}

fn group(target: SocketAddr, node: &str, service: &str, kind: &str) -> Value {
    serde_json::json!({
        "targets": [target.to_string()],
        "labels": {
            "weft_node": node,
            "weft_service": service,
            "weft_kind": kind,
            "__metrics_path__": "/metrics",
        },
    })
}

#[tokio::test]
async fn weft_proxies_on_xds_are_listed_with_their_labels_until_they_stop() {
    let app = app("catalog", &[]).await;
    let dir = config_dir(&[("mesh.yaml", &mesh(app.addr))]);
    let control = control_plane(dir.path()).await;
    let mut one = xds_sidecar(control.xds, "frontend-1", "frontend").await;
    let two = xds_sidecar(control.xds, "frontend-2", "frontend").await;

    let own = group(control.admin, "weft-control", "weft-control", "control");
    let mut expected = vec![
        own.clone(),
        group(one.admin, "frontend-1", "frontend", "weft"),
        group(two.admin, "frontend-2", "frontend", "weft"),
    ];
    // Listed by address.
    expected[1..].sort_by_key(|g| g["targets"][0].as_str().unwrap().to_string());
    let listed = wait_until("both proxies listed", CONVERGE, || async {
        let groups = discovered(&control).await;
        (groups.len() == 3).then_some(groups)
    })
    .await
    .unwrap();
    assert_eq!(listed, expected);

    one.proc.sigterm();
    one.proc.wait_exit(CONVERGE).await.unwrap();
    let listed = wait_until("the stopped proxy gone", CONVERGE, || async {
        let groups = discovered(&control).await;
        (groups.len() == 2).then_some(groups)
    })
    .await
    .unwrap();
    assert_eq!(
        listed,
        [own, group(two.admin, "frontend-2", "frontend", "weft")]
    );
}

/// An Envoy sidecar that announces its admin address in its node metadata
/// is listed with Envoy's metrics path, and a real Prometheus scrapes it.
#[tokio::test]
async fn an_envoy_sidecar_is_discovered_and_scraped_on_its_own_path() {
    let Some(bin) = external_tool_or_path("WEFT_PROMETHEUS", "prometheus", "Prometheus") else {
        return;
    };
    let Some(envoy_bin) = external_tool("WEFT_ENVOY", "Envoy") else {
        return;
    };
    let app = app("catalog", &[]).await;
    let dir = config_dir(&[("mesh.yaml", &mesh(app.addr))]);
    let control = control_plane(dir.path()).await;
    let envoy = ads_envoy(&envoy_bin, "frontend-envoy", "frontend", control.xds, true).await;
    let listed = wait_until("the Envoy node listed", CONVERGE, || async {
        let groups = discovered(&control).await;
        (groups.len() == 2).then_some(groups)
    })
    .await
    .unwrap();
    let mut want = group(envoy.admin, "frontend-envoy", "frontend", "envoy");
    want["labels"]["__metrics_path__"] = "/stats/prometheus".into();
    assert_eq!(listed[1], want, "{listed:#?}");

    let sd = format!("http://{}/sd/prometheus", control.admin);
    let prometheus = Prometheus::start(&bin, &sd).await;
    prometheus
        .wait_for(
            "sum by (weft_kind) (up)",
            "weft_kind",
            &[("control", 1.0), ("envoy", 1.0)],
        )
        .await;
    // Envoy's own metrics, under weft's labels.
    prometheus
        .wait_for(
            "max by (weft_node) (envoy_server_live{weft_kind=\"envoy\"})",
            "weft_node",
            &[("frontend-envoy", 1.0)],
        )
        .await;
}

/// `s` for a URL query value.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A `prometheus` process on a free port, its data in a temp dir.
struct Prometheus {
    proc: WeftProcess,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes every second whatever `sd` (an `http_sd_configs` URL) lists.
    async fn start(bin: &std::path::Path, sd: &str) -> Prometheus {
        Self::start_at(bin, sd, free_addr()).await
    }

    /// [`Prometheus::start`] listening on `addr`.
    async fn start_at(bin: &std::path::Path, sd: &str, addr: SocketAddr) -> Prometheus {
        let dir = TempDir::new("weft-prometheus").unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n\
                 - job_name: weft\n  \
                   http_sd_configs: [{{url: \"{sd}\", refresh_interval: 1s}}]\n"
            ),
        )
        .unwrap();
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = WeftProcess::spawn(bin, &args).expect("spawn prometheus");
        wait_until("prometheus ready", CONVERGE, || async move {
            let r = HttpClient::http1()
                .get(addr, "prometheus", "/-/ready")
                .await
                .ok()?;
            r.status.is_success().then_some(())
        })
        .await
        .unwrap();
        Prometheus {
            proc,
            addr,
            _dir: dir,
        }
    }

    /// An instant PromQL query: each result's labels and value.
    async fn query(&self, promql: &str) -> Vec<(serde_json::Map<String, Value>, f64)> {
        self.query_path(
            format!("/api/v1/query?query={}", percent_encode(promql)),
            promql,
        )
        .await
    }

    /// [`Prometheus::query`] evaluated at `at` (Unix seconds).
    async fn query_at(&self, promql: &str, at: f64) -> Vec<(serde_json::Map<String, Value>, f64)> {
        let path = format!(
            "/api/v1/query?query={}&time={at:.3}",
            percent_encode(promql)
        );
        self.query_path(path, promql).await
    }

    async fn query_path(
        &self,
        path: String,
        promql: &str,
    ) -> Vec<(serde_json::Map<String, Value>, f64)> {
        let r = HttpClient::http1()
            .get(self.addr, "prometheus", &path)
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let labels = s["metric"].as_object().unwrap().clone();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// Polls `promql` until its results, as (value of label `by`, value)
    /// sorted, equal `want`.
    async fn wait_for(&self, promql: &str, by: &str, want: &[(&str, f64)]) {
        let want: Vec<(String, f64)> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let last = std::sync::Mutex::new(Vec::new());
        let seen = wait_until(promql, CONVERGE, || async {
            let mut got: Vec<(String, f64)> = self
                .query(promql)
                .await
                .into_iter()
                .map(|(labels, v)| {
                    let key = labels.get(by).and_then(Value::as_str).unwrap_or("");
                    (key.to_string(), v)
                })
                .collect();
            got.sort_by(|a, b| a.0.cmp(&b.0));
            let done = got == want;
            *last.lock().unwrap() = got;
            done.then_some(())
        })
        .await;
        assert!(
            seen.is_ok(),
            "{promql}: wanted {want:?}, Prometheus said {:?}\n{}",
            last.lock().unwrap(),
            self.proc.logs()
        );
    }
}

#[tokio::test]
async fn prometheus_discovers_the_mesh_and_counts_what_it_served() {
    let Some(bin) = external_tool_or_path("WEFT_PROMETHEUS", "prometheus", "Prometheus") else {
        return;
    };
    let app = app("catalog", &[]).await;
    let dir = config_dir(&[("mesh.yaml", &mesh(app.addr))]);
    let control = control_plane(dir.path()).await;
    let one = xds_sidecar(control.xds, "frontend-1", "frontend").await;
    let two = xds_sidecar(control.xds, "frontend-2", "frontend").await;
    wait_until("both proxies listed", CONVERGE, || async {
        (discovered(&control).await.len() == 3).then_some(())
    })
    .await
    .unwrap();

    // frontend-1: 30 OK and 10 answered 500 by the app; frontend-2: 20 OK.
    let client = HttpClient::http1();
    for (proxy, path, n, status) in [
        (&one, "/", 30, 200),
        (&one, "/status/500", 10, 500),
        (&two, "/", 20, 200),
    ] {
        for _ in 0..n {
            let r = client.get(proxy.outbound, "catalog", path).await.unwrap();
            assert_eq!(r.status, status, "{}", r.text());
        }
    }

    let sd = format!("http://{}/sd/prometheus", control.admin);
    let prometheus = Prometheus::start(&bin, &sd).await;
    // Every target discovered and scraped, with weft's labels.
    prometheus
        .wait_for(
            "sum by (weft_kind) (up)",
            "weft_kind",
            &[("control", 1.0), ("weft", 2.0)],
        )
        .await;
    prometheus
        .wait_for(
            r#"sum by (weft_node) (weft_requests_total{direction="outbound",weft_service="frontend"})"#,
            "weft_node",
            &[("frontend-1", 40.0), ("frontend-2", 20.0)],
        )
        .await;
    prometheus
        .wait_for(
            r#"sum(weft_requests_total{direction="outbound",code!~"5.."}) / sum(weft_requests_total{direction="outbound"})"#,
            "",
            &[("", 50.0 / 60.0)],
        )
        .await;
    // The control plane's own metrics come through the same discovery.
    prometheus
        .wait_for(
            r#"sum by (weft_kind) (weft_xds_streams_connected{kind="weft"})"#,
            "weft_kind",
            &[("control", 2.0)],
        )
        .await;

    // The Grafana dashboard: every query is valid PromQL over these
    // metrics, and the panels a user opens first show this mesh.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../deploy/grafana/weft-mesh.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$service", ".*");
            queries.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    assert!(queries.len() >= 20, "{} queries", queries.len());
    for (_, expr) in &queries {
        // `query` fails the test unless Prometheus accepted the expression.
        prometheus.query(expr).await;
    }
    // Every metric a query names is one a proxy or the control plane
    // registers: families without samples are not exported yet, so the
    // names come from the registrations (`registry.register("name", ...)`
    // under each registry's prefix).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut families = std::collections::BTreeSet::new();
    for (file, prefix) in [
        ("crates/weft-proxy/src/metrics.rs", "weft"),
        ("crates/weft-control/src/metrics.rs", "weft_control"),
        ("crates/weft-xds/src/server/status.rs", "weft_xds"),
    ] {
        let source = std::fs::read_to_string(root.join(file)).unwrap();
        let mut lines = source.lines();
        while let Some(line) = lines.next() {
            if !line.trim_end().ends_with("register(") {
                continue;
            }
            if let Some(name) = lines.next().and_then(|l| l.trim().strip_prefix('"')) {
                let name = name.split('"').next().unwrap_or_default();
                families.insert(format!("{prefix}_{name}"));
            }
        }
    }
    assert!(families.contains("weft_requests"), "{families:?}");
    for (title, expr) in &queries {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("weft_"))
        {
            let family = ["_bucket", "_total"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            assert!(
                families.contains(family),
                "panel {title:?} reads {name}, which nothing exports ({families:?})"
            );
        }
    }
    for must_show in [
        "Requests per second",
        "Success rate",
        "Latency p50 / p99",
        "Share of requests per endpoint",
        "Connected xDS streams by data plane",
        "Config generation and rejected changes",
    ] {
        let exprs: Vec<&String> = queries
            .iter()
            .filter(|(t, _)| t == must_show)
            .map(|(_, e)| e)
            .collect();
        assert!(!exprs.is_empty(), "no panel {must_show:?}");
        wait_until(must_show, CONVERGE, || async {
            for e in &exprs {
                if prometheus.query(e).await.is_empty() {
                    return None;
                }
            }
            Some(())
        })
        .await
        .unwrap_or_else(|_| panic!("panel {must_show:?} shows nothing: {exprs:?}"));
    }
}

/// `GET /traffic?window=300s&service=catalog` on the control plane.
async fn traffic(control: &ControlPlane) -> Value {
    let r = HttpClient::http1()
        .get(
            control.admin,
            "admin",
            "/traffic?window=300s&service=catalog",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_str(&r.text()).unwrap()
}

/// Requests and failures of catalog (all callers), then of its edges from
/// frontend and checkout, as `/traffic` counted them.
fn catalog_counts(v: &Value) -> Option<[(f64, f64); 3]> {
    let items = v["items"].as_array()?;
    let find = |caller: Option<&str>| {
        items.iter().find(|i| {
            i["resource"]["name"] == "catalog"
                && match caller {
                    None => i["edge"].is_null(),
                    Some(c) => i["edge"]["resource"]["name"] == c,
                }
        })
    };
    let metric = |item: &Value, name: &str| {
        item["metrics"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == name)?["value"]
            .as_f64()
    };
    let counts = |item: Option<&Value>| {
        let item = item?;
        let (ok, failed) = (
            metric(item, "success_count")?,
            metric(item, "failure_count")?,
        );
        Some((ok + failed, failed))
    };
    Some([
        counts(find(None))?,
        counts(find(Some("frontend")))?,
        counts(find(Some("checkout")))?,
    ])
}

/// Prometheus' `increase()` reports the growth between the first and the
/// last sample in the window, extrapolated toward the window's ends: at the
/// end by up to 1.1 scrape intervals (the newest sample is at most one
/// interval, 1 s, old), at the start by at most half an interval and never
/// past where the counter would have been zero. So once the newest sample
/// postdates the traffic, it reads at least what was sent and at most
/// about 1.6 s' worth more of the average rate over the samples' span;
/// past a 16 s span that is under 10%. Polled until it holds.
const EXTRAPOLATION: f64 = 0.10;

fn within_extrapolation(got: &[(f64, f64); 3], sent: &[(f64, f64); 3]) -> bool {
    let close = |got: f64, sent: f64| got >= sent - 1e-9 && got <= sent * (1.0 + EXTRAPOLATION);
    got.iter()
        .zip(sent)
        .all(|(g, s)| close(g.0, s.0) && close(g.1, s.1))
}

#[tokio::test]
async fn the_traffic_view_reads_prometheus_and_falls_back_to_the_proxies_while_it_fails() {
    let Some(bin) = external_tool_or_path("WEFT_PROMETHEUS", "prometheus", "Prometheus") else {
        return;
    };
    let app = app("catalog", &[]).await;
    let dir = config_dir(&[(
        "mesh.yaml",
        &(mesh(app.addr) + &service("checkout", "http", &[], None)),
    )]);
    // Prometheus' address is known before it runs: the control plane is
    // told it at start, Prometheus the control plane's discovery URL.
    let prometheus_addr = free_addr();
    let url = format!("http://{prometheus_addr}");
    let control = control_plane_with(
        dir.path(),
        &["--prometheus", &url, "--traffic-interval", "200ms"],
    )
    .await;
    let f1 = xds_sidecar(control.xds, "frontend-1", "frontend").await;
    let f2 = xds_sidecar(control.xds, "frontend-2", "frontend").await;
    let c1 = xds_sidecar(control.xds, "checkout-1", "checkout").await;
    wait_until("three proxies listed", CONVERGE, || async {
        (discovered(&control).await.len() == 4).then_some(())
    })
    .await
    .unwrap();
    let sd = format!("http://{}/sd/prometheus", control.admin);
    let mut prometheus = Prometheus::start_at(&bin, &sd, prometheus_addr).await;

    // increase() counts only what a series grew by after Prometheus first
    // saw it: one request of each kind first, and the traffic proper once
    // Prometheus has sampled them.
    let client = HttpClient::http1();
    let send = |proxy: &Proxy, path: &'static str, n: usize, status: u16| {
        let (client, outbound) = (&client, proxy.outbound);
        async move {
            for _ in 0..n {
                let r = client.get(outbound, "catalog", path).await.unwrap();
                assert_eq!(r.status, status, "{}", r.text());
            }
        }
    };
    send(&f1, "/", 1, 200).await;
    send(&f1, "/status/500", 1, 500).await;
    send(&f2, "/", 1, 200).await;
    send(&c1, "/", 1, 200).await;
    prometheus
        .wait_for(
            r#"sum by (weft_node) (weft_requests_total{direction="outbound"})"#,
            "weft_node",
            &[
                ("checkout-1", 1.0),
                ("frontend-1", 2.0),
                ("frontend-2", 1.0),
            ],
        )
        .await;
    // frontend-1: 30 OK and 10 answered 500 by the app; frontend-2: 20 OK;
    // checkout-1: 5 OK.
    send(&f1, "/", 30, 200).await;
    send(&f1, "/status/500", 10, 500).await;
    send(&f2, "/", 20, 200).await;
    send(&c1, "/", 5, 200).await;

    // (requests, failures) of catalog, frontend -> catalog, checkout -> catalog.
    let sent = [(65.0, 10.0), (60.0, 10.0), (5.0, 0.0)];
    let last = std::sync::Mutex::new(Value::Null);
    let seen = wait_until(
        "/traffic from Prometheus counts what was sent",
        Duration::from_secs(60),
        || async {
            let v = traffic(&control).await;
            *last.lock().unwrap() = v.clone();
            (v["source"]["kind"] == "prometheus"
                && within_extrapolation(&catalog_counts(&v)?, &sent))
            .then_some(())
        },
    )
    .await;
    let v = last.lock().unwrap().clone();
    assert!(seen.is_ok(), "wanted about {sent:?}:\n{v:#}");
    eprintln!(
        "Prometheus counted {:?} for {sent:?} sent",
        catalog_counts(&v)
    );
    assert_eq!(
        v["source"],
        serde_json::json!({"kind": "prometheus", "prometheus": url})
    );
    let catalog = &v["items"][0];
    assert!(catalog["edge"].is_null(), "{v:#}");
    let p50 = catalog["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "p50_response_latency")
        .and_then(|m| m["value"].as_f64());
    assert!(p50.is_some_and(|ms| ms > 0.0 && ms < 1000.0), "{v:#}");

    // Prometheus gone: the numbers come from the proxies, exactly (the
    // first requests included: a proxy first scraped within 30 s of its
    // start counts from zero), and the answer says why.
    prometheus.proc.sigterm();
    prometheus
        .proc
        .wait_exit(CONVERGE)
        .await
        .expect("prometheus stops");
    let direct = [(69.0, 11.0), (63.0, 11.0), (6.0, 0.0)];
    let seen = wait_until("/traffic falls back to the proxies", CONVERGE, || async {
        let v = traffic(&control).await;
        *last.lock().unwrap() = v.clone();
        (v["source"]["kind"] == "proxies" && catalog_counts(&v)? == direct).then_some(())
    })
    .await;
    let v = last.lock().unwrap().clone();
    assert!(seen.is_ok(), "wanted {direct:?}:\n{v:#}");
    let fallback = format!("Prometheus {url} failed: connection refused");
    assert_eq!(
        v["source"],
        serde_json::json!({"kind": "proxies", "prometheus": url, "fallback": fallback})
    );
    for _ in 0..2 {
        assert_eq!(traffic(&control).await["source"]["kind"], "proxies");
    }
    let metrics = client
        .get(control.admin, "admin", "/metrics")
        .await
        .unwrap()
        .text();
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_traffic_prometheus_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no weft_traffic_prometheus_errors_total:\n{metrics}"));
    assert!(errors >= 3.0, "{errors}");
    assert!(
        metrics.contains(r#"weft_traffic_source{kind="proxies"} 1"#),
        "{metrics}"
    );
    // `weft stat` says so.
    let mut stat = WeftProcess::spawn(
        &weft_bin(),
        &[
            "stat",
            "catalog",
            "--control",
            &control.admin.to_string(),
            "--window",
            "300s",
        ],
    )
    .unwrap();
    assert!(stat.wait_exit(CONVERGE).await.unwrap().success());
    let table = stat.logs();
    assert!(
        table.contains(&format!(
            "source: proxies ({fallback}; fell back to direct scraping)"
        )),
        "{table}"
    );
    assert!(
        table.contains("frontend.default -> catalog.default"),
        "{table}"
    );

    // Back: read from Prometheus again. Logged once each way, however many
    // queries failed in between.
    let _prometheus = Prometheus::start_at(&bin, &sd, prometheus_addr).await;
    wait_until("/traffic reads Prometheus again", CONVERGE, || async {
        (traffic(&control).await["source"]["kind"] == "prometheus").then_some(())
    })
    .await
    .unwrap();
    let logs = control.proc.logs();
    assert_eq!(logs.matches("Prometheus fails").count(), 1, "{logs}");
    assert_eq!(
        logs.matches("Prometheus answers again").count(),
        1,
        "{logs}"
    );
}

#[tokio::test]
async fn a_malformed_prometheus_url_stops_the_start_and_an_unreachable_one_does_not() {
    let dir = config_dir(&[("mesh.yaml", &mesh(free_addr()))]);
    let mut bad = WeftProcess::spawn(
        &weft_bin(),
        &[
            "control",
            "--config",
            dir.path().to_str().unwrap(),
            "--prometheus",
            "127.0.0.1:9090",
        ],
    )
    .unwrap();
    let status = bad.wait_exit(CONVERGE).await.unwrap();
    let out = bad.logs();
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("--prometheus") && out.contains("http://HOST:PORT"),
        "{out}"
    );

    // Nothing listens there: the control plane starts, and /traffic
    // answers from the proxies at once, saying why.
    let nowhere = format!("http://{}", free_addr());
    let control = control_plane_with(dir.path(), &["--prometheus", &nowhere]).await;
    let v = traffic(&control).await;
    assert_eq!(v["source"]["kind"], "proxies", "{v:#}");
    assert_eq!(
        v["source"]["fallback"],
        format!("Prometheus {nowhere} failed: connection refused")
    );
    assert_eq!(v["items"], serde_json::json!([]));
}

/// Requests per second the demo's driver sends into the frontend.
const DEMO_RATE: u32 = 100;

/// `weft demo --no-script` at [`DEMO_RATE`] on a loopback range of its own
/// (`127.<base>.x.y`, beside other tests and demos; another range when that
/// one is taken), its driver's counters on a free admin address. Returns
/// the demo, its base and that address once traffic flows.
async fn demo() -> (WeftProcess, u8, SocketAddr) {
    let mut last = String::new();
    for attempt in 0..5 {
        let base = 100 + ((std::process::id() + attempt * 11) % 50) as u8;
        let admin = free_addr();
        let mut demo = WeftProcess::spawn(
            &weft_bin(),
            &[
                "demo",
                "--plain",
                "--no-script",
                "--log",
                "warn",
                "--rate",
                &DEMO_RATE.to_string(),
                "--ip-base",
                &base.to_string(),
                "--admin",
                &admin.to_string(),
            ],
        )
        .expect("spawn weft demo");
        match demo.wait_admin_ready(admin, CONVERGE).await {
            Ok(()) => return (demo, base, admin),
            Err(e) if demo.logs().contains("another `weft demo` running") => last = e.to_string(),
            Err(e) => panic!("{e:#}"),
        }
    }
    panic!("no free loopback range for the demo: {last}");
}

/// The driver's (sent, ok) on the demo's admin port.
async fn driver_counts(admin: SocketAddr) -> Option<(f64, f64)> {
    let m = HttpClient::http1()
        .get(admin, "admin", "/metrics")
        .await
        .ok()?
        .text();
    let sample = |name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix("{} "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((
        sample("weft_demo_requests_sent_total")?,
        sample("weft_demo_requests_ok_total")?,
    ))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The driver publishes its counters once a second: (sent, ok) just after
/// the first publication above `after` sent (the one now: the next), and
/// when it was seen (Unix seconds, within a poll of 20 ms).
async fn driver_update(admin: SocketAddr, after: f64) -> (f64, f64, f64) {
    wait_until("the demo driver's next update", CONVERGE, || async {
        let (sent, ok) = driver_counts(admin).await?;
        (sent > after).then(|| (sent, ok, unix_now()))
    })
    .await
    .unwrap()
}

/// The counts of `increase()` over a window and of the demo's driver over
/// the same window differ by the traffic of a moment: the driver's counts
/// are read within 20 ms of its publication, the requests finish at the
/// sidecars some milliseconds after they were sent, and `increase()`
/// extrapolates the growth between its first and last samples (1 s apart,
/// so each within 1.1 intervals of the window's edges: Prometheus
/// extrapolates all the way to them) linearly to the edges, right for a
/// steady open-loop rate up to that second's jitter. A few requests of
/// about 1500; 5% leaves room for a loaded machine.
const DEMO_TOLERANCE: f64 = 0.05;

/// The real `weft demo`: Prometheus, discovering its targets at the demo
/// control plane's `/sd/prometheus`, finds every sidecar up, and over a
/// window of about 15 s computes the frontend's call rates and the
/// Services' success rates that the demo's own traffic driver counted.
/// Pricing is made to fail a fifth of its requests (its apps' fault API,
/// as the demo's script does), so the success rates say something.
#[tokio::test]
async fn prometheus_measures_the_demo_mesh_as_its_traffic_driver_counted_it() {
    let Some(bin) = external_tool_or_path("WEFT_PROMETHEUS", "prometheus", "Prometheus") else {
        return;
    };
    let (mut demo, base, admin) = demo().await;
    let client = HttpClient::http1();
    for pod in ["4.1", "4.2"] {
        let app: SocketAddr = format!("127.{base}.{pod}:8080").parse().unwrap();
        let r = client
            .post(app, "pricing", "/_weft/fault?error_rate=0.2", "")
            .await
            .unwrap();
        assert!(r.status.is_success(), "{}", r.text());
    }

    // (1) Every sidecar the control plane lists is discovered and up.
    let control: SocketAddr = format!("127.{base}.0.3:15011").parse().unwrap();
    let listed = wait_until("the demo's twelve sidecars listed", CONVERGE, || async {
        let groups = discovered_at(control).await;
        (groups.len() == 13).then_some(groups)
    })
    .await
    .unwrap();
    let mut sidecars = std::collections::BTreeMap::<String, f64>::new();
    for g in &listed {
        if g["labels"]["weft_kind"] == "weft" {
            *sidecars
                .entry(g["labels"]["weft_service"].as_str().unwrap().to_string())
                .or_default() += 1.0;
        }
    }
    assert_eq!(sidecars.values().sum::<f64>(), 12.0, "{listed:#?}");
    let prometheus = Prometheus::start(&bin, &format!("http://{control}/sd/prometheus")).await;
    prometheus
        .wait_for(
            "count by (weft_kind) (up == 1)",
            "weft_kind",
            &[("control", 1.0), ("weft", 12.0)],
        )
        .await;
    let per_service: Vec<(&str, f64)> = sidecars.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    prometheus
        .wait_for(
            r#"count by (weft_service) (up{weft_kind="weft"} == 1)"#,
            "weft_service",
            &per_service,
        )
        .await;

    // A window of about 15 s, its ends at the driver's publications.
    let published = |admin| async move { driver_counts(admin).await.unwrap().0 };
    let (sent0, ok0, from) = driver_update(admin, published(admin).await).await;
    wait_until("15 s of demo traffic", CONVERGE, || async {
        let (sent, _) = driver_counts(admin).await?;
        (sent >= sent0 + f64::from(DEMO_RATE) * 15.0).then_some(())
    })
    .await
    .unwrap();
    let (sent1, ok1, to) = driver_update(admin, published(admin).await).await;
    // Prometheus has every sample up to `to` once the frontend's sidecar
    // was scraped after it.
    wait_until("a scrape after the window", CONVERGE, || async {
        let r = prometheus
            .query(r#"timestamp(up{weft_service="frontend"})"#)
            .await;
        (r.first()?.1 > to).then_some(())
    })
    .await
    .unwrap();
    let secs = to - from;
    let window = format!("{}ms", (secs * 1000.0).round());
    let (sent, ok) = (sent1 - sent0, ok1 - ok0);
    let driver_rate = sent / secs;
    let driver_success = ok / sent;

    // Per Service the frontend called: requests, and successes by the
    // gRPC-aware rule (a 5xx fails a plain HTTP request, a status other
    // than OK a gRPC one), in the window.
    let frontend_calls = |only: &str| {
        format!(
            r#"weft_requests_total{{direction="outbound",source="frontend.default",service=~"catalog.default|pricing.default"{only}}}"#
        )
    };
    let by_service = |promql: String| {
        let prometheus = &prometheus;
        async move {
            let mut out = std::collections::BTreeMap::new();
            for (labels, v) in prometheus.query_at(&promql, to).await {
                out.insert(labels["service"].as_str().unwrap().to_string(), v);
            }
            out
        }
    };
    let calls = by_service(format!(
        "sum by (service) (increase({}[{window}]))",
        frontend_calls("")
    ))
    .await;
    let successes = by_service(format!(
        r#"sum by (service) (increase({}[{window}]) or increase({}[{window}]))"#,
        frontend_calls(r#",grpc_status="",code!~"5..""#),
        frontend_calls(r#",grpc_status="0""#),
    ))
    .await;
    let rate = |s: &str| calls[s] / secs;
    let success = |s: &str| successes.get(s).copied().unwrap_or(0.0) / calls[s];
    let (catalog, pricing) = ("catalog.default", "pricing.default");
    eprintln!(
        "over {secs:.2}s the driver sent {sent} ({driver_rate:.1}/s), {ok} ok \
         ({driver_success:.4}); Prometheus: calls {calls:?}, successes {successes:?}"
    );

    // (2) Each request the driver sends makes the frontend call catalog,
    // and pricing once catalog answered.
    let close = |got: f64, want: f64| (got / want - 1.0).abs() <= DEMO_TOLERANCE;
    assert!(
        close(driver_rate, f64::from(DEMO_RATE)),
        "the driver sent {driver_rate:.1}/s"
    );
    assert!(
        close(rate(catalog), driver_rate),
        "frontend -> catalog {:.1}/s, the driver sent {driver_rate:.1}/s",
        rate(catalog)
    );
    assert!(
        close(rate(pricing), driver_rate * success(catalog)),
        "frontend -> pricing {:.1}/s, the driver sent {driver_rate:.1}/s, catalog answered {:.4}",
        rate(pricing),
        success(catalog)
    );

    // (3) A request succeeds when both calls did: the Services' success
    // rates as the frontend saw them make up the driver's. Retries hide
    // catalog's faults; pricing's show.
    assert!(success(catalog) > 0.99, "catalog {:.4}", success(catalog));
    assert!(
        (0.7..0.9).contains(&success(pricing)),
        "pricing {:.4}",
        success(pricing)
    );
    assert!(
        (success(catalog) * success(pricing) - driver_success).abs() <= DEMO_TOLERANCE / 2.0,
        "catalog {:.4} x pricing {:.4}, the driver saw {driver_success:.4}",
        success(catalog),
        success(pricing)
    );
    // The frontend's own sidecar answered the driver as it counted.
    let frontend = prometheus
        .query_at(
            &format!(
                r#"sum(increase(weft_requests_total{{direction="inbound",service="frontend.default",code!~"5.."}}[{window}])) / sum(increase(weft_requests_total{{direction="inbound",service="frontend.default"}}[{window}]))"#
            ),
            to,
        )
        .await;
    let frontend = frontend.first().map_or(f64::NAN, |r| r.1);
    assert!(
        (frontend - driver_success).abs() <= DEMO_TOLERANCE / 2.0,
        "frontend {frontend:.4}, the driver saw {driver_success:.4}"
    );

    demo.sigterm();
    let status = demo.wait_exit(CONVERGE).await.unwrap();
    assert!(status.success(), "{status:?}\n{}", demo.logs());
}
