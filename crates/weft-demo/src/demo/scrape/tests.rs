use super::*;

const SIDECAR: &str = r#"# HELP weft_requests HTTP requests handled.
# TYPE weft_requests counter
weft_requests_total{direction="inbound",service="catalog-v2.default",route="inbound",code="200",error=""} 98
weft_requests_total{direction="inbound",service="catalog-v2.default",route="inbound",code="503",error=""} 2
weft_requests_total{direction="outbound",service="inventory.default",route="default",code="502",error="connect"} 7
# TYPE weft_request_duration_seconds histogram
weft_request_duration_seconds_sum{direction="inbound",service="catalog-v2.default"} 0.5
weft_request_duration_seconds_count{direction="inbound",service="catalog-v2.default"} 100
weft_request_duration_seconds_bucket{le="0.001",direction="inbound",service="catalog-v2.default"} 10
weft_request_duration_seconds_bucket{le="0.005",direction="inbound",service="catalog-v2.default"} 90
weft_request_duration_seconds_bucket{le="+Inf",direction="inbound",service="catalog-v2.default"} 100
weft_request_duration_seconds_bucket{le="0.001",direction="outbound",service="inventory.default"} 7
weft_endpoint_requests_total{service="inventory.default",endpoint="127.0.3.1:15006"} 49
weft_endpoint_requests_total{service="inventory.default",endpoint="127.0.3.2:15006"} 49
weft_config_generation 2
# EOF
"#;

/// A caller's sidecar: outbound answers, endpoint weights, retries and
/// backups.
const CALLER: &str = r#"weft_requests_total{direction="outbound",service="pricing.default",route="default",code="200",error=""} 95
weft_requests_total{direction="outbound",service="pricing.default",route="default",code="503",error=""} 5
weft_request_duration_seconds_bucket{le="0.005",direction="outbound",service="pricing.default"} 90
weft_request_duration_seconds_bucket{le="+Inf",direction="outbound",service="pricing.default"} 100
weft_endpoint_requests_total{service="catalog-v1.default",endpoint="127.0.2.1:15006"} 90
weft_endpoint_requests_total{service="catalog-v1.default",endpoint="127.0.2.3:15006"} 10
weft_endpoint_weight_ratio{service="catalog-v1.default",endpoint="127.0.2.1:15006"} 1.0
weft_endpoint_weight_ratio{service="catalog-v1.default",endpoint="127.0.2.3:15006"} 0.1
weft_endpoint_ejected{service="catalog-v1.default",endpoint="127.0.2.3:15006"} 1
weft_endpoint_health_events_total{service="catalog-v1.default",endpoint="127.0.2.3:15006",event="ejected"} 2
weft_retries_total{service="catalog.default",route="catalog-split.0"} 7
weft_retries_given_up_total{service="catalog.default",route="catalog-split.0",reason="attempts"} 1
weft_hedges_total{service="pricing.default",route="default",reason="sent"} 6
weft_hedges_total{service="pricing.default",route="default",reason="won"} 4
weft_hedges_total{service="pricing.default",route="default",reason="cancelled"} 4
weft_hedges_suppressed_total{service="pricing.default",route="default",reason="budget"} 3
weft_hedge_delay_seconds{service="pricing.default",route="default"} 0.005
weft_config_generation 2
"#;

