//! Global rate limits (TrafficPolicy `rateLimit.global`) in a weft proxy:
//! quota leased in batches from the rate-limit service, spent locally
//! ([`weft_policy::quota`] has the rules), so no request waits on a call
//! to the service: when this proxy has no quota in hand and the window is
//! not known to be exhausted (a new window, a burst), requests are
//! admitted on credit while the batch is fetched, paid back from it; only
//! past one batch of credit does a request wait for it, at most
//! [`FETCH_TIMEOUT`].
//!
//! The service speaks Envoy's `RateLimitService` protocol (`weft control`
//! serves it on its xDS port, `weft ratelimit` standalone): a batch is a
//! `ShouldRateLimit` with `hits_addend` = the batch size, the grant is the
//! descriptor status's `quota.requests` (part of the batch when less is
//! left in the window), `OVER_LIMIT` says the window is exhausted and
//! `duration_until_reset` when it ends.
//!
//! One lease per descriptor (`namespace/policy`) in the proxy, shared by
//! every route rule the policy covers, kept across config changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use weft_model::{FailureMode, GlobalRateLimit};
use weft_policy::quota::{Grant, QuotaLease, RETRY_AFTER_FAILURE, Take};
use weft_xds::envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    RateLimitDescriptor, rate_limit_descriptor,
};
use weft_xds::envoy_types::pb::envoy::service::ratelimit::v3::{
    RateLimitRequest, rate_limit_response, rate_limit_service_client::RateLimitServiceClient,
};

use crate::metrics::GlobalLimitLabels;

/// The longest a batch request may take before the failure mode applies.
pub const FETCH_TIMEOUT: Duration = Duration::from_millis(100);
/// The response header the service adds when it answered from its failure
/// mode (its counters were unreachable).
const DEGRADED_HEADER: &str = "x-weft-ratelimit-degraded";

type Client = RateLimitServiceClient<tonic::transport::Channel>;

/// Counters of global limit events, by descriptor and outcome.
pub type GlobalLimitEvents = Family<GlobalLimitLabels, Counter>;

/// The proxy's global limits: the service's address and one lease per
/// descriptor.
pub struct GlobalLimits {
    service: Option<String>,
    /// This proxy's Service (`name.namespace`), sent for `perSource` limits.
    source: String,
    client: OnceLock<Result<Client, String>>,
    /// A one-thread runtime for the calls to the service, so they never
    /// share a worker with requests.
    runtime: OnceLock<Result<tokio::runtime::Handle, String>>,
    leases: Mutex<HashMap<String, Arc<Lease>>>,
}

impl std::fmt::Debug for GlobalLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalLimits")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl GlobalLimits {
    /// `service`: `HOST:PORT` or an `http://` URI; `None`: every global
    /// limit applies its failure mode.
    /// `source`: this proxy's Service, `name.namespace`.
    pub fn new(service: Option<String>, source: impl Into<String>) -> Arc<Self> {
        Arc::new(GlobalLimits {
            service,
            source: source.into(),
            client: OnceLock::new(),
            runtime: OnceLock::new(),
            leases: Mutex::new(HashMap::new()),
        })
    }

    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// The lease of `limit`'s descriptor (the same one for every rule the
    /// policy covers; its limit and failure mode updated).
    pub fn lease(self: &Arc<Self>, limit: &GlobalRateLimit) -> Arc<Lease> {
        let mut leases = self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let lease = leases
            .entry(limit.descriptor.clone())
            .or_insert_with(|| {
                Arc::new(Lease {
                    owner: self.clone(),
                    descriptor: limit.descriptor.as_str().into(),
                    config: Mutex::new(limit.clone()),
                    state: Mutex::new(QuotaLease::new(limit.requests_per_unit)),
                    fetching: tokio::sync::Mutex::new(()),
                    prefetching: AtomicBool::new(false),
                    down: AtomicBool::new(false),
                })
            })
            .clone();
        let mut config = lease.config.lock().unwrap_or_else(|e| e.into_inner());
        if *config != *limit {
            *config = limit.clone();
            lease
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_limit(limit.requests_per_unit);
        }
        drop(config);
        lease
    }

    fn runtime(&self) -> Result<tokio::runtime::Handle, String> {
        self.runtime
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::Builder::new()
                    .name("weft-ratelimit".into())
                    .spawn(move || {
                        match tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            Ok(rt) => {
                                let _ = tx.send(Ok(rt.handle().clone()));
                                rt.block_on(std::future::pending::<()>());
                            }
                            Err(e) => {
                                let _ = tx.send(Err(format!("rate-limit client runtime: {e}")));
                            }
                        }
                    })
                    .map_err(|e| format!("rate-limit client thread: {e}"))?;
                rx.recv()
                    .map_err(|e| format!("rate-limit client thread: {e}"))?
            })
            .clone()
    }

    /// The client (made on the limits' runtime: its connection lives there).
    fn client(&self) -> Result<Client, String> {
        let Some(service) = &self.service else {
            return Err("no rate-limit service (start the proxy with --ratelimit or --xds)".into());
        };
        self.client
            .get_or_init(|| {
                let uri = if service.contains("://") {
                    service.clone()
                } else {
                    format!("http://{service}")
                };
                let endpoint = tonic::transport::Endpoint::from_shared(uri)
                    .map_err(|e| format!("rate-limit service {service:?}: {e}"))?
                    .connect_timeout(FETCH_TIMEOUT)
                    .tcp_nodelay(true);
                Ok(RateLimitServiceClient::new(endpoint.connect_lazy()))
            })
            .clone()
    }
}

