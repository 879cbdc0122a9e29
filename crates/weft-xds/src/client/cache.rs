//! The client's resource cache: per type, name -> the accepted resource
//! (version + `Any`), plus what each resource depends on. Pure (no I/O), so
//! the protocol rules are unit-tested here:
//!
//! - a response is accepted whole or not at all: every resource must
//!   decode as its type, carry its own name and pass the data plane's
//!   check, else nothing of it is applied and the message says what failed;
//! - `removed_resources` drop what the cache holds; for a name subscribed
//!   by name (RDS, EDS) it means "does not exist", remembered so the set is
//!   not waited for in vain;
//! - RDS and EDS names are wanted because a listener or a cluster names
//!   them, and forgotten when none does any more;
//! - the set is complete when LDS and CDS have answered and every name a
//!   listener, route or cluster references is present (or known absent).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use prost::Message;

use super::deps::{self, Deps};
use crate::resource::{Resource, ResourceSet, TypeUrl};

/// Most problems named in one NACK message (the rest are counted).
const MAX_PROBLEMS: usize = 5;

/// A dependency the set still lacks: `(type, name)`; `name` is `*` for
/// "the first response of this wildcard type".
pub type Missing = (TypeUrl, String);

#[derive(Debug, Default)]
pub struct ResourceCache {
    set: ResourceSet,
    deps: HashMap<(TypeUrl, String), Deps>,
    /// Names subscribed by name that the server says do not exist.
    absent: BTreeSet<(TypeUrl, String)>,
    /// Types the server has answered at least once.
    answered: BTreeSet<TypeUrl>,
}

/// What an accepted response did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The set (or what is known absent) changed.
    pub changed: bool,
}

impl ResourceCache {
    /// The accepted resources.
    pub fn set(&self) -> &ResourceSet {
        &self.set
    }

    /// name -> version of type `t`, for `initial_resource_versions`.
    pub fn versions(&self, t: TypeUrl) -> HashMap<String, String> {
        self.set
            .of(t)
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect()
    }

