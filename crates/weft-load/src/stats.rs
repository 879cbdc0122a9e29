//! Where outcomes are counted: sharded so that connection tasks on several
//! threads rarely touch the same lock, merged into a [`Report`] at the end
//! and into one [`Interval`] per second for the live line.
//!
//! Histograms hold nanoseconds (3 significant digits, auto-resizing, so an
//! idle shard costs little).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::grpc::status_name;
use crate::outcome::{ErrorKind, Outcome};
use crate::report::{Percentiles, StepReport};
use crate::schedule::Phase;

pub(crate) fn histogram() -> Histogram<u64> {
    // 3 significant digits from 1 ns, growing as needed.
    let mut h = Histogram::new(3).expect("3 significant digits is valid");
    h.auto(true);
    h
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    // Auto-resizing: recording cannot fail for any u64.
    let _ = h.record(ns);
}

/// Percentiles of a nanosecond histogram, in milliseconds.
pub(crate) fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    Percentiles {
        p50: ms(h.value_at_quantile(0.50)),
        p90: ms(h.value_at_quantile(0.90)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        p9999: ms(h.value_at_quantile(0.9999)),
        max: ms(h.max()),
        mean: h.mean() / 1e6,
        count: h.len(),
    }
}

/// Everything counted for one measured step.
#[derive(Debug, Clone)]
pub(crate) struct StepStats {
    pub(crate) latency: Histogram<u64>,
    pub(crate) service: Histogram<u64>,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) responses: u64,
    pub(crate) status: BTreeMap<u16, u64>,
    pub(crate) grpc: BTreeMap<u8, u64>,
    pub(crate) kinds: [u64; ErrorKind::COUNT],
    pub(crate) examples: BTreeMap<&'static str, String>,
}

impl StepStats {
    fn new() -> Self {
        StepStats {
            latency: histogram(),
            service: histogram(),
            requests: 0,
            errors: 0,
            responses: 0,
            status: BTreeMap::new(),
            grpc: BTreeMap::new(),
            kinds: [0; ErrorKind::COUNT],
            examples: BTreeMap::new(),
        }
    }

    fn add_outcome(&mut self, latency: Duration, o: &Outcome) {
        self.requests += 1;
        record(&mut self.latency, latency);
        if let Some(s) = o.service {
            record(&mut self.service, s);
        }
        if let Some(code) = o.status {
            self.responses += 1;
            *self.status.entry(code).or_default() += 1;
        }
        if let Some(g) = o.grpc {
            *self.grpc.entry(g).or_default() += 1;
        }
        if let Some(f) = &o.failure {
            self.errors += 1;
            self.kinds[f.kind.index()] += 1;
            self.examples
                .entry(f.kind.name())
                .or_insert_with(|| f.message.clone());
        }
    }

    pub(crate) fn merge(&mut self, other: &StepStats) {
        let _ = self.latency.add(&other.latency);
        let _ = self.service.add(&other.service);
        self.requests += other.requests;
        self.errors += other.errors;
        self.responses += other.responses;
        for (k, v) in &other.status {
            *self.status.entry(*k).or_default() += v;
        }
        for (k, v) in &other.grpc {
            *self.grpc.entry(*k).or_default() += v;
        }
        for (a, b) in self.kinds.iter_mut().zip(other.kinds) {
            *a += b;
        }
        for (k, v) in &other.examples {
            self.examples.entry(k).or_insert_with(|| v.clone());
        }
    }

    /// The step as a report, over a window of `duration`.
    pub(crate) fn report(&self, rate: Option<f64>, duration: Duration) -> StepReport {
        let secs = duration.as_secs_f64();
        StepReport {
            rate,
            duration_s: secs,
            requests: self.requests,
            errors: self.errors,
            achieved_rate: if secs > 0.0 {
                self.responses as f64 / secs
            } else {
                0.0
            },
            status_counts: self
                .status
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            grpc_status_counts: self
                .grpc
                .iter()
                .map(|(k, v)| (status_name(*k).to_owned(), *v))
                .collect(),
            error_counts: self
                .kinds
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (ErrorKind::from_index(i).name().to_owned(), *n))
                .collect(),
            latency_ms: percentiles(&self.latency),
            service_time_ms: percentiles(&self.service),
        }
    }

    pub(crate) fn examples(&self) -> BTreeMap<String, String> {
        self.examples
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }
}

/// What one second of the run saw, reset at every tick.
#[derive(Debug)]
struct IntervalStats {
    latency: Histogram<u64>,
    completed: u64,
    errors: u64,
}

#[derive(Debug)]
struct Shard {
    steps: Vec<StepStats>,
    interval: IntervalStats,
    send_lag: Histogram<u64>,
    /// Requests that found every connection busy and waited more than a
    /// millisecond for one.
    queued_long: u64,
}

/// The counters of a run.
#[derive(Debug)]
pub(crate) struct Stats {
    shards: Vec<Mutex<Shard>>,
    /// Requests handed to a connection (warmup included).
    pub(crate) sent: AtomicU64,
}

