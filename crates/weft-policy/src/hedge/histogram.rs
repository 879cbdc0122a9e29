//! Latency percentiles over a sliding window: HDR histograms in rotating
//! slices, plus their running sum so that a percentile needs one scan.
//! Samples can also be staged and then committed or discarded as a batch, so
//! that a caller can keep an anomaly out of the window.
//!
//! Values are microseconds at 2 significant digits (each bucket spans at most
//! 1% of its value), auto-resizing up to [`MAX_LATENCY`], in `u32` counts:
//! a slice that has seen latencies up to a second holds about 7 KiB.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Longer latencies are recorded as this (a hedge delay beyond it is moot).
pub const MAX_LATENCY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct RotatingHistogram {
    slices: Box<[Histogram<u32>]>,
    /// The sum of `slices`.
    total: Histogram<u32>,
    /// Staged samples, not yet in any slice.
    pending: Histogram<u32>,
    slice_nanos: u128,
    /// Slice number (since the clock's epoch) of `slices[epoch % len]`.
    epoch: u64,
    required_history: u64,
}

impl RotatingHistogram {
    /// A window of `window` cut into `slices` slices; percentiles are `None`
    /// until the window holds `required_history` samples.
    ///
    /// # Panics
    ///
    /// If `slices` is zero or `window / slices` is zero.
    pub fn new(window: Duration, slices: usize, required_history: u64) -> Self {
        assert!(slices > 0, "a rotating histogram needs at least one slice");
        let slice_nanos = window.as_nanos() / slices as u128;
        assert!(slice_nanos > 0, "histogram slices must be longer than 0");
        Self {
            slices: (0..slices).map(|_| histogram()).collect(),
            total: histogram(),
            pending: histogram(),
            slice_nanos,
            epoch: 0,
            required_history,
        }
    }

    /// The window this histogram covers.
    pub fn window(&self) -> Duration {
        duration_from_nanos(self.slice_nanos * self.slices.len() as u128)
    }

    pub fn record(&mut self, latency: Duration, now: Duration) {
        self.advance(now);
        let us = micros(latency);
        let i = self.index(self.epoch);
        // Auto-resizing up to MAX_LATENCY: recording cannot fail.
        let _ = self.slices[i].record(us);
        let _ = self.total.record(us);
    }

    /// Holds a sample back until [`commit`](Self::commit) or
    /// [`discard`](Self::discard).
    pub fn stage(&mut self, latency: Duration) {
        let _ = self.pending.record(micros(latency));
    }

    /// Adds the staged samples to the window (in the slice of `now`).
    pub fn commit(&mut self, now: Duration) {
        self.advance(now);
        if self.pending.is_empty() {
            return;
        }
        let i = self.index(self.epoch);
        // Auto-resizing: adding cannot run out of range.
        let _ = self.slices[i].add(&self.pending);
        let _ = self.total.add(&self.pending);
        self.pending.reset();
    }

    /// Drops the staged samples.
    pub fn discard(&mut self) {
        self.pending.reset();
    }

    /// Samples in the window.
    pub fn len(&mut self, now: Duration) -> u64 {
        self.advance(now);
        self.total.len()
    }

    pub fn is_empty(&mut self, now: Duration) -> bool {
        self.len(now) == 0
    }

    /// The `percentile` (0 to 100) of the window's latencies (rounded up to
    /// the histogram's resolution), or `None` while the window holds fewer
    /// than `required_history` samples (or none).
    pub fn percentile(&mut self, percentile: f64, now: Duration) -> Option<Duration> {
        let n = self.len(now);
        if n == 0 || n < self.required_history {
            return None;
        }
        Some(Duration::from_micros(
            self.total.value_at_percentile(percentile),
        ))
    }

    /// Forgets every sample, staged ones included.
    pub fn clear(&mut self) {
        for s in &mut self.slices {
            s.reset();
        }
        self.total.reset();
        self.pending.reset();
    }

    fn advance(&mut self, now: Duration) {
        let epoch = (now.as_nanos() / self.slice_nanos) as u64;
        // A slightly earlier `now` (another thread's clock read) records into
        // the current slice.
        if epoch <= self.epoch {
            return;
        }
        if epoch - self.epoch >= self.slices.len() as u64 {
            for s in &mut self.slices {
                s.reset();
            }
            self.total.reset();
        } else {
            for e in self.epoch + 1..=epoch {
                let i = self.index(e);
                if self.total.subtract(&self.slices[i]).is_err() {
                    // Cannot happen (the total holds every slice's counts);
                    // rebuilding is the safe answer if it ever does.
                    self.slices[i].reset();
                    self.rebuild_total();
                }
                self.slices[i].reset();
            }
        }
        self.epoch = epoch;
    }

