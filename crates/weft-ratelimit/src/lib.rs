//! weft's global rate-limit service: one counter per `rateLimit.global`
//! limit, shared by every proxy (and, through Redis, by every replica of the
//! service). Served by `weft control` on its xDS port and by the standalone
//! `weft ratelimit`.
//!
//! # Protocol
//!
//! Envoy's `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`,
//! as its reference implementation answers it, plus a cacheable quota:
//!
//! - A weft limit is asked for in domain `weft` with one descriptor of one
//!   entry, `("weft-policy", "<namespace>/<policy name>")`. Any other domain
//!   or descriptor, or a policy without a global limit, is answered `OK`
//!   with no `current_limit` (what has no limit is not limited). An empty
//!   domain or no descriptors is `INVALID_ARGUMENT`.
//! - Hits: the descriptor's `hits_addend` when set, else the request's; 0
//!   counts as 1.
//! - Fixed windows of one unit aligned to Unix time: the counter
//!   `weft:{descriptor}:{unit_secs}:{window}` is incremented by the hits.
//!   Of the hits, those that still fit under the limit are granted; the
//!   status is `OK` when all were, else `OVER_LIMIT` (and the response
//!   carries `retry-after`). `limit_remaining` and `duration_until_reset`
//!   describe the window.
//! - Quota: whenever at least one hit was granted, the status carries
//!   `quota { requests: granted, valid_until: window end, id: descriptor }`.
//!   Envoy sends 1 hit and reads only the code; a weft proxy leases a batch
//!   (`hits_addend = N`) and spends `quota.requests` locally until
//!   `valid_until`, even when the code is `OVER_LIMIT` (a partial grant).
//! - When the store fails or is slow (100 ms for Redis), the limit's
//!   `failureMode` decides: open answers `OK` with the whole quota, closed
//!   answers `OVER_LIMIT`; either way the response carries
//!   `x-weft-ratelimit-degraded: store-unavailable`.
//!
//! The pure arithmetic lives in [`window`]; the stores in [`store`].
//!
//! Must not depend on proxy or control-plane internals: it reads
//! `weft-model` config and speaks the protocol types of `envoy-types`.

#![forbid(unsafe_code)]

mod limits;
mod metrics;
mod service;
mod standalone;
pub mod store;
pub mod window;

pub use limits::Limits;
pub use service::{DEGRADED_HEADER, RateLimitServer, STORE_UNAVAILABLE};
pub use standalone::{RateLimitOptions, RunningRateLimit, StartError, start};
pub use store::{CounterStore, MemoryStore, RedisStore, StoreError};

/// The protocol types, for clients and tests.
pub mod proto {
    pub use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
        RateLimitDescriptor, rate_limit_descriptor::Entry,
    };
    pub use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
        Code, DescriptorStatus, Quota, RateLimit, quota::ExpirationSpecifier, rate_limit::Unit,
    };
    pub use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    pub use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
}

/// The counter store for an optional Redis URL: Redis when given (checked
/// now, connected lazily), else in memory. Must be called inside a Tokio
/// runtime.
pub fn store_for(redis: Option<&str>) -> Result<std::sync::Arc<dyn CounterStore>, StoreError> {
    Ok(match redis {
        Some(url) => std::sync::Arc::new(RedisStore::open(url)?),
        None => std::sync::Arc::new(MemoryStore::new()),
    })
}
