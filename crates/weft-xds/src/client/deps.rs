//! What a resource needs from other resource types, as Envoy follows it:
//! a listener's HTTP connection manager names its RouteConfiguration (RDS),
//! routes and TCP proxies name clusters, and an EDS cluster names its
//! ClusterLoadAssignment. Undecodable inner configs name nothing here; the
//! data plane's own check rejects them.

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route, route_action};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use prost::{Message, Name};

/// Names one resource depends on, by type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Deps {
    /// RouteConfigurations (RDS).
    pub routes: Vec<String>,
    /// Clusters (CDS).
    pub clusters: Vec<String>,
    /// ClusterLoadAssignments (EDS).
    pub loads: Vec<String>,
}

pub(super) fn listener(l: &Listener) -> Deps {
    let mut deps = Deps::default();
    let chains = l.filter_chains.iter().chain(&l.default_filter_chain);
    for f in chains.flat_map(|c| &c.filters) {
        network_filter(f, &mut deps);
    }
    deps
}

fn network_filter(f: &Filter, deps: &mut Deps) {
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return;
    };
    if any.type_url == HttpConnectionManager::type_url() {
        let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) else {
            return;
        };
        match hcm.route_specifier {
            Some(http_connection_manager::RouteSpecifier::Rds(rds)) => {
                deps.routes.push(rds.route_config_name)
            }
            Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) => {
                deps.clusters.extend(route_config(&rc).clusters)
            }
            _ => {}
        }
    } else if any.type_url == TcpProxy::type_url() {
        let Ok(tcp) = TcpProxy::decode(any.value.as_slice()) else {
            return;
        };
        match tcp.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) => deps.clusters.push(c),
            Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) => {
                deps.clusters.extend(w.clusters.into_iter().map(|c| c.name))
            }
            None => {}
        }
    }
}

pub(super) fn route_config(rc: &RouteConfiguration) -> Deps {
    let mut deps = Deps::default();
    for r in rc.virtual_hosts.iter().flat_map(|v| &v.routes) {
        let Some(route::Action::Route(action)) = &r.action else {
            continue;
        };
        match &action.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => deps.clusters.push(c.clone()),
            Some(route_action::ClusterSpecifier::WeightedClusters(w)) => deps
                .clusters
                .extend(w.clusters.iter().map(|c| c.name.clone())),
            _ => {}
        }
    }
    deps.clusters.sort();
    deps.clusters.dedup();
    deps
}

pub(super) fn cluster(c: &Cluster) -> Deps {
    let eds = matches!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32
    );
    let mut deps = Deps::default();
    if eds {
        let service = c
            .eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(&c.name);
        deps.loads.push(service.to_string());
    }
    deps
}
