//! GRPCRoute and SMI TrafficSplit become the same routes as HTTPRoutes.

use super::*;

const ECHO: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: echo}
spec:
  ports: [{port: 9090, protocol: grpc}]
  endpoints: [{address: "10.0.5.1:9090"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: echo-v2}
spec:
  ports: [{port: 9090, protocol: grpc}]
  endpoints: [{address: "10.0.5.2:9090"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-split}
spec:
  parentRefs: [{kind: Service, name: echo}]
  rules:
  - matches: [{method: {service: weft.test.Echo, method: Unary}}]
    backendRefs: [{name: echo, weight: 1}, {name: echo-v2, weight: 1}]
  - matches: [{method: {service: weft.test.Echo}}]
    backendRefs: [{name: echo}]
"#;

fn set_for(yaml: &str, kind: DataPlane, cluster: &str) -> ResourceSet {
    let config = weft_model::load_str(yaml, "mesh.yaml").unwrap_or_else(|e| panic!("{e}"));
    resources_for(&config, &node(kind, cluster), &TranslateOptions::default())
}

/// (route name, path matcher, [(cluster, weight)]).
type RouteSummary = (String, String, Vec<(String, u32)>);

fn route_summary(routes: &[Route]) -> Vec<RouteSummary> {
    routes
        .iter()
        .map(|r| {
            let m = r.r#match.as_ref().unwrap();
            let clusters = match &action(r).cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
                Some(route_action::ClusterSpecifier::WeightedClusters(wc)) => wc
                    .clusters
                    .iter()
                    .map(|c| (c.name.clone(), c.weight.unwrap().value))
                    .collect(),
                other => panic!("{other:?}"),
            };
            (r.name.clone(), format!("{:?}", m.path_specifier), clusters)
        })
        .collect()
}

#[test]
fn grpc_routes_split_methods_for_sidecars_and_grpc_clients() {
    let sidecar = set_for(ECHO, DataPlane::Envoy, "client");
    let rc: RouteConfiguration = decode(&sidecar, TypeUrl::RouteConfiguration, "outbound");
    let grpc = set_for(ECHO, DataPlane::Grpc, "client");
    let grpc_rc: RouteConfiguration =
        decode(&grpc, TypeUrl::RouteConfiguration, "echo.default:9090");
    let expected = [
        (
            "echo-split/0".to_string(),
            "Some(Path(\"/weft.test.Echo/Unary\"))".to_string(),
            vec![
                ("echo.default:9090".to_string(), 1),
                ("echo-v2.default:9090".to_string(), 1),
            ],
        ),
        (
            "echo-split/1".to_string(),
            "Some(PathSeparatedPrefix(\"/weft.test.Echo\"))".to_string(),
            vec![("echo.default:9090".to_string(), 1)],
        ),
    ];
    assert_eq!(
        route_summary(&vhost(&rc, "echo.default:9090").routes),
        expected
    );
    // gRPC clients know no whole-segment prefix: the same as a regex.
    let grpc_routes = route_summary(&grpc_rc.virtual_hosts[0].routes);
    assert_eq!(grpc_routes[0], expected[0]);
    assert!(
        grpc_routes[1].1.contains(r"/weft\\.test\\.Echo(/.*)?"),
        "{grpc_routes:?}"
    );
    // Both backends' clusters are there for both.
    for set in [&sidecar, &grpc] {
        assert!(set.get(TypeUrl::Cluster, "echo-v2.default:9090").is_some());
    }
}

#[test]
fn traffic_splits_become_weighted_routes_with_a_fallback() {
    let yaml = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: website, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: website-v1, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
  endpoints: [{address: "10.0.6.1:8080"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: website-v2, namespace: shop}
spec:
  ports: [{port: 8080, protocol: http}]
  endpoints: [{address: "10.0.6.2:8080"}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: ab-test, namespace: shop}
spec:
  service: website
  matches: [{kind: HTTPRouteGroup, name: firefox}]
  backends: [{service: website-v1, weight: 0}, {service: website-v2, weight: 100}]
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: firefox, namespace: shop}
spec:
  matches:
  - name: firefox-users
    headers: {user-agent: ".*Firefox.*"}
"#;
    let set = set_for(yaml, DataPlane::Envoy, "client.shop");
    let rc: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "outbound");
    let routes = &vhost(&rc, "website.shop:8080").routes;
    assert_eq!(
        route_summary(routes),
        [
            (
                "ab-test/0".to_string(),
                "Some(Prefix(\"/\"))".to_string(),
                vec![("website-v2.shop:8080".to_string(), 1)]
            ),
            (
                "ab-test/default".to_string(),
                "Some(Prefix(\"/\"))".to_string(),
                vec![("website.shop:8080".to_string(), 1)]
            ),
        ]
    );
    let header = &routes[0].r#match.as_ref().unwrap().headers[0];
    assert_eq!(header.name, "user-agent");
    assert!(format!("{header:?}").contains(".*Firefox.*"));
}
