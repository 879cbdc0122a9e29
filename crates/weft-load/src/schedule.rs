//! The intended send times of an open-loop run, computed up front from the
//! rate plan and nothing else: request `k` of a step at rate `r` is due at
//! `step_start + k / r` whatever happened to earlier requests. Latency is
//! measured from these times, so a stall in the server (or in the tool)
//! cannot hide requests that should have been sent during it.

use std::time::Duration;

use crate::spec::RatePlan;

/// Which part of the run a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before measuring: results are discarded.
    Warmup,
    /// Measured, in step `n` (0 for a single rate or a ramp).
    Step(usize),
}

/// A request's place in the schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Due {
    /// Since the start of the run (warmup included).
    pub at: Duration,
    pub phase: Phase,
}

/// One constant-rate or ramping segment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segment {
    start: Duration,
    length: Duration,
    from: f64,
    to: f64,
    phase: Phase,
}

impl Segment {
    /// Requests in the whole segment (floor of the rate integral).
    fn count(&self) -> u64 {
        let t = self.length.as_secs_f64();
        ((self.from + self.to) / 2.0 * t + 1e-9).floor() as u64
    }

    /// Offset of request `k`: the time at which the integral of the rate
    /// reaches `k`.
    fn offset(&self, k: u64) -> Duration {
        let k = k as f64;
        let t_len = self.length.as_secs_f64();
        let slope = (self.to - self.from) / t_len;
        let t = if slope.abs() < 1e-12 {
            k / self.from
        } else {
            // from * t + slope/2 * t^2 = k
            let a = slope / 2.0;
            let b = self.from;
            (-b + (b * b + 4.0 * a * k).max(0.0).sqrt()) / (2.0 * a)
        };
        self.start + Duration::from_secs_f64(t.clamp(0.0, t_len))
    }
}

/// The schedule of a run: an iterator of due times in order.
#[derive(Debug, Clone)]
pub struct Schedule {
    segments: Vec<Segment>,
    segment: usize,
    next: u64,
}

impl Schedule {
    /// `None` for [`RatePlan::Max`], which has no schedule.
    pub fn new(plan: &RatePlan, duration: Duration, warmup: Duration) -> Option<Schedule> {
        let mut segments = Vec::new();
        let (first, steps): (f64, Vec<(f64, f64)>) = match plan {
            RatePlan::Max => return None,
            RatePlan::Steps(rates) => (rates[0], rates.iter().map(|r| (*r, *r)).collect()),
            RatePlan::Ramp { from, to } => (*from, vec![(*from, *to)]),
        };
        let mut start = Duration::ZERO;
        if !warmup.is_zero() {
            segments.push(Segment {
                start,
                length: warmup,
                from: first,
                to: first,
                phase: Phase::Warmup,
            });
            start += warmup;
        }
        for (i, (from, to)) in steps.into_iter().enumerate() {
            segments.push(Segment {
                start,
                length: duration,
                from,
                to,
                phase: Phase::Step(i),
            });
            start += duration;
        }
        Some(Schedule {
            segments,
            segment: 0,
            next: 0,
        })
    }

    /// When the last segment ends.
    pub fn end(&self) -> Duration {
        self.segments
            .last()
            .map_or(Duration::ZERO, |s| s.start + s.length)
    }

    /// When the measured part starts (the warmup's end).
    pub fn measure_start(&self) -> Duration {
        self.segments
            .iter()
            .find(|s| s.phase != Phase::Warmup)
            .map_or(Duration::ZERO, |s| s.start)
    }

    /// Start and length of measured step `n`.
    pub fn step_window(&self, n: usize) -> Option<(Duration, Duration)> {
        self.segments
            .iter()
            .find(|s| s.phase == Phase::Step(n))
            .map(|s| (s.start, s.length))
    }
}

impl Iterator for Schedule {
    type Item = Due;

    fn next(&mut self) -> Option<Due> {
        loop {
            let seg = self.segments.get(self.segment)?;
            if self.next < seg.count() {
                let due = Due {
                    at: seg.offset(self.next),
                    phase: seg.phase,
                };
                self.next += 1;
                return Some(due);
            }
            self.segment += 1;
            self.next = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_constant_rate_is_evenly_spaced_after_the_warmup() {
        let plan = RatePlan::Steps(vec![100.0]);
        let s = Schedule::new(&plan, secs(1.0), secs(0.5)).unwrap();
        assert_eq!(s.measure_start(), secs(0.5));
        assert_eq!(s.end(), secs(1.5));
        let all: Vec<Due> = s.collect();
        assert_eq!(all.len(), 150);
        assert_eq!(all.iter().filter(|d| d.phase == Phase::Warmup).count(), 50);
        assert_eq!(all[50].at, secs(0.5));
        assert_eq!(all[50].phase, Phase::Step(0));
        assert!((all[51].at.as_secs_f64() - 0.51).abs() < 1e-9);
    }

    #[test]
    fn steps_follow_each_other_at_their_own_rates() {
        let plan = RatePlan::Steps(vec![10.0, 20.0, 40.0]);
        let s = Schedule::new(&plan, secs(2.0), Duration::ZERO).unwrap();
        assert_eq!(s.step_window(2), Some((secs(4.0), secs(2.0))));
        let all: Vec<Due> = s.collect();
        let count = |n| all.iter().filter(|d| d.phase == Phase::Step(n)).count();
        assert_eq!((count(0), count(1), count(2)), (20, 40, 80));
        assert!(
            all.iter()
                .filter(|d| d.phase == Phase::Step(1))
                .all(|d| d.at >= secs(2.0) && d.at < secs(4.0))
        );
    }

    #[test]
    fn a_ramp_sends_the_integral_of_its_rate_and_speeds_up() {
        let plan = RatePlan::Ramp {
            from: 100.0,
            to: 300.0,
        };
        let all: Vec<Due> = Schedule::new(&plan, secs(10.0), Duration::ZERO)
            .unwrap()
            .collect();
        assert_eq!(all.len(), 2000);
        let first_sec = all.iter().filter(|d| d.at < secs(1.0)).count();
        let last_sec = all.iter().filter(|d| d.at >= secs(9.0)).count();
        assert!((105..=115).contains(&first_sec), "{first_sec}");
        assert!((285..=295).contains(&last_sec), "{last_sec}");
    }

    #[test]
    fn max_has_no_schedule() {
        assert!(Schedule::new(&RatePlan::Max, secs(1.0), secs(1.0)).is_none());
    }

    proptest! {
        #[test]
        fn due_times_never_go_backwards_and_stay_in_their_segment(
            rates in proptest::collection::vec(0.5f64..5000.0, 1..4),
            ramp in any::<bool>(),
            dur_ms in 100u64..3000,
            warm_ms in 0u64..1000,
        ) {
            let plan = if ramp {
                RatePlan::Ramp { from: rates[0], to: *rates.last().unwrap() }
            } else {
                RatePlan::Steps(rates.clone())
            };
            let dur = Duration::from_millis(dur_ms);
            let s = Schedule::new(&plan, dur, Duration::from_millis(warm_ms)).unwrap();
            let end = s.end();
            let mut last = Duration::ZERO;
            for d in s {
                prop_assert!(d.at >= last);
                prop_assert!(d.at <= end);
                last = d.at;
            }
        }
    }
}
