//! `ShouldRateLimit`: the decision for each descriptor of a request, from
//! the limits in force and the shared window counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::quota::ExpirationSpecifier;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code, DescriptorStatus, Quota, RateLimit as RlsLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::{
    RateLimitService, RateLimitServiceServer,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, Timestamp};
use tonic::Status;
use weft_model::{FailureMode, GlobalRateLimit, RateLimitUnit};

use crate::limits::Limits;
use crate::metrics::{Decision, Metrics};
use crate::store::{CounterStore, MemoryStore, StoreError};
use crate::window::{Grant, Window};

/// Response header set when the store could not be reached and the
/// limits' failure modes decided instead.
pub const DEGRADED_HEADER: &str = "x-weft-ratelimit-degraded";
/// [`DEGRADED_HEADER`]'s value.
pub const STORE_UNAVAILABLE: &str = "store-unavailable";

/// The rate-limit service: limits in force (swapped whole on config
/// changes), the counter store and the metrics. Clones share everything.
#[derive(Clone)]
pub struct RateLimitServer {
    inner: Arc<Inner>,
}

struct Inner {
    limits: ArcSwap<Limits>,
    store: Arc<dyn CounterStore>,
    metrics: Metrics,
    /// Whether the last increment succeeded; flips drive the log lines.
    store_up: AtomicBool,
    /// The metric label of descriptors that are not weft limits.
    unknown: Arc<str>,
}

impl std::fmt::Debug for RateLimitServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitServer")
            .field("limits", &self.inner.limits.load().len())
            .field("store", &self.inner.store.describe())
            .finish()
    }
}

/// One descriptor's answer.
struct Outcome {
    status: DescriptorStatus,
    /// The store failed and the failure mode decided.
    degraded: bool,
    /// Over the limit: seconds until the window resets.
    retry_after: Option<u64>,
}

impl RateLimitServer {
    pub fn new(limits: Limits, store: Arc<dyn CounterStore>) -> Self {
        let metrics = Metrics::new(store.kind());
        RateLimitServer {
            inner: Arc::new(Inner {
                limits: ArcSwap::from_pointee(limits),
                store,
                metrics,
                store_up: AtomicBool::new(true),
                unknown: Arc::from("unknown"),
            }),
        }
    }

    /// Counting in this process only ([`MemoryStore`]).
    pub fn in_memory(limits: Limits) -> Self {
        Self::new(limits, Arc::new(MemoryStore::new()))
    }

    /// Replaces the limits in force; decisions in flight keep the old set.
    /// Counters are kept: a limit whose value changed applies to the
    /// current window's count.
    pub fn update_limits(&self, limits: Limits) {
        self.inner.limits.store(Arc::new(limits));
    }

    /// The limits in force.
    pub fn limits(&self) -> Arc<Limits> {
        self.inner.limits.load_full()
    }

    /// Where the counters are, for logs (`in memory`, `redis HOST:PORT`).
    pub fn store_description(&self) -> String {
        self.inner.store.describe()
    }

    /// Whether the last counter increment succeeded (true before the first).
    pub fn store_up(&self) -> bool {
        self.inner.store_up.load(Ordering::Relaxed)
    }

