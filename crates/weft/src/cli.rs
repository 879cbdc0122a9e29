//! Command-line definitions and dispatch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgGroup, Args, Parser, Subcommand};

/// weft: a service mesh with governance built in.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `weft_proxy=debug`.
    /// RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", env = "WEFT_LOG")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: serve the config directory over xDS v3 (ADS,
    /// state-of-the-world and delta) to weft proxies, Envoy and gRPC clients.
    Control(ControlArgs),
    /// Run the global rate-limit service on its own (Envoy's RateLimitService
    /// protocol) for the config directory's `rateLimit.global` limits.
    /// `weft control` serves the same service on its xDS port.
    Ratelimit(RatelimitArgs),
    /// Print a Service's golden metrics (RPS, success rate, p50/p90/p99) and
    /// its callers', as the control plane aggregates them from the proxies.
    Stat(StatArgs),
    /// Watch the control plane's golden metrics per Service and per caller
    /// -> callee edge, refreshed every interval (a live `weft stat`).
    Top(crate::top::TopArgs),
    /// Run a sidecar proxy for one Service (outbound + inbound listeners),
    /// configured from a directory (--config) or a control plane (--xds).
    Proxy(ProxyArgs),
    /// Check a config directory; print every problem and exit 1 if any.
    Validate(ValidateArgs),
    /// Run the local demo mesh: sample services, sidecars, traffic and a live view.
    Demo(DemoArgs),
    /// Run the built-in sample upstream app (used by the demo, tests and benchmarks).
    App(AppArgs),
    /// Send load at a fixed rate (open loop; latency corrected for coordinated
    /// omission) over HTTP/1.1, h2c or gRPC, and report latency percentiles.
    Load(crate::load::LoadArgs),
    /// Find the highest rate a target sustains within an SLO (e.g. `p99<50ms,errors<0.1%`).
    Capacity(crate::load::CapacityArgs),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub duration: Option<Duration>,
    /// Requests per second sent into the mesh (to the frontend).
    #[arg(long, value_name = "RPS", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub rate: u32,
    /// Write the example config here (default: a new temporary directory).
    /// Edit it while the demo runs: the sidecars reload it.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// How often the live view refreshes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    pub refresh: Duration,
    /// The live view's numbers cover the last DURATION (steadier tails and
    /// shares when longer).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub window: Duration,
    /// Do not run the timed script (faults healed and broken again, flow
    /// policies written, a deadline chain slowed; --help shows the timeline).
    #[arg(long, long_help = weft_demo::demo::TIMELINE)]
    pub no_script: bool,
    /// Print one summary block per refresh instead of redrawing the screen
    /// (automatic when stdout is not a terminal).
    #[arg(long)]
    pub plain: bool,
    /// Pods get loopback addresses 127.<IP_BASE>.x.y; pick another value to run
    /// two demos side by side.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub ip_base: u8,
    /// The demo's admin port: /ready, /metrics (traffic sent, ok, late).
    /// Default: 127.<IP_BASE>.0.2:15000 (each pod's sidecar has its own too).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct AppArgs {
    /// Address to serve HTTP/1.1 and h2c on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Name reported in the `x-app-name` response header.
    #[arg(long, default_value = "app")]
    pub name: String,
    /// Fixed delay added to every request.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration)]
    pub latency: Duration,
    /// Extra random delay, uniform in 0..JITTER.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration)]
    pub jitter: Duration,
    /// Share of requests answered with --error-status (0.0 to 1.0).
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, value_parser = ratio)]
    pub error_rate: f64,
    /// Status of injected errors.
    #[arg(long, value_name = "CODE", default_value_t = 503, value_parser = clap::value_parser!(u16).range(100..=599))]
    pub error_status: u16,
    /// Long tail: share of requests (drawn per request, 0.0 to 1.0) that wait
    /// --slow-latency instead of --latency.
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, value_parser = ratio, requires = "slow_latency")]
    pub slow_share: f64,
    /// The delay of the --slow-share requests.
    #[arg(long, value_name = "DURATION", value_parser = duration, requires = "slow_share")]
    pub slow_latency: Option<Duration>,
    /// Share of requests (0.0 to 1.0) answered 200 but with --biz-error-header
    /// set: a business failure the proxy must classify.
    #[arg(long, value_name = "RATIO", default_value_t = 0.0, value_parser = ratio)]
    pub biz_error_share: f64,
    /// The header marking a business error, NAME:VALUE.
    #[arg(long, value_name = "NAME:VALUE", default_value = "x-biz-code:5003")]
    pub biz_error_header: weft_demo::app::BizErrorHeader,
    /// Size in bytes of the GET response body.
    #[arg(long, value_name = "BYTES", default_value_t = 16)]
    pub body_size: usize,
    /// A downstream call made for every request: `HOST/PATH@VIA_ADDR`
    /// (through a sidecar's outbound listener) or `ADDR/PATH` (direct). Repeatable.
    #[arg(long = "call", value_name = "CALL")]
    pub calls: Vec<weft_demo::app::Call>,
    /// Worker threads (1 = one thread for everything).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub workers: usize,
    /// Stall once: this long after start, hold every response for --stall-for
    /// (a GC pause or failover, to check what a load generator reports).
    #[arg(long, value_name = "DURATION", value_parser = duration, requires = "stall_for")]
    pub stall_after: Option<Duration>,
    /// How long the one-time stall lasts.
    #[arg(long, value_name = "DURATION", value_parser = duration, requires = "stall_after")]
    pub stall_for: Option<Duration>,
    /// Admin port with /ready, /live and /metrics (requests, errors). Off by
    /// default. Faults change at runtime on the main port: GET/POST/DELETE
    /// /_weft/fault (e.g. `?latency=200ms&for=5s`); counters: /_weft/stats.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
}

fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0.0 and 1.0")),
    }
}

/// Parses a duration like `500ms`, `10s`, `1m30s`.
pub fn duration(s: &str) -> Result<Duration, String> {
    weft_model::parse_duration(s).map_err(|e| e.to_string())
}

/// Parses a sampling ratio in `0.0..=1.0`.
pub fn sampling_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a ratio from 0.0 to 1.0 (e.g. 0.01 for 1%)"
        )),
    }
}

/// `--access-log-fields`: field names, in order.
#[derive(Debug, Clone)]
pub struct FieldList(Vec<weft_proxy::access_log::Field>);

fn access_log_fields(s: &str) -> Result<FieldList, String> {
    weft_proxy::access_log::Field::parse_list(s).map(FieldList)
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["config", "xds"])))]
pub struct ProxyArgs {
    /// Standalone: a directory of config YAML files (every *.yaml / *.yml),
    /// watched for changes and translated in-process exactly as `weft
    /// control` would serve it.
    #[arg(long, value_name = "DIR")]
    pub config: Option<PathBuf>,
    /// Take everything from a control plane: its ADS address (HOST:PORT,
    /// plaintext gRPC, delta xDS). Keeps serving the last config while the
    /// control plane is unreachable.
    #[arg(long, value_name = "ADDR", requires = "node_id")]
    pub xds: Option<String>,
    /// With --xds: this instance's node id.
    #[arg(long, value_name = "ID", requires = "xds")]
    pub node_id: Option<String>,
    /// With --xds: the node's cluster, the Service this sidecar runs beside
    /// (`name` or `name.namespace`). Default: --service.
    #[arg(long, value_name = "NAME", requires = "xds")]
    pub cluster: Option<String>,
    /// The Service this sidecar runs beside: `name` or `name.namespace`.
    /// Bare host names resolve in its namespace.
    #[arg(long, value_name = "NAME", required_unless_present = "cluster")]
    pub service: Option<String>,
    /// Outbound HTTP listener: the local app sends requests here, with the
    /// target Service as Host (`catalog`, `catalog.ns`, `catalog.ns.svc.cluster.local`, with or without `:port`).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,
    /// Inbound listener in front of the local app (HTTP/1.1, h2c and opaque TCP detected).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15006")]
    pub inbound: SocketAddr,
    /// The local app's address. Without it, the app is the one the config's
    /// inbound listener names (`127.0.0.1:<the Service's port>`), and there
    /// is no inbound listener while the config has none.
    #[arg(long, value_name = "ADDR")]
    pub app: Option<SocketAddr>,
    /// Admin listener: /ready, /live, /metrics, /config_dump.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Data-plane worker threads. 1 runs everything on one thread (the
    /// cheapest for a sidecar beside a small app); the default 2 lets one slow
    /// handshake not stall other connections. Benchmarks set it equal to the
    /// peers' thread count.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
    /// Timeout for TCP connects to endpoints.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// The zone this sidecar runs in. Endpoints whose locality has the same
    /// zone are local: a TrafficPolicy with `loadBalancer.locality` keeps
    /// traffic on them while enough of them are healthy.
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// The rate-limit service for TrafficPolicy `rateLimit.global` (HOST:PORT,
    /// Envoy's RateLimitService protocol; quota is leased in batches, not
    /// asked per request). Default with --xds: the control plane, which
    /// serves it on its xDS port; standalone: none (global limits apply
    /// their failureMode).
    #[arg(long, value_name = "ADDR")]
    pub ratelimit: Option<String>,
    /// Export spans (one per proxied request, one per retry/backup attempt)
    /// to this OpenTelemetry collector over OTLP/gRPC (HOST:PORT). Spans
    /// are queued and sent in batches; when the collector is down or slow
    /// they are dropped and counted, never delaying requests. Without it,
    /// no spans are recorded (trace headers are still propagated).
    #[arg(long, value_name = "ADDR")]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces sampled, 0.0 to 1.0 (a caller's sampling
    /// decision in its trace headers is kept).
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, value_parser = sampling_ratio)]
    pub trace_sampling: f64,
    /// Write an access log: one JSON object per line per request, to this
    /// file (appended; SIGUSR1 reopens it after logrotate) or `-` for
    /// standard output. Written by a thread of its own from a bounded
    /// queue: lines the writer cannot keep up with are dropped and counted
    /// (weft_access_log_dropped_total), never delaying requests.
    #[arg(long, value_name = "PATH")]
    pub access_log: Option<String>,
    /// The fields of an access log line, comma-separated, in order (default:
    /// all): start_time, direction, source, service, route, method,
    /// authority, path, protocol, response_code, grpc_status, error,
    /// response_end, upstream_host, downstream_remote_address, bytes_sent,
    /// headers_ms, duration_ms, trace_id, request_id, user_agent.
    #[arg(long, value_name = "LIST", value_parser = access_log_fields, requires = "access_log")]
    pub access_log_fields: Option<FieldList>,
    /// The share of successful requests logged, 0.0 to 1.0; failed ones
    /// (5xx, a gRPC status other than OK, the proxy's own answers) always
    /// are.
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, value_parser = sampling_ratio, requires = "access_log")]
    pub access_log_sampling: f64,
    /// Close HTTP/1 connections whose request headers take longer than this.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1 gets 431 above it).
    #[arg(long, value_name = "BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(8192..=1048576))]
    pub max_header_bytes: u32,
    /// Inbound: how long to wait for a client's first bytes before treating the connection as opaque TCP.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    pub detect_timeout: Duration,
    /// On SIGTERM: how long in-flight requests may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub drain_timeout: Duration,
    /// How often the config directory (--config) is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = duration)]
    pub reload_interval: Duration,
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Directory of config YAML files (every *.yaml / *.yml); watched for changes.
    #[arg(long, value_name = "DIR")]
    pub config: PathBuf,
    /// ADS listener (gRPC over plaintext HTTP/2).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15010")]
    pub xds: SocketAddr,
    /// Admin listener: /ready, /metrics, /status, /config_dump?node=ID.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15011")]
    pub admin: SocketAddr,
    /// How often the config directory is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = duration)]
    pub reload_interval: Duration,
    /// Port of the outbound listener sent to Envoy sidecars (on 127.0.0.1).
    #[arg(long, value_name = "PORT", default_value_t = 15001)]
    pub sidecar_outbound_port: u16,
    /// Port of the inbound listener sent to Envoy sidecars (on 127.0.0.1).
    #[arg(long, value_name = "PORT", default_value_t = 15006)]
    pub sidecar_inbound_port: u16,
    /// Keep the rate-limit service's counters in this Redis
    /// (`redis://HOST:PORT[/DB]`) so that several control-plane replicas
    /// share one count per limit. Default: in memory (one replica's view).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// How often the control plane reads every weft proxy's /metrics for
    /// its traffic view (`/traffic`, `weft stat`).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub traffic_interval: Duration,
    /// Read the traffic view's numbers from this Prometheus
    /// (`http://HOST:PORT[/PATH]`, scraping the proxies through
    /// /sd/prometheus); while it fails, /traffic answers from direct
    /// scraping and says so.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<weft_control::promql::PrometheusUrl>,
}

