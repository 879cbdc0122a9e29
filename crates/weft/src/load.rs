//! `weft load` and `weft capacity`: flags to a [`weft_load::LoadSpec`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Args, ValueEnum};
use weft_load::grpc_message::{DescriptorSource, GrpcMethod, UnaryMethod};
use weft_load::{LoadSpec, ProgressMode, Protocol, RatePlan, Target};

use crate::cli::{duration, shutdown_signal};

/// What every request looks like and how it travels: shared by `weft load`
/// and `weft capacity`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("protocol").args(["http1", "http2", "grpc"])))]
#[command(group(ArgGroup::new("body_source").args(["body", "body_file"])))]
pub struct RequestArgs {
    /// Where to send: http://HOST:PORT/PATH (or HOST:PORT/PATH). Plaintext;
    /// HTTP/2 and gRPC use h2c with prior knowledge.
    #[arg(value_name = "TARGET", value_parser = target)]
    pub target: Target,
    /// HTTP/1.1 with keep-alive, one request at a time per connection (default).
    #[arg(long)]
    pub http1: bool,
    /// HTTP/2 cleartext (h2c, prior knowledge), many streams per connection.
    #[arg(long)]
    pub http2: bool,
    /// gRPC unary calls of METHOD (`package.Service/Method`) over h2c. The
    /// request message is --body (JSON, encoded with the method's schema from
    /// server reflection, --proto or --protoset) or --body-file (protobuf
    /// bytes); none sends an empty message.
    #[arg(long, value_name = "METHOD")]
    pub grpc: Option<String>,
    /// HTTP method (default GET, or POST when a body is given).
    #[arg(long, short = 'X', value_name = "METHOD")]
    pub method: Option<http::Method>,
    /// Request header `Name: value`, sent on every request. Repeatable.
    /// `Host` (or `:authority`) sets the authority on HTTP/2 and gRPC too,
    /// while connections still go to TARGET's address.
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = header)]
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Request body. With --grpc: the request message as JSON (or protobuf
    /// bytes with --body-format binary).
    #[arg(long, value_name = "TEXT")]
    pub body: Option<String>,
    /// Request body from a file. With --grpc: protobuf bytes (or JSON with
    /// --body-format json, or auto-detected when the file starts with `{`).
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// gRPC only: how to read the body (auto: JSON when it starts with `{`).
    #[arg(long, value_enum, default_value_t = BodyFormat::Auto)]
    pub body_format: BodyFormat,
    /// gRPC JSON bodies: a .proto file defining the method (compiled at run
    /// time, no protoc needed). Repeatable. Default: server reflection.
    #[arg(long = "proto", value_name = "FILE")]
    pub protos: Vec<PathBuf>,
    /// Directories searched for the imports of --proto files. Repeatable.
    #[arg(long = "import-path", value_name = "DIR")]
    pub import_paths: Vec<PathBuf>,
    /// gRPC JSON bodies: a FileDescriptorSet (protoc --descriptor_set_out, buf build -o).
    #[arg(long, value_name = "FILE")]
    pub protoset: Option<PathBuf>,
    /// TCP connections to the target, all opened before the clock starts.
    #[arg(long, short = 'c', value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub connections: u32,
    /// HTTP/2 and gRPC: requests in flight per connection at most (default
    /// 100; with --rate max exactly this many, default 10).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100000))]
    pub streams: Option<u32>,
    /// A request not answered within this (from when it left) fails as a
    /// timeout; one that waited longer for a free connection is never sent.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub timeout: Duration,
    /// Worker threads of the load generator (a pacer thread runs besides).
    /// Default: one per core, at most 4.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Option<u32>,
    /// Admin port with /ready (while sending) and /metrics (live counters).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// No progress line on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the report as JSON (on stdout) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BodyFormat {
    Auto,
    Json,
    Binary,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub request: RequestArgs,
    /// Requests per second, open loop on a fixed schedule: `1000`; steps
    /// `1000,2000,4000` (each held for --duration); a ramp `100..5000` (over
    /// --duration); or `max` (closed loop, as fast as answers come back).
    #[arg(long, short = 'r', value_name = "RATE", default_value = "1000", value_parser = rate, allow_hyphen_values = true)]
    pub rate: RatePlan,
    /// How long each rate step runs (the whole ramp, the whole max run).
    #[arg(long, short = 'd', value_name = "DURATION", default_value = "10s", value_parser = positive_duration, allow_hyphen_values = true)]
    pub duration: Duration,
    /// Load at the first rate before measuring (not reported).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    pub warmup: Duration,
}

