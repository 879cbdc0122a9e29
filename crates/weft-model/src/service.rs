//! `weft.dev/v1alpha1` `Service`: weft's registry entry for a service that is
//! not on Kubernetes — its ports (with protocol), an optional virtual address
//! and its endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::ObjectKey;
use crate::error::Problems;

/// The application protocol spoken on a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 to the endpoints.
    Http,
    /// HTTP/2 cleartext (prior knowledge) to the endpoints.
    Http2,
    /// gRPC: HTTP/2 with trailers.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    /// Whether requests on this port go through the HTTP stack.
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }
    /// Whether upstream connections speak HTTP/2.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// A port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// Where an endpoint runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
}

/// One instance of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// Relative share of traffic, at least 1.
    pub weight: u32,
    pub locality: Locality,
    pub labels: BTreeMap<String, String>,
}

/// A validated Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub ports: Vec<ServicePort>,
    pub vip: Option<IpAddr>,
    pub endpoints: Vec<Endpoint>,
    /// `spec.dependencies`: the Services this one calls. `None` (absent)
    /// means every Service in its namespace; its sidecars receive config for
    /// these (and their routes' backends) only.
    pub dependencies: Option<Vec<ObjectKey>>,
}

impl Service {
    /// The first port whose protocol goes through the HTTP stack.
    pub fn first_http_port(&self) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.protocol.is_http())
    }

    /// The port with this number.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// `spec` of a Service as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceSpec {
    #[serde(default)]
    ports: Vec<ServicePort>,
    #[serde(default)]
    vip: Option<String>,
    #[serde(default)]
    endpoints: Vec<EndpointSpec>,
    /// `NAME` (same namespace) or `NAME.NAMESPACE`.
    #[serde(default)]
    dependencies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointSpec {
    address: String,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    locality: Locality,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

impl ServiceSpec {
    /// Checks the spec and builds the Service; problems go to `p`.
    pub(crate) fn validate(self, name: String, namespace: String, p: &mut Problems<'_>) -> Service {
        if self.ports.is_empty() {
            p.add("spec.ports", "a Service needs at least one port");
        }
        let mut seen_ports = BTreeSet::new();
        let mut seen_names = BTreeSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            if port.port == 0 {
                p.add(format!("spec.ports[{i}].port"), "port must be 1..65535");
            }
            if !seen_ports.insert(port.port) {
                p.add(
                    format!("spec.ports[{i}].port"),
                    format!("duplicate port {}", port.port),
                );
            }
            if let Some(n) = &port.name
                && !seen_names.insert(n.clone())
            {
                p.add(
                    format!("spec.ports[{i}].name"),
                    format!("duplicate port name {n:?}"),
                );
            }
        }
        let vip = self.vip.as_deref().and_then(|v| match v.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                p.add(
                    "spec.vip",
                    format!("{v} cannot be a virtual service address"),
                );
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                p.add("spec.vip", format!("{v:?} is not an IP address"));
                None
            }
        });
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        let mut seen_addrs = BTreeSet::new();
        for (i, ep) in self.endpoints.into_iter().enumerate() {
            let field = format!("spec.endpoints[{i}]");
            let address = match ep.address.parse::<SocketAddr>() {
                Ok(a) if a.port() == 0 => {
                    p.add(format!("{field}.address"), "port must be 1..65535");
                    continue;
                }
                Ok(a) => a,
                Err(_) => {
                    p.add(
                        format!("{field}.address"),
                        format!("{:?} is not IP:PORT (e.g. \"10.0.0.7:8080\")", ep.address),
                    );
                    continue;
                }
            };
            if !seen_addrs.insert(address) {
                p.add(
                    format!("{field}.address"),
                    format!("duplicate endpoint {address}"),
                );
            }
            let weight = match ep.weight {
                None => 1,
                Some(w) if (1..=1_000_000).contains(&w) => w as u32,
                Some(w) => {
                    p.add(
                        format!("{field}.weight"),
                        format!("weight {w} must be 1..1000000"),
                    );
                    1
                }
            };
            endpoints.push(Endpoint {
                address,
                weight,
                locality: ep.locality,
                labels: ep.labels,
            });
        }
        let dependencies = self
            .dependencies
            .map(|deps| dependencies(deps, &namespace, p));
        Service {
            name,
            namespace,
            ports: self.ports,
            vip,
            endpoints,
            dependencies,
        }
    }
}

/// `spec.dependencies`: `NAME` (in `namespace`) or `NAME.NAMESPACE`, once each.
fn dependencies(deps: Vec<String>, namespace: &str, p: &mut Problems<'_>) -> Vec<ObjectKey> {
    let mut out: Vec<ObjectKey> = Vec::with_capacity(deps.len());
    for (i, d) in deps.into_iter().enumerate() {
        let key = match d.split_once('.') {
            Some((n, ns)) => ObjectKey::new(ns, n),
            None => ObjectKey::new(namespace, d.clone()),
        };
        if key.name.is_empty() || key.namespace.is_empty() || key.namespace.contains('.') {
            p.add(
                format!("spec.dependencies[{i}]"),
                format!("{d:?} is not NAME or NAME.NAMESPACE"),
            );
        } else if out.contains(&key) {
            p.add(
                format!("spec.dependencies[{i}]"),
                format!("duplicate dependency {key}"),
            );
        } else {
            out.push(key);
        }
    }
    out
}
