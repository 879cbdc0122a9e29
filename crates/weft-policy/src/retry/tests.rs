use proptest::prelude::*;

use super::*;
use crate::budget::BudgetConfig;
use crate::hedge::{HedgeConfig, HedgeDelay, Hedger, Suppressed};
use crate::rng::SplitMix64;

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

fn policy(jitter: Jitter, budget: Arc<Budget>) -> RetryPolicy {
    let config = RetryConfig {
        jitter,
        ..RetryConfig::default()
    };
    RetryPolicy::new(config, budget).unwrap()
}

fn failed(attempts: u32, remaining_deadline: Option<Duration>) -> FailedAttempt {
    FailedAttempt {
        attempts,
        retriable: true,
        remaining_deadline,
    }
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let cfg = RetryConfig {
        jitter: Jitter::None,
        ..RetryConfig::default()
    };
    let mut rng = SplitMix64::new(1);
    let caps: Vec<u64> = (1..=7)
        .map(|n| cfg.backoff(n, &mut rng).as_millis() as u64)
        .collect();
    assert_eq!(caps, [25, 50, 100, 200, 250, 250, 250]);
    assert_eq!(cfg.backoff(u32::MAX, &mut rng), ms(250));
}

#[test]
fn full_jitter_spreads_over_the_whole_range() {
    let cfg = RetryConfig::default();
    let mut rng = SplitMix64::new(2);
    let draws: Vec<Duration> = (0..10_000).map(|_| cfg.backoff(3, &mut rng)).collect();
    let mean = draws.iter().sum::<Duration>() / draws.len() as u32;
    assert!((ms(48)..=ms(52)).contains(&mean), "{mean:?}");
    assert!(draws.iter().any(|d| *d < ms(5)));
    assert!(draws.iter().any(|d| *d > ms(95)));
}

#[test]
fn equal_jitter_keeps_half_the_cap() {
    let cfg = RetryConfig {
        jitter: Jitter::Equal,
        ..RetryConfig::default()
    };
    let mut rng = SplitMix64::new(3);
    let draws: Vec<Duration> = (0..10_000).map(|_| cfg.backoff(2, &mut rng)).collect();
    assert!(draws.iter().all(|d| (ms(25)..=ms(50)).contains(d)));
    assert!(draws.iter().any(|d| *d < ms(27)) && draws.iter().any(|d| *d > ms(48)));
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop::sample::select(vec![Jitter::Full, Jitter::Equal, Jitter::None])
}

proptest! {
    #[test]
    fn backoff_never_exceeds_its_cap_or_max(
        base_ns in 1u64..2_000_000_000,
        extra_ns in 0u64..60_000_000_000,
        retry in 0u32..200,
        jitter in jitter(),
        seed: u64,
    ) {
        let cfg = RetryConfig {
            base_backoff: Duration::from_nanos(base_ns),
            max_backoff: Duration::from_nanos(base_ns + extra_ns),
            jitter,
            ..RetryConfig::default()
        };
        prop_assert!(cfg.validate().is_ok());
        let d = cfg.backoff(retry, &mut SplitMix64::new(seed));
        let shift = retry.saturating_sub(1);
        let exp = if shift >= 64 { u128::MAX } else { u128::from(base_ns) << shift };
        let cap = Duration::from_nanos(exp.min(u128::from(base_ns + extra_ns)) as u64);
        prop_assert!(d <= cap && d <= cfg.max_backoff, "{:?} > {:?}", d, cap);
        match jitter {
            Jitter::None => prop_assert_eq!(d, cap),
            Jitter::Equal => prop_assert!(d >= cap / 2),
            Jitter::Full => {}
        }
    }
}

#[test]
fn retries_a_retriable_failure_after_the_backoff() {
    let p = policy(Jitter::None, budget(0.1, 10));
    let mut rng = SplitMix64::new(4);
    assert_eq!(
        p.decide(ms(0), &failed(1, None), &mut rng),
        RetryDecision::Retry { after: ms(25) }
    );
    assert_eq!(
        p.decide(ms(0), &failed(2, Some(ms(51))), &mut rng),
        RetryDecision::Retry { after: ms(50) }
    );
    assert_eq!(p.stats().retries, 2);
}

#[test]
fn gives_up_on_a_failure_the_classifier_calls_final() {
    let b = budget(0.1, 10);
    let p = policy(Jitter::Full, b.clone());
    let fatal = FailedAttempt {
        retriable: false,
        ..failed(1, None)
    };
    let mut rng = SplitMix64::new(5);
    assert_eq!(
        p.decide(ms(0), &fatal, &mut rng),
        RetryDecision::GiveUp(GiveUp::NotRetriable)
    );
    assert_eq!(
        b.available(ms(0)),
        20,
        "no token spent (10/s x the burst rule's 2 s)"
    );
}

#[test]
fn gives_up_after_max_attempts() {
    let b = budget(0.1, 10);
    let p = policy(Jitter::Full, b.clone());
    let mut rng = SplitMix64::new(6);
    assert_eq!(
        p.decide(ms(0), &failed(3, None), &mut rng),
        RetryDecision::GiveUp(GiveUp::Attempts)
    );
    assert_eq!(b.available(ms(0)), 20);
}

