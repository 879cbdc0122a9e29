//! Settings of the latency-aware balancer and their validation.

use std::fmt;
use std::time::Duration;

/// The largest `choices` accepted: candidates live in a small stack array,
/// and beyond a handful P2C gains nothing but work.
pub const MAX_CHOICES: usize = 16;

/// How a [`Balancer`](super::Balancer) chooses among endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Power of `choices` random candidates; the lowest
    /// peak-EWMA latency x (in-flight + 1) / effective weight wins
    /// (Finagle's and Linkerd's P2C + PeakEWMA). The default.
    #[default]
    LatencyAware,
    /// Power of `choices` random candidates; the lowest
    /// (in-flight + 1) / effective weight wins (Envoy's `LEAST_REQUEST`).
    LeastRequest,
    /// Smooth weighted round robin on the configured weights, thinned by
    /// the health and slow-start factors. Blind to load: for comparison.
    RoundRobin,
}

/// Settings of the latency-aware balancer. `Default` gives Linkerd's
/// values: P2C, 30 ms default RTT, 10 s decay, no slow start, no locality.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyConfig {
    pub algorithm: Algorithm,
    /// Random candidates compared per pick, `2..=MAX_CHOICES`.
    pub choices: usize,
    /// Latency assumed for an endpoint before its first response.
    pub default_rtt: Duration,
    /// Time constant of the peak-EWMA: a latency peak, and the estimate of
    /// an endpoint without traffic, fall by a factor e per `decay`.
    pub decay: Duration,
    /// Ramp the weight of endpoints that join after the balancer started.
    pub slow_start: Option<SlowStart>,
    /// Prefer endpoints in the local zone.
    pub locality: Option<Locality>,
}

impl Default for LatencyConfig {
    fn default() -> Self {
        LatencyConfig {
            algorithm: Algorithm::LatencyAware,
            choices: 2,
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            slow_start: None,
            locality: None,
        }
    }
}

/// Envoy's `slow_start_config`: an endpoint that joined `t` ago gets the
/// weight factor `max(min_weight_percent / 100, (t / window)^(1 / aggression))`
/// until `t >= window`, then 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    /// 1.0 ramps linearly; above 1 the ramp is quicker at first, below 1
    /// slower. Finite and positive.
    pub aggression: f64,
    /// The factor never goes below this share of the weight, in `(0, 100]`.
    pub min_weight_percent: f64,
}

impl SlowStart {
    /// A linear ramp over `window` starting at 10 % (Envoy's defaults).
    pub fn linear(window: Duration) -> Self {
        SlowStart {
            window,
            aggression: 1.0,
            min_weight_percent: 10.0,
        }
    }

    /// The weight factor, in `[min_weight_percent / 100, 1]`, of an
    /// endpoint that joined `age` ago.
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.window {
            return 1.0;
        }
        let min = self.min_weight_percent / 100.0;
        // Envoy counts at least 1 ms so the curve starts above zero.
        let age = age.max(Duration::from_millis(1)).min(self.window);
        let t = age.as_secs_f64() / self.window.as_secs_f64();
        t.powf(1.0 / self.aggression).clamp(min, 1.0)
    }
}

/// Locality preference: traffic stays in `local_zone` and spills to the
/// other zones (a) by health, as Envoy's priority levels do: the local zone
/// keeps `min(1, overprovisioning x healthy share)` of the traffic and the
/// rest goes to the other zones; (b) by load, per request: the best local
/// candidate loses to the best remote one when its cost is more than
/// `overload_ratio` times the remote cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Locality {
    /// Endpoints whose zone equals this are local.
    pub local_zone: String,
    /// Envoy's overprovisioning factor (1.4): with factor f the local zone
    /// keeps all its traffic while at least 1/f of its weight is healthy.
    /// At least 1.
    pub overprovisioning: f64,
    /// Spill a request when local cost > `overload_ratio` x remote cost.
    /// At least 1; `f64::INFINITY` turns load spill off.
    pub overload_ratio: f64,
    /// How long the local zone's healthy share is reused before being
    /// summed again (an O(local endpoints) pass).
    pub refresh: Duration,
}

impl Locality {
    /// Envoy's overprovisioning (1.4), spill when local cost is twice the
    /// remote cost, healthy share refreshed every 100 ms.
    pub fn new(local_zone: impl Into<String>) -> Self {
        Locality {
            local_zone: local_zone.into(),
            overprovisioning: 1.4,
            overload_ratio: 2.0,
            refresh: Duration::from_millis(100),
        }
    }
}

/// A setting of [`LatencyConfig`] that cannot work.
#[derive(Debug, Clone, PartialEq)]
pub enum LatencyConfigError {
    Choices(usize),
    DefaultRttZero,
    DecayZero,
    SlowStartWindowZero,
    SlowStartAggression(f64),
    SlowStartMinWeight(f64),
    LocalZoneEmpty,
    Overprovisioning(f64),
    OverloadRatio(f64),
}

impl fmt::Display for LatencyConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use LatencyConfigError::*;
        match self {
            Choices(n) => write!(f, "choices must be in 2..={MAX_CHOICES}, got {n}"),
            DefaultRttZero => f.write_str("defaultRtt must be greater than zero"),
            DecayZero => f.write_str("decay must be greater than zero"),
            SlowStartWindowZero => f.write_str("slowStart.window must be greater than zero"),
            SlowStartAggression(a) => {
                write!(f, "slowStart.aggression must be finite and > 0, got {a}")
            }
            SlowStartMinWeight(p) => {
                write!(f, "slowStart.minWeightPercent must be in (0, 100], got {p}")
            }
            LocalZoneEmpty => f.write_str("locality.localZone must not be empty"),
            Overprovisioning(x) => {
                write!(
                    f,
                    "locality.overprovisioning must be finite and >= 1, got {x}"
                )
            }
            OverloadRatio(x) => write!(
                f,
                "locality.overloadRatio must be >= 1 (infinity turns load spill off), got {x}"
            ),
        }
    }
}

impl std::error::Error for LatencyConfigError {}

impl LatencyConfig {
    /// Checks every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), LatencyConfigError> {
        use LatencyConfigError::*;
        if !(2..=MAX_CHOICES).contains(&self.choices) {
            return Err(Choices(self.choices));
        }
        if self.default_rtt.is_zero() {
            return Err(DefaultRttZero);
        }
        if self.decay.is_zero() {
            return Err(DecayZero);
        }
        if let Some(s) = &self.slow_start {
            if s.window.is_zero() {
                return Err(SlowStartWindowZero);
            }
            if !(s.aggression.is_finite() && s.aggression > 0.0) {
                return Err(SlowStartAggression(s.aggression));
            }
            // Written so that NaN fails too.
            if !(s.min_weight_percent > 0.0 && s.min_weight_percent <= 100.0) {
                return Err(SlowStartMinWeight(s.min_weight_percent));
            }
        }
        if let Some(l) = &self.locality {
            if l.local_zone.is_empty() {
                return Err(LocalZoneEmpty);
            }
            if !(l.overprovisioning.is_finite() && l.overprovisioning >= 1.0) {
                return Err(Overprovisioning(l.overprovisioning));
            }
            if l.overload_ratio.is_nan() || l.overload_ratio < 1.0 {
                return Err(OverloadRatio(l.overload_ratio));
            }
        }
        Ok(())
    }
}
