//! Process-level harness: the real `weft` binary as sample apps and sidecars,
//! on free loopback ports, with config written to a temp dir.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_test_support::{HttpClient, TempDir, WeftProcess, free_addr, wait_until};

pub const READY: Duration = Duration::from_secs(20);

pub fn weft_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// A `weft app` process.
pub struct App {
    pub proc: WeftProcess,
    pub addr: SocketAddr,
}

pub async fn app(name: &str, extra: &[&str]) -> App {
    let addr = free_addr();
    let listen = addr.to_string();
    let mut args = vec!["app", "--listen", &listen, "--name", name];
    args.extend_from_slice(extra);
    let proc = WeftProcess::spawn(&weft_bin(), &args).expect("spawn weft app");
    wait_until(&format!("app {name} accepting on {addr}"), READY, || {
        tokio::net::TcpStream::connect(addr)
    })
    .await
    .unwrap();
    App { proc, addr }
}

/// A `weft proxy` process.
pub struct Proxy {
    pub proc: WeftProcess,
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
}

impl Proxy {
    pub async fn admin_get(&self, path: &str) -> String {
        let r = HttpClient::http1()
            .get(self.admin, "admin", path)
            .await
            .unwrap();
        r.text()
    }

    /// The value of one metric sample whose line contains all `parts`.
    pub async fn metric(&self, name: &str, parts: &[&str]) -> f64 {
        sample_where(&self.admin_get("/metrics").await, name, parts)
    }
}

/// The sum of the samples in Prometheus text `metrics` whose line starts
/// with `name` and contains every one of `parts` (0 when there is none).
pub fn sample_where(metrics: &str, name: &str, parts: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`sample_where`] without label conditions.
pub fn sample(metrics: &str, name: &str) -> f64 {
    sample_where(metrics, name, &[])
}

pub async fn proxy(config: &Path, service: &str, app: Option<SocketAddr>, extra: &[&str]) -> Proxy {
    let (outbound, inbound, admin) = (free_addr(), free_addr(), free_addr());
    let (o, i, a) = (outbound.to_string(), inbound.to_string(), admin.to_string());
    let app_s = app.map(|a| a.to_string());
    let mut args = vec![
        "proxy",
        "--config",
        config.to_str().unwrap(),
        "--service",
        service,
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
    args.extend_from_slice(extra);
    let mut proc = WeftProcess::spawn(&weft_bin(), &args).expect("spawn weft proxy");
    proc.wait_admin_ready(admin, READY).await.unwrap();
    Proxy {
        proc,
        outbound,
        inbound,
        admin,
    }
}

/// Polls `admin`'s `/ready` until it answers 200 (bounded by `timeout`).
pub async fn wait_ready(what: &str, admin: SocketAddr, timeout: Duration) {
    wait_until(what, timeout, || async move {
        let r = HttpClient::http1()
            .with_timeout(Duration::from_secs(1))
            .get(admin, "admin", "/ready")
            .await
            .ok()?;
        r.status.is_success().then_some(())
    })
    .await
    .unwrap();
}

/// A weft `Service` document.
pub fn service(
    name: &str,
    protocol: &str,
    endpoints: &[(SocketAddr, u32)],
    vip: Option<&str>,
) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .map(|(a, w)| format!("  - {{address: \"{a}\", weight: {w}}}"))
        .collect();
    let vip = vip.map(|v| format!("  vip: {v}\n")).unwrap_or_default();
    let eps = if eps.is_empty() {
        "  endpoints: []".to_string()
    } else {
        format!("  endpoints:\n{}", eps.join("\n"))
    };
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{vip}  ports: [{{port: 8080, protocol: {protocol}}}]\n{eps}\n---\n"
    )
}

pub fn config_dir(files: &[(&str, &str)]) -> TempDir {
    let dir = TempDir::new("weft-it").unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

/// Writes a file so the proxy's change detection sees it at once (new size
/// or mtime) and atomically (rename), as config tools do.
pub fn replace_file(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Counts `x-app-name` values over `n` GETs through `via` with `host`.
pub async fn app_counts(
    via: SocketAddr,
    host: &str,
    path: &str,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let client = HttpClient::http1();
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let r = client.get(via, host, path).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        *counts
            .entry(r.header("x-app-name").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    counts
}

// ---- xDS: the control plane and real xDS clients ---------------------------

/// An external tool from environment variable `var` (set by
/// scripts/test.sh); `None` (the test skips, saying why) outside CI.
pub fn external_tool(var: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} must be set in CI (scripts/test.sh sets it)")
        }
        _ => {
            eprintln!("skipped: {var} is not set ({what}); run ./scripts/test.sh");
            None
        }
    }
}

/// An external tool from environment variable `var` (set by
/// scripts/test.sh), else command `cmd` on `PATH`; missing, the test fails
/// in CI (env `CI` set) and skips elsewhere, saying why.
pub fn external_tool_or_path(var: &str, cmd: &str, what: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(cmd))
            .find(|p| p.is_file())
    });
    match on_path {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => panic!(
            "{what} is missing: neither {var} is set nor `{cmd}` on PATH \
             (scripts/setup.sh installs it, scripts/test.sh sets {var})"
        ),
        None => {
            eprintln!(
                "skipped: {what} not found ({var} unset, no `{cmd}` on PATH); run ./scripts/test.sh"
            );
            None
        }
    }
}

/// tests/grpc/grpc_check.py: gRPC echo servers and checking clients.
pub fn grpc_check_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/grpc/grpc_check.py")
}

