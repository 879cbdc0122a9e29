//! The budget for extra attempts (retries and hedges), shared by both, after
//! Finagle's `TokenRetryBudget`.
//!
//! Every original request deposits one token-worth of credit; every retry or
//! backup request withdraws one. Credit expires with a `ttl` window, so what
//! a quiet minute earned cannot be spent in a storm an hour later. On top, a
//! fixed reserve of `min_per_sec x ttl` attempts per window lets a route with
//! little traffic still retry.
//!
//! The window is cut into [`SLICES`] slices of `ttl / SLICES`; an entry counts
//! while its slice is one of the last `SLICES` (so it lives between
//! `ttl - ttl/SLICES` and `ttl`). A withdrawal succeeds only if, counting live
//! entries, `withdrawals + 1 <= ratio x deposits + reserve`. That gives the
//! guarantees the tests check, for any run:
//!
//! - over any `SLICES` consecutive slices (one `ttl`), withdrawals are at most
//!   `ratio x` the deposits of those slices and the `SLICES - 1` before them,
//!   plus the reserve;
//! - over a whole run of `k` windows, withdrawals are at most
//!   `ratio x deposits + reserve x (k + 1)`: extra load never exceeds the
//!   configured share plus the per-second minimum.
//!
//! The window alone would let credit saved over a calm `ttl` be spent in
//! the first moments of an outage (at 10% of 500 req/s with a 10 s window,
//! about 600 attempts: a burst that doubles the load for over a second).
//! So a second rule holds over the last [`BURST_SLICES`] slices (the
//! current one and the one before): withdrawals there are at most `ratio x`
//! their deposits plus `min_per_sec x` their length. Extra load stays near
//! its share at every time scale, and a quiet route still gets
//! `min_per_sec` attempts a second.
//!
//! Deposits happen on every request, so they are one lock-free CAS on the
//! current slice. Withdrawals (rare: only when an attempt is about to be
//! repeated) take a small mutex so that concurrent withdrawers cannot both
//! spend the last token.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Number of slices the `ttl` window is cut into (Finagle uses 10 too).
pub const SLICES: usize = 10;

/// Slices the burst rule looks at: the current one and the one before.
pub const BURST_SLICES: u64 = 2;

/// Deposits per slice saturate here (24 bits: far above any one proxy's rate
/// for one route over a slice of at most 6 s). Saturating only loses credit.
const COUNT_BITS: u32 = 24;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

/// Ratios are kept in parts per million so that the budget check is exact
/// integer arithmetic.
const PPM: u64 = 1_000_000;

/// How large the budget is.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetConfig {
    /// Extra attempts allowed per original request, in `[0, 1]` (0.1: one
    /// retry or hedge per ten requests).
    pub ratio: f64,
    /// Extra attempts always allowed per second, whatever the traffic, so
    /// that a quiet route can still retry.
    pub min_per_sec: u32,
    /// How long a deposit or withdrawal counts, between 1 s and 60 s.
    pub ttl: Duration,
}

