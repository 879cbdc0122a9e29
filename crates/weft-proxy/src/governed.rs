//! Retries and backup (hedged) requests for a route rule with a policy:
//! weft-policy's [`RetryPolicy`] and [`Hedger`] driven over real attempts,
//! with one [`Budget`] shared by both.
//!
//! A request here:
//! 1. deposits into the budget once;
//! 2. buffers its body (up to the hedging limit, else 64 KiB) so a retry
//!    or backup can send it again; a larger body goes out once, unhedged;
//! 3. sends the first attempt to the balancer's pick and, if hedging is on,
//!    arms the hedge timer (fixed or learned delay);
//! 4. when the timer fires before any answer and the budget and breaker
//!    allow, sends a backup to an endpoint this request has not tried;
//! 5. takes the first answer that is not a retriable failure; the other
//!    attempts are dropped: HTTP/2 streams are reset (RST_STREAM CANCEL,
//!    which gRPC servers see as a cancellation), an HTTP/1.1 connection
//!    with a request in flight is closed, never reused;
//! 6. after a retriable failure with nothing else in flight, asks the retry
//!    policy (attempts, deadline, budget) and backs off with jitter;
//! 7. the route timeout bounds everything; each attempt also has the
//!    retry's per-try timeout.
//!
//! Only a response head can be retried: a gRPC status in the trailers
//! arrives while the body is being streamed to the client.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use weft_policy::budget::Budget;
use weft_policy::health::{Classifier, Verdict};
use weft_policy::hedge::{
    Completion, HedgePlan, HedgeRequest, HedgeStats, Hedger, Suppressed, Winner, is_idempotent,
};
use weft_policy::ratelimit::TokenBucket;
use weft_policy::retry::{FailedAttempt, GiveUp, RetryDecision, RetryPolicy, RetryStats};
use weft_policy::rng::ThreadRng;

use crate::body::ProxyBody;
use crate::clock;
use crate::deadline::RequestDeadline;
use crate::error::ProxyError;
use crate::forward::forward;
use crate::headers::is_upgrade;
use crate::metrics::{PolicyLabels, PolicyMetrics, PolicyReasonLabels};
use crate::observe::{HeadVerdict, InFlight, classify_error, classify_head, conclude};
use crate::policy::{AdmissionSettings, FaultSettings, RouteSettings};
use crate::snapshot::Cluster;
use crate::span::{AttemptSpan, RequestSpan};
use crate::trace;

/// Request bodies buffered for retries when hedging does not set a limit.
const RETRY_BUFFER: usize = 64 * 1024;

/// The retry and hedging policy of one route rule, shared by its requests
/// and kept across config changes while its JSON is unchanged.
pub struct RoutePolicy {
    /// The policy JSON it was built from.
    pub json: String,
    pub labels: PolicyLabels,
    /// The route's failure codes: what is retried.
    classifier: Classifier,
    retry: Option<RetryPolicy>,
    retry_non_idempotent: bool,
    hedge: Option<Hedger>,
    hedge_non_idempotent: bool,
    budget: Arc<Budget>,
    max_body: usize,
    admission: Option<AdmissionSettings>,
    fault: Option<FaultSettings>,
    limiter: Option<TokenBucket>,
    global: Option<Arc<crate::global_limit::Lease>>,
    deadline: Option<(bool, Duration)>,
    /// Counter values already exported to Prometheus.
    synced: Mutex<(RetryStats, HedgeStats)>,
}

