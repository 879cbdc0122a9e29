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
//!   4. metrics

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::deadline::RequestDeadline;
use crate::error::ProxyError;
use crate::forward::forward;
use crate::headers::is_grpc;
use crate::span::{Kind, RequestSpan};
use crate::state::Shared;
use crate::trace;

pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let grpc = is_grpc(req.headers());
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
                    return Ok(shared.finish(&shared.inbound_stats, Err(err), grpc, start));
                }
            }
        }
    };
    let client = if req.version() == Version::HTTP_2 {
        &app.h2
    } else {
        &app.h1
    };
    // The caller's deadline bounds the wait and reaches the app, shrunk.
    let mut req = req;
    let deadline =
        match RequestDeadline::read(req.headers(), None, false, start, grpc, &shared.metrics) {
            Ok(d) => d,
            Err(err) => return Ok(shared.finish(&shared.inbound_stats, Err(err), grpc, start)),
        };
    if let Err(err) = deadline.stamp(req.headers_mut()) {
        return Ok(shared.finish(&shared.inbound_stats, Err(err), grpc, start));
    }
    // The app sees this proxy's span as its parent.
    let ctx = trace::propagate(req.headers_mut(), &shared.metrics, shared.traces.sampler);
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
    if let Some(s) = span {
        s.finish(&result);
    }
    Ok(shared.finish(&shared.inbound_stats, result, grpc, start))
}
