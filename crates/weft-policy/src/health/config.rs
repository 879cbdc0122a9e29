//! Settings for classification, scoring and ejection, their documented
//! defaults, and validation with messages that name the field.

use std::fmt;
use std::time::Duration;

use super::codes::{GrpcCode, HeaderRule, StatusRange};

/// A setting that is out of range. `field` is the setting's path (e.g.
/// `outlier.max_ejection_percent`), `problem` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    problem: String,
}

impl ConfigError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }

    /// The setting's path, e.g. `score.half_life`.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn check(
    ok: bool,
    field: &'static str,
    problem: impl FnOnce() -> String,
) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(field, problem()))
    }
}

/// Which outcomes count as failures of the endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureCodes {
    /// HTTP statuses that fail. Default `5xx`.
    pub http: Vec<StatusRange>,
    /// gRPC statuses that fail, from trailers or a trailers-only response.
    /// Default UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS:
    /// the codes that say the server, not the request, went wrong.
    pub grpc: Vec<GrpcCode>,
    /// A business code in a response header or trailer. Default none.
    pub header: Option<HeaderRule>,
    /// The connection to the endpoint could not be made. Default true.
    pub connect_failure: bool,
    /// The stream or connection was reset before the response ended.
    /// Default true.
    pub reset: bool,
    /// The attempt's timeout fired. Default true.
    pub timeout: bool,
    /// Responses slower than this fail even when their codes succeed.
    /// Default none.
    pub latency_above: Option<Duration>,
}

impl Default for FailureCodes {
    fn default() -> Self {
        Self {
            http: vec![StatusRange::class(5).expect("5xx")],
            grpc: vec![
                GrpcCode::UNKNOWN,
                GrpcCode::DEADLINE_EXCEEDED,
                GrpcCode::INTERNAL,
                GrpcCode::UNAVAILABLE,
                GrpcCode::DATA_LOSS,
            ],
            header: None,
            connect_failure: true,
            reset: true,
            timeout: true,
            latency_above: None,
        }
    }
}

impl FailureCodes {
    /// Nothing fails: a starting point for building a set from scratch.
    pub fn none() -> Self {
        Self {
            http: Vec::new(),
            grpc: Vec::new(),
            header: None,
            connect_failure: false,
            reset: false,
            timeout: false,
            latency_above: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            !self.grpc.contains(&GrpcCode::OK),
            "error_codes.grpc",
            || {
                "OK (0) cannot be a failure code: every gRPC success would count as a failure"
                    .into()
            },
        )?;
        if let Some(t) = self.latency_above {
            check(!t.is_zero(), "error_codes.latency_above", || {
                "must be > 0: every response would count as a failure".into()
            })?;
        }
        Ok(())
    }
}

/// How the per-endpoint score and weight multiplier behave.
///
/// The failure rate is `decayed failures / (decayed requests +
/// prior_requests)`, both sums halving every `half_life`. Only what that
/// rate proves counts: its Wilson lower bound (two standard errors), so
/// noise on a healthy endpoint and a few failures on a quiet one do not
/// cut. That bound maps to a target multiplier `1 / (1 + failure_penalty *
/// max(0, bound - allowed))`, never below `min_multiplier`, where `allowed`
/// is the larger of `tolerated_failure_rate` and, inside a
/// [`ClusterHealth`](super::ClusterHealth), the failure rate of the
/// cluster's best endpoint (failures every endpoint shows move no traffic).
/// The multiplier follows the target down at once and up no faster than a
/// ramp that multiplies it by the same factor every second, from
/// `min_multiplier` to 1 in `recovery_time` (with the defaults: x1.35 a
/// second, 0.05 -> 0.22 in 5 s, -> 1 in 10 s).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreConfig {
    /// Half-life of the decaying failure rate. Default 1 s: a step from 0
    /// to 50 % failures cuts an endpoint taking 300 requests/s to ~0.1
    /// within one second.
    pub half_life: Duration,
    /// Pseudo-requests counted as successes in every score, so that one
    /// failure on an idle endpoint costs it a little weight, not most of it.
    /// Default 10.
    pub prior_requests: f64,
    /// Failure rate (0-1) an endpoint may show and keep full weight.
    /// Default 0.01.
    pub tolerated_failure_rate: f64,
    /// How hard proven failures above the tolerated rate cut. Default 100:
    /// with plenty of traffic, 2 % failures give a multiplier of ~0.5, 5 %
    /// ~0.2, 10 % ~0.1, 25 % or more the floor.
    pub failure_penalty: f64,
    /// The floor of the multiplier, in (0, 1], so a weighted-down endpoint
    /// keeps probe traffic. Default 0.05.
    pub min_multiplier: f64,
    /// Time to climb from `min_multiplier` to 1 once the endpoint
    /// succeeds again (plus about a second while its score clears).
    /// Default 10 s.
    pub recovery_time: Duration,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            half_life: Duration::from_secs(1),
            prior_requests: 10.0,
            tolerated_failure_rate: 0.01,
            failure_penalty: 100.0,
            min_multiplier: 0.05,
            recovery_time: Duration::from_secs(10),
        }
    }
}

