//! weft's internal route form: for one parent (a Service port, or a
//! hostname on a Gateway listener), the rules a request is tried against,
//! most specific first; the first that matches decides where it goes.
//!
//! HTTPRoutes, GRPCRoutes and SMI TrafficSplits all become this one form,
//! so every data plane (Envoy, proxyless gRPC, weft) applies them alike;
//! the precedence each API specifies is decided here, once:
//!
//! - HTTPRoute (Gateway API): exact path, then longer prefix (trailing `/`
//!   ignored), then regular expression (longer first; implementation
//!   specific in Gateway API), then a method match, then more header
//!   matches;
//! - GRPCRoute: more characters in the service, then in the method, then
//!   more header matches;
//! - on a Gateway, before either: a matching non-wildcard hostname with
//!   more characters, then a matching hostname with more characters;
//! - ties: route namespace, route name, rule index, then the written order
//!   of the rule's matches (Gateway API's creation-time tie-break does not
//!   exist for files).
//!
//! Gateway API never merges HTTPRoutes with GRPCRoutes on one parent;
//! validation rejects such a config (and a TrafficSplit whose root Service
//! has routes). Were it given one anyway, a TrafficSplit would win over
//! routes and GRPCRoutes over HTTPRoutes (GEP-1426).

use std::cmp::Reverse;
use std::time::Duration;

use serde::Serialize;

use crate::{
    BackendRef, Config, Gateway, GatewayListener, GrpcRoute, HttpRoute, HttpRouteGroup,
    HttpRouteMatch, ParentRef, PathMatchType, PolicyTargetKind, RoutesFrom, Service, TrafficSplit,
    hostname_intersection,
};

/// One rule of the internal form: a single condition and where matching
/// requests go.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteEntry {
    /// `ROUTE/RULE`: the source route's name and the rule's index (a
    /// TrafficSplit's rules count its groups' matches; its fallback to the
    /// root Service is `SPLIT/default`). Several entries share a name when
    /// a rule has several matches. A metric label: keep it stable.
    pub name: String,
    /// The route and rule this entry comes from: what TrafficPolicies
    /// attach to.
    pub source: RuleRef,
    pub condition: HttpRouteMatch,
    /// At least one with a non-zero weight. `port: None` means the target
    /// Service's first HTTP port.
    pub backend_refs: Vec<BackendRef>,
    /// Request-to-response deadline.
    pub timeout: Option<Duration>,
}

/// The kind of resource a [`RouteEntry`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RouteKind {
    HTTPRoute,
    GRPCRoute,
    /// An SMI TrafficSplit: no TrafficPolicy targets one, so its entries
    /// are governed by the policies of the Services they send to only.
    TrafficSplit,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::HTTPRoute => "HTTPRoute",
            RouteKind::GRPCRoute => "GRPCRoute",
            RouteKind::TrafficSplit => "TrafficSplit",
        }
    }

    /// The TrafficPolicy `targetRefs` kind naming such a route, if a policy
    /// can target one.
    pub fn policy_target(self) -> Option<PolicyTargetKind> {
        match self {
            RouteKind::HTTPRoute => Some(PolicyTargetKind::HTTPRoute),
            RouteKind::GRPCRoute => Some(PolicyTargetKind::GRPCRoute),
            RouteKind::TrafficSplit => None,
        }
    }
}

/// A rule of a route, as TrafficPolicy `targetRefs` name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub kind: RouteKind,
    /// The route's namespace (a TrafficSplit's: also its Services').
    pub namespace: String,
    /// The route's (or TrafficSplit's) name.
    pub route: String,
    /// The rule's Gateway API `name` (a policy's `sectionName`), if it has
    /// one; always `None` for a TrafficSplit.
    pub rule: Option<String>,
}

impl RuleRef {
    /// The route part of a [`crate::PolicyScope`]: `(kind, route, rule)`,
    /// or `None` when no policy can target the route (a TrafficSplit).
    pub fn policy_route(&self) -> Option<(PolicyTargetKind, &str, Option<&str>)> {
        let kind = self.kind.policy_target()?;
        Some((kind, self.route.as_str(), self.rule.as_deref()))
    }
}

/// The rules of one parent, in the order they are tried.
pub type RouteTable = Vec<RouteEntry>;

/// One virtual host of a Gateway listener: requests whose host matches
/// `hostname` (`None`: any host) and the rules tried for them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayHost {
    pub hostname: Option<String>,
    pub routes: RouteTable,
}

/// Orders entries of one parent across route kinds; kinds never share a
/// parent in a valid config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum RulePrecedence {
    Http(HttpPrecedence),
    Grpc(GrpcPrecedence),
}

