use std::sync::atomic::AtomicU64;
use std::thread;

use proptest::prelude::*;

use super::*;

fn budget(ratio: f64, min_per_sec: u32, ttl_secs: u64) -> Budget {
    Budget::new(BudgetConfig {
        ratio,
        min_per_sec,
        ttl: Duration::from_secs(ttl_secs),
    })
    .unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn drain(b: &Budget, now: Duration) -> u64 {
    let mut n = 0;
    while b.try_withdraw(now) {
        n += 1;
        assert!(n < 1_000_000, "budget never runs out");
    }
    n
}

#[test]
fn reserve_allows_min_per_sec_with_no_traffic() {
    // 10/s over a 2 s window (slices of 200 ms): never more than two
    // slices' worth at once (the burst rule), 20 over the window.
    let b = budget(0.1, 10, 2);
    assert_eq!(b.available(ms(0)), 4);
    assert_eq!(drain(&b, ms(0)), 4, "min_per_sec x two slices at once");
    assert_eq!(b.available(ms(0)), 0);
    let mut total = 4;
    for slice in 1..10 {
        total += drain(&b, ms(slice * 200));
    }
    assert_eq!(total, 20, "min_per_sec x ttl over the window");
    assert_eq!(drain(&b, ms(2000)), 4, "and again as it moves");
}

#[test]
fn ratio_of_requests_on_top_of_the_reserve() {
    // Burst reserve: 10/s x two 100 ms slices = 2.
    let b = budget(0.1, 10, 1);
    for _ in 0..1000 {
        b.deposit(ms(5));
    }
    assert_eq!(drain(&b, ms(5)), 100 + 2);
    // One more request earns a tenth of an attempt: not enough.
    b.deposit(ms(6));
    assert!(!b.try_withdraw(ms(6)));
    for _ in 0..9 {
        b.deposit(ms(6));
    }
    assert!(b.try_withdraw(ms(6)));
}

#[test]
fn refills_as_the_window_moves() {
    // 5/s: one attempt per two 100 ms slices, five per second.
    let b = budget(0.0, 5, 1);
    let second = |from: u64| -> u64 { (0..10).map(|i| drain(&b, ms(from + i * 100))).sum() };
    assert_eq!(second(0), 5);
    assert_eq!(second(1000), 5);
    // Long idle: everything expired, nothing carried over.
    assert_eq!(drain(&b, ms(3_600_000)), 1);
}

#[test]
fn deposits_expire_with_the_window() {
    let b = budget(0.5, 0, 1);
    for _ in 0..10 {
        b.deposit(ms(0));
    }
    assert_eq!(b.available(ms(0)), 5);
    assert_eq!(
        b.available(ms(199)),
        5,
        "still in the burst rule's two slices"
    );
    assert_eq!(
        b.available(ms(200)),
        0,
        "credit is spent while it is recent: no saving up for a storm"
    );
    assert_eq!(b.available(ms(1000)), 0, "credit from a past window");
    assert!(!b.try_withdraw(ms(1000)));
}

#[test]
fn zero_ratio_and_zero_minimum_allow_nothing() {
    let b = budget(0.0, 0, 10);
    for _ in 0..1000 {
        b.deposit(ms(1));
    }
    assert!(!b.try_withdraw(ms(1)));
}

#[test]
fn min_per_sec_is_honoured_at_low_traffic() {
    // One request a second, and every moment someone wants to retry.
    let b = budget(0.1, 2, 10);
    let mut granted = 0;
    let secs = 120;
    for t in 0..secs * 10 {
        let now = ms(t * 100);
        if t % 10 == 0 {
            b.deposit(now);
        }
        granted += drain(&b, now);
    }
    let floor = 2 * secs;
    // ratio x deposits + reserve x (windows + 1)
    let ceiling = secs / 10 + 2 * 10 * (secs / 10 + 1);
    assert!(
        (floor..=ceiling).contains(&granted),
        "{granted} not in {floor}..={ceiling}"
    );
}

#[test]
fn concurrent_withdrawals_never_overspend() {
    let b = budget(0.1, 3, 10);
    let now = ms(500);
    let granted = AtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..10_000 {
                    b.deposit(now);
                    if i % 3 == 0 && b.try_withdraw(now) {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // 40 000 requests: 4 000 from the ratio, 6 from the reserve (3/s x two
    // 1 s slices). Every thread keeps trying after its deposits, so the
    // budget ends spent.
    let granted = granted.into_inner() + drain(&b, now);
    assert_eq!(granted, 4_000 + 6);
}

#[test]
fn invalid_configs_are_refused_with_the_reason() {
    let bad_ratio = BudgetConfig {
        ratio: 1.5,
        ..BudgetConfig::default()
    };
    assert_eq!(bad_ratio.validate(), Err(BudgetConfigError::Ratio(1.5)));
    assert!(
        Budget::new(bad_ratio)
            .unwrap_err()
            .to_string()
            .contains("between 0 and 1")
    );
    let nan = BudgetConfig {
        ratio: f64::NAN,
        ..BudgetConfig::default()
    };
    assert!(nan.validate().is_err());
    let short = BudgetConfig {
        ttl: ms(10),
        ..BudgetConfig::default()
    };
    assert_eq!(short.validate(), Err(BudgetConfigError::Ttl(ms(10))));
    assert_eq!(BudgetConfig::default().validate(), Ok(()));
    assert_eq!(BudgetConfig::default().reserve(), 100);
}

/// One step of a random arrival pattern.
#[derive(Debug, Clone)]
struct Step {
    gap_ms: u64,
    requests: u32,
    extra_attempts: u32,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = (
        prop_oneof![0u64..20, 0u64..500, 0u64..5_000],
        0u32..40,
        0u32..20,
    )
        .prop_map(|(gap_ms, requests, extra_attempts)| Step {
            gap_ms,
            requests,
            extra_attempts,
        });
    prop::collection::vec(step, 1..300)
}

fn config() -> impl Strategy<Value = BudgetConfig> {
    (
        prop::sample::select(vec![0.0, 0.05, 0.1, 0.25, 1.0]),
        0u32..4,
        1u64..6,
    )
        .prop_map(|(ratio, min_per_sec, ttl)| BudgetConfig {
            ratio,
            min_per_sec,
            ttl: Duration::from_secs(ttl),
        })
}

proptest! {
    /// The budget's promise, checked against a log of what it granted:
    /// over any window of one ttl, withdrawals <= ratio x (deposits of that
    /// window and of the ttl before it) + reserve; over the whole run,
    /// withdrawals <= ratio x deposits + reserve x (windows + 1); over any
    /// two slices, withdrawals <= ratio x (their deposits and the slice
    /// before's) + min_per_sec x two slices (the burst rule). And it is
    /// not stingier than its rule: it grants exactly when the live entries
    /// leave room.
    #[test]
    fn never_exceeded_over_any_window(cfg in config(), steps in steps()) {
        let b = Budget::new(cfg.clone()).unwrap();
        let slice = cfg.ttl.as_millis() as u64 / SLICES as u64;
        let ppm = u128::from(PPM);
        let ratio = (cfg.ratio * 1e6).round() as u128;
        let reserve = u128::from(cfg.reserve());
        let burst_reserve = u128::from(cfg.min_per_sec) * u128::from(slice) * u128::from(BURST_SLICES) * 1_000;
        let n = SLICES as u64;
        let mut deposits: Vec<u128> = Vec::new();
        let mut granted: Vec<u128> = Vec::new();
        let mut now = 0;
        for step in &steps {
            now += step.gap_ms;
            let s = (now / slice) as usize;
            deposits.resize(s + 1, 0);
            granted.resize(s + 1, 0);
            for _ in 0..step.requests {
                b.deposit(ms(now));
                deposits[s] += 1;
            }
            for _ in 0..step.extra_attempts {
                let lo = (s + 1).saturating_sub(SLICES);
                let live_d: u128 = deposits[lo..=s].iter().sum();
                let live_w: u128 = granted[lo..=s].iter().sum();
                let lb = (s + 1).saturating_sub(BURST_SLICES as usize);
                let recent_d: u128 = deposits[lb..=s].iter().sum();
                let recent_w: u128 = granted[lb..=s].iter().sum();
                let room = (live_w + 1) * ppm <= ratio * live_d + reserve * ppm
                    && (recent_w + 1) * ppm <= ratio * recent_d + burst_reserve;
                let got = b.try_withdraw(ms(now));
                prop_assert_eq!(got, room, "at {}ms: live d={} w={}", now, live_d, live_w);
                if got {
                    granted[s] += 1;
                }
            }
        }
        let last = deposits.len() as u64;
        for a in 0..last {
            let w: u128 = (a..(a + n).min(last)).map(|i| granted[i as usize]).sum();
            let d: u128 = (a.saturating_sub(n - 1)..(a + n).min(last))
                .map(|i| deposits[i as usize])
                .sum();
            prop_assert!(w * ppm <= ratio * d + reserve * ppm, "window from slice {}: w={} d={}", a, w, d);
        }
        for a in 0..last {
            let hi = (a + BURST_SLICES).min(last);
            let w: u128 = (a..hi).map(|i| granted[i as usize]).sum();
            // Credit may come from the slice before: the last withdrawal of
            // slice a looked at slices a - 1 and a.
            let d: u128 = (a.saturating_sub(1)..hi).map(|i| deposits[i as usize]).sum();
            prop_assert!(w * ppm <= ratio * d + burst_reserve, "burst from slice {}: w={} d={}", a, w, d);
        }
        let w: u128 = granted.iter().sum();
        let d: u128 = deposits.iter().sum();
        let windows = u128::from(last / n + 1);
        prop_assert!(w * ppm <= ratio * d + reserve * windows * ppm, "run: w={} d={}", w, d);
    }
}
