//! A rule's TrafficPolicy on its routes: Envoy's retry and hedge policies,
//! and the merged sections as metadata for weft proxies.

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::route::v3::{
    HedgePolicy, RetryPolicy, VirtualHost, header_matcher, retry_policy,
};
use envoy_types::pb::google::protobuf::value;
use weft_model::{PolicyScope, PolicySections, PolicyTargetKind};

use super::*;

const MESH: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: shop}
spec:
  ports: [{name: web, port: 8080, protocol: http}, {port: 9090, protocol: grpc}]
  endpoints: [{address: "10.0.0.1:8080"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: shop-v2}
spec:
  ports: [{port: 8080, protocol: http}]
  endpoints: [{address: "10.0.0.2:8080"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: reviews}
spec:
  vip: 127.0.10.2
  ports: [{name: api, port: 8080, protocol: http}]
  endpoints: [{address: "10.0.0.3:8080"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: front}
spec:
  ports: [{port: 3000, protocol: http}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: ledger}
spec:
  ports: [{port: 80, protocol: http}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: ledger, namespace: ext}
spec:
  ports: [{port: 80, protocol: http}]
  endpoints: [{address: "10.0.1.1:80"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pages}
spec:
  parentRefs: [{kind: Service, name: shop, port: 8080}]
  rules:
  - name: read
    matches: [{method: GET}, {method: HEAD}]
    backendRefs: [{name: shop, port: 8080}]
  - name: write
    matches: [{method: POST}]
    backendRefs: [{name: shop-v2}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: reviews, weight: 1}, {name: shop-v2, weight: 1}]
  - matches: [{path: {type: PathPrefix, value: /ledger}}]
    backendRefs: [{name: ledger, namespace: ext}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: front-routes}
spec:
  parentRefs: [{kind: Service, name: front}]
  rules:
  - backendRefs: [{name: reviews}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc}
spec:
  parentRefs: [{kind: Service, name: shop, port: 9090}]
  rules:
  - name: all
    backendRefs: [{name: shop, port: 9090}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: read-hedge}
spec:
  targetRefs: [{kind: HTTPRoute, name: pages, sectionName: read}]
  hedging: {delay: 20ms, maxAttempts: 3}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: pages-retry}
spec:
  targetRefs: [{kind: HTTPRoute, name: pages}]
  retry: {maxRetries: 2, backoff: {base: 10ms, max: 100ms}, perTryTimeout: 500ms}
  failureCodes:
    http: ["5xx", "429", "408-409"]
    grpc: [UNAVAILABLE, CANCELLED, UNKNOWN]
    header: {name: x-biz-code, values: ["5003", "5100-5199", E_STOCK]}
    reset: false
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: reviews-retry}
spec:
  targetRefs: [{kind: Service, name: reviews, sectionName: api}]
  retry: {maxRetries: 1}
  outlierDetection: {consecutiveFailures: 3}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: rpc-tail}
spec:
  targetRefs: [{kind: GRPCRoute, name: rpc, sectionName: all}]
  retry: {maxRetries: 4}
  hedging: {percentile: 95, maxDelay: 50ms}
  failureCodes: {grpc: [UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS]}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: local-ledger}
spec:
  targetRefs: [{kind: Service, name: ledger}]
  hedging: {delay: 5ms}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: ledger-budget, namespace: ext}
spec:
  targetRefs: [{kind: Service, name: ledger}]
  budget: {percent: 20}
"#;

fn config() -> Arc<Config> {
    Arc::new(weft_model::load_str(MESH, "mesh.yaml").unwrap_or_else(|e| panic!("{e}")))
}

/// The `outbound` route configuration of a sidecar beside `cluster`.
fn outbound(config: &Config, cluster: &str) -> RouteConfiguration {
    let set = resources_for(
        config,
        &node(DataPlane::Envoy, cluster),
        &TranslateOptions::default(),
    );
    decode(&set, TypeUrl::RouteConfiguration, "outbound")
}

fn route<'a>(v: &'a VirtualHost, name: &str) -> &'a Route {
    v.routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route {name} in {}", v.name))
}

fn retry(r: &Route) -> Option<&RetryPolicy> {
    action(r).retry_policy.as_ref()
}

fn hedge(r: &Route) -> Option<&HedgePolicy> {
    action(r).hedge_policy.as_ref()
}

/// The policy JSON of `metadata`, parsed.
fn policy_json(metadata: Option<&Metadata>) -> Option<serde_json::Value> {
    let md = metadata?
        .filter_metadata
        .get(crate::translate::POLICY_METADATA_KEY)?;
    let Some(value::Kind::StringValue(json)) = &md.fields[crate::translate::POLICY_JSON_FIELD].kind
    else {
        panic!("{md:?}")
    };
    Some(serde_json::from_str(json).unwrap())
}

