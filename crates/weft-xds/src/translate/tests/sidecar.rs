//! The sidecar form (Envoy and weft).

use super::*;

#[test]
fn sidecar_gets_the_named_resources() {
    let set = sidecar_set("catalog");
    assert_eq!(
        names(&set, TypeUrl::Listener),
        [
            "inbound",
            "outbound",
            "vip|127.0.10.1:8080",
            "vip|127.0.10.1:8081",
            "vip|127.0.10.1:9000"
        ]
    );
    assert_eq!(
        names(&set, TypeUrl::RouteConfiguration),
        ["outbound", "vip|127.0.10.1:8080", "vip|127.0.10.1:8081"]
    );
    // Without dependencies: every Service of its namespace, not `data`'s.
    let ports = [
        "catalog-v2.default:8080",
        "catalog.default:8080",
        "catalog.default:8081",
        "catalog.default:9000",
        "frontend.default:3000",
    ];
    let mut clusters = ports.to_vec();
    clusters.push("inbound|catalog.default");
    clusters.sort();
    assert_eq!(names(&set, TypeUrl::Cluster), clusters);
    assert_eq!(names(&set, TypeUrl::ClusterLoadAssignment), ports);

    let out: Listener = decode(&set, TypeUrl::Listener, "outbound");
    assert_eq!(rds_name(&hcm(&out)), "outbound");
    let tcp: Listener = decode(&set, TypeUrl::Listener, "vip|127.0.10.1:9000");
    let Some(filter::ConfigType::TypedConfig(any)) = &tcp.filter_chains[0].filters[0].config_type
    else {
        panic!()
    };
    let tcp: TcpProxy = unpack(any);
    assert_eq!(
        tcp.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(
            "catalog.default:9000".into()
        ))
    );
}

#[test]
fn domains_are_every_host_form_once() {
    let set = sidecar_set("frontend");
    let rc: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "outbound");
    let catalog = vhost(&rc, "catalog.default:8080");
    for d in [
        "catalog",
        "catalog:8080",
        "catalog.default",
        "catalog.default:8080",
        "catalog.default.svc",
        "catalog.default.svc:8080",
        "catalog.default.svc.cluster.local",
        "catalog.default.svc.cluster.local:8080",
    ] {
        assert!(catalog.domains.contains(&d.to_string()), "{d}");
    }
    // The second HTTP port only answers with its port.
    let grpc = vhost(&rc, "catalog.default:8081");
    assert!(grpc.domains.iter().all(|d| d.ends_with(":8081")));
    assert!(grpc.domains.contains(&"catalog:8081".to_string()));
    // Other namespaces' Services have no bare name; tcp ports no host.
    let users = vhost(&rc, "users.data:7000");
    assert!(
        !users
            .domains
            .iter()
            .any(|d| d == "users" || d == "users:7000")
    );
    assert!(users.domains.contains(&"users.data".to_string()));
    assert!(!rc.virtual_hosts.iter().any(|v| v.name.starts_with("db.")));
    // Envoy rejects a domain repeated across virtual hosts.
    let all: Vec<&String> = rc.virtual_hosts.iter().flat_map(|v| &v.domains).collect();
    let unique: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len());

    // A sidecar in namespace `data` resolves the bare names there.
    let set = sidecar_set("users.data");
    let rc: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "outbound");
    assert!(
        vhost(&rc, "users.data:7000")
            .domains
            .contains(&"users".into())
    );
    assert!(
        !vhost(&rc, "catalog.default:8080")
            .domains
            .contains(&"catalog".into())
    );
}

#[test]
fn routes_follow_precedence_with_splits_and_timeouts() {
    let set = sidecar_set("frontend");
    let rc: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "outbound");
    let routes = &vhost(&rc, "catalog.default:8080").routes;
    let order: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    // As the weft proxy orders them: exact /health, prefix /api (GET), the
    // two "/" prefixes (the one with a header match first), then regex.
    assert_eq!(
        order,
        [
            "catalog-routes/2",
            "catalog-routes/3",
            "catalog-routes/1",
            "catalog-routes/0",
            "catalog-routes/3"
        ]
    );
    let m = |i: usize| routes[i].r#match.as_ref().unwrap();
    assert_eq!(
        m(0).path_specifier,
        Some(route_match::PathSpecifier::Path("/health".into()))
    );
    assert_eq!(
        m(1).path_specifier,
        Some(route_match::PathSpecifier::PathSeparatedPrefix(
            "/api".into()
        ))
    );
    assert_eq!(m(1).headers[0].name, ":method");
    let Some(route_match::PathSpecifier::SafeRegex(re)) = &m(4).path_specifier else {
        panic!()
    };
    assert_eq!(re.regex, "/items/[0-9]+");
    assert_eq!(m(4).headers[0].name, ":method");
    assert_eq!(m(2).headers[0].name, "x-canary");

    // The split: weight-0 backend left out, weights kept.
    let split = action(&routes[3]);
    let Some(route_action::ClusterSpecifier::WeightedClusters(wc)) = &split.cluster_specifier
    else {
        panic!("expected a split: {split:?}")
    };
    let parts: Vec<(&str, u32)> = wc
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        parts,
        [
            ("catalog.default:8080", 90),
            ("catalog-v2.default:8080", 10)
        ]
    );
    assert_eq!(split.timeout.unwrap().seconds, 2);
    // A single backend is a plain cluster, and no timeout is an explicit 0s.
    let single = action(&routes[2]);
    assert_eq!(
        single.cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "catalog-v2.default:8080".into()
        ))
    );
    let t = single.timeout.unwrap();
    assert_eq!((t.seconds, t.nanos), (0, 0));

    // No route attached: one default route to the Service itself.
    let routes = &vhost(&rc, "catalog.default:8081").routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(
        action(&routes[0]).cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "catalog.default:8081".into()
        ))
    );
    assert_eq!(action(&routes[0]).timeout.unwrap().seconds, 0);

    // The VIP listener of the port routes the same way.
    let vip: RouteConfiguration = decode(&set, TypeUrl::RouteConfiguration, "vip|127.0.10.1:8080");
    assert_eq!(vip.virtual_hosts[0].domains, ["*"]);
    assert_eq!(
        vip.virtual_hosts[0].routes,
        vhost(&rc, "catalog.default:8080").routes
    );
}

