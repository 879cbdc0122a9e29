//! The demo mesh: a control plane and twelve pods on loopback, each a sample
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
/// The file the script writes its flow-control TrafficPolicies to (see
/// `script`), next to [`CONFIG_FILE`].
pub(crate) const FLOW_FILE: &str = "flow.yaml";

pub(crate) const APP_PORT: u16 = 8080;
pub(crate) const ADMIN_PORT: u16 = 15000;
pub(crate) const OUTBOUND_PORT: u16 = 15001;
pub(crate) const INBOUND_PORT: u16 = 15006;

/// How often the control plane reads every sidecar's `/metrics` for its
/// traffic view.
const TRAFFIC_INTERVAL: Duration = Duration::from_secs(1);

/// How long a sidecar lets in-flight requests finish at shutdown. The
/// traffic has stopped by then, so this only bounds a stuck connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// One pod of the demo: which service it runs and how its app behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PodSpec {
    /// The Service the pod belongs to (and its sidecar's `--service`).
    pub(crate) service: &'static str,
    /// The app's `x-app-name`, and the endpoint's name in the view.
    pub(crate) name: &'static str,
    /// Third and fourth octets of the pod address.
    pub(crate) host: [u8; 2],
    pub(crate) latency: Duration,
    pub(crate) jitter: Duration,
    pub(crate) error_rate: f64,
    /// A long tail: this share of requests waits `slow_latency` instead.
    pub(crate) slow_share: f64,
    pub(crate) slow_latency: Duration,
    /// This share of requests is answered `200` with `x-biz-code: 5003`.
    pub(crate) biz_error_share: f64,
    /// `HOST/PATH` the app calls through its sidecar for each request, in
    /// order.
    pub(crate) calls: &'static [&'static str],
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A well-behaved pod: 1 ms plus up to 2 ms, no faults, no calls.
const fn pod(service: &'static str, name: &'static str, host: [u8; 2]) -> PodSpec {
    PodSpec {
        service,
        name,
        host,
        latency: ms(1),
        jitter: ms(2),
        error_rate: 0.0,
        slow_share: 0.0,
        slow_latency: Duration::ZERO,
        biz_error_share: 0.0,
        calls: &[],
    }
}

/// The pods, callers first. The addresses must match [`EXAMPLE_CONFIG`].
/// Each governance capability has a pod that needs it (see the example
/// config's TrafficPolicies):
/// - inventory-3 is 20x slower than its peers: latency-aware balancing
///   sends it little (at 10x, a loaded machine's scheduling stalls make
///   the fast peers' latency peaks look as bad now and then);
/// - catalog-v1-2 answers a business error on 30% of requests: its weight
///   is cut and the callers' retries hide the errors;
/// - pricing's pods answer 2% of requests 40x slower: backups (hedging)
///   trim that tail;
/// - checkout -> payments -> ledger carry a deadline; the script slows
///   payments down so that it cuts the chain short.
pub(crate) const PODS: [PodSpec; 12] = [
    PodSpec {
        calls: &["catalog/items", "pricing/quote"],
        ..pod("frontend", "frontend", [1, 1])
    },
    PodSpec {
        latency: ms(2),
        jitter: ms(3),
        calls: &["inventory/stock"],
        ..pod("catalog-v1", "catalog-v1-1", [2, 1])
    },
    PodSpec {
        latency: ms(2),
        jitter: ms(3),
        biz_error_share: 0.3,
        calls: &["inventory/stock"],
        ..pod("catalog-v1", "catalog-v1-2", [2, 3])
    },
    // The canary: a little slower and a little flaky.
    PodSpec {
        latency: ms(4),
        jitter: ms(4),
        error_rate: 0.02,
        calls: &["inventory/stock"],
        ..pod("catalog-v2", "catalog-v2", [2, 2])
    },
    pod("inventory", "inventory-1", [3, 1]),
    pod("inventory", "inventory-2", [3, 2]),
    PodSpec {
        latency: ms(40),
        jitter: ms(5),
        ..pod("inventory", "inventory-3", [3, 3])
    },
    PodSpec {
        latency: ms(2),
        jitter: ms(1),
        slow_share: 0.02,
        slow_latency: ms(80),
        ..pod("pricing", "pricing-1", [4, 1])
    },
    PodSpec {
        latency: ms(2),
        jitter: ms(1),
        slow_share: 0.02,
        slow_latency: ms(80),
        ..pod("pricing", "pricing-2", [4, 2])
    },
    PodSpec {
        calls: &["payments/charge"],
        ..pod("checkout", "checkout", [5, 1])
    },
    // No jitter: once slowed down (`script`), every request is slow.
    PodSpec {
        latency: ms(3),
        jitter: Duration::ZERO,
        calls: &["ledger/write"],
        ..pod("payments", "payments", [6, 1])
    },
    pod("ledger", "ledger", [7, 1]),
];

/// The pod the frontend driver sends to: the first.
pub(crate) const FRONTEND: usize = 0;
/// The pod the deadline chain's driver sends to.
pub(crate) const CHAIN_ENTRY: &str = "checkout";

/// The pod named `name`.
pub(crate) fn pod_named(name: &str) -> Option<&'static PodSpec> {
    PODS.iter().find(|p| p.name == name)
}

/// The example config for pods at `127.<ip_base>.x.y`.
pub(crate) fn example_config(ip_base: u8) -> String {
    EXAMPLE_CONFIG.replace("127.0.", &format!("127.{ip_base}."))
}

