//! Gateway API `Gateway` (`gateway.networking.k8s.io/v1`): an ingress
//! gateway's listeners (port, protocol, optional hostname) and the addresses
//! it binds. Routes attach with `parentRefs: [{kind: Gateway, name}]`.
//!
//! A data plane whose `node.cluster` is the Gateway's name (`NAME` or
//! `NAME.NAMESPACE`) runs it.
//!
//! Supported for now: `HTTP` listeners (cleartext HTTP/1.1 and h2c, so
//! HTTPRoutes and GRPCRoutes). `HTTPS` and `TLS` need certificates, which
//! weft does not distribute yet; `TCP` and `UDP` need TCPRoute/UDPRoute,
//! which weft does not have: all four are rejected by name rather than
//! accepted as listeners that route nothing. Two listeners may not share a
//! port (one bound socket per port; Gateway API's hostname-distinguished
//! listeners on one port are not supported yet).
//!
//! `spec.addresses` absent means `127.0.0.1`, not every interface: a gateway
//! started on a developer's machine is not exposed to the network unless the
//! config says so (write `{value: 0.0.0.0}` for all interfaces).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::route::common::check_hostname;

/// The bind address of a Gateway without `spec.addresses`.
pub const DEFAULT_GATEWAY_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A validated Gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gateway {
    pub name: String,
    pub namespace: String,
    /// `spec.gatewayClassName`: accepted as written, not interpreted.
    pub class_name: String,
    /// Never empty; names and ports unique.
    pub listeners: Vec<GatewayListener>,
    /// Where every listener binds; never empty (default `127.0.0.1`).
    pub addresses: Vec<IpAddr>,
}

/// One listener of a Gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayListener {
    pub name: String,
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// Only requests for this host (a `*.` wildcard allowed); `None`: any.
    pub hostname: Option<String>,
    /// Which namespaces' routes may attach (`allowedRoutes.namespaces.from`).
    pub routes_from: RoutesFrom,
}

/// `allowedRoutes.namespaces.from`; Gateway API's default is `Same`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum RoutesFrom {
    /// Only routes in the Gateway's namespace.
    #[default]
    Same,
    /// Routes in any namespace.
    All,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ListenerProtocol {
    /// Cleartext HTTP/1.1 and HTTP/2 (h2c): HTTPRoutes and GRPCRoutes.
    Http,
}