/// What the limit decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalDecision {
    Allowed,
    /// Refused: the window's limit is spent (or the service is unreachable
    /// and the limit fails closed); `reset`: when to try again.
    Limited {
        limit: u32,
        reset: Duration,
    },
}

impl GlobalDecision {
    /// `x-ratelimit-*` and `retry-after` for a refusal.
    /// Written as the local bucket's refusals are (at least 1 s: a window
    /// ending this instant still means "try again").
    pub fn headers(limit: u32, reset: Duration) -> Vec<(&'static str, String)> {
        let reset = reset.max(Duration::from_secs(1));
        weft_policy::ratelimit::Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_after: reset,
            retry_after: Some(reset),
        }
        .headers()
    }
}

/// One descriptor's quota in this proxy.
pub struct Lease {
    owner: Arc<GlobalLimits>,
    descriptor: Arc<str>,
    config: Mutex<GlobalRateLimit>,
    state: Mutex<QuotaLease>,
    /// One batch request at a time.
    fetching: tokio::sync::Mutex<()>,
    prefetching: AtomicBool,
    /// The service is failing (for log lines on changes only).
    down: AtomicBool,
}

impl Lease {
    fn count(&self, events: &GlobalLimitEvents, outcome: &'static str, n: u64) {
        events
            .get_or_create(&GlobalLimitLabels {
                descriptor: self.descriptor.clone(),
                outcome,
            })
            .inc_by(n);
    }

