//! What a capacity search found: the JSON of `weft capacity --json` and its
//! human text (the knee line, then the latency-vs-rate table).

use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use super::slo::fmt_latency;
use crate::report::{StepReport, fmt_ms, fmt_rate};

/// Why the search stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The highest passing and lowest failing rates are within the precision.
    Converged,
    /// Every step passed up to the maximum rate: the capacity is at least that.
    MaxRate,
    /// The start rate already failed: the capacity is below it.
    StartRateFails,
    /// The load generator could not keep to its schedule: the result is a
    /// lower bound set by the client, not the server.
    ClientSaturated,
    /// The next step would have run past `max_time`.
    TimeBudget,
    /// Stopped from outside (SIGTERM, Ctrl-C).
    Interrupted,
    /// A step could not run (the target went away, ...).
    StepFailed,
}

/// One step of the search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityStep {
    /// Offered rate in requests/s.
    pub rate: f64,
    /// When it ran: 1 for the first step.
    pub order: usize,
    /// Met the SLO (always false when `inconclusive`).
    pub pass: bool,
    /// The load generator saturated during the step, so the step says
    /// nothing about the server.
    pub inconclusive: bool,
    /// Why it failed (empty when it passed).
    pub reasons: Vec<String>,
    /// What the step measured.
    pub step: StepReport,
}

impl CapacityStep {
    /// The line printed as the step ends:
    /// `step 3: 4000 req/s -> p99 12.3 ms, errors 0.00%: PASS`.
    pub fn progress_line(&self) -> String {
        let mut line = format!(
            "step {}: {} req/s -> p99 {} ms, errors {:.2}%: {}",
            self.order,
            fmt_rate(self.rate),
            fmt_latency(self.step.latency_ms.p99),
            self.step.error_ratio() * 100.0,
            self.verdict()
        );
        if !self.reasons.is_empty() {
            let _ = write!(line, " ({})", self.reasons.join("; "));
        }
        line
    }

    /// `PASS`, `FAIL` or `CLIENT SATURATED`.
    pub fn verdict(&self) -> &'static str {
        if self.inconclusive {
            "CLIENT SATURATED"
        } else if self.pass {
            "PASS"
        } else {
            "FAIL"
        }
    }
}

/// The whole search: `weft capacity --json` prints exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityReport {
    pub target: String,
    /// `http1`, `http2` or `grpc`.
    pub protocol: String,
    /// The SLO, canonical text (`p99<50ms,errors<0.1%`).
    pub slo: String,
    /// The highest rate that met the SLO; `None` when even the start rate
    /// failed. A lower bound only when `stop_reason` is not `converged`.
    pub knee_rate: Option<f64>,
    /// The lowest rate that failed the SLO, when one did.
    pub first_failing_rate: Option<f64>,
    pub stop_reason: StopReason,
    /// `stop_reason` in a sentence, with the numbers.
    pub stop_detail: String,
    /// The relative width the search narrows the knee to (0.05 = 5%).
    pub precision: f64,
    pub step_duration_s: f64,
    pub step_warmup_s: f64,
    /// Wall time of the whole search, in seconds.
    pub elapsed_s: f64,
    /// Sorted by rate.
    pub steps: Vec<CapacityStep>,
    /// Everything the reader should know before trusting the result.
    pub warnings: Vec<String>,
}

impl CapacityReport {
    /// The step that ran at `rate`, if any.
    pub fn step_at(&self, rate: f64) -> Option<&CapacityStep> {
        self.steps.iter().find(|s| s.rate == rate)
    }

    /// The knee line, then how the search ended, the table and warnings.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.knee_line());
        let _ = writeln!(s, "search     {}", self.stop_detail);
        let _ = writeln!(
            s,
            "target     {} ({}), {} steps of {:.0} s (+{:.0} s warmup), {:.0} s in all",
            self.target,
            self.protocol,
            self.steps.len(),
            self.step_duration_s,
            self.step_warmup_s,
            self.elapsed_s
        );
        let _ = writeln!(s);
        s.push_str(&self.table());
        if self.stop_reason == StopReason::ClientSaturated {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "!!! CLIENT SATURATED: the load generator, not the server, was the limit; the capacity above \
                 is only a lower bound !!!"
            );
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }

    /// `capacity: 3800 req/s meets p99<50ms (4000 req/s does not: p99 61 ms > 50 ms)`.
    pub fn knee_line(&self) -> String {
        let failing = self.first_failing_rate.and_then(|r| self.step_at(r));
        let does_not = failing.map(|f| {
            format!(
                "{} req/s does not: {}",
                fmt_rate(f.rate),
                f.reasons.join("; ")
            )
        });
        match (self.knee_rate, failing) {
            (Some(knee), _) => {
                let at_least = match self.stop_reason {
                    StopReason::Converged => "",
                    _ => "at least ",
                };
                let mut line = format!(
                    "capacity: {at_least}{} req/s meets {}",
                    fmt_rate(knee),
                    self.slo
                );
                if let Some(d) = does_not {
                    let _ = write!(line, " ({d})");
                }
                line
            }
            (None, Some(f)) => format!(
                "capacity: below {rate} req/s: {rate} req/s does not meet {}: {}",
                self.slo,
                f.reasons.join("; "),
                rate = fmt_rate(f.rate)
            ),
            (None, None) => format!("capacity: unknown: {}", self.stop_detail),
        }
    }

    /// The latency-vs-rate table, one row per step, sorted by rate.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}  verdict",
            "requested", "achieved", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for st in &self.steps {
            let l = &st.step.latency_ms;
            let knee = if Some(st.rate) == self.knee_rate {
                "  <- knee"
            } else {
                ""
            };
            let why = if st.reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", st.reasons.join("; "))
            };
            let _ = writeln!(
                s,
                "{:>10} {:>10} {:>7.2}% {:>9} {:>9} {:>9} {:>9} {:>9}  {}{why}{knee}",
                fmt_rate(st.rate),
                fmt_rate(st.step.achieved_rate),
                st.step.error_ratio() * 100.0,
                fmt_ms(l.p50),
                fmt_ms(l.p90),
                fmt_ms(l.p99),
                fmt_ms(l.p999),
                fmt_ms(l.max),
                st.verdict()
            );
        }
        s
    }
}

impl fmt::Display for CapacityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.human())
    }
}
