//! Clusters and endpoint assignments of Service ports, and the static
//! cluster of a sidecar's local app.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, circuit_breakers, cluster,
};
use envoy_types::pb::envoy::config::core::v3::{Http2ProtocolOptions, Locality, RoutingPriority};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use weft_model::{Protocol, Service};

use super::TranslateOptions;
use super::names::{cluster_name, inbound_cluster_name};
use super::proto::{HTTP_PROTOCOL_OPTIONS, ads, any, duration, socket_address, uint32};
use crate::resource::{Resource, TypeUrl};

/// The cluster of one Service port: endpoints from EDS over ADS, round
/// robin, HTTP/2 upstream for `http2` / `grpc` ports.
pub(super) fn cluster(
    svc: &Service,
    port: u16,
    opts: &TranslateOptions,
    policy: &weft_model::PolicySections,
) -> Resource {
    let name = cluster_name(svc, port);
    let protocol = svc.port(port).map_or(Protocol::Http, |p| p.protocol);
    let mut c = Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..base_cluster(protocol, opts)
    };
    super::policy::apply(&mut c, policy);
    Resource::new(TypeUrl::Cluster, name, &c)
}

/// What every cluster shares: connect timeout, round robin, no circuit
/// breaking (weft has none; Envoy's default of 1024 would cap a load test),
/// and the upstream HTTP version.
pub(super) fn base_cluster(protocol: Protocol, opts: &TranslateOptions) -> Cluster {
    let unlimited = uint32(u32::MAX);
    let mut typed_extension_protocol_options = HashMap::new();
    if protocol.is_http2() {
        typed_extension_protocol_options.insert(HTTP_PROTOCOL_OPTIONS.to_string(), any(&http2()));
    }
    Cluster {
        connect_timeout: Some(duration(opts.connect_timeout)),
        lb_policy: cluster::LbPolicy::RoundRobin as i32,
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![circuit_breakers::Thresholds {
                priority: RoutingPriority::Default as i32,
                max_connections: unlimited,
                max_pending_requests: unlimited,
                max_requests: unlimited,
                max_retries: unlimited,
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options,
        ..Default::default()
    }
}

fn http2() -> HttpProtocolOptions {
    use http_protocol_options::{ExplicitHttpConfig, explicit_http_config::ProtocolConfig};
    HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            ),
        ),
        ..Default::default()
    }
}

/// The endpoints of one Service port, grouped by locality (region, zone).
///
/// Every endpoint keeps its weight (at least 1: both Envoy and gRPC reject
/// 0) and every locality group carries a weight, the sum of its endpoints'
/// (gRPC fails every call on a group without one). A Service without
/// endpoints gets an assignment without endpoints.
pub(super) fn load_assignment(svc: &Service, port: u16) -> Resource {
    let name = cluster_name(svc, port);
    let mut groups: BTreeMap<(&Option<String>, &Option<String>), Vec<&weft_model::Endpoint>> =
        BTreeMap::new();
    for e in &svc.endpoints {
        groups
            .entry((&e.locality.region, &e.locality.zone))
            .or_default()
            .push(e);
    }
    let endpoints = groups
        .into_iter()
        .map(|((region, zone), eps)| {
            let weight = eps
                .iter()
                .fold(0u32, |sum, e| sum.saturating_add(e.weight.max(1)));
            LocalityLbEndpoints {
                locality: Some(Locality {
                    region: region.clone().unwrap_or_default(),
                    zone: zone.clone().unwrap_or_default(),
                    ..Default::default()
                }),
                lb_endpoints: eps
                    .iter()
                    .map(|e| lb_endpoint(e.address.ip(), e.address.port(), e.weight))
                    .collect(),
                load_balancing_weight: uint32(weight.max(1)),
                ..Default::default()
            }
        })
        .collect();
    let cla = ClusterLoadAssignment {
        cluster_name: name.clone(),
        endpoints,
        ..Default::default()
    };
    Resource::new(TypeUrl::ClusterLoadAssignment, name, &cla)
}

fn lb_endpoint(ip: IpAddr, port: u16, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(ip, port)),
            ..Default::default()
        })),
        load_balancing_weight: uint32(weight.max(1)),
        ..Default::default()
    }
}

/// The port of `svc` the inbound listener serves and how: the first HTTP
/// port, else the first port (opaque TCP).
pub(super) fn inbound_port(svc: &Service) -> Option<(u16, Protocol)> {
    svc.first_http_port()
        .or_else(|| svc.ports.first())
        .map(|p| (p.port, p.protocol))
}

/// `inbound|NAME.NAMESPACE`: the local app at `127.0.0.1:<port>`, static.
pub(super) fn inbound_cluster(svc: &Service, opts: &TranslateOptions) -> Option<Resource> {
    let (port, protocol) = inbound_port(svc)?;
    let name = inbound_cluster_name(svc);
    let c = Cluster {
        name: name.clone(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![lb_endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST), port, 1)],
                load_balancing_weight: uint32(1),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..base_cluster(protocol, opts)
    };
    Some(Resource::new(TypeUrl::Cluster, name, &c))
}
