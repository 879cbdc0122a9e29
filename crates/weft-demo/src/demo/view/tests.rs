use super::*;
use crate::demo::golden;
use crate::demo::mesh::{CONFIG_FILE, EXAMPLE_CONFIG, PODS};
use crate::demo::scrape::{CallerCounters, ServiceCounters};

fn example_groups() -> Vec<SplitGroup> {
    split_groups(&weft_model::load_str(EXAMPLE_CONFIG, CONFIG_FILE).unwrap())
}

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

/// The demo's pods at `127.0.x.y`, with the faults they start with.
fn pods() -> Vec<PodInfo> {
    PODS.iter()
        .map(|p| PodInfo {
            endpoint: p.endpoint(0),
            name: p.name,
            faults: Some(AppFaults::of(p)),
        })
        .collect()
}

#[test]
fn groups_put_split_backends_under_the_addressed_service() {
    let groups = example_groups();
    let names: Vec<_> = groups.iter().map(|g| g.service.as_str()).collect();
    assert_eq!(
        names,
        [
            "catalog",
            "checkout",
            "frontend",
            "inventory",
            "ledger",
            "payments",
            "pricing"
        ],
        "catalog-v1/v2 only under catalog"
    );
    assert_eq!(
        groups[0].backends,
        [
            ("catalog-v1.default".to_owned(), Some(90)),
            ("catalog-v2.default".to_owned(), Some(10))
        ]
    );
    assert_eq!(groups[3].backends, [("inventory.default".to_owned(), None)]);
}

#[test]
fn endpoint_rows_show_shares_names_weights_and_what_each_app_does() {
    let mut delta = MeshCounters::default();
    // The frontend's sidecar: it weighs catalog-v1-2 down and ejects
    // nothing; a catalog sidecar holds inventory-3 at full weight.
    delta.add_exposition(
        r#"weft_endpoint_requests_total{service="catalog-v1.default",endpoint="127.0.2.1:15006"} 75
weft_endpoint_requests_total{service="catalog-v1.default",endpoint="127.0.2.3:15006"} 15
weft_endpoint_requests_total{service="catalog-v2.default",endpoint="127.0.2.2:15006"} 10
weft_endpoint_weight_ratio{service="catalog-v1.default",endpoint="127.0.2.3:15006"} 0.12
weft_endpoint_weight_ratio{service="catalog-v1.default",endpoint="127.0.2.1:15006"} 1
"#,
        Some("127.0.1.1:15006"),
    );
    delta.add_exposition(
        r#"weft_endpoint_requests_total{service="inventory.default",endpoint="127.0.3.1:15006"} 49
weft_endpoint_requests_total{service="inventory.default",endpoint="127.0.3.2:15006"} 50
weft_endpoint_requests_total{service="inventory.default",endpoint="127.0.3.3:15006"} 1
weft_endpoint_weight_ratio{service="inventory.default",endpoint="127.0.3.3:15006"} 1
weft_endpoint_ejected{service="inventory.default",endpoint="127.0.3.2:15006"} 1
"#,
        Some("127.0.2.1:15006"),
    );
    // inventory-3's own sidecar: slow answers.
    delta.add_exposition(
        r#"weft_request_duration_seconds_bucket{le="0.015",direction="inbound",service="inventory.default"} 0
weft_request_duration_seconds_bucket{le="0.025",direction="inbound",service="inventory.default"} 1
weft_request_duration_seconds_bucket{le="+Inf",direction="inbound",service="inventory.default"} 1
"#,
        Some("127.0.3.3:15006"),
    );
    let rows = endpoint_rows(&delta, &example_groups(), &pods());
    let shown: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.service.as_str(),
                r.backend.as_str(),
                r.name.as_deref().unwrap(),
                (r.share * 100.0).round() as u32,
                r.weight,
            )
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("catalog", "catalog-v1", "catalog-v1-1", 75, Some(90)),
            ("catalog", "catalog-v1", "catalog-v1-2", 15, Some(90)),
            ("catalog", "catalog-v2", "catalog-v2", 10, Some(10)),
            ("inventory", "inventory", "inventory-1", 49, None),
            ("inventory", "inventory", "inventory-2", 50, None),
            ("inventory", "inventory", "inventory-3", 1, None),
        ],
        "frontend and pricing get no outbound traffic, so they have no rows"
    );
    let by_name = |n: &str| rows.iter().find(|r| r.name.as_deref() == Some(n)).unwrap();
    let ratio = by_name("catalog-v1-2").weight_ratio.unwrap();
    assert!((ratio - 0.12).abs() < 1e-9, "{ratio}");
    assert!(!by_name("catalog-v1-2").ejected);
    assert!(by_name("inventory-2").ejected);
    assert_eq!(by_name("inventory-1").weight_ratio, None, "no gauge yet");
    assert_eq!(
        by_name("inventory-3").p50,
        Some(Duration::from_micros(20_000))
    );
    assert_eq!(
        by_name("catalog-v1-2")
            .app
            .as_ref()
            .map(AppFaults::describe),
        Some("2ms, biz 30%".to_owned())
    );
}

