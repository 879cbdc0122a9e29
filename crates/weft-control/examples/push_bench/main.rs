//! Push benchmark for `weft control` (issue 3, part 6). Not a test: it
//! writes figures. Run it through `scripts/bench-push.sh`.
//!
//! For each client count N: starts `weft control` (the release binary, its
//! own process, so its CPU and memory are its own) on a generated config
//! directory, connects N simulated delta-ADS sidecars over a few HTTP/2
//! connections, waits until all ACKed their initial config, then alternates
//! two changes, each repeated:
//!
//! - A: one endpoint added to the hub Service, which every client calls;
//! - B: one endpoint added to the rare Service, which 1 in M-1 clients call
//!   (it has no sidecars of its own).
//!
//! Per change it records the time from the file write to the publish
//! (control plane metric) and to each concerned client's ACK of the new
//! version, the control plane's CPU time, and the bytes sent.

mod client;
mod control;
mod mesh;
mod report;
mod tracker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Parser;
use tokio::sync::mpsc;
use weft_xds::DataPlane;

use control::ControlProcess;
use mesh::{GroupKey, Mesh, Versions};
use report::{ChangeKind, ChangeResult, Connected, RunResult};
use tracker::Tracker;

#[derive(Debug, Parser)]
#[command(about = "Push benchmark: simulated delta-ADS sidecars against `weft control`")]
struct Args {
    /// Client counts to run, in order (a fresh control plane for each).
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    clients: Vec<usize>,
    /// Services in the generated mesh.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Times each change is made (medians are reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// ADS streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    streams_per_connection: usize,
    /// The control plane's --reload-interval.
    #[arg(long, default_value = "50ms")]
    reload_interval: String,
    /// Data-plane kinds of the clients: envoy, weft, or mixed (alternating).
    #[arg(long, default_value = "mixed")]
    kinds: String,
    /// The weft binary.
    #[arg(long, default_value = "target/release/weft")]
    weft: PathBuf,
    /// Work directory (config dirs and control-plane logs).
    #[arg(long, default_value = "target/bench/push-work")]
    work: PathBuf,
    /// Connect the clients in batches of this many, each batch synced before
    /// the next connects (0: all at once, like after a control-plane restart).
    #[arg(long, default_value_t = 0)]
    connect_batch: usize,
    /// Markdown report, appended to.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// How long to wait for a change to reach every concerned client.
const CHANGE_DEADLINE: Duration = Duration::from_secs(120);
/// Silence after the last response that ends a change.
const QUIET: Duration = Duration::from_millis(500);
/// Pause between changes, and the idle-CPU sampling window.
const SETTLE: Duration = Duration::from_secs(2);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    report_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let kinds: &[DataPlane] = match args.kinds.as_str() {
        "envoy" => &[DataPlane::Envoy],
        "weft" => &[DataPlane::Weft],
        "mixed" => &[DataPlane::Envoy, DataPlane::Weft],
        other => anyhow::bail!("--kinds must be envoy, weft or mixed, not {other:?}"),
    };
    anyhow::ensure!(
        args.weft.exists(),
        "{} not found (cargo build --release -p weft)",
        args.weft.display()
    );
    let deps = mesh::dependencies_supported();
    eprintln!("spec.dependencies: {}", mesh::describe_dependencies(deps));
    let shape = Mesh::new(args.services, args.namespaces, deps);
    eprintln!(
        "mesh: {} Services, sidecars for {}; the hub is called by {} of them (and is its own \
         sidecars' Service), the rare one by {}",
        args.services,
        shape.client_services().len(),
        shape.callers(shape.hub()),
        shape.callers(shape.rare())
    );
    let mut runs = Vec::new();
    for &n in &args.clients {
        let result = run_one(&args, n, kinds, deps)
            .await
            .with_context(|| format!("N = {n}"))?;
        eprintln!("{}", report::run_summary(&result));
        runs.push(result);
    }
    let md = report::markdown(&runs, &args_line(&args), deps);
    print!("{md}");
    if let Some(out) = &args.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)?;
        f.write_all(md.as_bytes())?;
    }
    Ok(())
}

