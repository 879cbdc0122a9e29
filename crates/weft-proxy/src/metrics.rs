//! The proxy's Prometheus metrics (`prometheus-client`). Label values are
//! bounded: service and route names come from config, codes from the response;
//! never paths or client addresses.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `inbound` (in front of the local app) or `outbound` (calls the app makes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Direction {
    fn encode(&self, enc: &mut prometheus_client::encoding::LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        enc.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    /// The calling Service (`name.namespace`): this sidecar's own on
    /// outbound; on inbound the caller's sidecar's `x-weft-source`, else
    /// `unknown` (see [`SourceStats`]).
    pub source: Arc<str>,
    /// The destination Service: the callee on outbound, this sidecar's own
    /// on inbound.
    pub service: Arc<str>,
    pub route: Arc<str>,
    pub code: u16,
    /// The gRPC status (`0`..`16`) of a gRPC request, from the trailers
    /// when the response carries it there; empty for other requests.
    pub grpc_status: &'static str,
    /// The `weft-error` cause when the proxy answered itself, else empty.
    pub error: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LatencyLabels {
    pub direction: Direction,
    pub source: Arc<str>,
    pub service: Arc<str>,
    pub route: Arc<str>,
}

/// The label value of a gRPC status as sent on the wire: `0`..`16`; any
/// other value is UNKNOWN (`2`), as gRPC clients read it.
pub fn grpc_status_label(wire: &str) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    match wire.trim().parse::<usize>() {
        Ok(n) if n < CODES.len() => CODES[n],
        _ => CODES[2],
    }
}