impl ScoreConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(!self.half_life.is_zero(), "score.half_life", || {
            "must be > 0".into()
        })?;
        check(
            self.prior_requests.is_finite() && self.prior_requests >= 0.0,
            "score.prior_requests",
            || format!("must be a finite number >= 0, got {}", self.prior_requests),
        )?;
        check(
            (0.0..1.0).contains(&self.tolerated_failure_rate),
            "score.tolerated_failure_rate",
            || format!("must be in [0, 1), got {}", self.tolerated_failure_rate),
        )?;
        check(
            self.failure_penalty.is_finite() && self.failure_penalty >= 0.0,
            "score.failure_penalty",
            || format!("must be a finite number >= 0, got {}", self.failure_penalty),
        )?;
        check(
            self.min_multiplier > 0.0 && self.min_multiplier <= 1.0,
            "score.min_multiplier",
            || {
                format!(
                    "must be in (0, 1] so a weighted-down endpoint keeps probe traffic, got {}",
                    self.min_multiplier
                )
            },
        )?;
        check(!self.recovery_time.is_zero(), "score.recovery_time", || {
            "must be > 0".into()
        })
    }
}

/// Eject endpoints whose success rate is below the cluster's mean by more
/// than `stdev_factor` standard deviations (Envoy's `success_rate_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRateRule {
    /// Default 1.9.
    pub stdev_factor: f64,
    /// Endpoints with at least `min_requests` in the interval needed for
    /// the rule to run. Default 5.
    pub min_hosts: usize,
    /// Requests an endpoint needs in the interval to be judged. Default 100.
    pub min_requests: u64,
}

impl Default for SuccessRateRule {
    fn default() -> Self {
        Self {
            stdev_factor: 1.9,
            min_hosts: 5,
            min_requests: 100,
        }
    }
}

/// Eject endpoints whose failure rate in the interval is at least
/// `threshold` (Envoy's `failure_percentage_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRateRule {
    /// Fraction in (0, 1]. Default 0.85.
    pub threshold: f64,
    /// Default 5.
    pub min_hosts: usize,
    /// Default 50.
    pub min_requests: u64,
}

impl Default for FailureRateRule {
    fn default() -> Self {
        Self {
            threshold: 0.85,
            min_hosts: 5,
            min_requests: 50,
        }
    }
}

