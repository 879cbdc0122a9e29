//! Results, their medians over repeats, and the markdown report.

use std::fmt::Write as _;

use crate::mesh::describe_dependencies;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A: one endpoint added to the Service every client calls.
    Hub,
    /// B: one endpoint added to the Service 1 in M-1 clients call.
    Rare,
}

impl ChangeKind {
    fn label(self) -> &'static str {
        match self {
            ChangeKind::Hub => "A (hub, all)",
            ChangeKind::Rare => "B (rare, 1%)",
        }
    }
}

/// The state after N clients connected.
#[derive(Debug)]
pub struct Connected {
    pub clients: usize,
    pub connections: usize,
    /// From the first connect to the last initial ACK.
    pub sync_seconds: f64,
    /// Control-plane CPU during the initial sync.
    pub sync_cpu: f64,
    pub sync_bytes: u64,
    pub rss_idle_kib: u64,
    pub rss_connected_kib: u64,
    /// Control-plane CPU-seconds per second while nothing changes.
    pub idle_cpu_rate: f64,
    /// The benchmark process (all clients).
    pub bench_rss_kib: u64,
}

impl Connected {
    fn kib_per_client(&self) -> f64 {
        (self.rss_connected_kib as f64 - self.rss_idle_kib as f64) / self.clients as f64
    }
}

/// One change.
#[derive(Debug)]
pub struct ChangeResult {
    pub kind: ChangeKind,
    /// Clients whose config the change alters (by translation).
    pub concerned: usize,
    /// Concerned clients that ACKed the new version.
    pub acked: usize,
    pub missing: usize,
    /// Clients that received any response.
    pub pushed: usize,
    pub write_to_publish_ms: f64,
    /// Time spent in `SnapshotCache::update` (translate + hand to groups).
    pub update_ms: f64,
    pub publish_to_ack_ms: Vec<f64>,
    pub write_to_ack_ms: Vec<f64>,
    /// Control-plane CPU over the change window.
    pub cpu_seconds: f64,
    /// The same minus the idle rate over the window.
    pub cpu_net_seconds: f64,
    /// utime + stime over the window (10 ms ticks; a cross-check).
    pub cpu_ticks_seconds: f64,
    pub window_seconds: f64,
    pub bytes_clients: u64,
    pub bytes_server: u64,
    /// Responses the clients received.
    pub responses: u64,
    /// The benchmark process's own CPU (the clients) over the window.
    pub bench_cpu_seconds: f64,
}

#[derive(Debug)]
pub struct RunResult {
    pub connected: Connected,
    pub changes: Vec<ChangeResult>,
    /// Client streams that ended during the run (should be 0).
    pub closed: usize,
    pub load_before: String,
    pub load_after: String,
}

/// Nearest-rank percentile of unsorted values (NaN when empty).
fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.into_iter().collect();
    percentile(&v, 0.5)
}

/// p50 / p99 / max of one change's per-client latencies.
fn spread(ms: &[f64]) -> [f64; 3] {
    [
        percentile(ms, 0.5),
        percentile(ms, 0.99),
        percentile(ms, 1.0),
    ]
}

/// Medians over the repeats of one kind of change.
struct Summary {
    concerned: f64,
    pushed: f64,
    missing: usize,
    write_to_publish: f64,
    update: f64,
    publish_to_ack: [f64; 3],
    write_to_ack: [f64; 3],
    cpu_net: f64,
    cpu: f64,
    bytes_server: f64,
    bytes_clients: f64,
    bench_cpu: f64,
}

fn summarize(changes: &[&ChangeResult]) -> Summary {
    let m = |f: &dyn Fn(&ChangeResult) -> f64| median(changes.iter().map(|c| f(c)));
    let s3 = |f: &dyn Fn(&ChangeResult) -> [f64; 3]| -> [f64; 3] {
        let all: Vec<[f64; 3]> = changes.iter().map(|c| f(c)).collect();
        [0, 1, 2].map(|i| median(all.iter().map(|a| a[i])))
    };
    Summary {
        concerned: m(&|c| c.concerned as f64),
        pushed: m(&|c| c.pushed as f64),
        missing: changes.iter().map(|c| c.missing).sum(),
        write_to_publish: m(&|c| c.write_to_publish_ms),
        update: m(&|c| c.update_ms),
        publish_to_ack: s3(&|c| spread(&c.publish_to_ack_ms)),
        write_to_ack: s3(&|c| spread(&c.write_to_ack_ms)),
        cpu_net: m(&|c| c.cpu_net_seconds),
        cpu: m(&|c| c.cpu_seconds),
        bytes_server: m(&|c| c.bytes_server as f64),
        bytes_clients: m(&|c| c.bytes_clients as f64),
        bench_cpu: m(&|c| c.bench_cpu_seconds),
    }
}

