//! Unit tests of the latency balancer on a simulated clock; property tests
//! and simulations in the sibling files.

use std::time::Duration;

use super::*;
use crate::rng::SplitMix64;

mod properties;
mod sim;
mod simulation;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---- peak-EWMA ----

fn cfg() -> LatencyConfig {
    LatencyConfig::default()
}

fn endpoint(weight: u32) -> Arc<EndpointLoad> {
    Arc::new(EndpointLoad::initial(weight, None, Duration::ZERO))
}

/// Runs one request from `at` to `at + rtt`.
fn request(e: &Arc<EndpointLoad>, at: Duration, rtt: Duration) {
    e.start(at, &cfg()).finish(at + rtt);
}

fn close(actual: Duration, expected_ms: f64) -> bool {
    (actual.as_secs_f64() * 1e3 - expected_ms).abs() < expected_ms * 1e-3 + 1e-3
}

#[test]
fn estimate_is_default_rtt_before_any_sample_and_decays_while_idle() {
    let e = endpoint(1);
    assert!(close(e.latency(ms(0), &cfg()), 30.0));
    let after_decay = e.latency(Duration::from_secs(10), &cfg());
    assert!(
        close(after_decay, 30.0 / std::f64::consts::E),
        "{after_decay:?}"
    );
}

#[test]
fn a_peak_replaces_the_estimate_at_once() {
    let e = endpoint(1);
    request(&e, ms(0), ms(100));
    assert!(
        close(e.latency(ms(100), &cfg()), 100.0),
        "{:?}",
        e.latency(ms(100), &cfg())
    );
    request(&e, ms(100), ms(250));
    assert!(close(e.latency(ms(350), &cfg()), 250.0));
}

#[test]
fn a_lower_sample_leaves_the_decaying_peak_alone() {
    let e = endpoint(1);
    request(&e, ms(0), ms(100));
    let one_decay = Duration::from_secs(10) + ms(100);
    let peak = 100.0 / std::f64::consts::E;
    request(&e, one_decay - ms(10), ms(10));
    assert!(
        close(e.latency(one_decay, &cfg()), peak),
        "{:?}",
        e.latency(one_decay, &cfg())
    );
    request(&e, one_decay - ms(50), ms(50));
    assert!(
        close(e.latency(one_decay, &cfg()), 50.0),
        "above the decayed peak"
    );
}

#[test]
fn a_peak_decays_down_to_the_steady_latency_over_decay() {
    let e = endpoint(1);
    request(&e, ms(0), ms(100));
    let mut t = ms(100);
    let mut trace = Vec::new();
    while t < Duration::from_secs(40) {
        request(&e, t, ms(10));
        t += ms(10);
        if t.subsec_millis() == 100 {
            trace.push(e.latency(t, &cfg()).as_secs_f64() * 1e3);
        }
    }
    // 100 ms / e after one decay, 10 ms from ln(10) decays on.
    assert!(
        (trace[9] - 100.0 / std::f64::consts::E).abs() < 0.05,
        "{trace:?}"
    );
    assert!(trace[20] > 10.5, "{trace:?}");
    assert!(
        trace[24..].iter().all(|&l| (l - 10.0).abs() < 0.01),
        "{trace:?}"
    );
}

#[test]
fn the_first_sample_replaces_the_default() {
    let e = endpoint(1);
    request(&e, ms(0), ms(2));
    assert!(close(e.latency(ms(2), &cfg()), 2.0));
}

#[test]
fn cost_is_estimate_times_in_flight_plus_one_over_effective_weight() {
    let e = endpoint(2);
    request(&e, ms(0), ms(40));
    let now = ms(40);
    let held: Vec<Pending> = (0..3).map(|_| e.start(now, &cfg())).collect();
    assert_eq!(e.in_flight(), 3);
    let expected = 40e6 * 4.0 / 2.0;
    assert!(
        (e.cost(now, &cfg()) - expected).abs() < 1.0,
        "{}",
        e.cost(now, &cfg())
    );
    e.set_health_multiplier(0.5);
    assert!((e.cost(now, &cfg()) - expected * 2.0).abs() < 2.0);
    e.set_health_multiplier(0.0);
    assert_eq!(e.cost(now, &cfg()), f64::INFINITY);
    drop(held);
}

#[test]
fn dropping_the_guard_ends_the_request_without_a_sample() {
    let e = endpoint(1);
    let p = e.start(ms(0), &cfg());
    assert_eq!(e.in_flight(), 1);
    drop(p);
    assert_eq!(e.in_flight(), 0);
    assert!(close(e.latency(ms(0), &cfg()), 30.0), "still the default");
}

