//! `--config DIR` reload: the directory is polled for changes
//! ([`weft_model::DirWatch`]: loaded once stable for one poll). A valid
//! change is translated and built into a new snapshot
//! ([`standalone`](crate::snapshot::standalone)); an invalid one is logged,
//! counted and shown on the admin port while the last good snapshot keeps
//! serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use weft_model::DirWatch;

use crate::snapshot::{SnapshotBuilder, standalone};
use crate::state::Shared;

/// Watches `dir` until `stop`; publishes each accepted config to `shared`
/// and announces it on `published`.
pub async fn watch_dir(
    dir: PathBuf,
    interval: Duration,
    mut builder: SnapshotBuilder,
    shared: Arc<Shared>,
    published: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut watch = DirWatch::new(&dir);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if watch.poll() {
            reload(&dir, &mut builder, &shared, &published);
        }
    }
}

/// Loads `dir` now; returns whether a new snapshot was published.
pub fn reload(
    dir: &Path,
    builder: &mut SnapshotBuilder,
    shared: &Shared,
    published: &watch::Sender<u64>,
) -> bool {
    let m = &shared.metrics;
    let result = weft_model::load_dir(dir).map_err(|errors| {
        for e in errors.iter() {
            tracing::error!(error = %e, "config change rejected; keeping the last good config");
        }
        errors.to_string()
    });
    let result = result.and_then(|config| {
        let current = shared.snapshot.load_full();
        if current.source.as_deref() == Some(&config) {
            return Ok(None);
        }
        for w in config.not_yet_enforced() {
            tracing::warn!("{w}");
        }
        let generation = current.generation + 1;
        standalone::build(
            builder,
            Arc::new(config),
            &shared.local_service,
            generation,
            &shared.registry,
            &shared.metrics,
        )
        .map(Some)
        .map_err(|e| {
            tracing::error!(error = %e, "config change cannot be applied; keeping the last good config");
            e.to_string()
        })
    });
    match result {
        Ok(snapshot) => {
            *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            m.config_last_error.set(0);
            let Some(snapshot) = snapshot else {
                return false;
            };
            let generation = snapshot.generation;
            shared.publish(snapshot);
            tracing::info!(generation, dir = %dir.display(), "config reloaded");
            published.send_replace(generation);
            true
        }
        Err(error) => {
            m.config_errors.inc();
            m.config_last_error.set(1);
            *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
            false
        }
    }
}
