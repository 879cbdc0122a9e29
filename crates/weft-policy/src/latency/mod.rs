//! Latency-aware load balancing, the default for HTTP and gRPC: power of
//! two (`choices`) random choices over peak-EWMA latency x (in-flight + 1)
//! / effective weight, with locality preference and slow start; least
//! request and round robin for comparison.
//!
//! - [`EndpointLoad`]: one per endpoint, shared by all requests (in-flight
//!   count, latency estimate, weight, zone, health multiplier, slow start).
//!   A request holds a [`Pending`] guard from start to end; its latency
//!   sample is the time to the first byte for streams, the whole exchange
//!   for unary calls.
//! - [`Balancer`]: an immutable snapshot of one endpoint set plus its
//!   [`LatencyConfig`]; [`Balancer::pick`] returns an index. Rebuild it when
//!   the endpoint set or the config changes, reusing the `Arc<EndpointLoad>`
//!   of the endpoints that remain.
//!
//! Effective weight = configured weight x health multiplier x slow-start
//! factor. P2C candidates are drawn uniformly among endpoints with positive
//! effective weight and cost is divided by it, so under load in-flight
//! requests spread in proportion to it (water-filling: at very low load
//! the best endpoints take more than their share). Drawing candidates in
//! proportion to weight as well would count it twice: in the simulation
//! (least request, weights 1:2:3, 300 req/s) that gave 9/33/58 % instead
//! of 16/35/49 %, and a slower slow-start ramp.
//!
//! Effective weight 0 means never picked while some endpoint has a
//! positive one. When none has (the health core ejected them all), the
//! pick ignores health multipliers, like Envoy's panic routing: trying
//! ejected endpoints beats failing every request. Only when no endpoint
//! has a positive configured weight (all drained) is the answer `None`.
//!
//! Locality knows two groups, the local zone and all the others together;
//! there is no zone-by-zone order among the others.

mod config;
mod endpoint;
#[cfg(test)]
mod tests;

pub use config::{Algorithm, LatencyConfig, LatencyConfigError, Locality, MAX_CHOICES, SlowStart};
pub use endpoint::{EndpointLoad, Pending};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::balance::{Balance, WeightedRoundRobin};
use crate::rng::Random;

/// Redraws per candidate that had weight 0, before giving up on it (and,
/// with no candidate at all, scanning the group).
const DRAWS_PER_CHOICE: usize = 4;

/// One endpoint set balanced under one config. Cheap to build (round robin
/// precomputes a cycle of at most 10 000 slots); share it behind an `Arc`
/// or `ArcSwap`: `pick` takes `&self` and is lock-free.
#[derive(Debug)]
pub struct Balancer {
    config: LatencyConfig,
    endpoints: Vec<Arc<EndpointLoad>>,
    /// The local zone's endpoints, or all of them without locality.
    local: Group,
    /// The other zones' endpoints; empty without locality.
    remote: Group,
    local_keep: KeepCache,
}

#[derive(Debug)]
struct Group {
    members: Vec<usize>,
    rr: Option<WeightedRoundRobin>,
}

/// The local zone's share of traffic by health, recomputed at most once
/// per `Locality::refresh`. Two threads may both recompute; either result
/// is right.
#[derive(Debug)]
struct KeepCache {
    at_ns: AtomicU64,
    keep: AtomicU64,
}

const NEVER: u64 = u64::MAX;

/// The lowest cost offered so far; ties are broken uniformly at random
/// (reservoir sampling), so that neither draw order nor position in the
/// endpoint list favours an endpoint when costs are equal (least request
/// ties often).
#[derive(Debug, Default)]
struct Cheapest {
    best: Option<(usize, f64)>,
    ties: u32,
}

impl Cheapest {
    fn offer(&mut self, i: usize, cost: f64, rng: &mut impl Random) {
        match self.best {
            Some((_, b)) if cost > b => {}
            Some((_, b)) if cost == b => {
                self.ties += 1;
                if rng.below(self.ties as usize) == 0 {
                    self.best = Some((i, cost));
                }
            }
            _ => {
                self.best = Some((i, cost));
                self.ties = 1;
            }
        }
    }

    fn found(&self) -> Option<(usize, f64)> {
        self.best
    }
}

