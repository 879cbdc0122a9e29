//! GRPCRoute: loading, the internal form and its precedence, conflicts.

use super::assert_error;
use crate::{GrpcMethodMatchType, PathMatchType, load_str};

const MESH: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: echo}
spec:
  ports: [{port: 9090, protocol: grpc}, {port: 8080, protocol: http}]
  endpoints: [{address: "127.0.0.1:9001"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: echo-v2}
spec:
  ports: [{port: 9090, protocol: grpc}]
  endpoints: [{address: "127.0.0.1:9002"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-split}
spec:
  parentRefs: [{kind: Service, name: echo, port: 9090}]
  rules:
  - matches:
    - method: {service: weft.test.Echo, method: Unary}
    backendRefs: [{name: echo, port: 9090, weight: 1}, {name: echo-v2, weight: 1}]
  - matches:
    - method: {service: weft.test.Echo}
      headers: [{name: X-Canary, value: "yes"}]
    backendRefs: [{name: echo-v2}]
  - matches:
    - method: {method: Stream}
    - method: {type: RegularExpression, service: "weft\\..*"}
    backendRefs: [{name: echo-v2}]
  - backendRefs: [{name: echo, port: 9090}]
"#;

#[test]
fn loads_grpc_routes() {
    let c = load_str(MESH, "g.yaml").unwrap_or_else(|e| panic!("{e}"));
    let r = &c.grpc_routes[0];
    let m = r.rules[0].matches[0].method.as_ref().unwrap();
    assert_eq!(m.kind, GrpcMethodMatchType::Exact);
    assert_eq!(m.service.as_deref(), Some("weft.test.Echo"));
    assert_eq!(r.rules[1].matches[0].headers[0].name, "x-canary");
    assert_eq!(r.rules[3].matches.len(), 1, "no matches: every request");
    assert!(r.rules[3].matches[0].method.is_none());
    assert_eq!(r.rules[0].backend_refs[1].weight, 1);
}

#[test]
fn grpc_rules_become_internal_routes_in_grpc_precedence() {
    let c = load_str(MESH, "g.yaml").unwrap();
    let echo = c.service("default", "echo").unwrap();
    let table = c.service_routes(echo, 9090);
    let order: Vec<(&str, PathMatchType, &str)> = table
        .iter()
        .map(|e| {
            (
                e.name.as_str(),
                e.condition.path.kind,
                e.condition.path.value.as_str(),
            )
        })
        .collect();
    // Service characters, then method characters, then headers; the
    // regex on `weft\..*` counts its 8 characters as the service.
    assert_eq!(
        order,
        [
            (
                "echo-split/0",
                PathMatchType::Exact,
                "/weft.test.Echo/Unary"
            ),
            (
                "echo-split/1",
                PathMatchType::PathPrefix,
                "/weft.test.Echo/"
            ),
            (
                "echo-split/2",
                PathMatchType::RegularExpression,
                "/(?:weft\\..*)/[^/]+"
            ),
            (
                "echo-split/2",
                PathMatchType::RegularExpression,
                "/[^/]+/Stream"
            ),
            ("echo-split/3", PathMatchType::PathPrefix, "/"),
        ]
    );
    assert_eq!(table[1].condition.headers[0].name, "x-canary");
    assert!(table.iter().all(|e| e.condition.method.is_none()));
    let weights: Vec<u32> = table[0].backend_refs.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [1, 1]);
    // The route is bound to port 9090 only.
    assert!(c.service_routes(echo, 8080).is_empty());
}

#[test]
fn grpc_matches_are_validated() {
    let bad = |from: &str, to: &str| MESH.replace(from, to);
    assert_error(
        &bad("{service: weft.test.Echo, method: Unary}", "{type: Exact}"),
        "(GRPCRoute/default/echo-split): spec.rules[0].matches[0].method: set service, method or both",
    );
    assert_error(
        &bad("method: Unary}", "method: Un/ary}"),
        "spec.rules[0].matches[0].method.method: \"Un/ary\" is not a gRPC method name",
    );
    assert_error(
        &bad("{service: weft.test.Echo}", "{service: weft/test}"),
        "spec.rules[1].matches[0].method.service: \"weft/test\" is not a gRPC service name",
    );
    assert_error(
        &bad("service: \"weft\\\\..*\"", "service: \"weft(\""),
        "spec.rules[2].matches[1].method.service: invalid regular expression",
    );
    // gRPC needs HTTP/2 to the backend.
    assert_error(
        &bad("[{name: echo, port: 9090}]", "[{name: echo, port: 8080}]"),
        "spec.rules[3].backendRefs[0].port: port 8080 of Service echo is http; gRPC needs an http2 or grpc port",
    );
}

#[test]
fn http_and_grpc_routes_do_not_share_a_parent() {
    let http = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-http}
spec:
  parentRefs: [{kind: Service, name: echo}]
  rules:
  - backendRefs: [{name: echo}]
"#;
    assert_error(
        &format!("{MESH}{http}"),
        "(HTTPRoute/default/echo-http): spec.parentRefs[0]: GRPCRoute default/echo-split is attached to the same Service port",
    );
    // Another port of the same Service is fine.
    let other_port = http.replace("name: echo}]\n  rules", "name: echo, port: 8080}]\n  rules");
    let c = load_str(&format!("{MESH}{other_port}"), "g.yaml").unwrap();
    let echo = c.service("default", "echo").unwrap();
    assert_eq!(c.service_routes(echo, 8080)[0].name, "echo-http/0");
}

#[test]
fn on_a_gateway_kinds_conflict_only_where_hostnames_overlap() {
    let gw = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: weft
  listeners: [{name: http, port: 8000, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc}
spec:
  parentRefs: [{name: edge}]
  hostnames: [grpc.example.com]
  rules:
  - backendRefs: [{name: echo-v2}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: edge}]
  hostnames: [www.example.com]
  rules:
  - backendRefs: [{name: echo, port: 8080}]
"#;
    let c = load_str(&format!("{MESH}{gw}"), "g.yaml").unwrap_or_else(|e| panic!("{e}"));
    let g = &c.gateways[0];
    let hosts = c.gateway_hosts(g, &g.listeners[0]);
    let names: Vec<(Option<&str>, &str)> = hosts
        .iter()
        .map(|h| (h.hostname.as_deref(), h.routes[0].name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (Some("grpc.example.com"), "grpc/0"),
            (Some("www.example.com"), "web/0")
        ]
    );
    let overlapping = gw.replace(
        "hostnames: [www.example.com]",
        "hostnames: [\"*.example.com\"]",
    );
    assert_error(
        &format!("{MESH}{overlapping}"),
        "(HTTPRoute/default/web): spec.parentRefs[0]: GRPCRoute default/grpc is attached to the same Gateway listener and hostname",
    );
}
