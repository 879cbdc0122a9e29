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
//! - when the window of the quota in hand ends, requests are admitted on
//!   credit while the next window's batch is on its way, up to one batch,
//!   and the credit is paid back from that batch; a request with no quota
//!   in hand otherwise (the first one, a burst) waits for the batch being
//!   fetched (one call, never one per request);
//! - a batch is about 250 ms of this proxy's traffic (its recent rate),
//!   never more than the rest of the current window needs, at most 5% of
//!   the limit per window, so proxies share the limit by their demand and
//!   little quota expires unspent;
//! - the service grants at most what is left in the window (part of a
//!   batch when less is left) and says when the window is exhausted:
//!   after the last token the proxy refuses locally until the window ends;
//! - when the service cannot be reached, the limit's failure mode applies
//!   (admit or refuse) for a second before the service is tried again.
//!
//! Quota left when its window ends is dropped, never carried over. The
//! proxies together admit at most the limit per window plus what was
//! admitted on credit and could not be paid back (the next grant came back
//! smaller than the credit: the window was used up by others within one
//! call's time), counted as `overdrawn`; at most one batch per proxy.
//!
//! This module is the state machine only (no I/O, time passed in).

use std::time::{Duration, Instant};

/// One lease's batch is at most this share of the window's limit.
const MAX_BATCH_SHARE: f64 = 0.05;
/// A batch covers this much of the proxy's recent traffic (each batch is
/// a call to the service: 100 ms cost about 0.1 ms of p99 at 5,000 req/s
/// in BENCHMARKS.md, 250 ms nothing measurable).
const BATCH_PERIOD: Duration = Duration::from_millis(250);
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
    /// Requests admitted on credit, to be paid from the next grant.
    debt: u32,
    /// Credit the grants could not pay back.
    overdrawn: u64,
    /// The service's last answer was a grant (credit is given only then:
    /// not before the first answer, nor after a failure).
    answered: bool,
    /// The window of the last grant has ended and no grant came since:
    /// the only time credit is given (a new window has room).
    new_window: bool,
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
            debt: 0,
            overdrawn: 0,
            answered: false,
            new_window: false,
        }
    }

    /// Requests admitted on credit that no grant paid for.
    pub fn overdrawn(&self) -> u64 {
        self.overdrawn
    }

    /// After [`Take::NeedQuota`]: admits the request on credit while the
    /// next batch is fetched, unless a batch's worth is owed already.
    pub fn borrow(&mut self, now: Instant) -> bool {
        if self.answered && self.new_window && self.debt < self.batch(now) {
            self.debt += 1;
            true
        } else {
            false
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
            self.new_window = true;
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
    /// traffic but no more than the rest of the current window takes (what
    /// is left at its end expires), at least 1, at most 5% of the limit (at
    /// least 1).
    pub fn batch(&self, now: Instant) -> u32 {
        let mut rate = self.rate;
        // The running slice counts too (a burst after a quiet period).
        if let Some(start) = self.slice_start {
            let elapsed = now.saturating_duration_since(start).max(SLICE / 10);
            rate = rate.max(f64::from(self.slice_count) / elapsed.as_secs_f64());
        }
        let mut period = BATCH_PERIOD;
        if let Some(end) = self.valid_until
            && end > now
        {
            period = period.min(end - now);
        }
        let want = (rate * period.as_secs_f64()).ceil().max(1.0);
        let cap = (f64::from(self.limit) * MAX_BATCH_SHARE).floor().max(1.0);
        want.min(cap) as u32
    }

    /// How many tokens to ask for: a batch and what is owed.
    pub fn request_size(&self, now: Instant) -> u32 {
        self.batch(now).saturating_add(self.debt)
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
        self.answered = true;
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
        // Pay back what was admitted on credit.
        let paid = self.debt.min(self.tokens);
        self.tokens -= paid;
        self.overdrawn += u64::from(self.debt - paid);
        self.debt = 0;
        self.valid_until = Some(window_end);
        self.new_window = false;
        self.exhausted_until = g.exhausted.then_some(window_end);
    }

    /// The service could not be reached: the failure mode applies from
    /// now; what was admitted on credit stays unpaid.
    pub fn failed(&mut self, now: Instant) {
        self.unavailable_until = Some(now + RETRY_AFTER_FAILURE);
        self.answered = false;
        self.overdrawn += u64::from(self.debt);
        self.debt = 0;
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
    fn a_new_window_admits_on_credit_paid_from_the_next_grant() {
        let t0 = Instant::now();
        let mut q = QuotaLease::new(1000);
        // No credit before the service ever answered.
        assert_eq!(q.take(t0), Take::NeedQuota);
        assert!(!q.borrow(t0));
        q.granted(
            t0,
            Grant {
                granted: 100,
                exhausted: false,
                reset: ms(1000),
            },
        );
        // A steady 100/s: batches of 25 (250 ms).
        for i in 0..100u64 {
            q.take(t0 + ms(i * 10));
        }
        let t = t0 + ms(1000);
        assert_eq!(q.batch(t), 25);
        // Up to a batch on credit while the call is out (the burst itself
        // grows the batch, up to 5% of the limit), then wait.
        let mut owed = 0u32;
        loop {
            assert_eq!(q.take(t), Take::NeedQuota);
            if !q.borrow(t) {
                break;
            }
            owed += 1;
            assert!(owed <= 50, "at most 5% of the limit on credit");
        }
        assert!(owed >= 10, "{owed}");
        q.granted(
            t,
            Grant {
                granted: owed + 15,
                exhausted: false,
                reset: ms(1000),
            },
        );
        assert_eq!(q.tokens(t), 15, "the credit paid back");
        assert_eq!(q.overdrawn(), 0);
        // A window used up by others: the credit is overdrawn, and counted.
        let t2 = t0 + ms(2000);
        assert_eq!(q.take(t2), Take::NeedQuota);
        assert!(q.borrow(t2));
        q.granted(
            t2,
            Grant {
                granted: 0,
                exhausted: true,
                reset: ms(1000),
            },
        );
        assert_eq!(q.overdrawn(), 1);
        assert!(matches!(q.take(t2), Take::Limited { .. }));
    }

    #[test]
    fn near_a_window_end_a_batch_asks_only_for_what_the_window_has_left() {
        let t0 = Instant::now();
        let mut q = QuotaLease::new(100_000);
        for i in 0..1000u64 {
            q.take(t0 + Duration::from_micros(i * 1000));
        }
        let t = t0 + ms(1000);
        assert!(q.batch(t) >= 200);
        q.granted(
            t,
            Grant {
                granted: 10,
                exhausted: false,
                reset: ms(40),
            },
        );
        // 40 ms left at 1,000/s: about 40, not 250 that would expire.
        let b = q.batch(t);
        assert!((30..=50).contains(&b), "batch {b}");
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
        // 1,000 requests per second for a second: about 250 per batch, 5% cap 500.
        for i in 0..1000u64 {
            q.take(t0 + Duration::from_micros(i * 1000));
        }
        let b = q.batch(t0 + ms(1000));
        assert!((200..=300).contains(&b), "batch {b}");
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
            steps in proptest::collection::vec((0u64..30, 0u32..20, any::<bool>(), any::<bool>()), 1..200)
        ) {
            let t0 = Instant::now();
            let mut q = QuotaLease::new(1000);
            let mut now = t0;
            let mut granted = 0u64;
            let mut allowed = 0u64;
            for (advance, grant, exhausted, credit) in steps {
                now += ms(advance);
                match q.take(now) {
                    Take::Allowed => allowed += 1,
                    Take::NeedQuota => {
                        if credit && q.borrow(now) {
                            allowed += 1;
                        }
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
                // Every admitted request spent a granted token or is
                // counted as overdrawn.
                prop_assert_eq!(allowed - q.overdrawn(), granted - u64::from(q.tokens(now)));
            }
        }
    }
}