impl RoutePolicy {
    pub fn new(json: String, s: &RouteSettings, labels: PolicyLabels) -> Result<Self, String> {
        let budget = Arc::new(Budget::new(s.budget.clone()).map_err(|e| format!("budget: {e}"))?);
        let retry = match &s.retry {
            Some(r) => Some(
                RetryPolicy::new(r.clone(), budget.clone()).map_err(|e| format!("retry: {e}"))?,
            ),
            None => None,
        };
        let hedge = match &s.hedge {
            Some(h) => {
                Some(Hedger::new(h.clone(), budget.clone()).map_err(|e| format!("hedging: {e}"))?)
            }
            None => None,
        };
        let classifier = Classifier::new(&s.codes).map_err(|e| format!("failureCodes: {e}"))?;
        Ok(Self {
            json,
            labels,
            classifier,
            max_body: s
                .hedge
                .as_ref()
                .map_or(RETRY_BUFFER, |h| h.max_buffered_body),
            retry,
            retry_non_idempotent: s.retry_non_idempotent,
            hedge,
            hedge_non_idempotent: s.hedge_non_idempotent,
            budget,
            deadline: s.deadline,
            admission: s.admission.clone(),
            fault: s.fault.clone(),
            limiter: match &s.rate_limit {
                Some(c) => {
                    Some(TokenBucket::new(c.clone()).map_err(|e| format!("rateLimit.local: {e}"))?)
                }
                None => None,
            },
            global: None,
            synced: Mutex::default(),
        })
    }

    /// The rule's global rate limit lease (`rateLimit.global`).
    pub fn with_global(mut self, lease: Option<Arc<crate::global_limit::Lease>>) -> Self {
        self.global = lease;
        self
    }

    pub fn global(&self) -> Option<&Arc<crate::global_limit::Lease>> {
        self.global.as_ref()
    }

    /// Whether requests go through [`send`] at all.
    pub fn is_active(&self) -> bool {
        self.retry.is_some() || self.hedge.is_some()
    }

    pub fn admission(&self) -> Option<&AdmissionSettings> {
        self.admission.as_ref()
    }

    /// The `deadline` section: (propagate, margin).
    pub fn deadline(&self) -> Option<(bool, Duration)> {
        self.deadline
    }

    pub fn limiter(&self) -> Option<&TokenBucket> {
        self.limiter.as_ref()
    }

    pub fn fault(&self) -> Option<&FaultSettings> {
        self.fault.as_ref()
    }

    /// Copies the cores' counters into Prometheus (called periodically).
    pub fn export(&self, m: &PolicyMetrics, now: Duration) {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        let reason = |r: &'static str| PolicyReasonLabels {
            service: self.labels.service.clone(),
            route: self.labels.route.clone(),
            reason: r,
        };
        if let Some(r) = &self.retry {
            let now_stats = r.stats();
            let before = synced.0;
            m.retries
                .get_or_create(&self.labels)
                .inc_by(now_stats.retries.saturating_sub(before.retries));
            for g in GiveUp::ALL {
                let d = now_stats.given_up(g).saturating_sub(before.given_up(g));
                if d > 0 {
                    m.retries_given_up
                        .get_or_create(&reason(g.as_str()))
                        .inc_by(d);
                }
            }
            synced.0 = now_stats;
        }
        if let Some(h) = &self.hedge {
            let s = h.stats();
            let before = synced.1;
            for (name, now_v, old) in [
                ("sent", s.sent, before.sent),
                ("won", s.won, before.won),
                ("cancelled", s.cancelled, before.cancelled),
            ] {
                m.hedges
                    .get_or_create(&reason(name))
                    .inc_by(now_v.saturating_sub(old));
            }
            for r in Suppressed::ALL {
                let d = s.suppressed(r).saturating_sub(before.suppressed(r));
                if d > 0 {
                    m.hedges_suppressed
                        .get_or_create(&reason(r.as_str()))
                        .inc_by(d);
                }
            }
            synced.1 = s;
            match h.current_delay() {
                Some(d) => {
                    m.hedge_delay
                        .get_or_create(&self.labels)
                        .set(d.as_secs_f64());
                }
                None => {
                    m.hedge_delay.remove(&self.labels);
                }
            }
        }
        m.budget_available
            .get_or_create(&self.labels)
            .set(i64::try_from(self.budget.available(now)).unwrap_or(i64::MAX));
    }
}

