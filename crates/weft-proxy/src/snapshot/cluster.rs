//! Cluster and ClusterLoadAssignment -> plans: the upstream protocol, where
//! a cluster's endpoints come from, and the endpoints with their weights.

use std::net::SocketAddr;

use prost::{Message, Name};
use weft_xds::envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use weft_xds::envoy_types::pb::envoy::config::core::v3::HealthStatus;
use weft_xds::envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use weft_xds::envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};

use weft_model::PolicySections;

use super::listener::socket_addr;
use super::routes::strip_port;
use crate::policy::{ClusterSettings, POLICY_METADATA_KEY, parse_sections, policy_json};

#[derive(Clone)]
pub(super) struct ClusterPlan {
    /// `name.namespace`: the cluster name without `:PORT`.
    pub label: String,
    pub http2: bool,
    pub endpoints: EndpointSource,
    /// The Service's TrafficPolicy sections (cluster metadata), checked.
    pub policy: Option<Box<PolicySections>>,
}

#[derive(Clone)]
pub(super) enum EndpointSource {
    /// From the ClusterLoadAssignment of this name.
    Eds(String),
    /// Inline (`STATIC`).
    Static(EndpointsPlan),
}

/// The endpoints that take traffic, with their weights.
#[derive(Clone, Default)]
pub(super) struct EndpointsPlan {
    pub endpoints: Vec<(SocketAddr, u32)>,
    /// The zone of each endpoint's locality, same order.
    pub zones: Vec<Option<String>>,
}

pub(super) fn parse_cluster(c: &Cluster) -> Result<ClusterPlan, String> {
    use cluster::{ClusterDiscoveryType, DiscoveryType};
    if c.transport_socket.is_some() {
        return Err("transport_socket (TLS) is not supported yet".into());
    }
    let kind = match &c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => {
            DiscoveryType::try_from(*t).map_err(|_| format!("unknown discovery type {t}"))?
        }
        Some(ClusterDiscoveryType::ClusterType(t)) => {
            return Err(format!("custom cluster type {:?} is not supported", t.name));
        }
    };
    let endpoints = match kind {
        DiscoveryType::Eds => {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            EndpointSource::Eds(service.to_string())
        }
        DiscoveryType::Static => {
            let cla = c
                .load_assignment
                .as_ref()
                .ok_or("STATIC without load_assignment")?;
            EndpointSource::Static(
                parse_load_assignment(cla).map_err(|e| format!("load_assignment: {e}"))?,
            )
        }
        other => {
            return Err(format!(
                "discovery type {} is not supported (weft takes EDS and STATIC)",
                other.as_str_name()
            ));
        }
    };
    let policy = match policy_json(c.metadata.as_ref())? {
        Some(json) => {
            let sections = parse_sections(&json)?;
            ClusterSettings::new(Some(&sections), &[], None)
                .map_err(|e| format!("metadata {POLICY_METADATA_KEY:?}: {e}"))?;
            Some(Box::new(sections))
        }
        None => None,
    };
    Ok(ClusterPlan {
        label: strip_port(&c.name).to_string(),
        http2: http2(c)?,
        endpoints,
        policy,
    })
}

/// Whether the cluster's upstreams speak HTTP/2: the explicit protocol of
/// its `HttpProtocolOptions` (or the deprecated `http2_protocol_options`).
fn http2(c: &Cluster) -> Result<bool, String> {
    use http_protocol_options::UpstreamProtocolOptions as U;
    use http_protocol_options::explicit_http_config::ProtocolConfig as P;
    #[allow(deprecated)]
    let mut http2 = c.http2_protocol_options.is_some();
    let Some(any) = c
        .typed_extension_protocol_options
        .get(&HttpProtocolOptions::full_name())
    else {
        return Ok(http2);
    };
    let opts = HttpProtocolOptions::decode(any.value.as_slice())
        .map_err(|e| format!("cannot decode HttpProtocolOptions: {e}"))?;
    match opts.upstream_protocol_options {
        None => {}
        Some(U::ExplicitHttpConfig(e)) => match e.protocol_config {
            Some(P::HttpProtocolOptions(_)) | None => http2 = false,
            Some(P::Http2ProtocolOptions(_)) => http2 = true,
            Some(P::Http3ProtocolOptions(_)) => {
                return Err("HTTP/3 upstreams are not supported".into());
            }
        },
        // Plaintext upstreams have no ALPN: Envoy's auto config is HTTP/1.1.
        Some(U::AutoConfig(_)) => http2 = false,
        Some(U::UseDownstreamProtocolConfig(_)) => {
            return Err(
                "use_downstream_protocol_config is not supported (weft picks the upstream protocol per cluster)"
                    .into(),
            );
        }
    }
    Ok(http2)
}

/// The endpoints of the highest-priority (lowest number) group that has
/// any, without the unhealthy and draining ones; weights default to 1.
pub(super) fn parse_load_assignment(cla: &ClusterLoadAssignment) -> Result<EndpointsPlan, String> {
    let mut by_priority: std::collections::BTreeMap<u32, Vec<(SocketAddr, u32, Option<String>)>> =
        Default::default();
    for (i, group) in cla.endpoints.iter().enumerate() {
        for (j, lb) in group.lb_endpoints.iter().enumerate() {
            let err = |e: String| format!("endpoints[{i}].lb_endpoints[{j}]: {e}");
            let health = HealthStatus::try_from(lb.health_status).unwrap_or(HealthStatus::Unknown);
            if matches!(
                health,
                HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout
            ) {
                continue;
            }
            let endpoint = match &lb.host_identifier {
                Some(lb_endpoint::HostIdentifier::Endpoint(e)) => e,
                _ => return Err(err("named endpoints are not supported".into())),
            };
            let addr = socket_addr(endpoint.address.as_ref()).map_err(err)?;
            let weight = match &lb.load_balancing_weight {
                None => 1,
                Some(w) if w.value == 0 => return Err(err("load_balancing_weight 0".into())),
                Some(w) => w.value,
            };
            let zone = group
                .locality
                .as_ref()
                .map(|l| l.zone.clone())
                .filter(|z| !z.is_empty());
            by_priority
                .entry(group.priority)
                .or_default()
                .push((addr, weight, zone));
        }
    }
    let first = by_priority.into_values().next().unwrap_or_default();
    Ok(EndpointsPlan {
        endpoints: first.iter().map(|(a, w, _)| (*a, *w)).collect(),
        zones: first.into_iter().map(|(_, _, z)| z).collect(),
    })
}
