//! `weft demo`: a small mesh on loopback, traffic through it, and a live
//! view of what the sidecars measure and what traffic governance does.
//!
//! One call to [`run`] writes the bundled example config, starts twelve
//! pods in-process (frontend -> catalog, split 90/10 between catalog-v1 and
//! catalog-v2 -> inventory, and frontend -> pricing; beside them a deadline
//! chain, checkout -> payments -> ledger; each pod a sample app plus a
//! sidecar, see `mesh`), drives a steady rate of requests into the frontend
//! and a fifth of it, each with a 150 ms deadline, into checkout
//! (`traffic`), and every refresh prints, over the last few seconds
//! (`view`): per-service rate, success and latency; what callers got from
//! each service after retries and backups; what flow control refused or a
//! deadline cut, next to the flow policies in force; and per endpoint its
//! traffic share, the weight callers give it and what its app is set to do.
//! Everything but the apps' faults comes from the sidecars' own metrics
//! (`scrape`). Each refresh also shows the demo's control plane's own
//! traffic view (golden metrics per Service and edge from its `/traffic`,
//! rendered by `golden` exactly as `weft top` renders it), and the header
//! says how to watch it with `weft top` in another terminal.
//!
//! Some pods misbehave on purpose and the example config's
//! TrafficPolicies govern them, so each capability is seen acting: a slow
//! inventory endpoint loses its traffic, an endpoint answering business
//! errors is weighted down while retries hide them, backups trim pricing's
//! long tail. A timed script (`script`) makes the slow endpoint and the
//! erroring one heal and relapse, changes flow control online by writing a
//! policy file as a user would (a drop ratio, a rate limit lowered then
//! raised), and slows the deadline chain's middle hop so that the deadline
//! cuts it short. The config stays editable: the sidecars reload it and the
//! view shows the traffic move.

mod faults;
pub mod golden;
mod mesh;
mod scrape;
mod script;
#[cfg(test)]
mod tests;
mod traffic;
mod view;

use std::collections::VecDeque;
use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use faults::AppControl;
use mesh::{ConfigDir, Mesh, PODS};
use scrape::MeshCounters;
use script::{Pace, Rates, SCRIPT, ScriptStep, Stage};
use traffic::{Driver, Target, TrafficCounters};
use view::{IngressRow, PodInfo, SplitGroup, View};

pub use faults::AppFaults;
pub use view::{CallSummary, DemoEvent, EndpointShare, FlowPolicy, ServiceSummary};

/// The deadline the deadline chain's requests arrive with (ms).
pub const CHAIN_DEADLINE_MS: u32 = 150;
/// The header carrying it, as an edge proxy or a client would set it.
const CHAIN_HEADERS: &[(&str, &str)] = &[("x-weft-deadline-ms", "150")];
/// The deadline chain gets this share of `rate` (at least 1 request/s).
const CHAIN_RATE_DIVISOR: u32 = 5;

