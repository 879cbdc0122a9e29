//! Deadline propagation: read the caller's deadline from request headers,
//! combine it with the route's timeout, and work out what is left for each
//! upstream attempt, so that a call chain stops working on a request its
//! first caller has already given up on.
//!
//! # The headers
//!
//! All three carry the time *remaining* when the request was sent, relative
//! to its arrival (clocks are never compared across hosts):
//!
//! - [`GRPC_TIMEOUT`] (`grpc-timeout`): the gRPC wire format, 1 to 8 ASCII
//!   digits then a unit: `H` hours, `M` minutes, `S` seconds, `m` millis,
//!   `u` micros, `n` nanos. `0n` means already expired.
//! - [`WEFT_DEADLINE_MS`] (`x-weft-deadline-ms`): weft's own header for
//!   plain HTTP, whole milliseconds. `0` means already expired. The inbound
//!   sidecar writes it on the request to the app, so the app can copy it onto
//!   its own outbound calls (like a trace header).
//! - [`ENVOY_EXPECTED_RQ_TIMEOUT_MS`] (`x-envoy-expected-rq-timeout-ms`):
//!   what an Envoy in front expects the request to take, whole milliseconds.
//!   Envoy treats `0` as "no timeout" and sends `1` when time has run out,
//!   so here `0` means no deadline (not an error, not expired).
//!
//! The two millisecond headers are bounded by [`MAX_DEADLINE_MS`] (one
//! year): anything larger is a bug or an attack, not a deadline.
//!
//! # Precedence
//!
//! Every header present is parsed; the earliest deadline among the valid
//! ones wins ([`CallerDeadline::read`]), ties going to the header listed
//! first in [`DeadlineHeader::ALL`]. A malformed value never fails the
//! request and never panics: it is ignored and reported in
//! [`ReadDeadline::malformed`] so that the proxy can count and log it. The
//! proxy then enforces `min(route timeout, caller deadline)`
//! ([`Deadline::effective`]), the route winning ties.
//!
//! Leading and trailing spaces and tabs (HTTP's optional whitespace) are
//! trimmed before parsing; any other byte outside the grammar, including a
//! space inside the value or a sign, is an error.
//!
//! # Rounding
//!
//! Formatting always rounds *down*, so that a callee never believes it has
//! more time than it does: [`format_grpc_timeout`] uses the most precise unit
//! whose value fits in 8 digits (so it loses less than one of that unit) and
//! then the coarsest unit that still says exactly the same (`50m`, not
//! `50000000n`). grpc-go rounds *up* instead, and also writes `0n` for a
//! zero or negative timeout, which is what this module writes for zero too.
//!
//! # Why a margin
//!
//! What an attempt is told ([`Deadline::for_attempt`]) is the time left
//! minus a margin: the time for the request to reach the callee and for its
//! answer to come back. Without it the callee works until the very moment
//! the caller gives up, and its answer, however good, arrives too late.
//! When nothing is left after the margin the proxy fails fast (504 or gRPC
//! `DEADLINE_EXCEEDED`, `weft-error: deadline-exceeded`, see [`Expired`])
//! rather than send work that cannot finish. Because `now` is read on every
//! attempt, time spent in earlier attempts, backoff and hedge delays is
//! counted.
//!
//! A known gap: an app that copies `x-weft-deadline-ms` verbatim onto its
//! outbound calls does not subtract its own time before the call; the margin
//! covers part of it. gRPC apps do not have this gap, since their library
//! turns `grpc-timeout` into a local deadline.

use std::fmt;
use std::time::Duration;

/// The gRPC deadline header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";
/// weft's own remaining-milliseconds header for plain HTTP.
pub const WEFT_DEADLINE_MS: &str = "x-weft-deadline-ms";
/// The remaining-milliseconds header an Envoy router sets upstream.
pub const ENVOY_EXPECTED_RQ_TIMEOUT_MS: &str = "x-envoy-expected-rq-timeout-ms";

/// The largest value accepted in a millisecond header: one year.
pub const MAX_DEADLINE_MS: u64 = 365 * 24 * 3600 * 1000;

/// The most digits a `grpc-timeout` value may have.
pub const GRPC_TIMEOUT_MAX_DIGITS: usize = 8;

/// A margin that suits attempts inside one cluster: about a round trip
/// plus header processing on both sides.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(1);

/// How much of a bad value an error keeps (in characters).
pub const MAX_SHOWN_VALUE: usize = 32;

const GRPC_MAX_VALUE: u64 = 99_999_999;

/// `grpc-timeout` units, finest first, with their length in nanoseconds.
const GRPC_UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60_000_000_000),
    (b'H', 3_600_000_000_000),
];

/// One of the headers that carry a caller's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadlineHeader {
    GrpcTimeout,
    WeftDeadlineMs,
    EnvoyExpectedRqTimeoutMs,
}

