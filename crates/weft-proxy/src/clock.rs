//! The proxy's monotonic clock for the policy cores, which take time as a
//! `Duration` since an epoch: here the first use in the process.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Now, as the policy cores count time.
pub fn now() -> Duration {
    epoch().elapsed()
}

/// `instant` as the policy cores count time.
pub fn at(instant: Instant) -> Duration {
    instant.saturating_duration_since(epoch())
}
