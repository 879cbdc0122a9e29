//! Leased quota for a global rate limit: the client side of a limit that
//! the rate-limit service counts for every proxy.
//!
//! A proxy does not ask the service about each request. It leases quota in
//! batches (Envoy's `RateLimitService` protocol with `hits_addend` = the
//! batch, the grant in `DescriptorStatus.quota`) and spends it locally:
//!
//! - a request takes one leased token while the lease's window lasts;
//! - when the tokens fall to half a batch, the next batch is fetched in the
//!   background, so at a steady rate requests never wait;
//! - when none are left (first request, a burst), the request waits for
//!   the batch being fetched; only that one call, never one per request;
//! - a batch is about 100 ms of this proxy's traffic (its recent rate),
//!   at most 5% of the limit per window, so proxies share the limit by
//!   their demand and little quota expires unspent;
//! - the service grants at most what is left in the window (part of a
//!   batch when less is left) and says when the window is exhausted:
//!   after the last token the proxy refuses locally until the window ends;
//! - when the service cannot be reached, the limit's failure mode applies
//!   (admit or refuse) for a second before the service is tried again.
//!
//! Quota left when its window ends is dropped, never carried over: the
//! proxies together never admit more than the limit in a window.
//!
//! This module is the state machine only (no I/O, time passed in).

use std::time::{Duration, Instant};

/// One lease's batch is at most this share of the window's limit.
const MAX_BATCH_SHARE: f64 = 0.05;
/// A batch covers this much of the proxy's recent traffic.
const BATCH_PERIOD: Duration = Duration::from_millis(100);
/// The rate estimate's slice.
const SLICE: Duration = Duration::from_millis(100);
/// How long a failure mode applies before the service is tried again.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// What the service answered for one batch request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Tokens granted (may be fewer than asked).
    pub granted: u32,
    /// The window has nothing left after this grant.
    pub exhausted: bool,
    /// Until the window ends.
    pub reset: Duration,
}

/// What a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A leased token.
    Allowed,
    /// The window is exhausted; it ends in `reset`.
    Limited { reset: Duration },
    /// No token and no answer known: fetch a batch (then take again).
    NeedQuota,
    /// The service could not be reached recently: apply the failure mode.
    Unavailable,
}

/// One global limit's quota in one proxy.
#[derive(Debug)]
pub struct QuotaLease {
    /// The window's limit (for batch sizes).
    limit: u32,
    tokens: u32,
    /// When the leased tokens' window ends.
    valid_until: Option<Instant>,
    /// The window is exhausted until then.
    exhausted_until: Option<Instant>,
    /// The service failed; the failure mode applies until then.
    unavailable_until: Option<Instant>,
    /// Requests in the current slice, and the slice's start.
    slice_count: u32,
    slice_start: Option<Instant>,
    /// Requests per second, smoothed over slices.
    rate: f64,
    /// Tokens that expired unspent (a window ended first).
    expired: u64,
}

impl QuotaLease {
    pub fn new(limit: u32) -> Self {
        QuotaLease {
            limit: limit.max(1),
            tokens: 0,
            valid_until: None,
            exhausted_until: None,
            unavailable_until: None,
            slice_count: 0,
            slice_start: None,
            rate: 0.0,
            expired: 0,
        }
    }

    /// A new limit for the same descriptor (the policy changed).
    pub fn set_limit(&mut self, limit: u32) {
        self.limit = limit.max(1);
    }

    /// Tokens that expired unspent so far.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Tokens in hand now.
    pub fn tokens(&self, now: Instant) -> u32 {
        match self.valid_until {
            Some(t) if now < t => self.tokens,
            _ => 0,
        }
    }