#[test]
fn parses_names_labels_values_and_escapes() {
    let line = r#"m_total{a="x",b="say \"hi\"\\\n",c=""} 1.5e3 1700000000 # {trace="1"} 1"#;
    let s = parse_line(line).unwrap();
    assert_eq!(s.name, "m_total");
    assert_eq!(s.label("a"), Some("x"));
    assert_eq!(s.label("b"), Some("say \"hi\"\\\n"));
    assert_eq!(s.label("c"), Some(""));
    assert_eq!(s.value, 1500.0);
    let bare = parse_line("weft_config_generation 3").unwrap();
    assert_eq!(
        (bare.name, bare.labels.len(), bare.value),
        ("weft_config_generation", 0, 3.0)
    );
    assert_eq!(
        parse_line(r#"x{le="+Inf"} +Inf"#).unwrap().value,
        f64::INFINITY
    );
    for junk in [
        "# TYPE x counter",
        "",
        "x{a=\"unterminated} 1",
        "x{a=\"1\"}",
        "x notanumber",
    ] {
        assert_eq!(parse_line(junk), None, "{junk:?}");
    }
}

#[test]
fn sums_inbound_service_numbers_and_endpoint_counts_across_sidecars() {
    let mut mesh = MeshCounters::default();
    mesh.add_exposition(SIDECAR, Some("127.0.2.2:15006"));
    mesh.add_exposition(
        &SIDECAR.replace("weft_config_generation 2", "weft_config_generation 3"),
        None,
    );
    assert_eq!(
        mesh.services.len(),
        1,
        "outbound series are not services: {mesh:?}"
    );
    let v2 = &mesh.services["catalog-v2.default"];
    assert_eq!((v2.requests, v2.ok), (200, 196));
    assert_eq!(
        v2.latency,
        Buckets(vec![(0.001, 20), (0.005, 180), (f64::INFINITY, 200)])
    );
    let key = ("inventory.default".to_owned(), "127.0.3.2:15006".to_owned());
    assert_eq!(mesh.endpoints[&key], 98);
    assert_eq!(mesh.generations, Some((2, 3)));
    let pod = &mesh.pods["127.0.2.2:15006"];
    assert_eq!(
        (pod.requests, pod.ok, pod.latency.count()),
        (100, 98, 100),
        "the pod's own sidecar only"
    );
    assert_eq!(
        mesh.callers["inventory.default"].server_errors, 14,
        "outbound answers are the callers' view, summed"
    );
}

#[test]
fn reads_what_callers_got_and_what_their_policies_did() {
    let mut mesh = MeshCounters::default();
    mesh.add_exposition(CALLER, None);
    let pricing = &mesh.callers["pricing.default"];
    assert_eq!((pricing.requests, pricing.server_errors), (100, 5));
    assert_eq!(pricing.latency.count(), 100);
    assert_eq!(
        (
            pricing.hedges_sent,
            pricing.hedges_won,
            pricing.hedges_suppressed
        ),
        (6, 4, 3)
    );
    assert_eq!(pricing.hedge_delay, Some(0.005));
    let catalog = &mesh.callers["catalog.default"];
    assert_eq!((catalog.retries, catalog.given_up), (7, 1));
    let key = |ep: &str| ("catalog-v1.default".to_owned(), ep.to_owned());
    let bad = &mesh.health[&key("127.0.2.3:15006")];
    assert_eq!((bad.weight_ratio(), bad.ejected_by), (Some(0.1), 1));
    assert_eq!(
        mesh.health_events[&(
            "catalog-v1.default".to_owned(),
            "127.0.2.3:15006".to_owned(),
            "ejected".to_owned()
        )],
        2
    );
}

#[test]
fn endpoint_weights_are_those_of_the_callers_that_send_to_them() {
    let mut mesh = MeshCounters::default();
    mesh.add_exposition(CALLER, None);
    // Another sidecar holds the endpoint at full weight but never calls
    // catalog-v1: it does not count while someone else does.
    let idle = r#"weft_endpoint_weight_ratio{service="catalog-v1.default",endpoint="127.0.2.3:15006"} 1
weft_endpoint_requests_total{service="catalog-v1.default",endpoint="127.0.2.3:15006"} 0
"#;
    mesh.add_exposition(idle, None);
    let key = (
        "catalog-v1.default".to_owned(),
        "127.0.2.3:15006".to_owned(),
    );
    assert_eq!(mesh.health[&key].weight_ratio(), Some(0.1));
    // A second caller that does send, at half the first one's traffic.
    let other = r#"weft_endpoint_weight_ratio{service="catalog-v1.default",endpoint="127.0.2.3:15006"} 0.4
weft_endpoint_requests_total{service="catalog-v1.default",endpoint="127.0.2.1:15006"} 50
"#;
    mesh.add_exposition(other, None);
    let ratio = mesh.health[&key].weight_ratio().unwrap();
    assert!(
        (ratio - 0.2).abs() < 1e-9,
        "(0.1 x 100 + 0.4 x 50) / 150: {ratio}"
    );
    // Nobody sends: the plain mean.
    let mut quiet = MeshCounters::default();
    quiet.add_exposition(idle, None);
    quiet.add_exposition(&idle.replace("} 1\n", "} 0.5\n"), None);
    assert_eq!(quiet.health[&key].weight_ratio(), Some(0.75));
    // Gauges are states: a delta keeps the later value.
    let delta = mesh.since(&MeshCounters::default());
    assert_eq!(delta.health, mesh.health);
    assert_eq!(delta.callers["pricing.default"].hedge_delay, Some(0.005));
    assert_eq!(mesh.since(&mesh).callers["catalog.default"].retries, 0);
}

#[test]
fn deltas_subtract_counters_and_buckets() {
    let mut before = MeshCounters::default();
    before.add_exposition(SIDECAR, None);
    let mut after = MeshCounters::default();
    after.add_exposition(SIDECAR, None);
    after.add_exposition(SIDECAR, None);
    let delta = after.since(&before);
    assert_eq!(delta.services["catalog-v2.default"].requests, 100);
    assert_eq!(delta.services["catalog-v2.default"].latency.count(), 100);
    assert!(delta.endpoints.values().all(|c| *c == 49));
    assert_eq!(
        after.since(&after).services["catalog-v2.default"]
            .latency
            .quantile(0.5),
        None
    );
}

#[test]
fn quantiles_interpolate_inside_the_bucket_like_promql() {
    // 10 in (0, 1ms], 80 in (1ms, 5ms], 10 above 5ms.
    let b = Buckets(vec![(0.001, 10), (0.005, 90), (f64::INFINITY, 100)]);
    let close = |got: Option<f64>, want: f64| {
        let got = got.unwrap();
        assert!((got - want).abs() < 1e-12, "got {got}, want {want}");
    };
    close(b.quantile(0.05), 0.0005); // rank 5 of 10 in the first bucket, from 0
    close(b.quantile(0.5), 0.003); // rank 50: 40 of 80 into (1ms, 5ms]
    close(b.quantile(0.9), 0.005);
    close(b.quantile(0.99), 0.005); // in +Inf: the highest finite bound
    assert_eq!(Buckets::default().quantile(0.5), None);
    assert_eq!(b.quantile(1.5), None);
    // Empty leading buckets do not pull the estimate down to 0.
    let late = Buckets(vec![(0.001, 0), (0.002, 0), (0.004, 4), (f64::INFINITY, 4)]);
    close(late.quantile(0.0), 0.002);
    close(late.quantile(0.5), 0.003);
}

#[test]
fn buckets_merge_by_bound() {
    let mut b = Buckets::default();
    b.add(f64::INFINITY, 3);
    b.add(0.01, 1);
    b.add(0.005, 1);
    b.add(0.01, 1);
    assert_eq!(b, Buckets(vec![(0.005, 1), (0.01, 2), (f64::INFINITY, 3)]));
}
