//! TrafficPolicy issue 6 sections -> Envoy HTTP filters, per route (the
//! retry and hedge settings are in `route_policy`).
//!
//! weft proxies read `admission`, `rateLimit`, `fault` and `deadline` from
//! the route's policy metadata. Envoy gets the nearest standard filters:
//! each route whose rule needs one carries the filter's whole config in
//! `typed_per_filter_config` (Envoy replaces the listener-level config with
//! it), and Envoy listeners carry the filters themselves, before the
//! router, with a config that does nothing on its own.
//!
//! | TrafficPolicy | Envoy |
//! |---|---|
//! | `fault.delay` | `envoy.filters.http.fault`: `delay.fixed_delay`, `delay.percentage` (out of a million) |
//! | `fault.abort` | the same filter: `abort.http_status` or `abort.grpc_status`, `abort.percentage` (out of a million) |
//! | `fault.headers` | the same filter: `headers`, each an exact `string_match` |
//! | `admission.dropRatio` (not `dryRun`, no `sources`) | the same filter: `abort.http_status: 503`, `abort.percentage` = the ratio; a gRPC request gets Envoy's gRPC form of a 503, `UNAVAILABLE` |
//! | `rateLimit.local` | `envoy.filters.http.local_ratelimit` (stat prefix `weft_rate_limit`): `token_bucket.max_tokens` = `burst`; `tokens_per_fill` / `fill_interval` = the rate with a fill interval of at least 50 ms (Envoy's minimum); `filter_enabled` and `filter_enforced` 100%; `x-ratelimit-*` response headers (`DRAFT_VERSION_03`); 429 when limited |
//! | `rateLimit.global` | `envoy.filters.http.ratelimit` (domain `weft`, the rate-limit service as cluster `weft-ratelimit`, 100 ms timeout, `x-ratelimit-*` headers, gRPC requests refused with `RESOURCE_EXHAUSTED`) and on the route `rate_limits: [{actions: [{generic_key: {descriptor_key: weft-policy, descriptor_value: NAMESPACE/POLICY}}]}]`: one call to the service per request; the service applies `failureMode` when its counters are unreachable, Envoy admits when the service itself is (`failure_mode_deny: false`) |
//! | `deadline` | nothing (Envoy does not read weft's deadline header) |
//!
//! The listener filters: Envoy nodes get the fault filter when any
//! TrafficPolicy of the config sets `fault` or a drop ratio Envoy can
//! express, and the local rate limit filter when any sets
//! `rateLimit.local`, and the rate limit filter when any sets
//! `rateLimit.global` and the control plane names a rate-limit service
//! ([`super::TranslateOptions::ratelimit_service`], served with the
//! cluster `weft-ratelimit`); weft nodes never (weft takes the router only and
//! reads the metadata instead). A config without those sections gives
//! every node the listeners it gave before.
//!
//! What Envoy cannot do: answer a drop with `weft-error: dropped`; count
//! drops in dry run (a `dryRun` admission gets nothing); drop only the
//! requests of some source Services (`sources`) or deny whole callers
//! (`deniedSources`): Envoy would need the caller's identity, which a
//! sidecar without mTLS does not have; a drop ratio together with
//! `fault.abort`, or with a delay targeted by `fault.headers` (the fault is
//! kept, the drop ratio lost: Envoy's fault filter has one abort and one
//! header condition); every rate exactly (the fill interval
//! is whole milliseconds, so some rates are off by up to 0.1%); deadline
//! propagation. Proxyless gRPC clients get none of this: it stays with
//! proxies.

use std::collections::BTreeMap;
use std::time::Duration;

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    ApiVersion, GrpcService, RuntimeFractionalPercent, grpc_service,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RateLimit as RouteRateLimit, Route, RouteConfiguration, VirtualHost,
    header_matcher, rate_limit, route,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{FaultDelay, fault_delay};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort, HttpFault, fault_abort,
};
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::ratelimit::v3::RateLimit as RateLimitFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpFilter, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket, fractional_percent};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};
use weft_model::{
    AbortStatus, Config, GlobalRateLimit, LocalRateLimit as WeftRateLimit, PolicySections,
};

use super::TranslateOptions;
use super::proto::{any, duration, socket_address, uint32};
use crate::resource::{Resource, TypeUrl};

