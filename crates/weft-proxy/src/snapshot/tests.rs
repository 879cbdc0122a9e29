use std::time::Duration;

use weft_xds::envoy_types::pb::envoy::config::core::v3::{
    Address, SocketAddress, address, socket_address,
};
use weft_xds::envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use weft_xds::envoy_types::pb::envoy::config::listener::v3::Listener;
use weft_xds::envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use weft_xds::envoy_types::pb::google::protobuf::Any;
use weft_xds::{Resource, TypeUrl};

use super::*;

mod policy;
use crate::metrics::ProxyMetrics;
use crate::upstream::EndpointRegistry;

const CONFIG: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog}
spec:
  vip: 127.0.10.1
  ports: [{port: 8080, protocol: http}, {port: 9000, protocol: tcp}]
  endpoints: [{address: "127.0.0.1:9001", weight: 3}, {address: "127.0.0.1:9002"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog-v2, namespace: shop}
spec:
  ports: [{port: 8080, protocol: grpc}]
  endpoints: [{address: "127.0.0.1:9003"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: frontend}
spec:
  ports: [{port: 3000, protocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split}
spec:
  parentRefs: [{kind: Service, name: catalog}]
  rules:
  - backendRefs: [{name: catalog, weight: 90}, {name: catalog-v2, namespace: shop, weight: 10}]
  - matches: [{path: {type: Exact, value: /v2}}]
    backendRefs: [{name: catalog-v2, namespace: shop}]
    timeouts: {request: 2s}
"#;

fn options() -> BuildOptions {
    BuildOptions {
        connect_timeout: Duration::from_secs(1),
        zone: None,
        local_service: "test.default".into(),
        global_limits: crate::global_limit::GlobalLimits::new(None, "test.default"),
    }
}

fn config() -> Arc<Config> {
    Arc::new(weft_model::load_str(CONFIG, "t.yaml").unwrap())
}

/// What the sidecar of `service` gets for CONFIG (`--config`, or a control
/// plane serving it: the same resources).
fn resources(service: &str) -> ResourceSet {
    standalone::resources(&config(), service, Duration::from_secs(1))
}

fn build(set: &ResourceSet) -> Snapshot {
    SnapshotBuilder::new(options())
        .build(set, 1, &EndpointRegistry::default(), &ProxyMetrics::new())
        .unwrap()
}

fn snapshot() -> Snapshot {
    build(&resources("client"))
}

fn parts(path: &str) -> http::request::Parts {
    http::Request::get(path).body(()).unwrap().into_parts().0
}

fn addr(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn assignment(name: &str, endpoints: &[(&str, u32, u32)]) -> Resource {
    let cla = ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|(ip, port, w)| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: addr(ip, *port),
                        ..Default::default()
                    })),
                    load_balancing_weight: Some(
                        weft_xds::envoy_types::pb::google::protobuf::UInt32Value { value: *w },
                    ),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    };
    Resource::new(TypeUrl::ClusterLoadAssignment, name, &cla)
}

#[test]
fn hosts_resolve_in_every_form() {
    let s = snapshot();
    for host in [
        "catalog",
        "catalog:8080",
        "catalog.default",
        "CATALOG.default.svc",
        "catalog.default.svc.cluster.local:8080",
        "catalog.default.svc.cluster.local.",
        "catalog-v2.shop",
    ] {
        assert!(s.lookup_host(host).is_some(), "{host} should resolve");
    }
    assert!(
        s.lookup_host("catalog-v2").is_none(),
        "bare names resolve in the local namespace only"
    );
    assert!(
        s.lookup_host("catalog:9000").is_none(),
        "tcp ports have no HTTP routes"
    );
    assert!(s.lookup_host("catalog:1234").is_none());
    assert!(s.lookup_host("nothing").is_none());
}

#[test]
fn rules_follow_precedence_and_split_by_weight() {
    let s = snapshot();
    let table = s.lookup_host("catalog").unwrap();
    let exact = table.find(&parts("/v2")).unwrap();
    assert_eq!(
        &*exact.label, "split/1",
        "the exact match wins over the prefix rule written first"
    );
    assert_eq!(exact.timeout, Some(Duration::from_secs(2)));
    let rule = table.find(&parts("/items")).unwrap();
    assert_eq!(rule.timeout, None, "no timeout configured: none");
    let mut v2 = 0;
    for _ in 0..1000 {
        if &*rule.pick_backend().unwrap().label == "catalog-v2.shop" {
            v2 += 1;
        }
    }
    assert_eq!(v2, 100);
}

