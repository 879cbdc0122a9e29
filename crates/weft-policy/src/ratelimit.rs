//! Local rate limits: a token bucket per proxy, per route ([`TokenBucket`])
//! or per source ([`KeyedLimiter`]), the counterpart of Envoy's
//! `envoy.filters.http.local_ratelimit` token bucket (`max_tokens`,
//! `tokens_per_fill`, `fill_interval`).
//!
//! A bucket holds at most `burst` tokens and refills continuously at
//! `requests_per_second`; each request takes one token or is refused. Over
//! any interval of length `t`, a bucket admits at most
//! `burst + requests_per_second x t` requests, whatever the arrival pattern
//! and however many threads call it. Unlike Envoy's bucket, which adds
//! `tokens_per_fill` tokens at each `fill_interval` tick, this one refills
//! smoothly, so there is no tick at which a crowd of waiting clients is
//! admitted together.
//!
//! The bucket is kept as GCRA (the generic cell rate algorithm, ITU-T I.371):
//! one `u64`, the "theoretical arrival time" at which the bucket would be full
//! again. A request at `now` is admitted when, after charging it one
//! emission interval `T = 1 / rate`, that time is at most `burst x T` ahead of
//! `now`. One compare-and-swap on that word is the whole critical section, so
//! acquiring is lock-free and exact under concurrency. `T` is kept in whole
//! nanoseconds, rounded up: the bucket is at most one nanosecond per token
//! stricter than configured (0.1% at the highest allowed rate), never looser.
//!
//! What the proxy does with a [`Decision`]: if `allowed`, forward the request
//! (and it may add [`Decision::headers`] to the response); if not, answer
//! locally with [`HTTP_STATUS`] 429, or gRPC [`GRPC_CODE`]
//! `RESOURCE_EXHAUSTED` for gRPC requests, with the same headers, which then
//! include `retry-after`. Which bucket applies (route, source) is the proxy's
//! route match; this module only counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// HTTP status for a request refused by a rate limit.
pub const HTTP_STATUS: u16 = 429;

/// gRPC status code for a refused gRPC request (`RESOURCE_EXHAUSTED`).
pub const GRPC_CODE: u32 = 8;

/// Rates above this are refused: a local limit of more than a million
/// requests a second per proxy is a mistake in the units, not a policy.
pub const MAX_REQUESTS_PER_SECOND: f64 = 1_000_000.0;

/// Rates below this (one request every ~17 minutes) are refused too.
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.001;

/// The largest burst a bucket accepts.
pub const MAX_BURST: u32 = 1_000_000;

/// The most keys a [`KeyedLimiter`] may be configured to track.
pub const MAX_KEYS: usize = 1_000_000;

/// How often, at most, a full [`KeyedLimiter`] scans for idle buckets to
/// evict: the scan is linear in the number of keys, so a flood of new names
/// must not trigger one per request.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// One token bucket's size and refill rate.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucketConfig {
    /// Sustained rate: tokens added per second, in
    /// `[MIN_REQUESTS_PER_SECOND, MAX_REQUESTS_PER_SECOND]`.
    pub requests_per_second: f64,
    /// Bucket size: requests admitted at once after a quiet period, in
    /// `1..=MAX_BURST`.
    pub burst: u32,
}

/// Why a rate limit's configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RateLimitConfigError {
    #[error(
        "rate limit requestsPerSecond must be between {MIN_REQUESTS_PER_SECOND} and \
         {MAX_REQUESTS_PER_SECOND}, got {0}"
    )]
    RequestsPerSecond(f64),
    #[error("rate limit burst must be between 1 and {MAX_BURST} requests, got {0}")]
    Burst(u32),
    #[error("rate limit maxKeys must be between 1 and {MAX_KEYS}, got {0}")]
    MaxKeys(usize),
}

impl TokenBucketConfig {
    pub fn validate(&self) -> Result<(), RateLimitConfigError> {
        // `contains` is false for NaN, so NaN is refused too.
        if !(MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND).contains(&self.requests_per_second)
        {
            return Err(RateLimitConfigError::RequestsPerSecond(
                self.requests_per_second,
            ));
        }
        if !(1..=MAX_BURST).contains(&self.burst) {
            return Err(RateLimitConfigError::Burst(self.burst));
        }
        Ok(())
    }