/// The default run's timeline, as `weft demo --help` (`--no-script`) and
/// the README tell it. Keep in step with `script::SCRIPT`.
pub const TIMELINE: &str = "\
Do not run the timed script. Without it the situations stay as they start: \
inventory-3 slow, catalog-v1-2 answering business errors, pricing's 2% tail, \
the deadline chain (checkout -> payments -> ledger, 150 ms at the edge) \
completing. The script: 15s inventory-3 fast; 20s flow.yaml written: dropRatio \
0.2 on catalog's route; 28s flow.yaml edited: drop ratio gone, pricing rate \
limited to 60% of --rate (429s); 36s limit raised to twice --rate; 40s \
catalog-v1-2 stops its business errors; 45s flow.yaml removed; 48s payments \
slows to 110ms: its sidecar cuts its calls to ledger (504 deadline-exceeded, \
ledger gets none); 58s payments fast again; 60s catalog-v1-2's business \
errors back; 70s inventory-3 slow again.";

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
    /// What the live view's numbers cover: the last `window` (since the
    /// start until then). Longer is steadier: a 2% tail needs a few hundred
    /// requests to show in a p99.
    pub window: Duration,
    /// One summary block per refresh instead of redrawing the screen;
    /// automatic when stdout is not a terminal.
    pub plain: bool,
    /// Pods live at `127.<ip_base>.x.y`; another base lets a second demo
    /// (or a test) run beside the first. The written config uses it too.
    pub ip_base: u8,
    /// The demo's own admin port (`/ready` once the mesh is up, `/metrics`
    /// with the traffic driver's counters); `None` for none.
    pub admin: Option<std::net::SocketAddr>,
    /// Run the timed script ([`TIMELINE`]): faults heal and come back,
    /// flow policies are written to the config directory and removed, the
    /// deadline chain's middle hop slows down for a while. Each step shows
    /// as an event.
    pub script: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: None,
            rate: 50,
            config_dir: None,
            refresh: Duration::from_secs(1),
            window: Duration::from_secs(5),
            plain: false,
            ip_base: 0,
            admin: None,
            script: true,
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
    /// Requests the deadline chain's driver sent to checkout, each with
    /// [`CHAIN_DEADLINE_MS`] to live.
    pub chain_requests: u64,
    /// Of those, answered with a 2xx or 3xx.
    pub chain_ok: u64,
    /// Requests due that could not be sent on time (not in `requests`).
    pub late: u64,
    pub elapsed: Duration,
    /// Per service, what its sidecars received.
    pub services: Vec<ServiceSummary>,
    /// Per addressed service, what its callers got and what its policy did.
    pub calls: Vec<CallSummary>,
    /// Per addressed service, how its traffic spread over endpoints, with
    /// the endpoints' weights at the end.
    pub endpoints: Vec<EndpointShare>,
    /// The flow policies in force at the end.
    pub flow: Vec<FlowPolicy>,
    /// Script steps, health events and config changes, in order.
    pub events: Vec<DemoEvent>,
    /// Where the config was (removed at the end if it was a temporary one).
    pub config_dir: PathBuf,
    /// The control plane's own traffic view (`/traffic`, as `weft top`
    /// shows it) over the whole run, at most the 300 s it keeps.
    pub traffic: Option<golden::TrafficFrame>,
}

impl DemoReport {
    /// `ok / requests`, `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.ok as f64 / self.requests as f64)
    }

    pub fn service(&self, name: &str) -> Option<&ServiceSummary> {
        self.services.iter().find(|s| s.service == name)
    }

    /// What the callers of `name` (the name they address) got.
    pub fn calls_to(&self, name: &str) -> Option<&CallSummary> {
        self.calls.iter().find(|c| c.service == name)
    }

    /// The endpoint named `name` (a demo pod's name, or `IP:PORT`).
    pub fn endpoint(&self, name: &str) -> Option<&EndpointShare> {
        self.endpoints
            .iter()
            .find(|e| e.name.as_deref() == Some(name) || e.endpoint == name)
    }

    /// The share (0..=1) of `service`'s traffic that went to `backend`'s
    /// endpoints, or to the endpoint `backend` names (`IP:PORT` or a pod's
    /// name).
    pub fn share(&self, service: &str, backend: &str) -> f64 {
        self.endpoints
            .iter()
            .filter(|e| {
                e.service == service
                    && (e.backend == backend
                        || e.endpoint == backend
                        || e.name.as_deref() == Some(backend))
            })
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
    run_staged(opts, Staging::default(), shutdown).await
}

/// How a run is staged beyond its options: tests run their own script, or
/// step through the default one, and watch every refresh.
pub(crate) struct Staging {
    pub(crate) script: &'static [ScriptStep],
    pub(crate) pace: Pace,
    /// Each refresh's view, as shown.
    pub(crate) views: Option<tokio::sync::watch::Sender<Option<View>>>,
}

impl Default for Staging {
    fn default() -> Self {
        Staging {
            script: SCRIPT,
            pace: Pace::Timed,
            views: None,
        }
    }
}

