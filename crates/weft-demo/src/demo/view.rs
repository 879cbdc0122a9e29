//! The live view: per-service rates, success and latency; what callers got
//! from each addressed service and what its TrafficPolicy did for them
//! (retries, backups; requests refused by flow control or cut by a
//! deadline, next to the flow policies in force); and how each addressed
//! service's traffic spreads
//! over its endpoints, with the weight callers give each one and what its
//! app is set to do. Computed from counter deltas (and gauges) and
//! rendered as plain text by a pure function (`render`).

mod render;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use weft_model::Config;

use super::faults::AppFaults;
use super::scrape::{Buckets, MeshCounters};
use super::traffic::TrafficCounters;

pub(crate) use render::render;

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

/// What the callers of one addressed service got over a window, as their
/// sidecars answered them (outbound: after retries and backups), and what
/// the service's TrafficPolicy did for them.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSummary {
    /// The name callers use (`catalog`, `pricing`).
    pub service: String,
    pub requests: u64,
    /// Answers that reached the caller as failures: a 5xx, or a failure of
    /// the policy's failureCodes (a business error) its retries gave up on.
    pub failed: u64,
    pub rps: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub retries: u64,
    pub hedges_sent: u64,
    /// Backups that answered first.
    pub hedges_won: u64,
    /// Backups the budget (or the breaker, ...) did not allow.
    pub hedges_suppressed: u64,
    /// How long callers wait before a backup now (the longest of theirs).
    pub hedge_delay: Option<Duration>,
    /// Refused by the route's drop ratio (503 `dropped`).
    pub dropped: u64,
    /// Refused by the route's local rate limit (429 `rate-limited`).
    pub rate_limited: u64,
    /// Refused because the caller is denied (403 `denied`).
    pub denied: u64,
    /// Answered 504 `deadline-exceeded` by the caller's sidecar without
    /// being sent: too little of the caller's deadline was left.
    pub cut: u64,
    /// The pods whose sidecars cut them (their names, or `IP:PORT`).
    pub cut_at: Vec<String>,
}

impl CallSummary {
    /// `1 - failed / requests`, `None` without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| 1.0 - self.failed as f64 / self.requests as f64)
    }

    /// Refused by flow control or cut by a deadline.
    pub fn refused(&self) -> u64 {
        self.dropped + self.rate_limited + self.denied + self.cut
    }

    /// `part / requests`, 0 without requests.
    pub fn share_of(&self, part: u64) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            part as f64 / self.requests as f64
        }
    }
}

/// A TrafficPolicy with flow-control sections (admission, rate limit,
/// deadline, fault) as the control plane serves it now.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowPolicy {
    /// The name callers address (`catalog`): the view's group it governs.
    pub service: String,
    /// The policy's name.
    pub name: String,
    /// Its flow sections, briefly: `dropRatio 0.2`, `rateLimit 30/s burst
    /// 5`, `deadline margin 60ms`.
    pub what: String,
}

/// The flow-control policies of `config`, under the group each governs
/// (a Service target: the group it is or is a backend of; a route target:
/// its parent Service's group).
pub(crate) fn flow_policies(config: &Config, groups: &[SplitGroup]) -> Vec<FlowPolicy> {
    let label = |namespace: &str, name: &str| format!("{name}.{namespace}");
    let group_of = |service: &str| {
        groups
            .iter()
            .find(|g| g.service == short(service) || g.backends.iter().any(|(b, _)| b == service))
            .map(|g| g.service.clone())
    };
    let mut out = Vec::new();
    for policy in &config.traffic_policies {
        let what = describe_flow(&policy.sections);
        if what.is_empty() {
            continue;
        }
        let mut services: Vec<String> = Vec::new();
        for target in &policy.target_refs {
            let parents: Vec<String> = match target.kind {
                weft_model::PolicyTargetKind::Service => {
                    vec![label(&policy.namespace, &target.name)]
                }
                _ => config
                    .http_routes
                    .iter()
                    .filter(|r| r.name == target.name && r.namespace == policy.namespace)
                    .flat_map(|r| &r.parent_refs)
                    .filter(|p| p.kind == weft_model::ParentKind::Service)
                    .map(|p| label(&p.namespace, &p.name))
                    .collect(),
            };
            for group in parents.iter().filter_map(|p| group_of(p)) {
                if !services.contains(&group) {
                    services.push(group);
                }
            }
        }
        out.extend(services.into_iter().map(|service| FlowPolicy {
            service,
            name: policy.name.clone(),
            what: what.clone(),
        }));
    }
    out.sort_by(|a, b| a.service.cmp(&b.service).then_with(|| a.name.cmp(&b.name)));
    out
}