fn args_line(a: &Args) -> String {
    format!(
        "M = {} Services in {} namespaces, {} streams per HTTP/2 connection, clients {}, \
         `--reload-interval {}`, {} repeats per change",
        a.services, a.namespaces, a.streams_per_connection, a.kinds, a.reload_interval, a.repeats
    )
}

async fn run_one(
    args: &Args,
    n: usize,
    kinds: &[DataPlane],
    deps: bool,
) -> anyhow::Result<RunResult> {
    let mut mesh = Mesh::new(args.services, args.namespaces, deps);
    let dir = args.work.join(format!("config-{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    mesh.write_all(&dir)?;
    let log = args.work.join(format!("control-{n}.log"));
    let control = ControlProcess::start(&args.weft, &dir, &args.reload_interval, &log).await?;
    let result = measure(args, n, kinds, &mut mesh, &dir, &control).await;
    control.stop();
    result
}

async fn measure(
    args: &Args,
    n: usize,
    kinds: &[DataPlane],
    mesh: &mut Mesh,
    dir: &Path,
    control: &ControlProcess,
) -> anyhow::Result<RunResult> {
    let load_before = loadavg();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_idle = control.rss_kib();

    // Client i is a sidecar of the (i mod M-1)th client Service, of kind
    // i mod kinds.
    let services = mesh.client_services();
    let nodes: Vec<client::Node> = (0..n)
        .map(|i| {
            let cluster = mesh.cluster(services[i % services.len()]);
            client::Node {
                id: format!("{cluster}-{i}"),
                cluster,
                kind: kinds[i % kinds.len()],
            }
        })
        .collect();
    let mut groups: Vec<GroupKey> = nodes.iter().map(|c| (c.kind, c.cluster.clone())).collect();
    groups.sort();
    groups.dedup();
    let mut served = mesh::served_versions(&mesh.config()?, &groups);
    let expect_all: HashMap<u32, Versions> = nodes
        .iter()
        .enumerate()
        .map(|(i, c)| (i as u32, served[&(c.kind, c.cluster.clone())].clone()))
        .collect();

    eprintln!("N = {n}: connecting");
    let connections = n.div_ceil(args.streams_per_connection);
    let started = Instant::now();
    let cpu_before_sync = control.cpu_seconds();
    let channels = client::connect(control.xds, connections).await?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut tracker = Tracker::new(events_rx);
    // All at once (a control-plane restart) unless --connect-batch asks
    // for a rolling start, each batch synced before the next connects.
    let batch = if args.connect_batch == 0 {
        n
    } else {
        args.connect_batch
    };
    let mut tasks = Vec::with_capacity(n);
    let mut sync_bytes = 0;
    for first in (0..n).step_by(batch) {
        let last = (first + batch).min(n);
        let expect: HashMap<u32, Versions> = (first..last)
            .map(|i| (i as u32, expect_all[&(i as u32)].clone()))
            .collect();
        tasks.extend(client::spawn(
            &channels,
            args.streams_per_connection,
            first,
            &nodes[first..last],
            &events_tx,
        ));
        let quiet = if last == n {
            QUIET
        } else {
            Duration::from_millis(20)
        };
        let sync = tracker
            .collect(&expect, Duration::from_secs(600), quiet)
            .await;
        anyhow::ensure!(
            sync.missing == 0,
            "{} of clients {first}..{last} did not get their initial config (closed: {:?})",
            sync.missing,
            tracker.closed.first()
        );
        sync_bytes += sync.bytes;
    }
    drop(events_tx);
    let sync_seconds = started.elapsed().as_secs_f64() - QUIET.as_secs_f64();
    let sync_cpu = control.cpu_seconds() - cpu_before_sync;
    tokio::time::sleep(SETTLE).await;
    let scrape = control.scrape().await?;
    anyhow::ensure!(
        scrape.streams as usize == n,
        "control plane reports {} streams, expected {n}",
        scrape.streams
    );
    let rss_connected = control.rss_kib();
    let cpu0 = control.cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep(SETTLE).await;
    let idle_cpu_rate = (control.cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    let connected = Connected {
        clients: n,
        connections,
        sync_seconds,
        sync_cpu,
        sync_bytes,
        rss_idle_kib: rss_idle,
        rss_connected_kib: rss_connected,
        idle_cpu_rate,
        bench_rss_kib: control::own_rss_kib(),
    };
    eprintln!("{}", report::connected_summary(&connected));

    let mut changes = Vec::new();
    for rep in 0..args.repeats {
        for kind in [ChangeKind::Hub, ChangeKind::Rare] {
            let target = match kind {
                ChangeKind::Hub => mesh.hub(),
                ChangeKind::Rare => mesh.rare(),
            };
            let r = change(
                kind,
                target,
                mesh,
                dir,
                control,
                &mut tracker,
                &nodes,
                &groups,
                &mut served,
                idle_cpu_rate,
            )
            .await?;
            eprintln!("  rep {} {}", rep + 1, report::change_summary(&r));
            changes.push(r);
            tokio::time::sleep(SETTLE).await;
        }
    }
    let closed = tracker.closed.len();
    for t in tasks {
        t.abort();
    }
    Ok(RunResult {
        connected,
        changes,
        closed,
        load_before,
        load_after: loadavg(),
    })
}

/// Makes one change and measures it.
#[allow(clippy::too_many_arguments)]
async fn change(
    kind: ChangeKind,
    target: usize,
    mesh: &mut Mesh,
    dir: &Path,
    control: &ControlProcess,
    tracker: &mut Tracker,
    nodes: &[client::Node],
    groups: &[GroupKey],
    served: &mut HashMap<GroupKey, Versions>,
    idle_cpu_rate: f64,
) -> anyhow::Result<ChangeResult> {
    let (file, text) = mesh.add_endpoint(target);
    let next = mesh::served_versions(&mesh.config()?, groups);
    let expect: HashMap<u32, Versions> = nodes
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let key = (c.kind, c.cluster.clone());
            let changed = mesh::changed(&served[&key], &next[&key]);
            (!changed.is_empty()).then_some((i as u32, changed))
        })
        .collect();
    *served = next;

    let before = control.scrape().await?;
    let cpu0 = control.cpu_seconds();
    let ticks0 = control.cpu_ticks_seconds();
    let bench0 = control::cpu_seconds(Path::new("/proc/self"));
    let t0 = Instant::now();
    std::fs::write(dir.join(&file), text)?;
    let written = SystemTime::now();
    let w = tracker.collect(&expect, CHANGE_DEADLINE, QUIET).await;
    // The publish metric is set right after the fan-out: make sure the
    // scrape sees it even when no client was concerned.
    let mut after = control.scrape().await?;
    while after.generation <= before.generation && t0.elapsed() < CHANGE_DEADLINE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = control.scrape().await?;
    }
    let window = t0.elapsed().as_secs_f64();
    let cpu = control.cpu_seconds() - cpu0;
    let ticks = control.cpu_ticks_seconds() - ticks0;
    let bench_cpu = control::cpu_seconds(Path::new("/proc/self")) - bench0;

    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    };
    let written_s = unix(written);
    let ack_s: Vec<f64> = w.done.values().map(|t| unix(*t)).collect();
    Ok(ChangeResult {
        kind,
        concerned: expect.len(),
        acked: w.done.len(),
        missing: w.missing,
        pushed: w.pushed,
        write_to_publish_ms: (after.published_at - written_s) * 1e3,
        update_ms: (after.translate_seconds - before.translate_seconds) * 1e3,
        publish_to_ack_ms: ack_s
            .iter()
            .map(|a| (a - after.published_at) * 1e3)
            .collect(),
        write_to_ack_ms: ack_s.iter().map(|a| (a - written_s) * 1e3).collect(),
        cpu_seconds: cpu,
        cpu_net_seconds: (cpu - idle_cpu_rate * window).max(0.0),
        cpu_ticks_seconds: ticks,
        window_seconds: window,
        bytes_clients: w.bytes,
        bytes_server: (after.sent_bytes - before.sent_bytes) as u64,
        responses: w.responses,
        bench_cpu_seconds: bench_cpu,
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// 10,000 streams ride on ~100 connections, so the fd limit only matters
/// with few streams per connection; `scripts/bench-push.sh` raises it.
fn report_fd_limit() {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    if let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) {
        eprintln!(
            "fd limit (soft hard): {}",
            line.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}
