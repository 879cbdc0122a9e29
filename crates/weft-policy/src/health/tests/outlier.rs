use std::time::Duration;

use crate::health::*;

const FAIL: Verdict = Verdict::Failure(FailureReason::ConnectFailure);
const OK: Verdict = Verdict::Success;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn cluster(outlier: OutlierConfig, n: usize) -> ClusterHealth {
    let config = HealthConfig {
        outlier,
        ..HealthConfig::default()
    };
    ClusterHealth::new(config, n).unwrap()
}

fn consecutive_only(max_ejection_percent: u32) -> OutlierConfig {
    OutlierConfig {
        success_rate: None,
        max_ejection_percent,
        panic_threshold: 0.0,
        ..OutlierConfig::default()
    }
}

/// Records `n` attempts with `verdict` at `now`; returns the events.
fn record(
    c: &ClusterHealth,
    endpoint: usize,
    now: Duration,
    n: u32,
    verdict: Verdict,
) -> Vec<HealthEvent> {
    (0..n)
        .filter_map(|_| c.record(endpoint, now, &verdict).event)
        .collect()
}

fn ejected(endpoint: usize, times: u32, duration: Duration) -> impl Fn(&HealthEvent) -> bool {
    move |e| {
        matches!(e, HealthEvent::Ejected { endpoint: i, times: t, duration: d, .. }
            if *i == endpoint && *t == times && *d == duration)
    }
}

#[test]
fn consecutive_failures_eject_at_once_with_backoff_of_base_times_count() {
    let c = cluster(consecutive_only(50), 3);
    assert!(
        record(&c, 0, secs(1), 4, FAIL).is_empty(),
        "four in a row is not five"
    );
    record(&c, 0, secs(1), 1, OK);
    assert!(
        record(&c, 0, secs(1), 4, FAIL).is_empty(),
        "a success resets the count"
    );
    let events = record(&c, 0, secs(1), 1, FAIL);
    assert_eq!(events.len(), 1);
    assert!(ejected(0, 1, secs(30))(&events[0]), "{events:?}");
    assert_eq!(
        events[0],
        HealthEvent::Ejected {
            endpoint: 0,
            reason: EjectionReason::ConsecutiveFailures(5),
            duration: secs(30),
            times: 1
        }
    );
    assert_eq!(c.effective_multiplier(0, secs(1)), 0.0);
    assert!(
        record(&c, 0, secs(2), 10, FAIL).is_empty(),
        "in-flight failures do not eject twice"
    );

    assert!(c.evaluate(secs(30)).is_empty(), "ejected until 31 s");
    assert_eq!(
        c.evaluate(secs(31)),
        [HealthEvent::Readmitted { endpoint: 0 }]
    );
    assert!(!c.is_ejected(0));

    // Still broken: the second ejection lasts twice as long, the third
    // three times.
    let events = record(&c, 0, secs(32), 5, FAIL);
    assert!(ejected(0, 2, secs(60))(&events[0]), "{events:?}");
    assert!(c.evaluate(secs(91)).is_empty());
    assert_eq!(
        c.evaluate(secs(92)),
        [HealthEvent::Readmitted { endpoint: 0 }]
    );
    let events = record(&c, 0, secs(92), 5, FAIL);
    assert!(ejected(0, 3, secs(90))(&events[0]), "{events:?}");
    assert_eq!(c.status(0, secs(92)).times_ejected, 3);
}

#[test]
fn ejection_time_is_capped_and_forgiven_while_healthy() {
    let outlier = OutlierConfig {
        max_ejection_time: secs(70),
        ..consecutive_only(50)
    };
    let c = cluster(outlier, 3);
    let mut now = secs(1);
    for (times, duration) in [(1, 30), (2, 60), (3, 70), (4, 70)] {
        let events = record(&c, 0, now, 5, FAIL);
        assert!(ejected(0, times, secs(duration))(&events[0]), "{events:?}");
        now += secs(duration);
        assert_eq!(c.evaluate(now), [HealthEvent::Readmitted { endpoint: 0 }]);
    }
    // One ejection forgiven per interval (10 s) spent admitted.
    for _ in 0..2 {
        now += secs(10);
        c.evaluate(now);
    }
    assert_eq!(c.status(0, now).times_ejected, 2);
    let events = record(&c, 0, now, 5, FAIL);
    assert!(ejected(0, 3, secs(70))(&events[0]), "{events:?}");
}

