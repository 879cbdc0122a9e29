//! The sidecar form (Envoy and weft): an outbound listener routing by
//! `Host` / `:authority`, one listener per Service VIP port, an inbound
//! listener to the local app, and the clusters all of them send to.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use weft_model::Service;

use super::cluster::{inbound_cluster, inbound_port};
use super::flow::{PolicyFilters, route_config_resource};
use super::names::{
    INBOUND_LISTENER, OUTBOUND_LISTENER, OUTBOUND_ROUTE_CONFIG, authorities, cluster_name,
    inbound_cluster_name, vip_listener_name,
};
use super::proto::{
    HCM_FILTER, Routes, TCP_PROXY_FILTER, any, duration, http_connection_manager, network_filter,
    socket_address,
};
use super::{Flavor, PortRef, Translator};
use crate::resource::{Resource, ResourceSet, TypeUrl};

impl Translator {
    /// Everything a sidecar in `namespace` (beside Service `own`, if any)
    /// receives for the Services in `scope`.
    pub(super) fn sidecar_resources(
        &self,
        namespace: &str,
        own: Option<usize>,
        scope: &[usize],
        filters: PolicyFilters,
    ) -> ResourceSet {
        let mut set = ResourceSet::default();
        set.insert_shared(self.outbound_listener(filters));
        set.insert_shared(self.outbound_route_config(namespace, scope));
        let mut ports: Vec<PortRef> = Vec::new();
        for &index in scope {
            let svc = &self.config.services[index];
            ports.extend(svc.ports.iter().map(|p| (index, p.port)));
            for p in svc.ports.iter().filter(|p| p.protocol.is_http()) {
                ports.extend(&self.port_routes((index, p.port), Flavor::Sidecar).clusters);
            }
            if svc.vip.is_some() {
                for r in self.vip_resources(index, filters).iter() {
                    set.insert_shared(r.clone());
                }
            }
        }
        if let Some(own) = own {
            for r in self.inbound_resources(own).iter() {
                set.insert_shared(r.clone());
            }
        }
        self.insert_clusters(&mut set, ports);
        set
    }

