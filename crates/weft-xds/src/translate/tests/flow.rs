//! Issue 6 sections on Envoy routes: the fault and local rate limit
//! filters, per route, and on Envoy listeners only.

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{VirtualHost, header_matcher};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{HttpFault, fault_abort};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher;
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent};

use super::super::flow::{FAULT_FILTER, LOCAL_RATE_LIMIT_FILTER, token_fill};
use super::*;

const FLOW: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: shop}
spec:
  vip: 127.0.10.9
  ports: [{port: 8080, protocol: http}]
  endpoints: [{address: "10.0.0.1:8080"}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: front}
spec:
  ports: [{port: 3000, protocol: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop-routes}
spec:
  parentRefs: [{kind: Service, name: shop}]
  rules:
  - name: chaos
    matches: [{path: {type: PathPrefix, value: /chaos}}]
    backendRefs: [{name: shop}]
  - name: dropped
    matches: [{path: {type: PathPrefix, value: /dropped}}]
    backendRefs: [{name: shop}]
  - name: both
    matches: [{path: {type: PathPrefix, value: /both}}]
    backendRefs: [{name: shop}]
  - name: dry
    matches: [{path: {type: PathPrefix, value: /dry}}]
    backendRefs: [{name: shop}]
  - name: targeted
    matches: [{path: {type: PathPrefix, value: /targeted}}]
    backendRefs: [{name: shop}]
  - name: plain
    backendRefs: [{name: shop}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: weft
  addresses: [{value: 127.0.0.1}]
  listeners:
  - {name: web, port: 18080, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: edge-shop}
spec:
  parentRefs: [{name: edge}]
  rules:
  - backendRefs: [{name: shop}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: chaos}
spec:
  targetRefs: [{kind: HTTPRoute, name: shop-routes, sectionName: chaos}]
  fault:
    delay: {fixed: 50ms, percent: 10}
    abort: {httpStatus: 418, percent: 5}
    headers: [{name: x-chaos, value: "on"}]
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: dropped}
spec:
  targetRefs: [{kind: HTTPRoute, name: shop-routes, sectionName: dropped}]
  admission: {dropRatio: 0.2}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: both}
spec:
  targetRefs: [{kind: HTTPRoute, name: shop-routes, sectionName: both}]
  admission: {dropRatio: 0.5}
  fault: {abort: {grpcStatus: UNAVAILABLE, percent: 100}}
  rateLimit: {local: {requestsPerSecond: 100, burst: 20}}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: dry}
spec:
  targetRefs: [{kind: HTTPRoute, name: shop-routes, sectionName: dry}]
  admission: {dropRatio: 0.3, dryRun: true}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: targeted}
spec:
  targetRefs: [{kind: HTTPRoute, name: shop-routes, sectionName: targeted}]
  admission: {dropRatio: 0.4}
  fault: {delay: {fixed: 1s, percent: 100}, headers: [{name: x-chaos, value: "on"}]}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: edge-limit}
spec:
  targetRefs: [{kind: HTTPRoute, name: edge-shop}]
  rateLimit: {local: {requestsPerSecond: 0.2, burst: 2}}
"#;

fn flow_mesh() -> Arc<Config> {
    Arc::new(weft_model::load_str(FLOW, "mesh.yaml").unwrap_or_else(|e| panic!("{e}")))
}

fn set_of(config: &Config, kind: DataPlane, cluster: &str) -> ResourceSet {
    resources_for(config, &node(kind, cluster), &TranslateOptions::default())
}

/// The routes of rule `rule` of `shop-routes` in front's `outbound`.
fn shop_route(rc: &RouteConfiguration, rule: &str) -> Route {
    let v: &VirtualHost = vhost(rc, "shop.default:8080");
    let index = ["chaos", "dropped", "both", "dry", "targeted", "plain"]
        .iter()
        .position(|r| *r == rule)
        .unwrap();
    let name = format!("shop-routes/{index}");
    v.routes
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no route {name}"))
        .clone()
}

fn outbound_rc(config: &Config) -> RouteConfiguration {
    decode(
        &set_of(config, DataPlane::Envoy, "front"),
        TypeUrl::RouteConfiguration,
        "outbound",
    )
}

fn fault_of(r: &Route) -> Option<HttpFault> {
    r.typed_per_filter_config.get(FAULT_FILTER).map(unpack)
}

fn per_million(numerator: u32) -> Option<FractionalPercent> {
    Some(FractionalPercent {
        numerator,
        denominator: fractional_percent::DenominatorType::Million as i32,
    })
}