#[test]
fn clusters_use_eds_over_ads_and_http2_where_needed() {
    let set = sidecar_set("frontend");
    for name in names(&set, TypeUrl::Cluster) {
        if name.starts_with("inbound|") {
            continue;
        }
        let c: Cluster = decode(&set, TypeUrl::Cluster, name);
        assert_eq!(c.lb_policy, cluster::LbPolicy::RoundRobin as i32);
        assert_eq!(
            c.cluster_discovery_type,
            Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32
            ))
        );
        let eds = c.eds_cluster_config.unwrap().eds_config.unwrap();
        assert!(matches!(
            eds.config_source_specifier,
            Some(config_source::ConfigSourceSpecifier::Ads(_))
        ));
        assert_eq!(eds.resource_api_version, 2 /* V3 */);
        let h2 = c
            .typed_extension_protocol_options
            .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions")
            .map(unpack::<HttpProtocolOptions>);
        let wants_h2 = [
            "catalog.default:8081",
            "frontend.default:3000",
            "users.data:7000",
        ]
        .contains(&name);
        assert_eq!(h2.is_some(), wants_h2, "{name}");
        if let Some(h2) = h2 {
            let Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(e)) =
                h2.upstream_protocol_options
            else {
                panic!()
            };
            assert!(matches!(
                e.protocol_config,
                Some(http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(_))
            ));
        }
    }
}

#[test]
fn endpoints_have_weights_on_every_locality() {
    let set = sidecar_set("frontend");
    let cla: ClusterLoadAssignment =
        decode(&set, TypeUrl::ClusterLoadAssignment, "catalog.default:8080");
    let groups: Vec<(String, String, u32, Vec<u32>)> = cla
        .endpoints
        .iter()
        .map(|g| {
            let l = g.locality.clone().unwrap_or_default();
            let weights = g
                .lb_endpoints
                .iter()
                .map(|e| e.load_balancing_weight.unwrap().value)
                .collect();
            (
                l.region,
                l.zone,
                g.load_balancing_weight.unwrap().value,
                weights,
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("".into(), "".into(), 1, vec![1]),
            ("eu".into(), "eu-1a".into(), 5, vec![3, 2]),
            ("us".into(), "us-1b".into(), 1, vec![1]),
        ]
    );
    // Every assignment: locality weights everywhere, no zero weight.
    for name in names(&set, TypeUrl::ClusterLoadAssignment) {
        let cla: ClusterLoadAssignment = decode(&set, TypeUrl::ClusterLoadAssignment, name);
        for g in &cla.endpoints {
            assert!(
                g.load_balancing_weight.is_some_and(|w| w.value > 0),
                "{name}"
            );
            for e in &g.lb_endpoints {
                assert!(
                    e.load_balancing_weight.is_some_and(|w| w.value > 0),
                    "{name}"
                );
            }
        }
    }
    let empty: ClusterLoadAssignment = decode(
        &set,
        TypeUrl::ClusterLoadAssignment,
        "frontend.default:3000",
    );
    assert!(empty.endpoints.is_empty());
    assert_eq!(empty.cluster_name, "frontend.default:3000");
}

#[test]
fn inbound_goes_to_the_app_on_localhost() {
    let set = sidecar_set("catalog");
    let c: Cluster = decode(&set, TypeUrl::Cluster, "inbound|catalog.default");
    assert_eq!(
        c.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32
        ))
    );
    let ep = &c.load_assignment.unwrap().endpoints[0].lb_endpoints[0];
    let text = format!("{ep:?}");
    assert!(
        text.contains("127.0.0.1") && text.contains("PortValue(8080)"),
        "{text}"
    );
    let l: Listener = decode(&set, TypeUrl::Listener, "inbound");
    let Some(http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm(&l).route_specifier
    else {
        panic!("inbound routes inline")
    };
    assert_eq!(
        action(&rc.virtual_hosts[0].routes[0]).cluster_specifier,
        Some(route_action::ClusterSpecifier::Cluster(
            "inbound|catalog.default".into()
        ))
    );

    // A tcp-only Service: opaque TCP to the app.
    let set = sidecar_set("db.data");
    let l: Listener = decode(&set, TypeUrl::Listener, "inbound");
    assert_eq!(
        l.filter_chains[0].filters[0].name,
        "envoy.filters.network.tcp_proxy"
    );
    // A client-only workload: no inbound.
    let set = sidecar_set("load-generator");
    assert!(set.get(TypeUrl::Listener, "inbound").is_none());
    assert!(set.get(TypeUrl::Listener, "outbound").is_some());
}
