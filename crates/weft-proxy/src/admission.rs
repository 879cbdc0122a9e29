//! Admission and faults on the outbound path (issue 6), before a request is
//! balanced: callers denied on the route, the route's drop ratio (optionally
//! only for some callers; dry run counts without dropping), the route's
//! local token bucket (this proxy's requests; 429 / RESOURCE_EXHAUSTED with
//! `x-ratelimit-*` and `retry-after`), and injected
//! faults (delay, then abort) for requests carrying the policy's headers.
//! The caller is this sidecar's own Service, so source -> destination pairs
//! need no identity from the request.

use http::HeaderMap;
use weft_policy::rng::ThreadRng;

use crate::deadline::RequestDeadline;
use crate::error::ProxyError;
use crate::global_limit::GlobalDecision;
use crate::governed::RoutePolicy;
use crate::metrics::{PolicyReasonLabels, ProxyMetrics};

/// `source` (`name.namespace`) is listed as `name` or `name.namespace`.
fn listed(list: &[String], source: &str) -> bool {
    let name = source.split('.').next().unwrap_or(source);
    list.iter().any(|s| s == source || s == name)
}

/// Whether the request goes on; `Err` is the proxy's own answer.
pub async fn admit(
    policy: &RoutePolicy,
    source: &str,
    headers: &HeaderMap,
    deadline: &RequestDeadline,
    metrics: &ProxyMetrics,
) -> Result<(), ProxyError> {
    let count = |family: &prometheus_client::metrics::family::Family<
        PolicyReasonLabels,
        prometheus_client::metrics::counter::Counter,
    >,
                 reason: &'static str| {
        family
            .get_or_create(&PolicyReasonLabels {
                service: policy.labels.service.clone(),
                route: policy.labels.route.clone(),
                reason,
            })
            .inc();
    };
    if let Some(a) = policy.admission() {
        let dry = a.drop.dry_run;
        if listed(&a.denied_sources, source) {
            count(
                &metrics.policy.admission,
                if dry { "denied_dry_run" } else { "denied" },
            );
            if !dry {
                return Err(ProxyError::Denied(source.to_string()));
            }
        }
        if a.sources.is_empty() || listed(&a.sources, source) {
            let d = a.drop.decide(&mut ThreadRng);
            if d.selected {
                count(
                    &metrics.policy.admission,
                    if dry { "dropped_dry_run" } else { "dropped" },
                );
            }
            if d.should_drop() {
                return Err(ProxyError::Dropped);
            }
        }
    }
    if let Some(bucket) = policy.limiter() {
        let d = bucket.try_acquire(crate::clock::now());
        if !d.allowed {
            count(&metrics.policy.admission, "rate_limited");
            return Err(ProxyError::RateLimited(d.headers()));
        }
    }
    if let Some(lease) = policy.global()
        && let GlobalDecision::Limited { limit, reset } =
            lease.acquire(&metrics.policy.global_limit).await
    {
        count(&metrics.policy.admission, "rate_limited_global");
        return Err(ProxyError::RateLimited(GlobalDecision::headers(
            limit, reset,
        )));
    }
    if let Some(f) = policy.fault()
        && f.headers.iter().all(|(name, value)| {
            headers
                .get_all(name.as_str())
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes())
        })
    {
        let action = f.fault.decide(&mut ThreadRng);
        if let Some(delay) = action.delay {
            count(&metrics.policy.faults, "delay");
            // Never past the request's deadline.
            let wait = deadline.timeout().map_or(delay, |left| left.min(delay));
            tokio::time::sleep(wait).await;
        }
        if let Some(abort) = action.abort {
            count(&metrics.policy.faults, "abort");
            return Err(ProxyError::FaultAbort(abort));
        }
    }
    Ok(())
}