fn filter_names(l: &Listener) -> Vec<String> {
    hcm(l).http_filters.into_iter().map(|f| f.name).collect()
}

#[test]
fn a_fault_becomes_the_routes_fault_filter_config() {
    let r = shop_route(&outbound_rc(&flow_mesh()), "chaos");
    let f = fault_of(&r).expect("fault config");
    let delay = f.delay.unwrap();
    assert_eq!(delay.percentage, per_million(100_000));
    let Some(fault_delay::FaultDelaySecifier::FixedDelay(d)) = delay.fault_delay_secifier else {
        panic!("no fixed delay")
    };
    assert_eq!((d.seconds, d.nanos), (0, 50_000_000));
    let abort = f.abort.unwrap();
    assert_eq!(abort.percentage, per_million(50_000));
    assert_eq!(
        abort.error_type,
        Some(fault_abort::ErrorType::HttpStatus(418))
    );
    assert_eq!(f.headers.len(), 1);
    assert_eq!(f.headers[0].name, "x-chaos");
    let Some(header_matcher::HeaderMatchSpecifier::StringMatch(m)) =
        &f.headers[0].header_match_specifier
    else {
        panic!("{:?}", f.headers[0])
    };
    assert_eq!(
        m.match_pattern,
        Some(string_matcher::MatchPattern::Exact("on".into()))
    );
    assert!(
        !r.typed_per_filter_config
            .contains_key(LOCAL_RATE_LIMIT_FILTER)
    );
}

#[test]
fn a_drop_ratio_is_a_503_abort_unless_dry_run() {
    let rc = outbound_rc(&flow_mesh());
    let f = fault_of(&shop_route(&rc, "dropped")).expect("drop as a fault");
    assert!(f.delay.is_none() && f.headers.is_empty());
    let abort = f.abort.unwrap();
    assert_eq!(abort.percentage, per_million(200_000));
    assert_eq!(
        abort.error_type,
        Some(fault_abort::ErrorType::HttpStatus(503))
    );
    // Envoy cannot count without dropping: nothing.
    let dry = shop_route(&rc, "dry");
    assert!(dry.typed_per_filter_config.is_empty(), "{dry:?}");
    assert!(dry.metadata.is_some(), "weft still reads the dry run");
    assert!(shop_route(&rc, "plain").typed_per_filter_config.is_empty());
    // A targeted delay keeps its headers; the drop ratio cannot share them.
    let f = fault_of(&shop_route(&rc, "targeted")).unwrap();
    assert!(f.delay.is_some() && f.abort.is_none() && f.headers.len() == 1);
}

#[test]
fn a_fault_abort_wins_over_a_drop_ratio_and_a_rate_limit_rides_along() {
    let rc = outbound_rc(&flow_mesh());
    let r = shop_route(&rc, "both");
    let abort = fault_of(&r).unwrap().abort.unwrap();
    assert_eq!(
        abort.error_type,
        Some(fault_abort::ErrorType::GrpcStatus(14))
    );
    assert_eq!(abort.percentage, per_million(1_000_000));
    let l: LocalRateLimit = unpack(&r.typed_per_filter_config[LOCAL_RATE_LIMIT_FILTER]);
    assert_eq!(l.stat_prefix, "weft_rate_limit");
    let b = l.token_bucket.unwrap();
    // 100 per second: 5 tokens every 50 ms (Envoy's shortest interval).
    assert_eq!(b.max_tokens, 20);
    assert_eq!(b.tokens_per_fill.unwrap().value, 5);
    let fill = b.fill_interval.unwrap();
    assert_eq!((fill.seconds, fill.nanos), (0, 50_000_000));
    for p in [l.filter_enabled, l.filter_enforced] {
        let d = p.unwrap().default_value.unwrap();
        assert_eq!((d.numerator, d.denominator), (100, 0));
    }
    assert_eq!(
        l.enable_x_ratelimit_headers,
        XRateLimitHeadersRfcVersion::DraftVersion03 as i32
    );
}

