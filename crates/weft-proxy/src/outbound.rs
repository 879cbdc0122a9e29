//! The outbound stack: requests the local app makes to other Services.
//!
//! Stages, outer to inner (each later governance policy slots in here, in
//! this order):
//!   1. accept + HTTP/1.1 or h2c detection ........ listener.rs
//!   2. route: Host/:authority or VIP -> Service -> rule (path/header/method)
//!   3. deadline: min(route timeout, caller's) ...... deadline.rs
//!      admission (drop ratio, denied callers), faults . admission.rs
//!      (rate limits: later)
//!      trace context: this hop's span (recorded when sampled and
//!      exported) ................................... trace.rs, span.rs
//!   4. split: weighted pick of the rule's backend Service
//!   5. retries and backup requests with their budget .. governed.rs
//!      balance: latency-aware P2C (or the policy's) ... snapshot.rs
//!   6. forward: endpoint pool, timeout, upgrades ... forward.rs
//!      endpoint health from the response ............ observe.rs
//!   7. metrics: requests, latency, per-endpoint counts; the span's end
//!      and the access log line ......................... complete.rs

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::admission;
use crate::body::ProxyBody;
use crate::complete::Finishing;
use crate::deadline::RequestDeadline;
use crate::error::ProxyError;
use crate::forward::request_authority;
use crate::governed;
use crate::headers::is_grpc;
use crate::metrics::{Direction, SOURCE_HEADER};
use crate::route::Rule;
use crate::snapshot::VipTarget;
use crate::span::{Kind, RequestSpan};
use crate::state::Shared;
use crate::trace;

/// How an outbound listener finds the Service.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The shared outbound listener: by Host/:authority.
    Host,
    /// A virtual-IP listener: everything goes to the Service behind this address.
    Vip(SocketAddr),
}

const UNKNOWN: &str = "unknown";

pub async fn handle(
    shared: Arc<Shared>,
    target: Target,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let grpc = is_grpc(req.headers());
    let mut finishing = Finishing::new(grpc, start);
    finishing.log = shared.access_log.as_ref().map(|log| {
        log.begin(
            (req.method(), req.uri(), req.headers(), req.version()),
            peer,
        )
    });
    // The whole request uses this snapshot, even if a reload happens meanwhile.
    let snapshot = shared.snapshot.load_full();

    // 2. route
    let table = match target {
        Target::Host => request_authority(&req).and_then(|a| snapshot.lookup_host(a)),
        Target::Vip(addr) => match snapshot.vips.get(&addr) {
            Some(VipTarget::Http(t)) => Some(t),
            _ => None,
        },
    };
    let Some(table) = table else {
        let err = if snapshot.generation == 0 {
            ProxyError::NotConfigured
        } else {
            let host = request_authority(&req).unwrap_or("").to_string();
            ProxyError::NoRoute(format!("no Service for host {host:?}"))
        };
        return Ok(answer_error(&shared, UNKNOWN.into(), err, finishing));
    };
    let (mut parts, body) = req.into_parts();
    let Some(rule) = table.find(&parts) else {
        let err = ProxyError::NoRoute(format!(
            "no rule of {} matches {} {}",
            table.service,
            parts.method,
            parts.uri.path()
        ));
        return Ok(answer_error(&shared, table.service.clone(), err, finishing));
    };
    // Who calls: the upstream's sidecar counts the request by it.
    parts
        .headers
        .insert(SOURCE_HEADER, shared.source_header.clone());

    // Trace context (this hop's span) before anything can answer, so the
    // proxy's own answers (dropped, rate-limited, deadline) are spans too.
    let ctx = trace::propagate(&mut parts.headers, &shared.metrics, shared.traces.sampler);
    if let Some(log) = &mut finishing.log {
        log.trace_id(ctx.trace_id);
    }
    let mut span = RequestSpan::start(
        shared.traces.exporter.as_ref(),
        &ctx,
        Kind::Client,
        || format!("outbound {}", table.service),
        (&parts.method, &parts.uri, &parts.headers),
    );
    if let Some(s) = &mut span {
        s.route(&rule.label);
    }
    let service = &table.service;
    let result = govern(
        &shared,
        service,
        rule,
        parts,
        body,
        (grpc, start),
        span.as_mut(),
    )
    .await;
    // 7. metrics, span, access log
    finishing.span = span;
    Ok(shared.finish(&rule.stats, result, finishing))
}

/// Stages 3-6 for a matched rule.
async fn govern(
    shared: &Shared,
    service: &str,
    rule: &Rule,
    parts: Parts,
    body: Incoming,
    (grpc, start): (bool, Instant),
    span: Option<&mut RequestSpan>,
) -> Result<Response<ProxyBody>, ProxyError> {
    // 4. split
    let Some(cluster) = rule.pick_backend() else {
        return Err(ProxyError::NoEndpoints(service.to_string()));
    };

    // 3. deadline: the caller's and the route's
    let deadline_policy = rule
        .policy
        .as_ref()
        .and_then(|p| p.deadline())
        .unwrap_or((true, weft_policy::deadline::DEFAULT_MARGIN));
    let deadline = RequestDeadline::read_with(
        &parts.headers,
        rule.timeout,
        rule.timeout_set,
        start,
        grpc,
        &shared.metrics,
        deadline_policy,
    )?;
    let span = span.map(|s| {
        s.deadline(deadline.timeout());
        &*s
    });

    // 3b. admission (drop ratio, denied callers) and injected faults
    if let Some(p) = &rule.policy {
        admission::admit(
            p,
            &shared.local_service,
            &parts.headers,
            &deadline,
            &shared.metrics,
        )
        .await?;
    }

    // 5. retries and hedging (when the rule's policy asks), balance,
    // 6. forward, endpoint health
    match &rule.policy {
        Some(p) if p.is_active() => {
            governed::send(cluster, p, parts, body, &deadline, grpc, start, span).await
        }
        _ => governed::once(cluster, Request::from_parts(parts, body), &deadline, grpc).await,
    }
}

/// The proxy's own answer when no rule takes the request, recorded like
/// any other.
fn answer_error(
    shared: &Arc<Shared>,
    service: Arc<str>,
    err: ProxyError,
    finishing: Finishing,
) -> Response<ProxyBody> {
    tracing::debug!(%service, error = %err, "no route");
    let stats = shared.metrics.route_stats(
        Direction::Outbound,
        shared.local_service.clone(),
        service,
        UNKNOWN.into(),
    );
    shared.finish(&stats, Err(err), finishing)
}
