//! What to send, how fast and for how long: everything `weft load` takes
//! from its flags, checked before anything is sent.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

/// Where requests go: a plaintext `http://HOST:PORT/PATH?QUERY` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given (normalised by [`Uri`]).
    pub uri: Uri,
    /// `HOST:PORT` to connect to (the port defaulted to 80).
    pub connect: String,
    /// `Host` / `:authority`.
    pub authority: String,
    /// Path and query sent on the request line (`/` when the URL has none).
    pub path_and_query: String,
}

/// Why a target URL cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("target `{0}` is not a URL: {1}")]
    Invalid(String, String),
    #[error(
        "target `{0}`: https is not supported yet; weft load speaks plaintext HTTP/1.1, h2c and gRPC (use http://)"
    )]
    Tls(String),
    #[error("target `{0}`: scheme `{1}` is not http")]
    Scheme(String, String),
    #[error("target `{0}` has no host")]
    NoHost(String),
}

impl FromStr for Target {
    type Err = TargetError;

    /// Accepts `http://host:port/path`, and `host:port[/path]` as shorthand.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let full = if s.contains("://") {
            s.to_owned()
        } else {
            format!("http://{s}")
        };
        let uri: Uri = full.parse().map_err(|e: http::uri::InvalidUri| {
            TargetError::Invalid(s.to_owned(), e.to_string())
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(TargetError::Tls(s.to_owned())),
            Some(other) => return Err(TargetError::Scheme(s.to_owned(), other.to_owned())),
            None => return Err(TargetError::Invalid(s.to_owned(), "no scheme".into())),
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| TargetError::NoHost(s.to_owned()))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        let connect = format!("{host}:{port}");
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        Ok(Target {
            authority: authority.as_str().to_owned(),
            connect,
            path_and_query,
            uri,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.uri)
    }
}

/// Which protocol each connection speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive: one request at a time per connection.
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (h2c): many streams per
    /// connection.
    Http2,
    /// gRPC unary calls over h2c; `method` is `package.Service/Method`.
    Grpc { method: String },
}

impl Protocol {
    /// `http1`, `http2` or `grpc`, as in the report.
    pub fn name(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Grpc { .. } => "grpc",
        }
    }
}

/// The offered load over time.
#[derive(Debug, Clone, PartialEq)]
pub enum RatePlan {
    /// Closed loop, as fast as the server answers: every connection sends
    /// its next request (h2: keeps `streams` in flight) as soon as one ends.
    /// For throughput ceilings; latencies are service times.
    Max,
    /// Constant rates in requests/s, each held for the run's duration
    /// (`1000` or `1000,2000,4000`).
    Steps(Vec<f64>),
    /// A linear ramp from one rate to another over the run's duration
    /// (`1000..5000`).
    Ramp { from: f64, to: f64 },
}

/// Why a `--rate` value is not a [`RatePlan`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateError {
    #[error("rate `{0}` is not a number of requests per second")]
    NotANumber(String),
    #[error(
        "rate `{0}` must be greater than 0 requests/s (use `max` for a closed-loop run as fast as the server answers)"
    )]
    NotPositive(String),
    #[error("rate `{0}` is above the limit of 10000000 requests/s")]
    TooHigh(String),
    #[error(
        "rate is empty: give requests/s (`1000`), steps (`1000,2000`), a ramp (`100..1000`) or `max`"
    )]
    Empty,
}

fn one_rate(s: &str) -> Result<f64, RateError> {
    let s = s.trim();
    let r: f64 = s.parse().map_err(|_| RateError::NotANumber(s.to_owned()))?;
    if !r.is_finite() {
        return Err(RateError::NotANumber(s.to_owned()));
    }
    if r <= 0.0 {
        return Err(RateError::NotPositive(s.to_owned()));
    }
    if r > 10_000_000.0 {
        return Err(RateError::TooHigh(s.to_owned()));
    }
    Ok(r)
}

impl FromStr for RatePlan {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(RateError::Empty);
        }
        if s.eq_ignore_ascii_case("max") {
            return Ok(RatePlan::Max);
        }
        if let Some((a, b)) = s.split_once("..") {
            return Ok(RatePlan::Ramp {
                from: one_rate(a)?,
                to: one_rate(b)?,
            });
        }
        let steps = s.split(',').map(one_rate).collect::<Result<Vec<_>, _>>()?;
        Ok(RatePlan::Steps(steps))
    }
}

impl fmt::Display for RatePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RatePlan::Max => f.write_str("max"),
            RatePlan::Steps(v) => {
                let parts: Vec<String> = v.iter().map(|r| crate::report::fmt_rate(*r)).collect();
                f.write_str(&parts.join(","))
            }
            RatePlan::Ramp { from, to } => write!(
                f,
                "{}..{}",
                crate::report::fmt_rate(*from),
                crate::report::fmt_rate(*to)
            ),
        }
    }
}

/// Where the live progress line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing.
    Off,
    /// To stderr: redrawn in place on a terminal, a line every 5 s otherwise.
    Stderr,
}

/// A complete description of one run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: Target,
    pub protocol: Protocol,
    /// HTTP method (gRPC always POSTs).
    pub method: Method,
    /// Extra request headers (`--header`), sent on every request.
    pub headers: HeaderMap,
    /// Request body; for gRPC the serialized protobuf message (unframed).
    pub body: Bytes,
    pub rate: RatePlan,
    /// How long each rate step runs (the whole ramp; the whole `max` run).
    pub duration: Duration,
    /// Load at the first rate before measuring; its results are discarded.
    pub warmup: Duration,
    /// TCP connections opened to the target.
    pub connections: usize,
    /// HTTP/2 and gRPC: requests in flight per connection at most (for
    /// `max`, exactly this many are kept in flight).
    pub streams: usize,
    /// A request not answered within this (from when it left) fails as
    /// `timeout`; one that waited longer than this for a free connection
    /// fails as `expired_in_queue` without being sent.
    pub timeout: Duration,
    /// Runtime worker threads (the pacer has its own thread besides).
    pub threads: usize,
    pub progress: ProgressMode,
    /// Live counters for an admin port (`weft load --admin`).
    pub live: Option<std::sync::Arc<crate::progress::Live>>,
}

