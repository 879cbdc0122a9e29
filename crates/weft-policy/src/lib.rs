//! weft's governance algorithms as pure cores: no network I/O, no protobuf,
//! no clock of their own. The proxy wraps them; tests drive them directly.
//!
//! Time is always passed in as `now: Duration` since an arbitrary, monotonic
//! epoch (the proxy uses its start), so tests run on a simulated clock.
//! Randomness comes through [`rng::Random`], seedable in tests.
//!
//! - [`balance`]: weighted round-robin (route splits and plain balancing).
//! - [`latency`]: latency-aware balancing: P2C over peak-EWMA cost, least
//!   request, locality preference, slow start.
//! - [`health`]: failure classification from user-defined codes, decaying
//!   per-endpoint success scores, weight multipliers and ejection.
//! - [`hedge`], [`budget`], [`retry`]: backup requests with fixed or
//!   percentile delays, the budget shared by hedges and retries, the
//!   breaker, and retry backoff.
//! - [`deadline`]: deadline propagation: the caller's deadline from
//!   `grpc-timeout` and the millisecond headers, `min(route, caller)`, and
//!   what is left (minus a margin) for each attempt.
//! - [`admission`]: traffic drop by ratio (with dry run) and fault
//!   injection (delay and abort at percentages), decided per request.
//! - [`ratelimit`]: local rate limits, a lock-free token bucket per route
//!   or per proxy and a bounded per-source limiter, with the
//!   `x-ratelimit-*` / `retry-after` response headers.
//! - [`trace`]: trace context propagation (W3C `traceparent`/`tracestate`,
//!   B3 single and multi-header): read the caller's context, make this
//!   hop's span, write it on, sample new traces by ratio.

pub mod admission;
pub mod balance;
pub mod budget;
pub mod deadline;
pub mod health;
pub mod hedge;
pub mod latency;
pub mod quota;
pub mod ratelimit;
pub mod retry;
pub mod rng;
pub mod trace;