/// gRPC OK, CANCELLED and INTERNAL as label values.
pub const GRPC_OK: &str = "0";
pub const GRPC_CANCELLED: &str = "1";
pub const GRPC_INTERNAL: &str = "13";

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    pub service: Arc<str>,
    pub endpoint: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HealthEventLabels {
    pub service: Arc<str>,
    /// Empty for cluster-wide events (panic mode).
    pub endpoint: Arc<str>,
    /// `ejected`, `readmitted`, `panic_entered`, `panic_left`.
    pub event: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PolicyLabels {
    pub service: Arc<str>,
    pub route: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PolicyReasonLabels {
    pub service: Arc<str>,
    pub route: Arc<str>,
    /// What happened (`sent`, `won`, `cancelled`) or why not (`budget`,
    /// `breaker`, ...).
    pub reason: &'static str,
}

/// Per-endpoint health, shared by every cluster (cheap clones).
#[derive(Clone, Default)]
pub struct HealthMetrics {
    pub events: Family<HealthEventLabels, Counter>,
    /// Effective weight / configured weight: health x slow start, 0 when
    /// ejected.
    pub weight: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    pub ejected: Family<EndpointLabels, Gauge>,
    /// The latency estimate the balancer uses (seconds), set each tick.
    pub latency: Family<EndpointLabels, Gauge<f64, AtomicU64>>,
    /// Attempts in flight to the endpoint, set each tick.
    pub in_flight: Family<EndpointLabels, Gauge>,
    /// Attempts the endpoint's failure codes judged failed.
    pub failures: Family<EndpointLabels, Counter>,
}

/// One endpoint's gauges, resolved when its cluster is built so the
/// periodic health step does no label hashing.
pub struct EndpointGauges {
    pub weight: Gauge<f64, AtomicU64>,
    pub ejected: Gauge,
    pub latency: Gauge<f64, AtomicU64>,
    pub in_flight: Gauge,
}

/// The `event` values of `weft_endpoint_health_events_total` that name an
/// endpoint.
const ENDPOINT_EVENTS: [&str; 2] = ["ejected", "readmitted"];

impl HealthMetrics {
    pub fn endpoint_gauges(&self, labels: &EndpointLabels) -> EndpointGauges {
        EndpointGauges {
            weight: self.weight.get_or_create(labels).clone(),
            ejected: self.ejected.get_or_create(labels).clone(),
            latency: self.latency.get_or_create(labels).clone(),
            in_flight: self.in_flight.get_or_create(labels).clone(),
        }
    }
}

impl ProxyMetrics {
    /// Removes every series of an endpoint that left the config (a
    /// replaced pod), so they do not pile up under churn nor show stale
    /// values.
    pub fn forget_endpoint(&self, labels: &EndpointLabels) {
        self.endpoint_requests.remove(labels);
        let h = &self.health;
        h.failures.remove(labels);
        h.weight.remove(labels);
        h.ejected.remove(labels);
        h.latency.remove(labels);
        h.in_flight.remove(labels);
        for event in ENDPOINT_EVENTS {
            h.events.remove(&HealthEventLabels {
                service: labels.service.clone(),
                endpoint: labels.endpoint.clone(),
                event,
            });
        }
    }
}

/// Retries and hedges, by route.
#[derive(Clone, Default)]
pub struct PolicyMetrics {
    pub retries: Family<PolicyLabels, Counter>,
    pub retries_given_up: Family<PolicyReasonLabels, Counter>,
    pub hedges: Family<PolicyReasonLabels, Counter>,
    pub hedges_suppressed: Family<PolicyReasonLabels, Counter>,
    pub hedge_delay: Family<PolicyLabels, Gauge<f64, AtomicU64>>,
    pub budget_available: Family<PolicyLabels, Gauge>,
    /// Requests dropped or denied (and would-be ones in dry run).
    pub admission: Family<PolicyReasonLabels, Counter>,
    /// Faults injected: delay, abort.
    pub faults: Family<PolicyReasonLabels, Counter>,
    /// Global rate limit leases and decisions, by descriptor.
    pub global_limit: Family<GlobalLimitLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GlobalLimitLabels {
    /// The limit's policy, `namespace/name`.
    pub descriptor: Arc<str>,
    /// `batches`, `leased` (tokens), `windows_exhausted`, `refused`,
    /// `overdrawn` (admitted on credit, never paid by a grant), `waited`
    /// (requests that waited for a batch: no quota and no credit),
    /// `service_errors`, `service_degraded`, `failed_open`, `failed_closed`.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Arc<str>,
}

/// Every metric the proxy exports.
pub struct ProxyMetrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<LatencyLabels, Histogram>,
    pub endpoint_requests: Family<EndpointLabels, Counter>,
    pub active_connections: Family<ListenerLabels, Gauge>,
    pub connections: Family<ListenerLabels, Counter>,
    pub tcp_bytes: Family<ListenerLabels, Counter>,
    pub config_generation: Gauge,
    pub config_reloads: Counter,
    pub config_errors: Counter,
    pub config_last_error: Gauge,
    pub health: HealthMetrics,
    pub policy: PolicyMetrics,
    pub deadline_malformed: Family<HeaderLabels, Counter>,
    pub deadline_exceeded: Counter,
    pub trace_malformed: Family<HeaderLabels, Counter>,
    /// Spans the OTLP collector accepted.
    pub spans_exported: Counter,
    /// Spans dropped: `queue_full` (the export queue was full: the
    /// collector is slow or down) or `export_failed` (an export call failed
    /// or timed out, or the collector rejected them).
    pub spans_dropped: Family<SpanDropLabels, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SpanDropLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HeaderLabels {
    pub header: &'static str,
}

/// Latency buckets (seconds): 0.5 ms .. 30 s, dense where sidecars live.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0,
];

impl ProxyMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests handled, by direction, service, route and response code",
            requests.clone(),
        );
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS.iter().copied())) as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            latency.clone(),
        );
        let endpoint_requests = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "endpoint_requests",
            "Requests sent to each endpoint",
            endpoint_requests.clone(),
        );
        let active_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "active_connections",
            "Downstream connections open, by listener",
            active_connections.clone(),
        );
        let connections = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections",
            "Downstream connections accepted, by listener",
            connections.clone(),
        );
        let tcp_bytes = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "tcp_bytes",
            "Bytes forwarded by opaque TCP proxying (both directions)",
            tcp_bytes.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the config in use (1 = first load)",
            config_generation.clone(),
        );
        let config_reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Config changes applied",
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
            "1 when the newest config on disk was rejected, else 0",
            config_last_error.clone(),
        );
        let health = HealthMetrics::default();
        registry.register(
            "endpoint_health_events",
            "Endpoint ejections and re-admissions, and panic mode entered or left, by service",
            health.events.clone(),
        );
        registry.register(
            "endpoint_weight_ratio",
            "Effective weight of each endpoint as a share of its configured weight (health x slow start; 0 = ejected)",
            health.weight.clone(),
        );
        registry.register(
            "endpoint_ejected",
            "1 while the endpoint is ejected by outlier detection",
            health.ejected.clone(),
        );
        registry.register(
            "endpoint_latency_seconds",
            "The endpoint's latency as the balancer estimates it (decayed moving average of its answers' time to response headers)",
            health.latency.clone(),
        );
        registry.register(
            "endpoint_in_flight",
            "Attempts in flight to the endpoint",
            health.in_flight.clone(),
        );
        registry.register(
            "endpoint_failures",
            "Attempts to the endpoint that its Service's failure codes judged failed (5xx, resets, timeouts, gRPC and business codes as configured)",
            health.failures.clone(),
        );
        let policy = PolicyMetrics::default();
        registry.register(
            "retries",
            "Retries sent, by service and route",
            policy.retries.clone(),
        );
        registry.register(
            "retries_given_up",
            "Failed requests not retried, by reason (budget, attempts, deadline, not_retriable)",
            policy.retries_given_up.clone(),
        );
        registry.register(
            "hedges",
            "Backup requests: sent, won (answered first) and cancelled (lost the race)",
            policy.hedges.clone(),
        );
        registry.register(
            "hedges_suppressed",
            "Backup requests not sent, by reason (budget, breaker, deadline, no_history, ...)",
            policy.hedges_suppressed.clone(),
        );
        registry.register(
            "hedge_delay_seconds",
            "Current hedge delay of the route (learned for a percentile delay; absent before enough history)",
            policy.hedge_delay.clone(),
        );
        registry.register(
            "admission_refused",
            "Requests refused by a route's admission policy: dropped, denied (and *_dry_run: counted only)",
            policy.admission.clone(),
        );
        registry.register(
            "global_rate_limit_events",
            "Global rate limits: batches leased from the rate-limit service, tokens leased, windows exhausted, requests refused, requests admitted on credit that no grant paid for (overdrawn), service errors, answers from the service's failure mode, requests admitted (failed_open) or refused (failed_closed) while the service was unreachable",
            policy.global_limit.clone(),
        );
        registry.register(
            "faults_injected",
            "Faults injected into requests, by kind (delay, abort)",
            policy.faults.clone(),
        );
        registry.register(
            "retry_budget_available",
            "Extra attempts (retries + hedges) the route's budget allows right now",
            policy.budget_available.clone(),
        );
        let deadline_malformed = Family::<HeaderLabels, Counter>::default();
        registry.register(
            "deadline_headers_malformed",
            "Deadline headers ignored because their value was malformed, by header",
            deadline_malformed.clone(),
        );
        let deadline_exceeded = Counter::default();
        registry.register(
            "deadline_exceeded",
            "Requests answered 504 / DEADLINE_EXCEEDED because no time was left for an attempt",
            deadline_exceeded.clone(),
        );
        let trace_malformed = Family::<HeaderLabels, Counter>::default();
        registry.register(
            "trace_headers_malformed",
            "Trace context headers removed because their value was malformed (a new trace or the caller's other format took over), by header",
            trace_malformed.clone(),
        );
        let spans_exported = Counter::default();
        registry.register(
            "trace_spans_exported",
            "Spans accepted by the OTLP collector (--otlp-endpoint)",
            spans_exported.clone(),
        );
        // When this proxy started (its counters start at zero then): the
        // control plane's traffic view counts a new proxy from it.
        let start_time = Gauge::<f64, AtomicU64>::default();
        start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        registry.register(
            "start_time_seconds",
            "When this proxy started (Unix time)",
            start_time,
        );
        let spans_dropped = Family::<SpanDropLabels, Counter>::default();
        registry.register(
            "trace_spans_dropped",
            "Spans not exported: queue_full (the export queue was full), export_failed (the collector failed, timed out or rejected them)",
            spans_dropped.clone(),
        );
        Self {
            trace_malformed,
            spans_exported,
            spans_dropped,
            deadline_malformed,
            deadline_exceeded,
            health,
            policy,
            registry,
            requests,
            latency,
            endpoint_requests,
            active_connections,
            connections,
            tcp_bytes,
            config_generation,
            config_reloads,
            config_errors,
            config_last_error,
        }
    }

    /// Counts a malformed deadline header.
    pub fn deadline_malformed(&self, header: &'static str) {
        self.deadline_malformed
            .get_or_create(&HeaderLabels { header })
            .inc();
    }

    /// Counts a malformed trace context header.
    pub fn trace_malformed(&self, header: &'static str) {
        self.trace_malformed
            .get_or_create(&HeaderLabels { header })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A route's metric handles, resolved once when the snapshot is built so the
/// request path does no label hashing for the common case (a 200, or a
/// gRPC OK).
#[derive(Clone)]
pub struct RouteStats {
    base: RequestLabels,
    ok: Counter,
    /// gRPC OK, created on first use: a route that never sees gRPC has no
    /// `grpc_status="0"` series.
    grpc_ok: std::sync::OnceLock<Counter>,
    latency: Histogram,
    /// The other label sets this route counted (codes, errors), so they
    /// can be removed with it ([`RouteStats::forget`]); written on the
    /// failure path only.
    variants: Arc<std::sync::Mutex<Vec<RequestLabels>>>,
}

impl RouteStats {
    /// The time to the response headers.
    pub fn observe(&self, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Counts one finished request: `grpc_status` empty unless gRPC.
    pub fn count(
        &self,
        metrics: &ProxyMetrics,
        code: u16,
        grpc_status: &'static str,
        error: &'static str,
    ) {
        let labels = || self.labels(code, grpc_status, error);
        if code == 200 && error.is_empty() {
            match grpc_status {
                "" => {
                    self.ok.inc();
                    return;
                }
                GRPC_OK => {
                    self.grpc_ok
                        .get_or_init(|| metrics.requests.get_or_create(&labels()).clone())
                        .inc();
                    return;
                }
                _ => {}
            }
        }
        let labels = labels();
        metrics.requests.get_or_create(&labels).inc();
        let mut seen = self.variants.lock().unwrap_or_else(|p| p.into_inner());
        if !seen.contains(&labels) {
            seen.push(labels);
        }
    }

    /// The labels that identify the route: (direction, source, service,
    /// route).
    pub fn key(&self) -> (Direction, &str, &str, &str) {
        let b = &self.base;
        (b.direction, &b.source, &b.service, &b.route)
    }

    /// Removes every series of this route (a route or Service that left
    /// the config).
    pub fn forget(&self, metrics: &ProxyMetrics) {
        metrics.requests.remove(&self.base);
        metrics.requests.remove(&RequestLabels {
            grpc_status: GRPC_OK,
            ..self.base.clone()
        });
        for v in self
            .variants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            metrics.requests.remove(v);
        }
        let b = &self.base;
        metrics.latency.remove(&LatencyLabels {
            direction: b.direction,
            source: b.source.clone(),
            service: b.service.clone(),
            route: b.route.clone(),
        });
    }

    /// This route's labels with an outcome.
    pub fn labels(
        &self,
        code: u16,
        grpc_status: &'static str,
        error: &'static str,
    ) -> RequestLabels {
        RequestLabels {
            code,
            grpc_status,
            error,
            ..self.base.clone()
        }
    }
}

impl ProxyMetrics {
    /// The handles for one (direction, source, service, route).
    pub fn route_stats(
        &self,
        direction: Direction,
        source: Arc<str>,
        service: Arc<str>,
        route: Arc<str>,
    ) -> RouteStats {
        let base = RequestLabels {
            direction,
            source: source.clone(),
            service: service.clone(),
            route,
            code: 200,
            grpc_status: "",
            error: "",
        };
        RouteStats {
            ok: self.requests.get_or_create(&base).clone(),
            grpc_ok: std::sync::OnceLock::new(),
            latency: self
                .latency
                .get_or_create(&LatencyLabels {
                    direction,
                    source,
                    service,
                    route: base.route.clone(),
                })
                .clone(),
            base,
            variants: Default::default(),
        }
    }

    /// The request counter of one endpoint of one Service.
    pub fn endpoint_counter(&self, service: Arc<str>, endpoint: Arc<str>) -> Counter {
        self.endpoint_requests
            .get_or_create(&EndpointLabels { service, endpoint })
            .clone()
    }
}

/// Inbound request handles by calling Service. The caller is who its
/// sidecar says it is (`x-weft-source`): a well-formed Service name, and
/// at most [`MAX_SOURCES`] different ones, so a caller cannot grow the
/// label set without bound; anything else counts as `unknown`.
pub struct SourceStats {
    direction: Direction,
    service: Arc<str>,
    route: Arc<str>,
    unknown: Arc<RouteStats>,
    known: std::sync::RwLock<std::collections::HashMap<Box<[u8]>, Arc<RouteStats>>>,
}

/// Distinct callers an inbound proxy keeps apart.
pub const MAX_SOURCES: usize = 256;

/// The header a weft sidecar names its Service in on outbound requests.
pub const SOURCE_HEADER: &str = "x-weft-source";

impl SourceStats {
    pub fn new(
        metrics: &ProxyMetrics,
        direction: Direction,
        service: Arc<str>,
        route: Arc<str>,
    ) -> Self {
        Self {
            unknown: Arc::new(metrics.route_stats(
                direction,
                "unknown".into(),
                service.clone(),
                route.clone(),
            )),
            direction,
            service,
            route,
            known: Default::default(),
        }
    }

    /// The handles for the caller named by `source` (the header's value).
    pub fn get(&self, metrics: &ProxyMetrics, source: Option<&[u8]>) -> Arc<RouteStats> {
        let Some(name) = source.filter(|s| valid_source(s)) else {
            return self.unknown.clone();
        };
        if let Some(s) = self
            .known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return s.clone();
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = known.get(name) {
            return s.clone();
        }
        if known.len() >= MAX_SOURCES {
            return self.unknown.clone();
        }
        let label: Arc<str> = std::str::from_utf8(name).unwrap_or("unknown").into();
        let stats = Arc::new(metrics.route_stats(
            self.direction,
            label,
            self.service.clone(),
            self.route.clone(),
        ));
        known.insert(name.into(), stats.clone());
        stats
    }

    pub fn unknown(&self) -> &Arc<RouteStats> {
        &self.unknown
    }
}

/// A Service name as a sidecar sends it: `name.namespace`, lower-case
/// letters, digits, `-` and `.`, at most 253 bytes.
fn valid_source(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'.'))
}

/// Counts an open connection for as long as it lives.
pub struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    pub fn new(metrics: &ProxyMetrics, listener: &Arc<str>) -> Self {
        let labels = ListenerLabels {
            listener: listener.clone(),
        };
        metrics.connections.get_or_create(&labels).inc();
        let g = metrics.active_connections.get_or_create(&labels).clone();
        g.inc();
        ConnectionGuard(g)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