    fn config(&self) -> GlobalRateLimit {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Admits or refuses one request.
    pub async fn acquire(self: &Arc<Self>, events: &GlobalLimitEvents) -> GlobalDecision {
        let now = Instant::now();
        let (take, prefetch) = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match s.take(now) {
                Take::NeedQuota if s.borrow(now) => (Take::Allowed, true),
                t => (t, t == Take::Allowed && s.wants_prefetch(now)),
            }
        };
        let take = match take {
            Take::NeedQuota => {
                self.count(events, "waited", 1);
                let _one = self.fetching.lock().await;
                let again = self.take_again();
                if again == Take::NeedQuota {
                    self.fetch(events).await;
                    self.take_again()
                } else {
                    again
                }
            }
            t => t,
        };
        if prefetch && !self.prefetching.swap(true, Ordering::AcqRel) {
            let lease = self.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let _one = lease.fetching.lock().await;
                let wanted = lease
                    .state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .wants_prefetch(Instant::now());
                if wanted {
                    lease.fetch(&events).await;
                }
                lease.prefetching.store(false, Ordering::Release);
            });
        }
        if take == Take::Allowed {
            return GlobalDecision::Allowed;
        }
        let config = self.config();
        match take {
            Take::Allowed => GlobalDecision::Allowed,
            Take::Limited { reset } => {
                self.count(events, "refused", 1);
                GlobalDecision::Limited {
                    limit: config.requests_per_unit,
                    reset,
                }
            }
            // The service answered without granting and without saying
            // the window is over: refuse this one, ask again next time.
            Take::NeedQuota => {
                self.count(events, "refused", 1);
                GlobalDecision::Limited {
                    limit: config.requests_per_unit,
                    reset: Duration::from_secs(1),
                }
            }
            Take::Unavailable => match config.failure_mode {
                FailureMode::Open => {
                    self.count(events, "failed_open", 1);
                    GlobalDecision::Allowed
                }
                FailureMode::Closed => {
                    self.count(events, "failed_closed", 1);
                    GlobalDecision::Limited {
                        limit: config.requests_per_unit,
                        reset: RETRY_AFTER_FAILURE,
                    }
                }
            },
        }
    }

    fn take_again(&self) -> Take {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_again(Instant::now())
    }

    /// Asks the service for the next batch and records its answer.
    async fn fetch(&self, events: &GlobalLimitEvents) {
        let (batch, overdrawn_before) = {
            let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (s.request_size(Instant::now()), s.overdrawn())
        };
        // The call runs on the limits' own thread, off the data path.
        let request = self.request(batch);
        let owner = self.owner.clone();
        let answer = match self.owner.runtime() {
            Ok(rt) => rt
                .spawn(async move { call(owner.client()?, request).await })
                .await
                .unwrap_or_else(|e| Err(format!("rate-limit call failed: {e}"))),
            Err(e) => Err(e),
        };
        let now = Instant::now();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Ok((grant, degraded)) => {
                s.granted(now, grant);
                let overdrawn = s.overdrawn() - overdrawn_before;
                drop(s);
                if overdrawn > 0 {
                    self.count(events, "overdrawn", overdrawn);
                }
                self.count(events, "batches", 1);
                self.count(events, "leased", u64::from(grant.granted));
                if grant.exhausted {
                    self.count(events, "windows_exhausted", 1);
                }
                if degraded {
                    self.count(events, "service_degraded", 1);
                }
                if self.down.swap(false, Ordering::AcqRel) {
                    tracing::info!(descriptor = %self.descriptor, "rate-limit service reachable again");
                }
            }
            Err(error) => {
                s.failed(now);
                let overdrawn = s.overdrawn() - overdrawn_before;
                drop(s);
                if overdrawn > 0 {
                    self.count(events, "overdrawn", overdrawn);
                }
                self.count(events, "service_errors", 1);
                if !self.down.swap(true, Ordering::AcqRel) {
                    let mode = self.config().failure_mode;
                    tracing::warn!(
                        descriptor = %self.descriptor,
                        %error,
                        failure_mode = mode.as_str(),
                        "rate-limit service unreachable: the limit fails {} until it answers (retried every {:?})",
                        mode.as_str(),
                        RETRY_AFTER_FAILURE
                    );
                }
            }
        }
    }

    /// The `ShouldRateLimit` request for `batch` hits.
    fn request(&self, batch: u32) -> RateLimitRequest {
        let mut entries = vec![rate_limit_descriptor::Entry {
            key: GlobalRateLimit::DESCRIPTOR_KEY.into(),
            value: self.descriptor.to_string(),
        }];
        if self.config().per_source {
            entries.push(rate_limit_descriptor::Entry {
                key: GlobalRateLimit::SOURCE_KEY.into(),
                value: self.owner.source.clone(),
            });
        }
        RateLimitRequest {
            domain: GlobalRateLimit::DOMAIN.into(),
            descriptors: vec![RateLimitDescriptor {
                entries,
                ..Default::default()
            }],
            hits_addend: batch,
        }
    }
}

/// One `ShouldRateLimit`: the grant and whether the service answered from
/// its failure mode.
async fn call(mut client: Client, request: RateLimitRequest) -> Result<(Grant, bool), String> {
    let batch = request.hits_addend;
    let mut request = tonic::Request::new(request);
    request.set_timeout(FETCH_TIMEOUT);
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.should_rate_limit(request))
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let over = response.overall_code == rate_limit_response::Code::OverLimit as i32;
    let status = response.statuses.first();
    let granted = match status.and_then(|s| s.quota.as_ref()) {
        Some(q) => q.requests.min(batch),
        // A service that grants no quota (not weft's): all or nothing.
        None if over => 0,
        None => batch,
    };
    let reset = status
        .and_then(|s| s.duration_until_reset.as_ref())
        .map(|d| {
            Duration::from_secs(d.seconds.max(0) as u64)
                + Duration::from_nanos(d.nanos.max(0) as u64)
        })
        .unwrap_or(Duration::from_secs(1));
    let degraded = response
        .response_headers_to_add
        .iter()
        .any(|h| h.key.eq_ignore_ascii_case(DEGRADED_HEADER));
    Ok((
        Grant {
            granted,
            exhausted: over,
            reset,
        },
        degraded,
    ))
}
