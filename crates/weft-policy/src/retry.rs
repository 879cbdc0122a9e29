//! Retries on failures the route's classifier calls retriable, with
//! exponential backoff and jitter, paid from the [`Budget`] shared with
//! hedging instead of a bare count: under an outage, retries add at most the
//! budget's share of extra load.
//!
//! The classifier lives in [`crate::health`]; this module takes its verdict
//! as a `retriable` flag so that the two stay independent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::budget::Budget;
use crate::rng::Random;

/// How a backoff is randomised (see the AWS Architecture Blog, "Exponential
/// Backoff And Jitter", 2015): jitter spreads the retries of many clients
/// that failed together, so they do not come back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Uniform in `[0, cap]`: the least total work under contention.
    #[default]
    Full,
    /// `cap / 2` plus uniform in `[0, cap / 2]`: never retries at once.
    Equal,
    /// Exactly `cap`.
    None,
}

/// Retries for one route.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts per request, the original included (the budget usually
    /// binds first; this bounds one request's tail).
    pub max_attempts: u32,
    /// The backoff cap before the first retry; doubles with each retry.
    pub base_backoff: Duration,
    /// The backoff cap never grows past this.
    pub max_backoff: Duration,
    pub jitter: Jitter,
    /// Each attempt's own timeout (within the request's deadline).
    pub per_try_timeout: Option<Duration>,
}

impl Default for RetryConfig {
    /// Three attempts, 25 ms doubling up to 250 ms with full jitter (Envoy's
    /// backoff defaults).
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            jitter: Jitter::Full,
            per_try_timeout: None,
        }
    }
}

/// Why a [`RetryConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RetryConfigError {
    #[error("retry maxAttempts must be between 1 and 10 (the original included), got {0}")]
    MaxAttempts(u32),
    #[error("retry baseBackoff must be greater than zero")]
    ZeroBackoff,
    #[error("retry maxBackoff ({max:?}) is below baseBackoff ({base:?})")]
    MaxBelowBase { base: Duration, max: Duration },
    #[error("retry perTryTimeout must be greater than zero")]
    ZeroPerTryTimeout,
}

impl RetryConfig {
    pub fn validate(&self) -> Result<(), RetryConfigError> {
        if !(1..=10).contains(&self.max_attempts) {
            return Err(RetryConfigError::MaxAttempts(self.max_attempts));
        }
        if self.base_backoff.is_zero() {
            return Err(RetryConfigError::ZeroBackoff);
        }
        if self.max_backoff < self.base_backoff {
            return Err(RetryConfigError::MaxBelowBase {
                base: self.base_backoff,
                max: self.max_backoff,
            });
        }
        if self.per_try_timeout.is_some_and(|t| t.is_zero()) {
            return Err(RetryConfigError::ZeroPerTryTimeout);
        }
        Ok(())
    }

    /// How long to wait before retry number `retry` (1 for the first):
    /// capped exponential (`base x 2^(retry-1)`, at most `max_backoff`),
    /// then jittered. Never above `max_backoff`.
    pub fn backoff(&self, retry: u32, rng: &mut impl Random) -> Duration {
        let doublings = retry.saturating_sub(1);
        let base = self.base_backoff.as_nanos();
        let max = self.max_backoff.as_nanos();
        // base << doublings, without overflowing: past `max` it is `max`.
        let cap = if doublings >= 64 || base > max >> doublings {
            max
        } else {
            base << doublings
        };
        let cap = Duration::new(
            u64::try_from(cap / 1_000_000_000).unwrap_or(u64::MAX),
            (cap % 1_000_000_000) as u32,
        );
        match self.jitter {
            Jitter::Full => uniform(cap, rng),
            Jitter::Equal => cap / 2 + uniform(cap - cap / 2, rng),
            Jitter::None => cap,
        }
    }
}

/// Uniform in `[0, max]`, at nanosecond resolution (`max` beyond 584
/// years is taken as 584 years).
fn uniform(max: Duration, rng: &mut impl Random) -> Duration {
    let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX - 1);
    let n = (u128::from(rng.next_u64()) * (u128::from(max) + 1)) >> 64;
    Duration::from_nanos(n as u64)
}