#[test]
fn token_buckets_keep_the_rate_with_fills_of_at_least_50ms() {
    let ms = Duration::from_millis;
    assert_eq!(token_fill(100.0), (5, ms(50)));
    assert_eq!(token_fill(30.0), (3, ms(100)));
    assert_eq!(token_fill(7.0), (7, ms(1000)));
    assert_eq!(token_fill(1.5), (3, ms(2000)));
    assert_eq!(token_fill(0.2), (1, ms(5000)));
    assert_eq!(token_fill(0.05), (1, ms(20_000)));
    assert_eq!(token_fill(1_000_000.0), (50_000, ms(50)));
    for rate in [0.3, 2.5, 33.3, 99.9, 1234.5, 77_777.7] {
        let (tokens, interval) = token_fill(rate);
        assert!(interval >= ms(50), "{rate}: {interval:?}");
        let got = f64::from(tokens) / interval.as_secs_f64();
        assert!((got - rate).abs() / rate < 0.001, "{rate}: {got}");
    }
}

#[test]
fn only_envoy_listeners_get_the_filters_before_the_router() {
    let c = flow_mesh();
    let envoy = set_of(&c, DataPlane::Envoy, "front");
    let weft = set_of(&c, DataPlane::Weft, "front");
    let router = "envoy.filters.http.router";
    for name in ["outbound", "vip|127.0.10.9:8080"] {
        let l: Listener = decode(&envoy, TypeUrl::Listener, name);
        assert_eq!(
            filter_names(&l),
            [FAULT_FILTER, LOCAL_RATE_LIMIT_FILTER, router],
            "{name}"
        );
        let l: Listener = decode(&weft, TypeUrl::Listener, name);
        assert_eq!(filter_names(&l), [router], "{name}");
    }
    // The routes are the same for both: weft ignores the filter configs.
    assert_eq!(
        envoy.get(TypeUrl::RouteConfiguration, "outbound"),
        weft.get(TypeUrl::RouteConfiguration, "outbound")
    );
    // Gateways too.
    let name = "gateway|edge.default|web";
    let gw = set_of(&c, DataPlane::Envoy, "edge");
    let l: Listener = decode(&gw, TypeUrl::Listener, name);
    assert_eq!(
        filter_names(&l),
        [FAULT_FILTER, LOCAL_RATE_LIMIT_FILTER, router]
    );
    let l: Listener = decode(
        &set_of(&c, DataPlane::Weft, "edge"),
        TypeUrl::Listener,
        name,
    );
    assert_eq!(filter_names(&l), [router]);
    let rc: RouteConfiguration = decode(&gw, TypeUrl::RouteConfiguration, name);
    let r = &rc.virtual_hosts[0].routes[0];
    let l: LocalRateLimit = unpack(&r.typed_per_filter_config[LOCAL_RATE_LIMIT_FILTER]);
    let b = l.token_bucket.unwrap();
    assert_eq!((b.max_tokens, b.tokens_per_fill.unwrap().value), (2, 1));
    assert_eq!(b.fill_interval.unwrap().seconds, 5);
}

#[test]
fn routes_with_two_filter_configs_keep_their_version() {
    // Each translation builds new hash maps: the encoding must not follow
    // their order.
    let c = flow_mesh();
    let first = set_of(&c, DataPlane::Envoy, "front");
    let first = first.get(TypeUrl::RouteConfiguration, "outbound").unwrap();
    for _ in 0..20 {
        let again = set_of(&c, DataPlane::Envoy, "front");
        assert_eq!(
            again.get(TypeUrl::RouteConfiguration, "outbound").unwrap(),
            first
        );
    }
    // And the pieces decode to the same routes prost would encode.
    let rc: RouteConfiguration = decode(
        &set_of(&c, DataPlane::Envoy, "front"),
        TypeUrl::RouteConfiguration,
        "outbound",
    );
    let both = shop_route(&rc, "both");
    assert_eq!(both.typed_per_filter_config.len(), 2);
    assert!(both.metadata.is_some() && both.action.is_some());
    assert_eq!(
        rc,
        RouteConfiguration::decode(rc.encode_to_vec().as_slice()).unwrap()
    );
}

#[test]
fn without_issue_6_sections_nothing_changes() {
    // The other tests' mesh has retry and hedging policies but no issue 6
    // section: Envoy and weft nodes get the same resources, routes carry
    // no filter configs and listeners the router only.
    let c = mesh();
    for cluster in ["front", "shop"] {
        let envoy = set_of(&c, DataPlane::Envoy, cluster);
        assert_eq!(envoy, set_of(&c, DataPlane::Weft, cluster), "{cluster}");
        for r in envoy.of(TypeUrl::RouteConfiguration) {
            let rc: RouteConfiguration =
                RouteConfiguration::decode(r.body.value.as_slice()).unwrap();
            let with = rc
                .virtual_hosts
                .iter()
                .flat_map(|v| &v.routes)
                .filter(|r| !r.typed_per_filter_config.is_empty())
                .count();
            assert_eq!(with, 0, "{}", r.name);
            // Encoded by prost as before.
            assert_eq!(r.body.value, rc.encode_to_vec(), "{}", r.name);
        }
        for l in envoy.of(TypeUrl::Listener) {
            let l: Listener = Listener::decode(l.body.value.as_slice()).unwrap();
            let f = &l.filter_chains[0].filters[0];
            if f.name == "envoy.filters.network.http_connection_manager" {
                assert_eq!(filter_names(&l), ["envoy.filters.http.router"]);
            }
        }
    }
}

