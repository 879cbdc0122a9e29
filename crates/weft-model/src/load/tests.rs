use super::*;
use crate::{HeaderMatchType, PathMatchType, Protocol};
use std::time::Duration;

mod gateway;
mod grpc;
mod scope;
mod smi;

const GOOD: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog}
spec:
  vip: 127.0.10.1
  ports: [{name: http, port: 8080, protocol: http}]
  endpoints:
  - address: 127.0.0.1:9001
    weight: 3
    locality: {region: eu, zone: eu-1a}
    labels: {version: v1}
  - address: 127.0.0.1:9002
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog-v2, namespace: default}
spec:
  ports: [{port: 8080, protocol: grpc}]
  endpoints: [{address: "127.0.0.1:9003"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catalog-split}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog, port: 8080}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: X-Canary, value: "yes"}]
      method: GET
    backendRefs: [{name: catalog-v2, weight: 1}]
    timeouts: {request: 1500ms}
  - backendRefs: [{name: catalog, weight: 90}, {name: catalog-v2, weight: 10}]
"#;

pub(super) fn errors(text: &str) -> Vec<String> {
    match load_str(text, "test.yaml") {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

pub(super) fn assert_error(text: &str, expected: &str) {
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| e.contains(expected)),
        "no error containing {expected:?} in {errs:#?}"
    );
}

#[test]
fn loads_services_and_routes() {
    let c = load_str(GOOD, "good.yaml").unwrap();
    assert_eq!(c.services.len(), 2);
    let cat = c.service("default", "catalog").unwrap();
    assert_eq!(cat.vip, Some("127.0.10.1".parse().unwrap()));
    assert_eq!(cat.endpoints[0].weight, 3);
    assert_eq!(cat.endpoints[1].weight, 1, "weight defaults to 1");
    assert_eq!(cat.endpoints[0].locality.zone.as_deref(), Some("eu-1a"));
    assert_eq!(
        c.service("default", "catalog-v2").unwrap().ports[0].protocol,
        Protocol::Grpc
    );
    let r = &c.http_routes[0];
    assert_eq!(c.routes_for_service(cat).count(), 1);
    let m = &r.rules[0].matches[0];
    assert_eq!(m.path.kind, PathMatchType::PathPrefix);
    assert_eq!(
        m.headers[0].name, "x-canary",
        "header names are lower-cased"
    );
    assert_eq!(m.headers[0].kind, HeaderMatchType::Exact);
    assert_eq!(
        r.rules[0].timeouts.request,
        Some(Duration::from_millis(1500))
    );
    assert_eq!(
        r.rules[1].matches[0].path.value, "/",
        "no matches means prefix /"
    );
    let weights: Vec<u32> = r.rules[1].backend_refs.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [90, 10]);
}

#[test]
fn errors_name_file_document_and_field() {
    let text = GOOD.replace("address: 127.0.0.1:9002", "address: nowhere");
    let errs = errors(&text);
    assert_eq!(
        errs,
        [
            "test.yaml: document 1 (Service/default/catalog): spec.endpoints[1].address: \"nowhere\" is not IP:PORT (e.g. \"10.0.0.7:8080\")"
        ]
    );
}

#[test]
fn unknown_fields_are_named() {
    let text = GOOD.replace("vip: 127.0.10.1", "vipp: 127.0.10.1");
    assert_error(
        &text,
        "document 1 (Service/default/catalog): spec.vipp: unknown field `vipp`",
    );
    let text = GOOD.replace("weight: 3", "wieght: 3");
    assert_error(
        &text,
        "spec.endpoints[0].wieght: unknown field `wieght`, expected one of `address`, `weight`",
    );
}

