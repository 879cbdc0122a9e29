//! The YAML shape of a TrafficPolicy and its checks.

use std::time::Duration;

use serde::Deserialize;

use super::*;
use crate::duration::parse_duration;
use crate::error::Problems;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TrafficPolicySpec {
    #[serde(default)]
    target_refs: Vec<TargetRefSpec>,
    load_balancer: Option<LoadBalancerSpec>,
    failure_codes: Option<FailureCodesSpec>,
    reweighting: Option<ReweightingSpec>,
    outlier_detection: Option<OutlierSpec>,
    hedging: Option<HedgingSpec>,
    retry: Option<RetrySpec>,
    budget: Option<BudgetSpec>,
    admission: Option<super::flow::AdmissionSpec>,
    rate_limit: Option<super::flow::RateLimitSpec>,
    fault: Option<super::flow::FaultSpec>,
    deadline: Option<super::flow::DeadlineSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TargetRefSpec {
    group: Option<String>,
    kind: String,
    name: String,
    section_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LoadBalancerSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    choices: Option<u32>,
    default_rtt: Option<String>,
    decay: Option<String>,
    locality: Option<LocalitySpec>,
    slow_start: Option<SlowStartSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalitySpec {
    min_healthy_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SlowStartSpec {
    window: String,
    min_weight_percent: Option<u32>,
    aggression: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CodeSpec {
    Number(i64),
    Text(String),
}

impl CodeSpec {
    fn text(&self) -> String {
        match self {
            CodeSpec::Number(n) => n.to_string(),
            CodeSpec::Text(s) => s.trim().to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FailureCodesSpec {
    http: Option<Vec<CodeSpec>>,
    grpc: Option<Vec<CodeSpec>>,
    header: Option<HeaderCodesSpec>,
    connect_failure: Option<bool>,
    reset: Option<bool>,
    timeout: Option<bool>,
    latency_above: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeaderCodesSpec {
    name: String,
    values: Vec<CodeSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReweightingSpec {
    enabled: Option<bool>,
    half_life: Option<String>,
    min_weight_percent: Option<u32>,
    recovery: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OutlierSpec {
    consecutive_failures: Option<u32>,
    interval: Option<String>,
    base_ejection_time: Option<String>,
    max_ejection_time: Option<String>,
    max_ejection_percent: Option<u32>,
    success_rate: Option<SuccessRateSpec>,
    panic_threshold_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SuccessRateSpec {
    min_requests: Option<u32>,
    min_hosts: Option<u32>,
    stdev_factor: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HedgingSpec {
    delay: Option<String>,
    percentile: Option<f64>,
    min_delay: Option<String>,
    max_delay: Option<String>,
    required_history: Option<u64>,
    max_attempts: Option<u32>,
    non_idempotent: Option<bool>,
    max_buffered_body: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetrySpec {
    max_retries: Option<u32>,
    backoff: Option<BackoffSpec>,
    per_try_timeout: Option<String>,
    non_idempotent: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BackoffSpec {
    base: Option<String>,
    max: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BudgetSpec {
    percent: Option<f64>,
    min_per_second: Option<u32>,
    window: Option<String>,
}

/// Checks on one field, recording problems under the field's full name.
pub(super) struct Fields<'p, 'a> {
    p: &'p mut Problems<'a>,
    prefix: String,
}

impl Fields<'_, '_> {
    fn name(&self, field: &str) -> String {
        if field.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{field}", self.prefix)
        }
    }

    pub(super) fn add(&mut self, field: &str, message: impl Into<String>) {
        let name = self.name(field);
        self.p.add(name, message);
    }

    /// A duration that must be positive; `default` when absent.
    pub(super) fn duration(
        &mut self,
        field: &str,
        value: Option<String>,
        default: Duration,
    ) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(&text) {
            Ok(d) if d.is_zero() => {
                self.add(field, format!("{text:?} must be greater than 0"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.add(field, e.to_string());
                default
            }
        }
    }

    fn percent(&mut self, field: &str, value: Option<u32>, default: u32) -> u32 {
        match value {
            Some(v) if v > 100 => {
                self.add(field, format!("{v} is not a percentage (0 to 100)"));
                default
            }
            Some(v) => v,
            None => default,
        }
    }
}

// Codes are parsed by the policy cores' own parsers, so that the config and
// the classifier can never disagree on what `5xx` or `DeadlineExceeded` mean.

/// `5xx`, `429`, `500-504`.
fn http_range(text: &str) -> Result<(u16, u16), String> {
    text.parse::<weft_policy::health::StatusRange>()
        .map(|r| (r.lo(), r.hi()))
        .map_err(|e| e.to_string())
}

/// `UNAVAILABLE`, `DeadlineExceeded`, `14`.
pub(super) fn grpc_code(text: &str) -> Result<u8, String> {
    text.parse::<weft_policy::health::GrpcCode>()
        .map(|c| c.number())
        .map_err(|e| e.to_string())
}

/// An HTTP header name (RFC 9110 token).
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `5003`, `5000-5099`, or a literal like `E_STOCK` (the classifier's parser).
fn code_value(text: &str) -> Result<CodeValue, String> {
    use weft_policy::health::CodeMatcher;
    Ok(
        match text.parse::<CodeMatcher>().map_err(|e| e.to_string())? {
            CodeMatcher::Code(n) => CodeValue::Range(n, n),
            CodeMatcher::Range(a, b) => CodeValue::Range(a, b),
            CodeMatcher::Text(t) => CodeValue::Literal(t),
        },
    )
}

impl TrafficPolicySpec {
    pub(crate) fn validate(
        self,
        name: String,
        namespace: String,
        p: &mut Problems<'_>,
    ) -> TrafficPolicy {
        if self.target_refs.is_empty() {
            p.add(
                "spec.targetRefs",
                "a TrafficPolicy needs at least one target (a Service, HTTPRoute or GRPCRoute)",
            );
        }
        let mut target_refs = Vec::new();
        for (i, t) in self.target_refs.into_iter().enumerate() {
            let field = format!("spec.targetRefs[{i}]");
            let kind = match t.kind.as_str() {
                "Service" => PolicyTargetKind::Service,
                "HTTPRoute" => PolicyTargetKind::HTTPRoute,
                "GRPCRoute" => PolicyTargetKind::GRPCRoute,
                other => {
                    p.add(
                        format!("{field}.kind"),
                        format!(
                            "{other:?} cannot be a target; use Service, HTTPRoute or GRPCRoute"
                        ),
                    );
                    continue;
                }
            };
            let want_group = match kind {
                PolicyTargetKind::Service => ["", "weft.dev", "core"].as_slice(),
                _ => [crate::GATEWAY_GROUP].as_slice(),
            };
            if let Some(g) = &t.group
                && !want_group.contains(&g.as_str())
            {
                p.add(
                    format!("{field}.group"),
                    format!(
                        "{g:?} is not the group of {} (use {:?})",
                        kind.as_str(),
                        want_group[0]
                    ),
                );
            }
            let r = PolicyTargetRef {
                kind,
                name: t.name,
                section_name: t.section_name,
            };
            if target_refs.contains(&r) {
                p.add(field, "duplicate target");
                continue;
            }
            target_refs.push(r);
        }
        fn f<'p, 'a>(p: &'p mut Problems<'a>, prefix: &str) -> Fields<'p, 'a> {
            Fields {
                p,
                prefix: format!("spec.{prefix}"),
            }
        }
        let load_balancer = self
            .load_balancer
            .map(|s| s.validate(&mut f(p, "loadBalancer")));
        let failure_codes = self
            .failure_codes
            .map(|s| s.validate(&mut f(p, "failureCodes")));
        let reweighting = self
            .reweighting
            .map(|s| s.validate(&mut f(p, "reweighting")));
        let outlier_detection = self
            .outlier_detection
            .map(|s| s.validate(&mut f(p, "outlierDetection")));
        let hedging = self.hedging.map(|s| s.validate(&mut f(p, "hedging")));
        let retry = self.retry.map(|s| s.validate(&mut f(p, "retry")));
        let budget = self.budget.map(|s| s.validate(&mut f(p, "budget")));
        let admission = self.admission.map(|s| s.validate(&mut f(p, "admission")));
        let descriptor = format!("{namespace}/{name}");
        let rate_limit = self
            .rate_limit
            .map(|s| s.validate(&mut f(p, "rateLimit"), &descriptor));
        let fault = self.fault.map(|s| s.validate(&mut f(p, "fault")));
        let deadline = self.deadline.map(|s| s.validate(&mut f(p, "deadline")));
        let sections = PolicySections {
            load_balancer,
            failure_codes,
            reweighting,
            outlier_detection,
            hedging,
            retry,
            budget,
            admission,
            rate_limit,
            fault,
            deadline,
        };
        if sections.set_names().is_empty() {
            p.add("spec", "the policy sets nothing: give at least one of loadBalancer, failureCodes, reweighting, outlierDetection, hedging, retry, budget, admission, rateLimit, fault, deadline");
        }
        TrafficPolicy {
            name,
            namespace,
            target_refs,
            sections,
        }
    }
}

impl LoadBalancerSpec {
    fn validate(self, f: &mut Fields<'_, '_>) -> LoadBalancer {
        let d = LoadBalancer::default();
        let kind = match self.kind.as_deref() {
            None | Some("LatencyAware") => BalancerKind::LatencyAware,
            Some("LeastRequest") => BalancerKind::LeastRequest,
            Some("RoundRobin") => BalancerKind::RoundRobin,
            Some(other) => {
                f.add(
                    "type",
                    format!(
                        "{other:?} is not a balancer; use LatencyAware, LeastRequest or RoundRobin"
                    ),
                );
                d.kind
            }
        };
        let choices = match self.choices {
            Some(c) if !(2..=16).contains(&c) => {
                f.add(
                    "choices",
                    format!("{c} choices: use 2 to 16 (2 is the power of two choices)"),
                );
                d.choices
            }
            Some(c) => c,
            None => d.choices,
        };
        if kind == BalancerKind::RoundRobin && self.choices.is_some() {
            f.add("choices", "only LatencyAware and LeastRequest draw choices");
        }
        let default_rtt = f.duration("defaultRtt", self.default_rtt, d.default_rtt);
        let decay = f.duration("decay", self.decay, d.decay);
        let locality = self.locality.map(|l| LocalityPreference {
            min_healthy_percent: f.percent("locality.minHealthyPercent", l.min_healthy_percent, 70),
        });
        let slow_start = self.slow_start.map(|s| {
            let window = f.duration("slowStart.window", Some(s.window), Duration::from_secs(30));
            let min = f.percent("slowStart.minWeightPercent", s.min_weight_percent, 10);
            if min == 0 {
                f.add(
                    "slowStart.minWeightPercent",
                    "0 would send a new endpoint nothing; use 1 to 100",
                );
            }
            let aggression = s.aggression.unwrap_or(1.0);
            if !(aggression.is_finite() && aggression > 0.0) {
                f.add(
                    "slowStart.aggression",
                    format!("{aggression} must be a positive number (1.0 is linear)"),
                );
            }
            SlowStart {
                window,
                min_weight_percent: min.max(1),
                aggression: if aggression.is_finite() && aggression > 0.0 {
                    aggression
                } else {
                    1.0
                },
            }
        });
        LoadBalancer {
            kind,
            choices,
            default_rtt,
            decay,
            locality,
            slow_start,
        }
    }
}

impl FailureCodesSpec {
    fn validate(self, f: &mut Fields<'_, '_>) -> FailureCodes {
        let d = FailureCodes::default();
        let http = match self.http {
            None => d.http,
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match http_range(&c.text()) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        f.add(&format!("http[{i}]"), e);
                        None
                    }
                })
                .collect(),
        };
        let grpc = match self.grpc {
            None => d.grpc,
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match grpc_code(&c.text()) {
                    Ok(0) => {
                        f.add(&format!("grpc[{i}]"), "OK cannot be a failure");
                        None
                    }
                    Ok(n) => Some(n),
                    Err(e) => {
                        f.add(&format!("grpc[{i}]"), e);
                        None
                    }
                })
                .collect(),
        };
        let header = self.header.map(|h| {
            let name = h.name.trim().to_ascii_lowercase();
            if !is_token(&name) {
                f.add(
                    "header.name",
                    format!("{:?} is not a valid header name", h.name),
                );
            }
            if h.values.is_empty() {
                f.add(
                    "header.values",
                    "give at least one code (e.g. \"5003\" or \"5000-5099\")",
                );
            }
            let values = h
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| match code_value(&v.text()) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        f.add(&format!("header.values[{i}]"), e);
                        None
                    }
                })
                .collect();
            HeaderCodes { name, values }
        });
        let latency_above = self
            .latency_above
            .map(|t| f.duration("latencyAbove", Some(t), Duration::from_secs(1)));
        FailureCodes {
            http,
            grpc,
            header,
            connect_failure: self.connect_failure.unwrap_or(d.connect_failure),
            reset: self.reset.unwrap_or(d.reset),
            timeout: self.timeout.unwrap_or(d.timeout),
            latency_above,
        }
    }
}

impl ReweightingSpec {
    fn validate(self, f: &mut Fields<'_, '_>) -> Reweighting {
        let d = Reweighting::default();
        Reweighting {
            enabled: self.enabled.unwrap_or(true),
            half_life: f.duration("halfLife", self.half_life, d.half_life),
            min_weight_percent: f.percent(
                "minWeightPercent",
                self.min_weight_percent,
                d.min_weight_percent,
            ),
            recovery: f.duration("recovery", self.recovery, d.recovery),
        }
    }
}

impl OutlierSpec {
    fn validate(self, f: &mut Fields<'_, '_>) -> OutlierDetection {
        let d = OutlierDetection::default();
        let base = f.duration(
            "baseEjectionTime",
            self.base_ejection_time,
            d.base_ejection_time,
        );
        let max = f.duration(
            "maxEjectionTime",
            self.max_ejection_time,
            d.max_ejection_time.max(base),
        );
        if max < base {
            f.add(
                "maxEjectionTime",
                format!("{max:?} is shorter than baseEjectionTime {base:?}"),
            );
        }
        let success_rate = self.success_rate.map(|s| {
            let stdev = s.stdev_factor.unwrap_or(1.9);
            if !(stdev.is_finite() && stdev > 0.0) {
                f.add(
                    "successRate.stdevFactor",
                    format!("{stdev} must be a positive number"),
                );
            }
            SuccessRateEjection {
                min_requests: s.min_requests.unwrap_or(100),
                min_hosts: s.min_hosts.unwrap_or(3),
                stdev_factor: if stdev.is_finite() && stdev > 0.0 {
                    stdev
                } else {
                    1.9
                },
            }
        });
        OutlierDetection {
            consecutive_failures: self.consecutive_failures.unwrap_or(d.consecutive_failures),
            interval: f.duration("interval", self.interval, d.interval),
            base_ejection_time: base,
            max_ejection_time: max.max(base),
            max_ejection_percent: f.percent(
                "maxEjectionPercent",
                self.max_ejection_percent,
                d.max_ejection_percent,
            ),
            success_rate,
            panic_threshold_percent: f.percent(
                "panicThresholdPercent",
                self.panic_threshold_percent,
                d.panic_threshold_percent,
            ),
        }
    }
}

impl HedgingSpec {
    fn validate(self, f: &mut Fields<'_, '_>) -> Hedging {
        let delay = match (self.delay, self.percentile) {
            (Some(_), Some(_)) => {
                f.add(
                    "delay",
                    "give either delay (fixed) or percentile (from live latency), not both",
                );
                HedgeDelay::Fixed(Duration::from_millis(10))
            }
            (None, None) => {
                f.add("delay", "give delay (e.g. 10ms) or percentile (e.g. 95)");
                HedgeDelay::Fixed(Duration::from_millis(10))
            }
            (Some(d), None) => {
                if self.min_delay.is_some()
                    || self.max_delay.is_some()
                    || self.required_history.is_some()
                {
                    f.add(
                        "delay",
                        "minDelay, maxDelay and requiredHistory only apply with percentile",
                    );
                }
                HedgeDelay::Fixed(f.duration("delay", Some(d), Duration::from_millis(10)))
            }
            (None, Some(pct)) => {
                if !(pct.is_finite() && pct > 0.0 && pct < 100.0) {
                    f.add(
                        "percentile",
                        format!("{pct} must be above 0 and below 100 (e.g. 95)"),
                    );
                }
                let min_delay = f.duration("minDelay", self.min_delay, Duration::from_millis(1));
                let max_delay = self
                    .max_delay
                    .map(|m| f.duration("maxDelay", Some(m), Duration::from_secs(1)));
                if let Some(m) = max_delay
                    && m < min_delay
                {
                    f.add(
                        "maxDelay",
                        format!("{m:?} is shorter than minDelay {min_delay:?}"),
                    );
                }
                HedgeDelay::Percentile {
                    percentile: if pct.is_finite() {
                        pct.clamp(0.1, 99.99)
                    } else {
                        95.0
                    },
                    min_delay,
                    max_delay,
                    required_history: self.required_history.unwrap_or(100),
                }
            }
        };
        let max_attempts = match self.max_attempts {
            Some(n) if !(2..=5).contains(&n) => {
                f.add(
                    "maxAttempts",
                    format!("{n}: use 2 to 5 attempts in all (the original counts)"),
                );
                2
            }
            Some(n) => n,
            None => 2,
        };
        Hedging {
            delay,
            max_attempts,
            non_idempotent: self.non_idempotent.unwrap_or(false),
            max_buffered_body: self.max_buffered_body.unwrap_or(64 * 1024),
        }
    }
}

impl RetrySpec {
    fn validate(self, f: &mut Fields<'_, '_>) -> Retry {
        let max_retries = match self.max_retries {
            Some(n) if n > 10 => {
                f.add(
                    "maxRetries",
                    format!("{n}: at most 10 (the budget bounds retries anyway)"),
                );
                10
            }
            Some(n) => n,
            None => 2,
        };
        let (base, max) = match self.backoff {
            Some(b) => (b.base, b.max),
            None => (None, None),
        };
        let base_backoff = f.duration("backoff.base", base, Duration::from_millis(25));
        let max_backoff = f.duration(
            "backoff.max",
            max,
            (base_backoff * 10).max(Duration::from_millis(250)),
        );
        if max_backoff < base_backoff {
            f.add(
                "backoff.max",
                format!("{max_backoff:?} is shorter than backoff.base {base_backoff:?}"),
            );
        }
        Retry {
            max_retries,
            base_backoff,
            max_backoff: max_backoff.max(base_backoff),
            per_try_timeout: self
                .per_try_timeout
                .map(|t| f.duration("perTryTimeout", Some(t), Duration::from_secs(1))),
            non_idempotent: self.non_idempotent.unwrap_or(false),
        }
    }
}

impl BudgetSpec {
    fn validate(self, f: &mut Fields<'_, '_>) -> Budget {
        let d = Budget::default();
        let percent = match self.percent {
            Some(p) if !(p.is_finite() && (0.0..=100.0).contains(&p)) => {
                f.add("percent", format!("{p} is not a percentage (0 to 100)"));
                d.percent
            }
            Some(p) => p,
            None => d.percent,
        };
        Budget {
            percent,
            min_per_second: self.min_per_second.unwrap_or(d.min_per_second),
            window: f.duration("window", self.window, d.window),
        }
    }
}