impl DeadlineHeader {
    /// All of them, in tie-breaking order.
    pub const ALL: [DeadlineHeader; 3] = [
        DeadlineHeader::GrpcTimeout,
        DeadlineHeader::WeftDeadlineMs,
        DeadlineHeader::EnvoyExpectedRqTimeoutMs,
    ];

    /// The header name, lowercase (also a metrics label value).
    pub fn name(self) -> &'static str {
        match self {
            DeadlineHeader::GrpcTimeout => GRPC_TIMEOUT,
            DeadlineHeader::WeftDeadlineMs => WEFT_DEADLINE_MS,
            DeadlineHeader::EnvoyExpectedRqTimeoutMs => ENVOY_EXPECTED_RQ_TIMEOUT_MS,
        }
    }

    /// The header with this name, in any case.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))
    }

    /// Parses a value of this header into the time remaining. For the Envoy
    /// header, `0` parses as zero here; [`CallerDeadline::read`] is what
    /// treats it as "no deadline".
    pub fn parse(self, value: &[u8]) -> Result<Duration, DeadlineError> {
        match self {
            DeadlineHeader::GrpcTimeout => grpc_timeout(value),
            DeadlineHeader::WeftDeadlineMs | DeadlineHeader::EnvoyExpectedRqTimeoutMs => {
                millis(value)
            }
        }
        .map_err(|kind| DeadlineError::new(self, value, kind))
    }

    /// The value to write for `remaining`, rounded down. The Envoy header
    /// gets at least `1` (as Envoy itself writes), since `0` would mean no
    /// deadline to an Envoy.
    pub fn format(self, remaining: Duration) -> String {
        match self {
            DeadlineHeader::GrpcTimeout => format_grpc_timeout(remaining),
            DeadlineHeader::WeftDeadlineMs => format_deadline_ms(remaining),
            DeadlineHeader::EnvoyExpectedRqTimeoutMs => whole_millis(remaining).max(1).to_string(),
        }
    }
}

impl fmt::Display for DeadlineHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A deadline header whose value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {header} value {value:?}: {kind}")]
pub struct DeadlineError {
    pub header: DeadlineHeader,
    /// The value as received (lossily decoded, at most [`MAX_SHOWN_VALUE`]
    /// characters, then `…` if cut).
    pub value: String,
    pub kind: DeadlineErrorKind,
}

impl DeadlineError {
    fn new(header: DeadlineHeader, value: &[u8], kind: DeadlineErrorKind) -> Self {
        let lossy = String::from_utf8_lossy(value);
        let mut shown: String = lossy.chars().take(MAX_SHOWN_VALUE).collect();
        if lossy.chars().nth(MAX_SHOWN_VALUE).is_some() {
            shown.push('…');
        }
        Self {
            header,
            value: shown,
            kind,
        }
    }
}

/// What is wrong with a deadline header's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeadlineErrorKind {
    #[error("the value is empty")]
    Empty,
    #[error("no digits before the unit")]
    NoDigits,
    #[error("no unit after the digits (expected one of H, M, S, m, u, n)")]
    MissingUnit,
    #[error(
        "unknown unit '{}' (expected one of H, M, S, m, u, n; case matters)",
        .0.escape_ascii()
    )]
    UnknownUnit(u8),
    #[error("a sign is not allowed")]
    Sign,
    #[error("unexpected '{}' at byte {at}", found.escape_ascii())]
    InvalidCharacter { at: usize, found: u8 },
    #[error("{digits} digits, at most {GRPC_TIMEOUT_MAX_DIGITS} are allowed")]
    TooManyDigits { digits: usize },
    #[error("above the limit of {MAX_DEADLINE_MS} ms (one year)")]
    OutOfRange,
}

/// Parses a `grpc-timeout` value (see the module docs for the grammar).
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, DeadlineError> {
    DeadlineHeader::GrpcTimeout.parse(value.as_bytes())
}

/// Parses an `x-weft-deadline-ms` value: whole milliseconds, at most
/// [`MAX_DEADLINE_MS`]. Use [`DeadlineHeader::parse`] for the Envoy header.
pub fn parse_deadline_ms(value: &str) -> Result<Duration, DeadlineError> {
    DeadlineHeader::WeftDeadlineMs.parse(value.as_bytes())
}

