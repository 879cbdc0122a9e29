//! Who is asking: a node's identity and data-plane kind, from the standard
//! `Node` message only (no mesh-specific metadata required), and the admin
//! address a node may announce in its metadata for metrics discovery.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::value::Kind;

/// Which data plane a node runs; decides the form of its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataPlane {
    /// weft's own proxy (`user_agent_name: weft`).
    Weft,
    /// Envoy, as a sidecar or a gateway (`user_agent_name: envoy`).
    Envoy,
    /// A proxyless gRPC client (`user_agent_name: gRPC ...`).
    Grpc,
}

impl DataPlane {
    pub fn as_str(self) -> &'static str {
        match self {
            DataPlane::Weft => "weft",
            DataPlane::Envoy => "envoy",
            DataPlane::Grpc => "grpc",
        }
    }
}

/// A node as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// `node.id`: the instance.
    pub id: String,
    /// `node.cluster` (Envoy's `--service-cluster`), else `node.metadata`'s
    /// `cluster` / `service` string: the Service or Gateway it serves.
    pub cluster: String,
    pub kind: DataPlane,
    /// `node.user_agent_name` as sent.
    pub user_agent: String,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> NodeInfo {
        let ua = node.user_agent_name.as_str();
        let lower = ua.to_ascii_lowercase();
        let kind = if lower.starts_with("grpc") {
            DataPlane::Grpc
        } else if lower.starts_with("weft") {
            DataPlane::Weft
        } else {
            // Envoy sends "envoy"; unknown xDS clients get the most widely
            // accepted (Envoy) form.
            DataPlane::Envoy
        };
        let cluster = if !node.cluster.is_empty() {
            node.cluster.clone()
        } else {
            metadata_string(node, "cluster")
                .or_else(|| metadata_string(node, "service"))
                .unwrap_or_default()
        };
        NodeInfo {
            id: node.id.clone(),
            cluster,
            kind,
            user_agent: ua.to_string(),
        }
    }
}

/// The `node.metadata` key under which a node announces its admin (metrics)
/// address, `"HOST:PORT"`; the control plane lists it for Prometheus
/// discovery. weft proxies send it; Envoy can, from its bootstrap's
/// `node.metadata`.
pub const ADMIN_METADATA_KEY: &str = "weft.dev/admin";

/// The admin address a node announces ([`ADMIN_METADATA_KEY`]), if it is
/// a usable `HOST:PORT` (non-empty host, numeric port, not `0.0.0.0`).
pub fn announced_admin(node: &Node) -> Option<String> {
    let addr = metadata_string(node, ADMIN_METADATA_KEY)?;
    let (host, port) = addr.rsplit_once(':')?;
    let host_ok = !host.is_empty() && !matches!(host, "0.0.0.0" | "[::]");
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    (host_ok && port_ok).then_some(addr)
}

fn metadata_string(node: &Node, key: &str) -> Option<String> {
    match node.metadata.as_ref()?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::protobuf::{Struct, Value};

    fn node(ua: &str, cluster: &str) -> Node {
        Node {
            id: "n1".into(),
            cluster: cluster.into(),
            user_agent_name: ua.into(),
            ..Default::default()
        }
    }

    #[test]
    fn kind_comes_from_the_user_agent() {
        assert_eq!(
            NodeInfo::from_node(&node("envoy", "a")).kind,
            DataPlane::Envoy
        );
        assert_eq!(
            NodeInfo::from_node(&node("gRPC Python", "a")).kind,
            DataPlane::Grpc
        );
        assert_eq!(
            NodeInfo::from_node(&node("grpc-java", "a")).kind,
            DataPlane::Grpc
        );
        assert_eq!(
            NodeInfo::from_node(&node("weft", "a")).kind,
            DataPlane::Weft
        );
        assert_eq!(NodeInfo::from_node(&node("", "a")).kind, DataPlane::Envoy);
    }

    #[test]
    fn cluster_falls_back_to_metadata() {
        let mut n = node("gRPC C++", "");
        let mut fields = std::collections::HashMap::new();
        fields.insert(
            "service".to_string(),
            Value {
                kind: Some(Kind::StringValue("catalog".into())),
            },
        );
        n.metadata = Some(Struct { fields });
        assert_eq!(NodeInfo::from_node(&n).cluster, "catalog");
        assert_eq!(
            NodeInfo::from_node(&node("envoy", "frontend")).cluster,
            "frontend"
        );
    }

    #[test]
    fn the_admin_address_is_taken_when_usable() {
        let with = |addr: &str| {
            let mut n = node("envoy", "a");
            let value = Value {
                kind: Some(Kind::StringValue(addr.into())),
            };
            n.metadata = Some(Struct {
                fields: [(ADMIN_METADATA_KEY.to_string(), value)].into(),
            });
            announced_admin(&n)
        };
        assert_eq!(with("10.1.2.3:15000").as_deref(), Some("10.1.2.3:15000"));
        assert_eq!(with("[::1]:15000").as_deref(), Some("[::1]:15000"));
        assert_eq!(with("pod-1.ns:9901").as_deref(), Some("pod-1.ns:9901"));
        for bad in ["", "10.1.2.3", ":15000", "h:x", "h:0", "0.0.0.0:15000"] {
            assert_eq!(with(bad), None, "{bad:?}");
        }
        assert_eq!(announced_admin(&node("weft", "a")), None);
    }
}
