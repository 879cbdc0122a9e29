//! Per-node-group xDS snapshots. Nodes of the same data-plane kind serving
//! the same Service (or Gateway) get identical config, so they share one
//! group: one translation and one watch channel per group, not per node.
//! On a config change each group is translated once (per-Service pieces are
//! memoized across groups by the translator) and a group's watchers are woken
//! only if its set actually changed: push cost follows what changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;
use weft_model::Config;
use weft_xds::server::SnapshotSource;
use weft_xds::translate::{TranslateOptions, Translator};
use weft_xds::{DataPlane, NodeInfo, ResourceSet, TypeUrl};

type GroupKey = (DataPlane, String);

struct Group {
    /// A node of the group, to translate for.
    representative: NodeInfo,
    tx: watch::Sender<Arc<ResourceSet>>,
}

struct State {
    generation: u64,
    config: Arc<Config>,
    translator: Translator,
    groups: HashMap<GroupKey, Group>,
}

/// What one config update did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateStats {
    /// Groups whose resources changed (their nodes get a push).
    pub groups_changed: usize,
    /// All groups with at least one connected node.
    pub groups: usize,
}

pub struct SnapshotCache {
    state: Mutex<State>,
    /// When each generation was published (for push-latency metrics).
    published_at: Mutex<Instant>,
}

impl SnapshotCache {
    pub fn new(config: Config, opts: TranslateOptions) -> Self {
        let config = Arc::new(config);
        Self {
            state: Mutex::new(State {
                generation: 1,
                translator: Translator::new(config.clone(), opts.clone()),
                config,
                groups: HashMap::new(),
            }),
            published_at: Mutex::new(Instant::now()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    /// When the newest generation was published.
    pub fn published_at(&self) -> Instant {
        *self.published_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The resources a node would get now (for `/config_dump?node=`).
    pub fn resources_for(&self, node: &NodeInfo) -> ResourceSet {
        self.lock().translator.resources_for(node)
    }

    /// Publishes a new config: retranslates every group with watchers and
    /// wakes those whose set changed. Returns `None` when the config is the
    /// one already served.
    pub fn update(&self, config: Config) -> Option<UpdateStats> {
        let mut st = self.lock();
        if *st.config == config {
            return None;
        }
        let config = Arc::new(config);
        st.translator = st.translator.next(config.clone());
        st.config = config;
        st.generation += 1;
        // Groups nobody watches any more are dropped here, off the push path.
        st.groups.retain(|_, g| g.tx.receiver_count() > 0);
        let mut stats = UpdateStats {
            groups: st.groups.len(),
            ..Default::default()
        };
        let State {
            translator, groups, ..
        } = &mut *st;
        for g in groups.values() {
            let next = translator.resources_for(&g.representative);
            let changed = {
                let current = g.tx.borrow();
                TypeUrl::ALL
                    .iter()
                    .any(|t| current.type_version(*t) != next.type_version(*t))
            };
            if changed {
                stats.groups_changed += 1;
                g.tx.send_replace(Arc::new(next));
            }
        }
        *self.published_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        Some(stats)
    }
}

impl SnapshotSource for SnapshotCache {
    fn watch(&self, node: &NodeInfo) -> watch::Receiver<Arc<ResourceSet>> {
        let mut st = self.lock();
        let key = (node.kind, node.cluster.clone());
        if let Some(g) = st.groups.get(&key) {
            return g.tx.subscribe();
        }
        let set = Arc::new(st.translator.resources_for(node));
        let (tx, rx) = watch::channel(set);
        st.groups.insert(
            key,
            Group {
                representative: node.clone(),
                tx,
            },
        );
        rx
    }
}
