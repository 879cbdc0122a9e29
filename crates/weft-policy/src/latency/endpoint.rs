//! One endpoint's load as every request of a proxy sees it: requests in
//! flight, the peak-EWMA latency estimate, weight, zone, health multiplier
//! and slow start. Updated concurrently through atomics, never locked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::config::{Algorithm, LatencyConfig};

/// The decayed estimate never goes below this, so that cost keeps growing
/// with in-flight requests after a long idle time: an estimate decayed to
/// zero would make an endpoint look free however many requests it holds.
const MIN_ESTIMATE_NS: f64 = 1_000.0;

/// Value of `EndpointLoad::rtt` before the first sample (a NaN `f32`, which
/// a real estimate never is).
const NO_SAMPLE: u64 = u64::MAX;

/// The load of one endpoint, shared (in an `Arc`) by every request a proxy
/// sends it and by every [`Balancer`](super::Balancer) snapshot that lists
/// it. Keep one per endpoint address for as long as the address stays in
/// the endpoint set, so that its latency estimate and in-flight count
/// survive config updates.
///
/// Latency is Finagle's and tower's peak-EWMA in closed form: the largest
/// recent sample, each decayed by `exp(-age / decay)`:
/// `estimate(t) = max_i s_i exp(-(t - t_i) / decay)`. A slower sample
/// raises it at once; with no slower sample it falls by a factor e per
/// `decay`, down to the level of the current samples, or toward zero while
/// the endpoint gets no traffic so that an endpoint avoided after a slow
/// spell is probed again. Before the first sample it is `default_rtt`,
/// decaying from the endpoint's creation; the first sample replaces it.
///
/// tower folds each sample in as `est w + s (1 - w)` with `w = exp(-dt /
/// decay)`, `dt` since the last update, and also decays on every read; as
/// the balancer reads an endpoint far more often than samples arrive, `dt`
/// is tiny and a sample below the estimate carries no weight: the formula
/// above is what tower computes in practice. Here reads do not write, so
/// the estimate does not depend on how often the balancer looks, and as a
/// max it does not depend on the order concurrent completions land in.
#[derive(Debug)]
pub struct EndpointLoad {
    weight: AtomicU32,
    zone: Option<Box<str>>,
    created: Duration,
    slow_start_from: Option<Duration>,
    in_flight: AtomicU32,
    health: AtomicU64,
    /// The estimate and the time of its last update, packed so that one
    /// compare-and-swap updates both and concurrent completions never mix
    /// halves: high 32 bits an `f32` of nanoseconds, low 32 bits the update
    /// time in whole milliseconds, wrapping every 49.7 days (an endpoint
    /// without a sample for that long reads its old estimate, undecayed,
    /// for a few `decay`s, then decays again).
    rtt: AtomicU64,
}

impl EndpointLoad {
    /// An endpoint present when the balancer is first built (proxy start,
    /// or the first endpoint set of a cluster): it takes its full weight
    /// at once.
    pub fn initial(weight: u32, zone: Option<&str>, now: Duration) -> Self {
        Self::build(weight, zone, now, None)
    }

    /// An endpoint that joined a running balancer at `now`: if the config
    /// has [`SlowStart`](super::SlowStart), its weight ramps up from now.
    pub fn added(weight: u32, zone: Option<&str>, now: Duration) -> Self {
        Self::build(weight, zone, now, Some(now))
    }

    fn build(weight: u32, zone: Option<&str>, now: Duration, ramp: Option<Duration>) -> Self {
        EndpointLoad {
            weight: AtomicU32::new(weight),
            zone: zone.map(Into::into),
            created: now,
            slow_start_from: ramp,
            in_flight: AtomicU32::new(0),
            health: AtomicU64::new(1.0f64.to_bits()),
            rtt: AtomicU64::new(NO_SAMPLE),
        }
    }

