//! Checks across documents, once everything is loaded: every reference
//! resolves (route -> Service / Gateway listener, backend -> Service port,
//! TrafficSplit -> Services and HTTPRouteGroups, dependency -> Service) and
//! no two sources claim the same traffic (HTTPRoute and GRPCRoute on one
//! parent, a TrafficSplit and a route on one Service, two TrafficSplits on
//! one Service). References to a document that is itself invalid add no
//! second error.

use crate::error::{ConfigError, Problems};
use crate::load::Documents;
use crate::table::{binds_listener, effective_hostnames};
use crate::{
    BackendRef, Config, Gateway, GatewayListener, GrpcRoute, HttpRoute, ParentKind, ParentRef,
    Service, hostname_intersection,
};

pub(crate) fn check(config: &Config, docs: &Documents, errors: &mut Vec<ConfigError>) {
    check_dependencies(config, docs, errors);
    check_gateway_names(config, docs, errors);
    for r in &config.http_routes {
        check_route(config, docs, &RouteView::http(r), errors);
    }
    for r in &config.grpc_routes {
        check_route(config, docs, &RouteView::grpc(r), errors);
    }
    check_route_kind_conflicts(config, docs, errors);
    check_traffic_splits(config, docs, errors);
    crate::policy::check_policies(config, docs, errors);
}

/// What the checks need of an HTTPRoute or a GRPCRoute.
struct RouteView<'a> {
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
    parents: &'a [ParentRef],
    hostnames: &'a [String],
    /// (field, backend).
    backends: Vec<(String, &'a BackendRef)>,
}

impl<'a> RouteView<'a> {
    fn http(r: &'a HttpRoute) -> Self {
        RouteView {
            kind: "HTTPRoute",
            namespace: &r.namespace,
            name: &r.name,
            parents: &r.parent_refs,
            hostnames: &r.hostnames,
            backends: backends(r.rules.iter().map(|rule| &rule.backend_refs)),
        }
    }

    fn grpc(r: &'a GrpcRoute) -> Self {
        RouteView {
            kind: "GRPCRoute",
            namespace: &r.namespace,
            name: &r.name,
            parents: &r.parent_refs,
            hostnames: &r.hostnames,
            backends: backends(r.rules.iter().map(|rule| &rule.backend_refs)),
        }
    }
}

fn backends<'a>(rules: impl Iterator<Item = &'a Vec<BackendRef>>) -> Vec<(String, &'a BackendRef)> {
    rules
        .enumerate()
        .flat_map(|(i, refs)| {
            refs.iter()
                .enumerate()
                .map(move |(j, b)| (format!("spec.rules[{i}].backendRefs[{j}]"), b))
        })
        .collect()
}

