//! xDS resources -> [`Snapshot`]: each resource is parsed once per version
//! into a plan (checked: anything weft cannot honour is an error naming the
//! resource), then the plans are assembled into route tables, clusters and
//! listeners. Assembly cannot fail: a reference to a resource that is not
//! in the set (a cluster that has not arrived) becomes a cluster without
//! endpoints, whose requests get 503 `no-endpoints`.

use std::collections::HashMap;
use std::sync::Arc;

use std::net::SocketAddr;

use prost::Message;
use weft_policy::balance::WeightedRoundRobin;
use weft_policy::health::{Classifier, ClusterHealth, FailureCodes};
use weft_policy::latency::{Balancer, EndpointLoad, LatencyConfig};
use weft_xds::envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use weft_xds::envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use weft_xds::envoy_types::pb::envoy::config::listener::v3::Listener;
use weft_xds::envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use weft_xds::{Resource, ResourceSet, TypeUrl};

use super::cluster::{
    ClusterPlan, EndpointSource, EndpointsPlan, parse_cluster, parse_load_assignment,
};
use super::listener::{ListenerPlan, Role, RouteSource, Traffic, parse_listener};
use super::routes::{Domain, RoutesPlan, VhostPlan, parse_route_config, strip_port};
use super::{BuildOptions, Cluster, HostRoutes, Snapshot, VipTarget};
use crate::clock;
use crate::governed::RoutePolicy;
use crate::metrics::{Direction, PolicyLabels, ProxyMetrics};
use crate::policy::{ClusterSettings, RouteSettings};
use crate::route::{RouteTable, Rule};
use crate::state::App;
use crate::upstream::EndpointRegistry;

/// A resource weft cannot apply, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {name:?}: {problem}", kind_name(*.type_url))]
pub struct BuildError {
    pub type_url: TypeUrl,
    pub name: String,
    pub problem: String,
}

fn kind_name(t: TypeUrl) -> &'static str {
    match t {
        TypeUrl::Listener => "Listener",
        TypeUrl::RouteConfiguration => "RouteConfiguration",
        TypeUrl::Cluster => "Cluster",
        TypeUrl::ClusterLoadAssignment => "ClusterLoadAssignment",
    }
}

#[derive(Clone)]
enum Plan {
    Listener(ListenerPlan),
    Routes(RoutesPlan),
    Cluster(ClusterPlan),
    Endpoints(EndpointsPlan),
}

struct Parsed {
    resource: Arc<Resource>,
    plan: Plan,
}

/// Makes snapshots from xDS resource sets, remembering each resource's
/// parsed form so an update re-parses only what changed (an endpoint change
/// re-parses one assignment, not every route's regexes).
pub struct SnapshotBuilder {
    opts: BuildOptions,
    parsed: HashMap<(TypeUrl, String), Parsed>,
    /// What each cluster learned (latency, health), kept across snapshots.
    memory: HashMap<String, ClusterMemory>,
    /// Rule policies by (service, rule), kept while their JSON is unchanged
    /// (a learned hedge delay and the budget survive endpoint changes).
    route_policies: HashMap<(Arc<str>, Arc<str>), Arc<RoutePolicy>>,
}

/// A cluster's state that outlives one snapshot.
struct ClusterMemory {
    addrs: Vec<SocketAddr>,
    loads: Vec<Arc<EndpointLoad>>,
    health: Arc<ClusterHealth>,
    settings: ClusterSettings,
}

impl SnapshotBuilder {
    pub fn new(opts: BuildOptions) -> Self {
        Self {
            opts,
            parsed: HashMap::new(),
            memory: HashMap::new(),
            route_policies: HashMap::new(),
        }
    }

    pub fn options(&self) -> &BuildOptions {
        &self.opts
    }

    /// Whether weft can apply `resource` on its own (decodes, and uses only
    /// what weft implements). References to other resources are not checked.
    pub fn check(&mut self, resource: &Arc<Resource>) -> Result<(), BuildError> {
        self.parse(resource).map(|_| ())
    }

