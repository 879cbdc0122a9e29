//! RouteConfiguration -> route plans: virtual hosts with their domains and
//! rules (matchers compiled, backends still by cluster name). Anything weft
//! cannot honour is an error naming the route and the field, so the update
//! is rejected (NACK) rather than routed differently than configured.

use std::sync::Arc;
use std::time::Duration;

use weft_xds::envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher as PbHeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, header_matcher, route, route_action, route_match,
};
use weft_xds::envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};

use crate::policy::{POLICY_METADATA_KEY, RouteSettings, parse_sections, policy_json};
use crate::route::{HeaderMatcher, Matcher, PathMatcher, ValueMatcher};

/// Envoy's route timeout when a route does not set one.
const ENVOY_DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A parsed route configuration.
#[derive(Clone)]
pub(super) struct RoutesPlan {
    pub vhosts: Vec<VhostPlan>,
}

#[derive(Clone)]
pub(super) struct VhostPlan {
    /// The Service label: the virtual host's name without `:PORT`.
    pub service: Arc<str>,
    pub domains: Vec<Domain>,
    pub rules: Vec<RulePlan>,
}

/// A virtual host domain, normalized: lower case, no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Domain {
    /// `*`: every authority no other domain takes.
    Any,
    Host(String, Option<u16>),
}

#[derive(Clone)]
pub(super) struct RulePlan {
    pub label: Arc<str>,
    pub matcher: Matcher,
    /// (cluster name, weight)
    pub backends: Vec<(String, u32)>,
    pub timeout: Option<Duration>,
    /// The route set its timeout (not Envoy's 15 s default): the timeout is
    /// then a deadline worth handing upstream.
    pub timeout_set: bool,
    /// The rule's TrafficPolicy (route metadata): its JSON and settings.
    pub policy: Option<(String, RouteSettings)>,
}

impl RoutesPlan {
    /// Every cluster a rule sends to.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.vhosts
            .iter()
            .flat_map(|v| &v.rules)
            .flat_map(|r| &r.backends)
            .map(|(c, _)| c.as_str())
    }
}

pub(super) fn parse_route_config(rc: &RouteConfiguration) -> Result<RoutesPlan, String> {
    let mut seen = std::collections::HashSet::new();
    let mut vhosts = Vec::with_capacity(rc.virtual_hosts.len());
    for vh in &rc.virtual_hosts {
        let plan = parse_vhost(vh).map_err(|e| format!("virtual host {:?}: {e}", vh.name))?;
        for d in &plan.domains {
            if !seen.insert(d.clone()) {
                return Err(format!(
                    "virtual host {:?}: domain {d:?} is also in another virtual host",
                    vh.name
                ));
            }
        }
        vhosts.push(plan);
    }
    Ok(RoutesPlan { vhosts })
}

