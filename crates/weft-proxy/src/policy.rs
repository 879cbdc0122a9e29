//! TrafficPolicy sections (as the control plane sends them, JSON in xDS
//! metadata `weft.dev/traffic-policy`) -> the settings of weft-policy's
//! cores.
//!
//! Two scopes, as in the model: a cluster (a Service port) carries the
//! sections about endpoints (`loadBalancer`, `failureCodes` for health,
//! `reweighting`, `outlierDetection`); a route rule carries the request
//! sections (`retry`, `hedging`, `budget`, and `failureCodes` as they decide
//! retries). Each side reads only its sections from the merged JSON.
//!
//! Without a policy a cluster still balances latency-aware (P2C on
//! peak-EWMA) and re-weights on the default failure codes, except when its
//! endpoints have unequal weights: then weighted round robin (thinned by
//! health) so the weights stay traffic shares. P2C treats weight as
//! capacity, so at low concurrency it would send nearly everything to the
//! heaviest endpoint; a policy that asks for `LatencyAware` gets it anyway.

use std::time::Duration;

use weft_model::{BalancerKind, PolicySections};
use weft_policy::admission::{Abort, AbortFault, DelayFault, DropRatio, Fault};
use weft_policy::budget::BudgetConfig;
use weft_policy::health::{
    CodeMatcher, FailureCodes, GrpcCode, HeaderRule, HealthConfig, OutlierConfig, ScoreConfig,
    StatusRange, SuccessRateRule,
};
use weft_policy::hedge::{HedgeConfig, HedgeDelay};
use weft_policy::latency::{Algorithm, LatencyConfig, Locality, SlowStart};
use weft_policy::ratelimit::TokenBucketConfig;
use weft_policy::retry::RetryConfig;
use weft_xds::envoy_types::pb::envoy::config::core::v3::Metadata;
use weft_xds::envoy_types::pb::google::protobuf::value::Kind;

/// `filter_metadata` key and field of the policy JSON (see
/// `weft_xds::translate::policy`).
pub const POLICY_METADATA_KEY: &str = "weft.dev/traffic-policy";
const POLICY_JSON_FIELD: &str = "json";

/// The policy JSON in `metadata`, if any; an error when it is there but not
/// a string.
pub fn policy_json(metadata: Option<&Metadata>) -> Result<Option<String>, String> {
    let Some(s) = metadata.and_then(|m| m.filter_metadata.get(POLICY_METADATA_KEY)) else {
        return Ok(None);
    };
    match s
        .fields
        .get(POLICY_JSON_FIELD)
        .and_then(|v| v.kind.as_ref())
    {
        Some(Kind::StringValue(json)) => Ok(Some(json.clone())),
        _ => Err(format!(
            "metadata {POLICY_METADATA_KEY:?} has no string field {POLICY_JSON_FIELD:?}"
        )),
    }
}

/// Parses the policy JSON.
pub fn parse_sections(json: &str) -> Result<PolicySections, String> {
    serde_json::from_str(json).map_err(|e| format!("metadata {POLICY_METADATA_KEY:?}: {e}"))
}

/// What a cluster runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    pub latency: LatencyConfig,
    pub codes: FailureCodes,
    pub health: HealthConfig,
}

