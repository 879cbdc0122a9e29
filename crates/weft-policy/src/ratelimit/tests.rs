use std::sync::atomic::AtomicU32;
use std::thread;

use proptest::prelude::*;

use super::*;

fn bucket(requests_per_second: f64, burst: u32) -> TokenBucket {
    TokenBucket::new(TokenBucketConfig {
        requests_per_second,
        burst,
    })
    .unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn admits_the_burst_then_the_rate() {
    let b = bucket(10.0, 5);
    for left in (0..5).rev() {
        let d = b.try_acquire(ms(0));
        assert!(d.allowed);
        assert_eq!(d.remaining, left);
    }
    let refused = b.try_acquire(ms(0));
    assert!(!refused.allowed);
    assert_eq!(refused.remaining, 0);
    assert_eq!(refused.retry_after, Some(ms(100)), "one token per 100 ms");
    assert_eq!(refused.reset_after, ms(500), "five tokens to refill");

    // 99 ms later still nothing; at 100 ms exactly one.
    assert!(!b.try_acquire(ms(99)).allowed);
    assert!(b.try_acquire(ms(100)).allowed);
    assert!(!b.try_acquire(ms(100)).allowed);

    // Steady arrivals at 20/s for 10 s: 10/s get through.
    let admitted = (0..200)
        .filter(|i| b.try_acquire(ms(150 + i * 50)).allowed)
        .count();
    assert_eq!(admitted, 100);
}

#[test]
fn a_quiet_bucket_refills_to_the_burst_and_no_further() {
    let b = bucket(2.0, 3);
    for _ in 0..3 {
        assert!(b.try_acquire(ms(0)).allowed);
    }
    assert_eq!(b.available(ms(0)), 0);
    assert_eq!(b.available(ms(500)), 1);
    assert!(!b.is_full(ms(1_499)));
    assert!(b.is_full(ms(1_500)));
    assert_eq!(b.available(ms(60_000)), 3, "capped at the burst");
    let admitted = (0..10)
        .filter(|_| b.try_acquire(ms(60_000)).allowed)
        .count();
    assert_eq!(admitted, 3);
}

#[test]
fn a_full_bucket_behaves_like_a_fresh_one() {
    let used = bucket(5.0, 4);
    for i in 0..20 {
        let _ = used.try_acquire(ms(i * 37));
    }
    let idle_from = ms(20 * 37);
    let full_at = (0..).map(|i| idle_from + ms(i)).find(|&t| used.is_full(t));
    let full_at = full_at.unwrap();
    let fresh = bucket(5.0, 4);
    for i in 0..30 {
        let now = full_at + ms(i * 61);
        assert_eq!(used.try_acquire(now), fresh.try_acquire(now));
    }
}

#[test]
fn fractional_rates_round_towards_strict() {
    // 3/s: T = 333_333_334 ns, so over 10 s the steady rate gives 29 plus
    // the burst of 1, never 31.
    let b = bucket(3.0, 1);
    let admitted = (0..=10_000)
        .filter(|&i| b.try_acquire(ms(i)).allowed)
        .count();
    assert_eq!(admitted, 30);
}

#[test]
fn headers_report_limit_remaining_and_reset() {
    let b = bucket(10.0, 5);
    let allowed = b.try_acquire(ms(0)).headers();
    assert_eq!(header(&allowed, "x-ratelimit-limit"), Some("5"));
    assert_eq!(header(&allowed, "x-ratelimit-remaining"), Some("4"));
    // 100 ms until full: rounded up to a whole second.
    assert_eq!(header(&allowed, "x-ratelimit-reset"), Some("1"));
    assert_eq!(header(&allowed, "retry-after"), None);
    assert_eq!(allowed.len(), 3);
}

#[test]
fn retry_after_rounds_up_to_whole_seconds() {
    let b = bucket(0.5, 1);
    assert!(b.try_acquire(ms(0)).allowed);
    let at_zero = b.try_acquire(ms(0));
    assert_eq!(at_zero.retry_after, Some(ms(2_000)));
    let h = at_zero.headers();
    assert_eq!(header(&h, "retry-after"), Some("2"));
    assert_eq!(header(&h, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&h, "x-ratelimit-reset"), Some("2"));

    let later = b.try_acquire(ms(1_999)).headers();
    assert_eq!(header(&later, "retry-after"), Some("1"), "1 ms left -> 1 s");
    let mid = b.try_acquire(ms(500)).headers();
    assert_eq!(header(&mid, "retry-after"), Some("2"), "1.5 s -> 2 s");
    // Waiting as told is enough.
    assert!(b.try_acquire(ms(500 + 2_000)).allowed);
}

#[test]
fn concurrent_acquires_at_one_instant_admit_exactly_the_burst() {
    let b = Arc::new(bucket(1.0, 250));
    let admitted = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (b, admitted) = (b.clone(), admitted.clone());
            thread::spawn(move || {
                for _ in 0..1_000 {
                    if b.try_acquire(ms(5)).allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 250);
}

#[test]
fn concurrent_acquires_on_a_moving_clock_stay_within_the_limit() {
    // Threads share a simulated clock that each advances by 10 us per call,
    // so calls race both on the bucket and with slightly stale clocks.
    let (rate, burst) = (1_000.0, 50);
    let b = Arc::new(bucket(rate, burst));
    let clock = Arc::new(AtomicU64::new(0));
    let admitted = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (b, clock, admitted) = (b.clone(), clock.clone(), admitted.clone());
            thread::spawn(move || {
                for _ in 0..5_000 {
                    let now = clock.fetch_add(10_000, Ordering::Relaxed);
                    if b.try_acquire(Duration::from_nanos(now)).allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = Duration::from_nanos(clock.load(Ordering::Relaxed)).as_secs_f64();
    let admitted = f64::from(admitted.load(Ordering::Relaxed));
    let limit = f64::from(burst) + rate * elapsed;
    assert!(admitted <= limit, "{admitted} admitted, limit {limit}");
    // 40k calls over 0.4 s against 1000/s: the limit, not the callers,
    // binds, and it is not much stingier than the limit.
    assert!(
        admitted >= limit - 10.0,
        "{admitted} admitted, limit {limit}"
    );
}

#[test]
fn invalid_bucket_configs_name_the_field() {
    let bad_rates = [0.0, -1.0, 0.000_1, 2e6, f64::NAN, f64::INFINITY];
    for requests_per_second in bad_rates {
        let cfg = TokenBucketConfig {
            requests_per_second,
            burst: 10,
        };
        let err = cfg.validate().unwrap_err();
        assert!(
            matches!(err, RateLimitConfigError::RequestsPerSecond(_)),
            "{err}"
        );
        assert!(err.to_string().contains("requestsPerSecond"), "{err}");
        assert!(TokenBucket::new(cfg).is_err());
    }
    for burst in [0, MAX_BURST + 1] {
        let cfg = TokenBucketConfig {
            requests_per_second: 10.0,
            burst,
        };
        let err = cfg.validate().unwrap_err();
        assert_eq!(err, RateLimitConfigError::Burst(burst));
        assert!(err.to_string().contains("burst"), "{err}");
    }
    for max_keys in [0, MAX_KEYS + 1] {
        let cfg = KeyedLimiterConfig {
            bucket: TokenBucketConfig {
                requests_per_second: 10.0,
                burst: 1,
            },
            max_keys,
        };
        let err = KeyedLimiter::new(cfg).unwrap_err();
        assert_eq!(err, RateLimitConfigError::MaxKeys(max_keys));
        assert!(err.to_string().contains("maxKeys"), "{err}");
    }
    let edges = [
        (MIN_REQUESTS_PER_SECOND, 1),
        (MAX_REQUESTS_PER_SECOND, MAX_BURST),
    ];
    for (requests_per_second, burst) in edges {
        let cfg = TokenBucketConfig {
            requests_per_second,
            burst,
        };
        assert_eq!(cfg.validate(), Ok(()));
    }
}

#[test]
fn the_slowest_largest_bucket_does_not_overflow() {
    let b = bucket(MIN_REQUESTS_PER_SECOND, MAX_BURST);
    let late = Duration::from_secs(500 * 365 * 86_400);
    assert!(b.try_acquire(late).allowed);
    assert_eq!(b.try_acquire(late).remaining, MAX_BURST - 2);
    assert!(b.try_acquire(Duration::MAX).allowed);
}

fn keyed(rate: f64, burst: u32, max_keys: usize) -> KeyedLimiter {
    KeyedLimiter::new(KeyedLimiterConfig {
        bucket: TokenBucketConfig {
            requests_per_second: rate,
            burst,
        },
        max_keys,
    })
    .unwrap()
}

#[test]
fn keys_have_their_own_buckets() {
    let l = keyed(1.0, 2, 10);
    assert!(l.try_acquire("checkout", ms(0)).allowed);
    assert!(l.try_acquire("checkout", ms(0)).allowed);
    assert!(!l.try_acquire("checkout", ms(0)).allowed);
    // Another source is untouched by checkout's flood.
    let other = l.try_acquire("cart", ms(0));
    assert!(other.allowed);
    assert_eq!(other.remaining, 1);
    assert_eq!(l.len(), 2);
}

#[test]
fn a_flood_of_names_stays_bounded_and_shares_the_overflow_bucket() {
    let l = keyed(1.0, 5, 100);
    let mut overflow_admitted = 0;
    for i in 0..10_000 {
        let (d, placed) = l.try_acquire_placed(&format!("source-{i}"), ms(0));
        if i < 100 {
            assert_eq!(placed, Placement::Own);
            assert!(d.allowed);
        } else {
            assert_eq!(placed, Placement::Overflow);
            overflow_admitted += u32::from(d.allowed);
        }
    }
    assert_eq!(l.len(), 100);
    assert_eq!(overflow_admitted, 5, "overflow keys share one burst");
    // Known keys keep their own buckets while the table is full.
    let (d, placed) = l.try_acquire_placed("source-7", ms(0));
    assert_eq!(placed, Placement::Own);
    assert!(d.allowed, "source-7 had 4 tokens left");
}

#[test]
fn full_buckets_are_evicted_and_indebted_ones_kept() {
    // 1 token/s, burst 2: a bucket that took one token is full again 1 s
    // later; one that was drained needs 2 s.
    let l = keyed(1.0, 2, 3);
    assert!(l.try_acquire("light-1", ms(0)).allowed);
    assert!(l.try_acquire("light-2", ms(0)).allowed);
    for _ in 0..3 {
        let _ = l.try_acquire("heavy", ms(0));
    }
    assert_eq!(l.len(), 3);

    // At 1.5 s the light buckets are full (forgettable); heavy is not.
    let (_, placed) = l.try_acquire_placed("new-1", ms(1_500));
    assert_eq!(placed, Placement::Own);
    assert_eq!(l.len(), 2, "light-1 and light-2 evicted, new-1 added");
    // heavy kept its debt: at 1.5 s it has one token, not a fresh two.
    let heavy = l.try_acquire("heavy", ms(1_500));
    assert!(heavy.allowed);
    assert_eq!(heavy.remaining, 0);
    assert!(!l.try_acquire("heavy", ms(1_500)).allowed);
}

#[test]
fn sweeps_are_rate_limited() {
    let l = keyed(1_000.0, 1, 2);
    let _ = l.try_acquire("a", ms(0));
    let _ = l.try_acquire("b", ms(0));
    // The first miss on a full table sweeps, finds nothing full at 0...
    assert_eq!(l.try_acquire_placed("c", ms(0)).1, Placement::Overflow);
    // ...and the next miss within SWEEP_INTERVAL does not sweep again, even
    // though a and b are full by now.
    assert_eq!(l.try_acquire_placed("d", ms(500)).1, Placement::Overflow);
    assert_eq!(l.try_acquire_placed("e", ms(1_000)).1, Placement::Own);
    assert_eq!(l.len(), 1);
}

fn config() -> impl Strategy<Value = TokenBucketConfig> {
    (0.5f64..2_000.0, 1u32..50).prop_map(|(requests_per_second, burst)| TokenBucketConfig {
        requests_per_second,
        burst,
    })
}

/// Arrival gaps in microseconds: bursts of simultaneous requests, dense
/// runs and long pauses.
fn gaps() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(
        prop_oneof![Just(0u64), 0u64..2_000, 0u64..3_000_000],
        1..300,
    )
}

proptest! {
    /// The bucket's promise, checked on the log of what it admitted: between
    /// any two admissions at `a <= b`, at most `burst + rate x (b - a)` were
    /// admitted. And it is not stingier than its rule: a refused request
    /// had no whole token (`available` was 0), an admitted one had one.
    #[test]
    fn never_exceeds_burst_plus_rate_times_elapsed(cfg in config(), gaps in gaps()) {
        let b = TokenBucket::new(cfg.clone()).unwrap();
        let mut now = Duration::ZERO;
        let mut admitted = Vec::new();
        for gap in gaps {
            now += Duration::from_micros(gap);
            let available = b.available(now);
            let d = b.try_acquire(now);
            prop_assert_eq!(d.allowed, available > 0);
            if d.allowed {
                prop_assert_eq!(d.remaining, available - 1);
                admitted.push(now);
            } else {
                prop_assert!(d.retry_after.unwrap() > Duration::ZERO);
            }
            prop_assert!(d.remaining < cfg.burst);
        }
        for (i, &first) in admitted.iter().enumerate() {
            for (j, &last) in admitted.iter().enumerate().skip(i) {
                let count = (j - i + 1) as f64;
                let limit = f64::from(cfg.burst)
                    + cfg.requests_per_second * (last - first).as_secs_f64();
                prop_assert!(count <= limit + 1e-9, "{} admitted in {:?}, limit {}",
                    count, last - first, limit);
            }
        }
    }

    /// Waiting `retry_after` is always enough for one request.
    #[test]
    fn retry_after_is_enough(cfg in config(), gaps in gaps()) {
        let b = TokenBucket::new(cfg).unwrap();
        let mut now = Duration::ZERO;
        for gap in gaps {
            now += Duration::from_micros(gap);
            let d = b.try_acquire(now);
            if let Some(wait) = d.retry_after {
                prop_assert_eq!(b.available(now + wait), 1);
                prop_assert_eq!(b.available(now + wait - Duration::from_nanos(1)), 0);
            }
        }
    }
}
