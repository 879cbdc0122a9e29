//! Error-code re-weighting and ejection.
//!
//! The pipeline, per response and per cluster:
//!
//! 1. [`Classifier`] turns what the proxy saw of one response (an
//!    [`Observation`]: HTTP status, gRPC status, a business code from a
//!    header or trailer, connect failure, reset, timeout, latency) into a
//!    [`Verdict`], using user-defined [`FailureCodes`]. A failure names the
//!    rule that matched ([`FailureReason`]), for metric labels.
//! 2. [`EndpointHealth`] keeps a decaying failure rate per endpoint and
//!    turns it into a weight multiplier in `[min_multiplier, 1]`: failures
//!    cut it at once, recovery climbs a ramp. The floor keeps probe
//!    traffic flowing so an endpoint can show that it healed.
//! 3. [`ClusterHealth`] owns the endpoints of one cluster and ejects
//!    outliers outright, as Envoy's outlier detection does (consecutive
//!    failures, success rate against the cluster, failure rate above a
//!    threshold), bounded by `max_ejection_percent`, with ejection time =
//!    base x times ejected, re-admission into the recovery ramp, and a panic
//!    mode that routes to every endpoint when too little healthy weight is
//!    left. It reports [`HealthEvent`]s for logs and metrics.
//!
//! What reaches the balancer is [`ClusterHealth::effective_multiplier`]:
//! 0 while ejected, 1 in panic mode, else the endpoint's multiplier. The
//! proxy multiplies it into the endpoint's weight after each response and
//! after each [`ClusterHealth::evaluate`] tick (ramps climb with time, not
//! only with responses).
//!
//! Every multiplier is relative: the balancer normalises weights, and an
//! endpoint is cut only for failures beyond those of the cluster's best
//! endpoint, so if all endpoints fail alike their shares do not move.

mod classify;
mod codes;
mod config;
mod outlier;
mod score;

pub use classify::{Classifier, CodePlace, FailureReason, Observation, Outcome, Verdict};
pub use codes::{CodeMatcher, CodeParseError, GrpcCode, HeaderRule, StatusRange};
pub use config::{
    ConfigError, FailureCodes, FailureRateRule, HealthConfig, OutlierConfig, ScoreConfig,
    SuccessRateRule,
};
pub use outlier::{ClusterHealth, EjectionReason, EndpointStatus, HealthEvent, Recorded};
pub use score::EndpointHealth;

#[cfg(test)]
mod tests;
