//! Backup (hedged) requests: when the original attempt has not answered
//! after a delay, send a copy to a different endpoint and take whichever
//! answers first ("The Tail at Scale", Dean and Barroso, 2013).
//!
//! The delay is fixed or learned online as a latency percentile of the route
//! ([`RotatingHistogram`]). Three things keep hedging from turning an outage
//! into more load:
//!
//! - the [`Budget`] shared with retries: a backup is paid for when it is
//!   about to be sent ([`Hedger::on_fire`]), so a request that answers
//!   before the delay costs nothing;
//! - the [`Breaker`]: no hedging while most requests are slow (slower than
//!   the delay) or failing, because then the target, not the tail, is the
//!   problem and a backup only doubles its load;
//! - no backup when the caller's remaining deadline ends before the delay.
//!
//! With a percentile delay, latencies are learned in half-second batches and
//! a batch that looks abnormal (too many slow or failed requests, by the
//! breaker's closing thresholds) is dropped: an outage's latencies do not
//! become the new delay, and hedging works again as soon as the target
//! recovers. If nothing normal is seen for a whole histogram window, the
//! slowness is the new normal: the hedger forgets its history and learns
//! again.
//!
//! Life of a request, as the proxy's hedge layer drives it:
//!
//! 1. `plan` with the request's eligibility: a delay, or why not;
//! 2. when the delay passes with no response: `on_fire`, then send the
//!    backup to another endpoint (and `plan` again if `max_attempts > 2`);
//! 3. on the first response: cancel the others, then `record`.

mod breaker;
mod config;
mod histogram;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use breaker::Breaker;
pub use config::{BreakerConfig, HedgeConfig, HedgeConfigError, HedgeDelay};
pub use histogram::{MAX_LATENCY, RotatingHistogram};

use crate::budget::Budget;

/// Slices of the percentile histogram's window.
const HISTOGRAM_SLICES: usize = 6;

/// How often a learned delay is recomputed from the histogram.
const REFRESH: Duration = Duration::from_secs(1);

/// Latencies are learned in batches of this long, each kept or dropped as
/// a whole depending on whether it looked normal.
const BATCH: Duration = Duration::from_millis(500);

/// Stored in the delay atomic while there is no delay yet.
const NO_DELAY: u64 = u64::MAX;

/// Whether RFC 9110 (section 9.2.2) defines `method` as idempotent: GET,
/// HEAD, OPTIONS, TRACE, PUT, DELETE. Method names are case-sensitive.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

/// What the hedge layer knows about one request when it asks for a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HedgeRequest {
    /// Safe to send twice: an idempotent method, or a route (or gRPC method)
    /// marked safe.
    pub idempotent: bool,
    /// Attempts already sent for this request, the original included.
    pub attempts_sent: u32,
    /// What is left of the caller's deadline, if it has one.
    pub remaining_deadline: Option<Duration>,
}

impl HedgeRequest {
    /// A request not yet hedged: `marked_safe` when the route declares
    /// requests safe to repeat whatever their method.
    pub fn new(method: &str, marked_safe: bool, remaining_deadline: Option<Duration>) -> Self {
        Self {
            idempotent: marked_safe || is_idempotent(method),
            attempts_sent: 1,
            remaining_deadline,
        }
    }
}

/// Why a backup is not sent. The layer-side reasons ([`NoEndpoint`],
/// [`BodyTooLarge`]) are reported with [`Hedger::suppress`].
///
/// [`NoEndpoint`]: Suppressed::NoEndpoint
/// [`BodyTooLarge`]: Suppressed::BodyTooLarge
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suppressed {
    /// The shared retry/hedge budget is spent.
    Budget,
    /// Most recent requests are slow or failing.
    Breaker,
    /// The caller's deadline ends before the backup would be sent.
    Deadline,
    /// A percentile delay without enough latency history yet.
    NoHistory,
    /// Not safe to send twice.
    NotIdempotent,
    /// `max_attempts` already sent (not counted: it is the normal end).
    MaxAttempts,
    /// No endpoint left that this request has not been sent to.
    NoEndpoint,
    /// The request body outgrew the replay buffer.
    BodyTooLarge,
}

impl Suppressed {
    pub const ALL: [Suppressed; 8] = [
        Suppressed::Budget,
        Suppressed::Breaker,
        Suppressed::Deadline,
        Suppressed::NoHistory,
        Suppressed::NotIdempotent,
        Suppressed::MaxAttempts,
        Suppressed::NoEndpoint,
        Suppressed::BodyTooLarge,
    ];

    /// A metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Suppressed::Budget => "budget",
            Suppressed::Breaker => "breaker",
            Suppressed::Deadline => "deadline",
            Suppressed::NoHistory => "no_history",
            Suppressed::NotIdempotent => "not_idempotent",
            Suppressed::MaxAttempts => "max_attempts",
            Suppressed::NoEndpoint => "no_endpoint",
            Suppressed::BodyTooLarge => "body_too_large",
        }
    }
}

