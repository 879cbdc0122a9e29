//! `TrafficPolicy` (`weft.dev/v1alpha1`): the tail-latency and failure
//! governance of a Service or of a route, attached Gateway API style
//! (policy attachment, GEP-713) through `spec.targetRefs`.
//!
//! ```yaml
//! apiVersion: weft.dev/v1alpha1
//! kind: TrafficPolicy
//! metadata: {name: catalog-tail}
//! spec:
//!   targetRefs:
//!   - {kind: Service, name: catalog}                 # every request to catalog
//!   - {kind: HTTPRoute, name: shop, sectionName: read} # one rule of a route
//!   loadBalancer: {type: LatencyAware, choices: 2, defaultRtt: 30ms, decay: 10s}
//!   failureCodes:
//!     http: ["5xx", "429"]
//!     grpc: [UNAVAILABLE, DEADLINE_EXCEEDED]
//!     header: {name: x-biz-code, values: ["5003", "5100-5199"]}
//!   reweighting: {halfLife: 1s, minWeightPercent: 5, recovery: 10s}
//!   outlierDetection: {consecutiveFailures: 5, baseEjectionTime: 30s, maxEjectionPercent: 50}
//!   hedging: {percentile: 95, minDelay: 5ms, requiredHistory: 100, maxAttempts: 2}
//!   retry: {maxRetries: 2, backoff: {base: 25ms, max: 250ms}}
//!   budget: {percent: 10, minPerSecond: 10, window: 10s}
//! ```
//!
//! Every section is optional; an absent section means the default
//! behaviour (latency-aware balancing, default failure codes, reweighting
//! and outlier detection on, no hedging, no retries). Precedence, per
//! section: a route rule's policy (`sectionName`) over a whole route's over
//! the Service's (see [`crate::Config::effective_policy`]). Two policies
//! setting the same section on the same target are rejected, naming both.

mod flow;
mod refs;
mod spec;
#[cfg(test)]
mod tests;

pub use flow::{
    AbortStatus, Admission, Deadline, FailureMode, Fault, FaultAbort, FaultDelay, GlobalRateLimit,
    LocalRateLimit, RateLimit, RateLimitUnit,
};
pub use refs::PolicyScope;
pub(crate) use refs::check_policies;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use spec::TrafficPolicySpec;

/// A validated TrafficPolicy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrafficPolicy {
    pub name: String,
    pub namespace: String,
    /// Never empty; all in the policy's namespace.
    pub target_refs: Vec<PolicyTargetRef>,
    pub sections: PolicySections,
}

/// What a policy attaches to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyTargetRef {
    pub kind: PolicyTargetKind,
    pub name: String,
    /// A route rule's `name`, or a Service port's `name`.
    pub section_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum PolicyTargetKind {
    Service,
    HTTPRoute,
    GRPCRoute,
}

impl PolicyTargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyTargetKind::Service => "Service",
            PolicyTargetKind::HTTPRoute => "HTTPRoute",
            PolicyTargetKind::GRPCRoute => "GRPCRoute",
        }
    }
}

/// The governance sections; each may come from a different policy once
/// merged ([`crate::EffectivePolicy`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicySections {
    pub load_balancer: Option<LoadBalancer>,
    pub failure_codes: Option<FailureCodes>,
    pub reweighting: Option<Reweighting>,
    pub outlier_detection: Option<OutlierDetection>,
    pub hedging: Option<Hedging>,
    pub retry: Option<Retry>,
    pub budget: Option<Budget>,
    // Issue 6: flow control and request policy.
    pub admission: Option<Admission>,
    pub rate_limit: Option<RateLimit>,
    pub fault: Option<Fault>,
    pub deadline: Option<Deadline>,
}