#[test]
fn service_rows_follow_the_call_order_and_compute_rates_and_quantiles() {
    let mut delta = MeshCounters::default();
    for name in [
        "inventory.default",
        "catalog-v1.default",
        "frontend.default",
    ] {
        delta.services.insert(
            name.into(),
            ServiceCounters {
                requests: 100,
                ok: 98,
                latency: Buckets(vec![(0.001, 10), (0.005, 90), (f64::INFINITY, 100)]),
            },
        );
    }
    let rows = service_rows(
        &delta,
        Duration::from_secs(2),
        &["frontend", "catalog-v1", "inventory"],
    );
    let names: Vec<_> = rows.iter().map(|r| r.service.as_str()).collect();
    assert_eq!(names, ["frontend", "catalog-v1", "inventory"]);
    assert_eq!(rows[0].rps, 50.0);
    assert_eq!(rows[0].success_rate(), Some(0.98));
    assert_eq!(rows[0].p50, ms(3));
    assert_eq!(rows[0].p99, ms(5));
}

#[test]
fn call_rows_count_given_up_business_errors_as_failures() {
    let mut delta = MeshCounters::default();
    let caller = |requests, server_errors, given_up| CallerCounters {
        requests,
        server_errors,
        latency: Buckets(vec![(0.005, 99), (0.1, 100), (f64::INFINITY, 100)]),
        retries: 12,
        given_up,
        ..CallerCounters::default()
    };
    // Two business errors given up (200s), one 5xx given up too.
    delta
        .callers
        .insert("catalog.default".into(), caller(200, 1, 3));
    // No retries: its 5xx are its failures.
    delta
        .callers
        .insert("inventory.default".into(), caller(100, 4, 0));
    delta.callers.insert(
        "pricing.default".into(),
        CallerCounters {
            hedges_sent: 6,
            hedges_won: 5,
            hedge_delay: Some(0.005),
            ..caller(100, 0, 0)
        },
    );
    // Nobody called it in this window.
    delta
        .callers
        .insert("frontend.default".into(), CallerCounters::default());
    let rows = call_rows(&delta, Duration::from_secs(2), &example_groups(), &pods());
    let names: Vec<_> = rows.iter().map(|r| r.service.as_str()).collect();
    assert_eq!(names, ["catalog", "inventory", "pricing"]);
    assert_eq!(rows[0].failed, 3);
    assert_eq!(rows[0].success_rate(), Some(0.985));
    assert_eq!(rows[0].rps, 100.0);
    assert_eq!(rows[1].failed, 4);
    assert_eq!((rows[2].hedges_sent, rows[2].hedges_won), (6, 5));
    assert_eq!(rows[2].hedge_delay, ms(5));
    assert_eq!(
        rows[2].p50,
        Some(Duration::from_secs_f64(0.005 * 50.0 / 99.0))
    );
}

#[test]
fn health_events_name_the_endpoint_and_what_happened() {
    let mut delta = MeshCounters::default();
    delta.add_exposition(
        r#"weft_endpoint_health_events_total{service="catalog-v1.default",endpoint="127.0.2.3:15006",event="ejected"} 1
weft_endpoint_health_events_total{service="catalog-v1.default",endpoint="127.0.2.3:15006",event="readmitted"} 0
weft_endpoint_health_events_total{service="inventory.default",endpoint="127.0.9.9:15006",event="ejected"} 2
weft_endpoint_health_events_total{service="inventory.default",endpoint="",event="panic_entered"} 1
"#,
        None,
    );
    assert_eq!(
        health_events(&delta, &pods()),
        [
            "catalog-v1 endpoint catalog-v1-2 ejected by outlier detection",
            "inventory has too few healthy endpoints: panic mode, all get traffic",
            "inventory endpoint 127.0.9.9:15006 ejected by outlier detection (2 times)",
        ]
    );
}

