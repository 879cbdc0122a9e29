use std::time::Duration;

use proptest::prelude::*;

use crate::health::*;

/// One step of a random history: an attempt on `endpoint` (or an evaluate
/// tick when `kind` is 3) after `dt_ms` of simulated time.
#[derive(Debug, Clone, Copy)]
struct Step {
    endpoint: usize,
    dt_ms: u64,
    kind: u8,
}

fn steps(endpoints: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (0..endpoints, 0u64..3_000, 0u8..4).prop_map(|(endpoint, dt_ms, kind)| Step {
            endpoint,
            dt_ms,
            kind,
        }),
        1..400,
    )
}

fn score_config() -> impl Strategy<Value = ScoreConfig> {
    (
        1u64..20_000,
        0.0f64..50.0,
        0.0f64..0.5,
        0.0f64..1e6,
        0.001f64..=1.0,
        1u64..60_000,
    )
        .prop_map(
            |(
                half_life,
                prior_requests,
                tolerated_failure_rate,
                failure_penalty,
                min_multiplier,
                recovery,
            )| {
                ScoreConfig {
                    half_life: Duration::from_millis(half_life),
                    prior_requests,
                    tolerated_failure_rate,
                    failure_penalty,
                    min_multiplier,
                    recovery_time: Duration::from_millis(recovery),
                }
            },
        )
}

fn outlier_config() -> impl Strategy<Value = OutlierConfig> {
    (
        1u32..8,
        0u32..=100,
        0.0f64..3.0,
        0.05f64..=1.0,
        0.0f64..=1.0,
        1u64..100,
    )
        .prop_map(
            |(
                consecutive,
                max_ejection_percent,
                stdev_factor,
                threshold,
                panic_threshold,
                min_requests,
            )| {
                OutlierConfig {
                    consecutive_failures: Some(consecutive),
                    interval: Duration::from_secs(2),
                    base_ejection_time: Duration::from_secs(5),
                    max_ejection_time: Duration::from_secs(20),
                    max_ejection_percent,
                    success_rate: Some(SuccessRateRule {
                        stdev_factor,
                        min_hosts: 2,
                        min_requests,
                    }),
                    failure_rate: Some(FailureRateRule {
                        threshold,
                        min_hosts: 1,
                        min_requests,
                    }),
                    panic_threshold,
                }
            },
        )
}

const FAIL: Verdict = Verdict::Failure(FailureReason::HttpStatus(500));

/// Plays `steps`; `verdict_of` may override the verdict per endpoint.
/// Calls `check` after every step.
fn play(
    c: &ClusterHealth,
    steps: &[Step],
    verdict_of: impl Fn(&Step) -> Verdict,
    mut check: impl FnMut(&ClusterHealth, Duration) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut now = Duration::ZERO;
    for step in steps {
        now += Duration::from_millis(step.dt_ms);
        if step.kind == 3 {
            c.evaluate(now);
        } else {
            c.record(step.endpoint % c.len(), now, &verdict_of(step));
        }
        check(c, now)?;
    }
    Ok(())
}

fn verdict(step: &Step) -> Verdict {
    match step.kind {
        0 => Verdict::Success,
        1 => FAIL,
        _ => Verdict::Ignored,
    }
}

proptest! {
    #[test]
    fn multipliers_stay_in_bounds_and_are_never_nan(
        score in score_config(),
        outlier in outlier_config(),
        n in 1usize..6,
        steps in steps(6),
    ) {
        let c = ClusterHealth::new(HealthConfig { score, outlier }, n).unwrap();
        play(&c, &steps, verdict, |c, now| {
            for i in 0..c.len() {
                let m = c.effective_multiplier(i, now);
                prop_assert!((0.0..=1.0).contains(&m), "effective {m}");
                let own = c.endpoint(i).weight_multiplier(now);
                prop_assert!((score.min_multiplier..=1.0).contains(&own), "own {own}");
                let s = c.endpoint(i).success_rate(now);
                prop_assert!((0.0..=1.0).contains(&s), "success rate {s}");
            }
            let share = c.healthy_share(now);
            prop_assert!((0.0..=1.0 + 1e-9).contains(&share), "share {share}");
            Ok(())
        })?;
    }

    #[test]
    fn ejections_never_exceed_max_ejection_percent(
        outlier in outlier_config(),
        n in 1usize..12,
        steps in steps(12),
    ) {
        let config = HealthConfig { outlier, ..HealthConfig::default() };
        let c = ClusterHealth::new(config, n).unwrap();
        let max = n * outlier.max_ejection_percent as usize / 100;
        let max = if outlier.max_ejection_percent > 0 && n >= 2 { max.max(1) } else { max };
        prop_assert_eq!(c.max_ejected(), max);
        play(&c, &steps, verdict, |c, _| {
            prop_assert!(c.ejected_count() <= max, "{} > {}", c.ejected_count(), max);
            Ok(())
        })?;
    }

    #[test]
    fn an_endpoint_that_only_succeeds_is_never_ejected(
        outlier in outlier_config(),
        n in 2usize..8,
        steps in steps(8),
    ) {
        let outlier = OutlierConfig { max_ejection_percent: 100, ..outlier };
        let config = HealthConfig { outlier, ..HealthConfig::default() };
        let c = ClusterHealth::new(config, n).unwrap();
        let only_successes = |s: &Step| {
            if s.endpoint.is_multiple_of(n) { Verdict::Success } else { verdict(s) }
        };
        play(&c, &steps, only_successes, |c, now| {
            prop_assert!(!c.is_ejected(0));
            prop_assert_eq!(c.endpoint(0).weight_multiplier(now), 1.0);
            Ok(())
        })?;
    }
}
