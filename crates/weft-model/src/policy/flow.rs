//! Issue 6's sections of a TrafficPolicy: admission (drop ratio, denied
//! sources), local rate limits, fault injection and deadline propagation.
//!
//! ```yaml
//! spec:
//!   targetRefs: [{kind: Service, name: catalog}]
//!   admission: {dropRatio: 0.2, dryRun: false, sources: [frontend], deniedSources: [batch]}
//!   rateLimit:
//!     local: {requestsPerSecond: 100, burst: 20}
//!     global: {requestsPerUnit: 1000, unit: second, failureMode: open, perSource: false}
//!   fault:
//!     delay: {fixed: 50ms, percent: 10}
//!     abort: {httpStatus: 503, percent: 5}      # or grpcStatus: UNAVAILABLE
//!     headers: [{name: x-chaos, value: "on"}]   # only requests carrying all of these
//!   deadline: {propagate: true, margin: 5ms}
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spec::{Fields, grpc_code, is_token};

/// Who gets in: a share of requests dropped, whole callers denied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Admission {
    /// Share of requests answered 503 / UNAVAILABLE (`weft-error: dropped`).
    pub drop_ratio: f64,
    /// Count what would be dropped or denied; let everything through.
    pub dry_run: bool,
    /// The drop ratio applies only to requests from these Services (a
    /// source -> destination pair); empty: from everyone.
    pub sources: Vec<String>,
    /// Services whose requests are all refused ("remove a downstream").
    pub denied_sources: Vec<String>,
}

/// Request rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    /// A token bucket in each proxy.
    pub local: Option<LocalRateLimit>,
    /// One limit for every proxy, counted by the rate-limit service.
    #[serde(default)]
    pub global: Option<GlobalRateLimit>,
}

/// A limit shared by all proxies, kept by the rate-limit service (Envoy's
/// `RateLimitService` protocol) in fixed windows of one `unit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalRateLimit {
    pub requests_per_unit: u32,
    pub unit: RateLimitUnit,
    /// What happens when the counters cannot be reached (the service's
    /// store, or the service itself).
    pub failure_mode: FailureMode,
    /// The counter's name at the service: `<namespace>/<policy name>`. Every
    /// request the policy covers counts against it.
    pub descriptor: String,
    /// One counter (of the whole limit) per calling Service, across all its
    /// instances, instead of one for everyone.
    #[serde(default)]
    pub per_source: bool,
}

impl GlobalRateLimit {
    /// The descriptor entry key under which [`Self::descriptor`] is sent.
    pub const DESCRIPTOR_KEY: &'static str = "weft-policy";
    /// The rate-limit domain weft's limits live in.
    pub const DOMAIN: &'static str = "weft";
    /// The descriptor entry naming the calling Service (`perSource`), as
    /// Envoy's `source_cluster` action sends it.
    pub const SOURCE_KEY: &'static str = "source_cluster";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RateLimitUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl RateLimitUnit {
    pub fn seconds(self) -> u64 {
        match self {
            RateLimitUnit::Second => 1,
            RateLimitUnit::Minute => 60,
            RateLimitUnit::Hour => 3600,
            RateLimitUnit::Day => 86_400,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimitUnit::Second => "second",
            RateLimitUnit::Minute => "minute",
            RateLimitUnit::Hour => "hour",
            RateLimitUnit::Day => "day",
        }
    }
}

