//! The proxy's admin endpoints (served by `weft-admin`): `/ready` (503 until
//! the first config, and once draining), `/metrics`, and `/config_dump`
//! (where the config comes from, the resources in use, listeners, the last
//! rejected change).

use std::sync::atomic::Ordering;

use weft_admin::{AdminEndpoints, AdminResponse};
use weft_xds::TypeUrl;

use crate::state::Shared;

impl AdminEndpoints for Shared {
    fn ready(&self) -> bool {
        // Ready once the first config is in use, its listeners included.
        !self.draining.load(Ordering::Relaxed)
            && self.listeners_generation.load(Ordering::Relaxed) > 0
    }
    fn metrics(&self) -> String {
        self.metrics.encode()
    }
    fn route(&self, path: &str, _query: Option<&str>) -> Option<AdminResponse> {
        (path == "/config_dump").then(|| AdminResponse::json(config_dump(self)))
    }
    fn paths(&self) -> &'static [&'static str] {
        &["/config_dump"]
    }
}

/// The config in use, where it came from and where the proxy listens.
pub fn config_dump(shared: &Shared) -> String {
    let snap = shared.snapshot.load_full();
    let listeners: serde_json::Map<String, serde_json::Value> = shared
        .listeners
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(name, r)| {
            let v = match r {
                Ok(addr) => serde_json::json!({"state": "bound", "address": addr.to_string()}),
                Err(e) => serde_json::json!({"state": "error", "error": e}),
            };
            (name.clone(), v)
        })
        .collect();
    // Per type: resource name -> version.
    let resources: serde_json::Map<String, serde_json::Value> = TypeUrl::ALL
        .iter()
        .map(|t| {
            let names: serde_json::Map<String, serde_json::Value> = snap
                .resources
                .of(*t)
                .map(|r| (r.name.clone(), r.version.clone().into()))
                .collect();
            (t.to_string(), names.into())
        })
        .collect();
    let app = shared
        .app
        .as_ref()
        .or(snap.inbound.as_ref())
        .map(|a| a.addr.to_string());
    let dump = serde_json::json!({
        "service": &*shared.local_service,
        "source": if shared.xds.is_some() { "xds" } else { "dir" },
        "generation": snap.generation,
        "last_error": *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()),
        "xds": shared.xds.as_ref().map(|x| x.to_json()),
        "listeners": listeners,
        "app": app,
        "resources": resources,
        "config": snap.source.as_deref(),
    });
    serde_json::to_string_pretty(&dump).expect("JSON values always serialize") + "\n"
}