impl Default for BudgetConfig {
    /// 10% of requests plus 10 per second over a 10 s window (Finagle's and
    /// Linkerd's defaults except for the ratio, which they set at 20%).
    fn default() -> Self {
        Self {
            ratio: 0.1,
            min_per_sec: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// Why a [`BudgetConfig`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetConfigError {
    #[error("budget ratio must be between 0 and 1 (a share of requests), got {0}")]
    Ratio(f64),
    #[error("budget ttl must be between 1s and 60s, got {0:?}")]
    Ttl(Duration),
}

impl BudgetConfig {
    pub fn validate(&self) -> Result<(), BudgetConfigError> {
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err(BudgetConfigError::Ratio(self.ratio));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.ttl) {
            return Err(BudgetConfigError::Ttl(self.ttl));
        }
        Ok(())
    }

    /// Extra attempts always available per `ttl` window.
    pub fn reserve(&self) -> u64 {
        (f64::from(self.min_per_sec) * self.ttl.as_secs_f64()) as u64
    }
}

/// A shared budget of extra attempts. Put it in an `Arc` and hand it to the
/// route's [`RetryPolicy`](crate::retry::RetryPolicy) and
/// [`Hedger`](crate::hedge::Hedger) so that both draw from it.
#[derive(Debug)]
pub struct Budget {
    config: BudgetConfig,
    ratio_ppm: u64,
    reserve: u64,
    /// The burst rule's `min_per_sec x` its length, in millionths of an
    /// attempt.
    burst_reserve_ppm: u128,
    slice_nanos: u64,
    /// Per slice: `epoch << COUNT_BITS | deposits`, where `epoch` is the
    /// slice number since the clock's epoch.
    deposits: [AtomicU64; SLICES],
    /// Per slice: `(epoch, withdrawals)`; also the lock that serialises
    /// withdrawals.
    withdrawals: Mutex<[(u64, u64); SLICES]>,
}

impl Budget {
    pub fn new(config: BudgetConfig) -> Result<Self, BudgetConfigError> {
        config.validate()?;
        let slice_nanos = (config.ttl.as_nanos() / SLICES as u128) as u64;
        let burst_nanos = u128::from(slice_nanos) * u128::from(BURST_SLICES);
        Ok(Self {
            ratio_ppm: (config.ratio * PPM as f64).round() as u64,
            reserve: config.reserve(),
            burst_reserve_ppm: u128::from(config.min_per_sec) * burst_nanos / 1_000,
            slice_nanos,
            deposits: std::array::from_fn(|_| AtomicU64::new(0)),
            // Epoch 0 is live at the start; its zero count is harmless.
            withdrawals: Mutex::new([(0, 0); SLICES]),
            config,
        })
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Credits one original request: called once per request by whichever
    /// of the route's retry and hedge layers sees it first, never for its
    /// retries or backups.
    pub fn deposit(&self, now: Duration) {
        let epoch = self.epoch(now);
        let slot = &self.deposits[epoch as usize % SLICES];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (slot_epoch, count) = unpack(current);
            let next = if slot_epoch == epoch {
                if count == COUNT_MAX {
                    return;
                }
                pack(epoch, count + 1)
            } else if slot_epoch < epoch {
                pack(epoch, 1)
            } else {
                // The caller's clock lags a full window behind another
                // thread's: dropping the credit is the safe side.
                return;
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes one extra attempt from the budget, or returns `false` when the
    /// budget is spent (the attempt must not be made).
    #[must_use]
    pub fn try_withdraw(&self, now: Duration) -> bool {
        let epoch = self.epoch(now);
        let mut withdrawals = self.withdrawals.lock().unwrap_or_else(|e| e.into_inner());
        let spent = live_withdrawals(&withdrawals, epoch);
        if !self.covers(spent + 1, self.live_deposits(epoch)) {
            return false;
        }
        let recent = recent_withdrawals(&withdrawals, epoch);
        if !self.burst_covers(recent + 1, self.recent_deposits(epoch)) {
            return false;
        }
        let slot = &mut withdrawals[epoch as usize % SLICES];
        if slot.0 == epoch {
            slot.1 += 1;
        } else if slot.0 < epoch {
            *slot = (epoch, 1);
        } else {
            // A lagging clock: count it in the newer slice, which only makes
            // the budget stricter.
            slot.1 += 1;
        }
        true
    }

    /// Extra attempts that could be made right now (a gauge for metrics).
    pub fn available(&self, now: Duration) -> u64 {
        let epoch = self.epoch(now);
        let withdrawals = self.withdrawals.lock().unwrap_or_else(|e| e.into_inner());
        let spent = live_withdrawals(&withdrawals, epoch);
        let credit = (u128::from(self.ratio_ppm) * u128::from(self.live_deposits(epoch))
            + u128::from(self.reserve) * u128::from(PPM))
            / u128::from(PPM);
        let window = u64::try_from(credit)
            .unwrap_or(u64::MAX)
            .saturating_sub(spent);
        let burst = (u128::from(self.ratio_ppm) * u128::from(self.recent_deposits(epoch))
            + self.burst_reserve_ppm)
            / u128::from(PPM);
        let burst = u64::try_from(burst)
            .unwrap_or(u64::MAX)
            .saturating_sub(recent_withdrawals(&withdrawals, epoch));
        window.min(burst)
    }

    fn burst_covers(&self, withdrawals: u64, deposits: u64) -> bool {
        u128::from(withdrawals) * u128::from(PPM)
            <= u128::from(self.ratio_ppm) * u128::from(deposits) + self.burst_reserve_ppm
    }

    fn recent_deposits(&self, epoch: u64) -> u64 {
        self.deposits
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Relaxed)))
            .filter(|&(slot_epoch, _)| is_recent(slot_epoch, epoch))
            .map(|(_, count)| count)
            .sum()
    }

    fn covers(&self, withdrawals: u64, deposits: u64) -> bool {
        u128::from(withdrawals) * u128::from(PPM)
            <= u128::from(self.ratio_ppm) * u128::from(deposits)
                + u128::from(self.reserve) * u128::from(PPM)
    }

    fn epoch(&self, now: Duration) -> u64 {
        (now.as_nanos() / u128::from(self.slice_nanos)) as u64
    }

    fn live_deposits(&self, epoch: u64) -> u64 {
        self.deposits
            .iter()
            .map(|slot| unpack(slot.load(Ordering::Relaxed)))
            .filter(|&(slot_epoch, _)| is_live(slot_epoch, epoch))
            .map(|(_, count)| count)
            .sum()
    }
}

fn live_withdrawals(slots: &[(u64, u64); SLICES], epoch: u64) -> u64 {
    slots
        .iter()
        .filter(|&&(slot_epoch, _)| is_live(slot_epoch, epoch))
        .map(|&(_, count)| count)
        .sum()
}

fn recent_withdrawals(slots: &[(u64, u64); SLICES], epoch: u64) -> u64 {
    slots
        .iter()
        .filter(|&&(slot_epoch, _)| is_recent(slot_epoch, epoch))
        .map(|&(_, count)| count)
        .sum()
}

/// In the burst rule's slices (future ones from a lagging clock too).
fn is_recent(slot_epoch: u64, epoch: u64) -> bool {
    slot_epoch + BURST_SLICES > epoch
}

/// A slice counts while it is one of the last `SLICES` up to `epoch`
/// (slices from a lagging clock's future count too, conservatively for
/// withdrawals and harmlessly for deposits, which never land there).
fn is_live(slot_epoch: u64, epoch: u64) -> bool {
    slot_epoch + SLICES as u64 > epoch
}

fn pack(epoch: u64, count: u64) -> u64 {
    // 40 bits of epoch: slices are at least 100 ms, so this wraps after
    // thousands of years of uptime.
    (epoch << COUNT_BITS) | count
}

fn unpack(v: u64) -> (u64, u64) {
    (v >> COUNT_BITS, v & COUNT_MAX)
}

#[cfg(test)]
mod tests;