#[test]
fn finish_takes_the_sample_and_ends_the_request() {
    let e = endpoint(1);
    let p = e.start(ms(0), &cfg());
    p.finish(ms(80));
    assert_eq!(e.in_flight(), 0);
    assert!(close(e.latency(ms(80), &cfg()), 80.0));
}

#[test]
fn a_cancelled_request_only_raises_the_estimate() {
    let e = endpoint(1);
    e.start(ms(0), &cfg()).cancel(ms(5));
    assert!(
        close(e.latency(ms(5), &cfg()), 30.0),
        "a quick cancel is ignored"
    );
    e.start(ms(5), &cfg()).cancel(ms(505));
    assert!(
        close(e.latency(ms(505), &cfg()), 500.0),
        "a long wait is a lower bound"
    );
    assert_eq!(e.in_flight(), 0);
}

#[test]
fn streams_sample_time_to_first_byte_and_stay_in_flight_until_the_end() {
    let c = LatencyConfig {
        default_rtt: ms(1),
        ..cfg()
    };
    let e = endpoint(1);
    let mut stream = e.start(ms(0), &c);
    stream.first_byte(ms(5));
    stream.first_byte(ms(7));
    assert!(close(e.latency(ms(5), &c), 5.0));
    assert_eq!(e.in_flight(), 1, "the stream is still open");
    let ten_s = Duration::from_secs(10);
    stream.finish(ten_s);
    assert_eq!(e.in_flight(), 0);
    let est = e.latency(ten_s, &c);
    assert!(
        close(est, 5.0 / std::f64::consts::E),
        "no 10 s sample: {est:?}"
    );
}

#[test]
fn the_estimate_survives_the_millisecond_clock_wrapping() {
    let e = endpoint(1);
    let t = ms((1u64 << 32) - 3);
    request(&e, t, ms(100));
    let later = t + ms(100) + Duration::from_secs(10);
    let got = e.latency(later, &cfg());
    assert!(close(got, 100.0 / std::f64::consts::E), "{got:?}");
    let month = later + Duration::from_secs(30 * 86_400);
    assert_eq!(
        e.latency(month, &cfg()),
        Duration::from_micros(1),
        "fully decayed"
    );
    let racing = t + ms(99);
    assert!(
        close(e.latency(racing, &cfg()), 100.0),
        "a clock read just before the update"
    );
}

#[test]
fn health_multiplier_is_clamped() {
    let e = endpoint(1);
    e.set_health_multiplier(2.0);
    assert_eq!(e.health_multiplier(), 1.0);
    e.set_health_multiplier(-1.0);
    assert_eq!(e.health_multiplier(), 0.0);
    e.set_health_multiplier(f64::NAN);
    assert_eq!(e.health_multiplier(), 0.0);
    e.set_health_multiplier(0.25);
    assert_eq!(e.effective_weight(ms(0), &cfg()), 0.25);
}

// ---- slow start ----

#[test]
fn slow_start_factor_follows_envoys_curve() {
    let s = SlowStart::linear(Duration::from_secs(10));
    assert_eq!(s.factor(ms(0)), 0.1, "floored at min_weight_percent");
    assert!((s.factor(Duration::from_secs(5)) - 0.5).abs() < 1e-9);
    assert_eq!(s.factor(Duration::from_secs(10)), 1.0);
    let quick = SlowStart {
        aggression: 2.0,
        ..s
    };
    assert!((quick.factor(Duration::from_millis(2500)) - 0.5).abs() < 1e-9);
}

#[test]
fn only_added_endpoints_ramp() {
    let c = LatencyConfig {
        slow_start: Some(SlowStart::linear(Duration::from_secs(10))),
        ..cfg()
    };
    let now = Duration::from_secs(100);
    let initial = EndpointLoad::initial(4, None, now);
    let added = EndpointLoad::added(4, None, now);
    assert_eq!(initial.effective_weight(now, &c), 4.0);
    assert!((added.effective_weight(now, &c) - 0.4).abs() < 1e-9);
    let later = now + Duration::from_secs(5);
    assert!((added.effective_weight(later, &c) - 2.0).abs() < 1e-9);
    assert_eq!(
        added.effective_weight(now, &cfg()),
        4.0,
        "no slow start configured"
    );
}

// ---- config ----

