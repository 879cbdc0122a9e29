//! The control plane's admin port: `/ready`, `/metrics`, `/status` (config
//! generation, errors, connected proxies with their ACKed versions and last
//! NACK), `/config_dump?node=ID` (what that node is served) and
//! `/sd/prometheus` (Prometheus HTTP service discovery: every connected node
//! that announced its admin address, and this control plane).

use std::sync::atomic::Ordering;

use weft_admin::{AdminEndpoints, AdminResponse};
use weft_xds::{DataPlane, NodeInfo, TypeUrl};

use crate::Control;

impl AdminEndpoints for Control {
    fn ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }

    fn metrics(&self) -> String {
        let mut out = self.metrics.encode();
        self.status.render_metrics(&mut out);
        self.ratelimit.encode_metrics(&mut out);
        self.prometheus.encode(&mut out);
        out.push_str("# EOF\n");
        out
    }

    fn route(&self, path: &str, query: Option<&str>) -> Option<AdminResponse> {
        match path {
            "/status" => Some(AdminResponse::json(pretty(&self.status_json()))),
            "/config_dump" => Some(self.config_dump(query)),
            "/sd/prometheus" => Some(AdminResponse::json(pretty(&self.prometheus_targets()))),
            "/traffic" => Some(self.traffic(query)),
            _ => None,
        }
    }

    fn paths(&self) -> &'static [&'static str] {
        &[
            "/status",
            "/config_dump?node=ID",
            "/sd/prometheus",
            "/traffic?window=30s&service=NAME",
        ]
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
    /// `/traffic?window=30s&service=NAME`: golden metrics per Service and
    /// edge over the window (SMI TrafficMetrics shape), from `--prometheus`
    /// when given and answering, else from the proxies.
    fn traffic(&self, query: Option<&str>) -> AdminResponse {
        let window = match query_param(query, "window") {
            None => std::time::Duration::from_secs(30),
            Some(w) => match weft_model::parse_duration(w) {
                Ok(d)
                    if d >= std::time::Duration::from_secs(1)
                        && d <= crate::traffic::MAX_WINDOW =>
                {
                    d
                }
                _ => {
                    return AdminResponse::bad_request(format!(
                        "window {w:?}: give a duration from 1s to {}s, e.g. 30s\n",
                        crate::traffic::MAX_WINDOW.as_secs()
                    ));
                }
            },
        };
        let service = query_param(query, "service");
        let (table, source) = match self.prometheus.url() {
            None => (self.traffic.table(window), self.prometheus.record(Ok(()))),
            Some(url) => match crate::promql::wait_for(crate::promql::query_table(url, window)) {
                Ok(table) => (table, self.prometheus.record(Ok(()))),
                Err(e) => (self.traffic.table(window), self.prometheus.record(Err(&e))),
            },
        };
        AdminResponse::json(pretty(&table.to_json(window, service, &source)))
    }

    /// Prometheus `http_sd_configs`: one target group per admin address,
    /// labelled with the node (`weft_node`), its Service (`weft_service`),
    /// data-plane kind (`weft_kind`) and metrics path (`/metrics`, Envoy's
    /// `/stats/prometheus`); this control plane first, as
    /// `weft_kind: control`. Nodes that announced no admin address
    /// ([`weft_xds::node::ADMIN_METADATA_KEY`]) are not listed.
    fn prometheus_targets(&self) -> serde_json::Value {
        let group = |target: &str, node: &str, service: &str, kind: &str| {
            // Envoy's admin serves Prometheus text on its own path.
            let path = if kind == DataPlane::Envoy.as_str() {
                "/stats/prometheus"
            } else {
                "/metrics"
            };
            serde_json::json!({
                "targets": [target],
                "labels": {
                    "weft_node": node,
                    "weft_service": service,
                    "weft_kind": kind,
                    "__metrics_path__": path,
                },
            })
        };
        // One group per address: a reconnecting node may briefly have two
        // streams; the newest (streams come oldest first) names it.
        let by_target: std::collections::BTreeMap<String, serde_json::Value> = self
            .status
            .streams()
            .into_iter()
            .filter_map(|s| {
                let target = s.admin?;
                let g = group(&target, &s.node_id, &s.cluster, s.kind.as_str());
                Some((target, g))
            })
            .collect();
        let own = group(
            &self.admin_target,
            "weft-control",
            "weft-control",
            "control",
        );
        serde_json::Value::Array(
            std::iter::once(own)
                .chain(by_target.into_values())
                .collect(),
        )
    }

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
