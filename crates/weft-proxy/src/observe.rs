//! What an attempt to an endpoint tells about it: the response head (or
//! the error) classified against failure codes, and, for gRPC, the status
//! in the trailers once the body ends. The endpoint's in-flight count and
//! latency sample ([`Pending`]) live as long as the response body does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, Response};
use weft_policy::health::{Classifier, GrpcCode, Observation, Outcome, Verdict};
use weft_policy::latency::Pending;

use crate::body::{BodyEnd, OnEnd, ProxyBody, Watched};
use crate::clock;
use crate::error::ProxyError;
use crate::snapshot::Cluster;
use crate::upstream::Connected;

/// An attempt's in-flight guard that, dropped before a response (the race
/// was lost, the caller went away), counts the wait as a lower bound of the
/// endpoint's latency.
pub struct InFlight(Option<Pending>);

impl InFlight {
    pub fn new(p: Option<Pending>) -> Self {
        InFlight(p)
    }

    /// The response head arrived at `now`: latency sample, still in flight.
    pub fn first_byte(&mut self, now: Duration) {
        if let Some(p) = &mut self.0 {
            p.first_byte(now);
        }
    }

    pub fn take(&mut self) -> Option<Pending> {
        self.0.take()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.cancel(clock::now());
        }
    }
}

/// The outcome of a failed attempt, `None` when it says nothing about the
/// endpoint (the request was bad, no endpoint was tried).
pub fn error_outcome(err: &ProxyError) -> Option<Outcome> {
    match err {
        ProxyError::ConnectFailed { .. } => Some(Outcome::ConnectFailed),
        ProxyError::Timeout { .. } => Some(Outcome::TimedOut),
        ProxyError::Upstream { .. } => Some(Outcome::Reset),
        _ => None,
    }
}

/// A response head judged by `classifier`: final, or to be finished when
/// the trailers arrive (`Deferred`: a gRPC response whose status, or whose
/// business code, can only be in the trailers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadVerdict {
    Final(Verdict),
    Deferred,
}

/// Classifies a response head.
pub fn classify_head<B>(
    classifier: &Classifier,
    resp: &Response<B>,
    grpc: bool,
    latency: Duration,
) -> HeadVerdict {
    let h = resp.headers();
    let status = resp.status().as_u16();
    // Only gRPC responses carry a status worth a header lookup.
    let grpc_status = if grpc {
        header_str(h, GRPC_STATUS)
    } else {
        None
    };
    let code = classifier.header_name().and_then(|n| header_str(h, n));
    let mut obs = Observation::response(status, latency);
    if let Some(s) = grpc_status {
        obs = obs.with_grpc_status(GrpcCode::from_wire(s));
    }
    if let Some(c) = code {
        obs = obs.with_header_code(c);
    }
    let verdict = classifier.classify(&obs);
    let trailers_pending = grpc
        && status == 200
        && (grpc_status.is_none() || (classifier.header_name().is_some() && code.is_none()));
    if trailers_pending && !verdict.is_failure() {
        HeadVerdict::Deferred
    } else {
        HeadVerdict::Final(verdict)
    }
}

/// Classifies an error of an attempt.
pub fn classify_error(classifier: &Classifier, err: &ProxyError, latency: Duration) -> Verdict {
    match error_outcome(err) {
        Some(o) => classifier.classify(&Observation::of(o, latency)),
        None => Verdict::Ignored,
    }
}

const GRPC_STATUS: &str = "grpc-status";

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Whose health a response body still has to report, and the in-flight
/// guard it holds until the body ends.
pub struct Tracker {
    pub cluster: Arc<Cluster>,
    pub index: usize,
    pub pending: Option<Pending>,
    /// Set when the verdict waits for the trailers.
    pub deferred: Option<Deferred>,
}

/// What the head said, to be completed by the trailers.
pub struct Deferred {
    pub status: u16,
    pub sent: Instant,
    pub grpc_status_in_head: Option<GrpcCode>,
}

impl Tracker {
    fn finish(&mut self, trailers: Option<&HeaderMap>, reset: bool) {
        // The latency sample was taken at the head; dropping the guard
        // ends the in-flight count without another clock read.
        drop(self.pending.take());
        if let Some(d) = self.deferred.take() {
            let now = clock::now();
            let latency = d.sent.elapsed();
            let c = &self.cluster.classifier;
            let verdict = if reset {
                c.classify(&Observation::of(Outcome::Reset, latency))
            } else {
                let t = |n: &str| trailers.and_then(|h| header_str(h, n));
                let grpc = t("grpc-status")
                    .map(GrpcCode::from_wire)
                    .or(d.grpc_status_in_head)
                    // gRPC clients report a response without a status as INTERNAL.
                    .unwrap_or(GrpcCode::INTERNAL);
                let mut obs = Observation::response(d.status, latency).with_grpc_status(grpc);
                if let Some(code) = c.header_name().and_then(t) {
                    obs = obs.with_trailer_code(code);
                }
                c.classify(&obs)
            };
            self.cluster.record(self.index, now, &verdict);
        }
    }
}

impl OnEnd for Tracker {
    fn end(mut self, how: BodyEnd, trailers: Option<&HeaderMap>) {
        match how {
            BodyEnd::Complete => self.finish(trailers, false),
            BodyEnd::UpstreamReset => self.finish(None, true),
            // The caller dropped the body before its end: nothing to judge
            // (the in-flight guard ends with the tracker).
            BodyEnd::DownstreamCancelled => {}
        }
    }
}

impl Tracker {
    /// The endpoint that answered (`host:port`).
    pub fn endpoint(&self) -> Option<Arc<str>> {
        self.cluster
            .endpoints
            .get(self.index)
            .map(|e| e.label.clone())
    }
}

/// Records a finished attempt's head (or error) against the cluster and
/// returns the response with its body tracked: the one place both request
/// paths hand a response back.
pub fn conclude(
    cluster: &Arc<Cluster>,
    index: usize,
    mut inflight: InFlight,
    result: Result<Response<ProxyBody>, ProxyError>,
    grpc: bool,
    sent: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let arrived = Instant::now();
    let now = clock::at(arrived);
    let latency = arrived.saturating_duration_since(sent);
    match result {
        Err(e) => {
            let v = classify_error(&cluster.classifier, &e, latency);
            cluster.record(index, now, &v);
            // The guard's drop counts the wait as a lower bound.
            drop(inflight);
            Err(e)
        }
        Ok(resp) => {
            // A new connection's setup is not the endpoint's latency.
            let setup = resp
                .extensions()
                .get::<Connected>()
                .map_or(Duration::ZERO, |c| c.0);
            inflight.first_byte(now.saturating_sub(setup));
            let deferred = match classify_head(&cluster.classifier, &resp, grpc, latency) {
                HeadVerdict::Final(v) => {
                    cluster.record(index, now, &v);
                    None
                }
                HeadVerdict::Deferred => Some(Deferred {
                    status: resp.status().as_u16(),
                    sent,
                    grpc_status_in_head: header_str(resp.headers(), "grpc-status")
                        .map(GrpcCode::from_wire),
                }),
            };
            let tracker = Tracker {
                cluster: cluster.clone(),
                index,
                pending: inflight.take(),
                deferred,
            };
            Ok(resp.map(|inner| ProxyBody::Tracked(Box::new(Watched::new(inner, tracker)))))
        }
    }
}
