//! gRPC request messages given as JSON, turned into the protobuf bytes of
//! the method's request message, the way ghz and grpcurl do it.
//!
//! The method's descriptor comes from one [`DescriptorSource`]: the
//! server's reflection service (`grpc.reflection.v1`, else `v1alpha`),
//! `.proto` files compiled at run time (protox, no protoc), or a protoset
//! (a serialized `FileDescriptorSet`). The JSON follows the proto3 JSON
//! mapping. Only unary methods are accepted: `weft load` sends unary calls.
//!
//! ```no_run
//! # async fn demo(target: &weft_load::Target) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use weft_load::grpc_message::{DescriptorSource, GrpcMethod, UnaryMethod};
//! let method: GrpcMethod = "helloworld.Greeter/SayHello".parse()?;
//! let unary = UnaryMethod::resolve(target, &method, &DescriptorSource::Reflection, Duration::from_secs(5)).await?;
//! let body = unary.encode_json(r#"{"name": "weft"}"#)?;
//! # drop(body); Ok(()) }
//! ```

mod files;
mod json;
mod reflection;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use prost_reflect::{DescriptorPool, MethodDescriptor};

use crate::spec::Target;

/// Where the method's descriptors come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DescriptorSource {
    /// Ask the target's gRPC server reflection service (the default when
    /// no files are given).
    Reflection,
    /// `.proto` files (`--proto`, repeatable), compiled at run time.
    /// Imports are looked up in `import_paths` (`--import-path`,
    /// repeatable), then in each file's own directory; the well-known
    /// `google/protobuf/*.proto` files are built in.
    ProtoFiles {
        files: Vec<PathBuf>,
        import_paths: Vec<PathBuf>,
    },
    /// A serialized `FileDescriptorSet` (`--protoset`), as written by
    /// `protoc --include_imports --descriptor_set_out=FILE` or `buf build -o FILE`.
    Protoset(PathBuf),
}

impl DescriptorSource {
    /// The source the CLI flags name: `--proto` files (with `--import-path`
    /// dirs), a `--protoset`, or reflection when neither is given.
    pub fn from_flags(
        protos: Vec<PathBuf>,
        import_paths: Vec<PathBuf>,
        protoset: Option<PathBuf>,
    ) -> Result<Self, GrpcMessageError> {
        if !protos.is_empty() && protoset.is_some() {
            return Err(GrpcMessageError::Flags(
                "give --proto FILE or --protoset FILE, not both",
            ));
        }
        if protos.is_empty() && !import_paths.is_empty() {
            return Err(GrpcMessageError::Flags(
                "--import-path only applies to --proto files",
            ));
        }
        Ok(match protoset {
            Some(path) => DescriptorSource::Protoset(path),
            None if protos.is_empty() => DescriptorSource::Reflection,
            None => DescriptorSource::ProtoFiles {
                files: protos,
                import_paths,
            },
        })
    }

    /// Who offers the services, for "unknown service" errors (reflection
    /// says so itself).
    fn offered_by(&self) -> String {
        match self {
            DescriptorSource::Reflection => "the server's reflection offers".to_owned(),
            DescriptorSource::ProtoFiles { files, .. } => {
                let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
                let verb = if names.len() == 1 {
                    "defines"
                } else {
                    "define"
                };
                format!("{} {verb}", names.join(", "))
            }
            DescriptorSource::Protoset(path) => format!("protoset {} defines", path.display()),
        }
    }
}

/// A gRPC method name: `package.Service` and `Method`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrpcMethod {
    /// The fully qualified service name, `package.Service`.
    pub service: String,
    /// The method's simple name.
    pub method: String,
}

impl GrpcMethod {
    /// The HTTP/2 `:path` of a call: `/package.Service/Method`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

impl fmt::Display for GrpcMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.method)
    }
}

/// Why a string is not a [`GrpcMethod`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "gRPC method `{0}` is not `package.Service/Method` (also accepted: `/package.Service/Method`, `package.Service.Method`)"
)]
pub struct GrpcMethodError(pub String);

impl FromStr for GrpcMethod {
    type Err = GrpcMethodError;

    /// Accepts `pkg.Svc/Method`, `/pkg.Svc/Method` and `pkg.Svc.Method`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || GrpcMethodError(s.to_owned());
        let name = s.strip_prefix('/').unwrap_or(s);
        let (service, method) = match name.split_once('/') {
            Some((service, method)) => (service, method),
            None => name.rsplit_once('.').ok_or_else(bad)?,
        };
        let ident = |part: &str| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !ident(method) || !service.split('.').all(ident) {
            return Err(bad());
        }
        Ok(GrpcMethod {
            service: service.to_owned(),
            method: method.to_owned(),
        })
    }
}