    fn outbound_listener(&self, filters: PolicyFilters) -> Arc<Resource> {
        self.outbound_listener.get_or_insert_with(filters, || {
            let mut hcm = http_connection_manager(
                OUTBOUND_LISTENER,
                Routes::Rds(OUTBOUND_ROUTE_CONFIG.into()),
            );
            hcm.http_filters = filters.http_filters();
            let listener = listener(
                OUTBOUND_LISTENER.into(),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.opts.outbound_port),
                TrafficDirection::Outbound,
                network_filter(HCM_FILTER, any(&hcm)),
            );
            Arc::new(Resource::new(
                TypeUrl::Listener,
                OUTBOUND_LISTENER,
                &listener,
            ))
        })
    }

    /// `outbound`: one virtual host per in-scope Service HTTP port, named
    /// `NAME.NAMESPACE:PORT`, answering to every authority the weft proxy
    /// resolves to that port. Shared by every sidecar with the same
    /// namespace and scope.
    fn outbound_route_config(&self, namespace: &str, scope: &[usize]) -> Arc<Resource> {
        let key = (Flavor::Sidecar, namespace.to_string(), scope.to_vec());
        self.route_configs.get_or_insert_with(key, || {
            let mut virtual_hosts = Vec::new();
            for &index in scope {
                let svc = &self.config.services[index];
                let local = svc.namespace == namespace;
                for p in svc.ports.iter().filter(|p| p.protocol.is_http()) {
                    virtual_hosts.push(VirtualHost {
                        name: cluster_name(svc, p.port),
                        domains: authorities(svc, p.port, local),
                        routes: self
                            .port_routes((index, p.port), Flavor::Sidecar)
                            .routes
                            .clone(),
                        ..Default::default()
                    });
                }
            }
            let rc = RouteConfiguration {
                name: OUTBOUND_ROUTE_CONFIG.into(),
                virtual_hosts,
                ..Default::default()
            };
            Arc::new(route_config_resource(OUTBOUND_ROUTE_CONFIG, &rc))
        })
    }

    /// `vip|IP:PORT` per port of a Service with a VIP: HTTP ports through the
    /// port's routes (RDS of the same name, so a route change does not
    /// rebuild the listener), tcp ports straight to the port's cluster.
    fn vip_resources(&self, index: usize, filters: PolicyFilters) -> Arc<[Arc<Resource>]> {
        self.vips.get_or_insert_with((index, filters), || {
            let svc = &self.config.services[index];
            let Some(ip) = svc.vip else {
                return Arc::from([]);
            };
            let mut out = Vec::new();
            for p in &svc.ports {
                let addr = SocketAddr::new(ip, p.port);
                let name = vip_listener_name(addr);
                let filter = if p.protocol.is_http() {
                    let rc = RouteConfiguration {
                        name: name.clone(),
                        virtual_hosts: vec![VirtualHost {
                            name: cluster_name(svc, p.port),
                            domains: vec!["*".into()],
                            routes: self
                                .port_routes((index, p.port), Flavor::Sidecar)
                                .routes
                                .clone(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    };
                    out.push(Arc::new(route_config_resource(name.clone(), &rc)));
                    let mut hcm = http_connection_manager(&name, Routes::Rds(name.clone()));
                    hcm.http_filters = filters.http_filters();
                    network_filter(HCM_FILTER, any(&hcm))
                } else {
                    network_filter(TCP_PROXY_FILTER, any(&tcp_proxy(&name, svc, p.port)))
                };
                let l = listener(name.clone(), addr, TrafficDirection::Outbound, filter);
                out.push(Arc::new(Resource::new(TypeUrl::Listener, name, &l)));
            }
            out.into()
        })
    }

    /// `inbound` on 127.0.0.1:<inbound_port> and its cluster
    /// `inbound|NAME.NAMESPACE` (the app on 127.0.0.1:<Service port>).
    fn inbound_resources(&self, index: usize) -> Arc<[Arc<Resource>]> {
        self.inbound.get_or_insert_with(index, || {
            let svc = &self.config.services[index];
            let (Some((_, protocol)), Some(cluster)) =
                (inbound_port(svc), inbound_cluster(svc, &self.opts))
            else {
                return Arc::from([]);
            };
            let app = inbound_cluster_name(svc);
            let filter = if protocol.is_http() {
                let hcm = http_connection_manager(
                    INBOUND_LISTENER,
                    Routes::Inline(Box::new(inbound_route_config(&app))),
                );
                network_filter(HCM_FILTER, any(&hcm))
            } else {
                let tcp = TcpProxy {
                    stat_prefix: INBOUND_LISTENER.into(),
                    cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(app)),
                    ..Default::default()
                };
                network_filter(TCP_PROXY_FILTER, any(&tcp))
            };
            let l = listener(
                INBOUND_LISTENER.into(),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.opts.inbound_port),
                TrafficDirection::Inbound,
                filter,
            );
            Arc::from([
                Arc::new(Resource::new(TypeUrl::Listener, INBOUND_LISTENER, &l)),
                Arc::new(cluster),
            ])
        })
    }
}

pub(super) fn listener(
    name: String,
    addr: SocketAddr,
    direction: TrafficDirection,
    filter: envoy_types::pb::envoy::config::listener::v3::Filter,
) -> Listener {
    Listener {
        name,
        address: Some(socket_address(addr.ip(), addr.port())),
        filter_chains: vec![FilterChain {
            filters: vec![filter],
            ..Default::default()
        }],
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

fn tcp_proxy(stat_prefix: &str, svc: &Service, port: u16) -> TcpProxy {
    TcpProxy {
        stat_prefix: stat_prefix.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster_name(
            svc, port,
        ))),
        ..Default::default()
    }
}

/// Everything to the local app, without a timeout.
fn inbound_route_config(app: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: INBOUND_LISTENER.into(),
        virtual_hosts: vec![VirtualHost {
            name: INBOUND_LISTENER.into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "app".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        app.to_string(),
                    )),
                    timeout: Some(duration(std::time::Duration::ZERO)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}