/// Hard ejection, as Envoy's outlier detection does it, plus panic mode.
/// Defaults follow Envoy's where Envoy has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierConfig {
    /// Eject after this many failures in a row, at once. Default 5; `None`
    /// turns the rule off.
    pub consecutive_failures: Option<u32>,
    /// How often the success-rate and failure-rate rules run, over the
    /// requests of the interval just ended. Default 10 s.
    pub interval: Duration,
    /// Ejection time = `base_ejection_time` x times ejected. Default 30 s.
    pub base_ejection_time: Duration,
    /// Cap on one ejection's time. Default 300 s.
    pub max_ejection_time: Duration,
    /// At most this percentage of the cluster's endpoints ejected at once,
    /// rounded down but at least one when the cluster has two or more
    /// endpoints and the percentage is not 0 (3 endpoints at 50 %: 1).
    /// Default 10.
    pub max_ejection_percent: u32,
    /// Default on, Envoy's defaults (needs 5 endpoints).
    pub success_rate: Option<SuccessRateRule>,
    /// Default off, as in Envoy.
    pub failure_rate: Option<FailureRateRule>,
    /// When the cluster's healthy share falls below this fraction (0-1),
    /// ignore ejections and multipliers and route to every endpoint.
    /// Healthy share = the multipliers of endpoints not ejected, summed,
    /// over what they would be if every endpoint had the best one's
    /// multiplier. Default 0.5 (Envoy's `healthy_panic_threshold`); 0 turns
    /// panic mode off.
    pub panic_threshold: f64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: Some(5),
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
            success_rate: Some(SuccessRateRule::default()),
            failure_rate: None,
            panic_threshold: 0.5,
        }
    }
}

impl OutlierConfig {
    /// Only weight multipliers, no ejection and no panic mode.
    pub fn disabled() -> Self {
        Self {
            consecutive_failures: None,
            success_rate: None,
            failure_rate: None,
            max_ejection_percent: 0,
            panic_threshold: 0.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.consecutive_failures != Some(0),
            "outlier.consecutive_failures",
            || "must be >= 1 (leave it unset to turn the rule off)".into(),
        )?;
        check(!self.interval.is_zero(), "outlier.interval", || {
            "must be > 0".into()
        })?;
        check(
            !self.base_ejection_time.is_zero(),
            "outlier.base_ejection_time",
            || "must be > 0".into(),
        )?;
        check(
            self.max_ejection_time >= self.base_ejection_time,
            "outlier.max_ejection_time",
            || {
                format!(
                    "must be >= base_ejection_time ({:?}), got {:?}",
                    self.base_ejection_time, self.max_ejection_time
                )
            },
        )?;
        check(
            self.max_ejection_percent <= 100,
            "outlier.max_ejection_percent",
            || format!("must be 0 to 100, got {}", self.max_ejection_percent),
        )?;
        if let Some(r) = &self.success_rate {
            check(
                r.stdev_factor.is_finite() && r.stdev_factor >= 0.0,
                "outlier.success_rate.stdev_factor",
                || format!("must be a finite number >= 0, got {}", r.stdev_factor),
            )?;
            check(r.min_hosts >= 2, "outlier.success_rate.min_hosts", || {
                format!(
                    "must be >= 2 (a spread needs two endpoints), got {}",
                    r.min_hosts
                )
            })?;
            check(
                r.min_requests >= 1,
                "outlier.success_rate.min_requests",
                || "must be >= 1".into(),
            )?;
        }
        if let Some(r) = &self.failure_rate {
            check(
                r.threshold > 0.0 && r.threshold <= 1.0,
                "outlier.failure_rate.threshold",
                || format!("must be in (0, 1], got {}", r.threshold),
            )?;
            check(r.min_hosts >= 1, "outlier.failure_rate.min_hosts", || {
                "must be >= 1".into()
            })?;
            check(
                r.min_requests >= 1,
                "outlier.failure_rate.min_requests",
                || "must be >= 1".into(),
            )?;
        }
        check(
            (0.0..=1.0).contains(&self.panic_threshold),
            "outlier.panic_threshold",
            || format!("must be in [0, 1], got {}", self.panic_threshold),
        )
    }
}

/// Everything a [`ClusterHealth`](super::ClusterHealth) needs. The
/// classifier's [`FailureCodes`] are separate: classification happens
/// before the endpoint's score is touched.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HealthConfig {
    pub score: ScoreConfig,
    pub outlier: OutlierConfig,
}

impl HealthConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.score.validate()?;
        self.outlier.validate()
    }
}