/// Admit (open) or refuse (closed) when the limit cannot be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureMode {
    Open,
    Closed,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Open => "open",
            FailureMode::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalRateLimit {
    pub requests_per_second: f64,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

/// Injected faults (chaos experiments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
    /// Only requests carrying every one of these headers (exact values).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultDelay {
    pub fixed: Duration,
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultAbort {
    pub status: AbortStatus,
    pub percent: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortStatus {
    Http(u16),
    /// A gRPC status code, 1 to 16.
    Grpc(u8),
}

/// The caller's deadline, carried hop to hop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deadline {
    /// Read the caller's deadline and write the remaining one upstream.
    pub propagate: bool,
    /// Taken off the remaining time on each hop (the time the answer needs
    /// to travel back).
    pub margin: Duration,
}

impl Default for Deadline {
    fn default() -> Self {
        Deadline {
            propagate: true,
            margin: Duration::from_millis(1),
        }
    }
}

/// The largest rate a local limit accepts: beyond it a limit is a typo.
const MAX_RATE: f64 = 1_000_000.0;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct AdmissionSpec {
    drop_ratio: Option<f64>,
    dry_run: Option<bool>,
    #[serde(default)]
    sources: Vec<String>,
    #[serde(default)]
    denied_sources: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RateLimitSpec {
    local: Option<LocalRateLimitSpec>,
    global: Option<GlobalRateLimitSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GlobalRateLimitSpec {
    requests_per_unit: u64,
    unit: Option<String>,
    failure_mode: Option<String>,
    per_source: Option<bool>,
}

/// The largest global limit per unit (the protocol's counters are u32).
const MAX_GLOBAL: u64 = 1_000_000_000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LocalRateLimitSpec {
    requests_per_second: f64,
    burst: Option<u32>,
    per_source: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct FaultSpec {
    delay: Option<FaultDelaySpec>,
    abort: Option<FaultAbortSpec>,
    #[serde(default)]
    headers: Vec<HeaderSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultDelaySpec {
    fixed: String,
    percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultAbortSpec {
    http_status: Option<u16>,
    grpc_status: Option<String>,
    percent: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeaderSpec {
    name: String,
    value: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct DeadlineSpec {
    propagate: Option<bool>,
    margin: Option<String>,
}

fn names(f: &mut Fields<'_, '_>, field: &str, list: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, n) in list.into_iter().enumerate() {
        if n.is_empty() {
            f.add(&format!("{field}[{i}]"), "empty Service name");
        } else if out.contains(&n) {
            f.add(&format!("{field}[{i}]"), format!("{n:?} is listed twice"));
        } else {
            out.push(n);
        }
    }
    out
}

/// A percentage of requests, 0 to 100 (100 when absent).
fn percent(f: &mut Fields<'_, '_>, field: &str, value: Option<f64>) -> f64 {
    match value {
        None => 100.0,
        Some(p) if p.is_finite() && (0.0..=100.0).contains(&p) => p,
        Some(p) => {
            f.add(field, format!("{p} is not a percentage (0 to 100)"));
            100.0
        }
    }
}

impl AdmissionSpec {
    pub(super) fn validate(self, f: &mut Fields<'_, '_>) -> Admission {
        let drop_ratio = match self.drop_ratio {
            None => 0.0,
            Some(r) if r.is_finite() && (0.0..=1.0).contains(&r) => r,
            Some(r) => {
                f.add(
                    "dropRatio",
                    format!("{r} is not a ratio: use 0.0 (drop nothing) to 1.0 (drop everything)"),
                );
                0.0
            }
        };
        let sources = names(f, "sources", self.sources);
        let denied_sources = names(f, "deniedSources", self.denied_sources);
        if let Some(both) = sources.iter().find(|s| denied_sources.contains(s)) {
            f.add(
                "deniedSources",
                format!(
                    "{both:?} is also in sources: a denied Service never reaches the drop ratio"
                ),
            );
        }
        if self.drop_ratio.is_none() && denied_sources.is_empty() {
            f.add("", "admission needs dropRatio or deniedSources");
        }
        if !sources.is_empty() && self.drop_ratio.is_none() {
            f.add("sources", "sources narrow dropRatio, which is not set");
        }
        Admission {
            drop_ratio,
            dry_run: self.dry_run.unwrap_or(false),
            sources,
            denied_sources,
        }
    }
}

impl RateLimitSpec {
    /// `descriptor`: the policy's `namespace/name`.
    pub(super) fn validate(self, f: &mut Fields<'_, '_>, descriptor: &str) -> RateLimit {
        let global = self.global.map(|g| {
            let requests_per_unit = match g.requests_per_unit {
                0 => {
                    f.add("global.requestsPerUnit", "0 would refuse every request (use admission.dropRatio: 1 for that); use at least 1");
                    1
                }
                n if n > MAX_GLOBAL => {
                    f.add("global.requestsPerUnit", format!("{n} is above {MAX_GLOBAL}"));
                    1
                }
                n => n as u32,
            };
            let unit = match g.unit.as_deref() {
                None | Some("second") => RateLimitUnit::Second,
                Some("minute") => RateLimitUnit::Minute,
                Some("hour") => RateLimitUnit::Hour,
                Some("day") => RateLimitUnit::Day,
                Some(u) => {
                    f.add("global.unit", format!("{u:?} is not a unit: use second, minute, hour or day"));
                    RateLimitUnit::Second
                }
            };
            let failure_mode = match g.failure_mode.as_deref() {
                None | Some("open") => FailureMode::Open,
                Some("closed") => FailureMode::Closed,
                Some(m) => {
                    f.add("global.failureMode", format!("{m:?} is not a failure mode: use open (admit when the limit cannot be checked) or closed (refuse)"));
                    FailureMode::Open
                }
            };
            GlobalRateLimit {
                requests_per_unit,
                unit,
                failure_mode,
                descriptor: descriptor.to_string(),
                per_source: g.per_source.unwrap_or(false),
            }
        });
        let local = self.local.map(|l| {
            let rps = l.requests_per_second;
            let rate_ok = rps.is_finite() && rps > 0.0 && rps <= MAX_RATE;
            if !rate_ok {
                f.add(
                    "local.requestsPerSecond",
                    format!("{rps} must be above 0 and at most {MAX_RATE} (a limit of 0 would refuse everything: use admission.dropRatio: 1 for that)"),
                );
            }
            let rps = if rate_ok { rps } else { 1.0 };
            let burst = match l.burst {
                Some(0) => {
                    f.add("local.burst", "0 would refuse every request; use at least 1");
                    1
                }
                Some(b) if f64::from(b) > MAX_RATE => {
                    f.add("local.burst", format!("{b} is above {MAX_RATE}"));
                    1
                }
                Some(b) => b,
                // One second's worth, as Envoy's examples do.
                None => rps.ceil().max(1.0) as u32,
            };
            if l.per_source.is_some() {
                f.add(
                    "local.perSource",
                    "local limits are kept by each calling proxy, so every caller instance has its own bucket already; for one budget per calling Service across its instances use global: {perSource: true}",
                );
            }
            LocalRateLimit {
                requests_per_second: rps,
                burst,
            }
        });
        if local.is_none() && global.is_none() {
            f.add("", "rateLimit needs local or global");
        }
        RateLimit { local, global }
    }
}

impl FaultSpec {
    pub(super) fn validate(self, f: &mut Fields<'_, '_>) -> Fault {
        let delay = self.delay.map(|d| FaultDelay {
            fixed: f.duration("delay.fixed", Some(d.fixed), Duration::from_millis(1)),
            percent: percent(f, "delay.percent", d.percent),
        });
        let abort = self.abort.map(|a| {
            let status = match (a.http_status, a.grpc_status) {
                (Some(s), None) if (200..=599).contains(&s) => AbortStatus::Http(s),
                (Some(s), None) => {
                    f.add(
                        "abort.httpStatus",
                        format!("{s} is not an HTTP status (200 to 599)"),
                    );
                    AbortStatus::Http(503)
                }
                (None, Some(g)) => match grpc_code(&g) {
                    Ok(0) => {
                        f.add("abort.grpcStatus", "OK is not an abort; use a failing code");
                        AbortStatus::Grpc(14)
                    }
                    Ok(c) => AbortStatus::Grpc(c),
                    Err(e) => {
                        f.add("abort.grpcStatus", e);
                        AbortStatus::Grpc(14)
                    }
                },
                _ => {
                    f.add("abort", "give exactly one of httpStatus and grpcStatus");
                    AbortStatus::Http(503)
                }
            };
            FaultAbort {
                status,
                percent: percent(f, "abort.percent", a.percent),
            }
        });
        if delay.is_none() && abort.is_none() {
            f.add("", "fault needs delay or abort");
        }
        let mut headers = Vec::new();
        for (i, h) in self.headers.into_iter().enumerate() {
            if !is_token(&h.name) {
                f.add(
                    &format!("headers[{i}].name"),
                    format!("{:?} is not a header name", h.name),
                );
                continue;
            }
            if h.value.chars().any(char::is_control) {
                f.add(
                    &format!("headers[{i}].value"),
                    "control characters cannot be in a header value",
                );
                continue;
            }
            headers.push((h.name.to_ascii_lowercase(), h.value));
        }
        Fault {
            delay,
            abort,
            headers,
        }
    }
}

impl DeadlineSpec {
    pub(super) fn validate(self, f: &mut Fields<'_, '_>) -> Deadline {
        let d = Deadline::default();
        let margin = match self.margin {
            None => d.margin,
            Some(m) => match crate::duration::parse_duration(&m) {
                Ok(v) if v > Duration::from_secs(1) => {
                    f.add(
                        "margin",
                        format!("{m:?} is more than 1s: every hop would lose that much"),
                    );
                    d.margin
                }
                Ok(v) => v,
                Err(e) => {
                    f.add("margin", e.to_string());
                    d.margin
                }
            },
        };
        Deadline {
            propagate: self.propagate.unwrap_or(true),
            margin,
        }
    }
}
