//! TrafficPolicy across documents: every target exists (and its
//! `sectionName` names a route rule or a Service port), no two policies set
//! the same section on the same target, and the merge that gives the
//! sections in force for some traffic.

use super::*;
use crate::error::ConfigError;
use crate::load::Documents;
use crate::references::with_doc;
use crate::{Config, GrpcRoute, HttpRoute};

fn find_route<'a, T>(
    list: &'a [T],
    key: impl Fn(&T) -> (&str, &str),
    ns: &str,
    name: &str,
) -> Option<&'a T> {
    list.iter().find(|r| key(r) == (ns, name))
}

fn http_route<'a>(config: &'a Config, ns: &str, name: &str) -> Option<&'a HttpRoute> {
    find_route(
        &config.http_routes,
        |r| (r.namespace.as_str(), r.name.as_str()),
        ns,
        name,
    )
}

fn grpc_route<'a>(config: &'a Config, ns: &str, name: &str) -> Option<&'a GrpcRoute> {
    find_route(
        &config.grpc_routes,
        |r| (r.namespace.as_str(), r.name.as_str()),
        ns,
        name,
    )
}

pub(crate) fn check_policies(config: &Config, docs: &Documents, errors: &mut Vec<ConfigError>) {
    for (index, policy) in config.traffic_policies.iter().enumerate() {
        let ns = policy.namespace.as_str();
        with_doc(docs, errors, "TrafficPolicy", ns, &policy.name, |p| {
            for (i, t) in policy.target_refs.iter().enumerate() {
                let field = format!("spec.targetRefs[{i}]");
                let kind = t.kind.as_str();
                // The names a sectionName may take, or None if the target is missing.
                let sections: Option<Vec<Option<&str>>> = match t.kind {
                    PolicyTargetKind::Service => config
                        .service(ns, &t.name)
                        .map(|s| s.ports.iter().map(|p| p.name.as_deref()).collect()),
                    PolicyTargetKind::HTTPRoute => http_route(config, ns, &t.name)
                        .map(|r| r.rules.iter().map(|r| r.name.as_deref()).collect()),
                    PolicyTargetKind::GRPCRoute => grpc_route(config, ns, &t.name)
                        .map(|r| r.rules.iter().map(|r| r.name.as_deref()).collect()),
                };
                let Some(sections) = sections else {
                    if !docs.is_broken(kind, ns, &t.name) {
                        p.add(
                            format!("{field}.name"),
                            format!("{kind} {ns}/{} does not exist", t.name),
                        );
                    }
                    continue;
                };
                if let Some(section) = &t.section_name
                    && !sections.contains(&Some(section.as_str()))
                {
                    let what = if t.kind == PolicyTargetKind::Service {
                        "port"
                    } else {
                        "rule"
                    };
                    let named: Vec<&str> = sections.iter().flatten().copied().collect();
                    p.add(
                        format!("{field}.sectionName"),
                        format!(
                            "{kind} {ns}/{} has no {what} named {section:?} (named {what}s: {})",
                            t.name,
                            if named.is_empty() {
                                "none".to_owned()
                            } else {
                                named.join(", ")
                            }
                        ),
                    );
                }
                // An earlier policy setting a section this one sets, on the
                // same target.
                for other in &config.traffic_policies[..index] {
                    if other.namespace != policy.namespace || !other.target_refs.contains(t) {
                        continue;
                    }
                    let theirs = other.sections.set_names();
                    let both: Vec<&str> = policy
                        .sections
                        .set_names()
                        .into_iter()
                        .filter(|s| theirs.contains(s))
                        .collect();
                    if !both.is_empty() {
                        p.add(
                            field.clone(),
                            format!(
                                "TrafficPolicy {ns}/{} already sets {} on {kind} {}{}: one policy per section and target",
                                other.name,
                                both.join(", "),
                                t.name,
                                t.section_name.as_deref().map(|s| format!(" (section {s})")).unwrap_or_default()
                            ),
                        );
                    }
                }
            }
        });
    }
}

/// Traffic the policies may apply to: a Service, and the route rule that
/// matched (if any).
#[derive(Debug, Clone, Copy)]
pub struct PolicyScope<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    /// The Service port's name, when it has one.
    pub port_name: Option<&'a str>,
    /// (kind, route name, rule name) of the route rule that matched.
    pub route: Option<(PolicyTargetKind, &'a str, Option<&'a str>)>,
}

impl Config {
    /// The policy sections in force for traffic in `scope`, most specific
    /// first: the route rule's, the route's, the Service port's, the
    /// Service's; each section from the first level that sets it.
    pub fn effective_policy(&self, scope: PolicyScope<'_>) -> EffectivePolicy {
        let mut levels: Vec<(PolicyTargetKind, &str, Option<&str>)> = Vec::new();
        if let Some((kind, route, rule)) = scope.route {
            if rule.is_some() {
                levels.push((kind, route, rule));
            }
            levels.push((kind, route, None));
        }
        if scope.port_name.is_some() {
            levels.push((PolicyTargetKind::Service, scope.service, scope.port_name));
        }
        levels.push((PolicyTargetKind::Service, scope.service, None));
        let mut out = EffectivePolicy::default();
        for (kind, name, section) in levels {
            for policy in self.traffic_policies.iter().filter(|p| {
                p.namespace == scope.namespace
                    && p.target_refs.iter().any(|t| {
                        t.kind == kind && t.name == name && t.section_name.as_deref() == section
                    })
            }) {
                let before = out.sections.set_names();
                out.sections = out.sections.or(&policy.sections);
                for s in out.sections.set_names() {
                    if !before.contains(&s) {
                        out.sources
                            .push((s, format!("{}/{}", policy.namespace, policy.name)));
                    }
                }
            }
        }
        out
    }
}