/// What to do about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgePlan {
    /// Send a backup if no response has arrived this long after the last
    /// attempt was sent (call [`Hedger::on_fire`] first).
    After(Duration),
    /// No backup for this request (counted, except `MaxAttempts`).
    Suppressed(Suppressed),
}

/// Which attempt's response was returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    Original,
    Backup,
}

/// How a request ended, for [`Hedger::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// From sending the original attempt to the response returned (whoever
    /// sent it).
    ///
    /// When a backup won, the original's own latency is unknown, only
    /// longer than this. The percentile learns it as twice this: any value
    /// above the delay gives the same percentile once the delay is right,
    /// and from a delay that is too low, doubling climbs to the right one in
    /// a few refreshes where the bare lower bound would creep up by one
    /// backup latency per refresh.
    pub latency: Duration,
    /// Whether the returned response was a success (the route's classifier).
    pub success: bool,
    pub winner: Winner,
    /// Backups actually sent (after a successful `on_fire`).
    pub backups_sent: u32,
}

/// Counter values for metrics (monotonic since the hedger was built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HedgeStats {
    /// Backups sent.
    pub sent: u64,
    /// Requests answered by a backup.
    pub won: u64,
    /// Backups cancelled because another attempt answered first.
    pub cancelled: u64,
    suppressed: [u64; Suppressed::ALL.len()],
}

impl HedgeStats {
    /// Backups not sent for `reason`.
    pub fn suppressed(&self, reason: Suppressed) -> u64 {
        self.suppressed[reason as usize]
    }
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    won: AtomicU64,
    cancelled: AtomicU64,
    suppressed: [AtomicU64; Suppressed::ALL.len()],
}

/// What the hedger learns from completed requests; behind one lock.
#[derive(Debug)]
struct Learner {
    /// Only for a percentile delay.
    histogram: Option<RotatingHistogram>,
    breaker: Breaker,
    delay: Option<Duration>,
    /// The batch of latencies staged in `histogram`.
    batch: Batch,
    next_refresh: Duration,
    /// When a batch was last learned (or the learner started).
    last_learned: Option<Duration>,
}

/// Requests completed during one [`BATCH`].
#[derive(Debug, Default)]
struct Batch {
    epoch: u64,
    total: u64,
    slow: u64,
    failed: u64,
}

/// The hedging policy of one route, shared by all its requests.
///
/// [`plan`](Self::plan) and [`on_fire`](Self::on_fire) read atomics only;
/// [`record`](Self::record) takes a short lock to update the histogram and
/// the breaker and publishes the delay and the breaker state.
#[derive(Debug)]
pub struct Hedger {
    config: HedgeConfig,
    budget: Arc<Budget>,
    /// Nanoseconds, or `NO_DELAY`.
    delay: AtomicU64,
    breaker_open: AtomicBool,
    learner: Mutex<Learner>,
    counters: Counters,
}

impl Hedger {
    pub fn new(config: HedgeConfig, budget: Arc<Budget>) -> Result<Self, HedgeConfigError> {
        config.validate()?;
        let (histogram, delay) = match config.delay {
            HedgeDelay::Fixed(d) => (None, Some(d)),
            HedgeDelay::Percentile {
                window,
                required_history,
                ..
            } => (
                Some(RotatingHistogram::new(
                    window,
                    HISTOGRAM_SLICES,
                    required_history,
                )),
                None,
            ),
        };
        Ok(Self {
            budget,
            delay: AtomicU64::new(delay.map_or(NO_DELAY, nanos)),
            breaker_open: AtomicBool::new(false),
            learner: Mutex::new(Learner {
                histogram,
                breaker: Breaker::new(config.breaker.clone()),
                delay,
                batch: Batch::default(),
                next_refresh: Duration::ZERO,
                last_learned: None,
            }),
            counters: Counters::default(),
            config,
        })
    }

    pub fn config(&self) -> &HedgeConfig {
        &self.config
    }

    pub fn budget(&self) -> &Arc<Budget> {
        &self.budget
    }

    /// When to send the next backup for this request, or why not.
    pub fn plan(&self, req: &HedgeRequest) -> HedgePlan {
        let reason = if !req.idempotent {
            Suppressed::NotIdempotent
        } else if req.attempts_sent >= self.config.max_attempts {
            return HedgePlan::Suppressed(Suppressed::MaxAttempts);
        } else if self.breaker_open.load(Ordering::Relaxed) {
            Suppressed::Breaker
        } else {
            match self.current_delay() {
                None => Suppressed::NoHistory,
                Some(delay) if req.remaining_deadline.is_some_and(|left| left <= delay) => {
                    Suppressed::Deadline
                }
                Some(delay) => return HedgePlan::After(delay),
            }
        };
        self.suppress(reason);
        HedgePlan::Suppressed(reason)
    }

