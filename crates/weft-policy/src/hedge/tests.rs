use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::budget::{Budget, BudgetConfig};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn budget(ratio: f64, min_per_sec: u32) -> Arc<Budget> {
    Arc::new(
        Budget::new(BudgetConfig {
            ratio,
            min_per_sec,
            ttl: Duration::from_secs(10),
        })
        .unwrap(),
    )
}

fn fixed(delay: Duration) -> Hedger {
    let config = HedgeConfig {
        delay: HedgeDelay::Fixed(delay),
        ..HedgeConfig::default()
    };
    Hedger::new(config, budget(0.1, 10)).unwrap()
}

fn percentile(required_history: u64, min_delay: Duration, max_delay: Option<Duration>) -> Hedger {
    let config = HedgeConfig {
        delay: HedgeDelay::Percentile {
            percentile: 95.0,
            min_delay,
            max_delay,
            required_history,
            window: Duration::from_secs(30),
        },
        ..HedgeConfig::default()
    };
    Hedger::new(config, budget(0.1, 10)).unwrap()
}

fn get() -> HedgeRequest {
    HedgeRequest::new("GET", false, None)
}

fn ok(latency: Duration) -> Completion {
    Completion {
        latency,
        success: true,
        winner: Winner::Original,
        backups_sent: 0,
    }
}

/// `n` successful requests of 1..=100 ms, completing at `at` (same batch).
fn feed(h: &Hedger, at: Duration, n: u64) {
    for i in 0..n {
        h.record(at, &ok(ms(1 + i % 100)));
    }
}

#[test]
fn idempotent_methods_per_rfc_9110() {
    for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(is_idempotent(m), "{m}");
    }
    for m in ["POST", "PATCH", "CONNECT", "get", "PRI", ""] {
        assert!(!is_idempotent(m), "{m}");
    }
    assert!(HedgeRequest::new("GET", false, None).idempotent);
    assert!(!HedgeRequest::new("POST", false, None).idempotent);
    assert!(
        HedgeRequest::new("POST", true, None).idempotent,
        "marked safe"
    );
}

#[test]
fn fixed_delay_plans_at_once() {
    let h = fixed(ms(10));
    assert_eq!(h.plan(&get()), HedgePlan::After(ms(10)));
    assert_eq!(h.current_delay(), Some(ms(10)));
}

#[test]
fn not_idempotent_requests_are_never_hedged() {
    let h = fixed(ms(10));
    let post = HedgeRequest::new("POST", false, None);
    assert_eq!(
        h.plan(&post),
        HedgePlan::Suppressed(Suppressed::NotIdempotent)
    );
    assert_eq!(h.stats().suppressed(Suppressed::NotIdempotent), 1);
}

#[test]
fn no_history_until_required_history() {
    let h = percentile(50, ms(1), None);
    feed(&h, ms(0), 49);
    // The batch of t=0 is learned when the next batch starts.
    h.record(ms(600), &ok(ms(1)));
    assert_eq!(h.plan(&get()), HedgePlan::Suppressed(Suppressed::NoHistory));
    assert_eq!(h.current_delay(), None);
    feed(&h, ms(1200), 1);
    // 50 samples of 1..=49 ms and 1 ms.
    let HedgePlan::After(delay) = h.plan(&get()) else {
        panic!("{:?}", h.plan(&get()));
    };
    assert!((ms(46)..=ms(48)).contains(&delay), "{delay:?}");
    assert_eq!(h.stats().suppressed(Suppressed::NoHistory), 1);
}

#[test]
fn learned_delay_is_the_percentile_within_min_and_max() {
    let h = percentile(10, ms(1), None);
    feed(&h, ms(0), 1000);
    h.record(ms(600), &ok(ms(1)));
    let d = h.current_delay().unwrap();
    assert!((ms(95)..=ms(96)).contains(&d), "p95 of 1..=100 ms: {d:?}");

    let floor = percentile(10, ms(200), None);
    feed(&floor, ms(0), 1000);
    floor.record(ms(600), &ok(ms(1)));
    assert_eq!(floor.current_delay(), Some(ms(200)));

    let ceiling = percentile(10, ms(1), Some(ms(20)));
    feed(&ceiling, ms(0), 1000);
    ceiling.record(ms(600), &ok(ms(1)));
    assert_eq!(ceiling.current_delay(), Some(ms(20)));
}

#[test]
fn the_delay_follows_the_route_once_per_refresh() {
    let h = percentile(10, ms(1), None);
    feed(&h, ms(0), 1000);
    h.record(ms(600), &ok(ms(1)));
    let first = h.current_delay().unwrap();
    // The route gets 10% slower, which looks normal (few requests beyond
    // the old delay), so it is learned.
    let mut t = 600;
    while t < 40_000 {
        for i in 0..100 {
            h.record(ms(t), &ok(ms(1 + i) * 11 / 10));
        }
        t += 250;
    }
    let later = h.current_delay().unwrap();
    assert!(
        later > first && later <= first * 12 / 10,
        "{first:?} -> {later:?}"
    );
}

