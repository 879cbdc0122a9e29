//! What the ADS server shows the admin endpoints: one entry per connected
//! stream (who, which transport, per type what was sent, ACKed and NACKed)
//! and server-wide counters.
//!
//! Locking: each stream owns its entry (`Arc<Mutex<StreamStatus>>`) and
//! updates it without touching the others; the registry of entries is locked
//! only when a stream opens or closes and when the admin reads it. No lock is
//! ever held across an `.await`. Counters are atomics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::node::{DataPlane, NodeInfo};
use crate::resource::TypeUrl;

/// The ADS transport a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// State of the world (`StreamAggregatedResources`).
    Sotw,
    /// Incremental (`DeltaAggregatedResources`).
    Delta,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sotw => "sotw",
            Transport::Delta => "delta",
        }
    }
}

/// Called on every ACK with (node id, type, ACKed version), so the control
/// plane can measure config-change -> ACK latency.
pub type AckHook = Box<dyn Fn(&str, TypeUrl, &str) + Send + Sync>;

/// One connected ADS stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamStatus {
    /// Unique per server process; also the prefix of the stream's nonces.
    pub stream_id: u64,
    pub node_id: String,
    pub cluster: String,
    pub kind: DataPlane,
    pub user_agent: String,
    /// The admin address (`HOST:PORT`) the node announced in its metadata
    /// ([`crate::node::ADMIN_METADATA_KEY`]), for Prometheus discovery.
    pub admin: Option<String>,
    pub transport: Transport,
    pub connected_at: SystemTime,
    /// Per type the client has asked about.
    pub types: BTreeMap<TypeUrl, TypeStatus>,
}

/// One resource type on one stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeStatus {
    /// Subscribed to everything of this type (legacy or `"*"`).
    pub wildcard: bool,
    /// Number of explicitly subscribed names.
    pub names: usize,
    /// The last response sent.
    pub sent: Option<Sent>,
    /// The last version the client ACKed.
    pub acked_version: Option<String>,
    /// The last response the client rejected.
    pub last_nack: Option<Nack>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub version: String,
    pub nonce: String,
    pub at: SystemTime,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Nack {
    /// The version we sent and the client rejected.
    pub version: String,
    pub nonce: String,
    /// The client's `error_detail.message`.
    pub message: String,
    pub at: SystemTime,
}

/// Server-wide totals (the same numbers `/metrics` shows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connected streams by data-plane kind (both transports).
    pub streams_connected: BTreeMap<DataPlane, u64>,
    pub responses_sent: u64,
    pub resources_sent: u64,
    /// Encoded size of the responses sent.
    pub bytes_sent: u64,
    pub acks: u64,
    pub nacks: u64,
    pub unknown_type_requests: u64,
}

const KINDS: [DataPlane; 3] = [DataPlane::Weft, DataPlane::Envoy, DataPlane::Grpc];
const TRANSPORTS: [Transport; 2] = [Transport::Sotw, Transport::Delta];

