//! Injected latency, jitter and errors, drawn from a small per-connection PRNG.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// SplitMix64 (Steele, Lea, Flood 2014): one add and three xor-shift-multiply
/// rounds per number, good enough to draw delays and error coin flips.
/// Each connection owns one, so draws never contend across threads.
#[derive(Debug, Clone, Copy)]
pub(super) struct SplitMix64(u64);

impl SplitMix64 {
    const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    pub(super) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// A seed that differs per call and per process run.
    pub(super) fn connection_seed() -> u64 {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        SplitMix64(now ^ n.wrapping_mul(Self::GOLDEN_GAMMA)).next_u64()
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GOLDEN_GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub(super) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The faults an app injects into every request it serves.
#[derive(Debug, Clone, Copy)]
pub(super) struct Faults {
    pub(super) latency: Duration,
    pub(super) jitter: Duration,
    pub(super) error_rate: f64,
}

impl Faults {
    /// `latency` plus a uniform draw from `[0, jitter)`.
    pub(super) fn delay(&self, rng: &mut SplitMix64) -> Duration {
        if self.jitter.is_zero() {
            return self.latency;
        }
        self.latency + self.jitter.mul_f64(rng.next_f64())
    }

    /// Whether this request gets the injected error status.
    pub(super) fn inject_error(&self, rng: &mut SplitMix64) -> bool {
        // Rates of 0 and 1 draw nothing: the hot path stays free of the PRNG.
        self.error_rate > 0.0 && (self.error_rate >= 1.0 || rng.next_f64() < self.error_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_f64_is_uniform_enough() {
        let mut rng = SplitMix64::new(42);
        let draws: Vec<f64> = (0..100_000).map(|_| rng.next_f64()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let below_tenth = draws.iter().filter(|d| **d < 0.1).count();
        assert!((9_000..11_000).contains(&below_tenth), "{below_tenth}");
    }

    #[test]
    fn seeds_differ_between_connections() {
        assert_ne!(SplitMix64::connection_seed(), SplitMix64::connection_seed());
    }

    #[test]
    fn delay_stays_within_latency_plus_jitter() {
        let faults = Faults {
            latency: Duration::from_millis(10),
            jitter: Duration::from_millis(5),
            error_rate: 0.0,
        };
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            let d = faults.delay(&mut rng);
            assert!(
                d >= faults.latency && d < faults.latency + faults.jitter,
                "{d:?}"
            );
        }
    }

    #[test]
    fn error_rate_extremes_are_exact() {
        let mut rng = SplitMix64::new(1);
        let never = Faults {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
        };
        let always = Faults {
            error_rate: 1.0,
            ..never
        };
        assert!((0..1000).all(|_| !never.inject_error(&mut rng)));
        assert!((0..1000).all(|_| always.inject_error(&mut rng)));
    }
}
