//! The demo mesh: a control plane and five pods on loopback, each a sample
//! app with a sidecar that takes its config from the control plane over delta
//! ADS. The control plane serves the bundled example config (and follows
//! edits to it).
//!
//! Each pod has its own loopback address (`127.<base>.<tier>.<n>`; Linux
//! routes all of 127.0.0.0/8 to `lo`), so every pod uses the same well-known
//! ports without clashing: the app on :8080, the sidecar's admin on :15000,
//! outbound on :15001 and inbound on :15006. Services' endpoints are the
//! sidecars' inbound addresses: a call goes caller app -> caller sidecar
//! (outbound) -> callee sidecar (inbound) -> callee app.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use weft_proxy::state::Shared;
use weft_proxy::{ProxyOptions, RunningProxy};

use crate::app::{self, AppConfig, Call, RunningApp};

/// The example config, written with the default addresses (`127.0.x.y`).
pub(crate) const EXAMPLE_CONFIG: &str = include_str!("../../examples-config/demo.yaml");
/// The file name the example config is written under.
pub(crate) const CONFIG_FILE: &str = "demo.yaml";

pub(crate) const APP_PORT: u16 = 8080;
pub(crate) const ADMIN_PORT: u16 = 15000;
pub(crate) const OUTBOUND_PORT: u16 = 15001;
pub(crate) const INBOUND_PORT: u16 = 15006;

/// How long a sidecar lets in-flight requests finish at shutdown. The
/// traffic has stopped by then, so this only bounds a stuck connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// One pod of the demo: which service it runs and how its app behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PodSpec {
    /// The Service the pod belongs to (and its sidecar's `--service`).
    pub(crate) service: &'static str,
    /// The app's `x-app-name`.
    pub(crate) name: &'static str,
    /// Third and fourth octets of the pod address.
    pub(crate) host: [u8; 2],
    pub(crate) latency: Duration,
    pub(crate) jitter: Duration,
    pub(crate) error_rate: f64,
    /// `HOST/PATH` the app calls through its sidecar for each request.
    pub(crate) calls: Option<&'static str>,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The pods, callers first. The addresses must match [`EXAMPLE_CONFIG`].
pub(crate) const PODS: [PodSpec; 5] = [
    PodSpec {
        service: "frontend",
        name: "frontend",
        host: [1, 1],
        latency: ms(1),
        jitter: ms(2),
        error_rate: 0.0,
        calls: Some("catalog/items"),
    },
    PodSpec {
        service: "catalog-v1",
        name: "catalog-v1",
        host: [2, 1],
        latency: ms(2),
        jitter: ms(3),
        error_rate: 0.0,
        calls: Some("inventory/stock"),
    },
    // The canary: a little slower and a little flaky.
    PodSpec {
        service: "catalog-v2",
        name: "catalog-v2",
        host: [2, 2],
        latency: ms(4),
        jitter: ms(4),
        error_rate: 0.02,
        calls: Some("inventory/stock"),
    },
    PodSpec {
        service: "inventory",
        name: "inventory-1",
        host: [3, 1],
        latency: ms(1),
        jitter: ms(2),
        error_rate: 0.0,
        calls: None,
    },
    PodSpec {
        service: "inventory",
        name: "inventory-2",
        host: [3, 2],
        latency: ms(1),
        jitter: ms(2),
        error_rate: 0.0,
        calls: None,
    },
];

/// The example config for pods at `127.<ip_base>.x.y`.
pub(crate) fn example_config(ip_base: u8) -> String {
    EXAMPLE_CONFIG.replace("127.0.", &format!("127.{ip_base}."))
}

