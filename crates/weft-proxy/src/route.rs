//! Route tables: the rules of one virtual host (a Service port), in the
//! order the route configuration lists them (first match wins, as in Envoy;
//! `weft_xds::translate` orders them by Gateway API precedence), and the
//! request matching on them.

use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use regex::Regex;
use weft_policy::balance::{Balance, WeightedRoundRobin};

use crate::governed::RoutePolicy;
use crate::metrics::RouteStats;
use crate::snapshot::Cluster;

/// The rules for one Service port, in match order.
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
    /// Whether the config set `timeout` (else it is Envoy's default).
    pub timeout_set: bool,
    pub stats: RouteStats,
    /// Retries and hedging, when a TrafficPolicy asks for them.
    pub policy: Option<Arc<RoutePolicy>>,
}

impl Rule {
    /// The backend Service this request goes to (weighted split).
    pub fn pick_backend(&self) -> Option<&Arc<Cluster>> {
        self.split.pick().map(|i| &self.backends[i])
    }
}

impl RouteTable {
    /// The first rule whose match holds.
    pub fn find(&self, req: &Parts) -> Option<&Rule> {
        self.rules.iter().find(|r| r.matcher.matches(req))
    }
}

/// How a rule matches the request path (the query string never takes part).
#[derive(Clone)]
pub enum PathMatcher {
    /// The whole path.
    Exact(String),
    /// A plain string prefix (Envoy's `prefix`).
    Prefix(String),
    /// Whole path segments (Envoy's `path_separated_prefix`, Gateway API's
    /// `PathPrefix`): the path equals the prefix or continues with `/`.
    /// Stored without a trailing slash; `/` matches everything.
    Segments(String),
    /// The whole path matches (anchored).
    Regex(Regex),
}

impl PathMatcher {
    /// An anchored regex: it must match the whole value, as Envoy's
    /// `safe_regex` does.
    pub fn regex(pattern: &str) -> Result<Regex, regex::Error> {
        Regex::new(&format!("^(?:{pattern})$"))
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => path == p,
            PathMatcher::Prefix(p) => path.starts_with(p.as_str()),
            PathMatcher::Segments(p) => {
                p == "/"
                    || (path.starts_with(p.as_str())
                        && matches!(path.as_bytes().get(p.len()), None | Some(b'/')))
            }
            PathMatcher::Regex(r) => r.is_match(path),
        }
    }
}

/// A condition on one request header: some value of it matches (or, when
/// inverted, none does).
#[derive(Clone)]
pub struct HeaderMatcher {
    name: http::HeaderName,
    value: ValueMatcher,
    invert: bool,
}

impl HeaderMatcher {
    pub fn new(name: http::HeaderName, value: ValueMatcher, invert: bool) -> Self {
        Self {
            name,
            value,
            invert,
        }
    }

    fn matches(&self, req: &Parts) -> bool {
        let found = req.headers.get_all(&self.name).iter().any(|v| {
            let Ok(v) = v.to_str() else { return false };
            match &self.value {
                ValueMatcher::Present => true,
                ValueMatcher::Exact(e) => v == e,
                ValueMatcher::Prefix(p) => v.starts_with(p.as_str()),
                ValueMatcher::Suffix(s) => v.ends_with(s.as_str()),
                ValueMatcher::Contains(c) => v.contains(c.as_str()),
                ValueMatcher::Regex(r) => r.is_match(v),
            }
        });
        found != self.invert
    }
}

/// How a header value must look.
#[derive(Clone)]
pub enum ValueMatcher {
    /// Any value.
    Present,
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// The whole value matches (anchored).
    Regex(Regex),
}

/// Everything one rule match requires: path, headers and method, all of them.
#[derive(Clone)]
pub struct Matcher {
    path: PathMatcher,
    headers: Vec<HeaderMatcher>,
    method: Option<http::Method>,
}

impl Matcher {
    pub fn new(
        path: PathMatcher,
        headers: Vec<HeaderMatcher>,
        method: Option<http::Method>,
    ) -> Self {
        Self {
            path,
            headers,
            method,
        }
    }

