//! The proxyless gRPC form: a client dialing `xds:///TARGET` asks for the
//! Listener named exactly `TARGET`, an `api_listener` whose HTTP connection
//! manager names a route configuration (RDS), whose routes name clusters
//! (CDS, type EDS), whose endpoints come from EDS. No TCP, no VIPs.

use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};

use super::names::{cluster_name, host_names};
use super::proto::{Routes, any, http_connection_manager};
use super::{Flavor, PortRef, Translator};
use crate::resource::{Resource, ResourceSet, TypeUrl};

impl Translator {
    /// Everything a gRPC client in `namespace` may ask for about the
    /// Services in `scope`.
    pub(super) fn grpc_resources(&self, namespace: &str, scope: &[usize]) -> ResourceSet {
        let mut set = ResourceSet::default();
        let mut ports: Vec<PortRef> = Vec::new();
        for &index in scope {
            let svc = &self.config.services[index];
            if svc.first_http_port().is_none() {
                continue;
            }
            let local = svc.namespace == namespace;
            for r in self.grpc_listeners(index, local).iter() {
                set.insert_shared(r.clone());
            }
            for p in svc.ports.iter().filter(|p| p.protocol.is_http()) {
                let port = (index, p.port);
                set.insert_shared(self.grpc_route_config(port));
                ports.push(port);
                ports.extend(&self.port_routes(port, Flavor::Grpc).clusters);
            }
        }
        self.insert_clusters(&mut set, ports);
        set
    }

    /// One Listener per target form of every HTTP port of a Service (bare
    /// names only when `local`); port-less forms mean the first HTTP port.
    fn grpc_listeners(&self, index: usize, local: bool) -> Arc<[Arc<Resource>]> {
        self.grpc_listeners.get_or_insert_with((index, local), || {
            let svc = &self.config.services[index];
            let hosts = host_names(svc, local);
            let mut out = Vec::new();
            for (i, p) in svc
                .ports
                .iter()
                .filter(|p| p.protocol.is_http())
                .enumerate()
            {
                let rds = cluster_name(svc, p.port);
                let mut targets: Vec<String> =
                    hosts.iter().map(|h| format!("{h}:{}", p.port)).collect();
                if i == 0 {
                    targets.extend(hosts.iter().cloned());
                }
                for target in targets {
                    out.push(Arc::new(api_listener(target, &rds)));
                }
            }
            out.into()
        })
    }

    /// `NAME.NAMESPACE:PORT`: the port's routes under domain `*` (the
    /// client already chose the Service by its listener).
    fn grpc_route_config(&self, port: PortRef) -> Arc<Resource> {
        self.grpc_route_configs.get_or_insert_with(port, || {
            let svc = &self.config.services[port.0];
            let name = cluster_name(svc, port.1);
            let rc = RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: name.clone(),
                    domains: vec!["*".into()],
                    routes: self.port_routes(port, Flavor::Grpc).routes.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            Arc::new(Resource::new(TypeUrl::RouteConfiguration, name, &rc))
        })
    }
}

/// A Listener named `target` whose HTTP connection manager takes route
/// configuration `rds` over ADS, with the router as its last filter.
fn api_listener(target: String, rds: &str) -> Resource {
    let hcm = http_connection_manager(&target, Routes::Rds(rds.into()));
    let l = Listener {
        name: target.clone(),
        api_listener: Some(ApiListener {
            api_listener: Some(any(&hcm)),
        }),
        ..Default::default()
    };
    Resource::new(TypeUrl::Listener, target, &l)
}