impl PodSpec {
    pub(crate) fn ip(&self, ip_base: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, ip_base, self.host[0], self.host[1])
    }

    fn addr(&self, ip_base: u8, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip(ip_base), port))
    }

    fn app_config(&self, ip_base: u8) -> anyhow::Result<AppConfig> {
        let calls = match self.calls {
            Some(target) => {
                vec![format!("{target}@{}", self.addr(ip_base, OUTBOUND_PORT)).parse::<Call>()?]
            }
            None => Vec::new(),
        };
        Ok(AppConfig {
            name: self.name.to_owned(),
            listen: self.addr(ip_base, APP_PORT),
            latency: self.latency,
            jitter: self.jitter,
            error_rate: self.error_rate,
            calls,
            ..AppConfig::default()
        })
    }

    fn proxy_options(&self, ip_base: u8, xds: SocketAddr) -> ProxyOptions {
        let node_id = format!("{}-{}", self.name, self.ip(ip_base));
        let client = weft_xds::client::ClientOptions::new(xds.to_string(), node_id, self.service);
        let mut opts = ProxyOptions::xds(client);
        opts.outbound = self.addr(ip_base, OUTBOUND_PORT);
        opts.inbound = self.addr(ip_base, INBOUND_PORT);
        opts.app = Some(self.addr(ip_base, APP_PORT));
        opts.admin = self.addr(ip_base, ADMIN_PORT);
        opts.drain_timeout = DRAIN_TIMEOUT;
        opts
    }
}

/// A started pod: its app and its sidecar.
pub(crate) struct Pod {
    app: RunningApp,
    proxy: RunningProxy,
}

impl Pod {
    async fn start(spec: PodSpec, ip_base: u8, xds: SocketAddr) -> anyhow::Result<Pod> {
        let app = app::start(spec.app_config(ip_base)?).await?;
        match weft_proxy::start(spec.proxy_options(ip_base, xds)).await {
            Ok(proxy) => Ok(Pod { app, proxy }),
            Err(e) => {
                app.shutdown().await;
                Err(anyhow::Error::new(e).context(format!("sidecar of {}", spec.name)))
            }
        }
    }

    pub(crate) fn sidecar(&self) -> &Arc<Shared> {
        self.proxy.shared()
    }

    /// Sidecar first, so nothing reaches an app that is already gone.
    async fn shutdown(self) {
        self.proxy.shutdown().await;
        self.app.shutdown().await;
    }
}

/// The control plane's address on the demo's loopback range: 127.<base>.0.3.
fn control_ip(ip_base: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, ip_base, 0, 3)
}

/// Every pod of the running demo, and the control plane they follow.
pub(crate) struct Mesh {
    pub(crate) control: weft_control::RunningControl,
    pub(crate) pods: Vec<Pod>,
    /// The frontend sidecar's inbound listener, where traffic enters.
    pub(crate) entry: SocketAddr,
}

impl Mesh {
    /// Starts every pod reading `config_dir`. On failure, the pods already
    /// started are stopped again.
    pub(crate) async fn start(config_dir: &Path, ip_base: u8) -> anyhow::Result<Mesh> {
        let mut opts = weft_control::ControlOptions::new(config_dir);
        opts.xds = SocketAddr::from((control_ip(ip_base), 15010));
        opts.admin = SocketAddr::from((control_ip(ip_base), 15011));
        let control = weft_control::start(opts)
            .await
            .map_err(anyhow::Error::new)
            .with_context(|| {
                format!(
                    "starting the control plane at {} (is another `weft demo` running?)",
                    control_ip(ip_base)
                )
            })?;
        let xds = control.xds_addr();
        let mut pods: Vec<Pod> = Vec::with_capacity(PODS.len());
        for spec in PODS {
            match Pod::start(spec, ip_base, xds).await {
                Ok(pod) => pods.push(pod),
                Err(e) => {
                    shutdown_all(pods).await;
                    control.shutdown().await;
                    return Err(e.context(format!(
                        "starting pod {} at {} (is another `weft demo` running?)",
                        spec.name,
                        spec.ip(ip_base)
                    )));
                }
            }
        }
        // Traffic starts once every sidecar has its first config from the
        // control plane (bounded: a sidecar still waiting answers 503).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while pods
            .iter()
            .any(|p| p.sidecar().snapshot.load().generation == 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let entry = PODS[0].addr(ip_base, INBOUND_PORT);
        Ok(Mesh {
            control,
            pods,
            entry,
        })
    }

    /// Stops every pod gracefully, all at once, then the control plane.
    pub(crate) async fn shutdown(self) {
        shutdown_all(self.pods).await;
        self.control.shutdown().await;
    }
}

/// Stops pods concurrently: a sidecar's drain does not wait for another's.
async fn shutdown_all(pods: Vec<Pod>) {
    let mut stopping = JoinSet::new();
    for pod in pods {
        stopping.spawn(pod.shutdown());
    }
    while stopping.join_next().await.is_some() {}
}

/// Where the example config lives for this run.
#[derive(Debug)]
pub(crate) struct ConfigDir {
    pub(crate) path: PathBuf,
    /// Created by us (a fresh temporary directory): removed at the end.
    temporary: bool,
}

impl ConfigDir {
    /// Writes the example config into `dir`, or into a fresh temporary
    /// directory. An edited `demo.yaml` already there is kept as
    /// `demo.yaml.bak` (the sidecars read only `*.yaml` / `*.yml`).
    pub(crate) fn prepare(dir: Option<&Path>, ip_base: u8) -> anyhow::Result<ConfigDir> {
        let (path, temporary) = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (dir.to_path_buf(), false)
            }
            None => (fresh_temp_dir()?, true),
        };
        let file = path.join(CONFIG_FILE);
        let config = example_config(ip_base);
        if let Ok(existing) = std::fs::read_to_string(&file)
            && existing != config
        {
            let backup = path.join(format!("{CONFIG_FILE}.bak"));
            std::fs::rename(&file, &backup).with_context(|| {
                format!("keeping the old {} as {}", file.display(), backup.display())
            })?;
        }
        std::fs::write(&file, config).with_context(|| format!("writing {}", file.display()))?;
        Ok(ConfigDir { path, temporary })
    }

    pub(crate) fn file(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    /// Removes the directory if we created it.
    pub(crate) fn cleanup(self) {
        if self.temporary
            && let Err(e) = std::fs::remove_dir_all(&self.path)
        {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove the demo's config directory");
        }
    }
}