/// Runs `f` with the problems of document `kind/namespace/name`.
pub(crate) fn with_doc(
    docs: &Documents,
    errors: &mut Vec<ConfigError>,
    kind: &str,
    namespace: &str,
    name: &str,
    f: impl FnOnce(&mut Problems<'_>),
) {
    if let Some(doc) = docs.get(kind, namespace, name) {
        f(&mut Problems { doc, out: errors });
    }
}

fn check_dependencies(config: &Config, docs: &Documents, errors: &mut Vec<ConfigError>) {
    for svc in &config.services {
        let Some(deps) = &svc.dependencies else {
            continue;
        };
        with_doc(docs, errors, "Service", &svc.namespace, &svc.name, |p| {
            for (i, d) in deps.iter().enumerate() {
                if config.service(&d.namespace, &d.name).is_none()
                    && !docs.is_broken("Service", &d.namespace, &d.name)
                {
                    p.add(
                        format!("spec.dependencies[{i}]"),
                        format!("Service {d} does not exist"),
                    );
                }
            }
        });
    }
}

/// A node names a Service or a Gateway by `node.cluster`: never both.
fn check_gateway_names(config: &Config, docs: &Documents, errors: &mut Vec<ConfigError>) {
    for gw in &config.gateways {
        if config.service(&gw.namespace, &gw.name).is_some() {
            with_doc(docs, errors, "Gateway", &gw.namespace, &gw.name, |p| {
                p.add(
                    "metadata.name",
                    format!(
                        "Service {}/{} has the same name: a node's cluster {:?} would name both",
                        gw.namespace, gw.name, gw.name
                    ),
                )
            });
        }
    }
}

fn check_route(
    config: &Config,
    docs: &Documents,
    r: &RouteView<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let Some(doc) = docs.get(r.kind, r.namespace, r.name) else {
        return;
    };
    let mut p = Problems { doc, out: errors };
    for (i, parent) in r.parents.iter().enumerate() {
        let field = format!("spec.parentRefs[{i}]");
        match parent.kind {
            ParentKind::Service => check_service_parent(config, docs, parent, &field, &mut p),
            ParentKind::Gateway => check_gateway_parent(config, docs, r, parent, &field, &mut p),
        }
    }
    for (field, b) in &r.backends {
        check_backend(config, docs, b, field, r.kind == "GRPCRoute", &mut p);
    }
}

fn check_service_parent(
    config: &Config,
    docs: &Documents,
    parent: &ParentRef,
    field: &str,
    p: &mut Problems<'_>,
) {
    let Some(s) = config.service(&parent.namespace, &parent.name) else {
        if !docs.is_broken("Service", &parent.namespace, &parent.name) {
            p.add(
                format!("{field}.name"),
                format!(
                    "Service {}/{} does not exist",
                    parent.namespace, parent.name
                ),
            );
        }
        return;
    };
    match parent.port.map(|port| (port, s.port(port))) {
        Some((port, None)) => p.add(
            format!("{field}.port"),
            format!("Service {} has no port {port}", s.name),
        ),
        Some((port, Some(sp))) if !sp.protocol.is_http() => p.add(
            format!("{field}.port"),
            format!(
                "port {port} of Service {} is tcp; routes need an HTTP port",
                s.name
            ),
        ),
        Some(_) => {}
        None if s.first_http_port().is_none() => p.add(
            format!("{field}.name"),
            format!("Service {} has no HTTP port (http, http2 or grpc)", s.name),
        ),
        None => {}
    }
}

fn check_gateway_parent(
    config: &Config,
    docs: &Documents,
    r: &RouteView<'_>,
    parent: &ParentRef,
    field: &str,
    p: &mut Problems<'_>,
) {
    let Some(gw) = config.gateway(&parent.namespace, &parent.name) else {
        if !docs.is_broken("Gateway", &parent.namespace, &parent.name) {
            p.add(
                format!("{field}.name"),
                format!(
                    "Gateway {}/{} does not exist",
                    parent.namespace, parent.name
                ),
            );
        }
        return;
    };
    if !names_listeners(gw, parent, field, p) {
        return;
    }
    let allowed: Vec<&GatewayListener> = gw
        .listeners
        .iter()
        .filter(|l| binds_listener(parent, r.namespace, gw, l))
        .collect();
    if allowed.is_empty() {
        p.add(
            field,
            format!(
                "the listeners of Gateway {}/{} accept routes from namespace {} only \
                 (set allowedRoutes.namespaces.from: All on the listener)",
                gw.namespace, gw.name, gw.namespace
            ),
        );
    } else if !allowed
        .iter()
        .any(|l| effective_hostnames(r.hostnames, l).is_some())
    {
        let hosts: Vec<&str> = allowed
            .iter()
            .filter_map(|l| l.hostname.as_deref())
            .collect();
        p.add(
            "spec.hostnames",
            format!(
                "no hostname matches the listener hostnames of Gateway {} ({})",
                gw.name,
                hosts.join(", ")
            ),
        );
    }
}

/// Whether `parent`'s `sectionName` and `port` name at least one listener
/// of `gw` (and agree with each other); says why not.
fn names_listeners(gw: &Gateway, parent: &ParentRef, field: &str, p: &mut Problems<'_>) -> bool {
    match (&parent.section_name, parent.port) {
        (Some(section), port) => match gw.listener(section) {
            None => {
                let names: Vec<&str> = gw.listeners.iter().map(|l| l.name.as_str()).collect();
                p.add(
                    format!("{field}.sectionName"),
                    format!(
                        "Gateway {} has no listener {section:?} (listeners: {})",
                        gw.name,
                        names.join(", ")
                    ),
                );
                false
            }
            Some(l) if port.is_some_and(|port| port != l.port) => {
                p.add(
                    format!("{field}.port"),
                    format!(
                        "listener {section:?} of Gateway {} is on port {}, not {}",
                        gw.name,
                        l.port,
                        port.unwrap_or_default()
                    ),
                );
                false
            }
            Some(_) => true,
        },
        (None, Some(port)) if !gw.listeners.iter().any(|l| l.port == port) => {
            p.add(
                format!("{field}.port"),
                format!("Gateway {} has no listener on port {port}", gw.name),
            );
            false
        }
        (None, _) => true,
    }
}

fn check_backend(
    config: &Config,
    docs: &Documents,
    b: &BackendRef,
    field: &str,
    grpc: bool,
    p: &mut Problems<'_>,
) {
    let Some(s) = config.service(&b.namespace, &b.name) else {
        if !docs.is_broken("Service", &b.namespace, &b.name) {
            p.add(
                format!("{field}.name"),
                format!("Service {}/{} does not exist", b.namespace, b.name),
            );
        }
        return;
    };
    let port = match b.port {
        Some(port) => match s.port(port) {
            Some(sp) => sp,
            None => {
                p.add(
                    format!("{field}.port"),
                    format!("Service {} has no port {port}", s.name),
                );
                return;
            }
        },
        None => match s.first_http_port() {
            Some(sp) => sp,
            None => {
                p.add(
                    format!("{field}.name"),
                    format!("Service {} has no HTTP port (http, http2 or grpc)", s.name),
                );
                return;
            }
        },
    };
    if grpc && !port.protocol.is_http2() {
        p.add(
            format!("{field}.port"),
            format!(
                "port {} of Service {} is {}; gRPC needs an http2 or grpc port",
                port.port,
                s.name,
                format!("{:?}", port.protocol).to_lowercase()
            ),
        );
    }
}

/// Gateway API never merges HTTPRoutes and GRPCRoutes: on one Service port
/// (GEP-1426) or one listener hostname, both kinds is an error, reported on
/// the HTTPRoute (the one GEP-1426 would ignore).
fn check_route_kind_conflicts(config: &Config, docs: &Documents, errors: &mut Vec<ConfigError>) {
    for h in &config.http_routes {
        with_doc(docs, errors, "HTTPRoute", &h.namespace, &h.name, |p| {
            for (i, hp) in h.parent_refs.iter().enumerate() {
                if let Some(g) = conflicting_grpc_route(config, h, hp) {
                    p.add(
                        format!("spec.parentRefs[{i}]"),
                        format!(
                            "GRPCRoute {}/{} is attached to the same {}; Gateway API does not merge \
                             HTTPRoutes and GRPCRoutes on one parent: move one to another port or hostname",
                            g.namespace,
                            g.name,
                            match hp.kind {
                                ParentKind::Service => "Service port",
                                ParentKind::Gateway => "Gateway listener and hostname",
                            }
                        ),
                    );
                }
            }
        });
    }
}

fn conflicting_grpc_route<'a>(
    config: &'a Config,
    h: &HttpRoute,
    hp: &ParentRef,
) -> Option<&'a GrpcRoute> {
    let ports_overlap = |a: Option<u16>, b: Option<u16>| a.is_none() || b.is_none() || a == b;
    config.grpc_routes.iter().find(|g| {
        g.parent_refs.iter().any(|gp| match hp.kind {
            ParentKind::Service => {
                gp.is_service(&hp.namespace, &hp.name) && ports_overlap(gp.port, hp.port)
            }
            ParentKind::Gateway => {
                let Some(gw) = config.gateway(&hp.namespace, &hp.name) else {
                    return false;
                };
                gw.listeners.iter().any(|l| {
                    binds_listener(hp, &h.namespace, gw, l)
                        && binds_listener(gp, &g.namespace, gw, l)
                        && hosts_overlap(
                            effective_hostnames(&h.hostnames, l),
                            effective_hostnames(&g.hostnames, l),
                        )
                })
            }
        })
    })
}

