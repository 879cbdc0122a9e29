//! Properties of the latency balancer: picks stay in range and avoid
//! zero weights, candidates are distinct, cost is finite, in-flight counts
//! survive concurrent use.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::{cfg, endpoint, ms, request, with};
use crate::latency::*;
use crate::rng::{Random, SplitMix64};

#[derive(Debug, Clone)]
struct Spec {
    weight: u32,
    health: f64,
    in_flight: u32,
    sample_ms: Option<u64>,
    local: bool,
    added_at_s: Option<u64>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![Just(0u32), 1u32..5],
        prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64],
        0u32..6,
        prop::option::of(0u64..5_000),
        any::<bool>(),
        prop::option::of(0u64..20),
    )
        .prop_map(
            |(weight, health, in_flight, sample_ms, local, added_at_s)| Spec {
                weight,
                health,
                in_flight,
                sample_ms,
                local,
                added_at_s,
            },
        )
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::LatencyAware),
        Just(Algorithm::LeastRequest),
        Just(Algorithm::RoundRobin)
    ]
}

/// Endpoints as specified, with their in-flight requests held open.
fn build(specs: &[Spec], now: Duration) -> (Vec<Arc<EndpointLoad>>, Vec<Pending>) {
    let mut held = Vec::new();
    let endpoints = specs
        .iter()
        .map(|s| {
            let zone = Some(if s.local { "a" } else { "b" });
            let e = Arc::new(match s.added_at_s {
                Some(t) => EndpointLoad::added(s.weight, zone, Duration::from_secs(t)),
                None => EndpointLoad::initial(s.weight, zone, Duration::ZERO),
            });
            if let Some(rtt) = s.sample_ms {
                request(&e, ms(0), ms(rtt));
            }
            e.set_health_multiplier(s.health);
            held.extend((0..s.in_flight).map(|_| e.start(now, &cfg())));
            e
        })
        .collect();
    (endpoints, held)
}

proptest! {
    #[test]
    fn pick_is_in_range_and_avoids_zero_weights(
        specs in prop::collection::vec(spec(), 0..9),
        algorithm in algorithm(),
        choices in 2usize..5,
        locality in any::<bool>(),
        now_s in 0u64..40,
        seed in any::<u64>(),
    ) {
        let now = Duration::from_secs(now_s);
        let (endpoints, _held) = build(&specs, now);
        let config = LatencyConfig {
            algorithm,
            choices,
            slow_start: Some(SlowStart::linear(Duration::from_secs(10))),
            locality: locality.then(|| Locality { refresh: Duration::ZERO, ..Locality::new("a") }),
            ..cfg()
        };
        let b = Balancer::new(config.clone(), endpoints.clone()).unwrap();
        let positive = endpoints.iter().any(|e| e.effective_weight(now, &config) > 0.0);
        let configured = endpoints.iter().any(|e| e.weight() > 0);
        let mut rng = SplitMix64::new(seed);
        for _ in 0..20 {
            match b.pick(now, &mut rng) {
                None => prop_assert!(!configured, "None while an endpoint has weight"),
                Some(i) => {
                    prop_assert!(i < endpoints.len());
                    prop_assert!(endpoints[i].weight() > 0, "a drained endpoint");
                    if positive {
                        prop_assert!(endpoints[i].effective_weight(now, &config) > 0.0);
                    }
                }
            }
        }
    }

    /// With equal weights every draw is accepted, so the `choices` candidates
    /// are distinct: the `choices - 1` busiest endpoints can never win.
    #[test]
    fn candidates_are_distinct(
        n in 3usize..10,
        choices in 2usize..5,
        seed in any::<u64>(),
    ) {
        prop_assume!(choices < n);
        let endpoints: Vec<_> = (0..n).map(|_| endpoint(1)).collect();
        // Endpoint i holds i requests: the last choices - 1 are the busiest.
        let _held: Vec<_> = endpoints
            .iter()
            .enumerate()
            .flat_map(|(i, e)| (0..i).map(|_| e.start(ms(0), &cfg())).collect::<Vec<_>>())
            .collect();
        let config = LatencyConfig { choices, ..with(Algorithm::LeastRequest) };
        let b = Balancer::new(config, endpoints).unwrap();
        let mut rng = SplitMix64::new(seed);
        for _ in 0..50 {
            let i = b.pick(ms(0), &mut rng).unwrap();
            prop_assert!(i <= n - choices, "picked {i} of {n} with {choices} choices");
        }
    }

    #[test]
    fn cost_is_finite_and_non_negative(
        samples in prop::collection::vec((0u64..100_000_000, 0u64..10_000_000_000), 0..20),
        weight in 1u32..1000,
        health in 0.001f64..=1.0,
        in_flight in 0u32..1000,
        decay_ms in 1u64..100_000,
        read_after_ms in 0u64..u32::MAX as u64 * 2,
    ) {
        let c = LatencyConfig { decay: ms(decay_ms), ..cfg() };
        let e = Arc::new(EndpointLoad::initial(weight, None, Duration::ZERO));
        e.set_health_multiplier(health);
        let mut now = Duration::ZERO;
        for (rtt_us, gap_us) in samples {
            now += Duration::from_micros(gap_us);
            e.start(now, &c).finish(now + Duration::from_micros(rtt_us));
        }
        let _held: Vec<_> = (0..in_flight).map(|_| e.start(now, &c)).collect();
        let at = now + ms(read_after_ms);
        let cost = e.cost(at, &c);
        prop_assert!(cost.is_finite() && cost >= 0.0, "{cost}");
        prop_assert!(e.latency(at, &c) >= Duration::from_micros(1));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn concurrent_requests_leave_nothing_in_flight(
        threads in 2usize..5,
        per_thread in 1usize..400,
        seed in any::<u64>(),
    ) {
        let e = endpoint(1);
        std::thread::scope(|s| {
            for t in 0..threads {
                let e = &e;
                s.spawn(move || {
                    let mut rng = SplitMix64::new(seed ^ t as u64);
                    let mut open = Vec::new();
                    for n in 0..per_thread {
                        let now = ms(n as u64);
                        open.push(e.start(now, &cfg()));
                        let end = now + ms(rng.below(200) as u64);
                        if rng.below(3) == 0 {
                            let mut p = open.swap_remove(rng.below(open.len()));
                            match rng.below(4) {
                                0 => p.finish(end),
                                1 => p.cancel(end),
                                2 => drop(p),
                                _ => {
                                    p.first_byte(end);
                                    p.finish(end + ms(5));
                                }
                            }
                        }
                    }
                    for p in open {
                        p.finish(ms(per_thread as u64 + 200));
                    }
                });
            }
        });
        prop_assert_eq!(e.in_flight(), 0);
        let est = e.latency(ms(per_thread as u64 + 200), &cfg());
        prop_assert!(est >= Duration::from_micros(1) && est <= ms(31_000), "{est:?}");
    }
}
