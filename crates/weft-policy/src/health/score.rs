//! One endpoint's decaying failure rate and the weight multiplier it
//! drives: cut at once by failures, back up a gradual ramp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::classify::Verdict;
use super::config::{ConfigError, ScoreConfig};

/// The health of one endpoint, shared by every request to it.
///
/// Concurrency: one small `Mutex` per endpoint around a few numbers. A
/// record holds it for an `exp2`, an `exp`, a `sqrt` and a few dozen float
/// operations (well under 100 ns), so contention is limited to responses
/// from the same endpoint completing at nearly the same instant. A
/// lock-free version would need a compare-and-swap loop over several
/// values for no measurable gain.
#[derive(Debug)]
pub struct EndpointHealth {
    config: ScoreConfig,
    state: Mutex<ScoreState>,
    /// The failure rate of the cluster's best endpoint (`f64` bits), set by
    /// [`ClusterHealth::evaluate`](super::ClusterHealth::evaluate): only
    /// failures beyond it (and beyond the tolerated rate) cut. 0 alone.
    baseline: AtomicU64,
}

#[derive(Debug, Clone)]
struct ScoreState {
    /// Time the decayed sums below were last brought up to date.
    at: Duration,
    requests: f64,
    failures: f64,
    /// The multiplier may not exceed the ramp that starts at `ramp_from`
    /// at `ramp_at`.
    ramp_from: f64,
    ramp_at: Duration,
    consecutive: u32,
    /// Plain counts since the last outlier interval.
    window_requests: u64,
    window_failures: u64,
}

