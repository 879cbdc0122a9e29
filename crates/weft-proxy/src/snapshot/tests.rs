use super::*;

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

fn snapshot() -> Snapshot {
    let config = weft_model::load_str(CONFIG, "t.yaml").unwrap();
    let opts = BuildOptions {
        connect_timeout: Duration::from_secs(1),
        local_namespace: "default".into(),
    };
    Snapshot::build(
        Arc::new(config),
        1,
        &opts,
        &EndpointRegistry::default(),
        &ProxyMetrics::new(),
    )
}

fn parts(path: &str) -> http::request::Parts {
    http::Request::get(path).body(()).unwrap().into_parts().0
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
    let table = s.lookup_host("catalog").unwrap();
    let cluster = table.find(&parts("/x")).unwrap().backends[0].clone();
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
}

#[test]
fn endpoint_clients_survive_a_rebuild() {
    let config = Arc::new(weft_model::load_str(CONFIG, "t.yaml").unwrap());
    let opts = BuildOptions {
        connect_timeout: Duration::from_secs(1),
        local_namespace: "default".into(),
    };
    let reg = EndpointRegistry::default();
    let m = ProxyMetrics::new();
    let a = Snapshot::build(config.clone(), 1, &opts, &reg, &m);
    let b = Snapshot::build(config, 2, &opts, &reg, &m);
    let ep = |s: &Snapshot| {
        s.lookup_host("catalog-v2.shop").unwrap().rules[0].backends[0].endpoints[0].clone()
    };
    assert!(
        Arc::ptr_eq(&ep(&a), &ep(&b)),
        "warm connection pools are reused"
    );
}