    fn note_demand(&mut self, now: Instant) {
        let start = *self.slice_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= SLICE {
            let slices = (elapsed.as_secs_f64() / SLICE.as_secs_f64()).floor();
            let observed = f64::from(self.slice_count) / SLICE.as_secs_f64();
            // The finished slice weighs 1/2; idle slices after it decay the
            // estimate further.
            self.rate = 0.5 * self.rate + 0.5 * observed;
            if slices > 1.0 {
                self.rate *= 0.5f64.powf(slices - 1.0);
            }
            self.slice_count = 0;
            self.slice_start = Some(start + SLICE.mul_f64(slices));
        }
        self.slice_count = self.slice_count.saturating_add(1);
    }

    fn drop_expired(&mut self, now: Instant) {
        if let Some(t) = self.valid_until
            && now >= t
        {
            self.expired += u64::from(self.tokens);
            self.tokens = 0;
            self.valid_until = None;
        }
    }

    /// One request arrives.
    pub fn take(&mut self, now: Instant) -> Take {
        self.note_demand(now);
        self.take_again(now)
    }

    /// The same request tries again (after a fetch): not counted twice.
    pub fn take_again(&mut self, now: Instant) -> Take {
        self.drop_expired(now);
        if self.tokens > 0 {
            self.tokens -= 1;
            return Take::Allowed;
        }
        if let Some(t) = self.exhausted_until {
            if now < t {
                return Take::Limited { reset: t - now };
            }
            self.exhausted_until = None;
        }
        if let Some(t) = self.unavailable_until {
            if now < t {
                return Take::Unavailable;
            }
            self.unavailable_until = None;
        }
        Take::NeedQuota
    }

    /// How many tokens to ask for: about [`BATCH_PERIOD`] of this proxy's
    /// traffic, at least 1, at most 5% of the limit (at least 1).
    pub fn batch(&self, now: Instant) -> u32 {
        let mut rate = self.rate;
        // The running slice counts too (a burst after a quiet period).
        if let Some(start) = self.slice_start {
            let elapsed = now.saturating_duration_since(start).max(SLICE / 10);
            rate = rate.max(f64::from(self.slice_count) / elapsed.as_secs_f64());
        }
        let want = (rate * BATCH_PERIOD.as_secs_f64()).ceil().max(1.0);
        let cap = (f64::from(self.limit) * MAX_BATCH_SHARE).floor().max(1.0);
        want.min(cap) as u32
    }

    /// Whether to fetch the next batch now, before the tokens run out.
    pub fn wants_prefetch(&self, now: Instant) -> bool {
        if self.exhausted_until.is_some_and(|t| now < t)
            || self.unavailable_until.is_some_and(|t| now < t)
        {
            return false;
        }
        self.tokens(now) <= self.batch(now) / 2
    }

    /// The service's answer to a batch request.
    pub fn granted(&mut self, now: Instant, g: Grant) {
        self.unavailable_until = None;
        let window_end = now + g.reset;
        self.drop_expired(now);
        match self.valid_until {
            // The same window (the service's clock and ours agree to well
            // under the window): add.
            Some(t) if t.max(window_end) - t.min(window_end) < Duration::from_millis(50) => {
                self.tokens = self.tokens.saturating_add(g.granted);
            }
            // A new window: what is left of the old one is not spent in it.
            _ => {
                self.expired += u64::from(self.tokens);
                self.tokens = g.granted;
            }
        }
        self.valid_until = Some(window_end);
        self.exhausted_until = g.exhausted.then_some(window_end);
    }