#[derive(Debug, Args)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub request: RequestArgs,
    /// The objective every step must meet: comma-separated `pNN<LATENCY`
    /// (p50, p90, p99, p99.9, p99.99, max; us/ms/s) and `errors<PERCENT%`.
    #[arg(long, value_name = "SLO", value_parser = slo)]
    pub slo: weft_load::capacity::Slo,
    /// First rate tried (requests/s); the search doubles from there.
    #[arg(long, value_name = "RPS", default_value_t = 100.0)]
    pub start_rate: f64,
    /// Never offer more than this (requests/s).
    #[arg(long, value_name = "RPS")]
    pub max_rate: Option<f64>,
    /// How long each step is measured.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub step_duration: Duration,
    /// Unmeasured load before each step, to let queues settle.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    pub step_warmup: Duration,
    /// Upper bound on the whole search; it stops with the best rate so far.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = positive_duration)]
    pub max_time: Duration,
    /// Stop bisecting when the failing rate is within this share of the passing one.
    #[arg(long, value_name = "RATIO", default_value_t = 0.05)]
    pub precision: f64,
    /// Write the latency-vs-rate chart (SVG) here.
    #[arg(long, value_name = "FILE", default_value = "capacity.svg")]
    pub chart: PathBuf,
}

fn target(s: &str) -> Result<Target, String> {
    s.parse()
        .map_err(|e: weft_load::spec::TargetError| e.to_string())
}

fn rate(s: &str) -> Result<RatePlan, String> {
    s.parse()
        .map_err(|e: weft_load::spec::RateError| e.to_string())
}

fn header(s: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    weft_load::spec::parse_header(s)
}

fn slo(s: &str) -> Result<weft_load::capacity::Slo, String> {
    s.parse()
        .map_err(|e: weft_load::capacity::SloError| e.to_string())
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be greater than 0"));
    }
    Ok(d)
}

