//! Classification of one response against the user's failure codes.

use std::fmt;
use std::time::Duration;

use super::codes::{GrpcCode, HeaderRule};
use super::config::{ConfigError, FailureCodes};

/// How an attempt to one endpoint ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head arrived with this HTTP status (for gRPC usually 200).
    Response { status: u16 },
    /// No connection to the endpoint could be made.
    ConnectFailed,
    /// The stream or connection was reset (or closed) before the response
    /// ended.
    Reset,
    /// The attempt's timeout fired first.
    TimedOut,
}

/// What the proxy saw of one attempt, borrowed from the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation<'a> {
    pub outcome: Outcome,
    /// The gRPC status: see [`GrpcCode::from_response`] for reading it from
    /// trailers or from a trailers-only response. A gRPC response that ends
    /// without any `grpc-status` should be passed as `INTERNAL`, as gRPC
    /// clients report it.
    pub grpc_status: Option<GrpcCode>,
    /// The value of the business-code header ([`Classifier::header_name`])
    /// in the response headers, if present.
    pub header_code: Option<&'a str>,
    /// The same name's value in the trailers, if present.
    pub trailer_code: Option<&'a str>,
    /// From sending the request to the end of the response (or failure).
    pub latency: Duration,
}

impl<'a> Observation<'a> {
    /// A response with this HTTP status and nothing else to look at.
    pub fn response(status: u16, latency: Duration) -> Self {
        Self::of(Outcome::Response { status }, latency)
    }

    /// An attempt that ended in `outcome`.
    pub fn of(outcome: Outcome, latency: Duration) -> Self {
        Self {
            outcome,
            grpc_status: None,
            header_code: None,
            trailer_code: None,
            latency,
        }
    }

    pub fn with_grpc_status(mut self, code: GrpcCode) -> Self {
        self.grpc_status = Some(code);
        self
    }

    pub fn with_header_code(mut self, value: &'a str) -> Self {
        self.header_code = Some(value);
        self
    }

    pub fn with_trailer_code(mut self, value: &'a str) -> Self {
        self.trailer_code = Some(value);
        self
    }
}

/// Where a business code was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodePlace {
    Header,
    Trailer,
}

/// Which rule judged an attempt a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    ConnectFailure,
    Reset,
    Timeout,
    HttpStatus(u16),
    GrpcStatus(GrpcCode),
    BusinessCode(CodePlace),
    /// Slower than `latency_above`.
    Latency,
}

impl FailureReason {
    /// A low-cardinality label for metrics: `connect_failure`, `reset`,
    /// `timeout`, `http_status`, `grpc_status`, `business_code`, `latency`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::ConnectFailure => "connect_failure",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::HttpStatus(_) => "http_status",
            Self::GrpcStatus(_) => "grpc_status",
            Self::BusinessCode(_) => "business_code",
            Self::Latency => "latency",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HttpStatus(s) => write!(f, "HTTP status {s}"),
            Self::GrpcStatus(c) => write!(f, "gRPC status {c}"),
            Self::BusinessCode(CodePlace::Header) => f.write_str("business code in header"),
            Self::BusinessCode(CodePlace::Trailer) => f.write_str("business code in trailer"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The judgement of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure(FailureReason),
    /// Says nothing about the endpoint: a connect failure, reset or timeout
    /// while that rule is off. Recording it changes nothing (counting it
    /// as a success would hide a broken endpoint).
    Ignored,
}

impl Verdict {
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failure(_))
    }
}

/// [`FailureCodes`] compiled for the request path: a bitmap for HTTP
/// statuses and one for gRPC codes, so `classify` does no allocation and no
/// search beyond the business-code list.
#[derive(Debug, Clone)]
pub struct Classifier {
    http: [u64; 10],
    grpc: u32,
    header: Option<HeaderRule>,
    connect_failure: bool,
    reset: bool,
    timeout: bool,
    latency_above: Option<Duration>,
}

impl Classifier {
    pub fn new(codes: &FailureCodes) -> Result<Self, ConfigError> {
        codes.validate()?;
        let mut http = [0u64; 10];
        for range in &codes.http {
            for status in range.lo()..=range.hi() {
                http[usize::from(status / 64)] |= 1 << (status % 64);
            }
        }
        let grpc = codes.grpc.iter().fold(0, |m, c| m | 1 << c.number());
        Ok(Self {
            http,
            grpc,
            header: codes.header.clone(),
            connect_failure: codes.connect_failure,
            reset: codes.reset,
            timeout: codes.timeout,
            latency_above: codes.latency_above,
        })
    }

    /// The header (and trailer) whose value the proxy must put in
    /// [`Observation::header_code`] / [`Observation::trailer_code`];
    /// `None` when no business code is configured.
    pub fn header_name(&self) -> Option<&str> {
        self.header.as_ref().map(HeaderRule::name)
    }

    /// Judges one attempt. Rules are tried in a fixed order and the first
    /// match names the reason: connection-level outcomes, HTTP status, gRPC
    /// status, business code in headers then trailers, latency.
    pub fn classify(&self, obs: &Observation<'_>) -> Verdict {
        let (enabled, reason) = match obs.outcome {
            Outcome::ConnectFailed => (self.connect_failure, FailureReason::ConnectFailure),
            Outcome::Reset => (self.reset, FailureReason::Reset),
            Outcome::TimedOut => (self.timeout, FailureReason::Timeout),
            Outcome::Response { status } => {
                return self.classify_response(status, obs);
            }
        };
        if enabled {
            Verdict::Failure(reason)
        } else {
            Verdict::Ignored
        }
    }

    fn classify_response(&self, status: u16, obs: &Observation<'_>) -> Verdict {
        let word = self
            .http
            .get(usize::from(status / 64))
            .copied()
            .unwrap_or(0);
        if word & (1 << (status % 64)) != 0 {
            return Verdict::Failure(FailureReason::HttpStatus(status));
        }
        if let Some(code) = obs.grpc_status
            && self.grpc & (1 << code.number()) != 0
        {
            return Verdict::Failure(FailureReason::GrpcStatus(code));
        }
        if let Some(rule) = &self.header {
            if obs.header_code.is_some_and(|v| rule.matches(v)) {
                return Verdict::Failure(FailureReason::BusinessCode(CodePlace::Header));
            }
            if obs.trailer_code.is_some_and(|v| rule.matches(v)) {
                return Verdict::Failure(FailureReason::BusinessCode(CodePlace::Trailer));
            }
        }
        if self.latency_above.is_some_and(|t| obs.latency > t) {
            return Verdict::Failure(FailureReason::Latency);
        }
        Verdict::Success
    }
}
