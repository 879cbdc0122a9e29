//! Injected latency, jitter, slow tail, errors and business errors, drawn
//! from a small per-connection PRNG; the current set can be replaced while
//! the app runs ([`FaultCell`]).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};

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

    /// True with probability `share`. Shares of 0 and 1 draw nothing, so the
    /// hot path of an app without faults stays free of the PRNG.
    fn chance(&mut self, share: f64) -> bool {
        share > 0.0 && (share >= 1.0 || self.next_f64() < share)
    }
}

/// The response header a business error sets: `NAME:VALUE` on the command
/// line, e.g. `x-biz-code:5003` (the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BizErrorHeader {
    pub name: HeaderName,
    pub value: HeaderValue,
}

impl Default for BizErrorHeader {
    fn default() -> Self {
        BizErrorHeader {
            name: HeaderName::from_static("x-biz-code"),
            value: HeaderValue::from_static("5003"),
        }
    }
}

/// Why a `NAME:VALUE` header was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?}: {reason} (want NAME:VALUE, e.g. x-biz-code:5003)")]
pub struct ParseBizErrorHeaderError {
    input: String,
    reason: &'static str,
}

impl FromStr for BizErrorHeader {
    type Err = ParseBizErrorHeaderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParseBizErrorHeaderError {
            input: s.to_owned(),
            reason,
        };
        let (name, value) = s.split_once(':').ok_or_else(|| err("no `:`"))?;
        let (name, value) = (name.trim(), value.trim());
        if value.is_empty() {
            return Err(err("empty value"));
        }
        Ok(BizErrorHeader {
            name: HeaderName::from_str(&name.to_ascii_lowercase())
                .map_err(|_| err("not a valid header name"))?,
            value: HeaderValue::from_str(value).map_err(|_| err("not a valid header value"))?,
        })
    }
}

impl fmt::Display for BizErrorHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Built from text (FromStr or a static), so the value is text.
        let value = String::from_utf8_lossy(self.value.as_bytes());
        write!(f, "{}:{value}", self.name)
    }
}

/// The faults an app injects into every request it serves.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Faults {
    pub(super) latency: Duration,
    pub(super) jitter: Duration,
    pub(super) error_rate: f64,
    /// Share of requests that wait `slow_latency` instead of `latency`.
    pub(super) slow_share: f64,
    pub(super) slow_latency: Duration,
    /// Share of requests answered normally but with `biz_error_header`.
    pub(super) biz_error_share: f64,
    pub(super) biz_error_header: BizErrorHeader,
}

/// What the faults decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Draw {
    /// Wait this long before answering.
    pub(super) delay: Duration,
    /// The delay is the slow one.
    pub(super) slow: bool,
    /// Answer with the injected error status.
    pub(super) error: bool,
    /// Answer normally, with the business-error header (never with `error`).
    pub(super) biz_error: bool,
}

impl Faults {
    /// Checks every share, naming the field that is out of range.
    pub(super) fn check(&self) -> Result<(), String> {
        for (field, share) in [
            ("error_rate", self.error_rate),
            ("slow_share", self.slow_share),
            ("biz_error_share", self.biz_error_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return Err(format!("{field}: {share} is not within 0.0..=1.0"));
            }
        }
        Ok(())
    }

    /// The draws for one request: `latency` (or, for `slow_share` of
    /// requests, `slow_latency`) plus a uniform draw from `[0, jitter)`;
    /// an injected error with probability `error_rate`; otherwise a
    /// business error with probability `biz_error_share`.
    pub(super) fn draw(&self, rng: &mut SplitMix64) -> Draw {
        let slow = rng.chance(self.slow_share);
        let base = if slow {
            self.slow_latency
        } else {
            self.latency
        };
        let delay = if self.jitter.is_zero() {
            base
        } else {
            base + self.jitter.mul_f64(rng.next_f64())
        };
        let error = rng.chance(self.error_rate);
        let biz_error = !error && rng.chance(self.biz_error_share);
        Draw {
            delay,
            slow,
            error,
            biz_error,
        }
    }
}

