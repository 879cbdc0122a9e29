use proptest::prelude::*;

use super::*;
use crate::rng::SplitMix64;

const DRAWS: u32 = 10_000;

/// Asserts `hits` out of `n` Bernoulli(`p`) draws is within 4 sigma of
/// `n x p` (a seeded generator, so this is deterministic; the tolerance
/// says the seed is not a lucky one).
fn assert_within_4_sigma(hits: u32, n: u32, p: f64, what: &str) {
    let n = f64::from(n);
    let mean = n * p;
    let sigma = (n * p * (1.0 - p)).sqrt();
    let hits = f64::from(hits);
    assert!(
        (hits - mean).abs() <= 4.0 * sigma + 1.0,
        "{what}: {hits} hits, expected {mean} +- {}",
        4.0 * sigma
    );
}

/// Counts the draws it hands out, to check that certain outcomes cost none.
struct Counting(SplitMix64, u32);

impl Random for Counting {
    fn next_u64(&mut self) -> u64 {
        self.1 += 1;
        self.0.next_u64()
    }
}

#[test]
fn drop_ratio_drops_its_share() {
    for (seed, ratio) in [0.001, 0.01, 0.1, 0.25, 0.5, 0.9, 0.999]
        .into_iter()
        .enumerate()
    {
        let rule = DropRatio {
            ratio,
            dry_run: false,
        };
        let mut rng = SplitMix64::new(seed as u64 + 1);
        let dropped = (0..DRAWS)
            .filter(|_| rule.decide(&mut rng).should_drop())
            .count() as u32;
        assert_within_4_sigma(dropped, DRAWS, ratio, &format!("dropRatio {ratio}"));
    }
}

#[test]
fn drop_ratio_zero_and_one_are_exact_and_draw_nothing() {
    let mut rng = Counting(SplitMix64::new(3), 0);
    for _ in 0..100_000 {
        let none = DropRatio::NONE.decide(&mut rng);
        assert!(!none.selected && !none.should_drop());
        let all = DropRatio::deny_all().decide(&mut rng);
        assert!(all.selected && all.should_drop());
    }
    assert_eq!(rng.1, 0);
}

#[test]
fn dry_run_selects_the_same_share_but_drops_nothing() {
    let live = DropRatio {
        ratio: 0.3,
        dry_run: false,
    };
    let dry = DropRatio {
        dry_run: true,
        ..live
    };
    let (mut a, mut b) = (SplitMix64::new(9), SplitMix64::new(9));
    let mut would_drop = 0;
    for _ in 0..DRAWS {
        let (l, d) = (live.decide(&mut a), dry.decide(&mut b));
        assert_eq!(l.selected, d.selected, "same draw, same selection");
        assert!(d.dry_run && !d.should_drop());
        would_drop += u32::from(d.selected);
    }
    assert_within_4_sigma(would_drop, DRAWS, 0.3, "dry-run counted");
    // A full dry run denies nobody either.
    let dry_all = DropRatio {
        dry_run: true,
        ..DropRatio::deny_all()
    };
    assert!(!dry_all.decide(&mut a).should_drop());
}

#[test]
fn invalid_drop_ratios_are_refused_by_name() {
    for ratio in [-0.1, 1.000_001, 2.0, f64::NAN, f64::INFINITY, -0.0 - 1e-300] {
        let err = DropRatio {
            ratio,
            dry_run: false,
        }
        .validate()
        .unwrap_err();
        assert!(matches!(err, AdmissionConfigError::DropRatio(_)), "{err}");
        assert!(err.to_string().contains("dropRatio"), "{err}");
    }
    for ratio in [0.0, 0.5, 1.0] {
        let rule = DropRatio {
            ratio,
            dry_run: true,
        };
        assert_eq!(rule.validate(), Ok(()));
    }
}

fn fault(delay_pct: f64, abort_pct: f64) -> Fault {
    Fault {
        delay: Some(DelayFault {
            delay: Duration::from_millis(250),
            percentage: delay_pct,
        }),
        abort: Some(AbortFault {
            abort: Abort::Grpc(14),
            percentage: abort_pct,
        }),
    }
}

#[test]
fn fault_percentages_hold_and_the_draws_are_independent() {
    let f = fault(30.0, 10.0);
    f.validate().unwrap();
    let mut rng = SplitMix64::new(42);
    let (mut delayed, mut aborted, mut both) = (0, 0, 0);
    for _ in 0..DRAWS {
        let action = f.decide(&mut rng);
        if let Some(d) = action.delay {
            assert_eq!(d, Duration::from_millis(250));
            delayed += 1;
        }
        if let Some(a) = action.abort {
            assert_eq!(a, Abort::Grpc(14));
            aborted += 1;
        }
        both += u32::from(action.delay.is_some() && action.abort.is_some());
    }
    assert_within_4_sigma(delayed, DRAWS, 0.3, "delay 30%");
    assert_within_4_sigma(aborted, DRAWS, 0.1, "abort 10%");
    assert_within_4_sigma(both, DRAWS, 0.03, "both: 30% x 10%");
}

