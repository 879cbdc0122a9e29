//! The internal route form ([`weft_model::RouteTable`]: HTTPRoutes,
//! GRPCRoutes and TrafficSplits, already in precedence order) -> Envoy
//! routes, with the meaning the weft proxy gives them: whole-segment
//! prefixes, anchored regexes, weighted splits, and a default route to the
//! Service itself when nothing is attached. Each route gets its rule's
//! TrafficPolicy (`route_policy`).

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route, RouteAction, RouteMatch, WeightedCluster, header_matcher, route,
    route_action, route_match, weighted_cluster,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use weft_model::{
    Config, HeaderMatchType, HttpRouteMatch, PathMatchType, RouteEntry, Service, trimmed_prefix,
};

use super::names::cluster_name;
use super::proto::{duration, uint32};
use super::route_policy;
use super::{Flavor, PortRef, service_index};

/// Envoy routes in the order they are tried, and the Service ports
/// (clusters) they send to.
#[derive(Debug)]
pub(super) struct PortRoutes {
    pub routes: Vec<Route>,
    pub clusters: Vec<PortRef>,
}

/// The routes of one Service HTTP port.
pub(super) fn port_routes(config: &Config, (index, port): PortRef, flavor: Flavor) -> PortRoutes {
    let svc = &config.services[index];
    let table = config.service_routes(svc, port);
    if table.is_empty() {
        let mut route = default_route(svc, port, flavor);
        let policy = route_policy::rule_policy(config, None, (index, port));
        route_policy::apply(&mut route, &policy, flavor);
        return PortRoutes {
            routes: vec![route],
            clusters: vec![(index, port)],
        };
    }
    table_routes(config, &table, flavor)
}

/// Envoy routes for entries of the internal form, in their order.
pub(super) fn table_routes(config: &Config, table: &[RouteEntry], flavor: Flavor) -> PortRoutes {
    let mut clusters = Vec::new();
    let mut routes = Vec::with_capacity(table.len());
    for entry in table {
        // Validation guarantees every entry at least one existing backend
        // with a non-zero weight; an entry without one is left out.
        let Some((action, first)) = route_action(config, entry, flavor, &mut clusters) else {
            continue;
        };
        let Some(route_match) = route_match(&entry.condition, flavor) else {
            continue;
        };
        let mut route = Route {
            name: entry.name.clone(),
            r#match: Some(route_match),
            action: Some(route::Action::Route(action)),
            ..Default::default()
        };
        let policy = route_policy::rule_policy(config, Some(&entry.source), first);
        route_policy::apply(&mut route, &policy, flavor);
        routes.push(route);
    }
    PortRoutes { routes, clusters }
}

/// Everything on the port to the Service itself.
fn default_route(svc: &Service, port: u16, flavor: Flavor) -> Route {
    Route {
        name: "default".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(with_timeout(
            RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster_name(
                    svc, port,
                ))),
                ..Default::default()
            },
            None,
            flavor,
        ))),
        ..Default::default()
    }
}

