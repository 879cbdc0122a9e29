//! Hedging settings and their validation.

use std::time::Duration;

/// How long to wait for the original attempt before sending a backup.
#[derive(Debug, Clone, PartialEq)]
pub enum HedgeDelay {
    /// Always the same delay ("The Tail at Scale" used 10 ms for BigTable).
    Fixed(Duration),
    /// The `percentile` of the route's recent per-attempt latency, learned
    /// online: with 95, about 5% of requests get a backup.
    Percentile {
        /// In `[50, 100)`.
        percentile: f64,
        /// Never hedge earlier than this, however fast the route.
        min_delay: Duration,
        /// Never wait longer than this, however slow the route.
        max_delay: Option<Duration>,
        /// Samples the window must hold before hedging starts.
        required_history: u64,
        /// How far back latencies count (a rotating histogram over it).
        window: Duration,
    },
}

impl HedgeDelay {
    /// `percentile` of the last 30 s, at least 1 ms, once 100 samples are
    /// in (`HedgeDelay::percentile(95.0)` is the default).
    pub fn percentile(percentile: f64) -> Self {
        HedgeDelay::Percentile {
            percentile,
            min_delay: Duration::from_millis(1),
            max_delay: None,
            required_history: 100,
            window: Duration::from_secs(30),
        }
    }
}

/// When hedging stops because the target, not the tail, is the problem.
///
/// Over a rolling `window`, a request is *slow* when its original attempt
/// took longer than the hedge delay. The breaker opens (no hedges) when more
/// than `slow_share_to_open` of the requests are slow or fewer than
/// `success_rate_to_open` succeed, and closes again only once the slow share
/// is back at or below `slow_share_to_close` and the success rate at or above
/// `success_rate_to_close` (hysteresis, so it does not flap).
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub window: Duration,
    /// Fewer requests in the window: no judgement, the breaker keeps its
    /// state.
    pub min_requests: u64,
    pub slow_share_to_open: f64,
    pub slow_share_to_close: f64,
    pub success_rate_to_open: f64,
    pub success_rate_to_close: f64,
}

impl Default for BreakerConfig {
    /// Opens when most (over half) of the last 5 s of requests were slow or
    /// under 80% succeeded; closes at 20% slow and 90% success.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(5),
            min_requests: 20,
            slow_share_to_open: 0.5,
            slow_share_to_close: 0.2,
            success_rate_to_open: 0.8,
            success_rate_to_close: 0.9,
        }
    }
}

/// Backup requests for one route (or cluster).
#[derive(Debug, Clone, PartialEq)]
pub struct HedgeConfig {
    pub delay: HedgeDelay,
    /// Attempts per request, the original included (2: one backup at most).
    pub max_attempts: u32,
    pub breaker: BreakerConfig,
    /// Request bodies are buffered up to this size so that a backup can
    /// replay them; a larger body makes its request ineligible.
    pub max_buffered_body: usize,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            delay: HedgeDelay::percentile(95.0),
            max_attempts: 2,
            breaker: BreakerConfig::default(),
            max_buffered_body: 64 * 1024,
        }
    }
}

/// Why a [`HedgeConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HedgeConfigError {
    #[error("hedge delay must be greater than zero (a zero delay duplicates every request)")]
    ZeroDelay,
    #[error("hedge percentile must be in [50, 100), got {0}")]
    Percentile(f64),
    #[error("hedge maxDelay ({max:?}) is below minDelay ({min:?})")]
    MaxBelowMin { min: Duration, max: Duration },
    #[error("hedge requiredHistory must be at least 1")]
    RequiredHistory,
    #[error("hedge latency window must be between 1s and 10m, got {0:?}")]
    Window(Duration),
    #[error("hedge maxAttempts must be between 2 and 10 (the original included), got {0}")]
    MaxAttempts(u32),
    #[error("hedge breaker window must be between 1s and 10m, got {0:?}")]
    BreakerWindow(Duration),
    #[error("hedge breaker minRequests must be at least 1")]
    BreakerMinRequests,
    #[error("hedge breaker {name} must be between 0 and 1, got {value}")]
    BreakerShare { name: &'static str, value: f64 },
    #[error(
        "hedge breaker slowShareToClose must not be above slowShareToOpen \
         (close {close}, open {open})"
    )]
    BreakerSlowHysteresis { close: f64, open: f64 },
    #[error(
        "hedge breaker successRateToClose must not be below successRateToOpen \
         (close {close}, open {open})"
    )]
    BreakerSuccessHysteresis { close: f64, open: f64 },
    #[error(
        "hedge breaker slowShareToClose ({close}) must be above the share the \
         percentile hedges by design ({expected}), or the breaker never closes"
    )]
    BreakerBelowPercentile { close: f64, expected: f64 },
}

const MIN_WINDOW: Duration = Duration::from_secs(1);
const MAX_WINDOW: Duration = Duration::from_secs(600);

impl HedgeConfig {
    pub fn validate(&self) -> Result<(), HedgeConfigError> {
        use HedgeConfigError as E;
        match self.delay {
            HedgeDelay::Fixed(d) if d.is_zero() => return Err(E::ZeroDelay),
            HedgeDelay::Fixed(_) => {}
            HedgeDelay::Percentile {
                percentile,
                min_delay,
                max_delay,
                required_history,
                window,
            } => {
                if !(50.0..100.0).contains(&percentile) {
                    return Err(E::Percentile(percentile));
                }
                if max_delay.is_some_and(|max| max.is_zero()) {
                    return Err(E::ZeroDelay);
                }
                if let Some(max) = max_delay
                    && max < min_delay
                {
                    return Err(E::MaxBelowMin {
                        min: min_delay,
                        max,
                    });
                }
                if required_history == 0 {
                    return Err(E::RequiredHistory);
                }
                if !(MIN_WINDOW..=MAX_WINDOW).contains(&window) {
                    return Err(E::Window(window));
                }
                let expected = 1.0 - percentile / 100.0;
                if self.breaker.slow_share_to_close <= expected {
                    return Err(E::BreakerBelowPercentile {
                        close: self.breaker.slow_share_to_close,
                        expected,
                    });
                }
            }
        }
        if !(2..=10).contains(&self.max_attempts) {
            return Err(E::MaxAttempts(self.max_attempts));
        }
        self.breaker.validate()
    }
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), HedgeConfigError> {
        use HedgeConfigError as E;
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&self.window) {
            return Err(E::BreakerWindow(self.window));
        }
        if self.min_requests == 0 {
            return Err(E::BreakerMinRequests);
        }
        for (name, value) in [
            ("slowShareToOpen", self.slow_share_to_open),
            ("slowShareToClose", self.slow_share_to_close),
            ("successRateToOpen", self.success_rate_to_open),
            ("successRateToClose", self.success_rate_to_close),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(E::BreakerShare { name, value });
            }
        }
        if self.slow_share_to_close > self.slow_share_to_open {
            return Err(E::BreakerSlowHysteresis {
                close: self.slow_share_to_close,
                open: self.slow_share_to_open,
            });
        }
        if self.success_rate_to_close < self.success_rate_to_open {
            return Err(E::BreakerSuccessHysteresis {
                close: self.success_rate_to_close,
                open: self.success_rate_to_open,
            });
        }
        Ok(())
    }
}