#[test]
fn default_config_is_valid_and_bad_settings_are_named() {
    assert_eq!(LatencyConfig::default().validate(), Ok(()));
    let bad = |f: fn(&mut LatencyConfig)| {
        let mut c = LatencyConfig {
            slow_start: Some(SlowStart::linear(Duration::from_secs(1))),
            locality: Some(Locality::new("a")),
            ..cfg()
        };
        assert_eq!(c.validate(), Ok(()));
        f(&mut c);
        c.validate().unwrap_err().to_string()
    };
    assert!(bad(|c| c.choices = 1).contains("choices"));
    assert!(bad(|c| c.choices = MAX_CHOICES + 1).contains("choices"));
    assert!(bad(|c| c.default_rtt = Duration::ZERO).contains("defaultRtt"));
    assert!(bad(|c| c.decay = Duration::ZERO).contains("decay"));
    fn ss(c: &mut LatencyConfig) -> &mut SlowStart {
        c.slow_start.as_mut().unwrap()
    }
    assert!(bad(|c| ss(c).window = Duration::ZERO).contains("slowStart.window"));
    assert!(bad(|c| ss(c).aggression = 0.0).contains("aggression"));
    assert!(bad(|c| ss(c).aggression = f64::NAN).contains("aggression"));
    assert!(bad(|c| ss(c).min_weight_percent = 0.0).contains("minWeightPercent"));
    assert!(bad(|c| ss(c).min_weight_percent = 101.0).contains("minWeightPercent"));
    fn loc(c: &mut LatencyConfig) -> &mut Locality {
        c.locality.as_mut().unwrap()
    }
    assert!(bad(|c| loc(c).local_zone.clear()).contains("localZone"));
    assert!(bad(|c| loc(c).overprovisioning = 0.5).contains("overprovisioning"));
    assert!(bad(|c| loc(c).overload_ratio = f64::NAN).contains("overloadRatio"));
    let mut off = Locality::new("a");
    off.overload_ratio = f64::INFINITY;
    let c = LatencyConfig {
        locality: Some(off),
        ..cfg()
    };
    assert_eq!(c.validate(), Ok(()), "infinity turns load spill off");
    assert!(
        Balancer::new(
            LatencyConfig {
                choices: 0,
                ..cfg()
            },
            vec![]
        )
        .is_err()
    );
}

// ---- pick ----

fn balancer(c: LatencyConfig, endpoints: &[Arc<EndpointLoad>]) -> Balancer {
    Balancer::new(c, endpoints.to_vec()).unwrap()
}

fn counts(b: &Balancer, now: Duration, picks: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed);
    let mut c = vec![0; b.endpoints().len()];
    for _ in 0..picks {
        c[b.pick(now, &mut rng).unwrap()] += 1;
    }
    c
}

const ALGORITHMS: [Algorithm; 3] = [
    Algorithm::LatencyAware,
    Algorithm::LeastRequest,
    Algorithm::RoundRobin,
];

fn with(algorithm: Algorithm) -> LatencyConfig {
    LatencyConfig { algorithm, ..cfg() }
}

#[test]
fn pick_handles_zero_one_and_two_endpoints() {
    let mut rng = SplitMix64::new(1);
    for a in ALGORITHMS {
        assert_eq!(balancer(with(a), &[]).pick(ms(0), &mut rng), None);
        assert_eq!(
            balancer(with(a), &[endpoint(1)]).pick(ms(0), &mut rng),
            Some(0)
        );
        let two = balancer(with(a), &[endpoint(1), endpoint(1)]);
        let c = counts(&two, ms(0), 1000, 2);
        assert!(
            c.iter().all(|&n| n > 400),
            "{a:?}: ties go either way: {c:?}"
        );
    }
}

#[test]
fn ties_are_broken_evenly() {
    for a in [Algorithm::LatencyAware, Algorithm::LeastRequest] {
        for choices in [2, 3] {
            let e: Vec<_> = (0..5).map(|_| endpoint(1)).collect();
            let b = balancer(LatencyConfig { choices, ..with(a) }, &e);
            let c = counts(&b, ms(0), 10_000, 21);
            assert!(
                c.iter().all(|&n| (1800..2200).contains(&n)),
                "{a:?} {choices}: {c:?}"
            );
        }
    }
}

