//! A discrete-event simulation of a client balancing over endpoints, on a
//! simulated clock: requests arrive at a fixed rate, each endpoint serves
//! after a jittered service time (optionally slowed by its concurrency),
//! completions are processed in time order from an event queue.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use crate::latency::{Balancer, EndpointLoad, LatencyConfig, Pending};
use crate::rng::{Random, SplitMix64};

#[derive(Debug, Clone)]
pub(super) struct SimEndpoint {
    pub service: Duration,
    pub weight: u32,
    pub zone: Option<&'static str>,
    /// Joins the set at this time (slow start applies); `None`: present
    /// from the start.
    pub joins_at: Option<Duration>,
    /// Concurrent requests served at full speed; beyond, service time
    /// stretches in proportion (processor sharing). `None`: unlimited.
    pub capacity: Option<u32>,
    pub health: f64,
    /// From this time on, serve in this time instead (recovery, or a
    /// sudden slowdown).
    pub changes_at: Option<(Duration, Duration)>,
}

impl SimEndpoint {
    pub fn new(service_ms: u64) -> Self {
        SimEndpoint {
            service: Duration::from_millis(service_ms),
            weight: 1,
            zone: None,
            joins_at: None,
            capacity: None,
            health: 1.0,
            changes_at: None,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Scenario {
    pub config: LatencyConfig,
    pub endpoints: Vec<SimEndpoint>,
    pub rate_per_sec: f64,
    pub duration: Duration,
    pub seed: u64,
}

/// One simulated request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Served {
    pub at: Duration,
    pub endpoint: usize,
    pub latency: Duration,
}

pub(super) fn run(s: &Scenario) -> Vec<Served> {
    let mut rng = SplitMix64::new(s.seed);
    let mut jitter = SplitMix64::new(s.seed ^ 0x5eed);
    let mut loads: Vec<Option<Arc<EndpointLoad>>> = vec![None; s.endpoints.len()];
    let mut present: Vec<usize> = Vec::new();
    let mut balancer = rebuild(s, &mut loads, &mut present, Duration::ZERO);
    let mut queue: BinaryHeap<Reverse<(Duration, usize)>> = BinaryHeap::new();
    let mut pending: Vec<Option<Pending>> = Vec::new();
    let mut served = Vec::new();
    let interval = Duration::from_secs_f64(1.0 / s.rate_per_sec);
    let mut now = Duration::ZERO;
    while now < s.duration {
        while let Some(&Reverse((done, id))) = queue.peek() {
            if done > now {
                break;
            }
            queue.pop();
            if let Some(p) = pending[id].take() {
                p.finish(done);
            }
        }
        let due = s
            .endpoints
            .iter()
            .enumerate()
            .any(|(i, e)| e.joins_at.is_some_and(|t| t <= now) && loads[i].is_none());
        if due {
            balancer = rebuild(s, &mut loads, &mut present, now);
        }
        let index = balancer.pick(now, &mut rng).expect("an endpoint");
        let endpoint = present[index];
        let guard = balancer.start(index, now).expect("index in range");
        let e = &s.endpoints[endpoint];
        let stretch = e.capacity.map_or(1.0, |c| {
            (f64::from(guard.endpoint().in_flight()) / f64::from(c)).max(1.0)
        });
        let service = match e.changes_at {
            Some((t, changed)) if now >= t => changed,
            _ => e.service,
        };
        let latency = service.mul_f64((0.8 + 0.4 * jitter.next_f64()) * stretch);
        queue.push(Reverse((now + latency, pending.len())));
        pending.push(Some(guard));
        served.push(Served {
            at: now,
            endpoint,
            latency,
        });
        now += interval;
    }
    served
}

/// A balancer over the endpoints present at `now`, reusing the loads of
/// those already there, as the proxy does on an endpoint update.
fn rebuild(
    s: &Scenario,
    loads: &mut [Option<Arc<EndpointLoad>>],
    present: &mut Vec<usize>,
    now: Duration,
) -> Balancer {
    present.clear();
    for (i, e) in s.endpoints.iter().enumerate() {
        match e.joins_at {
            None if loads[i].is_none() => {
                loads[i] = Some(Arc::new(EndpointLoad::initial(e.weight, e.zone, now)));
            }
            Some(t) if t <= now && loads[i].is_none() => {
                loads[i] = Some(Arc::new(EndpointLoad::added(e.weight, e.zone, now)));
            }
            _ => {}
        }
        if let Some(l) = &loads[i] {
            l.set_health_multiplier(e.health);
            present.push(i);
        }
    }
    let set = present.iter().map(|&i| loads[i].clone().unwrap()).collect();
    Balancer::new(s.config.clone(), set).expect("valid config")
}

/// Share of requests sent to `endpoint` among those arriving in `[from, to)`.
pub(super) fn share(served: &[Served], endpoint: usize, from: Duration, to: Duration) -> f64 {
    let window: Vec<_> = served
        .iter()
        .filter(|r| r.at >= from && r.at < to)
        .collect();
    let hits = window.iter().filter(|r| r.endpoint == endpoint).count();
    hits as f64 / window.len().max(1) as f64
}

/// The `q` quantile (0..=1) of latency, nearest rank.
pub(super) fn quantile(served: &[Served], q: f64) -> Duration {
    let mut l: Vec<Duration> = served.iter().map(|r| r.latency).collect();
    l.sort_unstable();
    if l.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * l.len() as f64).ceil() as usize).clamp(1, l.len());
    l[rank - 1]
}