impl EndpointHealth {
    /// A fresh endpoint: no history, full weight.
    pub fn new(config: ScoreConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self::unchecked(config))
    }

    pub(super) fn unchecked(config: ScoreConfig) -> Self {
        Self {
            config,
            state: Mutex::new(ScoreState {
                at: Duration::ZERO,
                requests: 0.0,
                failures: 0.0,
                ramp_from: 1.0,
                ramp_at: Duration::ZERO,
                consecutive: 0,
                window_requests: 0,
                window_failures: 0,
            }),
            baseline: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// The same history under a new config.
    pub(super) fn with_config(&self, config: ScoreConfig) -> Self {
        Self {
            config,
            state: Mutex::new(self.lock().clone()),
            baseline: AtomicU64::new(self.baseline.load(Ordering::Relaxed)),
        }
    }

    pub fn config(&self) -> &ScoreConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, ScoreState> {
        // The state is plain numbers, valid after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one attempt and returns the multiplier after it.
    pub fn record(&self, now: Duration, verdict: &Verdict) -> f64 {
        self.record_counting(now, verdict).0
    }

    /// [`record`](Self::record), also returning the consecutive failures.
    pub(super) fn record_counting(&self, now: Duration, verdict: &Verdict) -> (f64, u32) {
        let mut s = self.lock();
        self.decay(&mut s, now);
        let failed = match verdict {
            Verdict::Ignored => return (self.multiplier(&s, now), s.consecutive),
            Verdict::Success => false,
            Verdict::Failure(_) => true,
        };
        s.requests += 1.0;
        s.window_requests += 1;
        if failed {
            s.failures += 1.0;
            s.window_failures += 1;
            s.consecutive = s.consecutive.saturating_add(1);
        } else {
            s.consecutive = 0;
        }
        let (target, ramp) = (self.target(&s), self.ramp(&s, now));
        if target < ramp {
            // Fast cut: the ramp restarts from here, so the way back up is
            // always the gradual one.
            s.ramp_from = target.max(self.config.min_multiplier);
            s.ramp_at = now;
        }
        (self.clamp(target.min(ramp)), s.consecutive)
    }

    /// The weight multiplier in `[min_multiplier, 1]` at `now`.
    pub fn weight_multiplier(&self, now: Duration) -> f64 {
        let mut s = self.lock();
        self.decay(&mut s, now);
        self.multiplier(&s, now)
    }

    /// The decayed success rate (with the prior) at `now`, in `[0, 1]`.
    pub fn success_rate(&self, now: Duration) -> f64 {
        let mut s = self.lock();
        self.decay(&mut s, now);
        1.0 - self.failure_rate(&s)
    }

    /// The decayed failure rate (with the prior) at `now`.
    pub(super) fn failure_rate_at(&self, now: Duration) -> f64 {
        let mut s = self.lock();
        self.decay(&mut s, now);
        self.failure_rate(&s)
    }

    pub(super) fn set_baseline(&self, failure_rate: f64) {
        self.baseline
            .store(failure_rate.to_bits(), Ordering::Relaxed);
    }

    /// Failures in a row since the last success (or re-admission).
    pub fn consecutive_failures(&self) -> u32 {
        self.lock().consecutive
    }

    /// Requests and failures since the last call, for the outlier interval.
    pub(super) fn take_window(&self) -> (u64, u64) {
        let mut s = self.lock();
        let counts = (s.window_requests, s.window_failures);
        (s.window_requests, s.window_failures) = (0, 0);
        counts
    }

    /// After an ejection: start again from the floor of the ramp, with no
    /// failures in a row.
    pub(super) fn restart_ramp(&self, now: Duration) {
        let mut s = self.lock();
        s.ramp_from = self.config.min_multiplier;
        s.ramp_at = now;
        s.consecutive = 0;
    }

    fn decay(&self, s: &mut ScoreState, now: Duration) {
        // Responses of concurrent requests may arrive with slightly older
        // timestamps: treat them as simultaneous.
        let Some(dt) = now.checked_sub(s.at).filter(|dt| !dt.is_zero()) else {
            return;
        };
        let d = (-(dt.as_secs_f64() / self.config.half_life.as_secs_f64())).exp2();
        s.requests *= d;
        s.failures *= d;
        s.at = now;
    }

    fn failure_rate(&self, s: &ScoreState) -> f64 {
        let total = s.requests + self.config.prior_requests;
        if total > 0.0 {
            (s.failures / total).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    fn target(&self, s: &ScoreState) -> f64 {
        let c = &self.config;
        let n = s.requests + c.prior_requests;
        let proven = wilson_lower_bound(self.failure_rate(s), n);
        let baseline = f64::from_bits(self.baseline.load(Ordering::Relaxed));
        let excess = (proven - c.tolerated_failure_rate.max(baseline)).max(0.0);
        1.0 / (1.0 + c.failure_penalty * excess)
    }

    /// Multiplicative: the weight grows by the same factor every second,
    /// from the floor to 1 in `recovery_time`. A healed endpoint gets few
    /// requests while the evidence is thin and most of its share back in
    /// the last part of the ramp; a small dip recovers in a small part of
    /// `recovery_time`.
    fn ramp(&self, s: &ScoreState, now: Duration) -> f64 {
        let c = &self.config;
        let elapsed = now.saturating_sub(s.ramp_at);
        if elapsed >= c.recovery_time {
            return 1.0;
        }
        let elapsed = elapsed.as_secs_f64();
        let rate = -c.min_multiplier.ln() / c.recovery_time.as_secs_f64();
        // ramp_from >= min_multiplier > 0, so this is never 0 * inf.
        s.ramp_from * (rate * elapsed).exp()
    }

    fn multiplier(&self, s: &ScoreState, now: Duration) -> f64 {
        self.clamp(self.target(s).min(self.ramp(s, now)))
    }

    fn clamp(&self, m: f64) -> f64 {
        m.clamp(self.config.min_multiplier, 1.0)
    }
}

/// How many standard errors of doubt the cut allows: a failure rate counts
/// only as far as it is above noise at about 97.5 % one-sided confidence.
const Z: f64 = 2.0;

/// The Wilson score interval's lower bound for a rate `p` seen over `n`
/// (decayed) trials: what the data proves at least. It keeps noise on a
/// healthy endpoint from cutting it, and a few failures on a quiet one from
/// reading as a high rate, while a real failure rate shows at once.
fn wilson_lower_bound(p: f64, n: f64) -> f64 {
    if n <= 0.0 {
        return 0.0;
    }
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).max(0.0)
}