fn hosts_overlap(a: Option<Vec<Option<String>>>, b: Option<Vec<Option<String>>>) -> bool {
    let (Some(a), Some(b)) = (a, b) else {
        return false;
    };
    a.iter().any(|x| {
        b.iter().any(|y| match (x, y) {
            (None, _) | (_, None) => true,
            (Some(x), Some(y)) => hostname_intersection(x, y).is_some(),
        })
    })
}

fn check_traffic_splits(config: &Config, docs: &Documents, errors: &mut Vec<ConfigError>) {
    for (index, split) in config.traffic_splits.iter().enumerate() {
        let ns = split.namespace.as_str();
        with_doc(docs, errors, "TrafficSplit", ns, &split.name, |p| {
            let root = config.service(ns, &split.service);
            match root {
                None if docs.is_broken("Service", ns, &split.service) => {}
                None => p.add(
                    "spec.service",
                    format!("Service {ns}/{} does not exist", split.service),
                ),
                Some(svc) if svc.first_http_port().is_none() => p.add(
                    "spec.service",
                    format!(
                        "Service {} has no HTTP port (http, http2 or grpc); weft splits HTTP traffic",
                        svc.name
                    ),
                ),
                Some(svc) => check_split_root(config, index, svc, p),
            }
            for (i, b) in split.backends.iter().enumerate() {
                let field = format!("spec.backends[{i}].service");
                let Some(target) = config.service(ns, &b.service) else {
                    if !docs.is_broken("Service", ns, &b.service) {
                        p.add(field, format!("Service {ns}/{} does not exist", b.service));
                    }
                    continue;
                };
                let Some(root) = root else { continue };
                for port in root.ports.iter().filter(|p| p.protocol.is_http()) {
                    if target.port(port.port).is_none() {
                        p.add(
                            &field,
                            format!(
                                "Service {} has no port {} (SMI: every backend needs each port of the root Service {})",
                                target.name, port.port, root.name
                            ),
                        );
                    }
                }
            }
            for (i, g) in split.matches.iter().enumerate() {
                if config.http_route_group(ns, g).is_none()
                    && !docs.is_broken("HTTPRouteGroup", ns, g)
                {
                    p.add(
                        format!("spec.matches[{i}].name"),
                        format!("HTTPRouteGroup {ns}/{g} does not exist"),
                    );
                }
            }
        });
    }
}

