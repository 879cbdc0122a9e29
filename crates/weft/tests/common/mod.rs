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
        let text = self.admin_get("/metrics").await;
        text.lines()
            .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
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
    let proc = WeftProcess::spawn(&weft_bin(), &args).expect("spawn weft proxy");
    wait_until(&format!("proxy {service} ready"), READY, || async move {
        let r = HttpClient::http1()
            .get(admin, "admin", "/ready")
            .await
            .ok()?;
        r.status.is_success().then_some(())
    })
    .await
    .unwrap();
    Proxy {
        proc,
        outbound,
        inbound,
        admin,
    }
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
