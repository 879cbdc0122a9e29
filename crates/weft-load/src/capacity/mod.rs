//! `weft capacity TARGET --slo 'p99<50ms,errors<0.1%'`: the highest
//! sustained rate that meets an SLO.
//!
//! - [`slo`]: the SLO text and how a step is held to it ([`Slo::check`]).
//! - [`search`]: exponential growth from a start rate until a step fails,
//!   then bisection, within a time budget ([`StepRunner`] runs the steps).
//! - [`report`]: the result, its JSON and human text ([`CapacityReport`]).
//! - [`chart`]: latency percentiles vs offered rate as an SVG file.
//!
//! Each step is an ordinary open-loop run of [`crate::run`] at one fixed
//! rate, so its latencies are corrected for coordinated omission. A step in
//! which the load generator saturated proves nothing about the server: the
//! search stops there and says its result is a lower bound.

pub mod chart;
pub mod report;
pub mod search;
pub mod slo;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use report::{CapacityReport, CapacityStep, StopReason};
pub use search::{StepRunner, search};
pub use slo::{Slo, SloError, Verdict};

use crate::engine::LoadError;
use crate::report::Report;
use crate::spec::{LoadSpec, ProgressMode, RatePlan};

/// The highest rate `weft load` accepts (see [`RatePlan`]); growth stops
/// here when no `max_rate` is given.
pub const RATE_LIMIT: f64 = 10_000_000.0;

/// How to search. [`CapacityOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct CapacityOptions {
    /// What each step must meet (`--slo`).
    pub slo: Slo,
    /// The first rate tried, in requests/s (`--start-rate`, default 100).
    pub start_rate: f64,
    /// Never offer more than this, in requests/s (`--max-rate`); when every
    /// step passes up to it the result is "at least this".
    pub max_rate: Option<f64>,
    /// Each growth step multiplies the rate by this until a step fails
    /// (default 2).
    pub growth: f64,
    /// Bisection stops when the lowest failing rate is within this share of
    /// the highest passing rate (`--precision`, default 0.05 = 5%).
    pub precision: f64,
    /// How long each step is measured (`--step-duration`, default 10 s).
    pub step_duration: Duration,
    /// Load before each step's measurement, discarded (`--step-warmup`,
    /// default 2 s): lets queues, connection pools and autoscalers settle.
    pub step_warmup: Duration,
    /// The whole search's budget (`--max-time`, default 5 min): a step that
    /// would end past it is not started, and the result says so.
    pub max_time: Duration,
    /// Write the latency-vs-rate chart here, as SVG (`--chart FILE`).
    pub chart: Option<PathBuf>,
}

/// Why [`CapacityOptions`] cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum OptionsError {
    #[error("--start-rate must be a number of requests/s greater than 0 (got {0})")]
    StartRate(f64),
    #[error("--max-rate must be a number of requests/s greater than 0 (got {0})")]
    MaxRate(f64),
    #[error("--{flag} {rate} req/s is above the limit of 10000000 requests/s")]
    TooHigh { flag: &'static str, rate: f64 },
    #[error("--max-rate {max} req/s is below --start-rate {start} req/s")]
    MaxBelowStart { start: f64, max: f64 },
    #[error(
        "the growth factor must be greater than 1 (got {0}): each step multiplies the rate by it until the SLO fails"
    )]
    Growth(f64),
    #[error(
        "--precision must be between 0 and 1, both excluded (got {0}; 0.05 narrows the knee to 5%)"
    )]
    Precision(f64),
    #[error("--step-duration must be greater than 0")]
    StepDuration,
    #[error(
        "--max-time {max_time} is shorter than one step ({warmup} --step-warmup + {duration} --step-duration)"
    )]
    MaxTime {
        max_time: String,
        warmup: String,
        duration: String,
    },
}

