//! Noticing that a config directory changed, without tokio: callers poll
//! [`DirWatch::poll`] on their own timer.
//!
//! A change is reported once it has been stable for one poll (so a
//! half-written file is not read). Polling file names, sizes and modification
//! times rather than inotify behaves the same on every filesystem (bind mounts,
//! Kubernetes ConfigMap symlink swaps) and costs a few `stat`s per tick.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::load::is_config_file;

type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut fp: Fingerprint = entries
        .filter_map(|e| e.ok())
        .filter(|e| is_config_file(&e.path()))
        .filter_map(|e| {
            // Follows symlinks, as ConfigMap mounts use them.
            let m = std::fs::metadata(e.path()).ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    fp.sort();
    fp
}

/// Tracks one directory's config files between polls.
#[derive(Debug)]
pub struct DirWatch {
    dir: PathBuf,
    applied: Fingerprint,
    pending: Option<Fingerprint>,
}

impl DirWatch {
    /// Starts from the directory as it is now (already loaded by the caller).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        let applied = fingerprint(&dir);
        Self {
            dir,
            applied,
            pending: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when the files changed and have stayed the same since the
    /// previous poll: time to load them.
    pub fn poll(&mut self) -> bool {
        let fp = fingerprint(&self.dir);
        if fp == self.applied {
            self.pending = None;
            return false;
        }
        if self.pending.as_ref() != Some(&fp) {
            self.pending = Some(fp);
            return false;
        }
        self.applied = fp;
        self.pending = None;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_a_change_once_it_is_stable() {
        let dir = std::env::temp_dir().join(format!("weft-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), "x").unwrap();
        let mut w = DirWatch::new(&dir);
        assert!(!w.poll(), "nothing changed");
        std::fs::write(dir.join("a.yaml"), "xy").unwrap();
        assert!(!w.poll(), "first sight of a change: wait one poll");
        assert!(w.poll(), "stable: load it");
        assert!(!w.poll(), "reported once");
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        assert!(!w.poll() && !w.poll(), "non-config files are ignored");
        std::fs::write(dir.join("b.yml"), "1").unwrap();
        assert!(!w.poll());
        std::fs::write(dir.join("b.yml"), "12").unwrap();
        assert!(!w.poll(), "still changing: keep waiting");
        assert!(w.poll());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
