//! Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`) attached to a
//! Service (GAMMA: `parentRefs: [{kind: Service, name}]`) or to a Gateway
//! (`{kind: Gateway, name, sectionName?, port?}`, with `hostnames`): matches
//! on path, headers and method, weighted `backendRefs` and a request timeout.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::error::Problems;

pub(crate) mod common;

pub use common::{BackendRef, ParentKind, ParentRef, hostname_intersection};
use common::{
    BackendRefSpec, HeaderSpec, METHODS, ParentRefSpec, check_regex, validate_backends,
    validate_headers, validate_parents,
};

/// A validated HTTPRoute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpRoute {
    pub name: String,
    pub namespace: String,
    pub parent_refs: Vec<ParentRef>,
    /// Gateway parents only: the `Host` names this route answers; empty
    /// means every host the listener accepts.
    pub hostnames: Vec<String>,
    pub rules: Vec<HttpRouteRule>,
}

/// One rule: requests matching any of `matches` go to `backend_refs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpRouteRule {
    pub name: Option<String>,
    /// Never empty: an absent list means "prefix /".
    pub matches: Vec<HttpRouteMatch>,
    pub backend_refs: Vec<BackendRef>,
    pub timeouts: HttpRouteTimeouts,
}

/// All conditions of one match must hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpRouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    /// Upper-case HTTP method.
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathMatch {
    pub kind: PathMatchType,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum PathMatchType {
    Exact,
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    pub kind: HeaderMatchType,
    /// Lower-case header name.
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum HeaderMatchType {
    Exact,
    RegularExpression,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HttpRouteTimeouts {
    /// Whole request-to-response deadline; `None` (or `0s` as written) means none.
    pub request: Option<Duration>,
}

// ---- the spec as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct HttpRouteSpec {
    #[serde(default)]
    parent_refs: Vec<ParentRefSpec>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<MatchSpec>,
    #[serde(default)]
    backend_refs: Vec<BackendRefSpec>,
    #[serde(default)]
    timeouts: Option<TimeoutsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MatchSpec {
    #[serde(default)]
    path: Option<PathSpec>,
    #[serde(default)]
    headers: Vec<HeaderSpec>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathSpec {
    #[serde(default, rename = "type")]
    kind: Option<PathMatchType>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TimeoutsSpec {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    backend_request: Option<String>,
}

impl HttpRouteSpec {
    /// Checks what can be checked inside this document (references to other
    /// documents are checked once everything is loaded).
    pub(crate) fn validate(
        self,
        name: String,
        namespace: String,
        p: &mut Problems<'_>,
    ) -> HttpRoute {
        let (parent_refs, hostnames) = validate_parents(
            "an HTTPRoute",
            self.parent_refs,
            self.hostnames,
            &namespace,
            p,
        );
        if self.rules.is_empty() {
            p.add("spec.rules", "an HTTPRoute needs at least one rule");
        }
        let rules = self
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.validate(&format!("spec.rules[{i}]"), &namespace, p))
            .collect();
        HttpRoute {
            name,
            namespace,
            parent_refs,
            hostnames,
            rules,
        }
    }
}

impl RuleSpec {
    fn validate(self, field: &str, namespace: &str, p: &mut Problems<'_>) -> HttpRouteRule {
        let mut matches: Vec<HttpRouteMatch> = self
            .matches
            .into_iter()
            .enumerate()
            .map(|(j, m)| m.validate(&format!("{field}.matches[{j}]"), p))
            .collect();
        if matches.is_empty() {
            matches.push(HttpRouteMatch::everything());
        }
        let backend_refs = validate_backends(self.backend_refs, field, namespace, p);
        let mut timeouts = HttpRouteTimeouts::default();
        if let Some(t) = self.timeouts {
            if let Some(r) = t.request {
                match parse_duration(&r) {
                    Ok(d) if d.is_zero() => {}
                    Ok(d) => timeouts.request = Some(d),
                    Err(e) => p.add(format!("{field}.timeouts.request"), e.to_string()),
                }
            }
            if t.backend_request.is_some() {
                p.add(
                    format!("{field}.timeouts.backendRequest"),
                    "backendRequest is not supported yet; use request",
                );
            }
        }
        HttpRouteRule {
            name: self.name,
            matches,
            backend_refs,
            timeouts,
        }
    }
}

impl MatchSpec {
    fn validate(self, field: &str, p: &mut Problems<'_>) -> HttpRouteMatch {
        let path = match self.path {
            None => PathMatch::root(),
            Some(ps) => {
                let kind = ps.kind.unwrap_or(PathMatchType::PathPrefix);
                let value = ps.value.unwrap_or_else(|| "/".into());
                match kind {
                    PathMatchType::RegularExpression => {
                        check_regex(&value, format!("{field}.path.value"), p)
                    }
                    _ if !value.starts_with('/') => p.add(
                        format!("{field}.path.value"),
                        format!("{value:?} must start with '/'"),
                    ),
                    _ => {}
                }
                PathMatch { kind, value }
            }
        };
        let headers = validate_headers(self.headers, field, p);
        let method = self
            .method
            .map(|m| check_method(m, &format!("{field}.method"), p));
        HttpRouteMatch {
            path,
            headers,
            method,
        }
    }
}

/// An HTTP method a match may name.
pub(crate) fn check_method(m: String, field: &str, p: &mut Problems<'_>) -> String {
    if !METHODS.contains(&m.as_str()) {
        p.add(field, format!("{m:?} is not one of {}", METHODS.join(", ")));
    }
    m
}

impl HttpRouteMatch {
    /// Every request: prefix `/`, no other condition.
    pub fn everything() -> HttpRouteMatch {
        HttpRouteMatch {
            path: PathMatch::root(),
            headers: Vec::new(),
            method: None,
        }
    }
}

impl PathMatch {
    /// Prefix `/`: every path.
    pub fn root() -> PathMatch {
        PathMatch {
            kind: PathMatchType::PathPrefix,
            value: "/".into(),
        }
    }
}