/// Why a [`LoadSpec`] cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("--duration must be greater than 0")]
    ZeroDuration,
    #[error("--connections must be at least 1")]
    ZeroConnections,
    #[error("--streams must be at least 1")]
    ZeroStreams,
    #[error("--timeout must be greater than 0")]
    ZeroTimeout,
    #[error("--threads must be at least 1")]
    ZeroThreads,
}

impl LoadSpec {
    /// A spec with the defaults of `weft load`: HTTP/1.1 GET, 1000 req/s for
    /// 10 s after 1 s of warmup, 8 connections, 10 s timeout.
    pub fn new(target: Target) -> Self {
        LoadSpec {
            target,
            protocol: Protocol::Http1,
            method: Method::GET,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            rate: RatePlan::Steps(vec![1000.0]),
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            connections: 8,
            streams: 100,
            timeout: Duration::from_secs(10),
            threads: default_threads(),
            progress: ProgressMode::Off,
            live: None,
        }
    }

    /// Checks what the types cannot.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.duration.is_zero() {
            return Err(SpecError::ZeroDuration);
        }
        if self.connections == 0 {
            return Err(SpecError::ZeroConnections);
        }
        if self.streams == 0 {
            return Err(SpecError::ZeroStreams);
        }
        if self.timeout.is_zero() {
            return Err(SpecError::ZeroTimeout);
        }
        if self.threads == 0 {
            return Err(SpecError::ZeroThreads);
        }
        Ok(())
    }
}

/// One runtime thread per core, at most 4 (a load generator that needs more
/// than that on this class of machine is measuring itself).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

/// Parses a `Name: value` header flag.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    // `:authority: x` is HTTP/2's name for `Host: x`.
    let (name, value) = match s.strip_prefix(":authority:") {
        Some(v) => ("host", v),
        None => s
            .split_once(':')
            .ok_or_else(|| format!("header `{s}` is not `Name: value`"))?,
    };
    if name.trim().is_empty() {
        return Err(format!(
            "header `{s}`: no name before the `:` (pseudo-headers other than `:authority` cannot be set)"
        ));
    }
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("header `{s}`: `{}` is not a valid header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("header `{s}`: the value is not a valid header value"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_defaults_and_name_what_is_wrong() {
        let t: Target = "http://127.0.0.1:8080/a?b=1".parse().unwrap();
        assert_eq!(t.connect, "127.0.0.1:8080");
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path_and_query, "/a?b=1");
        let t: Target = "localhost:9000".parse().unwrap();
        assert_eq!(t.connect, "localhost:9000");
        assert_eq!(t.path_and_query, "/");
        let t: Target = "http://example.com".parse().unwrap();
        assert_eq!(t.connect, "example.com:80");
        assert!(matches!(
            "https://x:1".parse::<Target>(),
            Err(TargetError::Tls(_))
        ));
        assert!(matches!(
            "ftp://x:1".parse::<Target>(),
            Err(TargetError::Scheme(..))
        ));
        assert!("http://:80/".parse::<Target>().is_err());
        assert!(matches!(
            "not a url".parse::<Target>(),
            Err(TargetError::Invalid(..))
        ));
    }

    #[test]
    fn rates_parse_as_single_steps_ramps_and_max() {
        assert_eq!("1000".parse(), Ok(RatePlan::Steps(vec![1000.0])));
        assert_eq!(
            "1000,2000, 4000".parse(),
            Ok(RatePlan::Steps(vec![1000.0, 2000.0, 4000.0]))
        );
        assert_eq!(
            "100..1000".parse(),
            Ok(RatePlan::Ramp {
                from: 100.0,
                to: 1000.0
            })
        );
        assert_eq!("MAX".parse(), Ok(RatePlan::Max));
        assert_eq!("0.5".parse(), Ok(RatePlan::Steps(vec![0.5])));
        assert_eq!(
            "0".parse::<RatePlan>(),
            Err(RateError::NotPositive("0".into()))
        );
        assert_eq!(
            "-5".parse::<RatePlan>(),
            Err(RateError::NotPositive("-5".into()))
        );
        assert_eq!(
            "1000,0".parse::<RatePlan>(),
            Err(RateError::NotPositive("0".into()))
        );
        assert_eq!(
            "fast".parse::<RatePlan>(),
            Err(RateError::NotANumber("fast".into()))
        );
        assert_eq!(
            "inf".parse::<RatePlan>(),
            Err(RateError::NotANumber("inf".into()))
        );
        assert_eq!("".parse::<RatePlan>(), Err(RateError::Empty));
        assert_eq!(
            "1e9".parse::<RatePlan>(),
            Err(RateError::TooHigh("1e9".into()))
        );
        let e = "0".parse::<RatePlan>().unwrap_err().to_string();
        assert!(e.contains("greater than 0") && e.contains("max"), "{e}");
    }

    #[test]
    fn headers_parse_and_bad_ones_are_named() {
        let (n, v) = parse_header("X-Test:  a b ").unwrap();
        assert_eq!(n.as_str(), "x-test");
        assert_eq!(v, "a b");
        assert!(parse_header("novalue").unwrap_err().contains("novalue"));
        assert!(
            parse_header("bad name: x")
                .unwrap_err()
                .contains("bad name")
        );
    }
}
