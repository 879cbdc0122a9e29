//! The service-level objective each capacity step is held to, written as
//! comma-separated clauses: `p99<50ms,errors<0.1%`.
//!
//! A clause bounds one measure from above: a latency percentile (`p50`,
//! `p90`, `p99`, `p99.9`, `p99.99`, `max`; from the intended send time), the
//! same on service time (`service_p99`, from the moment the request left), or
//! the error share (`errors<0.1%`, or `errors<0.001` as a ratio).

use std::fmt;
use std::str::FromStr;

use crate::report::{Percentiles, StepReport, fmt_rate};

/// A step whose achieved rate is below this share of the offered rate fails:
/// the server could not take the load (or queued it out of the window).
pub const MIN_ACHIEVED_SHARE: f64 = 0.9;

/// The percentiles `weft load` reports, by their SLO name.
const PERCENTILES: [(&str, f64); 6] = [
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
    ("p99.99", 99.99),
    ("max", 100.0),
];

/// Other spellings accepted for the same percentiles.
const ALIASES: [(&str, f64); 3] = [("p999", 99.9), ("p9999", 99.99), ("p100", 100.0)];

const ALLOWED_PERCENTILES: &str = "p50, p90, p99, p99.9, p99.99, max";

/// What a clause bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    /// A percentile of `latency_ms` (from the intended send time), as taken
    /// by [`Percentiles::at`]: 50, 90, 99, 99.9, 99.99, or 100 for max.
    Latency(f64),
    /// A percentile of `service_time_ms` (from the moment the request left).
    ServiceTime(f64),
    /// Failed requests as a share of all requests.
    Errors,
}

impl Metric {
    /// The name as written in an SLO (`p99`, `service_max`, `errors`).
    pub fn name(&self) -> String {
        match self {
            Metric::Latency(q) => percentile_name(*q).to_owned(),
            Metric::ServiceTime(q) => format!("service_{}", percentile_name(*q)),
            Metric::Errors => "errors".to_owned(),
        }
    }

    /// The name in a sentence (`p99`, `service p99`, `errors`).
    pub fn label(&self) -> String {
        self.name().replace('_', " ")
    }
}

fn percentile_name(q: f64) -> &'static str {
    PERCENTILES
        .iter()
        .find(|(_, p)| (p - q).abs() < 1e-9)
        .map_or("p?", |(n, _)| n)
}

/// `<` or `<=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// `<`: the measure must stay strictly below the limit.
    Below,
    /// `<=`: the measure may reach the limit.
    AtMost,
}

impl Comparison {
    fn symbol(self) -> &'static str {
        match self {
            Comparison::Below => "<",
            Comparison::AtMost => "<=",
        }
    }

    fn holds(self, measured: f64, limit: f64) -> bool {
        match self {
            Comparison::Below => measured < limit,
            Comparison::AtMost => measured <= limit,
        }
    }
}

/// The unit a limit was written in, kept so that [`Slo`] displays as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Us,
    Ms,
    S,
    Percent,
    Ratio,
}

impl Unit {
    fn suffix(self) -> &'static str {
        match self {
            Unit::Us => "us",
            Unit::Ms => "ms",
            Unit::S => "s",
            Unit::Percent => "%",
            Unit::Ratio => "",
        }
    }
}

/// One bound of an SLO, such as `p99<50ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub metric: Metric,
    pub comparison: Comparison,
    /// Milliseconds for latencies, a ratio in `[0, 1]` for errors.
    pub limit: f64,
    written: (f64, Unit),
}

impl Clause {
    /// Checks one step; `Err` is the reason it fails.
    fn check(&self, step: &StepReport) -> Result<(), String> {
        let name = self.metric.label();
        let (measured, percentiles) = match self.metric {
            Metric::Errors => {
                let ratio = step.error_ratio();
                if self.comparison.holds(ratio, self.limit) {
                    return Ok(());
                }
                let op = violation_symbol(ratio, self.limit);
                return Err(format!(
                    "{name} {:.2}% {op} {}%",
                    ratio * 100.0,
                    trim_number(self.limit * 100.0)
                ));
            }
            Metric::Latency(q) => (step.latency_ms.at(q), &step.latency_ms),
            Metric::ServiceTime(q) => (step.service_time_ms.at(q), &step.service_time_ms),
        };
        let measured = measured.unwrap_or(f64::NAN);
        if no_latencies(step, percentiles) {
            return Err(format!("{name}: no responses to measure latency on"));
        }
        if self.comparison.holds(measured, self.limit) {
            return Ok(());
        }
        Err(format!(
            "{name} {} ms {} {} ms",
            fmt_latency(measured),
            violation_symbol(measured, self.limit),
            trim_number(self.limit)
        ))
    }
}

// Percentiles of nothing are zeros, which would pass any latency bound.
fn no_latencies(step: &StepReport, p: &Percentiles) -> bool {
    p.count == 0 && step.requests > 0
}

