//! What HTTPRoute and GRPCRoute share: parent references (a Service, GAMMA,
//! or a Gateway), hostnames, weighted backends and header matches.

use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::{GATEWAY_GROUP, HeaderMatch, HeaderMatchType};

/// What a route attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ParentKind {
    /// A Service (GAMMA): the route applies to requests sent to it by the
    /// mesh's sidecars and gRPC clients.
    Service,
    /// A Gateway: the route applies to requests the gateway accepts.
    Gateway,
}

/// A Service or Gateway a route is attached to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentRef {
    pub kind: ParentKind,
    pub namespace: String,
    pub name: String,
    /// Only this port (of the Service, or of the Gateway's listeners).
    pub port: Option<u16>,
    /// Gateway parents: only the listener of this name.
    pub section_name: Option<String>,
}

impl ParentRef {
    /// Whether this names Service `namespace/name`.
    pub fn is_service(&self, namespace: &str, name: &str) -> bool {
        self.kind == ParentKind::Service && self.namespace == namespace && self.name == name
    }

    /// Whether this names Gateway `namespace/name`.
    pub fn is_gateway(&self, namespace: &str, name: &str) -> bool {
        self.kind == ParentKind::Gateway && self.namespace == namespace && self.name == name
    }
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

// ---- as written -----------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct ParentRefSpec {
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
pub(crate) struct BackendRefSpec {
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
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderSpec {
    #[serde(default, rename = "type")]
    kind: Option<HeaderMatchType>,
    name: String,
    value: String,
}

/// HTTP methods a match may name.
pub(crate) const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Checks `parentRefs` and `hostnames` of a route; `what` names it in
/// messages ("an HTTPRoute"). Hostnames only make sense for Gateway parents: GAMMA forbids
/// them on routes bound to a Service.
pub(crate) fn validate_parents(
    what: &str,
    specs: Vec<ParentRefSpec>,
    hostnames: Vec<String>,
    namespace: &str,
    p: &mut Problems<'_>,
) -> (Vec<ParentRef>, Vec<String>) {
    if specs.is_empty() {
        p.add(
            "spec.parentRefs",
            format!("{what} needs at least one parentRef (kind: Service or Gateway)"),
        );
    }
    let parents: Vec<ParentRef> = specs
        .into_iter()
        .enumerate()
        .map(|(i, pr)| pr.validate(&format!("spec.parentRefs[{i}]"), namespace, p))
        .collect();
    for (i, h) in hostnames.iter().enumerate() {
        if let Err(why) = check_hostname(h) {
            p.add(format!("spec.hostnames[{i}]"), format!("{h:?} {why}"));
        }
    }
    if !hostnames.is_empty() && parents.iter().any(|r| r.kind == ParentKind::Service) {
        // GAMMA: hostnames are meaningless for routes bound to a Service.
        p.add(
            "spec.hostnames",
            "hostnames are not allowed on a route with a Service parent (GAMMA); \
             put the Gateway parents in a route of their own",
        );
    }
    (parents, hostnames)
}

impl ParentRefSpec {
    fn validate(self, field: &str, namespace: &str, p: &mut Problems<'_>) -> ParentRef {
        // Gateway API defaults: group gateway.networking.k8s.io, kind Gateway.
        let kind = match self.kind.as_deref() {
            None | Some("Gateway") => {
                if let Some(g) = self.group.as_deref()
                    && g != GATEWAY_GROUP
                {
                    p.add(
                        format!("{field}.group"),
                        format!(
                            "group {g:?} is not supported for a Gateway; use {GATEWAY_GROUP:?}"
                        ),
                    );
                }
                ParentKind::Gateway
            }
            Some("Service") => {
                check_core_group(&self.group, format!("{field}.group"), p);
                if self.section_name.is_some() {
                    p.add(
                        format!("{field}.sectionName"),
                        "use port to select a Service port",
                    );
                }
                ParentKind::Service
            }
            Some(k) => {
                p.add(
                    format!("{field}.kind"),
                    format!("unsupported parent kind {k:?} (use Service or Gateway)"),
                );
                ParentKind::Gateway
            }
        };
        if self.port == Some(0) {
            p.add(format!("{field}.port"), "port must be 1..65535");
        }
        ParentRef {
            kind,
            namespace: self.namespace.unwrap_or_else(|| namespace.to_string()),
            name: self.name,
            port: self.port,
            section_name: self.section_name,
        }
    }
}

/// Checks the `backendRefs` of one rule (`field` names the rule).
pub(crate) fn validate_backends(
    specs: Vec<BackendRefSpec>,
    field: &str,
    namespace: &str,
    p: &mut Problems<'_>,
) -> Vec<BackendRef> {
    if specs.is_empty() {
        p.add(
            format!("{field}.backendRefs"),
            "a rule needs at least one backendRef",
        );
    }
    let mut backend_refs = Vec::with_capacity(specs.len());
    for (j, b) in specs.into_iter().enumerate() {
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
        if b.port == Some(0) {
            p.add(format!("{bf}.port"), "port must be 1..65535");
        }
        backend_refs.push(BackendRef {
            namespace: b.namespace.unwrap_or_else(|| namespace.to_string()),
            name: b.name,
            port: b.port,
            weight: check_weight(b.weight, 1, &format!("{bf}.weight"), p),
        });
    }
    if !backend_refs.is_empty() && backend_refs.iter().all(|b| b.weight == 0) {
        p.add(
            format!("{field}.backendRefs"),
            "all backend weights are 0: the rule could send nothing",
        );
    }
    backend_refs
}

/// A backend weight: `default` when absent, else 0..=1000000.
pub(crate) fn check_weight(
    weight: Option<i64>,
    default: u32,
    field: &str,
    p: &mut Problems<'_>,
) -> u32 {
    match weight {
        None => default,
        Some(w) if (0..=1_000_000).contains(&w) => w as u32,
        Some(w) => {
            p.add(field, format!("weight {w} must be 0..1000000"));
            0
        }
    }
}

/// Checks header matches (`field` names the match).
pub(crate) fn validate_headers(
    specs: Vec<HeaderSpec>,
    field: &str,
    p: &mut Problems<'_>,
) -> Vec<HeaderMatch> {
    let mut headers = Vec::with_capacity(specs.len());
    for (k, h) in specs.into_iter().enumerate() {
        let hf = format!("{field}.headers[{k}]");
        headers.push(header_match(
            h.kind.unwrap_or(HeaderMatchType::Exact),
            h.name,
            h.value,
            &hf,
            p,
        ));
    }
    headers
}

/// One header condition; `field` names it.
pub(crate) fn header_match(
    kind: HeaderMatchType,
    name: String,
    value: String,
    field: &str,
    p: &mut Problems<'_>,
) -> HeaderMatch {
    if !is_http_token(&name) {
        p.add(
            format!("{field}.name"),
            format!("{name:?} is not a valid header name"),
        );
    }
    if kind == HeaderMatchType::RegularExpression {
        check_regex(&value, format!("{field}.value"), p);
    }
    HeaderMatch {
        kind,
        name: name.to_ascii_lowercase(),
        value,
    }
}

pub(crate) fn check_core_group(group: &Option<String>, field: String, p: &mut Problems<'_>) {
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

pub(crate) fn check_regex(value: &str, field: String, p: &mut Problems<'_>) {
    if let Err(e) = regex::Regex::new(value) {
        p.add(field, format!("invalid regular expression: {e}"));
    }
}

/// Whether `name` is a valid HTTP header token.
fn is_http_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A Gateway API hostname: RFC 1123 DNS name in lower case, optionally with
/// a leading `*.` wildcard label, not an IP address.
pub(crate) fn check_hostname(h: &str) -> Result<(), &'static str> {
    if h.is_empty() || h.len() > 253 {
        return Err("must be 1..253 characters");
    }
    if h.parse::<std::net::IpAddr>().is_ok() {
        return Err("is an IP address; hostnames must be DNS names");
    }
    let rest = h.strip_prefix("*.").unwrap_or(h);
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    if rest.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("must be a lower-case DNS name, optionally starting with a \"*.\" label")
    }
}

/// The hostnames both `a` and `b` match, as one hostname, when they overlap
/// (Gateway API listener/route hostname intersection): the more specific of
/// the two when one covers the other.
pub fn hostname_intersection<'a>(a: &'a str, b: &'a str) -> Option<&'a str> {
    if covers(a, b) {
        Some(b)
    } else if covers(b, a) {
        Some(a)
    } else {
        None
    }
}

/// Whether `pattern` matches every host that `h` matches (`*.example.com`
/// covers `a.example.com`, `*.a.example.com` and itself, not `example.com`).
fn covers(pattern: &str, h: &str) -> bool {
    if pattern == h {
        return true;
    }
    match pattern.strip_prefix('*') {
        // ".example.com": h must end with it and have a label in front.
        Some(suffix) => h.len() > suffix.len() && h.ends_with(suffix),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_intersect_like_gateway_api() {
        let i = hostname_intersection;
        assert_eq!(i("a.example.com", "a.example.com"), Some("a.example.com"));
        assert_eq!(i("*.example.com", "a.example.com"), Some("a.example.com"));
        assert_eq!(i("a.example.com", "*.example.com"), Some("a.example.com"));
        assert_eq!(
            i("*.example.com", "*.a.example.com"),
            Some("*.a.example.com")
        );
        assert_eq!(
            i("*.example.com", "x.a.example.com"),
            Some("x.a.example.com")
        );
        assert_eq!(i("*.example.com", "example.com"), None);
        assert_eq!(i("a.example.com", "b.example.com"), None);
        assert_eq!(i("*.example.com", "*.example.net"), None);
    }

    #[test]
    fn hostnames_are_dns_names() {
        assert!(check_hostname("example.com").is_ok());
        assert!(check_hostname("*.example.com").is_ok());
        assert!(check_hostname("localhost").is_ok());
        for bad in [
            "",
            "Example.com",
            "a..b",
            "*",
            "a.*.com",
            "10.0.0.1",
            "-a.com",
            "a_b.com",
        ] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
    }
}