fn sample_view() -> View {
    let service = |name: &str, rps: f64, requests, ok, p50, p99| ServiceSummary {
        service: name.into(),
        requests,
        ok,
        rps,
        p50: ms(p50),
        p99: ms(p99),
    };
    let pods = pods();
    let share = |service: &str, backend: &str, name: &str, requests, share, weight, ratio| {
        let pod = pods.iter().find(|p| p.name == name).unwrap();
        EndpointShare {
            service: service.into(),
            backend: backend.into(),
            endpoint: pod.endpoint.clone(),
            name: Some(name.into()),
            requests,
            share,
            weight,
            weight_ratio: Some(ratio),
            ejected: false,
            p50: ms(if name == "inventory-3" { 41 } else { 3 }),
            app: pod.faults.clone(),
        }
    };
    let call = |name: &str, requests, failed, p99, retries, hedges: (u64, u64)| CallSummary {
        service: name.into(),
        requests,
        failed,
        rps: requests as f64 / 5.0,
        p50: ms(3),
        p99: ms(p99),
        retries,
        hedges_sent: hedges.0,
        hedges_won: hedges.1,
        hedges_suppressed: 0,
        hedge_delay: (hedges.0 > 0).then_some(Duration::from_millis(5)),
        dropped: 0,
        rate_limited: 0,
        denied: 0,
        cut: 0,
        cut_at: Vec::new(),
    };
    View {
        last: false,
        elapsed: Duration::from_secs(75),
        window: Duration::from_secs(5),
        rate: 50,
        config_file: "/tmp/weft-demo-1/demo.yaml".into(),
        generations: Some((2, 2)),
        config_error: None,
        ingress: IngressRow {
            sent: 250,
            done: 250,
            ok: 250,
            late: 0,
            rps: 50.0,
            p50: ms(9),
            p99: Some(Duration::from_micros(15_250)),
        },
        chain: IngressRow {
            sent: 50,
            done: 50,
            ok: 50,
            late: 0,
            rps: 10.0,
            p50: ms(12),
            p99: ms(20),
        },
        services: vec![
            service("frontend", 50.0, 250, 250, 8, 14),
            service("catalog-v1", 45.0, 225, 225, 5, 9),
            service("catalog-v2", 5.0, 25, 24, 7, 250),
        ],
        calls: vec![
            call("catalog", 250, 0, 9, 12, (0, 0)),
            call("pricing", 250, 0, 8, 0, (6, 5)),
        ],
        endpoints: vec![
            share(
                "catalog",
                "catalog-v1",
                "catalog-v1-1",
                200,
                0.8,
                Some(90),
                1.0,
            ),
            share(
                "catalog",
                "catalog-v1",
                "catalog-v1-2",
                25,
                0.1,
                Some(90),
                0.12,
            ),
            share(
                "catalog",
                "catalog-v2",
                "catalog-v2",
                25,
                0.1,
                Some(10),
                1.0,
            ),
            share("inventory", "inventory", "inventory-3", 5, 0.02, None, 1.0),
            share("pricing", "pricing", "pricing-1", 125, 0.5, None, 1.0),
            share("pricing", "pricing", "pricing-2", 125, 0.5, None, 1.0),
        ],
        flow: Vec::new(),
        events: vec![DemoEvent {
            at: Duration::from_secs(70),
            what: "catalog-v1 endpoint catalog-v1-2 ejected by outlier detection".into(),
        }],
        next: None,
        traffic: Some(sample_traffic()),
    }
}

/// The control plane's view of the same traffic, as `weft top` shows it.
fn sample_traffic() -> golden::TrafficFrame {
    let row = |service: &str, caller: Option<&str>, requests: f64, ok: f64| golden::GoldenRow {
        service: service.into(),
        caller: caller.map(Into::into),
        requests: Some(requests),
        rps: Some(requests / 5.0),
        success_rate: Some(ok / requests),
        p50_ms: Some(3.0),
        p90_ms: Some(5.5),
        p99_ms: Some(9.0),
    };
    golden::TrafficFrame {
        control: "127.0.0.3:15011".parse().unwrap(),
        window: Duration::from_secs(5),
        at: std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(75),
        snapshot: Ok(golden::TrafficSnapshot {
            window: "5s".into(),
            services: vec![row("catalog.default", None, 250.0, 250.0)],
            edges: vec![row(
                "catalog.default",
                Some("frontend.default"),
                250.0,
                250.0,
            )],
            source: None,
            idle: 0,
        }),
    }
}

