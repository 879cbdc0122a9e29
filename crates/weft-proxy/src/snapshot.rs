//! The proxy's runtime config: an immutable [`Snapshot`] translated from a
//! validated [`weft_model::Config`], published atomically and read lock-free
//! by every request. A request keeps the snapshot it started with, so a reload
//! never changes config under an in-flight request.
//!
//! The snapshot does not know where the config came from (a directory today,
//! xDS next): [`Snapshot::build`] takes a model config, nothing else.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use weft_model::{Config, ObjectKey, Protocol, Service};
use weft_policy::balance::{Balance, WeightedRoundRobin};

use prometheus_client::metrics::counter::Counter;

use crate::metrics::{Direction, ProxyMetrics};
use crate::route::{Matcher, RouteTable, Rule};
use crate::upstream::{EndpointClient, EndpointRegistry};

/// A Service port as a destination: its endpoints and how to pick one.
pub struct Cluster {
    /// `name.namespace` (metric label, error messages).
    pub label: Arc<str>,
    pub protocol: Protocol,
    pub endpoints: Vec<Arc<EndpointClient>>,
    /// `weft_endpoint_requests_total` of each endpoint, same order.
    endpoint_requests: Vec<Counter>,
    balancer: WeightedRoundRobin,
}

impl Cluster {
    /// The endpoint for the next request, `None` when there is none; counted
    /// as a request to that endpoint.
    pub fn pick(&self) -> Option<&Arc<EndpointClient>> {
        let i = self.balancer.pick()?;
        self.endpoint_requests[i].inc();
        Some(&self.endpoints[i])
    }
}

/// What a virtual-IP listener forwards to.
#[derive(Clone)]
pub enum VipTarget {
    Http(Arc<RouteTable>),
    Tcp(Arc<Cluster>),
}

/// A Service reachable by Host name, with one route table per HTTP port.
pub struct VirtualHost {
    /// (port, table), in Service port order; the first is the default port.
    pub ports: Vec<(u16, Arc<RouteTable>)>,
}

impl VirtualHost {
    /// The table for `port`, or for the first HTTP port when no port is given.
    pub fn table(&self, port: Option<u16>) -> Option<&Arc<RouteTable>> {
        match port {
            None => self.ports.first().map(|(_, t)| t),
            Some(p) => self.ports.iter().find(|(q, _)| *q == p).map(|(_, t)| t),
        }
    }
}

/// Knobs that shape the snapshot but do not come from the config documents.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub connect_timeout: Duration,
    /// Namespace of the local service: bare names (`catalog`) resolve here.
    pub local_namespace: String,
}

pub struct Snapshot {
    /// 1 for the first config, +1 for every accepted change.
    pub generation: u64,
    pub source: Arc<Config>,
    /// host name (no port, lower case) -> virtual host.
    hosts: HashMap<String, Arc<VirtualHost>>,
    /// Every `vip:port` listener the config asks for.
    pub vips: BTreeMap<SocketAddr, VipTarget>,
}

impl Snapshot {
    /// Translates a validated config; endpoint clients come from (and are
    /// shared through) `registry`.
    pub fn build(
        config: Arc<Config>,
        generation: u64,
        opts: &BuildOptions,
        registry: &EndpointRegistry,
        metrics: &ProxyMetrics,
    ) -> Snapshot {
        let mut b = Builder {
            config: &config,
            opts,
            registry,
            metrics,
            clusters: HashMap::new(),
        };
        let mut hosts = HashMap::new();
        let mut vips = BTreeMap::new();
        for svc in &config.services {
            let mut ports = Vec::new();
            for port in &svc.ports {
                let addr = svc.vip.map(|ip| SocketAddr::new(ip, port.port));
                if port.protocol.is_http() {
                    let table = Arc::new(b.route_table(svc, port.port));
                    if let Some(addr) = addr {
                        vips.insert(addr, VipTarget::Http(table.clone()));
                    }
                    ports.push((port.port, table));
                } else if let Some(addr) = addr {
                    vips.insert(addr, VipTarget::Tcp(b.cluster(svc, port.port)));
                }
            }
            if ports.is_empty() {
                continue;
            }
            let vh = Arc::new(VirtualHost { ports });
            let (n, ns) = (&svc.name, &svc.namespace);
            for host in [
                format!("{n}.{ns}"),
                format!("{n}.{ns}.svc"),
                format!("{n}.{ns}.svc.cluster.local"),
            ] {
                hosts.insert(host, vh.clone());
            }
            if *ns == opts.local_namespace {
                hosts.insert(n.clone(), vh.clone());
            }
        }
        Snapshot {
            generation,
            source: config.clone(),
            hosts,
            vips,
        }
    }

