//! The scenario on a simulated clock: three equal endpoints at
//! 1000 requests/s; from t = 10 s endpoint B answers half its requests with
//! business code 5003; at t = 30 s it heals. Clients retry a failed attempt
//! once, on a fresh pick.

use std::time::Duration;

use crate::health::*;
use crate::rng::{Random, SplitMix64};

const B: usize = 1;
const FAIL_FROM: u64 = 10_000;
const HEAL_AT: u64 = 30_000;
const END: u64 = 60_000;
/// One request per millisecond.
const STEP_MS: u64 = 1;
const EVALUATE_EVERY_MS: u64 = 100;

#[derive(Debug, Default, Clone)]
struct Second {
    attempts: [u32; 3],
    requests: u32,
    failed_requests: u32,
    failed_attempts: u32,
    b_multiplier_at_end: f64,
    events: Vec<String>,
}

struct Run {
    seconds: Vec<Second>,
    /// When B's pushed multiplier first fell below 0.2 after the fault.
    cut_at: Option<Duration>,
    /// When it first climbed back to 0.95 after healing.
    recovered_at: Option<Duration>,
}

impl Run {
    fn b_share(&self, second: usize) -> f64 {
        let s = &self.seconds[second];
        f64::from(s.attempts[B]) / f64::from(s.attempts.iter().sum::<u32>())
    }

    fn success(&self, from: usize, to: usize) -> f64 {
        let (req, failed) = self.seconds[from..to]
            .iter()
            .fold((0, 0), |(r, f), s| (r + s.requests, f + s.failed_requests));
        1.0 - f64::from(failed) / f64::from(req)
    }

    /// B's mean share over whole seconds `from..to`.
    fn mean_b_share(&self, from: usize, to: usize) -> f64 {
        (from..to).map(|t| self.b_share(t)).sum::<f64>() / (to - from) as f64
    }

    fn table(&self, title: &str, rows: impl Iterator<Item = usize>) -> String {
        let mut out = format!(
            "{title}: B's multiplier below 0.2 at {:?}, back to 0.95 at {:?}; \
             client success 10-30 s {:.3}%\n\n\
             | t (s) | B multiplier (end) | B share | attempts failed | client success | events |\n\
             |---|---|---|---|---|---|\n",
            self.cut_at.unwrap_or_default(),
            self.recovered_at.unwrap_or_default(),
            self.success(10, 30) * 100.0,
        );
        for t in rows {
            let s = &self.seconds[t];
            let attempts: u32 = s.attempts.iter().sum();
            out += &format!(
                "| {t}-{} | {:.3} | {:.1}% | {:.2}% | {:.3}% | {} |\n",
                t + 1,
                s.b_multiplier_at_end,
                self.b_share(t) * 100.0,
                f64::from(s.failed_attempts) / f64::from(attempts) * 100.0,
                (1.0 - f64::from(s.failed_requests) / f64::from(s.requests)) * 100.0,
                s.events.join("; ")
            );
        }
        out
    }
}

fn classifier() -> Classifier {
    let codes = FailureCodes {
        header: Some(HeaderRule::parse("x-biz-code", &["5003"]).unwrap()),
        ..FailureCodes::default()
    };
    Classifier::new(&codes).unwrap()
}

fn pick(rng: &mut SplitMix64, multipliers: &[f64]) -> usize {
    let total: f64 = multipliers.iter().sum();
    let mut x = rng.next_f64() * total;
    for (i, m) in multipliers.iter().enumerate() {
        if x < *m {
            return i;
        }
        x -= m;
    }
    multipliers.len() - 1
}

/// Runs the scenario. The balancer is weighted random over equal base
/// weights times the multipliers last pushed to it (after every record and
/// every evaluate tick), as the proxy would push them.
fn simulate(config: HealthConfig, seed: u64) -> Run {
    simulate_with(config, seed, 0.5, 0.0)
}

fn simulate_with(config: HealthConfig, seed: u64, b_fail: f64, background: f64) -> Run {
    let cluster = ClusterHealth::new(config, 3).unwrap();
    let classifier = classifier();
    let mut rng = SplitMix64::new(seed);
    let mut pushed = [1.0; 3];
    let mut seconds = vec![Second::default(); (END / 1000) as usize];
    let (mut cut_at, mut recovered_at) = (None, None);
    for ms in (0..END).step_by(STEP_MS as usize) {
        let now = Duration::from_millis(ms);
        let sec = &mut seconds[(ms / 1000) as usize];
        if ms % EVALUATE_EVERY_MS == 0 {
            for e in cluster.evaluate(now) {
                sec.events.push(format!("{e}"));
            }
            for (i, m) in pushed.iter_mut().enumerate() {
                *m = cluster.effective_multiplier(i, now);
            }
        }
        sec.requests += 1;
        let mut ok = false;
        for _attempt in 0..2 {
            let i = pick(&mut rng, &pushed);
            sec.attempts[i] += 1;
            let x = rng.next_f64();
            let bad = (i == B && (FAIL_FROM..HEAL_AT).contains(&ms) && x < b_fail)
                || x >= 1.0 - background;
            let code = if bad { "5003" } else { "0" };
            let obs = Observation::response(200, Duration::from_millis(5)).with_header_code(code);
            let r = cluster.record(i, now, &classifier.classify(&obs));
            pushed[i] = r.effective_multiplier;
            if let Some(e) = r.event {
                sec.events.push(format!("{e}"));
            }
            if !bad {
                ok = true;
                break;
            }
            sec.failed_attempts += 1;
        }
        if !ok {
            sec.failed_requests += 1;
        }
        if ms >= FAIL_FROM && cut_at.is_none() && pushed[B] < 0.2 {
            cut_at = Some(now);
        }
        if ms >= HEAL_AT && recovered_at.is_none() && pushed[B] >= 0.95 {
            recovered_at = Some(now);
        }
        if ms % 1000 == 999 {
            sec.b_multiplier_at_end = cluster.effective_multiplier(B, now);
        }
    }
    Run {
        seconds,
        cut_at,
        recovered_at,
    }
}

