//! xDS resources as the server holds them: encoded once, versioned by
//! content, shared (`Arc`) between every node that receives them.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// The resource types weft serves over ADS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeUrl {
    Listener,
    RouteConfiguration,
    Cluster,
    ClusterLoadAssignment,
}

impl TypeUrl {
    pub const ALL: [TypeUrl; 4] = [
        TypeUrl::Listener,
        TypeUrl::RouteConfiguration,
        TypeUrl::Cluster,
        TypeUrl::ClusterLoadAssignment,
    ];

    /// The `type.googleapis.com/...` URL.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeUrl::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            TypeUrl::RouteConfiguration => {
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
            }
            TypeUrl::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            TypeUrl::ClusterLoadAssignment => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
        }
    }

    /// Parses a type URL; `None` for types weft does not serve.
    pub fn parse(url: &str) -> Option<TypeUrl> {
        TypeUrl::ALL.into_iter().find(|t| t.as_str() == url)
    }

    /// LDS and CDS are wildcard-capable (a client may ask for "everything");
    /// RDS and EDS are always requested by name.
    pub fn is_wildcard_capable(self) -> bool {
        matches!(self, TypeUrl::Listener | TypeUrl::Cluster)
    }
}

impl std::fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TypeUrl::Listener => "LDS",
            TypeUrl::RouteConfiguration => "RDS",
            TypeUrl::Cluster => "CDS",
            TypeUrl::ClusterLoadAssignment => "EDS",
        })
    }
}

/// One encoded resource with a content version.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub type_url: TypeUrl,
    pub name: String,
    /// Hex digest of the encoded bytes: equal content, equal version.
    pub version: String,
    pub body: Any,
}

impl Resource {
    /// Encodes `message` as a resource of type `type_url` named `name`.
    pub fn new(type_url: TypeUrl, name: impl Into<String>, message: &impl Message) -> Self {
        Resource::from_encoded(type_url, name, message.encode_to_vec())
    }

    /// A resource of type `type_url` named `name` from its encoded bytes.
    pub fn from_encoded(type_url: TypeUrl, name: impl Into<String>, value: Vec<u8>) -> Self {
        let version = format!("{:016x}", digest(&value));
        Resource {
            type_url,
            name: name.into(),
            version,
            body: Any {
                type_url: type_url.as_str().to_string(),
                value,
            },
        }
    }

    /// Size of the encoded resource in bytes.
    pub fn encoded_len(&self) -> usize {
        self.body.value.len()
    }
}

/// A stable 64-bit digest (FNV-1a: no randomness, same across processes,
/// so versions survive a control-plane restart).
fn digest(bytes: &[u8]) -> u64 {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= *b as u64;
                self.0 = self.0.wrapping_mul(0x100000001b3);
            }
        }
    }
    let mut h = Fnv(0xcbf29ce484222325);
    bytes.hash(&mut h);
    h.finish()
}

/// Everything one node (or a group of identical nodes) should have: per
/// type, resource name -> resource.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSet {
    pub by_type: BTreeMap<TypeUrl, BTreeMap<String, Arc<Resource>>>,
}

impl ResourceSet {
    pub fn insert(&mut self, resource: Resource) {
        self.insert_shared(Arc::new(resource));
    }

    /// Inserts a resource that other sets share.
    pub fn insert_shared(&mut self, resource: Arc<Resource>) {
        self.by_type
            .entry(resource.type_url)
            .or_default()
            .insert(resource.name.clone(), resource);
    }

    /// The resources of one type (empty when none).
    pub fn of(&self, type_url: TypeUrl) -> impl Iterator<Item = &Arc<Resource>> {
        self.by_type
            .get(&type_url)
            .into_iter()
            .flat_map(|m| m.values())
    }

    pub fn get(&self, type_url: TypeUrl, name: &str) -> Option<&Arc<Resource>> {
        self.by_type.get(&type_url)?.get(name)
    }

    /// A version for the whole set of one type (the SotW `version_info`):
    /// changes exactly when a resource of that type is added, removed or changed.
    pub fn type_version(&self, type_url: TypeUrl) -> String {
        let mut h = Vec::new();
        for r in self.of(type_url) {
            h.extend_from_slice(r.name.as_bytes());
            h.push(0);
            h.extend_from_slice(r.version.as_bytes());
            h.push(0);
        }
        format!("{:016x}", digest(&h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;

    fn cluster(name: &str, timeout_s: i64) -> Resource {
        let c = Cluster {
            name: name.into(),
            connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: timeout_s,
                nanos: 0,
            }),
            ..Default::default()
        };
        Resource::new(TypeUrl::Cluster, name, &c)
    }

    #[test]
    fn versions_follow_content() {
        assert_eq!(cluster("a", 1).version, cluster("a", 1).version);
        assert_ne!(cluster("a", 1).version, cluster("a", 2).version);
        assert_eq!(cluster("a", 1).body.type_url, TypeUrl::Cluster.as_str());
    }

    #[test]
    fn type_versions_change_on_add_remove_and_change() {
        let mut s = ResourceSet::default();
        s.insert(cluster("a", 1));
        let v1 = s.type_version(TypeUrl::Cluster);
        s.insert(cluster("b", 1));
        let v2 = s.type_version(TypeUrl::Cluster);
        s.insert(cluster("b", 2));
        let v3 = s.type_version(TypeUrl::Cluster);
        assert!(v1 != v2 && v2 != v3 && v1 != v3);
        assert_eq!(
            s.type_version(TypeUrl::Listener),
            ResourceSet::default().type_version(TypeUrl::Listener)
        );
    }

    #[test]
    fn type_urls_round_trip() {
        for t in TypeUrl::ALL {
            assert_eq!(TypeUrl::parse(t.as_str()), Some(t));
        }
        assert_eq!(TypeUrl::parse("type.googleapis.com/envoy.nope"), None);
    }
}