impl PolicySections {
    /// The names (as written in YAML) of the sections this policy sets.
    pub fn set_names(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.load_balancer.is_some() {
            v.push("loadBalancer");
        }
        if self.failure_codes.is_some() {
            v.push("failureCodes");
        }
        if self.reweighting.is_some() {
            v.push("reweighting");
        }
        if self.outlier_detection.is_some() {
            v.push("outlierDetection");
        }
        if self.hedging.is_some() {
            v.push("hedging");
        }
        if self.retry.is_some() {
            v.push("retry");
        }
        if self.budget.is_some() {
            v.push("budget");
        }
        if self.admission.is_some() {
            v.push("admission");
        }
        if self.rate_limit.is_some() {
            v.push("rateLimit");
        }
        if self.fault.is_some() {
            v.push("fault");
        }
        if self.deadline.is_some() {
            v.push("deadline");
        }
        v
    }

    /// Fills every section `self` lacks from `other`.
    pub fn or(mut self, other: &PolicySections) -> PolicySections {
        macro_rules! fill {
            ($($f:ident),*) => {$(
                if self.$f.is_none() {
                    self.$f = other.$f.clone();
                }
            )*};
        }
        fill!(
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
            deadline
        );
        self
    }
}

/// How endpoints are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadBalancer {
    pub kind: BalancerKind,
    /// Candidates drawn per pick (power of two choices: 2).
    pub choices: u32,
    /// Latency assumed for an endpoint with no measurement yet.
    pub default_rtt: Duration,
    /// How fast the latency estimate forgets a peak.
    pub decay: Duration,
    pub locality: Option<LocalityPreference>,
    pub slow_start: Option<SlowStart>,
}

impl Default for LoadBalancer {
    fn default() -> Self {
        LoadBalancer {
            kind: BalancerKind::LatencyAware,
            choices: 2,
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            locality: None,
            slow_start: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BalancerKind {
    /// Power of `choices` choices on peak-EWMA latency x (in-flight + 1) / weight.
    LatencyAware,
    /// Power of `choices` choices on (in-flight + 1) / weight.
    LeastRequest,
    /// Smooth weighted round robin.
    RoundRobin,
}

/// Same-zone endpoints first; others take a share when the local ones are
/// too few healthy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalityPreference {
    /// Below this share of healthy (effective) local weight, traffic spills
    /// to other zones in proportion.
    pub min_healthy_percent: u32,
}

/// New endpoints ramp up instead of taking a full share at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlowStart {
    pub window: Duration,
    /// The weight share a brand-new endpoint starts with.
    pub min_weight_percent: u32,
    /// Shape of the ramp (1.0 linear; higher is slower at first).
    pub aggression: f64,
}

/// What counts as a failure, for reweighting, outlier detection, retries and
/// the hedging breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureCodes {
    /// Inclusive HTTP status ranges.
    pub http: Vec<(u16, u16)>,
    /// gRPC status codes (0..=16).
    pub grpc: Vec<u8>,
    /// A business error code in a response header or gRPC trailer.
    pub header: Option<HeaderCodes>,
    pub connect_failure: bool,
    /// A connection or stream reset mid-response.
    pub reset: bool,
    pub timeout: bool,
    /// Responses slower than this count as failures.
    pub latency_above: Option<Duration>,
}

impl Default for FailureCodes {
    /// 5xx, gRPC UNKNOWN / DEADLINE_EXCEEDED / INTERNAL / UNAVAILABLE /
    /// DATA_LOSS, connect failures, resets and timeouts.
    fn default() -> Self {
        FailureCodes {
            http: vec![(500, 599)],
            grpc: vec![2, 4, 13, 14, 15],
            header: None,
            connect_failure: true,
            reset: true,
            timeout: true,
            latency_above: None,
        }
    }
}

/// `name: values` where a value is an integer, an inclusive integer range
/// `a-b`, or any other literal string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderCodes {
    /// Lower-case.
    pub name: String,
    pub values: Vec<CodeValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CodeValue {
    Range(i64, i64),
    Literal(String),
}

impl CodeValue {
    /// Whether a header value (trimmed) is this code.
    pub fn matches(&self, value: &str) -> bool {
        let v = value.trim();
        match self {
            CodeValue::Range(a, b) => v.parse::<i64>().is_ok_and(|n| (*a..=*b).contains(&n)),
            CodeValue::Literal(s) => s == v,
        }
    }
}