/// Formats `remaining` as a `grpc-timeout` value, rounded down: the most
/// precise unit that fits in 8 digits, written in the coarsest unit that
/// says exactly the same. Zero is `0n`; beyond 99,999,999 hours it is
/// `99999999H`.
pub fn format_grpc_timeout(remaining: Duration) -> String {
    let nanos = remaining.as_nanos();
    if nanos == 0 {
        return "0n".to_owned();
    }
    let Some(finest) = GRPC_UNITS
        .iter()
        .position(|&(_, len)| nanos / u128::from(len) <= u128::from(GRPC_MAX_VALUE))
    else {
        return format!("{GRPC_MAX_VALUE}H");
    };
    let len = u128::from(GRPC_UNITS[finest].1);
    let kept = nanos / len * len;
    let (unit, len) = GRPC_UNITS[finest..]
        .iter()
        .rev()
        .find(|&&(_, len)| kept.is_multiple_of(u128::from(len)))
        .copied()
        .unwrap_or(GRPC_UNITS[finest]);
    format!("{}{}", kept / u128::from(len), char::from(unit))
}

/// Formats `remaining` as an `x-weft-deadline-ms` value: whole
/// milliseconds, rounded down (under 1 ms is `0`: expired for the callee),
/// at most [`MAX_DEADLINE_MS`].
pub fn format_deadline_ms(remaining: Duration) -> String {
    whole_millis(remaining).to_string()
}

fn whole_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_DEADLINE_MS)
}

/// Strips HTTP optional whitespace (spaces and tabs) at both ends.
fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// Checks that `digits` (starting at byte `offset` of the trimmed value)
/// are all ASCII digits.
fn check_digits(digits: &[u8], offset: usize) -> Result<(), DeadlineErrorKind> {
    match digits.iter().position(|b| !b.is_ascii_digit()) {
        None => Ok(()),
        Some(i) if matches!(digits[i], b'+' | b'-') => Err(DeadlineErrorKind::Sign),
        Some(i) => Err(DeadlineErrorKind::InvalidCharacter {
            at: offset + i,
            found: digits[i],
        }),
    }
}

fn grpc_timeout(value: &[u8]) -> Result<Duration, DeadlineErrorKind> {
    let value = trim_ows(value);
    let Some((&unit, digits)) = value.split_last() else {
        return Err(DeadlineErrorKind::Empty);
    };
    if unit.is_ascii_digit() {
        check_digits(digits, 0)?;
        return Err(DeadlineErrorKind::MissingUnit);
    }
    if digits.is_empty() {
        return Err(if matches!(unit, b'+' | b'-') {
            DeadlineErrorKind::Sign
        } else {
            DeadlineErrorKind::NoDigits
        });
    }
    check_digits(digits, 0)?;
    let Some(&(_, unit_nanos)) = GRPC_UNITS.iter().find(|&&(u, _)| u == unit) else {
        return Err(DeadlineErrorKind::UnknownUnit(unit));
    };
    if digits.len() > GRPC_TIMEOUT_MAX_DIGITS {
        return Err(DeadlineErrorKind::TooManyDigits {
            digits: digits.len(),
        });
    }
    // At most 8 digits: 99,999,999 hours is 3.6e20 ns, which overflows u64
    // nanoseconds but not Duration; build it from seconds and nanoseconds.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let total = u128::from(n) * u128::from(unit_nanos);
    Ok(Duration::new(
        (total / 1_000_000_000) as u64,
        (total % 1_000_000_000) as u32,
    ))
}

fn millis(value: &[u8]) -> Result<Duration, DeadlineErrorKind> {
    let value = trim_ows(value);
    if value.is_empty() {
        return Err(DeadlineErrorKind::Empty);
    }
    check_digits(value, 0)?;
    let mut ms = 0u64;
    for d in value {
        // Stops as soon as the bound is passed, so any length is safe.
        ms = ms * 10 + u64::from(d - b'0');
        if ms > MAX_DEADLINE_MS {
            return Err(DeadlineErrorKind::OutOfRange);
        }
    }
    Ok(Duration::from_millis(ms))
}

/// The deadline a caller sent: the time remaining when the request arrived,
/// and which header said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallerDeadline {
    pub remaining: Duration,
    pub source: DeadlineHeader,
}

/// What [`CallerDeadline::read`] found in a request's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadDeadline {
    /// The earliest valid deadline, if any header gave one.
    pub deadline: Option<CallerDeadline>,
    /// Values that were ignored, for the proxy to count and log.
    pub malformed: Vec<DeadlineError>,
}

impl ReadDeadline {
    fn offer(&mut self, header: DeadlineHeader, value: &[u8]) {
        let remaining = match header.parse(value) {
            Ok(d) => d,
            Err(e) => {
                self.malformed.push(e);
                return;
            }
        };
        if header == DeadlineHeader::EnvoyExpectedRqTimeoutMs && remaining.is_zero() {
            // Envoy's "no timeout".
            return;
        }
        let offered = CallerDeadline {
            remaining,
            source: header,
        };
        let earlier = |d: &CallerDeadline| (d.remaining, d.source) < (remaining, header);
        if !self.deadline.as_ref().is_some_and(earlier) {
            self.deadline = Some(offered);
        }
    }
}

