//! Model -> xDS: what each node receives for one validated [`Config`].
//!
//! The xDS form means what the weft proxy does with the same config
//! (`weft-proxy`'s snapshot): the same host names, the same route precedence,
//! the same default rule, the same weighted splits and VIP listeners. Each
//! data plane gets the nearest form it accepts: Envoy and weft sidecars one
//! form, proxyless gRPC clients another ([`DataPlane`]).
//!
//! # Resource names (a contract: clients ask for these)
//!
//! | type | name | what |
//! |---|---|---|
//! | Cluster, ClusterLoadAssignment | `NAME.NAMESPACE:PORT` | one per Service port (HTTP and tcp); `type: EDS` over ADS, round robin unless the Service's TrafficPolicy says otherwise (see `policy`; routes take their rule's policy, see `route_policy`); HTTP/2 upstream for `http2`/`grpc` ports |
//! | Cluster | `inbound\|NAME.NAMESPACE` | sidecars: the local app, `STATIC` at `127.0.0.1:PORT` |
//! | Listener | `outbound` | sidecars: `127.0.0.1:<outbound_port>`, HTTP, RDS `outbound`; on Envoy nodes the fault and local rate limit filters before the router when a TrafficPolicy needs them (see `flow`), so Envoy and weft nodes may get different listeners (also `vip\|...` and `gateway\|...`) |
//! | RouteConfiguration | `outbound` | sidecars: one virtual host `NAME.NAMESPACE:PORT` per in-scope Service HTTP port |
//! | Listener | `inbound` | sidecars of a Service: `127.0.0.1:<inbound_port>` -> `inbound\|NAME.NAMESPACE` |
//! | Listener, RouteConfiguration | `vip\|IP:PORT` | sidecars: one per port of a Service with a `vip`, bound on that address (`vip\|[::1]:80` for IPv6); tcp ports have no route config |
//! | Listener | each target a gRPC client may dial | gRPC: `NAME.NAMESPACE`, `NAME.NAMESPACE.svc`, `NAME.NAMESPACE.svc.cluster.local`, each also with `:PORT`; bare `NAME` / `NAME:PORT` for Services in the node's namespace |
//! | RouteConfiguration | `NAME.NAMESPACE:PORT` | gRPC: the routes of one Service HTTP port, domain `*`; every listener of that port (and the port-less ones for the first HTTP port) points at it |
//! | Listener, RouteConfiguration | `gateway\|NAME.NAMESPACE\|LISTENER` | gateways: one per Gateway listener, bound on every Gateway address at the listener's port, RDS of the same name; one virtual host per hostname (`*` for any), named and matched by it, the `Host` port ignored |
//!
//! # Who is who
//!
//! `node.cluster` is `NAME` or `NAME.NAMESPACE` (namespace `default` when
//! absent). It names a Gateway (the node runs that gateway: Envoy or weft;
//! a gRPC client is never a gateway), or the Service the node runs beside,
//! whose namespace is where bare names resolve; a cluster naming neither is
//! a client-only workload in that namespace: no inbound listener.
//!
//! # Scope: which Services a node gets
//!
//! [`services_in_scope`], the one place that decides it, so that config
//! size per node follows what the node uses, not the size of the mesh:
//!
//! - beside Service S: S, the Services in S's `spec.dependencies` if given,
//!   else every Service in S's namespace;
//! - a client-only workload: every Service in its namespace (it declares
//!   nothing; name it after a Service to narrow it);
//! - a gateway: the backends of the routes attached to it;
//! - plus, for sidecars and clients, the backends the routes of those
//!   Services send to, so a split target is always present.
//!
//! # Assumptions
//!
//! - The inbound listener forwards to the app on `127.0.0.1:<Service port>`,
//!   the first HTTP port if the Service has one (through the HTTP stack, HTTP/2
//!   upstream for `http2`/`grpc`), else the first port as opaque TCP. The
//!   control plane cannot know the app's real address; this is the convention.
//! - Envoy's route `timeout` spans until the response is complete, weft's
//!   until response headers: the nearest standard equivalent. Without a
//!   configured timeout routes carry `timeout: 0s` (Envoy's default is 15 s;
//!   weft has none). gRPC clients get the timeout as `max_stream_duration`.
//! - gRPC clients always send `POST`: a rule matching `POST` loses its method
//!   condition, a rule matching any other method is left out for them.
//!
//! # Cost
//!
//! A [`Translator`] belongs to one config generation and memoizes every
//! piece that does not depend on the node (clusters, endpoints, per-port
//! routes, VIP and inbound listeners, whole route configurations per
//! namespace and scope), so the resource sets of many node groups share the
//! same `Arc<Resource>`s and each piece is encoded once per generation.
//! [`Translator::next`] carries clusters and endpoints of unchanged Services
//! over to the next generation.

