//! The hedging breaker: off while most requests are slow or failing, so that
//! an outage is not answered with more load.

use std::time::Duration;

use super::BreakerConfig;

/// Slices of the breaker's window.
const SLICES: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    epoch: u64,
    total: u64,
    slow: u64,
    failed: u64,
}

/// Counts requests, slow ones and failed ones over a rolling window and
/// decides, with hysteresis, whether hedging is allowed. Pure and
/// single-threaded; [`Hedger`](super::Hedger) keeps it behind its lock.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    slice_nanos: u128,
    slices: [Counts; SLICES],
    open: bool,
}

impl Breaker {
    /// `config` should be valid ([`BreakerConfig::validate`]).
    pub fn new(config: BreakerConfig) -> Self {
        let slice_nanos = (config.window.as_nanos() / SLICES as u128).max(1);
        Self {
            config,
            slice_nanos,
            slices: [Counts::default(); SLICES],
            open: false,
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Counts one finished request and returns whether the breaker is open
    /// afterwards.
    pub fn record(&mut self, now: Duration, slow: bool, success: bool) -> bool {
        let epoch = self.epoch(now);
        let slot = &mut self.slices[epoch as usize % SLICES];
        if slot.epoch != epoch {
            *slot = Counts {
                epoch,
                ..Counts::default()
            };
        }
        slot.total += 1;
        slot.slow += u64::from(slow);
        slot.failed += u64::from(!success);

        let w = self.window(epoch);
        if w.total >= self.config.min_requests {
            let (slow_share, success_rate) = shares(&w);
            if !self.open {
                self.open = slow_share > self.config.slow_share_to_open
                    || success_rate < self.config.success_rate_to_open;
            } else {
                self.open = !(slow_share <= self.config.slow_share_to_close
                    && success_rate >= self.config.success_rate_to_close);
            }
        }
        self.open
    }

    /// Closed, and the window looks normal: no more slow or failed requests
    /// than the breaker would close at (too few requests to judge count as
    /// normal). Latencies seen in such a window are worth learning from.
    pub fn is_healthy(&self, now: Duration) -> bool {
        if self.open {
            return false;
        }
        let w = self.window(self.epoch(now));
        if w.total < self.config.min_requests {
            return true;
        }
        let (slow_share, success_rate) = shares(&w);
        slow_share <= self.config.slow_share_to_close
            && success_rate >= self.config.success_rate_to_close
    }

    /// Closes the breaker and forgets the window.
    pub fn reset(&mut self) {
        self.slices = [Counts::default(); SLICES];
        self.open = false;
    }

    fn epoch(&self, now: Duration) -> u64 {
        (now.as_nanos() / self.slice_nanos) as u64
    }

    fn window(&self, epoch: u64) -> Counts {
        self.slices
            .iter()
            .filter(|s| s.total > 0 && s.epoch + SLICES as u64 > epoch && s.epoch <= epoch)
            .fold(Counts::default(), |acc, s| Counts {
                epoch,
                total: acc.total + s.total,
                slow: acc.slow + s.slow,
                failed: acc.failed + s.failed,
            })
    }
}

/// (slow share, success rate) of a non-empty window.
fn shares(w: &Counts) -> (f64, f64) {
    let total = w.total as f64;
    (w.slow as f64 / total, 1.0 - w.failed as f64 / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig::default())
    }

    /// Records `n` requests spread over `[from, from + 1s)`, every
    /// `slow_every`-th slow and every `fail_every`-th failed (0: none).
    fn feed(b: &mut Breaker, from: u64, n: u64, slow_every: u64, fail_every: u64) -> bool {
        let every = |i: u64, k: u64| k != 0 && i.is_multiple_of(k);
        let mut open = b.is_open();
        for i in 0..n {
            let now = ms(from + i * 1000 / n);
            open = b.record(now, every(i, slow_every), !every(i, fail_every));
        }
        open
    }

    #[test]
    fn stays_closed_with_a_normal_tail() {
        let mut b = breaker();
        // 5% slow, 1% failed, for a minute.
        for s in 0..60 {
            assert!(!feed(&mut b, s * 1000, 100, 20, 100));
            assert!(b.is_healthy(ms(s * 1000 + 999)));
        }
    }

    #[test]
    fn opens_when_most_requests_are_slow_and_closes_with_hysteresis() {
        let mut b = breaker();
        for s in 0..5 {
            feed(&mut b, s * 1000, 100, 20, 0);
        }
        // Everything slow: the 5 s window passes half slow within 3 s.
        let mut opened_after = None;
        for s in 5..10 {
            if feed(&mut b, s * 1000, 100, 1, 0) && opened_after.is_none() {
                opened_after = Some(s - 5 + 1);
            }
        }
        assert!(matches!(opened_after, Some(1..=3)), "{opened_after:?}");
        assert!(!b.is_healthy(ms(10_000)));
        // Recovery: a window at 30% slow is below the opening threshold
        // but above the closing one, so it stays open.
        for s in 10..20 {
            assert!(feed(&mut b, s * 1000, 100, 3, 0), "closed at {s}s");
        }
        // Back to normal: it closes once the window is at 20% slow or less.
        let mut closed_at = None;
        for s in 20..30 {
            if !feed(&mut b, s * 1000, 100, 20, 0) && closed_at.is_none() {
                closed_at = Some(s);
            }
        }
        assert!(matches!(closed_at, Some(20..=25)), "{closed_at:?}");
        assert!(b.is_healthy(ms(30_000)));
    }

    #[test]
    fn opens_when_the_success_rate_drops() {
        let mut b = breaker();
        feed(&mut b, 0, 100, 0, 100);
        assert!(!b.is_open());
        // Every other request fails (fast, so not slow).
        let mut open = false;
        for s in 1..4 {
            open = feed(&mut b, s * 1000, 100, 0, 2);
        }
        assert!(open);
    }

    #[test]
    fn no_judgement_below_min_requests() {
        let mut b = breaker();
        for i in 0..19 {
            assert!(!b.record(ms(i), true, false));
        }
        assert!(b.is_healthy(ms(19)));
        assert!(b.record(ms(19), true, false));
        // The window empties; with no evidence the breaker keeps its state.
        assert!(b.record(ms(60_000), false, true));
        b.reset();
        assert!(!b.is_open());
    }
}