    /// The emission interval `1 / rate` in nanoseconds, rounded up (so the
    /// bucket is never looser than configured).
    fn interval_nanos(&self) -> u64 {
        (1e9 / self.requests_per_second).ceil() as u64
    }
}

/// The verdict on one request, with what the response headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Forward the request (`true`) or refuse it with 429 /
    /// `RESOURCE_EXHAUSTED`.
    pub allowed: bool,
    /// The bucket size (the `burst`).
    pub limit: u32,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Time until the bucket is full again (`remaining == limit`).
    pub reset_after: Duration,
    /// For a refused request: time until one token is available. `None`
    /// when allowed.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// The response headers, as Envoy's local rate limit and the IETF
    /// `RateLimit` header draft spell them: `x-ratelimit-limit`,
    /// `x-ratelimit-remaining`, `x-ratelimit-reset` (whole seconds until
    /// the bucket is full, rounded up) and, for a refusal, `retry-after`
    /// (whole seconds, rounded up, so a client that waits that long is
    /// admitted).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", ceil_secs(self.reset_after).to_string()),
        ];
        if let Some(retry_after) = self.retry_after {
            headers.push(("retry-after", ceil_secs(retry_after).to_string()));
        }
        headers
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A token bucket shared by every request it limits (put it in an `Arc`).
#[derive(Debug)]
pub struct TokenBucket {
    config: TokenBucketConfig,
    /// `T = 1 / rate`, in nanoseconds.
    interval: u64,
    /// `burst x T`, in nanoseconds: how far ahead of `now` the theoretical
    /// arrival time may run.
    tolerance: u64,
    /// The theoretical arrival time, in nanoseconds since the clock's epoch:
    /// the bucket is full at any `now` at or past it. Starts at 0: full.
    tat: AtomicU64,
}

impl TokenBucket {
    pub fn new(config: TokenBucketConfig) -> Result<Self, RateLimitConfigError> {
        config.validate()?;
        Ok(Self::from_valid(config))
    }

    fn from_valid(config: TokenBucketConfig) -> Self {
        let interval = config.interval_nanos();
        Self {
            // At most 1e12 ns x 1e6: no overflow.
            tolerance: interval * u64::from(config.burst),
            interval,
            tat: AtomicU64::new(0),
            config,
        }
    }

    pub fn config(&self) -> &TokenBucketConfig {
        &self.config
    }

