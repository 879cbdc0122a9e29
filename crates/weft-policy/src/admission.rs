//! Admission decisions made before a request is forwarded: traffic drop
//! ([`DropRatio`]) and fault injection ([`Fault`]).
//!
//! **Drop.** A `dropRatio` in `[0, 1]` attached by the proxy to a Service,
//! a route or a source -> destination pair. Each request is selected with
//! probability exactly `ratio` (ratio 0 never, ratio 1 always; "remove a
//! downstream" is ratio 1 on the pair of that source service and the
//! destination, see [`DropRatio::deny_all`]). A selected request is answered
//! locally with [`DROP_HTTP_STATUS`] 503, or gRPC [`DROP_GRPC_CODE`]
//! `UNAVAILABLE`, with the header [`DROP_ERROR_HEADER`]`: dropped`, and
//! counted. In dry-run mode the decision still reports the selection so the
//! proxy counts it ("would drop"), but the request is forwarded. Envoy has no
//! single equivalent; the closest is a fault filter abort at a percentage, or
//! `runtime_fraction` on a route.
//!
//! **Fault injection.** Per route, after Envoy's `envoy.filters.http.fault`:
//! a fixed delay applied to a percentage of requests, and an abort (an HTTP
//! status or a gRPC status) applied to a percentage of requests. As in
//! Envoy, the two are independent draws, so with delay at 50% and abort at
//! 10%, 5% of requests are both delayed and aborted; the proxy waits the
//! delay first and then aborts, as Envoy does. Envoy's percentages are
//! `FractionalPercent` (numerator over 100, 10 000 or 1 000 000); here they
//! are an `f64` in `[0, 100]`, exact in expectation.
//!
//! Matching stays in the proxy: which Service, route or source pair a
//! request belongs to, and fault targeting by request header (Envoy's
//! `headers` match on the fault filter), are decided there before the
//! proxy asks these cores. They see only the chosen configuration and a
//! random source, so they stay pure and are tested with a seeded
//! [`SplitMix64`](crate::rng::SplitMix64).

use std::time::Duration;

use crate::rng::Random;

/// HTTP status for a dropped request.
pub const DROP_HTTP_STATUS: u16 = 503;

/// gRPC status code for a dropped gRPC request (`UNAVAILABLE`).
pub const DROP_GRPC_CODE: u32 = 14;

/// The response header naming why the proxy answered itself, and its value
/// for a drop.
pub const DROP_ERROR_HEADER: (&str, &str) = ("weft-error", "dropped");

/// The longest fault delay accepted: anything longer is a unit mistake
/// (seconds for milliseconds), and would hold connections for hours.
pub const MAX_FAULT_DELAY: Duration = Duration::from_secs(3_600);

/// Why an admission configuration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmissionConfigError {
    #[error("dropRatio must be between 0.0 and 1.0 (a share of requests), got {0}")]
    DropRatio(f64),
    #[error("fault delay percentage must be between 0 and 100, got {0}")]
    DelayPercentage(f64),
    #[error("fault delay duration must be at most {MAX_FAULT_DELAY:?}, got {0:?}")]
    DelayDuration(Duration),
    #[error("fault abort percentage must be between 0 and 100, got {0}")]
    AbortPercentage(f64),
    #[error("fault abort httpStatus must be between 200 and 599, got {0}")]
    AbortHttpStatus(u16),
    #[error("fault abort grpcStatus must be between 1 and 16 (0 is OK, not a fault), got {0}")]
    AbortGrpcStatus(u32),
}

/// Drops a share of requests, or in dry-run mode only counts them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropRatio {
    /// Share of requests dropped, in `[0, 1]`.
    pub ratio: f64,
    /// Count the requests that would be dropped, forward them anyway.
    pub dry_run: bool,
}

/// The verdict of a [`DropRatio`] on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropDecision {
    /// The draw picked this request for dropping: count it (as dropped, or
    /// as "would drop" in dry run).
    pub selected: bool,
    /// The ratio is in dry-run mode: a selected request is still forwarded.
    pub dry_run: bool,
}

