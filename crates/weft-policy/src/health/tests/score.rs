use std::sync::Arc;
use std::time::Duration;

use crate::health::*;

const FAIL: Verdict = Verdict::Failure(FailureReason::HttpStatus(503));
const OK: Verdict = Verdict::Success;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn endpoint() -> EndpointHealth {
    EndpointHealth::new(ScoreConfig::default()).unwrap()
}

/// Feeds `per_second` requests a second from `from` to `to` (ms), failing
/// every `fail_every`-th one (0: none), and returns the time after.
fn feed(e: &EndpointHealth, from: u64, to: u64, per_second: u64, fail_every: u64) -> Duration {
    let step = 1000 / per_second;
    for (n, t) in (from..to).step_by(step as usize).enumerate() {
        let fail = fail_every > 0 && n as u64 % fail_every == fail_every - 1;
        e.record(ms(t), if fail { &FAIL } else { &OK });
    }
    ms(to)
}

#[test]
fn a_new_endpoint_has_full_weight() {
    let e = endpoint();
    assert_eq!(e.weight_multiplier(ms(0)), 1.0);
    assert_eq!(e.weight_multiplier(ms(60_000)), 1.0);
    assert_eq!(e.success_rate(ms(0)), 1.0);
}

#[test]
fn failures_cut_at_once_and_recovery_climbs_a_ramp() {
    let e = endpoint();
    feed(&e, 0, 5_000, 200, 0);
    // Every request fails: after 200 ms the cut is deep, after 500 ms it
    // is at the floor.
    let now = feed(&e, 5_000, 5_200, 200, 1);
    let cut = e.weight_multiplier(now);
    assert!(cut < 0.15, "deep cut within 200 ms: {cut}");
    let now = feed(&e, 5_200, 5_500, 200, 1);
    let cut = e.weight_multiplier(now);
    assert_eq!(cut, 0.05, "floor within 500 ms");
    // Healthy again: the weight climbs no faster than the ramp (x20 in
    // 10 s, from the floor to 1) nor than the score clears.
    let mut last = cut;
    for second in 1..=12u64 {
        let now = feed(
            &e,
            5_500 + (second - 1) * 1000,
            5_500 + second * 1000,
            200,
            0,
        );
        let m = e.weight_multiplier(now);
        let ramp = 0.05 * 20f64.powf(second as f64 / 10.0);
        assert!(m >= last, "never falls while succeeding: {m} < {last}");
        assert!(
            m <= ramp + 1e-9,
            "no faster than the ramp at {second} s: {m} > {ramp}"
        );
        last = m;
    }
    assert_eq!(last, 1.0, "full weight after recovery_time and settling");
}

#[test]
fn a_steady_failure_rate_sets_a_proportionate_weight() {
    // 300 requests/s, run long enough for the score to settle.
    let weight_at = |fail_every| {
        let e = endpoint();
        let now = feed(&e, 0, 20_000, 250, fail_every);
        e.weight_multiplier(now)
    };
    let (none, one_pct, five_pct, twenty_pct) =
        (weight_at(0), weight_at(100), weight_at(20), weight_at(5));
    assert_eq!(none, 1.0);
    assert_eq!(one_pct, 1.0, "within the tolerated 1 %");
    assert!((0.1..0.5).contains(&five_pct), "5 %: {five_pct}");
    assert!(twenty_pct < 0.1, "20 %: {twenty_pct}");
}

#[test]
fn one_failure_on_a_quiet_endpoint_costs_little() {
    let e = endpoint();
    // One request a second, then a single failure.
    feed(&e, 0, 10_000, 1, 0);
    let m = e.record(ms(10_000), &FAIL);
    assert!(m > 0.5, "a single failure is not proof: {m}");
    // Five in a row are.
    for t in 1..5 {
        e.record(ms(10_000 + t * 1000), &FAIL);
    }
    let m = e.weight_multiplier(ms(14_000));
    assert!(m < 0.3, "five failures in a row on a quiet endpoint: {m}");
    assert_eq!(e.consecutive_failures(), 5);
    e.record(ms(15_000), &OK);
    assert_eq!(e.consecutive_failures(), 0);
}

#[test]
fn the_floor_keeps_probe_traffic() {
    let e = endpoint();
    let now = feed(&e, 0, 10_000, 500, 1);
    assert_eq!(e.weight_multiplier(now), 0.05);
    assert!(e.success_rate(now) < 0.02, "all failed, but for the prior");
}

#[test]
fn ignored_attempts_change_nothing() {
    let e = endpoint();
    feed(&e, 0, 1_000, 100, 2);
    let (m, s) = (e.weight_multiplier(ms(1_000)), e.success_rate(ms(1_000)));
    for _ in 0..1000 {
        e.record(ms(1_000), &Verdict::Ignored);
    }
    assert_eq!(e.weight_multiplier(ms(1_000)), m);
    assert_eq!(e.success_rate(ms(1_000)), s);
}

#[test]
fn late_timestamps_from_concurrent_requests_are_harmless() {
    let e = endpoint();
    e.record(ms(1_000), &FAIL);
    // A response timed before the last one.
    let m = e.record(ms(900), &OK);
    assert!(m.is_finite() && (0.05..=1.0).contains(&m));
    assert!(e.weight_multiplier(ms(800)) <= 1.0);
}

#[test]
fn concurrent_records_from_many_threads_all_count() {
    let e = Arc::new(endpoint());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let e = Arc::clone(&e);
            std::thread::spawn(move || {
                for i in 0..2_000 {
                    e.record(ms(1_000), if i % 2 == 0 { &FAIL } else { &OK });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 8000 attempts at one instant, half failed (plus the 10-request prior).
    let rate = 1.0 - e.success_rate(ms(1_000));
    assert!((rate - 4000.0 / 8010.0).abs() < 1e-9, "{rate}");
}

#[test]
fn score_config_errors_name_the_field() {
    let bad = [
        (
            ScoreConfig {
                half_life: Duration::ZERO,
                ..Default::default()
            },
            "score.half_life: must be > 0",
        ),
        (
            ScoreConfig {
                prior_requests: f64::NAN,
                ..Default::default()
            },
            "score.prior_requests",
        ),
        (
            ScoreConfig {
                tolerated_failure_rate: 1.0,
                ..Default::default()
            },
            "score.tolerated_failure_rate: must be in [0, 1), got 1",
        ),
        (
            ScoreConfig {
                failure_penalty: -1.0,
                ..Default::default()
            },
            "score.failure_penalty",
        ),
        (
            ScoreConfig {
                min_multiplier: 0.0,
                ..Default::default()
            },
            "score.min_multiplier: must be in (0, 1] so a weighted-down endpoint keeps probe traffic, got 0",
        ),
        (
            ScoreConfig {
                recovery_time: Duration::ZERO,
                ..Default::default()
            },
            "score.recovery_time",
        ),
    ];
    for (config, message) in bad {
        let err = EndpointHealth::new(config).unwrap_err().to_string();
        assert!(
            err.starts_with(message),
            "{err:?} should start with {message:?}"
        );
    }
}