fn rows() -> impl Iterator<Item = usize> {
    (8..14)
        .chain([15, 20, 25, 29])
        .chain(30..36)
        .chain([38, 40, 41, 42, 45, 50, 52, 55])
}

#[test]
fn business_code_on_half_of_bs_requests_weights_it_down_within_a_second_and_it_recovers() {
    // Re-weighting alone, no ejection: the path Envoy does not have.
    let config = HealthConfig {
        outlier: OutlierConfig::disabled(),
        ..HealthConfig::default()
    };
    let run = simulate(config, 7);
    eprintln!(
        "{}",
        run.table("re-weighting only (OutlierConfig::disabled)", rows())
    );

    assert!(
        (0.30..0.37).contains(&run.mean_b_share(0, 10)),
        "equal shares before the fault"
    );
    let cut = run.cut_at.unwrap() - Duration::from_millis(FAIL_FROM);
    assert!(
        cut < Duration::from_secs(1),
        "B cut below 20% within 1 s: {cut:?}"
    );
    for t in 11..30 {
        // 20 % of its old 1/3 share.
        assert!(run.b_share(t) < 1.0 / 15.0, "B's share stays down at {t} s");
    }
    let success = run.success(10, 30);
    assert!(success >= 0.999, "client success with one retry: {success}");
    assert!(run.b_share(33) < 0.25, "the way back is a ramp, not a jump");
    // Healed at 30 s: full share back within recovery_time (10 s) plus
    // the score's own settling (a couple of half-lives).
    let back = run.recovered_at.unwrap() - Duration::from_millis(HEAL_AT);
    assert!(
        back <= Duration::from_secs(11),
        "recovery_time plus settling: {back:?}"
    );
    assert_recovered(&run, 42);
}

/// B's share is ~1/3 from second `from` on. One second holds 1000 requests,
/// so a share's sampling noise alone is ~1.5 %.
fn assert_recovered(run: &Run, from: usize) {
    let end = run.seconds.len();
    let mean = run.mean_b_share(from, end);
    assert!(
        (0.31..0.36).contains(&mean),
        "B back to ~1/3 from {from} s: {mean}"
    );
    for t in from..end {
        let share = run.b_share(t);
        assert!((0.27..0.40).contains(&share), "B's share at {t} s: {share}");
    }
}

#[test]
fn with_default_outlier_detection_b_is_ejected_then_readmitted_into_the_ramp() {
    let run = simulate(HealthConfig::default(), 7);
    eprintln!(
        "{}",
        run.table("default config (re-weighting + outlier detection)", rows())
    );

    assert!(run.cut_at.unwrap() < Duration::from_millis(FAIL_FROM + 1000));
    let ejected = run.seconds[10].events.iter().any(|e| e.contains("ejected"));
    assert!(
        ejected,
        "consecutive failures eject B in its first bad second"
    );
    assert!(run.success(10, 30) >= 0.999);
    let readmitted = run.seconds[40..42]
        .iter()
        .any(|s| s.events.iter().any(|e| e.contains("readmitted")));
    assert!(readmitted, "readmitted after the 30 s base ejection time");
    assert!(
        run.b_share(41) < 0.2,
        "readmission enters the ramp, not full weight"
    );
    // Readmitted at ~40 s, full weight one recovery_time later.
    assert_recovered(&run, 51);
}

#[test]
fn the_same_background_failure_rate_everywhere_moves_no_traffic() {
    // 2 % of every endpoint's requests fail (say, bad requests the config
    // counts as failures): nothing to route around, shares stay equal.
    // Per second, sampling alone moves a share by ~1.5 % (sd); noise in the
    // scores adds an occasional shallow dip. The first seconds, before
    // there is much evidence, may be more uneven.
    let run = simulate_with(HealthConfig::default(), 11, 0.0, 0.02);
    let mean = run.mean_b_share(0, run.seconds.len());
    assert!((0.32..0.35).contains(&mean), "{mean}");
    for (t, s) in run.seconds.iter().enumerate().skip(2) {
        let total = f64::from(s.attempts.iter().sum::<u32>());
        for (i, &a) in s.attempts.iter().enumerate() {
            let share = f64::from(a) / total;
            assert!(
                (0.25..0.42).contains(&share),
                "endpoint {i} at {t} s: {share}"
            );
        }
    }
}

#[test]
fn a_mildly_failing_endpoint_loses_share_in_proportion() {
    let share_at = |b_fail| {
        let config = HealthConfig {
            outlier: OutlierConfig::disabled(),
            ..HealthConfig::default()
        };
        simulate_with(config, 3, b_fail, 0.0).mean_b_share(15, 30)
    };
    let (two, five, ten) = (share_at(0.02), share_at(0.05), share_at(0.10));
    eprintln!("B's share while failing 2 %: {two:.3}, 5 %: {five:.3}, 10 %: {ten:.3}");
    assert!(two > five && five > ten, "{two} {five} {ten}");
    assert!((0.15..0.33).contains(&two), "2 %: {two}");
    assert!((0.05..0.2).contains(&ten), "10 %: {ten}");
}
