//! Gateway API `GRPCRoute` (`gateway.networking.k8s.io/v1`), attached to a
//! Service (GAMMA) or a Gateway: matches on gRPC service and method and on
//! headers, weighted `backendRefs`.
//!
//! A gRPC method is the HTTP/2 path `/SERVICE/METHOD`, so every match has an
//! exact HTTP equivalent ([`GrpcRouteMatch::to_http`]): that is how Envoy,
//! proxyless gRPC clients and weft proxies all apply GRPCRoutes.

use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::route::common::{
    BackendRefSpec, HeaderSpec, ParentRefSpec, check_regex, validate_backends, validate_headers,
    validate_parents,
};
use crate::{BackendRef, HeaderMatch, HttpRouteMatch, ParentRef, PathMatch, PathMatchType};

/// A validated GRPCRoute.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrpcRoute {
    pub name: String,
    pub namespace: String,
    pub parent_refs: Vec<ParentRef>,
    /// Gateway parents only, as for HTTPRoute.
    pub hostnames: Vec<String>,
    pub rules: Vec<GrpcRouteRule>,
}

/// Requests matching any of `matches` go to `backend_refs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrpcRouteRule {
    pub name: Option<String>,
    /// Never empty: an absent list means every request.
    pub matches: Vec<GrpcRouteMatch>,
    pub backend_refs: Vec<BackendRef>,
}

/// All conditions must hold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrpcRouteMatch {
    /// `None`: every service and method.
    pub method: Option<GrpcMethodMatch>,
    pub headers: Vec<HeaderMatch>,
}

/// A gRPC service and/or method; at least one is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrpcMethodMatch {
    pub kind: GrpcMethodMatchType,
    /// Fully qualified service (`pkg.Service`); `None` matches any.
    pub service: Option<String>,
    /// Method name; `None` matches any.
    pub method: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum GrpcMethodMatchType {
    Exact,
    RegularExpression,
}

impl GrpcRouteMatch {
    /// The same condition on the HTTP/2 request: service and method exact ->
    /// path `/SERVICE/METHOD`; service only -> prefix `/SERVICE/`; method
    /// only or regular expressions -> a path regex; no method -> every path.
    pub fn to_http(&self) -> HttpRouteMatch {
        let path = match &self.method {
            None => PathMatch::root(),
            Some(m) => m.to_path(),
        };
        HttpRouteMatch {
            path,
            headers: self.headers.clone(),
            method: None,
        }
    }

    /// GRPCRoute precedence within a parent (lower first): more characters
    /// in the matched service, then in the method, then more header matches.
    pub(crate) fn precedence(&self) -> crate::table::GrpcPrecedence {
        use std::cmp::Reverse;
        let len = |s: Option<&String>| s.map_or(0, String::len);
        let (service, method) = self.method.as_ref().map_or((0, 0), |m| {
            (len(m.service.as_ref()), len(m.method.as_ref()))
        });
        (
            Reverse(service),
            Reverse(method),
            Reverse(self.headers.len()),
        )
    }
}

impl GrpcMethodMatch {
    fn to_path(&self) -> PathMatch {
        let (kind, value) = match (self.kind, &self.service, &self.method) {
            (GrpcMethodMatchType::Exact, Some(s), Some(m)) => {
                (PathMatchType::Exact, format!("/{s}/{m}"))
            }
            (GrpcMethodMatchType::Exact, Some(s), None) => {
                (PathMatchType::PathPrefix, format!("/{s}/"))
            }
            // Validation restricts exact names to [A-Za-z0-9_.]: no escaping.
            (GrpcMethodMatchType::Exact, None, m) => (
                PathMatchType::RegularExpression,
                format!("/[^/]+/{}", m.as_deref().unwrap_or("[^/]+")),
            ),
            (GrpcMethodMatchType::RegularExpression, s, m) => {
                let part = |p: &Option<String>| {
                    p.as_ref()
                        .map_or_else(|| "[^/]+".to_string(), |p| format!("(?:{p})"))
                };
                (
                    PathMatchType::RegularExpression,
                    format!("/{}/{}", part(s), part(m)),
                )
            }
        };
        PathMatch { kind, value }
    }
}