fn json_of(sections: &PolicySections) -> serde_json::Value {
    serde_json::to_value(sections).unwrap()
}

fn ms(d: &envoy_types::pb::google::protobuf::Duration) -> i64 {
    d.seconds * 1000 + i64::from(d.nanos / 1_000_000)
}

#[test]
fn a_rule_policy_lands_on_that_rules_routes_only() {
    let c = config();
    let rc = outbound(&c, "front");
    let shop = vhost(&rc, "shop.default:8080");
    // Both matches of `read` are hedged: every 20 ms another attempt, up to
    // 3 in all (the route's 2 retries count the hedges too).
    let reads: Vec<&Route> = shop.routes.iter().filter(|r| r.name == "pages/0").collect();
    assert_eq!(reads.len(), 2);
    for r in reads {
        assert!(hedge(r).unwrap().hedge_on_per_try_timeout, "{r:?}");
        let p = retry(r).unwrap();
        assert_eq!(
            ms(p.per_try_timeout.as_ref().unwrap()),
            20,
            "the hedge delay"
        );
        assert_eq!(p.num_retries.unwrap().value, 2);
    }
    for name in ["pages/1", "pages/2", "pages/3"] {
        let r = route(shop, name);
        assert!(hedge(r).is_none(), "{name}");
        assert_eq!(
            ms(retry(r).unwrap().per_try_timeout.as_ref().unwrap()),
            500,
            "{name}: the route's perTryTimeout"
        );
        assert!(policy_json(r.metadata.as_ref()).unwrap()["hedging"].is_null());
    }
}

#[test]
fn a_route_policy_reaches_every_rule_with_envoys_retry_conditions() {
    let c = config();
    let rc = outbound(&c, "front");
    let shop = vhost(&rc, "shop.default:8080");
    for name in ["pages/0", "pages/1", "pages/2", "pages/3"] {
        let p = retry(route(shop, name)).unwrap();
        assert_eq!(
            p.retry_on,
            "5xx,retriable-status-codes,retriable-headers,connect-failure,cancelled,unavailable",
            "{name}: no reset (reset: false), no UNKNOWN (Envoy has no name for it)"
        );
        assert_eq!(p.retriable_status_codes, [408, 409, 429], "{name}");
        let headers: Vec<_> = p
            .retriable_headers
            .iter()
            .map(|h| (h.name.as_str(), h.header_match_specifier.clone().unwrap()))
            .collect();
        assert_eq!(headers.len(), 3);
        assert!(headers.iter().all(|(n, _)| *n == "x-biz-code"));
        let Some(header_matcher::HeaderMatchSpecifier::RangeMatch(r)) =
            &p.retriable_headers[1].header_match_specifier
        else {
            panic!("{headers:?}")
        };
        assert_eq!((r.start, r.end), (5100, 5200), "Envoy's end is exclusive");
        assert_eq!(p.num_retries.unwrap().value, 2);
        let backoff = p.retry_back_off.unwrap();
        assert_eq!(ms(&backoff.base_interval.unwrap()), 10);
        assert_eq!(ms(&backoff.max_interval.unwrap()), 100);
        assert_eq!(p.host_selection_retry_max_attempts, 3);
        let [predicate] = p.retry_host_predicate.as_slice() else {
            panic!("{p:?}")
        };
        assert_eq!(predicate.name, "envoy.retry_host_predicates.previous_hosts");
        let Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(any)) =
            &predicate.config_type
        else {
            panic!("{predicate:?}")
        };
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
        );
    }
}

#[test]
fn the_metadata_is_the_merged_policy_of_the_rule() {
    let c = config();
    let rc = outbound(&c, "front");
    let shop = vhost(&rc, "shop.default:8080");
    let scope = |service, port_name, rule| PolicyScope {
        namespace: "default",
        service,
        port_name,
        route: Some((PolicyTargetKind::HTTPRoute, "pages", rule)),
    };
    let read = c.effective_policy(scope("shop", Some("web"), Some("read")));
    assert_eq!(
        read.sources,
        [
            ("hedging", "default/read-hedge".to_string()),
            ("failureCodes", "default/pages-retry".to_string()),
            ("retry", "default/pages-retry".to_string()),
        ]
    );
    let json = policy_json(route(shop, "pages/0").metadata.as_ref()).unwrap();
    assert_eq!(json, json_of(&read.sections));
    assert_eq!(json["hedging"]["max_attempts"], 3, "{json}");
    assert_eq!(json["retry"]["max_retries"], 2, "{json}");
    // A split takes the policy of its first backend's Service (port `api`):
    // reviews' outlier detection, the route's retry over reviews' retry.
    let split = c.effective_policy(scope("reviews", Some("api"), None));
    assert!(split.sections.outlier_detection.is_some());
    let json = policy_json(route(shop, "pages/2").metadata.as_ref()).unwrap();
    assert_eq!(json, json_of(&split.sections));
    assert_eq!(json["retry"]["max_retries"], 2, "{json}");
}

