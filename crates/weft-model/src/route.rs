//! Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`) attached to a
//! Service (GAMMA: `parentRefs: [{kind: Service, name}]`): matches on path,
//! headers and method, weighted `backendRefs` and a request timeout.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::parse_duration;
use crate::error::Problems;

/// A validated HTTPRoute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpRoute {
    pub name: String,
    pub namespace: String,
    pub parent_refs: Vec<ParentRef>,
    pub rules: Vec<HttpRouteRule>,
}

/// The Service a route is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentRef {
    pub namespace: String,
    pub name: String,
    /// Only this port of the Service, when set.
    pub port: Option<u16>,
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

/// A weighted destination Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendRef {
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
    /// Relative share; 0 sends no traffic.
    pub weight: u32,
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
struct ParentRefSpec {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    section_name: Option<String>,
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
#[serde(deny_unknown_fields)]
struct HeaderSpec {
    #[serde(default, rename = "type")]
    kind: Option<HeaderMatchType>,
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BackendRefSpec {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TimeoutsSpec {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    backend_request: Option<String>,
}

const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn check_core_group(group: &Option<String>, field: String, p: &mut Problems<'_>) {
    if let Some(g) = group
        && !g.is_empty()
        && g != "core"
    {
        p.add(
            field,
            format!("group {g:?} is not supported; use \"\" (core) for a Service"),
        );
    }
}

fn check_regex(value: &str, field: String, p: &mut Problems<'_>) {
    if let Err(e) = regex::Regex::new(value) {
        p.add(field, format!("invalid regular expression: {e}"));
    }
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
        if self.parent_refs.is_empty() {
            p.add(
                "spec.parentRefs",
                "an HTTPRoute needs at least one parentRef (kind: Service)",
            );
        }
        if !self.hostnames.is_empty() {
            // GAMMA: hostnames are meaningless for routes bound to a Service.
            p.add(
                "spec.hostnames",
                "hostnames are not allowed on a route whose parent is a Service (GAMMA)",
            );
        }
        let mut parent_refs = Vec::new();
        for (i, pr) in self.parent_refs.into_iter().enumerate() {
            let field = format!("spec.parentRefs[{i}]");
            check_core_group(&pr.group, format!("{field}.group"), p);
            match pr.kind.as_deref() {
                Some("Service") => {}
                None | Some("Gateway") => p.add(
                    format!("{field}.kind"),
                    "only kind: Service parents are supported (set kind: Service)",
                ),
                Some(k) => p.add(
                    format!("{field}.kind"),
                    format!("unsupported parent kind {k:?}"),
                ),
            }
            if pr.section_name.is_some() {
                p.add(
                    format!("{field}.sectionName"),
                    "use port to select a Service port",
                );
            }
            parent_refs.push(ParentRef {
                namespace: pr.namespace.unwrap_or_else(|| namespace.clone()),
                name: pr.name,
                port: pr.port,
            });
        }
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
            matches.push(HttpRouteMatch {
                path: PathMatch {
                    kind: PathMatchType::PathPrefix,
                    value: "/".into(),
                },
                headers: Vec::new(),
                method: None,
            });
        }
        if self.backend_refs.is_empty() {
            p.add(
                format!("{field}.backendRefs"),
                "a rule needs at least one backendRef",
            );
        }
        let mut backend_refs = Vec::new();
        for (j, b) in self.backend_refs.into_iter().enumerate() {
            let bf = format!("{field}.backendRefs[{j}]");
            check_core_group(&b.group, format!("{bf}.group"), p);
            if let Some(k) = b.kind.as_deref()
                && k != "Service"
            {
                p.add(
                    format!("{bf}.kind"),
                    format!("unsupported backend kind {k:?} (use Service)"),
                );
            }
            let weight = match b.weight {
                None => 1,
                Some(w) if (0..=1_000_000).contains(&w) => w as u32,
                Some(w) => {
                    p.add(
                        format!("{bf}.weight"),
                        format!("weight {w} must be 0..1000000"),
                    );
                    0
                }
            };
            backend_refs.push(BackendRef {
                namespace: b.namespace.unwrap_or_else(|| namespace.to_string()),
                name: b.name,
                port: b.port,
                weight,
            });
        }
        if !backend_refs.is_empty() && backend_refs.iter().all(|b| b.weight == 0) {
            p.add(
                format!("{field}.backendRefs"),
                "all backend weights are 0: the rule could send nothing",
            );
        }
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
            None => PathMatch {
                kind: PathMatchType::PathPrefix,
                value: "/".into(),
            },
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
        let mut headers = Vec::new();
        for (k, h) in self.headers.into_iter().enumerate() {
            let hf = format!("{field}.headers[{k}]");
            if http_token(&h.name).is_none() {
                p.add(
                    format!("{hf}.name"),
                    format!("{:?} is not a valid header name", h.name),
                );
            }
            let kind = h.kind.unwrap_or(HeaderMatchType::Exact);
            if kind == HeaderMatchType::RegularExpression {
                check_regex(&h.value, format!("{hf}.value"), p);
            }
            headers.push(HeaderMatch {
                kind,
                name: h.name.to_ascii_lowercase(),
                value: h.value,
            });
        }
        let method = self.method.map(|m| {
            if !METHODS.contains(&m.as_str()) {
                p.add(
                    format!("{field}.method"),
                    format!("{m:?} is not one of {}", METHODS.join(", ")),
                );
            }
            m
        });
        HttpRouteMatch {
            path,
            headers,
            method,
        }
    }
}

/// `Some(name)` when `name` is a valid HTTP header token.
fn http_token(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    ok.then_some(name)
}