impl ClusterSettings {
    /// From the cluster's sections (`None`: no policy) and its endpoint
    /// weights (for the default balancer).
    /// `zone`: this proxy's (`--zone`); locality preference needs it.
    pub fn new(
        sections: Option<&PolicySections>,
        weights: &[u32],
        zone: Option<&str>,
    ) -> Result<Self, String> {
        let empty = PolicySections::default();
        let s = sections.unwrap_or(&empty);
        let latency = match &s.load_balancer {
            Some(lb) => LatencyConfig {
                algorithm: match lb.kind {
                    BalancerKind::LatencyAware => Algorithm::LatencyAware,
                    BalancerKind::LeastRequest => Algorithm::LeastRequest,
                    BalancerKind::RoundRobin => Algorithm::RoundRobin,
                },
                choices: lb.choices as usize,
                default_rtt: lb.default_rtt,
                decay: lb.decay,
                slow_start: lb.slow_start.as_ref().map(|s| SlowStart {
                    window: s.window,
                    aggression: s.aggression,
                    min_weight_percent: f64::from(s.min_weight_percent),
                }),
                // Same-zone endpoints keep all traffic while at least
                // `minHealthyPercent` of their weight is healthy (Envoy's
                // overprovisioning factor 100 / that), then spill in
                // proportion.
                locality: match (&lb.locality, zone) {
                    (Some(pref), Some(zone)) => Some(Locality {
                        overprovisioning: 100.0 / f64::from(pref.min_healthy_percent.clamp(1, 100)),
                        ..Locality::new(zone)
                    }),
                    _ => None,
                },
            },
            None => LatencyConfig {
                algorithm: if weights.windows(2).all(|w| w[0] == w[1]) {
                    Algorithm::LatencyAware
                } else {
                    Algorithm::RoundRobin
                },
                ..LatencyConfig::default()
            },
        };
        latency
            .validate()
            .map_err(|e| format!("loadBalancer: {e}"))?;
        let codes = failure_codes(s.failure_codes.as_ref())?;
        let rw = s.reweighting.clone().unwrap_or_default();
        let score = ScoreConfig {
            half_life: rw.half_life,
            min_multiplier: f64::from(rw.min_weight_percent.clamp(1, 100)) / 100.0,
            recovery_time: rw.recovery,
            // Disabled: the score is kept (for ejection and metrics) but
            // never cuts the weight.
            failure_penalty: if rw.enabled {
                ScoreConfig::default().failure_penalty
            } else {
                0.0
            },
            ..ScoreConfig::default()
        };
        let od = s.outlier_detection.clone().unwrap_or_default();
        let outlier = OutlierConfig {
            consecutive_failures: (od.consecutive_failures > 0).then_some(od.consecutive_failures),
            interval: od.interval,
            base_ejection_time: od.base_ejection_time,
            max_ejection_time: od.max_ejection_time,
            max_ejection_percent: od.max_ejection_percent,
            success_rate: od.success_rate.as_ref().map(|r| SuccessRateRule {
                stdev_factor: r.stdev_factor,
                min_hosts: r.min_hosts as usize,
                min_requests: u64::from(r.min_requests),
            }),
            failure_rate: None,
            panic_threshold: f64::from(od.panic_threshold_percent) / 100.0,
        };
        let health = HealthConfig { score, outlier };
        health.validate().map_err(|e| format!("health: {e}"))?;
        Ok(Self {
            latency,
            codes,
            health,
        })
    }
}

