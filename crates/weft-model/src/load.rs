//! Loading: a directory (every `*.yaml` / `*.yml`, each a multi-document YAML
//! stream) -> documents -> typed resources -> a validated [`Config`]. Each
//! document is checked on its own here; checks across documents are in
//! [`references`](crate::references).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ConfigError, ConfigErrors, DocumentRef, Problems};
use crate::gateway::GatewaySpec;
use crate::grpc_route::GrpcRouteSpec;
use crate::route::HttpRouteSpec;
use crate::service::ServiceSpec;
use crate::smi::{HttpRouteGroupSpec, TrafficSplitSpec};
use crate::{
    Config, DEFAULT_NAMESPACE, GATEWAY_API_VERSION, SMI_SPECS_API_VERSION, SMI_SPLIT_API_VERSION,
    WEFT_API_VERSION,
};

#[derive(Debug, Deserialize)]
struct Metadata {
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

/// Loads every `*.yaml` / `*.yml` file directly in `dir` (not recursive,
/// hidden files skipped), in name order.
pub fn load_dir(dir: &Path) -> Result<Config, ConfigErrors> {
    let whole_dir = |message: String| {
        ConfigErrors(vec![ConfigError {
            document: DocumentRef {
                file: dir.to_path_buf(),
                index: 0,
                object: None,
            },
            field: String::new(),
            message,
        }])
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| whole_dir(format!("cannot read directory: {e}")))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_config_file(p) && p.is_file())
        .collect();
    paths.sort();
    let mut files = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => files.push((path, text)),
            Err(e) => errors.push(ConfigError {
                document: DocumentRef {
                    file: path,
                    index: 0,
                    object: None,
                },
                field: String::new(),
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    match load_documents(files) {
        Ok(c) if errors.is_empty() => Ok(c),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(ConfigErrors(more)) => {
            errors.extend(more);
            Err(ConfigErrors(errors))
        }
    }
}

/// Whether `path` names a config file: `*.yaml` / `*.yml`, not hidden.
pub(crate) fn is_config_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Loads one YAML stream; `origin` names it in errors.
pub fn load_str(text: &str, origin: impl Into<PathBuf>) -> Result<Config, ConfigErrors> {
    load_documents(vec![(origin.into(), text.to_string())])
}

/// Loads several named YAML streams as one config.
pub fn load_documents(files: Vec<(PathBuf, String)>) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut config = Config::default();
    // kind/namespace/name -> where it was defined: names duplicates, and
    // places the errors of cross-document checks.
    let mut docs = Documents::default();

    for (file, text) in files {
        let values: Vec<Value> = match serde_saphyr::from_multiple(&text) {
            Ok(d) => d,
            Err(e) => {
                errors.push(ConfigError {
                    document: DocumentRef {
                        file,
                        index: 0,
                        object: None,
                    },
                    field: String::new(),
                    message: format!("invalid YAML: {e}"),
                });
                continue;
            }
        };
        for (i, doc) in values.into_iter().enumerate() {
            let mut docref = DocumentRef {
                file: file.clone(),
                index: i + 1,
                object: None,
            };
            let Some(loaded) = load_document(doc, &mut docref, &mut errors) else {
                continue;
            };
            let key = docref.object.clone().unwrap_or_default();
            if let Some(first) = docs.seen.get(&key) {
                errors.push(ConfigError {
                    document: docref,
                    field: "metadata.name".into(),
                    message: format!("duplicate resource, first defined at {first}"),
                });
                continue;
            }
            docs.seen.insert(key.clone(), docref);
            match loaded {
                Loaded::Broken => {
                    docs.broken.insert(key);
                }
                Loaded::Service(s) => config.services.push(s),
                Loaded::Gateway(g) => config.gateways.push(g),
                Loaded::HttpRoute(r) => config.http_routes.push(r),
                Loaded::GrpcRoute(r) => config.grpc_routes.push(r),
                Loaded::TrafficSplit(t) => config.traffic_splits.push(t),
                Loaded::HttpRouteGroup(g) => config.http_route_groups.push(g),
                Loaded::TrafficPolicy(t) => config.traffic_policies.push(*t),
            }
        }
    }

    macro_rules! sort {
        ($($list:ident),*) => {$(
            config.$list.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        )*};
    }
    sort!(
        services,
        gateways,
        http_routes,
        grpc_routes,
        traffic_splits,
        http_route_groups,
        traffic_policies
    );
    crate::references::check(&config, &docs, &mut errors);

    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Where each loaded document came from, by `Kind/namespace/name`.
#[derive(Default)]
pub(crate) struct Documents {
    pub seen: BTreeMap<String, DocumentRef>,
    /// Identified, but invalid: references to these add no second error.
    pub broken: BTreeSet<String>,
}

impl Documents {
    /// The document of `kind` `namespace/name`.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<&DocumentRef> {
        self.seen.get(&format!("{kind}/{namespace}/{name}"))
    }

    /// Whether `kind` `namespace/name` exists but is invalid.
    pub fn is_broken(&self, kind: &str, namespace: &str, name: &str) -> bool {
        self.broken.contains(&format!("{kind}/{namespace}/{name}"))
    }
}

enum Loaded {
    /// Identified, but its spec could not be read: remembered so references
    /// to it do not add a second, misleading error.
    Broken,
    Service(crate::Service),
    Gateway(crate::Gateway),
    HttpRoute(crate::HttpRoute),
    GrpcRoute(crate::GrpcRoute),
    TrafficSplit(crate::TrafficSplit),
    HttpRouteGroup(crate::HttpRouteGroup),
    TrafficPolicy(Box<crate::TrafficPolicy>),
}

/// Every supported kind and the apiVersion it must have.
const KINDS: &[(&str, &str)] = &[
    ("Service", WEFT_API_VERSION),
    ("Gateway", GATEWAY_API_VERSION),
    ("HTTPRoute", GATEWAY_API_VERSION),
    ("GRPCRoute", GATEWAY_API_VERSION),
    ("TrafficSplit", SMI_SPLIT_API_VERSION),
    ("HTTPRouteGroup", SMI_SPECS_API_VERSION),
    ("TrafficPolicy", WEFT_API_VERSION),
];

/// Checks the envelope (`apiVersion`, `kind`, `metadata`) and the spec of one
/// document; fills in `docref.object` once the identity is known.
fn load_document(
    doc: Value,
    docref: &mut DocumentRef,
    errors: &mut Vec<ConfigError>,
) -> Option<Loaded> {
    let p = |errors: &mut Vec<ConfigError>, field: &str, message: String, docref: &DocumentRef| {
        errors.push(ConfigError {
            document: docref.clone(),
            field: field.to_string(),
            message,
        })
    };
    let Value::Object(mut obj) = doc else {
        p(
            errors,
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
            docref,
        );
        return None;
    };
    let api = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    let kind = obj.get("kind").and_then(Value::as_str).map(str::to_string);
    let (Some(api), Some(kind)) = (api, kind) else {
        p(
            errors,
            "",
            "apiVersion and kind are required strings".into(),
            docref,
        );
        return None;
    };
    let Some(&(_, want_api)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let supported: Vec<String> = KINDS.iter().map(|(k, a)| format!("{k} ({a})")).collect();
        p(
            errors,
            "kind",
            format!(
                "unsupported kind {kind:?} (apiVersion {api:?}); supported: {}",
                supported.join(", ")
            ),
            docref,
        );
        return None;
    };
    if api != want_api {
        p(
            errors,
            "apiVersion",
            format!("{api:?} is not supported for {kind}; use {want_api:?}"),
            docref,
        );
        return None;
    }
    let meta: Metadata = match obj.remove("metadata").map(serde_json::from_value) {
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            p(errors, "metadata", e.to_string(), docref);
            return None;
        }
        None => {
            p(
                errors,
                "metadata",
                "missing (metadata.name is required)".into(),
                docref,
            );
            return None;
        }
    };
    let namespace = meta
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let Some(name) = meta.name else {
        p(errors, "metadata.name", "missing".into(), docref);
        return None;
    };
    docref.object = Some(format!("{kind}/{namespace}/{name}"));
    let mut ok = true;
    for (field, value) in [("metadata.name", &name), ("metadata.namespace", &namespace)] {
        if let Err(why) = dns_label(value) {
            p(errors, field, format!("{value:?} {why}"), docref);
            ok = false;
        }
    }
    for key in obj.keys() {
        if !matches!(key.as_str(), "apiVersion" | "kind" | "spec" | "status") {
            p(
                errors,
                key,
                "unknown top-level field (expected apiVersion, kind, metadata, spec)".into(),
                docref,
            );
            ok = false;
        }
    }
    let spec = obj.remove("spec").unwrap_or(Value::Null);
    macro_rules! load {
        ($spec:ty, $variant:ident) => {
            load!($spec, $variant, std::convert::identity)
        };
        ($spec:ty, $variant:ident, $wrap:expr) => {{
            let Some(spec) = parse_spec::<$spec>(spec, docref, errors) else {
                return Some(Loaded::Broken);
            };
            let mut p = Problems {
                doc: docref,
                out: errors,
            };
            Loaded::$variant($wrap(spec.validate(name, namespace, &mut p)))
        }};
    }
    let loaded = match kind.as_str() {
        "Service" => load!(ServiceSpec, Service),
        "Gateway" => load!(GatewaySpec, Gateway),
        "HTTPRoute" => load!(HttpRouteSpec, HttpRoute),
        "GRPCRoute" => load!(GrpcRouteSpec, GrpcRoute),
        "TrafficSplit" => load!(TrafficSplitSpec, TrafficSplit),
        "HTTPRouteGroup" => load!(HttpRouteGroupSpec, HttpRouteGroup),
        "TrafficPolicy" => load!(crate::policy::TrafficPolicySpec, TrafficPolicy, Box::new),
        _ => unreachable!("every kind of KINDS is loaded"),
    };
    // An invalid document still takes part in reference checks, so one
    // mistake yields one error; the config as a whole is rejected anyway.
    Some(if ok { loaded } else { Loaded::Broken })
}

fn parse_spec<T: serde::de::DeserializeOwned>(
    spec: Value,
    docref: &DocumentRef,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    if spec.is_null() {
        errors.push(ConfigError {
            document: docref.clone(),
            field: "spec".into(),
            message: "missing".into(),
        });
        return None;
    }
    match serde_path_to_error::deserialize(spec) {
        Ok(s) => Some(s),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            errors.push(ConfigError {
                document: docref.clone(),
                field,
                message: e.into_inner().to_string(),
            });
            None
        }
    }
}

/// RFC 1123 label, as Kubernetes requires of names and namespaces.
pub(crate) fn dns_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1..63 characters");
    }
    let b = s.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    if !b.iter().all(ok_char) {
        return Err("must contain only lower-case letters, digits and '-'");
    }
    if b[0] == b'-' || b[b.len() - 1] == b'-' {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