mod cluster;
mod flow;
mod gateway;
mod grpc;
mod memo;
mod names;
mod policy;
mod proto;
mod route;
mod route_policy;
mod sidecar;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use weft_model::{Config, DEFAULT_NAMESPACE};

use crate::node::{DataPlane, NodeInfo};
use crate::resource::{Resource, ResourceSet};

pub use names::{
    INBOUND_LISTENER, OUTBOUND_LISTENER, OUTBOUND_ROUTE_CONFIG, cluster_name,
    gateway_listener_name, inbound_cluster_name, vip_listener_name,
};
pub use policy::{POLICY_JSON_FIELD, POLICY_METADATA_KEY};

use flow::PolicyFilters;
use memo::Memo;

/// Settings that aren't in the config documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateOptions {
    /// Sidecars' outbound listener port on 127.0.0.1.
    pub outbound_port: u16,
    /// Sidecars' inbound listener port on 127.0.0.1.
    pub inbound_port: u16,
    /// Upstream connect timeout of every cluster.
    pub connect_timeout: Duration,
    /// Where Envoy nodes reach the rate-limit service for
    /// `rateLimit.global` (cluster `weft-ratelimit`); without it they get
    /// no global limit filter.
    pub ratelimit_service: Option<std::net::SocketAddr>,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            outbound_port: 15001,
            inbound_port: 15006,
            connect_timeout: Duration::from_secs(1),
            ratelimit_service: None,
        }
    }
}

/// Everything `node` should receive for `config`. Pure, deterministic.
///
/// A one-off convenience: to serve many nodes, build one [`Translator`] per
/// config generation and share it.
pub fn resources_for(config: &Config, node: &NodeInfo, opts: &TranslateOptions) -> ResourceSet {
    Translator::new(Arc::new(config.clone()), opts.clone()).resources_for(node)
}

/// The Services (indices into `config.services`, sorted) whose
/// configuration `node` receives; see the module doc.
pub fn services_in_scope(config: &Config, node: &NodeInfo) -> Vec<usize> {
    let index = |(ns, name): (String, String)| service_index(config, &ns, &name);
    let mut scope: Vec<usize> = match workload(config, node) {
        Workload::Gateway { gateway } => {
            let mut scope: Vec<usize> = config
                .gateway_backends(&config.gateways[gateway])
                .into_iter()
                .filter_map(index)
                .collect();
            scope.sort_unstable();
            return scope;
        }
        Workload::Sidecar {
            service: Some(own), ..
        } => {
            let svc = &config.services[own];
            let mut scope = vec![own];
            match &svc.dependencies {
                Some(deps) => scope.extend(
                    deps.iter()
                        .filter_map(|d| service_index(config, &d.namespace, &d.name)),
                ),
                None => scope.extend(namespace_services(config, &svc.namespace)),
            }
            scope
        }
        Workload::Sidecar {
            namespace,
            service: None,
        } => namespace_services(config, namespace).collect(),
    };
    let backends: Vec<usize> = scope
        .iter()
        .flat_map(|&i| config.route_backends(&config.services[i]))
        .filter_map(index)
        .collect();
    scope.extend(backends);
    scope.sort_unstable();
    scope.dedup();
    scope
}