type HttpPrecedence = (u8, Reverse<usize>, bool, Reverse<usize>);
pub(crate) type GrpcPrecedence = (Reverse<usize>, Reverse<usize>, Reverse<usize>);

/// HTTPRoute precedence of one match (lower first).
fn http_precedence(m: &HttpRouteMatch) -> HttpPrecedence {
    let (kind, len) = match m.path.kind {
        PathMatchType::Exact => (0, m.path.value.len()),
        PathMatchType::PathPrefix => (1, trimmed_prefix(&m.path.value).len()),
        PathMatchType::RegularExpression => (2, m.path.value.len()),
    };
    (
        kind,
        Reverse(len),
        m.method.is_none(),
        Reverse(m.headers.len()),
    )
}

/// A prefix without its trailing slashes; `/` for the root. Prefixes match
/// whole path segments: `/api` matches `/api` and `/api/x`, not `/apix`.
pub fn trimmed_prefix(value: &str) -> &str {
    let v = value.trim_end_matches('/');
    if v.is_empty() { "/" } else { v }
}

/// A rule with everything it is ordered by.
struct Ranked {
    host: (Reverse<usize>, Reverse<usize>),
    rule: RulePrecedence,
    source: (String, String, usize),
    entry: RouteEntry,
}

fn into_table(mut ranked: Vec<Ranked>) -> RouteTable {
    // Stable: the matches of one rule keep their written order.
    ranked.sort_by(|a, b| (&a.host, &a.rule, &a.source).cmp(&(&b.host, &b.rule, &b.source)));
    ranked.into_iter().map(|r| r.entry).collect()
}

/// The entries of an HTTPRoute's rules.
fn http_entries(route: &HttpRoute, host: (Reverse<usize>, Reverse<usize>), out: &mut Vec<Ranked>) {
    for (i, rule) in route.rules.iter().enumerate() {
        for m in &rule.matches {
            out.push(Ranked {
                host,
                rule: RulePrecedence::Http(http_precedence(m)),
                source: (route.namespace.clone(), route.name.clone(), i),
                entry: RouteEntry {
                    name: format!("{}/{i}", route.name),
                    source: RuleRef {
                        kind: RouteKind::HTTPRoute,
                        namespace: route.namespace.clone(),
                        route: route.name.clone(),
                        rule: rule.name.clone(),
                    },
                    condition: m.clone(),
                    backend_refs: rule.backend_refs.clone(),
                    timeout: rule.timeouts.request,
                },
            });
        }
    }
}

/// The entries of a GRPCRoute's rules, in their HTTP/2 form.
fn grpc_entries(route: &GrpcRoute, host: (Reverse<usize>, Reverse<usize>), out: &mut Vec<Ranked>) {
    for (i, rule) in route.rules.iter().enumerate() {
        for m in &rule.matches {
            out.push(Ranked {
                host,
                rule: RulePrecedence::Grpc(m.precedence()),
                source: (route.namespace.clone(), route.name.clone(), i),
                entry: RouteEntry {
                    name: format!("{}/{i}", route.name),
                    source: RuleRef {
                        kind: RouteKind::GRPCRoute,
                        namespace: route.namespace.clone(),
                        route: route.name.clone(),
                        rule: rule.name.clone(),
                    },
                    condition: m.to_http(),
                    backend_refs: rule.backend_refs.clone(),
                    timeout: None,
                },
            });
        }
    }
}

/// Whether `parent` binds to port `port` of `svc`.
fn binds_service_port(parent: &ParentRef, svc: &Service, port: u16) -> bool {
    parent.is_service(&svc.namespace, &svc.name) && parent.port.is_none_or(|p| p == port)
}

/// Whether `parent` (of a route in `route_ns`) binds to listener `l` of `gw`.
pub(crate) fn binds_listener(
    parent: &ParentRef,
    route_ns: &str,
    gw: &Gateway,
    l: &GatewayListener,
) -> bool {
    parent.is_gateway(&gw.namespace, &gw.name)
        && parent.section_name.as_ref().is_none_or(|s| *s == l.name)
        && parent.port.is_none_or(|p| p == l.port)
        && (l.routes_from == RoutesFrom::All || route_ns == gw.namespace)
}

/// The hostnames a route answers on listener `l` (`None`: any host), or
/// `None` when its hostnames and the listener's do not overlap.
pub(crate) fn effective_hostnames(
    route_hostnames: &[String],
    l: &GatewayListener,
) -> Option<Vec<Option<String>>> {
    let hosts: Vec<Option<String>> = if route_hostnames.is_empty() {
        vec![l.hostname.clone()]
    } else {
        route_hostnames
            .iter()
            .filter_map(|h| match &l.hostname {
                None => Some(Some(h.clone())),
                Some(lh) => hostname_intersection(h, lh).map(|i| Some(i.to_string())),
            })
            .collect()
    };
    (!hosts.is_empty()).then_some(hosts)
}