    /// The tonic service, to `add_service` on a gRPC server.
    pub fn into_service(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self)
    }

    /// Appends the `weft_ratelimit_*` metrics (OpenMetrics text, no `# EOF`).
    pub fn encode_metrics(&self, out: &mut String) {
        self.inner.metrics.encode(out);
    }

    /// Answers one `ShouldRateLimit` call now.
    pub async fn should_rate_limit(
        &self,
        request: &RateLimitRequest,
    ) -> Result<RateLimitResponse, Status> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let started = Instant::now();
        let response = self.decide_at(request, now).await;
        self.inner
            .metrics
            .request_seconds
            .observe(started.elapsed().as_secs_f64());
        response
    }

    /// [`Self::should_rate_limit`] at `now` (since the Unix epoch).
    pub(crate) async fn decide_at(
        &self,
        request: &RateLimitRequest,
        now: Duration,
    ) -> Result<RateLimitResponse, Status> {
        if request.domain.is_empty() {
            return Err(Status::invalid_argument(
                "rate limit domain must not be empty",
            ));
        }
        if request.descriptors.is_empty() {
            return Err(Status::invalid_argument(
                "rate limit descriptor list must not be empty",
            ));
        }
        let limits = self.inner.limits.load_full();
        let weft_domain = request.domain == GlobalRateLimit::DOMAIN;
        let outcomes = futures_util::future::join_all(request.descriptors.iter().map(|d| {
            let hits = hits_of(d, request.hits_addend);
            let limit = if weft_domain {
                weft_limit(&limits, d)
            } else {
                None
            };
            self.decide_one(limit, hits, now)
        }))
        .await;
        Ok(response_of(outcomes))
    }

    async fn decide_one(
        &self,
        limit: Option<(&Arc<str>, &GlobalRateLimit, Option<String>)>,
        hits: u32,
        now: Duration,
    ) -> Outcome {
        let metrics = &self.inner.metrics;
        let Some((name, limit, counter)) = limit else {
            // As in Envoy's reference service: what has no limit is not limited.
            metrics.decided(&self.inner.unknown, Decision::Unknown, hits);
            return Outcome {
                status: DescriptorStatus {
                    code: Code::Ok as i32,
                    ..Default::default()
                },
                degraded: false,
                retry_after: None,
            };
        };
        let window = Window::containing(now, limit.unit.seconds());
        let key = window.counter_key(counter.as_deref().unwrap_or(name));
        let mut status = DescriptorStatus {
            code: Code::Ok as i32,
            current_limit: Some(RlsLimit {
                name: name.to_string(),
                requests_per_unit: limit.requests_per_unit,
                unit: unit_of(limit.unit) as i32,
            }),
            limit_remaining: 0,
            duration_until_reset: Some(pb_duration(window.until_end(now))),
            quota: None,
        };
        let quota = |requests: u32| Quota {
            requests,
            id: name.to_string(),
            expiration_specifier: Some(ExpirationSpecifier::ValidUntil(Timestamp {
                seconds: window.end().as_secs() as i64,
                nanos: 0,
            })),
        };
        let over = match self
            .inner
            .store
            .incr(&key, u64::from(hits), window.counter_ttl())
            .await
        {
            Ok(counter) => {
                self.store_answered();
                let grant = Grant::compute(limit.requests_per_unit, hits, counter);
                status.limit_remaining = grant.remaining;
                // A lease client uses the quota even when over the limit.
                status.quota = (grant.granted >= 1).then(|| quota(grant.granted));
                let over = !grant.all_of(hits);
                let decision = if over {
                    Decision::OverLimit
                } else {
                    Decision::Ok
                };
                metrics.decided(name, decision, hits);
                over
            }
            Err(e) => {
                self.store_failed(&e);
                let over = limit.failure_mode == FailureMode::Closed;
                let decision = if over {
                    Decision::FailedClosed
                } else {
                    // Fail open: lease clients get all they asked for.
                    status.quota = Some(quota(hits));
                    Decision::FailedOpen
                };
                metrics.decided(name, decision, hits);
                status.code = if over { Code::OverLimit } else { Code::Ok } as i32;
                return Outcome {
                    status,
                    degraded: true,
                    retry_after: over.then(|| window.retry_after_secs(now)),
                };
            }
        };
        if over {
            status.code = Code::OverLimit as i32;
        }
        Outcome {
            status,
            degraded: false,
            retry_after: over.then(|| window.retry_after_secs(now)),
        }
    }

    fn store_answered(&self) {
        let inner = &self.inner;
        inner.metrics.set_store_up(true);
        if !inner.store_up.swap(true, Ordering::AcqRel) {
            tracing::info!(
                store = %inner.store.describe(),
                "rate-limit store answers again; limits are counted again"
            );
        }
    }

    fn store_failed(&self, error: &StoreError) {
        let inner = &self.inner;
        inner.metrics.store_error(inner.store.kind());
        inner.metrics.set_store_up(false);
        // Logged once per outage, not per request.
        if inner.store_up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                store = %inner.store.describe(),
                %error,
                "rate-limit store unavailable; each limit's failureMode decides until it answers again"
            );
        }
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitServer {
    async fn should_rate_limit(
        &self,
        request: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, Status> {
        RateLimitServer::should_rate_limit(self, request.get_ref())
            .await
            .map(tonic::Response::new)
    }
}

/// The weft limit a descriptor names: `[("weft-policy", <known>)]`, or
/// with a second entry `("source_cluster", <calling Service>)` (Envoy's
/// `source_cluster` action), and the counter's name: the policy's, or for
/// a `perSource` limit the policy's and the caller's (`name` taken as
/// `name.default`, as weft reads a node's cluster).
fn weft_limit<'l>(
    limits: &'l Limits,
    d: &RateLimitDescriptor,
) -> Option<(&'l Arc<str>, &'l GlobalRateLimit, Option<String>)> {
    let (policy, source) = match d.entries.as_slice() {
        [entry] => (entry, None),
        [entry, source] if source.key == GlobalRateLimit::SOURCE_KEY => (entry, Some(source)),
        _ => return None,
    };
    if policy.key != GlobalRateLimit::DESCRIPTOR_KEY {
        return None;
    }
    let (name, limit) = limits.get(&policy.value)?;
    let counter = match source {
        Some(s) if limit.per_source => {
            let caller = if s.value.contains('.') {
                s.value.clone()
            } else {
                format!("{}.{}", s.value, weft_model::DEFAULT_NAMESPACE)
            };
            Some(format!("{name}|{caller}"))
        }
        // One counter for everyone; a `perSource` limit asked without a
        // caller counts under the caller `unknown`.
        _ if limit.per_source => Some(format!("{name}|unknown")),
        _ => None,
    };
    Some((name, limit, counter))
}