#[test]
fn a_service_policy_reaches_every_route_to_that_service() {
    let c = config();
    let rc = outbound(&c, "front");
    let reviews = c.effective_policy(PolicyScope {
        namespace: "default",
        service: "reviews",
        port_name: Some("api"),
        route: None,
    });
    // front's rule to reviews, and reviews' own default route.
    let front = route(vhost(&rc, "front.default:3000"), "front-routes/0");
    let default = route(vhost(&rc, "reviews.default:8080"), "default");
    for r in [front, default] {
        let p = retry(r).unwrap();
        assert_eq!(p.num_retries.unwrap().value, 1);
        // The default failure codes: 5xx, connect failures, resets, and the
        // gRPC codes Envoy can name.
        assert_eq!(
            p.retry_on,
            "5xx,connect-failure,reset,deadline-exceeded,internal,unavailable"
        );
        assert!(p.per_try_timeout.is_none() && hedge(r).is_none());
        assert_eq!(
            policy_json(r.metadata.as_ref()),
            Some(json_of(&reviews.sections))
        );
    }
    // The VIP listener's routes too.
    let set = resources_for(
        &c,
        &node(DataPlane::Envoy, "front"),
        &TranslateOptions::default(),
    );
    let vip: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "vip|127.0.10.2:8080");
    let vip_route = &vip.virtual_hosts[0].routes[0];
    assert_eq!(retry(vip_route).unwrap().num_retries.unwrap().value, 1);
}

#[test]
fn a_rule_to_another_namespace_takes_that_namespaces_service_policy() {
    let c = config();
    let rc = outbound(&c, "front");
    let r = route(vhost(&rc, "shop.default:8080"), "pages/3");
    let json = policy_json(r.metadata.as_ref()).unwrap();
    // ext/ledger's budget, not default/ledger's hedging.
    assert_eq!(json["budget"]["percent"], 20.0, "{json}");
    assert!(json["hedging"].is_null(), "{json}");
    assert!(hedge(r).is_none());
    assert_eq!(
        json["retry"]["max_retries"], 2,
        "the route's own retry: {json}"
    );
}

#[test]
fn a_percentile_hedge_needs_max_delay_for_envoy() {
    let c = config();
    let rc = outbound(&c, "front");
    let rpc = route(vhost(&rc, "shop.default:9090"), "rpc/0");
    assert!(hedge(rpc).unwrap().hedge_on_per_try_timeout);
    let p = retry(rpc).unwrap();
    assert_eq!(ms(p.per_try_timeout.as_ref().unwrap()), 50, "maxDelay");
    assert_eq!(
        p.num_retries.unwrap().value,
        4,
        "maxRetries over maxAttempts - 1"
    );
    assert_eq!(
        p.retry_on, "5xx,connect-failure,reset,deadline-exceeded,unavailable",
        "DATA_LOSS has no Envoy name"
    );
    // Without maxDelay Envoy has no delay to hedge on: retries only.
    let yaml = MESH.replace("maxDelay: 50ms", "minDelay: 2ms");
    let c = Arc::new(weft_model::load_str(&yaml, "mesh.yaml").unwrap());
    let rc = outbound(&c, "front");
    let rpc = route(vhost(&rc, "shop.default:9090"), "rpc/0");
    assert!(hedge(rpc).is_none());
    let p = retry(rpc).unwrap();
    assert!(p.per_try_timeout.is_none());
    assert_eq!(p.num_retries.unwrap().value, 4);
    // weft proxies still get the percentile.
    let json = policy_json(rpc.metadata.as_ref()).unwrap();
    assert_eq!(json["hedging"]["delay"]["Percentile"]["percentile"], 95.0);
}