fn of_kind(run: &RunResult, kind: ChangeKind) -> Vec<&ChangeResult> {
    run.changes.iter().filter(|c| c.kind == kind).collect()
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn ms3(v: [f64; 3]) -> String {
    format!("{} / {} / {}", ms(v[0]), ms(v[1]), ms(v[2]))
}

fn mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

fn cpu(v: f64) -> String {
    format!("{v:.3}")
}

pub fn connected_summary(c: &Connected) -> String {
    format!(
        "N = {}: synced in {:.1} s over {} connections; control RSS {} -> {} MiB ({:.1} KiB/client); idle CPU {:.2}%",
        c.clients,
        c.sync_seconds,
        c.connections,
        mib(c.rss_idle_kib as f64),
        mib(c.rss_connected_kib as f64),
        c.kib_per_client(),
        c.idle_cpu_rate * 100.0
    )
}

pub fn change_summary(c: &ChangeResult) -> String {
    format!(
        "{}: {}/{} ACKed ({} pushed), write->publish {} ms, publish->ACK p50/p99/max {} ms, CPU {} s (net {}), {} B",
        c.kind.label(),
        c.acked,
        c.concerned,
        c.pushed,
        ms(c.write_to_publish_ms),
        ms3(spread(&c.publish_to_ack_ms)),
        cpu(c.cpu_seconds),
        cpu(c.cpu_net_seconds),
        thousands(c.bytes_server as f64)
    )
}

pub fn run_summary(r: &RunResult) -> String {
    let mut s = format!("N = {} done", r.connected.clients);
    for kind in [ChangeKind::Hub, ChangeKind::Rare] {
        let sm = summarize(&of_kind(r, kind));
        let _ = write!(
            s,
            "; {} write->ACK p99 {} ms, CPU net {} s",
            kind.label(),
            ms(sm.write_to_ack[1]),
            cpu(sm.cpu_net)
        );
    }
    s
}

/// The whole report: setup, per-N tables, ratios, verdicts, raw repeats.
pub fn markdown(runs: &[RunResult], setup: &str, dependencies: bool) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Setup: {setup}; `spec.dependencies` {}.\n",
        describe_dependencies(dependencies)
    );

    md.push_str(
        "| clients | HTTP/2 conns | initial sync s | sync CPU-s | sync MiB sent | RSS idle MiB | RSS connected MiB | **KiB / client** | idle CPU % | clients' RSS MiB | load avg before → after |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in runs {
        let c = &r.connected;
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.2} | {:.1} | {} | {} | **{:.1}** | {:.2} | {} | {} → {} |",
            thousands(c.clients as f64),
            c.connections,
            c.sync_seconds,
            c.sync_cpu,
            c.sync_bytes as f64 / 1048576.0,
            mib(c.rss_idle_kib as f64),
            mib(c.rss_connected_kib as f64),
            c.kib_per_client(),
            c.idle_cpu_rate * 100.0,
            mib(c.bench_rss_kib as f64),
            r.load_before,
            r.load_after
        );
    }

    md.push_str(
        "\n| clients | change | concerned / pushed | write → publish ms | update ms | publish → ACK p50 / p99 / max ms | **write → ACK p50 / p99 / max ms** | **control CPU-s** (raw) | bytes sent (server) | bytes / pushed client | clients' CPU-s |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        for kind in [ChangeKind::Hub, ChangeKind::Rare] {
            let s = summarize(&of_kind(r, kind));
            let per_client = if s.pushed > 0.0 {
                thousands(s.bytes_clients / s.pushed)
            } else {
                "–".into()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} / {}{} | {} | {} | {} | **{}** | **{}** ({}) | {} | {} | {} |",
                thousands(r.connected.clients as f64),
                kind.label(),
                thousands(s.concerned),
                thousands(s.pushed),
                if s.missing > 0 {
                    format!(" ({} missed)", s.missing)
                } else {
                    String::new()
                },
                ms(s.write_to_publish),
                ms(s.update),
                ms3(s.publish_to_ack),
                ms3(s.write_to_ack),
                cpu(s.cpu_net),
                cpu(s.cpu),
                thousands(s.bytes_server),
                per_client,
                cpu(s.bench_cpu)
            );
        }
    }

    md.push_str(
        "\n| clients | CPU B / A (net) | CPU B / A (raw) | bytes B / A |\n|---:|---:|---:|---:|\n",
    );
    for r in runs {
        let (a, b) = (
            summarize(&of_kind(r, ChangeKind::Hub)),
            summarize(&of_kind(r, ChangeKind::Rare)),
        );
        let _ = writeln!(
            md,
            "| {} | {:.1}% | {:.1}% | {:.1}% |",
            thousands(r.connected.clients as f64),
            100.0 * b.cpu_net / a.cpu_net,
            100.0 * b.cpu / a.cpu,
            100.0 * b.bytes_server / a.bytes_server
        );
    }

    if let Some(r) = runs.iter().max_by_key(|r| r.connected.clients) {
        verdicts(&mut md, r);
    }

    md.push_str("\n<details><summary>Every change</summary>\n\n");
    md.push_str(
        "| clients | # | change | ACKed / concerned | pushed (responses) | write → publish ms | publish → ACK p50 / p99 / max ms | CPU-s (net / raw / ticks) | window s | bytes (server / clients) |\n\
         |---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in runs {
        for (i, c) in r.changes.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} / {} | {} ({}) | {} | {} | {} / {} / {:.2} | {:.2} | {} / {} |",
                thousands(r.connected.clients as f64),
                i / 2 + 1,
                c.kind.label(),
                c.acked,
                c.concerned,
                c.pushed,
                c.responses,
                ms(c.write_to_publish_ms),
                ms3(spread(&c.publish_to_ack_ms)),
                cpu(c.cpu_net_seconds),
                cpu(c.cpu_seconds),
                c.cpu_ticks_seconds,
                c.window_seconds,
                thousands(c.bytes_server as f64),
                thousands(c.bytes_clients as f64)
            );
        }
        if r.closed > 0 {
            let _ = writeln!(
                md,
                "\n{} client streams closed during the N = {} run.\n",
                r.closed, r.connected.clients
            );
        }
    }
    md.push_str("\n</details>\n");
    md
}