#[test]
fn fault_at_0_and_100_percent_is_exact() {
    let mut rng = Counting(SplitMix64::new(5), 0);
    let always = fault(100.0, 100.0);
    let never = fault(0.0, 0.0);
    let delay_only = Fault {
        abort: None,
        ..always
    };
    for _ in 0..10_000 {
        let a = always.decide(&mut rng);
        assert_eq!(a.delay, Some(Duration::from_millis(250)));
        assert_eq!(a.abort, Some(Abort::Grpc(14)));
        assert!(never.decide(&mut rng).is_none());
        assert!(Fault::default().decide(&mut rng).is_none());
        assert_eq!(delay_only.decide(&mut rng).abort, None);
    }
    assert_eq!(rng.1, 0, "certain outcomes draw nothing");
}

#[test]
fn invalid_faults_are_refused_by_name() {
    let cases: Vec<(Fault, &str)> = vec![
        (fault(-1.0, 10.0), "delay percentage"),
        (fault(100.5, 10.0), "delay percentage"),
        (fault(f64::NAN, 10.0), "delay percentage"),
        (fault(10.0, -0.5), "abort percentage"),
        (fault(10.0, 101.0), "abort percentage"),
        (fault(10.0, f64::INFINITY), "abort percentage"),
        (
            Fault {
                delay: Some(DelayFault {
                    delay: MAX_FAULT_DELAY + Duration::from_millis(1),
                    percentage: 10.0,
                }),
                abort: None,
            },
            "delay duration",
        ),
    ];
    let mut cases = cases;
    for status in [0, 199, 600, 999] {
        let mut f = fault(10.0, 10.0);
        f.abort.as_mut().unwrap().abort = Abort::Http(status);
        cases.push((f, "httpStatus"));
    }
    for code in [0, 17, 100] {
        let mut f = fault(10.0, 10.0);
        f.abort.as_mut().unwrap().abort = Abort::Grpc(code);
        cases.push((f, "grpcStatus"));
    }
    for (f, field) in cases {
        let err = f.validate().unwrap_err();
        assert!(err.to_string().contains(field), "{field}: {err}");
    }
    let mut edges = vec![Fault::default(), fault(0.0, 100.0)];
    for abort in [
        Abort::Http(200),
        Abort::Http(599),
        Abort::Grpc(1),
        Abort::Grpc(16),
    ] {
        let mut f = fault(100.0, 0.0);
        f.abort.as_mut().unwrap().abort = abort;
        f.delay.as_mut().unwrap().delay = MAX_FAULT_DELAY;
        edges.push(f);
    }
    for f in edges {
        assert_eq!(f.validate(), Ok(()), "{f:?}");
    }
}

fn percentage() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0), Just(100.0), 0.0f64..=100.0]
}

proptest! {
    /// Whatever the valid configuration and seed, a fault never injects
    /// what it does not configure, and a drop rule in dry run never drops.
    #[test]
    fn decisions_stay_within_the_configuration(
        delay in prop::option::of(percentage()),
        abort in prop::option::of(percentage()),
        ratio in 0.0f64..=1.0,
        seed in any::<u64>(),
    ) {
        let f = Fault {
            delay: delay.map(|percentage| DelayFault {
                delay: Duration::from_millis(7),
                percentage,
            }),
            abort: abort.map(|percentage| AbortFault {
                abort: Abort::Http(503),
                percentage,
            }),
        };
        prop_assert_eq!(f.validate(), Ok(()));
        let mut rng = SplitMix64::new(seed);
        for _ in 0..64 {
            let action = f.decide(&mut rng);
            let never = |p: Option<f64>| p.is_none_or(|p| p == 0.0);
            let always = |p: Option<f64>| p == Some(100.0);
            if never(delay) {
                prop_assert_eq!(action.delay, None);
            }
            if always(delay) {
                prop_assert_eq!(action.delay, Some(Duration::from_millis(7)));
            }
            if never(abort) {
                prop_assert_eq!(action.abort, None);
            }
            if always(abort) {
                prop_assert_eq!(action.abort, Some(Abort::Http(503)));
            }
            let dry = DropRatio { ratio, dry_run: true };
            prop_assert!(!dry.decide(&mut rng).should_drop());
        }
    }
}