    /// Takes one token if there is one. Lock-free: one CAS loop on the
    /// bucket's single word.
    pub fn try_acquire(&self, now: Duration) -> Decision {
        let now = nanos(now);
        let mut stored = self.tat.load(Ordering::Relaxed);
        loop {
            let tat = stored.max(now);
            let next = tat.saturating_add(self.interval);
            if next - now > self.tolerance {
                // Refused: nothing to write. The next token is free once
                // `next - now' <= tolerance`.
                return Decision {
                    allowed: false,
                    limit: self.config.burst,
                    remaining: 0,
                    reset_after: Duration::from_nanos(tat - now),
                    retry_after: Some(Duration::from_nanos(next - now - self.tolerance)),
                };
            }
            match self
                .tat
                .compare_exchange_weak(stored, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    let ahead = next - now;
                    return Decision {
                        allowed: true,
                        limit: self.config.burst,
                        remaining: ((self.tolerance - ahead) / self.interval) as u32,
                        reset_after: Duration::from_nanos(ahead),
                        retry_after: None,
                    };
                }
                Err(actual) => stored = actual,
            }
        }
    }

    /// Whole tokens available at `now` (a gauge; takes nothing).
    pub fn available(&self, now: Duration) -> u32 {
        let now = nanos(now);
        let ahead = self.tat.load(Ordering::Relaxed).saturating_sub(now);
        (self.tolerance.saturating_sub(ahead) / self.interval) as u32
    }

    /// Whether the bucket is full at `now`: then it behaves exactly like a
    /// freshly made one, so forgetting it loses nothing.
    pub fn is_full(&self, now: Duration) -> bool {
        self.tat.load(Ordering::Relaxed) <= nanos(now)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How a per-source limit is sized.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedLimiterConfig {
    /// Each key's own bucket.
    pub bucket: TokenBucketConfig,
    /// The most keys tracked at once, in `1..=MAX_KEYS`.
    pub max_keys: usize,
}

impl KeyedLimiterConfig {
    pub fn validate(&self) -> Result<(), RateLimitConfigError> {
        self.bucket.validate()?;
        if !(1..=MAX_KEYS).contains(&self.max_keys) {
            return Err(RateLimitConfigError::MaxKeys(self.max_keys));
        }
        Ok(())
    }
}

/// One token bucket per key (a source service or identity), with a bounded
/// number of keys, so a flood of distinct source names cannot grow memory
/// without bound.
///
/// When the table is full, a new key first triggers a sweep (at most once
/// per [`SWEEP_INTERVAL`]) that drops every bucket that is full again: a
/// full bucket is indistinguishable from a fresh one, so evicting it never
/// lets its key through more than the limit. A bucket that is not full
/// keeps its debt and is never evicted. If the sweep frees nothing, the new
/// key shares one overflow bucket (same size and rate) with every other key
/// that did not fit: during a flood, those keys are limited together, more
/// strictly than their own limit, never more loosely.
///
/// The map sits behind a mutex held only to find or insert a key; the
/// bucket itself is then acquired lock-free outside it.
#[derive(Debug)]
pub struct KeyedLimiter {
    config: KeyedLimiterConfig,
    table: Mutex<Table>,
    overflow: TokenBucket,
}

#[derive(Debug)]
struct Table {
    buckets: HashMap<Arc<str>, Arc<TokenBucket>>,
    /// When the last sweep ran; `None` before the first.
    last_sweep: Option<Duration>,
}

/// Which bucket a [`KeyedLimiter`] charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The key's own bucket.
    Own,
    /// The shared overflow bucket: the table was full (a metric worth
    /// exporting: it means `max_keys` is too small or a flood of names).
    Overflow,
}

impl KeyedLimiter {
    pub fn new(config: KeyedLimiterConfig) -> Result<Self, RateLimitConfigError> {
        config.validate()?;
        Ok(Self {
            overflow: TokenBucket::from_valid(config.bucket.clone()),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                last_sweep: None,
            }),
            config,
        })
    }

    pub fn config(&self) -> &KeyedLimiterConfig {
        &self.config
    }

    /// Takes one token from `key`'s bucket.
    pub fn try_acquire(&self, key: &str, now: Duration) -> Decision {
        self.try_acquire_placed(key, now).0
    }

    /// [`try_acquire`](Self::try_acquire), also saying which bucket paid.
    pub fn try_acquire_placed(&self, key: &str, now: Duration) -> (Decision, Placement) {
        match self.bucket(key, now) {
            Some(bucket) => (bucket.try_acquire(now), Placement::Own),
            None => (self.overflow.try_acquire(now), Placement::Overflow),
        }
    }

    /// Keys with their own bucket right now (a gauge).
    pub fn len(&self) -> usize {
        self.lock().buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `key`'s bucket, made if there is room; `None` sends the request to
    /// the overflow bucket.
    fn bucket(&self, key: &str, now: Duration) -> Option<Arc<TokenBucket>> {
        let mut table = self.lock();
        if let Some(bucket) = table.buckets.get(key) {
            return Some(bucket.clone());
        }
        if table.buckets.len() >= self.config.max_keys {
            let due = table
                .last_sweep
                .is_none_or(|last| now.saturating_sub(last) >= SWEEP_INTERVAL);
            if !due {
                return None;
            }
            table.last_sweep = Some(now);
            // Under the lock nobody can take a new reference, so a count of
            // one means no request is between finding this bucket and
            // charging it: evicting it cannot lose a charge.
            table
                .buckets
                .retain(|_, bucket| Arc::strong_count(bucket) > 1 || !bucket.is_full(now));
            if table.buckets.len() >= self.config.max_keys {
                return None;
            }
        }
        let bucket = Arc::new(TokenBucket::from_valid(self.config.bucket.clone()));
        table.buckets.insert(Arc::from(key), bucket.clone());
        Some(bucket)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests;