/// A failing endpoint's weight is cut at once and recovers gradually.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reweighting {
    pub enabled: bool,
    /// Half-life of the decaying success score.
    pub half_life: Duration,
    /// The lowest share of its weight an endpoint keeps (probe traffic).
    pub min_weight_percent: u32,
    /// How long a healed endpoint takes to get its full weight back.
    pub recovery: Duration,
}

impl Default for Reweighting {
    fn default() -> Self {
        Reweighting {
            enabled: true,
            half_life: Duration::from_secs(1),
            min_weight_percent: 5,
            recovery: Duration::from_secs(10),
        }
    }
}

/// Hard ejection (Envoy's outlier detection), with limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutlierDetection {
    /// 0 turns this check off.
    pub consecutive_failures: u32,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Eject endpoints whose success rate is below the cluster mean by
    /// `stdev_factor` standard deviations.
    pub success_rate: Option<SuccessRateEjection>,
    /// Below this share of healthy endpoints, ignore ejections (route to
    /// all) rather than overload the rest.
    pub panic_threshold_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            success_rate: None,
            panic_threshold_percent: 50,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuccessRateEjection {
    pub min_requests: u32,
    pub min_hosts: u32,
    pub stdev_factor: f64,
}

/// Backup requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hedging {
    pub delay: HedgeDelay,
    /// Attempts in all, the original included.
    pub max_attempts: u32,
    /// Hedge non-idempotent methods too (the route is safe to repeat).
    pub non_idempotent: bool,
    /// Request bodies up to this size are buffered so a backup can resend
    /// them; larger requests are not hedged.
    pub max_buffered_body: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HedgeDelay {
    Fixed(Duration),
    Percentile {
        percentile: f64,
        min_delay: Duration,
        max_delay: Option<Duration>,
        required_history: u64,
    },
}

/// Retries on the failure codes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    pub max_retries: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub per_try_timeout: Option<Duration>,
    /// Retry non-idempotent methods too.
    pub non_idempotent: bool,
}

/// The extra attempts (retries and hedges together) allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Extra attempts as a share of requests.
    pub percent: f64,
    /// Always allowed, even at low traffic.
    pub min_per_second: u32,
    pub window: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            percent: 10.0,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// The sections in force for some traffic, each with the policy it came
/// from (`namespace/name`) for status and debugging.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EffectivePolicy {
    pub sections: PolicySections,
    /// Section (YAML name) -> `namespace/name` of the policy that set it.
    pub sources: Vec<(&'static str, String)>,
}

impl crate::Config {
    /// One line per TrafficPolicy setting that some data plane cannot
    /// apply as written, for the control plane and standalone proxies to
    /// log when they load a config: today only locality preference, which
    /// weft proxies honour when started with `--zone` and Envoy nodes
    /// ignore (they get no local cluster to compare zones with).
    pub fn not_yet_enforced(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.traffic_policies {
            let s = &p.sections;
            if s.load_balancer
                .as_ref()
                .is_some_and(|lb| lb.locality.is_some())
            {
                out.push(format!(
                    "TrafficPolicy {}/{} sets loadBalancer.locality: weft proxies apply it only when started with --zone; Envoy nodes ignore it",
                    p.namespace, p.name
                ));
            }
            let weft_only: Vec<&str> = [
                (s.admission.is_some(), "admission"),
                (s.rate_limit.is_some(), "rateLimit"),
                (s.fault.is_some(), "fault"),
            ]
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, n)| *n)
            .collect();
            if !weft_only.is_empty() {
                out.push(format!(
                    "TrafficPolicy {}/{} sets {}: enforced by weft proxies (on the caller's side); Envoy nodes get the fault, local and global rate limit filters, without dry run, sources or deniedSources",
                    p.namespace,
                    p.name,
                    weft_only.join(", ")
                ));
            }
        }
        out
    }
}