/// The indices of every Service in `namespace` (`config.services` is sorted
/// by namespace first).
fn namespace_services(config: &Config, namespace: &str) -> std::ops::Range<usize> {
    let start = config
        .services
        .partition_point(|s| s.namespace.as_str() < namespace);
    let end = config
        .services
        .partition_point(|s| s.namespace.as_str() <= namespace);
    start..end
}

/// The namespace where `node`'s bare names resolve: from `NAME.NAMESPACE` in
/// `node.cluster`, else `default`.
pub fn node_namespace(node: &NodeInfo) -> &str {
    match node.cluster.split_once('.') {
        Some((_, ns)) if !ns.is_empty() => ns,
        _ => DEFAULT_NAMESPACE,
    }
}

/// What a node is, as chosen by `node.cluster`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload<'a> {
    /// A sidecar in `namespace`, beside `service` (an index into
    /// `config.services`), or a client-only workload when `None`.
    Sidecar {
        namespace: &'a str,
        service: Option<usize>,
    },
    /// The data plane of `config.gateways[gateway]` (never a gRPC client).
    Gateway { gateway: usize },
}

fn workload<'a>(config: &Config, node: &'a NodeInfo) -> Workload<'a> {
    let namespace = node_namespace(node);
    let name = node.cluster.split('.').next().unwrap_or_default();
    if node.kind != DataPlane::Grpc
        && let Ok(gateway) = config
            .gateways
            .binary_search_by(|g| (g.namespace.as_str(), g.name.as_str()).cmp(&(namespace, name)))
    {
        return Workload::Gateway { gateway };
    }
    Workload::Sidecar {
        namespace,
        service: service_index(config, namespace, name),
    }
}

/// The index of a Service in `config.services` (sorted by namespace, name).
fn service_index(config: &Config, namespace: &str, name: &str) -> Option<usize> {
    config
        .services
        .binary_search_by(|s| (s.namespace.as_str(), s.name.as_str()).cmp(&(namespace, name)))
        .ok()
}

/// The form a data plane receives. Envoy and weft share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Flavor {
    Sidecar,
    Grpc,
}

/// A Service port by index: `(index into config.services, port)`.
type PortRef = (usize, u16);

/// Translates one config generation for any number of nodes, encoding each
/// shared piece once. Safe to use from several threads.
pub struct Translator {
    config: Arc<Config>,
    opts: TranslateOptions,
    clusters: Memo<PortRef, Arc<Resource>>,
    loads: Memo<PortRef, Arc<Resource>>,
    routes: Memo<(PortRef, Flavor), Arc<route::PortRoutes>>,
    route_configs: Memo<(Flavor, String, Vec<usize>), Arc<Resource>>,
    grpc_route_configs: Memo<PortRef, Arc<Resource>>,
    grpc_listeners: Memo<(usize, bool), Arc<[Arc<Resource>]>>,
    gateways: Memo<(usize, PolicyFilters), Arc<gateway::GatewayPieces>>,
    vips: Memo<(usize, PolicyFilters), Arc<[Arc<Resource>]>>,
    inbound: Memo<usize, Arc<[Arc<Resource>]>>,
    outbound_listener: Memo<PolicyFilters, Arc<Resource>>,
    /// The policy filters of Envoy nodes' HTTP listeners (`flow`).
    envoy_filters: PolicyFilters,
}

impl Translator {
    pub fn new(config: Arc<Config>, opts: TranslateOptions) -> Translator {
        let envoy_filters = PolicyFilters::for_envoy(&config, &opts);
        Translator {
            config,
            opts,
            clusters: Memo::default(),
            loads: Memo::default(),
            routes: Memo::default(),
            route_configs: Memo::default(),
            grpc_route_configs: Memo::default(),
            grpc_listeners: Memo::default(),
            gateways: Memo::default(),
            vips: Memo::default(),
            inbound: Memo::default(),
            outbound_listener: Memo::default(),
            envoy_filters,
        }
    }

