//! The live view of a run: the progress line on stderr, and [`Live`], the
//! counters `weft load --admin` serves on `/metrics`.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use weft_admin::AdminEndpoints;

use crate::report::{Interval, fmt_ms, fmt_rate};

/// Counters of the current run, readable while it runs (updated once a
/// second). One `Live` can follow several runs (the steps of `weft
/// capacity`): counters only grow.
#[derive(Debug)]
pub struct Live {
    running: AtomicBool,
    sent: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
    /// Bits of the last interval's p99 in seconds (f64).
    p99: AtomicU64,
    /// Bits of the offered rate in requests/s (f64); 0 for max.
    rate: AtomicU64,
    /// Every latency so far (from intended send, ns), warmup included.
    latency: Mutex<Histogram<u64>>,
}

/// [`Live`]'s counters at one moment.
#[derive(Debug, Clone)]
pub struct LiveSnapshot {
    pub sent: u64,
    pub completed: u64,
    pub errors: u64,
    /// Latencies from intended send, in nanoseconds, cumulative.
    pub latency: Histogram<u64>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            running: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            p99: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            latency: Mutex::new(crate::stats::histogram()),
        }
    }
}

impl Live {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters now.
    pub fn snapshot(&self) -> LiveSnapshot {
        let latency = self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        LiveSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            completed: self.completed(),
            errors: self.errors.load(Ordering::Relaxed),
            latency,
        }
    }

    pub(crate) fn set_running(&self, running: bool, rate: Option<f64>) {
        self.running.store(running, Ordering::Relaxed);
        self.rate
            .store(rate.unwrap_or(0.0).to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn add(&self, iv: &Interval, latency: &Histogram<u64>) {
        let _ = self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(latency);
        self.sent.fetch_add(iv.sent, Ordering::Relaxed);
        self.completed.fetch_add(iv.completed, Ordering::Relaxed);
        self.errors.fetch_add(iv.errors, Ordering::Relaxed);
        self.p99
            .store((iv.p99_ms / 1000.0).to_bits(), Ordering::Relaxed);
    }

    /// Requests finished so far, over every run this followed.
    pub fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
}

impl AdminEndpoints for Live {
    /// Ready while a run is sending.
    fn ready(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name}_total {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            let _ = writeln!(out, "{name} {v}");
        };
        counter(
            &mut out,
            "weft_load_requests_sent",
            "Requests sent",
            self.sent.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "weft_load_requests_completed",
            "Requests finished (answered or failed)",
            self.completed(),
        );
        counter(
            &mut out,
            "weft_load_requests_failed",
            "Requests that failed",
            self.errors.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "weft_load_latency_p99_seconds",
            "p99 latency (from intended send) over the last second",
            f64::from_bits(self.p99.load(Ordering::Relaxed)),
        );
        gauge(
            &mut out,
            "weft_load_offered_rate",
            "Requested rate in requests/s (0: max or idle)",
            f64::from_bits(self.rate.load(Ordering::Relaxed)),
        );
        gauge(
            &mut out,
            "weft_load_running",
            "1 while a run is sending",
            if self.ready() { 1.0 } else { 0.0 },
        );
        out.push_str("# EOF\n");
        out
    }
}

/// Writes the progress line: in place on a terminal, every 5 s otherwise.
#[derive(Debug)]
pub(crate) struct ProgressLine {
    tty: bool,
    last_plain: Option<f64>,
    drawn: bool,
}

impl ProgressLine {
    pub(crate) fn new() -> Self {
        ProgressLine {
            tty: std::io::stderr().is_terminal(),
            last_plain: None,
            drawn: false,
        }
    }

    pub(crate) fn show(
        &mut self,
        iv: &Interval,
        total: Duration,
        sent: u64,
        errors: u64,
        rate: Option<f64>,
    ) {
        if !self.tty {
            if self.last_plain.is_some_and(|t| iv.t - t < 4.99) {
                return;
            }
            self.last_plain = Some(iv.t);
        }
        let line = format!(
            "[{:>6.1}s/{:.0}s]{} offered {:>7} req/s  done {:>7} req/s  sent {:>9}  errors {:>6}  p99 {:>8} ms",
            iv.t,
            total.as_secs_f64(),
            if iv.warmup { " warmup" } else { "" },
            rate.map_or("max".to_owned(), fmt_rate),
            fmt_rate(iv.completed as f64),
            sent,
            errors,
            fmt_ms(iv.p99_ms),
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    pub(crate) fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_counters_add_up_across_intervals_and_render() {
        let live = Live::new();
        live.set_running(true, Some(100.0));
        let mut h = crate::stats::histogram();
        h.record(1_000_000).unwrap();
        let first = Interval {
            sent: 100,
            completed: 98,
            errors: 2,
            p99_ms: 12.0,
            ..Interval::default()
        };
        live.add(&first, &h);
        let second = Interval {
            sent: 100,
            completed: 100,
            errors: 0,
            p99_ms: 5.0,
            ..Interval::default()
        };
        live.add(&second, &h);
        assert_eq!(live.snapshot().latency.len(), 2);
        let text = live.metrics();
        assert!(text.contains("weft_load_requests_sent_total 200"), "{text}");
        assert!(text.contains("weft_load_requests_failed_total 2"), "{text}");
        assert!(
            text.contains("weft_load_latency_p99_seconds 0.005"),
            "{text}"
        );
        assert!(text.contains("weft_load_offered_rate 100"), "{text}");
        assert!(live.ready());
        live.set_running(false, None);
        assert!(!live.ready());
    }
}
