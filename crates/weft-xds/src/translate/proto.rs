//! Small constructors for the Envoy protos every form uses.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
    config_source, socket_address,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::google::protobuf::{Any, Duration, UInt32Value};
use prost::{Message, Name};

/// Network filter name of the HTTP connection manager.
pub(super) const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
/// Network filter name of the TCP proxy.
pub(super) const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// HTTP filter name of the router.
pub(super) const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// `typed_extension_protocol_options` key of the upstream HTTP options.
pub(super) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// `message` packed as `type.googleapis.com/<full name>`.
pub(super) fn any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

pub(super) fn duration(d: std::time::Duration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

pub(super) fn uint32(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// `{ads: {}, resource_api_version: V3}`: "from the same ADS stream".
pub(super) fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

pub(super) fn socket_address(ip: IpAddr, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

/// The router, which must be the last HTTP filter (without it Envoy accepts
/// the config and then hangs every request; gRPC rejects it).
pub(super) fn router_filter() -> HttpFilter {
    HttpFilter {
        name: ROUTER_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(
            any(&Router::default()),
        )),
        ..Default::default()
    }
}

/// Where an HTTP connection manager gets its routes.
pub(super) enum Routes {
    /// RDS over ADS, by name.
    Rds(String),
    /// Inline.
    Inline(Box<RouteConfiguration>),
}

/// An HTTP connection manager with codec auto-detection and the router as
/// its only (so last) filter.
pub(super) fn http_connection_manager(stat_prefix: &str, routes: Routes) -> HttpConnectionManager {
    let route_specifier = match routes {
        Routes::Rds(name) => http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name,
        }),
        Routes::Inline(rc) => http_connection_manager::RouteSpecifier::RouteConfig(*rc),
    };
    HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: stat_prefix.into(),
        route_specifier: Some(route_specifier),
        http_filters: vec![router_filter()],
        // weft drops a trailing dot of the host before matching.
        strip_trailing_host_dot: true,
        ..Default::default()
    }
}

/// A network filter with a typed config.
pub(super) fn network_filter(name: &str, config: Any) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(config)),
    }
}