/// A policy's flow sections in a few words; empty without any.
fn describe_flow(p: &weft_model::PolicySections) -> String {
    let mut parts = Vec::new();
    if let Some(a) = &p.admission {
        if a.drop_ratio > 0.0 {
            let from = if a.sources.is_empty() {
                String::new()
            } else {
                format!(" from {}", a.sources.join(","))
            };
            parts.push(format!("dropRatio {}{from}", a.drop_ratio));
        }
        if !a.denied_sources.is_empty() {
            parts.push(format!("denies {}", a.denied_sources.join(",")));
        }
        if a.dry_run {
            parts.push("dry run".to_owned());
        }
    }
    if let Some(r) = &p.rate_limit {
        if let Some(l) = &r.local {
            parts.push(format!(
                "rateLimit {}/s burst {} per caller",
                l.requests_per_second, l.burst
            ));
        }
        if let Some(g) = &r.global {
            parts.push(format!(
                "global limit {}/{}",
                g.requests_per_unit,
                g.unit.as_str()
            ));
        }
    }
    if let Some(d) = &p.deadline {
        parts.push(if d.propagate {
            format!("deadline margin {}ms", d.margin.as_millis())
        } else {
            "deadline not propagated".to_owned()
        });
    }
    if p.fault.is_some() {
        parts.push("fault injection".to_owned());
    }
    parts.join(", ")
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
    /// The demo pod behind it (`inventory-3`), if it is one.
    pub name: Option<String>,
    pub requests: u64,
    /// Of all requests to `service` over the window, 0..=1.
    pub share: f64,
    /// The backend's weight in the route, when a single rule splits it.
    pub weight: Option<u32>,
    /// Effective weight / configured weight as the callers hold it now
    /// (cut by failures, 0 while ejected); `None` before any caller has it.
    pub weight_ratio: Option<f64>,
    /// Ejected by outlier detection at some caller now.
    pub ejected: bool,
    /// As the endpoint's own sidecar answered (inbound), over the window.
    pub p50: Option<Duration>,
    /// What the endpoint's app is set to do, when it is a demo pod.
    pub app: Option<AppFaults>,
}

/// Something that happened during the run, for the view's event list.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoEvent {
    /// Since the traffic started.
    pub at: Duration,
    pub what: String,
}

/// A demo pod as the view names it: its endpoint, its name and its app's
/// faults now (`None` if the app did not answer).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PodInfo {
    pub(crate) endpoint: String,
    pub(crate) name: &'static str,
    pub(crate) faults: Option<AppFaults>,
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

/// What callers got from each addressed service over a window, in the
/// groups' order; services nobody called are left out.
pub(crate) fn call_rows(
    delta: &MeshCounters,
    window: Duration,
    groups: &[SplitGroup],
    pods: &[PodInfo],
) -> Vec<CallSummary> {
    groups
        .iter()
        .filter_map(|group| {
            let (_, c) = delta
                .callers
                .iter()
                .find(|(label, _)| short(label) == group.service)?;
            (c.requests > 0).then(|| CallSummary {
                service: group.service.clone(),
                requests: c.requests,
                // A given-up failure that is a 5xx is in both counts, a
                // business error (a 200) only in `given_up`, the proxy's
                // own 503s (no endpoint) only in `server_errors`: the
                // larger is the closest to their union without counting
                // the common case twice. Drops and deadline cuts are
                // 5xx; a rate limit (429) or a denial (403) is not.
                failed: (c.server_errors.max(c.given_up) + c.rate_limited + c.denied)
                    .min(c.requests),
                rps: per_second(c.requests, window),
                p50: quantile(&c.latency, 0.5),
                p99: quantile(&c.latency, 0.99),
                retries: c.retries,
                hedges_sent: c.hedges_sent,
                hedges_won: c.hedges_won,
                hedges_suppressed: c.hedges_suppressed,
                hedge_delay: c.hedge_delay.map(|s| Duration::from_secs_f64(s.max(0.0))),
                dropped: c.dropped,
                rate_limited: c.rate_limited,
                denied: c.denied,
                cut: c.cut(),
                cut_at: c
                    .cut_at
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(at, _)| {
                        pods.iter()
                            .find(|p| p.endpoint == *at)
                            .map_or_else(|| at.clone(), |p| p.name.to_owned())
                    })
                    .collect(),
            })
        })
        .collect()
}

