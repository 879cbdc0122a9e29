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

pub mod balance;
pub mod budget;
pub mod health;
pub mod hedge;
pub mod latency;
pub mod retry;
pub mod rng;
