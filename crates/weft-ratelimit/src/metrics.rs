//! The service's Prometheus metrics (`weft_ratelimit_*`). Label values are
//! bounded: descriptors come from config (unknown ones are counted under
//! `descriptor="unknown"`), decisions and stores are fixed words.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What the service answered for one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Every hit fit under the limit.
    Ok,
    /// Some or all hits did not fit.
    OverLimit,
    /// The store failed; the limit's failureMode is open: admitted.
    FailedOpen,
    /// The store failed; the limit's failureMode is closed: refused.
    FailedClosed,
    /// Not a weft limit (other domain, unknown descriptor): admitted.
    Unknown,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Ok => "ok",
            Decision::OverLimit => "over_limit",
            Decision::FailedOpen => "failed_open",
            Decision::FailedClosed => "failed_closed",
            Decision::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DecisionLabels {
    descriptor: Arc<str>,
    decision: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    hits: Family<DecisionLabels, Counter>,
    store_errors: Family<StoreLabels, Counter>,
    store_up: Gauge,
    pub request_seconds: Histogram,
}

impl Metrics {
    pub fn new(store: &'static str) -> Self {
        let mut registry = Registry::with_prefix("weft_ratelimit");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Descriptors decided, by descriptor and decision (ok, over_limit, failed_open, failed_closed, unknown)",
            decisions.clone(),
        );
        let hits = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "hits",
            "Hits asked for (hits_addend), by descriptor and decision",
            hits.clone(),
        );
        let store_errors = Family::<StoreLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Counter increments that failed or timed out",
            store_errors.clone(),
        );
        // Created at zero so the series exists before the first failure.
        store_errors.get_or_create(&StoreLabels { store }).inc_by(0);
        let store_up = Gauge::default();
        registry.register(
            "store_up",
            "1 while the last counter increment succeeded (or none was tried yet), 0 after a failure",
            store_up.clone(),
        );
        store_up.set(1);
        let request_seconds = Histogram::new([
            0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]);
        registry.register(
            "request_seconds",
            "Time to answer one ShouldRateLimit call",
            request_seconds.clone(),
        );
        Metrics {
            registry,
            decisions,
            hits,
            store_errors,
            store_up,
            request_seconds,
        }
    }

    pub fn decided(&self, descriptor: &Arc<str>, decision: Decision, hits: u32) {
        let labels = DecisionLabels {
            descriptor: descriptor.clone(),
            decision: decision.as_str(),
        };
        self.decisions.get_or_create(&labels).inc();
        self.hits.get_or_create(&labels).inc_by(u64::from(hits));
    }

    pub fn store_error(&self, store: &'static str) {
        self.store_errors
            .get_or_create(&StoreLabels { store })
            .inc();
    }

    pub fn set_store_up(&self, up: bool) {
        self.store_up.set(i64::from(up));
    }

    /// Appends the OpenMetrics text of these metrics, without `# EOF`.
    pub fn encode(&self, out: &mut String) {
        prometheus_client::encoding::text::encode_registry(out, &self.registry)
            .expect("writing to a String cannot fail");
    }
}
