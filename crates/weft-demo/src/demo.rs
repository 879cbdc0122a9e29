//! `weft demo`: a small mesh on loopback, traffic through it, and a live
//! view of what the sidecars measure.
//!
//! One call to [`run`] writes the bundled example config, starts five pods
//! in-process (frontend -> catalog, split 90/10 between catalog-v1 and
//! catalog-v2 -> inventory on two endpoints; each pod a sample app plus a
//! sidecar, see `mesh`), drives a steady rate of requests into the
//! frontend (`traffic`), and every refresh prints per-service rate,
//! success and latency and per-endpoint traffic shares (`view`), computed
//! from the sidecars' own metrics (`scrape`). The config stays editable:
//! the sidecars reload it and the view shows the traffic move.

mod mesh;
mod scrape;
#[cfg(test)]
mod tests;
mod traffic;
mod view;

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use mesh::{ConfigDir, Mesh, PODS};
use scrape::MeshCounters;
use traffic::{Driver, Target, TrafficCounters};
use view::{IngressRow, SplitGroup, View};

pub use view::{EndpointShare, ServiceSummary};

/// How `weft demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this long; `None` runs until `shutdown` resolves.
    pub duration: Option<Duration>,
    /// Requests per second sent to the frontend.
    pub rate: u32,
    /// Where to write the example config (default: a fresh temporary
    /// directory, removed at the end). Edit it live: the sidecars reload it.
    pub config_dir: Option<PathBuf>,
    /// How often the live view refreshes.
    pub refresh: Duration,
    /// One summary block per refresh instead of redrawing the screen;
    /// automatic when stdout is not a terminal.
    pub plain: bool,
    /// Pods live at `127.<ip_base>.x.y`; another base lets a second demo
    /// (or a test) run beside the first. The written config uses it too.
    pub ip_base: u8,
    /// The demo's own admin port (`/ready` once the mesh is up, `/metrics`
    /// with the traffic driver's counters); `None` for none.
    pub admin: Option<std::net::SocketAddr>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: None,
            rate: 50,
            config_dir: None,
            refresh: Duration::from_secs(1),
            plain: false,
            ip_base: 0,
            admin: None,
        }
    }
}

/// The whole run's numbers, as the final summary shows them.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Requests the driver sent to the frontend.
    pub requests: u64,
    /// Of those, answered with a 2xx or 3xx (as `weft load` counts success).
    pub ok: u64,
    /// Requests due that could not be sent on time (not in `requests`).
    pub late: u64,
    pub elapsed: Duration,
    /// Per service, what its sidecars received.
    pub services: Vec<ServiceSummary>,
    /// Per addressed service, how its traffic spread over endpoints.
    pub endpoints: Vec<EndpointShare>,
    /// Where the config was (removed at the end if it was a temporary one).
    pub config_dir: PathBuf,
}

impl DemoReport {
    /// `ok / requests`, `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.ok as f64 / self.requests as f64)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceSummary> {
        self.services.iter().find(|s| s.service == name)
    }

    /// The share (0..=1) of `service`'s traffic that went to `backend`'s
    /// endpoints, or to the endpoint `backend` names (`IP:PORT`).
    pub fn share(&self, service: &str, backend: &str) -> f64 {
        self.endpoints
            .iter()
            .filter(|e| e.service == service && (e.backend == backend || e.endpoint == backend))
            .map(|e| e.share)
            .sum()
    }
}

/// Runs the demo until `opts.duration` elapses or `shutdown` resolves (the
/// CLI passes Ctrl-C / SIGTERM), then stops the traffic, shuts every
/// sidecar and app down gracefully, prints the final summary and returns it.
pub async fn run(
    opts: DemoOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(
        opts.rate > 0,
        "the demo needs a rate of at least 1 request/s"
    );
    anyhow::ensure!(
        !opts.refresh.is_zero(),
        "the refresh interval must be above 0"
    );
    let dir = ConfigDir::prepare(opts.config_dir.as_deref(), opts.ip_base)?;
    let mesh = match Mesh::start(&dir.path, opts.ip_base).await {
        Ok(mesh) => mesh,
        Err(e) => {
            dir.cleanup();
            return Err(e);
        }
    };
    let screen = Screen::new(opts.plain);
    let result = watch(&opts, &dir, &mesh, &screen, shutdown).await;
    mesh.shutdown().await;
    let config_dir = dir.path.clone();
    dir.cleanup();
    let last = result?;
    Ok(DemoReport {
        requests: last.ingress.sent,
        ok: last.ingress.ok,
        late: last.ingress.late,
        elapsed: last.elapsed,
        services: last.services,
        endpoints: last.endpoints,
        config_dir,
    })
}