/// The failure codes of a section, or the defaults.
pub fn failure_codes(s: Option<&weft_model::FailureCodes>) -> Result<FailureCodes, String> {
    let Some(s) = s else {
        return Ok(FailureCodes::default());
    };
    let err = |e: &dyn std::fmt::Display| format!("failureCodes: {e}");
    let http = s
        .http
        .iter()
        .map(|(lo, hi)| StatusRange::new(*lo, *hi).ok_or_else(|| err(&format!("{lo}-{hi}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let grpc = s
        .grpc
        .iter()
        .map(|c| GrpcCode::new(*c).ok_or_else(|| err(&format!("gRPC code {c}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let header = match &s.header {
        None => None,
        Some(h) => {
            let codes = h
                .values
                .iter()
                .map(|v| match v {
                    weft_model::CodeValue::Range(a, b) if a == b => CodeMatcher::Code(*a),
                    weft_model::CodeValue::Range(a, b) => CodeMatcher::Range(*a, *b),
                    weft_model::CodeValue::Literal(t) => CodeMatcher::Text(t.clone()),
                })
                .collect();
            Some(HeaderRule::new(&h.name, codes).map_err(|e| err(&e))?)
        }
    };
    let codes = FailureCodes {
        http,
        grpc,
        header,
        connect_failure: s.connect_failure,
        reset: s.reset,
        timeout: s.timeout,
        latency_above: s.latency_above,
    };
    codes.validate().map_err(|e| err(&e))?;
    Ok(codes)
}

/// Who gets in (issue 6): a drop ratio, optionally only for some callers,
/// and callers refused outright.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionSettings {
    pub drop: DropRatio,
    /// The drop ratio's callers (`name` or `name.namespace`); empty: all.
    pub sources: Vec<String>,
    pub denied_sources: Vec<String>,
}

/// Injected faults for requests carrying every one of `headers`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSettings {
    pub fault: Fault,
    pub headers: Vec<(String, String)>,
}

/// What a route rule's requests run with; `None` fields are off.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSettings {
    pub codes: FailureCodes,
    pub retry: Option<RetryConfig>,
    pub retry_non_idempotent: bool,
    pub hedge: Option<HedgeConfig>,
    pub hedge_non_idempotent: bool,
    pub budget: BudgetConfig,
    pub admission: Option<AdmissionSettings>,
    pub fault: Option<FaultSettings>,
    /// A local token bucket for the rule's requests from this proxy.
    pub rate_limit: Option<TokenBucketConfig>,
    /// The `deadline` section: (propagate, margin).
    pub deadline: Option<(bool, Duration)>,
    /// A limit for every proxy, counted by the rate-limit service.
    pub global_rate_limit: Option<weft_model::GlobalRateLimit>,
}

impl RouteSettings {
    pub fn new(s: &PolicySections) -> Result<Self, String> {
        let codes = failure_codes(s.failure_codes.as_ref())?;
        let retry = s.retry.as_ref().map(|r| RetryConfig {
            max_attempts: r.max_retries.saturating_add(1),
            base_backoff: r.base_backoff,
            max_backoff: r.max_backoff,
            per_try_timeout: r.per_try_timeout,
            ..RetryConfig::default()
        });
        if let Some(r) = &retry {
            r.validate().map_err(|e| format!("retry: {e}"))?;
        }
        let hedge = match &s.hedging {
            None => None,
            Some(h) => {
                let delay = match &h.delay {
                    weft_model::HedgeDelay::Fixed(d) => HedgeDelay::Fixed(*d),
                    weft_model::HedgeDelay::Percentile {
                        percentile,
                        min_delay,
                        max_delay,
                        required_history,
                    } => HedgeDelay::Percentile {
                        percentile: *percentile,
                        min_delay: *min_delay,
                        max_delay: *max_delay,
                        required_history: *required_history,
                        window: Duration::from_secs(30),
                    },
                };
                let cfg = HedgeConfig {
                    delay,
                    max_attempts: h.max_attempts,
                    max_buffered_body: usize::try_from(h.max_buffered_body).unwrap_or(usize::MAX),
                    ..HedgeConfig::default()
                };
                cfg.validate().map_err(|e| format!("hedging: {e}"))?;
                Some(cfg)
            }
        };
        let b = s.budget.clone().unwrap_or_default();
        let budget = BudgetConfig {
            ratio: b.percent / 100.0,
            min_per_sec: b.min_per_second,
            ttl: b.window,
        };
        budget.validate().map_err(|e| format!("budget: {e}"))?;
        let admission = match &s.admission {
            None => None,
            Some(a) => {
                let drop = DropRatio {
                    ratio: a.drop_ratio,
                    dry_run: a.dry_run,
                };
                drop.validate().map_err(|e| format!("admission: {e}"))?;
                Some(AdmissionSettings {
                    drop,
                    sources: a.sources.clone(),
                    denied_sources: a.denied_sources.clone(),
                })
            }
        };
        let fault = match &s.fault {
            None => None,
            Some(f) => {
                let fault = Fault {
                    delay: f.delay.as_ref().map(|d| DelayFault {
                        delay: d.fixed,
                        percentage: d.percent,
                    }),
                    abort: f.abort.as_ref().map(|a| AbortFault {
                        abort: match a.status {
                            weft_model::AbortStatus::Http(s) => Abort::Http(s),
                            weft_model::AbortStatus::Grpc(c) => Abort::Grpc(u32::from(c)),
                        },
                        percentage: a.percent,
                    }),
                };
                fault.validate().map_err(|e| format!("fault: {e}"))?;
                Some(FaultSettings {
                    fault,
                    headers: f.headers.clone(),
                })
            }
        };
        let rate_limit = match s.rate_limit.as_ref().and_then(|r| r.local.as_ref()) {
            None => None,
            Some(l) => {
                let cfg = TokenBucketConfig {
                    requests_per_second: l.requests_per_second,
                    burst: l.burst,
                };
                cfg.validate()
                    .map_err(|e| format!("rateLimit.local: {e}"))?;
                Some(cfg)
            }
        };
        Ok(Self {
            global_rate_limit: s.rate_limit.as_ref().and_then(|r| r.global.clone()),
            deadline: s.deadline.as_ref().map(|d| (d.propagate, d.margin)),
            admission,
            fault,
            rate_limit,
            codes,
            retry_non_idempotent: s.retry.as_ref().is_some_and(|r| r.non_idempotent),
            retry,
            hedge_non_idempotent: s.hedging.as_ref().is_some_and(|h| h.non_idempotent),
            hedge,
            budget,
        })
    }

    /// Whether requests need the retry/hedge executor at all.
    pub fn is_active(&self) -> bool {
        self.retry.is_some() || self.hedge.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_policy_is_latency_aware_unless_weights_differ() {
        let s = ClusterSettings::new(None, &[1, 1, 1], None).unwrap();
        assert_eq!(s.latency.algorithm, Algorithm::LatencyAware);
        assert_eq!(s.codes, FailureCodes::default());
        let s = ClusterSettings::new(None, &[3, 1], None).unwrap();
        assert_eq!(s.latency.algorithm, Algorithm::RoundRobin);
    }

    #[test]
    fn sections_round_trip_through_json_into_settings() {
        let mut sections = PolicySections {
            load_balancer: Some(weft_model::LoadBalancer {
                kind: BalancerKind::LeastRequest,
                choices: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        sections.failure_codes = Some(weft_model::FailureCodes {
            http: vec![(500, 599), (429, 429)],
            grpc: vec![14],
            header: Some(weft_model::HeaderCodes {
                name: "x-biz-code".into(),
                values: vec![
                    weft_model::CodeValue::Range(5003, 5003),
                    weft_model::CodeValue::Range(5100, 5199),
                    weft_model::CodeValue::Literal("E_STOCK".into()),
                ],
            }),
            ..Default::default()
        });
        sections.retry = Some(weft_model::Retry {
            max_retries: 2,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            per_try_timeout: Some(Duration::from_millis(300)),
            non_idempotent: false,
        });
        sections.hedging = Some(weft_model::Hedging {
            delay: weft_model::HedgeDelay::Percentile {
                percentile: 95.0,
                min_delay: Duration::from_millis(2),
                max_delay: None,
                required_history: 50,
            },
            max_attempts: 2,
            non_idempotent: true,
            max_buffered_body: 1024,
        });
        let json = serde_json::to_string(&sections).unwrap();
        let back = parse_sections(&json).unwrap();
        assert_eq!(back, sections);

        let c = ClusterSettings::new(Some(&back), &[3, 1], Some("z1")).unwrap();
        assert_eq!(c.latency.algorithm, Algorithm::LeastRequest);
        assert_eq!(c.latency.choices, 3);
        assert_eq!(c.codes.header.as_ref().unwrap().name(), "x-biz-code");
        assert!(c.codes.header.as_ref().unwrap().matches("5150"));
        assert!(!c.codes.header.as_ref().unwrap().matches("5004"));

        let r = RouteSettings::new(&back).unwrap();
        assert!(r.is_active());
        assert_eq!(r.retry.as_ref().unwrap().max_attempts, 3);
        assert!(r.hedge_non_idempotent && !r.retry_non_idempotent);
        assert_eq!(r.hedge.as_ref().unwrap().max_buffered_body, 1024);
        assert!((r.budget.ratio - 0.1).abs() < 1e-12);
    }

    #[test]
    fn bad_json_names_the_metadata() {
        let e = parse_sections("{\"retry\": 3}").unwrap_err();
        assert!(e.contains("weft.dev/traffic-policy"), "{e}");
    }
}
