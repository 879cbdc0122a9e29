//! Listener -> listener plans. weft sidecars take the listeners of the
//! resource-naming contract (`weft_xds::translate`): `outbound` (HTTP, by
//! Host), `inbound` (to the local app) and `vip|IP:PORT` (bound on that
//! address). The `outbound` and `inbound` listeners' own addresses are not
//! used: the proxy binds `--outbound` and `--inbound`.

use std::net::SocketAddr;

use prost::{Message, Name};
use weft_xds::envoy_types::pb::envoy::config::core::v3::{Address, address, socket_address};
use weft_xds::envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use weft_xds::envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use weft_xds::envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager, http_filter,
};
use weft_xds::envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy,
};
use weft_xds::envoy_types::pb::google::protobuf::Any;
use weft_xds::translate::{INBOUND_LISTENER, OUTBOUND_LISTENER};

use super::routes::{RoutesPlan, parse_route_config};

/// What a listener is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Outbound,
    Inbound,
    Vip(SocketAddr),
}

/// Where a listener's traffic goes.
#[derive(Clone)]
pub(super) enum Traffic {
    /// HTTP, through routes from RDS (by name) or inline.
    Http(RouteSource),
    /// Opaque TCP to one cluster.
    Tcp(String),
}

#[derive(Clone)]
pub(super) enum RouteSource {
    Rds(String),
    Inline(RoutesPlan),
}

#[derive(Clone)]
pub(super) struct ListenerPlan {
    pub role: Role,
    pub traffic: Traffic,
}

pub(super) fn parse_listener(l: &Listener) -> Result<ListenerPlan, String> {
    let role = if l.name == OUTBOUND_LISTENER {
        Role::Outbound
    } else if l.name == INBOUND_LISTENER {
        Role::Inbound
    } else if l.name.starts_with("vip|") {
        Role::Vip(socket_addr(l.address.as_ref()).map_err(|e| format!("address: {e}"))?)
    } else if l.name.starts_with("gateway|") {
        return Err(
            "gateway listeners are not supported by the weft proxy yet (run Envoy as the gateway)"
                .into(),
        );
    } else {
        return Err(format!(
            "weft sidecars take the listeners `{OUTBOUND_LISTENER}`, `{INBOUND_LISTENER}` and `vip|IP:PORT` only"
        ));
    };
    if l.api_listener.is_some() {
        return Err("api_listener is not supported".into());
    }
    let chain = match (l.filter_chains.as_slice(), &l.default_filter_chain) {
        ([chain], None) | ([], Some(chain)) => chain,
        ([], None) => return Err("no filter chain".into()),
        _ => return Err("weft takes exactly one filter chain per listener".into()),
    };
    let traffic = parse_chain(chain)?;
    if role == Role::Outbound && matches!(traffic, Traffic::Tcp(_)) {
        return Err("the outbound listener routes HTTP by Host; tcp_proxy is not supported".into());
    }
    Ok(ListenerPlan { role, traffic })
}

fn parse_chain(chain: &FilterChain) -> Result<Traffic, String> {
    if chain.transport_socket.is_some() {
        return Err("filter chain transport_socket (TLS) is not supported yet".into());
    }
    let [f] = chain.filters.as_slice() else {
        return Err(format!(
            "weft takes one network filter (HTTP connection manager or TCP proxy), got {}",
            chain.filters.len()
        ));
    };
    let any = match &f.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(format!("filter {:?} has no typed_config", f.name)),
    };
    if any.type_url == HttpConnectionManager::type_url() {
        let hcm = decode::<HttpConnectionManager>(any)
            .map_err(|e| format!("filter {:?}: {e}", f.name))?;
        parse_hcm(&hcm).map(Traffic::Http)
    } else if any.type_url == TcpProxy::type_url() {
        let tcp = decode::<TcpProxy>(any).map_err(|e| format!("filter {:?}: {e}", f.name))?;
        match tcp.cluster_specifier {
            Some(tcp_proxy::ClusterSpecifier::Cluster(c)) if !c.is_empty() => Ok(Traffic::Tcp(c)),
            _ => Err("tcp_proxy: only a single `cluster` is supported".into()),
        }
    } else {
        Err(format!(
            "filter {:?} of type {} is not supported",
            f.name, any.type_url
        ))
    }
}

fn parse_hcm(hcm: &HttpConnectionManager) -> Result<RouteSource, String> {
    use http_connection_manager::RouteSpecifier;
    // The router must be last; any other HTTP filter would change traffic in
    // ways weft does not implement.
    match hcm.http_filters.as_slice() {
        [router] => {
            let is_router = match &router.config_type {
                Some(http_filter::ConfigType::TypedConfig(any)) => {
                    any.type_url == Router::type_url()
                }
                _ => router.name == "envoy.filters.http.router",
            };
            if !is_router {
                return Err(format!(
                    "HTTP filter {:?} is not supported (weft takes the router only)",
                    router.name
                ));
            }
        }
        [] => return Err("HTTP connection manager without the router filter".into()),
        more => {
            let names: Vec<&str> = more.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "HTTP filters {names:?}: weft takes the router only"
            ));
        }
    }
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) if !rds.route_config_name.is_empty() => {
            Ok(RouteSource::Rds(rds.route_config_name.clone()))
        }
        Some(RouteSpecifier::RouteConfig(rc)) => parse_route_config(rc)
            .map(RouteSource::Inline)
            .map_err(|e| format!("inline route_config: {e}")),
        Some(RouteSpecifier::Rds(_)) => Err("rds without route_config_name".into()),
        Some(RouteSpecifier::ScopedRoutes(_)) => Err("scoped_routes are not supported".into()),
        None => Err("HTTP connection manager without routes".into()),
    }
}

fn decode<M: Message + Default>(any: &Any) -> Result<M, String> {
    M::decode(any.value.as_slice()).map_err(|e| format!("cannot decode {}: {e}", any.type_url))
}

/// An IP socket address (`socket_address` with `port_value`).
pub(super) fn socket_addr(a: Option<&Address>) -> Result<SocketAddr, String> {
    let Some(Address {
        address: Some(address::Address::SocketAddress(sa)),
    }) = a
    else {
        return Err("not a socket address".into());
    };
    let ip = sa.address.parse().map_err(|_| {
        format!(
            "{:?} is not an IP address (weft does not resolve names)",
            sa.address
        )
    })?;
    match sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => {
            let port = u16::try_from(p).map_err(|_| format!("port {p} out of range"))?;
            Ok(SocketAddr::new(ip, port))
        }
        _ => Err("no port_value".into()),
    }
}
