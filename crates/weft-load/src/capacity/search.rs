//! The search for the highest rate that meets the SLO: grow the rate
//! geometrically from the start rate until a step fails, then bisect between
//! the highest pass and the lowest failure until they are within the
//! precision. Each step is a fixed-rate open-loop run; the runner is a trait
//! so that tests drive the search against a simulated server.

use std::future::Future;
use std::time::Duration;

use super::report::{CapacityReport, CapacityStep, StopReason};
use super::slo::Metric;
use super::{CapacityOptions, RATE_LIMIT, fmt_duration};
use crate::engine::LoadError;
use crate::report::{Report, fmt_rate};

/// Runs one fixed-rate step of the search.
pub trait StepRunner {
    /// Offers `rate` requests/s for the step's warmup and duration and
    /// returns what was measured.
    fn run_step(&mut self, rate: f64) -> impl Future<Output = Result<Report, LoadError>> + Send;

    /// Time spent so far: the wall clock for real runs, a simulated clock in
    /// tests. The time budget is checked against it before each step.
    fn elapsed(&self) -> Duration;

    /// Whether the user asked to stop; checked before each step.
    fn interrupted(&self) -> bool {
        false
    }
}

/// Runs the search to its end and reports it. `progress` is called as each
/// step ends. Fails only when the very first step cannot run (a later step
/// that cannot run ends the search with what it found).
pub async fn search<R: StepRunner>(
    opts: &CapacityOptions,
    runner: &mut R,
    progress: &mut (dyn FnMut(&CapacityStep) + Send),
) -> Result<CapacityReport, LoadError> {
    let mut s = Search {
        opts,
        runner,
        progress,
        steps: Vec::new(),
        lo: None,
        hi: None,
        warnings: Vec::new(),
        overhead: Duration::ZERO,
        target: String::new(),
        protocol: String::new(),
        warned_samples: Vec::new(),
    };
    let stop = s.walk().await?;
    Ok(s.finish(stop))
}

/// How a step went, or why the search ends before or with it.
enum Outcome {
    Pass,
    Fail,
    Stop(StopReason, String),
}

struct Search<'a, R> {
    opts: &'a CapacityOptions,
    runner: &'a mut R,
    progress: &'a mut (dyn FnMut(&CapacityStep) + Send),
    steps: Vec<CapacityStep>,
    /// Highest passing rate.
    lo: Option<f64>,
    /// Lowest failing rate.
    hi: Option<f64>,
    warnings: Vec<String>,
    /// The most a step has taken beyond its warmup + duration (connecting,
    /// draining), added to the next step's cost for the time budget.
    overhead: Duration,
    target: String,
    protocol: String,
    /// SLO percentiles already warned about as estimated from too few samples.
    warned_samples: Vec<f64>,
}

