//! What every connection task shares: the current config snapshot, metrics,
//! the local app and settings. Read on every request; written only by the
//! config source (the snapshot, atomically).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::access_log::AccessLog;
use crate::metrics::{ProxyMetrics, SourceStats};
use crate::snapshot::Snapshot;
use crate::trace::Traces;
use crate::upstream::{EndpointClient, EndpointRegistry};

/// The local application behind the inbound listener.
pub struct App {
    pub addr: SocketAddr,
    pub h1: Arc<EndpointClient>,
    pub h2: Arc<EndpointClient>,
}

/// Per-connection limits and timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub detect_timeout: Duration,
}

pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: ProxyMetrics,
    /// Metric handles of the inbound direction, by calling Service.
    pub inbound_stats: SourceStats,
    /// `x-weft-source: <local_service>`, set on every outbound request.
    pub source_header: http::HeaderValue,
    /// `--access-log`.
    pub access_log: Option<Arc<AccessLog>>,
    /// `name.namespace` of the service this sidecar runs beside.
    pub local_service: Arc<str>,
    /// `--app`; without it, the app of the config's inbound listener.
    pub app: Option<App>,
    pub registry: EndpointRegistry,
    pub limits: Limits,
    /// Set once SIGTERM (or shutdown) started: `/ready` turns 503.
    pub draining: AtomicBool,
    /// The config generation whose listeners (VIPs, a config-driven
    /// inbound) are bound: `/ready` waits for the first.
    pub listeners_generation: AtomicU64,
    /// Listener address -> bound, or why binding failed (VIPs come and go
    /// with config; a VIP that cannot be bound must be visible).
    pub listeners: Mutex<BTreeMap<String, Result<SocketAddr, String>>>,
    /// Why the newest config on disk was rejected, while it is.
    pub last_error: Mutex<Option<String>>,
    /// The control plane connection, in `--xds` mode.
    pub xds: Option<Arc<weft_xds::client::ClientStatus>>,
    /// Sampling of new traces and span export.
    pub traces: Traces,
}

impl Shared {
    /// Makes `snapshot` the one new requests use, and lets endpoint pools
    /// nothing uses any more go (those still in use stay warm).
    ///
    /// The metric series of endpoints and route rules the new snapshot no
    /// longer has are removed (a replaced pod's, a deleted Service's would
    /// otherwise stay for the life of the proxy, with their last values).
    pub fn publish(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        let kept: std::collections::HashSet<_> = snapshot
            .clusters
            .iter()
            .flat_map(|c| c.endpoint_labels())
            .collect();
        let old = self.snapshot.swap(Arc::new(snapshot));
        for gone in old
            .clusters
            .iter()
            .flat_map(|c| c.endpoint_labels())
            .filter(|l| !kept.contains(l))
        {
            self.metrics.forget_endpoint(&gone);
        }
        // The same for the request series of route rules that are gone.
        let new = self.snapshot.load();
        let kept: std::collections::HashSet<_> =
            new.route_stats().into_iter().map(|s| s.key()).collect();
        for gone in old.route_stats() {
            if !kept.contains(&gone.key()) {
                gone.forget(&self.metrics);
            }
        }
        self.registry.retain_used();
        self.metrics.config_generation.set(generation as i64);
        if generation > 1 {
            self.metrics.config_reloads.inc();
        }
    }

    /// The local app: `--app`, else the config's.
    pub fn app_addr(&self) -> Option<SocketAddr> {
        match &self.app {
            Some(app) => Some(app.addr),
            None => self.snapshot.load().inbound.as_ref().map(|a| a.addr),
        }
    }
}
