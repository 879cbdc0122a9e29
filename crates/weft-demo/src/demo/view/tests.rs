use super::*;
use crate::demo::mesh::{CONFIG_FILE, EXAMPLE_CONFIG};
use crate::demo::scrape::ServiceCounters;

fn example_groups() -> Vec<SplitGroup> {
    split_groups(&weft_model::load_str(EXAMPLE_CONFIG, CONFIG_FILE).unwrap())
}

fn ms(n: u64) -> Option<Duration> {
    Some(Duration::from_millis(n))
}

#[test]
fn groups_put_split_backends_under_the_addressed_service() {
    let groups = example_groups();
    let names: Vec<_> = groups.iter().map(|g| g.service.as_str()).collect();
    assert_eq!(
        names,
        ["catalog", "frontend", "inventory"],
        "catalog-v1/v2 only under catalog"
    );
    assert_eq!(
        groups[0].backends,
        [
            ("catalog-v1.default".to_owned(), Some(90)),
            ("catalog-v2.default".to_owned(), Some(10))
        ]
    );
    assert_eq!(groups[2].backends, [("inventory.default".to_owned(), None)]);
}

#[test]
fn endpoint_shares_are_of_the_addressed_service_over_the_window() {
    let mut delta = MeshCounters::default();
    for (backend, endpoint, n) in [
        ("catalog-v1.default", "127.0.2.1:15006", 90),
        ("catalog-v2.default", "127.0.2.2:15006", 10),
        ("inventory.default", "127.0.3.1:15006", 49),
        ("inventory.default", "127.0.3.2:15006", 51),
    ] {
        delta.endpoints.insert((backend.into(), endpoint.into()), n);
    }
    let rows = endpoint_rows(&delta, &example_groups());
    let shares: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.service.as_str(),
                r.backend.as_str(),
                (r.share * 100.0).round() as u32,
                r.weight,
            )
        })
        .collect();
    assert_eq!(
        shares,
        [
            ("catalog", "catalog-v1", 90, Some(90)),
            ("catalog", "catalog-v2", 10, Some(10)),
            ("inventory", "inventory", 49, None),
            ("inventory", "inventory", 51, None),
        ],
        "frontend gets no outbound traffic, so it has no rows"
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

fn sample_view() -> View {
    let service = |name: &str, rps: f64, requests, ok, p50, p99| ServiceSummary {
        service: name.into(),
        requests,
        ok,
        rps,
        p50: ms(p50),
        p99: ms(p99),
    };
    let share =
        |service: &str, backend: &str, endpoint: &str, requests, share, weight| EndpointShare {
            service: service.into(),
            backend: backend.into(),
            endpoint: endpoint.into(),
            requests,
            share,
            weight,
        };
    View {
        last: false,
        elapsed: Duration::from_secs(75),
        window: Duration::from_secs(1),
        rate: 50,
        config_file: "/tmp/weft-demo-1/demo.yaml".into(),
        generations: Some((2, 2)),
        config_error: None,
        ingress: IngressRow {
            sent: 50,
            done: 50,
            ok: 50,
            late: 0,
            rps: 50.0,
            p50: ms(9),
            p99: Some(Duration::from_micros(15_250)),
        },
        services: vec![
            service("frontend", 50.0, 50, 50, 8, 14),
            service("catalog-v1", 45.0, 45, 45, 5, 9),
            service("catalog-v2", 5.0, 5, 4, 7, 250),
        ],
        endpoints: vec![
            share(
                "catalog",
                "catalog-v1",
                "127.0.2.1:15006",
                45,
                0.9,
                Some(90),
            ),
            share("catalog", "catalog-v2", "127.0.2.2:15006", 5, 0.1, Some(10)),
            share("inventory", "inventory", "127.0.3.1:15006", 25, 0.5, None),
        ],
    }
}

#[test]
fn renders_a_live_block() {
    let text = render(&sample_view());
    let expected = "\
weft demo: 1m15s elapsed, last 1.0s; 50 req/s offered to frontend
config: /tmp/weft-demo-1/demo.yaml (generation 2)
  edit /tmp/weft-demo-1/demo.yaml (e.g. the 90/10 weights) and watch traffic move

ingress -> frontend  50.0 req/s  ok 100.00%  p50 9.0ms  p99 15.2ms  late 0

SERVICE             RPS   SUCCESS      P50      P99
frontend           50.0   100.00%    8.0ms   14.0ms
catalog-v1         45.0   100.00%    5.0ms    9.0ms
catalog-v2          5.0    80.00%    7.0ms    250ms

TRAFFIC TO    BACKEND       ENDPOINT                SHARE     RPS  WEIGHT
catalog       catalog-v1    127.0.2.1:15006         90.0%    45.0      90
              catalog-v2    127.0.2.2:15006         10.0%     5.0      10
inventory     inventory     127.0.3.1:15006         50.0%    25.0

success = answers other than 5xx; latency as each service's sidecar saw it (inbound)
";
    assert_eq!(text, expected, "got:\n{text}");
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
}