#[derive(Debug, Args)]
pub struct StatArgs {
    /// The Service (`name` or `name.namespace`); all when absent.
    pub service: Option<String>,
    /// The control plane's admin address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15011")]
    pub control: SocketAddr,
    /// The numbers cover the last DURATION (1s to 300s).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub window: Duration,
    /// Print the SMI TrafficMetrics JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RatelimitArgs {
    /// Directory of config YAML files (every *.yaml / *.yml); watched for
    /// changes. While it is invalid, the last good limits stay in force.
    #[arg(long, value_name = "DIR")]
    pub config: PathBuf,
    /// gRPC listener (plaintext HTTP/2): envoy.service.ratelimit.v3.RateLimitService.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15013")]
    pub listen: SocketAddr,
    /// Admin listener: /ready, /metrics, /status.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:15014")]
    pub admin: SocketAddr,
    /// Keep the counters in this Redis (`redis://HOST:PORT[/DB]`), shared by
    /// every replica pointed at it. Default: in memory.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// How often the config directory is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = duration)]
    pub reload_interval: Duration,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Directory of config YAML files.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn init_logging(cli: &Cli) {
    // The demo's and top's live views own the terminal: they log warnings
    // only, unless asked otherwise.
    let level = match (&cli.command, cli.log.as_str()) {
        (Command::Demo(_) | Command::Top(_), "info") => "warn",
        (_, level) => level,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(a) => Ok(validate(&a.dir)),
        Command::Control(a) => runtime(2)?.block_on(control(a)),
        Command::Ratelimit(a) => runtime(2)?.block_on(ratelimit(a)),
        Command::Stat(a) => runtime(1)?.block_on(stat(a)),
        Command::Top(a) => runtime(1)?.block_on(crate::top::top(a)),
        Command::Proxy(a) => {
            let workers = a.workers as usize;
            runtime(workers)?.block_on(proxy(a))
        }
        Command::Demo(a) => runtime(2)?.block_on(demo(a)),
        Command::App(a) => runtime(a.workers)?.block_on(app(a)),
        // The load generator runs on its own threads; this runtime only waits.
        Command::Load(a) => runtime(1)?.block_on(crate::load::load(a)),
        Command::Capacity(a) => runtime(1)?.block_on(crate::load::capacity(a)),
    }
}

/// One worker means one thread for everything (current-thread runtime).
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn validate(dir: &std::path::Path) -> ExitCode {
    match weft_model::load_dir(dir) {
        Ok(c) => {
            println!(
                "{}: ok ({} services, {} HTTP routes)",
                dir.display(),
                c.services.len(),
                c.http_routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print!("{errors}");
            ExitCode::FAILURE
        }
    }
}

async fn stat(a: StatArgs) -> anyhow::Result<ExitCode> {
    use weft_demo::demo::golden;
    let unreachable =
        |e: golden::FetchError| anyhow::anyhow!("control plane admin {} {e}", a.control);
    let traffic = golden::fetch_json(a.control, a.window, a.service.as_deref())
        .await
        .map_err(unreachable)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&traffic)?);
    } else {
        let snapshot = golden::TrafficSnapshot::from_json(&traffic).map_err(unreachable)?;
        print!("{}", snapshot.render());
    }
    Ok(ExitCode::SUCCESS)
}

