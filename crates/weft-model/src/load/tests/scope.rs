//! `Service.spec.dependencies`.

use super::assert_error;
use crate::{ObjectKey, load_str};

const MESH: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: frontend}
spec:
  ports: [{port: 8080, protocol: http}]
  dependencies: [catalog, users.data]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: catalog}
spec:
  ports: [{port: 8080, protocol: http}]
---
apiVersion: weft.dev/v1alpha1
kind: Service
metadata: {name: users, namespace: data}
spec:
  ports: [{port: 7000, protocol: grpc}]
  dependencies: []
"#;

#[test]
fn dependencies_name_services_here_or_in_a_namespace() {
    let c = load_str(MESH, "deps.yaml").unwrap_or_else(|e| panic!("{e}"));
    let frontend = c.service("default", "frontend").unwrap();
    assert_eq!(
        frontend.dependencies,
        Some(vec![
            ObjectKey::new("default", "catalog"),
            ObjectKey::new("data", "users")
        ])
    );
    assert_eq!(c.service("default", "catalog").unwrap().dependencies, None);
    assert_eq!(
        c.service("data", "users").unwrap().dependencies,
        Some(vec![])
    );
}

#[test]
fn dependencies_must_exist() {
    assert_error(
        &MESH.replace("users.data]", "users.default]"),
        "(Service/default/frontend): spec.dependencies[1]: Service default/users does not exist",
    );
    assert_error(
        &MESH.replace("users.data]", "users.data.svc]"),
        "spec.dependencies[1]: \"users.data.svc\" is not NAME or NAME.NAMESPACE",
    );
    assert_error(
        &MESH.replace("[catalog, users.data]", "[catalog, catalog]"),
        "spec.dependencies[1]: duplicate dependency default/catalog",
    );
}
