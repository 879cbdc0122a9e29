//! Config reload: the directory is polled for changes (file names, sizes,
//! modification times); a change is loaded once it has been stable for one
//! poll, so a half-written file is not read. A valid change is published as
//! a new snapshot; an invalid one is logged, counted and shown on the admin
//! port while the last good snapshot keeps serving.
//!
//! Polling rather than inotify: it behaves the same on every filesystem
//! (bind mounts, ConfigMap symlink swaps) and costs a few `stat`s per tick.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::snapshot::{BuildOptions, Snapshot};
use crate::state::Shared;

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut fp: Fingerprint = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            !n.starts_with('.') && (n.ends_with(".yaml") || n.ends_with(".yml"))
        })
        .filter_map(|e| {
            // Follows symlinks, as ConfigMap mounts use them.
            let m = std::fs::metadata(e.path()).ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    fp.sort();
    fp
}

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
    let mut applied = fingerprint(&dir);
    let mut pending: Option<Fingerprint> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let fp = fingerprint(&dir);
        if fp == applied {
            pending = None;
            continue;
        }
        if pending.as_ref() != Some(&fp) {
            pending = Some(fp);
            continue;
        }
        applied = fp;
        pending = None;
        reload(&dir, &build, &shared, &published);
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
