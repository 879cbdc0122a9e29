//! The proxyless gRPC form.

use super::*;

#[test]
fn grpc_clients_get_a_listener_per_target() {
    let set = grpc_set("client");
    let listeners = names(&set, TypeUrl::Listener);
    for target in [
        "catalog",
        "catalog:8080",
        "catalog:8081",
        "catalog.default",
        "catalog.default:8081",
        "catalog.default.svc.cluster.local:8080",
    ] {
        assert!(listeners.contains(&target), "{target}: {listeners:?}");
    }
    // Only its namespace (a client declares no dependencies), no tcp
    // ports, no VIPs.
    assert!(!listeners.iter().any(|l| l.starts_with("users")));
    assert!(
        !listeners
            .iter()
            .any(|l| l.contains("9000") || l.starts_with("vip|"))
    );
    assert!(!listeners.iter().any(|l| l.starts_with("db")));
    let l: Listener = decode(&set, TypeUrl::Listener, "catalog");
    assert!(l.address.is_none() && l.filter_chains.is_empty());
    assert_eq!(rds_name(&hcm(&l)), "catalog.default:8080");
    let l: Listener = decode(&set, TypeUrl::Listener, "catalog.default:8081");
    assert_eq!(rds_name(&hcm(&l)), "catalog.default:8081");
    assert_eq!(
        names(&set, TypeUrl::RouteConfiguration),
        [
            "catalog-v2.default:8080",
            "catalog.default:8080",
            "catalog.default:8081",
            "frontend.default:3000",
        ]
    );
    // Clusters of HTTP ports (and route backends) only; all EDS.
    assert!(set.get(TypeUrl::Cluster, "catalog.default:9000").is_none());
    assert!(set.get(TypeUrl::Cluster, "db.data:5432").is_none());
    assert_eq!(
        names(&set, TypeUrl::Cluster),
        names(&set, TypeUrl::ClusterLoadAssignment)
    );

    // A client in namespace `data` dials bare names there.
    let set = grpc_set("client.data");
    let listeners = names(&set, TypeUrl::Listener);
    assert!(listeners.contains(&"users") && listeners.contains(&"users:7000"));
    assert!(!listeners.iter().any(|l| l.starts_with("catalog")));
    // A client beside `frontend` gets its dependencies, in any namespace.
    let set = grpc_set("frontend");
    let listeners = names(&set, TypeUrl::Listener);
    for target in ["users.data", "users.data:7000", "catalog", "frontend"] {
        assert!(listeners.contains(&target), "{target}: {listeners:?}");
    }
}

#[test]
fn grpc_routes_use_max_stream_duration_and_drop_non_post_methods() {
    let set = grpc_set("client");
    let rc: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "catalog.default:8080");
    assert_eq!(rc.virtual_hosts[0].domains, ["*"]);
    let routes = &rc.virtual_hosts[0].routes;
    // The GET /api match is gone; POST regex kept without a :method matcher.
    let order: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        order,
        [
            "catalog-routes/2",
            "catalog-routes/1",
            "catalog-routes/0",
            "catalog-routes/3"
        ]
    );
    let regex = routes[3].r#match.as_ref().unwrap();
    assert!(regex.headers.is_empty());
    let split = action(&routes[2]);
    assert!(split.timeout.is_none());
    let msd = split.max_stream_duration.as_ref().unwrap();
    assert_eq!(msd.max_stream_duration.unwrap().seconds, 2);
    assert!(action(&routes[1]).max_stream_duration.is_none());
}

#[test]
fn grpc_prefixes_match_whole_segments_by_regex() {
    let yaml = format!(
        "{MESH}---\n{}",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: users-routes, namespace: data}
spec:
  parentRefs: [{kind: Service, name: users}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /pkg.Users/}}]
    backendRefs: [{name: users}]
"#
    );
    let config = weft_model::load_str(&yaml, "mesh.yaml").unwrap();
    let set = resources_for(
        &config,
        &node(DataPlane::Grpc, "client.data"),
        &TranslateOptions::default(),
    );
    let rc: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "users.data:7000");
    let m = rc.virtual_hosts[0].routes[0].r#match.as_ref().unwrap();
    let Some(route_match::PathSpecifier::SafeRegex(re)) = &m.path_specifier else {
        panic!("{m:?}")
    };
    assert_eq!(re.regex, r"/pkg\.Users(/.*)?");
}
