//! The control plane's admin port: `/ready`, `/metrics`, `/status` (config
//! generation, errors, connected proxies with their ACKed versions and last
//! NACK) and `/config_dump?node=ID` (what that node is served).

use std::sync::atomic::Ordering;

use weft_admin::{AdminEndpoints, AdminResponse};
use weft_xds::{NodeInfo, TypeUrl};

use crate::Control;

impl AdminEndpoints for Control {
    fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }

    fn metrics(&self) -> String {
        let mut out = self.metrics.encode();
        self.status.render_metrics(&mut out);
        self.ratelimit.encode_metrics(&mut out);
        out.push_str("# EOF\n");
        out
    }

    fn route(&self, path: &str, query: Option<&str>) -> Option<AdminResponse> {
        match path {
            "/status" => Some(AdminResponse::json(pretty(&self.status_json()))),
            "/config_dump" => Some(self.config_dump(query)),
            _ => None,
        }
    }

    fn paths(&self) -> &'static [&'static str] {
        &["/status", "/config_dump?node=ID"]
    }
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).expect("JSON values always serialize") + "\n"
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

impl Control {
    fn status_json(&self) -> serde_json::Value {
        serde_json::json!({
            "generation": self.cache.generation(),
            "config_dir": self.config_dir.display().to_string(),
            "last_error": *self.last_error.lock().unwrap_or_else(|p| p.into_inner()),
            "xds": self.status.to_json(),
        })
    }

    /// The resources a connected node (by `node.id`) is served now.
    fn config_dump(&self, query: Option<&str>) -> AdminResponse {
        let Some(id) = query_param(query, "node") else {
            return AdminResponse::not_found(
                "give the node: /config_dump?node=ID (see /status for connected nodes)",
            );
        };
        let node = self
            .status
            .streams()
            .into_iter()
            .find(|s| s.node_id == id)
            .map(|s| NodeInfo {
                id: s.node_id,
                cluster: s.cluster,
                kind: s.kind,
                user_agent: s.user_agent,
            });
        let Some(node) = node else {
            return AdminResponse::not_found(format!("no connected node with id {id:?}"));
        };
        let set = self.cache.resources_for(&node);
        AdminResponse::json(pretty(&dump(&node, &set)))
    }
}

fn dump(node: &NodeInfo, set: &weft_xds::ResourceSet) -> serde_json::Value {
    let types: serde_json::Map<String, serde_json::Value> = TypeUrl::ALL
        .iter()
        .map(|t| {
            let resources: Vec<serde_json::Value> = set
                .of(*t)
                .map(|r| serde_json::json!({"name": r.name, "version": r.version, "bytes": r.encoded_len()}))
                .collect();
            (
                t.to_string(),
                serde_json::json!({"version": set.type_version(*t), "resources": resources}),
            )
        })
        .collect();
    serde_json::json!({
        "node": {"id": node.id, "cluster": node.cluster, "kind": node.kind.as_str()},
        "resources": types,
    })
}