#[test]
fn a_global_limit_gives_envoy_the_rate_limit_filter_cluster_and_route_descriptor() {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::route::v3::{rate_limit, route};
    use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as RlFilter;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;

    let yaml = format!(
        "{FLOW}\n---\napiVersion: weft.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: shared}}\nspec:\n  targetRefs: [{{kind: HTTPRoute, name: shop-routes, sectionName: plain}}]\n  rateLimit: {{global: {{requestsPerUnit: 500, perSource: true}}}}\n"
    );
    let c = weft_model::load_str(&yaml, "mesh.yaml").unwrap_or_else(|e| panic!("{e}"));
    let rls: std::net::SocketAddr = "127.0.0.1:15010".parse().unwrap();
    let opts = TranslateOptions {
        ratelimit_service: Some(rls),
        ..TranslateOptions::default()
    };
    let envoy = resources_for(&c, &node(DataPlane::Envoy, "front"), &opts);
    let l: Listener = decode(&envoy, TypeUrl::Listener, "outbound");
    assert_eq!(
        filter_names(&l),
        [
            FAULT_FILTER,
            LOCAL_RATE_LIMIT_FILTER,
            "envoy.filters.http.ratelimit",
            "envoy.filters.http.router"
        ]
    );
    let cluster: Cluster = decode(&envoy, TypeUrl::Cluster, "weft-ratelimit");
    let ep = &cluster.load_assignment.unwrap().endpoints[0].lb_endpoints[0];
    assert!(format!("{ep:?}").contains("15010"), "{ep:?}");
    let rc: RouteConfiguration = decode(&envoy, TypeUrl::RouteConfiguration, "outbound");
    let Some(route::Action::Route(a)) = shop_route(&rc, "plain").action else {
        panic!("a route action")
    };
    let Some(rate_limit::action::ActionSpecifier::GenericKey(k)) =
        a.rate_limits[0].actions[0].action_specifier.clone()
    else {
        panic!("a generic key")
    };
    assert_eq!(
        (k.descriptor_key.as_str(), k.descriptor_value.as_str()),
        ("weft-policy", "default/shared")
    );
    // perSource: the caller's own cluster as the second entry.
    assert!(matches!(
        a.rate_limits[0].actions[1].action_specifier,
        Some(rate_limit::action::ActionSpecifier::SourceCluster(_))
    ));
    let Some(route::Action::Route(other)) = shop_route(&rc, "chaos").action else {
        panic!("a route action")
    };
    assert!(other.rate_limits.is_empty(), "only the policy's rule");
    // The filter's own config: domain weft, the cluster, admit when the
    // service is unreachable.
    let f = hcm(&l)
        .http_filters
        .into_iter()
        .find(|f| f.name == "envoy.filters.http.ratelimit")
        .unwrap();
    let Some(http_filter::ConfigType::TypedConfig(any)) = f.config_type else {
        panic!("a typed config")
    };
    let rl: RlFilter = unpack(&any);
    assert_eq!(rl.domain, "weft");
    assert!(!rl.failure_mode_deny);
    assert!(rl.rate_limited_as_resource_exhausted);
    let service = format!("{:?}", rl.rate_limit_service.unwrap());
    assert!(service.contains("weft-ratelimit"), "{service}");

    // weft nodes: the router only, no cluster (they lease from --ratelimit).
    let weft = resources_for(&c, &node(DataPlane::Weft, "front"), &opts);
    assert!(weft.get(TypeUrl::Cluster, "weft-ratelimit").is_none());
    let l: Listener = decode(&weft, TypeUrl::Listener, "outbound");
    assert_eq!(filter_names(&l), ["envoy.filters.http.router"]);
    // Without a service address Envoy gets no filter at all.
    let none = resources_for(
        &c,
        &node(DataPlane::Envoy, "front"),
        &TranslateOptions::default(),
    );
    assert!(none.get(TypeUrl::Cluster, "weft-ratelimit").is_none());
}