/// Why a request message could not be made. Each variant names what was
/// wrong and, where it helps, what would have been right.
#[derive(Debug, thiserror::Error)]
pub enum GrpcMessageError {
    /// The `--proto` / `--import-path` / `--protoset` flags contradict
    /// each other.
    #[error("{0}")]
    Flags(&'static str),
    #[error("unknown service {service}; {offered_by}: {}{}", list(.available),
        .hint.as_ref().map(|h| format!("; did you mean {h}?")).unwrap_or_default())]
    UnknownService {
        service: String,
        /// `the server at URL offers`, `greeter.proto defines`.
        offered_by: String,
        /// The services the source offers.
        available: Vec<String>,
        /// A service with the same simple name, if one exists.
        hint: Option<String>,
    },
    #[error("service {service} has no method {method}; it has: {}", list(.available))]
    UnknownMethod {
        service: String,
        method: String,
        available: Vec<String>,
    },
    #[error("weft load sends unary calls; {method} is {kind}")]
    NotUnary {
        method: String,
        /// `client-streaming`, `server-streaming` or `bidirectional-streaming`.
        kind: &'static str,
    },
    #[error(
        "the server at {target} does not offer gRPC reflection (UNIMPLEMENTED); give --proto FILE or --protoset FILE"
    )]
    NoReflection { target: String },
    #[error("cannot reach {target} for gRPC reflection: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("gRPC reflection at {target} gave no answer within {timeout:?}")]
    ReflectionTimeout { target: String, timeout: Duration },
    #[error("gRPC reflection at {target} failed: {reason}")]
    Reflection { target: String, reason: String },
    #[error("cannot read {}: {reason}", .path.display())]
    ProtoFile { path: PathBuf, reason: String },
    #[error("cannot compile {0}")]
    ProtoCompile(String),
    #[error("cannot read protoset {}: {reason}", .path.display())]
    ProtosetRead { path: PathBuf, reason: String },
    #[error("{} is not a valid protoset (a serialized FileDescriptorSet): {reason}", .path.display())]
    InvalidProtoset { path: PathBuf, reason: String },
    #[error("the descriptors from {origin} are inconsistent: {reason}")]
    InvalidDescriptors { origin: String, reason: String },
    #[error("request JSON for {message} is not valid JSON: {reason}")]
    JsonSyntax { message: String, reason: String },
    #[error("request JSON for {message} must be an object, got {found}")]
    JsonNotObject {
        message: String,
        found: &'static str,
    },
    #[error("request JSON does not fit {message}: {}{reason}{}",
        .field.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default(),
        .fields_hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    JsonMismatch {
        /// The request message type.
        message: String,
        /// The JSON path of the offending value (`address.zip`, `tags[1]`).
        field: Option<String>,
        reason: String,
        /// The fields of the message where an unknown field was found.
        fields_hint: Option<String>,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// An unknown `service`, with the services on offer and, if one has the
/// same simple name (the package was left out or wrong), that one.
fn unknown_service(service: &str, offered_by: String, available: Vec<String>) -> GrpcMessageError {
    let simple = |name: &str| name.rsplit('.').next().unwrap_or(name).to_owned();
    let hint = available
        .iter()
        .find(|s| simple(s) == simple(service))
        .cloned();
    GrpcMessageError::UnknownService {
        service: service.to_owned(),
        offered_by,
        available,
        hint,
    }
}

/// A unary method whose request type is known: encodes JSON requests.
#[derive(Debug, Clone)]
pub struct UnaryMethod {
    desc: MethodDescriptor,
}

impl UnaryMethod {
    /// Finds `method` in `source` and checks it is unary. Reflection talks
    /// to `target` (plaintext h2c) and gives up after `timeout`; the file
    /// sources do not touch the network.
    pub async fn resolve(
        target: &Target,
        method: &GrpcMethod,
        source: &DescriptorSource,
        timeout: Duration,
    ) -> Result<Self, GrpcMessageError> {
        let pool = match source {
            DescriptorSource::Reflection => {
                reflection::fetch_pool(target, &method.service, timeout).await?
            }
            DescriptorSource::ProtoFiles {
                files,
                import_paths,
            } => files::compile(files, import_paths)?,
            DescriptorSource::Protoset(path) => files::protoset(path)?,
        };
        Self::from_pool(&pool, method, || source.offered_by())
    }

    /// Finds `method` in an already built pool; `offered_by` says where
    /// the pool came from in error messages.
    fn from_pool(
        pool: &DescriptorPool,
        method: &GrpcMethod,
        offered_by: impl FnOnce() -> String,
    ) -> Result<Self, GrpcMessageError> {
        let Some(service) = pool.get_service_by_name(&method.service) else {
            let mut available: Vec<String> =
                pool.services().map(|s| s.full_name().to_owned()).collect();
            available.sort();
            return Err(unknown_service(&method.service, offered_by(), available));
        };
        let Some(desc) = service.methods().find(|m| m.name() == method.method) else {
            return Err(GrpcMessageError::UnknownMethod {
                service: method.service.clone(),
                method: method.method.clone(),
                available: service.methods().map(|m| m.name().to_owned()).collect(),
            });
        };
        let kind = match (desc.is_client_streaming(), desc.is_server_streaming()) {
            (false, false) => return Ok(UnaryMethod { desc }),
            (true, false) => "client-streaming",
            (false, true) => "server-streaming",
            (true, true) => "bidirectional-streaming",
        };
        Err(GrpcMessageError::NotUnary {
            method: method.to_string(),
            kind,
        })
    }

    /// The request message's full name (`helloworld.HelloRequest`).
    pub fn input_type(&self) -> String {
        self.desc.input().full_name().to_owned()
    }

    /// The method's HTTP/2 `:path`: `/package.Service/Method`.
    pub fn path(&self) -> String {
        format!(
            "/{}/{}",
            self.desc.parent_service().full_name(),
            self.desc.name()
        )
    }

    /// The protobuf bytes of the request message `json` describes (proto3
    /// JSON mapping; unknown fields are errors).
    pub fn encode_json(&self, json: &str) -> Result<Bytes, GrpcMessageError> {
        json::encode(&self.desc.input(), json)
    }
}

/// Resolves `method` from `source` (see [`UnaryMethod::resolve`]) and
/// encodes `json` as its request message.
pub async fn encode_json_request(
    target: &Target,
    method: &GrpcMethod,
    json: &str,
    source: &DescriptorSource,
    timeout: Duration,
) -> Result<Bytes, GrpcMessageError> {
    UnaryMethod::resolve(target, method, source, timeout)
        .await?
        .encode_json(json)
}