    /// The service could not be reached.
    pub fn failed(&mut self, now: Instant) {
        self.unavailable_until = Some(now + RETRY_AFTER_FAILURE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_request_needs_quota_then_spends_the_batch() {
        let t0 = Instant::now();
        let mut q = QuotaLease::new(1000);
        assert_eq!(q.take(t0), Take::NeedQuota);
        q.granted(
            t0,
            Grant {
                granted: 3,
                exhausted: false,
                reset: ms(500),
            },
        );
        for _ in 0..3 {
            assert_eq!(q.take_again(t0), Take::Allowed);
        }
        assert_eq!(q.take(t0), Take::NeedQuota);
    }

    #[test]
    fn an_exhausted_window_refuses_locally_until_it_ends() {
        let t0 = Instant::now();
        let mut q = QuotaLease::new(10);
        q.take(t0);
        q.granted(
            t0,
            Grant {
                granted: 2,
                exhausted: true,
                reset: ms(300),
            },
        );
        assert_eq!(q.take_again(t0), Take::Allowed);
        assert_eq!(q.take(t0), Take::Allowed);
        assert_eq!(q.take(t0 + ms(100)), Take::Limited { reset: ms(200) });
        assert!(!q.wants_prefetch(t0 + ms(100)));
        assert_eq!(q.take(t0 + ms(300)), Take::NeedQuota);
    }

    #[test]
    fn tokens_of_an_ended_window_are_not_spent_in_the_next() {
        let t0 = Instant::now();
        let mut q = QuotaLease::new(1000);
        q.granted(
            t0,
            Grant {
                granted: 5,
                exhausted: false,
                reset: ms(100),
            },
        );
        assert_eq!(q.take(t0 + ms(100)), Take::NeedQuota);
        assert_eq!(q.expired(), 5);
        // A prefetch answered by the next window replaces the old tokens.
        q.granted(
            t0 + ms(100),
            Grant {
                granted: 4,
                exhausted: false,
                reset: ms(1000),
            },
        );
        q.granted(
            t0 + ms(990),
            Grant {
                granted: 7,
                exhausted: false,
                reset: ms(1000),
            },
        );
        assert_eq!(q.tokens(t0 + ms(990)), 7);
        assert_eq!(q.expired(), 9);
    }

    #[test]
    fn failures_apply_the_failure_mode_for_a_while() {
        let t0 = Instant::now();
        let mut q = QuotaLease::new(100);
        q.take(t0);
        q.failed(t0);
        assert_eq!(q.take(t0 + ms(10)), Take::Unavailable);
        assert_eq!(q.take(t0 + RETRY_AFTER_FAILURE), Take::NeedQuota);
    }

    #[test]
    fn batches_follow_the_rate_and_stay_under_five_percent_of_the_limit() {
        let t0 = Instant::now();
        let mut q = QuotaLease::new(10_000);
        assert_eq!(q.batch(t0), 1);
        // 1,000 requests per second for a second: about 100 per batch, 5% cap 500.
        for i in 0..1000u64 {
            q.take(t0 + Duration::from_micros(i * 1000));
        }
        let b = q.batch(t0 + ms(1000));
        assert!((80..=120).contains(&b), "batch {b}");
        q.set_limit(1000);
        assert_eq!(q.batch(t0 + ms(1000)), 50);
        q.set_limit(10);
        assert_eq!(q.batch(t0 + ms(1000)), 1);
    }

    proptest! {
        /// Whatever the service grants, a proxy admits exactly the tokens
        /// granted in a window and never more.
        #[test]
        fn admits_at_most_what_was_granted(
            steps in proptest::collection::vec((0u64..30, 0u32..20, any::<bool>()), 1..200)
        ) {
            let t0 = Instant::now();
            let mut q = QuotaLease::new(1000);
            let mut now = t0;
            let mut granted = 0u64;
            let mut allowed = 0u64;
            for (advance, grant, exhausted) in steps {
                now += ms(advance);
                match q.take(now) {
                    Take::Allowed => allowed += 1,
                    Take::NeedQuota => {
                        // Windows of 10 s: nothing expires in this test.
                        let reset = (t0 + Duration::from_secs(10)).saturating_duration_since(now);
                        q.granted(now, Grant { granted: grant, exhausted, reset });
                        granted += u64::from(grant);
                        if q.take_again(now) == Take::Allowed {
                            allowed += 1;
                        }
                    }
                    Take::Limited { .. } | Take::Unavailable => {}
                }
                prop_assert!(allowed <= granted);
                prop_assert_eq!(granted - allowed, u64::from(q.tokens(now)));
            }
        }
    }
}
