//! The proxy's runtime config: an immutable [`Snapshot`] built from xDS
//! resources, published atomically and read lock-free by every request. A
//! request keeps the snapshot it started with, so a config change never
//! changes config under an in-flight request.
//!
//! There is one way to make a snapshot: [`SnapshotBuilder`] from a set of
//! xDS resources in the form `weft_xds::translate` produces for weft (and
//! Envoy) sidecars. Both config sources feed it: a control plane over ADS,
//! and `--config DIR`, which runs the same translation in-process
//! ([`standalone`]). So a directory and a control plane serving that
//! directory give the same routing.

mod build;
mod cluster;
mod listener;
mod routes;
pub mod standalone;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use weft_model::Config;
use weft_policy::health::{Classifier, ClusterHealth, HealthEvent, Verdict};
use weft_policy::latency::{Balancer, Pending};
use weft_policy::rng::ThreadRng;
use weft_xds::ResourceSet;

use crate::clock;
use crate::governed::RoutePolicy;
use crate::metrics::{EndpointGauges, EndpointLabels, HealthEventLabels, HealthMetrics};
use crate::route::RouteTable;
use crate::state::App;
use crate::upstream::EndpointClient;

pub use build::{BuildError, SnapshotBuilder};

/// A Service port as a destination (an xDS cluster): its endpoints, how to
/// pick one (weft-policy's balancer) and their health (re-weighting and
/// ejection from the cluster's failure codes).
pub struct Cluster {
    /// `name.namespace` (metric label, error messages).
    pub label: Arc<str>,
    /// Endpoints speak HTTP/2 (h2c) rather than HTTP/1.1.
    pub http2: bool,
    pub endpoints: Vec<Arc<EndpointClient>>,
    /// `weft_endpoint_requests_total` of each endpoint, same order.
    endpoint_requests: Vec<Counter>,
    /// `weft_endpoint_failures_total` of each endpoint, same order.
    endpoint_failures: Vec<Counter>,
    /// Each endpoint's gauges, same order.
    endpoint_gauges: Vec<EndpointGauges>,
    balancer: Balancer,
    /// Shared with the next snapshot while the endpoints and settings stay.
    pub health: Arc<ClusterHealth>,
    /// What counts as a failure of an endpoint.
    pub classifier: Classifier,
    metrics: HealthMetrics,
}

impl Cluster {
    /// The endpoint for the next request, `None` when there is none; counted
    /// as a request to that endpoint.
    pub fn pick(&self) -> Option<&Arc<EndpointClient>> {
        self.pick_index(&[], clock::now())
            .map(|i| &self.endpoints[i])
    }

    /// The index of the endpoint for the next attempt, avoiding `tried`
    /// (the endpoints this request already went to) while another endpoint
    /// can take traffic; counted as a request to it.
    pub fn pick_index(&self, tried: &[usize], now: Duration) -> Option<usize> {
        let mut rng = ThreadRng;
        let mut found = None;
        for _ in 0..4 {
            let i = self.balancer.pick(now, &mut rng)?;
            if !tried.contains(&i) {
                found = Some(i);
                break;
            }
        }
        let i = match found {
            Some(i) => i,
            None if tried.is_empty() => return None,
            // The balancer keeps choosing tried ones: any other endpoint
            // that takes traffic, else none.
            None => (0..self.endpoints.len())
                .find(|i| !tried.contains(i) && self.balancer.endpoints()[*i].weight() > 0)?,
        };
        self.endpoint_requests[i].inc();
        Some(i)
    }

    /// Counts an attempt in flight to endpoint `i` until the guard ends.
    pub fn start(&self, i: usize, now: Duration) -> Option<Pending> {
        self.balancer.start(i, now)
    }

    /// Records how an attempt to endpoint `i` went: its health score, the
    /// weight multiplier the balancer uses, and an ejection if it trips.
    pub fn record(&self, i: usize, now: Duration, verdict: &Verdict) {
        if matches!(verdict, Verdict::Ignored) || i >= self.health.len() {
            return;
        }
        if verdict.is_failure() {
            self.endpoint_failures[i].inc();
        }
        let r = self.health.record(i, now, verdict);
        self.balancer.endpoints()[i].set_health_multiplier(r.effective_multiplier);
        if let Some(event) = r.event {
            self.report(&event);
        }
    }

    /// The periodic health step (see [`ClusterHealth::evaluate`]): events
    /// logged and counted, multipliers pushed to the balancer, gauges set.
    pub fn tick(&self, now: Duration) {
        for event in self.health.evaluate(now) {
            self.report(&event);
        }
        let cfg = self.balancer.config();
        for ((i, load), g) in self
            .balancer
            .endpoints()
            .iter()
            .enumerate()
            .zip(&self.endpoint_gauges)
        {
            let m = self.health.effective_multiplier(i, now);
            load.set_health_multiplier(m);
            let share = load.effective_weight(now, cfg) / f64::from(load.weight().max(1));
            g.weight.set(share);
            g.ejected.set(i64::from(self.health.is_ejected(i)));
            g.latency.set(load.latency(now, cfg).as_secs_f64());
            g.in_flight.set(i64::from(load.in_flight()));
        }
    }