fn violation_symbol(measured: f64, limit: f64) -> &'static str {
    if measured > limit { ">" } else { ">=" }
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (value, unit) = self.written;
        write!(
            f,
            "{}{}{}{}",
            self.metric.name(),
            self.comparison.symbol(),
            trim_number(value),
            unit.suffix()
        )
    }
}

/// An SLO: every clause must hold for a step to pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    clauses: Vec<Clause>,
}

/// Whether one step met the SLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub pass: bool,
    /// Why it failed, one per violated bound (`p99 62.1 ms > 50 ms`); empty
    /// when it passed.
    pub reasons: Vec<String>,
}

impl Slo {
    /// The clauses, in the order written.
    pub fn clauses(&self) -> &[Clause] {
        &self.clauses
    }

    /// The latency bounds as (label, limit in ms), for the chart.
    pub fn latency_limits(&self) -> Vec<(String, f64)> {
        self.clauses
            .iter()
            .filter(|c| !matches!(c.metric, Metric::Errors))
            .map(|c| {
                (
                    format!(
                        "{} {} {} ms",
                        c.metric.label(),
                        c.comparison.symbol(),
                        trim_number(c.limit)
                    ),
                    c.limit,
                )
            })
            .collect()
    }

    /// Holds a step to every clause, and to taking the offered load: a step
    /// that achieved less than 90% of its requested rate fails too.
    pub fn check(&self, step: &StepReport) -> Verdict {
        let mut reasons = Vec::new();
        if step.requests == 0 {
            reasons.push("no requests were measured".to_owned());
        }
        if let Some(rate) = step.rate
            && step.achieved_rate < MIN_ACHIEVED_SHARE * rate
        {
            reasons.push(format!(
                "achieved {} req/s, under {:.0}% of the {} req/s offered: the server could not take the load",
                fmt_rate(step.achieved_rate),
                MIN_ACHIEVED_SHARE * 100.0,
                fmt_rate(rate)
            ));
        }
        reasons.extend(self.clauses.iter().filter_map(|c| c.check(step).err()));
        Verdict {
            pass: reasons.is_empty(),
            reasons,
        }
    }
}

impl fmt::Display for Slo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.clauses.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

/// Why SLO text cannot be used. Each names the clause at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SloError {
    #[error("SLO is empty: give comma-separated bounds such as `p99<50ms,errors<0.1%`")]
    Empty,
    #[error("SLO `{slo}`: clause {position} is empty (a stray comma?)")]
    EmptyClause { slo: String, position: usize },
    #[error("SLO clause `{0}` has no comparison: write it as `p99<50ms` or `errors<0.1%`")]
    NoComparison(String),
    #[error(
        "SLO clause `{clause}`: comparison `{op}` is not supported; an SLO bounds from above, use `<` or `<=`"
    )]
    Comparison { clause: String, op: String },
    #[error(
        "SLO clause `{clause}`: `{name}` is not a percentile weft load reports; use one of {ALLOWED_PERCENTILES}"
    )]
    UnknownPercentile { clause: String, name: String },
    #[error(
        "SLO clause `{clause}`: unknown metric `{name}`; use {ALLOWED_PERCENTILES} (latency), service_p99 etc. (service time) or errors"
    )]
    UnknownMetric { clause: String, name: String },
    #[error("SLO clause `{0}` has no limit after the comparison")]
    NoLimit(String),
    #[error("SLO clause `{clause}`: `{value}` is not a number")]
    NotANumber { clause: String, value: String },
    #[error(
        "SLO clause `{clause}`: `{value}` has no unit; write it with us, ms or s (e.g. `{value}ms`)"
    )]
    MissingUnit { clause: String, value: String },
    #[error("SLO clause `{clause}`: unknown unit `{unit}`; latencies take us, ms or s")]
    UnknownUnit { clause: String, unit: String },
    #[error(
        "SLO clause `{clause}`: errors are bounded as a percent (`0.1%`) or a ratio (`0.001`), not in `{unit}`"
    )]
    ErrorUnit { clause: String, unit: String },
    #[error("SLO clause `{clause}`: the limit must be greater than 0 (it could never be met)")]
    NotPositive { clause: String },
    #[error(
        "SLO clause `{clause}`: `errors<0` can never be met; write `errors<=0%` to allow no errors at all"
    )]
    ZeroErrorsBelow { clause: String },
    #[error("SLO clause `{clause}`: an error share above 100% means nothing{hint}")]
    ErrorsAboveAll { clause: String, hint: String },
    #[error("SLO bounds `{0}` twice")]
    Duplicate(String),
}

impl FromStr for Slo {
    type Err = SloError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(SloError::Empty);
        }
        let mut clauses: Vec<Clause> = Vec::new();
        for (i, part) in s.split(',').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                return Err(SloError::EmptyClause {
                    slo: s.trim().to_owned(),
                    position: i + 1,
                });
            }
            let clause = parse_clause(part)?;
            if clauses.iter().any(|c| c.metric == clause.metric) {
                return Err(SloError::Duplicate(clause.metric.name()));
            }
            clauses.push(clause);
        }
        Ok(Slo { clauses })
    }
}

