//! Loading: a directory (every `*.yaml` / `*.yml`, each a multi-document YAML
//! stream) -> documents -> typed resources -> a validated [`Config`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ConfigError, ConfigErrors, DocumentRef, Problems};
use crate::route::HttpRouteSpec;
use crate::service::ServiceSpec;
use crate::{Config, DEFAULT_NAMESPACE, GATEWAY_API_VERSION, WEFT_API_VERSION};

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
    // kind/namespace/name -> where it was first defined, to name duplicates.
    let mut seen: BTreeMap<String, DocumentRef> = BTreeMap::new();
    let mut route_docs = Vec::new();
    let mut broken = std::collections::BTreeSet::new();

    for (file, text) in files {
        let docs: Vec<Value> = match serde_saphyr::from_multiple(&text) {
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
        for (i, doc) in docs.into_iter().enumerate() {
            let mut docref = DocumentRef {
                file: file.clone(),
                index: i + 1,
                object: None,
            };
            let Some(loaded) = load_document(doc, &mut docref, &mut errors) else {
                continue;
            };
            let key = docref.object.clone().unwrap_or_default();
            if let Some(first) = seen.get(&key) {
                errors.push(ConfigError {
                    document: docref,
                    field: "metadata.name".into(),
                    message: format!("duplicate resource, first defined at {first}"),
                });
                continue;
            }
            seen.insert(key.clone(), docref.clone());
            match loaded {
                Loaded::Broken => {
                    broken.insert(key);
                }
                Loaded::Service(s) => config.services.push(s),
                Loaded::HttpRoute(r) => {
                    route_docs.push(docref);
                    config.http_routes.push(r);
                }
            }
        }
    }

    config
        .services
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    check_route_references(&config, &route_docs, &broken, &mut errors);
    let mut routes: Vec<_> = config.http_routes.drain(..).collect();
    routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    config.http_routes = routes;

    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

enum Loaded {
    /// Identified, but its spec could not be read: remembered so references
    /// to it do not add a second, misleading error.
    Broken,
    Service(crate::Service),
    HttpRoute(crate::HttpRoute),
}

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
    let loaded = match (api.as_str(), kind.as_str()) {
        (WEFT_API_VERSION, "Service") => {
            let Some(spec) = parse_spec::<ServiceSpec>(spec, docref, errors) else {
                return Some(Loaded::Broken);
            };
            let mut p = Problems {
                doc: docref,
                out: errors,
            };
            Loaded::Service(spec.validate(name, namespace, &mut p))
        }
        (GATEWAY_API_VERSION, "HTTPRoute") => {
            let Some(spec) = parse_spec::<HttpRouteSpec>(spec, docref, errors) else {
                return Some(Loaded::Broken);
            };
            let mut p = Problems {
                doc: docref,
                out: errors,
            };
            Loaded::HttpRoute(spec.validate(name, namespace, &mut p))
        }
        (_, "Service") | (_, "HTTPRoute") => {
            let want = if kind == "Service" {
                WEFT_API_VERSION
            } else {
                GATEWAY_API_VERSION
            };
            p(
                errors,
                "apiVersion",
                format!("{api:?} is not supported for {kind}; use {want:?}"),
                docref,
            );
            return None;
        }
        _ => {
            p(
                errors,
                "kind",
                format!(
                    "unsupported kind {kind:?} (apiVersion {api:?}); supported: Service ({WEFT_API_VERSION}), HTTPRoute ({GATEWAY_API_VERSION})"
                ),
                docref,
            );
            return None;
        }
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

/// Every route's parents and backends must name Services (and ports) that exist.
fn check_route_references(
    config: &Config,
    docs: &[DocumentRef],
    broken: &std::collections::BTreeSet<String>,
    errors: &mut Vec<ConfigError>,
) {
    let is_broken = |ns: &str, name: &str| broken.contains(&format!("Service/{ns}/{name}"));
    for (route, doc) in config.http_routes.iter().zip(docs) {
        let mut p = Problems { doc, out: errors };
        for (i, parent) in route.parent_refs.iter().enumerate() {
            let field = format!("spec.parentRefs[{i}]");
            match config.service(&parent.namespace, &parent.name) {
                None if is_broken(&parent.namespace, &parent.name) => {}
                None => p.add(
                    format!("{field}.name"),
                    format!(
                        "Service {}/{} does not exist",
                        parent.namespace, parent.name
                    ),
                ),
                Some(s) => {
                    if let Some(port) = parent.port {
                        match s.port(port) {
                            None => p.add(format!("{field}.port"), format!("Service {} has no port {port}", s.name)),
                            Some(sp) if !sp.protocol.is_http() => p.add(
                                format!("{field}.port"),
                                format!("port {port} of Service {} is tcp; HTTPRoutes need an HTTP port", s.name),
                            ),
                            Some(_) => {}
                        }
                    } else if s.first_http_port().is_none() {
                        p.add(
                            format!("{field}.name"),
                            format!("Service {} has no HTTP port (http, http2 or grpc)", s.name),
                        );
                    }
                }
            }
        }
        for (i, rule) in route.rules.iter().enumerate() {
            for (j, b) in rule.backend_refs.iter().enumerate() {
                let field = format!("spec.rules[{i}].backendRefs[{j}]");
                match config.service(&b.namespace, &b.name) {
                    None if is_broken(&b.namespace, &b.name) => {}
                    None => p.add(
                        format!("{field}.name"),
                        format!("Service {}/{} does not exist", b.namespace, b.name),
                    ),
                    Some(s) => match b.port {
                        Some(port) if s.port(port).is_none() => p.add(
                            format!("{field}.port"),
                            format!("Service {} has no port {port}", s.name),
                        ),
                        None if s.first_http_port().is_none() => p.add(
                            format!("{field}.name"),
                            format!("Service {} has no HTTP port (http, http2 or grpc)", s.name),
                        ),
                        _ => {}
                    },
                }
            }
        }
    }
}

/// RFC 1123 label, as Kubernetes requires of names and namespaces.
fn dns_label(s: &str) -> Result<(), &'static str> {
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