/// The current faults, replaceable at runtime. Readers keep a copy per
/// connection and only look at the shared one when the generation moved, so
/// the hot path costs one atomic load, not a lock.
#[derive(Debug)]
pub(super) struct FaultCell {
    generation: AtomicU64,
    current: RwLock<Arc<Faults>>,
    /// The faults the app started with (what a reset restores).
    initial: Arc<Faults>,
}

/// One connection's copy of the faults and the generation it was read at.
#[derive(Debug, Clone)]
pub(super) struct FaultView {
    generation: u64,
    faults: Arc<Faults>,
}

impl FaultCell {
    pub(super) fn new(initial: Faults) -> Self {
        let initial = Arc::new(initial);
        FaultCell {
            generation: AtomicU64::new(0),
            current: RwLock::new(Arc::clone(&initial)),
            initial,
        }
    }

    pub(super) fn current(&self) -> Arc<Faults> {
        // A poisoned lock still holds a whole Arc: writers only swap it.
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn initial(&self) -> Arc<Faults> {
        Arc::clone(&self.initial)
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the faults; returns the new generation.
    pub(super) fn set(&self, faults: Faults) -> u64 {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(faults);
        // Bumped under the lock, after the swap: a reader that sees the new
        // generation reads the new faults.
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Replaces the faults only if nothing changed them since `generation`
    /// (a timed change reverting must not undo a later one).
    pub(super) fn set_if_unchanged(&self, generation: u64, faults: Faults) -> bool {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            return false;
        }
        *current = Arc::new(faults);
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    pub(super) fn view(&self) -> FaultView {
        // Generation first: if a change lands in between, the view is
        // refreshed again on the next request.
        let generation = self.generation();
        FaultView {
            generation,
            faults: self.current(),
        }
    }

    /// `view` brought up to date: a no-op unless the faults changed.
    pub(super) fn refresh<'v>(&self, view: &'v mut FaultView) -> &'v Faults {
        if self.generation() != view.generation {
            *view = self.view();
        }
        &view.faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_faults() -> Faults {
        Faults {
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            error_rate: 0.0,
            slow_share: 0.0,
            slow_latency: Duration::ZERO,
            biz_error_share: 0.0,
            biz_error_header: BizErrorHeader::default(),
        }
    }

    /// How many of `n` draws `pick` selects.
    fn count(faults: &Faults, n: usize, seed: u64, pick: impl Fn(&Draw) -> bool) -> usize {
        let mut rng = SplitMix64::new(seed);
        (0..n).filter(|_| pick(&faults.draw(&mut rng))).count()
    }

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
            ..no_faults()
        };
        let mut rng = SplitMix64::new(7);
        for _ in 0..1000 {
            let d = faults.draw(&mut rng).delay;
            assert!(
                d >= faults.latency && d < faults.latency + faults.jitter,
                "{d:?}"
            );
        }
    }

    #[test]
    fn error_rate_extremes_are_exact() {
        let always = Faults {
            error_rate: 1.0,
            ..no_faults()
        };
        assert_eq!(count(&no_faults(), 1000, 1, |d| d.error), 0);
        assert_eq!(count(&always, 1000, 1, |d| d.error), 1000);
    }

    #[test]
    fn slow_share_takes_the_slow_latency_for_that_share() {
        let faults = Faults {
            latency: Duration::from_millis(1),
            slow_share: 0.02,
            slow_latency: Duration::from_millis(100),
            ..no_faults()
        };
        let mut rng = SplitMix64::new(11);
        let mut slow = 0;
        for _ in 0..100_000 {
            let d = faults.draw(&mut rng);
            let want = if d.slow { 100 } else { 1 };
            assert_eq!(d.delay, Duration::from_millis(want));
            slow += usize::from(d.slow);
        }
        // Binomial(100k, 0.02): sd 44; 2000 +- 10 sd.
        assert!((1_560..=2_440).contains(&slow), "{slow} slow of 100k");
    }

