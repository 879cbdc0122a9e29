use weft_xds::translate::resources_for;

use super::*;

/// web -> cart (a route sends 10% to cart-canary) -> stock; pay declares
/// nothing, so it has its whole namespace in scope.
fn config(canary_endpoints: usize, stock_deps: &str) -> Config {
    let service = |id: u8, name: &str, deps: Option<&str>, endpoints: usize| {
        let deps = deps.map_or(String::new(), |d| format!("  dependencies: [{d}]\n"));
        let mut doc = format!(
            "---\napiVersion: weft.dev/v1alpha1\nkind: Service\n\
             metadata: {{name: {name}, namespace: shop}}\nspec:\n\
             \x20 ports: [{{name: http, port: 8080, protocol: http}}]\n{deps}  endpoints:\n"
        );
        for k in 0..endpoints {
            doc.push_str(&format!("  - address: 10.0.{id}.{}:8080\n", k + 1));
        }
        doc
    };
    let text = [
        service(1, "web", Some("cart"), 2),
        service(2, "cart", Some("stock"), 2),
        service(3, "cart-canary", Some("stock"), canary_endpoints),
        service(4, "stock", Some(stock_deps), 1),
        service(5, "pay", None, 1),
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: cart-split, namespace: shop}\n\
         spec:\n  parentRefs: [{kind: Service, name: cart}]\n  rules:\n\
         \x20 - backendRefs: [{name: cart, weight: 90}, {name: cart-canary, weight: 10}]\n"
            .to_string(),
    ]
    .concat();
    weft_model::load_str(&text, "shop.yaml").unwrap()
}

fn node(cluster: &str, kind: DataPlane) -> NodeInfo {
    NodeInfo {
        id: format!("{cluster}-1"),
        cluster: cluster.into(),
        kind,
        user_agent: kind.as_str().into(),
    }
}

fn nodes() -> Vec<NodeInfo> {
    let mut nodes: Vec<NodeInfo> = ["web", "cart", "cart-canary", "stock", "pay"]
        .iter()
        .map(|s| node(&format!("{s}.shop"), DataPlane::Envoy))
        .collect();
    nodes.push(node("stock.shop", DataPlane::Weft));
    nodes.push(node("web.shop", DataPlane::Grpc));
    nodes
}

/// Publishes `next` and checks every group against a full translation.
fn publish_and_check(cache: &SnapshotCache, next: Config) -> Vec<NodeInfo> {
    let watches: Vec<_> = nodes().into_iter().map(|n| (cache.watch(&n), n)).collect();
    let opts = TranslateOptions::default();
    let before: Vec<ResourceSet> = watches
        .iter()
        .map(|(_, n)| resources_for(&cache.config(), n, &opts))
        .collect();
    let stats = cache.update(next.clone()).unwrap();
    let mut woken = Vec::new();
    for ((rx, n), old) in watches.into_iter().zip(before) {
        let want = resources_for(&next, &n, &opts);
        assert!(
            same_resources(&rx.borrow(), &want),
            "{} ({}) is served what a full translation gives",
            n.cluster,
            n.kind.as_str()
        );
        assert_eq!(
            rx.has_changed().unwrap(),
            !same_resources(&old, &want),
            "{} ({}) is woken exactly when its set changed",
            n.cluster,
            n.kind.as_str()
        );
        if rx.has_changed().unwrap() {
            woken.push(n);
        }
    }
    assert_eq!(stats.groups_changed, woken.len());
    woken
}

#[test]
fn an_endpoint_change_reaches_exactly_the_groups_with_that_service_in_scope() {
    let cache = SnapshotCache::new(config(1, "pay"), TranslateOptions::default());
    let next = config(2, "pay");
    assert_eq!(
        endpoint_only_changes(&cache.config(), &next),
        Some(vec![1]),
        "only cart-canary (index 1 in name order) changed"
    );
    let mut woken: Vec<String> = publish_and_check(&cache, next)
        .into_iter()
        .map(|n| format!("{}/{}", n.cluster, n.kind.as_str()))
        .collect();
    woken.sort();
    // cart-canary itself, cart and web (the split's backend), pay (whole
    // namespace); not stock.
    assert_eq!(
        woken,
        [
            "cart-canary.shop/envoy",
            "cart.shop/envoy",
            "pay.shop/envoy",
            "web.shop/envoy",
            "web.shop/grpc"
        ]
    );
}

#[test]
fn other_changes_retranslate_every_group() {
    let cache = SnapshotCache::new(config(1, "pay"), TranslateOptions::default());
    // stock now calls cart-canary: a scope changed, and an endpoint too.
    let next = config(2, "cart-canary");
    assert_eq!(endpoint_only_changes(&cache.config(), &next), None);
    let woken = publish_and_check(&cache, next);
    assert!(woken.iter().any(|n| n.cluster == "stock.shop"));
}