/// [`run`], staged.
pub(crate) async fn run_staged(
    opts: DemoOptions,
    staging: Staging,
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
    anyhow::ensure!(!opts.window.is_zero(), "the window must be above 0");
    let dir = ConfigDir::prepare(opts.config_dir.as_deref(), opts.ip_base)?;
    let mesh = match Mesh::start(&dir.path, opts.ip_base).await {
        Ok(mesh) => mesh,
        Err(e) => {
            dir.cleanup();
            return Err(e);
        }
    };
    let screen = Screen::new(opts.plain);
    let result = watch(&opts, staging, &dir, &mesh, &screen, shutdown).await;
    mesh.shutdown().await;
    let config_dir = dir.path.clone();
    dir.cleanup();
    let last = result?;
    Ok(DemoReport {
        requests: last.ingress.sent,
        ok: last.ingress.ok,
        chain_requests: last.chain.sent,
        chain_ok: last.chain.ok,
        late: last.ingress.late,
        elapsed: last.elapsed,
        services: last.services,
        calls: last.calls,
        endpoints: last.endpoints,
        flow: last.flow,
        events: last.events,
        config_dir,
        traffic: last.traffic,
    })
}

/// Drives traffic (and the script) and refreshes the view until the end;
/// returns the final (whole-run) view, already shown.
async fn watch(
    opts: &DemoOptions,
    staging: Staging,
    dir: &ConfigDir,
    mesh: &Mesh,
    screen: &Screen,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<View> {
    let target = Target {
        addr: mesh.entry,
        host: "frontend",
        path: "/",
        headers: &[],
    };
    let chain_target = Target {
        addr: mesh.chain_entry,
        host: mesh::CHAIN_ENTRY,
        path: "/",
        headers: CHAIN_HEADERS,
    };
    let control = AppControl::new();
    let driver = Driver::start(target, opts.rate)?;
    let chain = Driver::start(chain_target, (opts.rate / CHAIN_RATE_DIVISOR).max(1))?;
    let admin = match opts.admin {
        Some(addr) => {
            let endpoints = Arc::new(DemoAdmin {
                traffic: driver.stats.clone(),
                chain: chain.stats.clone(),
            });
            Some(weft_admin::start(addr, endpoints).await?)
        }
        None => None,
    };
    let traffic = || (driver.stats.snapshot(), chain.stats.snapshot());
    let first = Moment::take(mesh, &control, traffic()).await;
    let (script_steps, stepped) = (staging.script, matches!(staging.pace, Pace::Stepped(_)));
    let rates = Rates::for_rate(opts.rate);
    let (script, mut scripted) = start_script(
        opts,
        staging.pace,
        script_steps,
        dir,
        mesh,
        &control,
        first.at,
    );
    let deadline = opts.duration.map(|d| first.at + d);
    let mut log = EventLog::new(&first);
    let mut recent = Recent::new(first.clone(), opts);
    let mut ticker = tokio::time::interval_at(first.at + opts.refresh, opts.refresh);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut shutdown => break,
            () = sleep_until(deadline) => break,
        }
        let now = Moment::take(mesh, &control, traffic()).await;
        log.drain(&mut scripted);
        log.observe(recent.latest(), &now, first.at);
        let mut view = now.view_since(recent.baseline_for(&now), &first, opts, dir, false);
        view.events.clone_from(&log.events);
        let elapsed = now.at.duration_since(first.at);
        view.next = (opts.script && !stepped)
            .then(|| script::next_step(script_steps, elapsed))
            .flatten()
            .map(|s| DemoEvent {
                at: s.at,
                what: s.describe(rates),
            });
        view.traffic = Some(control_traffic(mesh, opts.window).await);
        screen.show(&view::render(&view));
        if let Some(views) = &staging.views {
            views.send_replace(Some(view));
        }
        recent.push(now);
    }
    if let Some(script) = script {
        script.abort();
    }
    drop(admin);
    let traffic = (driver.stop().await, chain.stop().await);
    let end = Moment::take(mesh, &control, traffic).await;
    log.drain(&mut scripted);
    log.observe(recent.latest(), &end, first.at);
    let mut last = end.view_since(&first, &first, opts, dir, true);
    last.events = log.events;
    last.traffic = Some(control_traffic(mesh, last.elapsed).await);
    screen.show(&view::render(&last));
    Ok(last)
}