impl RequestArgs {
    /// The spec these flags describe (rate and duration still to set).
    async fn spec(&self, max: bool) -> anyhow::Result<LoadSpec> {
        let mut spec = LoadSpec::new(self.target.clone());
        let body = match (&self.body, &self.body_file) {
            (Some(b), _) => Some(b.clone().into_bytes()),
            (None, Some(path)) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read --body-file {}", path.display()))?,
            ),
            (None, None) => None,
        };
        spec.protocol = match (&self.grpc, self.http2) {
            (Some(m), _) => Protocol::Grpc { method: m.clone() },
            (None, true) => Protocol::Http2,
            (None, false) => Protocol::Http1,
        };
        if let Some(m) = &self.grpc {
            let method: GrpcMethod = m.parse().map_err(|e| anyhow::anyhow!("--grpc: {e}"))?;
            spec.protocol = Protocol::Grpc {
                method: method.path().trim_start_matches('/').to_owned(),
            };
            let body = body.unwrap_or_default();
            let json = match self.body_format {
                BodyFormat::Json => true,
                BodyFormat::Binary => false,
                BodyFormat::Auto => body.trim_ascii_start().starts_with(b"{"),
            };
            if !json && (!self.protos.is_empty() || self.protoset.is_some()) {
                // Protobuf bytes need no schema, but given one, check the
                // method exists and is unary before loading it.
                let source = DescriptorSource::from_flags(
                    self.protos.clone(),
                    self.import_paths.clone(),
                    self.protoset.clone(),
                )?;
                UnaryMethod::resolve(&self.target, &method, &source, self.timeout).await?;
            }
            spec.body = if json {
                let text = String::from_utf8(body).context("the JSON request body is not UTF-8")?;
                let source = DescriptorSource::from_flags(
                    self.protos.clone(),
                    self.import_paths.clone(),
                    self.protoset.clone(),
                )?;
                let unary =
                    UnaryMethod::resolve(&self.target, &method, &source, self.timeout).await?;
                unary.encode_json(&text)?
            } else {
                body.into()
            };
        } else {
            if !self.protos.is_empty() || self.protoset.is_some() || !self.import_paths.is_empty() {
                anyhow::bail!("--proto, --import-path and --protoset only apply with --grpc");
            }
            if self.body_format != BodyFormat::Auto {
                anyhow::bail!("--body-format only applies with --grpc");
            }
            if let Some(b) = body {
                spec.method = http::Method::POST;
                spec.body = b.into();
            }
            if let Some(m) = &self.method {
                spec.method = m.clone();
            }
        }
        if self.grpc.is_some() && self.method.is_some() {
            anyhow::bail!("--method does not apply with --grpc (gRPC always POSTs)");
        }
        for (name, value) in &self.headers {
            spec.headers.append(name.clone(), value.clone());
        }
        spec.connections = self.connections as usize;
        spec.streams = self
            .streams
            .map_or(if max { 10 } else { 100 }, |s| s as usize);
        spec.timeout = self.timeout;
        if let Some(t) = self.threads {
            spec.threads = t as usize;
        }
        spec.progress = if self.quiet {
            ProgressMode::Off
        } else {
            ProgressMode::Stderr
        };
        Ok(spec)
    }

    async fn admin(&self, spec: &mut LoadSpec) -> anyhow::Result<Option<weft_admin::AdminServer>> {
        let Some(addr) = self.admin else {
            return Ok(None);
        };
        let live = Arc::new(weft_load::Live::new());
        spec.live = Some(live.clone());
        Ok(Some(weft_admin::start(addr, live).await?))
    }
}

pub async fn load(a: LoadArgs) -> anyhow::Result<ExitCode> {
    let max = a.rate == RatePlan::Max;
    let mut spec = a.request.spec(max).await?;
    spec.rate = a.rate;
    spec.duration = a.duration;
    spec.warmup = a.warmup;
    let _admin = a.request.admin(&mut spec).await?;
    let stop = async {
        if let Ok(signal) = shutdown_signal().await {
            eprintln!("\n{signal}: stopping, reporting what ran");
        }
    };
    let report = weft_load::run(spec, stop).await?;
    if a.request.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    if report.client.saturated {
        eprintln!("warning: the load generator saturated; see `client` in the report");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn capacity(a: CapacityArgs) -> anyhow::Result<ExitCode> {
    let mut spec = a.request.spec(false).await?;
    let _admin = a.request.admin(&mut spec).await?;
    let mut opts = weft_load::capacity::CapacityOptions::new(a.slo);
    opts.start_rate = a.start_rate;
    opts.max_rate = a.max_rate;
    opts.step_duration = a.step_duration;
    opts.step_warmup = a.step_warmup;
    opts.max_time = a.max_time;
    opts.precision = a.precision;
    opts.chart = Some(a.chart.clone());
    let stop = async {
        if let Ok(signal) = shutdown_signal().await {
            eprintln!("\n{signal}: stopping the search, reporting what ran");
        }
    };
    let report = weft_load::capacity::run(opts, spec, stop).await?;
    if a.request.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
        eprintln!("chart: {}", a.chart.display());
    }
    // No rate met the SLO: scripts should notice.
    Ok(if report.knee_rate.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
