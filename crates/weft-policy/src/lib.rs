//! weft's governance algorithms as pure cores: no network I/O, no protobuf,
//! no clock of their own. The proxy wraps them; tests drive them directly.
//!
//! Today: weighted round-robin, used both to pick an endpoint of a Service and
//! to split a route's traffic between backend Services. The latency-aware
//! balancer, error-code weighting, hedging and budgets arrive behind the same
//! [`balance::Balance`] interface.

pub mod balance;