#[test]
fn bad_types_name_the_field_path() {
    let text = GOOD.replace("protocol: grpc", "protocol: quic");
    assert_error(
        &text,
        "document 2 (Service/default/catalog-v2): spec.ports[0].protocol: unknown variant `quic`",
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = GOOD
        .replace("weight: 3", "weight: 0")
        .replace("port: 8080, protocol: grpc", "port: 0, protocol: grpc")
        .replace("timeouts: {request: 1500ms}", "timeouts: {request: 1.5s}");
    let errs = errors(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
    assert!(errs[0].contains("spec.endpoints[0].weight"));
    assert!(errs[1].contains("spec.ports[0].port"));
    assert!(errs[2].contains("spec.rules[0].timeouts.request"));
}

#[test]
fn references_must_resolve() {
    let text = GOOD.replace(
        "{name: catalog-v2, weight: 10}",
        "{name: catalog-v3, weight: 10}",
    );
    assert_error(
        &text,
        "spec.rules[1].backendRefs[1].name: Service default/catalog-v3 does not exist",
    );
    let text = GOOD.replace("name: catalog, port: 8080}", "name: catalog, port: 9999}");
    assert_error(
        &text,
        "spec.parentRefs[0].port: Service catalog has no port 9999",
    );
}

#[test]
fn envelope_problems() {
    assert_error(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        "unsupported kind \"ConfigMap\"",
    );
    assert_error(
        "apiVersion: weft.dev/v2\nkind: Service\nmetadata: {name: x}\nspec: {}\n",
        "apiVersion: \"weft.dev/v2\" is not supported for Service",
    );
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: Catalog}\nspec: {ports: [{port: 1, protocol: tcp}]}\n",
        "metadata.name: \"Catalog\" must contain only lower-case",
    );
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {}\n",
        "metadata.name: missing",
    );
    assert_error("- a\n- b\n", "document 1: a document must be a mapping");
    assert_error("a: [unclosed\n", "test.yaml: invalid YAML");
}

#[test]
fn duplicates_point_at_the_first_definition() {
    let doc = "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 1, protocol: tcp}]}\n";
    let text = format!("{doc}---\n{doc}");
    assert_error(
        &text,
        "document 2 (Service/default/a): metadata.name: duplicate resource, first defined at test.yaml: document 1",
    );
}

#[test]
fn routes_need_existing_parents_and_valid_matches() {
    // Without a kind, a parent is a Gateway (the Gateway API default).
    let text = GOOD.replace(
        "{group: \"\", kind: Service, name: catalog, port: 8080}",
        "{name: catalog, port: 8080}",
    );
    assert_error(
        &text,
        "spec.parentRefs[0].name: Gateway default/catalog does not exist",
    );
    let text = GOOD.replace(
        "kind: Service, name: catalog, port",
        "kind: Pod, name: catalog, port",
    );
    assert_error(
        &text,
        "spec.parentRefs[0].kind: unsupported parent kind \"Pod\"",
    );
    let text = GOOD.replace(
        "{type: PathPrefix, value: /api}",
        "{type: RegularExpression, value: \"/api(\"}",
    );
    assert_error(
        &text,
        "spec.rules[0].matches[0].path.value: invalid regular expression",
    );
    let text = GOOD.replace("method: GET", "method: FETCH");
    assert_error(&text, "spec.rules[0].matches[0].method");
    let text = GOOD.replace(
        "{name: catalog, weight: 90}, {name: catalog-v2, weight: 10}",
        "{name: catalog, weight: 0}",
    );
    assert_error(&text, "all backend weights are 0");
}

#[test]
fn loads_a_directory_of_files() {
    let dir = std::env::temp_dir().join(format!("weft-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = GOOD.split_at(GOOD.find("---\napiVersion: gateway").unwrap());
    std::fs::write(dir.join("a-services.yaml"), a).unwrap();
    std::fs::write(dir.join("b-route.yml"), b).unwrap();
    std::fs::write(dir.join("notes.txt"), "not yaml: [").unwrap();
    std::fs::write(dir.join(".hidden.yaml"), "not yaml: [").unwrap();
    let c = load_dir(&dir).unwrap();
    assert_eq!((c.services.len(), c.http_routes.len()), (2, 1));
    std::fs::write(
        dir.join("c-bad.yaml"),
        "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {name: x}\nspec: {ports: []}\n",
    )
    .unwrap();
    let errs = load_dir(&dir).unwrap_err();
    assert!(errs.to_string().contains("c-bad.yaml: document 1 (Service/default/x): spec.ports: a Service needs at least one port"), "{errs}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        load_dir(&dir)
            .unwrap_err()
            .to_string()
            .contains("cannot read directory")
    );
}