    /// Applies one response of type `t`, all or nothing. `check` is the data
    /// plane's verdict on each new or changed resource. `Err` is the NACK
    /// message; the cache is then unchanged.
    pub fn apply(
        &mut self,
        t: TypeUrl,
        response: &DeltaDiscoveryResponse,
        mut check: impl FnMut(&Arc<Resource>) -> Result<(), String>,
    ) -> Result<Applied, String> {
        let mut accepted = Vec::with_capacity(response.resources.len());
        let mut problems = Vec::new();
        for r in &response.resources {
            match decode(t, r) {
                Ok((resource, deps)) => {
                    let held = self.set.get(t, &resource.name);
                    if held
                        .is_some_and(|h| h.version == resource.version && h.body == resource.body)
                    {
                        continue;
                    }
                    match check(&resource) {
                        Ok(()) => accepted.push((resource, deps)),
                        Err(e) => problems.push(e),
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        if !problems.is_empty() {
            let total = problems.len();
            problems.truncate(MAX_PROBLEMS);
            let mut message = problems.join("; ");
            if total > MAX_PROBLEMS {
                message.push_str(&format!("; and {} more", total - MAX_PROBLEMS));
            }
            return Err(message);
        }
        self.answered.insert(t);
        let mut changed = false;
        for (resource, deps) in accepted {
            let key = (t, resource.name.clone());
            self.absent.remove(&key);
            self.deps.insert(key, deps);
            self.set.insert_shared(resource);
            changed = true;
        }
        let named = !t.is_wildcard_capable();
        for name in &response.removed_resources {
            let key = (t, name.clone());
            if self.remove(t, name) {
                changed = true;
            }
            if named && self.absent.insert(key) {
                changed = true;
            }
        }
        Ok(Applied { changed })
    }

    fn remove(&mut self, t: TypeUrl, name: &str) -> bool {
        self.deps.remove(&(t, name.to_string()));
        let Some(of_type) = self.set.by_type.get_mut(&t) else {
            return false;
        };
        let removed = of_type.remove(name).is_some();
        if of_type.is_empty() {
            self.set.by_type.remove(&t);
        }
        removed
    }

    /// The names of `t` to subscribe to: RDS named by listeners, EDS named
    /// by clusters. Empty for the wildcard types.
    pub fn wanted(&self, t: TypeUrl) -> BTreeSet<String> {
        let pick: fn(&Deps) -> &Vec<String> = match t {
            TypeUrl::RouteConfiguration => |d| &d.routes,
            TypeUrl::ClusterLoadAssignment => |d| &d.loads,
            TypeUrl::Listener | TypeUrl::Cluster => return BTreeSet::new(),
        };
        self.deps.values().flat_map(pick).cloned().collect()
    }

    /// Drops RDS and EDS resources (and absence notes) nothing wants any
    /// more; `true` if the set changed.
    pub fn forget_unwanted(&mut self) -> bool {
        let mut changed = false;
        for t in [TypeUrl::RouteConfiguration, TypeUrl::ClusterLoadAssignment] {
            let wanted = self.wanted(t);
            let stale: Vec<String> = self
                .set
                .of(t)
                .map(|r| r.name.clone())
                .filter(|n| !wanted.contains(n))
                .collect();
            for name in stale {
                changed |= self.remove(t, &name);
            }
            self.absent.retain(|(ty, n)| *ty != t || wanted.contains(n));
        }
        changed
    }

    /// What the set lacks to be consistent, sorted.
    pub fn missing(&self) -> Vec<Missing> {
        let mut out = BTreeSet::new();
        for t in [TypeUrl::Listener, TypeUrl::Cluster] {
            if !self.answered.contains(&t) {
                out.insert((t, "*".to_string()));
            }
        }
        let mut need = |t: TypeUrl, name: &String| {
            let key = (t, name.clone());
            if self.set.get(t, name).is_none() && !self.absent.contains(&key) {
                out.insert(key);
            }
        };
        for ((owner, _), deps) in &self.deps {
            for r in &deps.routes {
                need(TypeUrl::RouteConfiguration, r);
            }
            // Clusters named by listeners and routes; every EDS cluster's load.
            if matches!(owner, TypeUrl::Listener | TypeUrl::RouteConfiguration) {
                for c in &deps.clusters {
                    need(TypeUrl::Cluster, c);
                }
            }
            for l in &deps.loads {
                need(TypeUrl::ClusterLoadAssignment, l);
            }
        }
        out.into_iter().collect()
    }

    /// Per type, how many resources the cache holds.
    pub fn counts(&self) -> BTreeMap<TypeUrl, usize> {
        self.set
            .by_type
            .iter()
            .map(|(t, m)| (*t, m.len()))
            .collect()
    }
}

/// The kind of resource a type URL holds, for messages.
pub(super) fn kind(t: TypeUrl) -> &'static str {
    match t {
        TypeUrl::Listener => "Listener",
        TypeUrl::RouteConfiguration => "RouteConfiguration",
        TypeUrl::Cluster => "Cluster",
        TypeUrl::ClusterLoadAssignment => "ClusterLoadAssignment",
    }
}

/// One resource of a response, decoded and named, with what it depends on.
fn decode(
    t: TypeUrl,
    r: &envoy_types::pb::envoy::service::discovery::v3::Resource,
) -> Result<(Arc<Resource>, Deps), String> {
    let what = format!("{} {:?}", kind(t), r.name);
    if r.name.is_empty() {
        return Err(format!("a {} without a name", kind(t)));
    }
    let Some(any) = &r.resource else {
        return Err(format!("{what}: no resource body"));
    };
    if any.type_url != t.as_str() {
        return Err(format!(
            "{what}: carries {:?} in a {} response",
            any.type_url,
            kind(t)
        ));
    }
    let bytes = any.value.as_slice();
    let undecodable = |e: prost::DecodeError| format!("{what}: cannot decode: {e}");
    let (inner_name, deps) = match t {
        TypeUrl::Listener => {
            let l = Listener::decode(bytes).map_err(undecodable)?;
            let d = deps::listener(&l);
            (l.name, d)
        }
        TypeUrl::RouteConfiguration => {
            let rc = RouteConfiguration::decode(bytes).map_err(undecodable)?;
            let d = deps::route_config(&rc);
            (rc.name, d)
        }
        TypeUrl::Cluster => {
            let c = Cluster::decode(bytes).map_err(undecodable)?;
            let d = deps::cluster(&c);
            (c.name, d)
        }
        TypeUrl::ClusterLoadAssignment => {
            let cla = ClusterLoadAssignment::decode(bytes).map_err(undecodable)?;
            (cla.cluster_name, Deps::default())
        }
    };
    if inner_name != r.name {
        return Err(format!(
            "{what}: the resource inside is named {inner_name:?}"
        ));
    }
    let resource = Arc::new(Resource {
        type_url: t,
        name: r.name.clone(),
        version: r.version.clone(),
        body: any.clone(),
    });
    Ok((resource, deps))
}
