//! What can go wrong on the request path, who is to blame, and what the
//! downstream client sees: a status code plus a `weft-error` header naming the
//! cause.

use http::{HeaderValue, Response, StatusCode};
use weft_policy::admission::Abort;

use crate::body::ProxyBody;

/// The header that names why the proxy (not the upstream) answered.
pub const WEFT_ERROR: &str = "weft-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No Service matches the request's Host/:authority, or no route rule matches.
    #[error("no route: {0}")]
    NoRoute(String),
    /// The chosen Service has no endpoint that can take traffic.
    #[error("service {0} has no endpoints")]
    NoEndpoints(String),
    /// The TCP connection to the endpoint failed (refused, unreachable, timed out).
    #[error("connect to {endpoint} failed: {reason}")]
    ConnectFailed { endpoint: String, reason: String },
    /// The route's request timeout elapsed before the upstream answered.
    #[error("upstream {endpoint} did not answer within {timeout_ms} ms")]
    Timeout { endpoint: String, timeout_ms: u64 },
    /// The upstream closed or broke the connection, or sent an invalid response.
    #[error("upstream {endpoint} failed: {reason}")]
    Upstream { endpoint: String, reason: String },
    /// No config has arrived yet (`--xds`, before the first update).
    #[error("no config from the control plane yet")]
    NotConfigured,
    /// The caller's deadline (or the route timeout) leaves no time for
    /// another attempt: answered at once instead of sending doomed work.
    #[error("deadline exceeded (budget {budget_ms} ms)")]
    DeadlineExceeded { budget_ms: u64 },
    /// The route's drop ratio picked this request (issue 6).
    #[error("dropped by the route's drop ratio")]
    Dropped,
    /// The calling Service is denied on this route.
    #[error("requests from {0} are denied on this route")]
    Denied(String),
    /// The route's local rate limit refused the request; the headers say
    /// when to come back.
    #[error("rate limited")]
    RateLimited(Vec<(&'static str, String)>),
    /// An injected fault (chaos experiment) aborted the request.
    #[error("aborted by an injected fault")]
    FaultAbort(weft_policy::admission::Abort),
    /// The downstream request cannot be forwarded as it is.
    #[error("bad request: {0}")]
    BadRequest(String),
}

impl ProxyError {
    /// The status the downstream client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints(_)
            | ProxyError::ConnectFailed { .. }
            | ProxyError::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout { .. } | ProxyError::DeadlineExceeded { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Dropped => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Denied(_) => StatusCode::FORBIDDEN,
            ProxyError::FaultAbort(Abort::Http(s)) => {
                StatusCode::from_u16(*s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            ProxyError::FaultAbort(Abort::Grpc(_)) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The value of the `weft-error` header: a stable, short cause name.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::NoEndpoints(_) => "no-endpoints",
            ProxyError::ConnectFailed { .. } => "connect-failed",
            ProxyError::Timeout { .. } => "request-timeout",
            ProxyError::Upstream { .. } => "upstream-reset",
            ProxyError::NotConfigured => "no-config",
            ProxyError::DeadlineExceeded { .. } => "deadline-exceeded",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::Dropped => "dropped",
            ProxyError::RateLimited(_) => "rate-limited",
            ProxyError::Denied(_) => "denied",
            ProxyError::FaultAbort(_) => "fault-injected",
        }
    }

    /// Whether a retry on another endpoint could succeed (the request did not
    /// reach an application).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed { .. }
                | ProxyError::NoEndpoints(_)
                | ProxyError::NotConfigured
        )
    }

    /// The response the downstream client sees. gRPC clients get the gRPC
    /// status in a trailers-only response too, so they see UNAVAILABLE etc.
    /// instead of a bare HTTP error.
    pub fn to_response(&self, grpc: bool) -> Response<ProxyBody> {
        let mut resp = if grpc {
            // Trailers-only gRPC response: HTTP 200 with grpc-status in the headers.
            Response::new(ProxyBody::empty())
        } else {
            let mut r = Response::new(ProxyBody::full(format!("{self}\n")));
            *r.status_mut() = self.status();
            r
        };
        let h = resp.headers_mut();
        if let ProxyError::RateLimited(limits) = self {
            for (name, value) in limits {
                if let Ok(v) = HeaderValue::from_str(value) {
                    h.insert(*name, v);
                }
            }
        }
        h.insert(WEFT_ERROR, HeaderValue::from_static(self.code()));
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        if grpc {
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(self.grpc_status()));
            if let Ok(v) = HeaderValue::from_str(&self.to_string().replace(['\r', '\n'], " ")) {
                h.insert("grpc-message", v);
            }
        }
        resp
    }

    fn grpc_status(&self) -> u32 {
        match self {
            ProxyError::NoRoute(_) => 12, // UNIMPLEMENTED
            ProxyError::Timeout { .. } | ProxyError::DeadlineExceeded { .. } => 4,
            ProxyError::BadRequest(_) => 13, // INTERNAL
            ProxyError::Denied(_) => 7,      // PERMISSION_DENIED
            ProxyError::RateLimited(_) => 8, // RESOURCE_EXHAUSTED
            ProxyError::FaultAbort(Abort::Grpc(c)) => *c,
            ProxyError::FaultAbort(Abort::Http(s)) => grpc_from_http(*s),
            _ => 14, // UNAVAILABLE
        }
    }
}

/// The gRPC status a gRPC client reports for an HTTP status without one
/// (gRPC's doc/http-grpc-status-mapping.md).
pub fn grpc_from_http(status: u16) -> u32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}
