//! weft's config model: Kubernetes-shaped YAML resources (`apiVersion`, `kind`,
//! `metadata`, `spec`), loaded from files or directories and validated with
//! errors that name the file, the document and the field.
//!
//! This crate owns the user-facing schema only. It must not depend on tokio,
//! protobuf or kube: data planes translate a validated [`Config`] into their own
//! runtime snapshots.

mod duration;
mod error;
mod load;
mod route;
mod service;
mod watch;

pub use duration::{DurationError, parse_duration};
pub use error::{ConfigError, ConfigErrors, DocumentRef};
pub use load::{load_dir, load_documents, load_str};
pub use route::{
    BackendRef, HeaderMatch, HeaderMatchType, HttpRoute, HttpRouteMatch, HttpRouteRule,
    HttpRouteTimeouts, ParentRef, PathMatch, PathMatchType,
};
pub use service::{Endpoint, Locality, Protocol, Service, ServicePort};
pub use watch::DirWatch;

/// The API group/version of weft's own resources.
pub const WEFT_API_VERSION: &str = "weft.dev/v1alpha1";
/// The Gateway API group/version (standard channel).
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
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
/// and every cross-reference (route -> Service) resolves.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Config {
    /// Services sorted by (namespace, name).
    pub services: Vec<Service>,
    /// HTTPRoutes sorted by (namespace, name).
    pub http_routes: Vec<HttpRoute>,
}

impl Config {
    /// Looks a Service up by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .binary_search_by(|s| (s.namespace.as_str(), s.name.as_str()).cmp(&(namespace, name)))
            .ok()
            .map(|i| &self.services[i])
    }

    /// The HTTPRoutes whose `parentRefs` name the given Service.
    pub fn routes_for_service<'a>(
        &'a self,
        service: &'a Service,
    ) -> impl Iterator<Item = &'a HttpRoute> + 'a {
        self.http_routes.iter().filter(move |r| {
            r.parent_refs
                .iter()
                .any(|p| p.namespace == service.namespace && p.name == service.name)
        })
    }
}