    fn rebuild_total(&mut self) {
        self.total.reset();
        for s in &self.slices {
            // Auto-resizing: adding cannot run out of range.
            let _ = self.total.add(s);
        }
    }

    fn index(&self, epoch: u64) -> usize {
        (epoch % self.slices.len() as u64) as usize
    }
}

fn histogram() -> Histogram<u32> {
    // Auto-resizing from 1 µs; 2 significant digits is always valid.
    Histogram::new(2).expect("2 significant digits is valid")
}

fn micros(latency: Duration) -> u64 {
    latency.min(MAX_LATENCY).as_micros().max(1) as u64
}

fn duration_from_nanos(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_within_histogram_resolution() {
        let mut h = RotatingHistogram::new(ms(10_000), 5, 1);
        for i in 1..=1000 {
            h.record(ms(i), ms(0));
        }
        let p95 = h.percentile(95.0, ms(0)).unwrap();
        assert!((ms(950)..=ms(960)).contains(&p95), "{p95:?}");
        let p50 = h.percentile(50.0, ms(1)).unwrap();
        assert!((ms(500)..=ms(505)).contains(&p50), "{p50:?}");
    }

    #[test]
    fn none_until_required_history() {
        let mut h = RotatingHistogram::new(ms(10_000), 5, 3);
        assert_eq!(h.percentile(95.0, ms(0)), None);
        h.record(ms(5), ms(0));
        h.record(ms(5), ms(0));
        assert_eq!(h.percentile(95.0, ms(0)), None);
        h.record(ms(5), ms(0));
        assert!(h.percentile(95.0, ms(0)).is_some());
    }

    #[test]
    fn old_slices_rotate_out() {
        // 5 slices of 2 s.
        let mut h = RotatingHistogram::new(ms(10_000), 5, 1);
        for _ in 0..100 {
            h.record(ms(500), ms(100));
        }
        for _ in 0..100 {
            h.record(ms(5), ms(4_000));
        }
        assert_eq!(h.len(ms(9_999)), 200);
        assert!(h.percentile(90.0, ms(9_999)).unwrap() >= ms(500));
        // The slice of t=0.1s ([0, 2s)) leaves at t=10s.
        assert_eq!(h.len(ms(10_000)), 100);
        let p90 = h.percentile(90.0, ms(10_000)).unwrap();
        assert!(p90 <= ms(6), "{p90:?}");
        // The whole window later: empty.
        assert_eq!(h.len(ms(14_000)), 0);
        assert_eq!(h.percentile(50.0, ms(14_000)), None);
    }

    #[test]
    fn long_gaps_clear_everything() {
        let mut h = RotatingHistogram::new(ms(1_000), 4, 1);
        h.record(ms(3), ms(0));
        h.record(ms(7), ms(900));
        assert!(!h.is_empty(ms(900)));
        assert_eq!(h.len(ms(3_600_000)), 0);
        h.record(ms(2), ms(3_600_000));
        let p99 = h.percentile(99.0, ms(3_600_000)).unwrap();
        assert!((ms(2)..=ms(2) * 101 / 100).contains(&p99), "{p99:?}");
    }

    #[test]
    fn extreme_latencies_are_clamped_not_lost() {
        let mut h = RotatingHistogram::new(ms(1_000), 2, 1);
        h.record(Duration::from_secs(86_400), ms(0));
        h.record(Duration::ZERO, ms(0));
        assert_eq!(h.len(ms(0)), 2);
        let max = h.percentile(100.0, ms(0)).unwrap();
        assert!(max >= MAX_LATENCY && max <= MAX_LATENCY * 101 / 100);
        assert_eq!(h.percentile(1.0, ms(0)), Some(Duration::from_micros(1)));
    }

    #[test]
    fn staged_samples_count_only_once_committed() {
        let mut h = RotatingHistogram::new(ms(10_000), 5, 1);
        h.record(ms(5), ms(0));
        h.stage(ms(500));
        h.stage(ms(500));
        assert_eq!(h.len(ms(0)), 1);
        h.discard();
        h.commit(ms(1));
        assert_eq!(h.len(ms(1)), 1);
        h.stage(ms(500));
        h.commit(ms(2_000));
        assert_eq!(h.len(ms(2_000)), 2);
        assert!(h.percentile(99.0, ms(2_000)).unwrap() >= ms(500));
        // Committed into the slice of t=2s: it leaves at t=12s, after the
        // sample of t=0.
        assert_eq!(h.len(ms(10_000)), 1);
        assert_eq!(h.len(ms(12_000)), 0);
    }

    #[test]
    fn window_is_reported() {
        assert_eq!(
            RotatingHistogram::new(ms(30_000), 6, 1).window(),
            ms(30_000)
        );
    }
}
