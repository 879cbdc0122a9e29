//! What happened to one request, and how failures are classified.

use std::time::Duration;

/// Why a request failed. The names are the keys of `error_counts` in the
/// report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum ErrorKind {
    /// TCP connect refused (nothing listens there).
    ConnectRefused,
    /// TCP connect (or the HTTP/2 handshake) took longer than the timeout.
    ConnectTimeout,
    /// Any other connect failure (unreachable, no route, handshake error).
    ConnectError,
    /// Sent, but no complete response within the timeout.
    Timeout,
    /// The connection or stream was reset (RST, GOAWAY, RST_STREAM).
    Reset,
    /// The server closed the connection before the response was complete.
    ClosedMidResponse,
    /// The response was not valid HTTP / gRPC.
    Protocol,
    /// An HTTP status other than 2xx/3xx.
    HttpStatus,
    /// A gRPC status other than OK.
    GrpcStatus,
    /// Waited longer than the timeout for a free connection; never sent.
    ExpiredInQueue,
    Other,
}

impl ErrorKind {
    pub(crate) const COUNT: usize = Self::ALL.len();
    /// Every kind, in declaration order (so `ALL[k.index()] == k`).
    const ALL: [ErrorKind; 11] = {
        use ErrorKind::*;
        [
            ConnectRefused,
            ConnectTimeout,
            ConnectError,
            Timeout,
            Reset,
            ClosedMidResponse,
            Protocol,
            HttpStatus,
            GrpcStatus,
            ExpiredInQueue,
            Other,
        ]
    };

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub(crate) fn from_index(i: usize) -> ErrorKind {
        Self::ALL[i]
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::ConnectError => "connect_error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::ClosedMidResponse => "closed_mid_response",
            ErrorKind::Protocol => "protocol",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::GrpcStatus => "grpc_status",
            ErrorKind::ExpiredInQueue => "expired_in_queue",
            ErrorKind::Other => "other",
        }
    }
}

/// A failure with the message that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// Classifies a connect error.
    pub(crate) fn connect(e: &std::io::Error, addr: &str) -> Self {
        let kind = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ErrorKind::ConnectRefused,
            std::io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
            _ => ErrorKind::ConnectError,
        };
        Failure::new(kind, format!("connect to {addr}: {e}"))
    }

    /// Classifies an HTTP/2 error on a request's stream or connection.
    pub(crate) fn h2(e: &h2::Error) -> Self {
        let text = error_chain(e);
        let kind = if e.is_reset() || e.is_go_away() {
            ErrorKind::Reset
        } else if let Some(io) = e.get_io() {
            match io.kind() {
                std::io::ErrorKind::UnexpectedEof => ErrorKind::ClosedMidResponse,
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => ErrorKind::Reset,
                _ => ErrorKind::Other,
            }
        } else if e.is_library() {
            ErrorKind::Protocol
        } else {
            ErrorKind::Other
        };
        Failure::new(kind, text)
    }
}

/// The error and its sources, `: `-joined.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// One finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// HTTP status, when a response head arrived.
    pub(crate) status: Option<u16>,
    /// gRPC status code, when one arrived.
    pub(crate) grpc: Option<u8>,
    pub(crate) failure: Option<Failure>,
    /// From leaving to the end of the response; `None` when never sent.
    pub(crate) service: Option<Duration>,
}

impl Outcome {
    pub(crate) fn failed(failure: Failure, service: Option<Duration>) -> Self {
        Outcome {
            status: None,
            grpc: None,
            failure: Some(failure),
            service,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_index() {
        for i in 0..ErrorKind::COUNT {
            assert_eq!(ErrorKind::from_index(i).index(), i);
        }
        assert_eq!(ErrorKind::ExpiredInQueue.name(), "expired_in_queue");
    }

    #[test]
    fn connect_errors_are_classified() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            Failure::connect(&refused, "x:1").kind,
            ErrorKind::ConnectRefused
        );
        let other = std::io::Error::other("no route");
        let f = Failure::connect(&other, "x:1");
        assert_eq!(f.kind, ErrorKind::ConnectError);
        assert!(f.message.contains("x:1") && f.message.contains("no route"));
    }
}
