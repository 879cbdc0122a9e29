//! SMI traffic splitting: `TrafficSplit` (`split.smi-spec.io/v1alpha4`) and
//! the `HTTPRouteGroup` (`specs.smi-spec.io/v1alpha4`) it may match on.
//!
//! A TrafficSplit means what an HTTPRoute attached to its root Service
//! means, and becomes the same internal routes ([`crate::RouteTable`]):
//!
//! - without `matches`: one rule, every request to the root Service split
//!   over `backends` by weight;
//! - with `matches`: one rule per HTTPRouteGroup match (the groups' matches
//!   merged, as SMI says), each split over `backends`, then a last rule
//!   sending every other request to the root Service itself (SMI: "routing
//!   will be handled by the Kubernetes service with the same name").
//!
//! SMI has no ports: a split applies to every HTTP port of the root
//! Service, and each backend is reached on the same port number (SMI:
//! "there must be a match between a port on the root service and a port on
//! every destination backend"); a backend lacking one is an error here
//! rather than silently left out. `pathRegex` is anchored at the start of
//! the path only (SMI), header values are whole-value regular expressions,
//! `methods` absent or `["*"]` means any method.
//!
//! One source of truth per Service: a TrafficSplit whose root Service also
//! has an HTTPRoute or GRPCRoute attached, or a second TrafficSplit for the
//! same root, is rejected.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::route::check_method;
use crate::route::common::{check_regex, check_weight, header_match};
use crate::{HeaderMatchType, HttpRouteMatch, PathMatch, PathMatchType};

/// The SMI traffic-split API group/version.
pub const SMI_SPLIT_API_VERSION: &str = "split.smi-spec.io/v1alpha4";
/// The SMI traffic-specs API group/version.
pub const SMI_SPECS_API_VERSION: &str = "specs.smi-spec.io/v1alpha4";
const SMI_SPECS_GROUP: &str = "specs.smi-spec.io";

/// A validated TrafficSplit. Every name is in the split's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficSplit {
    pub name: String,
    pub namespace: String,
    /// The root Service clients address.
    pub service: String,
    /// Never empty, not all weights 0.
    pub backends: Vec<SplitBackend>,
    /// Names of HTTPRouteGroups; empty: every request.
    pub matches: Vec<String>,
}

/// A Service taking a share of the root Service's traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitBackend {
    pub service: String,
    /// Relative share; 0 sends nothing.
    pub weight: u32,
}

/// A validated HTTPRouteGroup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpRouteGroup {
    pub name: String,
    pub namespace: String,
    pub matches: Vec<RouteGroupMatch>,
}

/// One named condition of an HTTPRouteGroup; all its parts must hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteGroupMatch {
    pub name: String,
    /// Matched from the start of the path.
    pub path_regex: Option<String>,
    /// Upper-case methods; empty means any.
    pub methods: Vec<String>,
    /// Lower-case header name -> whole-value regular expression.
    pub headers: BTreeMap<String, String>,
}

impl RouteGroupMatch {
    /// The same condition in the internal form: one match per method.
    pub fn to_http(&self) -> Vec<HttpRouteMatch> {
        let path = match &self.path_regex {
            Some(re) => PathMatch {
                kind: PathMatchType::RegularExpression,
                value: format!("(?:{re}).*"),
            },
            None => PathMatch::root(),
        };
        let headers: Vec<_> = self
            .headers
            .iter()
            .map(|(name, value)| crate::HeaderMatch {
                kind: HeaderMatchType::RegularExpression,
                name: name.clone(),
                value: value.clone(),
            })
            .collect();
        let methods: Vec<Option<String>> = if self.methods.is_empty() {
            vec![None]
        } else {
            self.methods.iter().cloned().map(Some).collect()
        };
        methods
            .into_iter()
            .map(|method| HttpRouteMatch {
                path: path.clone(),
                headers: headers.clone(),
                method,
            })
            .collect()
    }
}

