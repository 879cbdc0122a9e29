//! TrafficPolicy -> route settings, per data plane (issue 5, second step;
//! the cluster settings are in `policy`).
//!
//! Each route rule has its own effective policy: the rule's sections over
//! its route's over the destination Service port's over the Service's
//! ([`weft_model::Config::effective_policy`]). The destination is the rule's
//! first backend (with a non-zero weight): a weighted split's other
//! backends lend it neither their Service's policy nor their port's. A
//! TrafficSplit's rules and the default route of a port without routes get
//! the Service levels only. Policies attach within their own namespace, so
//! a rule sending to a Service in another namespace takes the route levels
//! from the route's namespace and the Service levels from the Service's.
//!
//! Envoy gets the nearest standard equivalents on the route's `RouteAction`:
//!
//! | TrafficPolicy | Envoy |
//! |---|---|
//! | `retry.maxRetries` | `retry_policy.num_retries` (0: no `retry_policy`) |
//! | `retry.backoff` | `retry_policy.retry_back_off` (`base_interval`, `max_interval`) |
//! | `retry.perTryTimeout` | `retry_policy.per_try_timeout` |
//! | `failureCodes.http` covering all of 500-599 | `retry_on: 5xx` |
//! | other `failureCodes.http` | `retry_on: retriable-status-codes` + `retriable_status_codes` (each code, at most 100) |
//! | `failureCodes.grpc` | `retry_on`: `cancelled`, `deadline-exceeded`, `resource-exhausted`, `internal`, `unavailable` (Envoy's `x-envoy-retry-grpc-on` names) |
//! | `failureCodes.header` | `retry_on: retriable-headers` + `retriable_headers` (integer ranges as `range_match`, literals as exact `string_match`) |
//! | `failureCodes.connectFailure` / `reset` | `retry_on: connect-failure` / `reset` |
//! | `failureCodes.timeout` | implicit: Envoy retries an attempt that hit `per_try_timeout` when `retry_on` has `5xx` or `reset` |
//! | retries and hedges go to another endpoint | `retry_host_predicate: envoy.retry_host_predicates.previous_hosts`, `host_selection_retry_max_attempts: 3` |
//! | `hedging.delay` (fixed) | `hedge_policy.hedge_on_per_try_timeout: true`, `retry_policy.per_try_timeout` = the delay, `num_retries` at least `maxAttempts - 1` |
//! | `hedging.percentile` with `maxDelay` | as a fixed delay of `maxDelay` |
//! | `hedging.percentile` without `maxDelay` | nothing (Envoy has no latency-derived delay) |
//! | `budget` | nothing on the route: the cluster's `retry_budget` (see `policy`) |
//!
//! With hedging and no retry section, `retry_on` is
//! `retriable-status-codes` with no codes: Envoy hedges only while a retry
//! policy is in force, and that condition matches no response, so it
//! hedges without retrying (as weft does); the back-off is then 1 ms, since
//! Envoy waits it before each hedge too.
//!
//! What Envoy cannot do: a hedge delay from live latency (a percentile);
//! separate limits for hedges and retries (one `num_retries` counts both,
//! the larger of `maxAttempts - 1` and `maxRetries`; a hedge waits the
//! retry back-off; the hedge delay replaces `perTryTimeout`); weft's
//! hedging breaker; a backup that is always another endpoint (the
//! previous-hosts predicate retries host selection 3 times, then takes the
//! endpoint it got); `latencyAbove` and gRPC codes other than the five
//! above as retry triggers (Envoy reads `grpc-status` from response headers
//! only, so a gRPC code in trailers after a body is never retried, nor is a
//! business code in a trailer); retrying a timeout without also retrying
//! resets, or a 5xx without also retrying resets and connect failures
//! (Envoy counts both as 5xx); sparing non-idempotent methods (Envoy
//! retries and hedges every method: weft's `nonIdempotent: false` default
//! holds on weft proxies only); `maxBufferedBody` (Envoy buffers a body for
//! retries up to the listener's connection buffer limit, 1 MiB by default).
//!
//! Proxyless gRPC clients read `retry_policy` only (gRFC A44): `retry_on`'s
//! gRPC names, `num_retries` (gRPC counts at most 4) and `retry_back_off`;
//! they reject `num_retries: 0`. They get a policy with the gRPC names only
//! and without `per_try_timeout` or host predicates, and none when it
//! would have no gRPC name (gRPC drops such a policy anyway) or no retry;
//! hedging stays with proxies (gRPC's own hedging cannot be set over xDS).
//!
//! Every route whose rule has a policy also carries the merged sections as
//! JSON, like clusters (`policy::insert_metadata`): weft proxies read
//! `retry`, `hedging`, `budget` and `failureCodes` from there, and issue 6's
//! `admission`, `rateLimit`, `fault` and `deadline`.
//!
//! Issue 6 sections on Envoy (the rows and what Envoy cannot do are in
//! `flow`): `fault` and `admission.dropRatio` become the route's
//! `typed_per_filter_config["envoy.filters.http.fault"]`, `rateLimit.local`
//! its `typed_per_filter_config["envoy.filters.http.local_ratelimit"]`, and
//! Envoy listeners get those filters before the router.