impl<R: StepRunner> Search<'_, R> {
    async fn walk(&mut self) -> Result<(StopReason, String), LoadError> {
        let cap = self.opts.max_rate.unwrap_or(RATE_LIMIT);
        // Growth: double (by default) until a step fails.
        let mut rate = self.opts.start_rate.min(cap);
        loop {
            match self.step(rate).await? {
                Outcome::Stop(reason, detail) => return Ok((reason, detail)),
                Outcome::Fail => break,
                Outcome::Pass if rate >= cap => {
                    let why = match self.opts.max_rate {
                        Some(_) => "--max-rate",
                        None => "the load generator's limit",
                    };
                    let detail = format!(
                        "every step passed up to {} req/s ({why}): the capacity is at least that",
                        fmt_rate(rate)
                    );
                    return Ok((StopReason::MaxRate, detail));
                }
                Outcome::Pass => rate = (rate * self.opts.growth).min(cap),
            }
        }
        // Bisection between the highest pass and the lowest failure.
        loop {
            let (Some(lo), Some(hi)) = (self.lo, self.hi) else {
                let detail = format!(
                    "the start rate {} req/s already fails the SLO; lower --start-rate to search below it",
                    fmt_rate(self.opts.start_rate)
                );
                return Ok((StopReason::StartRateFails, detail));
            };
            if hi / lo <= 1.0 + self.opts.precision {
                let detail = format!(
                    "converged: {} req/s passes, {} req/s fails (within {}%)",
                    fmt_rate(lo),
                    fmt_rate(hi),
                    super::slo::trim_number(self.opts.precision * 100.0)
                );
                return Ok((StopReason::Converged, detail));
            }
            if let Outcome::Stop(reason, detail) = self.step(between(lo, hi)).await? {
                return Ok((reason, detail));
            }
        }
    }

    /// Runs one step at `rate`, unless the search must end first.
    async fn step(&mut self, rate: f64) -> Result<Outcome, LoadError> {
        if self.runner.interrupted() {
            return Ok(self.interrupted());
        }
        let planned = self.opts.step_warmup + self.opts.step_duration;
        let before = self.runner.elapsed();
        if before + planned + self.overhead > self.opts.max_time {
            return Ok(self.out_of_time(rate));
        }
        let result = self.runner.run_step(rate).await;
        let took = self.runner.elapsed().saturating_sub(before);
        self.overhead = self.overhead.max(took.saturating_sub(planned));
        let report = match result {
            Ok(r) => r,
            Err(e) if self.steps.is_empty() => return Err(e),
            Err(e) => {
                let detail = format!("the step at {} req/s could not run: {e}", fmt_rate(rate));
                return Ok(Outcome::Stop(StopReason::StepFailed, detail));
            }
        };
        if report.interrupted {
            self.warnings.push(format!(
                "the step at {} req/s was interrupted and is not counted",
                fmt_rate(rate)
            ));
            return Ok(self.interrupted());
        }
        Ok(self.record(rate, report))
    }

    fn record(&mut self, rate: f64, report: Report) -> Outcome {
        if self.target.is_empty() {
            self.target.clone_from(&report.target);
            self.protocol.clone_from(&report.protocol);
        }
        let mut step = report.as_step();
        step.rate = Some(rate);
        self.warn_small_samples(rate, step.requests);
        for w in &report.client.warnings {
            let w = format!("at {} req/s: {w}", fmt_rate(rate));
            if !self.warnings.contains(&w) {
                self.warnings.push(w);
            }
        }
        let saturated = report.client.saturated;
        let verdict = self.opts.slo.check(&step);
        let done = CapacityStep {
            rate,
            order: self.steps.len() + 1,
            pass: verdict.pass && !saturated,
            inconclusive: saturated,
            reasons: if saturated {
                Vec::new()
            } else {
                verdict.reasons
            },
            step,
        };
        (self.progress)(&done);
        let pass = done.pass;
        self.steps.push(done);
        if saturated {
            return self.saturated(rate);
        }
        if pass {
            self.lo = Some(self.lo.map_or(rate, |lo| lo.max(rate)));
            Outcome::Pass
        } else {
            self.hi = Some(self.hi.map_or(rate, |hi| hi.min(rate)));
            Outcome::Fail
        }
    }

    fn saturated(&mut self, rate: f64) -> Outcome {
        let bound = match self.lo {
            Some(lo) => format!(
                "{} req/s (the best passing rate) is only a lower bound",
                fmt_rate(lo)
            ),
            None => "no rate was shown to pass".to_owned(),
        };
        self.warnings.push(format!(
            "CLIENT SATURATED at {} req/s: the load generator, not the server, was the limit; {bound}. \
             Run from a bigger machine or with more --threads / --connections to go further",
            fmt_rate(rate)
        ));
        let detail = format!(
            "stopped at {} req/s: the load generator could not keep to its schedule (inconclusive)",
            fmt_rate(rate)
        );
        Outcome::Stop(StopReason::ClientSaturated, detail)
    }

    fn interrupted(&self) -> Outcome {
        Outcome::Stop(
            StopReason::Interrupted,
            format!(
                "interrupted after {} steps; {}",
                self.steps.len(),
                self.bracket()
            ),
        )
    }

    fn out_of_time(&self, next: f64) -> Outcome {
        let detail = format!(
            "the time budget (--max-time {}) ended the search before the step at {} req/s; {}",
            fmt_duration(self.opts.max_time),
            fmt_rate(next),
            self.bracket()
        );
        Outcome::Stop(StopReason::TimeBudget, detail)
    }

    /// What is known so far about where the knee lies.
    fn bracket(&self) -> String {
        match (self.lo, self.hi) {
            (Some(lo), Some(hi)) => format!(
                "the knee lies between {} and {} req/s",
                fmt_rate(lo),
                fmt_rate(hi)
            ),
            (Some(lo), None) => format!("the capacity is at least {} req/s", fmt_rate(lo)),
            (None, Some(hi)) => format!("the capacity is below {} req/s", fmt_rate(hi)),
            (None, None) => "no step completed".to_owned(),
        }
    }

    /// A percentile estimated from fewer than ~10 samples beyond it is noise.
    fn warn_small_samples(&mut self, rate: f64, requests: u64) {
        for clause in self.opts.slo.clauses() {
            let (Metric::Latency(q) | Metric::ServiceTime(q)) = clause.metric else {
                continue;
            };
            if q >= 100.0 || self.warned_samples.contains(&q) {
                continue;
            }
            let needed = (10.0 / (1.0 - q / 100.0)).round() as u64;
            if requests < needed {
                self.warned_samples.push(q);
                self.warnings.push(format!(
                    "{} at {} req/s is estimated from {requests} requests (under {needed}, fewer than 10 \
                     beyond it): lengthen --step-duration for a stable value",
                    clause.metric.label(),
                    fmt_rate(rate)
                ));
            }
        }
    }

    fn finish(self, (stop_reason, stop_detail): (StopReason, String)) -> CapacityReport {
        let mut steps = self.steps;
        steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        CapacityReport {
            target: self.target,
            protocol: self.protocol,
            slo: self.opts.slo.to_string(),
            knee_rate: self.lo,
            first_failing_rate: self.hi,
            stop_reason,
            stop_detail,
            precision: self.opts.precision,
            step_duration_s: self.opts.step_duration.as_secs_f64(),
            step_warmup_s: self.opts.step_warmup.as_secs_f64(),
            elapsed_s: self.runner.elapsed().as_secs_f64(),
            steps,
            warnings: self.warnings,
        }
    }
}

/// The next rate to try between a pass at `lo` and a failure at `hi`: their
/// geometric mean, rounded to as few significant digits as keep it well
/// inside the interval (tables read `2800`, not `2828.427`).
pub(crate) fn between(lo: f64, hi: f64) -> f64 {
    let mid = (lo * hi).sqrt();
    let ratio = hi / lo;
    let (min, max) = (lo * ratio.powf(0.35), lo * ratio.powf(0.65));
    for digits in 1..=6 {
        let scale = 10f64.powi(digits - 1 - mid.log10().floor() as i32);
        let r = (mid * scale).round() / scale;
        if r > min && r < max {
            return r;
        }
    }
    mid
}