#[test]
fn hedging_alone_hedges_without_retrying() {
    let yaml = MESH.replace(
        "  retry: {maxRetries: 2, backoff: {base: 10ms, max: 100ms}, perTryTimeout: 500ms}\n",
        "",
    );
    let c = Arc::new(weft_model::load_str(&yaml, "mesh.yaml").unwrap());
    let rc = outbound(&c, "front");
    let shop = vhost(&rc, "shop.default:8080");
    let read = route(shop, "pages/0");
    assert!(hedge(read).unwrap().hedge_on_per_try_timeout);
    let p = retry(read).unwrap();
    // A condition no response meets: Envoy only hedges under a retry policy.
    assert_eq!(p.retry_on, "retriable-status-codes");
    assert!(p.retriable_status_codes.is_empty());
    assert_eq!(p.num_retries.unwrap().value, 2);
    assert_eq!(ms(p.per_try_timeout.as_ref().unwrap()), 20);
    let backoff = p.retry_back_off.unwrap();
    assert_eq!(
        ms(&backoff.base_interval.unwrap()),
        1,
        "hedges wait the back-off"
    );
    // The other rules have failure codes but no retry or hedging: nothing
    // for Envoy, the codes for weft proxies.
    let write = route(shop, "pages/1");
    assert!(retry(write).is_none() && hedge(write).is_none());
    assert!(policy_json(write.metadata.as_ref()).unwrap()["failure_codes"].is_object());
}

#[test]
fn grpc_clients_get_the_grpc_codes_and_no_hedging() {
    let c = config();
    let set = resources_for(
        &c,
        &node(DataPlane::Grpc, "front"),
        &TranslateOptions::default(),
    );
    let rc: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "shop.default:9090");
    let rpc = &rc.virtual_hosts[0].routes[0];
    assert!(hedge(rpc).is_none());
    let p = retry(rpc).unwrap();
    assert_eq!(p.retry_on, "deadline-exceeded,unavailable");
    assert_eq!(p.num_retries.unwrap().value, 4);
    assert!(p.per_try_timeout.is_none() && p.retry_host_predicate.is_empty());
    assert!(policy_json(rpc.metadata.as_ref()).is_some());
    // A rule whose codes have no gRPC name gets no retry policy (gRPC would
    // drop it), and `maxRetries: 0` none either (gRPC rejects it).
    let rc: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "shop.default:8080");
    let write = rc.virtual_hosts[0]
        .routes
        .iter()
        .find(|r| r.name == "pages/1")
        .unwrap();
    assert_eq!(retry(write).unwrap().retry_on, "cancelled,unavailable");
    let yaml = MESH.replace("maxRetries: 4", "maxRetries: 0");
    let c = Arc::new(weft_model::load_str(&yaml, "mesh.yaml").unwrap());
    let set = resources_for(
        &c,
        &node(DataPlane::Grpc, "front"),
        &TranslateOptions::default(),
    );
    let rc: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "shop.default:9090");
    assert!(retry(&rc.virtual_hosts[0].routes[0]).is_none());
}

#[test]
fn routes_without_a_policy_carry_nothing() {
    let c = config();
    let rc = outbound(&c, "front");
    let v2 = route(vhost(&rc, "shop-v2.default:8080"), "default");
    assert!(v2.metadata.is_none() && retry(v2).is_none() && hedge(v2).is_none());
    // The policies change nothing else: without them, the same routes.
    let bare = MESH
        .split("\n---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy")
        .next();
    let bare = Arc::new(weft_model::load_str(bare.unwrap(), "mesh.yaml").unwrap());
    let plain = outbound(&bare, "front");
    let mut stripped = rc.clone();
    for v in &mut stripped.virtual_hosts {
        for r in &mut v.routes {
            r.metadata = None;
            if let Some(route::Action::Route(a)) = &mut r.action {
                a.retry_policy = None;
                a.hedge_policy = None;
            }
        }
    }
    assert_eq!(stripped, plain);
    for v in &plain.virtual_hosts {
        for r in &v.routes {
            assert!(r.metadata.is_none(), "{}", r.name);
        }
    }
}

#[test]
fn a_gateway_route_takes_its_rule_policy() {
    let yaml = format!(
        "{MESH}{}",
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: weft
  listeners: [{name: web, port: 18000, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: edge-routes}
spec:
  parentRefs: [{name: edge}]
  rules:
  - name: slow
    backendRefs: [{name: shop, port: 8080}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: edge-hedge}
spec:
  targetRefs: [{kind: HTTPRoute, name: edge-routes, sectionName: slow}]
  hedging: {delay: 30ms}
"#
    );
    let c = Arc::new(weft_model::load_str(&yaml, "mesh.yaml").unwrap_or_else(|e| panic!("{e}")));
    let set = resources_for(
        &c,
        &node(DataPlane::Envoy, "edge"),
        &TranslateOptions::default(),
    );
    let rc: RouteConfiguration = decode(
        &set,
        TypeUrl::RouteConfiguration,
        "gateway|edge.default|web",
    );
    let r = &rc.virtual_hosts[0].routes[0];
    assert!(hedge(r).is_some());
    assert_eq!(ms(retry(r).unwrap().per_try_timeout.as_ref().unwrap()), 30);
    assert_eq!(
        policy_json(r.metadata.as_ref()).unwrap()["hedging"]["max_attempts"],
        2
    );
}