fn parse_clause(clause: &str) -> Result<Clause, SloError> {
    let at = clause
        .find(['<', '>', '=', '!'])
        .ok_or_else(|| SloError::NoComparison(clause.to_owned()))?;
    let name = clause[..at].trim().to_ascii_lowercase();
    let rest = &clause[at..];
    let op_len = rest
        .find(|c: char| !matches!(c, '<' | '>' | '=' | '!'))
        .unwrap_or(rest.len());
    let comparison = match &rest[..op_len] {
        "<" => Comparison::Below,
        "<=" => Comparison::AtMost,
        op => {
            return Err(SloError::Comparison {
                clause: clause.to_owned(),
                op: op.to_owned(),
            });
        }
    };
    let metric = parse_metric(clause, &name)?;
    let value = rest[op_len..].trim();
    if value.is_empty() {
        return Err(SloError::NoLimit(clause.to_owned()));
    }
    let (number, unit) = split_number(clause, value)?;
    let (limit, unit) = match metric {
        Metric::Errors => error_limit(clause, comparison, number, &unit)?,
        Metric::Latency(_) | Metric::ServiceTime(_) => latency_limit(clause, number, &unit)?,
    };
    Ok(Clause {
        metric,
        comparison,
        limit,
        written: (number, unit),
    })
}

fn parse_metric(clause: &str, name: &str) -> Result<Metric, SloError> {
    if name == "errors" {
        return Ok(Metric::Errors);
    }
    let (service, percentile) = match name.strip_prefix("service_") {
        Some(p) => (true, p),
        None => (false, name),
    };
    let known = PERCENTILES
        .iter()
        .chain(ALIASES.iter())
        .find(|(n, _)| *n == percentile)
        .map(|(_, q)| *q);
    let q = match known {
        Some(q) => q,
        None if is_percentile_like(percentile) => {
            return Err(SloError::UnknownPercentile {
                clause: clause.to_owned(),
                name: percentile.to_owned(),
            });
        }
        None => {
            return Err(SloError::UnknownMetric {
                clause: clause.to_owned(),
                name: name.to_owned(),
            });
        }
    };
    Ok(if service {
        Metric::ServiceTime(q)
    } else {
        Metric::Latency(q)
    })
}

fn is_percentile_like(name: &str) -> bool {
    name.strip_prefix('p')
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// `50ms` -> (50, "ms"); `0.1 %` -> (0.1, "%").
fn split_number(clause: &str, value: &str) -> Result<(f64, String), SloError> {
    let end = value
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '-' || c == '+'))))
        .map_or(value.len(), |(i, _)| i);
    let number: f64 = value[..end]
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| SloError::NotANumber {
            clause: clause.to_owned(),
            value: value.to_owned(),
        })?;
    Ok((number, value[end..].trim().to_ascii_lowercase()))
}

fn latency_limit(clause: &str, number: f64, unit: &str) -> Result<(f64, Unit), SloError> {
    let (ms, unit) = match unit {
        "us" | "µs" | "μs" => (number / 1000.0, Unit::Us),
        "ms" => (number, Unit::Ms),
        "s" => (number * 1000.0, Unit::S),
        "" => {
            return Err(SloError::MissingUnit {
                clause: clause.to_owned(),
                value: trim_number(number),
            });
        }
        other => {
            return Err(SloError::UnknownUnit {
                clause: clause.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    if ms <= 0.0 {
        return Err(SloError::NotPositive {
            clause: clause.to_owned(),
        });
    }
    Ok((ms, unit))
}

fn error_limit(
    clause: &str,
    comparison: Comparison,
    number: f64,
    unit: &str,
) -> Result<(f64, Unit), SloError> {
    let (ratio, unit) = match unit {
        "%" => (number / 100.0, Unit::Percent),
        "" => (number, Unit::Ratio),
        other => {
            return Err(SloError::ErrorUnit {
                clause: clause.to_owned(),
                unit: other.to_owned(),
            });
        }
    };
    if ratio < 0.0 {
        return Err(SloError::NotPositive {
            clause: clause.to_owned(),
        });
    }
    if ratio == 0.0 && comparison == Comparison::Below {
        return Err(SloError::ZeroErrorsBelow {
            clause: clause.to_owned(),
        });
    }
    if ratio > 1.0 {
        let hint = if unit == Unit::Ratio && number <= 100.0 {
            format!(
                " (without `%` it is a ratio; for percent write `{}%`)",
                trim_number(number)
            )
        } else {
            String::new()
        };
        return Err(SloError::ErrorsAboveAll {
            clause: clause.to_owned(),
            hint,
        });
    }
    Ok((ratio, unit))
}

/// A number without float noise or trailing zeros: `50`, `0.1`, `0.0005`.
pub(crate) fn trim_number(x: f64) -> String {
    let s = format!("{x:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" || s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// A latency with about three significant digits: `62.1`, `4.25`, `0.731`.
pub(crate) fn fmt_latency(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}

#[cfg(test)]
#[path = "slo_tests.rs"]
mod tests;