/// The request line and headers, to make each attempt's request from.
struct Template {
    parts: Parts,
}

impl Template {
    fn request(&self, body: &Buffered) -> Request<ProxyBody> {
        let mut b = Request::builder()
            .method(self.parts.method.clone())
            .uri(self.parts.uri.clone())
            .version(self.parts.version);
        if let Some(h) = b.headers_mut() {
            *h = self.parts.headers.clone();
        }
        b.body(ProxyBody::Replay(body.data.clone(), body.trailers.clone()))
            .expect("parts of a valid request")
    }
}

struct Buffered {
    data: Option<Bytes>,
    trailers: Option<Box<HeaderMap>>,
}

enum Collected {
    Whole(Buffered),
    /// Over the limit: what was read, and the rest still streaming.
    TooLarge(ProxyBody),
}

/// Reads the request body up to `limit` bytes.
async fn collect(mut body: Incoming, limit: usize) -> Result<Collected, ProxyError> {
    let mut buf = BytesMut::new();
    let mut trailers = None;
    if !body.is_end_stream() {
        if body.size_hint().lower() > limit as u64 {
            return Ok(Collected::TooLarge(ProxyBody::Streamed(body)));
        }
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ProxyError::BadRequest(format!("reading the body: {e}")))?;
            match frame.into_data() {
                Ok(d) => {
                    buf.extend_from_slice(&d);
                    if buf.len() > limit {
                        return Ok(Collected::TooLarge(ProxyBody::Chain(
                            Some(buf.freeze()),
                            body,
                        )));
                    }
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        trailers = Some(Box::new(t));
                    }
                }
            }
        }
    }
    Ok(Collected::Whole(Buffered {
        data: (!buf.is_empty()).then(|| buf.freeze()),
        trailers,
    }))
}

/// One attempt's end.
struct Done {
    index: usize,
    backup: bool,
    sent: Instant,
    inflight: InFlight,
    result: Result<Response<ProxyBody>, ProxyError>,
    /// Its span (dropped with the attempt's future: recorded as cancelled).
    span: Option<AttemptSpan>,
}

impl Done {
    /// Records the attempt's span; `won`: the answer of a hedged request.
    fn finish_span(&mut self, won: bool) {
        if let Some(s) = self.span.take() {
            s.finish(&self.result, won);
        }
    }
}

async fn attempt(
    cluster: Arc<Cluster>,
    index: usize,
    (req, span): (Request<ProxyBody>, Option<AttemptSpan>),
    timeout: Option<Duration>,
    backup: bool,
) -> Done {
    let sent = Instant::now();
    let inflight = InFlight::new(cluster.start(index, clock::at(sent)));
    let result = forward(&cluster.endpoints[index], req, timeout).await;
    Done {
        index,
        backup,
        sent,
        inflight,
        result,
        span,
    }
}