/// The descriptor's own `hits_addend` when set, else the request's; 0 is 1.
fn hits_of(d: &RateLimitDescriptor, request_hits: u32) -> u32 {
    let hits = match &d.hits_addend {
        Some(h) => u32::try_from(h.value).unwrap_or(u32::MAX),
        None => request_hits,
    };
    hits.max(1)
}

fn response_of(outcomes: Vec<Outcome>) -> RateLimitResponse {
    let over = outcomes
        .iter()
        .any(|o| o.status.code == Code::OverLimit as i32);
    let mut headers = Vec::new();
    if let Some(secs) = outcomes.iter().filter_map(|o| o.retry_after).max() {
        headers.push(header("retry-after", secs.to_string()));
    }
    if outcomes.iter().any(|o| o.degraded) {
        headers.push(header(DEGRADED_HEADER, STORE_UNAVAILABLE.to_string()));
    }
    RateLimitResponse {
        overall_code: if over { Code::OverLimit } else { Code::Ok } as i32,
        statuses: outcomes.into_iter().map(|o| o.status).collect(),
        response_headers_to_add: headers,
        ..Default::default()
    }
}

fn header(key: &str, value: String) -> HeaderValue {
    HeaderValue {
        key: key.to_string(),
        value,
        raw_value: Vec::new(),
    }
}

fn unit_of(unit: RateLimitUnit) -> Unit {
    match unit {
        RateLimitUnit::Second => Unit::Second,
        RateLimitUnit::Minute => Unit::Minute,
        RateLimitUnit::Hour => Unit::Hour,
        RateLimitUnit::Day => Unit::Day,
    }
}

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests;