/// Endpoint shares over a window, group by group, with how callers weigh
/// each endpoint now and what the demo pod behind it does; groups without
/// traffic are left out.
pub(crate) fn endpoint_rows(
    delta: &MeshCounters,
    groups: &[SplitGroup],
    pods: &[PodInfo],
) -> Vec<EndpointShare> {
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
        rows.extend(members.into_iter().map(|(backend, weight, endpoint, n)| {
            let pod = pods.iter().find(|p| p.endpoint == *endpoint);
            let health = delta.health.get(&(backend.clone(), endpoint.clone()));
            EndpointShare {
                service: group.service.clone(),
                backend: short(backend).to_owned(),
                endpoint: endpoint.clone(),
                name: pod.map(|p| p.name.to_owned()),
                requests: n,
                share: n as f64 / total as f64,
                weight,
                weight_ratio: health.and_then(|h| h.weight_ratio()),
                ejected: health.is_some_and(|h| h.ejected_by > 0),
                p50: delta
                    .pods
                    .get(endpoint)
                    .and_then(|p| quantile(&p.latency, 0.5)),
                app: pod.and_then(|p| p.faults.clone()),
            }
        }));
    }
    rows
}

/// The endpoint health events (ejections, re-admissions, panic mode) in a
/// delta, in words.
pub(crate) fn health_events(delta: &MeshCounters, pods: &[PodInfo]) -> Vec<String> {
    delta
        .health_events
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|((service, endpoint, event), n)| {
            let name = pods
                .iter()
                .find(|p| p.endpoint == *endpoint)
                .map_or(endpoint.as_str(), |p| p.name);
            let what = match event.as_str() {
                "ejected" => "ejected by outlier detection",
                "readmitted" => "readmitted after its ejection",
                "panic_entered" => "has too few healthy endpoints: panic mode, all get traffic",
                "panic_left" => "has enough healthy endpoints again: panic mode over",
                other => other,
            };
            let times = if *n > 1 {
                format!(" ({n} times)")
            } else {
                String::new()
            };
            if endpoint.is_empty() {
                format!("{} {what}{times}", short(service))
            } else {
                format!("{} endpoint {name} {what}{times}", short(service))
            }
        })
        .collect()
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

/// Everything one block of the view shows.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct View {
    /// The run's end rather than a refresh: numbers cover the whole run.
    pub(crate) last: bool,
    pub(crate) elapsed: Duration,
    /// What the numbers cover (the last few seconds, or the whole run).
    pub(crate) window: Duration,
    pub(crate) rate: u32,
    pub(crate) config_file: PathBuf,
    pub(crate) generations: Option<(u64, u64)>,
    /// Why the newest config on disk was rejected, if it was.
    pub(crate) config_error: Option<String>,
    pub(crate) ingress: IngressRow,
    /// What the deadline chain's driver sent (with its deadline).
    pub(crate) chain: IngressRow,
    pub(crate) services: Vec<ServiceSummary>,
    pub(crate) calls: Vec<CallSummary>,
    pub(crate) endpoints: Vec<EndpointShare>,
    /// The flow-control policies the control plane serves now.
    pub(crate) flow: Vec<FlowPolicy>,
    /// The latest events, oldest first.
    pub(crate) events: Vec<DemoEvent>,
    /// The script's next step, announced.
    pub(crate) next: Option<DemoEvent>,
    /// The control plane's traffic view at this refresh.
    pub(crate) traffic: Option<super::golden::TrafficFrame>,
}
