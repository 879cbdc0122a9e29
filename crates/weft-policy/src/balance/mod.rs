//! Choosing one of several weighted targets.

mod wrr;

pub use wrr::WeightedRoundRobin;

/// Picks the index of the next target to use. Implementations are shared by
/// every request of a proxy, so `pick` takes `&self` and must be cheap.
pub trait Balance: Send + Sync {
    /// The index of the chosen target, or `None` when no target can take
    /// traffic (no targets, or all weights are zero).
    fn pick(&self) -> Option<usize>;
}