/// How specifically route hostname `route_host` matches virtual host
/// `vhost`, for precedence (more non-wildcard characters, then more
/// characters), or `None` when it does not match every host of `vhost`.
fn host_rank(
    route_host: &Option<String>,
    vhost: &Option<String>,
) -> Option<(Reverse<usize>, Reverse<usize>)> {
    match (route_host, vhost) {
        (None, _) => Some((Reverse(0), Reverse(0))),
        (Some(_), None) => None,
        (Some(r), Some(v)) => (hostname_intersection(r, v) == Some(v.as_str())).then(|| {
            let exact = if r.starts_with("*.") { 0 } else { r.len() };
            (Reverse(exact), Reverse(r.len()))
        }),
    }
}

impl Config {
    /// The internal routes of HTTP port `port` of `svc`: its TrafficSplit's,
    /// else its GRPCRoutes', else its HTTPRoutes' rules. Empty when nothing
    /// is attached: then every request goes to the Service itself.
    pub fn service_routes(&self, svc: &Service, port: u16) -> RouteTable {
        if !svc.port(port).is_some_and(|p| p.protocol.is_http()) {
            return Vec::new();
        }
        if let Some(split) = self.traffic_split_for(svc) {
            let groups: Vec<&HttpRouteGroup> = split
                .matches
                .iter()
                .filter_map(|g| self.http_route_group(&split.namespace, g))
                .collect();
            return split_entries(split, port, &groups);
        }
        let none = (Reverse(0), Reverse(0));
        let mut ranked = Vec::new();
        for r in &self.grpc_routes {
            if r.parent_refs
                .iter()
                .any(|p| binds_service_port(p, svc, port))
            {
                grpc_entries(r, none, &mut ranked);
            }
        }
        if ranked.is_empty() {
            for r in &self.http_routes {
                if r.parent_refs
                    .iter()
                    .any(|p| binds_service_port(p, svc, port))
                {
                    http_entries(r, none, &mut ranked);
                }
            }
        }
        into_table(ranked)
    }

    /// The TrafficSplit whose root is `svc`.
    pub fn traffic_split_for(&self, svc: &Service) -> Option<&TrafficSplit> {
        self.traffic_splits
            .iter()
            .find(|s| s.namespace == svc.namespace && s.service == svc.name)
    }

    /// The virtual hosts of listener `l` of `gw`: one per hostname the
    /// attached routes answer (`None`, any host, last), each with the rules
    /// of every route matching that host, more specific hostnames first.
    pub fn gateway_hosts(&self, gw: &Gateway, l: &GatewayListener) -> Vec<GatewayHost> {
        // (route hostnames on this listener, its entries at host rank 0).
        let mut attached: Vec<(Vec<Option<String>>, Vec<Ranked>)> = Vec::new();
        let bound =
            |parents: &[ParentRef], ns: &str| parents.iter().any(|p| binds_listener(p, ns, gw, l));
        let zero = (Reverse(0), Reverse(0));
        for r in &self.http_routes {
            if bound(&r.parent_refs, &r.namespace)
                && let Some(hosts) = effective_hostnames(&r.hostnames, l)
            {
                let mut entries = Vec::new();
                http_entries(r, zero, &mut entries);
                attached.push((hosts, entries));
            }
        }
        for r in &self.grpc_routes {
            if bound(&r.parent_refs, &r.namespace)
                && let Some(hosts) = effective_hostnames(&r.hostnames, l)
            {
                let mut entries = Vec::new();
                grpc_entries(r, zero, &mut entries);
                attached.push((hosts, entries));
            }
        }
        let mut vhosts: Vec<Option<String>> = attached
            .iter()
            .flat_map(|(h, _)| h.iter().cloned())
            .collect();
        // Named hosts in order, then "any host".
        vhosts.sort_by(|a, b| (a.is_none(), a).cmp(&(b.is_none(), b)));
        vhosts.dedup();
        vhosts
            .into_iter()
            .map(|vhost| {
                let mut ranked = Vec::new();
                for (hosts, entries) in &attached {
                    let Some(rank) = hosts.iter().filter_map(|h| host_rank(h, &vhost)).min() else {
                        continue;
                    };
                    ranked.extend(entries.iter().map(|e| Ranked {
                        host: rank,
                        rule: e.rule.clone(),
                        source: e.source.clone(),
                        entry: e.entry.clone(),
                    }));
                }
                GatewayHost {
                    hostname: vhost,
                    routes: into_table(ranked),
                }
            })
            .collect()
    }