#[test]
fn latency_aware_picks_the_faster_of_two() {
    let (fast, slow) = (endpoint(1), endpoint(1));
    request(&fast, ms(0), ms(10));
    request(&slow, ms(0), ms(100));
    let b = balancer(cfg(), &[fast, slow]);
    assert_eq!(counts(&b, ms(100), 1000, 3), [1000, 0]);
}

#[test]
fn least_request_picks_the_one_with_fewer_requests_per_weight() {
    let (a, b) = (endpoint(1), endpoint(3));
    let _held: Vec<Pending> = (0..2).map(|_| b.start(ms(0), &cfg())).collect();
    let _one = a.start(ms(0), &cfg());
    // a: (1 + 1) / 1 = 2; b: (2 + 1) / 3 = 1.
    let lb = balancer(with(Algorithm::LeastRequest), &[a, b]);
    assert_eq!(counts(&lb, ms(0), 1000, 4), [0, 1000]);
}

#[test]
fn round_robin_follows_effective_weights() {
    let e = [endpoint(1), endpoint(3), endpoint(2)];
    let b = balancer(with(Algorithm::RoundRobin), &e);
    assert_eq!(counts(&b, ms(0), 600, 5), [100, 300, 200]);
    e[1].set_health_multiplier(1.0 / 3.0);
    let c = counts(&b, ms(0), 40_000, 6);
    let shares: Vec<f64> = c.iter().map(|&n| n as f64 / 40_000.0).collect();
    for (got, want) in shares.iter().zip([0.25, 0.25, 0.5]) {
        assert!((got - want).abs() < 0.02, "{shares:?}");
    }
}

#[test]
fn zero_weight_endpoints_are_never_picked_while_others_can_be() {
    for a in ALGORITHMS {
        let e: Vec<_> = (0..6).map(|_| endpoint(1)).collect();
        e[0].set_weight(0);
        e[1].set_health_multiplier(0.0);
        e[2].set_health_multiplier(0.0);
        e[3].set_health_multiplier(0.0);
        let b = balancer(with(a), &e);
        let c = counts(&b, ms(0), 2000, 7);
        assert_eq!(&c[..4], [0, 0, 0, 0], "{a:?}");
        assert!(c[4] > 700 && c[5] > 700, "{a:?}: {c:?}");
    }
}

#[test]
fn when_all_are_ejected_health_is_ignored_and_drained_ones_stay_out() {
    for a in ALGORITHMS {
        let e: Vec<_> = (0..3).map(|_| endpoint(1)).collect();
        e.iter().for_each(|e| e.set_health_multiplier(0.0));
        e[2].set_weight(0);
        let b = balancer(with(a), &e);
        let c = counts(&b, ms(0), 1000, 8);
        assert_eq!(c[2], 0, "{a:?}");
        assert!(c[0] > 300 && c[1] > 300, "{a:?}: panic routing {c:?}");
        e[0].set_weight(0);
        e[1].set_weight(0);
        assert_eq!(
            b.pick(ms(0), &mut SplitMix64::new(9)),
            None,
            "{a:?}: all drained"
        );
    }
}

// ---- locality ----

fn zoned(zone: &str) -> Arc<EndpointLoad> {
    Arc::new(EndpointLoad::initial(1, Some(zone), Duration::ZERO))
}

fn local_share(b: &Balancer, now: Duration, seed: u64) -> f64 {
    let c = counts(b, now, 4000, seed);
    let local: usize = b
        .endpoints()
        .iter()
        .zip(&c)
        .filter(|(e, _)| e.zone() == Some("a"))
        .map(|(_, n)| n)
        .sum();
    local as f64 / 4000.0
}

fn locality_config(algorithm: Algorithm) -> LatencyConfig {
    LatencyConfig {
        algorithm,
        locality: Some(Locality {
            refresh: Duration::ZERO,
            ..Locality::new("a")
        }),
        ..cfg()
    }
}

#[test]
fn healthy_idle_local_zone_takes_all_traffic() {
    for a in ALGORITHMS {
        let e = [zoned("b"), zoned("a"), zoned("c"), zoned("a")];
        let b = balancer(locality_config(a), &e);
        assert_eq!(local_share(&b, ms(0), 10), 1.0, "{a:?}");
    }
}

