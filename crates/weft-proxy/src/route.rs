//! Route tables: the compiled form of the HTTPRoutes attached to one Service
//! port, ordered by Gateway API precedence, and the request matching on them.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use regex::Regex;
use weft_model::{HeaderMatchType, HttpRouteMatch, PathMatchType};
use weft_policy::balance::{Balance, WeightedRoundRobin};

use crate::metrics::RouteStats;
use crate::snapshot::Cluster;

/// The rules for one Service port, most specific first.
pub struct RouteTable {
    /// `name.namespace` of the Service the table belongs to (metric label).
    pub service: Arc<str>,
    pub rules: Vec<Rule>,
}

/// One match condition set of one route rule, with where its traffic goes.
pub struct Rule {
    /// `route/index` of the rule (metric label), or `default`.
    pub label: Arc<str>,
    pub matcher: Matcher,
    pub backends: Vec<Arc<Cluster>>,
    pub split: WeightedRoundRobin,
    pub timeout: Option<Duration>,
    pub stats: RouteStats,
}

impl Rule {
    /// The backend Service this request goes to (weighted split).
    pub fn pick_backend(&self) -> Option<&Arc<Cluster>> {
        self.split.pick().map(|i| &self.backends[i])
    }
}

impl RouteTable {
    /// The first rule, in precedence order, whose match holds.
    pub fn find(&self, req: &Parts) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matcher.matches(req))
    }
}

pub enum PathMatcher {
    Exact(String),
    /// Element-wise prefix, without trailing slash (`/` matches everything).
    Prefix(String),
    Regex(Regex),
}

pub struct HeaderMatcher {
    name: http::HeaderName,
    value: ValueMatcher,
}

enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

pub struct Matcher {
    path: PathMatcher,
    headers: Vec<HeaderMatcher>,
    method: Option<http::Method>,
}

impl Matcher {
    /// Compiles a validated match. Validation already checked regexes and
    /// names, so failures here are bugs; they compile to a never-matching rule
    /// rather than a panic.
    pub fn compile(m: &HttpRouteMatch) -> Self {
        let anchored = |v: &str| {
            Regex::new(&format!("^(?:{v})$"))
                .unwrap_or_else(|_| Regex::new("$^").expect("static regex"))
        };
        let path = match m.path.kind {
            PathMatchType::Exact => PathMatcher::Exact(m.path.value.clone()),
            PathMatchType::PathPrefix => {
                let v = m.path.value.trim_end_matches('/');
                PathMatcher::Prefix(if v.is_empty() { "/".into() } else { v.into() })
            }
            PathMatchType::RegularExpression => PathMatcher::Regex(anchored(&m.path.value)),
        };
        let headers = m
            .headers
            .iter()
            .filter_map(|h| {
                let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                let value = match h.kind {
                    HeaderMatchType::Exact => ValueMatcher::Exact(h.value.clone()),
                    HeaderMatchType::RegularExpression => ValueMatcher::Regex(anchored(&h.value)),
                };
                Some(HeaderMatcher { name, value })
            })
            .collect();
        let method = m.method.as_deref().and_then(|s| s.parse().ok());
        Self {
            path,
            headers,
            method,
        }
    }

    /// Gateway API precedence: exact path, then longer prefixes, then method,
    /// then more header matches. Lower sorts first.
    pub fn precedence(&self) -> (u8, std::cmp::Reverse<usize>, bool, std::cmp::Reverse<usize>) {
        let (kind, len) = match &self.path {
            PathMatcher::Exact(p) => (0, p.len()),
            PathMatcher::Prefix(p) => (1, p.len()),
            PathMatcher::Regex(r) => (2, r.as_str().len()),
        };
        (
            kind,
            std::cmp::Reverse(len),
            self.method.is_none(),
            std::cmp::Reverse(self.headers.len()),
        )
    }

    pub fn matches(&self, req: &Parts) -> bool {
        if let Some(m) = &self.method
            && *m != req.method
        {
            return false;
        }
        let path = req.uri.path();
        let path_ok = match &self.path {
            PathMatcher::Exact(p) => path == p,
            PathMatcher::Prefix(p) => {
                p == "/"
                    || (path.starts_with(p.as_str())
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatcher::Regex(r) => r.is_match(path),
        };
        path_ok
            && self.headers.iter().all(|h| {
                req.headers.get_all(&h.name).iter().any(|v| {
                    let Ok(v) = v.to_str() else { return false };
                    match &h.value {
                        ValueMatcher::Exact(e) => v == e,
                        ValueMatcher::Regex(r) => r.is_match(v),
                    }
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_model::{HeaderMatch, PathMatch};

    fn m(kind: PathMatchType, value: &str) -> Matcher {
        Matcher::compile(&HttpRouteMatch {
            path: PathMatch {
                kind,
                value: value.into(),
            },
            headers: vec![],
            method: None,
        })
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn prefixes_match_whole_path_segments() {
        let p = m(PathMatchType::PathPrefix, "/api/");
        assert!(p.matches(&req("GET", "/api", &[])));
        assert!(p.matches(&req("GET", "/api/items?x=1", &[])));
        assert!(!p.matches(&req("GET", "/apix", &[])));
        assert!(m(PathMatchType::PathPrefix, "/").matches(&req("GET", "/anything", &[])));
    }

    #[test]
    fn exact_and_regex_paths() {
        assert!(m(PathMatchType::Exact, "/a").matches(&req("GET", "/a", &[])));
        assert!(!m(PathMatchType::Exact, "/a").matches(&req("GET", "/a/", &[])));
        let r = m(PathMatchType::RegularExpression, "/items/[0-9]+");
        assert!(r.matches(&req("GET", "/items/42", &[])));
        assert!(
            !r.matches(&req("GET", "/items/42/x", &[])),
            "regexes match the whole path"
        );
    }

    #[test]
    fn headers_and_method_must_all_hold() {
        let mt = Matcher::compile(&HttpRouteMatch {
            path: PathMatch {
                kind: PathMatchType::PathPrefix,
                value: "/".into(),
            },
            headers: vec![
                HeaderMatch {
                    kind: HeaderMatchType::Exact,
                    name: "x-canary".into(),
                    value: "yes".into(),
                },
                HeaderMatch {
                    kind: HeaderMatchType::RegularExpression,
                    name: "x-user".into(),
                    value: "u[0-9]".into(),
                },
            ],
            method: Some("POST".into()),
        });
        assert!(mt.matches(&req("POST", "/", &[("X-Canary", "yes"), ("x-user", "u7")])));
        assert!(!mt.matches(&req("GET", "/", &[("x-canary", "yes"), ("x-user", "u7")])));
        assert!(!mt.matches(&req("POST", "/", &[("x-canary", "no"), ("x-user", "u7")])));
        assert!(!mt.matches(&req("POST", "/", &[("x-canary", "yes")])));
    }

    #[test]
    fn precedence_orders_specific_first() {
        let mut v = [
            m(PathMatchType::PathPrefix, "/"),
            m(PathMatchType::PathPrefix, "/api"),
            m(PathMatchType::Exact, "/api/x"),
        ];
        v.sort_by_key(|m| m.precedence());
        let kinds: Vec<_> = v.iter().map(|m| m.precedence().0).collect();
        assert_eq!(kinds, [0, 1, 1]);
        assert!(matches!(&v[1].path, PathMatcher::Prefix(p) if p == "/api"));
    }
}
