//! Simulations of the balancer (see `sim.rs` for the model): what a user
//! would notice, in traffic shares and latency percentiles. Run with
//! `-- --nocapture` to see the tables.

use std::time::Duration;

use super::sim::{self, Scenario, SimEndpoint};
use super::{ALGORITHMS, ms};
use crate::latency::*;

fn scenario(algorithm: Algorithm, services: &[u64]) -> Scenario {
    Scenario {
        config: LatencyConfig {
            algorithm,
            ..LatencyConfig::default()
        },
        endpoints: services.iter().map(|&s| SimEndpoint::new(s)).collect(),
        rate_per_sec: 300.0,
        duration: Duration::from_secs(60),
        seed: 42,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// tower-rs/tower#76's comparison: three endpoints, one 10x slower, a
/// fixed arrival rate. Latency-aware balancing should all but ignore the
/// slow endpoint and keep p99 where it is when all are healthy.
#[test]
fn simulation_latency_aware_avoids_a_slow_endpoint() {
    let mut rows = Vec::new();
    for a in ALGORITHMS {
        let healthy = sim::run(&scenario(a, &[10, 10, 10]));
        let slow = sim::run(&scenario(a, &[10, 10, 100]));
        let share = sim::share(&slow, 2, Duration::ZERO, secs(60));
        let p99_healthy = sim::quantile(&healthy, 0.99);
        let (p50, p99) = (sim::quantile(&slow, 0.5), sim::quantile(&slow, 0.99));
        rows.push((a, share, p50, p99, p99_healthy));
    }
    eprintln!(
        "\n3 endpoints (10 ms, 10 ms, 100 ms; service time x U(0.8, 1.2)), 300 req/s for 60 s \
         (18 000 requests), simulated clock, seed 42\n"
    );
    eprintln!("| algorithm | share to the slow endpoint | p50 | p99 | p99, all healthy |");
    eprintln!("|---|---:|---:|---:|---:|");
    for (a, share, p50, p99, p99_healthy) in &rows {
        eprintln!(
            "| {a:?} | {:.2} % | {} | {} | {} |",
            share * 100.0,
            millis(*p50),
            millis(*p99),
            millis(*p99_healthy)
        );
    }
    let [(_, la, _, la_p99, la_healthy), (_, lr, ..), (_, rr, ..)] = rows[..] else {
        unreachable!()
    };
    assert!(la < 0.05, "latency-aware sent {la} to the slow endpoint");
    assert!(
        la_p99.as_secs_f64() <= la_healthy.as_secs_f64() * 1.1,
        "latency-aware p99 {la_p99:?} vs {la_healthy:?} all healthy"
    );
    assert!((rr - 1.0 / 3.0).abs() < 0.01, "round robin: {rr}");
    assert!(
        la < lr && lr < rr,
        "least request in between: {la} {lr} {rr}"
    );
}

/// The slow endpoint recovers at 20 s: the estimate decays, probes find it
/// fast again and it gets its share back.
#[test]
fn simulation_a_recovered_endpoint_wins_its_share_back() {
    let mut s = scenario(Algorithm::LatencyAware, &[10, 10, 100]);
    s.endpoints[2].changes_at = Some((secs(20), ms(10)));
    let served = sim::run(&s);
    let before = sim::share(&served, 2, secs(5), secs(20));
    let after = sim::share(&served, 2, secs(45), secs(60));
    eprintln!("recovery: share {before:.4} while slow, {after:.4} from 45 s");
    assert!(before < 0.01, "{before}");
    assert!((after - 1.0 / 3.0).abs() < 0.05, "{after}");
}

#[test]
fn simulation_weights_shape_traffic_under_load() {
    for a in ALGORITHMS {
        let mut s = scenario(a, &[10, 10, 10]);
        s.rate_per_sec = 1000.0;
        s.duration = secs(20);
        for (e, w) in s.endpoints.iter_mut().zip([1, 2, 3]) {
            e.weight = w;
        }
        let served = sim::run(&s);
        let shares: Vec<f64> = (0..3)
            .map(|i| sim::share(&served, i, secs(5), secs(20)))
            .collect();
        eprintln!("weights 1:2:3, {a:?}, 1000 req/s: {shares:.3?}");
        for (got, want) in shares.iter().zip([1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]) {
            assert!((got - want).abs() < 0.03, "{a:?}: {shares:?}");
        }
    }
}

/// An endpoint joins at 10 s with a 30 s linear slow start: its share
/// tracks its weight factor f (ideal f / (3 + f)) instead of jumping to a
/// quarter at once.
#[test]
fn simulation_slow_start_ramps_a_new_endpoint() {
    for a in [Algorithm::LatencyAware, Algorithm::LeastRequest] {
        let run = |slow_start: Option<SlowStart>| {
            let mut s = scenario(a, &[10, 10, 10, 10]);
            s.rate_per_sec = 1000.0;
            s.config.slow_start = slow_start;
            s.endpoints[3].joins_at = Some(secs(10));
            let served = sim::run(&s);
            let bins: Vec<f64> = (0..10)
                .map(|b| sim::share(&served, 3, secs(10 + 5 * b), secs(15 + 5 * b)))
                .collect();
            bins
        };
        let ramp = run(Some(SlowStart::linear(secs(30))));
        eprintln!("slow start, {a:?}, 5 s bins from the join: {ramp:.3?}");
        for (b, share) in ramp.iter().enumerate().take(6) {
            let mid = 2.5 + 5.0 * b as f64;
            let f = (mid / 30.0).max(0.1);
            let ideal = f / (3.0 + f);
            assert!(
                *share <= ideal + 0.03,
                "{a:?} bin {b}: {share} > {ideal}: {ramp:?}"
            );
            assert!(
                *share >= ideal - 0.06,
                "{a:?} bin {b}: {share} < {ideal}: {ramp:?}"
            );
        }
        assert!(
            ramp.windows(2).take(6).all(|w| w[1] >= w[0]),
            "{a:?}: {ramp:?}"
        );
        for share in &ramp[6..] {
            assert!((share - 0.25).abs() < 0.02, "{a:?}: {ramp:?}");
        }
        if a == Algorithm::LeastRequest {
            let at_once = run(None);
            assert!(at_once[0] > 0.2, "without slow start: {at_once:?}");
        }
    }
}

/// Two local endpoints (5 ms, 4 requests at full speed each) and two in
/// another zone (15 ms, unlimited): as the rate grows the local zone
/// saturates and a growing share spills over, without a cliff.
#[test]
fn simulation_an_overloaded_local_zone_spills_gradually() {
    let mut spills = Vec::new();
    for rate in [100.0, 800.0, 1200.0, 1600.0, 2000.0, 2400.0, 3200.0] {
        let mut s = scenario(Algorithm::LatencyAware, &[5, 5, 15, 15]);
        s.config.locality = Some(Locality::new("a"));
        for (i, e) in s.endpoints.iter_mut().enumerate() {
            e.zone = Some(if i < 2 { "a" } else { "b" });
            e.capacity = (i < 2).then_some(4);
        }
        s.rate_per_sec = rate;
        s.duration = secs(30);
        let served = sim::run(&s);
        let spill =
            sim::share(&served, 2, secs(5), secs(30)) + sim::share(&served, 3, secs(5), secs(30));
        let p99 = sim::quantile(&served, 0.99);
        eprintln!(
            "locality, {rate} req/s: {:.1} % to the other zone, p99 {}",
            spill * 100.0,
            millis(p99)
        );
        spills.push(spill);
    }
    assert!(spills[0] < 0.01, "{spills:?}");
    assert!(
        spills.windows(2).all(|w| w[1] >= w[0] - 0.005),
        "{spills:?}"
    );
    assert!(spills[6] > 0.3, "{spills:?}");
    let steps: Vec<f64> = spills.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(steps.iter().all(|d| *d < 0.5), "no cliff: {spills:?}");
}