#[test]
fn renders_a_live_block() {
    let text = render(&sample_view());
    let expected = "\
weft demo: 1m15s elapsed, last 5.0s; 50 req/s offered to frontend
config: /tmp/weft-demo-1/demo.yaml (generation 2)
  edit it (the 90/10 weights; delete the pricing-hedging TrafficPolicy) and watch traffic move
control plane: watch its traffic view in another terminal: weft top --control 127.0.0.3:15011

ingress -> frontend  50.0 req/s  ok 100.00%  p50 9.0ms  p99 15.2ms  late 0
ingress -> checkout  10.0 req/s  ok 100.00%  p50 12.0ms  p99 20.0ms  late 0  (deadline 150ms)

SERVICE             RPS   SUCCESS      P50      P99
frontend           50.0   100.00%    8.0ms   14.0ms
catalog-v1         45.0   100.00%    5.0ms    9.0ms
catalog-v2          5.0    96.00%    7.0ms    250ms

CALLS TO            RPS   SUCCESS      P50      P99  RETRIES  HEDGES   WON
catalog            50.0   100.00%    3.0ms    9.0ms       12       -     -
pricing            50.0   100.00%    3.0ms    8.0ms        -       6     5
  pricing: 2% of answers take 80ms at the app; backups after 5.0ms cut callers' p99 to 8.0ms (>= 80ms without)

TRAFFIC TO  BACKEND     ENDPOINT         SHARE    RPS  SPLIT  WEIGHT     P50  APP
catalog     catalog-v1  catalog-v1-1     80.0%   40.0     90    100%   3.0ms  2ms
                        catalog-v1-2     10.0%    5.0     90     12%   3.0ms  2ms, biz 30%
            catalog-v2  catalog-v2       10.0%    5.0     10    100%   3.0ms  4ms, err 2%
inventory   inventory   inventory-3       2.0%    1.0           100%  41.0ms  40ms
pricing     pricing     pricing-1        50.0%   25.0           100%   3.0ms  2ms, 2% at 80ms
                        pricing-2        50.0%   25.0           100%   3.0ms  2ms, 2% at 80ms

TRAFFIC VIEW  control plane 127.0.0.3:15011  window 5s  at 00:01:15Z  1 services, 1 edges
SERVICE                              REQUESTS       RPS  SUCCESS   P50 ms   P90 ms   P99 ms
catalog.default                           250     50.00  100.00%     3.00     5.50     9.00
EDGE (CALLER -> CALLEE)              REQUESTS       RPS  SUCCESS   P50 ms   P90 ms   P99 ms
frontend.default -> catalog.default       250     50.00  100.00%     3.00     5.50     9.00

EVENTS
  1m10s  catalog-v1 endpoint catalog-v1-2 ejected by outlier detection

SERVICE: as its own sidecars answered (success: not a 5xx). CALLS TO: as the callers'
sidecars answered them, after retries and backups (HEDGES sent, WON first); a business
error given up counts as failed. FLOW CONTROL: calls the callers' sidecars refused
(DROPPED 503, LIMITED 429) or CUT (504 deadline-exceeded: too little of the deadline
left to send them), and the flow policies in force. WEIGHT: effective / configured
weight at the callers. P50: the endpoint's own sidecar. APP: its app's latency and
injected faults. TRAFFIC VIEW: the control plane's golden metrics, read from every
sidecar each second (as `weft top` shows them).
";
    assert_eq!(text, expected, "got:\n{text}");
}

#[test]
fn an_uncut_tail_is_named_as_such() {
    let mut view = sample_view();
    // The hedging policy deleted: no backups, the slow answers are the p99.
    view.calls[1].hedges_sent = 0;
    view.calls[1].hedges_won = 0;
    view.calls[1].hedge_delay = None;
    view.calls[1].p99 = ms(78);
    let text = render(&view);
    assert!(
        text.contains(
            "  pricing: 2% of answers take 80ms at the app, so callers' p99 is 78.0ms: nothing cuts that tail\n"
        ),
        "{text}"
    );
    // A tail of 1% or less does not decide the p99: no note.
    for e in view.endpoints.iter_mut().filter(|e| e.service == "pricing") {
        e.app.as_mut().unwrap().slow_share = 0.01;
    }
    assert!(!render(&view).contains("pricing: "), "{}", render(&view));
}

