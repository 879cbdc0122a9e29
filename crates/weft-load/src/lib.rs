//! `weft load` and `weft capacity`: an open-loop load generator whose
//! latencies are corrected for coordinated omission, and a search for the
//! highest rate that meets an SLO.
//!
//! - [`spec`]: what to send, how fast, for how long ([`LoadSpec`]).
//! - [`schedule`]: the intended send times, fixed before the run.
//! - [`run`]: drives HTTP/1.1, h2c or gRPC connections against the
//!   schedule (or closed loop for `--rate max`) and returns a [`Report`].
//! - [`report`]: the JSON schema (`--json`) and the human table.
//!
//! How a run works: a pacer thread walks the schedule and hands each due
//! request to a shared queue; connection tasks take them as they are free
//! (an HTTP/1.1 connection one at a time, an HTTP/2 one up to `streams` at
//! once). Latency is measured from the due time, service time from the
//! moment the request left. The tool's own lateness (the pacer behind, or a
//! free connection's task slow to wake) is measured separately as send lag:
//! when it grows the report says the client saturated instead of passing its
//! own delay off as the server's.

pub mod capacity;
mod conn;
mod engine;
mod grpc;
pub mod grpc_message;
mod h1;
mod outcome;
mod progress;
pub mod report;
pub mod schedule;
pub mod spec;
mod stats;

pub use engine::{LoadError, run};
pub use hdrhistogram::Histogram;
pub use progress::{Live, LiveSnapshot};
pub use report::{Percentiles, Report, StepReport};
pub use spec::{LoadSpec, ProgressMode, Protocol, RatePlan, Target};
