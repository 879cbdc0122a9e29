//! Unit tests: translate a small mesh, decode the resources back and check
//! what Envoy and gRPC clients would see.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::config_source;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use weft_model::Config;

use super::*;
use crate::resource::TypeUrl;

mod flow;
mod gateway;
mod grpc;
mod policy;
mod route_policy;
mod routes;
mod scope;
mod sidecar;

const MESH: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog}
spec:
  vip: 127.0.10.1
  ports: [{port: 8080, protocol: http}, {port: 8081, protocol: grpc}, {port: 9000, protocol: tcp}]
  endpoints:
  - {address: "10.0.0.1:8080", weight: 3, locality: {region: eu, zone: eu-1a}}
  - {address: "10.0.0.2:8080", weight: 2, locality: {region: eu, zone: eu-1a}}
  - {address: "10.0.0.3:8080", locality: {region: us, zone: us-1b}}
  - {address: "10.0.0.4:8080"}
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog-v2}
spec:
  ports: [{port: 8080, protocol: http}]
  endpoints: [{address: "10.0.1.1:8080"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: frontend}
spec:
  ports: [{port: 3000, protocol: http2}]
  dependencies: [catalog, users.data]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: db, namespace: data}
spec:
  ports: [{port: 5432, protocol: tcp}]
  endpoints: [{address: "10.0.2.1:5432"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: users, namespace: data}
spec:
  ports: [{port: 7000, protocol: grpc}]
  dependencies: [db, catalog.default]
  endpoints: [{address: "10.0.3.1:7000"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catalog-routes}
spec:
  parentRefs: [{kind: Service, name: catalog, port: 8080}]
  rules:
  - backendRefs: [{name: catalog, port: 8080, weight: 90}, {name: catalog-v2, weight: 10}, {name: frontend, weight: 0}]
    timeouts: {request: 2s}
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: catalog-v2}]
  - matches: [{path: {type: Exact, value: /health}}]
    backendRefs: [{name: catalog, port: 8080}]
  - matches:
    - {path: {type: PathPrefix, value: /api/}, method: GET}
    - {path: {type: RegularExpression, value: "/items/[0-9]+"}, method: POST}
    backendRefs: [{name: catalog-v2}]
"#;

fn mesh() -> Arc<Config> {
    Arc::new(weft_model::load_str(MESH, "mesh.yaml").unwrap())
}

fn node(kind: DataPlane, cluster: &str) -> NodeInfo {
    NodeInfo {
        id: format!("{cluster}-1"),
        cluster: cluster.into(),
        kind,
        user_agent: kind.as_str().into(),
    }
}

fn names(set: &ResourceSet, t: TypeUrl) -> Vec<&str> {
    set.of(t).map(|r| r.name.as_str()).collect()
}

fn decode<M: Message + Default>(set: &ResourceSet, t: TypeUrl, name: &str) -> M {
    let r = set.get(t, name).unwrap_or_else(|| panic!("no {t} {name}"));
    assert_eq!(r.body.type_url, t.as_str());
    M::decode(r.body.value.as_slice()).unwrap()
}

fn unpack<M: Message + Name + Default>(any: &Any) -> M {
    assert_eq!(any.type_url, M::type_url());
    M::decode(any.value.as_slice()).unwrap()
}

/// The HTTP connection manager of a listener (network filter or API listener).
fn hcm(l: &Listener) -> HttpConnectionManager {
    if let Some(api) = &l.api_listener {
        return unpack(api.api_listener.as_ref().unwrap());
    }
    let f = &l.filter_chains[0].filters[0];
    assert_eq!(f.name, "envoy.filters.network.http_connection_manager");
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("no typed config")
    };
    unpack(any)
}

fn rds_name(h: &HttpConnectionManager) -> &str {
    match &h.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
            let cs = rds.config_source.as_ref().unwrap();
            assert!(matches!(
                cs.config_source_specifier,
                Some(config_source::ConfigSourceSpecifier::Ads(_))
            ));
            &rds.route_config_name
        }
        other => panic!("expected RDS, got {other:?}"),
    }
}

fn action(r: &Route) -> &RouteAction {
    match &r.action {
        Some(route::Action::Route(a)) => a,
        other => panic!("expected a route action, got {other:?}"),
    }
}

fn vhost<'a>(
    rc: &'a RouteConfiguration,
    name: &str,
) -> &'a envoy_types::pb::envoy::config::route::v3::VirtualHost {
    rc.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no virtual host {name}"))
}

fn sidecar_set(cluster: &str) -> ResourceSet {
    resources_for(
        &mesh(),
        &node(DataPlane::Envoy, cluster),
        &TranslateOptions::default(),
    )
}

fn grpc_set(cluster: &str) -> ResourceSet {
    resources_for(
        &mesh(),
        &node(DataPlane::Grpc, cluster),
        &TranslateOptions::default(),
    )
}