impl PodSpec {
    pub(crate) fn ip(&self, ip_base: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, ip_base, self.host[0], self.host[1])
    }

    pub(crate) fn addr(&self, ip_base: u8, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip(ip_base), port))
    }

    /// The endpoint callers reach it at (its sidecar's inbound), as
    /// metrics label it.
    pub(crate) fn endpoint(&self, ip_base: u8) -> String {
        self.addr(ip_base, INBOUND_PORT).to_string()
    }

    fn app_config(&self, ip_base: u8) -> anyhow::Result<AppConfig> {
        let outbound = self.addr(ip_base, OUTBOUND_PORT);
        let calls = self
            .calls
            .iter()
            .map(|target| format!("{target}@{outbound}").parse::<Call>())
            .collect::<Result<_, _>>()?;
        Ok(AppConfig {
            name: self.name.to_owned(),
            listen: self.addr(ip_base, APP_PORT),
            latency: self.latency,
            jitter: self.jitter,
            error_rate: self.error_rate,
            slow_share: self.slow_share,
            slow_latency: self.slow_latency,
            biz_error_share: self.biz_error_share,
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
    pub(crate) spec: PodSpec,
    app: RunningApp,
    proxy: RunningProxy,
}

impl Pod {
    async fn start(spec: PodSpec, ip_base: u8, xds: SocketAddr) -> anyhow::Result<Pod> {
        let app = app::start(spec.app_config(ip_base)?).await?;
        match weft_proxy::start(spec.proxy_options(ip_base, xds)).await {
            Ok(proxy) => Ok(Pod { spec, app, proxy }),
            Err(e) => {
                app.shutdown().await;
                Err(anyhow::Error::new(e).context(format!("sidecar of {}", spec.name)))
            }
        }
    }

    pub(crate) fn sidecar(&self) -> &Arc<Shared> {
        self.proxy.shared()
    }

    /// Where the app listens (its `/_weft/fault` is there).
    pub(crate) fn app_addr(&self) -> SocketAddr {
        self.app.local_addr()
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
    /// checkout's sidecar inbound listener, where the deadline chain starts.
    pub(crate) chain_entry: SocketAddr,
    /// Pods live at `127.<ip_base>.x.y`.
    pub(crate) ip_base: u8,
}

impl Mesh {
    /// Starts every pod reading `config_dir`. On failure, the pods already
    /// started are stopped again.
    pub(crate) async fn start(config_dir: &Path, ip_base: u8) -> anyhow::Result<Mesh> {
        let mut opts = weft_control::ControlOptions::new(config_dir);
        opts.xds = SocketAddr::from((control_ip(ip_base), 15010));
        opts.admin = SocketAddr::from((control_ip(ip_base), 15011));
        // Its traffic view (`weft top`, the demo's own section) follows
        // the demo's refresh rather than lagging a default 5 s behind.
        opts.traffic_interval = TRAFFIC_INTERVAL;
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
        let entry = PODS[FRONTEND].addr(ip_base, INBOUND_PORT);
        let chain_entry = pod_named(CHAIN_ENTRY)
            .expect("the chain's entry is a pod")
            .addr(ip_base, INBOUND_PORT);
        Ok(Mesh {
            control,
            pods,
            entry,
            chain_entry,
            ip_base,
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
    /// `demo.yaml.bak` (the sidecars read only `*.yaml` / `*.yml`), and so
    /// is a `flow.yaml` a previous run's script left behind: the run starts
    /// from the example config alone.
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
        let flow = path.join(FLOW_FILE);
        if flow.exists() {
            let backup = path.join(format!("{FLOW_FILE}.bak"));
            std::fs::rename(&flow, &backup).with_context(|| {
                format!("keeping the old {} as {}", flow.display(), backup.display())
            })?;
        }
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

    /// Each misbehaving pod has the policy that governs it, and nothing
    /// else does: inventory is balanced by the default alone.
    #[test]
    fn the_example_policies_govern_the_misbehaving_pods() {
        use weft_model::{BalancerKind, HedgeDelay, PolicyScope, PolicyTargetKind};
        let config = weft_model::load_str(EXAMPLE_CONFIG, CONFIG_FILE).unwrap();
        let scope = |service, route| PolicyScope {
            namespace: "default",
            service,
            port_name: Some("http"),
            route,
        };
        // Inventory: latency-aware by default, which starves the slow pod.
        let inventory = config.effective_policy(scope("inventory", None));
        assert_eq!(inventory.sections, Default::default());
        let slow = pod_named("inventory-3").unwrap();
        let peer = pod_named("inventory-1").unwrap();
        assert!(
            slow.latency + slow.jitter / 2 >= (peer.latency + peer.jitter / 2) * 20,
            "20x slower"
        );
        // catalog-v1: a business error is a failure of its endpoints, and
        // the catalog route (whose first backend it is) retries it.
        let v1 = config.effective_policy(scope("catalog-v1", None)).sections;
        let header = v1.failure_codes.unwrap().header.unwrap();
        assert_eq!(header.name, "x-biz-code");
        assert!(header.values.iter().any(|v| v.matches("5003")));
        assert_eq!(v1.load_balancer.unwrap().kind, BalancerKind::RoundRobin);
        assert!(pod_named("catalog-v1-2").unwrap().biz_error_share > 0.0);
        let route = Some((PolicyTargetKind::HTTPRoute, "catalog-split", None));
        let split = config.effective_policy(scope("catalog-v1", route)).sections;
        assert!(split.retry.unwrap().max_retries >= 1);
        assert!(split.failure_codes.unwrap().header.is_some());
        // pricing: a 2% tail on every pod, and backups to trim it (which
        // need a second endpoint).
        let pricing = config.effective_policy(scope("pricing", None)).sections;
        let hedging = pricing.hedging.unwrap();
        assert!(matches!(hedging.delay, HedgeDelay::Percentile { .. }));
        let pods: Vec<_> = PODS.iter().filter(|p| p.service == "pricing").collect();
        assert!(pods.len() >= 2 && pods.iter().all(|p| p.slow_share >= 0.02));
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
