//! `--xds`: config from a control plane. The delta ADS client
//! ([`weft_xds::client`]) asks this sink whether each resource can be
//! applied (the snapshot builder's own check, so a NACK says exactly what
//! weft cannot do) and hands it complete resource sets, which become
//! snapshots like any other config.
//!
//! An endpoint update changes one ClusterLoadAssignment: the builder
//! re-parses only that, the listeners keep running (they read whichever
//! snapshot is current), and endpoints present before and after keep their
//! pooled connections (the endpoint registry hands out the same clients).

use std::sync::Arc;

use tokio::sync::watch;
use weft_xds::client::ConfigSink;
use weft_xds::{Resource, ResourceSet};

use crate::snapshot::SnapshotBuilder;
use crate::state::Shared;

pub(crate) struct XdsSink {
    pub builder: SnapshotBuilder,
    pub shared: Arc<Shared>,
    /// Announces each new generation (the listener manager follows it).
    pub published: watch::Sender<u64>,
}

impl ConfigSink for XdsSink {
    fn check(&mut self, resource: &Arc<Resource>) -> Result<(), String> {
        self.builder.check(resource).map_err(|e| e.to_string())
    }

    fn publish(&mut self, set: &ResourceSet, complete: bool) -> Result<(), String> {
        let shared = &self.shared;
        let generation = shared.snapshot.load().generation + 1;
        let snapshot = self
            .builder
            .build(set, generation, &shared.registry, &shared.metrics)
            .map_err(|e| e.to_string())?;
        shared.publish(snapshot);
        tracing::info!(
            generation,
            complete,
            "config from the control plane applied"
        );
        self.published.send_replace(generation);
        Ok(())
    }
}
