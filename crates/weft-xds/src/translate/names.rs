//! Resource names and the host names a Service answers to (see the module
//! doc of [`translate`](super) for the whole contract).

use std::net::SocketAddr;

use weft_model::{Gateway, GatewayListener, Service};

/// Sidecars' outbound HTTP listener.
pub const OUTBOUND_LISTENER: &str = "outbound";
/// The route configuration of the outbound listener.
pub const OUTBOUND_ROUTE_CONFIG: &str = "outbound";
/// Sidecars' inbound listener.
pub const INBOUND_LISTENER: &str = "inbound";

/// `NAME.NAMESPACE:PORT`: the cluster and endpoint assignment of a Service
/// port (and, for gRPC clients, its route configuration).
pub fn cluster_name(svc: &Service, port: u16) -> String {
    format!("{}.{}:{port}", svc.name, svc.namespace)
}

/// `inbound|NAME.NAMESPACE`: a sidecar's local app.
pub fn inbound_cluster_name(svc: &Service) -> String {
    format!("inbound|{}.{}", svc.name, svc.namespace)
}

/// `vip|IP:PORT` (`vip|[::1]:80` for IPv6): the listener (and, for HTTP
/// ports, route configuration) of a Service port's virtual address.
pub fn vip_listener_name(addr: SocketAddr) -> String {
    format!("vip|{addr}")
}

/// `gateway|NAME.NAMESPACE|LISTENER`: the Listener and route configuration
/// of one listener of a Gateway.
pub fn gateway_listener_name(gw: &Gateway, l: &GatewayListener) -> String {
    format!("gateway|{}.{}|{}", gw.name, gw.namespace, l.name)
}

/// The host names (lower case, without port) under which a Service is
/// reached, as the weft proxy resolves `Host` / `:authority`: `NAME` (only
/// from the Service's own namespace, `local`), `NAME.NAMESPACE`,
/// `NAME.NAMESPACE.svc`, `NAME.NAMESPACE.svc.cluster.local`.
pub(super) fn host_names(svc: &Service, local: bool) -> Vec<String> {
    let (n, ns) = (&svc.name, &svc.namespace);
    let mut hosts = Vec::with_capacity(4);
    if local {
        hosts.push(n.clone());
    }
    hosts.push(format!("{n}.{ns}"));
    hosts.push(format!("{n}.{ns}.svc"));
    hosts.push(format!("{n}.{ns}.svc.cluster.local"));
    hosts
}

/// The authorities that reach HTTP port `port` of `svc`: every host name
/// with `:port`, and without a port too when `port` is the Service's first
/// HTTP port (the weft proxy's default port). No two ports of one Service
/// share an authority, so these can be Envoy domains of separate virtual
/// hosts in one route configuration.
pub(super) fn authorities(svc: &Service, port: u16, local: bool) -> Vec<String> {
    let hosts = host_names(svc, local);
    let first = svc.first_http_port().is_some_and(|p| p.port == port);
    let mut out = Vec::with_capacity(hosts.len() * 2);
    if first {
        out.extend(hosts.iter().cloned());
    }
    out.extend(hosts.iter().map(|h| format!("{h}:{port}")));
    out
}
