//! The pure part of a decision: which fixed window a moment falls in, the
//! counter that window uses, and how many of a request's hits fit under the
//! limit given the counter's value after the increment.
//!
//! No I/O and no clock: callers pass `now` (time since the Unix epoch).

use std::time::Duration;

/// One fixed window of `unit_secs` seconds, aligned to Unix time: window `n`
/// covers `[n * unit_secs, (n + 1) * unit_secs)`. Every replica computes the
/// same window for the same moment, so they share one counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub unit_secs: u64,
    pub index: u64,
}

impl Window {
    /// The window `now` falls in. `unit_secs` 0 is treated as 1.
    pub fn containing(now: Duration, unit_secs: u64) -> Self {
        let unit_secs = unit_secs.max(1);
        Window {
            unit_secs,
            index: now.as_secs() / unit_secs,
        }
    }

    /// When the window ends (the next one starts), since the Unix epoch.
    pub fn end(&self) -> Duration {
        Duration::from_secs((self.index + 1).saturating_mul(self.unit_secs))
    }

    /// Time left in the window at `now` (zero once it is over).
    pub fn until_end(&self, now: Duration) -> Duration {
        self.end().saturating_sub(now)
    }

    /// Whole seconds until the window ends, at least 1: a `retry-after` value.
    pub fn retry_after_secs(&self, now: Duration) -> u64 {
        let left = self.until_end(now);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        secs.max(1)
    }

    /// The counter's name in the store: `weft:{descriptor}:{unit_secs}:{index}`.
    pub fn counter_key(&self, descriptor: &str) -> String {
        format!("weft:{descriptor}:{}:{}", self.unit_secs, self.index)
    }

    /// How long the store keeps the counter after its last increment: one
    /// unit plus a second of slack for clock skew between replicas.
    pub fn counter_ttl(&self) -> Duration {
        Duration::from_secs(self.unit_secs + 1)
    }
}

/// How many of a request's hits the limit admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Hits admitted, `0..=hits`.
    pub granted: u32,
    /// What is left of the limit in this window after this request.
    pub remaining: u32,
}

impl Grant {
    /// Admits the hits that still fit: the counter held `counter - hits`
    /// before this request added its `hits` (the store's increment returned
    /// `counter`), so `limit - before` were free.
    ///
    /// Over any sequence of increments of one window the granted hits add up
    /// to `min(total hits, limit)`, whatever the interleaving, because each
    /// increment sees a distinct `before`.
    pub fn compute(limit: u32, hits: u32, counter: u64) -> Self {
        let before = counter.saturating_sub(u64::from(hits));
        let free = u64::from(limit).saturating_sub(before);
        let granted = free.min(u64::from(hits)) as u32;
        let remaining = (u64::from(limit) - counter.min(u64::from(limit))) as u32;
        Grant { granted, remaining }
    }

    /// Whether every hit was admitted (the request is not over the limit).
    pub fn all_of(&self, hits: u32) -> bool {
        self.granted == hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn windows_align_to_unix_time() {
        let now = Duration::from_millis(125_500);
        let minute = Window::containing(now, 60);
        assert_eq!(minute.index, 2);
        assert_eq!(minute.end(), Duration::from_secs(180));
        assert_eq!(minute.until_end(now), Duration::from_millis(54_500));
        assert_eq!(minute.retry_after_secs(now), 55);
        assert_eq!(minute.counter_key("ns/p"), "weft:ns/p:60:2");
        assert_eq!(minute.counter_ttl(), Duration::from_secs(61));

        let second = Window::containing(now, 1);
        assert_eq!(second.index, 125);
        assert_eq!(second.until_end(now), Duration::from_millis(500));
        // Never 0: a client told to retry after 0 s would spin.
        assert_eq!(second.retry_after_secs(Duration::from_secs(126)), 1);
    }

    #[test]
    fn grants_what_fits_and_reports_what_is_left() {
        // Single hits against 3: ok, ok, ok, over.
        assert_eq!(
            Grant::compute(3, 1, 1),
            Grant {
                granted: 1,
                remaining: 2
            }
        );
        assert_eq!(
            Grant::compute(3, 1, 3),
            Grant {
                granted: 1,
                remaining: 0
            }
        );
        assert_eq!(
            Grant::compute(3, 1, 4),
            Grant {
                granted: 0,
                remaining: 0
            }
        );
        // A lease of 8 then 8 against 10: 8, then the 2 left.
        assert_eq!(
            Grant::compute(10, 8, 8),
            Grant {
                granted: 8,
                remaining: 2
            }
        );
        let second = Grant::compute(10, 8, 16);
        assert_eq!(
            second,
            Grant {
                granted: 2,
                remaining: 0
            }
        );
        assert!(!second.all_of(8));
        // More hits than the whole limit.
        assert_eq!(
            Grant::compute(5, 9, 9),
            Grant {
                granted: 5,
                remaining: 0
            }
        );
    }

    proptest! {
        #[test]
        fn granted_hits_never_exceed_the_limit(
            limit in 1u32..500,
            hits in proptest::collection::vec(1u32..100, 0..60),
        ) {
            let mut counter = 0u64;
            let mut granted = 0u64;
            for &h in &hits {
                counter += u64::from(h);
                let g = Grant::compute(limit, h, counter);
                prop_assert!(g.granted <= h);
                prop_assert_eq!(g.all_of(h), counter <= u64::from(limit));
                prop_assert_eq!(u64::from(g.remaining), u64::from(limit).saturating_sub(counter));
                granted += u64::from(g.granted);
                prop_assert!(granted <= u64::from(limit));
            }
            let total: u64 = hits.iter().map(|&h| u64::from(h)).sum();
            prop_assert_eq!(granted, total.min(u64::from(limit)));
        }

        #[test]
        fn a_moment_lies_inside_its_window(now_ms in 0u64..10_000_000_000, unit in 1u64..100_000) {
            let now = Duration::from_millis(now_ms);
            let w = Window::containing(now, unit);
            let start = w.end() - Duration::from_secs(unit);
            prop_assert!(start <= now && now < w.end());
            prop_assert!(w.retry_after_secs(now) >= 1 && w.retry_after_secs(now) <= unit);
        }
    }
}