    /// A translator for the next config generation that keeps this one's
    /// clusters and endpoint assignments of every Service that did not change,
    /// so an endpoint change re-encodes one assignment, not all of them.
    pub fn next(&self, config: Arc<Config>) -> Translator {
        let next = Translator::new(config, self.opts.clone());
        // Clusters carry their Service's TrafficPolicy: any policy change
        // rebuilds them all (policies are few and change rarely).
        if next.config.traffic_policies != self.config.traffic_policies {
            return next;
        }
        for (new_index, svc) in next.config.services.iter().enumerate() {
            let Some(old_index) = service_index(&self.config, &svc.namespace, &svc.name) else {
                continue;
            };
            if self.config.services[old_index] != *svc {
                continue;
            }
            for port in &svc.ports {
                let (old, new) = ((old_index, port.port), (new_index, port.port));
                if let Some(c) = self.clusters.get(&old) {
                    next.clusters.insert(new, c);
                }
                if let Some(l) = self.loads.get(&old) {
                    next.loads.insert(new, l);
                }
            }
        }
        next
    }

    /// The config this translator serves.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn options(&self) -> &TranslateOptions {
        &self.opts
    }

    /// Everything `node` should receive. Nodes with the same kind and
    /// `cluster` receive the same set.
    pub fn resources_for(&self, node: &NodeInfo) -> ResourceSet {
        // weft nodes take the router only: they read the policy metadata.
        let filters = match node.kind {
            DataPlane::Envoy => self.envoy_filters,
            DataPlane::Weft | DataPlane::Grpc => PolicyFilters::default(),
        };
        let mut set = match workload(&self.config, node) {
            Workload::Gateway { gateway } => self.gateway_resources(gateway, filters),
            Workload::Sidecar { namespace, service } => {
                let scope = services_in_scope(&self.config, node);
                match node.kind {
                    DataPlane::Grpc => self.grpc_resources(namespace, &scope),
                    DataPlane::Envoy | DataPlane::Weft => {
                        self.sidecar_resources(namespace, service, &scope, filters)
                    }
                }
            }
        };
        if filters.global_rate_limit
            && let Some(addr) = self.opts.ratelimit_service
        {
            set.insert(flow::rate_limit_cluster(addr, &self.opts));
        }
        set
    }

    /// Adds the cluster and endpoint assignment of every port in `ports`.
    fn insert_clusters(&self, set: &mut ResourceSet, ports: impl IntoIterator<Item = PortRef>) {
        let mut ports: Vec<PortRef> = ports.into_iter().collect();
        ports.sort_unstable();
        ports.dedup();
        for port in ports {
            set.insert_shared(self.cluster(port));
            set.insert_shared(self.load_assignment(port));
        }
    }

    fn cluster(&self, port: PortRef) -> Arc<Resource> {
        self.clusters.get_or_insert_with(port, || {
            let svc = &self.config.services[port.0];
            let policy = self.config.effective_policy(weft_model::PolicyScope {
                namespace: &svc.namespace,
                service: &svc.name,
                port_name: svc.port(port.1).and_then(|p| p.name.as_deref()),
                route: None,
            });
            Arc::new(cluster::cluster(svc, port.1, &self.opts, &policy.sections))
        })
    }

    fn load_assignment(&self, port: PortRef) -> Arc<Resource> {
        self.loads.get_or_insert_with(port, || {
            Arc::new(cluster::load_assignment(
                &self.config.services[port.0],
                port.1,
            ))
        })
    }

    /// The routes of one Service HTTP port, in the given form.
    fn port_routes(&self, port: PortRef, flavor: Flavor) -> Arc<route::PortRoutes> {
        self.routes.get_or_insert_with((port, flavor), || {
            Arc::new(route::port_routes(&self.config, port, flavor))
        })
    }
}