// ---- the specs as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrafficSplitSpec {
    service: String,
    #[serde(default)]
    backends: Vec<BackendSpec>,
    #[serde(default)]
    matches: Vec<MatchRefSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSpec {
    service: String,
    weight: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MatchRefSpec {
    #[serde(default)]
    api_group: Option<String>,
    kind: String,
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HttpRouteGroupSpec {
    #[serde(default)]
    matches: Vec<GroupMatchSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GroupMatchSpec {
    name: String,
    #[serde(default)]
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Option<HeadersSpec>,
}

/// `headers` as a map (`{user-agent: ".*Firefox.*"}`, the traffic-specs
/// document) or a list of one-entry maps (`[{user-agent: ...}]`, as the
/// traffic-split document writes it).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HeadersSpec {
    Map(BTreeMap<String, String>),
    List(Vec<BTreeMap<String, String>>),
}

impl TrafficSplitSpec {
    pub(crate) fn validate(
        self,
        name: String,
        namespace: String,
        p: &mut Problems<'_>,
    ) -> TrafficSplit {
        if self.backends.is_empty() {
            p.add("spec.backends", "a TrafficSplit needs at least one backend");
        }
        let mut backends = Vec::with_capacity(self.backends.len());
        let mut seen = BTreeSet::new();
        for (i, b) in self.backends.into_iter().enumerate() {
            let field = format!("spec.backends[{i}]");
            if !seen.insert(b.service.clone()) {
                p.add(
                    format!("{field}.service"),
                    format!("duplicate backend {:?}", b.service),
                );
            }
            backends.push(SplitBackend {
                weight: check_weight(Some(b.weight), 1, &format!("{field}.weight"), p),
                service: b.service,
            });
        }
        if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
            p.add(
                "spec.backends",
                "all backend weights are 0: the split could send nothing",
            );
        }
        let mut matches = Vec::with_capacity(self.matches.len());
        for (i, m) in self.matches.into_iter().enumerate() {
            let field = format!("spec.matches[{i}]");
            if m.kind != "HTTPRouteGroup" {
                p.add(
                    format!("{field}.kind"),
                    format!("unsupported kind {:?} (use HTTPRouteGroup)", m.kind),
                );
            }
            if let Some(g) = m.api_group.as_deref()
                && g != SMI_SPECS_GROUP
            {
                p.add(
                    format!("{field}.apiGroup"),
                    format!("{g:?} is not supported; use {SMI_SPECS_GROUP:?}"),
                );
            }
            matches.push(m.name);
        }
        TrafficSplit {
            name,
            namespace,
            service: self.service,
            backends,
            matches,
        }
    }
}

impl HttpRouteGroupSpec {
    pub(crate) fn validate(
        self,
        name: String,
        namespace: String,
        p: &mut Problems<'_>,
    ) -> HttpRouteGroup {
        if self.matches.is_empty() {
            p.add("spec.matches", "an HTTPRouteGroup needs at least one match");
        }
        let mut names = BTreeSet::new();
        let mut matches = Vec::with_capacity(self.matches.len());
        for (i, m) in self.matches.into_iter().enumerate() {
            let field = format!("spec.matches[{i}]");
            if !names.insert(m.name.clone()) {
                p.add(
                    format!("{field}.name"),
                    format!("duplicate match name {:?}", m.name),
                );
            }
            if let Some(re) = &m.path_regex {
                check_regex(re, format!("{field}.pathRegex"), p);
            }
            let methods = if m.methods.iter().any(|x| x == "*") {
                Vec::new()
            } else {
                m.methods
                    .into_iter()
                    .enumerate()
                    .map(|(j, x)| check_method(x, &format!("{field}.methods[{j}]"), p))
                    .collect()
            };
            let pairs: Vec<(String, String)> = match m.headers {
                None => Vec::new(),
                Some(HeadersSpec::Map(h)) => h.into_iter().collect(),
                Some(HeadersSpec::List(l)) => l.into_iter().flatten().collect(),
            };
            let mut headers = BTreeMap::new();
            for (name, value) in pairs {
                let h = header_match(
                    HeaderMatchType::RegularExpression,
                    name,
                    value,
                    &format!("{field}.headers"),
                    p,
                );
                if headers.insert(h.name.clone(), h.value).is_some() {
                    p.add(
                        format!("{field}.headers"),
                        format!("header {:?} is listed twice", h.name),
                    );
                }
            }
            matches.push(RouteGroupMatch {
                name: m.name,
                path_regex: m.path_regex,
                methods,
                headers,
            });
        }
        HttpRouteGroup {
            name,
            namespace,
            matches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_matches_become_one_http_match_per_method() {
        let m = RouteGroupMatch {
            name: "api".into(),
            path_regex: Some("/api/.*".into()),
            methods: vec!["GET".into(), "HEAD".into()],
            headers: [("user-agent".to_string(), ".*iPhone.*".to_string())].into(),
        };
        let http = m.to_http();
        assert_eq!(http.len(), 2);
        assert_eq!(http[0].method.as_deref(), Some("GET"));
        assert_eq!(http[1].method.as_deref(), Some("HEAD"));
        assert_eq!(http[0].path.kind, PathMatchType::RegularExpression);
        assert_eq!(http[0].headers[0].kind, HeaderMatchType::RegularExpression);
        // Anchored at the start only, as SMI says.
        let re = regex::Regex::new(&format!("^(?:{})$", http[0].path.value)).unwrap();
        assert!(re.is_match("/api/x") && re.is_match("/api/x/y") && !re.is_match("/v1/api/x"));

        let any = RouteGroupMatch {
            name: "all".into(),
            path_regex: None,
            methods: Vec::new(),
            headers: BTreeMap::new(),
        };
        assert_eq!(any.to_http(), [HttpRouteMatch::everything()]);
    }
}
