//! Downstream calls: what the demo's frontend does to reach the catalog
//! through its sidecar.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::APP_NAME_HEADER;

/// A `GET` the app makes to another service for each request it serves.
///
/// Written `HOST/PATH@VIA` (e.g. `catalog/items@127.0.0.1:15001`: ask the
/// sidecar's outbound proxy at `127.0.0.1:15001` for `catalog`'s `/items`),
/// or `ADDR/PATH` to call an app directly, with `Host: ADDR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Where the TCP connection goes: the caller's outbound proxy, or the
    /// downstream app itself.
    pub via: SocketAddr,
    /// The `Host` header: the service the mesh routes the call to.
    pub host: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Call {
    /// A call straight to an app at `addr`, bypassing any proxy.
    pub fn direct(addr: SocketAddr, path: &str) -> Self {
        Call {
            via: addr,
            host: addr.to_string(),
            path: path.to_owned(),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}@{}", self.host, self.path, self.via)
    }
}

/// Why a `HOST/PATH@VIA` string is not a [`Call`].
#[derive(Debug, thiserror::Error)]
pub enum ParseCallError {
    #[error("call `{0}`: expected HOST/PATH@VIA_ADDR or ADDR/PATH")]
    Shape(String),
    #[error("call `{call}`: `{via}` is not an IP:PORT address")]
    Via { call: String, via: String },
}

impl FromStr for Call {
    type Err = ParseCallError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (target, via) = match s.rsplit_once('@') {
            Some((target, via)) => (target, Some(via)),
            None => (s, None),
        };
        let (host, path) = match target.find('/') {
            Some(slash) => target.split_at(slash),
            None => (target, "/"),
        };
        if host.is_empty() || HeaderValue::from_str(host).is_err() || path.parse::<Uri>().is_err() {
            return Err(ParseCallError::Shape(s.to_owned()));
        }
        let via_text = via.unwrap_or(host);
        let via = via_text.parse().map_err(|_| ParseCallError::Via {
            call: s.to_owned(),
            via: via_text.to_owned(),
        })?;
        Ok(Call {
            via,
            host: host.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// The calls of one app, ready to send over a shared keep-alive pool.
#[derive(Debug)]
pub(super) struct Downstream {
    client: Client<HttpConnector, Empty<Bytes>>,
    calls: Vec<PreparedCall>,
}

#[derive(Debug)]
struct PreparedCall {
    call: Call,
    uri: Uri,
    host: HeaderValue,
}

/// What the calls of one request came to.
pub(super) struct Outcome {
    /// The `x-app-name` of each answer, comma-separated, in call order
    /// (`-` for an answer without one).
    pub(super) names: HeaderValue,
    /// The first call that did not answer 2xx, described for a 502 body.
    pub(super) failure: Option<String>,
}

impl Downstream {
    /// `None` when there is nothing to call.
    pub(super) fn new(calls: &[Call]) -> anyhow::Result<Option<Self>> {
        if calls.is_empty() {
            return Ok(None);
        }
        let calls = calls
            .iter()
            .map(|call| {
                Ok(PreparedCall {
                    uri: format!("http://{}{}", call.via, call.path).parse()?,
                    host: HeaderValue::from_str(&call.host)?,
                    call: call.clone(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Some(Downstream { client, calls }))
    }

    /// Makes the calls in order, stopping at the first that fails. With a
    /// deadline (the remaining time received, and when), each call carries
    /// what is left of it in `x-weft-deadline-ms` (0 once spent: the sidecar
    /// then fails the call fast). Each call also carries the trace headers
    /// received (`trace`), as an app must for its calls' spans to join the
    /// request's trace.
    pub(super) async fn call_all(
        &self,
        deadline: Option<(std::time::Duration, std::time::Instant)>,
        trace: &[(http::HeaderName, HeaderValue)],
    ) -> Outcome {
        let mut names = Vec::with_capacity(self.calls.len());
        let mut failure = None;
        for prepared in &self.calls {
            let left = deadline.map(|(d, at)| d.saturating_sub(at.elapsed()));
            match self.call_one(prepared, left, trace).await {
                Ok((status, name)) => {
                    names.push(name.unwrap_or_else(|| "-".to_owned()));
                    if !status.is_success() {
                        failure = Some(format!("call {} answered {status}", prepared.call));
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(format!("call {} failed: {e:#}", prepared.call));
                    break;
                }
            }
        }
        let names = HeaderValue::try_from(names.join(","))
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        Outcome { names, failure }
    }

    async fn call_one(
        &self,
        prepared: &PreparedCall,
        deadline_left: Option<std::time::Duration>,
        trace: &[(http::HeaderName, HeaderValue)],
    ) -> anyhow::Result<(StatusCode, Option<String>)> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = prepared.uri.clone();
        req.headers_mut().insert(HOST, prepared.host.clone());
        for (name, value) in trace {
            req.headers_mut().append(name.clone(), value.clone());
        }
        if let Some(left) = deadline_left {
            req.headers_mut().insert(
                "x-weft-deadline-ms",
                HeaderValue::from(left.as_millis() as u64),
            );
        }
        let response = self.client.request(req).await?;
        let status = response.status();
        let name = response
            .headers()
            .get(APP_NAME_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Drain rather than collect: only the status and name matter, and the
        // connection goes back to the pool once the body is read.
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame?;
        }
        Ok((status, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_call_through_a_proxy() {
        let call: Call = "catalog/items?page=2@127.0.0.1:15001".parse().unwrap();
        assert_eq!(call.via, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(call.host, "catalog");
        assert_eq!(call.path, "/items?page=2");
        assert_eq!(call.to_string().parse::<Call>().unwrap(), call);
    }

    #[test]
    fn parses_a_direct_call() {
        let call: Call = "127.0.0.1:8081/items".parse().unwrap();
        assert_eq!(
            call,
            Call::direct("127.0.0.1:8081".parse().unwrap(), "/items")
        );
        let root: Call = "catalog@127.0.0.1:1".parse().unwrap();
        assert_eq!(root.path, "/");
    }

    #[test]
    fn rejects_a_host_without_address() {
        let err = "catalog/items".parse::<Call>().unwrap_err();
        assert!(err.to_string().contains("not an IP:PORT"), "{err}");
        assert!("/items@127.0.0.1:1".parse::<Call>().is_err());
    }
}