impl CallerDeadline {
    /// Reads the deadline headers through `get`, which is given each
    /// lowercase header name and returns its (first) value: with an
    /// `http::HeaderMap`, `CallerDeadline::read(|name| headers.get(name))`.
    pub fn read<V: AsRef<[u8]>>(mut get: impl FnMut(&'static str) -> Option<V>) -> ReadDeadline {
        let mut read = ReadDeadline::default();
        for header in DeadlineHeader::ALL {
            if let Some(value) = get(header.name()) {
                read.offer(header, value.as_ref());
            }
        }
        read
    }

    /// Reads the deadline headers out of `(name, value)` pairs, names in any
    /// case. Every occurrence counts: a repeated header's earliest valid
    /// value wins, and each malformed one is reported.
    pub fn from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> ReadDeadline
    where
        N: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let mut read = ReadDeadline::default();
        for (name, value) in pairs {
            if let Some(header) = DeadlineHeader::from_name(name.as_ref()) {
                read.offer(header, value.as_ref());
            }
        }
        read
    }
}

/// Which limit a [`Deadline`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadlineSource {
    /// The route's own timeout.
    Route,
    /// The caller's deadline, from this header.
    Caller(DeadlineHeader),
}

impl DeadlineSource {
    /// A metrics label value: `route` or the header name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadlineSource::Route => "route",
            DeadlineSource::Caller(h) => h.name(),
        }
    }
}

impl fmt::Display for DeadlineSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadlineSource::Route => f.write_str("route timeout"),
            DeadlineSource::Caller(h) => write!(f, "caller's {h}"),
        }
    }
}

/// The deadline a proxy enforces on one request: a point on the proxy's
/// clock (the same epoch as every `now` passed in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    start: Duration,
    budget: Duration,
    source: DeadlineSource,
}

impl Deadline {
    /// A deadline `budget` after `start`.
    pub fn new(start: Duration, budget: Duration, source: DeadlineSource) -> Self {
        Self {
            start,
            budget,
            source,
        }
    }

    /// `min(route timeout, caller deadline)` for a request that arrived at
    /// `start`, the route winning ties; `None` when neither is set.
    pub fn effective(
        start: Duration,
        route_timeout: Option<Duration>,
        caller: Option<CallerDeadline>,
    ) -> Option<Self> {
        let route = route_timeout.map(|t| (t, DeadlineSource::Route));
        let caller = caller.map(|c| (c.remaining, DeadlineSource::Caller(c.source)));
        let (budget, source) = match (route, caller) {
            (Some(r), Some(c)) => {
                if c.0 < r.0 {
                    c
                } else {
                    r
                }
            }
            (r, c) => r.or(c)?,
        };
        Some(Self::new(start, budget, source))
    }

    /// When the request arrived.
    pub fn start(&self) -> Duration {
        self.start
    }

    /// The whole time the request was given.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    pub fn source(&self) -> DeadlineSource {
        self.source
    }

    /// The deadline itself (saturating at `Duration::MAX`).
    pub fn at(&self) -> Duration {
        self.start.saturating_add(self.budget)
    }

    /// The time left at `now`, or `None` once the deadline has passed.
    pub fn remaining(&self, now: Duration) -> Option<Duration> {
        Some(self.at().saturating_sub(now)).filter(|left| !left.is_zero())
    }

    pub fn expired(&self, now: Duration) -> bool {
        now >= self.at()
    }

    /// The time to write on an upstream attempt made at `now` (or on the
    /// request handed to the app): what is left minus `margin`. Fails when
    /// that leaves nothing, in which case the attempt must not be sent.
    /// Cut it to the attempt's own timeout, if shorter, before writing it.
    pub fn for_attempt(&self, now: Duration, margin: Duration) -> Result<Duration, Expired> {
        let left = self.at().saturating_sub(now);
        if left <= margin {
            return Err(Expired {
                limit: self.source,
                left,
                margin,
            });
        }
        Ok(left - margin)
    }
}

/// Nothing is left of the deadline for another attempt: the proxy answers
/// itself, fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline exceeded: {left:?} left of the {limit}, margin {margin:?}")]
pub struct Expired {
    /// Whose limit ran out (`thiserror` reserves the name `source`).
    pub limit: DeadlineSource,
    /// What was left before the margin (zero once the deadline passed).
    pub left: Duration,
    pub margin: Duration,
}

impl Expired {
    /// The `weft-error` header's value.
    pub const CODE: &'static str = "deadline-exceeded";
    /// The HTTP status for a plain HTTP request (Gateway Timeout).
    pub const HTTP_STATUS: u16 = 504;
    /// The `grpc-status` for a gRPC request (`DEADLINE_EXCEEDED`).
    pub const GRPC_STATUS: u32 = 4;
}

#[cfg(test)]
mod tests;
