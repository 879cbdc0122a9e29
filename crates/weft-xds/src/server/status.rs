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
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    stream_gauges: [[Gauge; 2]; 3],
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
            stream_gauges,
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
    pub(crate) fn open_stream(
        self: &Arc<Self>,
        node: &NodeInfo,
        transport: Transport,
    ) -> StreamHandle {
        let stream_id = self.next_stream_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Mutex::new(StreamStatus {
            stream_id,
            node_id: node.id.clone(),
            cluster: node.cluster.clone(),
            kind: node.kind,
            user_agent: node.user_agent.clone(),
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

    pub(crate) fn sent(
        &self,
        t: TypeUrl,
        version: &str,
        nonce: &str,
        resources: usize,
        bytes: usize,
    ) {
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

    pub(crate) fn acked(&self, t: TypeUrl, version: &str) {
        self.with_type(t, |s| s.acked_version = Some(version.to_string()));
        self.status.metrics.by_type[type_index(t)].acks.inc();
        if let Some(hook) = self.status.on_ack.get() {
            hook(&self.node_id, t, version);
        }
    }

    pub(crate) fn nacked(&self, t: TypeUrl, version: &str, nonce: &str, message: &str) {
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
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;

    fn node(id: &str, ua: &str) -> NodeInfo {
        NodeInfo::from_node(&Node {
            id: id.into(),
            cluster: "web".into(),
            user_agent_name: ua.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_stream_shows_while_connected_and_counts_stay() {
        let status = Arc::new(ServerStatus::new());
        let acks = Arc::new(Mutex::new(Vec::new()));
        let seen = acks.clone();
        assert!(status.set_ack_hook(move |id, t, v| {
            seen.lock()
                .unwrap()
                .push((id.to_string(), t, v.to_string()))
        }));
        let grpc = status.open_stream(&node("g-1", "gRPC Python"), Transport::Sotw);
        grpc.subscribed(TypeUrl::Listener, false, 1);
        grpc.sent(TypeUrl::Listener, "v1", "1-1", 1, 100);
        grpc.acked(TypeUrl::Listener, "v1");
        grpc.sent(TypeUrl::Listener, "v2", "1-2", 1, 120);
        grpc.nacked(TypeUrl::Listener, "v2", "1-2", "bad listener");
        grpc.unknown_type();
        let envoy = status.open_stream(&node("e-1", "envoy"), Transport::Delta);

        let c = status.counters();
        assert_eq!(c.streams_connected[&DataPlane::Grpc], 1);
        assert_eq!(c.streams_connected[&DataPlane::Envoy], 1);
        assert_eq!(
            (c.responses_sent, c.bytes_sent, c.acks, c.nacks),
            (2, 220, 1, 1)
        );
        assert_eq!(
            *acks.lock().unwrap(),
            [("g-1".to_string(), TypeUrl::Listener, "v1".to_string())]
        );

        let json = status.to_json();
        let lds = &json["streams"][0]["types"]["LDS"];
        assert_eq!(json["streams"][0]["transport"], "sotw");
        assert_eq!(json["streams"][0]["kind"], "grpc");
        assert_eq!(lds["acked_version"], "v1");
        assert_eq!(lds["sent"]["nonce"], "1-2");
        assert_eq!(lds["last_nack"]["message"], "bad listener");
        assert_eq!(json["counters"]["unknown_type_requests"], 1);

        let mut text = String::new();
        status.render_metrics(&mut text);
        for line in [
            "weft_xds_streams_connected{kind=\"grpc\",transport=\"sotw\"} 1",
            "weft_xds_responses_sent_total{type=\"LDS\"} 2",
            "weft_xds_sent_bytes_total{type=\"LDS\"} 220",
            "weft_xds_nacks_total{type=\"LDS\"} 1",
            "weft_xds_unknown_type_requests_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("# EOF"));

        drop(grpc);
        drop(envoy);
        assert!(status.streams().is_empty());
        let c = status.counters();
        assert_eq!(c.streams_connected[&DataPlane::Grpc], 0);
        assert_eq!(c.responses_sent, 2, "totals outlive the streams");
    }
}