fn parse_vhost(vh: &VirtualHost) -> Result<VhostPlan, String> {
    let domains = vh
        .domains
        .iter()
        .map(|d| parse_domain(d))
        .collect::<Result<Vec<_>, _>>()?;
    let rules = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            parse_route(r, i).map_err(|e| {
                if r.name.is_empty() {
                    format!("route {i}: {e}")
                } else {
                    format!("route {i} ({}): {e}", r.name)
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(VhostPlan {
        service: strip_port(&vh.name).into(),
        domains,
        rules,
    })
}

/// `catalog.default:8080` -> `catalog.default`.
pub(super) fn strip_port(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((n, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => name,
    }
}

fn parse_domain(d: &str) -> Result<Domain, String> {
    if d == "*" {
        return Ok(Domain::Any);
    }
    if d.is_empty() || d.contains('*') {
        return Err(format!(
            "domain {d:?}: weft matches exact domains and `*` only"
        ));
    }
    let (host, port) = super::split_host_port(d);
    Ok(Domain::Host(host.to_ascii_lowercase(), port))
}

fn parse_route(r: &Route, index: usize) -> Result<RulePlan, String> {
    let action = match &r.action {
        Some(route::Action::Route(a)) => a,
        Some(other) => {
            let what = match other {
                route::Action::Redirect(_) => "redirect",
                route::Action::DirectResponse(_) => "direct_response",
                route::Action::FilterAction(_) => "filter_action",
                route::Action::NonForwardingAction(_) => "non_forwarding_action",
                route::Action::Route(_) => unreachable!(),
            };
            return Err(format!("action {what} is not supported (only `route`)"));
        }
        None => return Err("no action".into()),
    };
    let m = r.r#match.as_ref().ok_or("no match")?;
    let label: Arc<str> = if r.name.is_empty() {
        format!("#{index}").into()
    } else {
        r.name.as_str().into()
    };
    let policy = match policy_json(r.metadata.as_ref())? {
        Some(json) => {
            let sections = parse_sections(&json)?;
            let settings = RouteSettings::new(&sections)
                .map_err(|e| format!("metadata {POLICY_METADATA_KEY:?}: {e}"))?;
            Some((json, settings))
        }
        None => None,
    };
    Ok(RulePlan {
        label,
        matcher: parse_match(m)?,
        backends: parse_backends(action)?,
        timeout: parse_timeout(action)?,
        timeout_set: action.timeout.is_some(),
        policy,
    })
}

fn parse_match(m: &RouteMatch) -> Result<Matcher, String> {
    use route_match::PathSpecifier;
    if m.case_sensitive.as_ref().is_some_and(|c| !c.value) {
        return Err("case-insensitive path matching is not supported".into());
    }
    let unsupported = [
        (m.runtime_fraction.is_some(), "runtime_fraction"),
        (!m.query_parameters.is_empty(), "query_parameters"),
        (!m.cookies.is_empty(), "cookies"),
        (m.grpc.is_some(), "grpc"),
        (m.tls_context.is_some(), "tls_context"),
        (!m.dynamic_metadata.is_empty(), "dynamic_metadata"),
        (!m.filter_state.is_empty(), "filter_state"),
    ];
    if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
        return Err(format!("match.{field} is not supported"));
    }
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatcher::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatcher::Exact(p.clone()),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            let v = p.trim_end_matches('/');
            PathMatcher::Segments(if v.is_empty() { "/".into() } else { v.into() })
        }
        Some(PathSpecifier::SafeRegex(r)) => PathMatcher::Regex(
            PathMatcher::regex(&r.regex).map_err(|e| format!("path regex: {e}"))?,
        ),
        Some(PathSpecifier::ConnectMatcher(_)) => {
            return Err("connect_matcher is not supported".into());
        }
        Some(PathSpecifier::PathMatchPolicy(_)) => {
            return Err("path_match_policy is not supported".into());
        }
        None => return Err("match has no path specifier".into()),
    };
    let mut method = None;
    let mut headers = Vec::new();
    for h in &m.headers {
        let err = |e: String| format!("header matcher {:?}: {e}", h.name);
        if h.name == ":method" {
            method = Some(parse_method(h).map_err(err)?);
        } else if h.name.starts_with(':') {
            return Err(err(
                "pseudo-headers other than :method are not supported".into()
            ));
        } else {
            headers.push(parse_header(h).map_err(err)?);
        }
    }
    Ok(Matcher::new(path, headers, method))
}

fn parse_method(h: &PbHeaderMatcher) -> Result<http::Method, String> {
    use header_matcher::HeaderMatchSpecifier as S;
    #[allow(deprecated)]
    let value = match &h.header_match_specifier {
        Some(S::ExactMatch(v)) => v,
        Some(S::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(v)),
            ignore_case: false,
        })) => v,
        _ => return Err("only an exact, case-sensitive method is supported".into()),
    };
    if h.invert_match {
        return Err("an inverted method match is not supported".into());
    }
    value
        .parse()
        .map_err(|_| format!("{value:?} is not an HTTP method"))
}