/// HTTP filter name of Envoy's fault filter.
pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// HTTP filter name of Envoy's local rate limit filter.
pub(super) const LOCAL_RATE_LIMIT_FILTER: &str = "envoy.filters.http.local_ratelimit";
/// HTTP filter name of Envoy's (global) rate limit filter.
pub(super) const RATE_LIMIT_FILTER: &str = "envoy.filters.http.ratelimit";
/// The cluster of the rate-limit service on Envoy nodes.
pub const RATE_LIMIT_CLUSTER: &str = "weft-ratelimit";
/// How long Envoy waits for the rate-limit service before admitting.
const RATE_LIMIT_TIMEOUT: Duration = Duration::from_millis(100);
/// Stat prefix of the local rate limit filter.
const RATE_LIMIT_STAT_PREFIX: &str = "weft_rate_limit";
/// Envoy's shortest token bucket fill interval.
const MIN_FILL_INTERVAL_MS: u64 = 50;
/// The longest fill interval tried for an exact rate.
const MAX_FILL_INTERVAL_MS: u64 = 10_000;

/// The policy filters a node's HTTP listeners carry before the router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub(super) struct PolicyFilters {
    pub fault: bool,
    pub rate_limit: bool,
    /// The global rate limit filter (and the `weft-ratelimit` cluster).
    pub global_rate_limit: bool,
}

impl PolicyFilters {
    /// What Envoy nodes need for `config` (see the module doc).
    pub(super) fn for_envoy(config: &Config, opts: &TranslateOptions) -> PolicyFilters {
        let mut filters = PolicyFilters::default();
        for p in &config.traffic_policies {
            let s = &p.sections;
            filters.fault |= s.fault.is_some() || drop_ratio(s).is_some();
            filters.rate_limit |= s.rate_limit.as_ref().is_some_and(|r| r.local.is_some());
            filters.global_rate_limit |= opts.ratelimit_service.is_some()
                && s.rate_limit.as_ref().is_some_and(|r| r.global.is_some());
        }
        filters
    }

    /// The HTTP filters of a connection manager, the router last.
    pub(super) fn http_filters(self) -> Vec<HttpFilter> {
        let mut filters = Vec::with_capacity(3);
        if self.fault {
            filters.push(typed_filter(FAULT_FILTER, any(&HttpFault::default())));
        }
        if self.rate_limit {
            let listener_level = LocalRateLimit {
                stat_prefix: RATE_LIMIT_STAT_PREFIX.into(),
                ..Default::default()
            };
            filters.push(typed_filter(LOCAL_RATE_LIMIT_FILTER, any(&listener_level)));
        }
        if self.global_rate_limit {
            filters.push(typed_filter(
                RATE_LIMIT_FILTER,
                any(&global_rate_limit_filter()),
            ));
        }
        filters.push(super::proto::router_filter());
        filters
    }
}

fn typed_filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

/// Puts the fault and local rate limit configs `sections` asks for on `r`.
pub(super) fn apply(r: &mut Route, sections: &PolicySections) {
    if let Some(fault) = fault(sections) {
        r.typed_per_filter_config
            .insert(FAULT_FILTER.into(), any(&fault));
    }
    if let Some(local) = sections.rate_limit.as_ref().and_then(|l| l.local.as_ref()) {
        r.typed_per_filter_config.insert(
            LOCAL_RATE_LIMIT_FILTER.into(),
            any(&local_rate_limit(local)),
        );
    }
    if let Some(global) = sections.rate_limit.as_ref().and_then(|l| l.global.as_ref())
        && let Some(route::Action::Route(action)) = &mut r.action
    {
        action.rate_limits = global_rate_limits(global);
    }
}

