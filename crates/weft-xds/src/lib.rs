//! xDS v3 for weft: the resources the control plane serves, who gets which
//! ([`node`]), the translation from weft's config model to Envoy / gRPC /
//! weft resources, the ADS server engine (state-of-the-world and delta) and
//! the ADS client engine (delta) that weft's proxy runs ([`client`]).
//!
//! Protobuf types come from `envoy-types` (pre-generated, tonic 0.14) and stop
//! at this crate's edge: proxies and the control plane see [`ResourceSet`]s
//! and typed settings. Must not depend on hyper proxying or kube.

pub mod client;
pub mod node;
pub mod resource;
pub mod server;
pub mod translate;

pub use envoy_types;
pub use node::{DataPlane, NodeInfo};
pub use resource::{Resource, ResourceSet, TypeUrl};