#[test]
fn every_http_connection_manager_ends_with_the_router() {
    for set in [
        sidecar_set("catalog"),
        grpc_set("client"),
        sidecar_set("frontend"),
    ] {
        for r in set.of(TypeUrl::Listener) {
            let l: Listener = decode(&set, TypeUrl::Listener, &r.name);
            let is_tcp = l
                .filter_chains
                .first()
                .is_some_and(|c| c.filters[0].name == "envoy.filters.network.tcp_proxy");
            if is_tcp {
                continue;
            }
            let h = hcm(&l);
            let last = h.http_filters.last().expect("an HTTP filter");
            assert_eq!(last.name, "envoy.filters.http.router", "{}", r.name);
            let Some(http_filter::ConfigType::TypedConfig(any)) = &last.config_type else {
                panic!("router without typed config in {}", r.name)
            };
            assert_eq!(
                any.type_url,
                "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            );
        }
    }
}

#[test]
fn translating_twice_gives_the_same_versions() {
    for kind in [DataPlane::Envoy, DataPlane::Weft, DataPlane::Grpc] {
        let a = resources_for(
            &mesh(),
            &node(kind, "catalog"),
            &TranslateOptions::default(),
        );
        let b = resources_for(
            &mesh(),
            &node(kind, "catalog"),
            &TranslateOptions::default(),
        );
        assert_eq!(a, b);
        for t in TypeUrl::ALL {
            assert_eq!(a.type_version(t), b.type_version(t));
        }
    }
}

/// Push follows change: one endpoint of one Service changes exactly that
/// Service's endpoint assignments, nothing else.
#[test]
fn an_endpoint_change_changes_only_its_assignment() {
    let before = mesh();
    let yaml = MESH.replace("10.0.1.1:8080", "10.0.1.9:8080");
    let after = Arc::new(weft_model::load_str(&yaml, "mesh.yaml").unwrap());
    let kinds = [DataPlane::Envoy, DataPlane::Grpc];
    let t1 = Translator::new(before, TranslateOptions::default());
    let old: Vec<ResourceSet> = kinds
        .iter()
        .map(|k| t1.resources_for(&node(*k, "frontend")))
        .collect();
    let t2 = t1.next(after.clone());
    let fresh = Translator::new(after, TranslateOptions::default());
    for (kind, a) in kinds.into_iter().zip(old) {
        let n = node(kind, "frontend");
        let b = t2.resources_for(&n);
        assert_eq!(b, fresh.resources_for(&n), "carry-over changes nothing");
        let mut changed = Vec::new();
        for t in TypeUrl::ALL {
            assert_eq!(names(&a, t), names(&b, t));
            for r in a.of(t) {
                if b.get(t, &r.name).unwrap().version != r.version {
                    changed.push((t, r.name.clone()));
                }
            }
        }
        assert_eq!(
            changed,
            [(
                TypeUrl::ClusterLoadAssignment,
                "catalog-v2.default:8080".to_string()
            )],
            "{kind:?}"
        );
        // Unchanged Services' pieces are carried over, not re-encoded.
        assert!(Arc::ptr_eq(
            a.get(TypeUrl::ClusterLoadAssignment, "catalog.default:8080")
                .unwrap(),
            b.get(TypeUrl::ClusterLoadAssignment, "catalog.default:8080")
                .unwrap()
        ));
    }
}

#[test]
fn groups_share_encoded_pieces() {
    let t = Translator::new(mesh(), TranslateOptions::default());
    let a = t.resources_for(&node(DataPlane::Envoy, "catalog"));
    let b = t.resources_for(&node(DataPlane::Weft, "catalog-v2"));
    let f = t.resources_for(&node(DataPlane::Envoy, "frontend"));
    let g = t.resources_for(&node(DataPlane::Grpc, "frontend"));
    let same = |t: TypeUrl, x: &ResourceSet, y: &ResourceSet, name: &str| {
        Arc::ptr_eq(x.get(t, name).unwrap(), y.get(t, name).unwrap())
    };
    // Same namespace and scope: one outbound route configuration.
    assert!(same(TypeUrl::RouteConfiguration, &a, &b, "outbound"));
    assert!(same(TypeUrl::Listener, &a, &f, "outbound"));
    // frontend's dependencies give it another scope, so another one.
    assert!(!same(TypeUrl::RouteConfiguration, &a, &f, "outbound"));
    for name in ["catalog.default:8080", "catalog-v2.default:8080"] {
        assert!(same(TypeUrl::Cluster, &a, &b, name));
        assert!(same(TypeUrl::Cluster, &a, &g, name));
        assert!(same(TypeUrl::ClusterLoadAssignment, &a, &g, name));
    }
    assert!(same(TypeUrl::Cluster, &f, &g, "users.data:7000"));
}

#[test]
fn options_reach_the_listeners_and_clusters() {
    let opts = TranslateOptions {
        outbound_port: 21001,
        inbound_port: 21006,
        connect_timeout: std::time::Duration::from_millis(250),
        ratelimit_service: None,
    };
    let set = resources_for(&mesh(), &node(DataPlane::Envoy, "catalog"), &opts);
    for (name, port) in [("outbound", 21001), ("inbound", 21006)] {
        let l: Listener = decode(&set, TypeUrl::Listener, name);
        assert!(format!("{:?}", l.address).contains(&format!("PortValue({port})")));
    }
    let c: Cluster = decode(&set, TypeUrl::Cluster, "catalog.default:8080");
    assert_eq!(c.connect_timeout.unwrap().nanos, 250_000_000);
}

#[test]
fn a_translator_is_shared_across_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Translator>();
    let t = Arc::new(Translator::new(mesh(), TranslateOptions::default()));
    let sets: Vec<ResourceSet> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let t = t.clone();
                s.spawn(move || t.resources_for(&node(DataPlane::Envoy, &format!("c{i}"))))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(sets.windows(2).all(|w| w[0] == w[1]));
}