/// The control plane's own traffic view over the last `window` (rounded
/// up to whole seconds, at most what the control plane keeps), as `weft
/// top --control` shows it.
async fn control_traffic(mesh: &Mesh, window: Duration) -> golden::TrafficFrame {
    let secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
    let window = Duration::from_secs(secs.max(1)).min(weft_control::traffic::MAX_WINDOW);
    golden::TrafficFrame::fetch(mesh.control.admin_addr(), window, None).await
}

/// Starts the timed script (if `opts` asks for it); its events arrive on
/// the receiver as each step is applied.
fn start_script(
    opts: &DemoOptions,
    pace: Pace,
    steps: &'static [ScriptStep],
    dir: &ConfigDir,
    mesh: &Mesh,
    control: &AppControl,
    start: Instant,
) -> (Option<JoinHandle<()>>, mpsc::UnboundedReceiver<DemoEvent>) {
    let (events, scripted) = mpsc::unbounded_channel();
    let script = opts.script.then(|| {
        let stage = Stage {
            apps: mesh
                .pods
                .iter()
                .map(|p| (p.spec.name, p.app_addr()))
                .collect(),
            control: control.clone(),
            dir: dir.path.clone(),
            rates: Rates::for_rate(opts.rate),
        };
        tokio::spawn(script::run_script(steps, start, stage, pace, events))
    });
    (script, scripted)
}

/// The moments of the last `window`, so that a refresh shows the numbers
/// of the last few seconds rather than of the last one alone.
struct Recent {
    moments: VecDeque<Moment>,
    window: Duration,
    refresh: Duration,
}

impl Recent {
    fn new(first: Moment, opts: &DemoOptions) -> Self {
        Recent {
            moments: VecDeque::from([first]),
            window: opts.window,
            refresh: opts.refresh,
        }
    }

    fn latest(&self) -> &Moment {
        self.moments.back().expect("never empty")
    }

    /// What `now`'s numbers start from: the newest moment at least
    /// `window` old (give or take half a refresh, so that a late tick does
    /// not stretch the window by a whole refresh), or the first.
    fn baseline_for(&mut self, now: &Moment) -> &Moment {
        if let Some(old) = now.at.checked_sub(self.window) {
            let horizon = old + self.refresh / 2;
            while self.moments.len() > 1 && self.moments[1].at <= horizon {
                self.moments.pop_front();
            }
        }
        self.moments.front().expect("never empty")
    }

    fn push(&mut self, now: Moment) {
        self.moments.push_back(now);
    }
}

/// What happened during the run: script steps, endpoint health events,
/// config changes applied or rejected.
struct EventLog {
    events: Vec<DemoEvent>,
    /// The config generation every sidecar runs, as last announced.
    generation: Option<u64>,
    rejected: Option<String>,
}

impl EventLog {
    fn new(first: &Moment) -> Self {
        EventLog {
            events: Vec::new(),
            generation: first.mesh.generations.map(|(_, hi)| hi),
            rejected: first.config_error.clone(),
        }
    }

    /// Takes the script steps applied since the last call.
    fn drain(&mut self, scripted: &mut mpsc::UnboundedReceiver<DemoEvent>) {
        while let Ok(e) = scripted.try_recv() {
            self.events.push(e);
        }
    }

    /// Notes what changed between two moments.
    fn observe(&mut self, before: &Moment, now: &Moment, start: Instant) {
        let at = now.at.duration_since(start);
        let mut add = |what: String| self.events.push(DemoEvent { at, what });
        for what in view::health_events(&now.mesh.since(&before.mesh), &now.pods) {
            add(what);
        }
        if let Some((lo, hi)) = now.mesh.generations
            && lo == hi
        {
            if self.generation.is_some_and(|g| g < hi) {
                add(format!("config generation {hi} applied by every sidecar"));
            }
            self.generation = Some(hi);
        }
        if now.config_error.is_some() && now.config_error != self.rejected {
            add("config change rejected: the last good config keeps serving".to_owned());
        }
        self.rejected = now.config_error.clone();
    }
}