use std::collections::BTreeSet;
use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, HedgePolicy, RetryPolicy, Route, header_matcher, retry_policy, route,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use weft_model::{
    CodeValue, Config, FailureCodes, HedgeDelay, PolicyScope, PolicySections, RuleRef,
};

use super::proto::{any, duration, uint32};
use super::{Flavor, PortRef};

/// Name of Envoy's previous-hosts retry predicate.
const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
/// Envoy's `x-envoy-retry-grpc-on` names, by gRPC status code.
const GRPC_RETRY_ON: [(u8, &str); 5] = [
    (1, "cancelled"),
    (4, "deadline-exceeded"),
    (8, "resource-exhausted"),
    (13, "internal"),
    (14, "unavailable"),
];
/// At most this many codes in `retriable_status_codes`: the lowest are
/// kept (a whole `4xx` fits).
const MAX_STATUS_CODES: usize = 100;

/// The policy sections in force for requests matching `rule` (`None`: the
/// default route of a port without routes) and sent to Service port
/// `target`.
pub(super) fn rule_policy(
    config: &Config,
    rule: Option<&RuleRef>,
    (index, port): PortRef,
) -> PolicySections {
    let svc = &config.services[index];
    let service = PolicyScope {
        namespace: &svc.namespace,
        service: &svc.name,
        port_name: svc.port(port).and_then(|p| p.name.as_deref()),
        route: None,
    };
    let Some((rule, route)) = rule.and_then(|r| Some((r, r.policy_route()?))) else {
        return config.effective_policy(service).sections;
    };
    if rule.namespace == svc.namespace {
        return config
            .effective_policy(PolicyScope {
                route: Some(route),
                ..service
            })
            .sections;
    }
    // The route levels alone: validation gives every target a non-empty
    // name, so the Service levels of `""` are empty.
    let route_levels = config.effective_policy(PolicyScope {
        namespace: &rule.namespace,
        service: "",
        port_name: None,
        route: Some(route),
    });
    route_levels
        .sections
        .or(&config.effective_policy(service).sections)
}

/// Applies a rule's effective policy to its Envoy route: retries and hedges
/// on the route action, faults and local rate limits as per-filter configs
/// (proxies only), the whole policy in the route's metadata.
pub(super) fn apply(r: &mut Route, sections: &PolicySections, flavor: Flavor) {
    super::policy::insert_metadata(&mut r.metadata, sections);
    if flavor == Flavor::Sidecar {
        super::flow::apply(r, sections);
    }
    let Some(route::Action::Route(action)) = &mut r.action else {
        return;
    };
    let (retry, hedge) = match flavor {
        Flavor::Sidecar => proxy_retries(sections),
        Flavor::Grpc => (grpc_retries(sections), None),
    };
    action.retry_policy = retry;
    action.hedge_policy = hedge;
}

/// The hedge delay Envoy can express: a fixed delay, or a percentile's
/// `maxDelay`.
fn hedge_delay(sections: &PolicySections) -> Option<(Duration, u32)> {
    let h = sections.hedging.as_ref()?;
    let delay = match h.delay {
        HedgeDelay::Fixed(d) => d,
        HedgeDelay::Percentile { max_delay, .. } => max_delay?,
    };
    Some((delay, h.max_attempts.saturating_sub(1)))
}