fn parse_header(h: &PbHeaderMatcher) -> Result<HeaderMatcher, String> {
    use header_matcher::HeaderMatchSpecifier as S;
    let name = http::HeaderName::from_bytes(h.name.as_bytes())
        .map_err(|_| "not a valid header name".to_string())?;
    let regex = |r: &str| {
        PathMatcher::regex(r)
            .map(ValueMatcher::Regex)
            .map_err(|e| format!("regex: {e}"))
    };
    #[allow(deprecated)]
    let value = match &h.header_match_specifier {
        None => ValueMatcher::Present,
        Some(S::PresentMatch(true)) => ValueMatcher::Present,
        Some(S::PresentMatch(false)) => {
            return Ok(HeaderMatcher::new(
                name,
                ValueMatcher::Present,
                !h.invert_match,
            ));
        }
        Some(S::ExactMatch(v)) => ValueMatcher::Exact(v.clone()),
        Some(S::PrefixMatch(v)) => ValueMatcher::Prefix(v.clone()),
        Some(S::SuffixMatch(v)) => ValueMatcher::Suffix(v.clone()),
        Some(S::ContainsMatch(v)) => ValueMatcher::Contains(v.clone()),
        Some(S::SafeRegexMatch(r)) => regex(&r.regex)?,
        Some(S::StringMatch(s)) => {
            if s.ignore_case {
                return Err("ignore_case is not supported".into());
            }
            use string_matcher::MatchPattern as P;
            match &s.match_pattern {
                Some(P::Exact(v)) => ValueMatcher::Exact(v.clone()),
                Some(P::Prefix(v)) => ValueMatcher::Prefix(v.clone()),
                Some(P::Suffix(v)) => ValueMatcher::Suffix(v.clone()),
                Some(P::Contains(v)) => ValueMatcher::Contains(v.clone()),
                Some(P::SafeRegex(r)) => regex(&r.regex)?,
                Some(P::Custom(_)) => return Err("custom string matchers are not supported".into()),
                None => return Err("string_match without a pattern".into()),
            }
        }
        Some(S::RangeMatch(_)) => return Err("range_match is not supported".into()),
    };
    Ok(HeaderMatcher::new(name, value, h.invert_match))
}

fn parse_backends(a: &RouteAction) -> Result<Vec<(String, u32)>, String> {
    use route_action::ClusterSpecifier as C;
    let rewrites = [
        (!a.prefix_rewrite.is_empty(), "prefix_rewrite"),
        (a.regex_rewrite.is_some(), "regex_rewrite"),
        (a.path_rewrite_policy.is_some(), "path_rewrite_policy"),
        (!a.path_rewrite.is_empty(), "path_rewrite"),
        (a.host_rewrite_specifier.is_some(), "host rewriting"),
    ];
    if let Some((_, field)) = rewrites.iter().find(|(set, _)| *set) {
        return Err(format!("{field} is not supported"));
    }
    match &a.cluster_specifier {
        Some(C::Cluster(name)) if !name.is_empty() => Ok(vec![(name.clone(), 1)]),
        Some(C::WeightedClusters(w)) => {
            let mut out = Vec::with_capacity(w.clusters.len());
            for c in &w.clusters {
                if c.name.is_empty() {
                    return Err(
                        "a weighted cluster without a name (cluster_header is not supported)"
                            .into(),
                    );
                }
                out.push((c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)));
            }
            if out.iter().all(|(_, w)| *w == 0) {
                return Err("weighted_clusters: every weight is 0".into());
            }
            Ok(out)
        }
        Some(C::Cluster(_)) | None => Err("no cluster".into()),
        Some(_) => Err("only `cluster` and `weighted_clusters` are supported".into()),
    }
}

/// `timeout`: absent means Envoy's default (15 s), `0s` means none.
fn parse_timeout(a: &RouteAction) -> Result<Option<Duration>, String> {
    match &a.timeout {
        None => Ok(Some(ENVOY_DEFAULT_TIMEOUT)),
        Some(d) => {
            let d = duration(d).ok_or("timeout is negative")?;
            Ok((!d.is_zero()).then_some(d))
        }
    }
}

pub(super) fn duration(
    d: &weft_xds::envoy_types::pb::google::protobuf::Duration,
) -> Option<Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(Duration::new(secs, nanos))
}