/// Drives traffic and refreshes the view until the end; returns the final
/// (whole-run) view, already shown.
async fn watch(
    opts: &DemoOptions,
    dir: &ConfigDir,
    mesh: &Mesh,
    screen: &Screen,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<View> {
    let target = Target {
        addr: mesh.entry,
        host: "frontend",
        path: "/",
    };
    let driver = Driver::start(target, opts.rate)?;
    let admin = match opts.admin {
        Some(addr) => {
            let endpoints = Arc::new(DemoAdmin {
                traffic: driver.stats.clone(),
            });
            Some(weft_admin::start(addr, endpoints).await?)
        }
        None => None,
    };
    let first = Moment::take(mesh, driver.stats.snapshot());
    let deadline = opts.duration.map(|d| first.at + d);
    let mut previous = first.clone();
    let mut ticker = tokio::time::interval_at(first.at + opts.refresh, opts.refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut shutdown => break,
            () = sleep_until(deadline) => break,
        }
        let now = Moment::take(mesh, driver.stats.snapshot());
        screen.show(&view::render(
            &now.view_since(&previous, &first, opts, dir, false),
        ));
        previous = now;
    }
    drop(admin);
    let traffic = driver.stop().await;
    let last = Moment::take(mesh, traffic).view_since(&first, &first, opts, dir, true);
    screen.show(&view::render(&last));
    Ok(last)
}

/// The demo's admin endpoints: ready while traffic runs, the driver's
/// counters as metrics.
struct DemoAdmin {
    traffic: Arc<traffic::TrafficStats>,
}

impl weft_admin::AdminEndpoints for DemoAdmin {
    fn ready(&self) -> bool {
        true
    }
    fn metrics(&self) -> String {
        use crate::admin::counter;
        let t = self.traffic.snapshot();
        let mut out = String::new();
        counter(
            &mut out,
            "weft_demo_requests_sent",
            "Requests sent into the mesh",
            "",
            t.sent,
        );
        counter(
            &mut out,
            "weft_demo_requests_ok",
            "Requests answered with a 2xx or 3xx status",
            "",
            t.ok,
        );
        counter(
            &mut out,
            "weft_demo_requests_late",
            "Requests due but never sent (waited past the timeout for a connection)",
            "",
            t.late,
        );
        out.push_str("# EOF\n");
        out
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Everything the view needs, read from the mesh at one instant.
#[derive(Debug, Clone)]
struct Moment {
    at: Instant,
    mesh: MeshCounters,
    traffic: TrafficCounters,
    config_error: Option<String>,
    /// From the newest config any sidecar runs.
    groups: Vec<SplitGroup>,
}

impl Moment {
    fn take(mesh: &Mesh, traffic: TrafficCounters) -> Moment {
        let mut counters = MeshCounters::default();
        // A rejected edit shows up at the control plane; a sidecar's own
        // error (a NACK) only if the control plane has none.
        let mut config_error = mesh.control.last_error();
        for pod in &mesh.pods {
            let sidecar = pod.sidecar();
            counters.add_exposition(&sidecar.metrics.encode());
            let error = sidecar
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            config_error = config_error.or(error);
        }
        // The weights shown are those the control plane serves now.
        let groups = view::split_groups(&mesh.control.cache().config());
        Moment {
            at: Instant::now(),
            mesh: counters,
            traffic,
            config_error,
            groups,
        }
    }

    /// The view of what happened between `earlier` and this moment.
    fn view_since(
        &self,
        earlier: &Moment,
        first: &Moment,
        opts: &DemoOptions,
        dir: &ConfigDir,
        last: bool,
    ) -> View {
        let window = self.at.duration_since(earlier.at);
        let delta = self.mesh.since(&earlier.mesh);
        let order: Vec<&str> = PODS.iter().map(|p| p.service).collect();
        View {
            last,
            elapsed: self.at.duration_since(first.at),
            window,
            rate: opts.rate,
            config_file: dir.file(),
            generations: self.mesh.generations,
            config_error: self.config_error.clone(),
            ingress: IngressRow::new(&self.traffic.since(&earlier.traffic), window),
            services: view::service_rows(&delta, window, &order),
            endpoints: view::endpoint_rows(&delta, &self.groups),
        }
    }
}

/// Where the view goes: redrawn in place on a terminal, appended otherwise.
struct Screen {
    plain: bool,
}

impl Screen {
    fn new(plain: bool) -> Self {
        let plain = plain || !std::io::stdout().is_terminal();
        let screen = Screen { plain };
        if !plain {
            // Clear once; each refresh then overwrites in place (no flicker).
            screen.write("\x1b[2J");
        }
        screen
    }

    fn show(&self, block: &str) {
        let text = if self.plain {
            format!("{block}\n")
        } else {
            // Home, each line cleared to its end, then everything below.
            let mut text = String::from("\x1b[H");
            for line in block.lines() {
                text.push_str(line);
                text.push_str("\x1b[K\n");
            }
            text.push_str("\x1b[J");
            text
        };
        self.write(&text);
    }

    fn write(&self, text: &str) {
        if cfg!(test) {
            // Goes through the test harness's output capture.
            print!("{text}");
            return;
        }
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) must not stop the demo, as `print!` would.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }
}