/// Where an entry's traffic goes: one cluster, or a weighted split without
/// the weight-0 backends (a backend listed twice gets the sum of its
/// weights); and the first of those backends, whose Service's policy the
/// route takes.
fn route_action(
    config: &Config,
    entry: &RouteEntry,
    flavor: Flavor,
    clusters: &mut Vec<PortRef>,
) -> Option<(RouteAction, PortRef)> {
    let mut first = None;
    let mut split: Vec<(String, u32)> = Vec::new();
    for b in entry.backend_refs.iter().filter(|b| b.weight > 0) {
        let Some(index) = service_index(config, &b.namespace, &b.name) else {
            continue;
        };
        let target = &config.services[index];
        let Some(port) = b.port.or_else(|| target.first_http_port().map(|p| p.port)) else {
            continue;
        };
        clusters.push((index, port));
        first.get_or_insert((index, port));
        let name = cluster_name(target, port);
        match split.iter_mut().find(|(n, _)| *n == name) {
            Some((_, w)) => *w = w.saturating_add(b.weight),
            None => split.push((name, b.weight)),
        }
    }
    let cluster_specifier = match split.len() {
        0 => return None,
        1 => route_action::ClusterSpecifier::Cluster(split.remove(0).0),
        _ => route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: split
                .into_iter()
                .map(|(name, weight)| weighted_cluster::ClusterWeight {
                    name,
                    weight: uint32(weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    };
    let action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        ..Default::default()
    };
    Some((with_timeout(action, entry.timeout, flavor), first?))
}

/// The request timeout: Envoy's route `timeout` (`0s` when none, since
/// Envoy's default is 15 s and weft's is none); gRPC clients read
/// `max_stream_duration` instead.
fn with_timeout(
    mut action: RouteAction,
    timeout: Option<std::time::Duration>,
    flavor: Flavor,
) -> RouteAction {
    match flavor {
        Flavor::Sidecar => action.timeout = Some(duration(timeout.unwrap_or_default())),
        Flavor::Grpc => {
            action.max_stream_duration = timeout.map(|t| route_action::MaxStreamDuration {
                max_stream_duration: Some(duration(t)),
                ..Default::default()
            });
        }
    }
    action
}

/// One match of a rule; `None` when it can never match for this data plane
/// (a gRPC client only ever sends `POST`).
fn route_match(m: &HttpRouteMatch, flavor: Flavor) -> Option<RouteMatch> {
    use route_match::PathSpecifier;
    let path = match m.path.kind {
        PathMatchType::Exact => PathSpecifier::Path(m.path.value.clone()),
        PathMatchType::RegularExpression => PathSpecifier::SafeRegex(re2(&m.path.value)),
        PathMatchType::PathPrefix => match trimmed_prefix(&m.path.value) {
            "/" => PathSpecifier::Prefix("/".into()),
            // Envoy's whole-segment prefix is the exact equivalent, but it
            // rejects `?` and `#` (which can never match a path anyway);
            // gRPC clients do not know it.
            p if flavor == Flavor::Sidecar && !p.contains(['?', '#']) => {
                PathSpecifier::PathSeparatedPrefix(p.into())
            }
            p => PathSpecifier::SafeRegex(re2(&format!("{}(/.*)?", re2_escape(p)))),
        },
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|h| {
            let pattern = match h.kind {
                HeaderMatchType::Exact => string_matcher::MatchPattern::Exact(h.value.clone()),
                HeaderMatchType::RegularExpression => {
                    string_matcher::MatchPattern::SafeRegex(re2(&h.value))
                }
            };
            header(&h.name, pattern)
        })
        .collect();
    match (&m.method, flavor) {
        (None, _) => {}
        (Some(method), Flavor::Sidecar) => headers.push(header(
            ":method",
            string_matcher::MatchPattern::Exact(method.clone()),
        )),
        (Some(method), Flavor::Grpc) if method == "POST" => {}
        (Some(_), Flavor::Grpc) => return None,
    }
    Some(RouteMatch {
        path_specifier: Some(path),
        headers,
        ..Default::default()
    })
}

fn header(name: &str, pattern: string_matcher::MatchPattern) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: false,
            },
        )),
        ..Default::default()
    }
}

/// A whole-string RE2 match (both Envoy and gRPC anchor `safe_regex`).
/// `engine_type` stays unset: `google_re2` is deprecated in Envoy's v3 API
/// (RE2 is the default engine) and gRPC ignores it.
fn re2(regex: &str) -> RegexMatcher {
    RegexMatcher {
        engine_type: None,
        regex: regex.into(),
    }
}

/// `text` as an RE2 literal.
fn re2_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_regex_metacharacters_only() {
        assert_eq!(re2_escape("/a.b/c-d"), r"/a\.b/c-d");
        assert_eq!(re2_escape("/x(1)?[2]"), r"/x\(1\)\?\[2\]");
        let re = regex::Regex::new(&format!("^(?:{}(/.*)?)$", re2_escape("/a.b"))).unwrap();
        assert!(re.is_match("/a.b") && re.is_match("/a.b/c"));
        assert!(!re.is_match("/aXb") && !re.is_match("/a.bc"));
    }

    #[test]
    fn prefixes_are_trimmed_like_the_proxy() {
        assert_eq!(trimmed_prefix("/api/"), "/api");
        assert_eq!(trimmed_prefix("/"), "/");
        assert_eq!(trimmed_prefix("//"), "/");
    }
}