    /// The snapshot for `set`; an error names the first resource that
    /// cannot be applied.
    pub fn build(
        &mut self,
        set: &ResourceSet,
        generation: u64,
        registry: &EndpointRegistry,
        metrics: &ProxyMetrics,
    ) -> Result<Snapshot, BuildError> {
        for t in TypeUrl::ALL {
            for r in set.of(t) {
                self.parse(r)?;
            }
        }
        self.parsed
            .retain(|(t, name), p| set.get(*t, name).is_some_and(|r| same(r, &p.resource)));
        let mut assembly = Assembly {
            plans: &self.parsed,
            opts: &self.opts,
            registry,
            metrics,
            clusters: HashMap::new(),
            memory: &mut self.memory,
            old_policies: &self.route_policies,
            policies: HashMap::new(),
        };
        let mut snapshot = Snapshot::empty();
        snapshot.generation = generation;
        snapshot.resources = set.clone();
        for r in set.of(TypeUrl::Listener) {
            if let Some(Plan::Listener(l)) = assembly.plan(TypeUrl::Listener, &r.name) {
                assembly.listener(l, &mut snapshot);
            }
        }
        let Assembly {
            clusters, policies, ..
        } = assembly;
        self.memory.retain(|name, _| clusters.contains_key(name));
        snapshot.clusters = clusters.into_values().collect();
        snapshot.policies = policies
            .values()
            .filter(|p| p.is_active())
            .cloned()
            .collect();
        self.route_policies = policies;
        Ok(snapshot)
    }

    fn parse(&mut self, r: &Arc<Resource>) -> Result<&Plan, BuildError> {
        let key = (r.type_url, r.name.clone());
        let fresh = self.parsed.get(&key).is_none_or(|p| !same(&p.resource, r));
        if fresh {
            let plan = parse_resource(r).map_err(|problem| BuildError {
                type_url: r.type_url,
                name: r.name.clone(),
                problem,
            })?;
            self.parsed.insert(
                key.clone(),
                Parsed {
                    resource: r.clone(),
                    plan,
                },
            );
        }
        Ok(&self.parsed[&key].plan)
    }
}

fn same(a: &Arc<Resource>, b: &Arc<Resource>) -> bool {
    Arc::ptr_eq(a, b) || (a.version == b.version && a.body == b.body)
}

fn parse_resource(r: &Resource) -> Result<Plan, String> {
    if r.body.type_url != r.type_url.as_str() {
        return Err(format!(
            "carries a {} where a {} belongs",
            r.body.type_url,
            r.type_url.as_str()
        ));
    }
    let bytes = r.body.value.as_slice();
    let undecodable = |e: prost::DecodeError| format!("cannot decode: {e}");
    let named = |name: &str| {
        if name == r.name {
            Ok(())
        } else {
            Err(format!("the resource inside is named {name:?}"))
        }
    };
    match r.type_url {
        TypeUrl::Listener => {
            let l = Listener::decode(bytes).map_err(undecodable)?;
            named(&l.name)?;
            parse_listener(&l).map(Plan::Listener)
        }
        TypeUrl::RouteConfiguration => {
            let rc = RouteConfiguration::decode(bytes).map_err(undecodable)?;
            named(&rc.name)?;
            parse_route_config(&rc).map(Plan::Routes)
        }
        TypeUrl::Cluster => {
            let c = PbCluster::decode(bytes).map_err(undecodable)?;
            named(&c.name)?;
            parse_cluster(&c).map(Plan::Cluster)
        }
        TypeUrl::ClusterLoadAssignment => {
            let cla = ClusterLoadAssignment::decode(bytes).map_err(undecodable)?;
            named(&cla.cluster_name)?;
            parse_load_assignment(&cla).map(Plan::Endpoints)
        }
    }
}