    /// Everything (`/` as a segment prefix).
    pub fn all() -> Self {
        Self::new(PathMatcher::Segments("/".into()), Vec::new(), None)
    }

    pub fn matches(&self, req: &Parts) -> bool {
        if let Some(m) = &self.method
            && *m != req.method
        {
            return false;
        }
        self.path.matches(req.uri.path()) && self.headers.iter().all(|h| h.matches(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: PathMatcher) -> Matcher {
        Matcher::new(path, vec![], None)
    }

    fn segments(p: &str) -> Matcher {
        let v = p.trim_end_matches('/');
        m(PathMatcher::Segments(if v.is_empty() {
            "/".into()
        } else {
            v.into()
        }))
    }

    fn regex(p: &str) -> Matcher {
        m(PathMatcher::Regex(PathMatcher::regex(p).unwrap()))
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn header(name: &str, value: ValueMatcher) -> HeaderMatcher {
        HeaderMatcher::new(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value,
            false,
        )
    }

    #[test]
    fn prefixes_match_whole_path_segments() {
        let p = segments("/api/");
        assert!(p.matches(&req("GET", "/api", &[])));
        assert!(p.matches(&req("GET", "/api/items?x=1", &[])));
        assert!(!p.matches(&req("GET", "/apix", &[])));
        assert!(segments("/").matches(&req("GET", "/anything", &[])));
        // Envoy's plain `prefix` is a string prefix.
        assert!(m(PathMatcher::Prefix("/api".into())).matches(&req("GET", "/apix", &[])));
    }

    #[test]
    fn exact_and_regex_paths() {
        assert!(m(PathMatcher::Exact("/a".into())).matches(&req("GET", "/a", &[])));
        assert!(!m(PathMatcher::Exact("/a".into())).matches(&req("GET", "/a/", &[])));
        let r = regex("/items/[0-9]+");
        assert!(r.matches(&req("GET", "/items/42", &[])));
        assert!(
            !r.matches(&req("GET", "/items/42/x", &[])),
            "regexes match the whole path"
        );
    }

    #[test]
    fn headers_and_method_must_all_hold() {
        let mt = Matcher::new(
            PathMatcher::Segments("/".into()),
            vec![
                header("x-canary", ValueMatcher::Exact("yes".into())),
                header(
                    "x-user",
                    ValueMatcher::Regex(PathMatcher::regex("u[0-9]").unwrap()),
                ),
            ],
            Some(http::Method::POST),
        );
        assert!(mt.matches(&req("POST", "/", &[("X-Canary", "yes"), ("x-user", "u7")])));
        assert!(!mt.matches(&req("GET", "/", &[("x-canary", "yes"), ("x-user", "u7")])));
        assert!(!mt.matches(&req("POST", "/", &[("x-canary", "no"), ("x-user", "u7")])));
        assert!(!mt.matches(&req("POST", "/", &[("x-canary", "yes")])));
    }

    #[test]
    fn header_value_forms_and_inversion() {
        let with = |v: ValueMatcher, invert: bool| {
            Matcher::new(
                PathMatcher::Segments("/".into()),
                vec![HeaderMatcher::new(
                    http::HeaderName::from_static("x-v"),
                    v,
                    invert,
                )],
                None,
            )
        };
        let r = req("GET", "/", &[("x-v", "alpha-beta")]);
        let none = req("GET", "/", &[]);
        assert!(with(ValueMatcher::Present, false).matches(&r));
        assert!(!with(ValueMatcher::Present, false).matches(&none));
        assert!(with(ValueMatcher::Present, true).matches(&none));
        assert!(with(ValueMatcher::Prefix("alpha".into()), false).matches(&r));
        assert!(with(ValueMatcher::Suffix("beta".into()), false).matches(&r));
        assert!(with(ValueMatcher::Contains("a-b".into()), false).matches(&r));
        assert!(!with(ValueMatcher::Exact("alpha".into()), false).matches(&r));
        assert!(with(ValueMatcher::Exact("alpha".into()), true).matches(&r));
    }
}