#[test]
fn a_readmitted_endpoint_climbs_the_recovery_ramp() {
    let c = cluster(consecutive_only(50), 3);
    record(&c, 0, secs(1), 5, FAIL);
    c.evaluate(secs(31));
    assert_eq!(
        c.effective_multiplier(0, secs(31)),
        0.05,
        "back at the floor"
    );
    for t in 32..=41 {
        record(&c, 0, secs(t), 20, OK);
    }
    // The ramp multiplies the weight by the same factor every second:
    // halfway through recovery_time it is sqrt(0.05 * 1).
    let halfway = c.effective_multiplier(0, Duration::from_millis(36_000));
    assert!((halfway - 0.05f64.sqrt()).abs() < 1e-9, "{halfway}");
    assert_eq!(c.effective_multiplier(0, secs(41)), 1.0);
}

#[test]
fn max_ejection_percent_caps_how_many_are_ejected() {
    for (n, percent, max) in [
        (3, 50, 1),
        (10, 50, 5),
        (2, 10, 1),
        (3, 0, 0),
        (1, 50, 0),
        (4, 100, 4),
    ] {
        let c = cluster(consecutive_only(percent), n);
        assert_eq!(c.max_ejected(), max, "{n} endpoints at {percent} %");
        for i in 0..n {
            record(&c, i, secs(1), 5, FAIL);
        }
        assert_eq!(c.ejected_count(), max, "{n} endpoints at {percent} %");
    }
}

#[test]
fn a_config_that_fails_everything_cannot_eject_everything() {
    // Every endpoint fails every request (say a wrong business code).
    let c = cluster(
        OutlierConfig {
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        },
        3,
    );
    for t in 1..=20 {
        for i in 0..3 {
            record(&c, i, secs(t), 100, FAIL);
        }
        c.evaluate(secs(t));
    }
    assert_eq!(c.ejected_count(), 1);
    let m: Vec<f64> = (0..3)
        .map(|i| c.effective_multiplier(i, secs(20)))
        .collect();
    // The other two are as bad as the best: not cut, and share traffic
    // evenly.
    assert_eq!(m.iter().filter(|&&m| m == 1.0).count(), 2, "{m:?}");
    assert!(!c.in_panic());
}

/// One interval (10 s) ending at `end`: each endpoint gets 200 requests,
/// 20 a second, `failures[i]` of them failed, spread evenly.
fn interval_of(c: &ClusterHealth, failures: &[u32], end: Duration) -> Vec<HealthEvent> {
    for n in 0..200u32 {
        let now = end - secs(10) + Duration::from_millis(u64::from(n) * 50);
        for (i, &f) in failures.iter().enumerate() {
            let fail = n * f % 200 + f >= 200;
            c.record(i, now, if fail { &FAIL } else { &OK });
        }
    }
    c.evaluate(end)
}

#[test]
fn success_rate_rule_ejects_an_endpoint_far_below_the_cluster() {
    let outlier = OutlierConfig {
        consecutive_failures: None,
        max_ejection_percent: 50,
        ..OutlierConfig::default()
    };
    let c = cluster(outlier, 6);
    let events = interval_of(&c, &[0, 2, 1, 60, 0, 3], secs(10));
    assert_eq!(events.len(), 1, "{events:?}");
    let HealthEvent::Ejected {
        endpoint: 3,
        reason: EjectionReason::SuccessRate { rate, threshold },
        ..
    } = events[0]
    else {
        panic!("{events:?}")
    };
    assert!((rate - 0.7).abs() < 1e-9);
    assert!(threshold > 0.7 && threshold < 0.99, "{threshold}");

    // Not enough endpoints with volume: min_hosts is 5.
    let c = cluster(outlier, 6);
    for i in 0..4 {
        record(&c, i, secs(1), 200, if i == 3 { FAIL } else { OK });
    }
    record(&c, 4, secs(1), 99, OK);
    assert!(
        c.evaluate(secs(10)).is_empty(),
        "only 4 endpoints had 100 requests"
    );
}