    /// Resolves a `Host` / `:authority` value (`name[.ns[.svc.cluster.local]][:port]`).
    pub fn lookup_host(&self, authority: &str) -> Option<&Arc<RouteTable>> {
        let (host, port) = split_host_port(authority);
        let vh = if host.bytes().any(|c| c.is_ascii_uppercase()) {
            self.hosts.get(&host.to_ascii_lowercase())?
        } else {
            self.hosts.get(host)?
        };
        vh.table(port)
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

struct Builder<'a> {
    config: &'a Config,
    opts: &'a BuildOptions,
    registry: &'a EndpointRegistry,
    metrics: &'a ProxyMetrics,
    clusters: HashMap<(ObjectKey, u16), Arc<Cluster>>,
}

impl Builder<'_> {
    fn cluster(&mut self, svc: &Service, port: u16) -> Arc<Cluster> {
        let key = (ObjectKey::new(&svc.namespace, &svc.name), port);
        if let Some(c) = self.clusters.get(&key) {
            return c.clone();
        }
        let protocol = svc.port(port).map_or(Protocol::Http, |p| p.protocol);
        let endpoints: Vec<_> = svc
            .endpoints
            .iter()
            .map(|e| {
                self.registry
                    .get(e.address, protocol.is_http2(), self.opts.connect_timeout)
            })
            .collect();
        let weights: Vec<u32> = svc.endpoints.iter().map(|e| e.weight).collect();
        // Start each cluster at a different point of its cycle so that many
        // sidecars with the same config spread their first requests.
        let offset = std::process::id() as usize;
        let label: Arc<str> = format!("{}.{}", svc.name, svc.namespace).into();
        let endpoint_requests = endpoints
            .iter()
            .map(|e| {
                self.metrics
                    .endpoint_counter(label.clone(), e.label.clone())
            })
            .collect();
        let c = Arc::new(Cluster {
            label,
            protocol,
            endpoints,
            endpoint_requests,
            balancer: WeightedRoundRobin::starting_at(&weights, offset),
        });
        self.clusters.insert(key, c.clone());
        c
    }

    /// The rules of every HTTPRoute attached to this Service port, or one
    /// default rule sending everything to the Service itself.
    fn route_table(&mut self, svc: &Service, port: u16) -> RouteTable {
        let service: Arc<str> = format!("{}.{}", svc.name, svc.namespace).into();
        let mut rules: Vec<(_, Rule)> = Vec::new();
        for route in self.config.routes_for_service(svc) {
            let attached = route.parent_refs.iter().any(|p| {
                p.namespace == svc.namespace
                    && p.name == svc.name
                    && p.port.is_none_or(|pp| pp == port)
            });
            if !attached {
                continue;
            }
            for (i, rule) in route.rules.iter().enumerate() {
                let label: Arc<str> = format!("{}/{i}", route.name).into();
                let mut backends = Vec::new();
                let mut weights = Vec::new();
                for b in &rule.backend_refs {
                    let Some(target) = self.config.service(&b.namespace, &b.name) else {
                        continue; // validation guarantees this exists
                    };
                    let Some(bport) = b.port.or_else(|| target.first_http_port().map(|p| p.port))
                    else {
                        continue;
                    };
                    backends.push(self.cluster(target, bport));
                    weights.push(b.weight);
                }
                for m in &rule.matches {
                    let matcher = Matcher::compile(m);
                    let order = (
                        matcher.precedence(),
                        route.namespace.clone(),
                        route.name.clone(),
                        i,
                    );
                    rules.push((
                        order,
                        Rule {
                            label: label.clone(),
                            matcher,
                            backends: backends.clone(),
                            split: WeightedRoundRobin::new(&weights),
                            timeout: rule.timeouts.request,
                            stats: self.metrics.route_stats(
                                Direction::Outbound,
                                service.clone(),
                                label.clone(),
                            ),
                        },
                    ));
                }
            }
        }
        rules.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rules: Vec<Rule> = rules.into_iter().map(|(_, r)| r).collect();
        if rules.is_empty() {
            let all = weft_model::HttpRouteMatch {
                path: weft_model::PathMatch {
                    kind: weft_model::PathMatchType::PathPrefix,
                    value: "/".into(),
                },
                headers: vec![],
                method: None,
            };
            let label: Arc<str> = "default".into();
            rules.push(Rule {
                stats: self.metrics.route_stats(
                    Direction::Outbound,
                    service.clone(),
                    label.clone(),
                ),
                label,
                matcher: Matcher::compile(&all),
                backends: vec![self.cluster(svc, port)],
                split: WeightedRoundRobin::new(&[1]),
                timeout: None,
            });
        }
        RouteTable { service, rules }
    }
}

#[cfg(test)]
mod tests;