#[test]
fn unhealthy_local_zone_spills_in_proportion() {
    for a in ALGORITHMS {
        let e = [zoned("a"), zoned("a"), zoned("b"), zoned("b")];
        let b = balancer(locality_config(a), &e);
        // 80 % healthy x 1.4 overprovisioning >= 1: nothing spills yet.
        e[0].set_health_multiplier(0.6);
        assert_eq!(local_share(&b, ms(0), 11), 1.0, "{a:?}");
        // 50 % healthy: the local zone keeps 70 %.
        e[0].set_health_multiplier(0.0);
        let kept = local_share(&b, ms(0), 12);
        assert!((kept - 0.7).abs() < 0.03, "{a:?}: {kept}");
        e[1].set_health_multiplier(0.25);
        let kept = local_share(&b, ms(0), 13);
        assert!((kept - 0.175).abs() < 0.03, "{a:?}: {kept}");
        e[1].set_health_multiplier(0.0);
        assert_eq!(local_share(&b, ms(0), 14), 0.0, "{a:?}");
    }
}

#[test]
fn the_healthy_share_is_reread_after_refresh() {
    let e = [zoned("a"), zoned("a"), zoned("b")];
    let mut c = locality_config(Algorithm::LatencyAware);
    c.locality.as_mut().unwrap().refresh = Duration::from_secs(1);
    let b = balancer(c, &e);
    assert_eq!(local_share(&b, ms(0), 15), 1.0);
    e[0].set_health_multiplier(0.0);
    // The P2C inside the zone sees the change at once; the zone's share
    // follows after one refresh.
    assert_eq!(local_share(&b, ms(999), 16), 1.0);
    let kept = local_share(&b, ms(1000), 17);
    assert!((kept - 0.7).abs() < 0.03, "{kept}");
}

#[test]
fn overloaded_local_zone_spills_to_remote() {
    for a in [Algorithm::LatencyAware, Algorithm::LeastRequest] {
        let e = [zoned("a"), zoned("a"), zoned("b"), zoned("b")];
        let b = balancer(locality_config(a), &e);
        let mut held = Vec::new();
        let mut shares = Vec::new();
        for _ in 0..4 {
            shares.push(local_share(&b, ms(0), 18));
            held.push(e[0].start(ms(0), &cfg()));
            held.push(e[1].start(ms(0), &cfg()));
        }
        // Local cost (n + 1) x 30 ms against 2 x 30 ms remote.
        assert_eq!(shares, [1.0, 1.0, 0.0, 0.0], "{a:?}");
    }
}

#[test]
fn a_slow_remote_zone_takes_less_spill() {
    let e = [zoned("a"), zoned("b"), zoned("c")];
    request(&e[1], ms(0), ms(300));
    let b = balancer(locality_config(Algorithm::LatencyAware), &e);
    let held: Vec<_> = (0..4).map(|_| e[0].start(ms(300), &cfg())).collect();
    let c = counts(&b, ms(300), 4000, 19);
    assert_eq!(c[0], 0, "5 x 30 ms > 2 x 30 ms: {c:?}");
    assert_eq!(c[1], 0, "the 300 ms zone loses the remote P2C: {c:?}");
    drop(held);
}

#[test]
fn load_spill_can_be_turned_off() {
    let e = [zoned("a"), zoned("b")];
    let mut c = locality_config(Algorithm::LatencyAware);
    c.locality.as_mut().unwrap().overload_ratio = f64::INFINITY;
    let b = balancer(c, &e);
    let _held: Vec<_> = (0..10).map(|_| e[0].start(ms(0), &cfg())).collect();
    assert_eq!(local_share(&b, ms(0), 20), 1.0);
}

#[test]
fn shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Balancer>();
    send_sync::<EndpointLoad>();
    send_sync::<Pending>();
}

#[test]
fn an_unmeasured_endpoint_is_probed_one_request_at_a_time() {
    // Measured at 1 ms, far below the 30 ms guess an unmeasured endpoint
    // would otherwise carry: without probing, `fresh` never gets a request.
    let measured = endpoint(1);
    let fresh = endpoint(1);
    request(&measured, ms(0), ms(1));
    let b = Balancer::new(cfg(), vec![measured.clone(), fresh.clone()]).unwrap();
    let mut rng = SplitMix64::new(7);
    assert_eq!(
        b.pick(ms(2), &mut rng),
        Some(1),
        "the idle unmeasured one is probed"
    );
    let probe = b.start(1, ms(2)).unwrap();
    for _ in 0..20 {
        assert_eq!(
            b.pick(ms(2), &mut rng),
            Some(0),
            "one probe at a time: no herd to an endpoint nobody measured"
        );
    }
    probe.finish(ms(3));
    // Measured now (1 ms): an ordinary candidate.
    assert!(!fresh.unmeasured());
}