#[test]
fn failure_rate_rule_ejects_above_a_fixed_threshold_worst_first() {
    let outlier = OutlierConfig {
        consecutive_failures: None,
        success_rate: None,
        failure_rate: Some(FailureRateRule {
            threshold: 0.5,
            ..FailureRateRule::default()
        }),
        max_ejection_percent: 20,
        ..OutlierConfig::default()
    };
    let c = cluster(outlier, 6);
    let events = interval_of(&c, &[100, 0, 180, 0, 0, 0], secs(10));
    assert_eq!(events.len(), 1, "the cap allows one: {events:?}");
    assert!(
        matches!(
            events[0],
            HealthEvent::Ejected {
                endpoint: 2,
                reason: EjectionReason::FailureRate { .. },
                ..
            }
        ),
        "the worse endpoint goes first: {events:?}"
    );
    assert!(
        interval_of(&c, &[0; 6], secs(15)).is_empty(),
        "rules run once per interval"
    );
}

#[test]
fn panic_mode_routes_to_all_when_two_of_three_are_bad_and_ends_when_they_heal() {
    let outlier = OutlierConfig {
        max_ejection_percent: 50,
        ..OutlierConfig::default()
    };
    let c = cluster(outlier, 3);
    let mut events = Vec::new();
    for t in 0..5 {
        record(&c, 0, secs(t), 100, OK);
        events.extend(record(&c, 1, secs(t), 100, FAIL));
        events.extend(record(&c, 2, secs(t), 100, FAIL));
        events.extend(c.evaluate(secs(t)));
    }
    assert_eq!(
        c.ejected_count(),
        1,
        "the cap holds one of the two bad ones"
    );
    let panic = events
        .iter()
        .find(|e| e.kind() == "panic_entered")
        .expect("panic");
    let HealthEvent::PanicEntered { healthy_share } = *panic else {
        unreachable!()
    };
    assert!((healthy_share - 1.05 / 3.0).abs() < 1e-9, "{healthy_share}");
    assert!(c.in_panic());
    for i in 0..3 {
        assert_eq!(
            c.effective_multiplier(i, secs(5)),
            1.0,
            "panic routes to all"
        );
    }

    // Both heal at 5 s. The ejected one is readmitted at 31 s and both ramp
    // back; panic ends once the healthy share is 0.55 or more, i.e. once
    // the weighted-down one is back to 0.65 (~9 s up its ramp).
    let mut left = None;
    for t in 5..60 {
        for i in 0..3 {
            record(&c, i, secs(t), 100, OK);
        }
        for e in c.evaluate(secs(t)) {
            if e.kind() == "panic_left" {
                left = Some((t, e));
            }
        }
    }
    let (t, event) = left.expect("panic ends");
    let HealthEvent::PanicLeft { healthy_share } = event else {
        unreachable!()
    };
    assert!(healthy_share >= 0.55, "{healthy_share}");
    assert!(
        (12..18).contains(&t),
        "the weighted-down one ramps from 5 s: {t}"
    );
    assert!(!c.in_panic());
    assert_eq!(c.effective_multiplier(1, secs(59)), 1.0);
    assert_eq!(c.effective_multiplier(2, secs(59)), 1.0);
}

#[test]
fn one_bad_endpoint_of_three_is_no_panic() {
    let c = cluster(OutlierConfig::default(), 3);
    for t in 0..5 {
        record(&c, 0, secs(t), 100, OK);
        record(&c, 1, secs(t), 100, OK);
        record(&c, 2, secs(t), 100, FAIL);
        assert!(c.evaluate(secs(t)).iter().all(|e| e.kind() == "ejected"));
    }
    assert!(!c.in_panic());
    assert_eq!(c.effective_multiplier(2, secs(5)), 0.0);
}

