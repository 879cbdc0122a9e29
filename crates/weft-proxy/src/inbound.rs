//! The inbound stack: requests from other sidecars (or anyone) to the local
//! app.
//!
//! Stages, outer to inner:
//!   1. accept + protocol detection (HTTP/2 preface, HTTP/1 method, else
//!      opaque TCP) ............................. listener.rs
//!   2. deadline: the caller's, enforced and passed to the app shrunk
//!      (authorization, rate limit, fault: later issues)
//!      trace context: this hop's span, handed to the app (and
//!      recorded when sampled and exported) ......... trace.rs, span.rs
//!   3. forward to the app (`--app`, else the inbound listener's cluster
//!      from the config) over the same protocol ..... forward.rs
//!   4. metrics (by the caller's `x-weft-source`), the span's end and the
//!      access log line ................................ complete.rs

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::complete::Finishing;
use crate::deadline::RequestDeadline;
use crate::error::ProxyError;
use crate::forward::forward;
use crate::headers::is_grpc;
use crate::metrics::SOURCE_HEADER;
use crate::span::{Kind, RequestSpan};
use crate::state::Shared;
use crate::trace;

pub async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let grpc = is_grpc(req.headers());
    let stats = shared.inbound_stats.get(
        &shared.metrics,
        req.headers().get(SOURCE_HEADER).map(|v| v.as_bytes()),
    );
    let mut finishing = Finishing::new(grpc, start);
    finishing.log = shared.access_log.as_ref().map(|log| {
        log.begin(
            (req.method(), req.uri(), req.headers(), req.version()),
            peer,
        )
    });
    // `--app` when given (no snapshot load); else the app the config names.
    let snapshot;
    let app = match &shared.app {
        Some(app) => app,
        None => {
            snapshot = shared.snapshot.load();
            match &snapshot.inbound {
                Some(app) => app,
                None => {
                    let err = ProxyError::NoEndpoints(format!(
                        "{} (no local app configured)",
                        shared.local_service
                    ));
                    return Ok(shared.finish(&stats, Err(err), finishing));
                }
            }
        }
    };
    let client = if req.version() == Version::HTTP_2 {
        &app.h2
    } else {
        &app.h1
    };
    if finishing.log.is_some() {
        finishing.upstream = Some(client.label.clone());
    }
    // The caller's deadline bounds the wait and reaches the app, shrunk.
    let mut req = req;
    let deadline =
        match RequestDeadline::read(req.headers(), None, false, start, grpc, &shared.metrics) {
            Ok(d) => d,
            Err(err) => return Ok(shared.finish(&stats, Err(err), finishing)),
        };
    if let Err(err) = deadline.stamp(req.headers_mut()) {
        return Ok(shared.finish(&stats, Err(err), finishing));
    }
    // The app sees this proxy's span as its parent.
    let ctx = trace::propagate(req.headers_mut(), &shared.metrics, shared.traces.sampler);
    if let Some(log) = &mut finishing.log {
        log.trace_id(ctx.trace_id);
    }
    let span = RequestSpan::start(
        shared.traces.exporter.as_ref(),
        &ctx,
        Kind::Server,
        || format!("inbound {}", shared.local_service),
        (req.method(), req.uri(), req.headers()),
    )
    .map(|mut s| {
        s.route("inbound");
        s.deadline(deadline.timeout());
        s
    });
    let result = forward(client, req, deadline.timeout()).await;
    finishing.span = span;
    Ok(shared.finish(&stats, result, finishing))
}
