//! The live view: per-service rates, success and latency, and how each
//! addressed service's traffic spreads over its endpoints, computed from
//! counter deltas and rendered as plain text by a pure function.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use weft_model::Config;

use super::scrape::{Buckets, MeshCounters};
use super::traffic::TrafficCounters;

/// One service's numbers over a window, as its sidecars saw them (inbound).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSummary {
    /// The Service name (`frontend`, `catalog-v1`, ...).
    pub service: String,
    pub requests: u64,
    /// Answers other than 5xx.
    pub ok: u64,
    /// Requests per second over the window.
    pub rps: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl ServiceSummary {
    /// `ok / requests`, `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.ok as f64 / self.requests as f64)
    }
}

/// One endpoint's part of the traffic sent to a service callers address.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointShare {
    /// The name callers use (`catalog`).
    pub service: String,
    /// The Service the endpoint belongs to (`catalog-v2`): the service
    /// itself, or a backend its route splits traffic to.
    pub backend: String,
    /// `IP:PORT`.
    pub endpoint: String,
    pub requests: u64,
    /// Of all requests to `service` over the window, 0..=1.
    pub share: f64,
    /// The backend's weight in the route, when a single rule splits it.
    pub weight: Option<u32>,
}

/// A name callers address and the backend Services its traffic goes to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SplitGroup {
    pub(crate) service: String,
    /// (backend label `name.namespace`, route weight).
    pub(crate) backends: Vec<(String, Option<u32>)>,
}

/// Groups every Service's endpoints under the name callers use: a Service
/// with routes groups its routes' backends; a Service that is some route's
/// backend is shown only under that route's parent.
pub(crate) fn split_groups(config: &Config) -> Vec<SplitGroup> {
    let label = |namespace: &str, name: &str| format!("{name}.{namespace}");
    let mut groups = Vec::new();
    let mut unrouted = Vec::new();
    let mut route_backends = Vec::new();
    for service in &config.services {
        let own = label(&service.namespace, &service.name);
        let rules: Vec<_> = config
            .routes_for_service(service)
            .flat_map(|r| &r.rules)
            .collect();
        if rules.is_empty() {
            unrouted.push(own);
            continue;
        }
        let mut backends: Vec<(String, Option<u32>)> = Vec::new();
        for b in rules.iter().flat_map(|r| &r.backend_refs) {
            let backend = label(&b.namespace, &b.name);
            route_backends.push(backend.clone());
            if !backends.iter().any(|(l, _)| *l == backend) {
                // A weight means something only when one rule splits.
                backends.push((backend, (rules.len() == 1).then_some(b.weight)));
            }
        }
        groups.push(SplitGroup {
            service: short(&own).to_owned(),
            backends,
        });
    }
    for own in unrouted {
        if !route_backends.contains(&own) {
            groups.push(SplitGroup {
                service: short(&own).to_owned(),
                backends: vec![(own, None)],
            });
        }
    }
    groups.sort_by(|a, b| a.service.cmp(&b.service));
    groups
}

/// `catalog.default` -> `catalog`; other namespaces stay visible.
fn short(label: &str) -> &str {
    label.strip_suffix(".default").unwrap_or(label)
}

fn quantile(buckets: &Buckets, q: f64) -> Option<Duration> {
    buckets
        .quantile(q)
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

fn per_second(count: u64, window: Duration) -> f64 {
    if window.is_zero() {
        0.0
    } else {
        count as f64 / window.as_secs_f64()
    }
}

/// Per-service rows over a window, in `order` (service names) first.
pub(crate) fn service_rows(
    delta: &MeshCounters,
    window: Duration,
    order: &[&str],
) -> Vec<ServiceSummary> {
    let mut rows: Vec<ServiceSummary> = delta
        .services
        .iter()
        .map(|(label, c)| ServiceSummary {
            service: short(label).to_owned(),
            requests: c.requests,
            ok: c.ok,
            rps: per_second(c.requests, window),
            p50: quantile(&c.latency, 0.5),
            p99: quantile(&c.latency, 0.99),
        })
        .collect();
    let rank = |s: &ServiceSummary| {
        order
            .iter()
            .position(|o| *o == s.service)
            .unwrap_or(order.len())
    };
    rows.sort_by(|a, b| {
        rank(a)
            .cmp(&rank(b))
            .then_with(|| a.service.cmp(&b.service))
    });
    rows
}

/// Endpoint shares over a window, group by group; groups without traffic
/// are left out.
pub(crate) fn endpoint_rows(delta: &MeshCounters, groups: &[SplitGroup]) -> Vec<EndpointShare> {
    let mut rows = Vec::new();
    for group in groups {
        let members: Vec<_> = group
            .backends
            .iter()
            .flat_map(|(backend, weight)| {
                delta
                    .endpoints
                    .iter()
                    .filter(move |((b, _), _)| b == backend)
                    .map(move |((_, endpoint), n)| (backend, *weight, endpoint, *n))
            })
            .collect();
        let total: u64 = members.iter().map(|m| m.3).sum();
        if total == 0 {
            continue;
        }
        rows.extend(
            members
                .into_iter()
                .map(|(backend, weight, endpoint, n)| EndpointShare {
                    service: group.service.clone(),
                    backend: short(backend).to_owned(),
                    endpoint: endpoint.clone(),
                    requests: n,
                    share: n as f64 / total as f64,
                    weight,
                }),
        );
    }
    rows
}

/// What the driver sent into the mesh over a window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IngressRow {
    pub(crate) sent: u64,
    /// Finished in the window (some may have been sent in an earlier one).
    pub(crate) done: u64,
    /// Of `done`, answered with a 2xx or 3xx.
    pub(crate) ok: u64,
    pub(crate) late: u64,
    pub(crate) rps: f64,
    pub(crate) p50: Option<Duration>,
    pub(crate) p99: Option<Duration>,
}