async fn control(a: ControlArgs) -> anyhow::Result<ExitCode> {
    let mut opts = weft_control::ControlOptions::new(a.config);
    opts.xds = a.xds;
    opts.admin = a.admin;
    opts.reload_interval = a.reload_interval;
    opts.translate.outbound_port = a.sidecar_outbound_port;
    opts.translate.inbound_port = a.sidecar_inbound_port;
    opts.redis = a.redis;
    opts.traffic_interval = a.traffic_interval;
    opts.prometheus = a.prometheus;
    serve_until_signal(
        weft_control::start(opts).await,
        |e| match e {
            weft_control::StartError::Config(errors) => Some(errors.to_string()),
            _ => None,
        },
        async |running| running.shutdown().await,
    )
    .await
}

/// What `control` and `ratelimit` share: a config that does not load
/// prints its errors and exits 1 (`config_errors` picks them out of the
/// start error); a started service runs until SIGTERM or Ctrl-C, then
/// `shutdown`.
async fn serve_until_signal<R, E>(
    started: Result<R, E>,
    config_errors: impl FnOnce(&E) -> Option<String>,
    shutdown: impl AsyncFnOnce(R),
) -> anyhow::Result<ExitCode>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let running = match started {
        Ok(r) => r,
        Err(e) => match config_errors(&e) {
            Some(errors) => {
                eprint!("{errors}");
                return Ok(ExitCode::FAILURE);
            }
            None => return Err(e.into()),
        },
    };
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "stopping");
    shutdown(running).await;
    Ok(ExitCode::SUCCESS)
}

