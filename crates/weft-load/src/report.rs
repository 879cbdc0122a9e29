//! What a run measured: the JSON schema of `weft load --json` (consumed by
//! `weft capacity`, the benchmarks and scripts) and its human table.
//!
//! Two latencies per request:
//! - `latency_ms`: from the request's *intended* send time on the schedule
//!   to the end of its response. A server stall delays every request due
//!   during it, so the stall shows here, as it would for real users arriving
//!   at that rate (coordinated omission corrected, as wrk2 and Nighthawk do).
//! - `service_time_ms`: from the moment the request actually left to the end
//!   of its response: what a closed-loop tool (wrk, ab) reports.
//!
//! `requests` counts every request that was due in the measured window,
//! answered or not; `errors` counts those that failed: transport errors,
//! timeouts, HTTP statuses other than 2xx/3xx, and gRPC statuses other than
//! OK (as wrk counts "non-2xx or 3xx responses").

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
    /// How many values these are computed from.
    pub count: u64,
}

impl Percentiles {
    /// The value for a percentile written as in an SLO (`50`, `90`, `99`,
    /// `99.9`, `99.99`, `100` for max); `None` for any other.
    pub fn at(&self, percentile: f64) -> Option<f64> {
        let p = percentile;
        let close = |x: f64| (p - x).abs() < 1e-9;
        Some(if close(50.0) {
            self.p50
        } else if close(90.0) {
            self.p90
        } else if close(99.0) {
            self.p99
        } else if close(99.9) {
            self.p999
        } else if close(99.99) {
            self.p9999
        } else if close(100.0) {
            self.max
        } else {
            return None;
        })
    }
}

/// Whether the load generator itself kept up with its schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientHealth {
    /// The tool could not send on schedule: the latencies above include its
    /// own delay and the achieved rate is not the server's limit.
    pub saturated: bool,
    /// For requests that found a free connection: how late they left
    /// relative to their intended time (the tool's own scheduling delay).
    pub send_lag_ms: Percentiles,
    /// How late the pacer thread handed out requests (its own lateness).
    pub pacer_lag_ms: Percentiles,
    /// How late the tool's runtime ran a task that was due (a probe timer
    /// every 10 ms): large when its threads are short of CPU.
    pub scheduler_lag_ms: Percentiles,
    /// CPU the tool used during the measured window, in percent of one core.
    pub cpu_percent: f64,
    /// Share of the runtime workers' time spent running while measuring,
    /// in percent: near 100 the tool is CPU-bound.
    pub worker_busy_percent: f64,
    /// Threads the tool ran on (runtime workers + the pacer).
    pub threads: usize,
    /// Everything the reader should know before trusting the numbers.
    pub warnings: Vec<String>,
}

/// One rate step of a run (`--rate 1000,2000,4000` has three).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Requested rate in requests/s; `None` for `--rate max`.
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub achieved_rate: f64,
    pub status_counts: BTreeMap<String, u64>,
    pub grpc_status_counts: BTreeMap<String, u64>,
    pub error_counts: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
    pub service_time_ms: Percentiles,
}

/// Errors as a share of requests (0.0 when there were none).
fn ratio(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

impl StepReport {
    /// Errors as a share of requests (0.0 when there were none).
    pub fn error_ratio(&self) -> f64 {
        ratio(self.errors, self.requests)
    }
}

/// One second of the run, for the live line and for charts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Seconds since the start (warmup included) at the end of the interval.
    pub t: f64,
    pub warmup: bool,
    /// Requests sent during the interval.
    pub sent: u64,
    /// Requests finished (answered or failed) during the interval.
    pub completed: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The whole run: `weft load --json` prints exactly this.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub target: String,
    /// `http1`, `http2` or `grpc`.
    pub protocol: String,
    /// The gRPC method (`package.Service/Method`), when `protocol` is `grpc`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grpc_method: Option<String>,
    pub connections: usize,
    /// Mean requested rate over the measured window; `None` for `--rate max`.
    pub requested_rate: Option<f64>,
    /// The measured window (warmup excluded), in seconds.
    pub duration_s: f64,
    pub warmup_s: f64,
    pub requests: u64,
    pub errors: u64,
    pub achieved_rate: f64,
    /// HTTP status code -> responses (`"200": 9998`).
    pub status_counts: BTreeMap<String, u64>,
    /// gRPC status name -> calls (`"OK"`, `"UNAVAILABLE"`, ...).
    pub grpc_status_counts: BTreeMap<String, u64>,
    /// Failure kind -> requests: `connect_refused`, `connect_timeout`,
    /// `connect_error`, `timeout`, `reset`, `closed_mid_response`,
    /// `protocol`, `http_status`, `grpc_status`, `expired_in_queue`, `other`.
    pub error_counts: BTreeMap<String, u64>,
    /// The first message seen for each failure kind, to name the cause.
    pub error_examples: BTreeMap<String, String>,
    pub latency_ms: Percentiles,
    pub service_time_ms: Percentiles,
    pub client: ClientHealth,
    /// One per rate step (one for a single rate or `max`, none for a ramp).
    pub steps: Vec<StepReport>,
    pub timeline: Vec<Interval>,
    /// Stopped early (SIGTERM, Ctrl-C): the numbers cover what ran.
    pub interrupted: bool,
}