/// Sends a request of a rule with an active policy. With a request `span`
/// (sampled, exported), each attempt gets a child span whose id its
/// request carries upstream.
#[allow(clippy::too_many_arguments)] // the request's pieces, each used once
pub async fn send(
    cluster: &Arc<Cluster>,
    policy: &RoutePolicy,
    parts: Parts,
    body: Incoming,
    deadline: &RequestDeadline,
    grpc: bool,
    start: Instant,
    span: Option<&RequestSpan>,
) -> Result<Response<ProxyBody>, ProxyError> {
    policy.budget.deposit(clock::at(start));
    let timeout = deadline.timeout();
    let deadline_at = timeout.map(|t| start + t);
    let remaining = || deadline_at.map(|d| d.saturating_duration_since(Instant::now()));

    let idempotent = is_idempotent(parts.method.as_str());
    let retry_ok = policy.retry_non_idempotent || idempotent;
    let hedge_ok = policy.hedge_non_idempotent || idempotent;
    let replayable = (policy.retry.is_some() && retry_ok) || (policy.hedge.is_some() && hedge_ok);
    if is_upgrade(&parts.headers) || !replayable {
        if let Some(h) = &policy.hedge {
            // Counted as suppressed (not idempotent), as the plan would.
            let _ = h.plan(&HedgeRequest::new(
                parts.method.as_str(),
                policy.hedge_non_idempotent,
                None,
            ));
        }
        return once(cluster, Request::from_parts(parts, body), deadline, grpc).await;
    }
    let body = match collect(body, policy.max_body).await? {
        Collected::Whole(b) => b,
        Collected::TooLarge(body) => {
            if let Some(h) = &policy.hedge {
                h.suppress(Suppressed::BodyTooLarge);
            }
            return once(cluster, Request::from_parts(parts, body), deadline, grpc).await;
        }
    };
    let method = parts.method.clone();
    let template = Template { parts };
    let try_timeout = |left: Option<Duration>| match &policy.retry {
        Some(r) => r.try_timeout(left),
        None => left,
    };
    let plan = |sent: u32, left: Option<Duration>| -> Option<Instant> {
        let h = policy.hedge.as_ref()?;
        let mut req = HedgeRequest::new(method.as_str(), policy.hedge_non_idempotent, left);
        req.attempts_sent = sent;
        match h.plan(&req) {
            HedgePlan::After(d) => Some(Instant::now() + d),
            HedgePlan::Suppressed(_) => None,
        }
    };

    let mut tried: Vec<usize> = Vec::with_capacity(2);
    let Some(first) = cluster.pick_index(&tried, clock::at(start)) else {
        return Err(ProxyError::NoEndpoints(cluster.label.to_string()));
    };
    tried.push(first);
    let mut inflight = FuturesUnordered::new();
    let stamped = || -> Result<Request<ProxyBody>, ProxyError> {
        let mut req = template.request(&body);
        deadline.stamp(req.headers_mut())?;
        Ok(req)
    };
    // Attempt `n` to endpoint `i`: its span, and that span on its request.
    let traced = |mut req: Request<ProxyBody>, i: usize, n: u32, backup: bool| {
        let s = span.map(|s| {
            let (a, ctx) = s.attempt(n, &cluster.endpoints[i].label, backup);
            trace::restamp(req.headers_mut(), &ctx);
            a
        });
        (req, s)
    };
    inflight.push(attempt(
        cluster.clone(),
        first,
        traced(stamped()?, first, 1, false),
        try_timeout(remaining()),
        false,
    ));
    let mut attempts = 1u32;
    let mut backups = 0u32;
    let mut hedge_at = plan(attempts, remaining());
    let mut rng = ThreadRng;
    let far = || Instant::now() + Duration::from_secs(86_400);

    loop {
        tokio::select! {
            biased;
            Some(mut done) = inflight.next() => {
                let now = clock::now();
                let latency = done.sent.elapsed();
                let (retriable, success) = match &done.result {
                    Ok(resp) => match classify_head(&policy.classifier, resp, grpc, latency) {
                        HeadVerdict::Final(Verdict::Failure(_)) => (true, false),
                        _ => (false, true),
                    },
                    Err(e) => match classify_error(&policy.classifier, e, latency) {
                        Verdict::Failure(_) => (true, false),
                        _ => (false, false),
                    },
                };
                let more = !inflight.is_empty();
                if retriable && more {
                    // Another attempt is still racing: it may answer well.
                    done.finish_span(false);
                    let _ = conclude(cluster, done.index, done.inflight, done.result, grpc, done.sent);
                    continue;
                }
                let decision = if retriable {
                    policy.retry.as_ref().map(|r| {
                        r.decide(
                            now,
                            &FailedAttempt {
                                attempts,
                                retriable: retry_ok,
                                remaining_deadline: remaining(),
                            },
                            &mut rng,
                        )
                    })
                } else {
                    None
                };
                match decision {
                    Some(RetryDecision::Retry { after }) => {
                        done.finish_span(false);
                        let _ = conclude(cluster, done.index, done.inflight, done.result, grpc, done.sent);
                        tokio::select! {
                            _ = tokio::time::sleep(after) => {}
                            _ = tokio::time::sleep_until(deadline_at.unwrap_or_else(far).into()) => {
                                return Err(timeout_error(cluster, timeout));
                            }
                        }
                        let Some(i) = cluster
                            .pick_index(&tried, clock::now())
                            .or_else(|| cluster.pick_index(&[], clock::now()))
                        else {
                            return Err(ProxyError::NoEndpoints(cluster.label.to_string()));
                        };
                        if !tried.contains(&i) {
                            tried.push(i);
                        }
                        attempts += 1;
                        inflight.push(attempt(
                            cluster.clone(),
                            i,
                            traced(stamped()?, i, attempts, false),
                            try_timeout(remaining()),
                            false,
                        ));
                        hedge_at = plan(attempts, remaining());
                    }
                    _ => {
                        // The answer: the others lose (dropped = cancelled).
                        drop(inflight);
                        done.finish_span(backups > 0);
                        if let Some(h) = &policy.hedge {
                            h.record(
                                now,
                                &Completion {
                                    latency: start.elapsed(),
                                    success,
                                    winner: if done.backup { Winner::Backup } else { Winner::Original },
                                    backups_sent: backups,
                                },
                            );
                        }
                        return conclude(cluster, done.index, done.inflight, done.result, grpc, done.sent);
                    }
                }
            }
            _ = tokio::time::sleep_until(hedge_at.unwrap_or_else(far).into()), if hedge_at.is_some() => {
                hedge_at = None;
                let Some(h) = &policy.hedge else { continue };
                let now = clock::now();
                if h.on_fire(now).is_err() {
                    continue;
                }
                let req = match stamped() {
                    Ok(r) => r,
                    Err(_) => {
                        h.suppress(Suppressed::Deadline);
                        continue;
                    }
                };
                match cluster.pick_index(&tried, now) {
                    Some(i) => {
                        tried.push(i);
                        attempts += 1;
                        backups += 1;
                        inflight.push(attempt(
                            cluster.clone(),
                            i,
                            traced(req, i, attempts, true),
                            try_timeout(remaining()),
                            true,
                        ));
                        hedge_at = plan(attempts, remaining());
                    }
                    None => h.suppress(Suppressed::NoEndpoint),
                }
            }
            _ = tokio::time::sleep_until(deadline_at.unwrap_or_else(far).into()), if deadline_at.is_some() => {
                if let Some(h) = &policy.hedge {
                    h.record(
                        clock::now(),
                        &Completion {
                            latency: start.elapsed(),
                            success: false,
                            winner: Winner::Original,
                            backups_sent: backups,
                        },
                    );
                }
                return Err(timeout_error(cluster, timeout));
            }
        }
    }
}

fn timeout_error(cluster: &Cluster, timeout: Option<Duration>) -> ProxyError {
    ProxyError::Timeout {
        endpoint: cluster.label.to_string(),
        timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64),
    }
}

/// One attempt, no retry or backup (the request cannot be replayed).
pub async fn once<B: Into<ProxyBody>>(
    cluster: &Arc<Cluster>,
    mut req: Request<B>,
    deadline: &RequestDeadline,
    grpc: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    deadline.stamp(req.headers_mut())?;
    let timeout = deadline.timeout();
    let sent = Instant::now();
    let now = clock::at(sent);
    let Some(i) = cluster.pick_index(&[], now) else {
        return Err(ProxyError::NoEndpoints(cluster.label.to_string()));
    };
    let inflight = InFlight::new(cluster.start(i, now));
    let result = forward(&cluster.endpoints[i], req, timeout).await;
    conclude(cluster, i, inflight, result, grpc, sent)
}
