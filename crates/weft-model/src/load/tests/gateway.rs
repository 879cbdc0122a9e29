//! Gateway, Gateway-attached routes and their virtual hosts.

use super::{assert_error, errors};
use crate::{DEFAULT_GATEWAY_ADDRESS, GatewayHost, ListenerProtocol, load_str};

const SERVICES: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 8080, protocol: http}]
  endpoints: [{address: "127.0.0.1:9001"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  ports: [{port: 8080, protocol: http}]
  endpoints: [{address: "127.0.0.1:9002"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: echo}
spec:
  ports: [{port: 9090, protocol: grpc}]
  endpoints: [{address: "127.0.0.1:9003"}]
---
"#;

const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: weft
  listeners:
  - {name: http, port: 8000, protocol: HTTP}
  - {name: example, port: 8001, protocol: HTTP, hostname: "*.example.com"}
---
"#;

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{name: edge, sectionName: http}]
  hostnames: [www.example.com]
  rules:
  - backendRefs: [{name: web}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: wildcard}
spec:
  parentRefs: [{name: edge}]
  hostnames: ["*.example.com"]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: api}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: fallback}
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge, port: 8000}]
  rules:
  - backendRefs: [{name: web}]
"#;

fn config(extra: &str) -> crate::Config {
    load_str(&format!("{SERVICES}{GATEWAY}{ROUTES}{extra}"), "gw.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn text(gateway: &str, routes: &str) -> String {
    format!("{SERVICES}{gateway}{routes}")
}

/// (host, [entry names]) of one listener.
fn hosts(c: &crate::Config, listener: &str) -> Vec<(Option<String>, Vec<String>)> {
    let gw = c.gateway("default", "edge").unwrap();
    c.gateway_hosts(gw, gw.listener(listener).unwrap())
        .into_iter()
        .map(|GatewayHost { hostname, routes }| {
            (hostname, routes.into_iter().map(|e| e.name).collect())
        })
        .collect()
}

#[test]
fn loads_a_gateway_with_default_address() {
    let c = config("");
    let gw = c.gateway("default", "edge").unwrap();
    assert_eq!(gw.class_name, "weft");
    assert_eq!(gw.addresses, [DEFAULT_GATEWAY_ADDRESS]);
    assert_eq!(gw.listeners[1].hostname.as_deref(), Some("*.example.com"));
    assert_eq!(gw.listeners[0].protocol, ListenerProtocol::Http);
    // Gateway parents are not Service parents.
    let web = c.service("default", "web").unwrap();
    assert_eq!(c.routes_for_service(web).count(), 0);
    assert!(c.service_routes(web, 8080).is_empty());

    let text = format!(
        "{SERVICES}{}{ROUTES}",
        GATEWAY.replace(
            "gatewayClassName: weft",
            "gatewayClassName: weft\n  addresses: [{type: IPAddress, value: 0.0.0.0}, {value: \"::1\"}]"
        )
    );
    let c = load_str(&text, "gw.yaml").unwrap();
    let addrs: Vec<String> = c.gateways[0]
        .addresses
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(addrs, ["0.0.0.0", "::1"]);
}

#[test]
fn virtual_hosts_order_hostnames_then_rules() {
    let c = config("");
    // Listener without hostname: www (its own route, then the wildcard
    // route, then the catch-all), *.example.com, then any host.
    assert_eq!(
        hosts(&c, "http"),
        [
            (
                Some("*.example.com".into()),
                vec!["wildcard/0".into(), "fallback/0".into()]
            ),
            (
                Some("www.example.com".into()),
                vec!["web/0".into(), "wildcard/0".into(), "fallback/0".into()]
            ),
            (None, vec!["fallback/0".into()]),
        ]
    );
    // Listener on *.example.com: `web` is bound to the other listener only;
    // the catch-all takes the listener's hostname; port 8000 is not 8001.
    assert_eq!(
        hosts(&c, "example"),
        [(Some("*.example.com".into()), vec!["wildcard/0".into()])]
    );
}

#[test]
fn one_route_may_have_service_and_gateway_parents() {
    let route = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: both}
spec:
  parentRefs: [{kind: Service, name: api}, {name: edge, sectionName: example}]
  rules:
  - matches: [{path: {type: Exact, value: /v2}}]
    backendRefs: [{name: web}]
"#;
    let c = config(route);
    let api = c.service("default", "api").unwrap();
    assert_eq!(c.routes_for_service(api).count(), 1);
    assert_eq!(c.service_routes(api, 8080)[0].name, "both/0");
    assert!(hosts(&c, "example")[0].1.contains(&"both/0".to_string()));
    // ... but not hostnames: GAMMA forbids them with a Service parent.
    let with_hosts = route.replace("  rules:", "  hostnames: [a.example.com]\n  rules:");
    assert_error(
        &text(GATEWAY, &format!("{ROUTES}{with_hosts}")),
        "document 8 (HTTPRoute/default/both): spec.hostnames: hostnames are not allowed on a route with a Service parent",
    );
}