/// A one-second slice, merged over the shards.
#[derive(Debug, Clone)]
pub(crate) struct IntervalSnapshot {
    /// The interval's latencies (ns).
    pub(crate) latency: Histogram<u64>,
    pub(crate) completed: u64,
    pub(crate) errors: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Stats {
    pub(crate) fn new(shards: usize, steps: usize) -> Self {
        Stats {
            shards: (0..shards.max(1))
                .map(|_| {
                    Mutex::new(Shard {
                        steps: (0..steps.max(1)).map(|_| StepStats::new()).collect(),
                        interval: IntervalStats {
                            latency: histogram(),
                            completed: 0,
                            errors: 0,
                        },
                        send_lag: histogram(),
                        queued_long: 0,
                    })
                })
                .collect(),
            sent: AtomicU64::new(0),
        }
    }

    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    fn shard(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding the lock cannot leave counts inconsistent
        // in a way that matters more than losing them.
        self.shards[i % self.shards.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a finished request; warmup requests only feed the live line.
    pub(crate) fn record(&self, shard: usize, phase: Phase, latency: Duration, o: &Outcome) {
        let mut s = self.shard(shard);
        record(&mut s.interval.latency, latency);
        s.interval.completed += 1;
        if o.failure.is_some() {
            s.interval.errors += 1;
        }
        if let Phase::Step(n) = phase
            && let Some(step) = s.steps.get_mut(n)
        {
            step.add_outcome(latency, o);
        }
    }

    /// How late a request left although a connection was free for it.
    pub(crate) fn record_send_lag(&self, shard: usize, phase: Phase, lag: Duration) {
        if phase != Phase::Warmup {
            record(&mut self.shard(shard).send_lag, lag);
        }
    }

    /// A request that had to wait for a busy connection.
    pub(crate) fn record_queued(&self, shard: usize, phase: Phase, waited: Duration) {
        if phase != Phase::Warmup && waited > Duration::from_millis(1) {
            self.shard(shard).queued_long += 1;
        }
    }

    /// Takes (and resets) the current interval.
    pub(crate) fn take_interval(&self) -> IntervalSnapshot {
        let mut h = histogram();
        let mut snap = IntervalSnapshot {
            latency: histogram(),
            completed: 0,
            errors: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
        };
        for i in 0..self.shards.len() {
            let mut s = self.shard(i);
            let _ = h.add(&s.interval.latency);
            s.interval.latency.reset();
            snap.completed += s.interval.completed;
            snap.errors += s.interval.errors;
            s.interval.completed = 0;
            s.interval.errors = 0;
        }
        if !h.is_empty() {
            snap.p50_ms = h.value_at_quantile(0.5) as f64 / 1e6;
            snap.p99_ms = h.value_at_quantile(0.99) as f64 / 1e6;
            snap.max_ms = h.max() as f64 / 1e6;
        }
        snap.latency = h;
        snap
    }

    /// Every step merged over the shards, then all steps merged.
    pub(crate) fn merged(&self) -> Merged {
        let steps_n = self.shard(0).steps.len();
        let mut steps: Vec<StepStats> = (0..steps_n).map(|_| StepStats::new()).collect();
        let mut send_lag = histogram();
        let mut queued_long = 0;
        for i in 0..self.shards.len() {
            let s = self.shard(i);
            for (acc, st) in steps.iter_mut().zip(&s.steps) {
                acc.merge(st);
            }
            let _ = send_lag.add(&s.send_lag);
            queued_long += s.queued_long;
        }
        let mut total = StepStats::new();
        for st in &steps {
            total.merge(st);
        }
        Merged {
            steps,
            total,
            send_lag,
            queued_long,
        }
    }
}

/// The run's numbers, merged.
#[derive(Debug)]
pub(crate) struct Merged {
    pub(crate) steps: Vec<StepStats>,
    pub(crate) total: StepStats,
    pub(crate) send_lag: Histogram<u64>,
    pub(crate) queued_long: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Failure;

    fn ok(status: u16, ms: u64) -> Outcome {
        Outcome {
            status: Some(status),
            grpc: None,
            failure: None,
            service: Some(Duration::from_millis(ms)),
        }
    }

    #[test]
    fn shards_merge_into_exact_counts_and_percentiles() {
        let stats = Stats::new(4, 2);
        for i in 0..1000u64 {
            let o = ok(200, 1);
            stats.record(
                i as usize,
                Phase::Step((i % 2) as usize),
                Duration::from_millis(i + 1),
                &o,
            );
        }
        let f = Outcome::failed(Failure::new(ErrorKind::ConnectRefused, "refused"), None);
        stats.record(1, Phase::Step(0), Duration::from_millis(1), &f);
        stats.record(1, Phase::Warmup, Duration::from_millis(1), &f);
        let m = stats.merged();
        assert_eq!(m.total.requests, 1001);
        assert_eq!(m.total.errors, 1);
        assert_eq!(m.steps[0].requests, 501);
        let r = m.total.report(Some(100.0), Duration::from_secs(10));
        assert_eq!(r.status_counts.get("200"), Some(&1000));
        assert_eq!(r.error_counts.get("connect_refused"), Some(&1));
        assert!((r.achieved_rate - 100.0).abs() < 1e-9);
        assert!(
            (r.latency_ms.p50 - 500.0).abs() < 1.0,
            "{}",
            r.latency_ms.p50
        );
        assert!((r.latency_ms.max - 1000.0).abs() < 1.0);
        assert_eq!(r.service_time_ms.count, 1000);
        let iv = stats.take_interval();
        assert_eq!((iv.completed, iv.errors), (1002, 2));
        assert_eq!(stats.take_interval().completed, 0);
    }
}
