//! Randomness for the balancers and hedging: fast, per-thread, seedable in
//! tests. Not cryptographic.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of uniform random numbers. The proxy uses [`ThreadRng`];
/// tests pass a seeded [`SplitMix64`] so that runs repeat.
pub trait Random {
    fn next_u64(&mut self) -> u64;

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias worth caring about
    /// at these sizes.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014).
#[derive(Debug, Clone, Copy)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
}

impl Random for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Mix in the thread's stack address so threads started together differ.
    let local = 0u8;
    t ^ (&raw const local as u64).rotate_left(32)
}

/// The calling thread's generator (SplitMix64 in a thread-local).
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadRng;

impl Random for ThreadRng {
    fn next_u64(&mut self) -> u64 {
        STATE.with(|s| {
            let mut g = SplitMix64(s.get());
            let v = g.next_u64();
            s.set(g.0);
            v
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = SplitMix64::new(7);
        let mut seen = [0u32; 5];
        for _ in 0..10_000 {
            seen[r.below(5)] += 1;
        }
        assert!(seen.iter().all(|n| (1800..2200).contains(n)), "{seen:?}");
    }

    #[test]
    fn thread_rngs_differ_between_draws() {
        let mut r = ThreadRng;
        assert_ne!(r.next_u64(), r.next_u64());
        let f = r.next_f64();
        assert!((0.0..1.0).contains(&f));
    }
}