#[test]
fn listeners_are_validated() {
    let bad = |from: &str, to: &str| text(&GATEWAY.replace(from, to), "");
    assert_error(
        &bad(
            "protocol: HTTP}\n  - {name: example",
            "protocol: HTTPS}\n  - {name: example",
        ),
        "(Gateway/default/edge): spec.listeners[0].protocol: HTTPS listeners are not supported yet",
    );
    assert_error(
        &bad("port: 8000, protocol: HTTP", "port: 8000, protocol: TCP"),
        "spec.listeners[0].protocol: TCP listeners need a TCPRoute, which weft does not support yet",
    );
    assert_error(
        &bad("{name: example, port: 8001", "{name: http, port: 8001"),
        "spec.listeners[1].name: duplicate listener name \"http\"",
    );
    assert_error(
        &bad("{name: example, port: 8001", "{name: example, port: 8000"),
        "spec.listeners[1].port: port 8000 is already used by listener \"http\"",
    );
    assert_error(
        &bad("hostname: \"*.example.com\"", "hostname: \"10.0.0.1\""),
        "spec.listeners[1].hostname: \"10.0.0.1\" is an IP address",
    );
    assert_error(
        &bad(
            "gatewayClassName: weft",
            "gatewayClassName: weft\n  addresses: [{type: Hostname, value: gw.local}]",
        ),
        "spec.addresses[0].type: address type \"Hostname\" is not supported; use IPAddress",
    );
    assert_error(
        &bad("  listeners:", "  listners:"),
        "spec.listners: unknown field `listners`",
    );
    let errs = errors(&bad("  gatewayClassName: weft\n", ""));
    assert!(
        errs[0].contains("spec.gatewayClassName: missing"),
        "{errs:?}"
    );
}

#[test]
fn parent_refs_must_name_a_listener() {
    let bad = |from: &str, to: &str| text(GATEWAY, &ROUTES.replace(from, to));
    assert_error(
        &bad(
            "{name: edge, sectionName: http}",
            "{name: edge, sectionName: https}",
        ),
        "(HTTPRoute/default/web): spec.parentRefs[0].sectionName: Gateway edge has no listener \"https\" (listeners: http, example)",
    );
    assert_error(
        &bad(
            "{name: edge, sectionName: http}",
            "{name: edge, sectionName: http, port: 8001}",
        ),
        "spec.parentRefs[0].port: listener \"http\" of Gateway edge is on port 8000, not 8001",
    );
    assert_error(
        &bad(
            "kind: Gateway, name: edge, port: 8000}",
            "kind: Gateway, name: edge, port: 9999}",
        ),
        "(HTTPRoute/default/fallback): spec.parentRefs[0].port: Gateway edge has no listener on port 9999",
    );
    assert_error(
        &bad("{name: edge, sectionName: http}", "{name: edgy}"),
        "spec.parentRefs[0].name: Gateway default/edgy does not exist",
    );
    assert_error(
        &bad(
            "{name: edge, sectionName: http}",
            "{group: example.com, name: edge}",
        ),
        "spec.parentRefs[0].group: group \"example.com\" is not supported for a Gateway",
    );
    // A route's hostnames must overlap the listener's.
    assert_error(
        &bad(
            "[{name: edge}]\n  hostnames: [\"*.example.com\"]",
            "[{name: edge, sectionName: example}]\n  hostnames: [\"*.example.net\"]",
        ),
        "(HTTPRoute/default/wildcard): spec.hostnames: no hostname matches the listener hostnames of Gateway edge (*.example.com)",
    );
    assert_error(
        &bad(
            "hostnames: [www.example.com]",
            "hostnames: [\"WWW.example.com\"]",
        ),
        "spec.hostnames[0]: \"WWW.example.com\" must be a lower-case DNS name",
    );
}

#[test]
fn routes_from_other_namespaces_need_allowed_routes() {
    let other_ns = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: team, namespace: team-a}
spec:
  parentRefs: [{name: edge, namespace: default, sectionName: example}]
  hostnames: [team-a.example.com]
  rules:
  - backendRefs: [{name: web, namespace: default}]
"#;
    assert_error(
        &text(GATEWAY, &format!("{ROUTES}{other_ns}")),
        "(HTTPRoute/team-a/team): spec.parentRefs[0]: the listeners of Gateway default/edge accept routes from namespace default only",
    );
    let open = GATEWAY.replace(
        "hostname: \"*.example.com\"}",
        "hostname: \"*.example.com\", allowedRoutes: {namespaces: {from: All}}}",
    );
    let c = load_str(&text(&open, &format!("{ROUTES}{other_ns}")), "gw.yaml").unwrap();
    let gw = &c.gateways[0];
    let hosts = c.gateway_hosts(gw, &gw.listeners[1]);
    assert_eq!(hosts[1].hostname.as_deref(), Some("team-a.example.com"));
    assert_eq!(hosts[1].routes[0].name, "team/0");
}

#[test]
fn a_gateway_and_a_service_cannot_share_a_name() {
    let gw = GATEWAY.replace("name: edge}", "name: web}");
    assert_error(
        &text(&gw, ""),
        "(Gateway/default/web): metadata.name: Service default/web has the same name: a node's cluster \"web\" would name both",
    );
}
