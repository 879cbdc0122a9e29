//! Smooth weighted round-robin (nginx's algorithm), precomputed into a cycle
//! so that picking is one atomic increment: no lock on the request path.
//!
//! Over any window of `cycle_len()` consecutive picks, target `i` is chosen
//! exactly `weight_i` times (after weights are reduced by their GCD and, for
//! very large totals, scaled down), and picks of a target are spread evenly
//! rather than bunched.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Balance;

/// The longest precomputed cycle; larger weight totals are scaled down
/// proportionally (every non-zero weight keeps at least one slot).
const MAX_CYCLE: u64 = 10_000;

#[derive(Debug)]
pub struct WeightedRoundRobin {
    cycle: Box<[u32]>,
    next: AtomicUsize,
}

impl WeightedRoundRobin {
    /// Builds the cycle for these weights; targets with weight 0 are never
    /// picked.
    pub fn new(weights: &[u32]) -> Self {
        Self::starting_at(weights, 0)
    }

    /// Like [`new`](Self::new) but starts at position `offset` of the cycle, so
    /// that many proxies with the same config do not all hit the same target
    /// first.
    pub fn starting_at(weights: &[u32], offset: usize) -> Self {
        let reduced = reduce(weights);
        let cycle = smooth_cycle(&reduced);
        let next = if cycle.is_empty() {
            0
        } else {
            offset % cycle.len()
        };
        Self {
            cycle: cycle.into_boxed_slice(),
            next: AtomicUsize::new(next),
        }
    }

    /// Number of picks after which the sequence repeats.
    pub fn cycle_len(&self) -> usize {
        self.cycle.len()
    }
}

impl Balance for WeightedRoundRobin {
    fn pick(&self) -> Option<usize> {
        if self.cycle.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.cycle[n % self.cycle.len()] as usize)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Divides weights by their GCD and scales them so the total fits MAX_CYCLE.
fn reduce(weights: &[u32]) -> Vec<u64> {
    let g = weights.iter().fold(0u64, |g, &w| gcd(g, w as u64));
    if g == 0 {
        return vec![0; weights.len()];
    }
    let mut w: Vec<u64> = weights.iter().map(|&x| x as u64 / g).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_CYCLE {
        for x in &mut w {
            if *x > 0 {
                *x = (*x * MAX_CYCLE / total).max(1);
            }
        }
    }
    w
}

/// nginx's smooth weighted round-robin, run once over a whole cycle.
fn smooth_cycle(weights: &[u64]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    cycle
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn counts(b: &WeightedRoundRobin, n: usize, targets: usize) -> Vec<usize> {
        let mut c = vec![0; targets];
        for _ in 0..n {
            c[b.pick().unwrap()] += 1;
        }
        c
    }

    #[test]
    fn splits_exactly_by_weight_over_a_cycle() {
        let b = WeightedRoundRobin::new(&[90, 10]);
        assert_eq!(b.cycle_len(), 10, "weights are reduced by their GCD");
        assert_eq!(counts(&b, 100, 2), [90, 10]);
    }

    #[test]
    fn spreads_picks_instead_of_bunching() {
        let b = WeightedRoundRobin::new(&[1, 1, 2]);
        let seq: Vec<usize> = (0..4).map(|_| b.pick().unwrap()).collect();
        assert_eq!(seq, [2, 0, 1, 2]);
    }

    #[test]
    fn zero_weights_are_never_picked() {
        let b = WeightedRoundRobin::new(&[0, 3, 0]);
        assert_eq!(counts(&b, 30, 3), [0, 30, 0]);
        assert_eq!(WeightedRoundRobin::new(&[0, 0]).pick(), None);
        assert_eq!(WeightedRoundRobin::new(&[]).pick(), None);
    }

    #[test]
    fn huge_weights_are_scaled_not_dropped() {
        let b = WeightedRoundRobin::new(&[1_000_000, 1, 999_999]);
        assert!(b.cycle_len() as u64 <= MAX_CYCLE + 3);
        let c = counts(&b, b.cycle_len(), 3);
        assert!(c[1] >= 1, "a tiny non-zero weight keeps a slot: {c:?}");
        assert!(c[0].abs_diff(c[2]) <= 1);
    }

    proptest! {
        #[test]
        fn every_cycle_matches_the_reduced_weights(weights in prop::collection::vec(0u32..50, 1..8), offset in 0usize..1000) {
            let b = WeightedRoundRobin::starting_at(&weights, offset);
            let reduced = reduce(&weights);
            let c = counts_or_empty(&b, weights.len());
            let expected: Vec<usize> = reduced.iter().map(|&w| w as usize).collect();
            prop_assert_eq!(c, expected);
        }
    }

    fn counts_or_empty(b: &WeightedRoundRobin, targets: usize) -> Vec<usize> {
        if b.cycle_len() == 0 {
            return vec![0; targets];
        }
        counts(b, b.cycle_len(), targets)
    }
}
