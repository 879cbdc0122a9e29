//! SMI TrafficSplit and HTTPRouteGroup.

use super::assert_error;
use crate::{HeaderMatchType, PathMatchType, load_str};

const MESH: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: website, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}, {port: 9090, protocol: grpc}, {port: 5432, protocol: tcp}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: website-v1, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}, {port: 9090, protocol: grpc}]
  endpoints: [{address: "127.0.0.1:9001"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: website-v2, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}, {port: 9090, protocol: grpc}]
  endpoints: [{address: "127.0.0.1:9002"}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary, namespace: shop}
spec:
  service: website
  backends:
  - {service: website-v1, weight: 90}
  - {service: website-v2, weight: 10}
"#;

const AB: &str = r#"---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: ab-test, namespace: shop}
spec:
  matches:
  - name: firefox-users
    headers:
    - user-agent: ".*Firefox.*"
  - name: api-reads
    pathRegex: "/api/.*"
    methods: [GET, HEAD]
    headers: {x-beta: "1"}
  - name: everything-else
    methods: ["*"]
"#;

#[test]
fn a_split_is_one_weighted_rule_on_every_http_port() {
    let c = load_str(MESH, "smi.yaml").unwrap_or_else(|e| panic!("{e}"));
    let root = c.service("shop", "website").unwrap();
    for port in [8080, 9090] {
        let table = c.service_routes(root, port);
        assert_eq!(table.len(), 1, "{table:?}");
        assert_eq!(table[0].name, "canary/0");
        assert_eq!(table[0].condition, crate::HttpRouteMatch::everything());
        let split: Vec<(&str, Option<u16>, u32)> = table[0]
            .backend_refs
            .iter()
            .map(|b| (b.name.as_str(), b.port, b.weight))
            .collect();
        assert_eq!(
            split,
            [
                ("website-v1", Some(port), 90),
                ("website-v2", Some(port), 10)
            ]
        );
    }
    assert!(c.service_routes(root, 5432).is_empty(), "tcp: no routes");
    // The backends and the root are what the root's callers need.
    assert_eq!(
        c.route_backends(root),
        [
            ("shop".to_string(), "website-v1".to_string()),
            ("shop".to_string(), "website-v2".to_string())
        ]
    );
}

#[test]
fn matches_become_one_rule_each_then_the_root_service() {
    let text = format!(
        "{}{AB}",
        MESH.replace(
            "  service: website\n",
            "  service: website\n  matches: [{kind: HTTPRouteGroup, name: ab-test}]\n"
        )
    );
    let c = load_str(&text, "smi.yaml").unwrap_or_else(|e| panic!("{e}"));
    let g = c.http_route_group("shop", "ab-test").unwrap();
    assert_eq!(g.matches[0].headers["user-agent"], ".*Firefox.*");
    assert!(g.matches[2].methods.is_empty(), "* is any method");
    let root = c.service("shop", "website").unwrap();
    let table = c.service_routes(root, 8080);
    let names: Vec<&str> = table.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "canary/0",
            "canary/1",
            "canary/1",
            "canary/2",
            "canary/default"
        ]
    );
    let ff = &table[0].condition;
    assert_eq!(ff.path.value, "/");
    assert_eq!(ff.headers[0].kind, HeaderMatchType::RegularExpression);
    let api = &table[1].condition;
    assert_eq!(api.path.kind, PathMatchType::RegularExpression);
    assert_eq!(api.path.value, "(?:/api/.*).*");
    assert_eq!(api.method.as_deref(), Some("GET"));
    assert_eq!(table[2].condition.method.as_deref(), Some("HEAD"));
    assert_eq!(api.headers[0].name, "x-beta");
    // Everything not matched goes to the root Service itself.
    let last = &table[4];
    assert_eq!(last.condition, crate::HttpRouteMatch::everything());
    assert_eq!(last.backend_refs.len(), 1);
    assert_eq!(
        (
            last.backend_refs[0].name.as_str(),
            last.backend_refs[0].port
        ),
        ("website", Some(8080))
    );
}

#[test]
fn splits_are_validated() {
    let bad = |from: &str, to: &str| MESH.replace(from, to);
    assert_error(
        &bad("service: website\n", "service: webshop\n"),
        "(TrafficSplit/shop/canary): spec.service: Service shop/webshop does not exist",
    );
    assert_error(
        &bad(
            "{service: website-v2, weight: 10}",
            "{service: website-v3, weight: 10}",
        ),
        "spec.backends[1].service: Service shop/website-v3 does not exist",
    );
    assert_error(
        &bad("weight: 90}", "weight: 0}").replace("weight: 10}", "weight: 0}"),
        "spec.backends: all backend weights are 0",
    );
    assert_error(
        &bad("weight: 90}", "weight: -1}"),
        "spec.backends[0].weight: weight -1 must be 0..1000000",
    );
    assert_error(
        &bad("split.smi-spec.io/v1alpha4", "split.smi-spec.io/v1alpha2"),
        "apiVersion: \"split.smi-spec.io/v1alpha2\" is not supported for TrafficSplit; use \"split.smi-spec.io/v1alpha4\"",
    );
    assert_error(
        &bad(
            "  service: website\n",
            "  service: website\n  matches: [{kind: HTTPRouteGroup, name: nope}]\n",
        ),
        "spec.matches[0].name: HTTPRouteGroup shop/nope does not exist",
    );
    // SMI: every backend has each port of the root.
    let v2 = "ports: [{port: 8080, protocol: http}, {port: 9090, protocol: grpc}]\n  endpoints: [{address: \"127.0.0.1:9002\"}]";
    assert_error(
        &bad(
            v2,
            "ports: [{port: 8080, protocol: http}]\n  endpoints: [{address: \"127.0.0.1:9002\"}]",
        ),
        "spec.backends[1].service: Service website-v2 has no port 9090 (SMI: every backend needs each port of the root Service website)",
    );
    let group = AB.replace("methods: [GET, HEAD]", "methods: [GET, FETCH]");
    assert_error(
        &format!("{MESH}{group}"),
        "(HTTPRouteGroup/shop/ab-test): spec.matches[1].methods[1]: \"FETCH\" is not one of",
    );
    let group = AB.replace("\"/api/.*\"", "\"/api/(\"");
    assert_error(
        &format!("{MESH}{group}"),
        "spec.matches[1].pathRegex: invalid regular expression",
    );
}

#[test]
fn one_source_of_truth_per_service() {
    let route = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: website-route, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: website}]
  rules:
  - backendRefs: [{name: website-v1}]
"#;
    assert_error(
        &format!("{MESH}{route}"),
        "(TrafficSplit/shop/canary): spec.service: HTTPRoute shop/website-route is also attached to Service website; one source of truth per Service",
    );
    let second = r#"---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: rollout, namespace: shop}
spec:
  service: website
  backends: [{service: website-v2, weight: 1}]
"#;
    assert_error(
        &format!("{MESH}{second}"),
        "(TrafficSplit/shop/rollout): spec.service: TrafficSplit shop/canary already splits Service website",
    );
}
