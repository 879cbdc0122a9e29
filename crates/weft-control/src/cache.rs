//! Per-node-group xDS snapshots. Nodes of the same data-plane kind serving
//! the same Service (or Gateway) get identical config, so they share one
//! group: one translation and one watch channel per group, not per node.
//! On a config change each group is translated once (per-Service pieces are
//! memoized across groups by the translator) and a group's watchers are woken
//! only if its set actually changed: push cost follows what changed. When
//! only endpoints changed (the most frequent change by far), only the groups
//! with a changed Service in scope are translated at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;
use weft_model::{Config, Service};
use weft_xds::server::SnapshotSource;
use weft_xds::translate::{TranslateOptions, Translator, services_in_scope};
use weft_xds::{DataPlane, NodeInfo, ResourceSet, TypeUrl};

#[cfg(test)]
mod tests;

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

    /// When the newest generation was published (handed to the cache, before
    /// its translation).
    pub fn published_at(&self) -> Instant {
        *self.published_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The resources a node would get now (for `/config_dump?node=`).
    pub fn resources_for(&self, node: &NodeInfo) -> ResourceSet {
        self.lock().translator.resources_for(node)
    }

    /// Publishes a new config: retranslates every group with watchers (or,
    /// when only endpoints changed, every group with such a Service in
    /// scope) and wakes those whose set changed. Returns `None` when the
    /// config is the one already served.
    pub fn update(&self, config: Config) -> Option<UpdateStats> {
        let mut st = self.lock();
        if *st.config == config {
            return None;
        }
        // Before any watch is woken: streams read it when they wake, as
        // the start of their push latency (translation included).
        *self.published_at.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let endpoints_changed = endpoint_only_changes(&st.config, &config);
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
            if let Some(changed) = &endpoints_changed {
                let scope = services_in_scope(translator.config(), &g.representative);
                if !scope.iter().any(|i| changed.binary_search(i).is_ok()) {
                    continue;
                }
            }
            let next = translator.resources_for(&g.representative);
            if !same_resources(&g.tx.borrow(), &next) {
                stats.groups_changed += 1;
                g.tx.send_replace(Arc::new(next));
            }
        }
        Some(stats)
    }
}

/// When the Services' endpoints are the only difference between two
/// configs: the indices of the Services whose endpoints changed (sorted).
/// Then no scope changed, and a node group's set depends only on the
/// Services in its scope ([`services_in_scope`] is the one place that
/// decides it) and on the rest of the config, which is the same.
fn endpoint_only_changes(old: &Config, new: &Config) -> Option<Vec<usize>> {
    if old.services.len() != new.services.len() {
        return None;
    }
    let without_endpoints = |s: &Service| Service {
        endpoints: Vec::new(),
        ..s.clone()
    };
    let mut changed = Vec::new();
    for (i, (a, b)) in old.services.iter().zip(&new.services).enumerate() {
        if a == b {
            continue;
        }
        if without_endpoints(a) != without_endpoints(b) {
            return None;
        }
        changed.push(i);
    }
    // Exhaustive on purpose: a kind of resource added to the model does not
    // compile here until it is compared.
    let Config {
        services: _,
        gateways,
        http_routes,
        grpc_routes,
        traffic_splits,
        http_route_groups,
        traffic_policies,
    } = old;
    let rest_same = *gateways == new.gateways
        && *http_routes == new.http_routes
        && *grpc_routes == new.grpc_routes
        && *traffic_splits == new.traffic_splits
        && *http_route_groups == new.http_route_groups
        && *traffic_policies == new.traffic_policies;
    rest_same.then_some(changed)
}

/// Whether two sets hold the same resources (names and versions). Cheaper
/// than comparing `type_version`s, which hash every name and version: the
/// translator shares unchanged resources, so most entries are the same `Arc`.
fn same_resources(a: &ResourceSet, b: &ResourceSet) -> bool {
    TypeUrl::ALL.iter().all(|t| {
        let (mut a, mut b) = (a.of(*t), b.of(*t));
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(x), Some(y))
                    if x.name == y.name && (Arc::ptr_eq(x, y) || x.version == y.version) => {}
                _ => return false,
            }
        }
    })
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

    fn published_at(&self) -> Option<Instant> {
        Some(SnapshotCache::published_at(self))
    }
}