    /// The configured weight; 0 means drained (never picked).
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    /// Changes the configured weight without losing the latency estimate.
    /// Round robin and the candidate draw of a [`Balancer`](super::Balancer)
    /// read weights when it is built: rebuild it after changing weights.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Relaxed);
    }

    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// Requests started and not yet finished or dropped.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// The factor, in `[0, 1]`, set by the health core.
    pub fn health_multiplier(&self) -> f64 {
        f64::from_bits(self.health.load(Relaxed))
    }

    /// Sets the health factor of the effective weight: 1 healthy, 0
    /// ejected. Clamped to `[0, 1]`; NaN counts as 0.
    pub fn set_health_multiplier(&self, m: f64) {
        let m = if m.is_nan() { 0.0 } else { m.clamp(0.0, 1.0) };
        self.health.store(m.to_bits(), Relaxed);
    }

    /// The slow-start factor in `(0, 1]`: 1 for initial endpoints, after
    /// the window, or without slow start in `cfg`.
    pub fn slow_start_factor(&self, now: Duration, cfg: &LatencyConfig) -> f64 {
        match (&cfg.slow_start, self.slow_start_from) {
            (Some(s), Some(from)) => s.factor(now.saturating_sub(from)),
            _ => 1.0,
        }
    }

    /// weight x health multiplier x slow-start factor.
    pub fn effective_weight(&self, now: Duration, cfg: &LatencyConfig) -> f64 {
        self.weight_with(now, cfg, true)
    }

    /// The effective weight, optionally ignoring health (panic routing).
    pub(super) fn weight_with(&self, now: Duration, cfg: &LatencyConfig, health: bool) -> f64 {
        let w = f64::from(self.weight());
        if w == 0.0 {
            return 0.0;
        }
        let h = if health {
            self.health_multiplier()
        } else {
            1.0
        };
        w * h * self.slow_start_factor(now, cfg)
    }

    /// The latency estimate the balancer uses at `now`.
    pub fn latency(&self, now: Duration, cfg: &LatencyConfig) -> Duration {
        Duration::from_nanos(self.estimate_ns(now, cfg, true) as u64)
    }

    /// Latency-aware cost: estimate (ns) x (in-flight + 1) / effective
    /// weight. Finite and non-negative while the effective weight is
    /// positive; infinite when it is zero.
    pub fn cost(&self, now: Duration, cfg: &LatencyConfig) -> f64 {
        let w = self.effective_weight(now, cfg);
        self.cost_at(Algorithm::LatencyAware, w, now, cfg, true)
    }

    /// The cost `algorithm` compares, given the effective `weight` already
    /// computed. `decayed: false` uses the last estimate without the idle
    /// decay (the locality spill test).
    pub(super) fn cost_at(
        &self,
        algorithm: Algorithm,
        weight: f64,
        now: Duration,
        cfg: &LatencyConfig,
        decayed: bool,
    ) -> f64 {
        if weight <= 0.0 {
            return f64::INFINITY;
        }
        let per_request = match algorithm {
            // Never measured and idle: probe it (one request at a time),
            // or an endpoint faster than `default_rtt` would never be tried
            // while the measured ones are quicker than that guess. Not for
            // the locality spill test (`decayed: false`): no probes across
            // zones.
            Algorithm::LatencyAware if decayed && self.in_flight() == 0 && self.unmeasured() => {
                MIN_ESTIMATE_NS
            }
            Algorithm::LatencyAware => self.estimate_ns(now, cfg, decayed),
            Algorithm::LeastRequest | Algorithm::RoundRobin => 1.0,
        };
        per_request * self.requests_if_picked() / weight
    }

    /// No latency sample yet.
    pub(crate) fn unmeasured(&self) -> bool {
        self.rtt.load(Relaxed) == NO_SAMPLE
    }

    fn requests_if_picked(&self) -> f64 {
        f64::from(self.in_flight()) + 1.0
    }

    fn estimate_ns(&self, now: Duration, cfg: &LatencyConfig, decayed: bool) -> f64 {
        let (est, age) = self.stored(now, nanos(cfg.default_rtt));
        let est = if decayed {
            est * (-age / nanos(cfg.decay)).exp()
        } else {
            est
        };
        est.max(MIN_ESTIMATE_NS)
    }

    /// The stored estimate (ns) and how long ago (ns) it was set.
    fn stored(&self, now: Duration, default_rtt_ns: f64) -> (f64, f64) {
        unpack(self.rtt.load(Relaxed), now).unwrap_or_else(|| {
            let age = nanos(now.saturating_sub(self.created));
            (default_rtt_ns, age)
        })
    }

    /// Folds a latency sample into the estimate: the estimate becomes the
    /// larger of the sample and the current (decayed) estimate; the first
    /// sample replaces the default, which is a guess, not a measurement
    /// (tower keeps the higher of the two, so a new endpoint faster than
    /// `default_rtt` looks slow for a while). A `lower_bound` (the time a
    /// cancelled request waited) replaces the default only if higher.
    fn record(&self, sample: Duration, now: Duration, ewma: Ewma, lower_bound: bool) {
        let s = nanos(sample);
        let mut current = self.rtt.load(Relaxed);
        loop {
            let keep = match unpack(current, now) {
                Some((estimate, age)) => s <= estimate * (-age / ewma.decay_ns).exp(),
                None => {
                    let age = nanos(now.saturating_sub(self.created));
                    lower_bound && s <= ewma.default_rtt_ns * (-age / ewma.decay_ns).exp()
                }
            };
            if keep {
                // Nothing to write: the estimate keeps its time, so its
                // decay carries on from there.
                return;
            }
            match self
                .rtt
                .compare_exchange_weak(current, pack(s, now), Relaxed, Relaxed)
            {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    /// Starts a request: counts it in flight until the returned guard is
    /// finished, cancelled or dropped. `cfg` gives the EWMA settings the
    /// sample is folded in with.
    pub fn start(self: &Arc<Self>, now: Duration, cfg: &LatencyConfig) -> Pending {
        self.in_flight.fetch_add(1, Relaxed);
        Pending {
            endpoint: Arc::clone(self),
            started: now,
            ewma: Ewma {
                default_rtt_ns: nanos(cfg.default_rtt),
                decay_ns: nanos(cfg.decay),
            },
            sampled: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Ewma {
    default_rtt_ns: f64,
    decay_ns: f64,
}

/// One request in flight to an endpoint. The latency sample is taken once:
/// at [`first_byte`](Self::first_byte) for streams (time to first byte),
/// else at [`finish`](Self::finish). The request stays in flight until the
/// guard is finished, cancelled or dropped, however long a stream lasts.
#[derive(Debug)]
#[must_use = "dropping the guard ends the request without a latency sample"]
pub struct Pending {
    endpoint: Arc<EndpointLoad>,
    started: Duration,
    ewma: Ewma,
    sampled: bool,
}

impl Pending {
    pub fn endpoint(&self) -> &Arc<EndpointLoad> {
        &self.endpoint
    }

    /// When the request started.
    pub fn started(&self) -> Duration {
        self.started
    }

    /// The response's first byte (headers) arrived: takes the latency
    /// sample now. Later calls, and the sample of `finish`, are ignored.
    pub fn first_byte(&mut self, now: Duration) {
        if !self.sampled {
            self.sampled = true;
            let rtt = now.saturating_sub(self.started);
            self.endpoint.record(rtt, now, self.ewma, false);
        }
    }

    /// The request completed (for unary calls: the response is complete;
    /// for streams: the stream ended). Takes the latency sample unless
    /// `first_byte` did, and ends the request.
    pub fn finish(mut self, now: Duration) {
        self.first_byte(now);
    }

    /// The caller gave up (timeout, client went away) before a response.
    /// The time waited is a lower bound of the endpoint's latency: it
    /// raises the estimate if it is above it and is otherwise ignored (a
    /// quick cancellation says nothing about the endpoint). Ends the
    /// request.
    pub fn cancel(mut self, now: Duration) {
        if !self.sampled {
            self.sampled = true;
            let waited = now.saturating_sub(self.started);
            self.endpoint.record(waited, now, self.ewma, true);
        }
    }
}

impl Drop for Pending {
    /// Ends the request. Without `finish` or `cancel` no sample is taken
    /// (the guard has no clock).
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Duration in nanoseconds as f64 (exact below 104 days).
pub(super) fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// Whole milliseconds of `now`, wrapping at 2^32.
fn millis32(now: Duration) -> u32 {
    now.as_millis() as u32
}

fn pack(estimate_ns: f64, now: Duration) -> u64 {
    let est = estimate_ns as f32;
    (u64::from(est.to_bits()) << 32) | u64::from(millis32(now))
}

/// How far "now" may lag the time of the last update (threads reading the
/// clock in one order and updating in the other) and count as age 0 rather
/// than as a wrapped, very old time.
const RACE_MS: u32 = 60_000;

/// The estimate (ns) and its age (ns, in whole milliseconds) at `now`,
/// `None` before any sample.
fn unpack(packed: u64, now: Duration) -> Option<(f64, f64)> {
    if packed == NO_SAMPLE {
        return None;
    }
    let est = f64::from(f32::from_bits((packed >> 32) as u32));
    let age_ms = millis32(now).wrapping_sub(packed as u32);
    let age_ms = if age_ms > u32::MAX - RACE_MS {
        0
    } else {
        age_ms
    };
    Some((est, f64::from(age_ms) * 1e6))
}
