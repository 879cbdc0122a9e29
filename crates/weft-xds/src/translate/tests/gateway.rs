//! The gateway form.

use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::StripPortMode;

use super::*;

const GATEWAY: &str = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: weft
  addresses: [{value: 127.0.0.1}, {value: "::1"}]
  listeners:
  - {name: web, port: 18080, protocol: HTTP}
  - {name: api, port: 18081, protocol: HTTP, hostname: "*.example.com"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: edge, sectionName: web}]
  hostnames: [shop.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: catalog-v2}]
  - backendRefs: [{name: catalog, port: 8080, weight: 3}, {name: catalog-v2, weight: 1}]
    timeouts: {request: 5s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: users-api}
spec:
  parentRefs: [{name: edge, sectionName: api}]
  rules:
  - backendRefs: [{name: users, namespace: data}]
"#;

fn gateway_mesh() -> Arc<Config> {
    let yaml = format!("{MESH}{GATEWAY}");
    Arc::new(weft_model::load_str(&yaml, "mesh.yaml").unwrap_or_else(|e| panic!("{e}")))
}

fn gateway_set(kind: DataPlane, cluster: &str) -> ResourceSet {
    resources_for(
        &gateway_mesh(),
        &node(kind, cluster),
        &TranslateOptions::default(),
    )
}

#[test]
fn a_gateway_gets_its_listeners_routes_and_backends_only() {
    let set = gateway_set(DataPlane::Envoy, "edge");
    assert_eq!(
        names(&set, TypeUrl::Listener),
        ["gateway|edge.default|api", "gateway|edge.default|web"]
    );
    assert_eq!(
        names(&set, TypeUrl::RouteConfiguration),
        ["gateway|edge.default|api", "gateway|edge.default|web"]
    );
    // The clusters its routes use, nothing else: no sidecar listeners, no
    // other Services.
    let backends = [
        "catalog-v2.default:8080",
        "catalog.default:8080",
        "users.data:7000",
    ];
    assert_eq!(names(&set, TypeUrl::Cluster), backends);
    assert_eq!(names(&set, TypeUrl::ClusterLoadAssignment), backends);
    assert_eq!(set, gateway_set(DataPlane::Weft, "edge.default"));
}

#[test]
fn gateway_listeners_bind_every_address_and_ignore_the_host_port() {
    let set = gateway_set(DataPlane::Envoy, "edge");
    let l: Listener = decode(&set, TypeUrl::Listener, "gateway|edge.default|web");
    let addr = format!("{:?}", l.address);
    assert!(
        addr.contains("127.0.0.1") && addr.contains("PortValue(18080)"),
        "{addr}"
    );
    assert_eq!(l.additional_addresses.len(), 1);
    let extra = format!("{:?}", l.additional_addresses[0].address);
    assert!(
        extra.contains("\"::1\"") && extra.contains("PortValue(18080)"),
        "{extra}"
    );
    let h = hcm(&l);
    assert_eq!(rds_name(&h), "gateway|edge.default|web");
    assert_eq!(
        h.strip_port_mode,
        Some(StripPortMode::StripAnyHostPort(true))
    );
    assert_eq!(
        h.http_filters.last().unwrap().name,
        "envoy.filters.http.router"
    );
}

#[test]
fn gateway_routes_are_virtual_hosts_by_hostname() {
    let set = gateway_set(DataPlane::Envoy, "edge");
    let rc: RouteConfiguration = decode(
        &set,
        TypeUrl::RouteConfiguration,
        "gateway|edge.default|web",
    );
    assert_eq!(rc.virtual_hosts.len(), 1);
    let shop = vhost(&rc, "shop.example.com");
    assert_eq!(shop.domains, ["shop.example.com"]);
    let order: Vec<&str> = shop.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(order, ["shop/0", "shop/1"]);
    let split = action(&shop.routes[1]);
    let Some(route_action::ClusterSpecifier::WeightedClusters(wc)) = &split.cluster_specifier
    else {
        panic!("expected a split: {split:?}")
    };
    let parts: Vec<(&str, u32)> = wc
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        parts,
        [("catalog.default:8080", 3), ("catalog-v2.default:8080", 1)]
    );
    assert_eq!(split.timeout.unwrap().seconds, 5);

    // A route without hostnames takes the listener's.
    let rc: RouteConfiguration = decode(
        &set,
        TypeUrl::RouteConfiguration,
        "gateway|edge.default|api",
    );
    assert_eq!(vhost(&rc, "*.example.com").domains, ["*.example.com"]);
    assert_eq!(
        action(&vhost(&rc, "*.example.com").routes[0]).cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "users.data:7000".into()
        ))
    );
}

#[test]
fn a_gateway_without_routes_answers_nothing() {
    let yaml = format!(
        "{MESH}{}",
        &GATEWAY[..GATEWAY
            .find("---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute")
            .unwrap()]
    );
    let config = weft_model::load_str(&yaml, "mesh.yaml").unwrap();
    let set = resources_for(
        &config,
        &node(DataPlane::Envoy, "edge"),
        &TranslateOptions::default(),
    );
    let rc: RouteConfiguration = decode(
        &set,
        TypeUrl::RouteConfiguration,
        "gateway|edge.default|web",
    );
    assert!(rc.virtual_hosts.is_empty());
    assert_eq!(set.of(TypeUrl::Cluster).count(), 0);
}

#[test]
fn a_grpc_client_is_never_a_gateway() {
    let set = gateway_set(DataPlane::Grpc, "edge");
    assert!(
        set.get(TypeUrl::Listener, "gateway|edge.default|web")
            .is_none()
    );
    // It is a client-only workload of namespace default.
    assert!(set.get(TypeUrl::Listener, "catalog").is_some());
}