    /// The Services the routes of `svc` (any HTTP port) send to.
    pub fn route_backends(&self, svc: &Service) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = svc
            .ports
            .iter()
            .flat_map(|p| self.service_routes(svc, p.port))
            .flat_map(|e| e.backend_refs)
            .map(|b| (b.namespace, b.name))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The Services the routes attached to `gw` send to.
    pub fn gateway_backends(&self, gw: &Gateway) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = gw
            .listeners
            .iter()
            .flat_map(|l| self.gateway_hosts(gw, l))
            .flat_map(|h| h.routes)
            .flat_map(|e| e.backend_refs)
            .map(|b| (b.namespace, b.name))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A TrafficSplit's rules for port `port` of its root Service.
fn split_entries(split: &TrafficSplit, port: u16, groups: &[&HttpRouteGroup]) -> RouteTable {
    let to = |name: &str, weight: u32| BackendRef {
        namespace: split.namespace.clone(),
        name: name.to_string(),
        port: Some(port),
        weight,
    };
    let backends: Vec<BackendRef> = split
        .backends
        .iter()
        .map(|b| to(&b.service, b.weight))
        .collect();
    let source = RuleRef {
        kind: RouteKind::TrafficSplit,
        namespace: split.namespace.clone(),
        route: split.name.clone(),
        rule: None,
    };
    let entry = |name: String, condition| RouteEntry {
        name,
        source: source.clone(),
        condition,
        backend_refs: backends.clone(),
        timeout: None,
    };
    if groups.is_empty() {
        return vec![entry(
            format!("{}/0", split.name),
            HttpRouteMatch::everything(),
        )];
    }
    let mut out = Vec::new();
    for (i, m) in groups.iter().flat_map(|g| &g.matches).enumerate() {
        out.extend(
            m.to_http()
                .into_iter()
                .map(|c| entry(format!("{}/{i}", split.name), c)),
        );
    }
    out.push(RouteEntry {
        name: format!("{}/default", split.name),
        source,
        condition: HttpRouteMatch::everything(),
        backend_refs: vec![to(&split.service, 1)],
        timeout: None,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_str;

    const MESH: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: shop, namespace: web}
spec:
  ports: [{port: 8080, protocol: http}, {port: 9090, protocol: grpc}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: shop-v2, namespace: web}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pages, namespace: web}
spec:
  parentRefs: [{kind: Service, name: shop, port: 8080}]
  rules:
  - name: read
    matches: [{method: GET}, {method: HEAD}]
    backendRefs: [{name: shop}]
  - backendRefs: [{name: shop-v2}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: web}
spec:
  parentRefs: [{kind: Service, name: shop, port: 9090}]
  rules:
  - name: all
    backendRefs: [{name: shop, port: 9090}]
"#;

    fn rule(kind: RouteKind, route: &str, rule: Option<&str>) -> RuleRef {
        RuleRef {
            kind,
            namespace: "web".into(),
            route: route.into(),
            rule: rule.map(Into::into),
        }
    }

    #[test]
    fn every_entry_names_the_rule_it_comes_from() {
        let c = load_str(MESH, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        let shop = c.service("web", "shop").unwrap();
        let table = c.service_routes(shop, 8080);
        let http: Vec<(&str, &RuleRef)> =
            table.iter().map(|e| (e.name.as_str(), &e.source)).collect();
        let read = rule(RouteKind::HTTPRoute, "pages", Some("read"));
        let unnamed = rule(RouteKind::HTTPRoute, "pages", None);
        assert_eq!(
            http,
            [
                ("pages/0", &read),
                ("pages/0", &read),
                ("pages/1", &unnamed)
            ]
        );
        assert_eq!(
            read.policy_route(),
            Some((PolicyTargetKind::HTTPRoute, "pages", Some("read")))
        );
        let grpc = c.service_routes(shop, 9090);
        assert_eq!(
            grpc[0].source,
            rule(RouteKind::GRPCRoute, "rpc", Some("all"))
        );
    }

    #[test]
    fn traffic_split_entries_have_no_policy_route() {
        let yaml = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: shop, namespace: web}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: shop-v2, namespace: web}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary, namespace: web}
spec:
  service: shop
  backends: [{service: shop-v2, weight: 1}]
"#;
        let c = load_str(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        let table = c.service_routes(c.service("web", "shop").unwrap(), 8080);
        assert!(!table.is_empty());
        for e in &table {
            assert_eq!(e.source, rule(RouteKind::TrafficSplit, "canary", None));
            assert_eq!(e.source.policy_route(), None);
        }
    }
}