/// One snapshot being put together from parsed plans.
struct Assembly<'a> {
    plans: &'a HashMap<(TypeUrl, String), Parsed>,
    opts: &'a BuildOptions,
    registry: &'a EndpointRegistry,
    metrics: &'a ProxyMetrics,
    /// One runtime cluster per name, shared by every route and listener.
    clusters: HashMap<String, Arc<Cluster>>,
    memory: &'a mut HashMap<String, ClusterMemory>,
    old_policies: &'a HashMap<(Arc<str>, Arc<str>), Arc<RoutePolicy>>,
    policies: HashMap<(Arc<str>, Arc<str>), Arc<RoutePolicy>>,
}

impl<'a> Assembly<'a> {
    fn plan(&self, t: TypeUrl, name: &str) -> Option<&'a Plan> {
        self.plans.get(&(t, name.to_string())).map(|p| &p.plan)
    }

    fn routes(&self, source: &'a RouteSource) -> Option<&'a RoutesPlan> {
        match source {
            RouteSource::Inline(plan) => Some(plan),
            RouteSource::Rds(name) => match self.plan(TypeUrl::RouteConfiguration, name) {
                Some(Plan::Routes(plan)) => Some(plan),
                _ => None,
            },
        }
    }

    fn listener(&mut self, l: &'a ListenerPlan, snapshot: &mut Snapshot) {
        match (l.role, &l.traffic) {
            (Role::Outbound, Traffic::Http(source)) => {
                for vh in self.routes(source).map_or(&[][..], |r| &r.vhosts) {
                    let table = self.table(vh);
                    for d in &vh.domains {
                        match d {
                            Domain::Any => snapshot.any_host = Some(table.clone()),
                            Domain::Host(host, port) => {
                                let entry: &mut HostRoutes =
                                    snapshot.hosts.entry(host.clone()).or_default();
                                match port {
                                    None => entry.portless = Some(table.clone()),
                                    Some(p) => entry.ports.push((*p, table.clone())),
                                }
                            }
                        }
                    }
                }
            }
            // Rejected when parsed.
            (Role::Outbound, Traffic::Tcp(_)) => {}
            (Role::Vip(addr), Traffic::Http(source)) => {
                // A VIP takes every host: its `*` virtual host, else the first.
                let vhosts = self.routes(source).map_or(&[][..], |r| &r.vhosts);
                let vh = vhosts
                    .iter()
                    .find(|v| v.domains.contains(&Domain::Any))
                    .or(vhosts.first());
                if let Some(vh) = vh {
                    let table = self.table(vh);
                    snapshot.vips.insert(addr, VipTarget::Http(table));
                }
            }
            (Role::Vip(addr), Traffic::Tcp(cluster)) => {
                let cluster = self.cluster(cluster);
                snapshot.vips.insert(addr, VipTarget::Tcp(cluster));
            }
            (Role::Inbound, traffic) => {
                snapshot.inbound = self.app(traffic).map(|addr| App {
                    addr,
                    h1: self.registry.get(addr, false, self.opts.connect_timeout),
                    h2: self.registry.get(addr, true, self.opts.connect_timeout),
                });
            }
        }
    }

    /// The local app: the first endpoint of the inbound listener's cluster.
    fn app(&self, traffic: &'a Traffic) -> Option<std::net::SocketAddr> {
        let cluster = match traffic {
            Traffic::Tcp(c) => c.as_str(),
            Traffic::Http(source) => self.routes(source)?.clusters().next()?,
        };
        let Some(Plan::Cluster(plan)) = self.plan(TypeUrl::Cluster, cluster) else {
            return None;
        };
        self.endpoints(plan)
            .endpoints
            .first()
            .map(|(addr, _)| *addr)
    }

    fn endpoints(&self, plan: &'a ClusterPlan) -> &'a EndpointsPlan {
        static NONE: EndpointsPlan = EndpointsPlan {
            endpoints: Vec::new(),
            zones: Vec::new(),
        };
        match &plan.endpoints {
            EndpointSource::Static(e) => e,
            EndpointSource::Eds(name) => match self.plan(TypeUrl::ClusterLoadAssignment, name) {
                Some(Plan::Endpoints(e)) => e,
                _ => &NONE,
            },
        }
    }

    fn table(&mut self, vh: &VhostPlan) -> Arc<RouteTable> {
        let rules = vh
            .rules
            .iter()
            .map(|r| {
                let backends: Vec<Arc<Cluster>> =
                    r.backends.iter().map(|(c, _)| self.cluster(c)).collect();
                let weights: Vec<u32> = r.backends.iter().map(|(_, w)| *w).collect();
                let policy = r.policy.as_ref().and_then(|(json, settings)| {
                    self.rule_policy(&vh.service, &r.label, json, settings)
                });
                Rule {
                    policy,
                    label: r.label.clone(),
                    matcher: r.matcher.clone(),
                    backends,
                    split: WeightedRoundRobin::new(&weights),
                    timeout: r.timeout,
                    timeout_set: r.timeout_set,
                    stats: self.metrics.route_stats(
                        Direction::Outbound,
                        self.opts.local_service.clone(),
                        vh.service.clone(),
                        r.label.clone(),
                    ),
                }
            })
            .collect();
        Arc::new(RouteTable {
            service: vh.service.clone(),
            rules,
        })
    }

    fn cluster(&mut self, name: &str) -> Arc<Cluster> {
        if let Some(c) = self.clusters.get(name) {
            return c.clone();
        }
        let (label, http2, endpoints, zones, policy) = match self.plan(TypeUrl::Cluster, name) {
            Some(Plan::Cluster(plan)) => (
                plan.label.as_str(),
                plan.http2,
                self.endpoints(plan).endpoints.as_slice(),
                self.endpoints(plan).zones.as_slice(),
                plan.policy.as_deref(),
            ),
            _ => (strip_port(name), false, &[][..], &[][..], None),
        };
        let label: Arc<str> = label.into();
        let clients: Vec<_> = endpoints
            .iter()
            .map(|(addr, _)| self.registry.get(*addr, http2, self.opts.connect_timeout))
            .collect();
        let weights: Vec<u32> = endpoints.iter().map(|(_, w)| *w).collect();
        let endpoint_requests = clients
            .iter()
            .map(|e| {
                self.metrics
                    .endpoint_counter(label.clone(), e.label.clone())
            })
            .collect();
        let endpoint_labels: Vec<_> = clients
            .iter()
            .map(|e| crate::metrics::EndpointLabels {
                service: label.clone(),
                endpoint: e.label.clone(),
            })
            .collect();
        let endpoint_failures = endpoint_labels
            .iter()
            .map(|l| self.metrics.health.failures.get_or_create(l).clone())
            .collect();
        let endpoint_gauges = endpoint_labels
            .iter()
            .map(|l| self.metrics.health.endpoint_gauges(l))
            .collect();
        let zone = self.opts.zone.as_deref();
        let settings = ClusterSettings::new(policy, &weights, zone).unwrap_or_else(|e| {
            // Checked when parsed; only the endpoint weights are new here.
            tracing::warn!(cluster = name, error = %e, "cluster policy unusable; using defaults");
            ClusterSettings::new(None, &weights, zone).expect("the default settings are valid")
        });
        let (loads, health) = self.remember(name, endpoints, zones, &settings);
        let balancer = Balancer::new(settings.latency.clone(), loads.clone()).unwrap_or_else(|e| {
            tracing::warn!(cluster = name, error = %e, "balancer settings unusable; using defaults");
            Balancer::new(LatencyConfig::default(), loads).expect("the default settings are valid")
        });
        let classifier = Classifier::new(&settings.codes)
            .unwrap_or_else(|_| Classifier::new(&FailureCodes::default()).expect("defaults"));
        let c = Arc::new(Cluster {
            label,
            http2,
            endpoints: clients,
            endpoint_requests,
            endpoint_failures,
            endpoint_gauges,
            balancer,
            health,
            classifier,
            metrics: self.metrics.health.clone(),
        });
        self.clusters.insert(name.to_string(), c.clone());
        c
    }

    /// The endpoints' load trackers and the cluster's health for this
    /// snapshot, continuing what the previous snapshot learned about the
    /// endpoints that stay (endpoints that join a running cluster slow-start).
    fn remember(
        &mut self,
        name: &str,
        endpoints: &[(SocketAddr, u32)],
        zones: &[Option<String>],
        settings: &ClusterSettings,
    ) -> (Vec<Arc<EndpointLoad>>, Arc<ClusterHealth>) {
        let now = clock::now();
        let addrs: Vec<SocketAddr> = endpoints.iter().map(|(a, _)| *a).collect();
        let prev = self.memory.get(name).filter(|m| !m.addrs.is_empty());
        let position = |a: &SocketAddr| prev.and_then(|m| m.addrs.iter().position(|b| b == a));
        let loads: Vec<Arc<EndpointLoad>> = endpoints
            .iter()
            .enumerate()
            .map(|(i, (addr, w))| {
                let zone = zones.get(i).and_then(|z| z.as_deref());
                match (prev, position(addr)) {
                    (Some(m), Some(j)) if m.loads[j].zone() == zone => {
                        let l = m.loads[j].clone();
                        if l.weight() != *w {
                            l.set_weight(*w);
                        }
                        l
                    }
                    (Some(_), _) => Arc::new(EndpointLoad::added(*w, zone, now)),
                    (None, _) => Arc::new(EndpointLoad::initial(*w, zone, now)),
                }
            })
            .collect();
        let fresh = || {
            ClusterHealth::new(settings.health, addrs.len()).unwrap_or_else(|_| {
                ClusterHealth::new(Default::default(), addrs.len()).expect("defaults")
            })
        };
        let health = match prev {
            Some(m) if m.addrs == addrs && m.settings.health == settings.health => m.health.clone(),
            Some(m) => {
                let mapping: Vec<Option<usize>> = addrs.iter().map(&position).collect();
                Arc::new(
                    m.health
                        .carry_over(settings.health, &mapping)
                        .unwrap_or_else(|_| fresh()),
                )
            }
            None => Arc::new(fresh()),
        };
        for (i, l) in loads.iter().enumerate() {
            l.set_health_multiplier(health.effective_multiplier(i, now));
        }
        self.memory.insert(
            name.to_string(),
            ClusterMemory {
                addrs,
                loads: loads.clone(),
                health: health.clone(),
                settings: settings.clone(),
            },
        );
        (loads, health)
    }

    /// The policy of one rule: the previous snapshot's while its JSON is
    /// the same, else a new one.
    fn rule_policy(
        &mut self,
        service: &Arc<str>,
        rule: &Arc<str>,
        json: &str,
        settings: &RouteSettings,
    ) -> Option<Arc<RoutePolicy>> {
        let key = (service.clone(), rule.clone());
        if let Some(p) = self.policies.get(&key) {
            return Some(p.clone());
        }
        let p = match self.old_policies.get(&key) {
            Some(p) if p.json == json => p.clone(),
            _ => {
                let labels = PolicyLabels {
                    service: service.clone(),
                    route: rule.clone(),
                };
                match RoutePolicy::new(json.to_string(), settings, labels) {
                    Ok(p) => {
                        let lease = settings
                            .global_rate_limit
                            .as_ref()
                            .map(|g| self.opts.global_limits.lease(g));
                        Arc::new(p.with_global(lease))
                    }
                    Err(e) => {
                        tracing::warn!(service = %service, rule = %rule, error = %e, "route policy unusable; none applied");
                        return None;
                    }
                }
            }
        };
        self.policies.insert(key, p.clone());
        Some(p)
    }
}