#[test]
fn never_fires_when_the_deadline_ends_before_the_delay() {
    let h = fixed(ms(10));
    let with = |left: Duration| HedgeRequest::new("GET", false, Some(left));
    assert_eq!(
        h.plan(&with(ms(9))),
        HedgePlan::Suppressed(Suppressed::Deadline)
    );
    assert_eq!(
        h.plan(&with(ms(10))),
        HedgePlan::Suppressed(Suppressed::Deadline)
    );
    assert_eq!(h.plan(&with(ms(11))), HedgePlan::After(ms(10)));
    assert_eq!(h.stats().suppressed(Suppressed::Deadline), 2);
}

proptest! {
    #[test]
    fn a_planned_backup_always_fits_in_the_deadline(
        delay_us in 1u64..1_000_000,
        left_us in prop::option::of(0u64..2_000_000),
    ) {
        let h = fixed(Duration::from_micros(delay_us));
        let left = left_us.map(Duration::from_micros);
        match h.plan(&HedgeRequest::new("PUT", false, left)) {
            HedgePlan::After(d) => {
                prop_assert_eq!(d, Duration::from_micros(delay_us));
                prop_assert!(left.is_none_or(|left| left > d));
            }
            HedgePlan::Suppressed(why) => {
                prop_assert_eq!(why, Suppressed::Deadline);
                prop_assert!(left.is_some_and(|l| l <= Duration::from_micros(delay_us)));
            }
        }
    }
}

#[test]
fn max_attempts_bounds_backups_and_is_not_counted() {
    let h = fixed(ms(10));
    let mut req = get();
    req.attempts_sent = 2;
    assert_eq!(h.plan(&req), HedgePlan::Suppressed(Suppressed::MaxAttempts));
    assert_eq!(h.stats(), HedgeStats::default());

    let three = Hedger::new(
        HedgeConfig {
            delay: HedgeDelay::Fixed(ms(10)),
            max_attempts: 3,
            ..HedgeConfig::default()
        },
        budget(0.1, 10),
    )
    .unwrap();
    assert_eq!(three.plan(&req), HedgePlan::After(ms(10)));
    req.attempts_sent = 3;
    assert_eq!(
        three.plan(&req),
        HedgePlan::Suppressed(Suppressed::MaxAttempts)
    );
}

#[test]
fn the_budget_is_charged_only_when_a_backup_fires() {
    // No ratio, 1/s over 10 s.
    let h = Hedger::new(
        HedgeConfig {
            delay: HedgeDelay::Fixed(ms(10)),
            ..HedgeConfig::default()
        },
        budget(0.0, 1),
    )
    .unwrap();
    let b = h.budget().clone();
    // A planned request that answers before the delay costs nothing.
    for _ in 0..100 {
        assert_eq!(h.plan(&get()), HedgePlan::After(ms(10)));
        h.record(ms(5), &ok(ms(5)));
    }
    // 1/s: two in any two seconds.
    assert_eq!(b.available(ms(5)), 2);
    for _ in 0..2 {
        assert_eq!(h.on_fire(ms(20)), Ok(()));
    }
    assert_eq!(h.on_fire(ms(20)), Err(Suppressed::Budget));
    let stats = h.stats();
    assert_eq!(stats.sent, 2);
    assert_eq!(stats.suppressed(Suppressed::Budget), 1);
}

#[test]
fn counts_won_and_cancelled_backups() {
    let h = fixed(ms(10));
    let done = |winner, backups_sent| Completion {
        latency: ms(15),
        success: true,
        winner,
        backups_sent,
    };
    h.record(ms(1), &done(Winner::Backup, 1));
    h.record(ms(2), &done(Winner::Original, 1));
    h.record(ms(3), &done(Winner::Backup, 2));
    h.record(ms(4), &done(Winner::Original, 0));
    h.suppress(Suppressed::NoEndpoint);
    h.suppress(Suppressed::BodyTooLarge);
    let s = h.stats();
    assert_eq!((s.won, s.cancelled), (2, 2));
    assert_eq!(s.suppressed(Suppressed::NoEndpoint), 1);
    assert_eq!(s.suppressed(Suppressed::BodyTooLarge), 1);
    let labels: Vec<_> = Suppressed::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), 8);
    assert!(labels.contains(&"budget") && labels.contains(&"breaker"));
}