impl Gateway {
    /// The listener named `name`.
    pub fn listener(&self, name: &str) -> Option<&GatewayListener> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

// ---- the spec as written -------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct GatewaySpec {
    #[serde(default)]
    gateway_class_name: Option<String>,
    #[serde(default)]
    listeners: Vec<ListenerSpec>,
    #[serde(default)]
    addresses: Vec<AddressSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListenerSpec {
    name: String,
    port: u16,
    protocol: String,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    allowed_routes: Option<AllowedRoutesSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowedRoutesSpec {
    #[serde(default)]
    namespaces: Option<RouteNamespacesSpec>,
    #[serde(default)]
    kinds: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteNamespacesSpec {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    selector: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressSpec {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    value: String,
}

impl GatewaySpec {
    pub(crate) fn validate(self, name: String, namespace: String, p: &mut Problems<'_>) -> Gateway {
        let class_name = self.gateway_class_name.unwrap_or_default();
        if class_name.is_empty() {
            p.add(
                "spec.gatewayClassName",
                "missing (any class name is accepted)",
            );
        }
        if self.listeners.is_empty() {
            p.add("spec.listeners", "a Gateway needs at least one listener");
        }
        let mut names = BTreeSet::new();
        let mut ports = BTreeMap::new();
        let mut listeners = Vec::with_capacity(self.listeners.len());
        for (i, l) in self.listeners.into_iter().enumerate() {
            let field = format!("spec.listeners[{i}]");
            if !names.insert(l.name.clone()) {
                p.add(
                    format!("{field}.name"),
                    format!("duplicate listener name {:?}", l.name),
                );
            }
            if l.port != 0
                && let Some(other) = ports.insert(l.port, l.name.clone())
            {
                p.add(
                    format!("{field}.port"),
                    format!(
                        "port {} is already used by listener {other:?}; weft binds one listener per port",
                        l.port
                    ),
                );
            }
            listeners.push(l.validate(&field, p));
        }
        Gateway {
            name,
            namespace,
            class_name,
            listeners,
            addresses: addresses(self.addresses, p),
        }
    }
}

impl ListenerSpec {
    /// Checks what one listener says on its own (uniqueness is checked by
    /// the Gateway).
    fn validate(self, field: &str, p: &mut Problems<'_>) -> GatewayListener {
        if let Err(why) = section_name(&self.name) {
            p.add(format!("{field}.name"), format!("{:?} {why}", self.name));
        }
        if self.port == 0 {
            p.add(format!("{field}.port"), "port must be 1..65535");
        }
        let unsupported = match self.protocol.as_str() {
            "HTTP" => None,
            "HTTPS" | "TLS" => Some(format!(
                "{} listeners are not supported yet (weft does not distribute certificates); use HTTP",
                self.protocol
            )),
            "TCP" | "UDP" => Some(format!(
                "{0} listeners need a {0}Route, which weft does not support yet; use HTTP",
                self.protocol
            )),
            other => Some(format!("unknown protocol {other:?} (supported: HTTP)")),
        };
        if let Some(why) = unsupported {
            p.add(format!("{field}.protocol"), why);
        }
        if let Some(h) = &self.hostname
            && let Err(why) = check_hostname(h)
        {
            p.add(format!("{field}.hostname"), format!("{h:?} {why}"));
        }
        let routes_from = self
            .allowed_routes
            .map(|a| a.validate(&format!("{field}.allowedRoutes"), p))
            .unwrap_or_default();
        GatewayListener {
            name: self.name,
            port: self.port,
            protocol: ListenerProtocol::Http,
            hostname: self.hostname,
            routes_from,
        }
    }
}

/// `spec.addresses`: IP addresses only; `127.0.0.1` when none.
fn addresses(specs: Vec<AddressSpec>, p: &mut Problems<'_>) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for (i, a) in specs.into_iter().enumerate() {
        let field = format!("spec.addresses[{i}]");
        if let Some(k) = a.kind.as_deref()
            && k != "IPAddress"
        {
            p.add(
                format!("{field}.type"),
                format!("address type {k:?} is not supported; use IPAddress"),
            );
            continue;
        }
        match a.value.parse::<IpAddr>() {
            Ok(ip) if ip.is_multicast() => p.add(
                format!("{field}.value"),
                format!("{ip} is a multicast address"),
            ),
            Ok(ip) if addresses.contains(&ip) => {
                p.add(format!("{field}.value"), format!("duplicate address {ip}"))
            }
            Ok(ip) => addresses.push(ip),
            Err(_) => p.add(
                format!("{field}.value"),
                format!("{:?} is not an IP address", a.value),
            ),
        }
    }
    if addresses.is_empty() {
        addresses.push(DEFAULT_GATEWAY_ADDRESS);
    }
    addresses
}

impl AllowedRoutesSpec {
    fn validate(self, field: &str, p: &mut Problems<'_>) -> RoutesFrom {
        if self.kinds.is_some() {
            p.add(
                format!("{field}.kinds"),
                "not supported yet: HTTP listeners accept HTTPRoutes and GRPCRoutes",
            );
        }
        let Some(ns) = self.namespaces else {
            return RoutesFrom::Same;
        };
        if ns.selector.is_some() {
            p.add(
                format!("{field}.namespaces.selector"),
                "namespace selectors are not supported (use from: Same or All)",
            );
        }
        match ns.from.as_deref() {
            None | Some("Same") => RoutesFrom::Same,
            Some("All") => RoutesFrom::All,
            Some(other) => {
                p.add(
                    format!("{field}.namespaces.from"),
                    format!("{other:?} is not supported (use Same or All)"),
                );
                RoutesFrom::Same
            }
        }
    }
}

/// Gateway API `SectionName`: lower-case DNS subdomain.
fn section_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1..253 characters");
    }
    let ok = s.split('.').all(|l| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    });
    if ok {
        Ok(())
    } else {
        Err("must be lower-case letters, digits, '-' and '.'")
    }
}