#[test]
fn gives_up_when_the_deadline_ends_before_the_backoff() {
    let b = budget(0.1, 10);
    let p = policy(Jitter::None, b.clone());
    let mut rng = SplitMix64::new(7);
    assert_eq!(
        p.decide(ms(0), &failed(1, Some(ms(25))), &mut rng),
        RetryDecision::GiveUp(GiveUp::Deadline)
    );
    assert_eq!(
        b.available(ms(0)),
        20,
        "no token spent (10/s x the burst rule's 2 s)"
    );
    assert_eq!(
        p.decide(ms(0), &failed(1, Some(ms(26))), &mut rng),
        RetryDecision::Retry { after: ms(25) }
    );
}

#[test]
fn gives_up_when_the_budget_is_spent() {
    // 1/s, at most two in any two seconds.
    let p = policy(Jitter::Full, budget(0.0, 1));
    let mut rng = SplitMix64::new(8);
    for _ in 0..2 {
        assert!(matches!(
            p.decide(ms(0), &failed(1, None), &mut rng),
            RetryDecision::Retry { .. }
        ));
    }
    assert_eq!(
        p.decide(ms(0), &failed(1, None), &mut rng),
        RetryDecision::GiveUp(GiveUp::Budget)
    );
    let s = p.stats();
    assert_eq!((s.retries, s.given_up(GiveUp::Budget)), (2, 1));
    assert_eq!(s.given_up(GiveUp::Deadline), 0);
    assert_eq!(GiveUp::ALL.map(GiveUp::as_str)[3], "budget");
}

#[test]
fn retries_and_hedges_draw_from_the_same_budget() {
    // 100 requests at 10%: 10 extra attempts, and no reserve.
    let shared = budget(0.1, 0);
    for _ in 0..100 {
        shared.deposit(ms(0));
    }
    let retry = policy(Jitter::Full, shared.clone());
    let hedge = Hedger::new(
        HedgeConfig {
            delay: HedgeDelay::Fixed(ms(10)),
            ..HedgeConfig::default()
        },
        shared.clone(),
    )
    .unwrap();
    let mut rng = SplitMix64::new(9);
    for _ in 0..6 {
        assert_eq!(hedge.on_fire(ms(1)), Ok(()));
    }
    for _ in 0..4 {
        assert!(matches!(
            retry.decide(ms(1), &failed(1, None), &mut rng),
            RetryDecision::Retry { .. }
        ));
    }
    // Hedges spent 6, retries 4: nothing left for either.
    assert_eq!(
        retry.decide(ms(1), &failed(1, None), &mut rng),
        RetryDecision::GiveUp(GiveUp::Budget)
    );
    assert_eq!(hedge.on_fire(ms(1)), Err(Suppressed::Budget));
    // More traffic refills both.
    for _ in 0..10 {
        shared.deposit(ms(2));
    }
    assert_eq!(hedge.on_fire(ms(2)), Ok(()));
    assert_eq!(
        retry.decide(ms(2), &failed(1, None), &mut rng),
        RetryDecision::GiveUp(GiveUp::Budget)
    );
}

#[test]
fn per_try_timeout_is_cut_to_the_deadline() {
    let with = |t: Option<u64>| {
        RetryPolicy::new(
            RetryConfig {
                per_try_timeout: t.map(ms),
                ..RetryConfig::default()
            },
            budget(0.1, 1),
        )
        .unwrap()
    };
    assert_eq!(with(Some(100)).try_timeout(Some(ms(40))), Some(ms(40)));
    assert_eq!(with(Some(100)).try_timeout(Some(ms(400))), Some(ms(100)));
    assert_eq!(with(Some(100)).try_timeout(None), Some(ms(100)));
    assert_eq!(with(None).try_timeout(Some(ms(40))), Some(ms(40)));
    assert_eq!(with(None).try_timeout(None), None);
}

#[test]
fn invalid_configs_are_refused_with_the_reason() {
    let d = RetryConfig::default();
    assert_eq!(d.validate(), Ok(()));
    let bad = |c: RetryConfig| c.validate().unwrap_err();
    assert_eq!(
        bad(RetryConfig {
            max_attempts: 0,
            ..d.clone()
        }),
        RetryConfigError::MaxAttempts(0)
    );
    assert_eq!(
        bad(RetryConfig {
            base_backoff: Duration::ZERO,
            ..d.clone()
        }),
        RetryConfigError::ZeroBackoff
    );
    let e = bad(RetryConfig {
        max_backoff: ms(10),
        ..d.clone()
    });
    assert_eq!(
        e.to_string(),
        "retry maxBackoff (10ms) is below baseBackoff (25ms)"
    );
    assert_eq!(
        bad(RetryConfig {
            per_try_timeout: Some(Duration::ZERO),
            ..d.clone()
        }),
        RetryConfigError::ZeroPerTryTimeout
    );
    assert!(
        RetryPolicy::new(
            RetryConfig {
                max_attempts: 11,
                ..d
            },
            budget(0.1, 1)
        )
        .is_err()
    );
}