impl Report {
    /// Errors as a share of requests (0.0 when there were none).
    pub fn error_ratio(&self) -> f64 {
        ratio(self.errors, self.requests)
    }

    /// The report as one step (what `weft capacity` compares to its SLO).
    pub fn as_step(&self) -> StepReport {
        StepReport {
            rate: self.requested_rate,
            duration_s: self.duration_s,
            requests: self.requests,
            errors: self.errors,
            achieved_rate: self.achieved_rate,
            status_counts: self.status_counts.clone(),
            grpc_status_counts: self.grpc_status_counts.clone(),
            error_counts: self.error_counts.clone(),
            latency_ms: self.latency_ms,
            service_time_ms: self.service_time_ms,
        }
    }

    /// The human table `weft load` prints.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let proto = match &self.grpc_method {
            Some(m) => format!("grpc {m}"),
            None => self.protocol.clone(),
        };
        let _ = writeln!(
            s,
            "target     {}  ({proto}, {} connections)",
            self.target, self.connections
        );
        let requested = match self.requested_rate {
            Some(r) => format!("{} req/s requested, ", fmt_rate(r)),
            None => "max rate (closed loop), ".to_owned(),
        };
        let _ = writeln!(
            s,
            "rate       {requested}{} req/s achieved: {} requests in {:.1} s{}",
            fmt_rate(self.achieved_rate),
            self.requests,
            self.duration_s,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "errors     {} ({:.3}%)",
            self.errors,
            self.error_ratio() * 100.0
        );
        if !self.status_counts.is_empty() {
            let _ = writeln!(s, "status     {}", join_counts(&self.status_counts));
        }
        if !self.grpc_status_counts.is_empty() {
            let _ = writeln!(s, "grpc       {}", join_counts(&self.grpc_status_counts));
        }
        for (kind, n) in &self.error_counts {
            let example = self
                .error_examples
                .get(kind)
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            let _ = writeln!(s, "  {kind:<20} {n}{example}");
        }
        let _ = writeln!(s);
        let corrected = if self.requested_rate.is_some() {
            "latency (from intended send)"
        } else {
            "latency"
        };
        let _ = writeln!(s, "{:<10} {corrected:>30}  {:>16}", "ms", "service time");
        type Pick = fn(&Percentiles) -> f64;
        let rows: [(&str, Pick); 7] = [
            ("p50", |p| p.p50),
            ("p90", |p| p.p90),
            ("p99", |p| p.p99),
            ("p99.9", |p| p.p999),
            ("p99.99", |p| p.p9999),
            ("max", |p| p.max),
            ("mean", |p| p.mean),
        ];
        for (name, f) in rows {
            let _ = writeln!(
                s,
                "{name:<10} {:>30}  {:>16}",
                fmt_ms(f(&self.latency_ms)),
                fmt_ms(f(&self.service_time_ms))
            );
        }
        if self.steps.len() > 1 {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{:>10} {:>10} {:>9} {:>10} {:>10} {:>10}",
                "requested", "achieved", "errors", "p50 ms", "p99 ms", "p99.9 ms"
            );
            for st in &self.steps {
                let _ = writeln!(
                    s,
                    "{:>10} {:>10} {:>8.2}% {:>10} {:>10} {:>10}",
                    st.rate.map_or("max".to_owned(), fmt_rate),
                    fmt_rate(st.achieved_rate),
                    st.error_ratio() * 100.0,
                    fmt_ms(st.latency_ms.p50),
                    fmt_ms(st.latency_ms.p99),
                    fmt_ms(st.latency_ms.p999)
                );
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "client     {:.0}% CPU on {} threads (workers {:.0}% busy), send lag p50 {} p99 {} ms, scheduler lag p99 {} ms",
            self.client.cpu_percent,
            self.client.threads,
            self.client.worker_busy_percent,
            fmt_ms(self.client.send_lag_ms.p50),
            fmt_ms(self.client.send_lag_ms.p99),
            fmt_ms(self.client.scheduler_lag_ms.p99)
        );
        if self.client.saturated {
            let _ = writeln!(
                s,
                "!!! CLIENT SATURATED: weft load could not keep to its schedule; the latencies include \
                 its own delay and the achieved rate is not the server's limit !!!"
            );
        }
        for w in &self.client.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        s
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.human())
    }
}

fn join_counts(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rate with a sensible number of digits.
pub fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// Milliseconds with three significant digits or so.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.2}")
    } else {
        format!("{ms:.3}")
    }
}
