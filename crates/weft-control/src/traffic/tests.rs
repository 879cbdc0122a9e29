use super::*;

const TEXT: &str = r#"# HELP weft_requests Requests.
# TYPE weft_requests counter
weft_requests_total{direction="outbound",service="catalog.default",route="r/0",code="200",error=""} 30
weft_requests_total{direction="outbound",service="catalog.default",route="r/0",code="500",error=""} 10
weft_requests_total{direction="inbound",service="frontend.default",route="",code="200",error=""} 99
weft_request_duration_seconds_bucket{direction="outbound",service="catalog.default",le="0.001"} 10
weft_request_duration_seconds_bucket{direction="outbound",service="catalog.default",le="0.01"} 36
weft_request_duration_seconds_bucket{direction="outbound",service="catalog.default",le="+Inf"} 40
"#;

#[test]
fn parses_outbound_counters_and_buckets() {
    let s = parse(TEXT);
    let c = &s.by_callee["catalog.default"];
    assert_eq!((c.requests, c.failures), (40.0, 10.0));
    assert_eq!(
        c.buckets,
        [(0.001, 10.0), (0.01, 36.0), (f64::INFINITY, 40.0)]
    );
    assert!(
        !s.by_callee.contains_key("frontend.default"),
        "inbound is not an edge"
    );
    // p50: rank 20 in (0.001, 0.01]: 10 of 26 into it.
    let p50 = c.quantile(0.5).unwrap();
    assert!((p50 - (0.001 + 0.009 * 10.0 / 26.0)).abs() < 1e-9, "{p50}");
    assert_eq!(label_value(r#"a="x\"y",b="z""#, "b").as_deref(), Some("z"));
    assert_eq!(
        label_value(r#"a="x\"y",b="z""#, "a").as_deref(),
        Some("x\"y")
    );
}

#[test]
fn grpc_requests_fail_by_their_status_http_ones_by_their_code() {
    let text = r#"weft_requests_total{direction="outbound",source="frontend.default",service="catalog.default",route="r/0",code="200",grpc_status="0",error=""} 7
weft_requests_total{direction="outbound",source="frontend.default",service="catalog.default",route="r/0",code="200",grpc_status="14",error=""} 3
weft_requests_total{direction="outbound",source="frontend.default",service="catalog.default",route="r/0",code="503",grpc_status="14",error="no-endpoints"} 2
weft_requests_total{direction="outbound",source="frontend.default",service="catalog.default",route="r/0",code="500",grpc_status="",error=""} 4
weft_requests_total{direction="outbound",source="frontend.default",service="catalog.default",route="r/0",code="404",grpc_status="",error=""} 5
weft_requests_total{direction="outbound",service="catalog.default",route="r/0",code="502",error=""} 1
"#;
    let c = &parse(text).by_callee["catalog.default"];
    // Failed: gRPC 14 (in a 200 and in a 503), HTTP 500, and the 502 of
    // a proxy without the label; not gRPC OK nor HTTP 404.
    assert_eq!((c.requests, c.failures), (22.0, 3.0 + 2.0 + 4.0 + 1.0));
    assert!(failed(Some("200"), Some("2")));
    assert!(!failed(Some("500"), Some("0")), "gRPC OK in a 500 is OK");
    assert!(failed(Some("504"), None));
    assert!(!failed(None, None));
}

#[test]
fn windows_are_differences_and_restarts_count_from_zero() {
    let view = TrafficView::default();
    let t0 = Instant::now();
    view.record("p1", "frontend.default", t0, parse(TEXT));
    let later = TEXT.replace("} 30", "} 50").replace("} 40\n", "} 60\n");
    view.record(
        "p1",
        "frontend.default",
        t0 + Duration::from_secs(5),
        parse(&later),
    );
    let e = view.edges(Duration::from_secs(10), t0 + Duration::from_secs(5));
    let c = &e[&(
        "frontend.default".to_string(),
        "catalog.default".to_string(),
    )];
    assert_eq!((c.requests, c.failures), (20.0, 0.0));
    // A proxy whose counters went down restarted.
    view.record(
        "p1",
        "frontend.default",
        t0 + Duration::from_secs(6),
        parse(TEXT),
    );
    let e = view.edges(Duration::from_secs(1), t0 + Duration::from_secs(6));
    let c = &e[&(
        "frontend.default".to_string(),
        "catalog.default".to_string(),
    )];
    assert_eq!(c.requests, 40.0);
    let json = view.table(Duration::from_secs(10)).to_json(
        Duration::from_secs(10),
        Some("catalog"),
        &TrafficSource::Proxies {
            prometheus: None,
            fallback: None,
        },
    );
    assert_eq!(json["source"]["kind"], "proxies");
    assert_eq!(json["items"][0]["resource"]["name"], "catalog");
    assert_eq!(json["items"][1]["edge"]["resource"]["name"], "frontend");

    // A proxy that started a moment ago counts from zero even if its
    // first scrape came after traffic; one running for long from its
    // first scrape.
    for (age, want) in [(5.0, 40.0), (3600.0, 0.0)] {
        let view = TrafficView::default();
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            - age;
        let text = format!("{TEXT}weft_start_time_seconds {started}\n");
        let first = parse(&text);
        assert_eq!(first.started, Some(started));
        view.record("p", "frontend.default", t0, first);
        view.record(
            "p",
            "frontend.default",
            t0 + Duration::from_secs(1),
            parse(&text),
        );
        let e = view.edges(Duration::from_secs(60), t0 + Duration::from_secs(1));
        let c = &e[&(
            "frontend.default".to_string(),
            "catalog.default".to_string(),
        )];
        assert_eq!(c.requests, want, "started {age} s ago");
    }
}