/// A grpc_check.py echo server on a free port, up and accepting; with a
/// name it answers with trailer `x-server-name: NAME`.
pub async fn grpc_echo_server(
    py: &Path,
    name: Option<&str>,
) -> (tokio::process::Child, SocketAddr) {
    let port = weft_test_support::free_port();
    let mut cmd = tokio::process::Command::new(py);
    cmd.arg(grpc_check_script())
        .args(["server", "--port", &port.to_string()]);
    if let Some(name) = name {
        cmd.args(["--name", name]);
    }
    let child = cmd
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("grpc server up", READY, || {
        tokio::net::TcpStream::connect(addr)
    })
    .await
    .unwrap();
    (child, addr)
}

/// A running `weft control`.
pub struct ControlPlane {
    pub proc: WeftProcess,
    pub xds: SocketAddr,
    pub admin: SocketAddr,
    pub outbound_port: u16,
    pub inbound_port: u16,
}

/// Starts `weft control --config dir` on free ports and waits until ready.
pub async fn control_plane(dir: &Path) -> ControlPlane {
    control_plane_with(dir, &[]).await
}

/// [`control_plane`] with `extra` flags (`--traffic-interval 200ms`, ...).
pub async fn control_plane_with(dir: &Path, extra: &[&str]) -> ControlPlane {
    let (xds, admin) = (free_addr(), free_addr());
    let (outbound_port, inbound_port) = (
        weft_test_support::free_port(),
        weft_test_support::free_port(),
    );
    let (x, a, o, i) = (
        xds.to_string(),
        admin.to_string(),
        outbound_port.to_string(),
        inbound_port.to_string(),
    );
    let mut args = vec![
        "control",
        "--config",
        dir.to_str().unwrap(),
        "--xds",
        &x,
        "--admin",
        &a,
        "--sidecar-outbound-port",
        &o,
        "--sidecar-inbound-port",
        &i,
    ];
    args.extend_from_slice(extra);
    let mut proc = WeftProcess::spawn(&weft_bin(), &args).expect("spawn weft control");
    proc.wait_admin_ready(admin, READY).await.unwrap();
    ControlPlane {
        proc,
        xds,
        admin,
        outbound_port,
        inbound_port,
    }
}

/// A running Envoy that takes everything from a control plane over ADS.
pub struct AdsEnvoy {
    pub proc: WeftProcess,
    pub admin: SocketAddr,
    _dir: TempDir,
}

impl AdsEnvoy {
    /// The sum of the admin `/stats` values whose name contains `filter`.
    pub async fn stat(&self, filter: &str) -> f64 {
        let r = HttpClient::http1()
            .get(self.admin, "admin", &format!("/stats?filter={filter}"))
            .await
            .unwrap();
        r.text()
            .lines()
            .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<f64>().ok())
            .sum()
    }
}

/// Starts Envoy `bin` as node `node_id` of cluster `cluster` (a Service or
/// Gateway name), bootstrapped with only the xDS cluster (`DELTA_GRPC` when
/// `delta`), and waits until it has its first config. Its node metadata
/// announces its admin address (`weft.dev/admin`), as README tells Envoy
/// users to, for the control plane's Prometheus discovery.
pub async fn ads_envoy(
    bin: &Path,
    node_id: &str,
    cluster: &str,
    xds: SocketAddr,
    delta: bool,
) -> AdsEnvoy {
    let admin = free_addr();
    let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
    let bootstrap = format!(
        r#"node: {{id: {node_id}, cluster: {cluster}, metadata: {{"weft.dev/admin": "127.0.0.1:{admin_port}"}}}}
admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds_cluster}}}}]
  lds_config: {{ads: {{}}, resource_api_version: V3}}
  cds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds_cluster
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {xds_port}}}}}}}}}]}}]
"#,
        admin_port = admin.port(),
        xds_port = xds.port(),
    );
    let dir = TempDir::new("weft-envoy").unwrap();
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, bootstrap).unwrap();
    let base_id = (std::process::id() % 10_000) * 10 + 7;
    let mut proc = WeftProcess::spawn(
        bin,
        &[
            "-c",
            path.to_str().unwrap(),
            "--base-id",
            &base_id.to_string(),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "-l",
            "warn",
        ],
    )
    .expect("spawn envoy");
    proc.wait_admin_ready(admin, Duration::from_secs(30))
        .await
        .unwrap();
    AdsEnvoy {
        proc,
        admin,
        _dir: dir,
    }
}

/// Counts `x-app-name` values (failures under `status N` / `error ...`) of
/// `n` GETs of `/` through `via` with `host`.
pub async fn answer_counts(
    via: SocketAddr,
    host: &str,
    n: usize,
) -> std::collections::BTreeMap<String, usize> {
    let client = HttpClient::http1();
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..n {
        let key = match client.get(via, host, "/").await {
            Ok(r) if r.status == 200 => r.header("x-app-name").unwrap_or("?").to_string(),
            Ok(r) => format!("status {}", r.status),
            Err(e) => format!("error {e}"),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// A `weft proxy --xds` sidecar of Service `cluster` (node `node`) on
/// free ports, following the control plane at `xds`; ready once it has
/// its first config and its listeners.
pub async fn xds_sidecar(xds: SocketAddr, node: &str, cluster: &str) -> Proxy {
    let (outbound, inbound, admin) = (free_addr(), free_addr(), free_addr());
    let (x, o, i, a) = (
        xds.to_string(),
        outbound.to_string(),
        inbound.to_string(),
        admin.to_string(),
    );
    let args = [
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
    let mut proc = WeftProcess::spawn(&weft_bin(), &args).expect("spawn weft proxy --xds");
    proc.wait_admin_ready(admin, READY).await.unwrap();
    Proxy {
        proc,
        outbound,
        inbound,
        admin,
    }
}