async fn ratelimit(a: RatelimitArgs) -> anyhow::Result<ExitCode> {
    let mut opts = weft_ratelimit::RateLimitOptions::new(a.config);
    opts.listen = a.listen;
    opts.admin = a.admin;
    opts.redis = a.redis;
    opts.reload_interval = a.reload_interval;
    serve_until_signal(
        weft_ratelimit::start(opts).await,
        |e| match e {
            weft_ratelimit::StartError::Config(errors) => Some(errors.to_string()),
            _ => None,
        },
        async |running| running.shutdown().await,
    )
    .await
}

async fn proxy(a: ProxyArgs) -> anyhow::Result<ExitCode> {
    // clap guarantees: one of --config / --xds; --service or --cluster;
    // --node-id with --xds.
    let mut opts = match (a.config, a.xds) {
        (Some(dir), _) => {
            weft_proxy::ProxyOptions::new(dir, a.service.context("--service is required")?)
        }
        (None, Some(server)) => {
            let node_id = a.node_id.context("--node-id is required with --xds")?;
            let cluster = a
                .cluster
                .or(a.service)
                .context("--cluster (or --service) is required with --xds")?;
            weft_proxy::ProxyOptions::xds(weft_proxy::XdsClientOptions::new(
                server, node_id, cluster,
            ))
        }
        (None, None) => anyhow::bail!("one of --config and --xds is required"),
    };
    opts.outbound = a.outbound;
    opts.inbound = a.inbound;
    opts.app = a.app;
    opts.admin = a.admin;
    opts.connect_timeout = a.connect_timeout;
    opts.zone = a.zone;
    opts.ratelimit = a.ratelimit;
    opts.access_log = a
        .access_log
        .map(|path| weft_proxy::access_log::AccessLogOptions {
            target: weft_proxy::access_log::Target::parse(&path),
            fields: a
                .access_log_fields
                .map(|f| f.0)
                .unwrap_or_else(|| weft_proxy::access_log::Field::ALL.to_vec()),
            sampling: a.access_log_sampling,
        });
    opts.otlp_endpoint = a.otlp_endpoint;
    opts.trace_sampling = a.trace_sampling;
    opts.header_read_timeout = a.header_read_timeout;
    opts.max_header_bytes = a.max_header_bytes as usize;
    opts.detect_timeout = a.detect_timeout;
    opts.drain_timeout = a.drain_timeout;
    opts.reload_interval = a.reload_interval;
    let running = match weft_proxy::start(opts).await {
        Ok(r) => r,
        Err(weft_proxy::StartError::Config(errors)) => {
            eprint!("{errors}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "draining");
    tokio::select! {
        () = running.shutdown() => {}
        _ = shutdown_signal() => tracing::warn!("second signal: exiting without waiting for the drain"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C), naming which.
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

async fn app(a: AppArgs) -> anyhow::Result<ExitCode> {
    let cfg = weft_demo::app::AppConfig {
        name: a.name,
        listen: a.listen,
        latency: a.latency,
        jitter: a.jitter,
        error_rate: a.error_rate,
        error_status: a.error_status,
        slow_share: a.slow_share,
        slow_latency: a.slow_latency.unwrap_or_default(),
        biz_error_share: a.biz_error_share,
        biz_error_header: a.biz_error_header,
        body_size: a.body_size,
        calls: a.calls,
        stall: a
            .stall_after
            .zip(a.stall_for)
            .map(|(after, length)| weft_demo::app::Stall { after, length }),
    };
    let name = cfg.name.clone();
    let app = weft_demo::app::start(cfg).await?;
    let admin = match a.admin {
        Some(addr) => Some(weft_admin::start(addr, std::sync::Arc::new(app.admin(&name))).await?),
        None => None,
    };
    tracing::info!(addr = %app.local_addr(), admin = ?a.admin, "sample app serving");
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "stopping");
    drop(admin);
    app.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn demo(a: DemoArgs) -> anyhow::Result<ExitCode> {
    let opts = weft_demo::demo::DemoOptions {
        duration: a.duration,
        rate: a.rate,
        config_dir: a.config_dir,
        refresh: a.refresh,
        window: a.window,
        plain: a.plain,
        ip_base: a.ip_base,
        admin: Some(
            a.admin
                .unwrap_or_else(|| SocketAddr::from(([127, a.ip_base, 0, 2], 15000))),
        ),
        script: !a.no_script,
    };
    let mut signals = Box::pin(shutdown_signal());
    let stop = async move {
        let _ = signals.as_mut().await;
    };
    weft_demo::demo::run(opts, stop).await?;
    Ok(ExitCode::SUCCESS)
}