#[test]
fn breaker_stops_hedging_while_most_requests_are_slow() {
    let h = fixed(ms(10));
    for i in 0..100 {
        h.record(ms(i * 10), &ok(ms(50)));
    }
    assert!(h.breaker_open());
    assert_eq!(h.plan(&get()), HedgePlan::Suppressed(Suppressed::Breaker));
    assert_eq!(h.on_fire(ms(1000)), Err(Suppressed::Breaker));
    // Fast again for a whole breaker window: back on.
    for i in 0..500 {
        h.record(ms(1000 + i * 10), &ok(ms(5)));
    }
    assert!(!h.breaker_open());
    assert_eq!(h.plan(&get()), HedgePlan::After(ms(10)));
    assert_eq!(h.stats().suppressed(Suppressed::Breaker), 2);
}

#[test]
fn breaker_stops_hedging_when_the_target_fails() {
    let h = fixed(ms(10));
    for i in 0..100 {
        let failed = Completion {
            success: i % 2 == 0,
            ..ok(ms(2))
        };
        h.record(ms(i * 10), &failed);
    }
    assert_eq!(h.plan(&get()), HedgePlan::Suppressed(Suppressed::Breaker));
}

#[test]
fn an_outage_is_not_learned_as_the_delay() {
    let h = percentile(10, ms(1), None);
    let mut t = 0;
    for _ in 0..40 {
        feed(&h, ms(t), 100);
        t += 250;
    }
    let normal = h.current_delay().unwrap();
    // Every request 10x slower for 20 s.
    for _ in 0..80 {
        for i in 0..100 {
            h.record(ms(t), &ok(ms(1 + i) * 10));
        }
        t += 250;
    }
    assert!(h.breaker_open());
    assert_eq!(h.current_delay(), Some(normal), "frozen during the outage");
    // Recovery: the delay is still the normal one.
    for _ in 0..40 {
        feed(&h, ms(t), 100);
        t += 250;
    }
    assert!(!h.breaker_open());
    let after = h.current_delay().unwrap();
    assert!(after <= normal * 11 / 10, "{normal:?} -> {after:?}");
}

#[test]
fn invalid_configs_are_refused_with_the_reason() {
    use HedgeConfigError as E;
    let with_delay = |delay| HedgeConfig {
        delay,
        ..HedgeConfig::default()
    };
    let pct = |percentile, min: u64, max: Option<u64>, required_history, window: u64| {
        with_delay(HedgeDelay::Percentile {
            percentile,
            min_delay: ms(min),
            max_delay: max.map(ms),
            required_history,
            window: ms(window),
        })
    };
    assert_eq!(HedgeConfig::default().validate(), Ok(()));
    assert_eq!(
        with_delay(HedgeDelay::Fixed(Duration::ZERO)).validate(),
        Err(E::ZeroDelay)
    );
    assert_eq!(
        pct(100.0, 1, None, 1, 30_000).validate(),
        Err(E::Percentile(100.0))
    );
    assert_eq!(
        pct(f64::NAN, 1, None, 1, 30_000)
            .validate()
            .unwrap_err()
            .to_string(),
        "hedge percentile must be in [50, 100), got NaN"
    );
    assert_eq!(
        pct(95.0, 10, Some(5), 1, 30_000).validate(),
        Err(E::MaxBelowMin {
            min: ms(10),
            max: ms(5)
        })
    );
    assert_eq!(
        pct(95.0, 1, None, 0, 30_000).validate(),
        Err(E::RequiredHistory)
    );
    assert_eq!(
        pct(95.0, 1, None, 1, 100).validate(),
        Err(E::Window(ms(100)))
    );
    assert!(matches!(
        pct(75.0, 1, None, 1, 30_000).validate(),
        Err(E::BreakerBelowPercentile { .. })
    ));
    let attempts = HedgeConfig {
        max_attempts: 1,
        ..HedgeConfig::default()
    };
    assert_eq!(attempts.validate(), Err(E::MaxAttempts(1)));
    let breaker = |b: BreakerConfig| {
        HedgeConfig {
            delay: HedgeDelay::Fixed(ms(10)),
            breaker: b,
            ..HedgeConfig::default()
        }
        .validate()
    };
    let d = BreakerConfig::default();
    assert!(matches!(
        breaker(BreakerConfig {
            slow_share_to_close: 0.6,
            ..d.clone()
        }),
        Err(E::BreakerSlowHysteresis { .. })
    ));
    assert!(matches!(
        breaker(BreakerConfig {
            success_rate_to_close: 0.7,
            ..d.clone()
        }),
        Err(E::BreakerSuccessHysteresis { .. })
    ));
    assert_eq!(
        breaker(BreakerConfig {
            success_rate_to_open: 1.5,
            ..d.clone()
        }),
        Err(E::BreakerShare {
            name: "successRateToOpen",
            value: 1.5
        })
    );
    assert_eq!(
        breaker(BreakerConfig {
            min_requests: 0,
            ..d.clone()
        }),
        Err(E::BreakerMinRequests)
    );
    assert!(Hedger::new(attempts, budget(0.1, 1)).is_err());
}