#[test]
fn the_final_block_has_no_edit_hint_and_shows_a_rejected_config() {
    let mut view = sample_view();
    view.last = true;
    view.generations = Some((2, 3));
    let errors: Vec<String> = (1..=8)
        .map(|i| format!("  demo.yaml: document {i}: spec: bad"))
        .collect();
    view.config_error = Some(format!("8 config errors:\n{}\n", errors.join("\n")));
    view.services.clear();
    view.ingress.done = 0;
    view.events = (0..15)
        .map(|i| DemoEvent {
            at: Duration::from_secs(i),
            what: format!("event {i}"),
        })
        .collect();
    let text = render(&view);
    assert!(
        text.starts_with("weft demo: final summary after 1m15s;"),
        "{text}"
    );
    assert!(
        text.contains("(generations 2..3, sidecars reloading)"),
        "{text}"
    );
    let rejected = "  newest change REJECTED, the last good config keeps serving:
    8 config errors:
    demo.yaml: document 1: spec: bad
";
    assert!(text.contains(rejected), "{text}");
    assert!(
        text.contains("document 5: spec: bad\n    (3 more lines)\n"),
        "{text}"
    );
    assert!(
        !text.contains("document 6") && !text.contains("edit "),
        "{text}"
    );
    assert!(text.contains("ok -  p50"), "no traffic shows as -: {text}");
    assert!(
        text.contains("EVENTS\n  (3 earlier)\n     3s  event 3\n"),
        "the last 12 events: {text}"
    );
}

#[test]
fn flow_policies_sit_under_the_service_their_callers_address() {
    let flow = "
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: catalog-flow}
spec:
  targetRefs: [{kind: HTTPRoute, name: catalog-split}]
  admission: {dropRatio: 0.2}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: pricing-flow}
spec:
  targetRefs: [{kind: Service, name: pricing}]
  rateLimit: {local: {requestsPerSecond: 30, burst: 5}}
";
    let config =
        weft_model::load_str(&format!("{EXAMPLE_CONFIG}\n---\n{flow}"), CONFIG_FILE).unwrap();
    let groups = split_groups(&config);
    let shown: Vec<_> = flow_policies(&config, &groups)
        .into_iter()
        .map(|f| format!("{} {}: {}", f.service, f.name, f.what))
        .collect();
    assert_eq!(
        shown,
        [
            "catalog catalog-flow: dropRatio 0.2",
            "ledger ledger-deadline: deadline margin 60ms",
            "pricing pricing-flow: rateLimit 30/s burst 5 per caller",
        ],
        "hedging, retries and the like are not flow control"
    );
}

#[test]
fn the_flow_table_shows_refusals_by_reason_the_policy_and_where_a_deadline_cut() {
    let mut delta = MeshCounters::default();
    // The frontend's sidecar: catalog's drop ratio and pricing's limit.
    delta.add_exposition(
        r#"weft_requests_total{direction="outbound",service="catalog.default",route="catalog-split.0",code="200",error=""} 80
weft_requests_total{direction="outbound",service="catalog.default",route="catalog-split.0",code="503",error="dropped"} 20
weft_admission_refused_total{service="catalog.default",route="catalog-split.0",reason="dropped"} 20
weft_requests_total{direction="outbound",service="pricing.default",route="default",code="200",error=""} 60
weft_requests_total{direction="outbound",service="pricing.default",route="default",code="429",error="rate-limited"} 40
weft_admission_refused_total{service="pricing.default",route="default",reason="rate_limited"} 40
weft_admission_refused_total{service="pricing.default",route="default",reason="dropped_dry_run"} 7
"#,
        Some("127.0.1.1:15006"),
    );
    // payments' sidecar: every call to ledger cut.
    delta.add_exposition(
        r#"weft_requests_total{direction="outbound",service="ledger.default",route="default",code="504",error="deadline-exceeded"} 50
"#,
        Some("127.0.6.1:15006"),
    );
    let rows = call_rows(&delta, Duration::from_secs(5), &example_groups(), &pods());
    let row = |name: &str| rows.iter().find(|r| r.service == name).unwrap().clone();
    assert_eq!((row("catalog").dropped, row("catalog").failed), (20, 20));
    let pricing = row("pricing");
    assert_eq!(
        (pricing.rate_limited, pricing.dropped),
        (40, 0),
        "dry run is not a drop"
    );
    assert_eq!(
        pricing.success_rate(),
        Some(0.6),
        "a 429 is a failure for the caller"
    );
    let ledger = row("ledger");
    assert_eq!(
        (ledger.cut, ledger.cut_at.clone()),
        (50, vec!["payments".to_owned()])
    );

    let mut view = sample_view();
    view.calls = rows;
    view.flow = vec![FlowPolicy {
        service: "catalog".into(),
        name: "catalog-flow".into(),
        what: "dropRatio 0.2".into(),
    }];
    let text = render(&view);
    let table = "\
FLOW CONTROL    REFUSED  DROPPED  LIMITED      CUT  POLICY IN FORCE
catalog           20.0%       20        -        -  catalog-flow: dropRatio 0.2
ledger           100.0%        -        -       50  -
pricing           40.0%        -       40        -  -
  50 calls to ledger cut at payments' sidecar, never sent (504 deadline-exceeded); ledger received 0
";
    assert!(text.contains(table), "got:\n{text}");
}