fn fresh_temp_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    for attempt in 0..100u32 {
        let dir = base.join(format!(
            "weft-demo-{}-{:x}",
            std::process::id(),
            stamp.wrapping_add(attempt)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    anyhow::bail!("cannot create a fresh directory under {}", base.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_valid_and_matches_the_pods() {
        for base in [0, 42] {
            let config = weft_model::load_str(&example_config(base), CONFIG_FILE)
                .unwrap_or_else(|e| panic!("{e}"));
            for pod in PODS {
                let service = config
                    .service("default", pod.service)
                    .unwrap_or_else(|| panic!("no Service {}", pod.service));
                let inbound = pod.addr(base, INBOUND_PORT);
                assert!(
                    service.endpoints.iter().any(|e| e.address == inbound),
                    "{} has no endpoint {inbound}",
                    pod.service
                );
            }
            let catalog = config.service("default", "catalog").unwrap();
            assert!(
                catalog.endpoints.is_empty(),
                "callers address `catalog`; the route splits it"
            );
            let route = config
                .routes_for_service(catalog)
                .next()
                .expect("the catalog split");
            let weights: Vec<_> = route.rules[0]
                .backend_refs
                .iter()
                .map(|b| (b.name.as_str(), b.weight))
                .collect();
            assert_eq!(weights, [("catalog-v1", 90), ("catalog-v2", 10)]);
        }
    }

    #[test]
    fn every_call_names_a_service_of_the_config() {
        let config = weft_model::load_str(EXAMPLE_CONFIG, CONFIG_FILE).unwrap();
        for pod in PODS {
            let app = pod.app_config(0).unwrap();
            for call in &app.calls {
                assert!(config.service("default", &call.host).is_some(), "{call}");
                assert_eq!(
                    call.via,
                    pod.addr(0, OUTBOUND_PORT),
                    "calls go through the pod's own sidecar"
                );
            }
        }
    }

    #[test]
    fn an_edited_config_is_kept_aside_and_a_fresh_dir_is_removed() {
        let dir = ConfigDir::prepare(None, 0).unwrap();
        let path = dir.path.clone();
        std::fs::write(dir.file(), "edited: true\n").unwrap();
        let again = ConfigDir::prepare(Some(&path), 0).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.file()).unwrap(),
            EXAMPLE_CONFIG
        );
        assert_eq!(
            std::fs::read_to_string(path.join("demo.yaml.bak")).unwrap(),
            "edited: true\n"
        );
        again.cleanup();
        assert!(path.exists(), "a directory the user named is kept");
        dir.cleanup();
        assert!(!path.exists());
    }
}
