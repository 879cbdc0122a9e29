//! Tests of the health module: the pure cores on a simulated clock.

mod classify;
mod outlier;
mod props;
mod scenario;
mod score;