impl DropDecision {
    /// Whether the proxy answers 503 / `UNAVAILABLE` instead of forwarding.
    pub fn should_drop(&self) -> bool {
        self.selected && !self.dry_run
    }
}

impl DropRatio {
    /// Drops nothing.
    pub const NONE: DropRatio = DropRatio {
        ratio: 0.0,
        dry_run: false,
    };

    /// Drops every request: "remove a downstream" when attached to the pair
    /// of one source service and its destination.
    pub fn deny_all() -> Self {
        Self {
            ratio: 1.0,
            dry_run: false,
        }
    }

    pub fn validate(&self) -> Result<(), AdmissionConfigError> {
        // `contains` is false for NaN.
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err(AdmissionConfigError::DropRatio(self.ratio));
        }
        Ok(())
    }

    /// Draws once for one request.
    pub fn decide(&self, rng: &mut impl Random) -> DropDecision {
        DropDecision {
            selected: chance(self.ratio, rng),
            dry_run: self.dry_run,
        }
    }
}

/// `true` with probability `p` in `[0, 1]`: `next_f64` is uniform over
/// multiples of 2^-53 in `[0, 1)`, so 0 never fires, 1 always does, and
/// anything between fires with probability `p` to within 2^-53. Draws only
/// when the outcome is uncertain, so a 0% or 100% rule costs nothing.
fn chance(p: f64, rng: &mut impl Random) -> bool {
    if p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rng.next_f64() < p
    }
}

/// What a fault abort answers instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// An HTTP status in `200..=599` (Envoy's `http_status`).
    Http(u16),
    /// A gRPC status code in `1..=16` (Envoy's `grpc_status`), sent as
    /// `grpc-status` in a trailers-only response with HTTP 200.
    Grpc(u32),
}

/// A fixed delay applied to a percentage of requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelayFault {
    /// How long the proxy holds the request before going on, at most
    /// [`MAX_FAULT_DELAY`].
    pub delay: Duration,
    /// Percentage of requests delayed, in `[0, 100]`.
    pub percentage: f64,
}

/// An abort applied to a percentage of requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbortFault {
    pub abort: Abort,
    /// Percentage of requests aborted, in `[0, 100]`.
    pub percentage: f64,
}

/// A route's fault injection (Envoy's `HTTPFault` without the header match
/// and `max_active_faults`, which stay in the proxy).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fault {
    pub delay: Option<DelayFault>,
    pub abort: Option<AbortFault>,
}

/// What to do to one request. Both may be set: delay first, then abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultAction {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl FaultAction {
    /// Forward the request untouched.
    pub fn is_none(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }
}

impl Fault {
    pub fn validate(&self) -> Result<(), AdmissionConfigError> {
        if let Some(delay) = &self.delay {
            if !valid_percentage(delay.percentage) {
                return Err(AdmissionConfigError::DelayPercentage(delay.percentage));
            }
            if delay.delay > MAX_FAULT_DELAY {
                return Err(AdmissionConfigError::DelayDuration(delay.delay));
            }
        }
        if let Some(abort) = &self.abort {
            if !valid_percentage(abort.percentage) {
                return Err(AdmissionConfigError::AbortPercentage(abort.percentage));
            }
            match abort.abort {
                Abort::Http(status) if !(200..=599).contains(&status) => {
                    return Err(AdmissionConfigError::AbortHttpStatus(status));
                }
                Abort::Grpc(code) if !(1..=16).contains(&code) => {
                    return Err(AdmissionConfigError::AbortGrpcStatus(code));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Draws for one request: one independent draw for the delay and one
    /// for the abort, as Envoy's fault filter does.
    pub fn decide(&self, rng: &mut impl Random) -> FaultAction {
        FaultAction {
            delay: self
                .delay
                .filter(|d| chance(d.percentage / 100.0, rng))
                .map(|d| d.delay),
            abort: self
                .abort
                .filter(|a| chance(a.percentage / 100.0, rng))
                .map(|a| a.abort),
        }
    }
}

fn valid_percentage(p: f64) -> bool {
    (0.0..=100.0).contains(&p)
}

#[cfg(test)]
mod tests;
