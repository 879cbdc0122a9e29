//! The control plane's own metrics; the ADS server adds its stream and push
//! counters (`weft_xds_*`) when `/metrics` is rendered.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub struct ControlMetrics {
    registry: Registry,
    pub config_generation: Gauge,
    pub config_reloads: Counter,
    pub config_errors: Counter,
    pub config_last_error: Gauge,
    /// When the newest generation started its push (Unix seconds): the
    /// validated config was handed to the snapshot cache. Splits a config
    /// change's latency into noticing + loading (before) and translation +
    /// push + ACK (after).
    pub config_published_at: Gauge<f64, AtomicU64>,
    pub translate_seconds: Histogram,
}

impl ControlMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft_control");
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the config served (1 = first load)",
            config_generation.clone(),
        );
        let config_reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Config changes published",
            config_reloads.clone(),
        );
        let config_errors = Counter::default();
        registry.register(
            "config_errors",
            "Config changes rejected (the last good config stayed)",
            config_errors.clone(),
        );
        let config_last_error = Gauge::default();
        registry.register(
            "config_last_error",
            "1 while the newest config on disk is rejected",
            config_last_error.clone(),
        );
        let config_published_at = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "config_last_publish_timestamp_seconds",
            "When the newest config generation, validated, started its push (Unix time)",
            config_published_at.clone(),
        );
        let translate_seconds =
            Histogram::new([0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        registry.register(
            "translate_seconds",
            "Time to translate a config change into every group's snapshot",
            translate_seconds.clone(),
        );
        Self {
            registry,
            config_generation,
            config_reloads,
            config_errors,
            config_last_error,
            config_published_at,
            translate_seconds,
        }
    }

    /// OpenMetrics text of these metrics, without the final `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode_registry(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