fn verdicts(md: &mut String, r: &RunResult) {
    let c = &r.connected;
    let (a, b) = (
        summarize(&of_kind(r, ChangeKind::Hub)),
        summarize(&of_kind(r, ChangeKind::Rare)),
    );
    let yes = |ok: bool| if ok { "met" } else { "**missed**" };
    let n = thousands(c.clients as f64);
    let _ = writeln!(
        md,
        "\n| target (issue 3) | at N = {n} | verdict |\n|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| 10,000 connected clients | {n} connected, all synced in {:.1} s, {} streams closed | {} |",
        c.sync_seconds,
        r.closed,
        yes(c.clients >= 10_000 && r.closed == 0)
    );
    let _ = writeln!(
        md,
        "| one-endpoint change ACKed by all, p99 < 1 s | write → ACK p99 {} ms (publish → ACK p99 {} ms), max {} ms | {} |",
        ms(a.write_to_ack[1]),
        ms(a.publish_to_ack[1]),
        ms(a.write_to_ack[2]),
        yes(a.write_to_ack[1] < 1000.0 && a.missing == 0)
    );
    let ratio = b.cpu_net / a.cpu_net;
    let _ = writeln!(
        md,
        "| 1%-Service change < 5% of full-fanout CPU | {} / {} CPU-s = {:.1}% ({} of {} clients pushed) | {} |",
        cpu(b.cpu_net),
        cpu(a.cpu_net),
        100.0 * ratio,
        thousands(b.pushed),
        n,
        yes(ratio < 0.05)
    );
    let kib = c.kib_per_client();
    let _ = writeln!(
        md,
        "| RSS < 100 KiB per connected client | {kib:.1} KiB | {} |",
        yes(kib < 100.0)
    );
}
