//! TrafficPolicy in the runtime: what the health of an endpoint learns from
//! responses (gRPC trailers included), what a config change keeps, and the
//! balancer's avoidance of endpoints a request already tried.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::BodyExt;

use super::*;
use crate::body::ProxyBody;
use crate::observe::{InFlight, conclude};

const POLICY: &str = r#"
---
apiVersion: weft.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: v2, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: catalog-v2}]
  failureCodes:
    grpc: [UNAVAILABLE]
    header: {name: x-biz-code, values: ["5003"]}
  retry: {maxRetries: 1}
  hedging: {delay: 20ms}
"#;

fn with_policy() -> ResourceSet {
    let config = Arc::new(weft_model::load_str(&format!("{CONFIG}{POLICY}"), "t.yaml").unwrap());
    standalone::resources(&config, "client", Duration::from_secs(1))
}

fn v2(s: &Snapshot) -> Arc<Cluster> {
    s.lookup_host("catalog-v2.shop").unwrap().rules[0].backends[0].clone()
}

fn grpc_response(
    head: &[(&'static str, &str)],
    trailers: &[(&'static str, &str)],
) -> Response<ProxyBody> {
    let mut t = HeaderMap::new();
    for (k, v) in trailers {
        t.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    let body = ProxyBody::Replay(
        Some(Bytes::from_static(b"\0\0\0\0\x01x")),
        (!t.is_empty()).then(|| Box::new(t)),
    );
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    for (k, v) in head {
        r.headers_mut()
            .insert(*k, HeaderValue::from_str(v).unwrap());
    }
    r
}

/// Sends `resp` through the tracking path and reads its body to the end.
async fn observe(c: &Arc<Cluster>, resp: Response<ProxyBody>) {
    let r = conclude(c, 0, InFlight::new(None), Ok(resp), true, Instant::now()).unwrap();
    r.into_body().collect().await.unwrap();
}

#[tokio::test]
async fn grpc_statuses_and_business_codes_in_trailers_count_against_the_endpoint() {
    let s = build(&with_policy());
    let c = v2(&s);
    let failures = || c.health.endpoint(0).consecutive_failures();
    observe(&c, grpc_response(&[], &[("grpc-status", "0")])).await;
    assert_eq!(failures(), 0, "OK in the trailers is a success");
    observe(&c, grpc_response(&[], &[("grpc-status", "14")])).await;
    assert_eq!(failures(), 1, "UNAVAILABLE in the trailers");
    observe(&c, grpc_response(&[("grpc-status", "14")], &[])).await;
    assert_eq!(failures(), 2, "UNAVAILABLE in a trailers-only response");
    observe(
        &c,
        grpc_response(&[], &[("grpc-status", "0"), ("x-biz-code", "5003")]),
    )
    .await;
    assert_eq!(failures(), 3, "a business code in the trailers");
    observe(&c, grpc_response(&[], &[("grpc-status", "5")])).await;
    assert_eq!(failures(), 0, "NOT_FOUND is not in this policy's codes");
    observe(&c, grpc_response(&[], &[])).await;
    assert_eq!(
        failures(),
        0,
        "no status at all is INTERNAL, which this policy does not list"
    );
}

#[tokio::test]
async fn a_body_dropped_before_its_trailers_judges_nothing() {
    let s = build(&with_policy());
    let c = v2(&s);
    let r = conclude(
        &c,
        0,
        InFlight::new(None),
        Ok(grpc_response(&[], &[("grpc-status", "14")])),
        true,
        Instant::now(),
    )
    .unwrap();
    drop(r);
    assert_eq!(c.health.endpoint(0).consecutive_failures(), 0);
}

#[test]
fn health_and_rule_policies_survive_a_config_change() {
    let mut builder = SnapshotBuilder::new(options());
    let (registry, metrics) = (EndpointRegistry::default(), ProxyMetrics::new());
    let first = builder
        .build(&with_policy(), 1, &registry, &metrics)
        .unwrap();
    let c = v2(&first);
    let now = clock::now();
    let fail = Verdict::Failure(weft_policy::health::FailureReason::Reset);
    c.record(0, now, &fail);
    c.record(0, now, &fail);
    let rule_policy = |s: &Snapshot| {
        s.lookup_host("catalog-v2.shop").unwrap().rules[0]
            .policy
            .clone()
            .expect("the route carries the policy")
    };
    assert!(rule_policy(&first).is_active());
    // catalog-v2's own route, and catalog's `/v2` rule, which sends there.
    assert_eq!(
        first.policies.len(),
        2,
        "{:?}",
        first.policies.iter().map(|p| &p.labels).collect::<Vec<_>>()
    );

    // Same resources again (a new generation): the same state objects.
    let second = builder
        .build(&with_policy(), 2, &registry, &metrics)
        .unwrap();
    assert!(Arc::ptr_eq(&v2(&second).health, &c.health));
    assert!(Arc::ptr_eq(&rule_policy(&second), &rule_policy(&first)));

    // An endpoint joins: the old one keeps its history.
    let grown = format!("{CONFIG}{POLICY}").replace(
        "endpoints: [{address: \"127.0.0.1:9003\"}]",
        "endpoints: [{address: \"127.0.0.1:9004\"}, {address: \"127.0.0.1:9003\"}]",
    );
    let config = Arc::new(weft_model::load_str(&grown, "t.yaml").unwrap());
    let set = standalone::resources(&config, "client", Duration::from_secs(1));
    let third = builder.build(&set, 3, &registry, &metrics).unwrap();
    let c3 = v2(&third);
    let old = c3
        .endpoints
        .iter()
        .position(|e| e.addr.port() == 9003)
        .unwrap();
    assert_eq!(c3.health.endpoint(old).consecutive_failures(), 2);
    assert_eq!(c3.health.endpoint(1 - old).consecutive_failures(), 0);
    assert!(
        Arc::ptr_eq(&rule_policy(&third), &rule_policy(&first)),
        "the rule's policy JSON did not change: the learned state stays"
    );
}

#[test]
fn a_pick_avoids_endpoints_the_request_already_tried() {
    let s = snapshot();
    let table = s.lookup_host("catalog").unwrap();
    let c = table.find(&parts("/x")).unwrap().backends[0].clone();
    for _ in 0..50 {
        let first = c.pick_index(&[], clock::now()).unwrap();
        let second = c.pick_index(&[first], clock::now()).unwrap();
        assert_ne!(first, second, "a backup never goes to the same endpoint");
        assert_eq!(
            c.pick_index(&[0, 1], clock::now()),
            None,
            "nothing left untried"
        );
    }
}