impl Balancer {
    /// Validates `config` and indexes `endpoints` by zone. Indexes
    /// returned by [`pick`](Self::pick) are positions in `endpoints`.
    pub fn new(
        config: LatencyConfig,
        endpoints: Vec<Arc<EndpointLoad>>,
    ) -> Result<Self, LatencyConfigError> {
        config.validate()?;
        let is_local = |e: &EndpointLoad| match &config.locality {
            Some(l) => e.zone() == Some(l.local_zone.as_str()),
            None => true,
        };
        let (local, remote): (Vec<usize>, Vec<usize>) =
            (0..endpoints.len()).partition(|&i| is_local(&endpoints[i]));
        let round_robin = config.algorithm == Algorithm::RoundRobin;
        let group = |members: Vec<usize>| {
            let weights: Vec<u32> = members.iter().map(|&i| endpoints[i].weight()).collect();
            Group {
                rr: round_robin.then(|| WeightedRoundRobin::new(&weights)),
                members,
            }
        };
        Ok(Balancer {
            local: group(local),
            remote: group(remote),
            endpoints,
            config,
            local_keep: KeepCache {
                at_ns: AtomicU64::new(NEVER),
                keep: AtomicU64::new(1.0f64.to_bits()),
            },
        })
    }

    pub fn config(&self) -> &LatencyConfig {
        &self.config
    }

    pub fn endpoints(&self) -> &[Arc<EndpointLoad>] {
        &self.endpoints
    }

    /// Starts a request to the endpoint at `index` (see
    /// [`EndpointLoad::start`]); `None` if the index is out of range.
    pub fn start(&self, index: usize, now: Duration) -> Option<Pending> {
        let e = self.endpoints.get(index)?;
        Some(e.start(now, &self.config))
    }

    /// The endpoint to send the next request to, or `None` when there are
    /// no endpoints or all are drained (configured weight 0).
    ///
    /// With locality, the local zone first keeps `min(1, overprovisioning
    /// x healthy share)` of requests (the rest go to the other zones); then
    /// a P2C pick in the local zone is compared with one in the other zones
    /// and the remote endpoint wins if the local cost exceeds
    /// `overload_ratio` x its cost. The remote cost there leaves out the
    /// idle decay, which would otherwise trickle a steady flow of probes
    /// across zones.
    pub fn pick(&self, now: Duration, rng: &mut impl Random) -> Option<usize> {
        self.pick_with(now, true, rng)
            .or_else(|| self.pick_with(now, false, rng))
    }

    fn pick_with(&self, now: Duration, health: bool, rng: &mut impl Random) -> Option<usize> {
        let (local, remote) = (&self.local, &self.remote);
        if remote.members.is_empty() {
            return self.choose(local, now, health, rng).map(|(i, _)| i);
        }
        if local.members.is_empty() {
            return self.choose(remote, now, health, rng).map(|(i, _)| i);
        }
        let keep = if health { self.local_keep(now) } else { 1.0 };
        if keep < 1.0 && rng.next_f64() >= keep {
            let spilled = self.choose(remote, now, health, rng);
            if let Some((i, _)) = spilled {
                return Some(i);
            }
        }
        let Some((best, _)) = self.choose(local, now, health, rng) else {
            return self.choose(remote, now, health, rng).map(|(i, _)| i);
        };
        let ratio = self
            .config
            .locality
            .as_ref()
            .map_or(f64::INFINITY, |l| l.overload_ratio);
        if self.config.algorithm == Algorithm::RoundRobin || ratio == f64::INFINITY {
            return Some(best);
        }
        if let Some((r, _)) = self.choose(remote, now, health, rng)
            && self.spill_cost(best, now, true) > ratio * self.spill_cost(r, now, false)
        {
            return Some(r);
        }
        Some(best)
    }

    /// Cost for the load spill test: without the health multiplier, which
    /// the healthy share already accounts for (a half-healthy zone would
    /// otherwise look twice as loaded and spill far more than 30 %).
    fn spill_cost(&self, i: usize, now: Duration, decayed: bool) -> f64 {
        let (e, cfg) = (&self.endpoints[i], &self.config);
        e.cost_at(
            cfg.algorithm,
            e.weight_with(now, cfg, false),
            now,
            cfg,
            decayed,
        )
    }

    /// One endpoint of `group` with positive weight, and its cost (0 for
    /// round robin).
    fn choose(
        &self,
        group: &Group,
        now: Duration,
        health: bool,
        rng: &mut impl Random,
    ) -> Option<(usize, f64)> {
        match self.config.algorithm {
            Algorithm::RoundRobin => self.round_robin(group, now, health, rng).map(|i| (i, 0.0)),
            _ => self.p2c(group, now, health, rng),
        }
    }