    /// The metric labels of every endpoint.
    pub fn endpoint_labels(&self) -> impl Iterator<Item = EndpointLabels> + '_ {
        self.endpoints.iter().map(|e| EndpointLabels {
            service: self.label.clone(),
            endpoint: e.label.clone(),
        })
    }

    fn report(&self, event: &HealthEvent) {
        let endpoint = match event {
            HealthEvent::Ejected { endpoint, .. } | HealthEvent::Readmitted { endpoint } => {
                self.endpoints.get(*endpoint).map(|e| e.label.clone())
            }
            _ => None,
        };
        let shown = endpoint.as_deref().unwrap_or("-");
        match event {
            HealthEvent::Ejected { .. } | HealthEvent::PanicEntered { .. } => {
                tracing::warn!(service = %self.label, endpoint = shown, "{event}");
            }
            _ => tracing::info!(service = %self.label, endpoint = shown, "{event}"),
        }
        self.metrics
            .events
            .get_or_create(&HealthEventLabels {
                service: self.label.clone(),
                endpoint: endpoint.unwrap_or_else(|| "".into()),
                event: event.kind(),
            })
            .inc();
    }
}

/// What a virtual-IP listener forwards to.
#[derive(Clone)]
pub enum VipTarget {
    Http(Arc<RouteTable>),
    Tcp(Arc<Cluster>),
}

/// The route tables of one host name, by the port in the authority.
#[derive(Default)]
struct HostRoutes {
    /// For an authority without a port.
    portless: Option<Arc<RouteTable>>,
    ports: Vec<(u16, Arc<RouteTable>)>,
}

impl HostRoutes {
    fn table(&self, port: Option<u16>) -> Option<&Arc<RouteTable>> {
        match port {
            None => self.portless.as_ref(),
            Some(p) => self.ports.iter().find(|(q, _)| *q == p).map(|(_, t)| t),
        }
    }
}

/// Knobs that shape the snapshot but do not come from the config.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Connect timeout of every endpoint (`--connect-timeout`; a cluster's
    /// own `connect_timeout` is not used, so one endpoint has one pool).
    pub connect_timeout: Duration,
    /// The zone this proxy runs in (`--zone`): endpoints in it are local
    /// for a TrafficPolicy's `loadBalancer.locality`.
    pub zone: Option<String>,
    /// This sidecar's Service, `name.namespace`: the `source` of its
    /// outbound requests' metrics.
    pub local_service: Arc<str>,
    /// The leases of global rate limits (`rateLimit.global`), shared by
    /// every snapshot.
    pub global_limits: Arc<crate::global_limit::GlobalLimits>,
}

pub struct Snapshot {
    /// 0 before any config arrived, 1 for the first, +1 for every change.
    pub generation: u64,
    /// The model config the resources were translated from (`--config`
    /// mode only).
    pub source: Option<Arc<Config>>,
    /// The xDS resources this snapshot was built from (shared, not copied).
    pub resources: ResourceSet,
    /// Outbound: domain (lower case, no trailing dot, no port) -> tables.
    hosts: HashMap<String, HostRoutes>,
    /// Outbound: the table of domain `*`, for authorities nothing else takes.
    any_host: Option<Arc<RouteTable>>,
    /// Every `vip:port` listener the config asks for.
    pub vips: BTreeMap<SocketAddr, VipTarget>,
    /// The local app the inbound listener forwards to, when the config has
    /// an inbound listener (or `--app` names it).
    pub inbound: Option<App>,
    /// Every cluster, for the periodic health step.
    pub clusters: Vec<Arc<Cluster>>,
    /// Every rule policy with retries or hedging, for their metrics.
    pub policies: Vec<Arc<RoutePolicy>>,
}

impl Snapshot {
    /// No config yet (generation 0): every outbound request is refused.
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            source: None,
            resources: ResourceSet::default(),
            hosts: HashMap::new(),
            any_host: None,
            vips: BTreeMap::new(),
            inbound: None,
            clusters: Vec::new(),
            policies: Vec::new(),
        }
    }

    /// The metric handles of every outbound route rule, each once (a
    /// table serves several domains).
    pub fn route_stats(&self) -> Vec<&crate::metrics::RouteStats> {
        let all = self
            .hosts
            .values()
            .flat_map(|h| h.portless.iter().chain(h.ports.iter().map(|(_, t)| t)))
            .chain(self.any_host.iter())
            .chain(self.vips.values().filter_map(|v| match v {
                VipTarget::Http(t) => Some(t),
                VipTarget::Tcp(_) => None,
            }));
        let mut seen = std::collections::HashSet::new();
        all.filter(|t| seen.insert(Arc::as_ptr(t)))
            .flat_map(|t| t.rules.iter().map(|r| &r.stats))
            .collect()
    }

    /// Resolves a `Host` / `:authority` value (`host[:port]`) by the
    /// outbound route configuration's domains: the host case-insensitively
    /// and without a trailing dot, with the port as given (an authority
    /// without port matches only port-less domains).
    pub fn lookup_host(&self, authority: &str) -> Option<&Arc<RouteTable>> {
        let (host, port) = split_host_port(authority);
        let routes = if host.bytes().any(|c| c.is_ascii_uppercase()) {
            self.hosts.get(&host.to_ascii_lowercase())
        } else {
            self.hosts.get(host)
        };
        routes
            .and_then(|r| r.table(port))
            .or(self.any_host.as_ref())
    }
}

/// `name:8080` -> (`name`, Some(8080)); a trailing dot is dropped.
fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => match p.parse() {
            Ok(p) => (h, Some(p)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    };
    (host.trim_end_matches('.'), port)
}
