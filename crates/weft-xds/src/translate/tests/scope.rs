//! Scoping: a node's config follows what it uses, not the size of the mesh.

use super::*;

/// `namespaces` x 10 Services (`svc0`..`svc9` in `ns00`..), each with one
/// HTTP port and one endpoint; `svc0.ns03` splits to `svc1.ns07`.
fn big_mesh(namespaces: usize) -> Arc<Config> {
    let mut yaml = String::new();
    for n in 0..namespaces {
        for s in 0..10 {
            let deps = if (n, s) == (4, 4) {
                "  dependencies: [svc1.ns05, svc0.ns03]\n"
            } else {
                ""
            };
            yaml.push_str(&format!(
                "apiVersion: weft.dev/v1alpha1\nkind: Service\nmetadata: {{name: svc{s}, namespace: ns{n:02}}}\nspec:\n  ports: [{{port: 8080, protocol: http}}]\n  endpoints: [{{address: \"10.{n}.{s}.1:8080\"}}]\n{deps}---\n"
            ));
        }
    }
    yaml.push_str(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: ns03}
spec:
  parentRefs: [{kind: Service, name: svc0}]
  rules:
  - backendRefs: [{name: svc0, weight: 9}, {name: svc1, namespace: ns07, weight: 1}]
"#,
    );
    Arc::new(weft_model::load_str(&yaml, "big.yaml").unwrap_or_else(|e| panic!("{e}")))
}

fn scope_names(config: &Config, cluster: &str, kind: DataPlane) -> Vec<String> {
    services_in_scope(config, &node(kind, cluster))
        .into_iter()
        .map(|i| {
            let s = &config.services[i];
            format!("{}.{}", s.name, s.namespace)
        })
        .collect()
}

#[test]
fn a_sidecar_gets_its_namespace_and_its_split_targets_only() {
    let config = big_mesh(20);
    assert_eq!(config.services.len(), 200);
    let mut expected: Vec<String> = (0..10).map(|s| format!("svc{s}.ns03")).collect();
    expected.push("svc1.ns07".into());
    expected.sort();
    let mut got = scope_names(&config, "svc2.ns03", DataPlane::Envoy);
    got.sort();
    assert_eq!(got, expected);

    let set = resources_for(
        &config,
        &node(DataPlane::Envoy, "svc2.ns03"),
        &TranslateOptions::default(),
    );
    let clusters = names(&set, TypeUrl::Cluster);
    assert_eq!(clusters.len(), 11 + 1, "11 Services and the inbound app");
    for c in clusters {
        assert!(
            c.ends_with(".ns03:8080") || c == "svc1.ns07:8080" || c == "inbound|svc2.ns03",
            "{c}"
        );
    }
    assert_eq!(set.of(TypeUrl::ClusterLoadAssignment).count(), 11);
    let rc: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "outbound");
    assert_eq!(rc.virtual_hosts.len(), 11);

    // The same for gRPC clients beside a Service.
    let mut grpc = scope_names(&config, "svc2.ns03", DataPlane::Grpc);
    grpc.sort();
    assert_eq!(grpc, expected);
}

#[test]
fn dependencies_replace_the_namespace_default() {
    let config = big_mesh(20);
    // svc4.ns04 depends on svc1.ns05 and svc0.ns03, which splits to svc1.ns07.
    assert_eq!(
        scope_names(&config, "svc4.ns04", DataPlane::Weft),
        ["svc0.ns03", "svc4.ns04", "svc1.ns05", "svc1.ns07"]
    );
    // A client-only workload gets its namespace.
    assert_eq!(
        scope_names(&config, "loadgen.ns09", DataPlane::Envoy).len(),
        10
    );
    assert!(scope_names(&config, "loadgen.ns42", DataPlane::Envoy).is_empty());
}

#[test]
fn a_sidecar_config_does_not_grow_with_the_mesh() {
    let n = node(DataPlane::Envoy, "svc2.ns03");
    let small = resources_for(&big_mesh(20), &n, &TranslateOptions::default());
    let large = resources_for(&big_mesh(40), &n, &TranslateOptions::default());
    assert_eq!(
        small, large,
        "twice the mesh, the same resources and versions"
    );
}
