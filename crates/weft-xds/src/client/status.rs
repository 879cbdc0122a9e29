//! What the ADS client shows: the server, whether a stream is up, per type
//! the last ACKed version and the last NACK, and what a publish still waits
//! for; plus the `weft_xds_client_*` metrics. Written by the client task
//! only, read by the admin port; the lock is never held across an `.await`.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::ClientOptions;
use super::cache::kind;
use crate::resource::TypeUrl;

/// The client's state for the admin port and metrics.
#[derive(Debug)]
pub struct ClientStatus {
    server: String,
    node_id: String,
    cluster: String,
    inner: Mutex<Inner>,
    metrics: ClientMetrics,
}

#[derive(Debug, Default)]
struct Inner {
    connected: bool,
    /// When the current stream opened, or the last one closed.
    since: Option<SystemTime>,
    last_error: Option<String>,
    types: BTreeMap<TypeUrl, TypeStatus>,
    waiting_for: Vec<String>,
    publishes: u64,
    last_publish_error: Option<String>,
}

/// One resource type as the client holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeStatus {
    /// `system_version_info` of the last response ACKed.
    pub acked_version: Option<String>,
    pub resources: usize,
    pub last_nack: Option<SentNack>,
}

/// A response the client rejected.
#[derive(Debug, Clone, PartialEq)]
pub struct SentNack {
    pub version: String,
    pub nonce: String,
    pub message: String,
    pub at: SystemTime,
}

/// `weft_xds_client_*`.
#[derive(Debug, Clone, Default)]
struct ClientMetrics {
    connected: Gauge,
    updates_applied: Counter,
    nacks_sent: Counter,
    reconnects: Counter,
}

impl ClientStatus {
    pub fn new(opts: &ClientOptions) -> Self {
        ClientStatus {
            server: opts.server.clone(),
            node_id: opts.node_id.clone(),
            cluster: opts.cluster.clone(),
            inner: Mutex::default(),
            metrics: ClientMetrics::default(),
        }
    }

    /// Registers the `xds_client_*` metrics in `registry` (which adds its
    /// own prefix, e.g. `weft_`).
    pub fn register_metrics(&self, registry: &mut Registry) {
        let m = &self.metrics;
        registry.register(
            "xds_client_connected",
            "1 while an ADS stream to the control plane is up",
            m.connected.clone(),
        );
        registry.register(
            "xds_client_updates_applied",
            "xDS responses accepted (ACKed)",
            m.updates_applied.clone(),
        );
        registry.register(
            "xds_client_nacks_sent",
            "xDS responses rejected (NACKed); the last good config stayed",
            m.nacks_sent.clone(),
        );
        registry.register(
            "xds_client_reconnects",
            "ADS streams re-opened after the previous one failed",
            m.reconnects.clone(),
        );
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_connected(&self) -> bool {
        self.lock().connected
    }

    /// Per type: what was ACKed and the last NACK.
    pub fn types(&self) -> BTreeMap<TypeUrl, TypeStatus> {
        self.lock().types.clone()
    }

    pub(super) fn connected(&self) {
        let mut s = self.lock();
        s.connected = true;
        s.since = Some(SystemTime::now());
        s.last_error = None;
        self.metrics.connected.set(1);
    }

    pub(super) fn disconnected(&self, error: String) {
        let mut s = self.lock();
        if s.connected {
            s.since = Some(SystemTime::now());
        }
        s.connected = false;
        s.last_error = Some(error);
        self.metrics.connected.set(0);
    }

    pub(super) fn reconnecting(&self) {
        self.metrics.reconnects.inc();
    }

    pub(super) fn acked(&self, t: TypeUrl, version: &str, resources: usize) {
        let mut s = self.lock();
        let e = s.types.entry(t).or_default();
        e.acked_version = Some(version.to_string());
        e.resources = resources;
        self.metrics.updates_applied.inc();
    }

    pub(super) fn nacked(&self, t: TypeUrl, version: &str, nonce: &str, message: &str) {
        self.lock().types.entry(t).or_default().last_nack = Some(SentNack {
            version: version.to_string(),
            nonce: nonce.to_string(),
            message: message.to_string(),
            at: SystemTime::now(),
        });
        self.metrics.nacks_sent.inc();
    }

    pub(super) fn waiting_for(&self, missing: Vec<String>) {
        self.lock().waiting_for = missing;
    }

    pub(super) fn published(&self, result: Result<(), String>) {
        let mut s = self.lock();
        s.publishes += 1;
        s.last_publish_error = result.err();
    }

    /// The admin view (`/config_dump`'s `xds` section).
    pub fn to_json(&self) -> Value {
        let s = self.lock();
        let types: serde_json::Map<String, Value> = s
            .types
            .iter()
            .map(|(t, ts)| {
                let nack = ts.last_nack.as_ref().map(|n| {
                    json!({
                        "version": n.version,
                        "nonce": n.nonce,
                        "message": n.message,
                        "at_unix_ms": unix_ms(n.at),
                    })
                });
                (
                    t.to_string(),
                    json!({
                        "type_url": t.as_str(),
                        "kind": kind(*t),
                        "acked_version": ts.acked_version,
                        "resources": ts.resources,
                        "last_nack": nack,
                    }),
                )
            })
            .collect();
        json!({
            "server": self.server,
            "node": {"id": self.node_id, "cluster": self.cluster},
            "connected": s.connected,
            "since_unix_ms": s.since.map(unix_ms),
            "last_error": s.last_error,
            "types": types,
            "waiting_for": s.waiting_for,
            "publishes": s.publishes,
            "last_publish_error": s.last_publish_error,
        })
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
