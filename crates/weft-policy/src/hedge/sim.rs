//! Hedging on a simulated clock: Poisson arrivals, per-attempt latencies
//! drawn independently (a backup goes to a different endpoint), the first
//! response wins. Deterministic for a seed. The tables are printed for
//! BENCHMARKS.md (`cargo test -p weft-policy hedge::sim -- --nocapture`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::budget::{Budget, BudgetConfig};
use crate::rng::{Random, SplitMix64};

const RPS: f64 = 1000.0;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Log-normal around `median_ms` (sigma 0.25: p99 about 1.8x the median).
fn lognormal(rng: &mut SplitMix64, median_ms: f64) -> Duration {
    let u1 = 1.0 - rng.next_f64();
    let u2 = rng.next_f64();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    Duration::from_secs_f64(median_ms * (0.25 * z).exp() / 1e3)
}

/// The long tail of the issue: 2% of responses 100x slower than the median
/// (5 ms and 500 ms).
fn long_tail(rng: &mut SplitMix64, _now: Duration) -> Duration {
    let median = if rng.next_f64() < 0.02 { 500.0 } else { 5.0 };
    lognormal(rng, median)
}

/// The long tail, except that every response is slow in `[from, to)`.
fn outage(from: Duration, to: Duration) -> impl Fn(&mut SplitMix64, Duration) -> Duration {
    move |rng, now| {
        if (from..to).contains(&now) {
            lognormal(rng, 500.0)
        } else {
            long_tail(rng, now)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Fire(usize),
    Done(usize),
}

#[derive(Debug, Clone, Copy)]
struct Request {
    start: Duration,
    /// When the returned response arrived (the original's, known to the
    /// simulation in advance, unless a backup beat it).
    finish: Duration,
    winner: Winner,
    backups: u32,
}

/// What a run produced.
#[derive(Debug, Default)]
struct Run {
    requests: Vec<Request>,
    /// Fire times of the backups sent.
    backups: Vec<Duration>,
    /// Whether the breaker was open at the end of each second.
    breaker_open: Vec<bool>,
}

impl Run {
    /// Requests started in `[from, to)`.
    fn started(&self, from: Duration, to: Duration) -> impl Iterator<Item = &Request> {
        self.requests
            .iter()
            .filter(move |r| (from..to).contains(&r.start))
    }

    fn backups_in(&self, from: Duration, to: Duration) -> usize {
        self.backups
            .iter()
            .filter(|t| (from..to).contains(*t))
            .count()
    }

    /// Latency percentiles (exact) and the share of extra requests, for
    /// requests started in `[from, to)`.
    fn summary(&self, from: Duration, to: Duration) -> Summary {
        let mut lat: Vec<Duration> = self.started(from, to).map(|r| r.finish - r.start).collect();
        lat.sort_unstable();
        let n = lat.len();
        let q = |p: f64| lat[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        let backups: u64 = self.started(from, to).map(|r| u64::from(r.backups)).sum();
        let won = self
            .started(from, to)
            .filter(|r| r.winner == Winner::Backup)
            .count();
        Summary {
            requests: n,
            p50: q(0.50),
            p99: q(0.99),
            p999: q(0.999),
            extra: backups as f64 / n as f64,
            won,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Summary {
    requests: usize,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    extra: f64,
    won: usize,
}

impl Summary {
    fn row(&self, name: &str) -> String {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        format!(
            "| {name} | {} | {} | {} | {} | {:.2}% | {} |",
            self.requests,
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            self.extra * 100.0,
            self.won
        )
    }
}

const HEADER: &str = "| strategy | requests | p50 ms | p99 ms | p99.9 ms | extra requests | won by backup |\n|---|---|---|---|---|---|---|";

/// Runs `duration` of Poisson arrivals at [`RPS`] through `hedger` (or no
/// hedging), with every attempt's latency drawn from `latency`.
fn simulate(
    hedger: Option<&Hedger>,
    duration: Duration,
    seed: u64,
    latency: impl Fn(&mut SplitMix64, Duration) -> Duration,
) -> Run {
    // Separate streams, so that every strategy sees the same arrivals and
    // the same original latencies (a paired comparison).
    let mut arrivals = SplitMix64::new(seed);
    let mut originals = SplitMix64::new(seed ^ 0x0a11_ce00);
    let mut backups = SplitMix64::new(seed ^ 0xb0b0_0000);
    let mut run = Run::default();
    let mut events: BinaryHeap<Reverse<(Duration, Event)>> = BinaryHeap::new();
    let mut now = Duration::ZERO;
    loop {
        let gap = -(1.0 - arrivals.next_f64()).ln() / RPS;
        now += Duration::from_secs_f64(gap);
        while let Some(&Reverse((t, ev))) = events.peek() {
            if t > now {
                break;
            }
            events.pop();
            handle(hedger, &mut run, &mut events, &mut backups, &latency, t, ev);
        }
        while run.breaker_open.len() < now.as_secs() as usize {
            run.breaker_open
                .push(hedger.is_some_and(Hedger::breaker_open));
        }
        if now >= duration {
            break;
        }
        let i = run.requests.len();
        let original = latency(&mut originals, now);
        run.requests.push(Request {
            start: now,
            finish: now + original,
            winner: Winner::Original,
            backups: 0,
        });
        let Some(h) = hedger else {
            events.push(Reverse((now + original, Event::Done(i))));
            continue;
        };
        h.budget().deposit(now);
        match h.plan(&HedgeRequest::new("GET", false, None)) {
            HedgePlan::After(delay) if delay < original => {
                events.push(Reverse((now + delay, Event::Fire(i))));
            }
            _ => events.push(Reverse((now + original, Event::Done(i)))),
        }
    }
    while let Some(Reverse((t, ev))) = events.pop() {
        handle(hedger, &mut run, &mut events, &mut backups, &latency, t, ev);
    }
    run
}

fn handle(
    hedger: Option<&Hedger>,
    run: &mut Run,
    events: &mut BinaryHeap<Reverse<(Duration, Event)>>,
    rng: &mut SplitMix64,
    latency: &impl Fn(&mut SplitMix64, Duration) -> Duration,
    now: Duration,
    ev: Event,
) {
    let Some(h) = hedger else {
        return;
    };
    match ev {
        Event::Fire(i) => {
            let r = &mut run.requests[i];
            if h.on_fire(now).is_ok() {
                run.backups.push(now);
                r.backups = 1;
                let backup_done = now + latency(rng, now);
                if backup_done < r.finish {
                    r.finish = backup_done;
                    r.winner = Winner::Backup;
                }
            }
            events.push(Reverse((r.finish, Event::Done(i))));
        }
        Event::Done(i) => {
            let r = run.requests[i];
            h.record(
                now,
                &Completion {
                    latency: r.finish - r.start,
                    success: true,
                    winner: r.winner,
                    backups_sent: r.backups,
                },
            );
        }
    }
}

fn budget() -> Arc<Budget> {
    // 10% of requests + 10/s over 10 s.
    Arc::new(Budget::new(BudgetConfig::default()).unwrap())
}

fn hedger(delay: HedgeDelay) -> Hedger {
    let config = HedgeConfig {
        delay,
        ..HedgeConfig::default()
    };
    Hedger::new(config, budget()).unwrap()
}

fn without_breaker(delay: HedgeDelay) -> Hedger {
    let config = HedgeConfig {
        delay,
        breaker: BreakerConfig {
            slow_share_to_open: 1.0,
            success_rate_to_open: 0.0,
            ..BreakerConfig::default()
        },
        ..HedgeConfig::default()
    };
    Hedger::new(config, budget()).unwrap()
}

#[test]
fn long_tail_p999_cut_by_80_percent_for_at_most_5_percent_extra() {
    let duration = secs(120);
    let seed = 0x7a11;
    let all = (Duration::ZERO, duration);

    let none = simulate(None, duration, seed, long_tail).summary(all.0, all.1);
    let fixed_h = hedger(HedgeDelay::Fixed(ms(10)));
    let fixed = simulate(Some(&fixed_h), duration, seed, long_tail).summary(all.0, all.1);
    let p95_h = hedger(HedgeDelay::percentile(95.0));
    let p95_run = simulate(Some(&p95_h), duration, seed, long_tail);
    let p95 = p95_run.summary(all.0, all.1);
    let p99_h = hedger(HedgeDelay::percentile(99.0));
    let p99 = simulate(Some(&p99_h), duration, seed, long_tail).summary(all.0, all.1);

    eprintln!(
        "\nLong tail: 2% of responses 100x the median (5 ms / 500 ms, log-normal sigma 0.25), \
         {RPS} rps Poisson for {}s, budget 10% + 10/s\n{HEADER}\n{}\n{}\n{}\n{}\n\
         learned delays at the end: p95 {:?}, p99 {:?}",
        duration.as_secs(),
        none.row("no hedging"),
        fixed.row("fixed 10 ms"),
        p95.row("percentile p95"),
        p99.row("percentile p99"),
        p95_h.current_delay().unwrap(),
        p99_h.current_delay().unwrap(),
    );

    assert!(none.p999 >= ms(300), "the tail is there: {none:?}");
    // p95 hedges the slowest 5% by construction, so its share sits just
    // under the 5% target (4.92% to 5.00% over 12 other seeds; p96 gives
    // 3.9% to 4.0% for the same p99.9). The seed is fixed.
    for (name, s) in [("fixed", &fixed), ("p95", &p95)] {
        let cut = 1.0 - s.p999.as_secs_f64() / none.p999.as_secs_f64();
        assert!(cut >= 0.8, "{name}: p99.9 cut by only {:.0}%", cut * 100.0);
        assert!(s.extra <= 0.05, "{name}: {:.2}% extra", s.extra * 100.0);
        assert!(s.won > 0);
    }
    assert!(p95.extra >= 0.03, "p95 hedges about 5%: {p95:?}");
    // p99 lands inside the 2% of slow responses, mostly known only as
    // "slower than the delay" (the backup won): the learned delay still
    // finds the true p99 (about 500 ms) instead of creeping up from the fast
    // responses' p99.
    let p99_delay = p99_h.current_delay().unwrap();
    assert!((ms(400)..=ms(650)).contains(&p99_delay), "{p99_delay:?}");
    // The hedger's own counters agree with what the simulation saw.
    let stats = p95_h.stats();
    assert_eq!(stats.sent, p95_run.backups.len() as u64);
    assert_eq!(stats.won, p95.won as u64);
    assert_eq!(stats.sent, stats.won + stats.cancelled);
    assert_eq!(stats.suppressed(Suppressed::Budget), 0);
}

/// Every response slow from 30 s to 50 s, then back to normal.
#[test]
fn outage_stays_within_budget_breaker_stops_hedging_and_hedging_resumes() {
    let (from, to, end) = (secs(30), secs(50), secs(90));
    let mut rows = Vec::new();
    let strategies = [
        ("fixed 10 ms", hedger(HedgeDelay::Fixed(ms(10)))),
        ("percentile p95", hedger(HedgeDelay::percentile(95.0))),
        (
            "fixed 10 ms, breaker off",
            without_breaker(HedgeDelay::Fixed(ms(10))),
        ),
    ];
    for (name, h) in &strategies {
        let run = simulate(Some(h), end, 0x07a6e, outage(from, to));
        let requests = |a, b| run.started(a, b).count() as f64;
        let cfg = h.budget().config();
        let (ratio, min) = (cfg.ratio, f64::from(cfg.min_per_sec));
        let ttl = cfg.ttl;

        // The budget's guarantee, over the run and over the outage.
        let all = run.backups.len() as f64;
        let bound = ratio * requests(Duration::ZERO, end) + min * (end + ttl).as_secs_f64();
        assert!(all <= bound, "{name}: {all} backups > {bound}");
        let during = run.backups_in(from, to) as f64;
        let bound = ratio * requests(from - ttl, to) + min * (to - from + ttl).as_secs_f64();
        assert!(
            during <= bound,
            "{name}: {during} backups in the outage > {bound}"
        );
        let outage_share = during / requests(from, to);
        assert!(
            outage_share <= ratio + min / RPS,
            "{name}: {:.1}% extra during the outage",
            outage_share * 100.0
        );

        let before = run.summary(secs(10), from);
        let worst = run.summary(from, to);
        let after = run.summary(to + secs(10), end);
        rows.push(before.row(&format!("{name}: before (10-30 s)")));
        rows.push(worst.row(&format!("{name}: outage (30-50 s)")));
        rows.push(after.row(&format!("{name}: after (60-90 s)")));

        let secs_open = |a: u64, b: u64| run.breaker_open[a as usize..b as usize].to_vec();
        if name.ends_with("breaker off") {
            // Without the breaker the budget is what binds: most of it is
            // spent, none beyond.
            assert!(outage_share >= 0.8 * ratio, "{name}: {outage_share}");
            assert!(h.stats().suppressed(Suppressed::Budget) > 10_000);
            continue;
        }
        // The breaker turned hedging off within a few seconds, for the rest
        // of the outage ...
        assert!(
            secs_open(34, 50).iter().all(|&o| o),
            "{name}: {:?}",
            secs_open(30, 60)
        );
        assert_eq!(run.backups_in(secs(35), to), 0, "{name}");
        assert!(h.stats().suppressed(Suppressed::Breaker) > 10_000, "{name}");
        // ... and back on once the target recovered.
        assert!(
            secs_open(57, 90).iter().all(|&o| !o),
            "{name}: {:?}",
            secs_open(50, 60)
        );
        assert!(
            (0.01..=0.06).contains(&after.extra),
            "{name}: hedging resumed at {:.2}%",
            after.extra * 100.0
        );
        assert!(
            after.p999 <= ms(60),
            "{name}: the tail is cut again: {after:?}"
        );
    }
    eprintln!(
        "\nOutage: every response slow (500 ms) from 30 s to 50 s, {RPS} rps, \
         budget 10% + 10/s over 10 s\n{HEADER}\n{}",
        rows.join("\n")
    );
}

/// The route becomes 4x slower for good: the breaker stops hedging against
/// the old delay, then, after a histogram window without a normal batch,
/// the hedger learns the new latencies and hedges again.
#[test]
fn lasting_slowdown_becomes_the_new_normal() {
    let h = hedger(HedgeDelay::percentile(95.0));
    let shift = secs(20);
    let run = simulate(Some(&h), secs(100), 42, |rng, now| {
        let d = long_tail(rng, now);
        if now >= shift { d * 4 } else { d }
    });
    let before = run.summary(secs(10), shift);
    let stuck = run.summary(secs(25), secs(45));
    let relearned = run.summary(secs(60), secs(100));
    eprintln!(
        "\nLasting 4x slowdown at 20 s, percentile p95, latency window 30 s\n{HEADER}\n{}\n{}\n{}",
        before.row("before (10-20 s)"),
        stuck.row("breaker open (25-45 s)"),
        relearned.row("relearned (60-100 s)"),
    );
    // Open from a few seconds after the shift until a 30 s window has gone
    // by without a normal batch (state at the end of each second).
    let open = &run.breaker_open;
    assert!(open[23..48].iter().all(|&o| o), "{open:?}");
    assert_eq!(run.backups_in(secs(23), secs(48)), 0);
    assert!(open[52..].iter().all(|&o| !o), "{open:?}");
    assert!((0.03..=0.06).contains(&relearned.extra), "{relearned:?}");
    assert!(relearned.p999 <= ms(200), "{relearned:?}");
    let delay = h.current_delay().unwrap();
    assert!((ms(25)..=ms(45)).contains(&delay), "{delay:?}");
}
