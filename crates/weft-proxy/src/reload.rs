//! Config reload: the directory is polled for changes
//! ([`weft_model::DirWatch`]: loaded once stable for one poll). A valid
//! change is published as a new snapshot; an invalid one is logged, counted
//! and shown on the admin port while the last good snapshot keeps serving.

use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::Duration;
use weft_model::DirWatch;

use tokio::sync::watch;

use crate::snapshot::{BuildOptions, Snapshot};
use crate::state::Shared;

/// Watches `dir` until `stop`; publishes each accepted config to `shared`
/// and announces it on `published`.
pub async fn watch_dir(
    dir: PathBuf,
    interval: Duration,
    build: BuildOptions,
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
            reload(&dir, &build, &shared, &published);
        }
    }
}

/// Loads `dir` now; returns whether a new snapshot was published.
pub fn reload(
    dir: &Path,
    build: &BuildOptions,
    shared: &Shared,
    published: &watch::Sender<u64>,
) -> bool {
    let m = &shared.metrics;
    match weft_model::load_dir(dir) {
        Ok(config) => {
            *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
            m.config_last_error.set(0);
            let current = shared.snapshot.load_full();
            if *current.source == config {
                return false;
            }
            let generation = current.generation + 1;
            let snap = Snapshot::build(
                Arc::new(config),
                generation,
                build,
                &shared.registry,
                &shared.metrics,
            );
            shared.snapshot.store(Arc::new(snap));
            shared.registry.retain_used();
            m.config_generation.set(generation as i64);
            m.config_reloads.inc();
            tracing::info!(generation, dir = %dir.display(), "config reloaded");
            published.send_replace(generation);
            true
        }
        Err(errors) => {
            m.config_errors.inc();
            m.config_last_error.set(1);
            for e in errors.iter() {
                tracing::error!(error = %e, "config change rejected; keeping the last good config");
            }
            *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(errors.to_string());
            false
        }
    }
}