impl CapacityOptions {
    /// The defaults: from 100 req/s doubling, 5% precision, steps of 10 s
    /// after 2 s of warmup, at most 5 minutes, no chart.
    pub fn new(slo: Slo) -> Self {
        CapacityOptions {
            slo,
            start_rate: 100.0,
            max_rate: None,
            growth: 2.0,
            precision: 0.05,
            step_duration: Duration::from_secs(10),
            step_warmup: Duration::from_secs(2),
            max_time: Duration::from_secs(300),
            chart: None,
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let positive = |r: f64| r.is_finite() && r > 0.0;
        if !positive(self.start_rate) {
            return Err(OptionsError::StartRate(self.start_rate));
        }
        if self.start_rate > RATE_LIMIT {
            return Err(OptionsError::TooHigh {
                flag: "start-rate",
                rate: self.start_rate,
            });
        }
        if let Some(max) = self.max_rate {
            if !positive(max) {
                return Err(OptionsError::MaxRate(max));
            }
            if max > RATE_LIMIT {
                return Err(OptionsError::TooHigh {
                    flag: "max-rate",
                    rate: max,
                });
            }
            if max < self.start_rate {
                return Err(OptionsError::MaxBelowStart {
                    start: self.start_rate,
                    max,
                });
            }
        }
        if !(self.growth.is_finite() && self.growth > 1.0) {
            return Err(OptionsError::Growth(self.growth));
        }
        if !(self.precision > 0.0 && self.precision < 1.0) {
            return Err(OptionsError::Precision(self.precision));
        }
        if self.step_duration.is_zero() {
            return Err(OptionsError::StepDuration);
        }
        if self.max_time < self.step_warmup + self.step_duration {
            return Err(OptionsError::MaxTime {
                max_time: fmt_duration(self.max_time),
                warmup: fmt_duration(self.step_warmup),
                duration: fmt_duration(self.step_duration),
            });
        }
        Ok(())
    }
}

/// Why a capacity search could not run.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("--chart `{0}`: weft capacity writes SVG charts; give a file name ending in .svg")]
    ChartFormat(PathBuf),
    #[error("--chart `{path}` cannot be written: {source}")]
    Chart {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Searches the highest rate `base` can be sent at while meeting
/// `opts.slo`: each step is `base` at one fixed rate for
/// `opts.step_warmup + opts.step_duration`. Progress lines go to stderr when
/// `base.progress` is [`ProgressMode::Stderr`].
///
/// When `stop` resolves, the running step ends early and the report covers
/// the steps before it (stop reason `interrupted`). The chart, when asked
/// for, is checked writable before the first step and written at the end;
/// if writing it then fails the report carries a warning instead.
pub async fn run(
    opts: CapacityOptions,
    base: LoadSpec,
    stop: impl Future<Output = ()> + Send,
) -> Result<CapacityReport, CapacityError> {
    opts.validate()?;
    let mut step_spec = base;
    step_spec.duration = opts.step_duration;
    step_spec.warmup = opts.step_warmup;
    step_spec.validate().map_err(LoadError::from)?;
    let created_chart = match &opts.chart {
        Some(path) => check_chart_path(path)?,
        None => false,
    };
    let show = step_spec.progress == ProgressMode::Stderr;
    step_spec.progress = ProgressMode::Off;
    if show {
        eprintln!(
            "weft capacity: {} against {}: steps of {} (+{} warmup) from {} req/s, at most {}",
            step_spec.target,
            opts.slo,
            fmt_duration(opts.step_duration),
            fmt_duration(opts.step_warmup),
            crate::report::fmt_rate(opts.start_rate),
            fmt_duration(opts.max_time)
        );
    }
    let mut print = |step: &CapacityStep| {
        if show {
            eprintln!("{}", step.progress_line());
        }
    };
    let result = drive(
        &opts,
        |stop| EngineSteps::new(step_spec, stop),
        stop,
        &mut print,
    )
    .await;
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            if created_chart && let Some(path) = &opts.chart {
                let _ = std::fs::remove_file(path);
            }
            return Err(e.into());
        }
    };
    if let Some(path) = &opts.chart
        && let Err(e) = std::fs::write(path, chart::svg(&report))
    {
        report.warnings.push(format!(
            "the chart could not be written to `{}`: {e}",
            path.display()
        ));
    }
    Ok(report)
}

/// Runs the search with a runner built around a stop flag, raising the flag
/// when `stop` resolves so that the running step ends early.
async fn drive<R: StepRunner>(
    opts: &CapacityOptions,
    make_runner: impl FnOnce(watch::Receiver<bool>) -> R,
    stop: impl Future<Output = ()> + Send,
    progress: &mut (dyn FnMut(&CapacityStep) + Send),
) -> Result<CapacityReport, LoadError> {
    let (flag, stopped) = watch::channel(false);
    let mut runner = make_runner(stopped);
    let search = search::search(opts, &mut runner, progress);
    tokio::pin!(search);
    tokio::pin!(stop);
    let mut stop_seen = false;
    loop {
        tokio::select! {
            result = &mut search => return result,
            () = &mut stop, if !stop_seen => {
                stop_seen = true;
                flag.send_replace(true);
            }
        }
    }
}

/// Steps run by the real engine, each a fresh [`crate::run`].
struct EngineSteps {
    spec: LoadSpec,
    stop: watch::Receiver<bool>,
    started: Instant,
}

impl EngineSteps {
    fn new(spec: LoadSpec, stop: watch::Receiver<bool>) -> Self {
        EngineSteps {
            spec,
            stop,
            started: Instant::now(),
        }
    }
}

impl StepRunner for EngineSteps {
    fn run_step(&mut self, rate: f64) -> impl Future<Output = Result<Report, LoadError>> + Send {
        let mut spec = self.spec.clone();
        spec.rate = RatePlan::Steps(vec![rate]);
        let mut stop = self.stop.clone();
        async move {
            let already = *stop.borrow();
            if already {
                return Ok(Report {
                    interrupted: true,
                    requested_rate: Some(rate),
                    ..Report::default()
                });
            }
            let stopped = async move {
                // The sender gone means the search is over: never stop then.
                if stop.wait_for(|s| *s).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            crate::run(spec, stopped).await
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn interrupted(&self) -> bool {
        *self.stop.borrow()
    }
}

/// Fails unless `path` names an SVG file that can be written, so that a long
/// search is not wasted on a typo. Returns whether the check created it.
fn check_chart_path(path: &Path) -> Result<bool, CapacityError> {
    let svg = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !svg {
        return Err(CapacityError::ChartFormat(path.to_owned()));
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|source| CapacityError::Chart {
            path: path.to_owned(),
            source,
        })?;
    Ok(!existed)
}

/// `300ms`, `10s`, `1.5s`, `5m`, `2m30s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 1.0 && !d.is_zero() {
        return format!("{}ms", d.as_millis());
    }
    if secs >= 60.0 && d.subsec_nanos() == 0 {
        let (m, s) = (d.as_secs() / 60, d.as_secs() % 60);
        return if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        };
    }
    format!("{}s", slo::trim_number(secs))
}

#[cfg(test)]
mod tests;