    #[test]
    fn slow_share_adds_jitter_to_the_slow_latency_too() {
        let faults = Faults {
            slow_share: 1.0,
            slow_latency: Duration::from_millis(50),
            jitter: Duration::from_millis(2),
            ..no_faults()
        };
        let mut rng = SplitMix64::new(3);
        for _ in 0..100 {
            let d = faults.draw(&mut rng).delay;
            assert!(d >= Duration::from_millis(50) && d < Duration::from_millis(52));
        }
    }

    #[test]
    fn biz_error_share_marks_that_share_and_never_an_injected_error() {
        let half = Faults {
            biz_error_share: 0.5,
            ..no_faults()
        };
        let biz = count(&half, 10_000, 5, |d| d.biz_error);
        // Binomial(10k, 0.5): sd 50.
        assert!((4_500..=5_500).contains(&biz), "{biz} of 10k");
        let both = Faults {
            error_rate: 0.5,
            biz_error_share: 1.0,
            ..no_faults()
        };
        assert_eq!(count(&both, 1000, 9, |d| d.error && d.biz_error), 0);
        let errors = count(&both, 1000, 9, |d| d.error);
        assert_eq!(count(&both, 1000, 9, |d| d.biz_error), 1000 - errors);
    }

    #[test]
    fn check_names_the_share_out_of_range() {
        assert_eq!(no_faults().check(), Ok(()));
        let bad = Faults {
            slow_share: 1.5,
            ..no_faults()
        };
        assert!(bad.check().unwrap_err().starts_with("slow_share: 1.5"));
        let bad = Faults {
            biz_error_share: -0.1,
            ..no_faults()
        };
        assert!(bad.check().unwrap_err().starts_with("biz_error_share"));
        let nan = Faults {
            error_rate: f64::NAN,
            ..no_faults()
        };
        assert!(nan.check().unwrap_err().starts_with("error_rate"));
    }

    #[test]
    fn biz_error_header_parses_name_colon_value() {
        let h: BizErrorHeader = "X-Biz-Code: 5003".parse().unwrap();
        assert_eq!(h.name, "x-biz-code");
        assert_eq!(h.value, "5003");
        assert_eq!(h.to_string(), "x-biz-code:5003");
        assert_eq!(BizErrorHeader::default().to_string(), "x-biz-code:5003");
        // A value may hold colons of its own.
        assert_eq!("x-err:a:b".parse::<BizErrorHeader>().unwrap().value, "a:b");
        for bad in [
            "x-biz-code",
            "x-biz-code:",
            ":5003",
            "bad name:1",
            "x:\u{1}",
        ] {
            let err = bad.parse::<BizErrorHeader>().unwrap_err().to_string();
            assert!(err.contains("NAME:VALUE"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_view_sees_a_change_on_its_next_refresh_and_only_then_rereads() {
        let cell = FaultCell::new(no_faults());
        let mut view = cell.view();
        let before = Arc::clone(&view.faults);
        assert_eq!(cell.refresh(&mut view).latency, Duration::ZERO);
        assert!(
            Arc::ptr_eq(&before, &view.faults),
            "reread without a change"
        );
        cell.set(Faults {
            latency: Duration::from_millis(7),
            ..no_faults()
        });
        assert_eq!(cell.refresh(&mut view).latency, Duration::from_millis(7));
        assert_eq!(cell.initial().latency, Duration::ZERO);
    }

    #[test]
    fn a_timed_revert_does_not_undo_a_later_change() {
        let cell = FaultCell::new(no_faults());
        let slow = Faults {
            latency: Duration::from_millis(200),
            ..no_faults()
        };
        let generation = cell.set(slow.clone());
        assert!(cell.set_if_unchanged(generation, no_faults()));
        assert_eq!(cell.current().latency, Duration::ZERO);
        let generation = cell.set(slow);
        cell.set(Faults {
            latency: Duration::from_millis(5),
            ..no_faults()
        });
        assert!(!cell.set_if_unchanged(generation, no_faults()));
        assert_eq!(cell.current().latency, Duration::from_millis(5));
    }
}