fn type_index(t: TypeUrl) -> usize {
    TypeUrl::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

fn kind_index(k: DataPlane) -> usize {
    KINDS.iter().position(|x| *x == k).unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StreamLabels {
    kind: &'static str,
    transport: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Buckets of `weft_xds_push_ack_seconds`: 1 ms to 10 s, about 2.5x apart.
const PUSH_ACK_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn push_ack_histogram() -> Histogram {
    Histogram::new(PUSH_ACK_BUCKETS)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

/// The `weft_xds_*` metrics. Families are registered; the per-label handles
/// are resolved once so the hot path is an atomic increment.
struct Metrics {
    streams: Family<StreamLabels, Gauge>,
    responses: Family<TypeLabels, Counter>,
    resources: Family<TypeLabels, Counter>,
    bytes: Family<TypeLabels, Counter>,
    acks: Family<TypeLabels, Counter>,
    nacks: Family<TypeLabels, Counter>,
    unknown_type_requests: Counter,
    push_ack: Family<KindLabels, Histogram, fn() -> Histogram>,
    stream_gauges: [[Gauge; 2]; 3],
    push_ack_by_kind: [Histogram; 3],
    by_type: [TypeCounters; 4],
    /// Holds the families above, for [`ServerStatus::render_metrics`].
    own_registry: Registry,
}

#[derive(Clone)]
struct TypeCounters {
    responses: Counter,
    resources: Counter,
    bytes: Counter,
    acks: Counter,
    nacks: Counter,
}

impl Metrics {
    fn new() -> Metrics {
        let streams = Family::<StreamLabels, Gauge>::default();
        let [responses, resources, bytes, acks, nacks] =
            std::array::from_fn(|_| Family::<TypeLabels, Counter>::default());
        let stream_gauges = KINDS.map(|k| {
            TRANSPORTS.map(|t| {
                streams
                    .get_or_create(&StreamLabels {
                        kind: k.as_str(),
                        transport: t.as_str(),
                    })
                    .clone()
            })
        });
        let push_ack: Family<KindLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(push_ack_histogram);
        let push_ack_by_kind = KINDS.map(|k| {
            push_ack
                .get_or_create(&KindLabels { kind: k.as_str() })
                .clone()
        });
        let by_type = TypeUrl::ALL.map(|t| {
            let l = TypeLabels {
                r#type: type_label(t),
            };
            TypeCounters {
                responses: responses.get_or_create(&l).clone(),
                resources: resources.get_or_create(&l).clone(),
                bytes: bytes.get_or_create(&l).clone(),
                acks: acks.get_or_create(&l).clone(),
                nacks: nacks.get_or_create(&l).clone(),
            }
        });
        let mut m = Metrics {
            streams,
            responses,
            resources,
            bytes,
            acks,
            nacks,
            unknown_type_requests: Counter::default(),
            push_ack,
            stream_gauges,
            push_ack_by_kind,
            by_type,
            own_registry: Registry::default(),
        };
        let mut own = Registry::default();
        m.register(&mut own);
        m.own_registry = own;
        m
    }

    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("weft_xds");
        r.register(
            "streams_connected",
            "Connected ADS streams",
            self.streams.clone(),
        );
        r.register(
            "responses_sent",
            "Discovery responses sent",
            self.responses.clone(),
        );
        r.register(
            "resources_sent",
            "Resources sent in discovery responses",
            self.resources.clone(),
        );
        r.register(
            "sent_bytes",
            "Encoded size of the discovery responses sent",
            self.bytes.clone(),
        );
        r.register("acks", "Responses the clients ACKed", self.acks.clone());
        r.register(
            "nacks",
            "Responses the clients rejected (NACK)",
            self.nacks.clone(),
        );
        r.register(
            "unknown_type_requests",
            "Requests for a resource type weft does not serve",
            self.unknown_type_requests.clone(),
        );
        r.register(
            "push_ack_seconds",
            "Config change pushes: from the control plane publishing a change \
             to the stream ACKing every response that carried it (NACKed \
             pushes are not observed)",
            self.push_ack.clone(),
        );
    }
}

fn type_label(t: TypeUrl) -> &'static str {
    match t {
        TypeUrl::Listener => "LDS",
        TypeUrl::RouteConfiguration => "RDS",
        TypeUrl::Cluster => "CDS",
        TypeUrl::ClusterLoadAssignment => "EDS",
    }
}

/// Connected streams and counters, shared between the ADS server (writes)
/// and the control plane's admin endpoints (reads).
pub struct ServerStatus {
    streams: Mutex<BTreeMap<u64, Arc<Mutex<StreamStatus>>>>,
    next_stream_id: AtomicU64,
    metrics: Metrics,
    on_ack: OnceLock<AckHook>,
}

impl Default for ServerStatus {
    fn default() -> Self {
        ServerStatus::new()
    }
}

impl std::fmt::Debug for ServerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStatus")
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl ServerStatus {
    pub fn new() -> ServerStatus {
        ServerStatus {
            streams: Mutex::new(BTreeMap::new()),
            next_stream_id: AtomicU64::new(1),
            metrics: Metrics::new(),
            on_ack: OnceLock::new(),
        }
    }

    /// Installs the ACK hook (once; returns `false` if one is already set).
    /// It runs on the stream's task: keep it short and non-blocking.
    pub fn set_ack_hook(&self, hook: impl Fn(&str, TypeUrl, &str) + Send + Sync + 'static) -> bool {
        self.on_ack.set(Box::new(hook)).is_ok()
    }

    /// Every connected stream, oldest first.
    pub fn streams(&self) -> Vec<StreamStatus> {
        let entries: Vec<_> = lock(&self.streams).values().cloned().collect();
        entries.iter().map(|e| lock(e).clone()).collect()
    }

    pub fn counters(&self) -> Counters {
        let m = &self.metrics;
        let mut c = Counters::default();
        for (k, kind) in KINDS.iter().enumerate() {
            let n: i64 = m.stream_gauges[k].iter().map(|g| g.get()).sum();
            c.streams_connected.insert(*kind, n.max(0) as u64);
        }
        for t in &m.by_type {
            c.responses_sent += t.responses.get();
            c.resources_sent += t.resources.get();
            c.bytes_sent += t.bytes.get();
            c.acks += t.acks.get();
            c.nacks += t.nacks.get();
        }
        c.unknown_type_requests = m.unknown_type_requests.get();
        c
    }

    /// Registers the `weft_xds_*` metrics in the control plane's registry
    /// (pass the root registry: the names carry their own prefix).
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// Appends the `weft_xds_*` metrics in OpenMetrics text, without the
    /// final `# EOF`, so the caller can concatenate its own metrics and end
    /// the exposition once. Use this or [`Self::register_metrics`], not both.
    pub fn render_metrics(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(out, &self.metrics.own_registry);
    }

    /// The `/status` view: `{"streams": [...], "counters": {...}}`.
    pub fn to_json(&self) -> Value {
        let c = self.counters();
        let by_kind: serde_json::Map<String, Value> = c
            .streams_connected
            .iter()
            .map(|(k, n)| (k.as_str().to_string(), json!(n)))
            .collect();
        json!({
            "streams": self.streams().iter().map(StreamStatus::to_json).collect::<Vec<_>>(),
            "counters": {
                "streams_connected": by_kind,
                "responses_sent": c.responses_sent,
                "resources_sent": c.resources_sent,
                "bytes_sent": c.bytes_sent,
                "acks": c.acks,
                "nacks": c.nacks,
                "unknown_type_requests": c.unknown_type_requests,
            },
        })
    }

    /// Registers a stream; the entry goes away when the handle is dropped.
    /// `admin` is the admin address the node announced, if any.
    pub(crate) fn open_stream(
        self: &Arc<Self>,
        node: &NodeInfo,
        admin: Option<String>,
        transport: Transport,
    ) -> StreamHandle {
        let stream_id = self.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Mutex::new(StreamStatus {
            stream_id,
            node_id: node.id.clone(),
            cluster: node.cluster.clone(),
            kind: node.kind,
            user_agent: node.user_agent.clone(),
            admin,
            transport,
            connected_at: SystemTime::now(),
            types: BTreeMap::new(),
        }));
        lock(&self.streams).insert(stream_id, entry.clone());
        self.gauge(node.kind, transport).inc();
        StreamHandle {
            status: self.clone(),
            stream_id,
            node_id: node.id.clone(),
            kind: node.kind,
            transport,
            entry,
            push: None,
        }
    }

    fn gauge(&self, kind: DataPlane, transport: Transport) -> &Gauge {
        let t = TRANSPORTS.iter().position(|x| *x == transport).unwrap_or(0);
        &self.metrics.stream_gauges[kind_index(kind)][t]
    }
}

impl StreamStatus {
    pub fn to_json(&self) -> Value {
        let types: serde_json::Map<String, Value> = self
            .types
            .iter()
            .map(|(t, s)| (t.to_string(), s.to_json(*t)))
            .collect();
        json!({
            "stream_id": self.stream_id,
            "node_id": self.node_id,
            "cluster": self.cluster,
            "kind": self.kind.as_str(),
            "user_agent": self.user_agent,
            "admin": self.admin,
            "transport": self.transport.as_str(),
            "connected_at_unix_ms": unix_ms(self.connected_at),
            "types": types,
        })
    }
}

impl TypeStatus {
    fn to_json(&self, t: TypeUrl) -> Value {
        json!({
            "type_url": t.as_str(),
            "wildcard": self.wildcard,
            "names": self.names,
            "sent": self.sent.as_ref().map(|s| json!({
                "version": s.version,
                "nonce": s.nonce,
                "at_unix_ms": unix_ms(s.at),
            })),
            "acked_version": self.acked_version,
            "last_nack": self.last_nack.as_ref().map(|n| json!({
                "version": n.version,
                "nonce": n.nonce,
                "message": n.message,
                "at_unix_ms": unix_ms(n.at),
            })),
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A poisoned status lock only means a panic elsewhere mid-update; the data
/// is still worth showing.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stream's writer for its own status entry and the shared counters.
/// Dropping it removes the entry (the stream is gone).
pub(crate) struct StreamHandle {
    status: Arc<ServerStatus>,
    stream_id: u64,
    node_id: String,
    kind: DataPlane,
    transport: Transport,
    entry: Arc<Mutex<StreamStatus>>,
    /// The config change pushed to this stream and not yet ACKed whole.
    push: Option<Push>,
}

/// A config change in flight on one stream: when the control plane
/// published it, and per type the version of the last response carrying it
/// that the client has not ACKed yet. Observed once, when the last of them
/// is ACKed; forgotten if one is NACKed. A change published while another
/// is still in flight joins it (the newer responses carry both), keeping
/// the older start: one observation covering both, measured for the older.
struct Push {
    published: Instant,
    unacked: BTreeMap<TypeUrl, String>,
}

impl StreamHandle {
    pub(crate) fn stream_id(&self) -> u64 {
        self.stream_id
    }

    fn with_type<R>(&self, t: TypeUrl, f: impl FnOnce(&mut TypeStatus) -> R) -> R {
        f(lock(&self.entry).types.entry(t).or_default())
    }

    pub(crate) fn subscribed(&self, t: TypeUrl, wildcard: bool, names: usize) {
        self.with_type(t, |s| {
            s.wildcard = wildcard;
            s.names = names;
        });
    }

    /// A response went out. `push` is when the config change it carries
    /// was published, for responses sent because the node's set changed.
    pub(crate) fn sent(
        &mut self,
        t: TypeUrl,
        version: &str,
        nonce: &str,
        resources: usize,
        bytes: usize,
        push: Option<Instant>,
    ) {
        match (push, &mut self.push) {
            (Some(published), None) => {
                self.push = Some(Push {
                    published,
                    unacked: BTreeMap::from([(t, version.to_string())]),
                })
            }
            (Some(_), Some(p)) => {
                p.unacked.insert(t, version.to_string());
            }
            // A newer response of a type in flight (say, after a
            // subscription change) supersedes the one that carried the
            // change; its ACK completes the type.
            (None, Some(p)) => {
                if let Some(v) = p.unacked.get_mut(&t) {
                    *v = version.to_string();
                }
            }
            (None, None) => {}
        }
        self.with_type(t, |s| {
            s.sent = Some(Sent {
                version: version.to_string(),
                nonce: nonce.to_string(),
                at: SystemTime::now(),
            })
        });
        let c = &self.status.metrics.by_type[type_index(t)];
        c.responses.inc();
        c.resources.inc_by(resources as u64);
        c.bytes.inc_by(bytes as u64);
    }

    pub(crate) fn acked(&mut self, t: TypeUrl, version: &str) {
        self.with_type(t, |s| s.acked_version = Some(version.to_string()));
        self.status.metrics.by_type[type_index(t)].acks.inc();
        if let Some(p) = &mut self.push
            && p.unacked.get(&t).is_some_and(|v| v == version)
        {
            p.unacked.remove(&t);
            if p.unacked.is_empty() {
                let elapsed = p.published.elapsed().as_secs_f64();
                self.status.metrics.push_ack_by_kind[kind_index(self.kind)].observe(elapsed);
                self.push = None;
            }
        }
        if let Some(hook) = self.status.on_ack.get() {
            hook(&self.node_id, t, version);
        }
    }

    pub(crate) fn nacked(&mut self, t: TypeUrl, version: &str, nonce: &str, message: &str) {
        // The change did not take on this node: counted as a NACK, not as
        // push latency.
        if self
            .push
            .as_ref()
            .is_some_and(|p| p.unacked.contains_key(&t))
        {
            self.push = None;
        }
        self.with_type(t, |s| {
            s.last_nack = Some(Nack {
                version: version.to_string(),
                nonce: nonce.to_string(),
                message: message.to_string(),
                at: SystemTime::now(),
            })
        });
        self.status.metrics.by_type[type_index(t)].nacks.inc();
    }

    pub(crate) fn unknown_type(&self) {
        self.status.metrics.unknown_type_requests.inc();
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        lock(&self.status.streams).remove(&self.stream_id);
        self.status.gauge(self.kind, self.transport).dec();
    }
}

#[cfg(test)]
mod tests;