/// Why a failed request is returned as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GiveUp {
    /// The classifier says this failure must not (or need not) be retried.
    NotRetriable,
    /// `max_attempts` reached.
    Attempts,
    /// The caller's deadline ends before the backoff would.
    Deadline,
    /// The retry/hedge budget is spent.
    Budget,
}

impl GiveUp {
    pub const ALL: [GiveUp; 4] = [
        GiveUp::NotRetriable,
        GiveUp::Attempts,
        GiveUp::Deadline,
        GiveUp::Budget,
    ];

    /// A metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::NotRetriable => "not_retriable",
            GiveUp::Attempts => "attempts",
            GiveUp::Deadline => "deadline",
            GiveUp::Budget => "budget",
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this long, then send the request again (to any endpoint the
    /// balancer picks). The budget has already been charged.
    Retry {
        after: Duration,
    },
    GiveUp(GiveUp),
}

/// A failed attempt, as the retry layer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedAttempt {
    /// Attempts made so far for this request, the failed one included.
    pub attempts: u32,
    /// The classifier's verdict on the failure.
    pub retriable: bool,
    /// What is left of the caller's deadline, if it has one.
    pub remaining_deadline: Option<Duration>,
}

/// Counter values for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryStats {
    pub retries: u64,
    given_up: [u64; GiveUp::ALL.len()],
}

impl RetryStats {
    pub fn given_up(&self, reason: GiveUp) -> u64 {
        self.given_up[reason as usize]
    }
}

/// The retry policy of one route, shared by all its requests.
#[derive(Debug)]
pub struct RetryPolicy {
    config: RetryConfig,
    budget: Arc<Budget>,
    retries: AtomicU64,
    given_up: [AtomicU64; GiveUp::ALL.len()],
}

impl RetryPolicy {
    pub fn new(config: RetryConfig, budget: Arc<Budget>) -> Result<Self, RetryConfigError> {
        config.validate()?;
        Ok(Self {
            config,
            budget,
            retries: AtomicU64::new(0),
            given_up: Default::default(),
        })
    }

    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// Retry or give up. Checks cost in order: the classifier, attempts,
    /// the deadline, and only then the budget, so that a retry that would
    /// not be made anyway does not spend a token.
    pub fn decide(
        &self,
        now: Duration,
        failed: &FailedAttempt,
        rng: &mut impl Random,
    ) -> RetryDecision {
        let decision = self.judge(now, failed, rng);
        match decision {
            RetryDecision::Retry { .. } => self.retries.fetch_add(1, Ordering::Relaxed),
            RetryDecision::GiveUp(reason) => {
                self.given_up[reason as usize].fetch_add(1, Ordering::Relaxed)
            }
        };
        decision
    }

    fn judge(&self, now: Duration, failed: &FailedAttempt, rng: &mut impl Random) -> RetryDecision {
        if !failed.retriable {
            return RetryDecision::GiveUp(GiveUp::NotRetriable);
        }
        if failed.attempts >= self.config.max_attempts {
            return RetryDecision::GiveUp(GiveUp::Attempts);
        }
        let after = self.config.backoff(failed.attempts, rng);
        if failed.remaining_deadline.is_some_and(|left| left <= after) {
            return RetryDecision::GiveUp(GiveUp::Deadline);
        }
        if !self.budget.try_withdraw(now) {
            return RetryDecision::GiveUp(GiveUp::Budget);
        }
        RetryDecision::Retry { after }
    }

    /// The timeout for the next attempt: the per-try timeout, cut to what
    /// is left of the deadline.
    pub fn try_timeout(&self, remaining_deadline: Option<Duration>) -> Option<Duration> {
        match (self.config.per_try_timeout, remaining_deadline) {
            (Some(t), Some(left)) => Some(t.min(left)),
            (t, left) => t.or(left),
        }
    }

    pub fn stats(&self) -> RetryStats {
        RetryStats {
            retries: self.retries.load(Ordering::Relaxed),
            given_up: std::array::from_fn(|i| self.given_up[i].load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests;
