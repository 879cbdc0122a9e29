//! TrafficPolicy -> cluster settings, per data plane (issue 5, first step;
//! the request sections on routes are in `route_policy`).
//!
//! Envoy gets the nearest standard equivalents of a Service's policy:
//!
//! | TrafficPolicy | Envoy |
//! |---|---|
//! | `loadBalancer.type: LatencyAware` | `LEAST_REQUEST` with `choice_count` (Envoy has no latency-aware balancer) |
//! | `loadBalancer.type: LeastRequest` / `RoundRobin` | `LEAST_REQUEST` / `ROUND_ROBIN` |
//! | `loadBalancer.slowStart` | `slow_start_config` (window, aggression, min weight percent) |
//! | `outlierDetection` | `outlier_detection`: consecutive 5xx, interval, ejection times, max ejection percent, success-rate stdev factor |
//! | `outlierDetection.panicThresholdPercent` | `common_lb_config.healthy_panic_threshold` |
//! | `budget` | `circuit_breakers.thresholds.retry_budget` (percent of active requests, min concurrency) |
//!
//! Envoy cannot: weigh endpoints down gradually (`reweighting`), classify
//! failures by gRPC status, business codes in headers or latency for
//! outlier detection, or count its budget in requests per window rather
//! than in concurrent retries.
//!
//! Every node also gets the whole policy, as JSON in the string field
//! `json` of the cluster's `metadata.filter_metadata["weft.dev/traffic-policy"]`
//! (Envoy ignores metadata it has no filter for): weft proxies read their
//! settings from there. Routes carry their rule's policy the same way
//! (`route_policy`).

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, OutlierDetection as EnvoyOutlier, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{Metadata, RuntimeDouble};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use weft_model::{BalancerKind, PolicySections};

use super::proto::{duration, uint32};

/// `filter_metadata` key of the policy carried to weft proxies.
pub const POLICY_METADATA_KEY: &str = "weft.dev/traffic-policy";
/// The field under [`POLICY_METADATA_KEY`] holding the sections as JSON
/// (`weft_model::PolicySections`).
pub const POLICY_JSON_FIELD: &str = "json";

/// Applies a Service's effective policy to one of its clusters.
pub(super) fn apply(c: &mut Cluster, sections: &PolicySections) {
    if let Some(lb) = &sections.load_balancer {
        let slow_start = lb.slow_start.as_ref().map(|s| cluster::SlowStartConfig {
            slow_start_window: Some(duration(s.window)),
            aggression: Some(RuntimeDouble {
                default_value: s.aggression,
                runtime_key: String::new(),
            }),
            min_weight_percent: Some(Percent {
                value: f64::from(s.min_weight_percent),
            }),
        });
        match lb.kind {
            BalancerKind::LatencyAware | BalancerKind::LeastRequest => {
                c.lb_policy = cluster::LbPolicy::LeastRequest as i32;
                c.lb_config = Some(cluster::LbConfig::LeastRequestLbConfig(
                    cluster::LeastRequestLbConfig {
                        choice_count: uint32(lb.choices),
                        slow_start_config: slow_start,
                        ..Default::default()
                    },
                ));
            }
            BalancerKind::RoundRobin => {
                c.lb_policy = cluster::LbPolicy::RoundRobin as i32;
                if slow_start.is_some() {
                    c.lb_config = Some(cluster::LbConfig::RoundRobinLbConfig(
                        cluster::RoundRobinLbConfig {
                            slow_start_config: slow_start,
                        },
                    ));
                }
            }
        }
    }
    if let Some(o) = &sections.outlier_detection {
        let mut od = EnvoyOutlier {
            consecutive_5xx: uint32(o.consecutive_failures),
            enforcing_consecutive_5xx: uint32(if o.consecutive_failures == 0 { 0 } else { 100 }),
            interval: Some(duration(o.interval)),
            base_ejection_time: Some(duration(o.base_ejection_time)),
            max_ejection_time: Some(duration(o.max_ejection_time)),
            max_ejection_percent: uint32(o.max_ejection_percent),
            enforcing_success_rate: uint32(0),
            ..Default::default()
        };
        if let Some(sr) = &o.success_rate {
            od.enforcing_success_rate = uint32(100);
            od.success_rate_minimum_hosts = uint32(sr.min_hosts);
            od.success_rate_request_volume = uint32(sr.min_requests);
            od.success_rate_stdev_factor = uint32((sr.stdev_factor * 1000.0).round() as u32);
        }
        c.outlier_detection = Some(od);
        let common = c.common_lb_config.get_or_insert_with(Default::default);
        common.healthy_panic_threshold = Some(Percent {
            value: f64::from(o.panic_threshold_percent),
        });
    }
    if let Some(b) = &sections.budget
        && let Some(cb) = c.circuit_breakers.as_mut()
    {
        for t in &mut cb.thresholds {
            t.retry_budget = Some(circuit_breakers::thresholds::RetryBudget {
                budget_percent: Some(Percent { value: b.percent }),
                min_retry_concurrency: uint32(b.min_per_second.max(1)),
                ..Default::default()
            });
        }
    }
    insert_metadata(&mut c.metadata, sections);
}

/// Puts `sections` as JSON under [`POLICY_METADATA_KEY`] in `metadata`,
/// unless no section is set (then `metadata` is left as it is, so configs
/// without policies keep their content versions).
pub(super) fn insert_metadata(metadata: &mut Option<Metadata>, sections: &PolicySections) {
    if sections.set_names().is_empty() {
        return;
    }
    let Ok(json) = serde_json::to_string(sections) else {
        return;
    };
    // One string field: a Struct's fields are a map, encoded in hash
    // order, which would change the resource's content version on every
    // translation.
    let fields = [(
        POLICY_JSON_FIELD.to_owned(),
        Value {
            kind: Some(value::Kind::StringValue(json)),
        },
    )]
    .into_iter()
    .collect();
    metadata
        .get_or_insert_with(Metadata::default)
        .filter_metadata
        .insert(POLICY_METADATA_KEY.to_owned(), Struct { fields });
}
