//! The vocabulary of failure codes and how each is written in config:
//! HTTP status ranges (`"5xx"`, `"429"`, `"500-504"`), gRPC status codes
//! (`"UNAVAILABLE"`, `"14"`), and business codes carried in a header or
//! trailer (`"5003"`, `"5000-5099"`, `"E_STOCK"`).

use std::fmt;
use std::str::FromStr;

/// A string from config that is not a valid code. Its message names what
/// was being parsed, the input and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeParseError {
    what: &'static str,
    input: String,
    reason: &'static str,
}

impl CodeParseError {
    fn new(what: &'static str, input: &str, reason: &'static str) -> Self {
        Self {
            what,
            input: input.to_owned(),
            reason,
        }
    }

    /// The string that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for CodeParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {:?}: {}", self.what, self.input, self.reason)
    }
}

impl std::error::Error for CodeParseError {}

/// An inclusive range of HTTP status codes within 100-599.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusRange {
    lo: u16,
    hi: u16,
}

const HTTP: &str = "HTTP status";
const HTTP_FORMS: &str = "expected a status (429), a class (5xx) or a range (500-504)";

impl StatusRange {
    /// `lo..=hi`; both within 100-599 and `lo <= hi`.
    pub fn new(lo: u16, hi: u16) -> Option<Self> {
        let valid = (100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi;
        valid.then_some(Self { lo, hi })
    }

    /// One status code.
    pub fn single(code: u16) -> Option<Self> {
        Self::new(code, code)
    }

    /// A whole class: `class(5)` is `5xx`.
    pub fn class(digit: u16) -> Option<Self> {
        Self::new(digit * 100, digit * 100 + 99)
    }

    pub fn contains(&self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }

    pub fn lo(&self) -> u16 {
        self.lo
    }

    pub fn hi(&self) -> u16 {
        self.hi
    }
}

impl FromStr for StatusRange {
    type Err = CodeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = |reason| CodeParseError::new(HTTP, s, reason);
        let lower = t.to_ascii_lowercase();
        if let Some(class) = lower.strip_suffix("xx") {
            let digit: u16 = class.parse().map_err(|_| err(HTTP_FORMS))?;
            return Self::class(digit).ok_or_else(|| err("class must be 1xx to 5xx"));
        }
        let status = |part: &str| -> Result<u16, CodeParseError> {
            let code: u16 = part.trim().parse().map_err(|_| err(HTTP_FORMS))?;
            if (100..=599).contains(&code) {
                Ok(code)
            } else {
                Err(err("status codes are 100 to 599"))
            }
        };
        match t.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (status(lo)?, status(hi)?);
                Self::new(lo, hi).ok_or_else(|| err("range starts above its end"))
            }
            None => Ok(Self::single(status(t)?).expect("checked range")),
        }
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo.is_multiple_of(100) && self.hi == self.lo + 99 {
            write!(f, "{}xx", self.lo / 100)
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A gRPC status code (0-16), parsed from its name or number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrpcCode(u8);

const GRPC_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl GrpcCode {
    pub const OK: Self = Self(0);
    pub const CANCELLED: Self = Self(1);
    pub const UNKNOWN: Self = Self(2);
    pub const INVALID_ARGUMENT: Self = Self(3);
    pub const DEADLINE_EXCEEDED: Self = Self(4);
    pub const NOT_FOUND: Self = Self(5);
    pub const ALREADY_EXISTS: Self = Self(6);
    pub const PERMISSION_DENIED: Self = Self(7);
    pub const RESOURCE_EXHAUSTED: Self = Self(8);
    pub const FAILED_PRECONDITION: Self = Self(9);
    pub const ABORTED: Self = Self(10);
    pub const OUT_OF_RANGE: Self = Self(11);
    pub const UNIMPLEMENTED: Self = Self(12);
    pub const INTERNAL: Self = Self(13);
    pub const UNAVAILABLE: Self = Self(14);
    pub const DATA_LOSS: Self = Self(15);
    pub const UNAUTHENTICATED: Self = Self(16);

    /// The code with this number, if it is one of the 17 defined codes.
    pub fn new(code: u8) -> Option<Self> {
        (usize::from(code) < GRPC_NAMES.len()).then_some(Self(code))
    }

    pub fn number(self) -> u8 {
        self.0
    }

    /// The canonical name, e.g. `"DEADLINE_EXCEEDED"`.
    pub fn name(self) -> &'static str {
        GRPC_NAMES[usize::from(self.0)]
    }

    /// Reads a `grpc-status` value as gRPC clients do: a number outside
    /// 0-16 or an unparsable value counts as `UNKNOWN`.
    pub fn from_wire(value: &str) -> Self {
        value
            .trim()
            .parse::<u8>()
            .ok()
            .and_then(Self::new)
            .unwrap_or(Self::UNKNOWN)
    }

    /// The status of a gRPC response given the `grpc-status` value from its
    /// trailers and from its headers (set only in a trailers-only response,
    /// where the status travels in the single HEADERS frame). Trailers win.
    pub fn from_response(headers: Option<&str>, trailers: Option<&str>) -> Option<Self> {
        trailers.or(headers).map(Self::from_wire)
    }
}

