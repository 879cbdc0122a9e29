//! The gateway form (Envoy and weft): for a node running a Gateway, one
//! Listener per Gateway listener, bound on every Gateway address, whose
//! HTTP connection manager takes a route configuration of the same name
//! over RDS: one virtual host per hostname the attached routes answer, with
//! their rules in Gateway API precedence ([`weft_model::Config::gateway_hosts`]),
//! sending to the backend Services' clusters.

use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::AdditionalAddress;
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::StripPortMode;
use weft_model::{Gateway, GatewayListener};

use super::flow::{PolicyFilters, route_config_resource};
use super::names::gateway_listener_name;
use super::proto::{
    HCM_FILTER, Routes, any, http_connection_manager, network_filter, socket_address,
};
use super::route::table_routes;
use super::sidecar::listener;
use super::{Flavor, PortRef, Translator};
use crate::resource::{Resource, ResourceSet, TypeUrl};

/// A Gateway's listeners and route configurations, and the clusters its
/// routes send to: the same for every node running it.
pub(super) struct GatewayPieces {
    resources: Vec<Arc<Resource>>,
    clusters: Vec<PortRef>,
}

impl Translator {
    /// Everything a node running Gateway `index` receives.
    pub(super) fn gateway_resources(&self, index: usize, filters: PolicyFilters) -> ResourceSet {
        let pieces = self.gateway_pieces(index, filters);
        let mut set = ResourceSet::default();
        for r in &pieces.resources {
            set.insert_shared(r.clone());
        }
        self.insert_clusters(&mut set, pieces.clusters.iter().copied());
        set
    }

    fn gateway_pieces(&self, index: usize, filters: PolicyFilters) -> Arc<GatewayPieces> {
        self.gateways.get_or_insert_with((index, filters), || {
            let gw = &self.config.gateways[index];
            let mut resources = Vec::with_capacity(gw.listeners.len() * 2);
            let mut clusters = Vec::new();
            for l in &gw.listeners {
                let name = gateway_listener_name(gw, l);
                let rc = self.gateway_route_config(gw, l, &name, &mut clusters);
                resources.push(Arc::new(route_config_resource(name.clone(), &rc)));
                resources.push(Arc::new(gateway_listener(gw, l, name, filters)));
            }
            Arc::new(GatewayPieces {
                resources,
                clusters,
            })
        })
    }

    /// One virtual host per hostname (`*` for any host; a request for no
    /// listed host gets 404, as Gateway API requires).
    fn gateway_route_config(
        &self,
        gw: &Gateway,
        l: &GatewayListener,
        name: &str,
        clusters: &mut Vec<PortRef>,
    ) -> RouteConfiguration {
        let virtual_hosts = self
            .config
            .gateway_hosts(gw, l)
            .into_iter()
            .map(|host| {
                let domain = host.hostname.unwrap_or_else(|| "*".into());
                let routes = table_routes(&self.config, &host.routes, Flavor::Sidecar);
                clusters.extend(routes.clusters);
                VirtualHost {
                    name: domain.clone(),
                    domains: vec![domain],
                    routes: routes.routes,
                    ..Default::default()
                }
            })
            .collect();
        RouteConfiguration {
            name: name.to_string(),
            virtual_hosts,
            ..Default::default()
        }
    }
}

/// `gateway|NAME.NAMESPACE|LISTENER` on every address of the Gateway at the
/// listener's port. The `Host` port is ignored when matching hostnames, as
/// Gateway API requires.
fn gateway_listener(
    gw: &Gateway,
    l: &GatewayListener,
    name: String,
    filters: PolicyFilters,
) -> Resource {
    let mut hcm = http_connection_manager(&name, Routes::Rds(name.clone()));
    hcm.http_filters = filters.http_filters();
    hcm.strip_port_mode = Some(StripPortMode::StripAnyHostPort(true));
    let mut addrs = gw.addresses.iter().map(|ip| SocketAddr::new(*ip, l.port));
    let first = addrs
        .next()
        .expect("validation gives every Gateway an address");
    let mut pb = listener(
        name.clone(),
        first,
        TrafficDirection::Inbound,
        network_filter(HCM_FILTER, any(&hcm)),
    );
    pb.additional_addresses = addrs
        .map(|a| AdditionalAddress {
            address: Some(socket_address(a.ip(), a.port())),
            ..Default::default()
        })
        .collect();
    Resource::new(TypeUrl::Listener, name, &pb)
}
