//! The last stage of both stacks: send one request to one chosen endpoint and
//! bring its response back, keeping the original authority, stripping
//! hop-by-hop headers, honouring the route timeout and splicing HTTP/1.1
//! upgrades (e.g. WebSocket) into a raw byte tunnel.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version, header};
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::headers::{is_upgrade, strip_hop_by_hop};
use crate::upstream::EndpointClient;

/// The authority the client addressed: `:authority`, absolute-form URI, or `Host`.
pub fn request_authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Forwards `req` to `endpoint`; `timeout` bounds the wait for response headers.
pub async fn forward<B: Into<ProxyBody>>(
    endpoint: &Arc<EndpointClient>,
    mut req: Request<B>,
    timeout: Option<Duration>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upgrade = req.version() <= Version::HTTP_11 && is_upgrade(req.headers());
    if upgrade && endpoint.http2 {
        return Err(ProxyError::BadRequest(
            "HTTP/1.1 upgrades cannot be forwarded to an HTTP/2 upstream".into(),
        ));
    }
    strip_hop_by_hop(req.headers_mut(), upgrade);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if endpoint.http2 {
        // HTTP/2 carries the authority in the URI (`:authority`); a Host
        // header beside it could disagree.
        let authority = match request_authority(&req).map(str::parse::<Authority>) {
            Some(Ok(a)) => a,
            Some(Err(_)) => return Err(ProxyError::BadRequest("invalid Host/:authority".into())),
            None => endpoint
                .label
                .parse()
                .map_err(|_| ProxyError::BadRequest("no Host/:authority".into()))?,
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        parts.path_and_query = Some(path);
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        req.headers_mut().remove(header::HOST);
        *req.version_mut() = Version::HTTP_2;
    } else {
        // HTTP/1.1: origin-form URI, authority in Host (an HTTP/2 client's
        // `:authority` becomes the Host).
        if !req.headers().contains_key(header::HOST) {
            let host = req
                .uri()
                .authority()
                .map(|a| a.as_str())
                .unwrap_or(&endpoint.label);
            let host = http::HeaderValue::from_str(host)
                .map_err(|_| ProxyError::BadRequest("invalid :authority".into()))?;
            req.headers_mut().insert(header::HOST, host);
        }
        *req.uri_mut() = Uri::from(path);
        *req.version_mut() = Version::HTTP_11;
    }

    let send = endpoint.send(req.map(Into::into));
    let mut resp = match timeout {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .map_err(|_| ProxyError::Timeout {
                endpoint: endpoint.label.to_string(),
                timeout_ms: t.as_millis() as u64,
            })??,
        None => send.await?,
    };

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(downstream)) = (switching, downstream_upgrade) {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((d, u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                        tracing::debug!(error = %e, "upgraded connection ended with an error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    Ok(resp)
}