#[test]
fn carry_over_keeps_state_across_endpoint_changes() {
    let c = cluster(consecutive_only(50), 3);
    record(&c, 1, secs(1), 5, FAIL);
    record(&c, 0, secs(1), 3, FAIL);
    // New list: old 1, a new endpoint, old 0.
    let next = c
        .carry_over(*c.config(), &[Some(1), None, Some(0), Some(7)])
        .unwrap();
    assert_eq!(next.len(), 4);
    assert!(next.is_ejected(0), "still ejected");
    assert!(!next.is_ejected(1) && !next.is_ejected(3));
    assert_eq!(
        next.endpoint(2).consecutive_failures(),
        3,
        "old 0's history"
    );
    assert_eq!(
        next.effective_multiplier(1, secs(1)),
        1.0,
        "a new endpoint starts fresh"
    );
    assert_eq!(
        next.evaluate(secs(31)),
        [HealthEvent::Readmitted { endpoint: 0 }]
    );
}

#[test]
fn events_read_well_in_logs() {
    let lines: Vec<String> = [
        HealthEvent::Ejected {
            endpoint: 2,
            reason: EjectionReason::ConsecutiveFailures(5),
            duration: secs(60),
            times: 2,
        },
        HealthEvent::Ejected {
            endpoint: 1,
            reason: EjectionReason::SuccessRate {
                rate: 0.7,
                threshold: 0.912,
            },
            duration: secs(30),
            times: 1,
        },
        HealthEvent::Readmitted { endpoint: 2 },
        HealthEvent::PanicEntered {
            healthy_share: 0.35,
        },
        HealthEvent::PanicLeft { healthy_share: 0.6 },
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(
        lines,
        [
            "endpoint 2 ejected for 60s (ejection 2): 5 consecutive failures",
            "endpoint 1 ejected for 30s (ejection 1): success rate 70.0% below the cluster's threshold 91.2%",
            "endpoint 2 readmitted into the recovery ramp",
            "panic mode: healthy share 35%, routing to every endpoint",
            "panic mode over: healthy share 60%",
        ]
    );
}

#[test]
fn outlier_config_errors_name_the_field() {
    let d = OutlierConfig::default();
    let bad = [
        (
            OutlierConfig {
                consecutive_failures: Some(0),
                ..d
            },
            "outlier.consecutive_failures",
        ),
        (
            OutlierConfig {
                interval: Duration::ZERO,
                ..d
            },
            "outlier.interval",
        ),
        (
            OutlierConfig {
                base_ejection_time: Duration::ZERO,
                ..d
            },
            "outlier.base_ejection_time",
        ),
        (
            OutlierConfig {
                max_ejection_time: secs(10),
                ..d
            },
            "outlier.max_ejection_time",
        ),
        (
            OutlierConfig {
                max_ejection_percent: 101,
                ..d
            },
            "outlier.max_ejection_percent",
        ),
        (
            OutlierConfig {
                success_rate: Some(SuccessRateRule {
                    min_hosts: 1,
                    ..Default::default()
                }),
                ..d
            },
            "outlier.success_rate.min_hosts",
        ),
        (
            OutlierConfig {
                failure_rate: Some(FailureRateRule {
                    threshold: 0.0,
                    ..Default::default()
                }),
                ..d
            },
            "outlier.failure_rate.threshold",
        ),
        (
            OutlierConfig {
                panic_threshold: 1.5,
                ..d
            },
            "outlier.panic_threshold",
        ),
    ];
    for (outlier, field) in bad {
        let config = HealthConfig {
            outlier,
            ..HealthConfig::default()
        };
        let err = ClusterHealth::new(config, 3).unwrap_err();
        assert_eq!(err.field(), field, "{err}");
    }
    let err = OutlierConfig {
        max_ejection_time: secs(10),
        ..d
    }
    .validate()
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "outlier.max_ejection_time: must be >= base_ejection_time (30s), got 10s"
    );
}