/// One source of truth per Service: no routes and no earlier TrafficSplit.
fn check_split_root(config: &Config, index: usize, svc: &Service, p: &mut Problems<'_>) {
    let split = &config.traffic_splits[index];
    if let Some(other) = config.traffic_splits[..index]
        .iter()
        .find(|s| s.namespace == svc.namespace && s.service == svc.name)
    {
        p.add(
            "spec.service",
            format!(
                "TrafficSplit {}/{} already splits Service {}; one TrafficSplit per Service",
                other.namespace, other.name, svc.name
            ),
        );
        return;
    }
    let route = config
        .routes_for_service(svc)
        .map(|r| ("HTTPRoute", &r.namespace, &r.name))
        .chain(
            config
                .grpc_routes
                .iter()
                .filter(|r| {
                    r.parent_refs
                        .iter()
                        .any(|pr| pr.is_service(&svc.namespace, &svc.name))
                })
                .map(|r| ("GRPCRoute", &r.namespace, &r.name)),
        )
        .next();
    if let Some((kind, ns, name)) = route {
        p.add(
            "spec.service",
            format!(
                "{kind} {ns}/{name} is also attached to Service {}; one source of truth per Service: \
                 route it with the {kind} or with TrafficSplit {}, not both",
                svc.name, split.name
            ),
        );
    }
}