/// The demo's admin endpoints: ready while traffic runs, the driver's
/// counters as metrics.
struct DemoAdmin {
    traffic: Arc<traffic::TrafficStats>,
    chain: Arc<traffic::TrafficStats>,
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
        let c = self.chain.snapshot();
        counter(
            &mut out,
            "weft_demo_chain_requests_sent",
            "Requests sent into the deadline chain (to checkout, with a deadline)",
            "",
            c.sent,
        );
        counter(
            &mut out,
            "weft_demo_chain_requests_ok",
            "Deadline chain requests answered with a 2xx or 3xx status",
            "",
            c.ok,
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
    /// The deadline chain's driver.
    chain: TrafficCounters,
    config_error: Option<String>,
    /// From the newest config any sidecar runs.
    groups: Vec<SplitGroup>,
    /// The flow policies the control plane serves.
    flow: Vec<FlowPolicy>,
    /// Every pod's endpoint, name and current faults.
    pods: Vec<PodInfo>,
}

impl Moment {
    async fn take(
        mesh: &Mesh,
        control: &AppControl,
        (traffic, chain): (TrafficCounters, TrafficCounters),
    ) -> Moment {
        let at = Instant::now();
        let mut counters = MeshCounters::default();
        // A rejected edit shows up at the control plane; a sidecar's own
        // error (a NACK) only if the control plane has none.
        let mut config_error = mesh.control.last_error();
        for pod in &mesh.pods {
            let sidecar = pod.sidecar();
            let endpoint = pod.spec.endpoint(mesh.ip_base);
            counters.add_exposition(&sidecar.metrics.encode(), Some(&endpoint));
            let error = sidecar
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            config_error = config_error.or(error);
        }
        // The weights and policies shown are those the control plane
        // serves now.
        let config = mesh.control.cache().config();
        let groups = view::split_groups(&config);
        let flow = view::flow_policies(&config, &groups);
        Moment {
            at,
            mesh: counters,
            traffic,
            chain,
            config_error,
            groups,
            flow,
            pods: pod_infos(mesh, control).await,
        }
    }

    /// The view of what happened between `earlier` and this moment
    /// (without events: the caller keeps those).
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
        let pods = &self.pods;
        let mut order: Vec<&str> = Vec::new();
        for pod in &PODS {
            if !order.contains(&pod.service) {
                order.push(pod.service);
            }
        }
        View {
            last,
            elapsed: self.at.duration_since(first.at),
            window,
            rate: opts.rate,
            config_file: dir.file(),
            generations: self.mesh.generations,
            config_error: self.config_error.clone(),
            ingress: IngressRow::new(&self.traffic.since(&earlier.traffic), window),
            chain: IngressRow::new(&self.chain.since(&earlier.chain), window),
            services: view::service_rows(&delta, window, &order),
            calls: view::call_rows(&delta, window, &self.groups, pods),
            endpoints: view::endpoint_rows(&delta, &self.groups, pods),
            flow: self.flow.clone(),
            events: Vec::new(),
            next: None,
            traffic: None,
        }
    }
}

/// Every pod as the view names it, with its app's faults read now (all
/// apps at once: a stuck one delays the view by the control timeout only).
async fn pod_infos(mesh: &Mesh, control: &AppControl) -> Vec<PodInfo> {
    let mut reads = JoinSet::new();
    for (i, pod) in mesh.pods.iter().enumerate() {
        let (control, addr) = (control.clone(), pod.app_addr());
        reads.spawn(async move { (i, control.faults(addr).await) });
    }
    let mut faults = vec![None; mesh.pods.len()];
    while let Some(read) = reads.join_next().await {
        if let Ok((i, f)) = read {
            faults[i] = f;
        }
    }
    mesh.pods
        .iter()
        .zip(faults)
        .map(|(pod, faults)| PodInfo {
            endpoint: pod.spec.endpoint(mesh.ip_base),
            name: pod.spec.name,
            faults,
        })
        .collect()
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
