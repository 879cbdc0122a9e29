//! weft's config model: Kubernetes-shaped YAML resources (`apiVersion`, `kind`,
//! `metadata`, `spec`), loaded from files or directories and validated with
//! errors that name the file, the document and the field.
//!
//! This crate owns the user-facing schema only. It must not depend on tokio,
//! protobuf or kube: data planes translate a validated [`Config`] into their own
//! runtime snapshots.

mod duration;
mod error;
mod gateway;
mod grpc_route;
mod load;
mod policy;
mod references;
mod route;
mod service;
mod smi;
mod table;
mod watch;

pub use duration::{DurationError, parse_duration};
pub use error::{ConfigError, ConfigErrors, DocumentRef};
pub use gateway::{
    DEFAULT_GATEWAY_ADDRESS, Gateway, GatewayListener, ListenerProtocol, RoutesFrom,
};
pub use grpc_route::{
    GrpcMethodMatch, GrpcMethodMatchType, GrpcRoute, GrpcRouteMatch, GrpcRouteRule,
};
pub use load::{load_dir, load_documents, load_str};
pub use policy::{
    AbortStatus, Admission, BalancerKind, Budget, CodeValue, Deadline, EffectivePolicy,
    FailureCodes, FailureMode, Fault, FaultAbort, FaultDelay, GlobalRateLimit, HeaderCodes,
    HedgeDelay, Hedging, LoadBalancer, LocalRateLimit, LocalityPreference, OutlierDetection,
    PolicyScope, PolicySections, PolicyTargetKind, PolicyTargetRef, RateLimit, RateLimitUnit,
    Retry, Reweighting, SlowStart, SuccessRateEjection, TrafficPolicy,
};
pub use route::{
    BackendRef, HeaderMatch, HeaderMatchType, HttpRoute, HttpRouteMatch, HttpRouteRule,
    HttpRouteTimeouts, ParentKind, ParentRef, PathMatch, PathMatchType, hostname_intersection,
};
pub use service::{Endpoint, Locality, Protocol, Service, ServicePort};
pub use smi::{
    HttpRouteGroup, RouteGroupMatch, SMI_SPECS_API_VERSION, SMI_SPLIT_API_VERSION, SplitBackend,
    TrafficSplit,
};
pub use table::{GatewayHost, RouteEntry, RouteKind, RouteTable, RuleRef, trimmed_prefix};
pub use watch::DirWatch;

/// The API group/version of weft's own resources.
pub const WEFT_API_VERSION: &str = "weft.dev/v1alpha1";
/// The Gateway API group/version (standard channel).
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The namespace used when `metadata.namespace` is absent.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A Kubernetes-style object identity: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A whole, validated configuration: every resource has passed its own checks
/// and every cross-reference (route -> Service or Gateway, split -> Service
/// and HTTPRouteGroup, dependency -> Service) resolves. Every list is sorted
/// by (namespace, name).
///
/// Routes are kept as written; [`Config::service_routes`] and
/// [`Config::gateway_hosts`] give the internal form data planes apply.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Config {
    pub services: Vec<Service>,
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub traffic_splits: Vec<TrafficSplit>,
    pub http_route_groups: Vec<HttpRouteGroup>,
    pub traffic_policies: Vec<TrafficPolicy>,
}

/// Binary search in a list sorted by (namespace, name).
fn find<'a, T>(
    list: &'a [T],
    key: impl Fn(&T) -> (&str, &str),
    namespace: &str,
    name: &str,
) -> Option<&'a T> {
    list.binary_search_by(|x| key(x).cmp(&(namespace, name)))
        .ok()
        .map(|i| &list[i])
}

impl Config {
    /// Looks a Service up by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        find(
            &self.services,
            |s| (s.namespace.as_str(), s.name.as_str()),
            namespace,
            name,
        )
    }

    /// Looks a Gateway up by namespace and name.
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&Gateway> {
        find(
            &self.gateways,
            |g| (g.namespace.as_str(), g.name.as_str()),
            namespace,
            name,
        )
    }

    /// Looks an HTTPRouteGroup up by namespace and name.
    pub fn http_route_group(&self, namespace: &str, name: &str) -> Option<&HttpRouteGroup> {
        find(
            &self.http_route_groups,
            |g| (g.namespace.as_str(), g.name.as_str()),
            namespace,
            name,
        )
    }

    /// The HTTPRoutes with a Service parent naming `service` (Gateway parents
    /// of the same name do not count).
    pub fn routes_for_service<'a>(
        &'a self,
        service: &'a Service,
    ) -> impl Iterator<Item = &'a HttpRoute> + 'a {
        self.http_routes.iter().filter(move |r| {
            r.parent_refs
                .iter()
                .any(|p| p.is_service(&service.namespace, &service.name))
        })
    }
}