/// The rate limit filter: asks the `weft-ratelimit` cluster in domain
/// `weft` for the descriptors of each route's `rate_limits`.
fn global_rate_limit_filter() -> RateLimitFilter {
    RateLimitFilter {
        domain: GlobalRateLimit::DOMAIN.into(),
        timeout: Some(duration(RATE_LIMIT_TIMEOUT)),
        failure_mode_deny: false,
        rate_limited_as_resource_exhausted: true,
        rate_limit_service: Some(RateLimitServiceConfig {
            grpc_service: Some(GrpcService {
                target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                    grpc_service::EnvoyGrpc {
                        cluster_name: RATE_LIMIT_CLUSTER.into(),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }),
            transport_api_version: ApiVersion::V3 as i32,
        }),
        enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
        ..Default::default()
    }
}

/// The route's descriptor for its global limit: `weft-policy` = the
/// policy's `namespace/name`, and for `perSource` the caller's
/// `source_cluster`.
fn global_rate_limits(g: &GlobalRateLimit) -> Vec<RouteRateLimit> {
    use rate_limit::action::{ActionSpecifier, GenericKey, SourceCluster};
    let mut actions = vec![rate_limit::Action {
        action_specifier: Some(ActionSpecifier::GenericKey(GenericKey {
            descriptor_value: g.descriptor.clone(),
            descriptor_key: GlobalRateLimit::DESCRIPTOR_KEY.into(),
            ..Default::default()
        })),
    }];
    // `perSource`: Envoy's own cluster (the node's, its Service) as
    // `source_cluster`.
    if g.per_source {
        actions.push(rate_limit::Action {
            action_specifier: Some(ActionSpecifier::SourceCluster(SourceCluster {})),
        });
    }
    vec![RouteRateLimit {
        actions,
        ..Default::default()
    }]
}

/// The `weft-ratelimit` cluster Envoy nodes reach the rate-limit service
/// with: one static endpoint, HTTP/2 (gRPC).
pub(super) fn rate_limit_cluster(addr: SocketAddr, opts: &TranslateOptions) -> Resource {
    let c = Cluster {
        name: RATE_LIMIT_CLUSTER.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: RATE_LIMIT_CLUSTER.into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(socket_address(addr.ip(), addr.port())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..super::cluster::base_cluster(weft_model::Protocol::Grpc, opts)
    };
    Resource::new(TypeUrl::Cluster, RATE_LIMIT_CLUSTER, &c)
}

/// The drop ratio Envoy can express: not a dry run, from every source.
fn drop_ratio(sections: &PolicySections) -> Option<f64> {
    let a = sections.admission.as_ref()?;
    (a.drop_ratio > 0.0 && !a.dry_run && a.sources.is_empty()).then_some(a.drop_ratio)
}

/// The fault filter's per-route config: the fault's delay and abort, or a
/// drop ratio as a 503 abort when the fault has no abort.
pub(super) fn fault(sections: &PolicySections) -> Option<HttpFault> {
    let f = sections.fault.as_ref();
    let delay = f.and_then(|f| f.delay.as_ref()).map(|d| FaultDelay {
        percentage: Some(per_million(d.percent / 100.0)),
        fault_delay_secifier: Some(fault_delay::FaultDelaySecifier::FixedDelay(duration(
            d.fixed,
        ))),
    });
    let abort = match f.and_then(|f| f.abort.as_ref()) {
        Some(a) => Some(FaultAbort {
            percentage: Some(per_million(a.percent / 100.0)),
            error_type: Some(match a.status {
                AbortStatus::Http(s) => fault_abort::ErrorType::HttpStatus(u32::from(s)),
                AbortStatus::Grpc(c) => fault_abort::ErrorType::GrpcStatus(u32::from(c)),
            }),
            ..Default::default()
        }),
        // One header condition covers delay and abort: a drop would take
        // the fault's.
        None if f.is_some_and(|f| f.delay.is_some() && !f.headers.is_empty()) => None,
        None => drop_ratio(sections).map(|ratio| FaultAbort {
            percentage: Some(per_million(ratio)),
            error_type: Some(fault_abort::ErrorType::HttpStatus(503)),
            ..Default::default()
        }),
    };
    if delay.is_none() && abort.is_none() {
        return None;
    }
    // The targeting headers belong to the fault; a drop applies to all.
    let headers = f
        .filter(|f| f.delay.is_some() || f.abort.is_some())
        .map(|f| f.headers.iter().map(|(n, v)| exact_header(n, v)).collect())
        .unwrap_or_default();
    Some(HttpFault {
        delay,
        abort,
        headers,
        ..Default::default()
    })
}

fn exact_header(name: &str, value: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact(value.into())),
                ignore_case: false,
            },
        )),
        ..Default::default()
    }
}

/// A share (0 to 1) out of a million.
fn per_million(share: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (share.clamp(0.0, 1.0) * 1_000_000.0).round() as u32,
        denominator: fractional_percent::DenominatorType::Million as i32,
    }
}