#[test]
fn endpoints_are_picked_by_weight() {
    let s = snapshot();
    let rule = s
        .lookup_host("catalog-v2.shop")
        .unwrap()
        .find(&parts("/"))
        .unwrap();
    assert_eq!(&*rule.label, "default");
    assert!(rule.backends[0].http2, "grpc ports speak HTTP/2 upstream");
    let table = s.lookup_host("catalog").unwrap();
    let cluster = table.find(&parts("/x")).unwrap().backends[0].clone();
    assert_eq!(&*cluster.label, "catalog.default");
    assert!(!cluster.http2);
    let mut first = 0;
    for _ in 0..400 {
        if cluster.pick().unwrap().addr.port() == 9001 {
            first += 1;
        }
    }
    assert_eq!(first, 300);
}

#[test]
fn vips_become_listeners_per_port() {
    let s = snapshot();
    let addrs: Vec<String> = s.vips.keys().map(|a| a.to_string()).collect();
    assert_eq!(addrs, ["127.0.10.1:8080", "127.0.10.1:9000"]);
    assert!(matches!(s.vips.values().nth(1), Some(VipTarget::Tcp(c)) if c.endpoints.len() == 2));
    assert!(
        matches!(s.vips.values().next(), Some(VipTarget::Http(t)) if t.rules.len() == 2),
        "the HTTP VIP routes like the Service's host"
    );
}

#[test]
fn the_inbound_listener_names_the_local_app() {
    assert!(snapshot().inbound.is_none(), "a client-only workload");
    let s = build(&resources("frontend"));
    let app = s
        .inbound
        .as_ref()
        .expect("frontend has an inbound listener");
    assert_eq!(app.addr.to_string(), "127.0.0.1:3000");
}

#[test]
fn endpoint_clients_survive_a_rebuild() {
    let reg = EndpointRegistry::default();
    let m = ProxyMetrics::new();
    let mut b = SnapshotBuilder::new(options());
    let a = b.build(&resources("client"), 1, &reg, &m).unwrap();
    let c = b.build(&resources("client"), 2, &reg, &m).unwrap();
    let ep = |s: &Snapshot| {
        s.lookup_host("catalog-v2.shop").unwrap().rules[0].backends[0].endpoints[0].clone()
    };
    assert!(
        Arc::ptr_eq(&ep(&a), &ep(&c)),
        "warm connection pools are reused"
    );
}

#[test]
fn an_endpoint_update_keeps_the_pools_of_unchanged_endpoints() {
    let reg = EndpointRegistry::default();
    let m = ProxyMetrics::new();
    let mut b = SnapshotBuilder::new(options());
    let mut set = resources("client");
    let before = b.build(&set, 1, &reg, &m).unwrap();
    // One endpoint replaced, one kept (the Service's tcp port shares the
    // endpoints): only the assignments change.
    for port in [8080, 9000] {
        set.insert(assignment(
            &format!("catalog.default:{port}"),
            &[("127.0.0.1", 9001, 3), ("127.0.0.1", 9009, 1)],
        ));
    }
    let after = b.build(&set, 2, &reg, &m).unwrap();
    let eps = |s: &Snapshot| {
        s.lookup_host("catalog").unwrap().rules[1].backends[0]
            .endpoints
            .clone()
    };
    let (old, new) = (eps(&before), eps(&after));
    assert_eq!(new.len(), 2);
    assert!(
        Arc::ptr_eq(&old[0], &new[0]),
        "127.0.0.1:9001 keeps its pool"
    );
    assert_eq!(new[1].addr.port(), 9009);
    let removed = Arc::downgrade(&old[1]);
    drop((before, old));
    reg.retain_used();
    assert!(
        removed.upgrade().is_none(),
        "the removed endpoint's pool was let go"
    );
}

#[test]
fn references_to_missing_resources_mean_no_endpoints() {
    let mut set = resources("client");
    set.by_type
        .get_mut(&TypeUrl::ClusterLoadAssignment)
        .unwrap()
        .remove("catalog.default:8080");
    set.by_type
        .get_mut(&TypeUrl::Cluster)
        .unwrap()
        .remove("catalog-v2.shop:8080");
    let s = build(&set);
    let rule = &s.lookup_host("catalog").unwrap().rules[1];
    let by_label = |l: &str| {
        rule.backends
            .iter()
            .find(|c| &*c.label == l)
            .unwrap()
            .clone()
    };
    assert!(by_label("catalog.default").endpoints.is_empty());
    assert!(by_label("catalog-v2.shop").endpoints.is_empty());
}