/// Envoy's retry and hedge policies (sidecars and gateways).
fn proxy_retries(sections: &PolicySections) -> (Option<RetryPolicy>, Option<HedgePolicy>) {
    let hedge = hedge_delay(sections);
    // `maxRetries: 0` with hedging: hedges, but no retries on failures.
    let retry = sections.retry.as_ref().filter(|r| r.max_retries > 0);
    let num_retries = retry
        .map(|r| r.max_retries)
        .into_iter()
        .chain(hedge.map(|(_, hedges)| hedges))
        .max()
        .unwrap_or(0);
    if num_retries == 0 {
        return (None, None);
    }
    let codes = sections.failure_codes.clone().unwrap_or_default();
    let mut policy = match retry {
        Some(_) => retry_on(&codes, true),
        None => RetryPolicy::default(),
    };
    if policy.retry_on.is_empty() {
        if hedge.is_none() {
            // No code Envoy can retry on.
            return (None, None);
        }
        policy.retry_on = "retriable-status-codes".into();
    }
    policy.num_retries = uint32(num_retries);
    let (base, max) = match retry {
        Some(r) => (r.base_backoff, r.max_backoff),
        None => (Duration::from_millis(1), Duration::from_millis(1)),
    };
    policy.retry_back_off = Some(retry_policy::RetryBackOff {
        base_interval: Some(duration(base)),
        max_interval: Some(duration(max)),
    });
    policy.per_try_timeout = hedge
        .map(|(delay, _)| delay)
        .or(retry.and_then(|r| r.per_try_timeout))
        .map(duration);
    policy.retry_host_predicate = vec![retry_policy::RetryHostPredicate {
        name: PREVIOUS_HOSTS.into(),
        config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
            any(&PreviousHostsPredicate {}),
        )),
    }];
    policy.host_selection_retry_max_attempts = 3;
    let hedge = hedge.map(|_| HedgePolicy {
        hedge_on_per_try_timeout: true,
        ..Default::default()
    });
    (Some(policy), hedge)
}

/// The retry policy a proxyless gRPC client applies: gRPC codes only.
fn grpc_retries(sections: &PolicySections) -> Option<RetryPolicy> {
    let retry = sections.retry.as_ref()?;
    if retry.max_retries == 0 {
        // gRPC rejects `num_retries: 0` (gRFC A44).
        return None;
    }
    let codes = sections.failure_codes.clone().unwrap_or_default();
    let mut policy = retry_on(&codes, false);
    if policy.retry_on.is_empty() {
        return None;
    }
    policy.num_retries = uint32(retry.max_retries);
    policy.retry_back_off = Some(retry_policy::RetryBackOff {
        base_interval: Some(duration(retry.base_backoff)),
        max_interval: Some(duration(retry.max_backoff)),
    });
    Some(policy)
}

/// `retry_on` and the codes it names, from the failure codes (`proxy`:
/// every condition Envoy has; else the gRPC names only).
fn retry_on(codes: &FailureCodes, proxy: bool) -> RetryPolicy {
    let mut on: Vec<&str> = Vec::new();
    let mut policy = RetryPolicy::default();
    if proxy {
        let mut http: BTreeSet<u32> = codes
            .http
            .iter()
            .flat_map(|&(lo, hi)| u32::from(lo.max(100))..=u32::from(hi.min(599)))
            .collect();
        if (500..=599).all(|c| http.contains(&c)) {
            on.push("5xx");
            http.retain(|c| !(500..=599).contains(c));
        }
        if !http.is_empty() {
            on.push("retriable-status-codes");
            policy.retriable_status_codes = http.into_iter().take(MAX_STATUS_CODES).collect();
        }
        if let Some(h) = &codes.header
            && !h.values.is_empty()
        {
            on.push("retriable-headers");
            policy.retriable_headers = h.values.iter().map(|v| header_code(&h.name, v)).collect();
        }
        if codes.connect_failure {
            on.push("connect-failure");
        }
        if codes.reset {
            on.push("reset");
        }
    }
    on.extend(
        GRPC_RETRY_ON
            .iter()
            .filter(|(code, _)| codes.grpc.contains(code))
            .map(|(_, name)| *name),
    );
    policy.retry_on = on.join(",");
    policy
}

/// A response header carrying business code `value`.
fn header_code(name: &str, value: &CodeValue) -> HeaderMatcher {
    let specifier = match value {
        CodeValue::Range(lo, hi) => header_matcher::HeaderMatchSpecifier::RangeMatch(Int64Range {
            start: *lo,
            // Envoy's range excludes its end.
            end: hi.saturating_add(1),
        }),
        CodeValue::Literal(s) => header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(string_matcher::MatchPattern::Exact(s.clone())),
            ignore_case: false,
        }),
    };
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}