    /// The delay has passed without a response: may the backup go now?
    /// Withdraws from the budget on `Ok` (send the backup then; the budget
    /// is not refunded if it is cancelled).
    pub fn on_fire(&self, now: Duration) -> Result<(), Suppressed> {
        let reason = if self.breaker_open.load(Ordering::Relaxed) {
            Suppressed::Breaker
        } else if !self.budget.try_withdraw(now) {
            Suppressed::Budget
        } else {
            self.counters.sent.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        self.suppress(reason);
        Err(reason)
    }

    /// Counts a backup the layer could not send (e.g. `NoEndpoint`,
    /// `BodyTooLarge`).
    pub fn suppress(&self, reason: Suppressed) {
        if reason != Suppressed::MaxAttempts {
            self.counters.suppressed[reason as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request finished (its first response arrived, or it failed or timed
    /// out as a whole). Requests the caller abandoned are not recorded.
    pub fn record(&self, now: Duration, done: &Completion) {
        match done.winner {
            Winner::Backup => {
                self.counters.won.fetch_add(1, Ordering::Relaxed);
                let losers = done.backups_sent.saturating_sub(1);
                self.counters
                    .cancelled
                    .fetch_add(u64::from(losers), Ordering::Relaxed);
            }
            Winner::Original => {
                self.counters
                    .cancelled
                    .fetch_add(u64::from(done.backups_sent), Ordering::Relaxed);
            }
        }

        let mut learner = self.learner.lock().unwrap_or_else(|e| e.into_inner());
        learner.learn(&self.config.delay, now, done);
        self.delay
            .store(learner.delay.map_or(NO_DELAY, nanos), Ordering::Relaxed);
        self.breaker_open
            .store(learner.breaker.is_open(), Ordering::Relaxed);
    }

    /// The delay backups are sent after, `None` while a percentile delay
    /// lacks history.
    pub fn current_delay(&self) -> Option<Duration> {
        match self.delay.load(Ordering::Relaxed) {
            NO_DELAY => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker_open.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> HedgeStats {
        let c = &self.counters;
        HedgeStats {
            sent: c.sent.load(Ordering::Relaxed),
            won: c.won.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
            suppressed: std::array::from_fn(|i| c.suppressed[i].load(Ordering::Relaxed)),
        }
    }
}

impl Learner {
    fn learn(&mut self, policy: &HedgeDelay, now: Duration, done: &Completion) {
        let slow = self.delay.is_some_and(|d| done.latency > d);
        self.breaker.record(now, slow, done.success);
        let HedgeDelay::Percentile { .. } = policy else {
            return;
        };
        let epoch = (now.as_nanos() / BATCH.as_nanos()) as u64;
        if epoch > self.batch.epoch {
            self.close_batch(policy, now);
            self.batch = Batch {
                epoch,
                ..Batch::default()
            };
        }
        self.batch.total += 1;
        self.batch.slow += u64::from(slow);
        self.batch.failed += u64::from(!done.success);
        if done.success {
            // Failures answer fast or time out; neither says how long a
            // good answer takes.
            if let Some(h) = &mut self.histogram {
                h.stage(match done.winner {
                    Winner::Original => done.latency,
                    Winner::Backup => done.latency.saturating_mul(2),
                });
            }
        }
    }

    /// Learns the finished batch if it looked normal; recomputes the delay.
    fn close_batch(&mut self, policy: &HedgeDelay, now: Duration) {
        let HedgeDelay::Percentile {
            percentile,
            min_delay,
            max_delay,
            ..
        } = *policy
        else {
            return;
        };
        let normal = self.batch_is_normal(now);
        let last_learned = *self.last_learned.get_or_insert(now);
        let Some(histogram) = &mut self.histogram else {
            return;
        };
        if normal {
            histogram.commit(now);
            self.last_learned = Some(now);
            if self.delay.is_none() || now >= self.next_refresh {
                self.delay = histogram.percentile(percentile, now).map(|p| {
                    let p = p.max(min_delay);
                    max_delay.map_or(p, |max| p.min(max))
                });
                self.next_refresh = now + REFRESH;
            }
        } else if now.saturating_sub(last_learned) >= histogram.window() {
            // Abnormal for a whole window: that is the new normal. Forget
            // the old latencies and the breaker's verdict against them.
            histogram.clear();
            self.breaker.reset();
            self.delay = None;
            self.last_learned = Some(now);
        } else {
            histogram.discard();
        }
    }

    /// A batch with enough requests is judged on its own, against the
    /// thresholds the breaker closes at (so the first moments of an outage
    /// are not learned, and the recovery is learned before the breaker
    /// closes); a small one by the breaker's window.
    fn batch_is_normal(&self, now: Duration) -> bool {
        let b = &self.batch;
        let cfg = self.breaker.config();
        if b.total < cfg.min_requests {
            return self.breaker.is_healthy(now);
        }
        let total = b.total as f64;
        b.slow as f64 / total <= cfg.slow_share_to_close
            && 1.0 - b.failed as f64 / total >= cfg.success_rate_to_close
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(NO_DELAY - 1)
}

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