impl FromStr for GrpcCode {
    type Err = CodeParseError;

    /// Accepts the number (`"14"`) or the name in any case, with or without
    /// underscores (`"UNAVAILABLE"`, `"deadline_exceeded"`,
    /// `"DeadlineExceeded"`), and the spelling `"CANCELED"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u32>() {
            return u8::try_from(n)
                .ok()
                .and_then(Self::new)
                .ok_or_else(|| CodeParseError::new("gRPC status", s, "codes are 0 to 16"));
        }
        let key: String = t
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let key = if key == "CANCELED" { "CANCELLED" } else { &key };
        GRPC_NAMES
            .iter()
            .position(|name| name.replace('_', "") == key)
            .map(|i| Self(i as u8))
            .ok_or_else(|| {
                CodeParseError::new(
                    "gRPC status",
                    s,
                    "expected a code name (UNAVAILABLE) or number (14)",
                )
            })
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of a business-code list: an integer, an inclusive integer
/// range, or an exact string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CodeMatcher {
    Code(i64),
    Range(i64, i64),
    Text(String),
}

impl FromStr for CodeMatcher {
    type Err = CodeParseError;

    /// `"5003"` is a code, `"5000-5099"` a range, anything else (`"E_STOCK"`,
    /// `"ERR-7"`) an exact string. Surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() {
            return Err(CodeParseError::new("business code", s, "empty code"));
        }
        if let Ok(n) = t.parse::<i64>() {
            return Ok(Self::Code(n));
        }
        // Split after the first character so that "-5" stays a number.
        if let Some((at, _)) = t.char_indices().skip(1).find(|(_, c)| *c == '-')
            && let (Ok(lo), Ok(hi)) = (t[..at].trim().parse(), t[at + 1..].trim().parse())
        {
            return if lo <= hi {
                Ok(Self::Range(lo, hi))
            } else {
                Err(CodeParseError::new(
                    "business code",
                    s,
                    "range starts above its end",
                ))
            };
        }
        if t.chars().any(char::is_control) {
            return Err(CodeParseError::new(
                "business code",
                s,
                "control characters cannot appear in a header value",
            ));
        }
        Ok(Self::Text(t.to_owned()))
    }
}

/// Which response header (and trailer) carries the business code, and
/// which of its values mean failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRule {
    name: String,
    codes: Vec<CodeMatcher>,
}

impl HeaderRule {
    /// `name` must be a valid HTTP field name; it is stored lowercased, the
    /// form HTTP/2 uses and `http::HeaderName` holds.
    pub fn new(name: &str, codes: Vec<CodeMatcher>) -> Result<Self, CodeParseError> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            return Err(CodeParseError::new(
                "header name",
                name,
                "expected an HTTP field name such as x-biz-code",
            ));
        }
        if codes.is_empty() {
            return Err(CodeParseError::new(
                "header rule",
                name,
                "lists no failure codes",
            ));
        }
        Ok(Self {
            name: name.to_ascii_lowercase(),
            codes,
        })
    }

    /// Parses each of `codes` with [`CodeMatcher::from_str`].
    pub fn parse(name: &str, codes: &[&str]) -> Result<Self, CodeParseError> {
        let codes = codes.iter().map(|c| c.parse()).collect::<Result<_, _>>()?;
        Self::new(name, codes)
    }

    /// The header (and trailer) name to look up, lowercase.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn codes(&self) -> &[CodeMatcher] {
        &self.codes
    }

    /// Whether this header value is one of the failure codes. Numeric
    /// values compare as numbers (`"05003"` matches `5003`), others exactly.
    pub fn matches(&self, value: &str) -> bool {
        let v = value.trim();
        let n = v.parse::<i64>().ok();
        self.codes.iter().any(|c| match (c, n) {
            (CodeMatcher::Code(code), Some(n)) => n == *code,
            (CodeMatcher::Range(lo, hi), Some(n)) => (*lo..=*hi).contains(&n),
            (CodeMatcher::Text(text), _) => v == text,
            _ => false,
        })
    }
}