#[test]
fn a_garbage_resource_is_rejected_naming_it() {
    let mut b = SnapshotBuilder::new(options());
    let garbage = Arc::new(Resource {
        type_url: TypeUrl::RouteConfiguration,
        name: "outbound".into(),
        version: "1".into(),
        body: Any {
            type_url: TypeUrl::RouteConfiguration.as_str().into(),
            value: vec![0x0a, 0xff, 0xff, 0xff],
        },
    });
    let err = b.check(&garbage).unwrap_err();
    assert_eq!(err.name, "outbound");
    let text = err.to_string();
    assert!(
        text.starts_with("RouteConfiguration \"outbound\": cannot decode"),
        "{text}"
    );
    // The same resource inside a set fails the build the same way.
    let mut set = resources("client");
    set.insert_shared(garbage);
    let Err(err) = b.build(&set, 1, &EndpointRegistry::default(), &ProxyMetrics::new()) else {
        panic!("a set with garbage built");
    };
    assert!(err.to_string().contains("cannot decode"), "{err}");
}

fn route_config(name: &str, domains: &[&str], route: Route) -> Arc<Resource> {
    let rc = RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "svc.ns:80".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    };
    Arc::new(Resource::new(TypeUrl::RouteConfiguration, name, &rc))
}

fn to_cluster(prefix: &str, cluster: &str, timeout: Option<Duration>) -> Route {
    Route {
        name: "r".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.into())),
            timeout: timeout.map(|t| weft_xds::envoy_types::pb::google::protobuf::Duration {
                seconds: t.as_secs() as i64,
                nanos: 0,
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

#[test]
fn what_weft_cannot_honour_is_rejected_with_the_reason() {
    let mut b = SnapshotBuilder::new(options());
    let check = |b: &mut SnapshotBuilder, r: Arc<Resource>| b.check(&r).unwrap_err().to_string();

    let wildcard = route_config("outbound", &["*.example.com"], to_cluster("/", "c", None));
    assert!(check(&mut b, wildcard).contains("weft matches exact domains and `*` only"));

    let mut redirect = to_cluster("/", "c", None);
    redirect.action = Some(route::Action::Redirect(Default::default()));
    let err = check(&mut b, route_config("outbound", &["a"], redirect));
    assert!(
        err.contains("route 0 (r): action redirect is not supported"),
        "{err}"
    );

    let mut regex = to_cluster("/", "c", None);
    regex.r#match.as_mut().unwrap().path_specifier = Some(route_match::PathSpecifier::SafeRegex(
        weft_xds::envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
            regex: "(unclosed".into(),
            ..Default::default()
        },
    ));
    assert!(check(&mut b, route_config("outbound", &["a"], regex)).contains("path regex"));

    let listener = Listener {
        name: "gateway-ish".into(),
        ..Default::default()
    };
    let err = check(
        &mut b,
        Arc::new(Resource::new(TypeUrl::Listener, "gateway-ish", &listener)),
    );
    assert!(err.contains("weft sidecars take the listeners"), "{err}");

    let err = check(
        &mut b,
        Arc::new(assignment("c", &[("catalog.local", 80, 1)])),
    );
    assert!(err.contains("not an IP address"), "{err}");
    let err = check(&mut b, Arc::new(assignment("c", &[("127.0.0.1", 80, 0)])));
    assert!(err.contains("load_balancing_weight 0"), "{err}");
}

#[test]
fn domains_timeouts_and_prefixes_mean_what_envoy_says() {
    let mut set = resources("client");
    // Upper-case domains with ports; a plain (string) prefix; no timeout
    // means Envoy's 15 s default.
    set.insert_shared(route_config(
        "outbound",
        &["Shop.Example:8080", "*"],
        to_cluster("/api", "catalog.default:8080", None),
    ));
    let s = build(&set);
    let table = s.lookup_host("shop.example:8080").unwrap();
    assert_eq!(
        &*table.service, "svc.ns",
        "the virtual host name without its port"
    );
    let rule = table.find(&parts("/apix")).unwrap();
    assert_eq!(rule.timeout, Some(Duration::from_secs(15)));
    assert!(table.find(&parts("/other")).is_none());
    assert!(
        s.lookup_host("anything-else").is_some(),
        "`*` takes every other authority"
    );
}