impl IngressRow {
    pub(crate) fn new(delta: &TrafficCounters, window: Duration) -> Self {
        IngressRow {
            sent: delta.sent,
            done: delta.done,
            ok: delta.ok,
            late: delta.late,
            rps: per_second(delta.sent, window),
            p50: quantile(&delta.latency, 0.5),
            p99: quantile(&delta.latency, 0.99),
        }
    }
}

/// Lines of a rejected config's errors shown; the rest is counted.
const MAX_ERROR_LINES: usize = 6;

/// Everything one block of the view shows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct View {
    /// The run's end rather than a refresh: numbers cover the whole run.
    pub(crate) last: bool,
    pub(crate) elapsed: Duration,
    /// What the numbers cover (the refresh interval, or the whole run).
    pub(crate) window: Duration,
    pub(crate) rate: u32,
    pub(crate) config_file: PathBuf,
    pub(crate) generations: Option<(u64, u64)>,
    /// Why the newest config on disk was rejected, if it was.
    pub(crate) config_error: Option<String>,
    pub(crate) ingress: IngressRow,
    pub(crate) services: Vec<ServiceSummary>,
    pub(crate) endpoints: Vec<EndpointShare>,
}

/// The block of text for one refresh (no terminal control codes).
pub(crate) fn render(v: &View) -> String {
    let mut out = String::new();
    render_header(&mut out, v);
    render_services(&mut out, v);
    render_endpoints(&mut out, v);
    out.push_str(
        "success = answers other than 5xx; latency as each service's sidecar saw it (inbound)\n",
    );
    // Padding of empty last columns would only be trailing blanks.
    out.lines()
        .fold(String::with_capacity(out.len()), |mut block, line| {
            block.push_str(line.trim_end());
            block.push('\n');
            block
        })
}

fn render_header(out: &mut String, v: &View) {
    let what = if v.last {
        format!("final summary after {}", clock(v.elapsed))
    } else {
        format!(
            "{} elapsed, last {:.1}s",
            clock(v.elapsed),
            v.window.as_secs_f64()
        )
    };
    let _ = writeln!(
        out,
        "weft demo: {what}; {} req/s offered to frontend",
        v.rate
    );
    let generation = match v.generations {
        Some((lo, hi)) if lo == hi => format!("generation {hi}"),
        Some((lo, hi)) => format!("generations {lo}..{hi}, sidecars reloading"),
        None => "generation unknown".to_owned(),
    };
    let _ = writeln!(out, "config: {} ({generation})", v.config_file.display());
    if let Some(error) = &v.config_error {
        let _ = writeln!(
            out,
            "  newest change REJECTED, the last good config keeps serving:"
        );
        let lines: Vec<&str> = error
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        for line in lines.iter().take(MAX_ERROR_LINES) {
            let _ = writeln!(out, "    {line}");
        }
        if lines.len() > MAX_ERROR_LINES {
            let _ = writeln!(out, "    ({} more lines)", lines.len() - MAX_ERROR_LINES);
        }
    }
    if !v.last {
        let _ = writeln!(
            out,
            "  edit {} (e.g. the 90/10 weights) and watch traffic move",
            v.config_file.display()
        );
    }
    let i = &v.ingress;
    let _ = writeln!(
        out,
        "\ningress -> frontend  {:.1} req/s  ok {}  p50 {}  p99 {}  late {}",
        i.rps,
        percent((i.done > 0).then(|| i.ok as f64 / i.done as f64)),
        latency(i.p50),
        latency(i.p99),
        i.late
    );
}

fn render_services(out: &mut String, v: &View) {
    let _ = writeln!(
        out,
        "\n{:<14}{:>9}{:>10}{:>9}{:>9}",
        "SERVICE", "RPS", "SUCCESS", "P50", "P99"
    );
    for s in &v.services {
        let _ = writeln!(
            out,
            "{:<14}{:>9.1}{:>10}{:>9}{:>9}",
            s.service,
            s.rps,
            percent(s.success_rate()),
            latency(s.p50),
            latency(s.p99)
        );
    }
}

fn render_endpoints(out: &mut String, v: &View) {
    let _ = writeln!(
        out,
        "\n{:<14}{:<14}{:<22}{:>7}{:>8}{:>8}",
        "TRAFFIC TO", "BACKEND", "ENDPOINT", "SHARE", "RPS", "WEIGHT"
    );
    let mut previous = None;
    for e in &v.endpoints {
        // The addressed service once per group, as a heading.
        let service = if previous == Some(&e.service) {
            ""
        } else {
            &e.service
        };
        previous = Some(&e.service);
        let weight = e.weight.map(|w| w.to_string()).unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<14}{:<14}{:<22}{:>6.1}%{:>8.1}{:>8}",
            service,
            e.backend,
            e.endpoint,
            e.share * 100.0,
            per_second(e.requests, v.window),
            weight
        );
    }
    out.push('\n');
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.2}%", r * 100.0))
}

fn latency(d: Option<Duration>) -> String {
    let Some(d) = d else { return "-".to_owned() };
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 100.0 {
        format!("{ms:.1}ms")
    } else if ms < 1000.0 {
        format!("{ms:.0}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests;