// ---- the spec as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct GrpcRouteSpec {
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSpec {
    #[serde(default)]
    method: Option<MethodSpec>,
    #[serde(default)]
    headers: Vec<HeaderSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodSpec {
    #[serde(default, rename = "type")]
    kind: Option<GrpcMethodMatchType>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    method: Option<String>,
}

impl GrpcRouteSpec {
    pub(crate) fn validate(
        self,
        name: String,
        namespace: String,
        p: &mut Problems<'_>,
    ) -> GrpcRoute {
        let (parent_refs, hostnames) = validate_parents(
            "a GRPCRoute",
            self.parent_refs,
            self.hostnames,
            &namespace,
            p,
        );
        if self.rules.is_empty() {
            p.add("spec.rules", "a GRPCRoute needs at least one rule");
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.into_iter().enumerate() {
            let field = format!("spec.rules[{i}]");
            let mut matches: Vec<GrpcRouteMatch> = r
                .matches
                .into_iter()
                .enumerate()
                .map(|(j, m)| GrpcRouteMatch {
                    method: m
                        .method
                        .map(|ms| ms.validate(&format!("{field}.matches[{j}].method"), p)),
                    headers: validate_headers(m.headers, &format!("{field}.matches[{j}]"), p),
                })
                .collect();
            if matches.is_empty() {
                matches.push(GrpcRouteMatch {
                    method: None,
                    headers: Vec::new(),
                });
            }
            rules.push(GrpcRouteRule {
                name: r.name,
                matches,
                backend_refs: validate_backends(r.backend_refs, &field, &namespace, p),
            });
        }
        GrpcRoute {
            name,
            namespace,
            parent_refs,
            hostnames,
            rules,
        }
    }
}

impl MethodSpec {
    fn validate(self, field: &str, p: &mut Problems<'_>) -> GrpcMethodMatch {
        let kind = self.kind.unwrap_or(GrpcMethodMatchType::Exact);
        let service = self.service.filter(|s| !s.is_empty());
        let method = self.method.filter(|m| !m.is_empty());
        if service.is_none() && method.is_none() {
            p.add(field, "set service, method or both");
        }
        for (what, value) in [("service", &service), ("method", &method)] {
            let Some(value) = value else { continue };
            let f = format!("{field}.{what}");
            match kind {
                GrpcMethodMatchType::RegularExpression => check_regex(value, f, p),
                GrpcMethodMatchType::Exact if what == "service" && !is_service_name(value) => p
                    .add(
                        f,
                        format!("{value:?} is not a gRPC service name (e.g. \"pkg.Service\")"),
                    ),
                GrpcMethodMatchType::Exact if what == "method" && !is_identifier(value) => p.add(
                    f,
                    format!("{value:?} is not a gRPC method name (letters, digits, '_')"),
                ),
                GrpcMethodMatchType::Exact => {}
            }
        }
        GrpcMethodMatch {
            kind,
            service,
            method,
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn is_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Dot-separated identifiers, optionally with a leading dot (Gateway API's
/// service name pattern).
fn is_service_name(s: &str) -> bool {
    s.strip_prefix('.')
        .unwrap_or(s)
        .split('.')
        .all(is_identifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: GrpcMethodMatchType, s: Option<&str>, meth: Option<&str>) -> GrpcRouteMatch {
        GrpcRouteMatch {
            method: Some(GrpcMethodMatch {
                kind,
                service: s.map(Into::into),
                method: meth.map(Into::into),
            }),
            headers: Vec::new(),
        }
    }

    #[test]
    fn methods_become_http2_paths() {
        use GrpcMethodMatchType::*;
        let path = |g: GrpcRouteMatch| {
            let p = g.to_http().path;
            (p.kind, p.value)
        };
        assert_eq!(
            path(m(Exact, Some("weft.test.Echo"), Some("Unary"))),
            (PathMatchType::Exact, "/weft.test.Echo/Unary".into())
        );
        assert_eq!(
            path(m(Exact, Some("weft.test.Echo"), None)),
            (PathMatchType::PathPrefix, "/weft.test.Echo/".into())
        );
        assert_eq!(
            path(m(Exact, None, Some("Unary"))),
            (PathMatchType::RegularExpression, "/[^/]+/Unary".into())
        );
        assert_eq!(
            path(m(RegularExpression, Some("weft\\..*"), None)),
            (
                PathMatchType::RegularExpression,
                "/(?:weft\\..*)/[^/]+".into()
            )
        );
        let all = GrpcRouteMatch {
            method: None,
            headers: Vec::new(),
        };
        assert_eq!(all.to_http(), HttpRouteMatch::everything());
        // The regex forms match what they should, whole-path.
        let re = |g: GrpcRouteMatch| {
            regex::Regex::new(&format!("^(?:{})$", g.to_http().path.value)).unwrap()
        };
        let r = re(m(Exact, None, Some("Unary")));
        assert!(r.is_match("/weft.test.Echo/Unary") && !r.is_match("/a/b/Unary"));
    }

    #[test]
    fn precedence_is_service_then_method_then_headers() {
        use GrpcMethodMatchType::Exact;
        let mut v = [
            m(Exact, None, Some("Unary")),
            m(Exact, Some("a.B"), None),
            m(Exact, Some("a.B"), Some("Unary")),
            GrpcRouteMatch {
                method: None,
                headers: Vec::new(),
            },
        ];
        v.sort_by_key(GrpcRouteMatch::precedence);
        let paths: Vec<String> = v.iter().map(|g| g.to_http().path.value).collect();
        assert_eq!(paths, ["/a.B/Unary", "/a.B/", "/[^/]+/Unary", "/"]);
    }

    #[test]
    fn names_follow_gateway_api_patterns() {
        assert!(is_service_name("weft.test.Echo") && is_service_name(".a_b.C1"));
        assert!(!is_service_name("a..b") && !is_service_name("a/b") && !is_service_name("1a"));
        assert!(is_identifier("Unary") && !is_identifier("Un.ary") && !is_identifier(""));
    }
}
