//! `--config DIR`: the directory's config is translated in-process by the
//! same code `weft control` serves weft sidecars with
//! ([`weft_xds::translate`]), for a weft node whose cluster is `--service`,
//! and built by the same [`SnapshotBuilder`] as xDS updates. So a sidecar
//! routes the same whether it reads the directory or a control plane
//! serving it.

use std::sync::Arc;
use std::time::Duration;

use weft_model::Config;
use weft_xds::translate::{TranslateOptions, Translator};
use weft_xds::{DataPlane, NodeInfo, ResourceSet};

use super::{BuildError, Snapshot, SnapshotBuilder};
use crate::metrics::ProxyMetrics;
use crate::upstream::EndpointRegistry;

/// The node a standalone sidecar of `service` (`name[.namespace]`) is.
pub fn node(service: &str) -> NodeInfo {
    NodeInfo {
        id: "standalone".into(),
        cluster: service.into(),
        kind: DataPlane::Weft,
        user_agent: "weft".into(),
    }
}

/// What a control plane would send the sidecar of `service` for `config`.
pub fn resources(config: &Arc<Config>, service: &str, connect_timeout: Duration) -> ResourceSet {
    let opts = TranslateOptions {
        connect_timeout,
        ..TranslateOptions::default()
    };
    Translator::new(config.clone(), opts).resources_for(&node(service))
}

/// The snapshot of `config` for the sidecar of `service`.
pub fn build(
    builder: &mut SnapshotBuilder,
    config: Arc<Config>,
    service: &str,
    generation: u64,
    registry: &EndpointRegistry,
    metrics: &ProxyMetrics,
) -> Result<Snapshot, BuildError> {
    let set = resources(&config, service, builder.options().connect_timeout);
    let mut snapshot = builder.build(&set, generation, registry, metrics)?;
    snapshot.source = Some(config);
    Ok(snapshot)
}