    /// The cheapest of `choices` distinct candidates drawn uniformly among
    /// endpoints with positive weight: a uniform `choices`-subset (Floyd's
    /// algorithm), then redraws for candidates with weight 0. O(choices)
    /// unless most of the group has weight 0.
    fn p2c(
        &self,
        group: &Group,
        now: Duration,
        health: bool,
        rng: &mut impl Random,
    ) -> Option<(usize, f64)> {
        let m = group.members.len();
        let k = self.config.choices;
        if m <= k {
            return self.cheapest(group, now, health, rng);
        }
        let mut drawn = [0usize; MAX_CHOICES];
        for (n, j) in (m - k..m).enumerate() {
            let t = rng.below(j + 1);
            drawn[n] = if drawn[..n].contains(&t) { j } else { t };
        }
        let mut best = Cheapest::default();
        let mut candidates = 0;
        for &pos in &drawn[..k] {
            candidates += usize::from(self.offer(&mut best, group.members[pos], now, health, rng));
        }
        let mut redrawn = [0usize; MAX_CHOICES];
        let mut n = 0;
        for _ in 0..DRAWS_PER_CHOICE * (k - candidates) {
            if candidates == k {
                break;
            }
            let pos = rng.below(m);
            if drawn[..k].contains(&pos) || redrawn[..n].contains(&pos) {
                continue;
            }
            if self.offer(&mut best, group.members[pos], now, health, rng) {
                redrawn[n] = pos;
                n += 1;
                candidates += 1;
            }
        }
        best.found()
            .or_else(|| self.cheapest(group, now, health, rng))
    }

    /// Offers endpoint `i` as a candidate; false if its weight is 0.
    fn offer(
        &self,
        best: &mut Cheapest,
        i: usize,
        now: Duration,
        health: bool,
        rng: &mut impl Random,
    ) -> bool {
        let w = self.endpoints[i].weight_with(now, &self.config, health);
        if w <= 0.0 {
            return false;
        }
        best.offer(i, self.cost(i, w, now), rng);
        true
    }

    /// The cheapest endpoint of the whole group with positive weight.
    fn cheapest(
        &self,
        group: &Group,
        now: Duration,
        health: bool,
        rng: &mut impl Random,
    ) -> Option<(usize, f64)> {
        let mut best = Cheapest::default();
        for &i in &group.members {
            self.offer(&mut best, i, now, health, rng);
        }
        best.found()
    }

    fn cost(&self, i: usize, weight: f64, now: Duration) -> f64 {
        self.endpoints[i].cost_at(self.config.algorithm, weight, now, &self.config, true)
    }

    /// Smooth weighted round robin on the configured weights; a slot is
    /// taken with probability effective / configured weight, else the next
    /// slot is tried, so traffic follows the effective weights.
    fn round_robin(
        &self,
        group: &Group,
        now: Duration,
        health: bool,
        rng: &mut impl Random,
    ) -> Option<usize> {
        let rr = group.rr.as_ref()?;
        for _ in 0..DRAWS_PER_CHOICE * group.members.len() {
            let i = group.members[rr.pick()?];
            let e = &self.endpoints[i];
            let configured = f64::from(e.weight());
            let w = e.weight_with(now, &self.config, health);
            if w > 0.0 && (w >= configured || rng.next_f64() * configured < w) {
                return Some(i);
            }
        }
        // Most of the group is nearly ejected: any endpoint that can take
        // traffic, weighted by nothing but luck.
        self.cheapest(group, now, health, rng).map(|(i, _)| i)
    }

    /// The local zone's share of traffic by health.
    fn local_keep(&self, now: Duration) -> f64 {
        let Some(locality) = &self.config.locality else {
            return 1.0;
        };
        let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX - 1);
        let at = self.local_keep.at_ns.load(Ordering::Acquire);
        if at != NEVER && now_ns.saturating_sub(at) < locality.refresh.as_nanos() as u64 {
            return f64::from_bits(self.local_keep.keep.load(Ordering::Relaxed));
        }
        let (mut healthy, mut total) = (0.0, 0.0);
        for &i in &self.local.members {
            let e = &self.endpoints[i];
            let w = f64::from(e.weight());
            healthy += w * e.health_multiplier();
            total += w;
        }
        let share = if total > 0.0 { healthy / total } else { 0.0 };
        let keep = (locality.overprovisioning * share).min(1.0);
        self.local_keep
            .keep
            .store(keep.to_bits(), Ordering::Relaxed);
        self.local_keep.at_ns.store(now_ns, Ordering::Release);
        keep
    }
}