fn hundred_percent() -> Option<RuntimeFractionalPercent> {
    Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 100,
            denominator: fractional_percent::DenominatorType::Hundred as i32,
        }),
        runtime_key: String::new(),
    })
}

/// The local rate limit filter's per-route config.
pub(super) fn local_rate_limit(l: &WeftRateLimit) -> LocalRateLimit {
    let (tokens_per_fill, fill_interval) = token_fill(l.requests_per_second);
    LocalRateLimit {
        stat_prefix: RATE_LIMIT_STAT_PREFIX.into(),
        token_bucket: Some(TokenBucket {
            max_tokens: l.burst.max(1),
            tokens_per_fill: uint32(tokens_per_fill),
            fill_interval: Some(duration(fill_interval)),
        }),
        filter_enabled: hundred_percent(),
        filter_enforced: hundred_percent(),
        enable_x_ratelimit_headers: XRateLimitHeadersRfcVersion::DraftVersion03 as i32,
        ..Default::default()
    }
}

/// Tokens per fill and a fill interval (whole milliseconds, at least
/// Envoy's 50 ms) giving `rate` requests per second: the shortest interval
/// up to 10 s with the smallest error (exact for any rate with at most
/// three decimals whose interval fits), one token per `1 / rate` for
/// slower rates.
pub(super) fn token_fill(rate: f64) -> (u32, Duration) {
    let rate = if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        1.0
    };
    if rate * (MAX_FILL_INTERVAL_MS as f64) / 1000.0 < 1.0 {
        let ms = (1000.0 / rate).round() as u64;
        return (1, Duration::from_millis(ms));
    }
    let mut best = (1u32, MIN_FILL_INTERVAL_MS, f64::INFINITY);
    for ms in MIN_FILL_INTERVAL_MS..=MAX_FILL_INTERVAL_MS {
        let tokens = (rate * ms as f64 / 1000.0).round().max(1.0);
        let error = (tokens * 1000.0 / ms as f64 - rate).abs() / rate;
        if error < best.2 - 1e-12 {
            best = (tokens as u32, ms, error);
            if error < 1e-12 {
                break;
            }
        }
    }
    (best.0, Duration::from_millis(best.1))
}

/// A route configuration as a resource. Envoy's per-filter configs are a
/// map, which prost encodes in hash order: a route with more than one gets
/// its entries in name order instead (protobuf merges the pieces), so the
/// content version stays the same across translations.
pub(super) fn route_config_resource(name: impl Into<String>, rc: &RouteConfiguration) -> Resource {
    let unordered = rc
        .virtual_hosts
        .iter()
        .flat_map(|v| &v.routes)
        .any(|r| r.typed_per_filter_config.len() > 1);
    if !unordered {
        return Resource::new(TypeUrl::RouteConfiguration, name, rc);
    }
    let head = RouteConfiguration {
        virtual_hosts: Vec::new(),
        ..rc.clone()
    };
    let mut out = head.encode_to_vec();
    for vh in &rc.virtual_hosts {
        // RouteConfiguration.virtual_hosts is field 2.
        length_delimited(&mut out, 2, &virtual_host_bytes(vh));
    }
    Resource::from_encoded(TypeUrl::RouteConfiguration, name, out)
}

fn virtual_host_bytes(vh: &VirtualHost) -> Vec<u8> {
    let head = VirtualHost {
        routes: Vec::new(),
        ..vh.clone()
    };
    let mut out = head.encode_to_vec();
    for r in &vh.routes {
        // VirtualHost.routes is field 3.
        length_delimited(&mut out, 3, &route_bytes(r));
    }
    out
}

fn route_bytes(r: &Route) -> Vec<u8> {
    let mut head = r.clone();
    let configs: BTreeMap<_, _> = std::mem::take(&mut head.typed_per_filter_config)
        .into_iter()
        .collect();
    let mut out = head.encode_to_vec();
    for (name, config) in configs {
        // A route with one map entry and nothing else encodes as that entry.
        Route {
            typed_per_filter_config: [(name, config)].into_iter().collect(),
            ..Default::default()
        }
        .encode(&mut out)
        .expect("a Vec grows");
    }
    out
}

fn length_delimited(out: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}
